package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/internal/app"
	"github.com/provisioning/orchestrator/internal/testsupport"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/workflows"
)

// sixOpBatch is the DAG: two servers, taskservs on each (two
// chained on db-01), a cluster over both branches.
func sixOpBatch(extra map[string]any) map[string]any {
	b := map[string]any{
		"name": "web and db", "infra": "production", "settings": "./settings.yaml",
		"operations": []map[string]any{
			{"id": "web", "type": "server", "servers": []string{"web-01"}},
			{"id": "db", "type": "server", "servers": []string{"db-01"}},
			{"id": "k8s-web", "type": "taskserv", "taskserv": "kubernetes", "servers": []string{"web-01"}, "depends_on": []string{"web"}},
			{"id": "k8s-db", "type": "taskserv", "taskserv": "kubernetes", "servers": []string{"db-01"}, "depends_on": []string{"db"}},
			{"id": "pg", "type": "taskserv", "taskserv": "postgres", "servers": []string{"db-01"}, "depends_on": []string{"k8s-db"}},
			{"id": "cluster", "type": "cluster", "cluster": "buildkit", "depends_on": []string{"k8s-web", "pg"}},
		},
	}
	for k, v := range extra {
		b[k] = v
	}
	return b
}

// providerTimes reads a demo provider state file's started_at/updated_at.
func providerTimes(t *testing.T, file string) (started, ended time.Time) {
	t.Helper()
	b, err := os.ReadFile(file)
	require.NoError(t, err)
	var st struct {
		StartedAt time.Time `json:"started_at"`
		UpdatedAt time.Time `json:"updated_at"`
	}
	require.NoError(t, json.Unmarshal(b, &st), "%s: %s", file, b)
	return st.StartedAt, st.UpdatedAt
}

func batchOp(t *testing.T, task storage.Task, id string) storage.BatchOperation {
	t.Helper()
	require.NotNil(t, task.Batch, "task %s has no batch", task.ID)
	for _, o := range task.Batch.Operations {
		if o.ID == id {
			return o
		}
	}
	t.Fatalf("batch %s has no operation %s", task.ID, id)
	return storage.BatchOperation{}
}

func TestBatchRunsTheDAGInDependencyOrder(t *testing.T) {
	h := startApp(t, "PROVISIONING_DEMO_DELAY_MS=1000")
	id := h.submit(workflowsBatchPath, sixOpBatch(nil))
	task, _ := waitTask(t, h.base, id, 120*time.Second, terminal)
	require.Equal(t, storage.StatusCompleted, task.Status, deref(task.Error))
	assert.Equal(t, workflows.BatchWorkflowName, task.WorkflowType)
	assert.Equal(t, "batch web and db", task.Name)
	assert.Equal(t, storage.Progress{Done: 6, Total: 6}, task.Progress)

	// The provider's own timestamps: each operation began after what it
	// depends on ended, and the independent servers overlapped.
	st := filepath.Join(h.stateDir, "production")
	file := map[string]string{
		"web": filepath.Join(st, "servers", "web-01.json"), "db": filepath.Join(st, "servers", "db-01.json"),
		"k8s-web": filepath.Join(st, "taskservs", "web-01", "kubernetes.json"), "k8s-db": filepath.Join(st, "taskservs", "db-01", "kubernetes.json"),
		"pg": filepath.Join(st, "taskservs", "db-01", "postgres.json"), "cluster": filepath.Join(st, "clusters", "buildkit.json"),
	}
	started, ended := map[string]time.Time{}, map[string]time.Time{}
	for op, f := range file {
		started[op], ended[op] = providerTimes(t, f)
	}
	for op, deps := range map[string][]string{"k8s-web": {"web"}, "k8s-db": {"db"}, "pg": {"k8s-db"}, "cluster": {"k8s-web", "pg"}} {
		for _, d := range deps {
			assert.False(t, started[op].Before(ended[d]), "%s started %s, before %s ended %s", op, started[op], d, ended[d])
		}
	}
	assert.True(t, started["db"].Before(ended["web"]) && started["web"].Before(ended["db"]),
		"independent servers ran in parallel: web %s..%s, db %s..%s", started["web"], ended["web"], started["db"], ended["db"])

	// Every operation is a task: GET /tasks/{id} with its dependencies.
	for _, o := range task.Batch.Operations {
		assert.Equal(t, storage.StatusCompleted, o.Status, o.ID)
		child := getTask(t, h.base, o.TaskID)
		assert.Equal(t, storage.StatusCompleted, child.Status, o.ID)
		assert.Equal(t, id, child.Parent, o.ID)
		want := []string{}
		for _, d := range o.DependsOn {
			want = append(want, batchOp(t, task, d).TaskID)
		}
		assert.Equal(t, want, child.Dependencies, o.ID)
	}
	// The list shows the batch and its six operations.
	r := h.get("/tasks?workflow_type=Batch")
	assert.Equal(t, "1", r.header.Get("X-Total-Count"))
	r = h.get("/tasks?limit=100")
	assert.Equal(t, "7", r.header.Get("X-Total-Count"))
}

const workflowsBatchPath = "/workflows/batch"

func TestBatchFailureRollsBackInReverseAndNeverStartsDependents(t *testing.T) {
	runLog := filepath.Join(t.TempDir(), "runs.log")
	// postgres is an invalid configuration (exit 3: permanent); the
	// compensation of web-01 fails once and is retried.
	h := startApp(t, "PROVISIONING_DEMO_DELAY_MS=300", "PROVISIONING_DEMO_FAIL=postgres:permanent",
		"PROVISIONING_DEMO_FAIL_DELETE=web-01:1", "PROVISIONING_DEMO_RUN_LOG="+runLog)
	id := h.submit(workflowsBatchPath, sixOpBatch(nil))
	task, _ := waitTask(t, h.base, id, 120*time.Second, terminal)
	require.Equal(t, storage.StatusFailed, task.Status)
	require.NotNil(t, task.Error)
	assert.Contains(t, *task.Error, "pg: ")
	assert.Contains(t, *task.Error, "not started: cluster")
	assert.Contains(t, *task.Error, "rolled back: ")

	lines := runLogLines(t, runLog)
	var creates, deletes []string
	for _, l := range lines {
		if strings.HasSuffix(l, " deleted") || strings.HasSuffix(l, " absent") {
			deletes = append(deletes, l)
		} else {
			creates = append(creates, l)
		}
	}
	// Exactly the four completed operations were undone, each after what
	// depends on it; the cluster never ran.
	require.Len(t, deletes, 4, "run log: %v", lines)
	pos := map[string]int{}
	for i, d := range deletes {
		pos[strings.TrimSuffix(d, " deleted")] = i
	}
	for dependent, dep := range map[string]string{"taskserv kubernetes on web-01": "server web-01", "taskserv kubernetes on db-01": "server db-01"} {
		assert.Less(t, pos[dependent], pos[dep], "%s undone before %s: %v", dependent, dep, deletes)
	}
	for _, c := range creates {
		assert.NotContains(t, c, "cluster")
	}
	assert.NoFileExists(t, filepath.Join(h.stateDir, "production", "clusters", "buildkit.json"))
	for _, f := range []string{"servers/web-01.json", "servers/db-01.json", "taskservs/web-01/kubernetes.json", "taskservs/db-01/kubernetes.json"} {
		assert.NoFileExists(t, filepath.Join(h.stateDir, "production", f), "rolled back")
	}

	// Recorded: each compensation, the retried one with 2 attempts.
	require.Len(t, task.Batch.Compensations, 4)
	for _, c := range task.Batch.Compensations {
		assert.Equal(t, storage.StatusCompleted, c.Status, c.Target)
		want := int32(1)
		if c.Target == "server web-01" {
			want = 2
		}
		assert.Equal(t, want, c.Attempts, c.Target)
	}
	cl := batchOp(t, task, "cluster")
	assert.Equal(t, storage.StatusCancelled, cl.Status)
	child := getTask(t, h.base, cl.TaskID)
	assert.Equal(t, storage.StatusCancelled, child.Status)
	assert.Contains(t, deref(child.Error), "not started: it depends on pg, which failed")
	assert.Equal(t, storage.StatusFailed, getTask(t, h.base, batchOp(t, task, "pg").TaskID).Status)

	// A batch is submitted again, not retried; its failed operation's task
	// can be retried on its own (a task of its own, no longer the batch's).
	r := h.postJSON("/tasks/"+id+"/retry", nil)
	assert.Equal(t, http.StatusConflict, r.status, "%s", r.raw)
	assert.Contains(t, r.env.Error.Message, "it is a batch")
	retry := h.submit("/tasks/"+batchOp(t, task, "pg").TaskID+"/retry", nil)
	rt, _ := waitTask(t, h.base, retry, 60*time.Second, terminal)
	assert.Empty(t, rt.Parent)
	assert.Equal(t, []string{batchOp(t, task, "pg").TaskID}, rt.Dependencies)
}

func TestBatchPlanModeChangesNothing(t *testing.T) {
	h := startApp(t, "PROVISIONING_DEMO_DELAY_MS=100")
	id := h.submit(workflowsBatchPath, sixOpBatch(map[string]any{"mode": "plan"}))
	task, _ := waitTask(t, h.base, id, 120*time.Second, terminal)
	require.Equal(t, storage.StatusCompleted, task.Status, deref(task.Error))
	for _, o := range task.Batch.Operations {
		assert.Contains(t, o.Plan, "would be created (check mode, nothing written)", o.ID)
		assert.Equal(t, o.TaskID, o.PlanTaskID)
		assert.Contains(t, getTask(t, h.base, o.TaskID).Args, "--check")
	}
	entries, err := os.ReadDir(h.stateDir)
	if !os.IsNotExist(err) {
		require.NoError(t, err)
		assert.Empty(t, entries, "plan mode wrote provider state")
	}
}

func TestBatchApprovalRESTAndTemporalCLI(t *testing.T) {
	testsupport.TemporalCLI(t)
	tokenFile := filepath.Join(t.TempDir(), "tokens")
	require.NoError(t, os.WriteFile(tokenFile, []byte("ops:ops-secret\n"), 0o600))
	h := startAppWith(t, func(c *app.Config) { c.AuthTokenFile = tokenFile }, "PROVISIONING_DEMO_DELAY_MS=100")
	auth := []string{"Authorization", "Bearer ops-secret"}
	submit := func(extra map[string]any) string {
		r, err := send(http.DefaultClient, http.MethodPost, h.base+workflowsBatchPath, sixOpBatch(extra), auth...)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, r.status, "%s", r.raw)
		var id string
		require.NoError(t, json.Unmarshal(r.env.Data, &id))
		return id
	}
	// get reads a task with the token, or reports false.
	get := func(id string) (storage.Task, bool) {
		var task storage.Task
		r, err := send(http.DefaultClient, http.MethodGet, h.base+"/tasks/"+id, nil, auth...)
		if err != nil || r.status != http.StatusOK {
			return task, false
		}
		return task, json.Unmarshal(r.env.Data, &task) == nil
	}
	waitFor := func(id, what string, cond func(storage.Task) bool) storage.Task {
		var task storage.Task
		eventually(t, 120*time.Second, "batch "+id+" "+what, func() bool {
			var ok bool
			task, ok = get(id)
			return ok && cond(task)
		})
		return task
	}
	awaiting := func(id string) storage.Task {
		task := waitFor(id, "awaiting approval", func(task storage.Task) bool {
			return task.Status.Terminal() || (task.Batch != nil && task.Batch.Phase == storage.PhaseAwaitingApproval)
		})
		require.Equal(t, storage.PhaseAwaitingApproval, task.Batch.Phase, deref(task.Error))
		return task
	}
	waitTaskAuth := func(id string) storage.Task {
		return waitFor(id, "to end", func(task storage.Task) bool { return task.Status.Terminal() })
	}

	// REST: approve after the plan; the token's name is the approver.
	id := submit(map[string]any{"require_approval": true})
	planned := awaiting(id)
	for _, o := range planned.Batch.Operations {
		assert.Equal(t, storage.StatusCompleted, o.PlanStatus, o.ID)
		assert.Equal(t, storage.StatusPending, o.Status, o.ID)
	}
	assert.NoFileExists(t, filepath.Join(h.stateDir, "production", "servers", "web-01.json"), "nothing applied before the approval")
	r, err := send(http.DefaultClient, http.MethodPost, h.base+"/tasks/"+id+"/approve", map[string]any{"comment": "change 42"}, auth...)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, r.status, "%s", r.raw)
	task := waitTaskAuth(id)
	require.Equal(t, storage.StatusCompleted, task.Status, deref(task.Error))
	assert.Equal(t, "ops", task.Batch.Approval.Approver)
	assert.Equal(t, storage.DecisionApproved, task.Batch.Approval.Decision)
	assert.FileExists(t, filepath.Join(h.stateDir, "production", "clusters", "buildkit.json"))
	// Operators find the operations' workflows by infra too.
	var taskservs []string
	for _, op := range []string{"k8s-web", "k8s-db", "pg"} {
		taskservs = append(taskservs, workflows.OperationTaskID(id, op, true), workflows.OperationTaskID(id, op, false))
	}
	awaitList(t, h.app, `Infra="production" AND WorkflowType="TaskservCreate"`, taskservs...)
	r, err = send(http.DefaultClient, http.MethodGet, h.base+"/tasks/"+id+"/audit", nil, auth...)
	require.NoError(t, err)
	var audit []storage.AuditEntry
	require.NoError(t, json.Unmarshal(r.env.Data, &audit))
	var approvals []storage.AuditEntry
	for _, e := range audit {
		if e.Action == storage.DecisionApproved {
			approvals = append(approvals, e)
		}
	}
	require.Len(t, approvals, 1, "audit: %+v", audit)
	assert.Equal(t, "ops", approvals[0].Actor)
	assert.Contains(t, approvals[0].Detail, "change 42")
	// A second decision is a conflict.
	r, err = send(http.DefaultClient, http.MethodPost, h.base+"/tasks/"+id+"/reject", nil, auth...)
	require.NoError(t, err)
	assert.Equal(t, http.StatusConflict, r.status)

	// The temporal CLI, as an operator would.
	id = submit(map[string]any{"require_approval": true})
	awaiting(id)
	temporalCLI(t, h.app, "workflow", "update", "execute", "--name", workflows.ApproveUpdate, "--workflow-id", id,
		"--input", `{"approver": "oncall-alice"}`)
	task = waitTaskAuth(id)
	require.Equal(t, storage.StatusCompleted, task.Status, deref(task.Error))
	assert.Equal(t, "oncall-alice", task.Batch.Approval.Approver)

	// Reject: Cancelled, nothing applied (the apply tasks say so).
	id = submit(map[string]any{"require_approval": true, "infra": "rejected"})
	awaiting(id)
	r, err = send(http.DefaultClient, http.MethodPost, h.base+"/tasks/"+id+"/reject", map[string]any{"comment": "not now"}, auth...)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, r.status, "%s", r.raw)
	task = waitTaskAuth(id)
	assert.Equal(t, storage.StatusCancelled, task.Status)
	assert.Equal(t, "plan rejected by ops: not now", deref(task.Error))
	assert.NoDirExists(t, filepath.Join(h.stateDir, "rejected"))

	// Timeout: Failed.
	id = submit(map[string]any{"require_approval": true, "approval_timeout": "2s", "infra": "late"})
	task = waitTaskAuth(id)
	assert.Equal(t, storage.StatusFailed, task.Status)
	assert.Equal(t, storage.DecisionTimedOut, task.Batch.Approval.Decision)
	assert.NoDirExists(t, filepath.Join(h.stateDir, "late"))

	// Approving what does not wait is a conflict; an unknown task 404.
	r, err = send(http.DefaultClient, http.MethodPost, h.base+"/tasks/"+id+"/approve", nil, auth...)
	require.NoError(t, err)
	assert.Equal(t, http.StatusConflict, r.status)
	r, err = send(http.DefaultClient, http.MethodPost, h.base+"/tasks/00000000-0000-4000-8000-000000000000/approve", nil, auth...)
	require.NoError(t, err)
	assert.Equal(t, http.StatusNotFound, r.status)
}

func TestBatchBadInputNamesTheOperation(t *testing.T) {
	h := startApp(t)
	ops := func(mutate func([]map[string]any)) map[string]any {
		b := sixOpBatch(nil)
		mutate(b["operations"].([]map[string]any))
		return b
	}
	tests := []struct {
		name  string
		body  any
		field string
		msg   string
	}{
		{"unknown dependency", ops(func(o []map[string]any) { o[2]["depends_on"] = []string{"nope"} }), "operations[2].depends_on[0]", `operation k8s-web depends on unknown operation "nope"`},
		{"cycle", ops(func(o []map[string]any) { o[0]["depends_on"] = []string{"cluster"} }), "operations[0].depends_on", "cycle: web -> cluster -> k8s-web -> web"},
		{"duplicate", ops(func(o []map[string]any) { o[1]["id"] = "web" }), "operations[1].id", `duplicate operation id "web"`},
		{"bad type", ops(func(o []map[string]any) { o[5]["type"] = "volume" }), "operations[5].type", "volume"},
		{"shell in a name", ops(func(o []map[string]any) { o[0]["servers"] = []string{"web;rm -rf /"} }), "operations[0].servers[0]", ""},
		{"no operations", map[string]any{"infra": "production", "settings": "s.yaml", "operations": []any{}}, "operations", "at least one"},
		{"bad timeout", sixOpBatch(map[string]any{"require_approval": true, "approval_timeout": "soon"}), "approval_timeout", ""},
		{"unknown field", sixOpBatch(map[string]any{"rolback": false}), "rolback", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := h.postJSON(workflowsBatchPath, tt.body)
			require.Equal(t, http.StatusBadRequest, r.status, "%s", r.raw)
			require.NotNil(t, r.env.Error)
			assert.Equal(t, tt.field, r.env.Error.Field, r.env.Error.Message)
			assert.Contains(t, r.env.Error.Message, tt.msg)
		})
	}
	r := h.get("/tasks")
	assert.Equal(t, "0", r.header.Get("X-Total-Count"), "nothing created")
}

// TestBatchSurvivesKill9: the service is SIGKILLed while a batch's
// operations run and started again; the batch finishes and the provider
// did each operation exactly once.
func TestBatchSurvivesKill9(t *testing.T) {
	nu := testsupport.NuPath(t)
	root := testsupport.RepoRoot(t)
	dir := t.TempDir()
	logPath := filepath.Join(dir, "orchestrator.log")
	port, tport := freePort(t), freePort(t)
	args := []string{
		"--port", fmt.Sprint(port), "--temporal-port", fmt.Sprint(tport), "--temporal-ui-port", "-1",
		"--data-dir", filepath.Join(dir, "data"), "--nu-path", nu,
		"--provisioning-path", filepath.Join(root, "core", "nulib", "provisioning"),
		"--heartbeat-timeout", "5s", "--retry-initial-interval", "100ms", "--retry-max-interval", "1s",
		"--max-attempts", "10", "--log-format", "json",
	}
	runLog := filepath.Join(dir, "runs.log")
	stateDir := filepath.Join(dir, "provider-state")
	env := []string{"PROVISIONING_STATE_DIR=" + stateDir, "PROVISIONING_DEMO_DELAY_MS=1500", "PROVISIONING_DEMO_RUN_LOG=" + runLog}
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	first := startChild(t, args, env, logPath)
	waitHealthy(t, base, first, logPath)
	h := &harness{t: t, base: base}
	id := h.submit(workflowsBatchPath, sixOpBatch(nil))

	// Kill once the taskserv layer is running.
	var busy string
	eventually(t, 60*time.Second, "the taskservs to run", func() bool {
		task := h.task(id)
		if task.Batch == nil {
			return false
		}
		for _, o := range task.Batch.Operations {
			if o.Type == "taskserv" && o.Status == storage.StatusRunning && len(taskProcesses(o.TaskID)) > 0 {
				busy = o.TaskID
				return true
			}
		}
		return false
	})
	require.NoError(t, first.cmd.Process.Signal(syscall.SIGKILL))
	<-first.done
	eventually(t, 10*time.Second, "orphaned nu processes to die", func() bool { return len(taskProcesses(busy)) == 0 })

	second := startChild(t, args, env, logPath)
	waitHealthy(t, base, second, logPath)
	task, _ := waitTask(t, base, id, 180*time.Second, terminal)
	require.Equal(t, storage.StatusCompleted, task.Status, deref(task.Error))
	changed := map[string]int{}
	for _, l := range runLogLines(t, runLog) {
		if what, ok := strings.CutSuffix(l, " changed"); ok {
			changed[what]++
		}
	}
	assert.Len(t, changed, 6, "every operation done: %v", changed)
	for what, n := range changed {
		assert.Equal(t, 1, n, "%s done %d times", what, n)
	}
	assert.Empty(t, task.Batch.Compensations)
}

// TestBatchCancelRollsBack: POST /tasks/{id}/cancel of a running batch
// cancels its running operations, starts nothing new and undoes what
// completed.
func TestBatchCancelRollsBack(t *testing.T) {
	runLog := filepath.Join(t.TempDir(), "runs.log")
	h := startApp(t, "PROVISIONING_DEMO_DELAY_MS=1500", "PROVISIONING_DEMO_RUN_LOG="+runLog)
	id := h.submit(workflowsBatchPath, sixOpBatch(nil))
	waitTask(t, h.base, id, 60*time.Second, func(task storage.Task) bool {
		return task.Status.Terminal() || (task.Batch != nil && batchOp(t, task, "k8s-web").Status == storage.StatusRunning)
	})
	r := h.postJSON("/tasks/"+id+"/cancel", nil)
	require.Equal(t, http.StatusAccepted, r.status, "%s", r.raw)
	task, _ := waitTask(t, h.base, id, 60*time.Second, terminal)
	require.Equal(t, storage.StatusCancelled, task.Status, deref(task.Error))
	assert.Contains(t, deref(task.Error), "batch cancelled")
	for _, o := range task.Batch.Operations {
		child := getTask(t, h.base, o.TaskID)
		switch o.ID {
		case "web", "db":
			assert.Equal(t, storage.StatusCompleted, child.Status, o.ID)
			assert.True(t, o.RolledBack, o.ID)
		default:
			assert.Equal(t, storage.StatusCancelled, child.Status, o.ID)
		}
	}
	for _, f := range []string{"servers/web-01.json", "servers/db-01.json"} {
		assert.NoFileExists(t, filepath.Join(h.stateDir, "production", f), "rolled back")
	}
	assert.NoFileExists(t, filepath.Join(h.stateDir, "production", "clusters", "buildkit.json"))
	for _, l := range runLogLines(t, runLog) {
		assert.NotContains(t, l, "cluster", "the cluster never started")
	}
}
