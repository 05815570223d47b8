// Package storagetest holds the conformance suite every storage.Store
// backend must pass.
package storagetest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/storage"
)

// Run runs the conformance suite against a backend. newStore must return a
// fresh, empty store for each subtest; Run closes it when the subtest ends.
//
// Timestamps in the fixtures have microsecond precision: a backend must
// round-trip them exactly and return them in UTC.
func Run(t *testing.T, newStore func(t *testing.T) storage.Store) {
	open := func(t *testing.T) storage.Store {
		t.Helper()
		s := newStore(t)
		require.NotNil(t, s)
		t.Cleanup(func() { assert.NoError(t, s.Close()) })
		return s
	}
	tests := []struct {
		name string
		fn   func(t *testing.T, s storage.Store)
	}{
		{"CreateGetRoundTrip", testCreateGetRoundTrip},
		{"NilAndEmptyValues", testNilAndEmptyValues},
		{"CreateDuplicate", testCreateDuplicate},
		{"CreateConcurrentSameID", testCreateConcurrentSameID},
		{"PutUpsert", testPutUpsert},
		{"PutVersionMonotonic", testPutVersionMonotonic},
		{"GetUnknown", testGetUnknown},
		{"InvalidIDs", testInvalidIDs},
		{"ListEmpty", testListEmpty},
		{"ListOrdering", testListOrdering},
		{"ListStatusFilter", testListStatusFilter},
		{"ListWorkflowTypeFilter", testListWorkflowTypeFilter},
		{"ListPriorityFilter", testListPriorityFilter},
		{"ListLimitOffsetTotal", testListLimitOffsetTotal},
		{"ListDefaultLimit", testListDefaultLimit},
		{"ListReturnsFullTasks", testListReturnsFullTasks},
		{"Delete", testDelete},
		{"ConcurrentPuts", testConcurrentPuts},
		{"CanceledContext", testCanceledContext},
		{"Ping", testPing},
	}
	tests = append(tests, auditTests()...)
	tests = append(tests, stepOutputTests()...)
	tests = append(tests, eventTests()...)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open(t)) })
	}
}

// NewID returns a random lowercase UUID (version 4).
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

var (
	// A zone east of UTC, so a backend that drops the zone or compares wall
	// clocks gets the wrong answer.
	plus5 = time.FixedZone("UTC+5", 5*3600)
	base  = time.Date(2025, 3, 14, 15, 9, 26, 535897000, plus5)
)

func ptr[T any](v T) *T { return &v }

// fullTask has every field set, pointers non-nil, times in a non-UTC zone.
func fullTask(id string) storage.Task {
	return storage.Task{
		ID:           id,
		Name:         "create servers web-01, web-02",
		Command:      "server create",
		Args:         []string{"--infra", "prod-stack", "--check", "name with spaces", `quote"d`},
		Dependencies: []string{NewID(), NewID()},
		Status:       storage.StatusFailed,
		CreatedAt:    base,
		StartedAt:    ptr(base.Add(1500 * time.Millisecond)),
		CompletedAt:  ptr(base.Add(90*time.Second + 123*time.Microsecond)),
		Output:       ptr("line 1\nline 2 ✓\n"),
		Error:        ptr("web-02: exit status 3"),
		WorkflowType: "ServerCreateWorkflow",
		Progress:     storage.Progress{Done: 2, Total: 2},
		Steps: []storage.StepResult{
			{Name: "web-01", Status: storage.StatusCompleted, Attempts: 1, ExitCode: ptr(0), Output: "ok", DurationMS: 1234},
			{Name: "web-02", Status: storage.StatusFailed, Attempts: 3, ExitCode: ptr(3), Output: "", Error: "boom", DurationMS: 99},
			{Name: "web-03", Status: storage.StatusPending},
		},
		Version:   7,
		UpdatedAt: base.Add(91 * time.Second),
	}
}

// minimalTask has only the required fields; everything optional is nil.
func minimalTask(id string, status storage.TaskStatus, created time.Time) storage.Task {
	return storage.Task{
		ID:        id,
		Name:      "task " + id[:8],
		Command:   "taskserv create",
		Status:    status,
		CreatedAt: created,
		UpdatedAt: created,
		Version:   1,
	}
}

// requireUTC checks that every timestamp of t is in UTC.
func requireUTC(t *testing.T, got storage.Task) {
	t.Helper()
	require.Equal(t, time.UTC, got.CreatedAt.Location(), "created_at zone")
	require.Equal(t, time.UTC, got.UpdatedAt.Location(), "updated_at zone")
	if got.StartedAt != nil {
		require.Equal(t, time.UTC, got.StartedAt.Location(), "started_at zone")
	}
	if got.CompletedAt != nil {
		require.Equal(t, time.UTC, got.CompletedAt.Location(), "completed_at zone")
	}
}

func ids(tasks []storage.Task) []string {
	out := make([]string, len(tasks))
	for i, t := range tasks {
		out[i] = t.ID
	}
	return out
}

func testCreateGetRoundTrip(t *testing.T, s storage.Store) {
	ctx := context.Background()
	in := fullTask(NewID())
	require.NoError(t, s.Create(ctx, in))

	got, err := s.Get(ctx, in.ID)
	require.NoError(t, err)
	require.Equal(t, storage.Normalize(in), got)
	requireUTC(t, got)
	require.True(t, got.CreatedAt.Equal(base), "same instant")
	require.Equal(t, 3, *got.Steps[1].ExitCode)
	require.Equal(t, 0, *got.Steps[0].ExitCode)
	require.Nil(t, got.Steps[2].ExitCode)
}

func testNilAndEmptyValues(t *testing.T, s storage.Store) {
	ctx := context.Background()

	// Absent values stay absent; nil slices come back empty, not nil.
	bare := minimalTask(NewID(), storage.StatusPending, base)
	require.NoError(t, s.Create(ctx, bare))
	got, err := s.Get(ctx, bare.ID)
	require.NoError(t, err)
	require.Nil(t, got.StartedAt)
	require.Nil(t, got.CompletedAt)
	require.Nil(t, got.Output)
	require.Nil(t, got.Error)
	require.NotNil(t, got.Args)
	require.Empty(t, got.Args)
	require.NotNil(t, got.Dependencies)
	require.Empty(t, got.Dependencies)
	require.NotNil(t, got.Steps)
	require.Empty(t, got.Steps)
	require.Equal(t, storage.Normalize(bare), got)
	requireUTC(t, got)

	// Present-but-empty values are not confused with absent ones.
	empty := minimalTask(NewID(), storage.StatusCompleted, base)
	empty.Output = ptr("")
	empty.Error = ptr("")
	empty.StartedAt = ptr(time.Unix(0, 0))
	empty.Steps = []storage.StepResult{{Name: "s", Status: storage.StatusCompleted, ExitCode: ptr(0)}}
	require.NoError(t, s.Create(ctx, empty))
	got, err = s.Get(ctx, empty.ID)
	require.NoError(t, err)
	require.NotNil(t, got.Output)
	require.Empty(t, *got.Output)
	require.NotNil(t, got.Error)
	require.NotNil(t, got.StartedAt)
	require.True(t, got.StartedAt.Equal(time.Unix(0, 0)))
	require.Nil(t, got.CompletedAt)
	require.NotNil(t, got.Steps[0].ExitCode)
	require.Equal(t, 0, *got.Steps[0].ExitCode)
	require.Equal(t, storage.Normalize(empty), got)
}

func testCreateDuplicate(t *testing.T, s storage.Store) {
	ctx := context.Background()
	first := minimalTask(NewID(), storage.StatusPending, base)
	require.NoError(t, s.Create(ctx, first))

	second := first
	second.Name = "impostor"
	second.Version = 99
	err := s.Create(ctx, second)
	require.ErrorIs(t, err, storage.ErrExists)

	got, err := s.Get(ctx, first.ID)
	require.NoError(t, err)
	require.Equal(t, storage.Normalize(first), got, "duplicate create must not change the task")

	// A task stored by Put is taken too.
	put := minimalTask(NewID(), storage.StatusRunning, base)
	require.NoError(t, s.Put(ctx, put))
	require.ErrorIs(t, s.Create(ctx, put), storage.ErrExists)
}

func testCreateConcurrentSameID(t *testing.T, s storage.Store) {
	ctx := context.Background()
	id := NewID()
	const n = 8
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			task := minimalTask(id, storage.StatusPending, base)
			task.Name = fmt.Sprintf("creator %d", i)
			errs[i] = s.Create(ctx, task)
		})
	}
	wg.Wait()
	winners := 0
	winner := -1
	for i, err := range errs {
		if err == nil {
			winners++
			winner = i
			continue
		}
		require.ErrorIs(t, err, storage.ErrExists)
	}
	require.Equal(t, 1, winners, "exactly one concurrent Create wins")
	got, err := s.Get(ctx, id)
	require.NoError(t, err)
	require.Equal(t, fmt.Sprintf("creator %d", winner), got.Name)
}

func testPutUpsert(t *testing.T, s storage.Store) {
	ctx := context.Background()
	task := fullTask(NewID())
	require.NoError(t, s.Put(ctx, task), "Put inserts an unknown task")
	got, err := s.Get(ctx, task.ID)
	require.NoError(t, err)
	require.Equal(t, storage.Normalize(task), got)

	task.Version++
	task.Status = storage.StatusCompleted
	task.Error = nil
	task.Steps = task.Steps[:1]
	require.NoError(t, s.Put(ctx, task), "Put updates a stored task")
	got, err = s.Get(ctx, task.ID)
	require.NoError(t, err)
	require.Equal(t, storage.Normalize(task), got)
	require.Nil(t, got.Error, "a field cleared by Put is cleared in storage")
	require.Len(t, got.Steps, 1)
}

func testPutVersionMonotonic(t *testing.T, s storage.Store) {
	ctx := context.Background()
	id := NewID()
	put := func(version int64, status storage.TaskStatus, name string) {
		t.Helper()
		task := minimalTask(id, status, base)
		task.Version = version
		task.Name = name
		require.NoError(t, s.Put(ctx, task))
	}
	get := func() storage.Task {
		t.Helper()
		got, err := s.Get(ctx, id)
		require.NoError(t, err)
		return got
	}

	put(5, storage.StatusRunning, "v5")
	put(3, storage.StatusPending, "v3")
	got := get()
	require.Equal(t, int64(5), got.Version, "a lower version is ignored")
	require.Equal(t, "v5", got.Name)
	require.Equal(t, storage.StatusRunning, got.Status)

	put(5, storage.StatusRunning, "v5 again")
	require.Equal(t, "v5 again", get().Name, "an equal version is applied")

	put(6, storage.StatusCompleted, "v6")
	got = get()
	require.Equal(t, int64(6), got.Version, "a higher version is applied")
	require.Equal(t, storage.StatusCompleted, got.Status)

	put(0, storage.StatusPending, "v0")
	require.Equal(t, "v6", get().Name)

	// Create stores the version it is given; Put then compares against it.
	other := minimalTask(NewID(), storage.StatusPending, base)
	other.Version = 10
	require.NoError(t, s.Create(ctx, other))
	lower := other
	lower.Version = 9
	lower.Name = "lower"
	require.NoError(t, s.Put(ctx, lower))
	got, err := s.Get(ctx, other.ID)
	require.NoError(t, err)
	require.Equal(t, int64(10), got.Version)
	require.Equal(t, other.Name, got.Name)
}

func testGetUnknown(t *testing.T, s storage.Store) {
	_, err := s.Get(context.Background(), NewID())
	require.ErrorIs(t, err, storage.ErrNotFound)
	require.NotErrorIs(t, err, storage.ErrUnavailable)
}

func testInvalidIDs(t *testing.T, s storage.Store) {
	ctx := context.Background()
	valid := NewID()
	bad := []string{
		"",
		"../x",
		"ABC",
		strings.ToUpper(valid),
		"../" + valid,
		valid + "/..",
		"..",
		".",
		"/etc/passwd",
		valid + ".json",
		valid + "\x00",
		" " + valid,
		strings.ReplaceAll(valid, "-", ""),
		"{" + valid + "}",
	}
	for _, id := range bad {
		t.Run(fmt.Sprintf("%q", id), func(t *testing.T) {
			_, err := s.Get(ctx, id)
			require.ErrorIs(t, err, storage.ErrInvalidID, "Get")
			require.ErrorIs(t, s.Delete(ctx, id), storage.ErrInvalidID, "Delete")
			task := minimalTask(valid, storage.StatusPending, base)
			task.ID = id
			require.ErrorIs(t, s.Create(ctx, task), storage.ErrInvalidID, "Create")
			require.ErrorIs(t, s.Put(ctx, task), storage.ErrInvalidID, "Put")
		})
	}
	tasks, total, err := s.List(ctx, storage.ListFilter{})
	require.NoError(t, err)
	require.Empty(t, tasks, "nothing was stored under an invalid ID")
	require.Zero(t, total)
}

func testListEmpty(t *testing.T, s storage.Store) {
	tasks, total, err := s.List(context.Background(), storage.ListFilter{})
	require.NoError(t, err)
	require.NotNil(t, tasks, "an empty page is an empty slice, not nil")
	require.Empty(t, tasks)
	require.Zero(t, total)
}

func testListOrdering(t *testing.T, s storage.Store) {
	ctx := context.Background()
	newest := minimalTask(NewID(), storage.StatusPending, base.Add(3*time.Second))
	oldest := minimalTask(NewID(), storage.StatusPending, base.Add(-time.Hour))
	// Four tasks created at the same instant, one of them expressed in
	// another zone: ties are broken by ID, descending.
	var tied []storage.Task
	for i := range 4 {
		created := base.Add(time.Second)
		if i == 0 {
			created = created.In(time.UTC)
		}
		tied = append(tied, minimalTask(NewID(), storage.StatusRunning, created))
	}
	// An earlier instant whose wall clock (next day) reads later than all
	// the others': ordering is by instant.
	eastZone := time.FixedZone("UTC+14", 14*3600)
	east := minimalTask(NewID(), storage.StatusPending, base.In(eastZone).Add(-time.Minute))

	want := []string{newest.ID}
	tiedIDs := ids(tied)
	slices.Sort(tiedIDs)
	slices.Reverse(tiedIDs)
	want = append(want, tiedIDs...)
	want = append(want, east.ID, oldest.ID)

	all := append([]storage.Task{oldest, tied[2], east, newest, tied[0], tied[3]}, tied[1])
	for i, task := range all {
		if i%2 == 0 {
			require.NoError(t, s.Create(ctx, task))
		} else {
			require.NoError(t, s.Put(ctx, task))
		}
	}

	got, total, err := s.List(ctx, storage.ListFilter{})
	require.NoError(t, err)
	require.Equal(t, len(want), total)
	require.Equal(t, want, ids(got))

	// Paging one by one gives the same order, without gaps or repeats.
	var paged []string
	for off := 0; off < len(want)+2; off++ {
		page, total, err := s.List(ctx, storage.ListFilter{Limit: 1, Offset: off})
		require.NoError(t, err)
		require.Equal(t, len(want), total)
		paged = append(paged, ids(page)...)
	}
	require.Equal(t, want, paged)
}

func testListStatusFilter(t *testing.T, s storage.Store) {
	ctx := context.Background()
	counts := map[storage.TaskStatus]int{
		storage.StatusPending:   3,
		storage.StatusRunning:   2,
		storage.StatusCompleted: 4,
		storage.StatusFailed:    1,
	}
	byStatus := map[storage.TaskStatus][]string{}
	i := 0
	for _, st := range []storage.TaskStatus{storage.StatusPending, storage.StatusRunning, storage.StatusCompleted, storage.StatusFailed} {
		for range counts[st] {
			task := minimalTask(NewID(), st, base.Add(time.Duration(i)*time.Minute))
			require.NoError(t, s.Create(ctx, task))
			byStatus[st] = append([]string{task.ID}, byStatus[st]...) // newest first
			i++
		}
	}

	for st, n := range counts {
		got, total, err := s.List(ctx, storage.ListFilter{Status: st})
		require.NoError(t, err)
		require.Equal(t, n, total, st)
		require.Equal(t, byStatus[st], ids(got), st)
		for _, task := range got {
			require.Equal(t, st, task.Status)
		}
	}

	got, total, err := s.List(ctx, storage.ListFilter{Status: storage.StatusCancelled})
	require.NoError(t, err)
	require.Zero(t, total)
	require.Empty(t, got)

	_, total, err = s.List(ctx, storage.ListFilter{})
	require.NoError(t, err)
	require.Equal(t, 10, total, "no filter: every task")

	// A status change moves the task between filters.
	id := byStatus[storage.StatusRunning][0]
	task, err := s.Get(ctx, id)
	require.NoError(t, err)
	task.Status = storage.StatusCompleted
	task.Version++
	require.NoError(t, s.Put(ctx, task))
	_, total, err = s.List(ctx, storage.ListFilter{Status: storage.StatusRunning})
	require.NoError(t, err)
	require.Equal(t, 1, total)
	got, total, err = s.List(ctx, storage.ListFilter{Status: storage.StatusCompleted})
	require.NoError(t, err)
	require.Equal(t, 5, total)
	require.Contains(t, ids(got), id)
}

func testListLimitOffsetTotal(t *testing.T, s storage.Store) {
	ctx := context.Background()
	var want []string
	for i := range 7 {
		task := minimalTask(NewID(), storage.StatusCompleted, base.Add(-time.Duration(i)*time.Hour))
		require.NoError(t, s.Create(ctx, task))
		want = append(want, task.ID)
	}
	// A task of another status must not count.
	require.NoError(t, s.Create(ctx, minimalTask(NewID(), storage.StatusFailed, base)))

	cases := []struct {
		limit, offset int
		want          []string
	}{
		{3, 0, want[0:3]},
		{3, 3, want[3:6]},
		{3, 6, want[6:7]},
		{3, 7, nil},
		{3, 100, nil},
		{100, 0, want},
		{storage.MaxLimit + 1, 0, want},
		{1, 4, want[4:5]},
	}
	for _, c := range cases {
		got, total, err := s.List(ctx, storage.ListFilter{Status: storage.StatusCompleted, Limit: c.limit, Offset: c.offset})
		require.NoError(t, err, "limit %d offset %d", c.limit, c.offset)
		require.Equal(t, 7, total, "total ignores paging (limit %d offset %d)", c.limit, c.offset)
		require.NotNil(t, got)
		if c.want == nil {
			require.Empty(t, got, "limit %d offset %d", c.limit, c.offset)
		} else {
			require.Equal(t, c.want, ids(got), "limit %d offset %d", c.limit, c.offset)
		}
	}
}

func testListDefaultLimit(t *testing.T, s storage.Store) {
	ctx := context.Background()
	n := storage.DefaultLimit + 5
	for i := range n {
		require.NoError(t, s.Create(ctx, minimalTask(NewID(), storage.StatusPending, base.Add(time.Duration(i)*time.Second))))
	}
	got, total, err := s.List(ctx, storage.ListFilter{})
	require.NoError(t, err)
	require.Equal(t, n, total)
	require.Len(t, got, storage.DefaultLimit, "Limit 0 means DefaultLimit")

	got, total, err = s.List(ctx, storage.ListFilter{Offset: storage.DefaultLimit})
	require.NoError(t, err)
	require.Equal(t, n, total)
	require.Len(t, got, 5)
}

func testListReturnsFullTasks(t *testing.T, s storage.Store) {
	ctx := context.Background()
	full := fullTask(NewID())
	require.NoError(t, s.Create(ctx, full))
	bare := minimalTask(NewID(), storage.StatusPending, base.Add(-time.Minute))
	require.NoError(t, s.Create(ctx, bare))

	got, _, err := s.List(ctx, storage.ListFilter{})
	require.NoError(t, err)
	require.Len(t, got, 2)
	require.Equal(t, storage.Normalize(full), got[0])
	require.Equal(t, storage.Normalize(bare), got[1])
	for _, task := range got {
		requireUTC(t, task)
	}
}

func testDelete(t *testing.T, s storage.Store) {
	ctx := context.Background()
	keep := minimalTask(NewID(), storage.StatusPending, base)
	gone := minimalTask(NewID(), storage.StatusPending, base.Add(time.Second))
	require.NoError(t, s.Create(ctx, keep))
	require.NoError(t, s.Create(ctx, gone))

	require.NoError(t, s.Delete(ctx, gone.ID))
	_, err := s.Get(ctx, gone.ID)
	require.ErrorIs(t, err, storage.ErrNotFound)
	require.NoError(t, s.Delete(ctx, gone.ID), "deleting twice is not an error")
	require.NoError(t, s.Delete(ctx, NewID()), "deleting an unknown task is not an error")

	got, total, err := s.List(ctx, storage.ListFilter{})
	require.NoError(t, err)
	require.Equal(t, 1, total)
	require.Equal(t, []string{keep.ID}, ids(got))

	_, err = s.Get(ctx, keep.ID)
	require.NoError(t, err)

	// The ID is free again.
	require.NoError(t, s.Create(ctx, gone))
}

// testConcurrentPuts interleaves increasing versions from many goroutines;
// whatever the interleaving, the highest version must end up stored, with
// its own content.
func testConcurrentPuts(t *testing.T, s storage.Store) {
	ctx := context.Background()
	const workers, perWorker = 8, 25
	const maxVersion = workers * perWorker
	taskIDs := []string{NewID(), NewID()}

	// A reader meanwhile must never see a task's version go down.
	done := make(chan struct{})
	regressions := make(chan string, 1)
	go func() {
		defer close(regressions)
		last := map[string]int64{}
		for {
			select {
			case <-done:
				return
			default:
			}
			for _, id := range taskIDs {
				got, err := s.Get(ctx, id)
				if err != nil {
					continue // not written yet
				}
				if got.Version < last[id] {
					regressions <- fmt.Sprintf("%s: v%d read after v%d", id, got.Version, last[id])
					return
				}
				last[id] = got.Version
			}
		}
	}()

	var wg sync.WaitGroup
	errs := make(chan error, workers*len(taskIDs))
	for _, id := range taskIDs {
		for w := range workers {
			wg.Go(func() {
				for v := int64(w + 1); v <= maxVersion; v += workers {
					task := minimalTask(id, storage.StatusRunning, base)
					task.Version = v
					task.Name = fmt.Sprintf("version %d", v)
					task.Output = ptr(strings.Repeat("x", int(v)))
					if err := s.Put(ctx, task); err != nil {
						errs <- fmt.Errorf("put %s v%d: %w", id, v, err)
						return
					}
				}
			})
		}
	}
	wg.Wait()
	close(done)
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	for r := range regressions {
		require.Fail(t, "stored version went backwards", r)
	}
	for _, id := range taskIDs {
		got, err := s.Get(ctx, id)
		require.NoError(t, err)
		require.Equal(t, int64(maxVersion), got.Version)
		require.Equal(t, fmt.Sprintf("version %d", maxVersion), got.Name)
		require.Equal(t, strings.Repeat("x", maxVersion), *got.Output)
	}
	_, total, err := s.List(ctx, storage.ListFilter{})
	require.NoError(t, err)
	require.Equal(t, len(taskIDs), total)
}

func testCanceledContext(t *testing.T, s storage.Store) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	task := minimalTask(NewID(), storage.StatusPending, base)
	isCanceled := func(err error) bool { return errors.Is(err, context.Canceled) }

	require.True(t, isCanceled(s.Create(ctx, task)), "Create")
	require.True(t, isCanceled(s.Put(ctx, task)), "Put")
	_, err := s.Get(ctx, task.ID)
	require.True(t, isCanceled(err), "Get: %v", err)
	_, _, err = s.List(ctx, storage.ListFilter{})
	require.True(t, isCanceled(err), "List: %v", err)
	require.True(t, isCanceled(s.Delete(ctx, task.ID)), "Delete")
	_, err = s.IDs(ctx)
	require.True(t, isCanceled(err), "IDs: %v", err)
	require.True(t, isCanceled(s.AppendAudit(ctx, storage.AuditEntry{ID: "e", TaskID: task.ID, Time: base, Action: "x"})), "AppendAudit")
	_, err = s.ListAudit(ctx, storage.AuditFilter{})
	require.True(t, isCanceled(err), "ListAudit: %v", err)

	_, err = s.Get(context.Background(), task.ID)
	require.ErrorIs(t, err, storage.ErrNotFound, "nothing was written under a canceled context")
	entries, err := s.ListAudit(context.Background(), storage.AuditFilter{})
	require.NoError(t, err)
	require.Empty(t, entries, "no audit entry was appended under a canceled context")
}

func testPing(t *testing.T, s storage.Store) {
	require.NoError(t, s.Ping(context.Background()))
}

func testListWorkflowTypeFilter(t *testing.T, s storage.Store) {
	ctx := context.Background()
	var envs, servers []string
	for i := range 6 {
		task := minimalTask(NewID(), storage.StatusRunning, base.Add(time.Duration(i)*time.Minute))
		if i%3 == 0 {
			task.WorkflowType = "TestEnvironment"
			envs = append([]string{task.ID}, envs...)
		} else {
			task.WorkflowType = "ServerCreate"
			servers = append([]string{task.ID}, servers...)
		}
		require.NoError(t, s.Create(ctx, task))
	}
	ids := func(ts []storage.Task) []string {
		var out []string
		for _, t := range ts {
			out = append(out, t.ID)
		}
		return out
	}
	got, total, err := s.List(ctx, storage.ListFilter{WorkflowType: "TestEnvironment"})
	require.NoError(t, err)
	assert.Equal(t, 2, total)
	assert.Equal(t, envs, ids(got))

	got, total, err = s.List(ctx, storage.ListFilter{WorkflowType: "ServerCreate", Status: storage.StatusRunning, Limit: 2, Offset: 1})
	require.NoError(t, err)
	assert.Equal(t, 4, total)
	assert.Equal(t, servers[1:3], ids(got))

	// A type change is seen by the filter (the index must not go stale).
	moved := got[0]
	moved.WorkflowType = "TestEnvironment"
	moved.Version++
	require.NoError(t, s.Put(ctx, moved))
	_, total, err = s.List(ctx, storage.ListFilter{WorkflowType: "TestEnvironment"})
	require.NoError(t, err)
	assert.Equal(t, 3, total)

	_, total, err = s.List(ctx, storage.ListFilter{WorkflowType: "Nope"})
	require.NoError(t, err)
	assert.Zero(t, total)
}

func testListPriorityFilter(t *testing.T, s storage.Store) {
	ctx := context.Background()
	var urgent, normal []string
	for i := range 6 {
		task := minimalTask(NewID(), storage.StatusPending, base.Add(time.Duration(i)*time.Minute))
		task.WorkflowType = "ServerCreate"
		if i%3 == 0 {
			task.Priority = 1
			urgent = append([]string{task.ID}, urgent...)
		} else {
			normal = append([]string{task.ID}, normal...)
		}
		require.NoError(t, s.Create(ctx, task))
	}
	ids := func(ts []storage.Task) []string {
		var out []string
		for _, t := range ts {
			out = append(out, t.ID)
		}
		return out
	}
	got, total, err := s.List(ctx, storage.ListFilter{Priority: 1})
	require.NoError(t, err)
	assert.Equal(t, 2, total)
	assert.Equal(t, urgent, ids(got))
	assert.Equal(t, 1, got[0].Priority)

	// No priority given is the default, and is stored as such.
	got, total, err = s.List(ctx, storage.ListFilter{Priority: storage.DefaultPriority, Status: storage.StatusPending, WorkflowType: "ServerCreate", Limit: 2, Offset: 1})
	require.NoError(t, err)
	assert.Equal(t, 4, total)
	assert.Equal(t, normal[1:3], ids(got))
	assert.Equal(t, storage.DefaultPriority, got[0].Priority)

	// A changed priority is seen by the filter (the index must not go stale).
	moved := got[0]
	moved.Priority = 1
	moved.Version++
	require.NoError(t, s.Put(ctx, moved))
	_, total, err = s.List(ctx, storage.ListFilter{Priority: 1})
	require.NoError(t, err)
	assert.Equal(t, 3, total)
	_, total, err = s.List(ctx, storage.ListFilter{Priority: 5})
	require.NoError(t, err)
	assert.Zero(t, total)
}
