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
	"github.com/provisioning/orchestrator/storage"
)

// a names activities for the workflows; the worker registers a real
// *activities.Activities under the same method names.
var a *activities.Activities

// maxTaskOutput bounds a task's combined output and error text.
const maxTaskOutput = 256 << 10

// ServerCreateWorkflow creates each server with one Nushell call, up to
// Policy.Parallelism at a time, each retried on its own.
func ServerCreateWorkflow(ctx workflow.Context, in ServerCreateInput) (storage.Task, error) {
	steps := make([]step, len(in.Servers))
	for i, s := range in.Servers {
		steps[i] = step{name: s, args: in.ServerArgs(s)}
	}
	return run(ctx, job{
		common:   in.Common,
		workflow: ServerCreateWorkflowName,
		name:     "server create " + in.Infra,
		command:  "server create",
		args:     append(in.flags(), in.Servers...),
		steps:    steps,
		validate: in.Validate,
	})
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
	return run(ctx, job{
		common:   in.Common,
		workflow: TaskservCreateWorkflowName,
		name:     "taskserv create " + in.Taskserv,
		command:  "taskserv create",
		args:     append(append([]string{in.Taskserv}, in.flags()...), in.Servers...),
		steps:    steps,
		validate: in.Validate,
	})
}

// ClusterCreateWorkflow builds a cluster with one Nushell call.
func ClusterCreateWorkflow(ctx workflow.Context, in ClusterCreateInput) (storage.Task, error) {
	return run(ctx, job{
		common:   in.Common,
		workflow: ClusterCreateWorkflowName,
		name:     "cluster create " + in.Cluster,
		command:  "cluster create",
		args:     append([]string{in.Cluster}, in.flags()...),
		steps:    []step{{name: in.Cluster, args: in.ClusterArgs()}},
		validate: in.Validate,
	})
}

type step struct {
	name string
	args []string
}

type job struct {
	common   Common
	workflow string
	name     string
	command  string
	args     []string
	steps    []step
	validate func() error
}

// taskState is the workflow's private state; the status query returns it.
type taskState struct {
	task storage.Task
}

func run(ctx workflow.Context, j job) (storage.Task, error) {
	p := j.common.Policy.WithDefaults()
	st := &taskState{task: storage.Normalize(storage.Task{
		ID:           j.common.TaskID,
		Name:         j.name,
		Command:      j.command,
		Args:         j.args,
		Status:       storage.StatusPending,
		CreatedAt:    j.common.CreatedAt,
		WorkflowType: j.workflow,
		Progress:     storage.Progress{Total: len(j.steps)},
	})}
	if st.task.CreatedAt.IsZero() {
		st.task.CreatedAt = workflow.Now(ctx)
	}
	if err := workflow.SetQueryHandler(ctx, StatusQuery, func() (storage.Task, error) {
		return st.task, nil
	}); err != nil {
		return st.task, err
	}
	for _, s := range j.steps {
		st.task.Steps = append(st.task.Steps, storage.StepResult{Name: s.name, Status: storage.StatusPending})
	}
	if j.common.TaskID == "" {
		// Without an ID there is nowhere to project to.
		return st.task, temporal.NewNonRetryableApplicationError("task_id: must not be empty", "InvalidInput", nil)
	}

	if err := j.validate(); err != nil {
		// Invalid input can never succeed: fail fast, visibly, without retries.
		now := workflow.Now(ctx)
		st.task.StartedAt = &now
		st.finish(ctx, storage.StatusFailed, "", "invalid input: "+err.Error())
		if perr := st.projectFinal(ctx); perr != nil {
			return st.task, perr
		}
		return st.task, temporal.NewNonRetryableApplicationError(err.Error(), "InvalidInput", nil)
	}

	now := workflow.Now(ctx)
	st.task.Status = storage.StatusRunning
	st.task.StartedAt = &now
	cancelled := false
	if err := st.project(ctx); err != nil {
		if ctx.Err() == nil {
			return st.task, err
		}
		cancelled = true
	}

	actx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: p.StepTimeout,
		HeartbeatTimeout:    p.HeartbeatTimeout,
		// The activity must finish killing its processes before the task
		// may say Cancelled.
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

	sel := workflow.NewSelector(ctx)
	running, next := 0, 0
	startNext := func() {
		i := next
		next++
		running++
		st.task.Steps[i].Status = storage.StatusRunning
		f := workflow.ExecuteActivity(actx, a.RunNushell, activities.NuStep{
			TaskID: j.common.TaskID, Step: j.steps[i].name, Args: j.steps[i].args,
		})
		sel.AddFuture(f, func(f workflow.Future) {
			running--
			var res activities.NuStepResult
			err := f.Get(ctx, &res)
			if st.recordStep(i, res, err) {
				cancelled = true
			}
		})
	}
	for next < len(j.steps) || running > 0 {
		for !cancelled && ctx.Err() == nil && running < p.Parallelism && next < len(j.steps) {
			startNext()
		}
		if running == 0 {
			break
		}
		sel.Select(ctx)
		if ctx.Err() == nil {
			// Progress is a transition users watch; project it.
			if err := st.project(ctx); err != nil {
				if ctx.Err() == nil {
					return st.task, err
				}
				cancelled = true
			}
		}
	}

	if cancelled || ctx.Err() != nil {
		for i := range st.task.Steps {
			if !st.task.Steps[i].Status.Terminal() {
				st.task.Steps[i].Status = storage.StatusCancelled
			}
		}
		st.finish(ctx, storage.StatusCancelled, st.combinedOutput(), "task cancelled")
		if err := st.projectFinal(ctx); err != nil {
			return st.task, err
		}
		return st.task, temporal.NewCanceledError("task cancelled")
	}

	var failed []string
	for _, s := range st.task.Steps {
		if s.Status != storage.StatusCompleted {
			failed = append(failed, fmt.Sprintf("%s: %s", s.Name, lastLine(s.Error)))
		}
	}
	if len(failed) > 0 {
		msg := fmt.Sprintf("%d of %d steps failed: %s", len(failed), len(st.task.Steps), strings.Join(failed, "; "))
		st.finish(ctx, storage.StatusFailed, st.combinedOutput(), msg+"\n\n"+st.combinedErrors())
		if err := st.projectFinal(ctx); err != nil {
			return st.task, err
		}
		return st.task, temporal.NewNonRetryableApplicationError(msg, "ProvisioningFailed", nil)
	}
	st.finish(ctx, storage.StatusCompleted, st.combinedOutput(), "")
	if err := st.projectFinal(ctx); err != nil {
		return st.task, err
	}
	return st.task, nil
}

// recordStep stores one step's outcome and reports whether it was cancelled.
func (st *taskState) recordStep(i int, res activities.NuStepResult, err error) bool {
	s := &st.task.Steps[i]
	if err == nil {
		s.Status = storage.StatusCompleted
		s.Attempts = res.Attempt
		code := res.ExitCode
		s.ExitCode = &code
		s.Output = res.Stdout
		s.DurationMS = res.DurationMS
		st.task.Progress.Done++
		return false
	}
	var canceled *temporal.CanceledError
	if errors.As(err, &canceled) {
		s.Status = storage.StatusCancelled
		s.Error = "cancelled"
		return true
	}
	s.Status = storage.StatusFailed
	st.task.Progress.Done++
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

func (st *taskState) finish(ctx workflow.Context, status storage.TaskStatus, output, errText string) {
	now := workflow.Now(ctx)
	st.task.Status = status
	st.task.CompletedAt = &now
	if output != "" {
		o := tail(output, maxTaskOutput)
		st.task.Output = &o
	}
	if errText != "" {
		e := tail(errText, maxTaskOutput)
		st.task.Error = &e
	}
}

// projectionCtx applies the options of every store projection: a short
// local activity retried until the store is back, because a store outage
// must not lose a transition.
func projectionCtx(ctx workflow.Context) workflow.Context {
	return workflow.WithLocalActivityOptions(ctx, workflow.LocalActivityOptions{
		StartToCloseTimeout: 10 * time.Second,
		RetryPolicy: &temporal.RetryPolicy{
			InitialInterval:        200 * time.Millisecond,
			BackoffCoefficient:     2,
			MaximumInterval:        30 * time.Second,
			NonRetryableErrorTypes: []string{"InvalidTaskID"},
		},
	})
}

// project writes the current snapshot with the next version. Projection is
// a local activity: it is a short store write, and running it in the
// workflow task avoids a task-queue round trip per transition.
func (st *taskState) project(ctx workflow.Context) error {
	st.task.Version++
	st.task.UpdatedAt = workflow.Now(ctx)
	lctx := projectionCtx(ctx)
	// Local activities get the argument itself, not a serialised copy: hand
	// over a snapshot that later step updates cannot change.
	snap := st.task
	snap.Args = slices.Clone(st.task.Args)
	snap.Dependencies = slices.Clone(st.task.Dependencies)
	snap.Steps = slices.Clone(st.task.Steps)
	return workflow.ExecuteLocalActivity(lctx, a.ProjectTask, snap).Get(lctx, nil)
}

// projectFinal writes a terminal snapshot. A terminal transition must reach
// the store even when the workflow is being cancelled at that very moment,
// so it runs on a disconnected context.
func (st *taskState) projectFinal(ctx workflow.Context) error {
	dctx, _ := workflow.NewDisconnectedContext(ctx)
	return st.project(dctx)
}

func (st *taskState) combinedOutput() string {
	if len(st.task.Steps) == 1 {
		return st.task.Steps[0].Output
	}
	var b strings.Builder
	for _, s := range st.task.Steps {
		if s.Output == "" {
			continue
		}
		b.WriteString("== " + s.Name + " ==\n" + s.Output)
		if !strings.HasSuffix(s.Output, "\n") {
			b.WriteString("\n")
		}
	}
	return b.String()
}

func (st *taskState) combinedErrors() string {
	var b strings.Builder
	for _, s := range st.task.Steps {
		if s.Error == "" {
			continue
		}
		b.WriteString("== " + s.Name + " (attempts: " + strconv.Itoa(int(s.Attempts)) + ") ==\n" + s.Error + "\n")
	}
	return b.String()
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		// The last line of stderr usually says what went wrong.
		return strings.TrimSpace(s[i+1:])
	}
	return s
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}
