package workflows

import (
	"cmp"
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
// Its input is testenv.RunRequest; its result is testenv.TestRun. A run
// while another is in progress, or after cleanup began, is rejected.
const RunTestsUpdate = "run-tests"

// ConvergeUpdate converges a ready environment again: every node's
// taskservs are installed (again) with the provisioning script, followed by
// the idempotence check when asked. Its input is testenv.ConvergeRequest,
// its result testenv.ConvergeReport: `temporal workflow update execute
// --name converge`. Admitted like RunTestsUpdate.
const ConvergeUpdate = "converge"

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
	// Carry is set when the workflow continued as new: the environment
	// exists already and goes on serving with this state.
	Carry *EnvCarry `json:"carry,omitempty"`
	// ActivityTaskQueue is where the environment's Docker and converge
	// activities run: a queue of their own (EnvTaskQueue of the workflow's
	// queue) with its own slots, so that long test runs cannot take every
	// slot from provisioning steps. Empty: the workflow's own queue (as
	// environments started before the split do).
	ActivityTaskQueue string `json:"activity_task_queue,omitempty"`
	// UpdatesPerRun is how many runs and converges one workflow run serves
	// before it continues as new (keeping its history short); 0 means
	// DefaultUpdatesPerRun. Temporal's own suggestion also triggers it.
	UpdatesPerRun int `json:"updates_per_run,omitempty"`
	// AutoRun runs the default checks once the environment is ready (as a
	// POST .../run without a body would), then ends it if the request has
	// auto_cleanup: a scheduled `test quick` (schedule action
	// taskserv_test). Default false.
	AutoRun bool `json:"auto_run,omitempty"`
}

// EnvTaskQueue is the task queue of the test-environment activities of
// workflows on queue: "<queue>-testenv". Workers poll both.
func EnvTaskQueue(queue string) string { return queue + "-testenv" }

// DefaultUpdatesPerRun is TestEnvInput.UpdatesPerRun's default: a run
// costs about 15 history events, so a workflow run stays near 1,500
// events, far below Temporal's limits, however long the environment lives.
const DefaultUpdatesPerRun = 100

// EnvCarry is what an environment workflow hands to its next run when it
// continues as new.
type EnvCarry struct {
	State   testenv.EnvState `json:"state"`
	Started bool             `json:"started"`
	Cleanup bool             `json:"cleanup"`
}

// Environment states, in the order an environment normally passes them.
const (
	EnvCreating = "creating"
	// EnvConverging: the provisioning script installs the taskservs
	// inside the started nodes.
	EnvConverging = "converging"
	EnvReady      = "ready"
	EnvRunning    = "running"
	EnvPassed     = "passed"
	EnvFailed     = "failed"
	EnvCleaning   = "cleaning"
	EnvCleaned    = "cleaned"
	// EnvError: creation failed (and was rolled back unless kept).
	EnvError = "error"
)

// envWorkflow is one test environment's workflow: its input and the state
// the status query returns and the task store receives.
type envWorkflow struct {
	in      TestEnvInput
	s       testenv.EnvState
	version int64
	// started: the containers were started (auto_start, or by a first run).
	started bool
	// cleanup: cleanup was signalled or follows from auto_cleanup.
	cleanup bool
	// running is true from the start of a RunTestsUpdate handler until it
	// returns (Status says passed/failed before the handler's last steps).
	running bool
	// updates counts the runs and converges this workflow run served.
	updates int
}

// envQueueKey holds the environment's ActivityTaskQueue in its context, so
// that every engine activity option set (engineCtx) uses it.
type envQueueKey struct{}

// TestEnvironmentWorkflow creates a test environment, serves test runs
// (RunTestsUpdate) until cleanup is signalled, auto_cleanup follows a run,
// the TTL expires, or the workflow is cancelled, and then removes every
// Docker object it created. Its timer is durable: a TTL outlives crashes.
func TestEnvironmentWorkflow(ctx workflow.Context, in TestEnvInput) (testenv.EnvState, error) {
	w := newEnvWorkflow(ctx, in)
	ctx = w.withQueue(ctx)
	if err := w.setup(ctx); err != nil {
		return w.s, err
	}
	if in.Carry == nil {
		if err := w.create(ctx); err != nil {
			return w.s, err
		}
		if in.AutoRun && ctx.Err() == nil {
			// Its outcome is the environment's state (passed/failed).
			_, _ = w.runTests(ctx, testenv.RunRequest{})
		}
	}
	expired, cont := w.serve(ctx)
	if cont {
		next := w.in
		next.Carry = &EnvCarry{State: w.s.Clone(), Started: w.started, Cleanup: w.cleanup}
		return w.s, workflow.NewContinueAsNewError(ctx, TestEnvironmentWorkflowName, next)
	}
	return w.teardown(ctx, expired)
}

// withQueue puts the environment's activity task queue into ctx for
// engineCtx; the update handlers get the root context, so each applies it.
func (w *envWorkflow) withQueue(ctx workflow.Context) workflow.Context {
	if w.in.ActivityTaskQueue == "" {
		return ctx
	}
	return workflow.WithValue(ctx, envQueueKey{}, w.in.ActivityTaskQueue)
}

func newEnvWorkflow(ctx workflow.Context, in TestEnvInput) *envWorkflow {
	ttl := in.TTL
	if ttl <= 0 {
		ttl = DefaultEnvTTL
	}
	created := in.CreatedAt
	if created.IsZero() {
		created = workflow.Now(ctx)
	}
	if in.Carry != nil {
		w := &envWorkflow{in: in, s: in.Carry.State, started: in.Carry.Started, cleanup: in.Carry.Cleanup}
		w.s.Request = in.Request
		w.version = w.s.Version
		return w
	}
	w := &envWorkflow{in: in, s: testenv.EnvState{
		ID:          in.EnvID,
		Status:      EnvCreating,
		Type:        in.Request.Config.Type,
		Infra:       in.Request.Infra,
		Request:     in.Request,
		Network:     testenv.EnvNetwork{Name: in.Plan.NetworkName, Subnet: in.Plan.Subnet},
		AutoStart:   in.Request.AutoStart,
		AutoCleanup: in.Request.AutoCleanup,
		CreatedAt:   created,
		ExpiresAt:   created.Add(ttl),
	}}
	for _, n := range in.Plan.Nodes {
		w.s.Nodes = append(w.s.Nodes, testenv.NodeStatus{Node: n.Name, Role: n.Role, Name: n.ContainerName, Taskservs: n.Taskservs, NanoCPUs: n.NanoCPUs, MemoryBytes: n.MemoryBytes, State: "planned"})
	}
	return w
}

// setup registers the status query (first, so it answers from the start),
// checks the input, and registers the cleanup signal and the run-tests
// update with its validator.
func (w *envWorkflow) setup(ctx workflow.Context) error {
	if err := workflow.SetQueryHandler(ctx, StatusQuery, func() (testenv.EnvState, error) {
		return w.s, nil
	}); err != nil {
		return err
	}
	if w.in.EnvID == "" || len(w.in.Plan.Nodes) == 0 {
		return temporal.NewNonRetryableApplicationError("env_id and plan.nodes are required", ErrTypeInvalidInput, nil)
	}
	cleanupCh := workflow.GetSignalChannel(ctx, CleanupSignal)
	workflow.Go(ctx, func(ctx workflow.Context) {
		for {
			cleanupCh.Receive(ctx, nil)
			w.cleanup = true
		}
	})
	if err := workflow.SetUpdateHandlerWithOptions(ctx, RunTestsUpdate, w.runTests,
		workflow.UpdateHandlerOptions{Validator: w.validateRun}); err != nil {
		return err
	}
	return workflow.SetUpdateHandlerWithOptions(ctx, ConvergeUpdate, w.convergeUpdate,
		workflow.UpdateHandlerOptions{Validator: func(testenv.ConvergeRequest) error { return w.admit() }})
}

// validateRun admits a run only into a ready environment with no run in
// progress and no cleanup requested, and only with tests that fit the plan;
// a rejected update never enters history.
func (w *envWorkflow) validateRun(req testenv.RunRequest) error {
	if err := w.admit(); err != nil {
		return err
	}
	if err := req.Validate(w.in.Plan); err != nil {
		return temporal.NewApplicationError(err.Error(), ErrTypeInvalidRunSpec)
	}
	return nil
}

// admit lets a run or converge in only when the environment is ready, no
// other one is in progress and no cleanup was requested.
func (w *envWorkflow) admit() error {
	if w.running {
		return temporal.NewApplicationError("a test run is already in progress in this environment", ErrTypeRunInProgress)
	}
	switch w.s.Status {
	case EnvRunning:
		return temporal.NewApplicationError("a test run is already in progress in this environment", ErrTypeRunInProgress)
	case EnvReady, EnvPassed, EnvFailed:
	default:
		return temporal.NewApplicationError(fmt.Sprintf("environment is %s, not ready for tests", w.s.Status), ErrTypeEnvNotReady)
	}
	if w.cleanup {
		return temporal.NewApplicationError("environment cleanup was requested", ErrTypeEnvNotReady)
	}
	return nil
}

// create makes the environment and marks it ready. On failure it rolls back
// (unless keep_on_failure) and returns the workflow's error.
func (w *envWorkflow) create(ctx workflow.Context) error {
	if err := w.project(ctx); err != nil {
		return err
	}
	var env testenv.EnvInfo
	err := workflow.ExecuteActivity(dockerCtx(ctx, 10*time.Minute), a.CreateEnvironment, activities.CreateEnvInput{
		Plan: w.in.Plan, Start: w.in.Request.AutoStart,
	}).Get(ctx, &env)
	if err != nil {
		return w.createFailed(ctx, err)
	}
	w.started = w.in.Request.AutoStart
	w.s.Network.Subnet = env.Subnet
	w.s.Network.ID = env.NetworkID
	w.s.Nodes = withPlan(env.Nodes, w.in.Plan)
	if w.started && w.convergeVersion(ctx) {
		if err := w.convergeAndCheck(ctx, w.in.Request.Idempotence); err != nil {
			return w.createFailed(ctx, err)
		}
	}
	w.s.Status = EnvReady
	if err := w.project(ctx); err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}

// createFailed ends an environment whose creation failed or was cancelled:
// what was made is removed, except for keep_on_failure (debugging).
func (w *envWorkflow) createFailed(ctx workflow.Context, err error) error {
	cancelled := ctx.Err() != nil
	switch {
	case cancelled:
		// End like a cancel while ready: remove what was made.
		w.s.EndReason = "cancelled"
		w.s.LastStatus = EnvCreating
		w.s.Status = EnvCleaned
		if cerr := w.remove(ctx); cerr != nil {
			w.s.Status = EnvError
			w.s.Error = "cancelled during creation; cleanup failed: " + rootMessage(cerr)
		}
	case w.in.Request.KeepOnFailure:
		w.s.Status = EnvError
		w.s.Error = rootMessage(err)
	default:
		w.s.Status = EnvError
		w.s.Error = rootMessage(err)
		if cerr := w.remove(ctx); cerr != nil {
			w.s.Error += "; rollback failed: " + rootMessage(cerr)
		} else {
			w.s.Error += " (rolled back)"
		}
	}
	now := workflow.Now(ctx)
	w.s.FinishedAt = &now
	_ = w.projectFinal(ctx)
	if cancelled {
		return temporal.NewCanceledError("environment creation cancelled")
	}
	return temporal.NewNonRetryableApplicationError("environment creation failed: "+w.s.Error, ErrTypeEnvironmentCreateFailed, nil)
}

// serve waits until something ends the environment and reports whether
// that was the TTL, or whether the workflow should continue as new instead
// (after UpdatesPerRun runs and converges, or when Temporal suggests it,
// and only between updates). A run in flight finishes first (its result is
// part of the state) unless the workflow itself is being cancelled.
func (w *envWorkflow) serve(ctx workflow.Context) (expired, cont bool) {
	limit := cmp.Or(w.in.UpdatesPerRun, DefaultUpdatesPerRun)
	shouldContinue := func() bool {
		return !w.running && (w.updates >= limit || workflow.GetInfo(ctx).GetContinueAsNewSuggested())
	}
	remaining := w.s.ExpiresAt.Sub(workflow.Now(ctx))
	if remaining > 0 && ctx.Err() == nil {
		ok, err := workflow.AwaitWithTimeout(ctx, remaining, func() bool { return w.cleanup || shouldContinue() })
		expired = err == nil && !ok
	} else {
		expired = true
	}
	if ctx.Err() == nil {
		_ = workflow.Await(ctx, func() bool { return !w.running && workflow.AllHandlersFinished(ctx) })
	}
	cont = !expired && !w.cleanup && ctx.Err() == nil && shouldContinue()
	return expired, cont
}

// teardown removes every Docker object of the environment and records why
// it ended.
func (w *envWorkflow) teardown(ctx workflow.Context, expired bool) (testenv.EnvState, error) {
	if ctx.Err() != nil {
		// A run or converge cut short by the cancellation ends first, so
		// its caller gets the update's answer and its projection is not
		// written over the final ones.
		dctx, _ := workflow.NewDisconnectedContext(ctx)
		_ = workflow.Await(dctx, func() bool { return workflow.AllHandlersFinished(dctx) })
	}
	switch {
	case ctx.Err() != nil:
		w.s.EndReason = "cancelled"
	case expired:
		w.s.EndReason = "ttl expired"
	case w.s.AutoCleanup && len(w.s.Runs) > 0:
		w.s.EndReason = "auto_cleanup after run"
	default:
		w.s.EndReason = "cleanup requested"
	}
	lastStatus := w.s.Status
	w.s.Status = EnvCleaning
	_ = w.projectFinal(ctx)
	if err := w.remove(ctx); err != nil {
		w.s.Status = EnvError
		w.s.Error = "cleanup failed: " + rootMessage(err)
		_ = w.projectFinal(ctx)
		return w.s, err
	}
	w.s.Status = EnvCleaned
	w.s.LastStatus = lastStatus
	now := workflow.Now(ctx)
	w.s.FinishedAt = &now
	if err := w.projectFinal(ctx); err != nil {
		return w.s, err
	}
	if ctx.Err() != nil {
		return w.s, temporal.NewCanceledError("environment cancelled")
	}
	return w.s, nil
}

// runTests is the RunTestsUpdate handler.
func (w *envWorkflow) runTests(ctx workflow.Context, req testenv.RunRequest) (testenv.TestRun, error) {
	ctx = w.withQueue(ctx)
	plan := w.in.Plan
	w.updates++
	w.running = true
	defer func() { w.running = false }()
	w.s.Status = EnvRunning
	_ = w.project(ctx)
	if !w.started {
		if err := workflow.ExecuteActivity(dockerCtx(ctx, 5*time.Minute), a.StartEnvironment, plan.EnvID).Get(ctx, nil); err != nil {
			return w.failRun(ctx, "starting the containers failed", err)
		}
		w.started = true
		if w.convergeVersion(ctx) {
			if err := w.convergeAndCheck(ctx, w.in.Request.Idempotence); err != nil {
				return w.failRun(ctx, "converge failed", err)
			}
			w.s.Status = EnvRunning
		}
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
	var run testenv.TestRun
	err := workflow.ExecuteActivity(dockerCtx(ctx, time.Duration(total)*time.Second+time.Minute), a.RunTests, activities.RunTestsInput{
		EnvID: plan.EnvID, Tests: specs, Nodes: w.s.Nodes, Infra: w.infra(), Settings: w.settings(),
	}).Get(ctx, &run)
	if err != nil {
		return w.failRun(ctx, "test run failed", err)
	}
	run.Number = 1
	if w.s.LastRun != nil {
		run.Number = w.s.LastRun.Number + 1
	}
	run.StartedAt = started
	run.FinishedAt = workflow.Now(ctx)
	// Only the latest run keeps its output: the state travels through
	// every projection and a continue-as-new.
	for i := range w.s.Runs {
		w.s.Runs[i] = w.s.Runs[i].WithoutOutput()
	}
	w.s.Runs = append(w.s.Runs, run)
	if len(w.s.Runs) > maxKeptRuns {
		w.s.Runs = w.s.Runs[len(w.s.Runs)-maxKeptRuns:]
	}
	w.s.LastRun = &w.s.Runs[len(w.s.Runs)-1]
	if run.Passed {
		w.s.Status = EnvPassed
	} else {
		w.s.Status = EnvFailed
	}
	// Refresh node state (a test may have killed a container).
	var nodes []testenv.NodeStatus
	if err := workflow.ExecuteActivity(dockerCtx(ctx, time.Minute), a.InspectEnvironment, plan.EnvID).Get(ctx, &nodes); err == nil && len(nodes) > 0 {
		w.s.Nodes = withPlan(nodes, plan)
	}
	if w.s.AutoCleanup {
		w.cleanup = true
	}
	_ = w.project(ctx)
	return run, nil
}

// failRun marks the environment failed by a run that could not complete
// (what names the step), projects it, and returns err as the update's
// result. auto_cleanup means "do not keep it after the run", whatever the
// run's outcome.
func (w *envWorkflow) failRun(ctx workflow.Context, what string, err error) (testenv.TestRun, error) {
	w.s.Status = EnvFailed
	w.s.Error = what + ": " + rootMessage(err)
	if w.s.AutoCleanup {
		w.cleanup = true
	}
	_ = w.project(ctx)
	return testenv.TestRun{}, err
}

// convergeChangeID versions the converge step: environments recorded
// before it existed replay without it.
const convergeChangeID = "converge-taskservs"

// convergeVersion reports whether this run converges its nodes.
func (w *envWorkflow) convergeVersion(ctx workflow.Context) bool {
	return workflow.GetVersion(ctx, convergeChangeID, workflow.DefaultVersion, 1) >= 1
}

// infra and settings are what the provisioning script gets in the nodes.
func (w *envWorkflow) infra() string { return cmp.Or(w.in.Request.Infra, testenv.DefaultInfra) }

func (w *envWorkflow) settings() string {
	return cmp.Or(w.in.Request.Settings, testenv.DefaultSettings)
}

// convergeAndCheck converges the nodes and, when idempotence is asked,
// converges them a second time and checks that nothing changed.
func (w *envWorkflow) convergeAndCheck(ctx workflow.Context, idempotence bool) error {
	w.s.Idempotence = nil
	if err := w.install(ctx, &w.s.Converge); err != nil {
		return err
	}
	if !idempotence {
		return nil
	}
	check := &testenv.IdempotenceCheck{}
	w.s.Idempotence = check
	err := w.install(ctx, &check.Results)
	check.Evaluate()
	if !check.Passed {
		return temporal.NewNonRetryableApplicationError(check.Summary(), ErrTypeIdempotenceFailed, err)
	}
	return nil
}

// convergeUpdate is the ConvergeUpdate handler: it starts the containers
// if they are not running yet, converges (with the idempotence check when
// asked, by the request or else by the environment's option) and leaves
// the environment ready, or failed with the error naming what failed.
func (w *envWorkflow) convergeUpdate(ctx workflow.Context, req testenv.ConvergeRequest) (testenv.ConvergeReport, error) {
	ctx = w.withQueue(ctx)
	w.updates++
	w.running = true
	defer func() { w.running = false }()
	idempotence := w.in.Request.Idempotence
	if req.Idempotence != nil {
		idempotence = *req.Idempotence
	}
	w.s.Status = EnvConverging
	w.s.Error = ""
	_ = w.project(ctx)
	var err error
	if !w.started {
		err = workflow.ExecuteActivity(dockerCtx(ctx, 5*time.Minute), a.StartEnvironment, w.in.Plan.EnvID).Get(ctx, nil)
		w.started = err == nil
	}
	if err == nil {
		err = w.convergeAndCheck(ctx, idempotence)
	}
	rep := testenv.ConvergeReport{Passed: err == nil, Converge: slices.Clone(w.s.Converge)}
	if w.s.Idempotence != nil {
		c := *w.s.Idempotence
		rep.Idempotence = &c
	}
	if err != nil {
		w.s.Status = EnvFailed
		w.s.Error = "converge failed: " + rootMessage(err)
		rep.Error = w.s.Error
	} else {
		w.s.Status = EnvReady
	}
	_ = w.project(ctx)
	return rep, nil
}

// install installs every node's taskservs inside the node with the user's
// provisioning script, recording one result per install in *results:
// control-plane nodes first, then the others; the nodes of one phase in
// parallel, each node's taskservs in its listed order. The first failure
// stops what has not started and is returned.
func (w *envWorkflow) install(ctx workflow.Context, results *[]testenv.TaskservResult) error {
	plan := w.in.Plan
	var phases [2][]testenv.NodePlan
	for _, n := range plan.Nodes {
		if len(n.Taskservs) == 0 {
			continue
		}
		if n.Role == testenv.RoleControlPlane {
			phases[0] = append(phases[0], n)
		} else {
			phases[1] = append(phases[1], n)
		}
	}
	if len(phases[0])+len(phases[1]) == 0 {
		return nil
	}
	containers := map[string]string{}
	for _, n := range w.s.Nodes {
		containers[n.Node] = n.ContainerID
	}
	infra, settings := w.infra(), w.settings()
	index := map[string]int{}
	*results = nil
	for _, phase := range phases {
		for _, n := range phase {
			for _, ts := range n.Taskservs {
				index[n.Name+"/"+ts] = len(*results)
				*results = append(*results, testenv.TaskservResult{Node: n.Name, Taskserv: ts, Status: "pending"})
			}
		}
	}
	w.s.Status = EnvConverging
	_ = w.project(ctx)
	actx := convergeCtx(ctx)
	var failure error
	for _, phase := range phases {
		sel := workflow.NewSelector(ctx)
		next := map[string]int{}
		pending := 0
		var startNext func(n testenv.NodePlan)
		startNext = func(n testenv.NodePlan) {
			i := next[n.Name]
			if i >= len(n.Taskservs) || failure != nil {
				return
			}
			next[n.Name]++
			ts := n.Taskservs[i]
			r := &(*results)[index[n.Name+"/"+ts]]
			r.Status = "running"
			pending++
			f := workflow.ExecuteActivity(actx, a.ConvergeTaskserv, activities.ConvergeInput{
				EnvID: plan.EnvID, ContainerID: containers[n.Name],
				Spec: testenv.ConvergeSpec{Node: n.Name, Taskserv: ts, Infra: infra, Settings: settings},
			})
			sel.AddFuture(f, func(f workflow.Future) {
				pending--
				var res testenv.TaskservResult
				if err := f.Get(ctx, &res); err != nil {
					w.recordConvergeFailure(r, n.Name, ts, err)
					if failure == nil {
						failure = temporal.NewNonRetryableApplicationError(r.Error, ErrTypeConvergeFailed, err)
					}
					return
				}
				*r = res
				startNext(n)
			})
		}
		for _, n := range phase {
			startNext(n)
		}
		// One projection per finished install, from this coroutine only,
		// so versions stay in order.
		for pending > 0 {
			sel.Select(ctx)
			_ = w.project(ctx)
		}
		if failure != nil {
			return failure
		}
	}
	return nil
}

// recordConvergeFailure fills a failed install's result from the
// activity's error details (exit code, output, attempts) when it has them.
func (w *envWorkflow) recordConvergeFailure(r *testenv.TaskservResult, node, ts string, err error) {
	var appErr *temporal.ApplicationError
	var details testenv.TaskservResult
	if errors.As(err, &appErr) && appErr.HasDetails() && appErr.Details(&details) == nil {
		*r = details
	}
	r.Node, r.Taskserv, r.Status = node, ts, "failed"
	if r.Error == "" {
		r.Error = fmt.Sprintf("taskserv %s on node %s: %s", ts, node, rootMessage(err))
	}
}

// convergeCtx applies the options of taskserv installs: as long as a
// provisioning step may take, heartbeating, retried like provisioning
// steps (permanent exit codes and impossible specs are not retried).
func convergeCtx(ctx workflow.Context) workflow.Context {
	return engineCtx(ctx, 31*time.Minute, 30*time.Second,
		activities.ErrTypeNushellPermanent, activities.ErrTypeInvalidSpec, activities.ErrTypeNoDocker)
}

// withPlan completes the engine's view of the nodes with what only the plan
// knows (taskservs) and puts them in plan order (InspectNodes sorts by
// name).
func withPlan(nodes []testenv.NodeStatus, plan testenv.Plan) []testenv.NodeStatus {
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
	slices.SortStableFunc(out, func(x, y testenv.NodeStatus) int { return order[x.Node] - order[y.Node] })
	return out
}

// remove deletes every Docker object of the environment, on a disconnected
// context so that cancellation cannot leave containers behind.
func (w *envWorkflow) remove(ctx workflow.Context) error {
	dctx, _ := workflow.NewDisconnectedContext(ctx)
	var removed testenv.RemovedCounts
	err := workflow.ExecuteActivity(dockerCtx(dctx, 5*time.Minute), a.RemoveEnvironment, w.s.ID).Get(dctx, &removed)
	if err == nil {
		w.s.Removed = &removed
		for i := range w.s.Nodes {
			w.s.Nodes[i].State = "removed"
		}
	}
	return err
}

// dockerCtx applies options for Docker calls: bounded, heartbeating (so a
// crashed worker is noticed within 30s), and retried a few times because
// engine hiccups are transient; missing images and invalid specs are not.
func dockerCtx(ctx workflow.Context, timeout time.Duration) workflow.Context {
	return engineCtx(ctx, timeout, 15*time.Second, activities.ErrTypeImageMissing, activities.ErrTypeInvalidSpec)
}

// engineCtx is the shape every engine activity shares: bounded by timeout,
// a 30 s heartbeat timeout, cancellation awaited, 3 attempts with
// exponential backoff up to maxInterval, nonRetryable error types not
// retried.
func engineCtx(ctx workflow.Context, timeout, maxInterval time.Duration, nonRetryable ...string) workflow.Context {
	queue, _ := ctx.Value(envQueueKey{}).(string)
	return workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		TaskQueue:           queue,
		StartToCloseTimeout: timeout,
		HeartbeatTimeout:    30 * time.Second,
		WaitForCancellation: true,
		RetryPolicy: &temporal.RetryPolicy{
			InitialInterval:        time.Second,
			BackoffCoefficient:     2,
			MaximumInterval:        maxInterval,
			MaximumAttempts:        3,
			NonRetryableErrorTypes: nonRetryable,
		},
	})
}

// project writes the state's next version to the task store and shows its
// phase as the workflow's current details in the Web UI; every status
// change passes here.
func (w *envWorkflow) project(ctx workflow.Context) error {
	workflow.SetCurrentDetails(ctx, envDetails(w.s))
	w.version++
	w.s.UpdatedAt = workflow.Now(ctx)
	w.s.Version = w.version
	lctx := projectionCtx(ctx)
	return workflow.ExecuteLocalActivity(lctx, a.ProjectEnvironment, w.s.Clone()).Get(lctx, nil)
}

func (w *envWorkflow) projectFinal(ctx workflow.Context) error {
	dctx, _ := workflow.NewDisconnectedContext(ctx)
	return w.project(dctx)
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
