#!/usr/bin/env nu
# start-orchestrator.nu: start the orchestrator, wait until it is healthy, keep a pid file; or stop it.
#
#   scripts/start-orchestrator.nu [--background] [script flags] [orchestrator flags...]
#   scripts/start-orchestrator.nu --stop [--pid-file f | --data-dir d]
#
# Script flags (everything else is passed to `orchestrator` unchanged, e.g.
# --port 8081 --data-dir /srv/orch --storage-type surrealdb-server ...):
#   --background       detach (own session, survives this shell), logs appended
#                      to the log file; the script returns once /health is OK
#                      Without it the orchestrator runs in the foreground with its
#                      logs on this terminal; Ctrl-C stops it.
#   --stop             SIGTERM the process of the pid file, wait until it has
#                      exited (SIGKILL after --timeout), remove the pid file.
#                      Idempotent: no pid file, or a dead process, is success.
#   --binary <path>    the orchestrator executable (or $env.ORCHESTRATOR_BIN).
#                      Default: built from this repository with
#                      `go build -o <repo>/bin/orchestrator ./cmd/orchestrator`
#                      (Go's build cache makes that quick when nothing changed, and
#                      the binary is never older than the source); without `go`,
#                      an existing <repo>/bin/orchestrator, then `orchestrator` on
#                      PATH (scripts/orchestrator-bin.nu).
#   --pid-file <path>  default <data-dir>/orchestrator.pid
#   --log-file <path>  default <data-dir>/orchestrator.log (--background only)
#   --timeout <dur>    bound on the wait for /health, and on --stop's wait; default 60sec
#
# The health URL is http://<host>:<port>/health from the passed --host/--port
# (or ORCHESTRATOR_HOST/ORCHESTRATOR_PORT; defaults 127.0.0.1 and 8080; a
# wildcard host is checked on 127.0.0.1); <data-dir> likewise from --data-dir or
# ORCHESTRATOR_DATA_DIR (default ./data). Relative paths are the orchestrator's
# own defaults (./data, ./core/nulib/provisioning): run it from the repository
# root or pass absolute ones.
#
# Output: a record {pid, url, pid_file, log_file} once healthy (--background),
# {stopped, pid} for --stop. Exit 1 with a message (and the log's last lines)
# when it is already running, does not become healthy in time, or exits early.

use ./orchestrator-bin.nu [find-binary]

const SCRIPT_FLAGS = [--background --stop]
const SCRIPT_OPTIONS = [--binary --pid-file --log-file --timeout]
const LOG_TAIL = 30

def fail [msg: string] {
    error make --unspanned {msg: $msg}
}

# Split argv into this script's options and the orchestrator's flags.
def split-args [args: list<string>] {
    mut own = {background: false, stop: false}
    mut pass = []
    mut i = 0
    while $i < ($args | length) {
        let a = ($args | get $i)
        let name = ($a | split row "=" | first)
        if $a in $SCRIPT_FLAGS {
            $own = ($own | upsert ($a | str substring 2..) true)
        } else if $name in $SCRIPT_OPTIONS {
            let key = ($name | str substring 2.. | str replace --all "-" "_")
            let value = if ($a | str contains "=") {
                $a | str substring (($name | str length) + 1)..
            } else {
                $i += 1
                if $i >= ($args | length) { fail $"start-orchestrator: ($name) needs a value" }
                $args | get $i
            }
            $own = ($own | upsert $key $value)
        } else {
            $pass = ($pass | append $a)
        }
        $i += 1
    }
    {own: $own, pass: $pass}
}

# The value of orchestrator flag `name` among the passed flags (Go's flag
# package takes -name and --name, with the value joined by = or next), else
# its ORCHESTRATOR_* variable, else default.
def flag-value [pass: list<string>, name: string, default: string] {
    mut found = ""
    mut seen = false
    mut i = 0
    while $i < ($pass | length) {
        let a = ($pass | get $i)
        for form in [$"--($name)" $"-($name)"] {
            if $a == $form and ($i + 1) < ($pass | length) {
                $found = ($pass | get ($i + 1))
                $seen = true
            } else if ($a | str starts-with $"($form)=") {
                $found = ($a | str substring (($form | str length) + 1)..)
                $seen = true
            }
        }
        $i += 1
    }
    if $seen { return $found }
    let env_name = $"ORCHESTRATOR_($name | str uppercase | str replace --all '-' '_')"
    $env | get -o $env_name | default $default
}

# Whether pid is a live process (a zombie is not: it has exited).
def alive [pid: int] {
    let stat = $"/proc/($pid)/stat"
    if not ($stat | path exists) { return false }
    let text = try { open --raw $stat } catch { return false }
    # The state follows the parenthesised command name, which may hold spaces.
    let state = ($text | split row ") " | last | split row " " | first)
    $state != "Z"
}

# Whether pid runs the orchestrator (so a reused pid is never signalled).
def is-orchestrator [pid: int] {
    let cmdline = try { open --raw $"/proc/($pid)/cmdline" | split row (char nul) } catch { return false }
    ($cmdline | is-not-empty) and ($cmdline.0 | path basename | str contains "orchestrator")
}

def read-pid [pid_file: string] {
    if not ($pid_file | path exists) { return null }
    try { open --raw $pid_file | str trim | into int } catch { null }
}

def log-tail [log_file: any] {
    if $log_file == null or not ($log_file | path exists) { return "" }
    let lines = (open --raw $log_file | lines | last $LOG_TAIL | str join "\n")
    $"\n--- last lines of ($log_file) ---\n($lines)"
}

# Poll url until it answers 200 "Orchestrator is healthy"; false when pid
# exits first or timeout passes.
def wait-healthy [url: string, pid: int, timeout: duration] {
    let deadline = ((date now) + $timeout)
    loop {
        if not (alive $pid) { return {ok: false, why: $"the orchestrator \(pid ($pid)\) exited before it became healthy"} }
        let res = try { http get --full --allow-errors --max-time 2sec $url } catch { null }
        if $res != null and $res.status == 200 and ($res.body.data? | default "") == "Orchestrator is healthy" {
            return {ok: true}
        }
        if (date now) > $deadline {
            let last = if $res == null { "no answer" } else { $"HTTP ($res.status): ($res.body | to json -r | str substring 0..300)" }
            return {ok: false, why: $"($url) not healthy after ($timeout) \(last: ($last)\)"}
        }
        sleep 200ms
    }
}

# SIGTERM pid, wait until it has exited (SIGKILL after timeout).
def stop-pid [pid: int, timeout: duration] {
    kill --quiet $pid
    let deadline = ((date now) + $timeout)
    while (alive $pid) {
        if (date now) > $deadline {
            print --stderr $"start-orchestrator: pid ($pid) still running after ($timeout): SIGKILL"
            kill --quiet --force $pid
            sleep 200ms
            break
        }
        sleep 100ms
    }
}

def do-stop [pid_file: string, timeout: duration] {
    let pid = (read-pid $pid_file)
    if $pid == null {
        if ($pid_file | path exists) { rm -f $pid_file }
        print --stderr $"start-orchestrator: not running \(no pid in ($pid_file)\)"
        return {stopped: false, pid: null}
    }
    if not (alive $pid) or not (is-orchestrator $pid) {
        rm -f $pid_file
        print --stderr $"start-orchestrator: not running \(stale pid file ($pid_file) removed\)"
        return {stopped: false, pid: $pid}
    }
    stop-pid $pid $timeout
    rm -f $pid_file
    print --stderr $"start-orchestrator: stopped pid ($pid)"
    {stopped: true, pid: $pid}
}

# See the header.
def --wrapped main [...args] {
    let parsed = (split-args $args)
    let own = $parsed.own
    let pass = $parsed.pass
    let timeout = try { $own.timeout? | default "60sec" | into duration } catch { fail $"start-orchestrator: --timeout ($own.timeout): not a duration \(e.g. 90sec, 2min\)" }
    let data_dir = (flag-value $pass data-dir "./data" | path expand)
    let pid_file = ($own.pid_file? | default ($data_dir | path join orchestrator.pid) | path expand)

    if $own.stop { return (do-stop $pid_file $timeout) }

    let old = (read-pid $pid_file)
    if $old != null and (alive $old) and (is-orchestrator $old) {
        fail $"start-orchestrator: already running \(pid ($old), ($pid_file)\); stop it with --stop"
    }
    let port = (flag-value $pass port "8080")
    if $port == "0" { fail "start-orchestrator: --port 0 (a free port) cannot be health-checked: give a port" }
    let host = (flag-value $pass host "127.0.0.1")
    let check_host = if $host in ["" "0.0.0.0" "::" "[::]"] { "127.0.0.1" } else if ($host | str contains ":") { $"[($host)]" } else { $host }
    let url = $"http://($check_host):($port)/health"
    let bin = (find-binary ($own.binary? | default null))
    mkdir $data_dir ($pid_file | path dirname)

    if $own.background {
        let log_file = ($own.log_file? | default ($data_dir | path join orchestrator.log) | path expand)
        mkdir ($log_file | path dirname)
        # setsid: its own session, so neither this shell's end nor a Ctrl-C
        # here reaches it. The paths and flags are sh's positional
        # parameters ("$@"), never part of the command text.
        let r = (^sh -c 'log=$1; shift; setsid "$@" >>"$log" 2>&1 </dev/null & echo $!' start-orchestrator $log_file $bin ...$pass | complete)
        if $r.exit_code != 0 { fail $"start-orchestrator: could not start ($bin): ($r.stderr)" }
        let pid = ($r.stdout | str trim | into int)
        $pid | into string | save --force $pid_file
        let h = (wait-healthy $url $pid $timeout)
        if not $h.ok {
            if (alive $pid) { stop-pid $pid 15sec }
            rm -f $pid_file
            fail $"start-orchestrator: ($h.why)(log-tail $log_file)"
        }
        print --stderr $"start-orchestrator: healthy at ($url) \(pid ($pid), logs ($log_file)\)"
        return {pid: $pid, url: $url, pid_file: $pid_file, log_file: $log_file}
    }

    # Foreground: the orchestrator's output streams here line by line while
    # this script waits for /health, then for the process to end.
    let job = (job spawn { ^$bin ...$pass o+e>| lines | each {|l| print $l } | ignore })
    mut pid = 0
    for _ in 1..50 {
        let pids = (job list | where id == $job | get -o 0.pids | default [])
        if ($pids | is-not-empty) { $pid = $pids.0; break }
        sleep 20ms
    }
    if $pid == 0 { fail $"start-orchestrator: ($bin) did not start" }
    let pid = $pid
    $pid | into string | save --force $pid_file
    # A Ctrl-C reaches the orchestrator (same process group) and interrupts
    # the waits below: then this script makes sure it has stopped and removes
    # the pid file rather than leaving a stale one.
    let outcome = try {
        let h = (wait-healthy $url $pid $timeout)
        if $h.ok {
            print --stderr $"start-orchestrator: healthy at ($url) \(pid ($pid)\); Ctrl-C stops it"
            while (job list | where id == $job | is-not-empty) { sleep 200ms }
        }
        $h
    } catch {|e| {ok: true, interrupted: $e.msg} }
    if (alive $pid) { stop-pid $pid $timeout }
    if (read-pid $pid_file) == $pid { rm -f $pid_file }
    if not $outcome.ok { fail $"start-orchestrator: ($outcome.why)" }
    print --stderr $"start-orchestrator: pid ($pid) stopped"
}
