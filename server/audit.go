package server

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/testenv"
)

// AnonymousActor is the audit actor of API requests when the API has no
// authentication configured.
const AnonymousActor = "anonymous"

// Audit actions of API events (task creation is storage.AuditCreate,
// appended by the store's Create itself).
const (
	// ActionCancelRequested: POST /tasks/{id}/cancel reached Temporal.
	ActionCancelRequested = "cancel_requested"
	// ActionCleanupRequested: DELETE /test/environments/{id} signalled cleanup.
	ActionCleanupRequested = "cleanup_requested"
	// ActionTestRunRequested: POST /test/environments/{id}/run ran (or
	// outlived its wait).
	ActionTestRunRequested = "test_run_requested"
	// ActionConvergeRequested: POST /test/environments/{id}/converge ran
	// (or outlived its wait).
	ActionConvergeRequested = "converge_requested"
	// ActionStartFailed: the task was recorded but its workflow could not
	// be started, so the record was removed again.
	ActionStartFailed = "start_failed"
)

// requestActor names who makes the request, for the audit trail: the name
// of the bearer token the auth middleware accepted, or AnonymousActor when
// the API runs without tokens.
func requestActor(c echo.Context) string {
	if name, ok := c.Get(actorKey).(string); ok && name != "" {
		return name
	}
	return AnonymousActor
}

// actorCtx is the request's context tagged with its actor; handlers that
// change something use it for their store calls.
func actorCtx(c echo.Context) context.Context {
	return storage.WithActor(c.Request().Context(), requestActor(c))
}

// recordEvent appends an API event for taskID. The ID is
// "<task>/<kind>/<unix nanos>" (unique per request), or "<task>/<kind>"
// when once is set (an event that can happen once per task). The action
// has already happened, so a failed append is logged rather than failing
// the request; it runs on a detached context so that a client that hangs
// up does not lose it.
func (s *Server) recordEvent(ctx context.Context, taskID, kind string, once bool, e storage.AuditEntry) {
	now := time.Now().UTC()
	e.TaskID = taskID
	e.ID = fmt.Sprintf("%s/%s/%d", taskID, kind, now.UnixNano())
	if once {
		e.ID = taskID + "/" + kind
	}
	e.Time = now.Truncate(time.Microsecond)
	e.Actor = storage.ActorFrom(ctx)
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := s.store.AppendAudit(actx, e); err != nil {
		s.log.Error("could not record audit entry", "task_id", taskID, "action", e.Action, "error", err)
	}
}

// envStatus is the task status and version an environment is projected as.
func envStatus(st testenv.EnvState) (storage.TaskStatus, int64) {
	t, err := testenv.EnvTask(st)
	if err != nil {
		return "", st.Version
	}
	return t.Status, t.Version
}

// auditLimit parses an optional limit query parameter (1..MaxLimit); 0
// means the store's default.
func auditLimit(c echo.Context) (int, error) {
	n, _, err := intParam(c, "limit", 1, storage.DefaultAuditLimit)
	return n, err
}

// taskAudit serves GET /tasks/{id}/audit: the task's audit trail, oldest
// first (the newest `limit`, default 1000).
func (s *Server) taskAudit(c echo.Context) error {
	id, err := s.taskID(c)
	if err != nil {
		return err
	}
	for k := range c.QueryParams() {
		if k != "limit" {
			return fieldErr(k, "unknown query parameter (use limit)")
		}
	}
	limit, err := auditLimit(c)
	if err != nil {
		return err
	}
	ctx := c.Request().Context()
	if _, err := s.store.Get(ctx, id); err != nil {
		return s.storeErr(err)
	}
	return s.auditPage(c, storage.AuditFilter{TaskID: id, Limit: limit})
}

// listAudit serves GET /audit?task_id=&limit=: the newest `limit` entries
// (default 1000) of all tasks or of one, oldest first.
func (s *Server) listAudit(c echo.Context) error {
	for k := range c.QueryParams() {
		if k != "limit" && k != "task_id" {
			return fieldErr(k, "unknown query parameter (use task_id, limit)")
		}
	}
	f := storage.AuditFilter{TaskID: c.QueryParam("task_id")}
	if f.TaskID != "" {
		if err := storage.ValidateID(f.TaskID); err != nil {
			return fieldErr("task_id", "must be a task id (a lowercase UUID)")
		}
	}
	var err error
	if f.Limit, err = auditLimit(c); err != nil {
		return err
	}
	return s.auditPage(c, f)
}

func (s *Server) auditPage(c echo.Context, f storage.AuditFilter) error {
	entries, err := s.store.ListAudit(c.Request().Context(), f)
	if err != nil {
		return s.storeErr(err)
	}
	if entries == nil {
		entries = []storage.AuditEntry{}
	}
	return ok(c, http.StatusOK, entries)
}
