package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/workflows"
)

// BatchPath is where batches are submitted.
const BatchPath = "/workflows/batch"

// CreateBatchRequest is the body of POST /workflows/batch: a DAG of
// operations with the defaults they share.
type CreateBatchRequest struct {
	// Name is the batch's display name; default "batch <infra>".
	Name string `json:"name,omitempty"`
	// Infra, Settings, CheckMode and Wait are every operation's defaults.
	Infra     string `json:"infra,omitempty"`
	Settings  string `json:"settings,omitempty"`
	CheckMode bool   `json:"check_mode,omitempty"`
	Wait      bool   `json:"wait,omitempty"`
	// Priority 1 (most urgent) to 5 of the batch and its operations; default 3.
	Priority int `json:"priority,omitempty"`
	// Parallelism is how many operations run at once; default 4, at most 100.
	Parallelism int `json:"parallelism,omitempty"`
	// FailFast: the first failure cancels the running operations and
	// starts nothing new. Default false: independent branches go on.
	FailFast bool `json:"fail_fast,omitempty"`
	// Rollback: on failure or cancel, compensate completed operations by
	// the provider's delete verbs, last first. Default true.
	Rollback *bool `json:"rollback,omitempty"`
	// Mode is "apply" (default) or "plan" (every operation with --check;
	// each output kept as its plan; nothing changes).
	Mode string `json:"mode,omitempty"`
	// RequireApproval: plan first, then wait for POST /tasks/{id}/approve
	// (or /reject) before applying. Default false.
	RequireApproval bool `json:"require_approval,omitempty"`
	// ApprovalTimeout is a Go duration ("30m", "24h"), 1s to 720h;
	// default 24h. A batch nobody decides on in time fails.
	ApprovalTimeout string `json:"approval_timeout,omitempty"`
	// Operations, 1 to 500, each naming the operations it depends on.
	Operations []workflows.Operation `json:"operations"`
	// Webhook receives a signed POST on every status change of the batch
	// and of each operation's task (see the README's Webhooks); optional.
	Webhook *workflows.Webhook `json:"webhook,omitempty"`
}

// DecisionRequest is the optional body of POST /tasks/{id}/approve and
// /reject. The approver is the caller's token name.
type DecisionRequest struct {
	// Comment is kept with the decision and in the audit trail.
	Comment string `json:"comment,omitempty"`
}

// CodeNotAwaitingApproval is the error code of an approve or reject of a
// batch that is not waiting for a decision (409).
const CodeNotAwaitingApproval = "not_awaiting_approval"

func (s *Server) createBatch(c echo.Context) error {
	var req CreateBatchRequest
	if err := s.decodeJSON(c, &req); err != nil {
		return err
	}
	var timeout time.Duration
	if req.ApprovalTimeout != "" {
		d, err := time.ParseDuration(req.ApprovalTimeout)
		if err != nil {
			return fieldErr("approval_timeout", `must be a duration such as "30m" or "24h"`)
		}
		if d <= 0 {
			return fieldErr("approval_timeout", "must be positive")
		}
		timeout = d
	}
	common, keyed, err := s.common(c, workflows.BatchWorkflowName, req.Infra, req.Settings, req.CheckMode, req.Wait, req.Priority, req.Webhook)
	if err != nil {
		return err
	}
	in := workflows.BatchInput{
		Common: common, Name: req.Name, Operations: req.Operations, Parallelism: req.Parallelism,
		FailFast: req.FailFast, NoRollback: req.Rollback != nil && !*req.Rollback, Mode: req.Mode,
		RequireApproval: req.RequireApproval, ApprovalTimeout: timeout, SearchAttributes: s.attrs,
	}
	if err := in.Validate(); err != nil {
		return validationErr(err)
	}
	return s.start(c, in.Common, keyed, in.Task(), in)
}

// approveTask serves POST /tasks/{id}/approve.
func (s *Server) approveTask(c echo.Context) error { return s.decide(c, workflows.ApproveUpdate) }

// rejectTask serves POST /tasks/{id}/reject.
func (s *Server) rejectTask(c echo.Context) error { return s.decide(c, workflows.RejectUpdate) }

// decide sends a batch the approve or reject update with the caller's
// token name as the approver (the workflow records it in the audit
// trail) and answers the batch task.
func (s *Server) decide(c echo.Context, update string) error {
	id, err := s.taskID(c)
	if err != nil {
		return err
	}
	var req DecisionRequest
	if err := s.decodeOptionalJSON(c, &req); err != nil {
		return err
	}
	if len(req.Comment) > 4096 {
		return fieldErr("comment", "at most 4096 bytes")
	}
	ctx := actorCtx(c)
	t, err := s.store.Get(ctx, id)
	if err != nil {
		return s.storeErr(err)
	}
	if t.WorkflowType != workflows.BatchWorkflowName {
		return conflictCode(CodeNotAwaitingApproval, fmt.Sprintf("task %s is a %s, not a batch: nothing to approve", id, t.WorkflowType))
	}
	if t.Status.Terminal() {
		return conflictCode(CodeNotAwaitingApproval, fmt.Sprintf("batch %s is already %s", id, t.Status))
	}
	updated, err := s.taskUpdate(ctx, id, update,
		workflows.ApprovalRequest{Approver: requestActor(c), Comment: req.Comment},
		workflows.ErrTypeNotAwaitingApproval, CodeNotAwaitingApproval, "batch")
	if err != nil {
		return err
	}
	s.log.Info("batch decision", "task_id", id, "decision", update, "approver", requestActor(c))
	return ok(c, http.StatusOK, updated)
}

// taskUpdateWait bounds the wait for a task workflow's update result.
const taskUpdateWait = 30 * time.Second

// taskUpdate sends task id's workflow the update name with arg and waits
// (at most taskUpdateWait) for its result: the task as the workflow then
// shows it. The workflow's refusal (an application error of type
// refusedType) answers 409 with code and the workflow's message; a
// workflow that has already ended, 409 with code; anything else 503.
func (s *Server) taskUpdate(ctx context.Context, id, name string, arg any, refusedType, code, what string) (storage.Task, error) {
	ctx, cancel := context.WithTimeout(ctx, taskUpdateWait)
	defer cancel()
	h, err := s.client.UpdateWorkflow(ctx, client.UpdateWorkflowOptions{
		WorkflowID:   id,
		UpdateName:   name,
		Args:         []any{arg},
		WaitForStage: client.WorkflowUpdateStageCompleted,
	})
	var updated storage.Task
	if err == nil {
		err = h.Get(ctx, &updated)
	}
	if err != nil {
		var appErr *temporal.ApplicationError
		var nf *serviceerror.NotFound
		switch {
		case errors.As(err, &appErr) && appErr.Type() == refusedType:
			return updated, conflictCode(code, appErr.Message())
		case errors.As(err, &nf):
			return updated, conflictCode(code, fmt.Sprintf("%s %s has already finished", what, id))
		}
		return updated, unavailable("temporal", err)
	}
	return updated, nil
}

// conflictCode is a 409 with a specific error code.
func conflictCode(code, msg string) error {
	return &APIError{Status: http.StatusConflict, Body: ErrorBody{Code: code, Message: msg}}
}
