# workflow.nu: inspect and cancel orchestrator tasks.
#
#   use nulib/workflows/workflow.nu *
#   workflow status <task_id>                    # the task record
#   workflow list [--status Completed] [--limit 20]   # a table, newest first
#   workflow cancel <task_id>                    # the cancel answer; error if already finished
#
# URL: $env.ORCHESTRATOR_URL (default http://localhost:8080). API errors become
# `error make` with the API's message and field.

use ../api.nu *

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
