package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	taskqueuepb "go.temporal.io/api/taskqueue/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"golang.org/x/sync/errgroup"

	"github.com/provisioning/orchestrator/metrics"
	"github.com/provisioning/orchestrator/workflows"
)

// QueuePath is the route of the task queues' depth.
const QueuePath = "/queue"

// QueueCacheTTL is how long one description of the task queues is served
// (to GET /queue and to metrics scrapes) before Temporal is asked again, so
// a flood of requests cannot flood Temporal. Temporal's matching service
// caches the backlog figures too (matching.TaskQueueInfoByBuildIdTTL,
// default 5s), so they can be up to ~7s old.
const QueueCacheTTL = 2 * time.Second

// QueueDescribeTimeout bounds one description (every call to Temporal it
// makes); a failed description is cached like a good one.
const QueueDescribeTimeout = 5 * time.Second

// QueueRunningScanLimit bounds how many running workflows one description
// inspects for in-flight activities; beyond it RunningSteps.Partial is set.
const QueueRunningScanLimit = 200

// queueDescribeParallel bounds the concurrent DescribeWorkflowExecution
// calls of one description.
const queueDescribeParallel = 8

// Task queue kinds of QueueReport.TaskQueues.
const (
	QueueKindProvisioning = "provisioning"
	QueueKindTestEnv      = "testenv"
)

// QueueReport is the data of GET /queue: Temporal's own description of the
// task queues this service uses (not a count of the service's records).
type QueueReport struct {
	// ObservedAt is when Temporal was asked; the answer is reused for
	// CacheTTLMS.
	ObservedAt time.Time `json:"observed_at"`
	CacheTTLMS int64     `json:"cache_ttl_ms"`
	// TaskQueues: the provisioning queue (--task-queue) and the
	// test-environment activity queue (<queue>-testenv).
	TaskQueues []TaskQueueDepth `json:"task_queues"`
	// RunningSteps are the in-flight activities.
	RunningSteps RunningSteps `json:"running_steps"`
}

// TaskQueueDepth is one task queue's backlog and pollers per task type.
type TaskQueueDepth struct {
	Name string `json:"name"`
	// Kind is provisioning or testenv.
	Kind     string        `json:"kind"`
	Workflow TaskTypeDepth `json:"workflow"`
	Activity TaskTypeDepth `json:"activity"`
}

// BacklogStats are Temporal's approximate task-queue statistics.
type BacklogStats struct {
	// Backlog is the approximate number of tasks waiting for a worker.
	Backlog int64 `json:"backlog"`
	// BacklogAgeSeconds is the approximate age of the oldest waiting task,
	// 0 when there is none.
	BacklogAgeSeconds float64 `json:"backlog_age_seconds"`
	// AddRate and DispatchRate are tasks per second added to and handed
	// out of the queue (approximate, recent).
	AddRate      float64 `json:"add_rate"`
	DispatchRate float64 `json:"dispatch_rate"`
}

// TaskTypeDepth is one task type of a task queue: the totals, the same
// per priority key (only keys Temporal has seen in use) and the pollers.
type TaskTypeDepth struct {
	BacklogStats
	ByPriority []PriorityDepth `json:"by_priority"`
	Pollers    []QueuePoller   `json:"pollers"`
}

// PriorityDepth is the backlog at one priority key (1 most urgent).
type PriorityDepth struct {
	Priority int `json:"priority"`
	BacklogStats
}

// QueuePoller is a worker Temporal saw polling the queue recently (it keeps
// one listed for a few minutes after its last poll).
type QueuePoller struct {
	Identity       string     `json:"identity"`
	LastAccessTime *time.Time `json:"last_access_time"`
	RatePerSecond  float64    `json:"rate_per_second"`
}

// RunningSteps counts in-flight activities: started and not finished, as
// Temporal's pending-activity state of each running workflow on the
// provisioning queue says (provisioning steps are RunNushell; test
// environments' activities are counted under their own types).
type RunningSteps struct {
	Count          int            `json:"count"`
	ByActivityType map[string]int `json:"by_activity_type"`
	// WorkflowsScanned is how many running workflows were inspected;
	// Partial is set when there were more than QueueRunningScanLimit.
	WorkflowsScanned int  `json:"workflows_scanned"`
	Partial          bool `json:"partial"`
}

// queueOp documents GET /queue.
func queueOp() apiOp {
	return apiOp{method: http.MethodGet, path: QueuePath,
		summary: "Task queue depth from Temporal's task-queue description: approximate backlog count and age per task queue (provisioning and testenv), task type and priority, pollers, and in-flight activities (running steps). Cached " +
			QueueCacheTTL.String() + "; takes no query parameters",
		success: []int{http.StatusOK}, data: typeOf[QueueReport](),
		errors: []int{http.StatusBadRequest, http.StatusServiceUnavailable}}
}

// queueReporter describes the service's task queues through Temporal and
// caches the answer for QueueCacheTTL.
type queueReporter struct {
	client client.Client
	queues []TaskQueueDepth // Name and Kind
	ttl    time.Duration
	// sem admits one refresh at a time; waiting callers then find the
	// fresh answer.
	sem    chan struct{}
	mu     sync.Mutex
	at     time.Time
	report QueueReport
	err    error
}

// routeQueue registers GET /queue and the queue gauges.
func (s *Server) routeQueue() {
	r := &queueReporter{
		client: s.client,
		queues: []TaskQueueDepth{
			{Name: s.taskQueue, Kind: QueueKindProvisioning},
			{Name: workflows.EnvTaskQueue(s.taskQueue), Kind: QueueKindTestEnv},
		},
		ttl: QueueCacheTTL,
		sem: make(chan struct{}, 1),
	}
	s.e.GET(QueuePath, func(c echo.Context) error {
		if params := c.QueryParams(); len(params) > 0 {
			first := slices.Sorted(maps.Keys(params))[0]
			return fieldErr(first, "unknown query parameter (GET /queue takes none)")
		}
		rep, err := r.get(c.Request().Context())
		if err != nil {
			return err
		}
		return ok(c, http.StatusOK, rep)
	})
	if s.metrics != nil {
		names := []string{r.queues[0].Name, r.queues[1].Name}
		if err := s.metrics.RegisterQueue(names, r.figures, QueueDescribeTimeout); err != nil {
			s.log.Warn("queue gauges not registered", "error", err)
		}
	}
}

// get answers the cached description, refreshing it when older than
// r.ttl. A failure is an *APIError (503).
func (r *queueReporter) get(ctx context.Context) (QueueReport, error) {
	select {
	case r.sem <- struct{}{}:
	case <-ctx.Done():
		return QueueReport{}, unavailable("temporal task-queue description", ctx.Err())
	}
	defer func() { <-r.sem }()
	r.mu.Lock()
	fresh := !r.at.IsZero() && time.Since(r.at) < r.ttl
	rep, err := r.report, r.err
	r.mu.Unlock()
	if !fresh {
		// Not the request's context: a client hanging up must not leave a
		// failure cached for everyone.
		dctx, cancel := context.WithTimeout(context.Background(), QueueDescribeTimeout)
		rep, err = r.describe(dctx)
		cancel()
		if err != nil {
			err = unavailable("temporal task-queue description", err)
		}
		r.mu.Lock()
		r.at, r.report, r.err = time.Now(), rep, err
		r.mu.Unlock()
	}
	return rep, err
}

// figures is the description as the queue gauges read it.
func (r *queueReporter) figures(ctx context.Context) (metrics.QueueFigures, error) {
	rep, err := r.get(ctx)
	if err != nil {
		return metrics.QueueFigures{}, err
	}
	var f metrics.QueueFigures
	for _, q := range rep.TaskQueues {
		for _, t := range []struct {
			name  string
			depth TaskTypeDepth
		}{{metrics.TaskTypeWorkflow, q.Workflow}, {metrics.TaskTypeActivity, q.Activity}} {
			f.Backlogs = append(f.Backlogs, metrics.QueueBacklog{TaskQueue: q.Name, TaskType: t.name,
				Count: t.depth.Backlog, Age: seconds(t.depth.BacklogAgeSeconds)})
			for _, p := range t.depth.ByPriority {
				f.Backlogs = append(f.Backlogs, metrics.QueueBacklog{TaskQueue: q.Name, TaskType: t.name, Priority: p.Priority,
					Count: p.Backlog, Age: seconds(p.BacklogAgeSeconds)})
			}
			f.Pollers = append(f.Pollers, metrics.QueuePollers{TaskQueue: q.Name, TaskType: t.name, Pollers: len(t.depth.Pollers)})
		}
	}
	f.RunningSteps = rep.RunningSteps.Count
	return f, nil
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// describe asks Temporal: the running workflows on the provisioning queue
// and their pending activities, then DescribeTaskQueue with report_stats
// for both task types of both queues.
func (r *queueReporter) describe(ctx context.Context) (QueueReport, error) {
	if r.client == nil {
		return QueueReport{}, errors.New("no Temporal client")
	}
	rep := QueueReport{ObservedAt: time.Now().UTC(), CacheTTLMS: r.ttl.Milliseconds(), TaskQueues: slices.Clone(r.queues)}
	// The running-steps scan comes first: the SDK fills the list request's
	// namespace with the client's, which DescribeTaskQueue (a raw call)
	// needs and the server is not told otherwise.
	running, namespace, err := r.runningSteps(ctx)
	if err != nil {
		return QueueReport{}, fmt.Errorf("list running workflows: %w", err)
	}
	rep.RunningSteps = running
	g, gctx := errgroup.WithContext(ctx)
	for i := range rep.TaskQueues {
		q := &rep.TaskQueues[i]
		for _, t := range []struct {
			typ  enumspb.TaskQueueType
			into *TaskTypeDepth
		}{{enumspb.TASK_QUEUE_TYPE_WORKFLOW, &q.Workflow}, {enumspb.TASK_QUEUE_TYPE_ACTIVITY, &q.Activity}} {
			g.Go(func() error {
				d, err := describeTaskQueue(gctx, r.client, namespace, q.Name, t.typ)
				if err != nil {
					return fmt.Errorf("describe task queue %s (%s): %w", q.Name, t.typ, err)
				}
				*t.into = d
				return nil
			})
		}
	}
	if err := g.Wait(); err != nil {
		return QueueReport{}, err
	}
	return rep, nil
}

func describeTaskQueue(ctx context.Context, c client.Client, namespace, queue string, typ enumspb.TaskQueueType) (TaskTypeDepth, error) {
	resp, err := c.WorkflowService().DescribeTaskQueue(ctx, &workflowservice.DescribeTaskQueueRequest{
		Namespace:     namespace,
		TaskQueue:     &taskqueuepb.TaskQueue{Name: queue, Kind: enumspb.TASK_QUEUE_KIND_NORMAL},
		TaskQueueType: typ,
		ReportStats:   true,
	})
	if err != nil {
		return TaskTypeDepth{}, err
	}
	d := TaskTypeDepth{BacklogStats: backlogStats(resp.GetStats()), ByPriority: []PriorityDepth{}, Pollers: []QueuePoller{}}
	for key, st := range resp.GetStatsByPriorityKey() {
		d.ByPriority = append(d.ByPriority, PriorityDepth{Priority: int(key), BacklogStats: backlogStats(st)})
	}
	slices.SortFunc(d.ByPriority, func(a, b PriorityDepth) int { return cmp.Compare(a.Priority, b.Priority) })
	for _, p := range resp.GetPollers() {
		qp := QueuePoller{Identity: p.GetIdentity(), RatePerSecond: p.GetRatePerSecond()}
		if ts := p.GetLastAccessTime(); ts != nil {
			t := ts.AsTime().UTC()
			qp.LastAccessTime = &t
		}
		d.Pollers = append(d.Pollers, qp)
	}
	slices.SortFunc(d.Pollers, func(a, b QueuePoller) int { return cmp.Compare(a.Identity, b.Identity) })
	return d, nil
}

func backlogStats(st *taskqueuepb.TaskQueueStats) BacklogStats {
	return BacklogStats{
		Backlog:           st.GetApproximateBacklogCount(),
		BacklogAgeSeconds: st.GetApproximateBacklogAge().AsDuration().Seconds(),
		AddRate:           float64(st.GetTasksAddRate()),
		DispatchRate:      float64(st.GetTasksDispatchRate()),
	}
}

// runningSteps counts the started, unfinished activities of the running
// workflows on the provisioning queue (at most QueueRunningScanLimit of
// them) and returns the client's namespace.
func (r *queueReporter) runningSteps(ctx context.Context) (RunningSteps, string, error) {
	req := &workflowservice.ListWorkflowExecutionsRequest{
		PageSize: QueueRunningScanLimit,
		Query:    fmt.Sprintf("TaskQueue = %q AND ExecutionStatus = 'Running'", r.queues[0].Name),
	}
	resp, err := r.client.ListWorkflow(ctx, req)
	if err != nil {
		return RunningSteps{}, req.GetNamespace(), err
	}
	execs := resp.GetExecutions()
	if len(execs) > QueueRunningScanLimit {
		execs = execs[:QueueRunningScanLimit]
	}
	rs := RunningSteps{ByActivityType: map[string]int{}, WorkflowsScanned: len(execs),
		Partial: len(resp.GetNextPageToken()) > 0 || len(resp.GetExecutions()) > QueueRunningScanLimit}
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(queueDescribeParallel)
	for _, ex := range execs {
		g.Go(func() error {
			d, err := r.client.DescribeWorkflowExecution(gctx, ex.GetExecution().GetWorkflowId(), ex.GetExecution().GetRunId())
			if err != nil {
				var nf *serviceerror.NotFound
				if errors.As(err, &nf) {
					return nil // gone since the listing
				}
				return err
			}
			mu.Lock()
			defer mu.Unlock()
			for _, a := range d.GetPendingActivities() {
				if inFlight(a.GetState(), a.GetLastStartedTime().AsTime(), a.GetLastAttemptCompleteTime().AsTime()) {
					rs.Count++
					rs.ByActivityType[a.GetActivityType().GetName()]++
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return RunningSteps{}, req.GetNamespace(), err
	}
	return rs, req.GetNamespace(), nil
}

// inFlight: a pending activity a worker is running now. A cancel request
// does not stop a started attempt, so CANCEL_REQUESTED counts when the
// last attempt started and has not completed.
func inFlight(state enumspb.PendingActivityState, lastStarted, lastCompleted time.Time) bool {
	switch state {
	case enumspb.PENDING_ACTIVITY_STATE_STARTED:
		return true
	case enumspb.PENDING_ACTIVITY_STATE_CANCEL_REQUESTED:
		return lastStarted.Unix() > 0 && lastStarted.After(lastCompleted)
	}
	return false
}
