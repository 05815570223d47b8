package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"

	"github.com/provisioning/orchestrator/internal/app"
	"github.com/provisioning/orchestrator/internal/testsupport"
	"github.com/provisioning/orchestrator/storage"
)

// waitLogged waits until the child's log contains needle, failing early if
// the child exits.
func waitLogged(t *testing.T, c *child, logPath, needle string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-c.done:
			t.Fatalf("%s exited during start-up: %v", logPath, c.err)
		default:
		}
		if b, _ := os.ReadFile(logPath); bytes.Contains(b, []byte(needle)) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: no %q after 60s", logPath, needle)
}

// stepsStarted counts the Nushell steps a worker process logged as started.
func stepsStarted(t *testing.T, logPath string) int {
	t.Helper()
	b, err := os.ReadFile(logPath)
	require.NoError(t, err)
	return bytes.Count(b, []byte(`"msg":"nushell step starting"`))
}

// activityIdentities returns, per worker identity, how many activity tasks
// of the workflow it started, read from the Temporal history.
func activityIdentities(t *testing.T, c client.Client, workflowID string, into map[string]int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	it := c.GetWorkflowHistory(ctx, workflowID, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for it.HasNext() {
		ev, err := it.Next()
		require.NoError(t, err)
		if a := ev.GetActivityTaskStartedEventAttributes(); a != nil {
			into[a.GetIdentity()]++
		}
	}
}

// TestSplitAPIAndTwoWorkers runs the production shape as separate
// processes: Temporal (orchestrator temporal), one API and two workers
// sharing the API's data dir. Tasks must be spread over both workers, and
// killing one worker mid-run must leave the other to finish everything.
func TestSplitAPIAndTwoWorkers(t *testing.T) {
	nu := testsupport.NuPath(t)
	root := testsupport.RepoRoot(t)
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	stateDir := filepath.Join(dir, "provider-state")
	tport, port := freePort(t), freePort(t)
	temporalAddr := fmt.Sprintf("127.0.0.1:%d", tport)

	tlog := filepath.Join(dir, "temporal.log")
	tchild := startChild(t, []string{"temporal", "--temporal-port", fmt.Sprint(tport), "--temporal-ui-port", "-1",
		"--data-dir", filepath.Join(dir, "temporal-data"), "--log-format", "json"}, nil, tlog)
	waitLogged(t, tchild, tlog, "orchestrator ready")

	alog := filepath.Join(dir, "api.log")
	api := startChild(t, []string{"api", "--temporal-address", temporalAddr, "--port", fmt.Sprint(port),
		"--data-dir", dataDir, "--log-format", "json", "--parallelism", "2",
		// 5 s: short enough that the killed worker's steps move on quickly,
		// long enough that a loaded machine's slow heartbeat round trips
		// (the SDK sends at most one per 80% of the timeout) do not time
		// steps out: with 2 s every attempt of a step timed out in a CI run.
		"--heartbeat-timeout", "5s", "--retry-initial-interval", "100ms", "--retry-max-interval", "1s"}, nil, alog)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	waitHealthy(t, base, api, alog)

	workerArgs := []string{"worker", "--temporal-address", temporalAddr, "--data-dir", dataDir,
		"--nu-path", nu, "--provisioning-path", filepath.Join(root, "core", "nulib", "provisioning"),
		"--log-format", "json"}
	workerEnv := []string{"PROVISIONING_STATE_DIR=" + stateDir, "PROVISIONING_DEMO_DELAY_MS=300"}
	wlogs := []string{filepath.Join(dir, "worker1.log"), filepath.Join(dir, "worker2.log")}
	workers := make([]*child, len(wlogs))
	for i, l := range wlogs {
		workers[i] = startChild(t, workerArgs, workerEnv, l)
	}
	for i, l := range wlogs {
		waitLogged(t, workers[i], l, "orchestrator ready")
	}

	h := &harness{t: t, base: base}
	submit := func(prefix string, n int) []string {
		var ids []string
		for i := range n {
			ids = append(ids, h.submit("/workflows/servers/create",
				serverBody(fmt.Sprintf("%s%d-a", prefix, i), fmt.Sprintf("%s%d-b", prefix, i))))
		}
		return ids
	}
	waitAll := func(ids []string) {
		for _, id := range ids {
			task, _ := waitTask(t, base, id, 120*time.Second, terminal)
			require.Equal(t, storage.StatusCompleted, task.Status, "task %s: %s", id, deref(task.Error))
			require.Len(t, task.Steps, 2)
			for _, s := range task.Steps {
				assert.Equal(t, storage.StatusCompleted, s.Status, "%s/%s", id, s.Name)
				assert.FileExists(t, filepath.Join(stateDir, "production", "servers", s.Name+".json"))
			}
		}
	}

	// Phase 1: work is spread over both workers.
	ids := submit("split", 12)
	waitAll(ids)
	perLog := []int{stepsStarted(t, wlogs[0]), stepsStarted(t, wlogs[1])}
	t.Logf("nushell steps started per worker: %v", perLog)
	assert.Positive(t, perLog[0], "worker 1 ran no step")
	assert.Positive(t, perLog[1], "worker 2 ran no step")
	assert.GreaterOrEqual(t, perLog[0]+perLog[1], 2*len(ids))

	c, err := client.Dial(client.Options{HostPort: temporalAddr})
	require.NoError(t, err)
	defer c.Close()
	identities := map[string]int{}
	for _, id := range ids {
		activityIdentities(t, c, id, identities)
	}
	t.Logf("activity tasks started per worker identity: %v", identities)
	assert.Len(t, identities, 2, "activities should have run on both workers")

	// Phase 2: kill worker 1 while it runs a step; worker 2 finishes all.
	before := stepsStarted(t, wlogs[0])
	ids = submit("kill", 6)
	eventually(t, 30*time.Second, "worker 1 to start a step", func() bool { return stepsStarted(t, wlogs[0]) > before })
	require.NoError(t, workers[0].cmd.Process.Signal(syscall.SIGKILL))
	<-workers[0].done
	survivor := stepsStarted(t, wlogs[1])
	waitAll(ids)
	assert.Greater(t, stepsStarted(t, wlogs[1]), survivor, "worker 2 took over no step")
	r := h.get("/tasks?status=Running")
	assert.Equal(t, "0", r.header.Get("X-Total-Count"), "tasks stuck in Running")
}

// TestSplitTemporalModeFlags: temporal mode runs its own server, so it
// takes no --temporal-address, while api and worker still require one.
func TestSplitTemporalModeFlags(t *testing.T) {
	none := func(string) string { return "" }
	cfg, err := app.ParseConfig([]string{"temporal", "--temporal-port", "0"}, none, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, app.ModeTemporal, cfg.Mode)
	_, err = app.ParseConfig([]string{"temporal", "--temporal-address", "127.0.0.1:7233"}, none, io.Discard)
	require.ErrorContains(t, err, "--temporal-address")
	for _, mode := range []string{"api", "worker"} {
		_, err = app.ParseConfig([]string{mode}, none, io.Discard)
		require.ErrorContains(t, err, "--temporal-address", mode)
	}
}
