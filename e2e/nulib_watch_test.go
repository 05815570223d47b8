package e2e

import (
	"bufio"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/internal/testsupport"
)

// `workflow watch` and `--wait` through the real nu, on the event stream:
// watch prints a step's output line while the step still runs (the script
// waits for the test's go file), a retried attempt, the progress bar and
// the final status; --wait reports progress from the stream.
func TestNuWorkflowWatch(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "provisioning")
	require.NoError(t, os.WriteFile(script, []byte(eventsScript), 0o644))
	cfg := appConfig(t, withNu(t, script))
	a, _ := launchApp(t, cfg)
	h := &harness{t: t, app: a, base: baseURL(a)}
	stateDir := providerState(cfg)
	root := testsupport.RepoRoot(t)
	uses := "use '" + filepath.Join(root, "nulib", "workflows", "workflow.nu") + "' *; "

	// Live: the output line is printed before the step can finish.
	id := h.submit("/workflows/servers/create", map[string]any{"infra": "lab", "settings": "./s.yaml", "servers": []string{"live-02"}})
	cmd := exec.Command(testsupport.NuPath(t), "--no-config-file", "-c", uses+"workflow watch "+id)
	cmd.Env = append(os.Environ(), "ORCHESTRATOR_URL="+h.base)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var seen []string
	deadline := time.After(2 * time.Minute)
	for !contains(seen, "live-02 | hello from live-02") {
		select {
		case l, ok := <-lines:
			require.True(t, ok, "watch ended early: %v\nstderr: %s", seen, stderr.String())
			seen = append(seen, l)
		case <-deadline:
			t.Fatalf("no live line: %v\nstderr: %s", seen, stderr.String())
		}
	}
	assert.False(t, h.task(id).Steps[0].Status.Terminal(), "the line came while the step ran")
	require.NoError(t, os.WriteFile(filepath.Join(stateDir, "go-live-02"), nil, 0o644))
	for l := range lines {
		seen = append(seen, l)
	}
	require.NoError(t, cmd.Wait(), "stderr: %s", stderr.String())
	t.Logf("workflow watch:\n%s", strings.Join(seen, "\n"))
	assert.Contains(t, seen, "live-02: attempt 1 started")
	assert.Contains(t, seen, "live-02 | bye from live-02")
	assert.Contains(t, seen, "live-02: Completed after 1 attempt(s)")
	assert.Contains(t, seen, "[####################] 1/1 Completed")
	assert.Equal(t, "task "+id+": Completed", seen[len(seen)-1])

	// A retried step.
	id = h.submit("/workflows/servers/create", map[string]any{"infra": "lab", "settings": "./s.yaml", "servers": []string{"flaky-02"}})
	r := runNu(t, h.base, "workflow watch "+id, "workflows/workflow.nu")
	require.Equal(t, 0, r.exitCode, r.stderr)
	assert.Contains(t, r.stdout, "flaky-02: attempt 1 failed (exit 1), retrying")
	assert.Contains(t, r.stdout, "flaky-02: attempt 2 started")
	assert.Contains(t, r.stdout, "flaky-02 | flaky-02 attempt 2")

	// Unknown task: the API's 404, before any streaming.
	r = runNu(t, h.base, "workflow watch 00000000-0000-4000-8000-000000000000", "workflows/workflow.nu")
	assert.NotEqual(t, 0, r.exitCode)
	assert.Contains(t, errorText(r.stderr), "not found")

	// --wait follows the stream: progress on stderr, the record returned.
	before := eventStreams(t, h.base)
	var task nuTask
	r = runNuJSON(t, h.base, "server_create_workflow prod web-01 web-02 --settings ./s.yaml --wait | to json", &task, "workflows/server_create.nu")
	assert.Equal(t, "Completed", task.Status)
	assert.Contains(t, r.stderr, "Running 0/2")
	assert.Contains(t, r.stderr, "Completed 2/2")
	assert.Equal(t, before+1, eventStreams(t, h.base), "--wait used the event stream")
	// Process-wide (other tests of this binary may drop some): present.
	assert.Contains(t, metricsText(t, h.base), "\norchestrator_live_events_dropped_total ", "dropped live events are counted")
}

func metricsText(t *testing.T, base string) string {
	t.Helper()
	res, err := http.Get(base + "/metrics")
	require.NoError(t, err)
	body, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	require.NoError(t, res.Body.Close())
	return string(body)
}

// eventStreams is how many GET /tasks/{id}/events answered 200 (the
// service's request counter).
func eventStreams(t *testing.T, base string) int {
	t.Helper()
	for _, l := range strings.Split(metricsText(t, base), "\n") {
		if strings.HasPrefix(l, "orchestrator_http_requests_total{") && strings.Contains(l, `route="/tasks/:id/events",status="200"`) {
			n, err := strconv.Atoi(l[strings.LastIndexByte(l, ' ')+1:])
			require.NoError(t, err, l)
			return n
		}
	}
	return 0
}

func contains(xs []string, want string) bool {
	for _, x := range xs {
		if x == want {
			return true
		}
	}
	return false
}
