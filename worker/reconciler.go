package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"

	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/testenv"
	"github.com/provisioning/orchestrator/workflows"
)

// Reconciler defaults.
const (
	// DefaultReconcileInterval is how often the reconciler looks.
	DefaultReconcileInterval = time.Minute
	// DefaultReconcileGrace is how long a task may sit unchanged before the
	// reconciler asks Temporal about it: well above the time between a
	// Pending record and its workflow's start, or a workflow's close and
	// its final projection.
	DefaultReconcileGrace = 2 * time.Minute
	// reconcilePerPass bounds the tasks one pass looks at per status.
	reconcilePerPass = 1000
)

// ReconcilerActor is the audit actor of the reconciler's writes.
const ReconcilerActor = "reconciler"

// Reconciler settles tasks the store shows as Pending or Running although
// no workflow will ever move them: the service stopped between recording a
// task and starting its workflow, Temporal's data was lost, or a workflow
// was terminated by an operator. Such a task becomes Failed (or the
// terminal status its closed workflow had) with a reason; a task whose
// workflow runs is never touched.
type Reconciler struct {
	Store  storage.Store
	Client client.Client
	Logger *slog.Logger
	// Grace: tasks updated more recently are left alone; default
	// DefaultReconcileGrace.
	Grace time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// ReconcileReport says what one pass did.
type ReconcileReport struct {
	// Checked tasks were old enough to ask Temporal about.
	Checked int `json:"checked"`
	// Settled maps task ids to the reason they were settled.
	Settled map[string]string `json:"settled"`
}

// RunOnce makes one pass. A task whose workflow cannot be looked up
// (Temporal down) is left for the next pass.
func (r *Reconciler) RunOnce(ctx context.Context) (ReconcileReport, error) {
	rep := ReconcileReport{Settled: map[string]string{}}
	cutoff := r.now().Add(-r.grace())
	var errs []error
	for _, st := range []storage.TaskStatus{storage.StatusPending, storage.StatusRunning} {
		for offset := 0; offset < reconcilePerPass; offset += storage.MaxLimit {
			page, _, err := r.Store.List(ctx, storage.ListFilter{Status: st, Limit: storage.MaxLimit, Offset: offset})
			if err != nil {
				return rep, err
			}
			for _, t := range page {
				if t.UpdatedAt.After(cutoff) {
					continue
				}
				rep.Checked++
				reason, status, err := r.verdict(ctx, t)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				if reason == "" {
					continue
				}
				if err := r.settle(ctx, t, status, reason); err != nil {
					errs = append(errs, err)
					continue
				}
				rep.Settled[t.ID] = reason
				r.log().Warn("reconciler settled a stuck task", "task_id", t.ID, "was", t.Status, "now", status, "reason", reason)
			}
			if len(page) < storage.MaxLimit {
				break
			}
		}
	}
	return rep, errors.Join(errs...)
}

// verdict says whether t must be settled, why, and with what status.
func (r *Reconciler) verdict(ctx context.Context, t storage.Task) (reason string, status storage.TaskStatus, err error) {
	desc, err := r.Client.DescribeWorkflowExecution(ctx, t.ID, "")
	var nf *serviceerror.NotFound
	if errors.As(err, &nf) && t.Parent != "" && t.Status == storage.StatusPending {
		// A batch records its operations before it starts them (some wait
		// for dependencies or an approval for hours): theirs is the batch's
		// fate while it runs.
		pdesc, perr := r.Client.DescribeWorkflowExecution(ctx, t.Parent, "")
		if perr == nil && pdesc.GetWorkflowExecutionInfo().GetStatus() == enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
			return "", "", nil
		}
		if perr != nil && !errors.As(perr, &nf) {
			return "", "", fmt.Errorf("look up batch %s of task %s: %w", t.Parent, t.ID, perr)
		}
		return fmt.Sprintf("its batch %s ended without starting it or recording why; marked failed by the reconciler", t.Parent),
			storage.StatusFailed, nil
	}
	if errors.As(err, &nf) {
		return fmt.Sprintf("no workflow exists for this task although it was %s for over %s (the service stopped between recording it and starting its workflow, or Temporal lost it); marked failed by the reconciler",
			t.Status, r.grace()), storage.StatusFailed, nil
	}
	if err != nil {
		return "", "", fmt.Errorf("look up workflow %s: %w", t.ID, err)
	}
	switch s := desc.GetWorkflowExecutionInfo().GetStatus(); s {
	case enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING, enumspb.WORKFLOW_EXECUTION_STATUS_CONTINUED_AS_NEW:
		return "", "", nil
	case enumspb.WORKFLOW_EXECUTION_STATUS_COMPLETED:
		return "its workflow completed but its final state was never recorded; settled by the reconciler", storage.StatusCompleted, nil
	case enumspb.WORKFLOW_EXECUTION_STATUS_CANCELED:
		return "its workflow was cancelled but its final state was never recorded; settled by the reconciler", storage.StatusCancelled, nil
	default: // failed, terminated, timed out
		return fmt.Sprintf("its workflow ended %s without recording a final state (e.g. terminated by an operator); marked failed by the reconciler",
			s.String()), storage.StatusFailed, nil
	}
}

// settle writes t's new terminal status with a version above the stored
// one, so a late projection with an even higher version still wins.
func (r *Reconciler) settle(ctx context.Context, t storage.Task, status storage.TaskStatus, reason string) error {
	ctx = storage.WithActor(ctx, ReconcilerActor)
	now := r.now().UTC()
	if t.WorkflowType == workflows.TestEnvironmentWorkflowName && len(t.Environment) > 0 {
		var st testenv.EnvState
		if err := json.Unmarshal(t.Environment, &st); err == nil {
			st.Status = workflows.EnvError
			if status == storage.StatusCancelled {
				st.Status = workflows.EnvCleaned
			}
			st.Error = reason
			st.FinishedAt = &now
			st.UpdatedAt = now
			st.Version = t.Version + 1
			et, err := testenv.EnvTask(st)
			if err != nil {
				return err
			}
			return r.put(ctx, et)
		}
	}
	t.Status = status
	if status != storage.StatusCompleted {
		t.Error = &reason
	}
	t.CompletedAt = &now
	t.UpdatedAt = now
	t.Version++
	return r.put(ctx, t)
}

// put stores t and appends its transition to the task's live event
// stream, so watchers see the settled status (and their stream ends).
func (r *Reconciler) put(ctx context.Context, t storage.Task) error {
	if err := r.Store.Put(ctx, t); err != nil {
		return err
	}
	return storage.AppendTransition(ctx, r.Store, t)
}

// Run reconciles every interval until ctx ends.
func (r *Reconciler) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := r.RunOnce(ctx); err != nil && ctx.Err() == nil {
			r.log().Warn("reconciler pass incomplete", "error", err)
		}
	}
}

func (r *Reconciler) grace() time.Duration {
	if r.Grace > 0 {
		return r.Grace
	}
	return DefaultReconcileGrace
}

func (r *Reconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

func (r *Reconciler) log() *slog.Logger {
	if r.Logger != nil {
		return r.Logger
	}
	return slog.Default()
}
