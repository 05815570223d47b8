package workflows_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	commonpb "go.temporal.io/api/common/v1"
	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/sdk/converter"

	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/workflows"
)

func finishedTask(wfType string, st storage.TaskStatus, steps map[string]storage.TaskStatus, order ...string) storage.Task {
	t := storage.Task{ID: taskID1, WorkflowType: wfType, Status: st, Priority: 2}
	for _, name := range order {
		t.Steps = append(t.Steps, storage.StepResult{Name: name, Status: steps[name]})
	}
	return t
}

func TestRetryRunsOnlyWhatDidNotComplete(t *testing.T) {
	orig := serverInput(taskID1, "web-01", "web-02", "web-03", "web-04")
	orig.CheckMode, orig.Priority, orig.FairnessWeight = true, 4, 2
	old := finishedTask(workflows.ServerCreateWorkflowName, storage.StatusCancelled, map[string]storage.TaskStatus{
		"web-01": storage.StatusCompleted, "web-02": storage.StatusFailed, "web-03": storage.StatusCancelled, "web-04": storage.StatusPending,
	}, "web-01", "web-02", "web-03", "web-04")

	got, err := workflows.Retry(&orig, old)
	require.NoError(t, err)
	in := got.(*workflows.ServerCreateInput)
	assert.Equal(t, []string{"web-02", "web-03", "web-04"}, in.Servers)
	assert.Equal(t, []string{taskID1}, in.Dependencies)
	assert.Empty(t, in.TaskID, "the caller names the new task")
	assert.Equal(t, 2, in.Priority, "the task's current priority (an operator may have changed it)")
	assert.Equal(t, "production", in.Infra)
	assert.Equal(t, "./settings.yaml", in.Settings)
	assert.True(t, in.CheckMode)
	assert.True(t, in.Wait)
	assert.Equal(t, []string{"web-01", "web-02", "web-03", "web-04"}, orig.Servers, "the original is not changed")
	assert.Equal(t, "server create production: web-02, web-03, web-04", got.Task().Summary())
}

func TestRetrySingleStepTasksRunAsTheyWere(t *testing.T) {
	cluster := workflows.ClusterCreateInput{Common: serverInput(taskID1).Common, Cluster: "buildkit"}
	got, err := workflows.Retry(&cluster, finishedTask(workflows.ClusterCreateWorkflowName, storage.StatusFailed,
		map[string]storage.TaskStatus{"buildkit": storage.StatusFailed}, "buildkit"))
	require.NoError(t, err)
	assert.Equal(t, "buildkit", got.(*workflows.ClusterCreateInput).Cluster)

	all := workflows.TaskservCreateInput{Common: serverInput(taskID1).Common, Taskserv: "kubernetes"}
	got, err = workflows.Retry(&all, finishedTask(workflows.TaskservCreateWorkflowName, storage.StatusFailed,
		map[string]storage.TaskStatus{"kubernetes": storage.StatusFailed}, "kubernetes"))
	require.NoError(t, err)
	assert.Empty(t, got.(*workflows.TaskservCreateInput).Servers, "a whole-infra install stays one")

	some := workflows.TaskservCreateInput{Common: serverInput(taskID1).Common, Taskserv: "kubernetes", Servers: []string{"cp-01", "w-01"}}
	got, err = workflows.Retry(&some, finishedTask(workflows.TaskservCreateWorkflowName, storage.StatusFailed,
		map[string]storage.TaskStatus{"cp-01": storage.StatusCompleted, "w-01": storage.StatusFailed}, "cp-01", "w-01"))
	require.NoError(t, err)
	assert.Equal(t, []string{"w-01"}, got.(*workflows.TaskservCreateInput).Servers)

	// Failed before any step (listing the servers failed): as it was.
	every := serverInput(taskID1)
	got, err = workflows.Retry(&every, finishedTask(workflows.ServerCreateWorkflowName, storage.StatusFailed, nil))
	require.NoError(t, err)
	assert.Empty(t, got.(*workflows.ServerCreateInput).Servers, "servers: [] lists them again")
}

func TestRetryRefusesWhatCannotBeRetried(t *testing.T) {
	orig := serverInput(taskID1, "web-01")
	for _, tc := range []struct {
		name string
		task storage.Task
		want string
	}{
		{"running", finishedTask(workflows.ServerCreateWorkflowName, storage.StatusRunning, nil), "it is still Running; wait for it to end or cancel it first"},
		{"pending", finishedTask(workflows.ServerCreateWorkflowName, storage.StatusPending, nil), "it is still Pending"},
		{"completed", finishedTask(workflows.ServerCreateWorkflowName, storage.StatusCompleted, nil), "it completed; there is nothing to retry"},
		{"test environment", finishedTask(workflows.TestEnvironmentWorkflowName, storage.StatusFailed, nil), "it is a test environment"},
		{"unknown type", finishedTask("Other", storage.StatusFailed, nil), `it is a "Other" task`},
		{"cancelled after every step", finishedTask(workflows.ServerCreateWorkflowName, storage.StatusCancelled,
			map[string]storage.TaskStatus{"web-01": storage.StatusCompleted}, "web-01"), "every step completed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := workflows.Retry(&orig, tc.task)
			var nr *workflows.NotRetryableError
			require.ErrorAs(t, err, &nr)
			assert.Contains(t, err.Error(), "task "+taskID1+" cannot be retried: "+tc.want)
		})
	}
}

// The record fallback parses back exactly what Task() projected.
func TestInputFromTaskRoundTrips(t *testing.T) {
	server := serverInput(taskID1, "web-01", "web-02")
	server.CheckMode, server.Priority = true, 5
	taskserv := workflows.TaskservCreateInput{Common: serverInput(taskID1).Common, Taskserv: "kubernetes", Servers: []string{"cp-01"}}
	cluster := workflows.ClusterCreateInput{Common: serverInput(taskID1).Common, Cluster: "buildkit"}
	cluster.Wait = false
	for _, in := range []workflows.ProvisioningInput{&server, &taskserv, &cluster} {
		spec := in.Task()
		rec := storage.Normalize(storage.Task{ID: taskID1, WorkflowType: spec.Workflow, Args: spec.Args,
			CreatedAt: createdAt, Priority: in.Fields().Priority, Status: storage.StatusFailed})
		got, err := workflows.InputFromTask(rec)
		require.NoError(t, err, spec.Workflow)
		want := in.Fields()
		if want.Priority == 0 {
			want.Priority = storage.DefaultPriority
		}
		assert.Equal(t, in, got, spec.Workflow)
	}

	_, err := workflows.InputFromTask(storage.Task{ID: taskID1, WorkflowType: workflows.ClusterCreateWorkflowName, Status: storage.StatusFailed})
	var nr *workflows.NotRetryableError
	require.ErrorAs(t, err, &nr, "a task that never ran has no args")
	_, err = workflows.InputFromTask(storage.Task{ID: taskID1, WorkflowType: workflows.ServerCreateWorkflowName,
		Args: []string{"--settings", "s", "--infra", "p"}, Status: storage.StatusFailed})
	require.ErrorAs(t, err, &nr)
}

func TestDecodeStartInput(t *testing.T) {
	orig := serverInput(taskID1, "web-01")
	payloads, err := converter.GetDefaultDataConverter().ToPayloads(orig)
	require.NoError(t, err)
	start := func(wfType string, input *commonpb.Payloads) *historypb.HistoryEvent {
		return &historypb.HistoryEvent{EventType: enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED,
			Attributes: &historypb.HistoryEvent_WorkflowExecutionStartedEventAttributes{
				WorkflowExecutionStartedEventAttributes: &historypb.WorkflowExecutionStartedEventAttributes{
					WorkflowType: &commonpb.WorkflowType{Name: wfType}, Input: input}}}
	}
	got, err := workflows.DecodeStartInput(taskID1, workflows.ServerCreateWorkflowName, start(workflows.ServerCreateWorkflowName, payloads))
	require.NoError(t, err)
	assert.Equal(t, &orig, got)

	var nr *workflows.NotRetryableError
	_, err = workflows.DecodeStartInput(taskID1, workflows.ClusterCreateWorkflowName, start(workflows.ServerCreateWorkflowName, payloads))
	require.ErrorAs(t, err, &nr)
	assert.Contains(t, err.Error(), "its workflow is a ServerCreate, but its record says ClusterCreate")
	_, err = workflows.DecodeStartInput(taskID1, workflows.ServerCreateWorkflowName, &historypb.HistoryEvent{EventType: enumspb.EVENT_TYPE_TIMER_FIRED})
	require.ErrorAs(t, err, &nr)
}
