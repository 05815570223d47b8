package server

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/internal/testsupport/openapicheck"
	"github.com/provisioning/orchestrator/sdk"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/storage/storagetest"
)

// eventsFixture serves the fixture's server over real HTTP with a short
// write timeout (streams must outlive it) and fast polls.
func eventsFixture(t *testing.T) (*fixture, string) {
	t.Helper()
	f := newFixture(t, Options{EventPollInterval: 20 * time.Millisecond, EventKeepAlive: 100 * time.Millisecond})
	hs := httptest.NewUnstartedServer(f.srv)
	hs.Config.WriteTimeout = 300 * time.Millisecond
	hs.Start()
	t.Cleanup(hs.Close)
	return f, hs.URL
}

func storeTask(t *testing.T, f *fixture, infra string) storage.Task {
	t.Helper()
	task := storage.Task{ID: storagetest.NewID(), Name: "server create " + infra, Status: storage.StatusPending,
		Args: []string{"--infra", infra, "--settings", "s.yaml", "web-01"}, WorkflowType: "ServerCreate",
		CreatedAt: time.Now(), UpdatedAt: time.Now(), Version: 1}
	require.NoError(t, f.store.Create(t.Context(), task))
	require.NoError(t, storage.AppendTransition(t.Context(), f.store, task))
	return task
}

// advance stores the task's next version with status and appends its
// events, as a projection does.
func advance(t *testing.T, f *fixture, task *storage.Task, status storage.TaskStatus, steps ...storage.StepResult) {
	t.Helper()
	task.Version++
	task.Status = status
	task.Steps = steps
	require.NoError(t, f.store.Put(t.Context(), *task))
	require.NoError(t, storage.AppendTransition(t.Context(), f.store, *task))
}

func appendEvents(t *testing.T, f *fixture, id string, evs ...storage.Event) {
	t.Helper()
	require.NoError(t, f.store.AppendEvents(t.Context(), id, evs))
}

func next(t *testing.T, s *sdk.EventStream) sdk.StreamEvent {
	t.Helper()
	ev, err := s.Next()
	require.NoError(t, err)
	return ev
}

func TestTaskEventsStreamInOrderAndEnd(t *testing.T) {
	f, base := eventsFixture(t)
	task := storeTask(t, f, "production")
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	s, err := sdk.WatchTask(ctx, base, task.ID, sdk.WatchOptions{})
	require.NoError(t, err)
	defer s.Close()

	ev := next(t, s)
	assert.Equal(t, "1", ev.ID)
	assert.Equal(t, storage.EventTransition, ev.Type)
	assert.Equal(t, storage.StatusPending, ev.Status)
	assert.Equal(t, "production", ev.Infra)

	advance(t, f, &task, storage.StatusRunning, storage.StepResult{Name: "web-01", Status: storage.StatusRunning})
	appendEvents(t, f, task.ID,
		storage.Event{Key: storage.StepStartedEventKey("web-01", 1), Type: storage.EventStepStarted, Step: "web-01", Attempt: 1},
		storage.Event{Key: storage.OutputEventKey("web-01", 1, 1), Type: storage.EventOutput, Step: "web-01", Attempt: 1, Stream: "stdout", Lines: []string{"hello"}})
	assert.Equal(t, storage.StatusRunning, next(t, s).Status)
	assert.Equal(t, storage.EventStepStarted, next(t, s).Type)
	out := next(t, s)
	assert.Equal(t, storage.EventOutput, out.Type)
	assert.Equal(t, []string{"hello"}, out.Lines)

	// Silent for three times the server's write timeout (the time passing
	// is what is tested): keep-alives keep the stream up, each write with
	// a fresh deadline.
	time.Sleep(3 * 300 * time.Millisecond)

	advance(t, f, &task, storage.StatusCompleted, storage.StepResult{Name: "web-01", Status: storage.StatusCompleted, Attempts: 1})
	fin := next(t, s)
	assert.Equal(t, storage.EventStepFinished, fin.Type)
	assert.Equal(t, "web-01", fin.Step)
	last := next(t, s)
	assert.Equal(t, storage.StatusCompleted, last.Status)
	_, err = s.Next()
	assert.ErrorIs(t, err, io.EOF, "the server ends the stream after the terminal transition")

	// Resume from an id: only what follows, by header or query.
	s2, err := sdk.WatchTask(ctx, base, task.ID, sdk.WatchOptions{LastEventID: "4"})
	require.NoError(t, err)
	var ids []string
	for {
		ev, err := s2.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		ids = append(ids, ev.ID)
	}
	assert.Equal(t, []string{"5", "6"}, ids)
	// Resumed after the terminal transition: 204, which stops an
	// EventSource's reconnects; the SDK sees an ended stream.
	res, err := http.Get(base + "/tasks/" + task.ID + "/events?last_event_id=6")
	require.NoError(t, err)
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	assert.Equal(t, http.StatusNoContent, res.StatusCode)
	assert.NoError(t, openapicheck.ValidateResponse(f.doc, "/tasks/{id}/events", http.MethodGet, res.StatusCode, res.Header.Get("Content-Type"), body))
	s3, err := sdk.WatchTask(ctx, base, task.ID, sdk.WatchOptions{LastEventID: "6"})
	require.NoError(t, err)
	_, err = s3.Next()
	assert.ErrorIs(t, err, io.EOF)
	// Resumed before it: a stream, checked against the document too.
	res, err = http.Get(base + "/tasks/" + task.ID + "/events?last_event_id=5")
	require.NoError(t, err)
	body, _ = io.ReadAll(res.Body)
	res.Body.Close()
	assert.Equal(t, "text/event-stream", res.Header.Get("Content-Type"))
	assert.Contains(t, string(body), "id: 6\n")
	assert.NoError(t, openapicheck.ValidateResponse(f.doc, "/tasks/{id}/events", http.MethodGet, res.StatusCode, res.Header.Get("Content-Type"), body))
}

func TestTaskEventsErrorsBeforeStreaming(t *testing.T) {
	f, _ := eventsFixture(t)
	task := storeTask(t, f, "production")
	e := f.fail(http.StatusNotFound, http.MethodGet, "/tasks/"+storagetest.NewID()+"/events", "")
	assert.Contains(t, e.Message, "not found")
	e = f.fail(http.StatusBadRequest, http.MethodGet, "/tasks/"+task.ID+"/events?last_event_id=-1", "")
	assert.Equal(t, "last_event_id", e.Field)
	e = f.fail(http.StatusBadRequest, http.MethodGet, "/tasks/"+task.ID+"/events?since=1", "")
	assert.Equal(t, "since", e.Field)
	e = f.fail(http.StatusBadRequest, http.MethodGet, "/tasks/not-a-uuid/events", "")
	assert.Equal(t, "id", e.Field)
	e = f.fail(http.StatusBadRequest, http.MethodGet, "/events?last_event_id=12", "")
	assert.Equal(t, "last_event_id", e.Field)
	e = f.fail(http.StatusBadRequest, http.MethodGet, "/events?infra=a%20b", "")
	assert.Equal(t, "infra", e.Field)
}

func TestAllEventsFilteredAndResumable(t *testing.T) {
	f, base := eventsFixture(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	s, err := sdk.WatchAll(ctx, base, "lab", "", sdk.WatchOptions{})
	require.NoError(t, err)
	defer s.Close()

	prod := storeTask(t, f, "production")
	lab := storeTask(t, f, "lab")
	appendEvents(t, f, prod.ID, storage.Event{Key: "output/1/1/a", Type: storage.EventOutput, Step: "a", Attempt: 1, Lines: []string{"prod"}})
	appendEvents(t, f, lab.ID, storage.Event{Key: "output/1/1/a", Type: storage.EventOutput, Step: "a", Attempt: 1, Lines: []string{"lab"}})
	first := next(t, s)
	assert.Equal(t, lab.ID, first.TaskID)
	assert.Equal(t, storage.EventTransition, first.Type)
	second := next(t, s)
	assert.Equal(t, []string{"lab"}, second.Lines)
	s.Close()

	// Resume after the first: the second again, then what follows.
	appendEvents(t, f, lab.ID, storage.Event{Key: "output/1/2/a", Type: storage.EventOutput, Step: "a", Attempt: 1, Lines: []string{"lab2"}})
	s2, err := sdk.WatchAll(ctx, base, "lab", "", sdk.WatchOptions{LastEventID: first.ID})
	require.NoError(t, err)
	defer s2.Close()
	assert.Equal(t, []string{"lab"}, next(t, s2).Lines)
	assert.Equal(t, []string{"lab2"}, next(t, s2).Lines)
}

func TestStopStreamsEndsThem(t *testing.T) {
	f, base := eventsFixture(t)
	task := storeTask(t, f, "production")
	s, err := sdk.WatchTask(t.Context(), base, task.ID, sdk.WatchOptions{})
	require.NoError(t, err)
	defer s.Close()
	assert.Equal(t, "1", next(t, s).ID)
	f.srv.StopStreams()
	_, err = s.Next()
	assert.ErrorIs(t, err, io.EOF)
	assert.Equal(t, "1", s.LastEventID())
}

// The streams take the same bearer auth as every other endpoint.
func TestEventStreamsNeedTheToken(t *testing.T) {
	f := newFixture(t, Options{AuthTokens: map[string]string{"ci": "tok"}, EventPollInterval: 20 * time.Millisecond})
	hs := httptest.NewServer(f.srv)
	t.Cleanup(hs.Close)
	task := storeTask(t, f, "production")
	for _, path := range []string{"/tasks/" + task.ID + "/events", "/events"} {
		res, err := http.Get(hs.URL + path)
		require.NoError(t, err)
		_ = res.Body.Close()
		assert.Equal(t, http.StatusUnauthorized, res.StatusCode, path)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	s, err := sdk.WatchTask(ctx, hs.URL, task.ID, sdk.WatchOptions{Token: "tok"})
	require.NoError(t, err)
	defer s.Close()
	assert.Equal(t, storage.StatusPending, next(t, s).Status)
	_, err = sdk.WatchTask(ctx, hs.URL, task.ID, sdk.WatchOptions{Token: "wrong"})
	require.ErrorContains(t, err, "HTTP 401")
}
