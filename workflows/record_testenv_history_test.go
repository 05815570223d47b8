//go:build recordhistory

// Records the TestEnvironment history that testenv_test.go and
// replay_test.go replay, the same way record_history_test.go records the
// provisioning ones (and re-recorded by the same command):
//
//	go test -tags recordhistory -run TestRecordHistories -count=1 ./workflows/
//
// or only this one with -run TestRecordHistories_TestEnvironment.

package workflows_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	sdkworker "go.temporal.io/sdk/worker"
	"go.temporal.io/server/temporaltest"

	"github.com/provisioning/orchestrator/activities"
	"github.com/provisioning/orchestrator/testenv"
	"github.com/provisioning/orchestrator/worker"
	"github.com/provisioning/orchestrator/workflows"
)

// replayTestEnvID is the environment (workflow) ID of the recorded history.
const replayTestEnvID = "7d0f4b4e-5a51-4d0c-8a8e-2b7f3c9d0a04"

func TestRecordHistories_TestEnvironment(t *testing.T) {
	srv := temporaltest.NewServer(temporaltest.WithT(t))
	c := srv.GetDefaultClient()
	store := newFakeStore()
	acts := &activities.Activities{Store: store, Logger: discardLogger}
	const taskQueue = "record-testenv-history"

	// Stand-ins for the Docker activities (the real ones need an engine):
	// same names, input and output types.
	createEnvironment := func(_ context.Context, in activities.CreateEnvInput) (testenv.EnvInfo, error) {
		return envInfo(in.Plan, in.Start), nil
	}
	startEnvironment := func(context.Context, string) error { return nil }
	inspectEnvironment := func(_ context.Context, envID string) ([]testenv.NodeStatus, error) {
		plan, err := testenv.BuildPlan(envID, envRequest(), nil, testImage)
		if err != nil {
			return nil, err
		}
		return engineNodes(plan, "running"), nil
	}
	runTests := func(_ context.Context, in activities.RunTestsInput) (testenv.TestRun, error) {
		return runResult(in), nil
	}
	removeEnvironment := func(context.Context, string) (testenv.RemovedCounts, error) {
		return removedCounts, nil
	}
	srv.NewWorker(taskQueue, func(r sdkworker.Registry) {
		worker.Register(r, nil)
		for name, fn := range map[string]any{
			"CreateEnvironment":  createEnvironment,
			"StartEnvironment":   startEnvironment,
			"InspectEnvironment": inspectEnvironment,
			"RunTests":           runTests,
			"RemoveEnvironment":  removeEnvironment,
			// The real projection, against the fake store.
			"ProjectEnvironment": acts.ProjectEnvironment,
		} {
			r.RegisterActivityWithOptions(fn, activity.RegisterOptions{Name: name})
		}
	})

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// Without auto_start, so that the run starts the containers: create,
	// one run, cleanup signal.
	req := envRequest()
	req.AutoStart = false
	plan, err := testenv.BuildPlan(replayTestEnvID, req, nil, testImage)
	require.NoError(t, err)
	in := workflows.TestEnvInput{EnvID: replayTestEnvID, Request: req, Plan: plan, TTL: time.Hour, CreatedAt: createdAt}
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: replayTestEnvID, TaskQueue: taskQueue}, workflows.TestEnvironmentWorkflowName, in)
	require.NoError(t, err)

	// A run before the environment is ready would be rejected.
	require.Eventually(t, func() bool {
		v, err := c.QueryWorkflow(ctx, run.GetID(), run.GetRunID(), workflows.StatusQuery)
		if err != nil {
			return false
		}
		var st testenv.EnvState
		return v.Get(&st) == nil && st.Status == workflows.EnvReady
	}, time.Minute, 50*time.Millisecond)

	h, err := c.UpdateWorkflow(ctx, client.UpdateWorkflowOptions{
		WorkflowID:   run.GetID(),
		RunID:        run.GetRunID(),
		UpdateID:     "run-1",
		UpdateName:   workflows.RunTestsUpdate,
		Args:         []any{testenv.RunRequest{}},
		WaitForStage: client.WorkflowUpdateStageCompleted,
	})
	require.NoError(t, err)
	var tr testenv.TestRun
	require.NoError(t, h.Get(ctx, &tr))
	require.True(t, tr.Passed)
	require.Equal(t, 1, tr.Number)
	require.Equal(t, len(plan.DefaultTests()), tr.Total)

	require.NoError(t, c.SignalWorkflow(ctx, run.GetID(), run.GetRunID(), workflows.CleanupSignal, nil))
	var final testenv.EnvState
	require.NoError(t, run.Get(ctx, &final))
	require.Equal(t, workflows.EnvCleaned, final.Status)
	require.Equal(t, "cleanup requested", final.EndReason)
	require.Len(t, final.Runs, 1)
	last, err := store.last(replayTestEnvID)
	require.NoError(t, err)
	require.Equal(t, final.Version, last.Version)

	writeHistory(t, ctx, c, run, replayTestEnvFile)
}
