package e2e

import (
	"bytes"
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

	"github.com/provisioning/orchestrator/internal/app"
	"github.com/provisioning/orchestrator/storage"
)

// backlogSetup is a backlog built while no worker polls: an embedded
// Temporal (its own worker on another queue), an API process starting
// workflows on queue "prio", and, once the backlog is there, a worker with
// one activity slot on that queue. The demo provider logs every run in
// order to runLog.
type backlogSetup struct {
	t      *testing.T
	api    *harness
	cfg    app.Config
	runLog string
}

func newBacklogSetup(t *testing.T, mutate func(*app.Config)) *backlogSetup {
	runLog := filepath.Join(t.TempDir(), "runs.log")
	temporal, _ := launchApp(t, appConfig(t, withDemoProvider(t)))
	shared := func(c *app.Config) {
		c.TemporalAddress = temporal.TemporalAddress()
		c.TaskQueue = "prio"
		c.JanitorInterval = 0
		c.ReconcileInterval = 0
		if mutate != nil {
			mutate(c)
		}
	}
	apiCfg := appConfig(t, withDemoProvider(t, "PROVISIONING_DEMO_DELAY_MS=300", "PROVISIONING_DEMO_RUN_LOG="+runLog), shared, func(c *app.Config) {
		c.Mode = app.ModeAPI
	})
	a, _ := launchApp(t, apiCfg)
	return &backlogSetup{t: t, api: &harness{t: t, app: a, base: baseURL(a)}, cfg: apiCfg, runLog: runLog}
}

// drain starts the one-slot worker and waits for every task to complete.
func (b *backlogSetup) drain(ids []string) []string {
	cfg := b.cfg
	cfg.Mode = app.ModeWorker
	cfg.Port = 0
	cfg.MaxConcurrentActivities = 1
	launchApp(b.t, cfg)
	for _, id := range ids {
		task, _ := waitTask(b.t, b.api.base, id, 120*time.Second, func(t storage.Task) bool { return t.Status.Terminal() })
		require.Equal(b.t, storage.StatusCompleted, task.Status, task.Error)
	}
	data, err := os.ReadFile(b.runLog)
	require.NoError(b.t, err)
	var servers []string
	for line := range strings.Lines(string(data)) {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "server" {
			servers = append(servers, f[1])
		}
	}
	return servers
}

func (b *backlogSetup) submit(infra, server string, priority int) string {
	body := map[string]any{"infra": infra, "settings": "./s.yaml", "servers": []string{server}}
	if priority != 0 {
		body["priority"] = priority
	}
	return b.api.submit("/workflows/servers/create", body)
}

// With one slot, the backlog runs most urgent first, whatever the order of
// submission.
func TestPriorityOrdersTheBacklog(t *testing.T) {
	b := newBacklogSetup(t, nil)
	var ids []string
	for _, s := range []struct {
		name string
		prio int
	}{{"low-1", 5}, {"normal-1", 0}, {"urgent-1", 1}, {"low-2", 5}, {"urgent-2", 1}, {"normal-2", 3}} {
		ids = append(ids, b.submit("lab", s.name, s.prio))
	}
	// Stored and listed with their priority (default 3).
	var listed []storage.Task
	r := b.api.get("/tasks?priority=1")
	require.Equal(t, http.StatusOK, r.status, "%s", r.raw)
	require.NoError(t, json.Unmarshal(r.env.Data, &listed))
	assert.Len(t, listed, 2)
	for _, task := range listed {
		assert.Equal(t, 1, task.Priority)
	}
	assert.Equal(t, storage.DefaultPriority, getTask(t, b.api.base, ids[1]).Priority)

	order := b.drain(ids)
	require.Len(t, order, 6)
	// The workflows of one priority start concurrently, so their order
	// among themselves is not the submission order.
	class := func(name string) string { return strings.TrimRight(name, "-12") }
	var classes []string
	for _, name := range order {
		classes = append(classes, class(name))
	}
	assert.Equal(t, []string{"urgent", "urgent", "normal", "normal", "low", "low"}, classes, "run order %v", order)
}

// An operator changes an unfinished task's priority with PATCH: the task
// shows it (list filter, audit trail); finished tasks and bad values are
// refused; the steps started afterwards carry it in Temporal.
func TestPriorityChangeThroughTheAPI(t *testing.T) {
	h := startAppWith(t, func(c *app.Config) { c.Policy.Parallelism = 1 }, "PROVISIONING_DEMO_DELAY_MS=3000")
	body := map[string]any{"infra": "lab", "settings": "./s.yaml", "servers": []string{"p-01", "p-02"}, "priority": 4}
	id := h.submit("/workflows/servers/create", body)
	waitTask(t, h.base, id, 30*time.Second, func(t storage.Task) bool { return t.Status == storage.StatusRunning })

	for _, bad := range []map[string]any{{"priority": 0}, {"priority": 6}, {"priority": "1"}, {"priority": 1, "name": "x"}, {}} {
		r := patchJSON(t, h.base+"/tasks/"+id, bad)
		assert.Equal(t, http.StatusBadRequest, r.status, "%v: %s", bad, r.raw)
	}
	r := patchJSON(t, h.base+"/tasks/"+id, map[string]any{"priority": 1})
	require.Equal(t, http.StatusOK, r.status, "%s", r.raw)
	var got storage.Task
	require.NoError(t, json.Unmarshal(r.env.Data, &got))
	assert.Equal(t, 1, got.Priority)
	assert.Equal(t, 1, getTask(t, h.base, id).Priority, "projected to the store")
	// The step started after the change is scheduled in Temporal with the
	// new priority and the infra as fairness key.
	deadline := time.Now().Add(30 * time.Second)
	for {
		desc, err := h.app.Client().DescribeWorkflowExecution(t.Context(), id, "")
		require.NoError(t, err)
		pending := desc.GetPendingActivities()
		if len(pending) == 1 && pending[0].GetPriority().GetPriorityKey() == 1 {
			assert.Equal(t, "lab", pending[0].GetPriority().GetFairnessKey())
			break
		}
		require.True(t, time.Now().Before(deadline), "no step with priority 1: %v", pending)
		time.Sleep(50 * time.Millisecond)
	}
	var listed []storage.Task
	r = h.get("/tasks?priority=1")
	require.NoError(t, json.Unmarshal(r.env.Data, &listed))
	require.Len(t, listed, 1)
	assert.Equal(t, id, listed[0].ID)

	task, _ := waitTask(t, h.base, id, 60*time.Second, func(t storage.Task) bool { return t.Status.Terminal() })
	assert.Equal(t, storage.StatusCompleted, task.Status)
	assert.Equal(t, 1, task.Priority, "the final projection keeps it")
	r = patchJSON(t, h.base+"/tasks/"+id, map[string]any{"priority": 2})
	assert.Equal(t, http.StatusConflict, r.status, "%s", r.raw)
	r = patchJSON(t, h.base+"/tasks/00000000-0000-4000-8000-000000000000", map[string]any{"priority": 2})
	assert.Equal(t, http.StatusNotFound, r.status, "%s", r.raw)

	var audit []storage.AuditEntry
	r = h.get("/tasks/" + id + "/audit")
	require.NoError(t, json.Unmarshal(r.env.Data, &audit))
	assert.True(t, slices.ContainsFunc(audit, func(e storage.AuditEntry) bool {
		return e.Action == "priority_changed" && e.Detail == "priority 4 -> 1"
	}), "audited: %+v", audit)

	// Bad priorities on create name the field.
	r = h.postJSON("/workflows/servers/create", map[string]any{"infra": "lab", "settings": "./s.yaml", "servers": []string{"x"}, "priority": 9})
	assert.Equal(t, http.StatusBadRequest, r.status)
	assert.Contains(t, string(r.raw), "priority")
}

// With fairness (on in the embedded server), two tasks of infra "b" are not
// stuck behind twenty of infra "a" submitted before them.
func TestFairnessBetweenInfras(t *testing.T) {
	b := newBacklogSetup(t, nil)
	var ids []string
	for i := range 20 {
		ids = append(ids, b.submit("infra-a", "a-"+string(rune('a'+i)), 0))
	}
	ids = append(ids, b.submit("infra-b", "b-1", 0), b.submit("infra-b", "b-2", 0))
	order := b.drain(ids)
	require.Len(t, order, 22)
	first := slices.Index(order, "b-1")
	second := slices.Index(order, "b-2")
	t.Logf("run order: %v", order)
	assert.Less(t, max(first, second), 8, "infra-b's tasks ran at %d and %d of 22", first, second)
}

func patchJSON(t *testing.T, url string, body any) response {
	t.Helper()
	b, err := json.Marshal(body)
	require.NoError(t, err)
	return do(t, http.MethodPatch, url, "application/json", bytes.NewReader(b))
}
