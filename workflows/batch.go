package workflows

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/provisioning/orchestrator/activities"
	"github.com/provisioning/orchestrator/internal/tailbuf"
	"github.com/provisioning/orchestrator/storage"
)

// batchProjectionDelay is the longest a change of a running batch waits
// before the batch record is written (operations' own tasks are written
// by their workflows at once).
const batchProjectionDelay = 250 * time.Millisecond

// maxPlanOutput bounds the plan (check-run output) a batch keeps per
// operation; the operation's own task keeps its full tail.
const maxPlanOutput = 8 << 10

// Compensation retries: a rollback must try hard, but a delete that keeps
// failing is recorded and the rollback goes on with the rest.
const (
	compensationAttempts    = 10
	compensationMaxInterval = 30 * time.Second
)

// BatchWorkflow runs a DAG of provisioning operations. Each operation is a
// child workflow (ServerCreate, TaskservCreate or ClusterCreate) whose id
// is its task id (OperationTaskID), started as soon as its dependencies
// completed, at most Parallelism at a time. A failed operation stops what
// depends on it (with FailFast, everything). When the batch fails or is
// cancelled, completed operations are compensated in reverse order by the
// provider's delete verbs unless NoRollback. Mode plan runs every
// operation with --check; RequireApproval runs that plan, waits for
// ApproveUpdate or RejectUpdate (or ApprovalTimeout), then applies.
//
// The batch is a task too: its steps are its operations ("plan <id>"
// steps first when it waits for approval) and Task.Batch has the rest.
func BatchWorkflow(ctx workflow.Context, in BatchInput) (storage.Task, error) {
	w := newBatch(in)
	if err := w.setup(ctx); err != nil {
		return w.task, err
	}
	w.notify = newNotifier(ctx, in.Webhook)
	task, err := w.run(ctx)
	w.notify.drain(ctx)
	return task, err
}

// batch is one batch run: its input, the DAG's indexes and the task it
// projects. The status query returns the task.
type batch struct {
	in   BatchInput
	task storage.Task
	// deps[i] are the indexes of operation i's dependencies.
	deps [][]int
	// done[i] is the child result of operation i's apply run, kept for
	// its compensation (which servers it created).
	done map[int]storage.Task
	// completed lists the operations whose apply run completed, in the
	// order they did: the rollback undoes them from the end.
	completed []int
	// decided is set by the approval updates; the approval wait awaits it.
	decided bool
	// stopping names the operation whose failure stopped the phase under
	// fail_fast; "" while it goes on.
	stopping string
	// notify delivers the batch's status changes to its webhook (nil
	// without one).
	notify *notifier
}

func newBatch(in BatchInput) *batch {
	spec := in.Task()
	return &batch{
		in:   in,
		done: map[int]storage.Task{},
		task: storage.Normalize(storage.Task{
			ID:           in.TaskID,
			Name:         spec.Name,
			Command:      spec.Command,
			Args:         spec.Args,
			Status:       storage.StatusPending,
			CreatedAt:    in.CreatedAt,
			WorkflowType: BatchWorkflowName,
			Priority:     in.Priority,
			Dependencies: slices.Clone(in.Dependencies),
		}),
	}
}

// setup registers the status query first, then the approval updates, and
// lays out the operations and steps.
func (w *batch) setup(ctx workflow.Context) error {
	if w.task.CreatedAt.IsZero() {
		w.task.CreatedAt = workflow.Now(ctx)
	}
	if err := workflow.SetQueryHandler(ctx, StatusQuery, func() (storage.Task, error) {
		return storage.Bounded(w.task, storage.MaxResultBytes), nil
	}); err != nil {
		return err
	}
	for _, name := range []string{ApproveUpdate, RejectUpdate} {
		decision := storage.DecisionApproved
		if name == RejectUpdate {
			decision = storage.DecisionRejected
		}
		if err := workflow.SetUpdateHandlerWithOptions(ctx, name,
			func(ctx workflow.Context, req ApprovalRequest) (storage.Task, error) {
				return w.decide(ctx, decision, req)
			},
			workflow.UpdateHandlerOptions{Validator: w.validateDecision}); err != nil {
			return err
		}
	}
	in := w.in
	b := &storage.Batch{
		Mode:            in.mode(),
		Phase:           storage.PhasePlanning,
		Parallelism:     in.parallelism(),
		FailFast:        in.FailFast,
		Rollback:        !in.NoRollback,
		RequireApproval: in.RequireApproval,
		Operations:      make([]storage.BatchOperation, len(in.Operations)),
		Compensations:   []storage.Compensation{},
	}
	if !in.planning() {
		b.Phase = storage.PhaseApplying
	}
	w.task.Batch = b
	if err := w.in.Validate(); err != nil {
		// run fails the task with it; there is no DAG to lay out.
		return nil //nolint:nilerr // not setup's error
	}
	index := make(map[string]int, len(in.Operations))
	for i, op := range in.Operations {
		index[op.ID] = i
	}
	w.deps = make([][]int, len(in.Operations))
	for i, op := range in.Operations {
		for _, d := range op.DependsOn {
			w.deps[i] = append(w.deps[i], index[d])
		}
		bo := storage.BatchOperation{ID: op.ID, Type: op.Type, DependsOn: slices.Clone(op.DependsOn), Status: storage.StatusPending}
		if bo.DependsOn == nil {
			bo.DependsOn = []string{}
		}
		bo.TaskID = OperationTaskID(in.TaskID, op.ID, in.mode() == BatchModePlan)
		if in.planning() {
			bo.PlanTaskID = OperationTaskID(in.TaskID, op.ID, true)
		}
		if in.RequireApproval {
			bo.PlanStatus = storage.StatusPending
		}
		b.Operations[i] = bo
	}
	if in.RequireApproval {
		for _, op := range in.Operations {
			w.task.Steps = append(w.task.Steps, storage.StepResult{Name: "plan " + op.ID, Status: storage.StatusPending})
		}
	}
	for _, op := range in.Operations {
		w.task.Steps = append(w.task.Steps, storage.StepResult{Name: op.ID, Status: storage.StatusPending})
	}
	w.task.Progress.Total = len(w.task.Steps)
	return nil
}

func (w *batch) run(ctx workflow.Context) (storage.Task, error) {
	if err := storage.ValidateID(w.in.TaskID); err != nil {
		return w.task, temporal.NewNonRetryableApplicationError("task_id: must be a lowercase UUID", ErrTypeInvalidInput, nil)
	}
	if err := w.in.Validate(); err != nil {
		now := workflow.Now(ctx)
		w.task.StartedAt = &now
		return w.finish(ctx, storage.StatusFailed, "invalid input: "+err.Error(),
			temporal.NewNonRetryableApplicationError(err.Error(), ErrTypeInvalidInput, nil))
	}
	now := workflow.Now(ctx)
	w.task.Status = storage.StatusRunning
	w.task.StartedAt = &now
	// Every operation's task exists from the start, Pending, so each
	// can be looked up (and shows its dependencies) before it runs.
	var records []storage.Task
	for i := range w.in.Operations {
		if w.in.planning() {
			records = append(records, w.childRecord(i, true, storage.StatusPending, ""))
		}
		if w.in.mode() == BatchModeApply {
			records = append(records, w.childRecord(i, false, storage.StatusPending, ""))
		}
	}
	if err := w.projectRecords(ctx, records); err != nil {
		return w.task, err
	}
	if err := w.project(ctx); err != nil {
		return w.task, err
	}

	if w.in.planning() {
		w.runPhase(ctx, true)
		if ctx.Err() != nil || w.anyFailed(true) {
			w.skipApply(ctx, "not started: the plan did not complete")
			return w.conclude(ctx, true)
		}
		if w.in.mode() == BatchModePlan {
			return w.conclude(ctx, true)
		}
		if done, task, err := w.awaitApproval(ctx); done {
			return task, err
		}
	}
	w.task.Batch.Phase = storage.PhaseApplying
	w.runPhase(ctx, false)
	if (ctx.Err() != nil || w.anyFailed(false)) && !w.in.NoRollback {
		w.rollback(ctx)
	}
	return w.conclude(ctx, false)
}

// stepIndex is the task step of operation i in a phase.
func (w *batch) stepIndex(i int, plan bool) int {
	if w.in.RequireApproval && !plan {
		return len(w.in.Operations) + i
	}
	return i
}

// opStatus is operation i's status in a phase.
func (w *batch) opStatus(i int, plan bool) storage.TaskStatus {
	return w.task.Steps[w.stepIndex(i, plan)].Status
}

// setOp records operation i's status (and error) in a phase, on its step
// and on the batch's operation.
func (w *batch) setOp(ctx workflow.Context, i int, plan bool, status storage.TaskStatus, errText string) {
	s := &w.task.Steps[w.stepIndex(i, plan)]
	o := &w.task.Batch.Operations[i]
	now := workflow.Now(ctx)
	if status.Terminal() && !s.Status.Terminal() {
		w.task.Progress.Done++
	}
	s.Status = status
	s.Error = errText
	twoPhase := w.in.RequireApproval
	if plan && twoPhase {
		o.PlanStatus = status
	} else {
		o.Status = status
		o.Error = errText
		switch {
		case status == storage.StatusRunning:
			o.StartedAt = &now
		case status.Terminal():
			o.CompletedAt = &now
		}
	}
	if plan && twoPhase && errText != "" {
		o.Error = "plan: " + errText
	}
	if status == storage.StatusRunning {
		s.Attempts++
	}
}

// anyFailed reports whether an operation of the phase failed, or was
// cancelled on its own (an operator cancelled its task): either way the
// batch did not do what it was asked.
func (w *batch) anyFailed(plan bool) bool {
	for i := range w.in.Operations {
		if w.failed(i, plan) {
			return true
		}
	}
	return false
}

func (w *batch) failed(i int, plan bool) bool {
	switch w.opStatus(i, plan) {
	case storage.StatusFailed:
		return true
	case storage.StatusCancelled:
		return w.task.Steps[w.stepIndex(i, plan)].Error == "cancelled"
	}
	return false
}

// childRecord is the task record of operation i's child in a phase, as the
// batch writes it before (or instead of) the child's own projections.
func (w *batch) childRecord(i int, plan bool, status storage.TaskStatus, errText string) storage.Task {
	op := w.in.Operations[i]
	id := OperationTaskID(w.in.TaskID, op.ID, plan)
	_, spec, _ := w.in.childInput(op, w.in.operationCommon(op, id, plan, w.depIDs(i, plan)))
	t := storage.Normalize(storage.Task{
		ID: id, Name: spec.Name, Command: spec.Command, Args: spec.Args, Status: status,
		CreatedAt: w.task.CreatedAt, UpdatedAt: w.task.CreatedAt, WorkflowType: spec.Workflow, Priority: w.in.Priority,
		Dependencies: w.depIDs(i, plan), Parent: w.in.TaskID,
	})
	if status.Terminal() {
		t.Version = 1
		t.Error = &errText
	}
	return t
}

func (w *batch) depIDs(i int, plan bool) []string {
	ids := []string{}
	for _, d := range w.deps[i] {
		ids = append(ids, OperationTaskID(w.in.TaskID, w.in.Operations[d].ID, plan))
	}
	return ids
}

// childCtx starts an operation's child workflow: id = its task id,
// cancelled with the batch (and waited for, so a cancelled batch rolls
// back only once its operations stopped), and asked to cancel if the batch
// is terminated.
func (w *batch) childCtx(ctx workflow.Context, id string, spec TaskSpec, c Common) workflow.Context {
	return workflow.WithChildOptions(ctx, workflow.ChildWorkflowOptions{
		WorkflowID:            id,
		WorkflowIDReusePolicy: enumspb.WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATE,
		ParentClosePolicy:     enumspb.PARENT_CLOSE_POLICY_REQUEST_CANCEL,
		WaitForCancellation:   true,
		// The operation's own infra is its fairness key.
		Priority:              c.TemporalPriority(),
		StaticSummary:         "batch " + w.in.TaskID + ": " + spec.Summary(),
		StaticDetails:         c.Details(),
		TypedSearchAttributes: w.in.SearchAttributes.Start(c.Infra, cmp.Or(c.Priority, storage.DefaultPriority)),
	})
}

// runPhase runs every operation's child (check runs when plan) in
// dependency order, Parallelism at a time, until all finished or can no
// longer start.
func (w *batch) runPhase(ctx workflow.Context, plan bool) {
	if plan {
		w.task.Batch.Phase = storage.PhasePlanning
	}
	n := len(w.in.Operations)
	sel := workflow.NewSelector(ctx)
	cancels := make([]workflow.CancelFunc, n)
	running := 0
	w.stopping = ""
	ready := func(i int) bool {
		if w.opStatus(i, plan) != storage.StatusPending {
			return false
		}
		for _, d := range w.deps[i] {
			if w.opStatus(d, plan) != storage.StatusCompleted {
				return false
			}
		}
		return true
	}
	start := func(i int) {
		op := w.in.Operations[i]
		id := OperationTaskID(w.in.TaskID, op.ID, plan)
		common := w.in.operationCommon(op, id, plan, w.depIDs(i, plan))
		wfType, spec, input := w.in.childInput(op, common)
		cctx, cancel := workflow.WithCancel(w.childCtx(ctx, id, spec, common))
		cancels[i] = cancel
		running++
		w.setOp(ctx, i, plan, storage.StatusRunning, "")
		f := workflow.ExecuteChildWorkflow(cctx, wfType, input)
		sel.AddFuture(f, func(f workflow.Future) {
			running--
			var res storage.Task
			err := f.Get(ctx, &res)
			w.childDone(ctx, i, plan, res, err)
			if err != nil && w.in.FailFast && w.stopping == "" && w.opStatus(i, plan) == storage.StatusFailed {
				w.stopping = w.in.Operations[i].ID
				for j, c := range cancels {
					if c != nil && w.opStatus(j, plan) == storage.StatusRunning {
						c()
					}
				}
			}
		})
	}
	// The batch record (every operation) is written at most once per
	// batchProjectionDelay while operations come and go: the write holds
	// up the workflow task, and with it the starts that task decided, so
	// writing it on every operation's end made the batch the bottleneck
	// (a 100-operation DAG took 1.21x as long as the same tasks driven by
	// a client). A timer defers it; phase ends write it at once.
	dirty, timerSet := false, false
	for {
		before := w.task.Progress.Done
		startedAny := false
		if ctx.Err() == nil && w.stopping == "" {
			for i := 0; i < n && running < w.in.parallelism(); i++ {
				if ready(i) {
					start(i)
					startedAny = true
				}
			}
		}
		// What can never start now is settled: its dependency failed, the
		// batch stops (fail_fast) or was cancelled.
		w.skipBlocked(ctx, plan, w.stopping)
		dirty = dirty || startedAny || w.task.Progress.Done != before
		if running == 0 {
			if dirty {
				_ = w.project(ctx)
			}
			return
		}
		if dirty && !timerSet && ctx.Err() == nil {
			timerSet = true
			sel.AddFuture(workflow.NewTimer(ctx, batchProjectionDelay), func(workflow.Future) {
				timerSet = false
				dirty = false
				_ = w.project(ctx)
			})
		}
		if dirty && ctx.Err() != nil {
			// Cancelled: no timers; record now.
			dirty = false
			_ = w.project(ctx)
		}
		sel.Select(ctx)
		for sel.HasPending() {
			sel.Select(ctx)
		}
		// A child's end between two loops counts as a change.
		dirty = dirty || w.task.Progress.Done != before
	}
}

// childDone records the end of operation i's child.
func (w *batch) childDone(ctx workflow.Context, i int, plan bool, res storage.Task, err error) {
	o := &w.task.Batch.Operations[i]
	if err == nil {
		if plan {
			out := ""
			if res.Output != nil {
				out = tailbuf.String(*res.Output, maxPlanOutput)
			}
			o.Plan = out
			w.task.Steps[w.stepIndex(i, plan)].Output = out
		} else {
			w.done[i] = res
			w.completed = append(w.completed, i)
		}
		w.setOp(ctx, i, plan, storage.StatusCompleted, "")
		return
	}
	var canceled *temporal.CanceledError
	if errors.As(err, &canceled) {
		why := "cancelled"
		switch {
		case ctx.Err() != nil:
			why = "cancelled with the batch"
		case w.stopping != "":
			why = fmt.Sprintf("cancelled: fail_fast stopped the batch after %s failed", w.stopping)
		}
		w.setOp(ctx, i, plan, storage.StatusCancelled, why)
		return
	}
	w.setOp(ctx, i, plan, storage.StatusFailed, childError(err))
}

// childError is the reason a child failed, as its own error says it.
func childError(err error) string {
	var appErr *temporal.ApplicationError
	if errors.As(err, &appErr) {
		return tailbuf.String(appErr.Message(), maxPlanOutput)
	}
	var timeout *temporal.TimeoutError
	if errors.As(err, &timeout) {
		return fmt.Sprintf("timed out (%s)", timeout.TimeoutType())
	}
	var term *temporal.TerminatedError
	if errors.As(err, &term) {
		return "terminated"
	}
	return tailbuf.String(err.Error(), maxPlanOutput)
}

// skipBlocked settles the Pending operations that can no longer start:
// those with a dependency that failed or was cancelled or skipped, and
// with fail_fast (stopping names the failure) or after a cancel, all.
// Their tasks are written Cancelled with the reason.
func (w *batch) skipBlocked(ctx workflow.Context, plan bool, stopping string) {
	var records []storage.Task
	for changed := true; changed; {
		changed = false
		for i := range w.in.Operations {
			if w.opStatus(i, plan) != storage.StatusPending {
				continue
			}
			reason := ""
			for _, d := range w.deps[i] {
				if st := w.opStatus(d, plan); st == storage.StatusFailed || st == storage.StatusCancelled {
					verb := "failed"
					if st == storage.StatusCancelled {
						verb = "did not complete"
					}
					reason = fmt.Sprintf("not started: it depends on %s, which %s", w.in.Operations[d].ID, verb)
					break
				}
			}
			switch {
			case reason != "":
			case ctx.Err() != nil:
				reason = "not started: the batch was cancelled"
			case stopping != "":
				reason = fmt.Sprintf("not started: fail_fast stopped the batch after %s failed", stopping)
			default:
				continue
			}
			w.setOp(ctx, i, plan, storage.StatusCancelled, reason)
			records = append(records, w.childRecord(i, plan, storage.StatusCancelled, reason))
			changed = true
		}
	}
	if len(records) > 0 {
		_ = w.projectRecords(ctx, records)
	}
}

// skipApply settles every apply run that will not happen (the plan failed
// or was rejected, the approval timed out, the batch was cancelled).
func (w *batch) skipApply(ctx workflow.Context, reason string) {
	if w.in.mode() != BatchModeApply {
		return
	}
	var records []storage.Task
	for i := range w.in.Operations {
		if w.opStatus(i, false) == storage.StatusPending {
			w.setOp(ctx, i, false, storage.StatusCancelled, reason)
			records = append(records, w.childRecord(i, false, storage.StatusCancelled, reason))
		}
	}
	_ = w.projectRecords(ctx, records)
}

// validateDecision accepts an approve or reject only while the batch waits
// for one, and only with an approver.
func (w *batch) validateDecision(req ApprovalRequest) error {
	if strings.TrimSpace(req.Approver) == "" {
		return &FieldError{Field: "approver", Message: "is required: who decides"}
	}
	if len(req.Approver) > 128 {
		return &FieldError{Field: "approver", Message: "at most 128 bytes"}
	}
	if len(req.Comment) > 4096 {
		return &FieldError{Field: "comment", Message: "at most 4096 bytes"}
	}
	b := w.task.Batch
	if b == nil || !b.RequireApproval {
		return temporal.NewApplicationError(fmt.Sprintf("batch %s does not require approval", w.task.ID), ErrTypeNotAwaitingApproval)
	}
	if b.Phase != storage.PhaseAwaitingApproval || b.Approval == nil || b.Approval.Decision != storage.DecisionPending {
		state := b.Phase
		if b.Approval != nil && b.Approval.Decision != storage.DecisionPending {
			state = b.Approval.Decision
		}
		return temporal.NewApplicationError(fmt.Sprintf("batch %s is not awaiting approval (%s)", w.task.ID, state), ErrTypeNotAwaitingApproval)
	}
	return nil
}

// decide records the decision and its audit entry (actor: the approver).
func (w *batch) decide(ctx workflow.Context, decision string, req ApprovalRequest) (storage.Task, error) {
	now := workflow.Now(ctx)
	ap := w.task.Batch.Approval
	ap.Decision = decision
	ap.Approver = req.Approver
	ap.Comment = req.Comment
	ap.DecidedAt = &now
	w.decided = true
	detail := decision + " the plan"
	if req.Comment != "" {
		detail += ": " + req.Comment
	}
	lctx := projectionCtx(ctx)
	if err := workflow.ExecuteLocalActivity(lctx, a.RecordAudit, storage.AuditEntry{
		ID: w.task.ID + "/approval", TaskID: w.task.ID, Time: now, Actor: req.Approver,
		Action: decision, Before: w.task.Status, After: w.task.Status, Version: w.task.Version, Detail: detail,
	}).Get(lctx, nil); err != nil {
		return storage.Task{}, err
	}
	return storage.Bounded(w.task, storage.MaxResultBytes), nil
}

// awaitApproval waits for the decision. done is set when the batch ends
// here (rejected, timed out, cancelled), with the workflow's result.
func (w *batch) awaitApproval(ctx workflow.Context) (done bool, task storage.Task, err error) {
	timeout := w.in.approvalTimeout()
	w.task.Batch.Phase = storage.PhaseAwaitingApproval
	w.task.Batch.Approval = &storage.Approval{Decision: storage.DecisionPending, Deadline: workflow.Now(ctx).Add(timeout)}
	_ = w.project(ctx)
	ok, werr := workflow.AwaitWithTimeout(ctx, timeout, func() bool { return w.decided })
	ap := w.task.Batch.Approval
	switch {
	case werr != nil || (!ok && ctx.Err() != nil):
		w.skipApply(ctx, "not started: the batch was cancelled while awaiting approval")
		task, err = w.conclude(ctx, false)
		return true, task, err
	case !ok:
		ap.Decision = storage.DecisionTimedOut
		msg := fmt.Sprintf("nobody approved or rejected the plan within %s", timeout)
		w.skipApply(ctx, "not started: "+msg)
		w.task.Batch.Phase = storage.PhaseDone
		task, err = w.finish(ctx, storage.StatusFailed, msg, temporal.NewNonRetryableApplicationError(msg, ErrTypeApprovalTimedOut, nil))
		return true, task, err
	case ap.Decision == storage.DecisionRejected:
		msg := "plan rejected by " + ap.Approver
		if ap.Comment != "" {
			msg += ": " + ap.Comment
		}
		w.skipApply(ctx, "not started: "+msg)
		w.task.Batch.Phase = storage.PhaseDone
		task, err = w.finish(ctx, storage.StatusCancelled, msg, temporal.NewCanceledError(msg))
		return true, task, err
	}
	return false, storage.Task{}, nil
}

// rollback compensates the completed operations, last completed first
// (which undoes dependents before what they depend on), each provider call
// retried and recorded. It runs on a disconnected context: a cancelled
// batch still rolls back.
func (w *batch) rollback(ctx workflow.Context) {
	dctx, _ := workflow.NewDisconnectedContext(ctx)
	w.task.Batch.Phase = storage.PhaseRollingBack
	_ = w.project(dctx)
	p := w.in.Policy.WithDefaults()
	actx := workflow.WithActivityOptions(dctx, workflow.ActivityOptions{
		StartToCloseTimeout: p.StepTimeout,
		HeartbeatTimeout:    p.HeartbeatTimeout,
		RetryPolicy: &temporal.RetryPolicy{
			InitialInterval:    p.InitialInterval,
			BackoffCoefficient: p.BackoffCoefficient,
			MaximumInterval:    min(p.MaxInterval, compensationMaxInterval),
			MaximumAttempts:    max(p.MaxAttempts, compensationAttempts),
			NonRetryableErrorTypes: []string{
				activities.ErrTypeNushellPermanent, activities.ErrTypeNushellStart, activities.ErrTypeInvalidArgs,
			},
		},
	})
	for k := len(w.completed) - 1; k >= 0; k-- {
		i := w.completed[k]
		op := w.in.Operations[i]
		c := w.in.operationCommon(op, "", false, nil)
		var created []string
		for _, s := range w.done[i].Steps {
			if s.Name != ListServersStep && s.Status == storage.StatusCompleted {
				created = append(created, s.Name)
			}
		}
		targets, argvs := compensations(op, c, created)
		all := true
		for j, argv := range argvs {
			now := workflow.Now(dctx)
			w.task.Batch.Compensations = append(w.task.Batch.Compensations, storage.Compensation{
				Operation: op.ID, Target: targets[j], Args: argv, Status: storage.StatusRunning, StartedAt: &now,
			})
			rec := &w.task.Batch.Compensations[len(w.task.Batch.Compensations)-1]
			_ = w.project(dctx)
			var res activities.NuStepResult
			err := workflow.ExecuteActivity(actx, a.RunNushell, activities.NuStep{
				TaskID: w.task.ID, Step: "rollback " + op.ID + ": " + targets[j], Args: argv,
			}).Get(dctx, &res)
			end := workflow.Now(dctx)
			rec.CompletedAt = &end
			if err == nil {
				rec.Status = storage.StatusCompleted
				rec.Attempts = res.Attempt
				rec.Output = tailbuf.String(res.Stdout, maxPlanOutput)
				continue
			}
			all = false
			rec.Status = storage.StatusFailed
			rec.Error = childError(err)
			var appErr *temporal.ApplicationError
			var details activities.NuStepResult
			if errors.As(err, &appErr) && appErr.HasDetails() && appErr.Details(&details) == nil {
				rec.Attempts = details.Attempt
				rec.Output = tailbuf.String(details.Stdout, maxPlanOutput)
				if strings.TrimSpace(details.Stderr) != "" {
					rec.Error = tailbuf.String(strings.TrimSpace(details.Stderr), maxPlanOutput)
				}
			}
		}
		w.task.Batch.Operations[i].RolledBack = all
	}
}

// conclude ends the batch Cancelled, Failed (naming what failed, what
// never started and what was rolled back) or Completed.
func (w *batch) conclude(ctx workflow.Context, plan bool) (storage.Task, error) {
	w.task.Batch.Phase = storage.PhaseDone
	var failed, skipped, rolledBack, rollbackFailed []string
	for i, op := range w.in.Operations {
		st := w.opStatus(i, plan)
		errText := w.task.Steps[w.stepIndex(i, plan)].Error
		switch {
		case w.failed(i, plan):
			failed = append(failed, op.ID+": "+tailbuf.LastLine(errText))
		case st == storage.StatusCancelled && strings.HasPrefix(errText, "not started"):
			skipped = append(skipped, op.ID)
		}
		if w.task.Batch.Operations[i].RolledBack {
			rolledBack = append(rolledBack, op.ID)
		}
	}
	for _, c := range w.task.Batch.Compensations {
		if c.Status == storage.StatusFailed {
			rollbackFailed = append(rollbackFailed, c.Target+": "+tailbuf.LastLine(c.Error))
		}
	}
	var parts []string
	if len(failed) > 0 {
		parts = append(parts, fmt.Sprintf("%d of %d operations failed: %s", len(failed), len(w.in.Operations), strings.Join(failed, "; ")))
	}
	if len(skipped) > 0 {
		parts = append(parts, "not started: "+strings.Join(skipped, ", "))
	}
	if len(rolledBack) > 0 {
		parts = append(parts, "rolled back: "+strings.Join(rolledBack, ", "))
	}
	if len(rollbackFailed) > 0 {
		parts = append(parts, "rollback incomplete: "+strings.Join(rollbackFailed, "; "))
	}
	if ctx.Err() != nil {
		msg := strings.Join(append([]string{"batch cancelled"}, parts...), "; ")
		return w.finish(ctx, storage.StatusCancelled, msg, temporal.NewCanceledError(msg))
	}
	if len(failed) > 0 || len(rollbackFailed) > 0 {
		msg := strings.Join(parts, "; ")
		return w.finish(ctx, storage.StatusFailed, msg, temporal.NewNonRetryableApplicationError(msg, ErrTypeBatchFailed, nil))
	}
	return w.finish(ctx, storage.StatusCompleted, "", nil)
}

// summary is the batch's output: one line per operation, and in plan
// mode each operation's plan.
func (w *batch) summary() string {
	var b strings.Builder
	for i, o := range w.task.Batch.Operations {
		st := o.Status
		if w.in.RequireApproval && st == storage.StatusPending {
			st = w.opStatus(i, true)
		}
		// Not Fprintf: workflowcheck takes writing to an io.Writer for I/O.
		b.WriteString(fmt.Sprintf("%s (%s): %s, task %s\n", o.ID, o.Type, st, o.TaskID)) //nolint:staticcheck // see above
	}
	if w.in.planning() {
		for _, o := range w.task.Batch.Operations {
			writeSection(&b, "plan "+o.ID, o.Plan)
		}
	}
	return b.String()
}

// finish sets the terminal status, projects the final snapshot on a
// disconnected context and waits for running update handlers, then
// returns the workflow's result.
func (w *batch) finish(ctx workflow.Context, status storage.TaskStatus, errText string, result error) (storage.Task, error) {
	dctx, _ := workflow.NewDisconnectedContext(ctx)
	now := workflow.Now(dctx)
	w.task.Status = status
	w.task.CompletedAt = &now
	if w.task.Batch != nil {
		w.task.Batch.Phase = storage.PhaseDone
		out := tailbuf.String(w.summary(), maxTaskOutput)
		w.task.Output = &out
	}
	if errText != "" {
		e := tailbuf.String(errText, maxTaskOutput)
		w.task.Error = &e
	}
	if err := projectTask(dctx, &w.task); err != nil {
		return storage.Bounded(w.task, storage.MaxResultBytes), err
	}
	w.notify.observe(w.task)
	_ = workflow.Await(dctx, func() bool { return workflow.AllHandlersFinished(dctx) })
	return storage.Bounded(w.task, storage.MaxResultBytes), result
}

// project writes the batch's snapshot; after a cancel on a disconnected
// context, so the record follows the batch to its end.
func (w *batch) project(ctx workflow.Context) error {
	if ctx.Err() != nil {
		ctx, _ = workflow.NewDisconnectedContext(ctx)
	}
	if err := projectTask(ctx, &w.task); err != nil {
		return err
	}
	w.notify.observe(w.task)
	return nil
}

// projectRecords writes operations' task records in one local activity.
func (w *batch) projectRecords(ctx workflow.Context, records []storage.Task) error {
	if len(records) == 0 {
		return nil
	}
	if ctx.Err() != nil {
		ctx, _ = workflow.NewDisconnectedContext(ctx)
	}
	lctx := projectionCtx(ctx)
	return workflow.ExecuteLocalActivity(lctx, a.ProjectTasks, records).Get(lctx, nil)
}
