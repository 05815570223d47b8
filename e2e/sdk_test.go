package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"

	"github.com/provisioning/orchestrator/sdk"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/testenv"
	"github.com/provisioning/orchestrator/workflows"
)

func TestSDKServerCreateCompletesAndShowsInTaskAPI(t *testing.T) {
	h := startApp(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := sdk.Dial(ctx, h.app.TemporalAddress(), "")
	require.NoError(t, err)
	defer c.Close()
	c.Policy = fastPolicy

	run, err := c.StartServerCreate(ctx, "production", "./settings.yaml", []string{"web-01", "web-02"}, sdk.WithWait(true))
	require.NoError(t, err)
	require.NoError(t, storage.ValidateID(run.ID()))

	task, err := run.Wait(ctx)
	require.NoError(t, err)
	assert.Equal(t, run.ID(), task.ID)
	assert.Equal(t, storage.StatusCompleted, task.Status)
	assert.Equal(t, workflows.ServerCreateWorkflowName, task.WorkflowType)
	require.Len(t, task.Steps, 2)

	st, err := run.Status(ctx)
	require.NoError(t, err)
	assert.Equal(t, storage.StatusCompleted, st.Status)

	api := h.task(run.ID())
	assert.Equal(t, storage.StatusCompleted, api.Status)
	assert.Equal(t, task.Version, api.Version)
	assert.Equal(t, task.Name, api.Name)
	assert.True(t, task.CreatedAt.Equal(api.CreatedAt), "%s vs %s", task.CreatedAt, api.CreatedAt)

	// Same id again: rejected like the REST API's 409.
	_, err = c.StartServerCreate(ctx, "production", "./settings.yaml", []string{"web-01"}, sdk.WithTaskID(run.ID()))
	require.ErrorIs(t, err, sdk.ErrAlreadyExists)
}

func TestSDKInvalidRequestStartsNothing(t *testing.T) {
	h := startApp(t)
	c := &sdk.Client{Temporal: h.app.Client()}
	ctx := context.Background()

	_, err := c.StartServerCreate(ctx, "production", "./settings.yaml", []string{"web-01", "bad name;rm"})
	var fe *workflows.FieldError
	require.ErrorAs(t, err, &fe)
	assert.Equal(t, "servers[1]", fe.Field)

	_, err = c.StartClusterCreate(ctx, "production", "-rf", "k8s")
	require.ErrorAs(t, err, &fe)
	assert.Equal(t, "settings", fe.Field)

	_, err = c.StartTestEnvironment(ctx, testenv.CreateRequest{Config: testenv.EnvConfig{Type: "nope"}}, nil, "", 0)
	require.ErrorAs(t, err, &fe)
	assert.Equal(t, "config.type", fe.Field)

	r := h.get("/tasks")
	require.Equal(t, http.StatusOK, r.status, "%s", r.raw)
	var tasks []storage.Task
	require.NoError(t, json.Unmarshal(r.env.Data, &tasks))
	assert.Empty(t, tasks)
}

// (With a priority set at start and changed while running.)
func TestSDKCancelSlowTask(t *testing.T) {
	h := startApp(t, "PROVISIONING_DEMO_DELAY_MS=60000")
	c := &sdk.Client{Temporal: h.app.Client(), Policy: fastPolicy}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	run, err := c.StartTaskservCreate(ctx, "production", "./settings.yaml", "kubernetes", []string{"web-01"}, sdk.WithPriority(5))
	require.NoError(t, err)
	eventually(t, 30*time.Second, "task running", func() bool {
		st, err := run.Status(ctx)
		return err == nil && st.Status == storage.StatusRunning
	})
	assert.Equal(t, 5, h.task(run.ID()).Priority)
	desc, err := h.app.Client().DescribeWorkflowExecution(ctx, run.ID(), "")
	require.NoError(t, err)
	assert.Equal(t, int32(5), desc.GetWorkflowExecutionInfo().GetPriority().GetPriorityKey(), "started with the priority")
	assert.Equal(t, "production", desc.GetWorkflowExecutionInfo().GetPriority().GetFairnessKey())
	changed, err := run.SetPriority(ctx, 2)
	require.NoError(t, err)
	assert.Equal(t, 2, changed.Priority)
	require.NoError(t, run.Cancel(ctx))

	task, err := run.Wait(ctx)
	require.Error(t, err)
	var canceled *temporal.CanceledError
	assert.True(t, errors.As(err, &canceled), "want a canceled error, got %v", err)
	assert.Equal(t, storage.StatusCancelled, task.Status)
	assert.Equal(t, storage.StatusCancelled, h.task(run.ID()).Status)
	_, err = run.SetPriority(ctx, 1)
	assert.Error(t, err, "a finished task's priority cannot change")
}

func TestSDKTestEnvironmentLifecycle(t *testing.T) {
	h := startEnvApp(t)
	c := &sdk.Client{Temporal: h.app.Client(), Instance: h.app.Config().Instance}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	env, err := c.StartTestEnvironment(ctx, testenv.CreateRequest{
		Config:    testenv.EnvConfig{Type: testenv.TypeSingleTaskserv, Taskserv: "containerd", BaseImage: h.image},
		Infra:     "prod-stack",
		AutoStart: true,
	}, nil, h.image, 10*time.Minute)
	require.NoError(t, err)

	readyCtx, readyCancel := context.WithTimeout(ctx, 60*time.Second)
	st, err := env.WaitReady(readyCtx)
	readyCancel()
	require.NoError(t, err)
	require.Equal(t, workflows.EnvReady, st.Status)
	require.Len(t, st.Nodes, 1)
	assert.Equal(t, "containerd", st.Nodes[0].Node)
	assert.Equal(t, "TestEnvironment", h.task(env.ID()).WorkflowType)

	tr, err := env.RunTests(ctx, testenv.RunRequest{})
	require.NoError(t, err)
	assert.True(t, tr.Passed, "%+v", tr)
	assert.NotZero(t, tr.Total)

	require.NoError(t, env.Cleanup(ctx))
	final, err := env.Wait(ctx)
	require.NoError(t, err)
	assert.Equal(t, workflows.EnvCleaned, final.Status)
	cs, ns := h.objects(env.ID())
	assert.Zero(t, cs, "containers left")
	assert.Zero(t, ns, "networks left")
	eventually(t, 10*time.Second, "task API shows the cleaned environment", func() bool {
		return h.env(env.ID()).Status == workflows.EnvCleaned
	})
	assert.Equal(t, storage.StatusCompleted, h.task(env.ID()).Status)
	// Cleanup of an ended environment is not an error.
	require.NoError(t, env.Cleanup(ctx))
}
