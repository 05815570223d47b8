package workflows_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/log"
	sdkworker "go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/worker"
	"github.com/provisioning/orchestrator/workflows"
)

// Histories recorded from a real server by record_history_test.go
// (go test -tags recordhistory -run TestRecordHistories -count=1 ./workflows/).
const (
	replayRetryFile  = "server_create_retry.json"
	replayCancelFile = "server_create_cancelled.json"
	replayFailedFile = "taskserv_create_failed.json"
	replayListFile   = "server_create_list_servers.json"
	// replayScheduledFile is a schedule's run (ScheduledRun and its child).
	replayScheduledFile = "scheduled_run.json"
	// replayScheduledWorkflowID is that run's workflow ID, as Temporal
	// names a scheduled run (the schedule's action id and the time).
	replayScheduledWorkflowID = "orchestrator-nightly-2030-01-02T02:00:00Z"
	replayHookFile            = "server_create_webhook.json"
	// replayBatchFile is a batch: plan, approval, apply, failure, rollback.
	replayBatchFile = "batch_approved_rolled_back.json"
)

func newReplayer() sdkworker.WorkflowReplayer {
	r := sdkworker.NewWorkflowReplayer()
	worker.RegisterWorkflows(r)
	return r
}

func loadHistory(t *testing.T, name string) *historypb.History {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", name))
	require.NoError(t, err, "record it with: go test -tags recordhistory -run TestRecordHistories -count=1 ./workflows/")
	defer f.Close()
	hist, err := client.HistoryFromJSON(f, client.HistoryJSONOptions{})
	require.NoError(t, err)
	require.NotEmpty(t, hist.Events)
	return hist
}

func countEvents(hist *historypb.History, typ enumspb.EventType) int {
	n := 0
	for _, ev := range hist.Events {
		if ev.GetEventType() == typ {
			n++
		}
	}
	return n
}

// The recorded histories are what they claim to be, so that replaying them
// exercises retries, cancellation and failure.
func TestReplayHistories_Content(t *testing.T) {
	for _, tc := range []struct {
		file         string
		workflowType string
		closeEvent   enumspb.EventType
		activities   int // RunNushell activities scheduled
	}{
		{replayRetryFile, workflows.ServerCreateWorkflowName, enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED, 2},
		{replayCancelFile, workflows.ServerCreateWorkflowName, enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED, 2},
		{replayFailedFile, workflows.TaskservCreateWorkflowName, enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED, 1},
		// ListServers, then one RunNushell per listed server.
		{replayListFile, workflows.ServerCreateWorkflowName, enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED, 3},
		// One RunNushell, two DeliverWebhook (Running, Completed).
		{replayHookFile, workflows.ServerCreateWorkflowName, enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED, 3},
	} {
		t.Run(tc.file, func(t *testing.T) {
			hist := loadHistory(t, tc.file)
			first, last := hist.Events[0], hist.Events[len(hist.Events)-1]
			require.Equal(t, enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED, first.GetEventType())
			assert.Equal(t, tc.workflowType, first.GetWorkflowExecutionStartedEventAttributes().GetWorkflowType().GetName())
			assert.Equal(t, tc.closeEvent, last.GetEventType())
			assert.Equal(t, tc.activities, countEvents(hist, enumspb.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED))
			// Every projection is a local activity marker; at least Running
			// and the terminal one.
			assert.GreaterOrEqual(t, countEvents(hist, enumspb.EVENT_TYPE_MARKER_RECORDED), 2)
		})
	}

	t.Run("retry is recorded", func(t *testing.T) {
		hist := loadHistory(t, replayRetryFile)
		var attempts []int32
		for _, ev := range hist.Events {
			if a := ev.GetActivityTaskStartedEventAttributes(); a != nil {
				attempts = append(attempts, a.GetAttempt())
			}
		}
		assert.ElementsMatch(t, []int32{1, 2}, attempts, "web-01 succeeded first time, web-02 on its second attempt")
	})
	t.Run("scheduled run is recorded", func(t *testing.T) {
		hist := loadHistory(t, replayScheduledFile)
		first := hist.Events[0]
		assert.Equal(t, workflows.ScheduledRunWorkflowName, first.GetWorkflowExecutionStartedEventAttributes().GetWorkflowType().GetName())
		assert.Equal(t, enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED, hist.Events[len(hist.Events)-1].GetEventType())
		assert.Equal(t, 1, countEvents(hist, enumspb.EVENT_TYPE_MARKER_RECORDED), "the task id's side effect")
		for _, ev := range hist.Events {
			if a := ev.GetStartChildWorkflowExecutionInitiatedEventAttributes(); a != nil {
				assert.Equal(t, workflows.ServerCreateWorkflowName, a.GetWorkflowType().GetName())
				assert.Equal(t, workflows.ScheduledTaskID(replayScheduledWorkflowID), a.GetWorkflowId())
			}
		}
		assert.Equal(t, 1, countEvents(hist, enumspb.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED))
	})
	t.Run("webhook deliveries are recorded", func(t *testing.T) {
		hist := loadHistory(t, replayHookFile)
		var types []string
		var attempts []int32
		for _, ev := range hist.Events {
			if a := ev.GetActivityTaskScheduledEventAttributes(); a != nil {
				types = append(types, a.GetActivityType().GetName())
			}
			if a := ev.GetActivityTaskStartedEventAttributes(); a != nil {
				attempts = append(attempts, a.GetAttempt())
			}
		}
		// The step starts first; Running's delivery goes out beside it
		// (the same workflow task), Completed's after it.
		assert.Equal(t, []string{"RunNushell", "DeliverWebhook", "DeliverWebhook"}, types)
		assert.Contains(t, attempts, int32(2), "the first delivery was retried")
	})
	t.Run("cancel is recorded", func(t *testing.T) {
		hist := loadHistory(t, replayCancelFile)
		assert.Equal(t, 1, countEvents(hist, enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED))
		assert.Equal(t, 2, countEvents(hist, enumspb.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED))
		assert.Equal(t, 2, countEvents(hist, enumspb.EVENT_TYPE_ACTIVITY_TASK_CANCELED),
			"WaitForCancellation: the workflow waited for both steps to acknowledge")
	})
}

// TestReplayHistories replays every recorded history against the current
// workflow code: a failure means a change is not replay-safe and would break
// running workflows (use workflow.GetVersion).
func TestReplayHistories(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.json"))
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(files), 3, "recorded histories are missing from testdata/")
	for _, path := range files {
		t.Run(filepath.Base(path), func(t *testing.T) {
			require.NoError(t, newReplayer().ReplayWorkflowHistoryFromJSONFile(log.NewStructuredLogger(discardLogger), path))
		})
	}
}

// The replayer really compares the code with the history: a ServerCreate
// that no longer runs one activity per server fails to replay.
func TestReplayHistories_DetectsNondeterminism(t *testing.T) {
	r := sdkworker.NewWorkflowReplayer()
	sequentialWithoutProjection := func(ctx workflow.Context, in workflows.ServerCreateInput) (storage.Task, error) {
		ctx = workflow.WithActivityOptions(ctx, workflow.ActivityOptions{StartToCloseTimeout: 1})
		for _, s := range in.Servers {
			if err := workflow.ExecuteActivity(ctx, "RunNushell", in.ServerArgs(s)).Get(ctx, nil); err != nil {
				return storage.Task{}, err
			}
		}
		return storage.Task{}, nil
	}
	r.RegisterWorkflowWithOptions(sequentialWithoutProjection, workflow.RegisterOptions{Name: workflows.ServerCreateWorkflowName})
	err := r.ReplayWorkflowHistoryFromJSONFile(log.NewStructuredLogger(discardLogger), filepath.Join("testdata", replayRetryFile))
	require.Error(t, err)
	// TMPRL1100 is the SDK's code for nondeterminism errors.
	msg := err.Error()
	assert.True(t, strings.Contains(msg, "TMPRL1100") || strings.Contains(strings.ToLower(msg), "nondetermin"),
		"want a nondeterminism error, got %v", err)
}

// The recorded batch is what it says: six child tasks (three check runs,
// then the applies up to the failing cluster), one accepted approval, and
// the two compensations as the batch's own activities.
func TestReplayHistories_Batch(t *testing.T) {
	hist := loadHistory(t, replayBatchFile)
	assert.Equal(t, 6, countEvents(hist, enumspb.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED))
	assert.Equal(t, 1, countEvents(hist, enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED))
	assert.Equal(t, 2, countEvents(hist, enumspb.EVENT_TYPE_ACTIVITY_TASK_COMPLETED))
	assert.Equal(t, 1, countEvents(hist, enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED))
	require.NoError(t, newReplayer().ReplayWorkflowHistory(log.NewStructuredLogger(discardLogger), hist))
}
