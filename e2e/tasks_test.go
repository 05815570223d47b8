package e2e

import (
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

	"github.com/provisioning/orchestrator/storage"
)

func serverBody(servers ...string) map[string]any {
	return map[string]any{
		"infra": "production", "settings": "./settings.yaml",
		"servers": servers, "check_mode": false, "wait": true,
	}
}

func TestHealth(t *testing.T) {
	h := startApp(t)
	r := h.get("/health")
	require.Equal(t, http.StatusOK, r.status)
	assert.JSONEq(t, `{"success":true,"data":"Orchestrator is healthy"}`, string(r.raw))
}

func TestServerCreateCompletes(t *testing.T) {
	h := startApp(t, "PROVISIONING_DEMO_DELAY_MS=300")
	id := h.submit("/workflows/servers/create", serverBody("web-01", "web-02"))

	task, seen := waitTask(t, h.base, id, 60*time.Second, terminal)
	require.Equal(t, storage.StatusCompleted, task.Status, "error: %v", task.Error)
	// The API answers before the workflow runs, so the first status seen is
	// Pending or Running, and Running is observed on the way.
	assert.Contains(t, []storage.TaskStatus{storage.StatusPending, storage.StatusRunning}, seen[0])
	assert.Contains(t, seen, storage.StatusRunning, "statuses seen: %v", seen)
	require.NotNil(t, task.StartedAt)
	require.NotNil(t, task.CompletedAt)
	assert.False(t, task.CompletedAt.Before(*task.StartedAt))
	assert.False(t, task.StartedAt.Before(task.CreatedAt))
	assert.Nil(t, task.Error)
	require.NotNil(t, task.Output)
	assert.Contains(t, *task.Output, "server web-01 created")
	assert.Contains(t, *task.Output, "server web-02 created")
	assert.Equal(t, "server create", task.Command)
	assert.Equal(t, storage.Progress{Done: 2, Total: 2}, task.Progress)
	for _, s := range task.Steps {
		assert.Equal(t, storage.StatusCompleted, s.Status, s.Name)
		assert.EqualValues(t, 1, s.Attempts, s.Name)
	}

	// The demo provider really ran: its state files exist.
	for _, s := range []string{"web-01", "web-02"} {
		b, err := os.ReadFile(filepath.Join(h.stateDir, "production", "servers", s+".json"))
		require.NoError(t, err)
		var state map[string]any
		require.NoError(t, json.Unmarshal(b, &state))
		assert.Equal(t, s, state["name"])
	}

	// The task file is where design.md says, with the same content.
	b, err := os.ReadFile(filepath.Join(h.dataDir, "queue.rkvs", "tasks", id+".json"))
	require.NoError(t, err)
	var onDisk storage.Task
	require.NoError(t, json.Unmarshal(b, &onDisk))
	assert.Equal(t, storage.StatusCompleted, onDisk.Status)

	// Absent values are explicit nulls in the JSON.
	r := h.get("/tasks/" + id)
	var raw map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(r.env.Data, &raw))
	assert.Equal(t, "null", string(raw["error"]))
	for _, k := range []string{"id", "name", "command", "args", "dependencies", "status", "created_at", "started_at", "completed_at", "output", "error"} {
		assert.Contains(t, raw, k)
	}
}

func TestTaskservAndClusterComplete(t *testing.T) {
	h := startApp(t)
	ts := h.submit("/workflows/taskserv/create", map[string]any{
		"infra": "production", "settings": "./settings.yaml", "taskserv": "kubernetes",
		"servers": []string{"web-01", "web-02", "web-03"},
	})
	cl := h.submit("/workflows/cluster/create", map[string]any{
		"infra": "production", "settings": "./settings.yaml", "cluster": "buildkit",
	})
	tsAll := h.submit("/workflows/taskserv/create", map[string]any{
		"infra": "staging", "settings": "./s.yaml", "taskserv": "containerd", "check_mode": true,
	})
	for _, id := range []string{ts, cl, tsAll} {
		task, _ := waitTask(t, h.base, id, 60*time.Second, terminal)
		require.Equal(t, storage.StatusCompleted, task.Status, "task %s (%s): %v", id, task.Name, task.Error)
	}
	for _, s := range []string{"web-01", "web-02", "web-03"} {
		assert.FileExists(t, filepath.Join(h.stateDir, "production", "taskservs", s, "kubernetes.json"))
	}
	assert.FileExists(t, filepath.Join(h.stateDir, "production", "clusters", "buildkit.json"))
	// check_mode is a dry run: nothing written.
	assert.NoDirExists(t, filepath.Join(h.stateDir, "staging"))
	assert.Equal(t, 3, h.task(ts).Progress.Total)
}

func TestServerRetriedTwiceThenSucceeds(t *testing.T) {
	h := startApp(t, "PROVISIONING_DEMO_FAIL=web-02:2")
	id := h.submit("/workflows/servers/create", serverBody("web-01", "web-02"))
	task, _ := waitTask(t, h.base, id, 60*time.Second, terminal)
	require.Equal(t, storage.StatusCompleted, task.Status, "error: %v", task.Error)
	byName := stepsByName(task)
	assert.EqualValues(t, 1, byName["web-01"].Attempts)
	assert.EqualValues(t, 3, byName["web-02"].Attempts)
	// Three real processes ran: the provider counted them.
	b, err := os.ReadFile(filepath.Join(h.stateDir, ".attempts", "production", "server-web-02"))
	require.NoError(t, err)
	assert.Equal(t, "3", strings.TrimSpace(string(b)))
}

func TestPermanentFailureIsNotRetried(t *testing.T) {
	h := startApp(t, "PROVISIONING_DEMO_FAIL=db-01:permanent,web-09:always")
	id := h.submit("/workflows/servers/create", serverBody("web-01", "db-01", "web-09"))
	task, _ := waitTask(t, h.base, id, 60*time.Second, terminal)
	require.Equal(t, storage.StatusFailed, task.Status)
	byName := stepsByName(task)
	assert.Equal(t, storage.StatusCompleted, byName["web-01"].Status)

	db := byName["db-01"]
	assert.Equal(t, storage.StatusFailed, db.Status)
	assert.EqualValues(t, 1, db.Attempts, "exit code 3 is permanent")
	require.NotNil(t, db.ExitCode)
	assert.Equal(t, 3, *db.ExitCode)

	web := byName["web-09"]
	assert.EqualValues(t, 3, web.Attempts, "exit code 1 is retried up to 3 attempts")
	require.NotNil(t, web.ExitCode)
	assert.Equal(t, 1, *web.ExitCode)

	require.NotNil(t, task.Error)
	assert.Contains(t, *task.Error, "2 of 3 steps failed")
	assert.Contains(t, *task.Error, "db-01")
	assert.Contains(t, *task.Error, "web-09")
	assert.Contains(t, *task.Error, "simulated")
	require.NotNil(t, task.CompletedAt)
}

func TestCancelKillsProcesses(t *testing.T) {
	h := startApp(t, "PROVISIONING_DEMO_DELAY_MS=120000")
	id := h.submit("/workflows/servers/create", serverBody("web-01", "web-02", "web-03"))
	waitTask(t, h.base, id, 30*time.Second, func(task storage.Task) bool { return task.Status == storage.StatusRunning })
	eventually(t, 30*time.Second, "nu processes for the task", func() bool { return len(taskProcesses(id)) >= 3 })

	r := h.postJSON("/tasks/"+id+"/cancel", nil)
	require.Equal(t, http.StatusAccepted, r.status, "%s", r.raw)

	task, _ := waitTask(t, h.base, id, 30*time.Second, terminal)
	require.Equal(t, storage.StatusCancelled, task.Status)
	require.NotNil(t, task.CompletedAt)
	for _, s := range task.Steps {
		assert.Equal(t, storage.StatusCancelled, s.Status, s.Name)
	}
	// The workflow waits for the activities to kill their process groups
	// before it reports Cancelled, so none may be left now.
	assert.Empty(t, taskProcesses(id), "processes of a cancelled task still running")

	r = h.postJSON("/tasks/"+id+"/cancel", nil)
	assert.Equal(t, http.StatusConflict, r.status, "%s", r.raw)
	assert.Equal(t, "conflict", r.env.Error.Code)
}

func TestCancelFinishedTaskConflicts(t *testing.T) {
	h := startApp(t)
	id := h.submit("/workflows/servers/create", serverBody("web-01"))
	waitTask(t, h.base, id, 60*time.Second, terminal)
	r := h.postJSON("/tasks/"+id+"/cancel", nil)
	assert.Equal(t, http.StatusConflict, r.status, "%s", r.raw)
	r = h.postJSON("/tasks/00000000-0000-4000-8000-000000000000/cancel", nil)
	assert.Equal(t, http.StatusNotFound, r.status, "%s", r.raw)
}

func TestListTasksNewestFirstWithFilters(t *testing.T) {
	h := startApp(t, "PROVISIONING_DEMO_FAIL=bad-01:permanent")
	var ids []string
	for _, s := range []string{"a-01", "bad-01", "c-01"} {
		ids = append(ids, h.submit("/workflows/servers/create", serverBody(s)))
	}
	for _, id := range ids {
		waitTask(t, h.base, id, 60*time.Second, terminal)
	}
	list := func(q string) ([]storage.Task, response) {
		r := h.get("/tasks" + q)
		require.Equal(t, http.StatusOK, r.status, "%s", r.raw)
		var tasks []storage.Task
		require.NoError(t, json.Unmarshal(r.env.Data, &tasks))
		return tasks, r
	}
	all, r := list("")
	require.Len(t, all, 3)
	assert.Equal(t, "3", r.header.Get("X-Total-Count"))
	got := []string{all[0].ID, all[1].ID, all[2].ID}
	want := slices.Clone(ids)
	slices.Reverse(want)
	assert.Equal(t, want, got, "newest first")

	page, _ := list("?limit=1&offset=1")
	require.Len(t, page, 1)
	assert.Equal(t, ids[1], page[0].ID)

	failed, _ := list("?status=Failed")
	require.Len(t, failed, 1)
	assert.Equal(t, ids[1], failed[0].ID)

	completed, _ := list("?status=Completed&limit=1000")
	assert.Len(t, completed, 2)
}

func stepsByName(task storage.Task) map[string]storage.StepResult {
	m := map[string]storage.StepResult{}
	for _, s := range task.Steps {
		m[s.Name] = s
	}
	return m
}

func TestHealthReportsStorageOutage(t *testing.T) {
	h := startApp(t)
	tasksDir := filepath.Join(h.dataDir, "queue.rkvs", "tasks")
	moved := tasksDir + ".away"
	require.NoError(t, os.Rename(tasksDir, moved))
	// A regular file where the directory was: every write fails.
	require.NoError(t, os.WriteFile(tasksDir, []byte("not a directory"), 0o644))

	r := h.get("/health")
	require.Equal(t, http.StatusServiceUnavailable, r.status, "%s", r.raw)
	assert.Equal(t, "service_unavailable", r.env.Error.Code)
	assert.Equal(t, "ok", r.env.Error.Details["temporal"])
	assert.NotEqual(t, "ok", r.env.Error.Details["storage"])

	// A create while the store is down answers 503 and starts nothing.
	c := h.postJSON("/workflows/servers/create", serverBody("web-01"))
	assert.Equal(t, http.StatusServiceUnavailable, c.status, "%s", c.raw)

	require.NoError(t, os.Remove(tasksDir))
	require.NoError(t, os.Rename(moved, tasksDir))
	r = h.get("/health")
	assert.Equal(t, http.StatusOK, r.status, "%s", r.raw)
}
