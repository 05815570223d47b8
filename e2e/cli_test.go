package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/internal/testsupport"
	"github.com/provisioning/orchestrator/storage"
)

// runScript runs the real `nu` on a shipped script (path relative to the
// repository root) with args as argv, from dir (the repository root if
// empty), with env added to the test's environment, bounded by timeout.
func runScript(t *testing.T, dir, script string, env []string, stdin []byte, timeout time.Duration, args ...string) nuResult {
	t.Helper()
	root := testsupport.RepoRoot(t)
	if dir == "" {
		dir = root
	}
	cmd := exec.Command(testsupport.NuPath(t), append([]string{"--no-config-file", filepath.Join(root, script)}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	require.NoError(t, cmd.Start())
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("%s %q did not finish in %s\nstdout: %s\nstderr: %s", script, args, timeout, out.String(), errb.String())
	}
	res := nuResult{stdout: out.String(), stderr: errb.String()}
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		res.exitCode = ee.ExitCode()
	} else {
		require.NoError(t, err)
	}
	t.Logf("%s %q → exit %d\nstderr: %s", script, args, res.exitCode, res.stderr)
	return res
}

// provisioning runs the entry script nulib/provisioning against url from a
// directory other than the repository's (its `use` paths must not depend on
// the working directory) and decodes its --out json output into v (if not
// nil) after checking it exited 0.
func provisioning(t *testing.T, url string, v any, args ...string) nuResult {
	t.Helper()
	r := runScript(t, t.TempDir(), "nulib/provisioning", []string{"ORCHESTRATOR_URL=" + url}, nil, 3*time.Minute, args...)
	if v != nil {
		require.Equal(t, 0, r.exitCode, "stderr: %s", r.stderr)
		require.NoError(t, json.Unmarshal([]byte(r.stdout), v), "stdout: %s", r.stdout)
	}
	return r
}

// The entry script dispatches the original's command shapes to the wrappers,
// against a live service (embedded Temporal, worker, real nu, Docker).
func TestProvisioningCLI(t *testing.T) {
	h := startEnvApp(t)

	// help lists the commands; an unknown command is a usage error (2).
	r := provisioning(t, h.base, nil, "help")
	require.Equal(t, 0, r.exitCode)
	for _, c := range []string{"server create", "taskserv create", "cluster create", "workflow list", "workflow status",
		"workflow queue", "workflow retry", "workflow watch", "test quick", "test env list"} {
		assert.Contains(t, r.stdout, c)
	}
	r = provisioning(t, h.base, nil, "servr", "create")
	assert.Equal(t, 2, r.exitCode)
	assert.Contains(t, r.stderr, "unknown command: servr create")

	// server create --wait: the task runs to the end through the real worker.
	var task nuTask
	r = provisioning(t, h.base, &task, "server", "create", "web-01", "web-02", "--infra", "production",
		"--settings", "./settings.yaml", "--wait", "--priority", "2", "--out", "json")
	assert.Equal(t, "Completed", task.Status)
	assert.Equal(t, 2, task.Progress.Total)
	assert.Contains(t, r.stderr, "Completed 2/2", "progress on stderr")
	stored := h.task(task.ID)
	assert.Equal(t, storage.StatusCompleted, stored.Status)
	assert.Equal(t, 2, stored.Priority)
	for _, s := range []string{"web-01", "web-02"} {
		assert.FileExists(t, filepath.Join(filepath.Dir(h.app.Config().DataDir), "provider-state", "production", "servers", s+".json"))
	}

	var started map[string]string
	provisioning(t, h.base, &started, "taskserv", "create", "kubernetes", "web-01", "-i", "production", "-s", "./settings.yaml", "-o", "json")
	require.NotEmpty(t, started["task_id"])
	waitTask(t, h.base, started["task_id"], time.Minute, terminal)
	assert.Equal(t, storage.StatusCompleted, h.task(started["task_id"]).Status)
	var cluster nuTask
	provisioning(t, h.base, &cluster, "cluster", "create", "k8s", "--infra", "production", "--settings", "./s.yaml", "--check", "--wait", "--out", "json")
	assert.Equal(t, "Completed", cluster.Status)

	// workflow list / status / queue.
	var listed []nuTask
	provisioning(t, h.base, &listed, "workflow", "list", "--status", "Completed", "--out", "json")
	var ids []string
	for _, l := range listed {
		assert.Equal(t, "Completed", l.Status)
		ids = append(ids, l.ID)
	}
	assert.Subset(t, ids, []string{task.ID, started["task_id"], cluster.ID})
	var one map[string]any
	provisioning(t, h.base, &one, "workflow", "status", task.ID, "--out", "json")
	assert.Equal(t, task.ID, one["id"])
	var queue struct {
		Queues []struct {
			TaskQueue string `json:"task_queue"`
		} `json:"queues"`
	}
	provisioning(t, h.base, &queue, "workflow", "queue", "--out", "json")
	assert.NotEmpty(t, queue.Queues)
	// The table form (no --out) prints the newest task's row.
	r = provisioning(t, h.base, nil, "workflow", "list", "--limit", "1")
	require.Equal(t, 0, r.exitCode, r.stderr)
	assert.Contains(t, r.stdout, cluster.ID)

	// workflow watch replays a finished task's events and its end.
	r = provisioning(t, h.base, nil, "workflow", "watch", task.ID)
	require.Equal(t, 0, r.exitCode, r.stderr)
	assert.Contains(t, r.stdout, "web-01: Completed after 1 attempt(s)")
	assert.Contains(t, r.stdout, "task "+task.ID+": Completed")

	// workflow retry reaches POST /tasks/{id}/retry: a completed task has
	// nothing to retry (409, one message, exit 1).
	r = provisioning(t, h.base, nil, "workflow", "retry", task.ID, "--priority", "1")
	assert.Equal(t, 1, r.exitCode)
	assert.Contains(t, errorText(r.stderr), "nothing to retry [HTTP 409")

	// A 400 keeps the API's field; a missing --infra is named by the CLI.
	r = provisioning(t, h.base, nil, "server", "create", "bad name", "--infra", "production", "--settings", "./s.yaml")
	assert.Equal(t, 1, r.exitCode)
	assert.Contains(t, errorText(r.stderr), "servers[0]")
	r = provisioning(t, h.base, nil, "server", "create", "web-01", "--settings", "./s.yaml")
	assert.Equal(t, 1, r.exitCode)
	assert.Contains(t, errorText(r.stderr), "--infra is required")

	// test quick kubernetes: the Molecule sequence in a real container.
	var run nuRun
	provisioning(t, h.base, &run, "test", "quick", "kubernetes", "--base-image", h.image, "--out", "json")
	assert.True(t, run.Passed)
	assert.Equal(t, []string{"create:passed", "converge:passed", "idempotence:passed", "verify:passed", "destroy:passed"}, run.stepStatuses())
	assert.Equal(t, "cleaned", run.EnvStatus)

	// test env list shows that environment (cleaned).
	var envs []map[string]any
	provisioning(t, h.base, &envs, "test", "env", "list", "--out", "json")
	var envIDs []any
	for _, e := range envs {
		envIDs = append(envIDs, e["id"])
	}
	assert.Contains(t, envIDs, run.EnvID)
}

// The wrapper module is importable at the original's path too.
func TestServerCreateModuleAtOriginalPath(t *testing.T) {
	h := startApp(t)
	root := testsupport.RepoRoot(t)
	var task nuTask
	r := runNu(t, h.base, "use '"+filepath.Join(root, "core", "nulib", "workflows", "server_create.nu")+
		"' *; server_create_workflow prod web-01 --settings ./s.yaml --wait | to json")
	require.Equal(t, 0, r.exitCode, r.stderr)
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &task), r.stdout)
	assert.Equal(t, "Completed", task.Status)
}

// buildOrchestrator builds the real binary (cmd/orchestrator) into a
// temporary directory, as a user's `go build` would.
func buildOrchestrator(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "orchestrator")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/orchestrator")
	cmd.Dir = testsupport.RepoRoot(t)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	return bin
}

// start-orchestrator.nu --background starts the real binary detached, waits
// for /health, writes the pid file; --stop leaves no process and no pid file.
func TestStartOrchestratorScript(t *testing.T) {
	nu := testsupport.NuPath(t)
	bin := buildOrchestrator(t)
	root := testsupport.RepoRoot(t)
	dataDir := filepath.Join(t.TempDir(), "data")
	port := freePort(t)
	const script = "scripts/start-orchestrator.nu"
	orchFlags := []string{"--data-dir", dataDir, "--port", strconv.Itoa(port), "--temporal-port", "0",
		"--temporal-ui-port", "-1", "--nu-path", nu, "--provisioning-path", filepath.Join(root, "core", "nulib", "provisioning")}
	env := []string{"ORCHESTRATOR_BIN=" + bin}
	pidFile := filepath.Join(dataDir, "orchestrator.pid")

	begin := time.Now()
	r := runScript(t, "", script, env, nil, 3*time.Minute, append([]string{"--background", "--timeout", "90sec"}, orchFlags...)...)
	require.Equal(t, 0, r.exitCode, "stderr: %s", r.stderr)
	t.Logf("start-orchestrator.nu --background: healthy after %s", time.Since(begin).Round(time.Millisecond))
	pidText, err := os.ReadFile(pidFile)
	require.NoError(t, err)
	pid, err := strconv.Atoi(strings.TrimSpace(string(pidText)))
	require.NoError(t, err)
	stopped := false
	t.Cleanup(func() {
		if !stopped && !processGone(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	assert.False(t, processGone(pid))
	assert.Contains(t, r.stderr, "healthy at http://127.0.0.1:"+strconv.Itoa(port)+"/health")

	// The script returns only once the service answers; it works for real.
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	health := do(t, http.MethodGet, base+"/health", "", nil)
	assert.Equal(t, http.StatusOK, health.status)
	var task nuTask
	provisioning(t, base, &task, "server", "create", "web-01", "--infra", "prod", "--settings", "./s.yaml", "--wait", "--out", "json")
	assert.Equal(t, "Completed", task.Status)
	assert.FileExists(t, filepath.Join(dataDir, "orchestrator.log"))

	// A second start refuses: one is running.
	r = runScript(t, "", script, env, nil, time.Minute, append([]string{"--background"}, orchFlags...)...)
	assert.Equal(t, 1, r.exitCode)
	assert.Contains(t, errorText(r.stderr), "already running (pid "+strconv.Itoa(pid))

	begin = time.Now()
	r = runScript(t, "", script, nil, nil, time.Minute, "--stop", "--data-dir", dataDir)
	require.Equal(t, 0, r.exitCode, "stderr: %s", r.stderr)
	stopped = true
	t.Logf("start-orchestrator.nu --stop: took %s", time.Since(begin).Round(time.Millisecond))
	assert.True(t, processGone(pid), "the orchestrator still runs")
	assert.NoFileExists(t, pidFile)
	assert.Contains(t, string(must(os.ReadFile(filepath.Join(dataDir, "orchestrator.log")))), "shutting down", "a graceful stop (SIGTERM)")
	// Stopping again is fine.
	r = runScript(t, "", script, nil, nil, time.Minute, "--stop", "--data-dir", dataDir)
	assert.Equal(t, 0, r.exitCode, "stderr: %s", r.stderr)
	assert.Contains(t, r.stderr, "not running")

	// Foreground: logs on the terminal, healthy, pid file; a Ctrl-C (SIGINT
	// to the terminal's process group) stops it and removes the pid file.
	fg := exec.Command(nu, append([]string{"--no-config-file", filepath.Join(root, script)}, orchFlags...)...)
	fg.Dir = root
	fg.Env = append(os.Environ(), env...)
	fg.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var fgOut syncBuffer
	fg.Stdout, fg.Stderr = &fgOut, &fgOut
	require.NoError(t, fg.Start())
	fgDone := make(chan error, 1)
	go func() { fgDone <- fg.Wait() }()
	t.Cleanup(func() { _ = syscall.Kill(-fg.Process.Pid, syscall.SIGKILL) })
	eventually(t, 90*time.Second, "foreground start healthy", func() bool { return strings.Contains(fgOut.String(), "healthy at") })
	pidText, err = os.ReadFile(pidFile)
	require.NoError(t, err)
	fgPid, err := strconv.Atoi(strings.TrimSpace(string(pidText)))
	require.NoError(t, err)
	assert.Contains(t, fgOut.String(), "embedded temporal started", "the orchestrator's log is on the terminal")
	require.NoError(t, syscall.Kill(-fg.Process.Pid, syscall.SIGINT))
	select {
	case <-fgDone:
	case <-time.After(time.Minute):
		t.Fatalf("foreground script still running after Ctrl-C:\n%s", fgOut.String())
	}
	assert.True(t, processGone(fgPid))
	assert.NoFileExists(t, pidFile)

	// A service that cannot start: exit 1 with the log's tail, no pid file, no process.
	r = runScript(t, "", script, env, nil, time.Minute, "--background", "--data-dir", dataDir, "--port", strconv.Itoa(port), "--storage-type", "bogus")
	assert.Equal(t, 1, r.exitCode)
	assert.Contains(t, errorText(r.stderr), "exited before it became healthy")
	assert.Contains(t, errorText(r.stderr), `"bogus" is not one of`)
	assert.NoFileExists(t, pidFile)
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// migrateReport mirrors app.ValidateReport as the script prints it (--json).
type migrateReport struct {
	From     migrateSide `json:"from"`
	To       migrateSide `json:"to"`
	Compared bool        `json:"compared"`
	ToCopy   int         `json:"to_copy"`
	InSync   bool        `json:"in_sync"`
}

type migrateSide struct {
	Reachable bool     `json:"reachable"`
	Schema    bool     `json:"schema"`
	Missing   []string `json:"missing"`
	Tasks     int      `json:"tasks"`
	Error     string   `json:"error"`
}

// ptySession drives a program that reads a terminal (nu's `input`,
// `input -s` and `input list` refuse a pipe: "I/O error") through
// util-linux's `script`, which gives it a pseudo-terminal and relays
// this side's pipes to it.
type ptySession struct {
	t     *testing.T
	cmd   *exec.Cmd
	stdin io.WriteCloser
	mu    sync.Mutex
	out   bytes.Buffer
	seen  int // output already matched by expect
	done  chan error
}

// startPTY runs argv[0] with argv[1:] on a pseudo-terminal. The command
// line `script` hands to sh is fixed text: the program and its arguments
// reach it as environment variables, never spliced into it.
func startPTY(t *testing.T, env []string, argv ...string) *ptySession {
	t.Helper()
	scriptPath, err := exec.LookPath("script")
	if err != nil {
		if os.Getenv("ORCHESTRATOR_REQUIRE_NU") != "" {
			t.Fatalf("util-linux `script` is needed to give nu a terminal: apt-get install -y bsdutils")
		}
		t.Skip("util-linux `script` is needed to give nu a terminal: apt-get install -y bsdutils")
	}
	require.LessOrEqual(t, len(argv), 4)
	// A pty made by `script` without a terminal on this side is 0x0: give
	// it a size so that nu can draw its tables and lists.
	cmdText := `stty cols 120 rows 40; exec "$PTY_ARG0"`
	for i := range argv {
		env = append(env, fmt.Sprintf("PTY_ARG%d=%s", i, argv[i]))
		if i > 0 {
			cmdText += fmt.Sprintf(` "$PTY_ARG%d"`, i)
		}
	}
	s := &ptySession{t: t, done: make(chan error, 1)}
	s.cmd = exec.Command(scriptPath, "-qfec", cmdText, "/dev/null")
	s.cmd.Env = append(os.Environ(), env...)
	s.cmd.Dir = testsupport.RepoRoot(t)
	s.stdin, err = s.cmd.StdinPipe()
	require.NoError(t, err)
	s.cmd.Stdout = s
	s.cmd.Stderr = s
	require.NoError(t, s.cmd.Start())
	go func() { s.done <- s.cmd.Wait() }()
	t.Cleanup(func() {
		_ = s.cmd.Process.Kill()
	})
	return s
}

func (s *ptySession) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.Write(p)
}

func (s *ptySession) output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.String()
}

// expect waits until text appears in the output after what earlier
// expects matched.
func (s *ptySession) expect(text string) {
	s.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		s.mu.Lock()
		i := strings.Index(s.out.String()[s.seen:], text)
		if i >= 0 {
			s.seen += i + len(text)
		}
		s.mu.Unlock()
		if i >= 0 {
			return
		}
		select {
		case err := <-s.done:
			s.done <- err
			// The last output may have arrived with the exit.
			s.mu.Lock()
			i = strings.Index(s.out.String()[s.seen:], text)
			if i >= 0 {
				s.seen += i + len(text)
			}
			s.mu.Unlock()
			if i >= 0 {
				return
			}
			s.t.Fatalf("exited (%v) before printing %q; output:\n%s", err, text, s.output())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("no %q within 2 minutes; output:\n%s", text, s.output())
		}
	}
}

// answer waits for a prompt and types keys. The short pause lets the
// prompt's reader switch the terminal to raw mode (there is nothing to
// observe from outside the pty): keys typed before that would be echoed
// by the line discipline, a password included.
func (s *ptySession) answer(prompt, keys string) {
	s.t.Helper()
	s.expect(prompt)
	time.Sleep(150 * time.Millisecond)
	_, err := io.WriteString(s.stdin, keys)
	require.NoError(s.t, err)
}

// wait waits for the exit and returns the exit code.
func (s *ptySession) wait(timeout time.Duration) int {
	s.t.Helper()
	select {
	case err := <-s.done:
		_ = s.stdin.Close()
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
			return ee.ExitCode()
		}
		require.NoError(s.t, err)
		return 0
	case <-time.After(timeout):
		s.t.Fatalf("did not exit within %s; output:\n%s", timeout, s.output())
		return -1
	}
}

// migrate-storage.nu between the filesystem data dir of a service that ran
// tasks and a real SurrealDB server: validate reports the target's missing
// schema, the interactive mode (answers typed on a pseudo-terminal) shows
// the dry run, migrates after the confirmation, and validate then reports
// equal counts.
func TestMigrateStorageScript(t *testing.T) {
	nu := testsupport.NuPath(t)
	h := startApp(t)
	var ids []string
	for _, s := range []string{"web-01", "web-02", "db-01"} {
		ids = append(ids, h.submit("/workflows/servers/create", serverBody(s)))
	}
	for _, id := range ids {
		waitTask(t, h.base, id, time.Minute, terminal)
	}
	surreal := testsupport.StartSurreal(t, "")
	bin := buildOrchestrator(t)
	const script = "scripts/migrate-storage.nu"
	env := []string{"ORCHESTRATOR_BIN=" + bin}
	pwEnv := "ORCHESTRATOR_MIGRATE_TO_SURREALDB_PASSWORD=" + surreal.Pass
	validate := []string{"validate", "--from", "filesystem:" + h.dataDir, "--to", surreal.URL, "--to-username", surreal.User, "--json"}

	// Before: the source has the tasks; the target answers but has no schema,
	// and the validation created none.
	var rep migrateReport
	for range 2 {
		r := runScript(t, "", script, append(env, pwEnv), nil, 2*time.Minute, validate...)
		assert.Equal(t, 1, r.exitCode, "stderr: %s", r.stderr)
		require.NoError(t, json.Unmarshal([]byte(r.stdout), &rep), r.stdout)
		assert.True(t, rep.From.Reachable)
		assert.True(t, rep.From.Schema)
		assert.True(t, rep.To.Reachable)
		assert.False(t, rep.To.Schema)
		assert.Contains(t, rep.To.Missing, "task")
		assert.False(t, rep.InSync)
	}
	// A wrong password: not reachable, said so.
	r := runScript(t, "", script, append(env, "ORCHESTRATOR_MIGRATE_TO_SURREALDB_PASSWORD=wrong"), nil, 2*time.Minute, validate...)
	assert.Equal(t, 1, r.exitCode)
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &rep), r.stdout)
	assert.False(t, rep.To.Reachable)
	assert.NotEmpty(t, rep.To.Error)

	// Interactive: source filesystem (first in the list), target
	// surrealdb-server (one down), credentials typed, dry run, confirm.
	// Meanwhile no command line of ours may show the password (the test
	// SurrealDB server's own does: it is started with --pass).
	stopWatch := watchArgv(t, surreal.Pass, "nu", "orchestrator", "script", "sh")
	s := startPTY(t, env, nu, "--no-config-file", script, "--interactive")
	s.answer("source store type", "\r")
	s.answer("source data directory", h.dataDir+"\r")
	s.answer("target store type", "\x1b[B\r")
	s.answer("target SurrealDB URL", surreal.URL+"\r")
	s.answer("target namespace", "\r")
	s.answer("target database", "\r")
	s.answer("target username", surreal.User+"\r")
	s.answer("target password", surreal.Pass+"\r")
	s.expect("dry run (nothing written)")
	s.expect("source tasks:")
	s.answer("Migrate now?", "y\r")
	s.expect("== migration ==")
	s.expect("verification:      OK")
	s.expect("validation: IN SYNC")
	code := s.wait(3 * time.Minute)
	out := s.output()
	t.Logf("interactive session:\n%s", out)
	require.Equal(t, 0, code)
	assert.Contains(t, out, "migrated and validated")
	assert.NotContains(t, out, surreal.Pass, "the password is neither echoed nor printed")
	scans, leaks := stopWatch()
	assert.Empty(t, leaks, "the password in a command line")
	assert.Positive(t, scans)

	// After: in sync, equal counts.
	r = runScript(t, "", script, append(env, pwEnv), nil, 2*time.Minute, validate...)
	require.Equal(t, 0, r.exitCode, "stdout: %s\nstderr: %s", r.stdout, r.stderr)
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &rep), r.stdout)
	assert.True(t, rep.InSync)
	assert.True(t, rep.To.Schema)
	assert.GreaterOrEqual(t, rep.From.Tasks, len(ids))
	assert.Equal(t, rep.From.Tasks, rep.To.Tasks)
	assert.Zero(t, rep.ToCopy)
	// The people's form prints the counts too.
	r = runScript(t, "", script, append(env, pwEnv), nil, 2*time.Minute, validate[:len(validate)-1]...)
	require.Equal(t, 0, r.exitCode, r.stderr)
	assert.Contains(t, r.stdout, "validation: IN SYNC")
	assert.Contains(t, r.stdout, "identical: "+strconv.Itoa(rep.From.Tasks)+" tasks")

	// Declining the confirmation writes nothing.
	s = startPTY(t, env, nu, "--no-config-file", script, "--interactive")
	s.answer("source store type", "\r")
	s.answer("source data directory", h.dataDir+"\r")
	s.answer("target store type", "\r")
	target := filepath.Join(t.TempDir(), "other")
	require.NoError(t, os.MkdirAll(target, 0o755))
	s.answer("target data directory", target+"\r")
	s.answer("Migrate now?", "n\r")
	assert.Equal(t, 0, s.wait(time.Minute))
	copied, _ := filepath.Glob(filepath.Join(target, "queue.rkvs", "tasks", "*.json"))
	assert.Empty(t, copied, "no task was copied")
	assert.NotContains(t, s.output(), "== migration ==", "declined, yet it migrated")
	// `script` can drop the child's last line when it exits right after
	// printing it (seen once in CI: exit 0, nothing copied, no line), so
	// the message is reported rather than required.
	if !strings.Contains(s.output(), "aborted: nothing was written") {
		t.Logf("the pty relay lost the last line; output:\n%s", s.output())
	}
}

// watchArgv scans every process's command line (as `ps` shows them) until
// stopped, for secret in those whose program is one of programs; stop
// returns the number of scans and the command lines that held it.
func watchArgv(t *testing.T, secret string, programs ...string) (stop func() (int, []string)) {
	t.Helper()
	quit := make(chan struct{})
	type result struct {
		scans int
		leaks []string
	}
	res := make(chan result, 1)
	go func() {
		var r result
		for {
			dirs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
			for _, f := range dirs {
				b, err := os.ReadFile(f)
				if err != nil || len(b) == 0 {
					continue
				}
				argv := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
				if slices.Contains(programs, filepath.Base(argv[0])) && strings.Contains(string(b), secret) {
					r.leaks = append(r.leaks, strings.Join(argv, " "))
				}
			}
			r.scans++
			select {
			case <-quit:
				res <- r
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	return func() (int, []string) {
		close(quit)
		r := <-res
		return r.scans, r.leaks
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader at once.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
