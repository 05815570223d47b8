# create.nu: start provisioning workflows and optionally wait for them.
#
#   use nulib/workflows/create.nu *
#   server_create_workflow <infra> ...servers --settings <path> [--check] [--wait] [--priority 1..5] [--webhook <url>]
#     (no servers: every server the settings file defines, see `provisioning server list`)
#   taskserv_create_workflow <taskserv> <infra> ...servers --settings <path> [--check] [--wait] [--priority 1..5] [--webhook <url>]
#   cluster_create_workflow <cluster> <infra> --settings <path> [--check] [--wait] [--priority 1..5] [--webhook <url>]
#
# Without --wait: returns {task_id}. With --wait: follows the task's live
# event stream (GET /tasks/{id}/events) until it is Completed, Failed or
# Cancelled, printing progress (status done/total) to stderr on every
# transition, and returns the final task record (a Failed task is returned,
# not raised; check its `status`). If the stream is unavailable it polls
# GET /tasks/{id} every 250 ms instead.

use ../api.nu *

# Wait until a task is terminal; progress lines go to stderr.
export def wait-task [task_id: string, --interval: duration = 250ms] {
    let task = (api-get $"/tasks/(q $task_id)")
    if $task.status in $TERMINAL_TASK_STATES {
        return $task
    }
    let streamed = try {
        mut last = ""
        for ev in (task-events $task_id) {
            if $ev.type == "transition" {
                let line = $"task ($task_id): ($ev.status) ($ev.progress?.done? | default 0)/($ev.progress?.total? | default 0)"
                if $line != $last {
                    print --stderr $line
                    $last = $line
                }
            }
        }
        true
    } catch { false }
    if $streamed {
        let task = (api-get $"/tasks/(q $task_id)")
        if $task.status in $TERMINAL_TASK_STATES {
            return $task
        }
    }
    poll-task $task_id --interval $interval
}

# Poll a task until it is terminal (for servers without event streams).
def poll-task [task_id: string, --interval: duration = 250ms] {
    mut last = ""
    loop {
        let task = (api-get $"/tasks/(q $task_id)")
        let p = ($task.progress? | default {done: 0, total: 0})
        let line = $"task ($task_id): ($task.status) ($p.done? | default 0)/($p.total? | default 0)"
        if $line != $last {
            print --stderr $line
            $last = $line
        }
        if $task.status in $TERMINAL_TASK_STATES {
            return $task
        }
        sleep $interval
    }
}

def submit [path: string, body: record, wait: bool, priority?: int, webhook?: string] {
    # Only a given priority is sent: the API's default (3) applies otherwise.
    let body = if $priority == null { $body } else { $body | insert priority $priority }
    # Likewise the webhook: without one nothing is delivered.
    let body = if $webhook == null { $body } else { $body | insert webhook {url: $webhook} }
    let id = (api-post $path $body)
    if $wait { wait-task $id } else { {task_id: $id} }
}

# Create servers in an infra (POST /workflows/servers/create).
export def server_create_workflow [
    infra: string          # infrastructure name
    ...servers: string     # servers to create; none: every server the settings define
    --settings: string     # settings file path (required by the API)
    --check                # check mode: report, change nothing
    --wait                 # wait for the task to finish, showing progress
    --priority: int        # 1 (most urgent) to 5; default 3
    --webhook: string      # URL that gets a signed POST on every status change
] {
    submit /workflows/servers/create {
        infra: $infra, settings: ($settings | default ""), servers: $servers,
        check_mode: $check, wait: $wait
    } $wait $priority $webhook
}

# Install a taskserv (POST /workflows/taskserv/create); no servers = one run for the infra.
export def taskserv_create_workflow [
    taskserv: string
    infra: string
    ...servers: string
    --settings: string
    --check
    --wait
    --priority: int        # 1 (most urgent) to 5; default 3
    --webhook: string      # URL that gets a signed POST on every status change
] {
    submit /workflows/taskserv/create {
        infra: $infra, settings: ($settings | default ""), taskserv: $taskserv, servers: $servers,
        check_mode: $check, wait: $wait
    } $wait $priority $webhook
}

# Create a cluster (POST /workflows/cluster/create).
export def cluster_create_workflow [
    cluster: string
    infra: string
    --settings: string
    --check
    --wait
    --priority: int        # 1 (most urgent) to 5; default 3
    --webhook: string      # URL that gets a signed POST on every status change
] {
    submit /workflows/cluster/create {
        infra: $infra, settings: ($settings | default ""), cluster: $cluster,
        check_mode: $check, wait: $wait
    } $wait $priority $webhook
}
