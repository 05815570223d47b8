//go:build recordhistory

// The history recorder runs the workflows against a real (in-process)
// Temporal server and writes their event histories to testdata/, where
// replay_test.go replays them. It is behind a build tag so that the default
// test binary does not link the Temporal server. Re-record with:
//
//	go test -tags recordhistory -run TestRecordHistories -count=1 ./workflows/
//
// (RECORD_ONLY=<file>[,<file>] writes only those histories, so that adding
// one leaves the others as they were recorded) and commit the changed
// testdata/*.json together with the workflow change
// that made re-recording necessary (only ever for deliberate, versioned
// changes: a replay failure on old histories means running workflows would
// break).

package workflows_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/api/temporalproto"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
	sdkworker "go.temporal.io/sdk/worker"
	"go.temporal.io/server/temporaltest"

	"github.com/provisioning/orchestrator/activities"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/worker"
	"github.com/provisioning/orchestrator/workflows"
)

// Workflow (task) IDs of the recorded histories.
const (
	replayRetryTaskID  = "7d0f4b4e-5a51-4d0c-8a8e-2b7f3c9d0a01"
	replayCancelTaskID = "7d0f4b4e-5a51-4d0c-8a8e-2b7f3c9d0a02"
	replayFailedTaskID = "7d0f4b4e-5a51-4d0c-8a8e-2b7f3c9d0a03"
	replayListTaskID   = "7d0f4b4e-5a51-4d0c-8a8e-2b7f3c9d0a04"
	replayHookTaskID   = "7d0f4b4e-5a51-4d0c-8a8e-2b7f3c9d0a05"
	replayBatchTaskID  = "7d0f4b4e-5a51-4d0c-8a8e-2b7f3c9d0a06"
)

func TestRecordHistories(t *testing.T) {
	srv := temporaltest.NewServer(temporaltest.WithT(t))
	c := srv.GetDefaultClient()
	store := newFakeStore()
	acts := &activities.Activities{Store: store, Logger: discardLogger}
	const taskQueue = "record-histories"

	// Steps of the cancelled task report here once they are running.
	var startedMu sync.Mutex
	started := map[string]bool{}
	allStarted := make(chan struct{})
	// cancelledSteps counts steps of that task that have returned; the
	// Cancelled projection must come after both (WaitForCancellation).
	var cancelledSteps, stepsDoneAtCancelledProjection atomic.Int32
	stepsDoneAtCancelledProjection.Store(-1)

	// runNushell stands in for activities.Activities.RunNushell (whose
	// Runner needs nu): same name, same input and output types, same error
	// conventions.
	runNushell := func(ctx context.Context, step activities.NuStep) (activities.NuStepResult, error) {
		info := activity.GetInfo(ctx)
		res := activities.NuStepResult{Stdout: "created " + step.Step + "\n", DurationMS: 5, Attempt: info.Attempt}
		switch step.TaskID {
		case replayRetryTaskID:
			if step.Step == "web-02" && info.Attempt == 1 {
				res.ExitCode, res.Stdout, res.Stderr = 1, "", "ssh: connection reset by peer"
				return res, temporal.NewApplicationErrorWithOptions("exit status 1", activities.ErrTypeNushellExit,
					temporal.ApplicationErrorOptions{Details: []any{res}})
			}
		case replayCancelTaskID:
			startedMu.Lock()
			started[step.Step] = true
			if len(started) == 2 {
				close(allStarted)
			}
			startedMu.Unlock()
			// Like the real activity: heartbeat until cancelled, then
			// report the cancellation.
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			for {
				activity.RecordHeartbeat(ctx, step.Step)
				select {
				case <-ctx.Done():
					cancelledSteps.Add(1)
					return res, ctx.Err()
				case <-tick.C:
				}
			}
		case replayFailedTaskID:
			res.ExitCode, res.Stdout, res.Stderr = 2, "", "error: unknown taskserv version"
			return res, temporal.NewApplicationErrorWithOptions("exit status 2", activities.ErrTypeNushellPermanent,
				temporal.ApplicationErrorOptions{NonRetryable: true, Details: []any{res}})
		}
		// The batch's cluster fails for good when applied (its plan passes).
		if slices.Equal(step.Args[:2], []string{"cluster", "create"}) && !slices.Contains(step.Args, "--check") {
			res.ExitCode, res.Stdout, res.Stderr = 3, "", "error: invalid cluster configuration"
			return res, temporal.NewApplicationErrorWithOptions("exit status 3", activities.ErrTypeNushellPermanent,
				temporal.ApplicationErrorOptions{NonRetryable: true, Details: []any{res}})
		}
		return res, nil
	}
	projectTask := func(ctx context.Context, task storage.Task) error {
		if task.ID == replayCancelTaskID && task.Status == storage.StatusCancelled {
			stepsDoneAtCancelledProjection.Store(cancelledSteps.Load())
		}
		return acts.ProjectTask(ctx, task)
	}
	srv.NewWorker(taskQueue, func(r sdkworker.Registry) {
		worker.Register(r, nil)
		r.RegisterActivityWithOptions(runNushell, activity.RegisterOptions{Name: "RunNushell"})
		r.RegisterActivityWithOptions(projectTask, activity.RegisterOptions{Name: "ProjectTask"})
		r.RegisterActivityWithOptions(acts.ProjectTasks, activity.RegisterOptions{Name: "ProjectTasks"})
		r.RegisterActivityWithOptions(acts.RecordAudit, activity.RegisterOptions{Name: "RecordAudit"})
		// Stands in for activities.Activities.ListServers: the settings
		// define two servers.
		r.RegisterActivityWithOptions(func(context.Context, activities.NuStep) ([]string, error) {
			return []string{"web-01", "web-02"}, nil
		}, activity.RegisterOptions{Name: "ListServers"})
		// Stands in for activities.Activities.DeliverWebhook: the
		// receiver fails its first request (retried), then accepts.
		var hookCalls atomic.Int32
		r.RegisterActivityWithOptions(func(ctx context.Context, d activities.WebhookDelivery) (activities.WebhookResult, error) {
			if hookCalls.Add(1) == 1 {
				return activities.WebhookResult{}, temporal.NewApplicationError("receiver answered 500", activities.ErrTypeWebhookUnavailable)
			}
			return activities.WebhookResult{Status: 204, Attempt: activity.GetInfo(ctx).Attempt}, nil
		}, activity.RegisterOptions{Name: "DeliverWebhook"})
	})

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := func(workflowType string, id string, in any) client.WorkflowRun {
		t.Helper()
		run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: taskQueue}, workflowType, in)
		require.NoError(t, err)
		return run
	}

	// 1. Two servers, web-02 fails once and succeeds on its retry.
	{
		in := serverInput(replayRetryTaskID, "web-01", "web-02")
		in.Policy.InitialInterval = 100 * time.Millisecond
		run := start(workflows.ServerCreateWorkflowName, in.TaskID, in)
		var task storage.Task
		require.NoError(t, run.Get(ctx, &task))
		require.Equal(t, storage.StatusCompleted, task.Status)
		require.Equal(t, int32(2), task.Steps[1].Attempts)
		writeHistory(t, ctx, c, run, replayRetryFile)
	}

	// 2. Two servers, cancelled while both are running.
	{
		in := serverInput(replayCancelTaskID, "web-01", "web-02")
		// Cancellation reaches an activity through heartbeats, which the
		// SDK throttles to 80% of the heartbeat timeout.
		in.Policy.HeartbeatTimeout = 2 * time.Second
		run := start(workflows.ServerCreateWorkflowName, in.TaskID, in)
		select {
		case <-allStarted:
		case <-ctx.Done():
			t.Fatal("steps of the task to cancel did not start")
		}
		require.NoError(t, c.CancelWorkflow(ctx, run.GetID(), run.GetRunID()))
		err := run.Get(ctx, nil)
		require.Error(t, err)
		require.True(t, temporal.IsCanceledError(err), "want canceled, got %v", err)
		last, err := store.last(replayCancelTaskID)
		require.NoError(t, err)
		require.Equal(t, storage.StatusCancelled, last.Status)
		require.Equal(t, int32(2), stepsDoneAtCancelledProjection.Load(),
			"the task said Cancelled before its steps had stopped")
		writeHistory(t, ctx, c, run, replayCancelFile)
	}

	// 3. Taskserv for the whole infra, permanent failure.
	{
		in := workflows.TaskservCreateInput{
			Common:   workflows.Common{TaskID: replayFailedTaskID, Infra: "production", Settings: "./settings.yaml", CreatedAt: createdAt},
			Taskserv: "kubernetes",
		}
		run := start(workflows.TaskservCreateWorkflowName, in.TaskID, in)
		err := run.Get(ctx, nil)
		require.Error(t, err)
		last, err := store.last(replayFailedTaskID)
		require.NoError(t, err)
		require.Equal(t, storage.StatusFailed, last.Status)
		writeHistory(t, ctx, c, run, replayFailedFile)
	}

	// 4. No servers: every server the settings define (listed, then created).
	{
		in := serverInput(replayListTaskID)
		run := start(workflows.ServerCreateWorkflowName, in.TaskID, in)
		var task storage.Task
		require.NoError(t, run.Get(ctx, &task))
		require.Equal(t, storage.StatusCompleted, task.Status)
		require.Len(t, task.Steps, 2)
		writeHistory(t, ctx, c, run, replayListFile)
	}

	// 5. A schedule's run: ScheduledRun starts the drift check (server
	// create in check mode) as its child task and waits for it.
	{
		in := workflows.ScheduledRunInput{ScheduleID: "nightly", Action: workflows.ScheduleAction{
			Type: workflows.ScheduleActionServer, Infra: "production", Settings: "./settings.yaml", CheckMode: true,
			Servers: []string{"web-01"}}}
		run := start(workflows.ScheduledRunWorkflowName, replayScheduledWorkflowID, in)
		var task storage.Task
		require.NoError(t, run.Get(ctx, &task))
		require.Equal(t, storage.StatusCompleted, task.Status)
		require.Equal(t, workflows.ScheduledTaskID(replayScheduledWorkflowID), task.ID)
		writeHistory(t, ctx, c, run, replayScheduledFile)
	}

	// 6. One server with a webhook: Running (retried once) and Completed
	// delivered in order, the workflow waiting for the last.
	{
		in := serverInput(replayHookTaskID, "web-01")
		in.Webhook = &workflows.Webhook{URL: "https://hooks.example.com/orchestrator"}
		run := start(workflows.ServerCreateWorkflowName, in.TaskID, in)
		var task storage.Task
		require.NoError(t, run.Get(ctx, &task))
		require.Equal(t, storage.StatusCompleted, task.Status)
		writeHistory(t, ctx, c, run, replayHookFile)
	}

	// 7. A batch that requires approval: plan (3 check runs), approved by
	// an update, applied in dependency order; the cluster fails, so the
	// server and taskserv are rolled back, taskserv first.
	{
		in := workflows.BatchInput{
			Common: workflows.Common{TaskID: replayBatchTaskID, Infra: "production", Settings: "./settings.yaml", CreatedAt: createdAt,
				Policy: workflows.ExecPolicy{InitialInterval: 100 * time.Millisecond}},
			Operations: []workflows.Operation{
				{ID: "web", Type: "server", Servers: []string{"web-01"}},
				{ID: "k8s", Type: "taskserv", Taskserv: "kubernetes", Servers: []string{"web-01"}, DependsOn: []string{"web"}},
				{ID: "cluster", Type: "cluster", Cluster: "buildkit", DependsOn: []string{"k8s"}},
			},
			RequireApproval: true,
		}
		run := start(workflows.BatchWorkflowName, in.TaskID, in)
		require.Eventually(t, func() bool {
			v, err := c.QueryWorkflow(ctx, in.TaskID, "", workflows.StatusQuery)
			var task storage.Task
			return err == nil && v.Get(&task) == nil && task.Batch != nil && task.Batch.Phase == storage.PhaseAwaitingApproval
		}, time.Minute, 50*time.Millisecond)
		h, err := c.UpdateWorkflow(ctx, client.UpdateWorkflowOptions{WorkflowID: in.TaskID, UpdateName: workflows.ApproveUpdate,
			Args: []any{workflows.ApprovalRequest{Approver: "alice"}}, WaitForStage: client.WorkflowUpdateStageCompleted})
		require.NoError(t, err)
		require.NoError(t, h.Get(ctx, nil))
		err = run.Get(ctx, nil)
		require.Error(t, err)
		last, err := store.last(replayBatchTaskID)
		require.NoError(t, err)
		require.Equal(t, storage.StatusFailed, last.Status)
		require.Len(t, last.Batch.Compensations, 2)
		require.Equal(t, "taskserv kubernetes on web-01", last.Batch.Compensations[0].Target)
		writeHistory(t, ctx, c, run, replayBatchFile)
	}
}

// writeHistory writes the run's full history in the JSON format of
// `temporal workflow show --output json`, which
// WorkflowReplayer.ReplayWorkflowHistoryFromJSONFile reads.
func writeHistory(t *testing.T, ctx context.Context, c client.Client, run client.WorkflowRun, name string) {
	t.Helper()
	if only := os.Getenv("RECORD_ONLY"); only != "" && !slices.Contains(strings.Split(only, ","), name) {
		t.Logf("kept %s (RECORD_ONLY=%s)", name, only)
		return
	}
	hist := &historypb.History{}
	it := c.GetWorkflowHistory(ctx, run.GetID(), run.GetRunID(), false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for it.HasNext() {
		ev, err := it.Next()
		require.NoError(t, err)
		hist.Events = append(hist.Events, ev)
	}
	b, err := temporalproto.CustomJSONMarshalOptions{Indent: "  "}.Marshal(hist)
	require.NoError(t, err)
	path := filepath.Join("testdata", name)
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, append(b, '\n'), 0o644))
	t.Logf("wrote %s (%d events)", path, len(hist.Events))
}
