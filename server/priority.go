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

// PatchTaskRequest is the body of PATCH /tasks/{id}: what an operator may
// change of a task that has not finished. Today that is its priority.
type PatchTaskRequest struct {
	// Priority 1 (most urgent) to 5. Required.
	Priority int `json:"priority"`
}

// ActionPriorityChanged is the audit action of a priority change; Detail
// says from what to what.
const ActionPriorityChanged = "priority_changed"

// patchTask changes an unfinished provisioning task's priority through the
// workflow's set-priority update: the steps it has not started yet are
// scheduled with it, and the task shows it. Steps already handed to
// Temporal (at most the task's parallelism) keep the priority they had.
func (s *Server) patchTask(c echo.Context) error {
	id, err := s.taskID(c)
	if err != nil {
		return err
	}
	var req PatchTaskRequest
	if err := s.decodeJSON(c, &req); err != nil {
		return err
	}
	if req.Priority == 0 {
		return fieldErr("priority", "is required")
	}
	if err := workflows.ValidatePriority("priority", req.Priority); err != nil {
		return validationErr(err)
	}
	ctx := actorCtx(c)
	t, err := s.store.Get(ctx, id)
	if err != nil {
		return s.storeErr(err)
	}
	switch t.WorkflowType {
	case workflows.ServerCreateWorkflowName, workflows.TaskservCreateWorkflowName, workflows.ClusterCreateWorkflowName:
	default:
		return conflict(fmt.Sprintf("task %s is a %s: only provisioning tasks have a priority to change", id, t.WorkflowType))
	}
	if t.Status.Terminal() {
		return conflict(fmt.Sprintf("task %s is already %s", id, t.Status))
	}
	uctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	h, err := s.client.UpdateWorkflow(uctx, client.UpdateWorkflowOptions{
		WorkflowID:   id,
		UpdateName:   workflows.SetPriorityUpdate,
		Args:         []any{workflows.SetPriorityRequest{Priority: req.Priority}},
		WaitForStage: client.WorkflowUpdateStageCompleted,
	})
	var updated storage.Task
	if err == nil {
		err = h.Get(uctx, &updated)
	}
	if err != nil {
		var appErr *temporal.ApplicationError
		var nf *serviceerror.NotFound
		switch {
		case errors.As(err, &appErr) && appErr.Type() == workflows.ErrTypeTaskFinished:
			return conflict(appErr.Message())
		case errors.As(err, &nf):
			return conflict(fmt.Sprintf("task %s has already finished", id))
		}
		return unavailable("temporal", err)
	}
	s.log.Info("task priority changed", "task_id", id, "from", t.Priority, "to", req.Priority)
	s.recordEvent(ctx, id, "priority", false, storage.AuditEntry{
		Action: ActionPriorityChanged, Before: updated.Status, After: updated.Status, Version: updated.Version,
		Detail: fmt.Sprintf("priority %d -> %d", t.Priority, req.Priority)})
	return ok(c, http.StatusOK, updated)
}
