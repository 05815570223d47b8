#!/usr/bin/env nu
# migrate-storage.nu: move the orchestrator's task store between backends, over `orchestrator migrate`.
#
#   scripts/migrate-storage.nu --interactive
#       asks the source, the target and their credentials (Nushell prompts:
#       `input list` for the type, `input` for paths, URLs and users, `input -s`
#       for passwords), shows the dry run, asks to confirm, migrates, validates.
#   scripts/migrate-storage.nu validate --from <store> --to <store> [options] [--json]
#       writes nothing: both ends reachable, their schema present, task counts
#       and a record-by-record comparison (`orchestrator migrate --validate`).
#       Exit 0 when the target holds exactly the source's tasks and audit
#       entries, 1 otherwise (the report is printed either way).
#   scripts/migrate-storage.nu run --from <store> --to <store> [options] [--dry-run] [--checkpoint f]
#       the migration itself, without questions.
#
# <store> is one of
#   filesystem:<dir>             (a bare existing directory means the same)
#   surrealdb-embedded:<dir>
#   ws://host:port | wss://... | http://... | https://...   (surrealdb-server)
# with, for SurrealDB, --from-namespace/--to-namespace (default orchestrator),
# --from-database/--to-database (default tasks), --from-username/--to-username.
#
# Passwords never go on a command line (where `ps` shows them): the
# orchestrator reads ORCHESTRATOR_MIGRATE_FROM_SURREALDB_PASSWORD and
# ORCHESTRATOR_MIGRATE_TO_SURREALDB_PASSWORD from its environment. Set them
# for `validate`/`run`; --interactive asks and passes them that way.
#
# The executable: --binary, else $env.ORCHESTRATOR_BIN, else built from this
# repository (scripts/orchestrator-bin.nu).

use ./orchestrator-bin.nu [find-binary fail]

const TYPES = [filesystem surrealdb-server surrealdb-embedded]
const PASSWORD_ENV = {
    from: "ORCHESTRATOR_MIGRATE_FROM_SURREALDB_PASSWORD"
    to: "ORCHESTRATOR_MIGRATE_TO_SURREALDB_PASSWORD"
}

# The migrate flags of one side (`from` or `to`) for a <store> spec.
def side-flags [side: string, spec: string, namespace?: string, database?: string, username?: string] {
    let parsed = if ($spec =~ '^(ws|wss|http|https)://') {
        {type: "surrealdb-server", url: $spec}
    } else if ($spec | str starts-with "filesystem:") {
        {type: "filesystem", dir: ($spec | str substring 11..)}
    } else if ($spec | str starts-with "surrealdb-embedded:") {
        {type: "surrealdb-embedded", dir: ($spec | str substring 19..)}
    } else if ($spec != "" and ($spec | path exists)) {
        {type: "filesystem", dir: $spec}
    } else {
        fail $"--($side): ($spec) is not filesystem:<dir>, surrealdb-embedded:<dir>, a ws:// or http:// SurrealDB URL, or an existing directory"
    }
    mut flags = [$"--($side)" $parsed.type]
    if "dir" in $parsed {
        if $parsed.dir == "" { fail $"--($side): ($spec) names no directory" }
        $flags = ($flags | append [$"--($side)-data-dir" ($parsed.dir | path expand)])
    } else {
        $flags = ($flags | append [$"--($side)-surrealdb-url" $parsed.url])
    }
    if $parsed.type != "filesystem" {
        if $namespace != null and $namespace != "" { $flags = ($flags | append [$"--($side)-surrealdb-namespace" $namespace]) }
        if $database != null and $database != "" { $flags = ($flags | append [$"--($side)-surrealdb-database" $database]) }
        if $username != null and $username != "" { $flags = ($flags | append [$"--($side)-surrealdb-username" $username]) }
    }
    $flags
}

# Run `orchestrator migrate` with flags; the password record ({from, to},
# values may be null) goes into its environment only. --capture returns
# {stdout, stderr, exit_code}; otherwise output streams to this terminal and
# the exit code is returned.
def migrate-cmd [bin: string, flags: list<string>, passwords: record, --capture] {
    mut pw_env = {}
    for side in [from to] {
        let pw = ($passwords | get -o $side)
        if $pw != null and $pw != "" { $pw_env = ($pw_env | insert ($PASSWORD_ENV | get $side) $pw) }
    }
    let pw_env = $pw_env
    with-env $pw_env {
        if $capture {
            ^$bin migrate ...$flags | complete
        } else {
            try { ^$bin migrate ...$flags; 0 } catch {|e| $e.exit_code? | default 1 }
        }
    }
}

# Validate (read-only): returns the report record; raises when the command
# could not produce one.
def validate-report [bin: string, flags: list<string>, passwords: record] {
    let r = (migrate-cmd $bin ($flags | append ["--validate" "--output" "json"]) $passwords --capture)
    let rep = try { $r.stdout | from json } catch { null }
    if $rep == null {
        fail $"orchestrator migrate --validate failed \(exit ($r.exit_code)\): ($r.stderr | str trim)"
    }
    $rep
}

# Print the report for people: one row per side, then the verdict line.
def show [rep: record] {
    let sides = ([[side s]; [source $rep.from] [target $rep.to]] | each {|row| {
        side: $row.side, reachable: $row.s.reachable, schema: $row.s.schema,
        tasks: (if $rep.compared { $row.s.tasks } else { null }), store: $row.s.store,
    } })
    print ($sides | table --index false)
    for row in [[side s]; [source $rep.from] [target $rep.to]] {
        if ($row.s.error? | default "") != "" { print $"($row.side): ($row.s.error)" }
    }
    if $rep.compared {
        print $"identical: ($rep.identical) tasks; to copy: ($rep.to_copy) tasks, ($rep.audit_to_copy) audit entries; only in the target: ($rep.target_extra | length); mismatches: ($rep.mismatches | length)"
        for m in ($rep.mismatches | first 20) { print $"  ($m.id): ($m.reason)" }
    }
    print (if $rep.in_sync { "validation: IN SYNC" } else { "validation: NOT IN SYNC" })
}

# Print the help.
def main [
    --interactive (-i)    # ask for source, target and credentials; dry run; confirm; migrate
    --binary: string      # the orchestrator executable (default: see the header)
    --checkpoint: string  # with --interactive: a checkpoint file, so that a rerun resumes
] {
    if not $interactive {
        print "usage:
  scripts/migrate-storage.nu --interactive
  scripts/migrate-storage.nu validate --from <store> --to <store> [--json]
  scripts/migrate-storage.nu run --from <store> --to <store> [--dry-run] [--checkpoint f]
<store>: filesystem:<dir> | surrealdb-embedded:<dir> | ws://host:port (SurrealDB server)
passwords: ORCHESTRATOR_MIGRATE_FROM_SURREALDB_PASSWORD / ORCHESTRATOR_MIGRATE_TO_SURREALDB_PASSWORD"
        return
    }
    let bin = (find-binary $binary)
    let src = (ask-side "source" from)
    let dst = (ask-side "target" to)
    mut flags = ($src.flags | append $dst.flags)
    if $checkpoint != null { $flags = ($flags | append ["--checkpoint" ($checkpoint | path expand)]) }
    let flags = $flags
    let passwords = {from: $src.password, to: $dst.password}

    print $"\n== dry run \(nothing is written\) =="
    let dry = (migrate-cmd $bin ($flags | append ["--dry-run"]) $passwords --capture)
    print ($dry.stdout | str trim)
    if $dry.exit_code != 0 and ($dry.stdout | str trim | is-empty) {
        fail $"the dry run failed: ($dry.stderr | str trim)"
    }
    let answer = (input "\nMigrate now? [y/N] " | str trim | str lowercase)
    if $answer not-in [y yes] {
        print "aborted: nothing was written"
        return
    }
    print "\n== migration =="
    let code = (migrate-cmd $bin $flags $passwords)
    if $code != 0 { fail $"the migration failed \(exit ($code)\); run it again to resume: the copy is idempotent" }
    print "\n== validation =="
    let rep = (validate-report $bin ($src.flags | append $dst.flags) $passwords)
    show $rep
    if not $rep.in_sync { fail "the stores are not in sync after the migration (see above)" }
    print "migrated and validated: the stores are in sync"
}

# Ask for one side of the migration; returns {flags, password}.
def ask-side [label: string, side: string] {
    let type = ($TYPES | input list $"($label) store type")
    if $type == null or $type == "" { fail $"no ($label) store type chosen" }
    print $"($label) store type: ($type)"
    if $type == "surrealdb-server" {
        let url = (input $"($label) SurrealDB URL \(ws://host:8000\): " | str trim)
        let ns = (input $"($label) namespace [orchestrator]: " | str trim)
        let db = (input $"($label) database [tasks]: " | str trim)
        let user = (input $"($label) username: " | str trim)
        let pw = (input -s $"($label) password: ")
        print ""
        {flags: (side-flags $side $url $ns $db $user), password: $pw}
    } else {
        let dir = (input $"($label) data directory [./data]: " | str trim)
        let dir = if $dir == "" { "./data" } else { $dir }
        {flags: (side-flags $side $"($type):($dir)"), password: null}
    }
}

# Compare two stores without writing: reachable, schema present, counts,
# record by record. Exit 1 unless they are in sync.
def "main validate" [
    --from: string            # the source <store>
    --to: string              # the target <store>
    --from-namespace: string  # SurrealDB namespace (default orchestrator)
    --from-database: string   # SurrealDB database (default tasks)
    --from-username: string   # SurrealDB root user
    --to-namespace: string
    --to-database: string
    --to-username: string
    --binary: string          # the orchestrator executable (default: see the header)
    --json                    # print the whole report as JSON
] {
    if $from == null { fail "validate: --from is required" }
    if $to == null { fail "validate: --to is required" }
    let flags = ((side-flags from $from $from_namespace $from_database $from_username)
        | append (side-flags to $to $to_namespace $to_database $to_username))
    let bin = (find-binary $binary)
    # The passwords, if any, are already in this environment.
    let rep = (validate-report $bin $flags {})
    if $json { print ($rep | to json) } else { show $rep }
    if not $rep.in_sync { exit 1 }
}

# Migrate without questions (progress on stderr, the summary on stdout).
def "main run" [
    --from: string            # the source <store>
    --to: string              # the target <store>
    --from-namespace: string
    --from-database: string
    --from-username: string
    --to-namespace: string
    --to-database: string
    --to-username: string
    --dry-run                 # compare and report only
    --checkpoint: string      # progress file, so that a rerun resumes
    --binary: string          # the orchestrator executable (default: see the header)
] {
    if $from == null { fail "run: --from is required" }
    if $to == null { fail "run: --to is required" }
    mut flags = ((side-flags from $from $from_namespace $from_database $from_username)
        | append (side-flags to $to $to_namespace $to_database $to_username))
    if $dry_run { $flags = ($flags | append "--dry-run") }
    if $checkpoint != null { $flags = ($flags | append ["--checkpoint" ($checkpoint | path expand)]) }
    let flags = $flags
    let bin = (find-binary $binary)
    let code = (migrate-cmd $bin $flags {})
    if $code != 0 { exit $code }
}
