package migratetest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/internal/app"
	"github.com/provisioning/orchestrator/storage"
)

// The test binary re-executes itself as the orchestrator (like the e2e
// tests do) when childEnv is set; childArgsEnv holds the arguments as a
// JSON array.
const (
	childEnv     = "ORCHESTRATOR_MIGRATETEST_CHILD"
	childArgsEnv = "ORCHESTRATOR_MIGRATETEST_ARGS"
	throttleEnv  = "ORCHESTRATOR_MIGRATE_TEST_THROTTLE"
)

// RunChildIfRequested must be called first in the TestMain of a package
// that uses RunKillResume or RunCLI: in the re-executed test binary it runs
// app.Run with the requested arguments and exits with the orchestrator's
// exit code; otherwise it returns at once.
func RunChildIfRequested() {
	if os.Getenv(childEnv) != "1" {
		return
	}
	var args []string
	if err := json.Unmarshal([]byte(os.Getenv(childArgsEnv)), &args); err != nil {
		fmt.Fprintln(os.Stderr, "migratetest child: bad", childArgsEnv+":", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := app.Run(ctx, args, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "orchestrator:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// CLIStore makes a fresh, empty store for the CLI tests: the `migrate`
// flags selecting it as side "from" or "to" (e.g. --from filesystem
// --from-data-dir D), and a function opening it in the test process. The
// tests open it only while no child process runs (an embedded database
// cannot be opened twice), and close what they open.
type CLIStore func(t *testing.T, side string) (args []string, open func(t *testing.T) storage.Store)

// FilesystemCLIStore is the CLIStore of the filesystem backend.
func FilesystemCLIStore(t *testing.T, side string) ([]string, func(t *testing.T) storage.Store) {
	dir := filepath.Join(t.TempDir(), side)
	return []string{"--" + side, "filesystem", "--" + side + "-data-dir", dir},
		func(t *testing.T) storage.Store {
			fs, err := storage.NewFilesystem(dir)
			require.NoError(t, err)
			return fs
		}
}

// child is `orchestrator` running as a separate process.
type child struct {
	cmd     *exec.Cmd
	stdout  bytes.Buffer
	logPath string // stderr
	done    chan struct{}
	err     error // Wait's result, valid after done
}

func startChild(t *testing.T, args, env []string) *child {
	t.Helper()
	a, err := json.Marshal(args)
	require.NoError(t, err)
	c := &child{logPath: filepath.Join(t.TempDir(), "stderr.log"), done: make(chan struct{})}
	logFile, err := os.Create(c.logPath)
	require.NoError(t, err)
	c.cmd = exec.Command(os.Args[0], "-test.run=^$")
	c.cmd.Env = append(append(os.Environ(), childEnv+"=1", childArgsEnv+"="+string(a)), env...)
	c.cmd.Stdout = &c.stdout
	c.cmd.Stderr = logFile
	require.NoError(t, c.cmd.Start())
	go func() { c.err = c.cmd.Wait(); logFile.Close(); close(c.done) }()
	t.Cleanup(func() {
		_ = c.cmd.Process.Kill()
		<-c.done
	})
	return c
}

func (c *child) stderr() string {
	data, _ := os.ReadFile(c.logPath)
	return string(data)
}

func (c *child) wait(t *testing.T, timeout time.Duration) {
	t.Helper()
	select {
	case <-c.done:
	case <-time.After(timeout):
		_ = c.cmd.Process.Kill()
		<-c.done
		t.Fatalf("orchestrator %v did not finish within %s\nstderr:\n%s", c.cmd.Args, timeout, c.stderr())
	}
}

// RunCLI runs `orchestrator args...` in a child process to the end and
// returns its stdout, stderr and exit error.
func RunCLI(t *testing.T, args, env []string, timeout time.Duration) (stdout, stderr string, err error) {
	t.Helper()
	c := startChild(t, args, env)
	c.wait(t, timeout)
	return c.stdout.String(), c.stderr(), c.err
}

var resumedRE = regexp.MustCompile(`\((\d+) known from the checkpoint\)`)

// RunKillResume seeds n tasks into the source, runs `orchestrator migrate`
// (concurrency 1, slowed by the test-only throttle) in a child process,
// SIGKILLs it once its progress shows at least one task copied and its
// checkpoint exists, checks that it was killed midway, reruns it to the
// end and checks that it verified and that source and target are
// identical.
func RunKillResume(t *testing.T, from, to CLIStore, n int) {
	fromArgs, openSrc := from(t, "from")
	toArgs, openDst := to(t, "to")
	src := openSrc(t)
	Seed(t, src, n)
	require.NoError(t, src.Close())

	checkpoint := filepath.Join(t.TempDir(), "migrate-checkpoint.json")
	args := append(append(append([]string{"migrate"}, fromArgs...), toArgs...),
		"--concurrency", "1", "--checkpoint", checkpoint, "--log-format", "text")

	first := startChild(t, args, []string{throttleEnv + "=3ms"})
	deadline := time.Now().Add(60 * time.Second)
	copied := -1
	for {
		select {
		case <-first.done:
			t.Fatalf("migration ended (%v) before it could be killed midway\nstdout:\n%s\nstderr:\n%s", first.err, first.stdout.String(), first.stderr())
		default:
		}
		for _, line := range strings.Split(first.stderr(), "\n") {
			copied = max(copied, CopiedInLine(line))
		}
		if _, err := os.Stat(checkpoint); err == nil && copied >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no progress with a copied task and a checkpoint within 60s\nstderr:\n%s", first.stderr())
		}
		time.Sleep(20 * time.Millisecond)
	}
	require.NoError(t, first.cmd.Process.Signal(syscall.SIGKILL))
	<-first.done
	var exitErr *exec.ExitError
	require.ErrorAs(t, first.err, &exitErr)
	ws, ok := exitErr.Sys().(syscall.WaitStatus)
	require.True(t, ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL, "killed by SIGKILL: %v", first.err)
	assert.NotContains(t, first.stdout.String(), "verification:", "no summary: it was killed before the end")

	dst := openDst(t)
	ids, err := dst.IDs(context.Background())
	require.NoError(t, err)
	require.NoError(t, dst.Close())
	t.Logf("killed after progress showed %d copied; target holds %d/%d tasks", copied, len(ids), n)
	require.Positive(t, len(ids))
	require.Less(t, len(ids), n, "killed midway")

	stdout, stderr, err := RunCLI(t, args, nil, 5*time.Minute)
	require.NoError(t, err, "rerun\nstdout:\n%s\nstderr:\n%s", stdout, stderr)
	assert.Contains(t, stdout, fmt.Sprintf("verification:      OK: %d/%d tasks", n, n))
	m := resumedRE.FindStringSubmatch(stdout)
	require.NotNil(t, m, "the rerun resumed from the checkpoint:\n%s", stdout)
	resumed, _ := strconv.Atoi(m[1])
	assert.Positive(t, resumed)
	assert.LessOrEqual(t, resumed, len(ids))
	t.Logf("rerun:\n%s", stdout)

	src, dst = openSrc(t), openDst(t)
	defer func() { assert.NoError(t, src.Close()); assert.NoError(t, dst.Close()) }()
	require.Equal(t, n, AssertIdentical(t, src, dst))
}
