package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"
	commonpb "go.temporal.io/api/common/v1"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"

	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/workflows"
)

// Schedules (POST /schedules): recurring tasks on Temporal Schedules. Each
// time a schedule fires, Temporal starts workflows.ScheduledRunWorkflow,
// which runs the schedule's action as a normal task.

// SchedulesPath is the route of the schedule collection.
const SchedulesPath = "/schedules"

// TemporalSchedulePrefix prefixes the Temporal schedule id (and the
// scheduled workflows' ids) of every schedule this API creates, so that
// they cannot clash with other users of the namespace and the list shows
// only this API's schedules.
const TemporalSchedulePrefix = "orchestrator-"

// MinScheduleInterval is the shortest interval a schedule may have.
const MinScheduleInterval = time.Second

// MaxCronExpressions bounds a schedule's cron expressions; MaxScheduleNote
// bounds its note (bytes).
const (
	MaxCronExpressions = 20
	MaxScheduleNote    = 1000
)

// MaxListedSchedules bounds GET /schedules.
const MaxListedSchedules = 1000

// Audit actions of schedule changes. They are recorded under the
// schedule's audit id (ScheduleView.AuditID): GET /audit?task_id=<it>.
const (
	ActionScheduleCreated   = "schedule_created"
	ActionSchedulePaused    = "schedule_paused"
	ActionScheduleUnpaused  = "schedule_unpaused"
	ActionScheduleTriggered = "schedule_triggered"
	ActionScheduleDeleted   = "schedule_deleted"
)

// Overlap policies a schedule may name; the default is skip.
var overlapPolicies = map[string]enumspb.ScheduleOverlapPolicy{
	"skip":            enumspb.SCHEDULE_OVERLAP_POLICY_SKIP,
	"buffer_one":      enumspb.SCHEDULE_OVERLAP_POLICY_BUFFER_ONE,
	"buffer_all":      enumspb.SCHEDULE_OVERLAP_POLICY_BUFFER_ALL,
	"cancel_other":    enumspb.SCHEDULE_OVERLAP_POLICY_CANCEL_OTHER,
	"terminate_other": enumspb.SCHEDULE_OVERLAP_POLICY_TERMINATE_OTHER,
	"allow_all":       enumspb.SCHEDULE_OVERLAP_POLICY_ALLOW_ALL,
}

// DefaultOverlap is a schedule's overlap policy unless the request names
// one: a run due while the previous one still runs is skipped.
const DefaultOverlap = "skip"

func overlapName(p enumspb.ScheduleOverlapPolicy) string {
	for k, v := range overlapPolicies {
		if v == p {
			return k
		}
	}
	return DefaultOverlap // unspecified means skip to Temporal too
}

// CreateScheduleRequest is the body of POST /schedules.
type CreateScheduleRequest = workflows.ScheduleRequest

// ScheduleNoteRequest is the optional body of POST /schedules/{id}/pause
// and /unpause.
type ScheduleNoteRequest = workflows.ScheduleNoteRequest

// ScheduleView is a schedule as the API shows it.
type ScheduleView = workflows.ScheduleView

// ScheduleRun is one recent run of a schedule.
type ScheduleRun = workflows.ScheduleRun

// scheduleMemo is what the API keeps in the Temporal schedule's memo: the
// request as sent (Temporal turns cron expressions into calendars, and the
// action's arguments are opaque to a list).
type scheduleMemo struct {
	Cron     []string                 `json:"cron,omitempty"`
	Interval string                   `json:"interval,omitempty"`
	Overlap  string                   `json:"overlap"`
	Action   workflows.ScheduleAction `json:"action"`
}

// scheduleMemoKey is the memo field scheduleMemo is stored under.
const scheduleMemoKey = "orchestrator_schedule"

// scheduleAuditNamespace is the UUIDv5 namespace of schedules' audit ids.
var scheduleAuditNamespace = uuid.MustParse("9e7c2a4d-3b1f-4c6e-8a5d-7f0b1e2c3d4a")

// ScheduleAuditID is the id a schedule's changes are audited under: a
// UUIDv5 of its id (so a schedule re-created under the same id continues
// the same trail).
func ScheduleAuditID(id string) string {
	return uuid.NewSHA1(scheduleAuditNamespace, []byte("schedule\x00"+id)).String()
}

func scheduleOps() []apiOp {
	name := []apiParam{{"schedule", "the schedule's id", map[string]any{"type": "string", "pattern": `^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`}}}
	body := []int{http.StatusBadRequest, http.StatusNotFound, http.StatusRequestEntityTooLarge, http.StatusUnsupportedMediaType, http.StatusServiceUnavailable}
	byName := []int{http.StatusBadRequest, http.StatusNotFound, http.StatusServiceUnavailable}
	p := SchedulesPath + "/:schedule"
	return []apiOp{
		{method: http.MethodPost, path: SchedulesPath,
			summary: "Create a schedule: a cron or interval schedule (Temporal Schedule) whose every run is a normal task (a server, taskserv or cluster create with the action's fields); 409 when the id exists; data is the schedule",
			body:    typeOf[CreateScheduleRequest](), success: []int{http.StatusCreated}, data: typeOf[ScheduleView](),
			errors: []int{http.StatusBadRequest, http.StatusConflict, http.StatusRequestEntityTooLarge, http.StatusUnsupportedMediaType, http.StatusServiceUnavailable}},
		{method: http.MethodGet, path: SchedulesPath, summary: "List this API's schedules by id (eventually consistent: a new schedule may take a moment to appear); recent_runs holds up to 5",
			success: []int{http.StatusOK}, data: typeOf[[]ScheduleView](), errors: []int{http.StatusBadRequest, http.StatusServiceUnavailable}},
		{method: http.MethodGet, path: p, summary: "Get a schedule: spec, paused, note, next run times, recent runs (up to 10) with their task ids and status",
			pathParams: name, success: []int{http.StatusOK}, data: typeOf[ScheduleView](), errors: byName},
		{method: http.MethodPost, path: p + "/pause", summary: "Pause a schedule (optional body: {note}); data is the schedule",
			pathParams: name, body: typeOf[ScheduleNoteRequest](), bodyOptional: true, success: []int{http.StatusOK}, data: typeOf[ScheduleView](), errors: body},
		{method: http.MethodPost, path: p + "/unpause", summary: "Unpause a schedule (optional body: {note}); data is the schedule",
			pathParams: name, body: typeOf[ScheduleNoteRequest](), bodyOptional: true, success: []int{http.StatusOK}, data: typeOf[ScheduleView](), errors: body},
		{method: http.MethodPost, path: p + "/trigger", summary: "Run a schedule now (also while paused), under its overlap policy; data is the schedule id",
			pathParams: name, success: []int{http.StatusAccepted}, data: map[string]any{"type": "string"}, errors: byName},
		{method: http.MethodDelete, path: p, summary: "Delete a schedule (runs still running finish); data is the schedule id",
			pathParams: name, success: []int{http.StatusOK}, data: map[string]any{"type": "string"}, errors: byName},
	}
}

func (s *Server) routeSchedules() {
	s.e.POST(SchedulesPath, s.createSchedule)
	s.e.GET(SchedulesPath, s.listSchedules)
	s.e.GET(SchedulesPath+"/:schedule", s.getSchedule)
	s.e.POST(SchedulesPath+"/:schedule/pause", s.pauseSchedule)
	s.e.POST(SchedulesPath+"/:schedule/unpause", s.unpauseSchedule)
	s.e.POST(SchedulesPath+"/:schedule/trigger", s.triggerSchedule)
	s.e.DELETE(SchedulesPath+"/:schedule", s.deleteSchedule)
}

// validate checks the request and returns the Temporal spec and overlap
// policy it asks for.
func validateSchedule(r *CreateScheduleRequest) (client.ScheduleSpec, enumspb.ScheduleOverlapPolicy, error) {
	var spec client.ScheduleSpec
	if err := workflows.ValidateName("id", r.ID); err != nil {
		return spec, 0, err
	}
	switch {
	case len(r.Cron) > 0 && r.Interval != "":
		return spec, 0, &workflows.FieldError{Field: "interval", Message: "give either cron or interval, not both"}
	case len(r.Cron) == 0 && r.Interval == "":
		return spec, 0, &workflows.FieldError{Field: "interval", Message: `one of cron (e.g. ["0 2 * * *"]) or interval (e.g. "1h") is required`}
	case r.Interval != "":
		d, err := time.ParseDuration(r.Interval)
		if err != nil {
			return spec, 0, &workflows.FieldError{Field: "interval", Message: fmt.Sprintf("%q is not a duration (e.g. 30s, 1h)", r.Interval)}
		}
		if d < MinScheduleInterval {
			return spec, 0, &workflows.FieldError{Field: "interval", Message: fmt.Sprintf("must be at least %s", MinScheduleInterval)}
		}
		spec.Intervals = []client.ScheduleIntervalSpec{{Every: d}}
	default:
		if len(r.Cron) > MaxCronExpressions {
			return spec, 0, &workflows.FieldError{Field: "cron", Message: fmt.Sprintf("at most %d expressions", MaxCronExpressions)}
		}
		for i, c := range r.Cron {
			// Temporal parses the expressions; this only keeps out what
			// is obviously not one.
			if f := strings.Fields(c); len(f) < 1 || len(f) > 7 || len(c) > 256 {
				return spec, 0, &workflows.FieldError{Field: fmt.Sprintf("cron[%d]", i), Message: `must be a cron expression such as "0 2 * * *"`}
			}
		}
		spec.CronExpressions = slices.Clone(r.Cron)
	}
	overlap, found := overlapPolicies[cmp.Or(r.Overlap, DefaultOverlap)]
	if !found {
		return spec, 0, &workflows.FieldError{Field: "overlap", Message: fmt.Sprintf("%q is not one of skip, buffer_one, buffer_all, cancel_other, terminate_other, allow_all", r.Overlap)}
	}
	if len(r.Note) > MaxScheduleNote {
		return spec, 0, &workflows.FieldError{Field: "note", Message: fmt.Sprintf("at most %d bytes", MaxScheduleNote)}
	}
	if r.Action == nil {
		return spec, 0, &workflows.FieldError{Field: "action", Message: "is required: {type: server|taskserv|cluster|batch, infra, settings, ...}"}
	}
	if err := r.Action.Validate(); err != nil {
		return spec, 0, err
	}
	return spec, overlap, nil
}

func (s *Server) createSchedule(c echo.Context) error {
	var req CreateScheduleRequest
	if err := s.decodeJSON(c, &req); err != nil {
		return err
	}
	spec, overlap, err := validateSchedule(&req)
	if err != nil {
		return validationErr(err)
	}
	if err := s.checkWebhook(req.Action.Webhook); err != nil {
		var apiErr *APIError
		if errors.As(err, &apiErr) && apiErr.Body.Field != "" {
			// The webhook is the action's.
			apiErr.Body.Field = "action." + apiErr.Body.Field
			apiErr.Body.Message = "action." + apiErr.Body.Message
		}
		return err
	}
	in := workflows.ScheduledRunInput{ScheduleID: req.ID, Action: *req.Action, Policy: s.policy, FairnessWeight: s.weights[req.Action.Infra],
		SearchAttributes: s.attrs}
	if req.Action.Type == workflows.ScheduleActionTaskservTest {
		// Each run plans its environment as POST /test/environments/create
		// would have when the schedule was made.
		in.TestEnv = &workflows.ScheduledTestEnv{DefaultImage: s.envOpts.DefaultImage, NodeCPUMillicores: s.envOpts.NodeCPUMillicores,
			NodeMemoryMB: s.envOpts.NodeMemoryMB, Instance: s.envOpts.Instance, TTL: s.envOpts.DefaultTTL,
			ActivityTaskQueue: workflows.EnvTaskQueue(s.taskQueue), UpdatesPerRun: s.envOpts.UpdatesPerRun}
		if _, err := in.TestEnvInput("00000000-0000-4000-8000-000000000000", time.Time{}); err != nil {
			return validationErr(err)
		}
	}
	_, _, common, task := in.Child("", time.Time{})
	tid := TemporalSchedulePrefix + req.ID
	memo := scheduleMemo{Cron: req.Cron, Interval: req.Interval, Overlap: cmp.Or(req.Overlap, DefaultOverlap), Action: *req.Action}
	ctx := actorCtx(c)
	_, err = s.client.ScheduleClient().Create(ctx, client.ScheduleOptions{
		ID:      tid,
		Spec:    spec,
		Overlap: overlap,
		Paused:  req.Paused,
		Note:    req.Note,
		Memo:    map[string]any{scheduleMemoKey: memo},
		Action: &client.ScheduleWorkflowAction{
			// Temporal appends the time of each run to it.
			ID:            tid,
			Workflow:      workflows.ScheduledRunWorkflowName,
			Args:          []any{in},
			TaskQueue:     s.taskQueue,
			Priority:      common.TemporalPriority(),
			StaticSummary: "schedule " + req.ID + ": " + task.Summary(),
			// The run is findable by the infra and priority of its task.
			TypedSearchAttributes: s.attrs.Start(req.Action.Infra, cmp.Or(req.Action.Priority, storage.DefaultPriority)),
		},
	})
	if err != nil {
		var invalid *serviceerror.InvalidArgument
		switch {
		case errors.Is(err, temporal.ErrScheduleAlreadyRunning):
			return conflict(fmt.Sprintf("schedule %s already exists", req.ID))
		case errors.As(err, &invalid):
			field := "interval"
			if len(req.Cron) > 0 {
				field = "cron"
			}
			return fieldErr(field, "Temporal refused the schedule: "+invalid.Message)
		}
		return s.scheduleErr(req.ID, err)
	}
	s.log.Info("schedule created", "schedule", req.ID, "action", req.Action.Type)
	s.recordEvent(ctx, ScheduleAuditID(req.ID), "schedule", false, storage.AuditEntry{
		Action: ActionScheduleCreated, Detail: fmt.Sprintf("schedule %s created: %s every %s, overlap %s, paused %t",
			req.ID, task.Name, scheduleWhen(memo), memo.Overlap, req.Paused)})
	view, err := s.describeSchedule(ctx, req.ID)
	if err != nil {
		// Created, but cannot be read back right now: answer what was asked.
		view = ScheduleView{ID: req.ID, TemporalID: tid, AuditID: ScheduleAuditID(req.ID), Cron: req.Cron, Interval: req.Interval,
			Overlap: memo.Overlap, Paused: req.Paused, Note: req.Note, Action: req.Action, NextRuns: []time.Time{}, RecentRuns: []ScheduleRun{}}
	}
	return ok(c, http.StatusCreated, view)
}

func scheduleWhen(m scheduleMemo) string {
	if m.Interval != "" {
		return m.Interval
	}
	return "cron " + strings.Join(m.Cron, "; ")
}

// scheduleErr maps a Temporal schedule call's error: 404 for a schedule
// that does not exist, 503 otherwise.
func (s *Server) scheduleErr(id string, err error) error {
	var nf *serviceerror.NotFound
	if errors.As(err, &nf) {
		return notFound(fmt.Sprintf("schedule %s not found", id))
	}
	return unavailable("temporal", err)
}

// scheduleID is the request's {id}, checked.
func scheduleID(c echo.Context) (string, error) {
	id := c.Param("schedule")
	if err := workflows.ValidateName("schedule", id); err != nil {
		return "", validationErr(err)
	}
	return id, nil
}

func decodeMemo(m *commonpb.Memo) (scheduleMemo, bool) {
	var out scheduleMemo
	if m == nil || m.Fields[scheduleMemoKey] == nil {
		return out, false
	}
	if err := converter.GetDefaultDataConverter().FromPayload(m.Fields[scheduleMemoKey], &out); err != nil {
		return out, false
	}
	return out, true
}

// runs turns Temporal's recent actions into runs with their task ids and,
// when withStatus, their tasks' status.
func (s *Server) runs(ctx context.Context, actions []client.ScheduleActionResult, withStatus bool) []ScheduleRun {
	out := []ScheduleRun{}
	for _, a := range actions {
		if a.StartWorkflowResult == nil {
			continue
		}
		r := ScheduleRun{TaskID: workflows.ScheduledTaskID(a.StartWorkflowResult.WorkflowID),
			ScheduledAt: a.ScheduleTime.UTC(), StartedAt: a.ActualTime.UTC()}
		if withStatus {
			if t, err := s.store.Get(ctx, r.TaskID); err == nil {
				r.Status = t.Status
			}
		}
		out = append(out, r)
	}
	return out
}

func (s *Server) describeSchedule(ctx context.Context, id string) (ScheduleView, error) {
	d, err := s.client.ScheduleClient().GetHandle(ctx, TemporalSchedulePrefix+id).Describe(ctx)
	if err != nil {
		return ScheduleView{}, err
	}
	v := ScheduleView{ID: id, TemporalID: TemporalSchedulePrefix + id, AuditID: ScheduleAuditID(id),
		NextRuns: []time.Time{}, Runs: d.Info.NumActions, SkippedOverlap: d.Info.NumActionsSkippedOverlap,
		CreatedAt: d.Info.CreatedAt.UTC()}
	if m, found := decodeMemo(d.Memo); found {
		v.Cron, v.Interval, v.Overlap = m.Cron, m.Interval, m.Overlap
		v.Action = &m.Action
	}
	if p := d.Schedule.Policy; p != nil {
		v.Overlap = overlapName(p.Overlap)
	}
	if st := d.Schedule.State; st != nil {
		v.Paused, v.Note = st.Paused, st.Note
	}
	for _, t := range d.Info.NextActionTimes {
		v.NextRuns = append(v.NextRuns, t.UTC())
	}
	v.RecentRuns = s.runs(ctx, d.Info.RecentActions, true)
	for _, w := range d.Info.RunningWorkflows {
		v.RunningTasks = append(v.RunningTasks, workflows.ScheduledTaskID(w.WorkflowID))
	}
	return v, nil
}

func (s *Server) getSchedule(c echo.Context) error {
	id, err := scheduleID(c)
	if err != nil {
		return err
	}
	v, err := s.describeSchedule(c.Request().Context(), id)
	if err != nil {
		return s.scheduleErr(id, err)
	}
	return ok(c, http.StatusOK, v)
}

// listSchedules serves GET /schedules: this API's schedules (Temporal's
// list is eventually consistent: a schedule just created may take a moment
// to appear), sorted by id.
func (s *Server) listSchedules(c echo.Context) error {
	for k := range c.QueryParams() {
		return fieldErr(k, "unknown query parameter")
	}
	ctx := c.Request().Context()
	it, err := s.client.ScheduleClient().List(ctx, client.ScheduleListOptions{PageSize: 200})
	if err != nil {
		return unavailable("temporal", err)
	}
	out := []ScheduleView{}
	for it.HasNext() && len(out) < MaxListedSchedules {
		e, err := it.Next()
		if err != nil {
			return unavailable("temporal", err)
		}
		id, found := strings.CutPrefix(e.ID, TemporalSchedulePrefix)
		if !found {
			continue
		}
		v := ScheduleView{ID: id, TemporalID: e.ID, AuditID: ScheduleAuditID(id), Paused: e.Paused, Note: e.Note,
			NextRuns: []time.Time{}, RecentRuns: s.runs(ctx, e.RecentActions, false), Overlap: DefaultOverlap}
		if m, found := decodeMemo(e.Memo); found {
			v.Cron, v.Interval, v.Overlap = m.Cron, m.Interval, m.Overlap
			v.Action = &m.Action
		}
		for _, t := range e.NextActionTimes {
			v.NextRuns = append(v.NextRuns, t.UTC())
		}
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b ScheduleView) int { return strings.Compare(a.ID, b.ID) })
	return ok(c, http.StatusOK, out)
}

// scheduleNote reads the optional {note} body of pause and unpause.
func (s *Server) scheduleNote(c echo.Context) (string, error) {
	if c.Request().ContentLength == 0 {
		return "", nil
	}
	var req ScheduleNoteRequest
	if err := s.decodeJSON(c, &req); err != nil {
		return "", err
	}
	if len(req.Note) > MaxScheduleNote {
		return "", fieldErr("note", fmt.Sprintf("at most %d bytes", MaxScheduleNote))
	}
	return req.Note, nil
}

func (s *Server) pauseSchedule(c echo.Context) error   { return s.setPaused(c, true) }
func (s *Server) unpauseSchedule(c echo.Context) error { return s.setPaused(c, false) }

func (s *Server) setPaused(c echo.Context, paused bool) error {
	id, err := scheduleID(c)
	if err != nil {
		return err
	}
	note, err := s.scheduleNote(c)
	if err != nil {
		return err
	}
	ctx := actorCtx(c)
	actor := requestActor(c)
	h := s.client.ScheduleClient().GetHandle(ctx, TemporalSchedulePrefix+id)
	action := ActionSchedulePaused
	if paused {
		err = h.Pause(ctx, client.SchedulePauseOptions{Note: cmp.Or(note, "paused by "+actor)})
	} else {
		action = ActionScheduleUnpaused
		err = h.Unpause(ctx, client.ScheduleUnpauseOptions{Note: cmp.Or(note, "unpaused by "+actor)})
	}
	if err != nil {
		return s.scheduleErr(id, err)
	}
	s.log.Info("schedule "+strings.TrimPrefix(action, "schedule_"), "schedule", id)
	s.recordEvent(ctx, ScheduleAuditID(id), "schedule", false, storage.AuditEntry{
		Action: action, Detail: fmt.Sprintf("schedule %s %s: %s", id, strings.TrimPrefix(action, "schedule_"), note)})
	v, err := s.describeSchedule(ctx, id)
	if err != nil {
		return s.scheduleErr(id, err)
	}
	return ok(c, http.StatusOK, v)
}

// triggerSchedule serves POST /schedules/{id}/trigger: one run now, even
// while paused, under the schedule's overlap policy (with skip, nothing
// runs while a run is still running). The run shows in recent_runs
// shortly after the 202.
func (s *Server) triggerSchedule(c echo.Context) error {
	id, err := scheduleID(c)
	if err != nil {
		return err
	}
	ctx := actorCtx(c)
	if err := s.client.ScheduleClient().GetHandle(ctx, TemporalSchedulePrefix+id).Trigger(ctx, client.ScheduleTriggerOptions{}); err != nil {
		return s.scheduleErr(id, err)
	}
	s.log.Info("schedule triggered", "schedule", id)
	s.recordEvent(ctx, ScheduleAuditID(id), "schedule", false, storage.AuditEntry{
		Action: ActionScheduleTriggered, Detail: fmt.Sprintf("schedule %s triggered", id)})
	return ok(c, http.StatusAccepted, id)
}

// deleteSchedule serves DELETE /schedules/{id}. Runs still running go on
// to finish (cancel their tasks to stop them).
func (s *Server) deleteSchedule(c echo.Context) error {
	id, err := scheduleID(c)
	if err != nil {
		return err
	}
	ctx := actorCtx(c)
	if err := s.client.ScheduleClient().GetHandle(ctx, TemporalSchedulePrefix+id).Delete(ctx); err != nil {
		return s.scheduleErr(id, err)
	}
	s.log.Info("schedule deleted", "schedule", id)
	s.recordEvent(ctx, ScheduleAuditID(id), "schedule", false, storage.AuditEntry{
		Action: ActionScheduleDeleted, Detail: fmt.Sprintf("schedule %s deleted", id)})
	return ok(c, http.StatusOK, id)
}
