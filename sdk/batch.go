package sdk

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/workflows"
)

// Batch is a DAG of provisioning operations run as one task, like the body
// of POST /workflows/batch. Infra and Settings are every operation's
// defaults (an operation may override them); WithCheckMode, WithWait and
// WithPriority apply to the batch and all its operations.
type Batch struct {
	// Name is the batch's display name; default "batch <infra>".
	Name string
	// Infra and Settings are the operations' defaults.
	Infra    string
	Settings string
	// Operations, 1 to workflows.MaxBatchOperations, each naming the
	// operations it depends on (workflows.Operation.DependsOn).
	Operations []workflows.Operation
	// Parallelism is how many operations run at once; default
	// workflows.DefaultBatchParallelism (4), at most 100.
	Parallelism int
	// FailFast: the first failure cancels the running operations and
	// starts nothing new. Default false: independent branches go on.
	FailFast bool
	// NoRollback keeps what completed operations made when the batch fails
	// or is cancelled (the REST API's "rollback": false). Default false:
	// they are compensated by the provider's delete verbs, last first.
	NoRollback bool
	// Mode is workflows.BatchModeApply (default, "") or
	// workflows.BatchModePlan (every operation with --check; each output
	// kept as its plan; nothing changes).
	Mode string
	// RequireApproval: plan first, then wait for Approve (or Reject)
	// before applying. Mode apply only.
	RequireApproval bool
	// ApprovalTimeout bounds that wait, 1s to 720h; default
	// workflows.DefaultApprovalTimeout (24h). Nobody deciding in time
	// fails the batch.
	ApprovalTimeout time.Duration
}

// StartBatch starts a batch, like POST /workflows/batch: each operation
// runs as a child task (id workflows.OperationTaskID(run.ID(), op.ID, plan))
// as soon as its dependencies completed, and GET /tasks/{id} shows the
// batch (storage.Task.Batch) and each operation's task. An invalid batch
// (unknown or duplicate ids, cycles, an operation's own fields) is a
// *workflows.FieldError naming the operation, and starts nothing. Wait on
// the Run for the end: a failed batch is an error of type
// workflows.ErrTypeBatchFailed, a rejected one a *temporal.CanceledError.
func (c *Client) StartBatch(ctx context.Context, b Batch, opts ...Option) (Run, error) {
	common, keyed, err := c.common(workflows.BatchWorkflowName, b.Infra, b.Settings, opts)
	if err != nil {
		return Run{}, err
	}
	in := workflows.BatchInput{
		Common: common, Name: b.Name, Operations: b.Operations, Parallelism: b.Parallelism,
		FailFast: b.FailFast, NoRollback: b.NoRollback, Mode: b.Mode,
		RequireApproval: b.RequireApproval, ApprovalTimeout: b.ApprovalTimeout,
	}
	if err := in.Validate(); err != nil {
		return Run{}, err
	}
	if err := c.startKeyed(ctx, keyed, in.Common, workflows.BatchWorkflowName, in); err != nil {
		return Run{}, err
	}
	return c.Task(in.TaskID), nil
}

// ErrNotAwaitingApproval matches (errors.Is) a *NotAwaitingApprovalError.
var ErrNotAwaitingApproval = errors.New("sdk: batch is not awaiting approval")

// NotAwaitingApprovalError is what Approve and Reject return for a batch
// that is not waiting for a decision: it does not require one, has not
// finished planning, was decided already, or has ended (the REST API's
// 409 not_awaiting_approval).
type NotAwaitingApprovalError struct {
	// TaskID is the batch's id.
	TaskID string
	// Reason is the workflow's (or Temporal's) explanation.
	Reason string
}

func (e *NotAwaitingApprovalError) Error() string {
	return fmt.Sprintf("sdk: batch %s is not awaiting approval: %s", e.TaskID, e.Reason)
}

// Is makes errors.Is(err, ErrNotAwaitingApproval) true.
func (e *NotAwaitingApprovalError) Is(target error) bool { return target == ErrNotAwaitingApproval }

// Approve approves batch id's plan, like POST /tasks/{id}/approve: the
// batch applies its operations. approver (required, at most 128 bytes) is
// recorded as the decision's approver and the audit trail's actor; comment
// (optional, at most 4096 bytes) is kept with it. It returns the batch as
// it is right after the decision (still Running); Wait for its end. A
// batch that is not awaiting approval is a *NotAwaitingApprovalError.
func (c *Client) Approve(ctx context.Context, id, approver, comment string) (storage.Task, error) {
	return c.decide(ctx, workflows.ApproveUpdate, id, approver, comment)
}

// Reject rejects batch id's plan, like POST /tasks/{id}/reject: nothing
// is applied and the batch ends Cancelled. Arguments, result and errors
// as for Approve.
func (c *Client) Reject(ctx context.Context, id, approver, comment string) (storage.Task, error) {
	return c.decide(ctx, workflows.RejectUpdate, id, approver, comment)
}

func (c *Client) decide(ctx context.Context, update, id, approver, comment string) (storage.Task, error) {
	var t storage.Task
	if c.Temporal == nil {
		return t, errors.New("sdk: Client.Temporal is nil")
	}
	// The workflow's validator checks these too; checked here they give a
	// *workflows.FieldError instead of a rejected update.
	switch {
	case strings.TrimSpace(approver) == "":
		return t, &workflows.FieldError{Field: "approver", Message: "is required: who decides"}
	case len(approver) > 128:
		return t, &workflows.FieldError{Field: "approver", Message: "at most 128 bytes"}
	case len(comment) > 4096:
		return t, &workflows.FieldError{Field: "comment", Message: "at most 4096 bytes"}
	}
	h, err := c.Temporal.UpdateWorkflow(ctx, client.UpdateWorkflowOptions{
		WorkflowID:   id,
		UpdateName:   update,
		Args:         []any{workflows.ApprovalRequest{Approver: approver, Comment: comment}},
		WaitForStage: client.WorkflowUpdateStageCompleted,
	})
	if err == nil {
		err = h.Get(ctx, &t)
	}
	if err == nil {
		return t, nil
	}
	var appErr *temporal.ApplicationError
	var nf *serviceerror.NotFound
	switch {
	case errors.As(err, &appErr) && appErr.Type() == workflows.ErrTypeNotAwaitingApproval:
		return t, &NotAwaitingApprovalError{TaskID: id, Reason: appErr.Message()}
	case errors.As(err, &nf):
		// An update to a closed workflow: the batch has ended (or id
		// names no workflow at all).
		return t, &NotAwaitingApprovalError{TaskID: id, Reason: "no running batch with this id: " + nf.Message}
	}
	return t, fmt.Errorf("sdk: %s batch %s: %w", update, id, err)
}
