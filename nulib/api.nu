# api.nu: the shared REST client behind the orchestrator's Nushell wrappers.
#
# Every call goes through Nushell's own `http` commands with
# `--full --allow-errors`, so the envelope and the status are read here:
#   {"success":true,"data":...}                        -> data is returned (a record/table)
#   {"success":false,"error":{code,message,field}}     -> `error make` with the API's message and field
# The orchestrator URL comes from $env.ORCHESTRATOR_URL (default http://localhost:8080).
# A service that cannot be reached gives a single-message error, not Nushell internals.
#
# nu 0.115 notes: an `error make` raised inside a `catch` closure chains the
# caught error below it, so failures are turned into values inside `try` and
# raised after it; `--unspanned` keeps the caller's source line out of it.

const DEFAULT_URL = "http://localhost:8080"

# The orchestrator base URL, without a trailing slash.
export def orchestrator-url [] {
    $env.ORCHESTRATOR_URL? | default $DEFAULT_URL | str trim --right --char "/"
}

# Raise a one-message error (no span, no inner errors).
export def fail [msg: string] {
    error make --unspanned {msg: $msg}
}

# Call the API and return the envelope's data; raise on transport or API errors.
# body null = no body.
export def api-call [method: string, path: string, body?: any] {
    let base = (orchestrator-url)
    let url = $"($base)($path)"
    let res = try {
        match $method {
            "GET" => (http get --full --allow-errors $url)
            "DELETE" => (http delete --full --allow-errors $url)
            "POST" => {
                if $body == null {
                    http post --full --allow-errors $url ""
                } else {
                    http post --full --allow-errors --content-type application/json $url $body
                }
            }
        }
    } catch {|e|
        let why = ($e.details?.labels?.0?.text? | default $e.msg)
        {__transport_error: $why}
    }
    if ($res | describe | str starts-with "record") and ("__transport_error" in ($res | columns)) {
        fail $"cannot reach the orchestrator at ($base): ($res.__transport_error)"
    }
    let status = $res.status
    let body = $res.body
    let is_envelope = (($body | describe | str starts-with "record") and ("success" in ($body | columns)))
    if not $is_envelope {
        let text = ($body | to text | str trim | str substring 0..200)
        fail $"orchestrator ($method) ($path): HTTP ($status) without an API envelope: ($text)"
    }
    if $body.success != true or $status >= 400 {
        let err = ($body.error? | default {})
        let code = ($err.code? | default "error")
        let msg = ($err.message? | default "unknown error")
        let field = ($err.field? | default "")
        # Messages usually start with their field already ("servers[0]: ...").
        let suffix = if ($field | is-empty) or ($msg | str starts-with $"($field):") { "" } else { $" \(field: ($field)\)" }
        fail $"($msg)($suffix) [HTTP ($status) ($code)]"
    }
    $body.data
}

export def api-get [path: string] { api-call GET $path }
export def api-post [path: string, body?: any] { api-call POST $path $body }
export def api-delete [path: string] { api-call DELETE $path }

# Percent-encode a query parameter value.
export def q [value: any] { $value | into string | url encode --all | str replace --all "%2D" "-" | str replace --all "%5F" "_" }

# Task states that never change again.
export const TERMINAL_TASK_STATES = [Completed Failed Cancelled]

# A task's live events (GET /tasks/{id}/events, Server-Sent Events), as a
# stream of records read while the server sends them: {type, seq, status,
# progress, step, attempt, lines, ...}. The stream ends after the task's
# terminal transition. Check the task exists first (api-get): this call
# cannot show the API's error envelope. --after resumes after that seq.
export def task-events [task_id: string, --after: int] {
    let base = (orchestrator-url)
    let query = if $after == null { "" } else { $"?last_event_id=($after)" }
    http get --raw --headers {Accept: "text/event-stream"} $"($base)/tasks/(q $task_id)/events($query)"
    | lines
    | where {|l| $l | str starts-with "data: " }
    | each {|l| $l | str substring 6.. | from json }
}
