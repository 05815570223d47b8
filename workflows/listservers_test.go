package workflows_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/provisioning/orchestrator/activities"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/workflows"
)

// mockList mocks ListServers with fn and records the steps it was asked.
func (h *harness) mockList(fn func(ctx context.Context, step activities.NuStep) ([]string, error)) *[]activities.NuStep {
	var asked []activities.NuStep
	h.env.OnActivity(h.acts.ListServers, mock.Anything, mock.Anything).Return(
		func(ctx context.Context, step activities.NuStep) ([]string, error) {
			h.mu.Lock()
			asked = append(asked, step)
			h.mu.Unlock()
			return fn(ctx, step)
		})
	return &asked
}

func listing(names ...string) func(context.Context, activities.NuStep) ([]string, error) {
	return func(context.Context, activities.NuStep) ([]string, error) { return names, nil }
}

// No servers: the workflow asks `server list` once the task is Running, then
// runs one step per listed server with the usual argv.
func TestServerCreate_NoServersCreatesEveryListedServer(t *testing.T) {
	h := newHarness(t)
	asked := h.mockList(listing("web-01", "web-02", "db-01"))
	h.mockRun(nil, time.Second, succeed).Times(3)

	h.env.ExecuteWorkflow(workflows.ServerCreateWorkflowName, serverInput(taskID1))
	task := h.result()

	require.Len(t, *asked, 1, "the servers are listed once")
	assert.Equal(t, activities.NuStep{TaskID: taskID1, Step: workflows.ListServersStep,
		Args: []string{"server", "list", "--infra", "production", "--settings", "./settings.yaml"}}, (*asked)[0])

	argv := map[string][]string{}
	for _, c := range h.nuCalls() {
		argv[c.step.Step] = c.step.Args
	}
	assert.Equal(t, map[string][]string{
		"web-01": {"server", "create", "--infra", "production", "--settings", "./settings.yaml", "--wait", "web-01"},
		"web-02": {"server", "create", "--infra", "production", "--settings", "./settings.yaml", "--wait", "web-02"},
		"db-01":  {"server", "create", "--infra", "production", "--settings", "./settings.yaml", "--wait", "db-01"},
	}, argv)

	assert.Equal(t, storage.StatusCompleted, task.Status)
	assert.Equal(t, storage.Progress{Done: 3, Total: 3}, task.Progress)
	assert.Equal(t, map[string]storage.TaskStatus{"web-01": storage.StatusCompleted, "web-02": storage.StatusCompleted, "db-01": storage.StatusCompleted}, stepStatuses(task))
	// The args are the request's (it named no server); the steps name them.
	assert.Equal(t, []string{"--infra", "production", "--settings", "./settings.yaml", "--wait"}, task.Args)

	// Running without steps while listing, then the listed steps Pending.
	ps := h.store.projections(taskID1)
	requireStrictlyIncreasingVersions(t, ps)
	require.GreaterOrEqual(t, len(ps), 3)
	assert.Equal(t, storage.StatusRunning, ps[0].Status)
	assert.Empty(t, ps[0].Steps)
	assert.Equal(t, storage.StatusRunning, ps[1].Status)
	assert.Equal(t, storage.Progress{Done: 0, Total: 3}, ps[1].Progress)
	assert.Equal(t, map[string]storage.TaskStatus{"web-01": storage.StatusPending, "web-02": storage.StatusPending, "db-01": storage.StatusPending}, stepStatuses(ps[1]))
	assert.Equal(t, storage.StatusCompleted, ps[len(ps)-1].Status)
}

// A list that cannot be created fails the task, naming why, and runs no step.
func TestServerCreate_NoServersBadList(t *testing.T) {
	tooMany := make([]string, workflows.MaxServers+1)
	for i := range tooMany {
		tooMany[i] = fmt.Sprintf("s-%d", i)
	}
	for _, tc := range []struct {
		name string
		list func(context.Context, activities.NuStep) ([]string, error)
		want string
	}{
		{"empty", listing(), "servers: the settings define no servers"},
		{"too many", listing(tooMany...), fmt.Sprintf("the settings define %d servers; a task creates at most %d", workflows.MaxServers+1, workflows.MaxServers)},
		{"bad name", listing("web-01", "../etc"), "servers[1]: "},
		{"duplicate", listing("web-01", "web-01"), `servers[1]: duplicate server "web-01"`},
		{"script fails", func(ctx context.Context, _ activities.NuStep) ([]string, error) {
			res := activities.NuStepResult{ExitCode: 3, Stderr: "some noise\nprovisioning: settings ./settings.yaml not found\n"}
			return nil, temporal.NewApplicationErrorWithOptions("exit status 3", activities.ErrTypeNushellPermanent,
				temporal.ApplicationErrorOptions{NonRetryable: true, Details: []any{res}})
		}, "could not list the servers the settings define (`server list --infra production --settings ./settings.yaml`): provisioning: settings ./settings.yaml not found"},
		{"not JSON", func(context.Context, activities.NuStep) ([]string, error) {
			return nil, temporal.NewNonRetryableApplicationError(`server list printed "hello": it is not one JSON array of strings`, activities.ErrTypeServerListOutput, nil)
		}, `server list printed "hello"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.mockList(tc.list)
			h.mockRun(nil, 0, succeed).Maybe()
			h.env.ExecuteWorkflow(workflows.ServerCreateWorkflowName, serverInput(taskID1))
			err := h.workflowErr()

			assert.Empty(t, h.startedSteps(), "no server step runs")
			var appErr *temporal.ApplicationError
			require.ErrorAs(t, err, &appErr)
			assert.Equal(t, workflows.ErrTypeServerListFailed, appErr.Type())
			assert.True(t, appErr.NonRetryable())
			assert.Contains(t, appErr.Message(), tc.want)

			task := h.lastProjection(taskID1)
			assert.Equal(t, storage.StatusFailed, task.Status)
			require.NotNil(t, task.Error)
			assert.Contains(t, *task.Error, tc.want)
			assert.Empty(t, task.Steps)
		})
	}
}

// A cancel while the servers are being listed ends the task Cancelled with
// no step run.
func TestServerCreate_NoServersCancelledWhileListing(t *testing.T) {
	h := newHarness(t)
	h.env.OnActivity(h.acts.ListServers, mock.Anything, mock.Anything).Return(
		func(ctx context.Context, _ activities.NuStep) ([]string, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		})
	h.env.RegisterDelayedCallback(h.env.CancelWorkflow, time.Second)
	h.env.ExecuteWorkflow(workflows.ServerCreateWorkflowName, serverInput(taskID1))
	err := h.workflowErr()
	var canceled *temporal.CanceledError
	require.ErrorAs(t, err, &canceled)
	assert.Empty(t, h.startedSteps())
	assert.Equal(t, storage.StatusCancelled, h.lastProjection(taskID1).Status)
}

// Histories recorded before `servers: []` meant every server replay as they
// ran: no servers failed validation.
func TestServerCreate_NoServersBeforeTheChangeFailsValidation(t *testing.T) {
	h := newHarness(t)
	h.env.OnGetVersion(workflows.ListServersChange, workflow.DefaultVersion, 1).Return(workflow.DefaultVersion)
	h.env.ExecuteWorkflow(workflows.ServerCreateWorkflowName, serverInput(taskID1))
	err := h.workflowErr()
	var appErr *temporal.ApplicationError
	require.ErrorAs(t, err, &appErr)
	assert.Equal(t, workflows.ErrTypeInvalidInput, appErr.Type())
	assert.True(t, strings.HasPrefix(appErr.Message(), "servers: at least one server is required"), appErr.Message())
}
