package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/workflows"
)

// Live events as Server-Sent Events: GET /tasks/{id}/events (one task's
// stream, from the start or from a Last-Event-ID, ending after the task's
// terminal transition) and GET /events (every task's events from now on,
// filtered). Events come from the store (storage.EventStore), where the
// workers' activities append them, so an API process serves the events of
// steps that run in other processes. The handlers poll the store; a
// store that announces its own appends (eventNotifier) wakes them at once.

// Routes of the event streams.
const (
	TaskEventsPath = "/tasks/:id/events"
	EventsPath     = "/events"
)

// Defaults of the event streams (Options.EventPollInterval and friends).
const (
	// DefaultEventPollInterval is how often a stream reads the store for
	// new events.
	DefaultEventPollInterval = 150 * time.Millisecond
	// DefaultEventKeepAlive is how long a stream stays silent before it
	// writes an SSE comment, so proxies and clients keep the connection.
	DefaultEventKeepAlive = 15 * time.Second
	// eventWriteTimeout bounds each write to a stream's client: the HTTP
	// server's WriteTimeout would otherwise cut every stream after it.
	eventWriteTimeout = time.Minute
	// terminalGrace is how long a task stream whose record is already
	// terminal waits for the terminal transition's event (a projection
	// writes the record first, then the events) before it ends anyway.
	terminalGrace = 3 * time.Second
	// globalLookBack is how far GET /events reads back each poll: events
	// appended late (slow writers, clocks of other processes slightly
	// behind) still get sent; those already sent are skipped.
	globalLookBack = 3 * time.Second
)

// LastEventIDHeader is the SSE resume header; ?last_event_id= is the same
// for clients that cannot set headers (the header wins).
const LastEventIDHeader = "Last-Event-ID"

// eventNotifier is implemented by stores that can tell when this process
// appended events, so streams need not wait for their next poll.
type eventNotifier interface {
	EventsChanged() <-chan struct{}
}

// StopStreams ends every open event stream (their clients get the end of
// the response and may reconnect with Last-Event-ID). The HTTP server's
// graceful shutdown calls it: streams would otherwise hold the shutdown
// until its deadline.
func (s *Server) StopStreams() { s.streamsOnce.Do(func() { close(s.streamsDone) }) }

// sseStream writes SSE frames to one client.
type sseStream struct {
	c        echo.Context
	rc       *http.ResponseController
	lastSent time.Time
}

// openStream answers 200 with the SSE headers; false: the client is gone.
func (s *Server) openStream(c echo.Context) (*sseStream, bool) {
	h := c.Response().Header()
	h.Set(echo.HeaderContentType, "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	// Reverse proxies (nginx) would otherwise buffer the stream.
	h.Set("X-Accel-Buffering", "no")
	st := &sseStream{c: c, rc: http.NewResponseController(c.Response())}
	c.Response().WriteHeader(http.StatusOK)
	// The retry hint makes EventSource clients reconnect quickly.
	return st, st.write("retry: 1000\n\n") && st.flush()
}

// write sends frame; false means the client is gone (the stream ends; the
// response has started, so there is no error to answer).
func (st *sseStream) write(frame string) bool {
	// Each write gets its own deadline: a stream lasts as long as its
	// task, longer than the server's WriteTimeout.
	_ = st.rc.SetWriteDeadline(time.Now().Add(eventWriteTimeout))
	_, err := st.c.Response().Write([]byte(frame))
	st.lastSent = time.Now()
	return err == nil
}

func (st *sseStream) flush() bool { return st.rc.Flush() == nil }

// event writes one event frame; data is JSON, which holds no newline.
func (st *sseStream) event(id, typ string, e storage.Event) bool {
	data, err := json.Marshal(e)
	if err != nil {
		return true // cannot happen for an Event; skip it
	}
	return st.write("id: " + id + "\nevent: " + typ + "\ndata: " + string(data) + "\n\n")
}

// keepAlive writes a comment when the stream was silent for keepAliveEvery.
func (s *Server) keepAlive(st *sseStream) bool {
	if time.Since(st.lastSent) < s.eventKeepAlive {
		return true
	}
	return st.write(": keep-alive\n\n") && st.flush()
}

// wait blocks for the next poll, an append in this process, the client's
// departure or the server's shutdown; false means the stream must end.
func (s *Server) wait(ctx context.Context) bool {
	var changed <-chan struct{}
	if n, ok := s.store.(eventNotifier); ok {
		changed = n.EventsChanged()
	}
	t := time.NewTimer(s.eventPoll)
	defer t.Stop()
	select {
	case <-t.C:
	case <-changed:
	case <-ctx.Done():
		return false
	case <-s.streamsDone:
		return false
	}
	return true
}

// lastEventID returns the resume point: the Last-Event-ID header, or the
// last_event_id query parameter.
func lastEventID(c echo.Context) (string, string) {
	if v := c.Request().Header.Get(LastEventIDHeader); v != "" {
		return v, LastEventIDHeader
	}
	return c.QueryParam("last_event_id"), "last_event_id"
}

func (s *Server) eventStore() (storage.EventStore, error) {
	es, ok := s.store.(storage.EventStore)
	if !ok {
		return nil, notFound("this task store keeps no events")
	}
	return es, nil
}

// taskEvents answers GET /tasks/{id}/events.
func (s *Server) taskEvents(c echo.Context) error {
	id, err := s.taskID(c)
	if err != nil {
		return err
	}
	for k := range c.QueryParams() {
		if k != "last_event_id" {
			return fieldErr(k, "unknown query parameter (use last_event_id)")
		}
	}
	var after int64
	if v, field := lastEventID(c); v != "" {
		after, err = strconv.ParseInt(v, 10, 64)
		if err != nil || after < 0 {
			return fieldErr(field, "must be the id of an event of this task's stream (a non-negative integer)")
		}
	}
	es, err := s.eventStore()
	if err != nil {
		return err
	}
	ctx := c.Request().Context()
	task, err := s.store.Get(ctx, id)
	if err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return notFound(fmt.Sprintf("task %s not found", id))
		}
		return s.storeErr(err)
	}
	if after > 0 {
		// Resumed right after the terminal transition (an EventSource
		// reconnecting once the stream ended): nothing will follow. 204
		// tells an EventSource to stop reconnecting.
		if last, err := es.ListEvents(ctx, id, after-1, 1); err == nil && len(last) == 1 &&
			last[0].Type == storage.EventTransition && last[0].Status.Terminal() {
			return c.NoContent(http.StatusNoContent)
		}
	}
	st, ok := s.openStream(c)
	if !ok {
		return nil
	}
	resumed := after > 0
	// The API's Pending event has version 0: start below it.
	sentVersion := int64(-1)
	var terminalSeen time.Time // when the record was first seen terminal
	lastCheck := time.Now()
	for {
		evs, err := es.ListEvents(ctx, id, after, 0)
		if err != nil {
			// The store may come back; the client keeps its place.
			s.log.Debug("event stream: store read failed", "task_id", id, "error", err)
			evs = nil
		}
		for _, e := range evs {
			after = e.Seq
			if e.Type == storage.EventTransition {
				if e.Version <= sentVersion {
					continue // an older snapshot's event appended late
				}
				sentVersion = e.Version
			}
			if !st.event(strconv.FormatInt(e.Seq, 10), e.Type, e) {
				return nil
			}
			if e.Type == storage.EventTransition && e.Status.Terminal() {
				st.flush()
				return nil
			}
		}
		if len(evs) > 0 {
			if !st.flush() {
				return nil
			}
		}
		if len(evs) == storage.EventLimit(0) {
			continue // more to read right away
		}
		// Idle: look at the record now and then, so a stream whose
		// terminal event is not coming (resumed past it, or a store that
		// lost it) ends too.
		if len(evs) == 0 && time.Since(lastCheck) >= time.Second {
			lastCheck = time.Now()
			if t, err := s.store.Get(ctx, id); err == nil {
				task = t
			}
			if task.Status.Terminal() && terminalSeen.IsZero() {
				terminalSeen = time.Now()
			}
		}
		if !terminalSeen.IsZero() && time.Since(terminalSeen) >= terminalGrace {
			if !resumed && task.Version > sentVersion {
				// Never sent: say how it ended, under the last stored
				// event's id, so a client's resume point stays a stored
				// event.
				evs := storage.TransitionEvents(task)
				tr := evs[len(evs)-1]
				tr.TaskID, tr.Time = task.ID, task.UpdatedAt
				if st.event(strconv.FormatInt(after, 10), tr.Type, tr) {
					st.flush()
				}
			}
			return nil
		}
		if !s.keepAlive(st) {
			return nil
		}
		if !s.wait(ctx) {
			return nil
		}
	}
}

// globalCursor is a position in GET /events: an event's time, task and
// seq, written as the SSE id "<unix nanoseconds>-<task id>-<seq>".
type globalCursor struct {
	time time.Time
	task string
	seq  int64
}

func (g globalCursor) String() string {
	return fmt.Sprintf("%d-%s-%d", g.time.UnixNano(), g.task, g.seq)
}

func parseGlobalCursor(v string) (globalCursor, bool) {
	ns, rest, ok := strings.Cut(v, "-")
	if !ok || len(rest) < 38 {
		return globalCursor{}, false
	}
	n, err := strconv.ParseInt(ns, 10, 64)
	task, seq := rest[:36], rest[37:]
	if err != nil || rest[36] != '-' || storage.ValidateID(task) != nil {
		return globalCursor{}, false
	}
	sq, err := strconv.ParseInt(seq, 10, 64)
	if err != nil || sq < 1 {
		return globalCursor{}, false
	}
	return globalCursor{time: time.Unix(0, n).UTC(), task: task, seq: sq}, true
}

// taskMeta is what GET /events filters on.
type taskMeta struct{ infra, workflowType string }

// maxMetaCache bounds GET /events' per-stream cache of task metadata.
const maxMetaCache = 10000

// allEvents answers GET /events: the events of every task appended from
// now on (or after a Last-Event-ID), optionally only of tasks of an infra
// and/or workflow type. The stream does not end by itself.
func (s *Server) allEvents(c echo.Context) error {
	q := c.QueryParams()
	for k := range q {
		switch k {
		case "infra", "workflow_type", "last_event_id":
		default:
			return fieldErr(k, "unknown query parameter (use infra, workflow_type, last_event_id)")
		}
	}
	infra, wfType := q.Get("infra"), q.Get("workflow_type")
	if _, given := q["infra"]; given {
		if err := workflows.ValidateName("infra", infra); err != nil {
			return validationErr(err)
		}
	}
	cursor := globalCursor{time: time.Now().UTC()}
	if v, field := lastEventID(c); v != "" {
		cur, ok := parseGlobalCursor(v)
		if !ok {
			return fieldErr(field, "must be the id of an event of this stream (<unix ns>-<task id>-<seq>)")
		}
		cursor = cur
	}
	es, err := s.eventStore()
	if err != nil {
		return err
	}
	ctx := c.Request().Context()
	st, ok := s.openStream(c)
	if !ok {
		return nil
	}
	type key struct {
		task string
		seq  int64
	}
	sent := map[key]time.Time{}
	meta := map[string]taskMeta{}
	since := cursor.time.Add(-globalLookBack)
	resumeFrom := cursor // with an id: skip what the client had
	for {
		evs, err := es.ListRecentEvents(ctx, since, 0)
		if err != nil {
			s.log.Debug("event stream: store read failed", "error", err)
			evs = nil
		}
		wrote := false
		newest := since
		for _, e := range evs {
			newest = e.Time
			k := key{e.TaskID, e.Seq}
			if _, dup := sent[k]; dup {
				continue
			}
			sent[k] = e.Time
			if resumeFrom.task != "" && storage.CompareEvents(e, storage.Event{Time: resumeFrom.time, TaskID: resumeFrom.task, Seq: resumeFrom.seq}) <= 0 {
				continue
			}
			if resumeFrom.task == "" && e.Time.Before(resumeFrom.time) {
				continue // before the stream opened
			}
			if infra != "" || wfType != "" {
				m, ok := meta[e.TaskID]
				if e.Type == storage.EventTransition {
					m, ok = taskMeta{infra: e.Infra, workflowType: e.WorkflowType}, true
				} else if !ok {
					if t, err := s.store.Get(ctx, e.TaskID); err == nil {
						m, ok = taskMeta{infra: storage.TaskInfra(t), workflowType: t.WorkflowType}, true
					}
				}
				if ok {
					if len(meta) >= maxMetaCache {
						clear(meta)
					}
					meta[e.TaskID] = m
				}
				if (infra != "" && m.infra != infra) || (wfType != "" && m.workflowType != wfType) {
					continue
				}
			}
			id := globalCursor{time: e.Time, task: e.TaskID, seq: e.Seq}.String()
			if !st.event(id, e.Type, e) {
				return nil
			}
			wrote = true
		}
		if wrote {
			if !st.flush() {
				return nil
			}
		}
		full := len(evs) == storage.EventLimit(0)
		if full {
			since = newest // page on without the look-back
		} else {
			since = maxTime(since, time.Now().Add(-globalLookBack))
		}
		for k, at := range sent {
			if at.Before(since.Add(-globalLookBack)) {
				delete(sent, k)
			}
		}
		if full {
			continue
		}
		if !s.keepAlive(st) {
			return nil
		}
		if !s.wait(ctx) {
			return nil
		}
	}
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
