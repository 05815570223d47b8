package storagetest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/storage"
)

// Audit trail contract checked here, beyond the Store docs:
//   - Create appends {ID: AuditCreateID(id), Action: AuditCreate, Before: "",
//     After: status, Version} and Put appends {ID: AuditTransitionID(id, v),
//     Action: AuditTransition, Before: stored status or "", After, Version}
//     with the actor of ctx (ActorFrom) and Time = the task's UpdatedAt (the
//     workflow's time of the transition, so a retried projection records the
//     same entry), in UTC.
//   - Their entries share AppendAudit's idempotency: a Create or Put whose
//     entry ID is already stored (copied by a migration, or appended before
//     a crash cut the write short) succeeds and appends nothing.

func auditTests() []struct {
	name string
	fn   func(t *testing.T, s storage.Store)
} {
	return []struct {
		name string
		fn   func(t *testing.T, s storage.Store)
	}{
		{"AuditCreate", testAuditCreate},
		{"AuditTransitions", testAuditTransitions},
		{"AuditPutCreatesTask", testAuditPutCreatesTask},
		{"AuditEntryAlreadyStored", testAuditEntryAlreadyStored},
		{"AuditAppendIdempotent", testAuditAppendIdempotent},
		{"AuditAppendConcurrent", testAuditAppendConcurrent},
		{"AuditConcurrentPuts", testAuditConcurrentPuts},
		{"AuditListFilterOrderLimit", testAuditListFilterOrderLimit},
		{"AuditListDefaultLimit", testAuditListDefaultLimit},
		{"AuditInvalid", testAuditInvalid},
		{"IDs", testIDs},
	}
}

func listAudit(t *testing.T, s storage.Store, f storage.AuditFilter) []storage.AuditEntry {
	t.Helper()
	got, err := s.ListAudit(context.Background(), f)
	require.NoError(t, err)
	for _, e := range got {
		require.Equal(t, time.UTC, e.Time.Location(), "audit time zone of %s", e.ID)
	}
	return got
}

func entryIDs(es []storage.AuditEntry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.ID
	}
	return out
}

func testAuditCreate(t *testing.T, s storage.Store) {
	ctx := storage.WithActor(context.Background(), "alice")
	task := minimalTask(NewID(), storage.StatusPending, base)
	task.Version = 3
	task.UpdatedAt = base.Add(time.Second)
	require.NoError(t, s.Create(ctx, task))

	want := []storage.AuditEntry{{
		ID: storage.AuditCreateID(task.ID), TaskID: task.ID, Time: base.Add(time.Second).UTC(),
		Actor: "alice", Action: storage.AuditCreate, Before: "", After: storage.StatusPending, Version: 3,
	}}
	require.Equal(t, want, listAudit(t, s, storage.AuditFilter{TaskID: task.ID}))

	// A Create that fails (the ID is taken) appends nothing.
	dup := task
	dup.Status = storage.StatusRunning
	require.ErrorIs(t, s.Create(storage.WithActor(context.Background(), "mallory"), dup), storage.ErrExists)
	require.Equal(t, want, listAudit(t, s, storage.AuditFilter{TaskID: task.ID}))

	// Without WithActor the actor is "system".
	other := minimalTask(NewID(), storage.StatusRunning, base)
	require.NoError(t, s.Create(context.Background(), other))
	got := listAudit(t, s, storage.AuditFilter{TaskID: other.ID})
	require.Len(t, got, 1)
	require.Equal(t, "system", got[0].Actor)
	require.Equal(t, storage.StatusRunning, got[0].After)
	require.Equal(t, storage.AuditCreate, got[0].Action)
}

func testAuditTransitions(t *testing.T, s storage.Store) {
	id := NewID()
	api := storage.WithActor(context.Background(), "anonymous")
	wf := storage.WithActor(context.Background(), "workflow")

	created := minimalTask(id, storage.StatusPending, base)
	created.Version = 0
	require.NoError(t, s.Create(api, created))

	put := func(v int64, st storage.TaskStatus, done int) {
		t.Helper()
		task := minimalTask(id, st, base)
		task.Version = v
		task.UpdatedAt = base.Add(time.Duration(v) * time.Second)
		task.Progress = storage.Progress{Done: done, Total: 2}
		require.NoError(t, s.Put(wf, task))
	}
	put(1, storage.StatusPending, 0)   // first projection: same status, no entry
	put(2, storage.StatusRunning, 0)   // Pending → Running
	put(3, storage.StatusRunning, 1)   // progress only: no entry
	put(4, storage.StatusCompleted, 2) // Running → Completed

	want := []storage.AuditEntry{
		{ID: storage.AuditCreateID(id), TaskID: id, Time: base.UTC(), Actor: "anonymous",
			Action: storage.AuditCreate, After: storage.StatusPending, Version: 0},
		{ID: storage.AuditTransitionID(id, 2), TaskID: id, Time: base.Add(2 * time.Second).UTC(), Actor: "workflow",
			Action: storage.AuditTransition, Before: storage.StatusPending, After: storage.StatusRunning, Version: 2},
		{ID: storage.AuditTransitionID(id, 4), TaskID: id, Time: base.Add(4 * time.Second).UTC(), Actor: "workflow",
			Action: storage.AuditTransition, Before: storage.StatusRunning, After: storage.StatusCompleted, Version: 4},
	}
	require.Equal(t, want, listAudit(t, s, storage.AuditFilter{TaskID: id}))

	// A retried projection (same version) appends nothing.
	put(4, storage.StatusCompleted, 2)
	require.Equal(t, want, listAudit(t, s, storage.AuditFilter{TaskID: id}), "retried Put")

	// Stale projections (lower versions) change nothing, whatever their status.
	put(3, storage.StatusRunning, 1)
	put(2, storage.StatusFailed, 0)
	require.Equal(t, want, listAudit(t, s, storage.AuditFilter{TaskID: id}), "lower-version Put")
	got, err := s.Get(context.Background(), id)
	require.NoError(t, err)
	require.Equal(t, storage.StatusCompleted, got.Status)
	require.Equal(t, int64(4), got.Version)
}

func testAuditPutCreatesTask(t *testing.T, s storage.Store) {
	wf := storage.WithActor(context.Background(), "workflow")
	task := minimalTask(NewID(), storage.StatusRunning, base)
	task.Version = 5
	require.NoError(t, s.Put(wf, task))
	want := []storage.AuditEntry{{
		ID: storage.AuditTransitionID(task.ID, 5), TaskID: task.ID, Time: base.UTC(), Actor: "workflow",
		Action: storage.AuditTransition, Before: "", After: storage.StatusRunning, Version: 5,
	}}
	require.Equal(t, want, listAudit(t, s, storage.AuditFilter{TaskID: task.ID}))
}

// testAuditEntryAlreadyStored: a Create or Put whose entry ID is already
// stored succeeds, stores the task and keeps the stored entry. This is what
// happens when a migration copies the audit trail before the tasks, and
// what a filesystem retry after a crash between append and write relies on.
func testAuditEntryAlreadyStored(t *testing.T, s storage.Store) {
	ctx := context.Background()
	id := NewID()
	copied := storage.AuditEntry{
		ID: storage.AuditCreateID(id), TaskID: id, Time: base.UTC(), Actor: "copied",
		Action: storage.AuditCreate, After: storage.StatusPending, Version: 1,
	}
	require.NoError(t, s.AppendAudit(ctx, copied))
	require.NoError(t, s.Create(storage.WithActor(ctx, "again"), minimalTask(id, storage.StatusPending, base)))
	_, err := s.Get(ctx, id)
	require.NoError(t, err, "the task is stored")

	transition := storage.AuditEntry{
		ID: storage.AuditTransitionID(id, 2), TaskID: id, Time: base.Add(time.Second).UTC(), Actor: "copied",
		Action: storage.AuditTransition, Before: storage.StatusPending, After: storage.StatusRunning, Version: 2,
	}
	require.NoError(t, s.AppendAudit(ctx, transition))
	running := minimalTask(id, storage.StatusRunning, base)
	running.Version = 2
	running.UpdatedAt = base.Add(time.Second)
	require.NoError(t, s.Put(storage.WithActor(ctx, "again"), running))
	got, err := s.Get(ctx, id)
	require.NoError(t, err)
	require.Equal(t, storage.StatusRunning, got.Status, "the task is stored")
	require.Equal(t, []storage.AuditEntry{copied, transition}, listAudit(t, s, storage.AuditFilter{TaskID: id}))
}

func testAuditAppendIdempotent(t *testing.T, s storage.Store) {
	ctx := context.Background()
	id := NewID()
	e := storage.AuditEntry{
		ID: id + "/cancel/1", TaskID: id, Time: base, Actor: "bob", Action: "cancel_requested",
		Before: storage.StatusRunning, After: storage.StatusRunning, Version: 4, Detail: "line 1\nline \"2\" ✓",
	}
	require.NoError(t, s.AppendAudit(ctx, e))
	again := e
	again.Detail = "second append"
	again.Actor = "eve"
	require.NoError(t, s.AppendAudit(ctx, again), "a repeated append is not an error")

	want := e
	want.Time = base.UTC()
	require.Equal(t, []storage.AuditEntry{want}, listAudit(t, s, storage.AuditFilter{TaskID: id}),
		"one entry, the first append's content")
	require.Equal(t, []storage.AuditEntry{want}, listAudit(t, s, storage.AuditFilter{}))

	// The task need not exist, and a missing actor comes from the context.
	noActor := storage.AuditEntry{ID: id + "/x", TaskID: id, Time: base.Add(time.Second), Action: "x"}
	require.NoError(t, s.AppendAudit(storage.WithActor(ctx, "carol"), noActor))
	got := listAudit(t, s, storage.AuditFilter{TaskID: id})
	require.Len(t, got, 2)
	require.Equal(t, "carol", got[1].Actor)
}

func testAuditAppendConcurrent(t *testing.T, s storage.Store) {
	ctx := context.Background()
	id := NewID()
	const n, workers = 20, 6
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range n {
				e := storage.AuditEntry{
					ID: fmt.Sprintf("%s/e%02d", id, i), TaskID: id, Time: base.Add(time.Duration(i) * time.Second),
					Actor: fmt.Sprintf("worker %d", w), Action: "x",
				}
				assert.NoError(t, s.AppendAudit(ctx, e))
			}
		})
	}
	wg.Wait()
	got := listAudit(t, s, storage.AuditFilter{TaskID: id})
	want := make([]string, n)
	for i := range n {
		want[i] = fmt.Sprintf("%s/e%02d", id, i)
	}
	require.Equal(t, want, entryIDs(got), "every ID exactly once")
}

// testAuditConcurrentPuts: projections racing each other (retries,
// reorderings) must leave a trail that is a consistent chain: versions
// strictly increasing, each entry starting where the previous one ended,
// and the last one ending at the stored status.
func testAuditConcurrentPuts(t *testing.T, s storage.Store) {
	ctx := storage.WithActor(context.Background(), "workflow")
	id := NewID()
	statusOf := func(v int64) storage.TaskStatus {
		if v%3 == 0 {
			return storage.StatusPending
		}
		return storage.StatusRunning
	}
	const workers, last = 4, 60
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for v := int64(w + 1); v <= last; v += workers {
				task := minimalTask(id, statusOf(v), base)
				task.Version = v
				task.UpdatedAt = base.Add(time.Duration(v) * time.Second)
				assert.NoError(t, s.Put(ctx, task))
				assert.NoError(t, s.Put(ctx, task), "retry")
			}
		})
	}
	wg.Wait()
	got := listAudit(t, s, storage.AuditFilter{TaskID: id})
	require.NotEmpty(t, got)
	prev := storage.TaskStatus("")
	prevVersion := int64(-1)
	for _, e := range got {
		require.Equal(t, storage.AuditTransitionID(id, e.Version), e.ID)
		require.Equal(t, storage.AuditTransition, e.Action)
		require.Greater(t, e.Version, prevVersion, "versions increase: %v", entryIDs(got))
		require.Equal(t, prev, e.Before, "%s starts where the previous entry ended", e.ID)
		require.Equal(t, statusOf(e.Version), e.After, e.ID)
		require.NotEqual(t, e.Before, e.After, e.ID)
		require.Equal(t, "workflow", e.Actor)
		prev, prevVersion = e.After, e.Version
	}
	stored, err := s.Get(ctx, id)
	require.NoError(t, err)
	require.Equal(t, int64(last), stored.Version)
	require.Equal(t, stored.Status, prev, "the last entry ends at the stored status")
}

func testAuditListFilterOrderLimit(t *testing.T, s storage.Store) {
	ctx := context.Background()
	a, b := NewID(), NewID()
	entry := func(task, id string, at time.Time) storage.AuditEntry {
		return storage.AuditEntry{ID: id, TaskID: task, Time: at, Actor: "t", Action: "x"}
	}
	a1 := entry(a, a+"/1", base.Add(1*time.Second))
	b1 := entry(b, b+"/1", base.Add(2*time.Second).In(time.UTC))
	// Same instant, one in another zone: ties are broken by ID.
	tieA := entry(a, "tie-a", base.Add(3*time.Second).In(plus5))
	tieB := entry(b, "tie-b", base.Add(3*time.Second).In(time.UTC))
	// Its wall clock reads earlier than the others', its instant is the latest.
	a3 := entry(a, a+"/3", base.Add(5*time.Second).In(time.FixedZone("UTC-10", -10*3600)))
	for _, e := range []storage.AuditEntry{a3, tieB, b1, tieA, a1} {
		require.NoError(t, s.AppendAudit(ctx, e))
	}

	require.Equal(t, []string{a1.ID, b1.ID, tieA.ID, tieB.ID, a3.ID}, entryIDs(listAudit(t, s, storage.AuditFilter{})))
	require.Equal(t, []string{a1.ID, tieA.ID, a3.ID}, entryIDs(listAudit(t, s, storage.AuditFilter{TaskID: a})))
	require.Equal(t, []string{b1.ID, tieB.ID}, entryIDs(listAudit(t, s, storage.AuditFilter{TaskID: b})))
	require.Equal(t, []string{tieB.ID, a3.ID}, entryIDs(listAudit(t, s, storage.AuditFilter{Limit: 2})), "Limit keeps the newest")
	require.Equal(t, []string{a3.ID}, entryIDs(listAudit(t, s, storage.AuditFilter{TaskID: a, Limit: 1})))
	require.Equal(t, []string{tieA.ID, a3.ID}, entryIDs(listAudit(t, s, storage.AuditFilter{TaskID: a, Limit: 2})))
	require.Len(t, listAudit(t, s, storage.AuditFilter{Limit: 100}), 5)

	got := listAudit(t, s, storage.AuditFilter{TaskID: a})
	require.True(t, got[1].Time.Equal(tieA.Time), "same instant")
	require.Empty(t, listAudit(t, s, storage.AuditFilter{TaskID: NewID()}), "a task without entries")
}

func testAuditListDefaultLimit(t *testing.T, s storage.Store) {
	ctx := context.Background()
	const n, tasks = storage.DefaultAuditLimit + 3, 8
	taskIDs := make([]string, tasks)
	for i := range taskIDs {
		taskIDs[i] = NewID()
	}
	var want []string
	var wg sync.WaitGroup
	for w := range tasks {
		wg.Go(func() {
			for i := w; i < n; i += tasks {
				e := storage.AuditEntry{
					ID: fmt.Sprintf("e%05d", i), TaskID: taskIDs[w], Time: base.Add(time.Duration(i) * time.Millisecond),
					Actor: "t", Action: "x",
				}
				assert.NoError(t, s.AppendAudit(ctx, e))
			}
		})
	}
	for i := range n {
		want = append(want, fmt.Sprintf("e%05d", i))
	}
	wg.Wait()
	got := listAudit(t, s, storage.AuditFilter{})
	require.Len(t, got, storage.DefaultAuditLimit, "Limit 0 means DefaultAuditLimit")
	require.Equal(t, want[3:], entryIDs(got), "the newest are kept, oldest first")
	got = listAudit(t, s, storage.AuditFilter{Limit: n + 10})
	require.Equal(t, want, entryIDs(got))
}

func testAuditInvalid(t *testing.T, s storage.Store) {
	ctx := context.Background()
	for _, id := range []string{"", "../x", "ABC", "/etc/passwd", "../" + NewID(), NewID() + ".jsonl"} {
		e := storage.AuditEntry{ID: "e", TaskID: id, Time: base, Action: "x"}
		require.ErrorIs(t, s.AppendAudit(ctx, e), storage.ErrInvalidID, "AppendAudit %q", id)
		if id != "" {
			_, err := s.ListAudit(ctx, storage.AuditFilter{TaskID: id})
			require.ErrorIs(t, err, storage.ErrInvalidID, "ListAudit %q", id)
		}
	}
	require.Error(t, s.AppendAudit(ctx, storage.AuditEntry{TaskID: NewID(), Time: base, Action: "x"}), "an entry needs an ID")
	require.Empty(t, listAudit(t, s, storage.AuditFilter{}), "nothing was appended")
}

func testIDs(t *testing.T, s storage.Store) {
	ctx := context.Background()
	got, err := s.IDs(ctx)
	require.NoError(t, err)
	require.Empty(t, got)

	var want []string
	for i := range 5 {
		task := minimalTask(NewID(), storage.StatusPending, base.Add(time.Duration(i)*time.Second))
		if i%2 == 0 {
			require.NoError(t, s.Create(ctx, task))
		} else {
			require.NoError(t, s.Put(ctx, task))
		}
		want = append(want, task.ID)
	}
	// Audit entries of tasks that do not exist are not tasks.
	require.NoError(t, s.AppendAudit(ctx, storage.AuditEntry{ID: "e", TaskID: NewID(), Time: base, Action: "x"}))
	got, err = s.IDs(ctx)
	require.NoError(t, err)
	require.ElementsMatch(t, want, got)

	// A later call sees tasks created (and deleted) since.
	late := minimalTask(NewID(), storage.StatusRunning, base)
	require.NoError(t, s.Create(ctx, late))
	require.NoError(t, s.Delete(ctx, want[0]))
	want = append(slices.Clone(want[1:]), late.ID)
	got, err = s.IDs(ctx)
	require.NoError(t, err)
	require.ElementsMatch(t, want, got)
}
