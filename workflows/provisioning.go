package workflows

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/provisioning/orchestrator/activities"
	"github.com/provisioning/orchestrator/internal/tailbuf"
	"github.com/provisioning/orchestrator/storage"
)

// a names activities for the workflows; the worker registers a real
// *activities.Activities under the same method names.
var a *activities.Activities

// maxTaskOutput bounds a task's combined output and error text.
const maxTaskOutput = 256 << 10

// ServerCreateWorkflow creates each server with one Nushell call, up to
// Policy.Parallelism at a time, each retried on its own.
//
// Without servers it creates every server the settings define: it asks
// the provisioning script (`server list`, the ListServers activity, stored
// as step ListServersStep) once the task is Running, then runs one step per
// name. A list that is empty, too long or has a bad name fails the task.
func ServerCreateWorkflow(ctx workflow.Context, in ServerCreateInput) (storage.Task, error) {
	w := newProvisioning(in.Common, in.Task(), serverSteps(in, in.Servers), in.Validate)
	if len(in.Servers) == 0 {
		// Before ListServersChange an empty list failed validation in the
		// workflow; histories of such runs must replay that way.
		if workflow.GetVersion(ctx, ListServersChange, workflow.DefaultVersion, 1) == workflow.DefaultVersion {
			w.validate = in.validateRequired
		} else {
			w.expand = func(ctx workflow.Context) ([]step, error) { return listServers(ctx, w, in) }
		}
	}
	return w.run(ctx)
}

// ListServersChange is the workflow.GetVersion change id of `servers: []`
// meaning every server the settings define.
const ListServersChange = "server-create-list-servers"

// ListServersStep is the step name `server list` runs (and stores its
// output) under; it cannot clash with a server's name, which has no spaces.
const ListServersStep = "list servers"

// ErrTypeServerListFailed is the error type of a server create without
// servers whose servers could not be listed, or whose list cannot be
// created (empty, too long, a bad name).
const ErrTypeServerListFailed = "ServerListFailed"

func serverSteps(in ServerCreateInput, servers []string) []step {
	steps := make([]step, len(servers))
	for i, s := range servers {
		steps[i] = step{name: s, args: in.ServerArgs(s)}
	}
	return steps
}

// listServers asks the provisioning script for the servers the settings
// define, with the steps' retries and timeouts, and checks the list.
func listServers(ctx workflow.Context, w *provisioning, in ServerCreateInput) ([]step, error) {
	var servers []string
	err := workflow.ExecuteActivity(w.stepCtx(ctx), a.ListServers, activities.NuStep{
		TaskID: in.TaskID, Step: ListServersStep, Args: in.ServerListArgs(),
	}).Get(ctx, &servers)
	if err != nil {
		var canceled *temporal.CanceledError
		if errors.As(err, &canceled) {
			return nil, err
		}
		why := err.Error()
		var appErr *temporal.ApplicationError
		var details activities.NuStepResult
		if errors.As(err, &appErr) && appErr.HasDetails() && appErr.Details(&details) == nil && strings.TrimSpace(details.Stderr) != "" {
			why = tailbuf.LastLine(details.Stderr)
		}
		return nil, fmt.Errorf("could not list the servers the settings define (`server list --infra %s --settings %s`): %s", in.Infra, in.Settings, why)
	}
	if err := ValidateListed(servers); err != nil {
		return nil, fmt.Errorf("cannot create the servers `server list` named: %w", err)
	}
	return serverSteps(in, servers), nil
}

// TaskservCreateWorkflow installs a taskserv on each server (one Nushell
// call per server), or once for the whole infra when no server is given.
func TaskservCreateWorkflow(ctx workflow.Context, in TaskservCreateInput) (storage.Task, error) {
	var steps []step
	for _, s := range in.Servers {
		steps = append(steps, step{name: s, args: in.TaskservArgs(s)})
	}
	if len(steps) == 0 {
		steps = []step{{name: in.Taskserv, args: in.TaskservArgs("")}}
	}
	return newProvisioning(in.Common, in.Task(), steps, in.Validate).run(ctx)
}

// ClusterCreateWorkflow builds a cluster with one Nushell call.
func ClusterCreateWorkflow(ctx workflow.Context, in ClusterCreateInput) (storage.Task, error) {
	steps := []step{{name: in.Cluster, args: in.ClusterArgs()}}
	return newProvisioning(in.Common, in.Task(), steps, in.Validate).run(ctx)
}

type step struct {
	name string
	args []string
}

// provisioning is one provisioning workflow run: its input, policy and the
// task it projects. The status query returns the task.
type provisioning struct {
	common   Common
	steps    []step
	validate func() error
	policy   ExecPolicy
	task     storage.Task
	// cancelled is set once the workflow is cancelled or a step reports
	// cancellation: no new step starts.
	cancelled bool
	// reprioritized is set once SetPriorityUpdate changed the priority:
	// steps then carry it explicitly instead of inheriting the start's.
	reprioritized bool
	// expand, when set, finds the steps once the task is Running (a server
	// create without servers lists them); steps is empty until then.
	expand func(ctx workflow.Context) ([]step, error)
	// notify delivers status changes to the task's webhook; nil without
	// one.
	notify *notifier
}

func newProvisioning(common Common, spec TaskSpec, steps []step, validate func() error) *provisioning {
	return &provisioning{
		common:   common,
		steps:    steps,
		validate: validate,
		policy:   common.Policy.WithDefaults(),
		task: storage.Normalize(storage.Task{
			ID:           common.TaskID,
			Name:         spec.Name,
			Command:      spec.Command,
			Args:         spec.Args,
			Status:       storage.StatusPending,
			CreatedAt:    common.CreatedAt,
			WorkflowType: spec.Workflow,
			Priority:     common.Priority,
			Dependencies: slices.Clone(common.Dependencies),
			Parent:       common.Parent,
			Progress:     storage.Progress{Total: len(steps)},
		}),
	}
}

func (w *provisioning) run(ctx workflow.Context) (storage.Task, error) {
	if err := w.setup(ctx); err != nil {
		return w.task, err
	}
	if w.common.TaskID == "" {
		// Without an ID there is nowhere to project to.
		return w.task, temporal.NewNonRetryableApplicationError("task_id: must not be empty", ErrTypeInvalidInput, nil)
	}
	// Only with a webhook: without one nothing new is recorded, so older
	// histories replay unchanged.
	w.notify = newNotifier(ctx, w.common.Webhook)
	task, err := w.execute(ctx)
	// Whatever the outcome, the changes already queued reach the webhook
	// before the workflow ends.
	w.notify.drain(ctx)
	return task, err
}

// execute is run after setup: validate, start, run the steps, conclude.
func (w *provisioning) execute(ctx workflow.Context) (storage.Task, error) {
	if err := w.validate(); err != nil {
		// Invalid input can never succeed: fail fast, visibly, without retries.
		now := workflow.Now(ctx)
		w.task.StartedAt = &now
		return w.finish(ctx, storage.StatusFailed, "", "invalid input: "+err.Error(),
			temporal.NewNonRetryableApplicationError(err.Error(), ErrTypeInvalidInput, nil))
	}
	if err := w.start(ctx); err != nil {
		return w.task, err
	}
	if w.expand != nil && !w.cancelled && ctx.Err() == nil {
		if done, task, err := w.expandSteps(ctx); done {
			return task, err
		}
	}
	if err := w.runSteps(ctx); err != nil {
		return w.task, err
	}
	return w.conclude(ctx)
}

// setup registers the status query (first, so it answers from the start)
// and lists the steps as Pending.
func (w *provisioning) setup(ctx workflow.Context) error {
	if w.task.CreatedAt.IsZero() {
		w.task.CreatedAt = workflow.Now(ctx)
	}
	if err := workflow.SetQueryHandler(ctx, StatusQuery, func() (storage.Task, error) {
		// Bounded: a query answer has a size limit too.
		return storage.Bounded(w.task, storage.MaxResultBytes), nil
	}); err != nil {
		return err
	}
	if err := workflow.SetUpdateHandlerWithOptions(ctx, SetPriorityUpdate, w.setPriority,
		workflow.UpdateHandlerOptions{Validator: w.validatePriority}); err != nil {
		return err
	}
	for _, s := range w.steps {
		w.task.Steps = append(w.task.Steps, storage.StepResult{Name: s.name, Status: storage.StatusPending})
	}
	w.showDetails(ctx)
	return nil
}

// expandSteps runs expand and lists the steps it found as Pending. When it
// fails the task ends Failed (done is set, with the workflow's result);
// when it was cancelled the run goes on to end Cancelled.
func (w *provisioning) expandSteps(ctx workflow.Context) (done bool, task storage.Task, err error) {
	steps, err := w.expand(ctx)
	if err != nil {
		var canceled *temporal.CanceledError
		if errors.As(err, &canceled) || ctx.Err() != nil {
			// Not a failure: the run goes on to conclude, which ends it
			// Cancelled.
			w.cancelled = true
			return false, storage.Task{}, nil //nolint:nilerr // cancellation is not this task's error
		}
		task, err = w.finish(ctx, storage.StatusFailed, "", err.Error(),
			temporal.NewNonRetryableApplicationError(err.Error(), ErrTypeServerListFailed, nil))
		return true, task, err
	}
	w.steps = steps
	for _, s := range steps {
		w.task.Steps = append(w.task.Steps, storage.StepResult{Name: s.name, Status: storage.StatusPending})
	}
	w.task.Progress.Total = len(steps)
	// The list is news to whoever watches the task: project it.
	if err := w.projectProgress(ctx); err != nil {
		return true, w.task, err
	}
	return false, storage.Task{}, nil
}

// validatePriority rejects, before anything is recorded in history, a
// priority out of range and a task that has finished.
func (w *provisioning) validatePriority(req SetPriorityRequest) error {
	if req.Priority == 0 {
		return &FieldError{Field: "priority", Message: "is required"}
	}
	if err := ValidatePriority("priority", req.Priority); err != nil {
		return err
	}
	if w.task.Status.Terminal() {
		return temporal.NewApplicationError(fmt.Sprintf("task %s is %s: its priority can no longer change", w.task.ID, w.task.Status), ErrTypeTaskFinished)
	}
	return nil
}

// setPriority records the new priority (projected, so lists show it) and
// schedules the steps not started yet with it.
func (w *provisioning) setPriority(ctx workflow.Context, req SetPriorityRequest) (storage.Task, error) {
	w.common.Priority = req.Priority
	w.task.Priority = req.Priority
	w.reprioritized = true
	if err := w.upsertPriority(ctx); err != nil {
		return storage.Task{}, err
	}
	if err := w.projectProgress(ctx); err != nil {
		return storage.Task{}, err
	}
	return storage.Bounded(w.task, storage.MaxResultBytes), nil
}

// start marks the task Running. A cancel arriving during that projection
// is not an error: the run ends Cancelled.
func (w *provisioning) start(ctx workflow.Context) error {
	now := workflow.Now(ctx)
	w.task.Status = storage.StatusRunning
	w.task.StartedAt = &now
	return w.projectProgress(ctx)
}

// projectProgress projects a transition while the workflow runs; an error
// caused by cancellation marks the run cancelled instead of failing it.
func (w *provisioning) projectProgress(ctx workflow.Context) error {
	w.showDetails(ctx)
	if err := projectTask(ctx, &w.task); err != nil {
		if ctx.Err() == nil {
			return err
		}
		w.cancelled = true
		return nil
	}
	w.notify.observe(w.task)
	return nil
}

// stepCtx applies the options of Nushell steps: the policy's timeouts and
// retries, and waiting for cancellation so that a step's processes are gone
// before the task may say Cancelled.
func (w *provisioning) stepCtx(ctx workflow.Context) workflow.Context {
	p := w.policy
	return workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: p.StepTimeout,
		HeartbeatTimeout:    p.HeartbeatTimeout,
		WaitForCancellation: true,
		RetryPolicy: &temporal.RetryPolicy{
			InitialInterval:    p.InitialInterval,
			BackoffCoefficient: p.BackoffCoefficient,
			MaximumInterval:    p.MaxInterval,
			MaximumAttempts:    p.MaxAttempts,
			NonRetryableErrorTypes: []string{
				activities.ErrTypeNushellPermanent, activities.ErrTypeNushellStart, activities.ErrTypeInvalidArgs,
			},
		},
	})
}

// runSteps runs the steps, Policy.Parallelism at a time, projecting the
// progress after each one ends; after a cancel it starts no new step and
// waits for the running ones to stop.
func (w *provisioning) runSteps(ctx workflow.Context) error {
	actx := w.stepCtx(ctx)
	sel := workflow.NewSelector(ctx)
	running, next := 0, 0
	startNext := func() {
		i := next
		next++
		running++
		w.task.Steps[i].Status = storage.StatusRunning
		sctx := actx
		if w.reprioritized {
			sctx = workflow.WithPriority(actx, w.common.TemporalPriority())
		}
		f := workflow.ExecuteActivity(sctx, a.RunNushell, activities.NuStep{
			TaskID: w.common.TaskID, Step: w.steps[i].name, Args: w.steps[i].args,
		})
		sel.AddFuture(f, func(f workflow.Future) {
			running--
			var res activities.NuStepResult
			err := f.Get(ctx, &res)
			if w.recordStep(i, res, err) {
				w.cancelled = true
			}
		})
	}
	for next < len(w.steps) || running > 0 {
		for !w.cancelled && ctx.Err() == nil && running < w.policy.Parallelism && next < len(w.steps) {
			startNext()
		}
		w.showDetails(ctx)
		if running == 0 {
			break
		}
		sel.Select(ctx)
		if ctx.Err() == nil {
			// Progress is a transition users watch; project it.
			if err := w.projectProgress(ctx); err != nil {
				return err
			}
		}
	}
	return nil
}

// conclude ends the task Cancelled, Failed (naming every failed step) or
// Completed.
func (w *provisioning) conclude(ctx workflow.Context) (storage.Task, error) {
	if w.cancelled || ctx.Err() != nil {
		for i := range w.task.Steps {
			if !w.task.Steps[i].Status.Terminal() {
				w.task.Steps[i].Status = storage.StatusCancelled
			}
		}
		return w.finish(ctx, storage.StatusCancelled, w.combinedOutput(), "task cancelled",
			temporal.NewCanceledError("task cancelled"))
	}
	var failed []string
	for _, s := range w.task.Steps {
		if s.Status != storage.StatusCompleted {
			failed = append(failed, fmt.Sprintf("%s: %s", s.Name, tailbuf.LastLine(s.Error)))
		}
	}
	if len(failed) > 0 {
		msg := fmt.Sprintf("%d of %d steps failed: %s", len(failed), len(w.task.Steps), strings.Join(failed, "; "))
		return w.finish(ctx, storage.StatusFailed, w.combinedOutput(), msg+"\n\n"+w.combinedErrors(),
			temporal.NewNonRetryableApplicationError(msg, ErrTypeProvisioningFailed, nil))
	}
	return w.finish(ctx, storage.StatusCompleted, w.combinedOutput(), "", nil)
}

// finish sets the terminal status, output and error, projects the final
// snapshot (on a disconnected context: it must land even while the
// workflow is being cancelled) and returns the workflow's result, with
// result as its error unless the projection failed.
func (w *provisioning) finish(ctx workflow.Context, status storage.TaskStatus, output, errText string, result error) (storage.Task, error) {
	now := workflow.Now(ctx)
	w.task.Status = status
	w.task.CompletedAt = &now
	if output != "" {
		o := tailbuf.String(output, maxTaskOutput)
		w.task.Output = &o
	}
	if errText != "" {
		e := tailbuf.String(errText, maxTaskOutput)
		w.task.Error = &e
	}
	w.showDetails(ctx)
	dctx, _ := workflow.NewDisconnectedContext(ctx)
	if err := projectTask(dctx, &w.task); err != nil {
		return storage.Bounded(w.task, storage.MaxResultBytes), err
	}
	w.notify.observe(w.task)
	// The result travels through history: bounded, whatever the steps
	// printed (the store has every step's tail).
	return storage.Bounded(w.task, storage.MaxResultBytes), result
}

// recordStep stores one step's outcome and reports whether it was cancelled.
func (w *provisioning) recordStep(i int, res activities.NuStepResult, err error) bool {
	s := &w.task.Steps[i]
	if err == nil {
		s.Status = storage.StatusCompleted
		s.Attempts = res.Attempt
		code := res.ExitCode
		s.ExitCode = &code
		s.Output = res.Stdout
		s.DurationMS = res.DurationMS
		w.task.Progress.Done++
		return false
	}
	var canceled *temporal.CanceledError
	if errors.As(err, &canceled) {
		s.Status = storage.StatusCancelled
		s.Error = "cancelled"
		return true
	}
	s.Status = storage.StatusFailed
	w.task.Progress.Done++
	var appErr *temporal.ApplicationError
	if errors.As(err, &appErr) && appErr.HasDetails() {
		var details activities.NuStepResult
		if appErr.Details(&details) == nil {
			s.Attempts = details.Attempt
			code := details.ExitCode
			s.ExitCode = &code
			s.Output = details.Stdout
			s.DurationMS = details.DurationMS
			s.Error = strings.TrimSpace(appErr.Error())
			if details.Stderr != "" {
				s.Error = strings.TrimSpace(details.Stderr)
			}
			return false
		}
	}
	var timeout *temporal.TimeoutError
	if errors.As(err, &timeout) {
		s.Error = fmt.Sprintf("timed out (%s)", timeout.TimeoutType())
		return false
	}
	s.Error = err.Error()
	return false
}

// ProjectionRetryBound is how long a projection is retried while the task
// store is unavailable: long enough for any outage an operator fixes.
const ProjectionRetryBound = 7 * 24 * time.Hour

// projectionCtx applies the options of every store projection: a short
// local activity retried until the store is back, because a store outage
// must not lose a transition.
func projectionCtx(ctx workflow.Context) workflow.Context {
	return workflow.WithLocalActivityOptions(ctx, workflow.LocalActivityOptions{
		StartToCloseTimeout: 10 * time.Second,
		// Without it the SDK takes StartToCloseTimeout as the bound on all
		// attempts together: a store outage of more than ~6 s failed the
		// workflow (chaos run: 4 of 4 running tasks lost with SurrealDB
		// down for 2 minutes).
		ScheduleToCloseTimeout: ProjectionRetryBound,
		RetryPolicy: &temporal.RetryPolicy{
			InitialInterval:        200 * time.Millisecond,
			BackoffCoefficient:     2,
			MaximumInterval:        30 * time.Second,
			NonRetryableErrorTypes: []string{activities.ErrTypeInvalidTaskID},
		},
	})
}

// projectTask writes the task's current snapshot with the next version.
// Projection is a local activity: it is a short store write, and running it
// in the workflow task avoids a task-queue round trip per transition.
func projectTask(ctx workflow.Context, t *storage.Task) error {
	t.Version++
	t.UpdatedAt = workflow.Now(ctx)
	lctx := projectionCtx(ctx)
	// Local activities get the argument itself, not a serialised copy: hand
	// over a snapshot that later step updates cannot change.
	snap := *t
	snap.Args = slices.Clone(t.Args)
	snap.Dependencies = slices.Clone(t.Dependencies)
	snap.Steps = slices.Clone(t.Steps)
	return workflow.ExecuteLocalActivity(lctx, a.ProjectTask, snap).Get(lctx, nil)
}

func (w *provisioning) combinedOutput() string {
	if len(w.task.Steps) == 1 {
		return w.task.Steps[0].Output
	}
	var b strings.Builder
	for _, s := range w.task.Steps {
		writeSection(&b, s.Name, s.Output)
	}
	return b.String()
}

// writeSection appends "== title ==" and text (ending in a newline) to b;
// nothing when text is empty.
func writeSection(b *strings.Builder, title, text string) {
	if text == "" {
		return
	}
	b.WriteString("== " + title + " ==\n" + text)
	if !strings.HasSuffix(text, "\n") {
		b.WriteString("\n")
	}
}

func (w *provisioning) combinedErrors() string {
	var b strings.Builder
	for _, s := range w.task.Steps {
		if s.Error == "" {
			continue
		}
		b.WriteString("== " + s.Name + " (attempts: " + strconv.Itoa(int(s.Attempts)) + ") ==\n" + s.Error + "\n")
	}
	return b.String()
}
