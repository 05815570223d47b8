package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/worker"
	"github.com/provisioning/orchestrator/workflows"
)

// Tasks no workflow will ever move are settled by the reconciler: a
// Pending record whose workflow never started (the service died in
// between), and a Running task whose workflow an operator terminated. A
// task whose workflow runs is left alone. Real Temporal, real store.
func TestReconcilerSettlesStuckTasks(t *testing.T) {
	h := startApp(t, "PROVISIONING_DEMO_DELAY_MS=20000")
	ctx := context.Background()
	rec := h.app.Reconciler()
	require.NotNil(t, rec, "serve mode runs a reconciler")

	// 1. A Pending record without a workflow.
	orphan := uuid.NewString()
	old := time.Now().UTC().Add(-time.Hour)
	require.NoError(t, h.app.Store().Create(ctx, storage.Task{ID: orphan, Name: "server create lab: web-09", Command: "server create",
		Status: storage.StatusPending, CreatedAt: old, UpdatedAt: old, Version: 1, WorkflowType: "ServerCreate"}))

	// 2. A running task whose workflow gets terminated, and 3. one that
	// keeps running.
	terminated := h.submit("/workflows/servers/create", map[string]any{"infra": "lab", "settings": "./s.yaml", "servers": []string{"t-01"}})
	running := h.submit("/workflows/servers/create", map[string]any{"infra": "lab", "settings": "./s.yaml", "servers": []string{"r-01"}})
	for _, id := range []string{terminated, running} {
		waitTask(t, h.base, id, 30*time.Second, func(t storage.Task) bool { return t.Status == storage.StatusRunning })
	}
	require.NoError(t, h.app.Client().TerminateWorkflow(ctx, terminated, "", "operator says stop"))

	// 4. A batch (its plan a quick check) awaiting approval: its apply
	// tasks are Pending without workflows, and must stay so. 5. A Pending
	// operation whose batch is gone.
	batch := h.submit("/workflows/batch", map[string]any{"infra": "lab", "settings": "./s.yaml", "require_approval": true,
		"operations": []map[string]any{{"id": "web", "type": "server", "servers": []string{"b-01"}, "check_mode": true}}})
	waitTask(t, h.base, batch, 30*time.Second, func(t storage.Task) bool { return t.Status == storage.StatusRunning })
	applyOp := workflows.OperationTaskID(batch, "web", false)
	require.Equal(t, storage.StatusPending, h.task(applyOp).Status)
	orphanOp := uuid.NewString()
	require.NoError(t, h.app.Store().Create(ctx, storage.Task{ID: orphanOp, Name: "server create lab", Command: "server create",
		Status: storage.StatusPending, CreatedAt: old, UpdatedAt: old, Version: 1, WorkflowType: "ServerCreate", Parent: uuid.NewString()}))

	// Everything is "old" from the reconciler's point of view.
	rec.Now = func() time.Time { return time.Now().Add(time.Hour) }
	rep, err := rec.RunOnce(ctx)
	require.NoError(t, err)
	assert.Contains(t, rep.Settled, orphan)
	assert.Contains(t, rep.Settled, terminated)
	assert.NotContains(t, rep.Settled, running)
	assert.NotContains(t, rep.Settled, applyOp, "a running batch's waiting operation")
	assert.Contains(t, rep.Settled[orphanOp], "its batch ")
	assert.Equal(t, storage.StatusPending, h.task(applyOp).Status)

	got := h.task(orphan)
	assert.Equal(t, storage.StatusFailed, got.Status)
	require.NotNil(t, got.Error)
	assert.Contains(t, *got.Error, "no workflow exists for this task")
	got = h.task(terminated)
	assert.Equal(t, storage.StatusFailed, got.Status)
	require.NotNil(t, got.Error)
	assert.Contains(t, *got.Error, "ended Terminated")
	assert.Equal(t, storage.StatusRunning, h.task(running).Status)

	// The audit trail says who did it.
	r := h.get("/tasks/" + orphan + "/audit")
	assert.Contains(t, string(r.raw), `"actor":"`+worker.ReconcilerActor+`"`)

	// A second pass finds nothing more to do.
	rep, err = rec.RunOnce(ctx)
	require.NoError(t, err)
	assert.Empty(t, rep.Settled)
	h.postJSON("/tasks/"+running+"/cancel", nil)
	h.postJSON("/tasks/"+batch+"/cancel", nil)
}
