// Package nushell supervises the user's Nushell provisioning scripts: it
// runs `nu <provisioning-path> <args...>` as argv (never a shell string),
// captures bounded output, calls a heartbeat while the script runs, kills
// the script's whole session on cancel, and classifies exit codes into
// permanent and retryable failures. It knows nothing of Temporal: the
// activities package adapts it (heartbeats, error types, results).
package nushell

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/provisioning/orchestrator/internal/tailbuf"
)

// Defaults applied by Runner for zero-valued fields and arguments. They
// mirror the orchestrator's --nu-path and --provisioning-path flag defaults.
const (
	// DefaultNuPath is looked up in PATH, like a shell would.
	DefaultNuPath = "nu"
	// DefaultScriptPath is relative to the orchestrator's working directory:
	// the demo "local" provider shipped in this repository.
	DefaultScriptPath = "./core/nulib/provisioning"
	// DefaultMaxOutputBytes bounds each captured stream, so a chatty script
	// cannot grow a task record (or Temporal history) without limit.
	DefaultMaxOutputBytes = 256 << 10
	// DefaultKillGrace is how long a run may take to exit after SIGTERM
	// before everything left of it gets SIGKILL.
	DefaultKillGrace = 5 * time.Second
	// DefaultHeartbeatInterval is well below any sensible activity
	// heartbeat timeout (tens of seconds).
	DefaultHeartbeatInterval = 5 * time.Second
)

// Outcomes of a run, as counted by the orchestrator's metrics.
const (
	// OutcomeSuccess: the script exited 0.
	OutcomeSuccess = "success"
	// OutcomeFailure: the script failed or could not be started.
	OutcomeFailure = "failure"
	// OutcomeCancelled: the run was cancelled and its processes killed.
	OutcomeCancelled = "cancelled"
)

// DefaultPermanentExitCodes are the exit codes retrying cannot fix: 2 (usage
// error) and 3 (invalid configuration) by the provisioning scripts'
// convention, 126 and 127 (not executable, not found) by the shells'.
// Every other non-zero code is treated as transient and retried.
var DefaultPermanentExitCodes = []int{2, 3, 126, 127}

// maxErrorStderr bounds the stderr copy an ExitError carries: it ends up in
// error messages and Temporal failure details, which should stay small; the
// full (bounded) tail is in Result.Stderr.
const maxErrorStderr = 4 << 10

// procPollInterval is how often /proc is rescanned while waiting for a run's
// processes to go away.
const procPollInterval = 20 * time.Millisecond

// Runner runs `<NuPath> <ScriptPath> <args...>` as argv, never through a
// shell, so that no argument (a server name, say) can ever become code.
// The zero value is ready to use; a Runner is safe for concurrent Runs.
type Runner struct {
	// NuPath is the nu executable, a path or a name looked up in PATH.
	// Default DefaultNuPath ("nu"); set from --nu-path.
	NuPath string
	// ScriptPath is the provisioning script passed to nu as its first argument.
	// Default DefaultScriptPath ("./core/nulib/provisioning"); set from
	// --provisioning-path.
	ScriptPath string
	// BaseEnv is the environment every run starts from. Nil means
	// SafeEnviron(os.Environ(), nil): PATH, HOME, the locale and the
	// PROVISIONING_* variables, never the service's secrets.
	BaseEnv []string
	// Env holds extra KEY=VALUE entries added to BaseEnv for every run;
	// they override inherited variables of the same name.
	Env []string
	// MaxOutputBytes caps what is kept of each of stdout and stderr. The last
	// bytes are kept, because that is where a failing script says why, and
	// Result marks the truncation. Default DefaultMaxOutputBytes (256 KiB)
	// when zero or negative.
	MaxOutputBytes int
	// PermanentExitCodes are exit codes reported as permanent (not worth
	// retrying). Nil means DefaultPermanentExitCodes ({2, 3, 126, 127}); a
	// non-nil empty slice makes every failure retryable.
	PermanentExitCodes []int
	// KillGrace is the time between SIGTERM and SIGKILL when a run is
	// cancelled or leaves processes behind. Default DefaultKillGrace (5s)
	// when zero or negative.
	KillGrace time.Duration
	// Cgroups, when set, puts every run in a cgroup of its own so that the
	// run's end stops every process it started, even those that left the
	// session and cleared their environment. Nil tracks runs by session and
	// RunTokenEnv only. See OpenCgroups.
	Cgroups *Cgroups
}

// Result is what a run produced. Run returns it, as far as it got, with
// errors too, so callers can record the output of failed runs.
type Result struct {
	// ExitCode is nu's exit status; -1 if it was killed by a signal.
	ExitCode int
	// Stdout and Stderr are the last MaxOutputBytes of each stream, cut at a
	// UTF-8 character boundary when truncated.
	Stdout, Stderr string
	// StdoutTruncated and StderrTruncated report that earlier output was dropped.
	StdoutTruncated, StderrTruncated bool
	// Duration is the wall time from start until every process of the run was gone.
	Duration time.Duration
}

// ExitError reports that nu ran but exited non-zero (or was killed by a
// signal it was not sent by Run).
type ExitError struct {
	// Code is the exit status, or 128+signal number when killed by a signal
	// (the shells' convention, so it fits the same classification).
	Code int
	// Signal is the signal that killed nu, or 0 if it exited.
	Signal syscall.Signal
	// Permanent reports that Code is one of the runner's PermanentExitCodes:
	// retrying the same command would fail the same way.
	Permanent bool
	// Stderr is the tail of stderr, at most 4 KiB, for messages and failure details.
	Stderr string
}

func (e *ExitError) Error() string {
	kind := "retryable"
	if e.Permanent {
		kind = "permanent"
	}
	var b strings.Builder
	if e.Signal != 0 {
		fmt.Fprintf(&b, "nu was killed by signal %d (%v), code %d (%s)", int(e.Signal), e.Signal, e.Code, kind)
	} else {
		fmt.Fprintf(&b, "nu exited with code %d (%s)", e.Code, kind)
	}
	if s := stderrSummary(e.Stderr); s != "" {
		b.WriteString(": ")
		b.WriteString(s)
	} else {
		b.WriteString(", no output on stderr")
	}
	return b.String()
}

// StartError reports that nu could not be started at all: a wrong --nu-path or
// --provisioning-path, or arguments that cannot be passed to a process. None
// of these fixes itself, so it is always permanent.
type StartError struct {
	// Flag is the orchestrator flag that configures what is missing:
	// "--nu-path", "--provisioning-path", or "" for a bad argument.
	Flag string
	// Path is the offending nu or script path, "" for a bad argument.
	Path string
	// Err is the underlying cause.
	Err error
}

func (e *StartError) Error() string {
	switch e.Flag {
	case "--nu-path":
		return fmt.Sprintf("cannot start nushell: nu executable %q is not usable (check --nu-path): %v", e.Path, e.Err)
	case "--provisioning-path":
		return fmt.Sprintf("cannot start nushell: provisioning script %q is not usable (check --provisioning-path): %v", e.Path, e.Err)
	default:
		return fmt.Sprintf("cannot start nushell: %v", e.Err)
	}
}

func (e *StartError) Unwrap() error { return e.Err }

// IsPermanent reports whether retrying the run that returned err is pointless:
// true for a *StartError and for an *ExitError marked Permanent, false for
// everything else (transient exit codes, cancellation, nil).
func IsPermanent(err error) bool {
	var start *StartError
	if errors.As(err, &start) {
		return true
	}
	var exit *ExitError
	return errors.As(err, &exit) && exit.Permanent
}

// Run runs `<NuPath> <ScriptPath> <args...>` with r.BaseEnv (by default the
// safe part of os.Environ(), see SafeEnviron) plus r.Env plus env (later
// KEY=VALUE entries win) and stdin from /dev/null.
//
// The process gets its own session (and so its own process group): nu 0.115
// moves externals started with `job spawn` into process groups of their own,
// so killing nu's group alone would leave them running, while the session is
// inherited by everything the script starts unless it deliberately daemonizes
// with setsid. With r.Cgroups the run also gets a cgroup of its own, which
// nothing it starts can leave: that list is then the one used. Pdeathsig=
// SIGKILL takes nu down if the orchestrator itself dies; nu's own children
// then outlive it until the next OpenCgroups sweeps the dead owner's runs.
//
// While nu runs, heartbeat (if non-nil) is called from Run's goroutine every
// `every` (DefaultHeartbeatInterval, 5s, if zero or negative).
//
// When ctx is done, every process of the session gets SIGTERM, then SIGKILL
// after KillGrace; Run returns once they are gone, with an error wrapping
// ctx.Err(). Processes still left when nu exits on its own are stopped the same
// way, so a finished run never leaves anything behind.
//
// Errors: *StartError (permanent) when nu or the script cannot be started, an
// argument contains a NUL byte or an env entry is not KEY=VALUE; *ExitError
// for a non-zero exit, Permanent per PermanentExitCodes; a wrapped ctx.Err()
// when cancelled (not permanent); a plain error when the fork itself failed
// (EAGAIN and the like, worth retrying). Use IsPermanent to classify.
func (r *Runner) Run(ctx context.Context, args []string, env []string, heartbeat func(), every time.Duration) (Result, error) {
	return r.RunTapped(ctx, args, env, heartbeat, every, nil, nil)
}

// RunTapped is Run that also hands every chunk of the process's stdout and
// stderr, as it arrives, to stdoutTap and stderrTap (either may be nil).
// The taps see the whole streams in order; they must return quickly (they
// are called from the goroutines copying the pipes, so a slow tap slows
// the script's writes) and their errors are ignored: what Run captures and
// returns is the same with or without taps.
func (r *Runner) RunTapped(ctx context.Context, args []string, env []string, heartbeat func(), every time.Duration, stdoutTap, stderrTap io.Writer) (Result, error) {
	nuPath, scriptPath, err := r.prepare(args, env)
	if err != nil {
		return Result{}, err
	}
	if err := ctx.Err(); err != nil {
		return Result{}, fmt.Errorf("nushell run not started: %w", err)
	}
	if every <= 0 {
		every = DefaultHeartbeatInterval
	}
	grace := r.killGrace()

	stdout := tailbuf.New(r.maxOutputBytes())
	stderr := tailbuf.New(r.maxOutputBytes())
	base := r.BaseEnv
	if base == nil {
		base = SafeEnviron(os.Environ(), nil)
	}
	// The run token is inherited by every descendant, also those that
	// leave the session with setsid: stopSession finds them by it.
	token := newRunToken()
	newCmd := func(cg *runCgroup) *exec.Cmd {
		cmd := exec.Command(nuPath, append([]string{scriptPath}, args...)...)
		cmd.Env = slices.Concat(base, r.Env, env, []string{RunTokenEnv + "=" + token})
		cmd.Stdout = tee(stdout, stdoutTap)
		cmd.Stderr = tee(stderr, stderrTap)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
		if cg != nil {
			// clone3 starts nu inside the cgroup: nothing runs outside it
			// even for an instant.
			cmd.SysProcAttr.UseCgroupFD = true
			cmd.SysProcAttr.CgroupFD = int(cg.fd.Fd())
		}
		// A process that escaped the session (setsid) could hold our pipes
		// open forever; this bounds how long Wait waits for them after nu
		// is gone.
		cmd.WaitDelay = grace
		return cmd
	}
	var cg *runCgroup
	if r.Cgroups != nil {
		// Without its cgroup the run is still tracked by session and
		// token, so a failure here is no reason to fail the step.
		cg, _ = r.Cgroups.newRun(token)
	}

	started := time.Now()
	cmd := newCmd(cg)
	exited, startErr := startAndWatch(cmd)
	if startErr != nil && cg != nil {
		// The kernel may refuse clone3 into a cgroup (an old kernel, a
		// seccomp profile): run the way it would without cgroups.
		_ = cg.remove(0)
		cg = nil
		cmd = newCmd(nil)
		exited, startErr = startAndWatch(cmd)
	}
	if startErr != nil {
		return Result{}, classifyStartError(nuPath, startErr)
	}
	if cg != nil {
		cg.closeFD()
		defer func() { _ = cg.remove(grace) }()
	}
	sid := cmd.Process.Pid
	// Read now, while nu surely lives (it cannot be reaped before Wait).
	startTicks := procStartTicks(sid)

	var ticks <-chan time.Time
	if heartbeat != nil {
		ticker := time.NewTicker(every)
		defer ticker.Stop()
		ticks = ticker.C
	}
	var cancelled error
wait:
	for {
		select {
		case <-exited:
			break wait
		case <-ticks:
			heartbeat()
		case <-ctx.Done():
			cancelled = ctx.Err()
			break wait
		}
	}
	// Runs on both paths: after a normal exit it only finds stragglers, if any.
	stopSession(run{sid: sid, token: token, cg: cg, startTicks: startTicks}, exited, grace)
	<-exited
	waitErr := cmd.Wait()

	res := Result{
		ExitCode:        cmd.ProcessState.ExitCode(),
		Stdout:          stdout.String(),
		Stderr:          stderr.String(),
		StdoutTruncated: stdout.Truncated(),
		StderrTruncated: stderr.Truncated(),
		Duration:        time.Since(started),
	}
	if cancelled != nil {
		return res, fmt.Errorf("nushell run stopped after %s: %w", res.Duration.Round(time.Millisecond), cancelled)
	}
	var exitErr *exec.ExitError
	switch {
	case waitErr == nil, errors.Is(waitErr, exec.ErrWaitDelay):
		// ErrWaitDelay means nu succeeded but something outside its session
		// kept the pipes open: the script's result is still a success.
		return res, nil
	case errors.As(waitErr, &exitErr):
		return res, r.exitError(exitErr.ProcessState, res.Stderr)
	default:
		return res, fmt.Errorf("waiting for nu: %w", waitErr)
	}
}

// prepare resolves paths and rejects what would only fail later, less clearly.
func (r *Runner) prepare(args, env []string) (nuPath, scriptPath string, err error) {
	for i, a := range args {
		if strings.IndexByte(a, 0) >= 0 {
			return "", "", &StartError{Err: fmt.Errorf("argument %d (%q) contains a NUL byte", i, a)}
		}
	}
	for _, kv := range slices.Concat(r.Env, env) {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" || strings.IndexByte(kv, 0) >= 0 {
			return "", "", &StartError{Err: fmt.Errorf("environment entry %q is not KEY=VALUE without NUL bytes", kv)}
		}
	}

	scriptPath = cmp.Or(r.ScriptPath, DefaultScriptPath)
	// Checked here because nu would report a missing script as an ordinary
	// exit 1, which looks retryable and does not name the flag to fix.
	if err := checkReadableFile(scriptPath); err != nil {
		return "", "", &StartError{Flag: "--provisioning-path", Path: scriptPath, Err: err}
	}
	nuPath = cmp.Or(r.NuPath, DefaultNuPath)
	resolved, err := exec.LookPath(nuPath)
	if err != nil {
		return "", "", &StartError{Flag: "--nu-path", Path: nuPath, Err: err}
	}
	if strings.HasPrefix(scriptPath, "-") {
		// nu would take it for one of its own flags.
		scriptPath = "./" + scriptPath
	}
	return resolved, scriptPath, nil
}

func checkReadableFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return err
	}
	if info.IsDir() {
		return errors.New("is a directory")
	}
	return nil
}

// teeWriter writes to its buffer and, ignoring any error, to its tap.
type teeWriter struct {
	buf io.Writer
	tap io.Writer
}

func (t teeWriter) Write(p []byte) (int, error) {
	n, err := t.buf.Write(p)
	_, _ = t.tap.Write(p)
	return n, err
}

// tee is buf, or buf and tap when tap is set.
func tee(buf, tap io.Writer) io.Writer {
	if tap == nil {
		return buf
	}
	return teeWriter{buf: buf, tap: tap}
}

// classifyStartError keeps permanent only what retrying cannot fix; a failed
// fork (EAGAIN, ENOMEM) may well succeed next time.
func classifyStartError(nuPath string, err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.ENOEXEC) {
		return &StartError{Flag: "--nu-path", Path: nuPath, Err: err}
	}
	return fmt.Errorf("starting nu: %w", err)
}

func (r *Runner) exitError(ps *os.ProcessState, stderr string) *ExitError {
	e := &ExitError{Code: ps.ExitCode(), Stderr: tailbuf.String(stderr, maxErrorStderr)}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		e.Signal = ws.Signal()
		e.Code = 128 + int(e.Signal)
	}
	codes := r.PermanentExitCodes
	if codes == nil {
		codes = DefaultPermanentExitCodes
	}
	e.Permanent = slices.Contains(codes, e.Code)
	return e
}

func (r *Runner) maxOutputBytes() int {
	if r.MaxOutputBytes <= 0 {
		return DefaultMaxOutputBytes
	}
	return r.MaxOutputBytes
}

func (r *Runner) killGrace() time.Duration {
	if r.KillGrace <= 0 {
		return DefaultKillGrace
	}
	return r.KillGrace
}

// startAndWatch starts cmd and returns a channel closed once the process has
// exited, without reaping it.
//
// The start and the wait share one locked OS thread: Pdeathsig fires when the
// *thread* that forked the child dies (golang/go#27505), and Go may retire an
// unlocked thread at any time, which would kill a healthy run.
//
// Not reaping keeps the pid, and with it the session and group ids, reserved
// until stopSession is done signalling them, so a recycled pid can never
// receive our signals. cmd.Wait reaps afterwards.
func startAndWatch(cmd *exec.Cmd) (<-chan struct{}, error) {
	exited := make(chan struct{})
	startErr := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			startErr <- err
			return
		}
		startErr <- nil
		waitExitedNoReap(cmd.Process.Pid)
		close(exited)
	}()
	if err := <-startErr; err != nil {
		return nil, err
	}
	return exited, nil
}

// waitExitedNoReap blocks until pid has exited, leaving it a zombie: the same
// waitid(WEXITED|WNOWAIT) the os package uses internally.
func waitExitedNoReap(pid int) {
	const pPID = 1     // idtype_t P_PID
	var info [128]byte // siginfo_t; only its size matters here
	for {
		_, _, errno := syscall.Syscall6(syscall.SYS_WAITID, pPID, uintptr(pid),
			uintptr(unsafe.Pointer(&info)), syscall.WEXITED|syscall.WNOWAIT, 0, 0)
		if errno != syscall.EINTR {
			// Any other error (ECHILD) means there is nothing left to wait for.
			return
		}
	}
}

// stopSession makes sure no live process of session sid remains: SIGTERM to
// all of them, up to grace for them to exit, then SIGKILL until none is left
// (giving up on stragglers after another grace, since a process stuck in
// uninterruptible sleep cannot die until the kernel lets it). It returns at
// once when nothing is running, the normal case after a clean exit.
func stopSession(sid run, exited <-chan struct{}, grace time.Duration) {
	if signalSession(sid, exited, syscall.SIGTERM) == 0 {
		return
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		time.Sleep(procPollInterval)
		if len(liveMembers(sid, exited)) == 0 {
			return
		}
	}
	// A process may fork between a scan and the kill, so repeat until a scan
	// comes back empty; killed processes cannot fork, so this converges.
	deadline = time.Now().Add(grace)
	for signalSession(sid, exited, syscall.SIGKILL) > 0 && time.Now().Before(deadline) {
		time.Sleep(procPollInterval)
	}
}

// signalSession sends sig to every live process of session sid and reports
// how many there were. The group kill is atomic for the common case (nu and
// its foreground externals); the per-process kills reach the processes nu
// moved to other groups of the session.
func signalSession(sid run, exited <-chan struct{}, sig syscall.Signal) int {
	members := liveMembers(sid, exited)
	if len(members) == 0 {
		return 0
	}
	_ = syscall.Kill(-sid.sid, sig)
	if sig == syscall.SIGKILL && sid.cg != nil {
		sid.cg.killAll()
	}
	for _, pid := range members {
		_ = syscall.Kill(pid, sig) // ESRCH means it is gone already: the goal
	}
	return len(members)
}

// liveMembers lists the live processes of session sid. Without a readable
// /proc it can only know about nu itself (pid sid), through exited.
func liveMembers(sid run, exited <-chan struct{}) []int {
	pids, err := sessionMembers(sid)
	if err == nil {
		return pids
	}
	select {
	case <-exited:
		return nil
	default:
		return []int{sid.sid}
	}
}

// RunTokenEnv is set, to a value unique per run, in the environment of
// every nu run: the processes a script leaves behind outside its session
// (setsid, daemonizing) still carry it, so the run's end finds and stops
// them too. A process that also clears its environment is beyond this
// reach; Runner.Cgroups catches it.
const RunTokenEnv = "ORCHESTRATOR_RUN_TOKEN"

// run identifies a run's processes: its session, its token and, when
// there is one, its cgroup (which alone is complete).
type run struct {
	sid   int
	token string
	cg    *runCgroup
	// startTicks is nu's start time (clock ticks after boot; 0 unknown):
	// the run's processes cannot be older.
	startTicks uint64
}

func newRunToken() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// sessionMembers lists the non-zombie processes whose session id is
// sid.sid or whose environment carries sid.token. Zombies are skipped: they
// are already dead, and orphaned ones may never be reaped where PID 1 is
// not a real init (as in many containers).
func sessionMembers(sid run) ([]int, error) {
	if sid.cg != nil {
		// Every descendant is in the cgroup, and only they are: no need
		// to scan every process of the machine.
		if pids, err := sid.cg.members(); err == nil {
			return pids, nil
		}
	}
	return procScans.members(sid)
}

// mayHaveEscaped reports whether a process outside the run's session can
// be one of the run's, so that its environment is worth reading: only a
// process started no earlier than the run's nu, and not a child of this
// process (those are other runs' nu; escaped processes are reparented to
// init or a subreaper, and this process is none). Reading every process's
// environment at every run's end cost O(processes) file reads per run:
// with 500 runs at once, most of the runner's CPU.
func mayHaveEscaped(st procStat, sid run) bool {
	if sid.startTicks > 0 && st.startTicks < sid.startTicks {
		return false
	}
	return st.ppid != selfPID
}

// selfPID is this process's pid (the parent of every run's nu).
var selfPID = os.Getpid()

// procStat is what the runner reads from /proc/<pid>/stat.
type procStat struct {
	state      byte
	ppid       int
	session    int
	startTicks uint64 // clock ticks after boot
}

// procStartTicks is the start time of process pid in clock ticks after
// boot, or 0 if it cannot be read.
func procStartTicks(pid int) uint64 {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	st, ok := parseProcStatFields(data)
	if !ok {
		return 0
	}
	return st.startTicks
}

// parseProcStatFields parses the fields of /proc/<pid>/stat the runner
// needs. The command name in parentheses may itself contain spaces and
// parentheses, so fields are counted from the last ')'.
func parseProcStatFields(data []byte) (procStat, bool) {
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procStat{}, false
	}
	// After ") ": state ppid pgrp session tty_nr tpgid flags minflt cminflt
	// majflt cmajflt utime stime cutime cstime priority nice num_threads
	// itrealvalue starttime ...
	fields := strings.Fields(s[i+1:])
	if len(fields) < 4 || len(fields[0]) != 1 {
		return procStat{}, false
	}
	ppid, err1 := strconv.Atoi(fields[1])
	session, err2 := strconv.Atoi(fields[3])
	if err1 != nil || err2 != nil {
		return procStat{}, false
	}
	st := procStat{state: fields[0][0], ppid: ppid, session: session}
	if len(fields) > 19 {
		st.startTicks, _ = strconv.ParseUint(fields[19], 10, 64)
	}
	return st, true
}

// stderrSummary picks the line of stderr that best says why a run failed.
// Scripts print their reason last; nu's own uncaught errors are multi-line
// diagnostics that end in source excerpts, so for those the diagnostic's
// code and message are used instead.
func stderrSummary(stderr string) string {
	var lines []string
	for line := range strings.Lines(stderr) {
		if line = strings.TrimSpace(line); line != "" {
			lines = append(lines, line)
		}
	}
	if len(lines) == 0 {
		return ""
	}
	summary := lines[len(lines)-1]
	for i := len(lines) - 1; i >= 0; i-- {
		code, ok := strings.CutPrefix(lines[i], "Error: nu::")
		if !ok {
			continue
		}
		summary = "nu::" + code
		// The fancy style puts the message on the next line as "x <message>"
		// (the plain style has it on the same line).
		if i+1 < len(lines) {
			if msg, ok := strings.CutPrefix(lines[i+1], "x "); ok {
				summary += ": " + msg
			}
		}
		break
	}
	const maxSummary = 512
	return tailbuf.String(summary, maxSummary)
}
