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

	enumspb "go.temporal.io/api/enums/v1"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/internal/app"
	"github.com/provisioning/orchestrator/storage"
)

// backlogSetup builds a backlog behind one activity slot: a worker with
// MaxConcurrentActivities 1 whose slot a "blocker" step holds for 8 s while
// the tasks under test are submitted, so all their steps wait in Temporal's
// queue when the slot frees. Its script logs every run, in order, to
// runLog.
type backlogSetup struct {
	t       *testing.T
	api     *harness
	runLog  string
	blocker string
}

func newBacklogSetup(t *testing.T, opts ...func(*app.Config)) *backlogSetup {
	dir := t.TempDir()
	runLog := filepath.Join(dir, "runs.log")
	script := filepath.Join(dir, "provisioning")
	require.NoError(t, os.WriteFile(script, []byte(`def --wrapped main [...rest] {
    let name = ($rest | last)
    sleep (if $name == "blocker" { 8sec } else { 50ms })
    $"server ($name)\n" | save --append $env.PROVISIONING_DEMO_RUN_LOG
}
`), 0o644))
	a, _ := launchApp(t, appConfig(t, append([]func(*app.Config){withNu(t, script, "PROVISIONING_DEMO_RUN_LOG="+runLog), func(c *app.Config) {
		c.MaxConcurrentActivities = 1
	}}, opts...)...))
	b := &backlogSetup{t: t, api: &harness{t: t, app: a, base: baseURL(a)}, runLog: runLog}
	b.blocker = b.submit("blocker", "blocker", 0)
	b.awaitActivity(b.blocker, enumspb.PENDING_ACTIVITY_STATE_STARTED)
	return b
}

// awaitActivity waits until task id's workflow has a pending step in state.
func (b *backlogSetup) awaitActivity(id string, state enumspb.PendingActivityState) {
	b.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		desc, err := b.api.app.Client().DescribeWorkflowExecution(b.t.Context(), id, "")
		require.NoError(b.t, err)
		for _, pa := range desc.GetPendingActivities() {
			if pa.GetState() == state {
				return
			}
		}
		require.True(b.t, time.Now().Before(deadline), "task %s: no step %s", id, state)
		time.Sleep(20 * time.Millisecond)
	}
}

// drain waits until every task's step is queued while the blocker still
// holds the slot, then for every task to complete, and returns the servers
// in the order they ran (the blocker left out).
func (b *backlogSetup) drain(ids []string) []string {
	for _, id := range ids {
		b.awaitActivity(id, enumspb.PENDING_ACTIVITY_STATE_SCHEDULED)
	}
	require.Equal(b.t, storage.StatusRunning, getTask(b.t, b.api.base, b.blocker).Status,
		"the blocker ended before the backlog was built: the order below would not test priorities")
	for _, id := range append([]string{b.blocker}, ids...) {
		task, _ := waitTask(b.t, b.api.base, id, 120*time.Second, func(t storage.Task) bool { return t.Status.Terminal() })
		require.Equal(b.t, storage.StatusCompleted, task.Status, task.Error)
	}
	data, err := os.ReadFile(b.runLog)
	require.NoError(b.t, err)
	var servers []string
	for line := range strings.Lines(string(data)) {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "server" && f[1] != "blocker" {
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
	b := newBacklogSetup(t)
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
// stuck behind twenty of infra "a" submitted before them; with
// --temporal-fairness=false (the baseline) they are, which shows the order
// comes from fairness and not from how the test submits.
func TestFairnessBetweenInfras(t *testing.T) {
	positions := func(t *testing.T, opts ...func(*app.Config)) (first, second int) {
		b := newBacklogSetup(t, opts...)
		var ids []string
		for i := range 20 {
			ids = append(ids, b.submit("infra-a", "a-"+string(rune('a'+i)), 0))
		}
		ids = append(ids, b.submit("infra-b", "b-1", 0), b.submit("infra-b", "b-2", 0))
		order := b.drain(ids)
		require.Len(t, order, 22)
		t.Logf("run order: %v", order)
		return slices.Index(order, "b-1"), slices.Index(order, "b-2")
	}
	t.Run("fairness on", func(t *testing.T) {
		first, second := positions(t)
		assert.Less(t, max(first, second), 8, "infra-b's tasks ran at %d and %d of 22", first, second)
	})
	t.Run("fairness off (baseline)", func(t *testing.T) {
		first, second := positions(t, func(c *app.Config) { c.TemporalNoFairness = true })
		// First in, first out up to the order in which the 22 workflows
		// scheduled their steps (seen: 20th and 22nd of 22).
		assert.GreaterOrEqual(t, min(first, second), 16, "without fairness the backlog is first in, first out: infra-b's tasks ran at %d and %d of 22", first, second)
	})
}

func patchJSON(t *testing.T, url string, body any) response {
	t.Helper()
	b, err := json.Marshal(body)
	require.NoError(t, err)
	return do(t, http.MethodPatch, url, "application/json", bytes.NewReader(b))
}
