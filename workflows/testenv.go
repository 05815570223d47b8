package workflows

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/provisioning/orchestrator/activities"
	"github.com/provisioning/orchestrator/testenv"
)

// TestEnvironmentWorkflowName is the registered type of environment
// workflows; the task API lists environments by it.
const TestEnvironmentWorkflowName = "TestEnvironment"

// RunTestsUpdate is the update that runs tests in a ready environment and
// returns their results: `temporal workflow update execute --name run-tests`.
// Its input is testenv.RunRequest; its result is activities.TestRun. A run
// while another is in progress, or after cleanup began, is rejected.
const RunTestsUpdate = "run-tests"

// CleanupSignal asks an environment to remove its Docker objects and end:
// `temporal workflow signal --name cleanup -w <env id>`. It takes no input.
const CleanupSignal = "cleanup"

// Rejection reasons of RunTestsUpdate, as ApplicationError types, so the
// REST API can answer 409 or 400.
const (
	ErrTypeRunInProgress  = "RunInProgress"
	ErrTypeEnvNotReady    = "EnvironmentNotReady"
	ErrTypeInvalidRunSpec = "InvalidRunRequest"
)

// Defaults for environments.
const (
	DefaultEnvTTL = 2 * time.Hour
	// maxKeptRuns bounds the run results an environment keeps in state.
	maxKeptRuns = 10
)

// TestEnvInput starts TestEnvironmentWorkflow. The API builds Plan from the
// request (templates resolved, defaults applied), so the workflow does not
// depend on files.
type TestEnvInput struct {
	// EnvID is the environment id = workflow id = task id.
	EnvID string `json:"env_id"`
	// Request is the original request, kept for display.
	Request testenv.CreateRequest `json:"request"`
	// Plan is what to create.
	Plan testenv.Plan `json:"plan"`
	// TTL bounds the environment's life; default DefaultEnvTTL.
	TTL time.Duration `json:"ttl"`
	// CreatedAt is when the API accepted the request.
	CreatedAt time.Time `json:"created_at"`
}

// Environment states, in the order an environment normally passes them.
const (
	EnvCreating = "creating"
	EnvReady    = "ready"
	EnvRunning  = "running"
	EnvPassed   = "passed"
	EnvFailed   = "failed"
	EnvCleaning = "cleaning"
	EnvCleaned  = "cleaned"
	// EnvError: creation failed (and was rolled back unless kept).
	EnvError = "error"
)

type envState struct {
	s       activities.EnvState
	version int64
	started bool
	cleanup bool
	// running is true from the start of a RunTestsUpdate handler until it
	// returns (Status says passed/failed before the handler's last steps).
	running bool
}

// TestEnvironmentWorkflow creates a test environment, serves test runs
// (RunTestsUpdate) until cleanup is signalled, auto_cleanup follows a run,
// the TTL expires, or the workflow is cancelled, and then removes every
// Docker object it created. Its timer is durable: a TTL outlives crashes.
func TestEnvironmentWorkflow(ctx workflow.Context, in TestEnvInput) (activities.EnvState, error) {
	ttl := in.TTL
	if ttl <= 0 {
		ttl = DefaultEnvTTL
	}
	created := in.CreatedAt
	if created.IsZero() {
		created = workflow.Now(ctx)
	}
	st := &envState{s: activities.EnvState{
		ID:          in.EnvID,
		Status:      EnvCreating,
		Type:        in.Request.Config.Type,
		Infra:       in.Request.Infra,
		Request:     in.Request,
		Network:     activities.EnvNetwork{Name: in.Plan.NetworkName, Subnet: in.Plan.Subnet},
		AutoStart:   in.Request.AutoStart,
		AutoCleanup: in.Request.AutoCleanup,
		CreatedAt:   created,
		ExpiresAt:   created.Add(ttl),
	}}
	for _, n := range in.Plan.Nodes {
		st.s.Nodes = append(st.s.Nodes, activities.NodeStatus{Node: n.Name, Role: n.Role, Name: n.ContainerName, Taskservs: n.Taskservs, NanoCPUs: n.NanoCPUs, MemoryBytes: n.MemoryBytes, State: "planned"})
	}
	if err := workflow.SetQueryHandler(ctx, StatusQuery, func() (activities.EnvState, error) {
		return st.s, nil
	}); err != nil {
		return st.s, err
	}
	if in.EnvID == "" || len(in.Plan.Nodes) == 0 {
		return st.s, temporal.NewNonRetryableApplicationError("env_id and plan.nodes are required", "InvalidInput", nil)
	}

	cleanupCh := workflow.GetSignalChannel(ctx, CleanupSignal)
	workflow.Go(ctx, func(ctx workflow.Context) {
		for {
			cleanupCh.Receive(ctx, nil)
			st.cleanup = true
		}
	})
	if err := workflow.SetUpdateHandlerWithOptions(ctx, RunTestsUpdate,
		func(ctx workflow.Context, req testenv.RunRequest) (activities.TestRun, error) {
			return st.runTests(ctx, in.Plan, req)
		},
		workflow.UpdateHandlerOptions{Validator: func(req testenv.RunRequest) error {
			if st.running {
				return temporal.NewApplicationError("a test run is already in progress in this environment", ErrTypeRunInProgress)
			}
			switch st.s.Status {
			case EnvRunning:
				return temporal.NewApplicationError("a test run is already in progress in this environment", ErrTypeRunInProgress)
			case EnvReady, EnvPassed, EnvFailed:
			default:
				return temporal.NewApplicationError(fmt.Sprintf("environment is %s, not ready for tests", st.s.Status), ErrTypeEnvNotReady)
			}
			if st.cleanup {
				return temporal.NewApplicationError("environment cleanup was requested", ErrTypeEnvNotReady)
			}
			if err := req.Validate(in.Plan); err != nil {
				return temporal.NewApplicationError(err.Error(), ErrTypeInvalidRunSpec)
			}
			return nil
		}},
	); err != nil {
		return st.s, err
	}

	if err := st.project(ctx); err != nil {
		return st.s, err
	}

	var env activities.EnvInfo
	err := workflow.ExecuteActivity(dockerCtx(ctx, 10*time.Minute), a.CreateEnvironment, activities.CreateEnvInput{
		Plan: in.Plan, Start: in.Request.AutoStart,
	}).Get(ctx, &env)
	if err != nil {
		cancelled := ctx.Err() != nil
		switch {
		case cancelled:
			// End like a cancel while ready: remove what was made.
			st.s.EndReason = "cancelled"
			st.s.LastStatus = EnvCreating
			st.s.Status = EnvCleaned
			if cerr := st.remove(ctx); cerr != nil {
				st.s.Status = EnvError
				st.s.Error = "cancelled during creation; cleanup failed: " + rootMessage(cerr)
			}
		case in.Request.KeepOnFailure:
			st.s.Status = EnvError
			st.s.Error = rootMessage(err)
		default:
			st.s.Status = EnvError
			st.s.Error = rootMessage(err)
			if cerr := st.remove(ctx); cerr != nil {
				st.s.Error += "; rollback failed: " + rootMessage(cerr)
			} else {
				st.s.Error += " (rolled back)"
			}
		}
		now := workflow.Now(ctx)
		st.s.FinishedAt = &now
		_ = st.projectFinal(ctx)
		if cancelled {
			return st.s, temporal.NewCanceledError("environment creation cancelled")
		}
		return st.s, temporal.NewNonRetryableApplicationError("environment creation failed: "+st.s.Error, "EnvironmentCreateFailed", nil)
	}
	st.started = in.Request.AutoStart
	st.s.Network.Subnet = env.Subnet
	st.s.Network.ID = env.NetworkID
	st.s.Nodes = withPlan(env.Nodes, in.Plan)
	st.s.Status = EnvReady
	if err := st.project(ctx); err != nil && ctx.Err() == nil {
		return st.s, err
	}

	// Serve runs until something ends the environment.
	remaining := st.s.ExpiresAt.Sub(workflow.Now(ctx))
	expired := false
	if remaining > 0 && ctx.Err() == nil {
		ok, err := workflow.AwaitWithTimeout(ctx, remaining, func() bool { return st.cleanup })
		expired = err == nil && !ok
	} else {
		expired = true
	}
	// Let a run in flight finish (its result is part of the state) unless
	// the workflow itself is being cancelled.
	if ctx.Err() == nil {
		_ = workflow.Await(ctx, func() bool { return !st.running && workflow.AllHandlersFinished(ctx) })
	}
	switch {
	case ctx.Err() != nil:
		st.s.EndReason = "cancelled"
	case expired:
		st.s.EndReason = "ttl expired"
	case st.s.AutoCleanup && len(st.s.Runs) > 0:
		st.s.EndReason = "auto_cleanup after run"
	default:
		st.s.EndReason = "cleanup requested"
	}
	lastStatus := st.s.Status
	st.s.Status = EnvCleaning
	_ = st.projectFinal(ctx)
	if err := st.remove(ctx); err != nil {
		st.s.Status = EnvError
		st.s.Error = "cleanup failed: " + rootMessage(err)
		_ = st.projectFinal(ctx)
		return st.s, err
	}
	st.s.Status = EnvCleaned
	st.s.LastStatus = lastStatus
	now := workflow.Now(ctx)
	st.s.FinishedAt = &now
	if err := st.projectFinal(ctx); err != nil {
		return st.s, err
	}
	if ctx.Err() != nil {
		return st.s, temporal.NewCanceledError("environment cancelled")
	}
	return st.s, nil
}

// runTests is the RunTestsUpdate handler body.
func (st *envState) runTests(ctx workflow.Context, plan testenv.Plan, req testenv.RunRequest) (activities.TestRun, error) {
	st.running = true
	defer func() { st.running = false }()
	st.s.Status = EnvRunning
	_ = st.project(ctx)
	if !st.started {
		if err := workflow.ExecuteActivity(dockerCtx(ctx, 5*time.Minute), a.StartEnvironment, plan.EnvID).Get(ctx, nil); err != nil {
			st.s.Status = EnvFailed
			st.s.Error = "starting the containers failed: " + rootMessage(err)
			if st.s.AutoCleanup {
				st.cleanup = true
			}
			_ = st.project(ctx)
			return activities.TestRun{}, err
		}
		st.started = true
	}
	specs := testenv.ExpandTests(req, plan)
	if len(specs) == 0 {
		for _, n := range plan.Nodes {
			specs = append(specs, testenv.DefaultChecks(plan, n)...)
		}
	}
	total := req.TimeoutSeconds
	if total <= 0 {
		total = 300
	}
	started := workflow.Now(ctx)
	var run activities.TestRun
	err := workflow.ExecuteActivity(dockerCtx(ctx, time.Duration(total)*time.Second+time.Minute), a.RunTests, activities.RunTestsInput{
		EnvID: plan.EnvID, Tests: specs, Nodes: st.s.Nodes,
	}).Get(ctx, &run)
	if err != nil {
		st.s.Status = EnvFailed
		st.s.Error = "test run failed: " + rootMessage(err)
		if st.s.AutoCleanup {
			// auto_cleanup means "do not keep it after the run", whatever
			// the run's outcome.
			st.cleanup = true
		}
		_ = st.project(ctx)
		return activities.TestRun{}, err
	}
	run.Number = 1
	if st.s.LastRun != nil {
		run.Number = st.s.LastRun.Number + 1
	}
	run.StartedAt = started
	run.FinishedAt = workflow.Now(ctx)
	st.s.Runs = append(st.s.Runs, run)
	if len(st.s.Runs) > maxKeptRuns {
		st.s.Runs = st.s.Runs[len(st.s.Runs)-maxKeptRuns:]
	}
	st.s.LastRun = &st.s.Runs[len(st.s.Runs)-1]
	if run.Passed {
		st.s.Status = EnvPassed
	} else {
		st.s.Status = EnvFailed
	}
	// Refresh node state (a test may have killed a container).
	var nodes []activities.NodeStatus
	if err := workflow.ExecuteActivity(dockerCtx(ctx, time.Minute), a.InspectEnvironment, plan.EnvID).Get(ctx, &nodes); err == nil && len(nodes) > 0 {
		st.s.Nodes = withPlan(nodes, plan)
	}
	if st.s.AutoCleanup {
		st.cleanup = true
	}
	_ = st.project(ctx)
	return run, nil
}

// withPlan completes the engine's view of the nodes with what only the plan
// knows (taskservs) and puts them in plan order (InspectNodes sorts by
// name).
func withPlan(nodes []activities.NodeStatus, plan testenv.Plan) []activities.NodeStatus {
	order := map[string]int{}
	for i, n := range plan.Nodes {
		order[n.Name] = i
	}
	out := slices.Clone(nodes)
	for i := range out {
		if n, ok := plan.Node(out[i].Node); ok && len(out[i].Taskservs) == 0 {
			out[i].Taskservs = slices.Clone(n.Taskservs)
		}
	}
	slices.SortStableFunc(out, func(x, y activities.NodeStatus) int { return order[x.Node] - order[y.Node] })
	return out
}

// remove deletes every Docker object of the environment, on a disconnected
// context so that cancellation cannot leave containers behind.
func (st *envState) remove(ctx workflow.Context) error {
	dctx, _ := workflow.NewDisconnectedContext(ctx)
	var removed activities.RemovedCounts
	err := workflow.ExecuteActivity(dockerCtx(dctx, 5*time.Minute), a.RemoveEnvironment, st.s.ID).Get(dctx, &removed)
	if err == nil {
		st.s.Removed = &removed
		for i := range st.s.Nodes {
			st.s.Nodes[i].State = "removed"
		}
	}
	return err
}

// dockerCtx applies options for Docker calls: bounded, heartbeating (so a
// crashed worker is noticed within 30s), and retried a few times because
// engine hiccups are transient; missing images and invalid specs are not.
func dockerCtx(ctx workflow.Context, timeout time.Duration) workflow.Context {
	return workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: timeout,
		HeartbeatTimeout:    30 * time.Second,
		WaitForCancellation: true,
		RetryPolicy: &temporal.RetryPolicy{
			InitialInterval:    time.Second,
			BackoffCoefficient: 2,
			MaximumInterval:    15 * time.Second,
			MaximumAttempts:    3,
			NonRetryableErrorTypes: []string{
				activities.ErrTypeImageMissing, activities.ErrTypeInvalidSpec,
			},
		},
	})
}

func (st *envState) project(ctx workflow.Context) error {
	st.version++
	st.s.UpdatedAt = workflow.Now(ctx)
	st.s.Version = st.version
	lctx := projectionCtx(ctx)
	return workflow.ExecuteLocalActivity(lctx, a.ProjectEnvironment, st.s.Clone()).Get(lctx, nil)
}

func (st *envState) projectFinal(ctx workflow.Context) error {
	dctx, _ := workflow.NewDisconnectedContext(ctx)
	return st.project(dctx)
}

// rootMessage is what actually went wrong: the message of the activity's
// ApplicationError, without the activity/retry wrappers around it.
func rootMessage(err error) string {
	var appErr *temporal.ApplicationError
	if errors.As(err, &appErr) {
		return appErr.Message()
	}
	var timeout *temporal.TimeoutError
	if errors.As(err, &timeout) {
		return "timed out (" + timeout.TimeoutType().String() + ")"
	}
	return err.Error()
}
