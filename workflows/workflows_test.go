package workflows_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/provisioning/orchestrator/activities"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/worker"
	"github.com/provisioning/orchestrator/workflows"
)

// t0 is the workflow clock at start; createdAt is when the API accepted the
// request (a little earlier).
var (
	t0        = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	createdAt = t0.Add(-time.Minute)
)

// nuCall is one attempt of one RunNushell call as the mock saw it.
type nuCall struct {
	step activities.NuStep
	info activity.Info
	at   time.Time // workflow clock when the mocked attempt returned
}

type runFunc func(ctx context.Context, step activities.NuStep) (activities.NuStepResult, error)

// harness wires a TestWorkflowEnvironment the way the worker does
// (worker.Register with a real *activities.Activities), with a fake store
// behind the real ProjectTask local activity and RunNushell mocked.
type harness struct {
	t     *testing.T
	env   *testsuite.TestWorkflowEnvironment
	acts  *activities.Activities
	store *fakeStore

	mu      sync.Mutex
	calls   []nuCall            // every mocked attempt that returned
	started []activities.NuStep // every RunNushell attempt that started
	// inflight/maxInflight count RunNushell activities between their start
	// and their completion as the test environment reports them.
	inflight, maxInflight int
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	var s testsuite.WorkflowTestSuite
	s.SetLogger(log.NewStructuredLogger(discardLogger))
	env := s.NewTestWorkflowEnvironment()
	env.SetStartTime(t0)
	env.SetTestTimeout(30 * time.Second)
	store := newFakeStore()
	acts := &activities.Activities{Store: store, Logger: discardLogger}
	worker.Register(env, acts)
	h := &harness{t: t, env: env, acts: acts, store: store}
	env.SetOnActivityStartedListener(func(info *activity.Info, _ context.Context, args converter.EncodedValues) {
		if info.ActivityType.Name != "RunNushell" {
			return
		}
		var step activities.NuStep
		if err := args.Get(&step); err != nil {
			t.Errorf("decode RunNushell input: %v", err)
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		h.started = append(h.started, step)
		h.inflight++
		h.maxInflight = max(h.maxInflight, h.inflight)
	})
	env.SetOnActivityCompletedListener(func(info *activity.Info, _ converter.EncodedValue, _ error) {
		if info.ActivityType.Name != "RunNushell" {
			return
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		h.inflight--
	})
	t.Cleanup(func() { env.AssertExpectations(t) })
	return h
}

// mockRun mocks RunNushell for steps matching match (all when nil); the
// mocked call returns after `after` on the workflow clock.
func (h *harness) mockRun(match func(activities.NuStep) bool, after time.Duration, fn runFunc) *testsuite.MockCallWrapper {
	var arg any = mock.Anything
	if match != nil {
		arg = mock.MatchedBy(match)
	}
	c := h.env.OnActivity(h.acts.RunNushell, mock.Anything, arg).Return(
		func(ctx context.Context, step activities.NuStep) (activities.NuStepResult, error) {
			h.mu.Lock()
			h.calls = append(h.calls, nuCall{step: step, info: activity.GetInfo(ctx), at: h.env.Now()})
			h.mu.Unlock()
			return fn(ctx, step)
		})
	if after > 0 {
		c.After(after)
	}
	return c
}

func (h *harness) nuCalls() []nuCall {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]nuCall(nil), h.calls...)
}

func (h *harness) startedSteps() []activities.NuStep {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]activities.NuStep(nil), h.started...)
}

func (h *harness) callsFor(step string) []nuCall {
	var out []nuCall
	for _, c := range h.nuCalls() {
		if c.step.Step == step {
			out = append(out, c)
		}
	}
	return out
}

// result returns the workflow's storage.Task result; it fails the test
// unless the workflow completed successfully.
func (h *harness) result() storage.Task {
	h.t.Helper()
	require.True(h.t, h.env.IsWorkflowCompleted(), "workflow did not complete")
	require.NoError(h.t, h.env.GetWorkflowError())
	var task storage.Task
	require.NoError(h.t, h.env.GetWorkflowResult(&task))
	return task
}

// workflowErr returns the workflow's error; it fails the test unless the
// workflow completed with one.
func (h *harness) workflowErr() error {
	h.t.Helper()
	require.True(h.t, h.env.IsWorkflowCompleted(), "workflow did not complete")
	err := h.env.GetWorkflowError()
	require.Error(h.t, err)
	return err
}

func (h *harness) query() storage.Task {
	h.t.Helper()
	v, err := h.env.QueryWorkflow(workflows.StatusQuery)
	require.NoError(h.t, err)
	var task storage.Task
	require.NoError(h.t, v.Get(&task))
	return task
}

func (h *harness) lastProjection(id string) storage.Task {
	h.t.Helper()
	task, err := h.store.last(id)
	require.NoError(h.t, err)
	return task
}

func stepIs(names ...string) func(activities.NuStep) bool {
	return func(s activities.NuStep) bool {
		for _, n := range names {
			if s.Step == n {
				return true
			}
		}
		return false
	}
}

// succeed is a RunNushell that prints one line and exits 0.
func succeed(ctx context.Context, step activities.NuStep) (activities.NuStepResult, error) {
	return activities.NuStepResult{
		Stdout:     "created " + step.Step + "\n",
		DurationMS: 1000,
		Attempt:    activity.GetInfo(ctx).Attempt,
	}, nil
}

// failWith is a RunNushell that exits with code and stderr, as the real
// activity reports it: an ApplicationError of type typ with NuStepResult
// details.
func failWith(typ string, nonRetryable bool, code int, stderr string) runFunc {
	return func(ctx context.Context, step activities.NuStep) (activities.NuStepResult, error) {
		res := activities.NuStepResult{
			ExitCode:   code,
			Stdout:     "partial " + step.Step + "\n",
			Stderr:     stderr,
			DurationMS: 50,
			Attempt:    activity.GetInfo(ctx).Attempt,
		}
		return res, temporal.NewApplicationErrorWithOptions(fmt.Sprintf("exit status %d", code), typ,
			temporal.ApplicationErrorOptions{NonRetryable: nonRetryable, Details: []any{res}})
	}
}

func serverInput(id string, servers ...string) workflows.ServerCreateInput {
	return workflows.ServerCreateInput{
		Common: workflows.Common{
			TaskID:    id,
			Infra:     "production",
			Settings:  "./settings.yaml",
			Wait:      true,
			CreatedAt: createdAt,
		},
		Servers: servers,
	}
}

func statuses(ts []storage.Task) []storage.TaskStatus {
	out := make([]storage.TaskStatus, len(ts))
	for i, t := range ts {
		out[i] = t.Status
	}
	return out
}

func stepStatuses(t storage.Task) map[string]storage.TaskStatus {
	out := map[string]storage.TaskStatus{}
	for _, s := range t.Steps {
		out[s.Name] = s.Status
	}
	return out
}

func requireStrictlyIncreasingVersions(t *testing.T, ps []storage.Task) {
	t.Helper()
	for i := range ps {
		require.Equal(t, int64(i+1), ps[i].Version, "projection %d (%s) has version %d; want contiguous versions from 1", i, ps[i].Status, ps[i].Version)
	}
}

func TestServerCreate_TwoServersSucceed(t *testing.T) {
	h := newHarness(t)
	h.mockRun(stepIs("web-01"), time.Second, succeed).Once()
	h.mockRun(stepIs("web-02"), 2*time.Second, succeed).Once()

	in := serverInput(taskID1, "web-01", "web-02")
	h.env.ExecuteWorkflow(workflows.ServerCreateWorkflowName, in)
	task := h.result()

	// One call per server with the documented argv.
	calls := h.nuCalls()
	require.Len(t, calls, 2)
	argv := map[string][]string{}
	for _, c := range calls {
		assert.Equal(t, taskID1, c.step.TaskID)
		argv[c.step.Step] = c.step.Args
		// Activity options come from the default ExecPolicy.
		assert.Equal(t, workflows.DefaultStepTimeout, c.info.StartToCloseTimeout)
		assert.Equal(t, workflows.DefaultHeartbeatTimeout, c.info.HeartbeatTimeout)
	}
	assert.Equal(t, map[string][]string{
		"web-01": {"server", "create", "--infra", "production", "--settings", "./settings.yaml", "--wait", "web-01"},
		"web-02": {"server", "create", "--infra", "production", "--settings", "./settings.yaml", "--wait", "web-02"},
	}, argv)

	// The result.
	assert.Equal(t, taskID1, task.ID)
	assert.Equal(t, storage.StatusCompleted, task.Status)
	assert.Equal(t, "server create production", task.Name)
	assert.Equal(t, "server create", task.Command)
	assert.Equal(t, []string{"--infra", "production", "--settings", "./settings.yaml", "--wait", "web-01", "web-02"}, task.Args)
	assert.Equal(t, workflows.ServerCreateWorkflowName, task.WorkflowType)
	assert.Equal(t, storage.Progress{Done: 2, Total: 2}, task.Progress)
	assert.True(t, createdAt.Equal(task.CreatedAt), "created_at %v", task.CreatedAt)
	require.NotNil(t, task.StartedAt)
	require.NotNil(t, task.CompletedAt)
	assert.True(t, t0.Equal(*task.StartedAt), "started_at %v", *task.StartedAt)
	assert.True(t, t0.Add(2*time.Second).Equal(*task.CompletedAt), "completed_at %v", *task.CompletedAt)
	assert.Nil(t, task.Error)
	require.NotNil(t, task.Output)
	assert.Equal(t, "== web-01 ==\ncreated web-01\n== web-02 ==\ncreated web-02\n", *task.Output)
	require.Len(t, task.Steps, 2)
	for i, name := range []string{"web-01", "web-02"} {
		s := task.Steps[i]
		assert.Equal(t, name, s.Name)
		assert.Equal(t, storage.StatusCompleted, s.Status)
		assert.Equal(t, int32(1), s.Attempts)
		require.NotNil(t, s.ExitCode)
		assert.Equal(t, 0, *s.ExitCode)
		assert.Equal(t, "created "+name+"\n", s.Output)
		assert.Empty(t, s.Error)
		assert.Equal(t, int64(1000), s.DurationMS)
	}

	// Projections: Running, one per finished step, then Completed, with
	// contiguous versions; the last one is the result.
	ps := h.store.projections(taskID1)
	require.Equal(t, []storage.TaskStatus{storage.StatusRunning, storage.StatusRunning, storage.StatusRunning, storage.StatusCompleted}, statuses(ps))
	requireStrictlyIncreasingVersions(t, ps)
	assert.Equal(t, []int{0, 1, 2, 2}, []int{ps[0].Progress.Done, ps[1].Progress.Done, ps[2].Progress.Done, ps[3].Progress.Done})
	assert.Equal(t, map[string]storage.TaskStatus{"web-01": storage.StatusPending, "web-02": storage.StatusPending}, stepStatuses(ps[0]))
	assert.Equal(t, map[string]storage.TaskStatus{"web-01": storage.StatusCompleted, "web-02": storage.StatusRunning}, stepStatuses(ps[1]))
	assert.NotNil(t, ps[0].StartedAt)
	assert.Nil(t, ps[0].CompletedAt, "a Running projection must not have completed_at")
	assert.True(t, t0.Add(time.Second).Equal(ps[1].UpdatedAt), "updated_at of the first step projection: %v", ps[1].UpdatedAt)
	assert.Equal(t, task, ps[len(ps)-1])
	stored, err := h.store.Get(context.Background(), taskID1)
	require.NoError(t, err)
	assert.Equal(t, task, stored)
}

func TestServerCreate_ParallelismBound(t *testing.T) {
	for _, tc := range []struct {
		name        string
		servers     int
		parallelism int
		want        int
	}{
		{"ten servers, parallelism 3", 10, 3, 3},
		{"default parallelism is 4", 9, 0, workflows.DefaultParallelism},
		{"parallelism 1 is sequential", 4, 1, 1},
		{"fewer servers than slots", 2, 5, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			// Staggered durations on the workflow clock so that steps finish
			// at different times and the workflow refills slots one by one.
			var n atomic.Int32
			h.mockRun(nil, 0, succeed).AfterFn(func() time.Duration {
				return time.Duration(1+n.Add(1)%3) * time.Second
			})
			servers := make([]string, tc.servers)
			for i := range servers {
				servers[i] = fmt.Sprintf("web-%02d", i+1)
			}
			in := serverInput(taskID1, servers...)
			in.Policy.Parallelism = tc.parallelism
			h.env.ExecuteWorkflow(workflows.ServerCreateWorkflowName, in)
			task := h.result()

			assert.Equal(t, storage.StatusCompleted, task.Status)
			assert.Equal(t, storage.Progress{Done: tc.servers, Total: tc.servers}, task.Progress)
			h.mu.Lock()
			maxInflight, inflight := h.maxInflight, h.inflight
			h.mu.Unlock()
			assert.Equal(t, tc.want, maxInflight, "max concurrent RunNushell calls")
			assert.Equal(t, 0, inflight)
			seen := map[string]int{}
			for _, s := range h.startedSteps() {
				seen[s.Step]++
			}
			require.Len(t, seen, tc.servers)
			for _, s := range servers {
				assert.Equal(t, 1, seen[s], "calls for %s", s)
			}
			// Every finished step was projected: Running + one per step + Completed.
			ps := h.store.projections(taskID1)
			assert.Len(t, ps, tc.servers+2)
			requireStrictlyIncreasingVersions(t, ps)
		})
	}
}

func TestServerCreate_RetryThenSucceed(t *testing.T) {
	h := newHarness(t)
	h.mockRun(stepIs("web-01"), 0, func(ctx context.Context, step activities.NuStep) (activities.NuStepResult, error) {
		if activity.GetInfo(ctx).Attempt < 3 {
			return failWith(activities.ErrTypeNushellExit, false, 1, "ssh: connection reset")(ctx, step)
		}
		return succeed(ctx, step)
	}).Times(3)
	h.mockRun(stepIs("web-02"), 0, succeed).Once()

	in := serverInput(taskID1, "web-01", "web-02")
	// Backoff 5s, 15s capped to 8s: the ExecPolicy reaches the retry policy.
	in.Policy = workflows.ExecPolicy{InitialInterval: 5 * time.Second, BackoffCoefficient: 3, MaxInterval: 8 * time.Second}
	h.env.ExecuteWorkflow(workflows.ServerCreateWorkflowName, in)
	task := h.result()

	calls := h.callsFor("web-01")
	require.Len(t, calls, 3)
	for i, c := range calls {
		assert.Equal(t, int32(i+1), c.info.Attempt)
	}
	assert.Equal(t, 5*time.Second, calls[1].at.Sub(calls[0].at), "first retry interval")
	assert.Equal(t, 8*time.Second, calls[2].at.Sub(calls[1].at), "second retry interval (capped by MaxInterval)")
	assert.Len(t, h.callsFor("web-02"), 1)

	assert.Equal(t, storage.StatusCompleted, task.Status)
	assert.Nil(t, task.Error)
	require.Len(t, task.Steps, 2)
	assert.Equal(t, storage.StatusCompleted, task.Steps[0].Status)
	assert.Equal(t, int32(3), task.Steps[0].Attempts)
	assert.Empty(t, task.Steps[0].Error, "a step that finally succeeded keeps no error")
	assert.Equal(t, int32(1), task.Steps[1].Attempts)
	assert.Equal(t, storage.Progress{Done: 2, Total: 2}, task.Progress)
}

func TestServerCreate_RetriesExhausted(t *testing.T) {
	for _, maxAttempts := range []int32{0, 5} {
		want := maxAttempts
		if want == 0 {
			want = workflows.DefaultMaxAttempts
		}
		t.Run(fmt.Sprintf("max attempts %d", maxAttempts), func(t *testing.T) {
			h := newHarness(t)
			h.mockRun(stepIs("web-01", "web-03"), time.Second, succeed).Twice()
			h.mockRun(stepIs("web-02"), 0, failWith(activities.ErrTypeNushellExit, false, 7,
				"creating volume\nerror: quota exceeded")).Times(int(want))

			in := serverInput(taskID1, "web-01", "web-02", "web-03")
			in.Policy.MaxAttempts = maxAttempts
			h.env.ExecuteWorkflow(workflows.ServerCreateWorkflowName, in)
			err := h.workflowErr()

			assert.Len(t, h.callsFor("web-02"), int(want))
			var appErr *temporal.ApplicationError
			require.ErrorAs(t, err, &appErr)
			assert.Equal(t, workflows.ErrTypeProvisioningFailed, appErr.Type())
			assert.True(t, appErr.NonRetryable())
			assert.Contains(t, appErr.Error(), "1 of 3 steps failed: web-02: error: quota exceeded")

			task := h.lastProjection(taskID1)
			assert.Equal(t, storage.StatusFailed, task.Status)
			assert.Equal(t, map[string]storage.TaskStatus{
				"web-01": storage.StatusCompleted, "web-02": storage.StatusFailed, "web-03": storage.StatusCompleted,
			}, stepStatuses(task))
			assert.Equal(t, storage.Progress{Done: 3, Total: 3}, task.Progress)
			s := task.Steps[1]
			assert.Equal(t, want, s.Attempts)
			require.NotNil(t, s.ExitCode)
			assert.Equal(t, 7, *s.ExitCode)
			assert.Equal(t, "creating volume\nerror: quota exceeded", s.Error)
			require.NotNil(t, task.Error)
			assert.Contains(t, *task.Error, "web-02")
			assert.Contains(t, *task.Error, fmt.Sprintf("== web-02 (attempts: %d) ==", want))
			require.NotNil(t, task.Output)
			assert.Contains(t, *task.Output, "== web-01 ==\ncreated web-01\n")
			assert.Contains(t, *task.Output, "== web-03 ==\ncreated web-03\n")
			require.NotNil(t, task.CompletedAt)
			requireStrictlyIncreasingVersions(t, h.store.projections(taskID1))
		})
	}
}

func TestServerCreate_NonRetryableFailures(t *testing.T) {
	for _, tc := range []struct {
		typ          string
		nonRetryable bool // the flag on the error; the type alone must suffice
	}{
		{activities.ErrTypeNushellPermanent, true},
		{activities.ErrTypeNushellPermanent, false},
		{activities.ErrTypeNushellStart, false},
		{activities.ErrTypeInvalidArgs, false},
		{activities.ErrTypeNushellExit, true},
	} {
		t.Run(fmt.Sprintf("%s nonretryable=%v", tc.typ, tc.nonRetryable), func(t *testing.T) {
			h := newHarness(t)
			h.mockRun(nil, 0, failWith(tc.typ, tc.nonRetryable, 2, "error: invalid server spec")).Once()

			h.env.ExecuteWorkflow(workflows.ServerCreateWorkflowName, serverInput(taskID1, "web-01"))
			err := h.workflowErr()

			assert.Len(t, h.nuCalls(), 1, "a permanent failure must not be retried")
			var appErr *temporal.ApplicationError
			require.ErrorAs(t, err, &appErr)
			assert.Equal(t, workflows.ErrTypeProvisioningFailed, appErr.Type())
			assert.Contains(t, appErr.Error(), "web-01: error: invalid server spec")

			task := h.lastProjection(taskID1)
			assert.Equal(t, storage.StatusFailed, task.Status)
			require.Len(t, task.Steps, 1)
			s := task.Steps[0]
			assert.Equal(t, storage.StatusFailed, s.Status)
			assert.Equal(t, int32(1), s.Attempts)
			require.NotNil(t, s.ExitCode)
			assert.Equal(t, 2, *s.ExitCode)
			assert.Equal(t, "error: invalid server spec", s.Error)
			// A single step's output is the task output as is.
			require.NotNil(t, task.Output)
			assert.Equal(t, "partial web-01\n", *task.Output)
		})
	}
}

func TestServerCreate_FailureWithoutDetails(t *testing.T) {
	h := newHarness(t)
	h.mockRun(nil, 0, func(context.Context, activities.NuStep) (activities.NuStepResult, error) {
		return activities.NuStepResult{}, temporal.NewNonRetryableApplicationError("worker lost its disk", "Other", nil)
	}).Once()
	h.env.ExecuteWorkflow(workflows.ServerCreateWorkflowName, serverInput(taskID1, "web-01"))
	err := h.workflowErr()
	assert.Contains(t, err.Error(), "web-01")

	task := h.lastProjection(taskID1)
	assert.Equal(t, storage.StatusFailed, task.Status)
	s := task.Steps[0]
	assert.Equal(t, storage.StatusFailed, s.Status)
	assert.Nil(t, s.ExitCode, "no process exit was reported")
	assert.Contains(t, s.Error, "worker lost its disk")
}

func TestServerCreate_Cancel(t *testing.T) {
	h := newHarness(t)
	h.mockRun(stepIs("web-01"), time.Second, succeed).Once()
	h.mockRun(stepIs("web-02", "web-03", "web-04"), time.Hour, succeed).Maybe()
	in := serverInput(taskID1, "web-01", "web-02", "web-03", "web-04")
	in.Policy.Parallelism = 2

	var midRun storage.Task
	h.env.RegisterDelayedCallback(func() { midRun = h.query() }, 2*time.Second)
	h.env.RegisterDelayedCallback(h.env.CancelWorkflow, 3*time.Second)
	h.env.ExecuteWorkflow(workflows.ServerCreateWorkflowName, in)
	err := h.workflowErr()

	assert.True(t, temporal.IsCanceledError(err), "want a canceled error, got %v", err)
	assert.Equal(t, storage.StatusRunning, midRun.Status)
	assert.Equal(t, storage.Progress{Done: 1, Total: 4}, midRun.Progress)
	assert.Equal(t, map[string]storage.TaskStatus{
		"web-01": storage.StatusCompleted,
		"web-02": storage.StatusRunning,
		"web-03": storage.StatusRunning,
		"web-04": storage.StatusPending,
	}, stepStatuses(midRun))

	// web-03 took web-01's slot at 1s; web-04 never got one before the cancel.
	var startedNames []string
	for _, s := range h.startedSteps() {
		startedNames = append(startedNames, s.Step)
	}
	assert.ElementsMatch(t, []string{"web-01", "web-02", "web-03"}, startedNames)

	ps := h.store.projections(taskID1)
	require.NotEmpty(t, ps)
	requireStrictlyIncreasingVersions(t, ps)
	// The Running projection, web-01's, then Cancelled.
	assert.Equal(t, []storage.TaskStatus{storage.StatusRunning, storage.StatusRunning, storage.StatusCancelled}, statuses(ps))
	task := ps[len(ps)-1]
	assert.Equal(t, storage.StatusCancelled, task.Status)
	assert.Equal(t, map[string]storage.TaskStatus{
		"web-01": storage.StatusCompleted,
		"web-02": storage.StatusCancelled,
		"web-03": storage.StatusCancelled,
		"web-04": storage.StatusCancelled,
	}, stepStatuses(task))
	assert.Equal(t, storage.Progress{Done: 1, Total: 4}, task.Progress)
	require.NotNil(t, task.Error)
	assert.Equal(t, "task cancelled", *task.Error)
	require.NotNil(t, task.Output)
	assert.Equal(t, "== web-01 ==\ncreated web-01\n", *task.Output, "output of finished steps survives the cancel")
	require.NotNil(t, task.CompletedAt)
	assert.True(t, t0.Add(3*time.Second).Equal(*task.CompletedAt), "completed_at %v", *task.CompletedAt)
}

func TestServerCreate_CancelBeforeAnyStepFinished(t *testing.T) {
	h := newHarness(t)
	h.mockRun(nil, time.Hour, succeed).Maybe()
	h.env.RegisterDelayedCallback(h.env.CancelWorkflow, time.Second)
	h.env.ExecuteWorkflow(workflows.ServerCreateWorkflowName, serverInput(taskID1, "web-01", "web-02"))
	err := h.workflowErr()
	assert.True(t, temporal.IsCanceledError(err), "want a canceled error, got %v", err)

	ps := h.store.projections(taskID1)
	assert.Equal(t, []storage.TaskStatus{storage.StatusRunning, storage.StatusCancelled}, statuses(ps))
	requireStrictlyIncreasingVersions(t, ps)
	task := ps[len(ps)-1]
	assert.Equal(t, map[string]storage.TaskStatus{"web-01": storage.StatusCancelled, "web-02": storage.StatusCancelled}, stepStatuses(task))
	assert.Equal(t, storage.Progress{Done: 0, Total: 2}, task.Progress)
	assert.Nil(t, task.Output)
	assert.Empty(t, h.nuCalls(), "no mocked call returned")
}

func TestServerCreate_InvalidInput(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edit  func(*workflows.ServerCreateInput)
		field string
	}{
		{"empty infra", func(in *workflows.ServerCreateInput) { in.Infra = "" }, "infra"},
		{"shell metacharacters in a server", func(in *workflows.ServerCreateInput) { in.Servers = []string{"web-01; rm -rf /"} }, "servers[0]"},
		{"flag-like settings", func(in *workflows.ServerCreateInput) { in.Settings = "-rf" }, "settings"},
		{"missing settings", func(in *workflows.ServerCreateInput) { in.Settings = "" }, "settings"},
		// No servers (every server the settings define) still checks the rest first.
		{"no servers, bad infra", func(in *workflows.ServerCreateInput) { in.Servers, in.Infra = nil, "../x" }, "infra"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.mockRun(nil, 0, succeed).Maybe()
			in := serverInput(taskID1, "web-01")
			tc.edit(&in)
			h.env.ExecuteWorkflow(workflows.ServerCreateWorkflowName, in)
			err := h.workflowErr()

			assert.Empty(t, h.startedSteps(), "invalid input must not run Nushell")
			var appErr *temporal.ApplicationError
			require.ErrorAs(t, err, &appErr)
			assert.Equal(t, workflows.ErrTypeInvalidInput, appErr.Type())
			assert.True(t, appErr.NonRetryable())
			assert.True(t, strings.HasPrefix(appErr.Message(), tc.field+": "), "message %q names %s", appErr.Message(), tc.field)

			ps := h.store.projections(taskID1)
			require.Len(t, ps, 1, "exactly one projection: Failed")
			task := ps[0]
			assert.Equal(t, storage.StatusFailed, task.Status)
			assert.Equal(t, int64(1), task.Version)
			require.NotNil(t, task.Error)
			assert.True(t, strings.HasPrefix(*task.Error, "invalid input: "+tc.field+": "), "error %q", *task.Error)
			require.NotNil(t, task.StartedAt)
			require.NotNil(t, task.CompletedAt)
			for _, s := range task.Steps {
				assert.Equal(t, storage.StatusPending, s.Status)
			}
		})
	}
}

func TestServerCreate_MissingTaskID(t *testing.T) {
	h := newHarness(t)
	h.mockRun(nil, 0, succeed).Maybe()
	h.env.ExecuteWorkflow(workflows.ServerCreateWorkflowName, serverInput("", "web-01"))
	err := h.workflowErr()
	var appErr *temporal.ApplicationError
	require.ErrorAs(t, err, &appErr)
	assert.Equal(t, workflows.ErrTypeInvalidInput, appErr.Type())
	assert.True(t, appErr.NonRetryable())
	assert.Contains(t, appErr.Message(), "task_id")
	assert.Empty(t, h.startedSteps())
	attempts, _ := h.store.counts()
	assert.Zero(t, attempts, "nothing to project without an ID")
}

func TestServerCreate_NonUUIDTaskIDFailsProjection(t *testing.T) {
	h := newHarness(t)
	h.mockRun(nil, 0, succeed).Maybe()
	h.env.ExecuteWorkflow(workflows.ServerCreateWorkflowName, serverInput("../../etc/passwd", "web-01"))
	err := h.workflowErr()
	var appErr *temporal.ApplicationError
	require.ErrorAs(t, err, &appErr)
	assert.Equal(t, activities.ErrTypeInvalidTaskID, appErr.Type())
	assert.Empty(t, h.startedSteps(), "no step runs when the task cannot be projected")
	attempts, _ := h.store.counts()
	assert.Zero(t, attempts, "ProjectTask rejects the ID before touching the store")
}

func TestServerCreate_StatusQuery(t *testing.T) {
	h := newHarness(t)
	h.mockRun(stepIs("web-01"), time.Second, succeed).Once()
	h.mockRun(stepIs("web-02"), 3*time.Second, succeed).Once()

	var early, mid storage.Task
	h.env.RegisterDelayedCallback(func() { early = h.query() }, 500*time.Millisecond)
	h.env.RegisterDelayedCallback(func() { mid = h.query() }, 1500*time.Millisecond)
	h.env.ExecuteWorkflow(workflows.ServerCreateWorkflowName, serverInput(taskID1, "web-01", "web-02"))
	final := h.result()

	assert.Equal(t, taskID1, early.ID)
	assert.Equal(t, storage.StatusRunning, early.Status)
	assert.Equal(t, storage.Progress{Done: 0, Total: 2}, early.Progress)
	assert.Equal(t, map[string]storage.TaskStatus{"web-01": storage.StatusRunning, "web-02": storage.StatusRunning}, stepStatuses(early))
	require.NotNil(t, early.StartedAt)
	assert.Nil(t, early.CompletedAt)

	assert.Equal(t, storage.StatusRunning, mid.Status)
	assert.Equal(t, storage.Progress{Done: 1, Total: 2}, mid.Progress)
	assert.Equal(t, map[string]storage.TaskStatus{"web-01": storage.StatusCompleted, "web-02": storage.StatusRunning}, stepStatuses(mid))
	assert.Equal(t, int64(2), mid.Version, "the query shows the projected version")

	// After completion the query answers the final task.
	assert.Equal(t, final, h.query())
}

func TestTaskservCreate_Steps(t *testing.T) {
	for _, tc := range []struct {
		name    string
		servers []string
		want    map[string][]string
		args    []string
	}{
		{
			name:    "no servers: one step for the whole infra",
			servers: nil,
			want: map[string][]string{
				"kubernetes": {"taskserv", "create", "kubernetes", "--infra", "production", "--settings", "./settings.yaml", "--check"},
			},
			args: []string{"kubernetes", "--infra", "production", "--settings", "./settings.yaml", "--check"},
		},
		{
			name:    "one step per server",
			servers: []string{"cp-01", "worker-01"},
			want: map[string][]string{
				"cp-01":     {"taskserv", "create", "kubernetes", "--infra", "production", "--settings", "./settings.yaml", "--check", "cp-01"},
				"worker-01": {"taskserv", "create", "kubernetes", "--infra", "production", "--settings", "./settings.yaml", "--check", "worker-01"},
			},
			args: []string{"kubernetes", "--infra", "production", "--settings", "./settings.yaml", "--check", "cp-01", "worker-01"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.mockRun(nil, time.Second, succeed).Times(len(tc.want))
			in := workflows.TaskservCreateInput{
				Common:   workflows.Common{TaskID: taskID2, Infra: "production", Settings: "./settings.yaml", CheckMode: true},
				Taskserv: "kubernetes",
				Servers:  tc.servers,
			}
			h.env.ExecuteWorkflow(workflows.TaskservCreateWorkflowName, in)
			task := h.result()

			got := map[string][]string{}
			for _, c := range h.nuCalls() {
				got[c.step.Step] = c.step.Args
			}
			assert.Equal(t, tc.want, got)
			assert.Equal(t, storage.StatusCompleted, task.Status)
			assert.Equal(t, "taskserv create kubernetes", task.Name)
			assert.Equal(t, "taskserv create", task.Command)
			assert.Equal(t, tc.args, task.Args)
			assert.Equal(t, workflows.TaskservCreateWorkflowName, task.WorkflowType)
			assert.Equal(t, storage.Progress{Done: len(tc.want), Total: len(tc.want)}, task.Progress)
			assert.Len(t, task.Steps, len(tc.want))
			// Without CreatedAt in the input the workflow start time is used.
			assert.True(t, t0.Equal(task.CreatedAt), "created_at %v", task.CreatedAt)
		})
	}
}

func TestClusterCreate_SingleStep(t *testing.T) {
	h := newHarness(t)
	h.mockRun(nil, time.Second, succeed).Once()
	in := workflows.ClusterCreateInput{
		Common:  workflows.Common{TaskID: taskID3, Infra: "production", Settings: "/srv/infra/settings.k", Wait: true, CreatedAt: createdAt},
		Cluster: "k8s-main",
	}
	h.env.ExecuteWorkflow(workflows.ClusterCreateWorkflowName, in)
	task := h.result()

	calls := h.nuCalls()
	require.Len(t, calls, 1)
	assert.Equal(t, "k8s-main", calls[0].step.Step)
	assert.Equal(t, []string{"cluster", "create", "k8s-main", "--infra", "production", "--settings", "/srv/infra/settings.k", "--wait"}, calls[0].step.Args)
	assert.Equal(t, storage.StatusCompleted, task.Status)
	assert.Equal(t, "cluster create k8s-main", task.Name)
	assert.Equal(t, []string{"k8s-main", "--infra", "production", "--settings", "/srv/infra/settings.k", "--wait"}, task.Args)
	assert.Equal(t, workflows.ClusterCreateWorkflowName, task.WorkflowType)
	assert.Equal(t, storage.Progress{Done: 1, Total: 1}, task.Progress)
	require.NotNil(t, task.Output)
	assert.Equal(t, "created k8s-main\n", *task.Output, "a single step's output is not sectioned")
}

func TestClusterCreate_InvalidCluster(t *testing.T) {
	h := newHarness(t)
	h.mockRun(nil, 0, succeed).Maybe()
	in := workflows.ClusterCreateInput{
		Common:  workflows.Common{TaskID: taskID3, Infra: "production", Settings: "./settings.yaml"},
		Cluster: "../k8s",
	}
	h.env.ExecuteWorkflow(workflows.ClusterCreateWorkflowName, in)
	err := h.workflowErr()
	assert.Contains(t, err.Error(), "cluster: ")
	assert.Empty(t, h.startedSteps())
	task := h.lastProjection(taskID3)
	assert.Equal(t, storage.StatusFailed, task.Status)
	require.NotNil(t, task.Error)
	assert.Contains(t, *task.Error, "cluster")
}

func TestProjection_StoreDownIsRetried(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fails int
		when  func(storage.Task) bool
	}{
		{"running projection", 2, func(t storage.Task) bool { return t.Version == 1 }},
		{"step projection", 2, func(t storage.Task) bool { return t.Version == 2 }},
		{"completed projection", 2, func(t storage.Task) bool { return t.Status == storage.StatusCompleted }},
		// 20 failures at up to 30 s apart: an outage of about 8 minutes,
		// far beyond the 10 s of one attempt (which once bounded them all).
		{"store down for minutes", 20, func(t storage.Task) bool { return t.Version == 2 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.store.failPuts(tc.fails, tc.when)
			h.mockRun(stepIs("web-01"), time.Second, succeed).Once()
			h.mockRun(stepIs("web-02"), 2*time.Second, succeed).Once()
			h.env.ExecuteWorkflow(workflows.ServerCreateWorkflowName, serverInput(taskID1, "web-01", "web-02"))
			task := h.result()

			attempts, failures := h.store.counts()
			assert.Equal(t, tc.fails, failures, "the store was down for that many writes")
			ps := h.store.projections(taskID1)
			assert.Equal(t, len(ps)+tc.fails, attempts)
			// No transition lost: every version from 1 to the last one.
			assert.Equal(t, []storage.TaskStatus{storage.StatusRunning, storage.StatusRunning, storage.StatusRunning, storage.StatusCompleted}, statuses(ps))
			requireStrictlyIncreasingVersions(t, ps)
			assert.Equal(t, storage.StatusCompleted, task.Status)
			assert.Equal(t, task, ps[len(ps)-1])
		})
	}
}

// The projection local activity can be mocked like any activity (a method
// value of the registered *activities.Activities).
func TestProjection_MockedLocalActivity(t *testing.T) {
	h := newHarness(t)
	var mu sync.Mutex
	var seen []storage.Task
	h.env.OnActivity(h.acts.ProjectTask, mock.Anything, mock.Anything).Return(errStoreDown).Twice()
	h.env.OnActivity(h.acts.ProjectTask, mock.Anything, mock.Anything).Return(func(_ context.Context, task storage.Task) error {
		c, err := deepCopy(task)
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, c)
		return err
	})
	h.mockRun(nil, time.Second, succeed).Once()
	h.env.ExecuteWorkflow(workflows.ServerCreateWorkflowName, serverInput(taskID1, "web-01"))
	h.result()

	mu.Lock()
	defer mu.Unlock()
	// The first (Running) projection failed twice, then every transition
	// got through with its own version.
	require.Equal(t, []storage.TaskStatus{storage.StatusRunning, storage.StatusRunning, storage.StatusCompleted}, statuses(seen))
	requireStrictlyIncreasingVersions(t, seen)
	attempts, _ := h.store.counts()
	assert.Zero(t, attempts, "the mock replaced the real activity")
}

// A cancel that arrives while the final projection is being written must not
// leave the store without a terminal state.
// (Regression: the final projection once ran on the cancellable context.)
func TestProjection_CancelDuringFinalProjection(t *testing.T) {
	h := newHarness(t)
	real := h.acts.ProjectTask
	isFinal := func(task storage.Task) bool { return task.Status.Terminal() && task.Status != storage.StatusCancelled }
	h.env.OnActivity(h.acts.ProjectTask, mock.Anything, mock.MatchedBy(isFinal)).After(time.Second).Return(real).Once()
	h.env.OnActivity(h.acts.ProjectTask, mock.Anything, mock.Anything).Return(real)
	h.mockRun(nil, time.Second, succeed).Once()
	h.env.RegisterDelayedCallback(h.env.CancelWorkflow, 1500*time.Millisecond)
	h.env.ExecuteWorkflow(workflows.ServerCreateWorkflowName, serverInput(taskID1, "web-01"))
	require.True(t, h.env.IsWorkflowCompleted())

	last := h.lastProjection(taskID1)
	require.True(t, last.Status.Terminal(), "the store was left at %s (version %d) after a cancel during the final projection", last.Status, last.Version)
	// Whatever the workflow decided, the store agrees with it.
	if err := h.env.GetWorkflowError(); err != nil {
		assert.True(t, temporal.IsCanceledError(err), "unexpected error %v", err)
		assert.Equal(t, storage.StatusCancelled, last.Status)
	} else {
		assert.Equal(t, storage.StatusCompleted, last.Status)
	}
}

// A projection handed to ProjectTask is a snapshot: the workflow's later
// step updates must not show through it. Local activities receive their
// argument itself (no serialisation), so a store that keeps the Task it was
// given — or is still encoding it — sees the workflow's slices change.
// (Regression: projections once aliased the workflow's Steps slice.)
func TestProjection_SnapshotsAreImmutable(t *testing.T) {
	h := newHarness(t)
	var mu sync.Mutex
	var given []storage.Task // as handed over, not copied
	h.env.OnActivity(h.acts.ProjectTask, mock.Anything, mock.Anything).Return(func(_ context.Context, task storage.Task) error {
		mu.Lock()
		defer mu.Unlock()
		given = append(given, task)
		return nil
	})
	h.mockRun(stepIs("web-01"), time.Second, succeed).Once()
	h.mockRun(stepIs("web-02"), 2*time.Second, succeed).Once()
	h.env.ExecuteWorkflow(workflows.ServerCreateWorkflowName, serverInput(taskID1, "web-01", "web-02"))
	h.result()

	mu.Lock()
	defer mu.Unlock()
	require.Len(t, given, 4)
	assert.Equal(t, map[string]storage.TaskStatus{"web-01": storage.StatusPending, "web-02": storage.StatusPending}, stepStatuses(given[0]),
		"the Running projection changed after it was handed over")
	assert.Equal(t, map[string]storage.TaskStatus{"web-01": storage.StatusCompleted, "web-02": storage.StatusRunning}, stepStatuses(given[1]))
}

// SetPriorityUpdate changes the task's priority (projected before the task
// ends) and refuses bad values before anything is recorded.
func TestServerCreate_SetPriority(t *testing.T) {
	h := newHarness(t)
	h.mockRun(nil, time.Second, succeed).Times(3)
	in := serverInput(taskID1, "web-01", "web-02", "web-03")
	in.Policy.Parallelism = 1
	in.Priority = 4

	update := func(p int, into *error, done *bool) {
		h.env.UpdateWorkflow(workflows.SetPriorityUpdate, fmt.Sprintf("prio-%d", p), &testsuite.TestUpdateCallback{
			OnAccept:   func() {},
			OnReject:   func(err error) { *into = err; *done = true },
			OnComplete: func(_ any, err error) { *into = err; *done = true },
		}, workflows.SetPriorityRequest{Priority: p})
	}
	var badErr, zeroErr, okErr error
	var badDone, zeroDone, okDone bool
	h.env.RegisterDelayedCallback(func() {
		update(9, &badErr, &badDone)
		update(0, &zeroErr, &zeroDone)
		update(1, &okErr, &okDone)
	}, 1500*time.Millisecond)
	h.env.ExecuteWorkflow(workflows.ServerCreateWorkflowName, in)
	task := h.result()

	require.True(t, badDone && zeroDone && okDone)
	assert.ErrorContains(t, badErr, "priority")
	assert.ErrorContains(t, zeroErr, "priority")
	require.NoError(t, okErr)
	assert.Equal(t, 1, task.Priority)
	require.Len(t, h.calls, 3)
	// The testsuite does not pass activity priorities on to the activity
	// info; e2e TestPriorityChangeThroughTheAPI reads them from Temporal.
	// The store saw the change before the task finished.
	var projected []int
	for _, p := range h.store.projections(taskID1) {
		projected = append(projected, p.Priority)
	}
	assert.Contains(t, projected[:len(projected)-1], 1)
}
