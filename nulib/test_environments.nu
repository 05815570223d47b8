# test_environments.nu: disposable Docker test environments through the orchestrator.
#
#   use nulib/test_environments.nu *
#   test quick <taskserv> [--base-image img] [--no-idempotence] [--no-fail]
#                            # create → converge → idempotence → verify → destroy
#   test env converge <id> [--idempotence]                    # converge again
#   test env single <taskserv> [--auto-start] [--auto-cleanup] [--base-image img] [--wait]
#   test env server <name> ...taskservs [--auto-start] [--auto-cleanup] [--base-image img] [--wait]
#   test topology load kubernetes_3node | test env cluster kubernetes [--auto-start] [--base-image img]
#   test env cluster <type> --template <name>                 # or a template by name
#   test env list | test env status <id> | test env logs <id> [--node n] [--tail 100]
#   test env run <id> [--tests [{name, node, command: [argv], timeout_seconds}]]
#   test env cleanup <id> [--wait]
#   test topology list | test topology load <name>
#
# Everything returns Nushell records/tables (an environment's state, a test run,
# the logs). URL: $env.ORCHESTRATOR_URL (default http://localhost:8080). API errors
# (4xx) become `error make` with the API's message and field; an unreachable service
# gives a single-message error.
#
# Exit status for CI: `test quick` raises an error when any test fails (after
# cleaning up), so `nu -c 'use .../test_environments.nu *; test quick etcd'` and
# scripts exit non-zero; the error lists the failed tests. An `exit` inside a
# module command would also end an interactive shell, so it is not used; with
# --no-fail the run record is returned whatever the result and the caller
# decides, e.g. in a script:
#   let run = (test quick etcd --no-fail); if not $run.passed { exit 1 }

use ./api.nu *

# Environment states after which nothing more happens on its own.
const SETTLED = [ready passed failed error cleaned]

def env-path [id: string] { $"/test/environments/(q $id)" }

# Create an environment and return its state (waiting until it has settled with --wait).
def create-env [body: record, wait: bool, timeout: duration] {
    let id = (api-post /test/environments/create $body)
    if $wait { wait-env $id $SETTLED $timeout } else { api-get (env-path $id) }
}

# Poll an environment until its status is one of `states`; progress to stderr.
export def wait-env [id: string, states: list<string>, timeout: duration = 5min] {
    let deadline = ((date now) + $timeout)
    mut last = ""
    loop {
        let st = (api-get (env-path $id))
        if $st.status != $last {
            print --stderr $"test env ($id): ($st.status)"
            $last = $st.status
        }
        if $st.status in $states { return $st }
        if (date now) > $deadline {
            fail $"test env ($id): still ($st.status) after ($timeout) \(waiting for ($states | str join ' or ')\)"
        }
        sleep 250ms
    }
}

# The request's priority field: only a given priority is sent, so the API's
# default (3) applies otherwise.
def priority-field [priority: any] {
    if $priority == null { {} } else { {priority: $priority} }
}

def base-config [base_image: any] {
    if $base_image == null { {} } else { {base_image: $base_image} }
}

# The Molecule sequence for one taskserv on a fresh single-taskserv environment:
# create → converge (the provisioning script installs the taskserv inside the node)
# → idempotence (a second converge must change nothing; --no-idempotence skips it)
# → verify (the default checks, `taskserv check` included) → destroy, which always
# runs. Prints each step to stderr. Returns the test run plus env_id, env_status,
# steps (one {step, status, detail} per step), converge and idempotence; raises an
# error naming the failed step unless --no-fail (see the header for CI use).
export def "test quick" [
    taskserv: string
    --base-image: string      # container image (default: the service's --test-base-image)
    --infra: string           # the provisioning script's --infra (default: the service's)
    --settings: string        # the provisioning script's --settings (default: the service's)
    --no-idempotence          # skip the second converge
    --timeout: duration = 5min  # bound on create + converge
    --no-fail                 # return the result even when a step failed
    --priority: int           # 1 (most urgent) to 5; default 3
] {
    let config = ({type: single_taskserv, taskserv: $taskserv} | merge (base-config $base_image))
    let body = ({config: $config, infra: ($infra | default ""), auto_start: true, auto_cleanup: false,
        idempotence: (not $no_idempotence)} | merge (if $settings == null { {} } else { {settings: $settings} })
        | merge (priority-field $priority))
    let id = (api-post /test/environments/create $body)
    # Whatever happens from here, the environment is removed before returning.
    let outcome = try {
        let st = (wait-env $id [ready passed failed error cleaned] $timeout)
        let steps = (sequence-steps $st $no_idempotence)
        if $st.status != "ready" {
            {steps: $steps, st: $st, err: $"test env ($id) did not become ready: ($st.status) ($st.error? | default '')"}
        } else {
            print --stderr $"test env ($id): verify \(default checks\)"
            let run = (api-post $"(env-path $id)/run")
            let verify = {step: verify, status: (if $run.passed { "passed" } else { "failed" }),
                detail: $"($run.total - $run.failed) of ($run.total) checks passed"}
            {steps: ($steps | append $verify), st: $st, run: $run}
        }
    } catch {|e| {steps: [], err: $e.msg} }
    # A creation that failed was rolled back already: then "error" with
    # removed counts is a completed destroy too.
    let end = try {
        api-delete (env-path $id) | ignore
        let fin = (wait-env $id [cleaned error] 2min)
        {status: $fin.status, removed: ($fin.status == "cleaned" or ($fin.removed? | default null) != null)}
    } catch {|e| {status: $"cleanup failed: ($e.msg)", removed: false} }
    let final = $end.status
    let steps = ($outcome.steps | append {step: destroy, status: (if $end.removed { "passed" } else { "failed" }), detail: $final})
    for s in $steps { print --stderr $"test quick ($taskserv): ($s.step) ($s.status) ($s.detail)" }
    let st = ($outcome.st? | default {})
    let run = ($outcome.run? | default {passed: false, total: 0, failed: 0, results: []})
    let result = ($run | insert env_id $id | insert env_status $final | insert steps $steps
        | insert converge ($st.converge? | default []) | insert idempotence ($st.idempotence? | default null))
    let failed = ($steps | where status == "failed")
    if ("err" in $outcome or ($failed | is-not-empty)) and (not $no_fail) {
        let which = if ($failed | is-empty) { "create" } else { $failed | get step | str join ", " }
        let why = if "err" in $outcome { $outcome.err } else {
            let bad = ($run.results | where passed == false | each {|r| $"($r.name)@($r.node? | default '')" } | str join ", ")
            if $bad != "" { $"failed checks: ($bad)" } else { $failed | get detail | str join "; " }
        }
        fail $"test quick ($taskserv): failed at ($which): ($why) \(env ($id), ($final)\)"
    }
    $result
}

# The create, converge and idempotence steps as an environment's state shows them.
def sequence-steps [st: record, no_idempotence: bool] {
    let converge = ($st.converge? | default [])
    let bad = ($converge | where status != "completed")
    let created = ($st.status != "error" or ($converge | is-not-empty))
    mut steps = [{step: create, status: (if $created { "passed" } else { "failed" }), detail: ($st.nodes | length | $"($in) node\(s\)")}]
    if not $created { $steps = ($steps | update 0.detail ($st.error? | default "")); return $steps }
    $steps = ($steps | append {step: converge, status: (if ($bad | is-empty) and ($converge | is-not-empty) { "passed" } else { "failed" }),
        detail: (if ($bad | is-empty) { $"($converge | length) install\(s\)" } else { $bad | each {|r| $r.error? | default $r.status } | str join "; " })})
    if not $no_idempotence and ($bad | is-empty) {
        let idem = ($st.idempotence? | default null)
        $steps = ($steps | append (if $idem == null {
            {step: idempotence, status: failed, detail: ($st.error? | default "not run")}
        } else if $idem.passed {
            {step: idempotence, status: passed, detail: "nothing changed on the second converge"}
        } else {
            {step: idempotence, status: failed, detail: ($idem.failures | str join "; ")}
        }))
    }
    $steps
}

# Converge an environment again (the provisioning script installs every node's
# taskservs; --idempotence also checks a second converge changes nothing) and
# return the report ({passed, converge, idempotence, error}).
export def "test env converge" [
    id: string
    --idempotence             # check idempotence (default: the environment's option)
    --no-idempotence          # do not, whatever the environment's option
] {
    let body = if $idempotence { {idempotence: true} } else if $no_idempotence { {idempotence: false} } else { {} }
    api-post $"(env-path $id)/converge" $body
}

# A container with one taskserv (config.type single_taskserv).
export def "test env single" [
    taskserv: string
    --auto-start              # start the container once created
    --idempotence             # with --auto-start: converge twice and fail unless nothing changed
    --auto-cleanup            # remove everything right after the first run
    --base-image: string
    --infra: string
    --ttl: string             # e.g. 30m, 4h (1m..168h)
    --wait                    # wait until the environment has settled
    --timeout: duration = 5min
    --priority: int           # 1 (most urgent) to 5; default 3
] {
    let config = ({type: single_taskserv, taskserv: $taskserv} | merge (base-config $base_image))
    create-env ({config: $config, infra: ($infra | default ""), auto_start: $auto_start,
        idempotence: $idempotence, auto_cleanup: $auto_cleanup, ttl: ($ttl | default "")} | merge (priority-field $priority)) $wait $timeout
}

# A simulated server with several taskservs (config.type server_simulation).
export def "test env server" [
    name: string
    ...taskservs: string
    --auto-start
    --idempotence             # with --auto-start: converge twice and fail unless nothing changed
    --auto-cleanup
    --base-image: string
    --infra: string
    --ttl: string
    --wait
    --timeout: duration = 5min
    --priority: int           # 1 (most urgent) to 5; default 3
] {
    let config = ({type: server_simulation, server_name: $name, taskservs: $taskservs} | merge (base-config $base_image))
    create-env ({config: $config, infra: ($infra | default ""), auto_start: $auto_start,
        idempotence: $idempotence, auto_cleanup: $auto_cleanup, ttl: ($ttl | default "")} | merge (priority-field $priority)) $wait $timeout
}

# A cluster (config.type cluster_topology) from a topology record piped in
# ({nodes, network}, e.g. from `test topology load`) or --template.
export def "test env cluster" [
    type: string              # cluster type, e.g. kubernetes
    --template: string        # a template name instead of a piped topology
    --auto-start
    --idempotence             # with --auto-start: converge twice and fail unless nothing changed
    --auto-cleanup
    --base-image: string
    --infra: string
    --ttl: string
    --wait
    --timeout: duration = 5min
    --priority: int           # 1 (most urgent) to 5; default 3
]: [nothing -> record, record -> record] {
    let topology = $in
    mut config = ({type: cluster_topology, cluster_type: $type} | merge (base-config $base_image))
    if $topology != null {
        if $template != null { fail "test env cluster: pipe a topology or give --template, not both" }
        $config = ($config | insert topology ($topology | select nodes network?))
    } else if $template != null {
        $config = ($config | insert template $template)
    } else {
        fail "test env cluster: pipe a topology in (test topology load <name> | test env cluster ...) or give --template"
    }
    create-env ({config: $config, infra: ($infra | default ""), auto_start: $auto_start,
        idempotence: $idempotence, auto_cleanup: $auto_cleanup, ttl: ($ttl | default "")} | merge (priority-field $priority)) $wait $timeout
}

# All environments (a table).
export def "test env list" [] {
    api-get /test/environments | default []
}

# One environment: state, nodes, runs.
export def "test env status" [id: string] {
    api-get (env-path $id)
}

# Container output per node plus the last run's test output.
export def "test env logs" [
    id: string
    --node: string            # only this node
    --tail: int               # lines per stream (server default 200)
] {
    mut params = []
    if $node != null { $params = ($params | append $"node=(q $node)") }
    if $tail != null { $params = ($params | append $"tail=(q $tail)") }
    let query = if ($params | is-empty) { "" } else { "?" + ($params | str join "&") }
    api-get $"(env-path $id)/logs($query)"
}

# Run tests and wait for the results: the default checks, or --tests
# [{name, node (empty = every node), command: [argv], timeout_seconds}].
export def "test env run" [
    id: string
    --tests: list<any>
] {
    if $tests == null {
        api-post $"(env-path $id)/run"
    } else {
        api-post $"(env-path $id)/run" {tests: $tests}
    }
}

# Remove an environment's containers, network and volumes (repeatable).
export def "test env cleanup" [
    id: string
    --wait                    # wait until it is cleaned
    --timeout: duration = 2min
] {
    let st = (api-delete (env-path $id))
    if $wait { wait-env $id [cleaned error] $timeout } else { $st }
}

# The topology templates (a table).
export def "test topology list" [] {
    api-get /test/topologies
}

# One template's topology, {nodes, network}, ready to pipe into `test env cluster`.
export def "test topology load" [name: string] {
    let all = (api-get /test/topologies)
    let found = ($all | where name == $name)
    if ($found | is-empty) {
        fail $"no topology template named ($name) \(have: ($all | get name | str join ', ')\)"
    }
    $found.0 | select nodes network
}
