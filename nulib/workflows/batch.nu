# batch.nu: batches (a DAG of server/taskserv/cluster operations run as one
# task, POST /workflows/batch) and their plan → approve → apply flow.
#
#   use nulib/workflows/batch.nu *
#   batch submit <file> [--wait] [--priority 1..5] [--require-approval]
#   batch plan <file>                  # mode plan: every operation with --check; shows each plan
#   batch status <batch id>            # operations, approval, compensations
#   task approve <batch id> [--comment "..."]
#   task reject <batch id> [--comment "..."]
#
# A batch file is a record in NUON (.nuon), YAML (.yaml, .yml), TOML (.toml)
# or JSON (.json), read with Nushell's `open` by its extension. Its fields
# are those of POST /workflows/batch (CreateBatchRequest): name, infra,
# settings, check_mode, wait, priority, parallelism, fail_fast, rollback,
# mode, require_approval, approval_timeout and operations, each operation
# {id, type: server|taskserv|cluster, servers, taskserv, cluster, infra,
# settings, check_mode, wait, depends_on}. See examples/batch.yaml. The
# file is sent as it is: the API validates it and its 400 names the field
# (`operations[2].depends_on[0]: ...`), which becomes the error here.
#
# Batch summaries (what submit --wait, plan, status, approve and reject
# return) are records: {id, name, status, mode, phase, progress, error,
# operations: table<id, type, status, task_id, rolled_back, error>,
# approval, compensations: table<operation, target, status, attempts>}.
# `batch plan` (and submit --require-approval) adds `plans`: table<id,
# type, status, task_id, plan>. A Failed batch is returned, not raised:
# check its `status`.
#
# URL: $env.ORCHESTRATOR_URL (default http://localhost:8080).

use ../api.nu *
use ./create.nu [wait-task]

# The formats a batch file may be in, by extension.
const BATCH_FORMATS = {nuon: nuon, yaml: yaml, yml: yaml, toml: toml, json: json}

# The innermost reason of a caught error: nu nests the parser's own message
# below "Error while parsing as ..."; TOML puts the line and column in its
# help, YAML only in the error's debug text.
def error-reason [details: record, debug: string] {
    let inner = ($details.inner? | default [])
    if not ($inner | is-empty) {
        return (error-reason ($inner | first) $debug)
    }
    let help = ($details.help? | default "" | lines | where {|l| not ($l | str contains "|") and ($l | str trim) != "" } | each { str trim } | str join "; ")
    if $help != "" { return $help }
    let label = ($details.labels?.0?.text? | default $details.msg)
    let at = ($debug | parse --regex 'line: (?<line>\d+), col: (?<col>\d+) \}, kind: (?<kind>\w+)')
    if ($at | is-empty) { $label } else {
        let p = ($at | first)
        $"($label): ($p.kind) at line ($p.line), column (($p.col | into int) + 1)"
    }
}

# Read a batch file (NUON, YAML, TOML or JSON, by extension) into the
# request record; an unreadable or malformed file is an error naming it.
export def "batch read" [file: string] {
    let ext = ($file | path parse | get extension | str lowercase)
    let format = ($BATCH_FORMATS | get --optional $ext)
    if $format == null {
        fail $"batch file ($file): unknown extension '($ext)': use .nuon, .yaml, .yml, .toml or .json"
    }
    if not ($file | path exists) {
        fail $"batch file ($file): not found"
    }
    # Failures become values in `try` and are raised after it (see api.nu).
    let parsed = try {
        {ok: (open $file)}
    } catch {|e|
        {err: (error-reason ($e.details? | default {msg: $e.msg}) ($e.debug? | default ""))}
    }
    if "err" in $parsed {
        fail $"batch file ($file): not valid ($format | str uppercase): ($parsed.err)"
    }
    let batch = $parsed.ok
    if not ($batch | describe | str starts-with "record") {
        fail $"batch file ($file): must hold a record with `operations`, not a ($batch | describe)"
    }
    $batch
}

# A batch task's summary: its operations, approval and rollback.
export def "batch summary" [task: record] {
    let b = $task.batch?
    if $b == null {
        fail $"task ($task.id) is a ($task.workflow_type? | default 'task'), not a batch"
    }
    let ops = ($b.operations? | default [])
    {
        id: $task.id
        name: $task.name
        status: $task.status
        mode: $b.mode
        phase: $b.phase
        progress: $"($task.progress?.done? | default 0)/($task.progress?.total? | default 0)"
        error: ($task.error? | default null)
        operations: ($ops | each {|o| {
            id: $o.id, type: $o.type, status: $o.status, task_id: $o.task_id,
            rolled_back: ($o.rolled_back? | default false), error: ($o.error? | default "")
        } })
        approval: ($b.approval? | default null)
        compensations: ($b.compensations? | default [] | each {|c| {
            operation: $c.operation, target: $c.target, status: $c.status, attempts: ($c.attempts? | default 0)
        } })
    }
}

# Each operation's plan (its check run's output), for a batch that planned.
export def "batch plans" [task: record] {
    let ops = ($task.batch?.operations? | default [])
    $ops | each {|o|
        # With require_approval the plan has its own status and task; in
        # mode plan the operation's are the check run's.
        let ps = ($o.plan_status? | default "")
        let pt = ($o.plan_task_id? | default "")
        {
            id: $o.id
            type: $o.type
            status: (if $ps == "" { $o.status } else { $ps })
            task_id: (if $pt == "" { $o.task_id } else { $pt })
            plan: ($o.plan? | default "")
        }
    }
}

# Wait until a batch with require_approval has its plan (it awaits the
# decision, or was decided already) or has ended; progress on stderr.
def wait-plan [id: string, --interval: duration = 250ms] {
    mut last = ""
    loop {
        let task = (api-get $"/tasks/(q $id)")
        let phase = ($task.batch?.phase? | default "")
        let line = $"batch ($id): ($task.status) ($phase) ($task.progress?.done? | default 0)/($task.progress?.total? | default 0)"
        if $line != $last {
            print --stderr $line
            $last = $line
        }
        if $task.batch?.approval? != null or $task.status in $TERMINAL_TASK_STATES {
            return $task
        }
        sleep $interval
    }
}

# Submit a batch file (POST /workflows/batch). Without --wait or
# --require-approval: {task_id}. --wait: follows the batch to its end and
# returns its summary. --require-approval: the batch plans first, and
# this returns its summary with `plans` once it awaits approval (approve
# with `task approve <id>`, reject with `task reject <id>`); with --wait
# as well it then follows the batch to its end. --priority overrides the
# file's. The batch id goes to stderr at once.
export def "batch submit" [
    file: string             # the batch file: .nuon, .yaml, .yml, .toml or .json
    --wait                   # follow the batch to its end and show each operation's status
    --priority: int          # 1 (most urgent) to 5; default the file's, else 3
    --require-approval       # plan, then wait for `task approve` before applying
] {
    mut body = (batch read $file)
    if $priority != null { $body = ($body | upsert priority $priority) }
    if $require_approval { $body = ($body | upsert require_approval true) }
    let id = (api-post "/workflows/batch" $body)
    print --stderr $"batch ($id) submitted"
    let approving = ($body.require_approval? | default false) == true
    if not $approving {
        return (if $wait { batch summary (wait-task $id) } else { {task_id: $id} })
    }
    let task = (wait-plan $id)
    let plans = (batch plans $task)
    if $task.batch?.phase? == "awaiting_approval" {
        print --stderr $"batch ($id): awaiting approval until ($task.batch.approval.deadline): `task approve ($id)` or `task reject ($id)`"
    }
    if not $wait or $task.status in $TERMINAL_TASK_STATES {
        return (batch summary $task | insert plans $plans)
    }
    # Following on: the plan goes to stderr now, for whoever decides.
    print --stderr ($plans | select id type status plan | table --expand)
    batch summary (wait-task $id) | insert plans $plans
}

# Plan a batch file: submit it with mode plan (every operation runs with
# --check: nothing changes), wait for it, and return its summary with each
# operation's plan (`plans`).
export def "batch plan" [
    file: string             # the batch file: .nuon, .yaml, .yml, .toml or .json
    --priority: int          # 1 (most urgent) to 5; default the file's, else 3
] {
    mut body = (batch read $file | upsert mode plan)
    # A plan is only a plan: it never waits for an approval.
    if "require_approval" in $body { $body = ($body | reject require_approval) }
    if $priority != null { $body = ($body | upsert priority $priority) }
    let id = (api-post "/workflows/batch" $body)
    print --stderr $"batch ($id) submitted \(plan\)"
    let task = (wait-task $id)
    batch summary $task | insert plans (batch plans $task)
}

# A batch's state (GET /tasks/{id}): its operations (id, type, status,
# task_id, rolled_back), approval and compensations; with `plans` when it
# planned.
export def "batch status" [id: string] {
    let task = (api-get $"/tasks/(q $id)")
    let summary = (batch summary $task)
    if $task.batch.mode == "plan" or ($task.batch.require_approval? | default false) {
        $summary | insert plans (batch plans $task)
    } else {
        $summary
    }
}

def decide [id: string, verb: string, comment?: string] {
    let body = if $comment == null { null } else { {comment: $comment} }
    batch summary (api-post $"/tasks/(q $id)/($verb)" $body)
}

# Approve a batch awaiting approval (POST /tasks/{id}/approve): it applies
# its operations. The approver is the API token's name. A batch that is not
# awaiting approval is an error saying why (HTTP 409).
export def "task approve" [
    id: string               # the batch's task id
    --comment: string        # a note kept with the decision and in the audit trail
] {
    decide $id approve $comment
}

# Reject a batch awaiting approval (POST /tasks/{id}/reject): nothing is
# applied and the batch ends Cancelled.
export def "task reject" [
    id: string               # the batch's task id
    --comment: string        # a note kept with the decision and in the audit trail
] {
    decide $id reject $comment
}
