package storagetest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/storage"
)

// Conformance of storage.EventStore: every backend of this suite must
// implement it.

func eventTests() []struct {
	name string
	fn   func(t *testing.T, s storage.Store)
} {
	return []struct {
		name string
		fn   func(t *testing.T, s storage.Store)
	}{
		{"EventsAppendList", testEventsAppendList},
		{"EventsIdempotentByKey", testEventsIdempotent},
		{"EventsUnknownTask", testEventsUnknownTask},
		{"EventsInvalid", testEventsInvalid},
		{"EventsContent", testEventsContent},
		{"EventsDeletedWithTask", testEventsDeleted},
		{"EventsConcurrentAppends", testEventsConcurrent},
		{"EventsRecentAcrossTasks", testEventsRecent},
	}
}

func events(t *testing.T, s storage.Store) storage.EventStore {
	t.Helper()
	e, ok := s.(storage.EventStore)
	require.True(t, ok, "%T does not implement storage.EventStore", s)
	return e
}

func outputEvent(step string, attempt, chunk int, lines ...string) storage.Event {
	return storage.Event{Key: storage.OutputEventKey(step, attempt, chunk), Type: storage.EventOutput,
		Step: step, Attempt: attempt, Stream: "stdout", Lines: lines}
}

func eventKeys(es []storage.Event) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.Key
	}
	return out
}

func listAllEvents(t *testing.T, st storage.EventStore, id string) []storage.Event {
	t.Helper()
	es, err := st.ListEvents(context.Background(), id, 0, 0)
	require.NoError(t, err)
	for i, e := range es {
		require.Equal(t, int64(i+1), e.Seq, "seqs must be 1..n without gaps: %v", eventKeys(es))
	}
	return es
}

func testEventsAppendList(t *testing.T, s storage.Store) {
	ctx := context.Background()
	st := events(t, s)
	id := storedTask(t, s)
	before := time.Now().Add(-time.Second)
	require.NoError(t, st.AppendEvents(ctx, id, []storage.Event{
		{Key: storage.TransitionEventKey(1), Type: storage.EventTransition, Status: storage.StatusPending, Version: 1},
		{Key: storage.StepStartedEventKey("web-01", 1), Type: storage.EventStepStarted, Step: "web-01", Attempt: 1},
	}))
	require.NoError(t, st.AppendEvents(ctx, id, []storage.Event{outputEvent("web-01", 1, 1, "one", "two")}))
	require.NoError(t, st.AppendEvents(ctx, id, nil))

	all := listAllEvents(t, st, id)
	require.Equal(t, []string{"transition/1", "step/1/web-01/started", "output/1/1/web-01"}, eventKeys(all))
	for _, e := range all {
		assert.Equal(t, id, e.TaskID)
		assert.Equal(t, time.UTC, e.Time.Location())
		assert.False(t, e.Time.Before(before), "time %v is the append's", e.Time)
	}
	assert.Equal(t, storage.StatusPending, all[0].Status)
	assert.Equal(t, []string{"one", "two"}, all[2].Lines)

	after, err := st.ListEvents(ctx, id, 1, 0)
	require.NoError(t, err)
	assert.Equal(t, []string{"step/1/web-01/started", "output/1/1/web-01"}, eventKeys(after))
	one, err := st.ListEvents(ctx, id, 1, 1)
	require.NoError(t, err)
	assert.Equal(t, []string{"step/1/web-01/started"}, eventKeys(one))
	none, err := st.ListEvents(ctx, id, 3, 0)
	require.NoError(t, err)
	assert.NotNil(t, none)
	assert.Empty(t, none)
}

func testEventsIdempotent(t *testing.T, s storage.Store) {
	ctx := context.Background()
	st := events(t, s)
	id := storedTask(t, s)
	a := storage.Event{Key: storage.TransitionEventKey(1), Type: storage.EventTransition, Status: storage.StatusPending, Version: 1}
	b := storage.Event{Key: storage.TransitionEventKey(2), Type: storage.EventTransition, Status: storage.StatusRunning, Version: 2}
	require.NoError(t, st.AppendEvents(ctx, id, []storage.Event{a}))
	// A retried producer: the old event again with a new one, and a key
	// twice in one batch.
	changed := a
	changed.Status = storage.StatusFailed
	require.NoError(t, st.AppendEvents(ctx, id, []storage.Event{changed, b, b}))
	require.NoError(t, st.AppendEvents(ctx, id, []storage.Event{a, b}))
	all := listAllEvents(t, st, id)
	require.Equal(t, []string{"transition/1", "transition/2"}, eventKeys(all))
	assert.Equal(t, storage.StatusPending, all[0].Status, "the first append of a key wins")
}

func testEventsUnknownTask(t *testing.T, s storage.Store) {
	ctx := context.Background()
	st := events(t, s)
	id := NewID()
	err := st.AppendEvents(ctx, id, []storage.Event{outputEvent("a", 1, 1, "x")})
	require.ErrorIs(t, err, storage.ErrNotFound)
	es, err := st.ListEvents(ctx, id, 0, 0)
	require.NoError(t, err)
	assert.NotNil(t, es)
	assert.Empty(t, es)
}

func testEventsInvalid(t *testing.T, s storage.Store) {
	ctx := context.Background()
	st := events(t, s)
	id := storedTask(t, s)
	require.ErrorIs(t, st.AppendEvents(ctx, "../x", []storage.Event{outputEvent("a", 1, 1)}), storage.ErrInvalidID)
	_, err := st.ListEvents(ctx, "NOT-A-UUID", 0, 0)
	require.ErrorIs(t, err, storage.ErrInvalidID)
	require.ErrorIs(t, st.AppendEvents(ctx, id, []storage.Event{{Type: storage.EventOutput}}), storage.ErrInvalidEvent)
	require.ErrorIs(t, st.AppendEvents(ctx, id, []storage.Event{{Key: "k", Type: "bogus"}}), storage.ErrInvalidEvent)
	bad := outputEvent(strings.Repeat("s", storage.MaxStepNameBytes+1), 1, 1)
	require.ErrorIs(t, st.AppendEvents(ctx, id, []storage.Event{bad}), storage.ErrInvalidEvent)
	assert.Empty(t, listAllEvents(t, st, id), "a refused batch stores nothing")
}

func testEventsContent(t *testing.T, s storage.Store) {
	ctx := context.Background()
	st := events(t, s)
	id := storedTask(t, s)
	long := strings.Repeat("é", storage.MaxEventLineBytes) // 2 bytes each
	code, retry := 7, true
	in := []storage.Event{
		outputEvent("web-01", 2, 1, "nul\x00byte", "bad\xffutf8", long, "<html> \"q\" ✓", ""),
		{Key: storage.StepAttemptFailedEventKey("web-01", 2), Type: storage.EventStepAttemptFailed, Step: "web-01",
			Attempt: 2, ExitCode: &code, Error: "nu exited with code 7", Retrying: &retry},
	}
	require.NoError(t, st.AppendEvents(ctx, id, in))
	all := listAllEvents(t, st, id)
	require.Len(t, all, 2)
	lines := all[0].Lines
	require.Len(t, lines, 5)
	assert.Equal(t, "nul\x00byte", lines[0])
	assert.Equal(t, "bad\uFFFDutf8", lines[1])
	assert.LessOrEqual(t, len(lines[2]), storage.MaxEventLineBytes)
	assert.True(t, strings.HasSuffix(lines[2], "…"), "a cut line is marked")
	assert.Equal(t, "<html> \"q\" ✓", lines[3])
	assert.Equal(t, "", lines[4])
	assert.Equal(t, 2, all[0].Attempt)
	assert.Equal(t, "stdout", all[0].Stream)
	require.NotNil(t, all[1].ExitCode)
	assert.Equal(t, 7, *all[1].ExitCode)
	require.NotNil(t, all[1].Retrying)
	assert.True(t, *all[1].Retrying)
	assert.Equal(t, "nu exited with code 7", all[1].Error)
}

func testEventsDeleted(t *testing.T, s storage.Store) {
	ctx := context.Background()
	st := events(t, s)
	id := storedTask(t, s)
	other := storedTask(t, s)
	require.NoError(t, st.AppendEvents(ctx, id, []storage.Event{outputEvent("a", 1, 1, "x")}))
	require.NoError(t, st.AppendEvents(ctx, other, []storage.Event{outputEvent("a", 1, 1, "y")}))
	require.NoError(t, s.Delete(ctx, id))
	assert.Empty(t, listAllEvents(t, st, id))
	require.ErrorIs(t, st.AppendEvents(ctx, id, []storage.Event{outputEvent("a", 1, 2, "x")}), storage.ErrNotFound)
	assert.Len(t, listAllEvents(t, st, other), 1, "another task's events stay")
	recent, err := st.ListRecentEvents(ctx, time.Now().Add(-time.Hour), 0)
	require.NoError(t, err)
	for _, e := range recent {
		assert.NotEqual(t, id, e.TaskID, "a deleted task's events are gone from the global view")
	}
}

func testEventsConcurrent(t *testing.T, s storage.Store) {
	ctx := context.Background()
	st := events(t, s)
	id := storedTask(t, s)
	const writers, each = 6, 10
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				// Every writer also appends a shared key, as retried
				// producers on two workers would.
				batch := []storage.Event{
					outputEvent(fmt.Sprintf("s%d", w), 1, i+1, "line"),
					outputEvent("shared", 1, i+1, "line"),
				}
				assert.NoError(t, st.AppendEvents(ctx, id, batch))
			}
		}()
	}
	wg.Wait()
	all := listAllEvents(t, st, id)
	seen := map[string]bool{}
	for _, e := range all {
		require.False(t, seen[e.Key], "key %s twice", e.Key)
		seen[e.Key] = true
	}
	assert.Len(t, all, writers*each+each)
}

func testEventsRecent(t *testing.T, s storage.Store) {
	ctx := context.Background()
	st := events(t, s)
	a, b := storedTask(t, s), storedTask(t, s)
	start := time.Now().Add(-2 * time.Second)
	require.NoError(t, st.AppendEvents(ctx, a, []storage.Event{outputEvent("x", 1, 1, "a1")}))
	require.NoError(t, st.AppendEvents(ctx, b, []storage.Event{outputEvent("x", 1, 1, "b1")}))
	require.NoError(t, st.AppendEvents(ctx, a, []storage.Event{outputEvent("x", 1, 2, "a2")}))
	got, err := st.ListRecentEvents(ctx, start, 0)
	require.NoError(t, err)
	var mine []storage.Event
	for _, e := range got {
		if e.TaskID == a || e.TaskID == b {
			mine = append(mine, e)
		}
	}
	require.Len(t, mine, 3)
	for i := 1; i < len(mine); i++ {
		assert.LessOrEqual(t, storage.CompareEvents(mine[i-1], mine[i]), 0, "ordered by time, task, seq")
	}
	var aLines []string
	for _, e := range mine {
		if e.TaskID == a {
			aLines = append(aLines, e.Lines...)
		}
	}
	assert.Equal(t, []string{"a1", "a2"}, aLines)
	limited, err := st.ListRecentEvents(ctx, start, 1)
	require.NoError(t, err)
	assert.Len(t, limited, 1)
	future, err := st.ListRecentEvents(ctx, time.Now().Add(time.Hour), 0)
	require.NoError(t, err)
	assert.Empty(t, future)
}
