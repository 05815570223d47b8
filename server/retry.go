package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/api/serviceerror"

	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/workflows"
)

// RetryTaskRequest is the optional body of POST /tasks/{id}/retry.
type RetryTaskRequest struct {
	// Priority 1 (most urgent) to 5 of the new task; default: the retried
	// task's.
	Priority int `json:"priority,omitempty"`
}

// Audit actions of a retry: the retried task records which task retries it,
// the new task which task it retries (Detail holds the other id).
const (
	ActionRetriedAs = "retried_as"
	ActionRetryOf   = "retry_of"
)

// retryScope scopes a retry's Idempotency-Key apart from the creates' (the
// same key on a create and on a retry names two different tasks).
const retryScope = "retry:"

// retryTask serves POST /tasks/{id}/retry: a new task of the same workflow
// type, infra, settings and options that runs only what the Failed or
// Cancelled task did not complete (workflows.Retry), with the old task in
// its dependencies and the retry in both audit trails. The original
// request comes from the task's Temporal history (its start event's input,
// exactly as it was sent) or, once retention has removed the history,
// from the task record. Without an Idempotency-Key the new task's id is
// workflows.DefaultRetryID: retrying the same task again answers the same
// retry (200, Idempotent-Replayed) and starts nothing.
func (s *Server) retryTask(c echo.Context) error {
	id, err := s.taskID(c)
	if err != nil {
		return err
	}
	var req RetryTaskRequest
	if err := s.decodeOptionalJSON(c, &req); err != nil {
		return err
	}
	if err := workflows.ValidatePriority("priority", req.Priority); err != nil {
		return validationErr(err)
	}
	ctx := actorCtx(c)
	old, err := s.store.Get(ctx, id)
	if err != nil {
		return s.storeErr(err)
	}
	if err := workflows.CheckRetryable(old); err != nil {
		return conflict(err.Error())
	}
	orig, err := s.originalInput(ctx, old)
	if err != nil {
		return err
	}
	in, err := workflows.Retry(orig, old)
	if err != nil {
		var nr *workflows.NotRetryableError
		if errors.As(err, &nr) {
			return conflict(err.Error())
		}
		return err
	}
	common := in.Fields()
	newID, keyed, err := s.newTaskID(c, retryScope+old.WorkflowType)
	if err != nil {
		return err
	}
	if !keyed {
		// One retry per task unless the client names another with a key.
		newID, keyed = workflows.DefaultRetryID(old), true
	}
	common.TaskID = newID
	common.CreatedAt = time.Now().UTC().Truncate(time.Microsecond)
	common.Policy = s.policy
	common.FairnessWeight = s.weights[common.Infra]
	if req.Priority != 0 {
		common.Priority = req.Priority
	}
	if common.Webhook != nil && !s.webhooks {
		return conflict(fmt.Sprintf("task %s cannot be retried here: it has a webhook and this service has no %s to sign its deliveries", id, WebhookSecretFlag))
	}
	if err := in.Validate(); err != nil {
		// The original passed validation; a record that no longer does
		// cannot be retried as it is.
		return conflict(fmt.Sprintf("task %s cannot be retried: its request is no longer valid (%v)", id, err))
	}
	if err := s.start(c, *common, keyed, in.Task(), in); err != nil {
		return err
	}
	if c.Response().Status != http.StatusOK || c.Response().Header().Get(IdempotentReplayedHeader) != "" {
		return nil // an idempotent replay: the first request recorded it
	}
	s.log.Info("task retried", "task_id", id, "retry_task_id", newID, "steps", in.Task().Targets)
	s.recordEvent(ctx, newID, ActionRetryOf, true, storage.AuditEntry{
		Action: ActionRetryOf, Before: storage.StatusPending, After: storage.StatusPending, Detail: id})
	s.recordEvent(ctx, id, ActionRetriedAs+"/"+newID, true, storage.AuditEntry{
		Action: ActionRetriedAs, Before: old.Status, After: old.Status, Version: old.Version, Detail: newID})
	return nil
}

// originalInput is the input task's workflow was started with: the start
// event's input from Temporal, or, when Temporal no longer has the
// history, the input the task record's args describe.
func (s *Server) originalInput(ctx context.Context, task storage.Task) (workflows.ProvisioningInput, error) {
	hctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ev, err := s.firstEvent(hctx, task.ID)
	var nf *serviceerror.NotFound
	switch {
	case errors.As(err, &nf):
		s.log.Info("task history no longer in Temporal; retrying from the task record", "task_id", task.ID)
		in, err := workflows.InputFromTask(task)
		if err != nil {
			return nil, conflict(err.Error())
		}
		return in, nil
	case err != nil:
		return nil, unavailable("temporal", err)
	}
	in, err := workflows.DecodeStartInput(task.ID, task.WorkflowType, ev)
	if err != nil {
		return nil, conflict(err.Error())
	}
	return in, nil
}

// firstEvent reads the first event of a workflow's history (its start).
func (s *Server) firstEvent(ctx context.Context, id string) (*historypb.HistoryEvent, error) {
	it := s.client.GetWorkflowHistory(ctx, id, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	if !it.HasNext() {
		return nil, serviceerror.NewNotFound("workflow history is empty")
	}
	return it.Next()
}
