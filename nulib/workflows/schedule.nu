# schedule.nu: recurring tasks on the orchestrator's schedules (POST /schedules).
# Every run of a schedule is a normal task, named "... (schedule <id>)".
#
#   use nulib/workflows/schedule.nu *
#   schedule create <id> (--every 2s | --cron "0 2 * * *") --infra <infra> --settings <path>
#       [servers...] [--all-servers] | --taskserv <t> [servers...] | --cluster <c>
#       [--check] [--wait] [--priority 1..5] [--overlap skip|buffer_one|buffer_all|cancel_other|terminate_other|allow_all]
#       [--paused] [--note text]
#     a server action (the default) needs servers or --all-servers (every server
#     the settings define); a nightly drift check: --cron "0 2 * * *" --all-servers --check
#   schedule list                      # the schedules, by id
#   schedule show <id>                 # spec, paused, next runs, recent runs with their task ids
#   schedule pause <id> [--note text]
#   schedule unpause <id> [--note text]
#   schedule trigger <id>              # one run now (also while paused)
#   schedule delete <id>
#
# URL: $env.ORCHESTRATOR_URL (default http://localhost:8080). API errors become
# `error make` with the API's message and field.

use ../api.nu *

# Create a schedule; returns the schedule as the API shows it.
export def "schedule create" [
    id: string                # the schedule's name
    ...servers: string        # servers of a server (or taskserv) action
    --every: string           # interval, e.g. 2s, 1h (a Go duration; at least 1s)
    --cron: string            # cron expression (UTC), e.g. "0 2 * * *"
    --infra (-i): string      # infrastructure name (required)
    --settings (-s): string   # settings file path (required)
    --taskserv: string        # a taskserv action: install this taskserv
    --cluster: string         # a cluster action: build this cluster
    --test: string            # a taskserv_test action: `test quick` this taskserv in a node of its own
    --no-idempotence          # with --test: skip the second converge
    --batch: string           # a batch action: the batch in this file (NUON/YAML/TOML/JSON), e.g. with mode: plan
    --all-servers             # a server action on every server the settings define
    --check (-c)              # check mode: a drift check that changes nothing
    --wait (-w)               # the script's --wait
    --priority: int           # 1 (most urgent) to 5; default 3
    --overlap: string         # what a run due while the last one runs does; default skip
    --paused                  # create it paused
    --note: string            # free text shown with the schedule
] {
    let type = if $taskserv != null { "taskserv" } else if $cluster != null { "cluster" } else if $test != null { "taskserv_test" } else if $batch != null { "batch" } else { "server" }
    mut action = {type: $type, infra: ($infra | default ""), settings: ($settings | default "")}
    if $check { $action = ($action | insert check_mode true) }
    if $wait { $action = ($action | insert wait true) }
    if $priority != null { $action = ($action | insert priority $priority) }
    match $type {
        "taskserv" => {
            $action = ($action | insert taskserv $taskserv)
            if ($servers | is-not-empty) { $action = ($action | insert servers $servers) }
        }
        "cluster" => { $action = ($action | insert cluster $cluster) }
        "taskserv_test" => {
            $action = ($action | insert taskserv $test)
            if $no_idempotence { $action = ($action | insert idempotence false) }
        }
        "batch" => {
            let file = $batch
            if not ($file | path exists) { fail $"schedule create ($id): batch file ($file) not found" }
            let b = try { open $file } catch {|e| fail $"schedule create ($id): cannot read batch file ($file): ($e.msg)" }
            if ($b | describe | str starts-with "record") == false { fail $"schedule create ($id): batch file ($file) is not a record" }
            # The file's shared fields are the action's; the rest is the DAG.
            for k in [infra settings check_mode wait priority] {
                if ($k in ($b | columns)) and (($action | get --optional $k) in [null ""]) {
                    $action = ($action | upsert $k ($b | get $k))
                }
            }
            $action = ($action | insert batch ($b | reject --optional infra settings check_mode wait priority require_approval approval_timeout webhook))
        }
        _ => {
            if ($servers | is-empty) and (not $all_servers) {
                fail $"schedule create ($id): name the servers, or --all-servers for every server the settings define"
            }
            $action = ($action | insert servers $servers)
        }
    }
    mut body = {id: $id, action: $action}
    if $every != null { $body = ($body | insert interval $every) }
    if $cron != null { $body = ($body | insert cron [$cron]) }
    if $overlap != null { $body = ($body | insert overlap $overlap) }
    if $paused { $body = ($body | insert paused true) }
    if $note != null { $body = ($body | insert note $note) }
    api-post /schedules $body
}

# The schedules, by id (GET /schedules).
export def "schedule list" [] {
    let data = (api-get /schedules)
    if $data == null { [] } else { $data }
}

# One schedule (GET /schedules/{id}): recent_runs name their task ids.
export def "schedule show" [id: string] {
    api-get $"/schedules/(q $id)"
}

# Pause a schedule; no run starts until it is unpaused.
export def "schedule pause" [id: string, --note: string] {
    api-post $"/schedules/(q $id)/pause" (if $note == null { {} } else { {note: $note} })
}

# Unpause a schedule.
export def "schedule unpause" [id: string, --note: string] {
    api-post $"/schedules/(q $id)/unpause" (if $note == null { {} } else { {note: $note} })
}

# Run a schedule now (also while paused); the run shows in `schedule show` shortly.
export def "schedule trigger" [id: string] {
    {id: (api-post $"/schedules/(q $id)/trigger"), triggered: true}
}

# Delete a schedule; runs still running finish.
export def "schedule delete" [id: string] {
    {id: (api-delete $"/schedules/(q $id)"), deleted: true}
}
