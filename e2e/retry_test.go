package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/internal/testsupport"
	"github.com/provisioning/orchestrator/sdk"
	"github.com/provisioning/orchestrator/server"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/workflows"
)

// runLogLines reads the demo provider's run log (PROVISIONING_DEMO_RUN_LOG):
// one "<kind> <name> changed|unchanged" line per finished create.
func runLogLines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) == 1 && lines[0] == "" {
		return nil
	}
	return lines
}

func (h *harness) auditActions(id string) map[string]string {
	h.t.Helper()
	r := h.get("/tasks/" + id + "/audit")
	require.Equal(h.t, http.StatusOK, r.status, "%s", r.raw)
	var entries []storage.AuditEntry
	require.NoError(h.t, json.Unmarshal(r.env.Data, &entries))
	out := map[string]string{}
	for _, e := range entries {
		out[e.Action] = e.Detail
	}
	return out
}

// A server create of 3 servers where the provider fails one for good ends
// Failed; `workflow retry` (POST /tasks/{id}/retry) runs only that server
// (the provider's run log proves it), completes, depends on the old task,
// and both audit trails record the retry. A completed task cannot be
// retried (409, through REST and the wrapper).
func TestRetryRunsOnlyTheFailedServer(t *testing.T) {
	runLog := filepath.Join(t.TempDir(), "runs.log")
	// web-02 fails its first 3 invocations: every attempt of the first task
	// (fastPolicy: 3), then succeeds on the retry's first.
	h := startApp(t, "PROVISIONING_DEMO_FAIL=web-02:3", "PROVISIONING_DEMO_RUN_LOG="+runLog)

	id := h.submit("/workflows/servers/create", map[string]any{
		"infra": "lab", "settings": "./s.yaml", "servers": []string{"web-01", "web-02", "web-03"}, "wait": true, "priority": 2})
	old, _ := waitTask(t, h.base, id, 2*time.Minute, terminal)
	require.Equal(t, storage.StatusFailed, old.Status, "%+v", old)
	require.Len(t, old.Steps, 3)
	assert.Equal(t, map[string]storage.TaskStatus{"web-01": storage.StatusCompleted, "web-02": storage.StatusFailed, "web-03": storage.StatusCompleted},
		map[string]storage.TaskStatus{old.Steps[0].Name: old.Steps[0].Status, old.Steps[1].Name: old.Steps[1].Status, old.Steps[2].Name: old.Steps[2].Status})
	before := runLogLines(t, runLog)
	slices.Sort(before)
	require.Equal(t, []string{"server web-01 changed", "server web-03 changed"}, before)

	var retried nuTask
	r := runNuJSON(t, h.base, "workflow retry "+id+" --wait --priority 1 | to json", &retried, "workflows/workflow.nu")
	assert.Equal(t, "Completed", retried.Status, r.stderr)
	require.NotEqual(t, id, retried.ID)

	task := h.task(retried.ID)
	assert.Equal(t, storage.StatusCompleted, task.Status)
	assert.Equal(t, []string{id}, task.Dependencies)
	require.Len(t, task.Steps, 1, "only the failed server")
	assert.Equal(t, "web-02", task.Steps[0].Name)
	assert.Equal(t, storage.Progress{Done: 1, Total: 1}, task.Progress)
	assert.Equal(t, 1, task.Priority, "--priority overrides the old task's (2)")
	assert.Equal(t, old.Name, task.Name)
	assert.Equal(t, []string{"--infra", "lab", "--settings", "./s.yaml", "--wait", "web-02"}, task.Args, "same infra, settings, options")

	after := runLogLines(t, runLog)
	require.Len(t, after, 3, "the retry ran one server: %v", after)
	assert.Equal(t, "server web-02 changed", after[2])

	assert.Equal(t, retried.ID, h.auditActions(id)[server.ActionRetriedAs])
	assert.Equal(t, id, h.auditActions(retried.ID)[server.ActionRetryOf])
	assert.Equal(t, storage.StatusFailed, h.task(id).Status, "the old task stays as it ended")

	// Retrying the same task again answers the same retry and runs nothing.
	resp := h.postJSON("/tasks/"+id+"/retry", map[string]any{})
	require.Equal(t, http.StatusOK, resp.status, "%s", resp.raw)
	var againID string
	require.NoError(t, json.Unmarshal(resp.env.Data, &againID))
	assert.Equal(t, retried.ID, againID)
	assert.Equal(t, "true", resp.header.Get(server.IdempotentReplayedHeader))

	// A completed task has nothing to retry.
	resp = h.postJSON("/tasks/"+retried.ID+"/retry", map[string]any{})
	require.Equal(t, http.StatusConflict, resp.status, "%s", resp.raw)
	assert.Contains(t, resp.env.Error.Message, "task "+retried.ID+" cannot be retried: it completed; there is nothing to retry")
	nr := runNu(t, h.base, "workflow retry "+retried.ID, "workflows/workflow.nu")
	assert.NotEqual(t, 0, nr.exitCode)
	assert.Contains(t, errorText(nr.stderr), "it completed; there is nothing to retry")
	assert.Contains(t, errorText(nr.stderr), "HTTP 409")
	assert.Len(t, runLogLines(t, runLog), 3, "nothing ran")
}

// The original's `server_create_workflow "production" --settings
// "./settings.yaml" --wait` (no servers named) creates every server the
// shipped demo settings define for production, one step each; settings that
// define none fail the task saying so.
func TestServersEmptyCreatesEveryServerTheSettingsDefine(t *testing.T) {
	runLog := filepath.Join(t.TempDir(), "runs.log")
	h := startApp(t, "PROVISIONING_DEMO_RUN_LOG="+runLog)
	// The worker runs nu in the test's directory (e2e/): the repo's
	// settings.yaml is named by its absolute path.
	settings := filepath.Join(testsupport.RepoRoot(t), "settings.yaml")

	var done nuTask
	r := runNuJSON(t, h.base, `server_create_workflow "production" --settings "`+settings+`" --wait | to json`, &done, "workflows/server_create.nu")
	require.Equal(t, "Completed", done.Status, r.stderr)
	task := h.task(done.ID)
	var steps []string
	for _, s := range task.Steps {
		steps = append(steps, s.Name)
		assert.Equal(t, storage.StatusCompleted, s.Status, s.Name)
	}
	assert.Equal(t, []string{"web-01", "web-02", "db-01"}, steps, "the production servers of settings.yaml, in its order")
	assert.Equal(t, storage.Progress{Done: 3, Total: 3}, task.Progress)
	lines := runLogLines(t, runLog)
	slices.Sort(lines)
	assert.Equal(t, []string{"server db-01 changed", "server web-01 changed", "server web-02 changed"}, lines,
		"every production server, once; not staging's")

	// Settings without servers: Failed, naming why, nothing created.
	empty := filepath.Join(t.TempDir(), "empty.yaml")
	require.NoError(t, os.WriteFile(empty, []byte("servers: []\n"), 0o600))
	id := h.submit("/workflows/servers/create", map[string]any{"infra": "lab", "settings": empty, "servers": []string{}})
	failed, _ := waitTask(t, h.base, id, time.Minute, terminal)
	require.Equal(t, storage.StatusFailed, failed.Status)
	require.NotNil(t, failed.Error)
	assert.Contains(t, *failed.Error, "the settings define no servers")
	assert.Empty(t, failed.Steps)

	// A settings file that does not exist: the script's own message.
	id = h.submit("/workflows/servers/create", map[string]any{"infra": "lab", "settings": "./no-such-settings.yaml", "servers": []string{}})
	failed, _ = waitTask(t, h.base, id, time.Minute, terminal)
	require.Equal(t, storage.StatusFailed, failed.Status)
	require.NotNil(t, failed.Error)
	assert.Contains(t, *failed.Error, "settings file ./no-such-settings.yaml not found")
	assert.Len(t, runLogLines(t, runLog), 3, "nothing more was created")
}

// sdk.Client.Retry does what POST /tasks/{id}/retry does, from the task's
// history and status query: only the failed server, the old id as
// dependency; a completed task is a *workflows.NotRetryableError.
func TestSDKRetryRunsOnlyTheFailedServer(t *testing.T) {
	runLog := filepath.Join(t.TempDir(), "runs.log")
	h := startApp(t, "PROVISIONING_DEMO_FAIL=db-01:3", "PROVISIONING_DEMO_RUN_LOG="+runLog)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := &sdk.Client{Temporal: h.app.Client(), Policy: fastPolicy}

	run, err := c.StartServerCreate(ctx, "lab", "./s.yaml", []string{"web-01", "db-01"}, sdk.WithCheckMode(false))
	require.NoError(t, err)
	old, err := run.Wait(ctx)
	require.Error(t, err)
	require.Equal(t, storage.StatusFailed, old.Status)

	again, err := c.Retry(ctx, run.ID(), sdk.WithPriority(1))
	require.NoError(t, err)
	task, err := again.Wait(ctx)
	require.NoError(t, err)
	assert.Equal(t, storage.StatusCompleted, task.Status)
	assert.Equal(t, []string{run.ID()}, task.Dependencies)
	require.Len(t, task.Steps, 1)
	assert.Equal(t, "db-01", task.Steps[0].Name)
	assert.Equal(t, 1, task.Priority)
	assert.Equal(t, []string{run.ID()}, h.task(again.ID()).Dependencies, "the task API shows it too")
	lines := runLogLines(t, runLog)
	require.Len(t, lines, 2, "%v", lines)
	assert.Equal(t, "server db-01 changed", lines[1])

	same, err := c.Retry(ctx, run.ID())
	require.NoError(t, err)
	assert.Equal(t, again.ID(), same.ID(), "one retry per task: the same one again")
	assert.Len(t, runLogLines(t, runLog), 2, "nothing ran again")

	_, err = c.Retry(ctx, again.ID())
	var nr *workflows.NotRetryableError
	require.ErrorAs(t, err, &nr)
	assert.Contains(t, err.Error(), "it completed")
}
