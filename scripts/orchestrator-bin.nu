# orchestrator-bin.nu: which orchestrator executable the scripts in scripts/ run.
#
#   use ./orchestrator-bin.nu [find-binary]
#   find-binary $given     # $given: a path, or null
#
# In order: the given path (the scripts' --binary), $env.ORCHESTRATOR_BIN,
# else `go build -o <repo>/bin/orchestrator ./cmd/orchestrator` from the
# repository these scripts live in (Go's build cache makes that quick when
# nothing changed, and the binary is never older than the source), else,
# without `go`, an existing <repo>/bin/orchestrator, else `orchestrator` on
# PATH. Build messages go to stderr.

const REPO = path self ..

# Raise a one-message error.
export def fail [msg: string] {
    error make --unspanned {msg: $msg}
}

# The orchestrator executable's absolute path (see the header).
export def find-binary [given?: any] {
    let given = ($given | default ($env.ORCHESTRATOR_BIN? | default ""))
    if $given != "" {
        let p = ($given | path expand)
        if not ($p | path exists) { fail $"--binary ($given): no such file" }
        return $p
    }
    let built = ($REPO | path join bin orchestrator)
    if (which go | is-not-empty) {
        print --stderr $"go build -o ($built) ./cmd/orchestrator"
        let r = (do { cd $REPO; ^go build -o $built ./cmd/orchestrator } | complete)
        if $r.exit_code != 0 { fail $"go build failed:\n($r.stderr)" }
        return $built
    }
    if ($built | path exists) { return $built }
    let on_path = (which orchestrator)
    if ($on_path | is-not-empty) { return $on_path.0.path }
    fail "no orchestrator binary: pass --binary, set ORCHESTRATOR_BIN, or install Go to build it"
}
