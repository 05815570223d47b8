package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/internal/app"
	"github.com/provisioning/orchestrator/internal/devserver"
	"github.com/provisioning/orchestrator/internal/testsupport"
	"github.com/provisioning/orchestrator/storage"
)

// runApp runs app.Run with an already-cancelled context: enough to see
// start-up validation fail without serving.
func runApp(t *testing.T, args []string, stderr io.Writer) error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return app.Run(ctx, args, stderr)
}

func freePort(t *testing.T) int {
	p, err := devserver.FreePort("127.0.0.1")
	require.NoError(t, err)
	return p
}

// child is the orchestrator running as a separate OS process.
type child struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // Wait's result, valid after done
}

func startChild(t *testing.T, args []string, env []string, logPath string) *child {
	t.Helper()
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	require.NoError(t, err)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), childEnv+"=1", "ORCHESTRATOR_E2E_ARGS="+strings.Join(args, " ")), env...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	require.NoError(t, cmd.Start())
	c := &child{cmd: cmd, done: make(chan struct{})}
	go func() { c.err = cmd.Wait(); logFile.Close(); close(c.done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-c.done
		if t.Failed() {
			log, _ := os.ReadFile(logPath)
			t.Logf("orchestrator log:\n%s", log)
		}
	})
	return c
}

func waitHealthy(t *testing.T, base string, c *child, logPath string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-c.done:
			t.Fatalf("orchestrator exited during start-up: %v", c.err)
		default:
		}
		res, err := http.Get(base + "/health")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("orchestrator not healthy after 60s")
}

// TestKillAndRestartLosesNothing SIGKILLs the orchestrator while tasks run
// and starts it again on the same data dir: every task must finish, none
// lost or stuck in Running.
func TestKillAndRestartLosesNothing(t *testing.T) {
	nu := testsupport.NuPath(t)
	root := testsupport.RepoRoot(t)
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	stateDir := filepath.Join(dir, "provider-state")
	logPath := filepath.Join(dir, "orchestrator.log")
	port, tport := freePort(t), freePort(t)
	args := []string{
		"--port", fmt.Sprint(port), "--temporal-port", fmt.Sprint(tport), "--temporal-ui-port", "-1",
		"--data-dir", dataDir, "--nu-path", nu,
		"--provisioning-path", filepath.Join(root, "core", "nulib", "provisioning"),
		"--heartbeat-timeout", "5s", "--retry-initial-interval", "100ms", "--retry-max-interval", "1s",
		// 50 tasks on 2 CPUs next to the rest of the suite: enough attempts
		// and few enough parallel nu runs that load alone never fails a step.
		"--max-attempts", "10", "--max-concurrent-activities", "8",
		"--parallelism", "2", "--log-format", "json",
	}
	runLog := filepath.Join(dir, "runs.log")
	env := []string{"PROVISIONING_STATE_DIR=" + stateDir, "PROVISIONING_DEMO_DELAY_MS=1500", "PROVISIONING_DEMO_RUN_LOG=" + runLog}
	base := fmt.Sprintf("http://127.0.0.1:%d", port)

	first := startChild(t, args, env, logPath)
	waitHealthy(t, base, first, logPath)
	h := &harness{t: t, base: base}
	// 50 tasks in flight: 3 of three servers, 47 of one.
	var ids []string
	for i := range 3 {
		ids = append(ids, h.submit("/workflows/servers/create", serverBody(
			fmt.Sprintf("s%d-a", i), fmt.Sprintf("s%d-b", i), fmt.Sprintf("s%d-c", i))))
	}
	for i := range 47 {
		ids = append(ids, h.submit("/workflows/servers/create", serverBody(fmt.Sprintf("one-%02d", i))))
	}
	// Kill while Nushell steps are in flight.
	var busy string
	eventually(t, 60*time.Second, "nu processes running", func() bool {
		for _, id := range ids {
			if len(taskProcesses(id)) > 0 {
				busy = id
				return true
			}
		}
		return false
	})
	require.Equal(t, storage.StatusRunning, h.task(busy).Status)
	require.NoError(t, first.cmd.Process.Signal(syscall.SIGKILL))
	<-first.done
	// Pdeathsig takes the nu processes down with their parent.
	for _, id := range ids {
		eventually(t, 10*time.Second, "orphaned nu processes to die", func() bool { return len(taskProcesses(id)) == 0 })
	}

	second := startChild(t, args, env, logPath)
	waitHealthy(t, base, second, logPath)
	for _, id := range ids {
		task, _ := waitTask(t, base, id, 90*time.Second, terminal)
		require.Equal(t, storage.StatusCompleted, task.Status, "task %s: %s", id, deref(task.Error))
		for _, s := range task.Steps {
			assert.Equal(t, storage.StatusCompleted, s.Status, "%s/%s", id, s.Name)
			assert.FileExists(t, filepath.Join(stateDir, "production", "servers", s.Name+".json"))
		}
	}
	r := h.get("/tasks?status=Running")
	assert.Equal(t, "0", r.header.Get("X-Total-Count"), "tasks stuck in Running")

	// The provider's own count: every server was provisioned (changed)
	// exactly once; a step retried after the kill found it done.
	b, err := os.ReadFile(runLog)
	require.NoError(t, err)
	changed := map[string]int{}
	runs, unchanged := 0, 0
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		runs++
		if what, ok := strings.CutSuffix(line, " changed"); ok {
			changed[what]++
		} else {
			unchanged++
		}
	}
	assert.Len(t, changed, 3*3+47, "every server provisioned")
	for what, n := range changed {
		assert.Equal(t, 1, n, "%s provisioned %d times", what, n)
	}
	t.Logf("kill -9 with %d tasks in flight: %d completed, %d provider runs finished (%d found the work done), 0 lost, 0 duplicated", len(ids), len(ids), runs, unchanged)

	// A clean stop (SIGTERM) exits 0.
	require.NoError(t, second.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-second.done:
		assert.NoError(t, second.err)
	case <-time.After(30 * time.Second):
		t.Fatal("orchestrator did not stop within 30s of SIGTERM")
	}
}

func deref(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return *s
}
