#!/usr/bin/env bash
# docker_exec_converge.sh <infra> <settings> <phase> [<phase>...]
#
# Baseline for BenchmarkTestEnvConverge3x2: converges a test environment's
# nodes by hand, running the same nu command the orchestrator runs in each
# node (`/opt/provisioning/bin/nu /opt/provisioning/nulib/provisioning
# taskserv create <ts> --infra <infra> --settings <settings> <node>`, with the
# same PROVISIONING_* variables) through `docker exec`, in the same order:
# phases one after another; within a phase the nodes in parallel, each
# node's taskservs in order. A phase is "container:node:ts1,ts2;container:node:ts..."
# The nodes must hold the toolchain already (the orchestrator copied it in).
# Prints one line: converge_ms=N. Exits non-zero if any install failed.
set -euo pipefail

if [[ $# -lt 3 ]]; then
	echo "usage: $0 <infra> <settings> <phase>..." >&2
	exit 2
fi
infra=$1 settings=$2
shift 2

node_installs() {
	local container=$1 node=$2 taskservs=$3 ts
	IFS=, read -ra list <<<"$taskservs"
	for ts in "${list[@]}"; do
		docker exec \
			-e PROVISIONING_STATE_DIR=/var/lib/provisioning/state \
			-e PROVISIONING_TASKSERV_DIR=/var/lib/provisioning/taskservs \
			-e PROVISIONING_RESULT_FILE="/var/lib/provisioning/results/$ts.json" \
			-e PROVISIONING_DEMO_DELAY_MS="${PROVISIONING_DEMO_DELAY_MS:-0}" \
			"$container" /opt/provisioning/bin/nu /opt/provisioning/nulib/provisioning \
			taskserv create "$ts" --infra "$infra" --settings "$settings" "$node" >/dev/null
	done
}

start=$(date +%s%N)
for phase in "$@"; do
	pids=()
	IFS=';' read -ra nodes <<<"$phase"
	for spec in "${nodes[@]}"; do
		IFS=: read -r container node taskservs <<<"$spec"
		node_installs "$container" "$node" "$taskservs" &
		pids+=($!)
	done
	for pid in "${pids[@]}"; do
		wait "$pid"
	done
done
end=$(date +%s%N)
echo "converge_ms=$(((end - start) / 1000000))"
