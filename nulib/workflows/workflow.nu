# workflow.nu: inspect and cancel orchestrator tasks.
#
#   use nulib/workflows/workflow.nu *
#   workflow status <task_id>                    # the task record
#   workflow list [--status Completed] [--limit 20]   # a table, newest first
#   workflow cancel <task_id>                    # the cancel answer; error if already finished
#   workflow retry <task_id> [--wait] [--priority 1..5]   # rerun what a Failed/Cancelled task did not complete
#   workflow queue [--full]                      # task queue backlog, pollers, running steps (Temporal)
#   workflow watch <task_id>                     # live: progress bar, step events, output lines; ends with the final status
#
# URL: $env.ORCHESTRATOR_URL (default http://localhost:8080). API errors become
# `error make` with the API's message and field.

use ../api.nu *
use ./create.nu [wait-task]

# One task (GET /tasks/{id}).
export def "workflow status" [task_id: string] {
    api-get $"/tasks/(q $task_id)"
}

# Tasks, newest first (GET /tasks). --status: Pending, Running, Completed, Failed, Cancelled.
export def "workflow list" [
    --status: string   # only tasks in this status
    --limit: int       # at most this many (1..1000, server default 50)
] {
    mut params = []
    if $status != null { $params = ($params | append $"status=(q $status)") }
    if $limit != null { $params = ($params | append $"limit=(q $limit)") }
    let query = if ($params | is-empty) { "" } else { "?" + ($params | str join "&") }
    let data = (api-get $"/tasks($query)")
    if $data == null { [] } else { $data }
}

# Ask the orchestrator to cancel a task (POST /tasks/{id}/cancel). A finished
# task gives an error saying it has already finished.
export def "workflow cancel" [task_id: string] {
    let data = (api-post $"/tasks/(q $task_id)/cancel")
    if ($data | describe | str starts-with "record") { $data } else { {id: $task_id, result: $data} }
}

# Retry a Failed or Cancelled task (POST /tasks/{id}/retry): a new task runs
# only the steps (servers) that did not complete, with the same infra,
# settings and options; its `dependencies` hold the old task's id. A running
# or completed task gives an error saying why. Without --wait: {task_id,
# retry_of}. With --wait: the new task's final record (a Failed one is
# returned, not raised; check its `status`).
export def "workflow retry" [
    task_id: string
    --wait             # wait for the new task to finish, showing progress
    --priority: int    # 1 (most urgent) to 5; default: the old task's
] {
    let body = if $priority == null { null } else { {priority: $priority} }
    let id = (api-post $"/tasks/(q $task_id)/retry" $body)
    if $wait { wait-task $id } else { {task_id: $id, retry_of: $task_id} }
}

# Task queue depth from Temporal (GET /queue, cached by the service for 2s):
# a record of observed_at, running_steps (in-flight activities) and queues, a
# table with one row per task queue and task type: backlog, backlog_age
# (a duration), the pollers' identities and the backlog per priority key
# ({p3: 5}). --full: the API's data as it is (rates, poller access times).
export def "workflow queue" [
    --full   # the whole API answer instead of the summary
] {
    let data = (api-get "/queue")
    if $full { return $data }
    let rows = ($data.task_queues | each {|tq|
        [workflow activity] | each {|tt|
            let d = ($tq | get $tt)
            let by_priority = if ($d.by_priority | is-empty) { {} } else {
                $d.by_priority | each {|p| {key: $"p($p.priority)", value: $p.backlog} } | transpose -r -d
            }
            {
                task_queue: $tq.name
                kind: $tq.kind
                task_type: $tt
                backlog: $d.backlog
                backlog_age: ($d.backlog_age_seconds * 1sec)
                pollers: ($d.pollers | get identity)
                by_priority: $by_priority
            }
        }
    } | flatten)
    {observed_at: $data.observed_at, running_steps: $data.running_steps.count, queues: $rows}
}

# A progress bar: [########............] done/total.
def progress-bar [done: int, total: int] {
    let width = 20
    let n = if $total > 0 { [($done * $width // $total) $width] | math min } else { 0 }
    let full = ("" | fill --character "#" --width $n)
    let rest = ("" | fill --character "." --width ($width - $n))
    $"[($full)($rest)] ($done)/($total)"
}

# Follow a task live (GET /tasks/{id}/events, Server-Sent Events): a
# progress bar on every transition, the steps starting, failing an attempt
# (and whether it is retried) and finishing, and the running steps' output
# lines as they are printed (`<step> | <line>`; a bounded tail, see the
# output_truncated notice). Ends when the task ends, printing its final
# status, and returns nothing; an unknown task is an error. --from resumes
# after that event id.
export def "workflow watch" [
    task_id: string
    --from: int      # resume after this event id (seq)
] {
    let task = (api-get $"/tasks/(q $task_id)")
    print $"task ($task_id): ($task.name) [($task.status)]"
    mut final = ""
    # The stream goes straight into `for`: bound to a variable first, nu
    # would collect it (and print nothing until the task ended).
    for ev in (task-events $task_id --after ($from | default 0)) {
        match $ev.type {
            "transition" => {
                let p = ($ev.progress? | default {done: 0, total: 0})
                print $"(progress-bar $p.done $p.total) ($ev.status)"
                if $ev.status in $TERMINAL_TASK_STATES { $final = $ev.status }
            }
            "step_started" => { print $"($ev.step): attempt ($ev.attempt) started" }
            "step_attempt_failed" => {
                let next = if ($ev.retrying? | default false) { "retrying" } else { "not retried" }
                print $"($ev.step): attempt ($ev.attempt) failed \(exit ($ev.exit_code? | default '?')\), ($next): ($ev.error? | default '')"
            }
            "step_finished" => { print $"($ev.step): ($ev.status) after ($ev.attempt) attempt\(s\)" }
            "output" => { for line in ($ev.lines? | default []) { print $"($ev.step) | ($line)" } }
            "output_truncated" => { print $"($ev.step): ($ev.message)" }
            _ => {}
        }
    }
    if $final == "" {
        # Resumed past the end, or the stream was cut: say where it stands.
        $final = (api-get $"/tasks/(q $task_id)").status
    }
    print $"task ($task_id): ($final)"
}
