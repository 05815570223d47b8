package nushell

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/internal/testsupport"
)

// testTimeout bounds every run so a regression hangs one test, not the suite.
const testTimeout = 60 * time.Second

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// demoRunner runs the shipped demo provider with the real nu.
func demoRunner(t *testing.T) *Runner {
	return &Runner{
		NuPath:     testsupport.NuPath(t),
		ScriptPath: filepath.Join(testsupport.RepoRoot(t), "core", "nulib", "provisioning"),
	}
}

// demoEnv points the demo provider at stateDir, without delay and without
// inheriting any failure injection from the developer's environment.
func demoEnv(stateDir string, extra ...string) []string {
	return append([]string{
		"PROVISIONING_STATE_DIR=" + stateDir,
		"PROVISIONING_DEMO_DELAY_MS=0",
		"PROVISIONING_DEMO_FAIL=",
	}, extra...)
}

// scriptRunner runs a small test script written to a temp dir.
func scriptRunner(t *testing.T, script string) *Runner {
	path := filepath.Join(t.TempDir(), "script.nu")
	require.NoError(t, os.WriteFile(path, []byte(script), 0o644))
	return &Runner{NuPath: testsupport.NuPath(t), ScriptPath: path}
}

func readJSON(t *testing.T, path string) map[string]any {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	var v map[string]any
	require.NoError(t, json.Unmarshal(data, &v), "state file %s: %s", path, data)
	return v
}

// filesUnder lists the regular files below dir, relative to it.
func filesUnder(t *testing.T, dir string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(dir, path)
			files = append(files, rel)
		}
		return nil
	})
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	require.NoError(t, err)
	return files
}

func requireExitError(t *testing.T, err error) *ExitError {
	t.Helper()
	var exitErr *ExitError
	require.ErrorAs(t, err, &exitErr)
	return exitErr
}

func TestDemoScriptCreatesServer(t *testing.T) {
	t.Parallel()
	state := t.TempDir()
	r := demoRunner(t)

	res, err := r.Run(testContext(t), []string{
		"server", "create", "--infra", "production", "--settings", "./settings.k", "--wait", "web-01",
	}, demoEnv(state), nil, 0)
	require.NoError(t, err, "stderr: %s", res.Stderr)

	assert.Equal(t, 0, res.ExitCode)
	assert.Contains(t, res.Stdout, "creating server web-01 in infra production (local provider)")
	assert.Contains(t, res.Stdout, "server web-01 created")
	assert.Contains(t, res.Stdout, "server web-01 is ready")
	assert.False(t, res.StdoutTruncated)
	assert.Positive(t, res.Duration)

	got := readJSON(t, filepath.Join(state, "production", "servers", "web-01.json"))
	assert.Equal(t, "server", got["kind"])
	assert.Equal(t, "web-01", got["name"])
	assert.Equal(t, "production", got["infra"])
	assert.Equal(t, "./settings.k", got["settings"])
	assert.Equal(t, "local", got["provider"])
	assert.Equal(t, "created", got["status"])
	assert.Equal(t, true, got["wait"])
	_, err = time.Parse(time.RFC3339Nano, got["created_at"].(string))
	assert.NoError(t, err, "created_at must be RFC 3339")
	assert.Equal(t, []string{filepath.Join("production", "servers", "web-01.json")}, filesUnder(t, state))
}

func TestDemoScriptCreatesTaskserv(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		args     []string
		wantFile string
		server   any
	}{
		{
			name:     "on one server, flags after the name",
			args:     []string{"taskserv", "create", "kubernetes", "--infra", "prod", "--settings", "s.k", "web-01"},
			wantFile: filepath.Join("prod", "taskservs", "web-01", "kubernetes.json"),
			server:   "web-01",
		},
		{
			name:     "on all servers, --flag=value and short flags first",
			args:     []string{"taskserv", "create", "-s", "s.k", "--infra=prod", "kubernetes"},
			wantFile: filepath.Join("prod", "taskservs", "all", "kubernetes.json"),
			server:   nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			state := t.TempDir()
			res, err := demoRunner(t).Run(testContext(t), tt.args, demoEnv(state), nil, 0)
			require.NoError(t, err, "stderr: %s", res.Stderr)
			assert.Contains(t, res.Stdout, "taskserv kubernetes on ")
			assert.Contains(t, res.Stdout, " created")

			got := readJSON(t, filepath.Join(state, tt.wantFile))
			assert.Equal(t, "taskserv", got["kind"])
			assert.Equal(t, "kubernetes", got["name"])
			assert.Equal(t, tt.server, got["server"])
			assert.Equal(t, "prod", got["infra"])
			assert.Equal(t, "s.k", got["settings"])
			assert.Equal(t, []string{tt.wantFile}, filesUnder(t, state))
		})
	}
}

// `taskserv check` is the verb test environments use to verify a node:
// exit 0 once the taskserv is installed, 1 before; with
// PROVISIONING_TASKSERV_DIR (set for an install inside a node) the node's
// own record under that directory decides.
func TestDemoScriptTaskservCheck(t *testing.T) {
	t.Parallel()
	state, node := t.TempDir(), filepath.Join(t.TempDir(), "taskservs")
	run := func(verb string, env ...string) (Result, error) {
		return demoRunner(t).Run(testContext(t), []string{"taskserv", verb, "containerd", "--infra", "prod", "--settings", "s.k", "web-01"},
			demoEnv(state, env...), nil, 0)
	}
	res, err := run("check")
	requireExitError(t, err)
	assert.Equal(t, 1, res.ExitCode)
	assert.Contains(t, res.Stderr, "taskserv containerd on server web-01 is not installed")

	_, err = run("create")
	require.NoError(t, err)
	res, err = run("check")
	require.NoError(t, err, "stderr: %s", res.Stderr)
	assert.Contains(t, res.Stdout, "is installed")

	inNode := "PROVISIONING_TASKSERV_DIR=" + node
	res, err = run("check", inNode)
	requireExitError(t, err)
	assert.Contains(t, res.Stderr, filepath.Join(node, "containerd", "state.json"), "the node's record decides, not the state root")
	res, err = run("create", inNode)
	require.NoError(t, err, "stderr: %s", res.Stderr)
	got := readJSON(t, filepath.Join(node, "containerd", "state.json"))
	assert.Equal(t, "containerd", got["name"])
	assert.Equal(t, "web-01", got["server"])
	_, err = run("check", inNode)
	require.NoError(t, err)

	// check is a taskserv verb only.
	res, err = demoRunner(t).Run(testContext(t), []string{"server", "check", "web-01", "--infra", "prod", "--settings", "s.k"}, demoEnv(state), nil, 0)
	requireExitError(t, err)
	assert.Equal(t, 2, res.ExitCode)
	assert.Contains(t, res.Stderr, "unknown action 'check' for server")
}

func TestDemoScriptCreatesCluster(t *testing.T) {
	t.Parallel()
	state := t.TempDir()
	res, err := demoRunner(t).Run(testContext(t), []string{
		"cluster", "create", "buildkit", "--settings", "s.k", "--infra", "staging",
	}, demoEnv(state), nil, 0)
	require.NoError(t, err, "stderr: %s", res.Stderr)
	assert.Contains(t, res.Stdout, "cluster buildkit created")

	got := readJSON(t, filepath.Join(state, "staging", "clusters", "buildkit.json"))
	assert.Equal(t, "cluster", got["kind"])
	assert.Equal(t, "buildkit", got["name"])
	assert.Equal(t, "staging", got["infra"])
	assert.Equal(t, false, got["wait"])
}

func TestDemoScriptRecreateKeepsCreatedAt(t *testing.T) {
	t.Parallel()
	state := t.TempDir()
	r := demoRunner(t)
	args := []string{"server", "create", "--infra", "p", "--settings", "s", "web-01"}
	file := filepath.Join(state, "p", "servers", "web-01.json")

	_, err := r.Run(testContext(t), args, demoEnv(state), nil, 0)
	require.NoError(t, err)
	first := readJSON(t, file)
	res, err := r.Run(testContext(t), args, demoEnv(state), nil, 0)
	require.NoError(t, err, "a retried create must succeed")
	assert.Contains(t, res.Stdout, "already exists")
	second := readJSON(t, file)
	assert.Equal(t, first["created_at"], second["created_at"])
}

func TestDemoScriptCheckModeWritesNothing(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"server", "create", "--check", "--infra", "p", "--settings", "s", "web-01"},
		{"taskserv", "create", "kubernetes", "--infra", "p", "--settings", "s", "--check", "web-01"},
		{"cluster", "create", "buildkit", "--infra", "p", "--settings", "s", "-c"},
	} {
		t.Run(args[0], func(t *testing.T) {
			t.Parallel()
			state := t.TempDir()
			// Failure counters are state too: a dry run must not touch them.
			env := demoEnv(state, "PROVISIONING_DEMO_FAIL=web-01:1,kubernetes:1,buildkit:1")
			res, err := demoRunner(t).Run(testContext(t), args, env, nil, 0)
			require.NoError(t, err, "stderr: %s", res.Stderr)
			assert.Contains(t, res.Stdout, "would be created (check mode, nothing written)")
			assert.Empty(t, filesUnder(t, state))
		})
	}
}

func TestDemoScriptRejectsBadInvocations(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		args    []string
		wantMsg string
	}{
		{"no arguments", nil, "missing subcommand"},
		{"unknown subcommand", []string{"volume", "create", "--infra", "p", "--settings", "s", "v"}, "unknown subcommand 'volume'"},
		{"unknown action", []string{"server", "destroy", "--infra", "p", "--settings", "s", "web-01"}, "unknown action 'destroy'"},
		{"missing --infra", []string{"server", "create", "--settings", "s", "web-01"}, "missing required flag --infra"},
		{"missing --settings", []string{"server", "create", "--infra", "p", "web-01"}, "missing required flag --settings"},
		{"flag without value", []string{"server", "create", "web-01", "--settings", "s", "--infra"}, "--infra needs a value"},
		{"missing server", []string{"server", "create", "--infra", "p", "--settings", "s"}, "missing <server> name"},
		{"missing cluster", []string{"cluster", "create", "--infra", "p", "--settings", "s"}, "missing <cluster> name"},
		{"unknown flag", []string{"server", "create", "--infra", "p", "--settings", "s", "--force", "web-01"}, "unknown flag '--force'"},
		{"extra positional", []string{"server", "create", "--infra", "p", "--settings", "s", "web-01", "web-02"}, "unexpected argument 'web-02'"},
		{"dot-dot server", []string{"server", "create", "--infra", "p", "--settings", "s", ".."}, "invalid server name '..'"},
		{"dot taskserv", []string{"taskserv", "create", ".", "--infra", "p", "--settings", "s"}, "invalid taskserv name '.'"},
		{"slash in server", []string{"server", "create", "--infra", "p", "--settings", "s", "../escape"}, "invalid server name '../escape'"},
		{"slash in infra", []string{"cluster", "create", "k", "--infra", "a/b", "--settings", "s"}, "invalid infra name 'a/b'"},
		{"slash in taskserv host", []string{"taskserv", "create", "k", "--infra", "p", "--settings", "s", "x/y"}, "invalid server name 'x/y'"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			state := t.TempDir()
			_, err := demoRunner(t).Run(testContext(t), tt.args, demoEnv(state), nil, 0)
			exitErr := requireExitError(t, err)
			assert.Equal(t, 2, exitErr.Code)
			assert.True(t, exitErr.Permanent)
			assert.True(t, IsPermanent(err))
			// The reason is the last stderr line, so it is what the error text shows.
			assert.Contains(t, err.Error(), tt.wantMsg)
			assert.Contains(t, exitErr.Stderr, "usage:")
			assert.Empty(t, filesUnder(t, state))
		})
	}
}

func TestDemoScriptFailureInjectionThenSuccess(t *testing.T) {
	t.Parallel()
	state := t.TempDir()
	r := demoRunner(t)
	env := demoEnv(state, "PROVISIONING_DEMO_FAIL=web-02:2")
	args := []string{"server", "create", "--infra", "production", "--settings", "s", "web-02"}
	file := filepath.Join(state, "production", "servers", "web-02.json")

	for attempt := 1; attempt <= 2; attempt++ {
		res, err := r.Run(testContext(t), args, env, nil, 0)
		exitErr := requireExitError(t, err)
		assert.Equal(t, 1, exitErr.Code, "attempt %d", attempt)
		assert.Equal(t, 1, res.ExitCode)
		assert.False(t, IsPermanent(err), "attempt %d must be retryable", attempt)
		want := fmt.Sprintf("simulated failure %d/2 for web-02", attempt)
		assert.Contains(t, res.Stderr, want)
		assert.Contains(t, err.Error(), want)
		assert.NoFileExists(t, file)
	}

	res, err := r.Run(testContext(t), args, env, nil, 0)
	require.NoError(t, err, "third attempt: %s", res.Stderr)
	assert.Contains(t, res.Stdout, "server web-02 created")
	assert.EqualValues(t, 3, readJSON(t, file)["attempt"])

	// Other targets are not affected by web-02's injection.
	_, err = r.Run(testContext(t), []string{"server", "create", "--infra", "production", "--settings", "s", "web-01"}, env, nil, 0)
	require.NoError(t, err)
}

func TestDemoScriptFailureModes(t *testing.T) {
	t.Parallel()
	state := t.TempDir()
	r := demoRunner(t)
	env := demoEnv(state, "PROVISIONING_DEMO_FAIL=db-01:always, bad-01:permanent")

	for attempt := 1; attempt <= 3; attempt++ {
		_, err := r.Run(testContext(t), []string{"server", "create", "--infra", "p", "--settings", "s", "db-01"}, env, nil, 0)
		exitErr := requireExitError(t, err)
		assert.Equal(t, 1, exitErr.Code)
		assert.False(t, exitErr.Permanent)
		assert.Contains(t, exitErr.Stderr, fmt.Sprintf("simulated failure %d/always for db-01", attempt))
	}

	// Invalid configuration is permanent, and a dry run must catch it too.
	for _, check := range []bool{false, true} {
		args := []string{"server", "create", "--infra", "p", "--settings", "s", "bad-01"}
		if check {
			args = append(args, "--check")
		}
		_, err := r.Run(testContext(t), args, env, nil, 0)
		exitErr := requireExitError(t, err)
		assert.Equal(t, 3, exitErr.Code, "check=%v", check)
		assert.True(t, IsPermanent(err))
		assert.Contains(t, err.Error(), "simulated invalid configuration for bad-01")
	}
	assert.NoDirExists(t, filepath.Join(state, "p"))

	// A malformed knob is a usage error rather than silently injecting nothing.
	_, err := r.Run(testContext(t), []string{"server", "create", "--infra", "p", "--settings", "s", "x"},
		demoEnv(state, "PROVISIONING_DEMO_FAIL=x:sometimes"), nil, 0)
	assert.Equal(t, 2, requireExitError(t, err).Code)
}

const exitScript = `def main [code: int] {
    print "some output"
    print --stderr "first stderr line"
    print --stderr $"failing with ($code)"
    exit $code
}
`

func TestRunClassifiesExitCodes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		code      int
		permanent []int // nil: the defaults
		wantPerm  bool
	}{
		{code: 1, wantPerm: false},
		{code: 2, wantPerm: true},
		{code: 3, wantPerm: true},
		{code: 4, wantPerm: false},
		{code: 126, wantPerm: true},
		{code: 127, wantPerm: true},
		{code: 1, permanent: []int{1}, wantPerm: true},
		{code: 2, permanent: []int{}, wantPerm: false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("code %d permanent %v", tt.code, tt.permanent), func(t *testing.T) {
			t.Parallel()
			r := scriptRunner(t, exitScript)
			r.PermanentExitCodes = tt.permanent
			res, err := r.Run(testContext(t), []string{strconv.Itoa(tt.code)}, nil, nil, 0)
			exitErr := requireExitError(t, err)
			assert.Equal(t, tt.code, exitErr.Code)
			assert.Equal(t, tt.code, res.ExitCode)
			assert.Zero(t, exitErr.Signal)
			assert.Equal(t, tt.wantPerm, exitErr.Permanent)
			assert.Equal(t, tt.wantPerm, IsPermanent(err))
			assert.Equal(t, "some output\n", res.Stdout, "output of failed runs is kept")
			assert.Equal(t, "first stderr line\nfailing with "+strconv.Itoa(tt.code)+"\n", exitErr.Stderr)
			msg := err.Error()
			assert.Contains(t, msg, fmt.Sprintf("code %d", tt.code))
			assert.Contains(t, msg, "failing with "+strconv.Itoa(tt.code), "the last stderr line explains the failure")
		})
	}

	t.Run("code 0 is success", func(t *testing.T) {
		t.Parallel()
		res, err := scriptRunner(t, exitScript).Run(testContext(t), []string{"0"}, nil, nil, 0)
		require.NoError(t, err)
		assert.Equal(t, 0, res.ExitCode)
		assert.Equal(t, "some output\n", res.Stdout)
	})
}

func TestRunReportsNuErrors(t *testing.T) {
	t.Parallel()
	// An uncaught nu error: exit 1 with a multi-line diagnostic whose last line
	// is box drawing; the error text should carry the diagnostic instead.
	r := scriptRunner(t, `def main [] { error make {msg: "the settings file is broken"} }`)
	_, err := r.Run(testContext(t), nil, nil, nil, 0)
	exitErr := requireExitError(t, err)
	assert.Equal(t, 1, exitErr.Code)
	assert.False(t, IsPermanent(err))
	assert.Contains(t, err.Error(), "the settings file is broken")
}

func TestRunStartErrors(t *testing.T) {
	t.Parallel()
	nu := testsupport.NuPath(t)
	script := filepath.Join(testsupport.RepoRoot(t), "core", "nulib", "provisioning")
	dir := t.TempDir()

	tests := []struct {
		name     string
		runner   *Runner
		args     []string
		wantFlag string
		wantMsg  string
	}{
		{"missing script", &Runner{NuPath: nu, ScriptPath: filepath.Join(dir, "nope")}, nil, "--provisioning-path", "check --provisioning-path"},
		{"script is a directory", &Runner{NuPath: nu, ScriptPath: dir}, nil, "--provisioning-path", "is a directory"},
		{"missing nu", &Runner{NuPath: filepath.Join(dir, "no-such-nu"), ScriptPath: script}, nil, "--nu-path", "check --nu-path"},
		{"nu not on PATH", &Runner{NuPath: "no-such-nu-binary-anywhere", ScriptPath: script}, nil, "--nu-path", "check --nu-path"},
		{"NUL in argument", &Runner{NuPath: nu, ScriptPath: script}, []string{"server", "web\x0001"}, "", "NUL byte"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var beats atomic.Int32
			res, err := tt.runner.Run(testContext(t), tt.args, nil, func() { beats.Add(1) }, time.Millisecond)
			var startErr *StartError
			require.ErrorAs(t, err, &startErr)
			assert.Equal(t, tt.wantFlag, startErr.Flag)
			assert.Contains(t, err.Error(), tt.wantMsg)
			assert.True(t, IsPermanent(err))
			assert.Equal(t, Result{}, res)
			assert.Zero(t, beats.Load(), "nothing ran")
		})
	}
}

func TestRunDoesNotStartWhenContextIsDone(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := demoRunner(t).Run(ctx, []string{"server"}, nil, nil, 0)
	require.ErrorIs(t, err, context.Canceled)
	assert.False(t, IsPermanent(err))
}

func TestRunEnvironmentLayering(t *testing.T) {
	t.Parallel()
	r := scriptRunner(t, `def main [] { print $"($env.LAYER_A) ($env.LAYER_B) ($env.HOME? | is-not-empty)" }`)
	r.Env = []string{"LAYER_A=runner", "LAYER_B=runner"}
	res, err := r.Run(testContext(t), nil, []string{"LAYER_B=call"}, nil, 0)
	require.NoError(t, err, res.Stderr)
	assert.Equal(t, "runner call true\n", res.Stdout, "per-call env wins over runner env, which adds to os.Environ")

	_, err = r.Run(testContext(t), nil, []string{"NOT_A_PAIR"}, nil, 0)
	assert.True(t, IsPermanent(err))
}

func TestRunKeepsTheTailOfLongOutput(t *testing.T) {
	t.Parallel()
	// One print per stream: in nu 0.115 every print to a non-terminal runs
	// `tput cols` and `tput lines`, so thousands of prints take seconds.
	r := scriptRunner(t, `def main [] {
    1..5000 | each { $"line ($in)\n" } | str join | print --no-newline
    1..3000 | each { $"err ($in)\n" } | str join | print --no-newline --stderr
}`)
	const limit = 1000
	r.MaxOutputBytes = limit
	res, err := r.Run(testContext(t), nil, nil, nil, 0)
	require.NoError(t, err)

	var out, errOut strings.Builder
	for i := 1; i <= 5000; i++ {
		fmt.Fprintf(&out, "line %d\n", i)
	}
	for i := 1; i <= 3000; i++ {
		fmt.Fprintf(&errOut, "err %d\n", i)
	}
	assert.True(t, res.StdoutTruncated)
	assert.True(t, res.StderrTruncated)
	assertSameText(t, out.String()[out.Len()-limit:], res.Stdout)
	assertSameText(t, errOut.String()[errOut.Len()-limit:], res.Stderr)

	// Output under the limit is complete and not marked.
	r.MaxOutputBytes = out.Len() + errOut.Len()
	res, err = r.Run(testContext(t), nil, nil, nil, 0)
	require.NoError(t, err)
	assert.False(t, res.StdoutTruncated)
	assert.False(t, res.StderrTruncated)
	assertSameText(t, out.String(), res.Stdout)
	assertSameText(t, errOut.String(), res.Stderr)
}

// assertSameText compares long texts without dumping them whole on failure.
func assertSameText(t *testing.T, want, got string) {
	t.Helper()
	if want == got {
		return
	}
	edge := func(s string) string { return s[max(0, len(s)-60):] }
	t.Errorf("text differs: want %d bytes ending %q, got %d bytes ending %q", len(want), edge(want), len(got), edge(got))
}

func TestStderrSummary(t *testing.T) {
	t.Parallel()
	assert.Equal(t, "", stderrSummary(" \n\n"))
	assert.Equal(t, "the reason", stderrSummary("usage: x\n  the reason  \n\n"))
	nuErr := "Error: nu::shell::error\n\n  x boom\n   ,-[source:1:12]\n 1 | error make {msg: \"boom\"}\n   `----\n"
	assert.Equal(t, "nu::shell::error: boom", stderrSummary(nuErr))
	assert.LessOrEqual(t, len(stderrSummary(strings.Repeat("x", 10000))), 512)
}

func TestRunHeartbeatsWhileRunning(t *testing.T) {
	t.Parallel()
	// The script runs until the test releases it, so the test never guesses
	// how long nu needs: it releases after a few heartbeats.
	release := filepath.Join(t.TempDir(), "release")
	r := scriptRunner(t, `def main [release: string] {
    while not ($release | path exists) { sleep 5ms }
    print "released"
}`)
	const wantBeats = 3
	var beats atomic.Int32
	heartbeat := func() {
		if beats.Add(1) == wantBeats {
			if err := os.WriteFile(release, nil, 0o644); err != nil {
				t.Error(err)
			}
		}
	}
	res, err := r.Run(testContext(t), []string{release}, nil, heartbeat, 5*time.Millisecond)
	require.NoError(t, err, res.Stderr)
	assert.Equal(t, "released\n", res.Stdout)
	assert.GreaterOrEqual(t, beats.Load(), int32(wantBeats))
}

// processGone reports whether pid no longer runs. A zombie counts as gone:
// orphans are reparented to PID 1, which in a container may never reap them.
func processGone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	st, ok := parseProcStatFields(data)
	return ok && (st.state == 'Z' || st.state == 'X')
}

func requireAllGone(t *testing.T, pids []int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var alive []int
		for _, pid := range pids {
			if !processGone(pid) {
				alive = append(alive, pid)
			}
		}
		if len(alive) == 0 {
			return
		}
		if time.Now().After(deadline) {
			var desc []string
			for _, pid := range alive {
				cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
				desc = append(desc, fmt.Sprintf("%d (%s)", pid, strings.ReplaceAll(string(cmdline), "\x00", " ")))
				_ = syscall.Kill(pid, syscall.SIGKILL) // do not leak them past the test
			}
			t.Fatalf("processes survived: %s", strings.Join(desc, ", "))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitForPIDFiles waits until dir holds n files named after pids and returns them.
func waitForPIDFiles(t *testing.T, dir string, n int, runDone <-chan struct{}) []int {
	t.Helper()
	ctx := testContext(t)
	for {
		entries, _ := os.ReadDir(dir)
		if len(entries) >= n {
			pids := make([]int, 0, len(entries))
			for _, e := range entries {
				pid, err := strconv.Atoi(e.Name())
				require.NoError(t, err)
				pids = append(pids, pid)
			}
			return pids
		}
		select {
		case <-runDone:
			t.Fatalf("the script ended before starting its %d processes (%d started)", n, len(entries))
		case <-ctx.Done():
			t.Fatalf("only %d of %d processes started", len(entries), n)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// treeScripts writes the process tree used by the cancellation test and
// returns the top script. Each leaf records its pid and then becomes
// `sleep 300` (exec keeps the pid). The tree mixes the two ways nu starts
// externals: in the foreground (same process group) and with `job spawn`,
// which nu 0.115 puts in a process group of its own.
//
//	top.nu ── job spawn ──> leaf (child, own group)
//	       └─ foreground ─> middle.nu ── job spawn ──> leaf (grandchild, own group)
//	                                  └─ foreground ─> leaf (grandchild)
func treeScripts(t *testing.T, dir string) string {
	leaf := filepath.Join(dir, "leaf.nu")
	middle := filepath.Join(dir, "middle.nu")
	top := filepath.Join(dir, "top.nu")
	scripts := map[string]string{
		leaf: `def main [pids: string] {
    $nu.pid | into string | save ($pids | path join ($nu.pid | into string))
    exec sleep 300
}`,
		middle: `def main [leaf: string, pids: string] {
    $nu.pid | into string | save ($pids | path join ($nu.pid | into string))
    job spawn { ^$nu.current-exe $leaf $pids }
    ^$nu.current-exe $leaf $pids
}`,
		top: `def main [middle: string, leaf: string, pids: string] {
    $nu.pid | into string | save ($pids | path join ($nu.pid | into string))
    job spawn { ^$nu.current-exe $leaf $pids }
    ^$nu.current-exe $middle $leaf $pids
}`,
	}
	for path, body := range scripts {
		require.NoError(t, os.WriteFile(path, []byte(body), 0o644))
	}
	return top
}

func TestRunCancelKillsTheWholeProcessTree(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pidDir := filepath.Join(dir, "pids")
	require.NoError(t, os.Mkdir(pidDir, 0o755))
	r := &Runner{NuPath: testsupport.NuPath(t), ScriptPath: treeScripts(t, dir), KillGrace: 2 * time.Second}

	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	type outcome struct {
		res Result
		err error
	}
	done := make(chan struct{})
	var got outcome
	go func() {
		defer close(done)
		got.res, got.err = r.Run(ctx, []string{
			filepath.Join(dir, "middle.nu"), filepath.Join(dir, "leaf.nu"), pidDir,
		}, nil, nil, 0)
	}()

	// top, middle and three leaves.
	pids := waitForPIDFiles(t, pidDir, 5, done)
	cancel()
	<-done

	require.ErrorIs(t, got.err, context.Canceled)
	assert.False(t, IsPermanent(got.err))
	requireAllGone(t, pids)
}

func TestRunCancelEscalatesToSIGKILL(t *testing.T) {
	t.Parallel()
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("needs sh to start a process that ignores SIGTERM")
	}
	pidFile := filepath.Join(t.TempDir(), "pid")
	// An external that ignores SIGTERM (the disposition survives exec) and
	// keeps nu's stdout open.
	r := scriptRunner(t, `def main [sh: string, pidfile: string] {
    ^$sh -c 'trap "" TERM; echo $$ > "$1.tmp" && mv "$1.tmp" "$1"; exec sleep 300' sh $pidfile
}`)
	r.KillGrace = 200 * time.Millisecond

	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := r.Run(ctx, []string{sh, pidFile}, nil, nil, 0)
		done <- err
	}()
	pid := waitForFileInt(t, pidFile, done)
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
	requireAllGone(t, []int{pid})
}

func TestRunLeavesNoProcessesBehind(t *testing.T) {
	t.Parallel()
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("needs sh to leave a background process behind")
	}
	pidFile := filepath.Join(t.TempDir(), "pid")
	// nu exits 0 while a background sleep still holds its stdout: without the
	// cleanup Run would wait for it, and it would outlive the run.
	r := scriptRunner(t, `def main [sh: string, pidfile: string] {
    ^$sh -c 'sleep 300 & echo $! > "$1"' sh $pidfile
    print "finished"
}`)
	r.KillGrace = 200 * time.Millisecond
	res, err := r.Run(testContext(t), []string{sh, pidFile}, nil, nil, 0)
	require.NoError(t, err, res.Stderr)
	assert.Equal(t, "finished\n", res.Stdout)
	data, err := os.ReadFile(pidFile)
	require.NoError(t, err)
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	require.NoError(t, err)
	requireAllGone(t, []int{pid})
}

func waitForFileInt(t *testing.T, path string, runDone <-chan error) int {
	t.Helper()
	ctx := testContext(t)
	for {
		if data, err := os.ReadFile(path); err == nil {
			n, err := strconv.Atoi(strings.TrimSpace(string(data)))
			require.NoError(t, err)
			return n
		}
		select {
		case err := <-runDone:
			t.Fatalf("the script ended before writing %s: %v", path, err)
		case <-ctx.Done():
			t.Fatalf("%s never appeared", path)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func TestRunPassesArgumentsVerbatim(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	canary := filepath.Join(dir, "canary")
	require.NoError(t, os.WriteFile(canary, []byte("still here"), 0o644))
	pwned := filepath.Join(dir, "pwned")

	r := scriptRunner(t, `def --wrapped main [...rest] { $rest | to json --raw | print }`)
	args := []string{
		"web-01; rm -rf " + canary,
		"web-01; rm -rf /",
		"$(touch " + pwned + ")",
		"`touch " + pwned + "`",
		"(touch " + pwned + ")",
		"; ^touch " + pwned,
		"a b\tc\nd",
		"",
		"--infra=x",
		"--",
		"-",
		"'single'",
		`"double"`,
		"$env.HOME",
		"{a: 1}",
		"[1 2]",
		"123",
		"true",
		"*",
		`back\slash`,
		"ünïcödé ✓",
	}
	res, err := r.Run(testContext(t), args, nil, nil, 0)
	require.NoError(t, err, res.Stderr)

	var got []string
	require.NoError(t, json.Unmarshal([]byte(res.Stdout), &got), res.Stdout)
	assert.Equal(t, args, got)
	assert.FileExists(t, canary)
	assert.NoFileExists(t, pwned)
	assert.Equal(t, []string{"canary"}, filesUnder(t, dir))
}

// A process that leaves the run's session (setsid) and closes the run's
// pipes, so nothing ties it to the run but its inherited environment,
// dies with the run too: a retried step never races a survivor.
func TestRunStopsProcessesThatLeftTheSession(t *testing.T) {
	t.Parallel()
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("needs sh")
	}
	setsid, err := exec.LookPath("setsid")
	if err != nil {
		t.Skip("needs setsid (util-linux)")
	}
	pidFile := filepath.Join(t.TempDir(), "pid")
	r := scriptRunner(t, `def main [sh: string, setsid: string, pidfile: string] {
    ^$setsid -f $sh -c 'echo $$ > "$1.tmp" && mv "$1.tmp" "$1"; exec sleep 300' sh $pidfile o> /dev/null e> /dev/null
    while not ($pidfile | path exists) { sleep 10ms }
    print "finished"
}`)
	r.KillGrace = 200 * time.Millisecond
	res, err := r.Run(testContext(t), []string{sh, setsid, pidFile}, nil, nil, 0)
	require.NoError(t, err, res.Stderr)
	data, err := os.ReadFile(pidFile)
	require.NoError(t, err)
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	require.NoError(t, err)
	requireAllGone(t, []int{pid})
}

func TestDemoScriptDeleteVerbs(t *testing.T) {
	t.Parallel()
	state := t.TempDir()
	runLog := filepath.Join(t.TempDir(), "runs.log")
	r := demoRunner(t)
	env := demoEnv(state, "PROVISIONING_DEMO_RUN_LOG="+runLog, "PROVISIONING_DEMO_FAIL_DELETE=web-01:1")
	flags := []string{"--infra", "p", "--settings", "s"}
	run := func(args ...string) (Result, error) {
		return r.Run(testContext(t), append(args, flags...), env, nil, 0)
	}
	for _, args := range [][]string{
		{"server", "create", "web-01"}, {"taskserv", "create", "redis", "web-01"}, {"cluster", "create", "c1"},
	} {
		res, err := run(args...)
		require.NoError(t, err, "%v: %s", args, res.Stderr)
	}
	server := filepath.Join(state, "p", "servers", "web-01.json")
	taskserv := filepath.Join(state, "p", "taskservs", "web-01", "redis.json")
	cluster := filepath.Join(state, "p", "clusters", "c1.json")
	created := readJSON(t, server)
	startedAt, err := time.Parse(time.RFC3339Nano, created["started_at"].(string))
	require.NoError(t, err)
	updatedAt, err := time.Parse(time.RFC3339Nano, created["updated_at"].(string))
	require.NoError(t, err)
	assert.False(t, updatedAt.Before(startedAt), "a create ends after it starts")

	// --check removes nothing.
	res, err := run("taskserv", "delete", "redis", "web-01", "--check")
	require.NoError(t, err, res.Stderr)
	assert.Contains(t, res.Stdout, "would remove "+taskserv)
	assert.FileExists(t, taskserv)

	res, err = run("taskserv", "delete", "redis", "web-01")
	require.NoError(t, err, res.Stderr)
	assert.Contains(t, res.Stdout, "taskserv redis on server web-01 deleted")
	assert.NoFileExists(t, taskserv)
	// Deleting what is gone succeeds: a retried compensation is harmless.
	res, err = run("taskserv", "delete", "redis", "web-01")
	require.NoError(t, err, res.Stderr)
	assert.Contains(t, res.Stdout, "does not exist; nothing to delete")

	// Delete failures are injected separately from create failures.
	_, err = run("server", "delete", "web-01")
	assert.Equal(t, 1, requireExitError(t, err).Code)
	assert.FileExists(t, server)
	res, err = run("server", "delete", "web-01")
	require.NoError(t, err, res.Stderr)
	assert.NoFileExists(t, server)

	res, err = run("cluster", "delete", "c1")
	require.NoError(t, err, res.Stderr)
	assert.NoFileExists(t, cluster)

	_, err = run("cluster", "delete", "c1", "extra")
	assert.Equal(t, 2, requireExitError(t, err).Code)

	log, err := os.ReadFile(runLog)
	require.NoError(t, err)
	assert.Equal(t, "server web-01 changed\ntaskserv redis on web-01 changed\ncluster c1 changed\n"+
		"taskserv redis on web-01 deleted\ntaskserv redis on web-01 absent\nserver web-01 deleted\ncluster c1 deleted\n", string(log))
}

func TestParseProcStatFields(t *testing.T) {
	// A command name with spaces and parentheses, as /proc shows it.
	line := "4242 (nu (x) y) S 17 4242 4242 0 -1 4194560 500 0 0 0 3 1 0 0 20 0 4 0 987654 12345678 900 18446744073709551615\n"
	st, ok := parseProcStatFields([]byte(line))
	require.True(t, ok)
	assert.Equal(t, procStat{state: 'S', ppid: 17, session: 4242, startTicks: 987654}, st)

	_, ok = parseProcStatFields([]byte("garbage without the name"))
	assert.False(t, ok)
	// Old kernels' short lines still give the session.
	st, ok = parseProcStatFields([]byte("1 (init) S 0 1 1"))
	require.True(t, ok)
	assert.Equal(t, 1, st.session)
	assert.Zero(t, st.startTicks)
}

func TestMayHaveEscaped(t *testing.T) {
	r := run{sid: 100, token: "t", startTicks: 5000}
	// Started before the run's nu: cannot be the run's.
	assert.False(t, mayHaveEscaped(procStat{ppid: 1, startTicks: 4999}, r))
	// Another run's nu (a child of this process).
	assert.False(t, mayHaveEscaped(procStat{ppid: selfPID, startTicks: 6000}, r))
	// A daemon reparented to init, started during the run: read its environment.
	assert.True(t, mayHaveEscaped(procStat{ppid: 1, startTicks: 5000}, r))
	// Unknown start time of nu: every process is a candidate.
	assert.True(t, mayHaveEscaped(procStat{ppid: 1, startTicks: 1}, run{sid: 100, token: "t"}))
}

// BenchmarkSessionMembers: the run's-end scan of /proc with 300 other live
// processes (children of this process, as other runs' nu are): one run;
// 16 runs ending at once (sharing scans); and the scan before the
// start-time/parent filter and sharing (every process's environment read,
// one scan per run), in the same run.
//
//	go test -run '^$' -bench SessionMembers ./driver/nushell/
func BenchmarkSessionMembers(b *testing.B) {
	var procs []*exec.Cmd
	for range 300 {
		c := exec.Command("sleep", "600")
		require.NoError(b, c.Start())
		procs = append(procs, c)
	}
	b.Cleanup(func() {
		for _, c := range procs {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
	})
	r := run{sid: 1 << 30, token: newRunToken(), startTicks: procStartTicks(os.Getpid())}
	b.Run("filtered", func(b *testing.B) {
		for b.Loop() {
			pids, err := sessionMembers(r)
			require.NoError(b, err)
			require.Empty(b, pids)
		}
	})
	// 16 runs ending at once, each as its own request: ns/op is per run.
	b.Run("16-ending-together", func(b *testing.B) {
		var p procScanner
		for b.Loop() {
			var wg sync.WaitGroup
			for range 16 {
				wg.Go(func() {
					_, err := p.members(r)
					assert.NoError(b, err)
				})
			}
			wg.Wait()
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*16), "ns/run")
		b.ReportMetric(float64(p.scans)/float64(b.N*16), "scans/run")
	})
	b.Run("every-environment-baseline", func(b *testing.B) {
		for b.Loop() {
			entries, err := os.ReadDir("/proc")
			require.NoError(b, err)
			for _, e := range entries {
				if _, err := strconv.Atoi(e.Name()); err != nil {
					continue
				}
				data, err := os.ReadFile("/proc/" + e.Name() + "/stat")
				if err != nil {
					continue
				}
				if st, ok := parseProcStatFields(data); ok && st.session != r.sid {
					_ = runTokenOf(e.Name()) == r.token
				}
			}
		}
	})
}

// Runs ending together share scans of /proc, and each still gets exactly
// its own processes: its session, and the processes that left it carrying
// its token (reparented, as daemons are).
func TestProcScannerSharesScans(t *testing.T) {
	const runs = 8
	var pids []int
	reqs := make([]run, runs)
	want := make([][]int, runs)
	self := procStartTicks(os.Getpid())
	for i := range runs {
		token := newRunToken()
		// The run's session: a process in a session of its own.
		leader := exec.Command("sleep", "60")
		leader.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		require.NoError(t, leader.Start())
		go func() { _ = leader.Wait() }()
		// A daemon of the run: it left the session and its parent exited.
		sh := exec.Command("sh", "-c", "setsid sleep 60 >/dev/null 2>&1 & echo $!")
		sh.Env = append(os.Environ(), RunTokenEnv+"="+token)
		out, err := sh.Output()
		require.NoError(t, err)
		daemon, err := strconv.Atoi(strings.TrimSpace(string(out)))
		require.NoError(t, err)
		pids = append(pids, leader.Process.Pid, daemon)
		reqs[i] = run{sid: leader.Process.Pid, token: token, startTicks: self}
		want[i] = []int{leader.Process.Pid, daemon}
		slices.Sort(want[i])
	}
	t.Cleanup(func() {
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	var p procScanner
	got := make([][]int, runs)
	var wg sync.WaitGroup
	for i := range runs {
		wg.Go(func() {
			pids, err := p.members(reqs[i])
			assert.NoError(t, err)
			slices.Sort(pids)
			got[i] = pids
		})
	}
	wg.Wait()
	for i := range runs {
		assert.Equal(t, want[i], got[i], "run %d", i)
	}
	assert.GreaterOrEqual(t, p.scans, 1)
	assert.LessOrEqual(t, p.scans, runs)
	t.Logf("%d runs answered by %d scans", runs, p.scans)
}
