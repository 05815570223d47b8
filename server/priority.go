package server

import (
	"fmt"
	"net/http"

	"github.com/labstack/echo/v4"

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
	updated, err := s.taskUpdate(ctx, id, workflows.SetPriorityUpdate,
		workflows.SetPriorityRequest{Priority: req.Priority},
		workflows.ErrTypeTaskFinished, CodeConflict, "task")
	if err != nil {
		return err
	}
	s.log.Info("task priority changed", "task_id", id, "from", t.Priority, "to", req.Priority)
	s.recordEvent(ctx, id, "priority", false, storage.AuditEntry{
		Action: ActionPriorityChanged, Before: updated.Status, After: updated.Status, Version: updated.Version,
		Detail: fmt.Sprintf("priority %d -> %d", t.Priority, req.Priority)})
	return ok(c, http.StatusOK, updated)
}
