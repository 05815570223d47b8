package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"

	"github.com/provisioning/orchestrator/sdk"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/workflows"
)

// sdkExampleBatch is examples/batch.yaml as an sdk.Batch.
func sdkExampleBatch() sdk.Batch {
	return sdk.Batch{
		Name: "production stack", Infra: "production", Settings: "./settings.yaml",
		Operations: []workflows.Operation{
			{ID: "web", Type: workflows.OperationServer, Servers: []string{"web-01"}},
			{ID: "db", Type: workflows.OperationServer, Servers: []string{"db-01"}},
			{ID: "k8s-web", Type: workflows.OperationTaskserv, Taskserv: "kubernetes", Servers: []string{"web-01"}, DependsOn: []string{"web"}},
			{ID: "k8s-db", Type: workflows.OperationTaskserv, Taskserv: "kubernetes", Servers: []string{"db-01"}, DependsOn: []string{"db"}},
			{ID: "pg", Type: workflows.OperationTaskserv, Taskserv: "postgres", Servers: []string{"db-01"}, DependsOn: []string{"k8s-db"}},
			{ID: "cluster", Type: workflows.OperationCluster, Cluster: "buildkit", DependsOn: []string{"k8s-web", "pg"}},
		},
	}
}

// A batch started through the SDK plans, waits, is approved through the
// SDK and completes; every operation's task exists in the task API with
// its dependencies. A second decision, a decision on a batch that needs
// none, and a rejected batch behave like the REST API's.
func TestSDKBatchApproveCompletes(t *testing.T) {
	h := startApp(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := sdk.Dial(ctx, h.app.TemporalAddress(), "")
	require.NoError(t, err)
	defer c.Close()
	c.Policy = fastPolicy

	b := sdkExampleBatch()
	b.RequireApproval = true
	run, err := c.StartBatch(ctx, b, sdk.WithPriority(2))
	require.NoError(t, err)
	require.NoError(t, storage.ValidateID(run.ID()))

	// Too early: the plan (four levels of provider runs) is still running.
	_, err = c.Approve(ctx, run.ID(), "ci-bot", "")
	require.ErrorIs(t, err, sdk.ErrNotAwaitingApproval)
	eventually(t, time.Minute, "batch awaiting approval", func() bool {
		st, err := run.Status(ctx)
		return err == nil && st.Batch != nil && st.Batch.Phase == storage.PhaseAwaitingApproval
	})
	_, err = c.Approve(ctx, run.ID(), " ", "")
	var fe *workflows.FieldError
	require.ErrorAs(t, err, &fe)
	assert.Equal(t, "approver", fe.Field)

	decided, err := c.Approve(ctx, run.ID(), "ci-bot", "from the pipeline")
	require.NoError(t, err)
	require.NotNil(t, decided.Batch.Approval)
	assert.Equal(t, storage.DecisionApproved, decided.Batch.Approval.Decision)

	task, err := run.Wait(ctx)
	require.NoError(t, err)
	assert.Equal(t, storage.StatusCompleted, task.Status)
	require.NotNil(t, task.Batch.Approval)
	assert.Equal(t, "ci-bot", task.Batch.Approval.Approver)
	api := h.task(run.ID())
	assert.Equal(t, storage.StatusCompleted, api.Status)
	assert.Equal(t, workflows.BatchWorkflowName, api.WorkflowType)
	assert.Equal(t, 2, api.Priority)

	ids := map[string]string{}
	for _, op := range b.Operations {
		ids[op.ID] = workflows.OperationTaskID(run.ID(), op.ID, false)
	}
	for i, op := range b.Operations {
		assert.Equal(t, ids[op.ID], task.Batch.Operations[i].TaskID)
		opTask := h.task(ids[op.ID])
		assert.Equal(t, storage.StatusCompleted, opTask.Status, op.ID)
		want := []string{}
		for _, d := range op.DependsOn {
			want = append(want, ids[d])
		}
		assert.ElementsMatch(t, want, opTask.Dependencies, "dependencies of %s", op.ID)
		plan := h.task(workflows.OperationTaskID(run.ID(), op.ID, true))
		assert.Equal(t, storage.StatusCompleted, plan.Status, "plan of %s", op.ID)
		assert.True(t, plan.CompletedAt.Before(*opTask.StartedAt), "%s applied after the whole plan", op.ID)
	}

	// Decided already, and finished: typed error.
	_, err = c.Reject(ctx, run.ID(), "ci-bot", "")
	var na *sdk.NotAwaitingApprovalError
	require.ErrorAs(t, err, &na)
	assert.Equal(t, run.ID(), na.TaskID)

	// A batch without require_approval never awaits one.
	plain, err := c.StartBatch(ctx, sdk.Batch{Infra: "production", Settings: "./settings.yaml", Mode: workflows.BatchModePlan,
		Operations: []workflows.Operation{{ID: "web", Type: workflows.OperationServer, Servers: []string{"web-01"}}}})
	require.NoError(t, err)
	_, err = c.Approve(ctx, plain.ID(), "ci-bot", "")
	require.ErrorIs(t, err, sdk.ErrNotAwaitingApproval)
	_, err = plain.Wait(ctx)
	require.NoError(t, err)

	// Rejected: Cancelled, nothing applied.
	b = sdkExampleBatch()
	b.RequireApproval = true
	b.ApprovalTimeout = 10 * time.Minute
	rej, err := c.StartBatch(ctx, b)
	require.NoError(t, err)
	eventually(t, time.Minute, "second batch awaiting approval", func() bool {
		st, err := rej.Status(ctx)
		return err == nil && st.Batch != nil && st.Batch.Phase == storage.PhaseAwaitingApproval
	})
	_, err = c.Reject(ctx, rej.ID(), "ci-bot", "not today")
	require.NoError(t, err)
	final, err := rej.Wait(ctx)
	var canceled *temporal.CanceledError
	require.ErrorAs(t, err, &canceled)
	assert.Equal(t, storage.StatusCancelled, final.Status)
	assert.Equal(t, storage.StatusCancelled, h.task(workflows.OperationTaskID(rej.ID(), "web", false)).Status)

	// An invalid batch starts nothing: the field names the operation.
	bad := sdkExampleBatch()
	bad.Operations[0].DependsOn = []string{"cluster"}
	_, err = c.StartBatch(ctx, bad)
	require.ErrorAs(t, err, &fe)
	assert.Equal(t, "operations[0].depends_on", fe.Field)
	assert.Contains(t, fe.Message, "cycle")
}
