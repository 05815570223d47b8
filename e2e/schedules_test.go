package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/internal/searchattr"
	"github.com/provisioning/orchestrator/internal/testsupport"
	"github.com/provisioning/orchestrator/sdk"
	"github.com/provisioning/orchestrator/server"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/workflows"
)

func (h *harness) schedule(id string) (server.ScheduleView, response) {
	h.t.Helper()
	r := h.get("/schedules/" + id)
	var v server.ScheduleView
	if r.status == http.StatusOK {
		require.NoError(h.t, json.Unmarshal(r.env.Data, &v))
	}
	return v, r
}

// scheduledTasks lists the tasks whose name says they are runs of the
// schedule id.
func (h *harness) scheduledTasks(id string) []storage.Task {
	h.t.Helper()
	r := h.get(fmt.Sprintf("/tasks?limit=%d", storage.MaxLimit))
	require.Equal(h.t, http.StatusOK, r.status, "%s", r.raw)
	var all []storage.Task
	require.NoError(h.t, json.Unmarshal(r.env.Data, &all))
	var out []storage.Task
	for _, t := range all {
		if strings.HasSuffix(t.Name, "(schedule "+id+")") {
			out = append(out, t)
		}
	}
	return out
}

// completedRuns is how many of the schedule's recent runs have Completed
// tasks (read through GET /tasks/{id}).
func (h *harness) completedRuns(v server.ScheduleView) int {
	n := 0
	for _, r := range v.RecentRuns {
		if r.Status == storage.StatusCompleted && h.task(r.TaskID).Status == storage.StatusCompleted {
			n++
		}
	}
	return n
}

// TestScheduleRunsTasksAndPauseStopsIt: a 2-second interval schedule of a
// drift check (server create in check mode) through real HTTP, Temporal's
// scheduler, the worker and nu: each run is a task that completes; pause
// stops the runs; trigger runs once more while paused; delete removes it.
// Every change is audited.
func TestScheduleRunsTasksAndPauseStopsIt(t *testing.T) {
	h := startApp(t)
	r := h.postJSON("/schedules", map[string]any{
		"id": "drift", "interval": "2s", "note": "nightly drift check, sped up",
		"action": map[string]any{"type": "server", "infra": "production", "settings": "./settings.yaml",
			"servers": []string{"web-01"}, "check_mode": true},
	})
	require.Equal(t, http.StatusCreated, r.status, "%s", r.raw)
	var created server.ScheduleView
	require.NoError(t, json.Unmarshal(r.env.Data, &created))
	assert.Equal(t, "drift", created.ID)
	assert.Equal(t, server.TemporalSchedulePrefix+"drift", created.TemporalID)
	assert.Equal(t, "2s", created.Interval)
	assert.Equal(t, "skip", created.Overlap)
	assert.False(t, created.Paused)
	assert.Equal(t, "nightly drift check, sped up", created.Note)
	require.NotNil(t, created.Action)
	assert.True(t, created.Action.CheckMode)

	// At least two runs, each a Completed task.
	var v server.ScheduleView
	eventually(t, 60*time.Second, "two completed runs", func() bool {
		v, _ = h.schedule("drift")
		return h.completedRuns(v) >= 2
	})
	run := h.task(v.RecentRuns[0].TaskID)
	assert.Equal(t, "server create production (schedule drift)", run.Name)
	assert.Equal(t, workflows.ServerCreateWorkflowName, run.WorkflowType)
	assert.Contains(t, run.Args, "--check")
	require.Len(t, run.Steps, 1)
	assert.Equal(t, "web-01", run.Steps[0].Name)
	assert.NotEqual(t, v.RecentRuns[0].TaskID, v.RecentRuns[1].TaskID, "every run is its own task")
	// The run's task is its workflow, findable by infra and priority.
	d, err := h.app.Client().DescribeWorkflowExecution(t.Context(), run.ID, "")
	require.NoError(t, err)
	assert.Equal(t, workflows.ServerCreateWorkflowName, d.GetWorkflowExecutionInfo().GetType().GetName())
	assert.Contains(t, d.GetWorkflowExecutionInfo().GetSearchAttributes().GetIndexedFields(), searchattr.InfraName)
	assert.Contains(t, d.GetWorkflowExecutionInfo().GetSearchAttributes().GetIndexedFields(), searchattr.PriorityName)

	// Pause: once the run in flight (if any) is done, no run starts.
	r = h.postJSON("/schedules/drift/pause", map[string]any{"note": "maintenance"})
	require.Equal(t, http.StatusOK, r.status, "%s", r.raw)
	require.NoError(t, json.Unmarshal(r.env.Data, &v))
	assert.True(t, v.Paused)
	assert.Equal(t, "maintenance", v.Note)
	eventually(t, 30*time.Second, "the run in flight to finish", func() bool {
		v, _ = h.schedule("drift")
		return len(v.RunningTasks) == 0
	})
	runs, tasks := v.Runs, len(h.scheduledTasks("drift"))
	require.GreaterOrEqual(t, runs, 2)
	// The one place a time window is the assertion: three intervals pass
	// without a run.
	time.Sleep(6 * time.Second)
	v, _ = h.schedule("drift")
	assert.Equal(t, runs, v.Runs, "no run while paused")
	assert.Len(t, h.scheduledTasks("drift"), tasks, "no task while paused")
	t.Logf("paused after %d runs (%d tasks); 6 s later: %d runs, %d tasks", runs, tasks, v.Runs, len(h.scheduledTasks("drift")))

	// Trigger now: one more run while paused.
	r = h.postJSON("/schedules/drift/trigger", nil)
	require.Equal(t, http.StatusAccepted, r.status, "%s", r.raw)
	eventually(t, 30*time.Second, "the triggered run", func() bool {
		v, _ = h.schedule("drift")
		return v.Runs == runs+1 && len(v.RunningTasks) == 0
	})
	last := v.RecentRuns[len(v.RecentRuns)-1]
	waitTask(t, h.base, last.TaskID, 30*time.Second, terminal)
	assert.Equal(t, storage.StatusCompleted, h.task(last.TaskID).Status)
	assert.True(t, v.Paused, "trigger does not unpause")
	assert.Len(t, h.scheduledTasks("drift"), tasks+1)

	// Delete: gone, and a second delete, a trigger and a pause say 404.
	r = do(t, http.MethodDelete, h.base+"/schedules/drift", "", nil)
	require.Equal(t, http.StatusOK, r.status, "%s", r.raw)
	_, r = h.schedule("drift")
	assert.Equal(t, http.StatusNotFound, r.status, "%s", r.raw)
	assert.Equal(t, http.StatusNotFound, do(t, http.MethodDelete, h.base+"/schedules/drift", "", nil).status)
	assert.Equal(t, http.StatusNotFound, h.postJSON("/schedules/drift/trigger", nil).status)
	assert.Equal(t, http.StatusNotFound, h.postJSON("/schedules/drift/pause", nil).status)

	// The audit trail has every change, with the actor.
	r = h.get("/audit?task_id=" + created.AuditID)
	require.Equal(t, http.StatusOK, r.status, "%s", r.raw)
	var audit []storage.AuditEntry
	require.NoError(t, json.Unmarshal(r.env.Data, &audit))
	var actions []string
	for _, e := range audit {
		actions = append(actions, e.Action)
		assert.Equal(t, server.AnonymousActor, e.Actor)
	}
	assert.Equal(t, []string{server.ActionScheduleCreated, server.ActionSchedulePaused, server.ActionScheduleTriggered, server.ActionScheduleDeleted}, actions)
}

// TestScheduleBadInput: every bad request is a 400 naming the field and
// creates nothing; a duplicate id is a 409.
func TestScheduleBadInput(t *testing.T) {
	h := startApp(t)
	action := func(mut func(map[string]any)) map[string]any {
		a := map[string]any{"type": "taskserv", "infra": "production", "settings": "./settings.yaml", "taskserv": "kubernetes"}
		if mut != nil {
			mut(a)
		}
		return a
	}
	for name, tc := range map[string]struct {
		body  map[string]any
		field string
	}{
		"no id":             {map[string]any{"interval": "1h", "action": action(nil)}, "id"},
		"bad id":            {map[string]any{"id": "../x", "interval": "1h", "action": action(nil)}, "id"},
		"no when":           {map[string]any{"id": "bad1", "action": action(nil)}, "interval"},
		"both":              {map[string]any{"id": "bad1", "interval": "1h", "cron": []string{"0 2 * * *"}, "action": action(nil)}, "interval"},
		"short interval":    {map[string]any{"id": "bad1", "interval": "500ms", "action": action(nil)}, "interval"},
		"bad interval":      {map[string]any{"id": "bad1", "interval": "soon", "action": action(nil)}, "interval"},
		"bad cron":          {map[string]any{"id": "bad1", "cron": []string{"every day at noon please"}, "action": action(nil)}, "cron"},
		"empty cron entry":  {map[string]any{"id": "bad1", "cron": []string{""}, "action": action(nil)}, "cron[0]"},
		"bad overlap":       {map[string]any{"id": "bad1", "interval": "1h", "overlap": "sometimes", "action": action(nil)}, "overlap"},
		"no action":         {map[string]any{"id": "bad1", "interval": "1h"}, "action"},
		"bad type":          {map[string]any{"id": "bad1", "interval": "1h", "action": action(func(a map[string]any) { a["type"] = "rm" })}, "action.type"},
		"no taskserv":       {map[string]any{"id": "bad1", "interval": "1h", "action": action(func(a map[string]any) { delete(a, "taskserv") })}, "action.taskserv"},
		"bad taskserv":      {map[string]any{"id": "bad1", "interval": "1h", "action": action(func(a map[string]any) { a["taskserv"] = "$(rm -rf /)" })}, "action.taskserv"},
		"bad infra":         {map[string]any{"id": "bad1", "interval": "1h", "action": action(func(a map[string]any) { a["infra"] = "../etc" })}, "action.infra"},
		"bad priority":      {map[string]any{"id": "bad1", "interval": "1h", "action": action(func(a map[string]any) { a["priority"] = 7 })}, "action.priority"},
		"server no list":    {map[string]any{"id": "bad1", "interval": "1h", "action": map[string]any{"type": "server", "infra": "p", "settings": "./s.yaml"}}, "action.servers"},
		"unknown field":     {map[string]any{"id": "bad1", "interval": "1h", "every": "1h", "action": action(nil)}, "every"},
		"batch without dag": {map[string]any{"id": "bad1", "interval": "1h", "action": map[string]any{"type": "batch", "infra": "p", "settings": "./s.yaml"}}, "action.batch"},
		"batch cycle": {map[string]any{"id": "bad1", "interval": "1h", "action": map[string]any{"type": "batch", "infra": "p", "settings": "./s.yaml",
			"batch": map[string]any{"operations": []any{map[string]any{"id": "a", "type": "server", "servers": []string{"a"}, "depends_on": []string{"a"}}}}}}, "action.batch.operations[0].depends_on[0]"},
		"dag on a taskserv": {map[string]any{"id": "bad1", "interval": "1h", "action": action(func(a map[string]any) { a["batch"] = map[string]any{"operations": []any{}} })}, "action.batch"},
	} {
		t.Run(name, func(t *testing.T) {
			r := h.postJSON("/schedules", tc.body)
			require.Equal(t, http.StatusBadRequest, r.status, "%s", r.raw)
			assert.Equal(t, tc.field, r.env.Error.Field, "%s", r.raw)
		})
	}
	_, r := h.schedule("bad1")
	assert.Equal(t, http.StatusNotFound, r.status, "nothing was created: %s", r.raw)
	assert.Equal(t, http.StatusBadRequest, h.get("/schedules/..%2Fx").status)

	ok := map[string]any{"id": "dup", "cron": []string{"0 2 * * *"}, "paused": true, "action": action(nil)}
	r = h.postJSON("/schedules", ok)
	require.Equal(t, http.StatusCreated, r.status, "%s", r.raw)
	var v server.ScheduleView
	require.NoError(t, json.Unmarshal(r.env.Data, &v))
	assert.Equal(t, []string{"0 2 * * *"}, v.Cron)
	assert.True(t, v.Paused)
	r = h.postJSON("/schedules", ok)
	assert.Equal(t, http.StatusConflict, r.status, "%s", r.raw)
	assert.Equal(t, http.StatusOK, do(t, http.MethodDelete, h.base+"/schedules/dup", "", nil).status)
}

// TestScheduleSDK: the Go SDK's schedule calls against the real service.
func TestScheduleSDK(t *testing.T) {
	h := startApp(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	api := sdk.API{BaseURL: h.base}
	v, err := api.CreateSchedule(ctx, workflows.ScheduleRequest{ID: "sdk-nightly", Cron: []string{"0 2 * * *"}, Overlap: "buffer_one",
		Action: &workflows.ScheduleAction{Type: workflows.ScheduleActionCluster, Infra: "production", Settings: "./settings.yaml", Cluster: "buildkit"}})
	require.NoError(t, err)
	assert.Equal(t, "buffer_one", v.Overlap)
	assert.NotEmpty(t, v.NextRuns)

	_, err = api.CreateSchedule(ctx, workflows.ScheduleRequest{ID: "sdk-nightly", Interval: "1h",
		Action: &workflows.ScheduleAction{Type: workflows.ScheduleActionCluster, Infra: "production", Settings: "./settings.yaml", Cluster: "buildkit"}})
	var apiErr *sdk.APIError
	require.True(t, errors.As(err, &apiErr), "%v", err)
	assert.Equal(t, http.StatusConflict, apiErr.Status)

	eventually(t, 30*time.Second, "the schedule in the list", func() bool {
		l, err := api.ListSchedules(ctx)
		require.NoError(t, err)
		return len(l) == 1 && l[0].ID == "sdk-nightly" && l[0].Action != nil && l[0].Action.Cluster == "buildkit"
	})
	v, err = api.PauseSchedule(ctx, "sdk-nightly", "quiet week")
	require.NoError(t, err)
	assert.True(t, v.Paused)
	assert.Equal(t, "quiet week", v.Note)
	v, err = api.UnpauseSchedule(ctx, "sdk-nightly", "")
	require.NoError(t, err)
	assert.False(t, v.Paused)
	v, err = api.GetSchedule(ctx, "sdk-nightly")
	require.NoError(t, err)
	assert.False(t, v.Paused)
	require.NoError(t, api.DeleteSchedule(ctx, "sdk-nightly"))
	_, err = api.GetSchedule(ctx, "sdk-nightly")
	require.True(t, errors.As(err, &apiErr), "%v", err)
	assert.Equal(t, http.StatusNotFound, apiErr.Status)
	_, err = api.CreateSchedule(ctx, workflows.ScheduleRequest{ID: "x", Interval: "1h", Action: &workflows.ScheduleAction{Type: "cluster"}})
	require.True(t, errors.As(err, &apiErr), "%v", err)
	assert.Equal(t, "action.infra", apiErr.Field)
}

// TestNuScheduleCommands: the Nushell `schedule ...` commands, through the
// module and the provisioning entry script, against the real service.
func TestNuScheduleCommands(t *testing.T) {
	h := startApp(t)
	const mod = "workflows/schedule.nu"
	var v server.ScheduleView
	provisioning(t, h.base, &v, "schedule", "create", "nu-drift", "web-01", "--every", "2s", "--taskserv", "etcd",
		"--infra", "production", "--settings", "./settings.yaml", "--check", "--note", "from nu", "--out", "json")
	assert.Equal(t, "nu-drift", v.ID)
	assert.Equal(t, "2s", v.Interval)
	require.NotNil(t, v.Action)
	assert.Equal(t, workflows.ScheduleAction{Type: "taskserv", Infra: "production", Settings: "./settings.yaml", CheckMode: true,
		Servers: []string{"web-01"}, Taskserv: "etcd"}, *v.Action)

	eventually(t, 60*time.Second, "a completed run", func() bool {
		runNuJSON(t, h.base, "schedule show nu-drift | to json", &v, mod)
		return h.completedRuns(v) >= 1
	})
	assert.Equal(t, "taskserv create etcd (schedule nu-drift)", h.task(v.RecentRuns[0].TaskID).Name)

	var list []server.ScheduleView
	eventually(t, 30*time.Second, "the schedule in `schedule list`", func() bool {
		runNuJSON(t, h.base, "schedule list | to json", &list, mod)
		return len(list) == 1 && list[0].ID == "nu-drift"
	})
	provisioning(t, h.base, &v, "schedule", "pause", "nu-drift", "--note", "enough", "--out", "json")
	assert.True(t, v.Paused)
	assert.Equal(t, "enough", v.Note)
	runNuJSON(t, h.base, "schedule unpause nu-drift | to json", &v, mod)
	assert.False(t, v.Paused)

	var deleted map[string]any
	provisioning(t, h.base, &deleted, "schedule", "delete", "nu-drift", "--out", "json")
	assert.Equal(t, map[string]any{"id": "nu-drift", "deleted": true}, deleted)
	r := provisioning(t, h.base, nil, "schedule", "show", "nu-drift")
	assert.Equal(t, 1, r.exitCode)
	assert.Contains(t, r.stderr, "schedule nu-drift not found")

	// A scheduled batch from a batch file (its infra and settings too).
	provisioning(t, h.base, &v, "schedule", "create", "nu-batch", "--cron", "0 2 * * *", "--paused",
		"--batch", filepath.Join(testsupport.RepoRoot(t), "examples", "batch.yaml"), "--out", "json")
	require.NotNil(t, v.Action)
	require.NotNil(t, v.Action.Batch)
	assert.Equal(t, "batch", v.Action.Type)
	assert.Equal(t, "production", v.Action.Infra)
	assert.Len(t, v.Action.Batch.Operations, 6)
	provisioning(t, h.base, nil, "schedule", "delete", "nu-batch")

	// Bad input: the API's message naming the field, nothing created.
	r = runNu(t, h.base, "schedule create bad --every 100ms --infra production --settings ./s.yaml --all-servers", mod)
	assert.NotEqual(t, 0, r.exitCode)
	assert.Contains(t, errorText(r.stderr), "interval: must be at least 1s")
	r = runNu(t, h.base, "schedule show bad", mod)
	assert.Contains(t, errorText(r.stderr), "HTTP 404")
}

// TestScheduleRunsABatch: a nightly drift check of a whole infra is a
// scheduled batch in plan mode; each run is a batch task whose operations
// are tasks, and nothing changes in the provider.
func TestScheduleRunsABatch(t *testing.T) {
	h := startApp(t, "PROVISIONING_DEMO_DELAY_MS=100")
	r := h.postJSON("/schedules", map[string]any{"id": "drift-all", "cron": []string{"0 2 * * *"}, "paused": true,
		"action": map[string]any{"type": "batch", "infra": "production", "settings": "./settings.yaml", "batch": map[string]any{
			"mode": "plan", "operations": []any{
				map[string]any{"id": "web", "type": "server", "servers": []string{"web-01"}},
				map[string]any{"id": "k8s", "type": "taskserv", "taskserv": "kubernetes", "servers": []string{"web-01"}, "depends_on": []string{"web"}},
			}}}})
	require.Equal(t, http.StatusCreated, r.status, "%s", r.raw)
	require.Equal(t, http.StatusAccepted, h.postJSON("/schedules/drift-all/trigger", nil).status)
	var v server.ScheduleView
	eventually(t, 60*time.Second, "the triggered batch run to complete", func() bool {
		v, _ = h.schedule("drift-all")
		return h.completedRuns(v) == 1
	})
	task := h.task(v.RecentRuns[0].TaskID)
	assert.Equal(t, workflows.BatchWorkflowName, task.WorkflowType)
	assert.Equal(t, "batch production (schedule drift-all)", task.Name)
	require.NotNil(t, task.Batch)
	assert.Equal(t, workflows.BatchModePlan, task.Batch.Mode)
	for _, o := range task.Batch.Operations {
		assert.Equal(t, storage.StatusCompleted, o.Status, o.ID)
		assert.Contains(t, o.Plan, "check mode, nothing written", o.ID)
		assert.Equal(t, task.ID, h.task(o.TaskID).Parent)
	}
	assert.NoDirExists(t, filepath.Join(h.stateDir, "production"), "a plan changes nothing")
}

// TestScheduleTaskservTest: a scheduled `test quick` (action
// taskserv_test) through the real Docker Engine: each run is a test
// environment (its task) that is created, converged with the idempotence
// check, checked and removed; a taskserv whose checks fail makes a failed
// run.
func TestScheduleTaskservTest(t *testing.T) {
	h := startEnvApp(t)
	for _, tc := range []struct {
		id, taskserv string
		idempotence  bool
	}{{"quick-redis", "redis", true}} {
		r := h.postJSON("/schedules", map[string]any{"id": tc.id, "cron": []string{"0 3 * * *"}, "paused": true,
			"action": map[string]any{"type": "taskserv_test", "taskserv": tc.taskserv, "infra": "lab", "base_image": h.image, "idempotence": tc.idempotence}})
		require.Equal(t, http.StatusCreated, r.status, "%s", r.raw)
		require.Equal(t, http.StatusAccepted, h.postJSON("/schedules/"+tc.id+"/trigger", nil).status)
		var v server.ScheduleView
		eventually(t, 3*time.Minute, "the scheduled test to end", func() bool {
			v, _ = h.schedule(tc.id)
			return len(v.RecentRuns) == 1 && v.RecentRuns[0].Status.Terminal()
		})
		id := v.RecentRuns[0].TaskID
		task := h.task(id)
		assert.Equal(t, workflows.TestEnvironmentWorkflowName, task.WorkflowType)
		assert.Equal(t, storage.StatusCompleted, task.Status, deref(task.Error))
		st := h.env(id)
		assert.Equal(t, workflows.EnvCleaned, st.Status)
		assert.Equal(t, workflows.EnvPassed, st.LastStatus)
		assert.Equal(t, "auto_cleanup after run", st.EndReason)
		require.Len(t, st.Runs, 1)
		assert.True(t, st.Runs[0].Passed)
		assert.Empty(t, h.instanceEnvs(), "the environment's Docker objects are gone")
	}
	r := h.postJSON("/schedules", map[string]any{"id": "bad-test", "interval": "1h",
		"action": map[string]any{"type": "taskserv_test", "taskserv": "redis", "infra": "lab", "servers": []string{"x"}}})
	require.Equal(t, http.StatusBadRequest, r.status, "%s", r.raw)
	assert.Equal(t, "action.servers", r.env.Error.Field)
	r = h.postJSON("/schedules", map[string]any{"id": "bad-test", "interval": "1h",
		"action": map[string]any{"type": "taskserv_test", "taskserv": "$(reboot)", "infra": "lab"}})
	require.Equal(t, http.StatusBadRequest, r.status, "%s", r.raw)
	assert.Equal(t, "action.taskserv", r.env.Error.Field)
}
