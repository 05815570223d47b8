package server

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	commonpb "go.temporal.io/api/common/v1"
	enumspb "go.temporal.io/api/enums/v1"
	taskqueuepb "go.temporal.io/api/taskqueue/v1"
	workflowpb "go.temporal.io/api/workflow/v1"
	"go.temporal.io/api/workflowservice/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/provisioning/orchestrator/metrics"
)

// fakeTaskQueues answers DescribeTaskQueue from a table and counts calls;
// every other WorkflowService method panics (nil embedded interface).
type fakeTaskQueues struct {
	workflowservice.WorkflowServiceClient
	mu       sync.Mutex
	calls    atomic.Int32
	err      error
	answers  map[string]*workflowservice.DescribeTaskQueueResponse // queue/type
	requests []*workflowservice.DescribeTaskQueueRequest
}

func (f *fakeTaskQueues) DescribeTaskQueue(_ context.Context, req *workflowservice.DescribeTaskQueueRequest, _ ...grpc.CallOption) (*workflowservice.DescribeTaskQueueResponse, error) {
	f.calls.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = append(f.requests, req)
	if f.err != nil {
		return nil, f.err
	}
	if a := f.answers[req.GetTaskQueue().GetName()+"/"+req.GetTaskQueueType().String()]; a != nil {
		return a, nil
	}
	return &workflowservice.DescribeTaskQueueResponse{}, nil
}

func stats(n int64, age time.Duration) *taskqueuepb.TaskQueueStats {
	return &taskqueuepb.TaskQueueStats{ApproximateBacklogCount: n, ApproximateBacklogAge: durationpb.New(age), TasksAddRate: 1.5}
}

// expectTemporal sets the mock client up for one description: one running
// workflow with a started RunNushell, a scheduled one (queued: not
// running), and a started-then-cancel-requested one.
func expectTemporal(f *fixture, ws *fakeTaskQueues, times int) {
	listed := f.client.On("ListWorkflow", mock.Anything, mock.MatchedBy(func(r *workflowservice.ListWorkflowExecutionsRequest) bool {
		return r.GetQuery() == `TaskQueue = "provisioning" AND ExecutionStatus = 'Running'`
	})).Run(func(args mock.Arguments) {
		// What the SDK does with an empty namespace.
		args.Get(1).(*workflowservice.ListWorkflowExecutionsRequest).Namespace = "ns-under-test"
	}).Return(&workflowservice.ListWorkflowExecutionsResponse{Executions: []*workflowpb.WorkflowExecutionInfo{
		{Execution: &commonpb.WorkflowExecution{WorkflowId: "w1", RunId: "r1"}},
	}}, nil)
	started := timestamppb.New(time.Now().Add(-time.Second))
	described := f.client.On("DescribeWorkflowExecution", mock.Anything, "w1", "r1").Return(&workflowservice.DescribeWorkflowExecutionResponse{
		PendingActivities: []*workflowpb.PendingActivityInfo{
			{ActivityType: &commonpb.ActivityType{Name: "RunNushell"}, State: enumspb.PENDING_ACTIVITY_STATE_STARTED, LastStartedTime: started},
			{ActivityType: &commonpb.ActivityType{Name: "RunNushell"}, State: enumspb.PENDING_ACTIVITY_STATE_SCHEDULED},
			{ActivityType: &commonpb.ActivityType{Name: "CreateEnvironment"}, State: enumspb.PENDING_ACTIVITY_STATE_CANCEL_REQUESTED, LastStartedTime: started},
			{ActivityType: &commonpb.ActivityType{Name: "RunNushell"}, State: enumspb.PENDING_ACTIVITY_STATE_CANCEL_REQUESTED},
		},
	}, nil)
	served := f.client.On("WorkflowService").Return(ws)
	if times > 0 {
		listed.Times(times)
		described.Times(times)
		served.Times(4 * times)
	}
}

func newQueueFixture(t *testing.T) (*fixture, *fakeTaskQueues, *metrics.Metrics) {
	m := metrics.New()
	f := newFixture(t, Options{Metrics: m})
	ws := &fakeTaskQueues{answers: map[string]*workflowservice.DescribeTaskQueueResponse{
		"provisioning/" + enumspb.TASK_QUEUE_TYPE_WORKFLOW.String(): {
			Stats: stats(7, 90*time.Second),
			StatsByPriorityKey: map[int32]*taskqueuepb.TaskQueueStats{
				3: stats(5, 90*time.Second), 1: stats(2, 10*time.Second), 9: stats(0, 0),
			},
			Pollers: []*taskqueuepb.PollerInfo{
				{Identity: "worker-b", LastAccessTime: timestamppb.New(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)), RatePerSecond: 2},
				{Identity: "worker-a"},
			},
		},
		"provisioning-testenv/" + enumspb.TASK_QUEUE_TYPE_ACTIVITY.String(): {Stats: stats(1, 3*time.Second), Pollers: []*taskqueuepb.PollerInfo{{Identity: "worker-a"}}},
	}}
	return f, ws, m
}

func TestQueueReportsTemporalsDescription(t *testing.T) {
	f, ws, m := newQueueFixture(t)
	expectTemporal(f, ws, 1)

	var rep QueueReport
	f.ok(http.StatusOK, http.MethodGet, "/queue", "", &rep)
	assert.Equal(t, int64(2000), rep.CacheTTLMS)
	assert.WithinDuration(t, time.Now(), rep.ObservedAt, 10*time.Second)
	require.Len(t, rep.TaskQueues, 2)
	prov, env := rep.TaskQueues[0], rep.TaskQueues[1]
	assert.Equal(t, "provisioning", prov.Name)
	assert.Equal(t, QueueKindProvisioning, prov.Kind)
	assert.Equal(t, "provisioning-testenv", env.Name)
	assert.Equal(t, QueueKindTestEnv, env.Kind)

	assert.Equal(t, int64(7), prov.Workflow.Backlog)
	assert.InDelta(t, 90, prov.Workflow.BacklogAgeSeconds, 1e-9)
	assert.InDelta(t, 1.5, prov.Workflow.AddRate, 1e-9)
	require.Len(t, prov.Workflow.ByPriority, 3)
	assert.Equal(t, []int{1, 3, 9}, []int{prov.Workflow.ByPriority[0].Priority, prov.Workflow.ByPriority[1].Priority, prov.Workflow.ByPriority[2].Priority})
	assert.Equal(t, int64(2), prov.Workflow.ByPriority[0].Backlog)
	assert.Equal(t, int64(5), prov.Workflow.ByPriority[1].Backlog)
	require.Len(t, prov.Workflow.Pollers, 2)
	assert.Equal(t, "worker-a", prov.Workflow.Pollers[0].Identity, "sorted by identity")
	assert.Nil(t, prov.Workflow.Pollers[0].LastAccessTime)
	require.NotNil(t, prov.Workflow.Pollers[1].LastAccessTime)
	assert.Equal(t, "2025-01-02T03:04:05Z", prov.Workflow.Pollers[1].LastAccessTime.Format(time.RFC3339))
	assert.Zero(t, prov.Activity.Backlog)
	assert.Empty(t, prov.Activity.Pollers)
	assert.NotNil(t, prov.Activity.Pollers, "an empty list, not null")
	assert.Equal(t, int64(1), env.Activity.Backlog)
	assert.Len(t, env.Activity.Pollers, 1)

	// Started, and started-then-cancel-requested, are in flight; scheduled
	// (still in the backlog) and never-started cancel requests are not.
	assert.Equal(t, 2, rep.RunningSteps.Count)
	assert.Equal(t, map[string]int{"RunNushell": 1, "CreateEnvironment": 1}, rep.RunningSteps.ByActivityType)
	assert.Equal(t, 1, rep.RunningSteps.WorkflowsScanned)
	assert.False(t, rep.RunningSteps.Partial)

	// Every queue and type asked once, with report_stats, in the client's
	// namespace.
	require.Len(t, ws.requests, 4)
	seen := map[string]bool{}
	for _, r := range ws.requests {
		assert.True(t, r.GetReportStats())
		assert.Equal(t, "ns-under-test", r.GetNamespace())
		seen[r.GetTaskQueue().GetName()+"/"+r.GetTaskQueueType().String()] = true
	}
	assert.Len(t, seen, 4)

	// The gauges show the same figures, from the same cached description
	// (the mock allows one description only).
	gauge := func(name string, labels ...string) float64 {
		t.Helper()
		mfs, err := m.Registry().Gather()
		require.NoError(t, err)
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
		next:
			for _, s := range mf.GetMetric() {
				got := map[string]string{}
				for _, l := range s.GetLabel() {
					got[l.GetName()] = l.GetValue()
				}
				for i := 0; i+1 < len(labels); i += 2 {
					if got[labels[i]] != labels[i+1] {
						continue next
					}
				}
				return s.GetGauge().GetValue()
			}
		}
		t.Fatalf("no series %s %v", name, labels)
		return 0
	}
	wf := []string{"task_queue", "provisioning", "task_type", "workflow"}
	assert.Equal(t, 7.0, gauge("orchestrator_queue_backlog_tasks", append(wf, "priority", "all")...))
	assert.Equal(t, 2.0, gauge("orchestrator_queue_backlog_tasks", append(wf, "priority", "1")...))
	assert.Equal(t, 5.0, gauge("orchestrator_queue_backlog_tasks", append(wf, "priority", "3")...))
	assert.Equal(t, 0.0, gauge("orchestrator_queue_backlog_tasks", append(wf, "priority", "5")...), "fixed series, zero when unused")
	assert.Equal(t, 0.0, gauge("orchestrator_queue_backlog_tasks", append(wf, "priority", "other")...))
	assert.Equal(t, 90.0, gauge("orchestrator_queue_backlog_age_seconds", append(wf, "priority", "all")...))
	assert.Equal(t, 2.0, gauge("orchestrator_queue_pollers", wf...))
	assert.Equal(t, 1.0, gauge("orchestrator_queue_pollers", "task_queue", "provisioning-testenv", "task_type", "activity"))
	assert.Equal(t, 1.0, gauge("orchestrator_queue_backlog_tasks", "task_queue", "provisioning-testenv", "task_type", "activity", "priority", "all"))
	assert.Equal(t, 2.0, gauge("orchestrator_queue_running_steps"))
	assert.Equal(t, 0.0, gauge("orchestrator_queue_scrape_error"))
	// 2 queues x 2 types x (all, 1..5, other) backlog series, no more.
	n, err := countSeries(m, "orchestrator_queue_backlog_tasks")
	require.NoError(t, err)
	assert.Equal(t, 2*2*7, n)
}

// A flood of GET /queue (and scrapes) costs Temporal one description per
// QueueCacheTTL: the mock allows exactly one.
func TestQueueCachedAgainstFloods(t *testing.T) {
	f, ws, m := newQueueFixture(t)
	expectTemporal(f, ws, 1)
	var wg sync.WaitGroup
	for range 40 {
		wg.Go(func() {
			req, _ := http.NewRequest(http.MethodGet, "/queue", nil)
			rec := httptest.NewRecorder()
			f.srv.ServeHTTP(rec, req)
			assert.Equal(t, http.StatusOK, rec.Code)
		})
	}
	wg.Wait()
	_, err := m.Registry().Gather()
	require.NoError(t, err)
	assert.Equal(t, int32(4), ws.calls.Load(), "4 DescribeTaskQueue calls (2 queues x 2 types) for 40 requests and a scrape")
}

// The cache expires: after the TTL, Temporal is asked again.
func TestQueueCacheExpires(t *testing.T) {
	f, ws, _ := newQueueFixture(t)
	expectTemporal(f, ws, 2)
	r := &queueReporter{client: f.client, ttl: 50 * time.Millisecond, sem: make(chan struct{}, 1),
		queues: []TaskQueueDepth{{Name: "provisioning", Kind: QueueKindProvisioning}, {Name: "provisioning-testenv", Kind: QueueKindTestEnv}}}
	first, err := r.get(t.Context())
	require.NoError(t, err)
	again, err := r.get(t.Context())
	require.NoError(t, err)
	assert.Equal(t, first.ObservedAt, again.ObservedAt, "served from the cache")
	deadline := time.Now().Add(5 * time.Second)
	for ws.calls.Load() < 8 && time.Now().Before(deadline) {
		later, err := r.get(t.Context())
		require.NoError(t, err)
		if later.ObservedAt.After(first.ObservedAt) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	assert.Equal(t, int32(8), ws.calls.Load())
}

// Temporal unreachable: 503 naming it, the failure cached too (no retry
// storm), and the gauges replaced by the error gauge.
func TestQueueTemporalDown(t *testing.T) {
	f, ws, m := newQueueFixture(t)
	f.client.On("ListWorkflow", mock.Anything, mock.Anything).Return(nil, errors.New("connection refused")).Once()
	e := f.fail(http.StatusServiceUnavailable, http.MethodGet, "/queue", "")
	assert.Equal(t, CodeUnavailable, e.Code)
	assert.Contains(t, e.Message, "temporal")
	assert.Contains(t, e.Message, "connection refused")
	f.fail(http.StatusServiceUnavailable, http.MethodGet, "/queue", "")
	assert.Zero(t, ws.calls.Load())
	n, err := countSeries(m, "orchestrator_queue_backlog_tasks")
	require.NoError(t, err)
	assert.Zero(t, n)
	mfs, err := m.Registry().Gather()
	require.NoError(t, err)
	found := false
	for _, mf := range mfs {
		if mf.GetName() == "orchestrator_queue_scrape_error" {
			found = true
			assert.Equal(t, 1.0, mf.GetMetric()[0].GetGauge().GetValue())
		}
	}
	assert.True(t, found, "orchestrator_queue_scrape_error")
}

func TestQueueTaskQueueDescribeFails(t *testing.T) {
	f, ws, _ := newQueueFixture(t)
	ws.err = errors.New("boom")
	f.client.On("ListWorkflow", mock.Anything, mock.Anything).Return(&workflowservice.ListWorkflowExecutionsResponse{}, nil).Once()
	f.client.On("WorkflowService").Return(ws)
	e := f.fail(http.StatusServiceUnavailable, http.MethodGet, "/queue", "")
	assert.Contains(t, e.Message, "describe task queue")
	assert.Contains(t, e.Message, "boom")
}

func TestQueueRejectsQueryParameters(t *testing.T) {
	f, _, _ := newQueueFixture(t)
	e := f.fail(http.StatusBadRequest, http.MethodGet, "/queue?zeta=1&limit=5", "")
	assert.Equal(t, "limit", e.Field)
}

func TestQueueRouteDocumented(t *testing.T) {
	f, _, _ := newQueueFixture(t)
	paths := f.doc["paths"].(map[string]any)
	require.Contains(t, paths, "/queue")
	assert.Contains(t, paths["/queue"].(map[string]any), "get")
	assert.True(t, f.srv.routes["/queue"], "a fixed route label")
}

// countSeries is how many series of metric name the registry gathers.
func countSeries(m *metrics.Metrics, name string) (int, error) {
	mfs, err := m.Registry().Gather()
	n := 0
	for _, mf := range mfs {
		if mf.GetName() == name {
			n += len(mf.GetMetric())
		}
	}
	return n, err
}

// withoutTemporalQueue lets a fixture's /metrics scrapes describe the task
// queues against a Temporal that answers an error (the queue gauges then
// read orchestrator_queue_scrape_error 1), for tests about other metrics.
func (f *fixture) withoutTemporalQueue() *fixture {
	f.client.On("ListWorkflow", mock.Anything, mock.Anything).Return(nil, errors.New("no Temporal in this test")).Maybe()
	return f
}

// GET /queue takes a token like every task route; a refused request does
// not reach Temporal (the mock allows no call).
func TestQueueRequiresToken(t *testing.T) {
	f := newFixture(t, Options{AuthTokens: map[string]string{"ci": "tok"}})
	e := f.fail(http.StatusUnauthorized, http.MethodGet, "/queue", "")
	assert.Equal(t, CodeUnauthorized, e.Code)
	ws := &fakeTaskQueues{}
	expectTemporal(f, ws, 1)
	req := httptest.NewRequest(http.MethodGet, "/queue", nil)
	req.Header.Set("Authorization", "Bearer tok")
	rec := httptest.NewRecorder()
	f.srv.ServeHTTP(rec, req)
	assert.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
}
