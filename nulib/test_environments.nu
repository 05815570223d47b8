# test_environments.nu: disposable Docker test environments through the orchestrator.
#
#   use nulib/test_environments.nu *
#   test quick <taskserv> [--base-image img] [--no-fail]     # create, wait ready, default checks, cleanup
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

def base-config [base_image: any] {
    if $base_image == null { {} } else { {base_image: $base_image} }
}

# Run the default checks on a fresh single-taskserv environment, then remove it.
# Returns the test run (plus env_id and the final environment status); raises an
# error when a test failed unless --no-fail (see the header for CI use).
export def "test quick" [
    taskserv: string
    --base-image: string      # container image (default: the service's --test-base-image)
    --infra: string           # recorded on the environment
    --timeout: duration = 5min  # bound on becoming ready
    --no-fail                 # return the run even when tests failed
] {
    let config = ({type: single_taskserv, taskserv: $taskserv} | merge (base-config $base_image))
    let id = (api-post /test/environments/create {
        config: $config, infra: ($infra | default ""), auto_start: true, auto_cleanup: false
    })
    # Whatever happens from here, the environment is removed before returning.
    let outcome = try {
        let st = (wait-env $id [ready passed failed error cleaned] $timeout)
        if $st.status != "ready" {
            {err: $"test env ($id) did not become ready: ($st.status) ($st.error? | default '')"}
        } else {
            print --stderr $"test env ($id): running default checks"
            {run: (api-post $"(env-path $id)/run")}
        }
    } catch {|e| {err: $e.msg} }
    let final = try {
        api-delete (env-path $id) | ignore
        (wait-env $id [cleaned error] 2min).status
    } catch {|e| $"cleanup failed: ($e.msg)" }
    if "err" in $outcome { fail $outcome.err }
    let run = ($outcome.run | insert env_id $id | insert env_status $final)
    if (not $run.passed) and (not $no_fail) {
        let failed = ($run.results | where passed == false | each {|r| $"($r.name)@($r.node? | default '')" } | str join ", ")
        fail $"test quick ($taskserv): ($run.failed) of ($run.total) tests failed: ($failed) \(env ($id), ($final)\)"
    }
    $run
}

# A container with one taskserv (config.type single_taskserv).
export def "test env single" [
    taskserv: string
    --auto-start              # start the container once created
    --auto-cleanup            # remove everything right after the first run
    --base-image: string
    --infra: string
    --ttl: string             # e.g. 30m, 4h (1m..168h)
    --wait                    # wait until the environment has settled
    --timeout: duration = 5min
] {
    let config = ({type: single_taskserv, taskserv: $taskserv} | merge (base-config $base_image))
    create-env {config: $config, infra: ($infra | default ""), auto_start: $auto_start,
        auto_cleanup: $auto_cleanup, ttl: ($ttl | default "")} $wait $timeout
}

# A simulated server with several taskservs (config.type server_simulation).
export def "test env server" [
    name: string
    ...taskservs: string
    --auto-start
    --auto-cleanup
    --base-image: string
    --infra: string
    --ttl: string
    --wait
    --timeout: duration = 5min
] {
    let config = ({type: server_simulation, server_name: $name, taskservs: $taskservs} | merge (base-config $base_image))
    create-env {config: $config, infra: ($infra | default ""), auto_start: $auto_start,
        auto_cleanup: $auto_cleanup, ttl: ($ttl | default "")} $wait $timeout
}

# A cluster (config.type cluster_topology) from a topology record piped in
# ({nodes, network}, e.g. from `test topology load`) or --template.
export def "test env cluster" [
    type: string              # cluster type, e.g. kubernetes
    --template: string        # a template name instead of a piped topology
    --auto-start
    --auto-cleanup
    --base-image: string
    --infra: string
    --ttl: string
    --wait
    --timeout: duration = 5min
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
    create-env {config: $config, infra: ($infra | default ""), auto_start: $auto_start,
        auto_cleanup: $auto_cleanup, ttl: ($ttl | default "")} $wait $timeout
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
