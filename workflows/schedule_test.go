package workflows_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/workflows"
)

// scheduledWFID is a workflow ID as Temporal names a scheduled run: the
// schedule action's id plus the run's time.
const scheduledWFID = "orchestrator-nightly-2030-01-02T03:04:05Z"

func driftCheck() workflows.ScheduledRunInput {
	return workflows.ScheduledRunInput{ScheduleID: "nightly", Action: workflows.ScheduleAction{
		Type: workflows.ScheduleActionServer, Infra: "production", Settings: "./settings.yaml",
		CheckMode: true, Servers: []string{"web-01", "web-02"}, Priority: 4,
	}}
}

// TestScheduledRunRunsTheTaskAsAChild: the real ServerCreate runs as the
// child, with the derived task id; the projected task is the run's task,
// named after the schedule, in check mode.
func TestScheduledRunRunsTheTaskAsAChild(t *testing.T) {
	h := newHarness(t)
	h.mockRun(nil, 0, succeed)
	h.env.SetStartWorkflowOptions(client.StartWorkflowOptions{ID: scheduledWFID})
	h.env.ExecuteWorkflow(workflows.ScheduledRunWorkflowName, driftCheck())
	require.True(t, h.env.IsWorkflowCompleted())
	require.NoError(t, h.env.GetWorkflowError())
	var res storage.Task
	require.NoError(t, h.env.GetWorkflowResult(&res))

	id := workflows.ScheduledTaskID(scheduledWFID)
	require.NoError(t, storage.ValidateID(id), "a run's task id is a task id")
	assert.Equal(t, id, workflows.ScheduledTaskID(scheduledWFID), "the same workflow ID names the same task")
	assert.NotEqual(t, id, workflows.ScheduledTaskID(scheduledWFID+"x"))
	assert.Equal(t, id, res.ID)
	assert.Equal(t, storage.StatusCompleted, res.Status)

	got := h.lastProjection(id)
	assert.Equal(t, storage.StatusCompleted, got.Status)
	assert.Equal(t, "server create production (schedule nightly)", got.Name)
	assert.Equal(t, workflows.ServerCreateWorkflowName, got.WorkflowType)
	assert.Equal(t, 4, got.Priority)
	for _, c := range h.nuCalls() {
		assert.Equal(t, id, c.step.TaskID)
		assert.Contains(t, c.step.Args, "--check", "a drift check runs in check mode")
	}
	assert.Len(t, h.nuCalls(), 2)

	v, err := h.env.QueryWorkflow(workflows.StatusQuery)
	require.NoError(t, err)
	var st workflows.ScheduledRunStatus
	require.NoError(t, v.Get(&st))
	assert.Equal(t, workflows.ScheduledRunStatus{ScheduleID: "nightly", TaskID: id, Status: storage.StatusCompleted}, st)
}

// TestScheduledRunStartsTheActionsWorkflow: each action type starts its
// create workflow with the action's fields (the child mocked); the task's
// failure is the run's.
func TestScheduledRunStartsTheActionsWorkflow(t *testing.T) {
	type seen struct {
		common workflows.Common
		what   string
	}
	failed := func(c workflows.Common) (storage.Task, error) {
		return storage.Task{ID: c.TaskID, Status: storage.StatusFailed}, temporal.NewNonRetryableApplicationError("boom", workflows.ErrTypeProvisioningFailed, nil)
	}
	for _, tc := range []struct {
		action workflows.ScheduleAction
		wfType string
		mock   func(got *seen) any
		what   string
	}{
		{workflows.ScheduleAction{Type: "taskserv", Infra: "i", Settings: "./s.yaml", Taskserv: "etcd"}, workflows.TaskservCreateWorkflowName,
			func(got *seen) any {
				return func(_ workflow.Context, in workflows.TaskservCreateInput) (storage.Task, error) {
					*got = seen{in.Common, in.Taskserv}
					return failed(in.Common)
				}
			}, "etcd"},
		{workflows.ScheduleAction{Type: "cluster", Infra: "i", Settings: "./s.yaml", Cluster: "buildkit", Wait: true}, workflows.ClusterCreateWorkflowName,
			func(got *seen) any {
				return func(_ workflow.Context, in workflows.ClusterCreateInput) (storage.Task, error) {
					*got = seen{in.Common, in.Cluster}
					return failed(in.Common)
				}
			}, "buildkit"},
		{workflows.ScheduleAction{Type: "server", Infra: "i", Settings: "./s.yaml", Servers: []string{}}, workflows.ServerCreateWorkflowName,
			func(got *seen) any {
				return func(_ workflow.Context, in workflows.ServerCreateInput) (storage.Task, error) {
					*got = seen{in.Common, fmt.Sprint(in.Servers)}
					return failed(in.Common)
				}
			}, "[]"},
	} {
		t.Run(tc.action.Type, func(t *testing.T) {
			h := newHarness(t)
			h.env.SetStartWorkflowOptions(client.StartWorkflowOptions{ID: scheduledWFID})
			var got seen
			h.env.OnWorkflow(tc.wfType, mock.Anything, mock.Anything).Return(tc.mock(&got)).Once()
			h.env.ExecuteWorkflow(workflows.ScheduledRunWorkflowName, workflows.ScheduledRunInput{ScheduleID: "s1", Action: tc.action})
			require.True(t, h.env.IsWorkflowCompleted())
			var appErr *temporal.ApplicationError
			require.ErrorAs(t, h.env.GetWorkflowError(), &appErr, "the task's failure is the run's")
			assert.Equal(t, workflows.ScheduledTaskID(scheduledWFID), got.common.TaskID)
			assert.Equal(t, "s1", got.common.Schedule)
			assert.Equal(t, tc.action.Wait, got.common.Wait)
			assert.Equal(t, tc.what, got.what)
			assert.Equal(t, t0, got.common.CreatedAt, "created when the run started")
		})
	}
}

// TestScheduledRunRefusesAnInvalidAction: no child starts; the run fails
// with InvalidInput naming the field.
func TestScheduledRunRefusesAnInvalidAction(t *testing.T) {
	h := newHarness(t)
	in := driftCheck()
	in.Action.Infra = "../etc"
	h.env.ExecuteWorkflow(workflows.ScheduledRunWorkflowName, in)
	require.True(t, h.env.IsWorkflowCompleted())
	var appErr *temporal.ApplicationError
	require.ErrorAs(t, h.env.GetWorkflowError(), &appErr)
	assert.Equal(t, workflows.ErrTypeInvalidInput, appErr.Type())
	assert.Contains(t, appErr.Error(), "action.infra")
	assert.Empty(t, h.nuCalls())
}

func TestScheduleActionValidate(t *testing.T) {
	ok := driftCheck().Action
	for name, tc := range map[string]struct {
		mut   func(a *workflows.ScheduleAction)
		field string
	}{
		"no type":            {func(a *workflows.ScheduleAction) { a.Type = "" }, "action.type"},
		"unknown type":       {func(a *workflows.ScheduleAction) { a.Type = "rm" }, "action.type"},
		"server no servers":  {func(a *workflows.ScheduleAction) { a.Servers = nil }, "action.servers"},
		"bad server":         {func(a *workflows.ScheduleAction) { a.Servers = []string{"a b"} }, "action.servers[0]"},
		"bad infra":          {func(a *workflows.ScheduleAction) { a.Infra = "" }, "action.infra"},
		"bad settings":       {func(a *workflows.ScheduleAction) { a.Settings = "" }, "action.settings"},
		"bad priority":       {func(a *workflows.ScheduleAction) { a.Priority = 9 }, "action.priority"},
		"taskserv missing":   {func(a *workflows.ScheduleAction) { a.Type, a.Servers = "taskserv", nil }, "action.taskserv"},
		"taskserv on server": {func(a *workflows.ScheduleAction) { a.Taskserv = "etcd" }, "action.taskserv"},
		"cluster missing":    {func(a *workflows.ScheduleAction) { a.Type, a.Servers = "cluster", nil }, "action.cluster"},
		"cluster servers":    {func(a *workflows.ScheduleAction) { a.Type, a.Cluster = "cluster", "k" }, "action.servers"},
		"test with servers":  {func(a *workflows.ScheduleAction) { a.Type, a.Taskserv = "taskserv_test", "redis" }, "action.servers"},
		"test no taskserv":   {func(a *workflows.ScheduleAction) { a.Type, a.Servers, a.CheckMode = "taskserv_test", nil, false }, "action.taskserv"},
		"test bad image": {func(a *workflows.ScheduleAction) {
			a.Type, a.Servers, a.Taskserv, a.BaseImage, a.CheckMode = "taskserv_test", nil, "redis", "bad image!", false
		}, "action.base_image"},
		"image on server":   {func(a *workflows.ScheduleAction) { a.BaseImage = "busybox" }, "action.base_image"},
		"batch without dag": {func(a *workflows.ScheduleAction) { a.Type, a.Servers = "batch", nil }, "action.batch"},
		"batch on a taskserv": {func(a *workflows.ScheduleAction) {
			a.Type, a.Servers, a.Taskserv, a.Batch = "taskserv", nil, "etcd", &workflows.ScheduleBatch{}
		}, "action.batch"},
	} {
		t.Run(name, func(t *testing.T) {
			a := ok
			a.Servers = append([]string(nil), ok.Servers...)
			tc.mut(&a)
			var fe *workflows.FieldError
			require.True(t, errors.As(a.Validate(), &fe), "want a field error")
			assert.Equal(t, tc.field, fe.Field)
		})
	}
	require.NoError(t, ok.Validate())
	test := workflows.ScheduleAction{Type: "taskserv_test", Taskserv: "redis", Infra: "lab"}
	require.NoError(t, test.Validate())
	in, err := workflows.ScheduledRunInput{Action: test, TestEnv: &workflows.ScheduledTestEnv{DefaultImage: "busybox:local", NodeMemoryMB: 256}}.
		TestEnvInput("0b6f3a5e-2f7c-4c1e-9d1a-6a1f0e6c2b09", createdAt)
	require.NoError(t, err)
	assert.True(t, in.AutoRun)
	assert.True(t, in.Request.AutoStart && in.Request.AutoCleanup && in.Request.Idempotence)
	require.Len(t, in.Plan.Nodes, 1)
	assert.Equal(t, "busybox:local", in.Plan.Nodes[0].Image)
	assert.Equal(t, []string{"redis"}, in.Plan.Nodes[0].Taskservs)
}
