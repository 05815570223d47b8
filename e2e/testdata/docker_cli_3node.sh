#!/usr/bin/env bash
# docker_cli_3node.sh <image> <name-prefix>
#
# Baseline for BenchmarkTestEnv3NodeCreateCleanup: creates by hand, with the
# docker CLI, what the orchestrator creates for a 3-node cluster_topology
# (one labelled bridge network; three containers with hostname, network
# alias, 0.25 CPU, 64 MiB, labels and the orchestrator's keep-alive command;
# all started), then removes them again. It times the two phases itself and
# prints one line on stdout:
#
#   create_ms=N cleanup_ms=N
#
# create  = docker network create + 3x docker create + docker start
# cleanup = docker rm -f of the 3 containers + docker network rm
#
# Everything it creates is named <name-prefix>-... and labelled
# io.provisioning.orchestrator.bench/run=<name-prefix>; on any failure or
# interruption an EXIT trap removes exactly the objects carrying that label
# (never the orchestrator's managed-by label, so no orchestrator janitor
# ever sees them, and nothing else is touched).
#
# With DOCKER_CLI_3NODE_VERIFY=1 it also prints, between the phases and
# outside both timings, one line per container:
#   verify <name> <hostname> <nanocpus> <memory> <status> <aliases>
set -euo pipefail

if [[ $# -ne 2 ]]; then
	echo "usage: $0 <image> <name-prefix>" >&2
	exit 2
fi
image=$1
prefix=$2
# The prefix becomes object names and a label value: keep it a plain name.
if [[ ! $prefix =~ ^[a-z0-9][a-z0-9_.-]{0,40}$ ]]; then
	echo "$0: name-prefix must match ^[a-z0-9][a-z0-9_.-]{0,40}\$, got '$prefix'" >&2
	exit 2
fi

run_label="io.provisioning.orchestrator.bench/run=$prefix"
net="$prefix-net"
# Same nodes (name:role) as the benchmark's REST request.
nodes=(cp-01:control-plane worker-01:worker worker-02:worker)
# testenv.KeepAliveCommand, verbatim.
keepalive="trap 'exit 0' TERM; while :; do sleep 3600 & wait \$!; done"

ids=()
net_id=""
cleaned=0

cleanup_on_exit() {
	local rc=$?
	if [[ $cleaned -eq 0 ]]; then
		# Only objects carrying this run's label; by label, not by name, so a
		# foreign object that happened to have one of our names is left alone.
		local cs ns
		cs=$(docker ps -aq --filter "label=$run_label" 2>/dev/null || true)
		[[ -n $cs ]] && docker rm -f $cs >/dev/null 2>&1 || true
		ns=$(docker network ls -q --filter "label=$run_label" 2>/dev/null || true)
		[[ -n $ns ]] && docker network rm $ns >/dev/null 2>&1 || true
	fi
	exit "$rc"
}
trap cleanup_on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now_ns() { date +%s%N; }

# --- create phase -----------------------------------------------------------
t0=$(now_ns)
net_id=$(docker network create --driver bridge \
	--label "$run_label" \
	--label "io.provisioning.orchestrator.bench/environment=$prefix" \
	"$net")
for spec in "${nodes[@]}"; do
	node=${spec%%:*}
	role=${spec#*:}
	ids+=("$(docker create \
		--name "$prefix-$node" \
		--hostname "$node" \
		--network "$net" \
		--network-alias "$node" \
		--cpus 0.25 \
		--memory 64m \
		--label "$run_label" \
		--label "io.provisioning.orchestrator.bench/environment=$prefix" \
		--label "io.provisioning.orchestrator.bench/node=$node" \
		--label "io.provisioning.orchestrator.bench/role=$role" \
		"$image" /bin/sh -c "$keepalive")")
done
docker start "${ids[@]}" >/dev/null
t1=$(now_ns)

if [[ ${DOCKER_CLI_3NODE_VERIFY:-} == 1 ]]; then
	docker inspect -f 'verify {{.Name}} {{.Config.Hostname}} {{.HostConfig.NanoCpus}} {{.HostConfig.Memory}} {{.State.Status}} {{range .NetworkSettings.Networks}}{{json .Aliases}}{{end}}' "${ids[@]}"
fi

# --- cleanup phase ----------------------------------------------------------
t2=$(now_ns)
docker rm -f "${ids[@]}" >/dev/null
docker network rm "$net_id" >/dev/null
t3=$(now_ns)
cleaned=1

echo "create_ms=$(((t1 - t0) / 1000000)) cleanup_ms=$(((t3 - t2) / 1000000))"
