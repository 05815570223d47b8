package storage

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// White-box tests of List's maintained index and its change journal.

// listTotal is what the index believes (Offset past the end: no page is
// read from disk, so page verification cannot correct it).
func listTotal(t *testing.T, f *Filesystem, lf ListFilter) int {
	t.Helper()
	lf.Offset = 1 << 20
	_, total, err := f.List(context.Background(), lf)
	require.NoError(t, err)
	return total
}

// TestIndexJournalSeesOtherStore: after the first full scan, another store's
// (process's) Put, Create and Delete reach the index through the journal:
// no further scan, one file read per write.
func TestIndexJournalSeesOtherStore(t *testing.T) {
	f, err := NewFilesystem(t.TempDir())
	require.NoError(t, err)
	defer f.Close()
	other, err := NewFilesystem(f.dataDir)
	require.NoError(t, err)
	defer other.Close()
	ctx := context.Background()
	ids := seedFiles(t, f, 30, time.Now().Add(-time.Hour))
	running := ListFilter{Status: StatusRunning}

	require.Equal(t, 6, listTotal(t, f, running))
	require.Equal(t, int64(1), f.scans.Load())
	require.Equal(t, int64(30), f.parses.Load())
	for range 3 {
		require.Equal(t, 6, listTotal(t, f, running))
	}
	require.Equal(t, int64(30), f.parses.Load(), "nothing changed: nothing read")

	tk, err := other.Get(ctx, ids[0]) // Pending
	require.NoError(t, err)
	tk.Status, tk.Version = StatusRunning, 2
	require.NoError(t, other.Put(ctx, tk))
	require.Equal(t, 7, listTotal(t, f, running))
	require.Equal(t, 5, listTotal(t, f, ListFilter{Status: StatusPending}))
	require.Equal(t, int64(31), f.parses.Load(), "exactly the written file is re-read")

	id := randomID()
	now := time.Now().UTC()
	require.NoError(t, other.Create(ctx, Task{ID: id, Name: "n", Command: "c", Status: StatusRunning,
		WorkflowType: "TestEnvWorkflow", CreatedAt: now, UpdatedAt: now}))
	page, total, err := f.List(ctx, ListFilter{Status: StatusRunning, Limit: 1})
	require.NoError(t, err)
	require.Equal(t, 8, total)
	require.Equal(t, id, page[0].ID, "the newest task heads the page")
	require.Equal(t, 1, listTotal(t, f, ListFilter{WorkflowType: "TestEnvWorkflow"}))
	require.Equal(t, 1, listTotal(t, f, ListFilter{Status: StatusRunning, WorkflowType: "TestEnvWorkflow"}))

	require.NoError(t, other.Delete(ctx, ids[1])) // Running
	require.NoError(t, other.Delete(ctx, id))
	require.Equal(t, 6, listTotal(t, f, running))
	require.Equal(t, 0, listTotal(t, f, ListFilter{WorkflowType: "TestEnvWorkflow"}))
	require.Equal(t, 29, listTotal(t, f, ListFilter{}))
	require.Equal(t, int64(1), f.scans.Load(), "no full scan after the first")
}

// TestIndexJournalRotation: a rotated journal (a new, empty file) makes
// readers scan once; writes after the rotation are journaled again.
func TestIndexJournalRotation(t *testing.T) {
	f, err := NewFilesystem(t.TempDir())
	require.NoError(t, err)
	defer f.Close()
	other, err := NewFilesystem(f.dataDir)
	require.NoError(t, err)
	defer other.Close()
	ctx := context.Background()
	ids := seedFiles(t, f, 10, time.Now().Add(-time.Hour))
	require.Equal(t, 2, listTotal(t, f, ListFilter{Status: StatusRunning}))

	put := func(s *Filesystem, id string, st TaskStatus, v int64) {
		t.Helper()
		tk, err := s.Get(ctx, id)
		require.NoError(t, err)
		tk.Status, tk.Version = st, v
		require.NoError(t, s.Put(ctx, tk))
	}
	put(other, ids[0], StatusRunning, 2)
	before, err := os.Stat(f.journalPath())
	require.NoError(t, err)
	require.Positive(t, before.Size())
	other.maybeRotateJournal(journalRotateSize) // not beyond the limit: kept
	after, err := os.Stat(f.journalPath())
	require.NoError(t, err)
	require.True(t, os.SameFile(before, after))

	// The rotation drops the record f has not read yet: the scan finds it.
	pad, err := os.OpenFile(f.journalPath(), os.O_WRONLY|os.O_APPEND, 0)
	require.NoError(t, err)
	_, err = pad.Write([]byte(strings.Repeat("\n", journalRotateSize)))
	require.NoError(t, err)
	require.NoError(t, pad.Close())
	other.maybeRotateJournal(journalRotateSize + 1)
	after, err = os.Stat(f.journalPath())
	require.NoError(t, err)
	require.False(t, os.SameFile(before, after), "a new journal file")
	require.Zero(t, after.Size())
	require.Equal(t, 3, listTotal(t, f, ListFilter{Status: StatusRunning}))
	require.Equal(t, int64(2), f.scans.Load(), "one scan for the rotation")

	put(other, ids[2], StatusRunning, 2) // Completed -> Running
	require.Equal(t, 4, listTotal(t, f, ListFilter{Status: StatusRunning}))
	require.Equal(t, int64(2), f.scans.Load(), "journaled again")

	// A removed journal counts as rotated, and is created again.
	require.NoError(t, os.Remove(f.journalPath()))
	put(other, ids[3], StatusRunning, 2) // Failed -> Running
	require.Equal(t, 5, listTotal(t, f, ListFilter{Status: StatusRunning}))
	require.Equal(t, int64(3), f.scans.Load())
}

// TestIndexJournalRotatesWhenLong: the writer whose append takes the
// journal past journalRotateSize replaces it.
func TestIndexJournalRotatesWhenLong(t *testing.T) {
	f, err := NewFilesystem(t.TempDir())
	require.NoError(t, err)
	defer f.Close()
	ids := seedFiles(t, f, 1, time.Now().Add(-time.Hour))
	require.NoError(t, os.WriteFile(f.journalPath(), make([]byte, journalRotateSize), 0o644))
	tk, err := f.Get(context.Background(), ids[0])
	require.NoError(t, err)
	tk.Version = 2
	require.NoError(t, f.Put(context.Background(), tk))
	fi, err := os.Stat(f.journalPath())
	require.NoError(t, err)
	require.Zero(t, fi.Size(), "rotated after the append")
}

// TestIndexCrashBetweenRenameAndJournal: a write whose process died after
// its rename and before its journal append is not lost for good: the
// background safety-net scan finds it (and so does any newly opened
// store).
func TestIndexCrashBetweenRenameAndJournal(t *testing.T) {
	f, err := NewFilesystem(t.TempDir())
	require.NoError(t, err)
	defer f.Close()
	crashing, err := NewFilesystem(f.dataDir)
	require.NoError(t, err)
	defer crashing.Close()
	ctx := context.Background()
	ids := seedFiles(t, f, 10, time.Now().Add(-time.Hour))
	running := ListFilter{Status: StatusRunning}
	require.Equal(t, 2, listTotal(t, f, running))

	crashing.journalHook = func(string) error { return errors.New("crash") }
	tk, err := crashing.Get(ctx, ids[0])
	require.NoError(t, err)
	tk.Status, tk.Version = StatusRunning, 2
	require.NoError(t, crashing.Put(ctx, tk), "the file was renamed into place")
	require.NoError(t, crashing.Delete(ctx, ids[1]))

	require.Equal(t, 2, listTotal(t, f, running), "not journaled: not seen yet")
	fresh, err := NewFilesystem(f.dataDir)
	require.NoError(t, err)
	defer fresh.Close()
	require.Equal(t, 2, listTotal(t, fresh, running), "a new store scans")

	// The safety net is due: a List starts it in the background.
	f.cacheMu.Lock()
	f.lastScan = f.lastScan.Add(-fullScanEvery)
	f.cacheMu.Unlock()
	scans := f.scans.Load()
	require.Equal(t, 2, listTotal(t, f, running))
	require.Eventually(t, func() bool { return !f.bgScan.Load() }, 10*time.Second, 5*time.Millisecond)
	require.Equal(t, scans+1, f.scans.Load())
	require.Equal(t, 2, listTotal(t, f, running))
	require.Equal(t, 9, listTotal(t, f, ListFilter{}))
	require.Equal(t, 1, listTotal(t, f, ListFilter{Status: StatusPending}))
}

// TestIndexPageVerificationRereads: an entry that a page read finds
// different (a file edited by hand) is re-read, without a full scan.
func TestIndexPageVerificationRereads(t *testing.T) {
	f, err := NewFilesystem(t.TempDir())
	require.NoError(t, err)
	defer f.Close()
	ctx := context.Background()
	ids := seedFiles(t, f, 5, time.Now().Add(-time.Hour)) // one of each status
	require.Equal(t, 1, listTotal(t, f, ListFilter{Status: StatusRunning}))
	require.NoError(t, os.Remove(f.path(ids[1]))) // by hand: no journal record
	page, total, err := f.List(ctx, ListFilter{Status: StatusRunning})
	require.NoError(t, err)
	require.Empty(t, page)
	require.Zero(t, total)
	require.Equal(t, int64(1), f.scans.Load())
}

// TestIndexMatchesUncachedUnderChurn: random Creates, Puts and Deletes
// through two stores on one directory; after every round the index's pages
// and totals for every kind of filter equal those of a full read.
func TestIndexMatchesUncachedUnderChurn(t *testing.T) {
	a, b, base := twoStoresAndReference(t)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	statuses := []TaskStatus{StatusPending, StatusRunning, StatusCompleted, StatusFailed, StatusCancelled}
	wfs := []string{"", "ServerCreateWorkflow", "TestEnvWorkflow"}
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	var live []Task
	for i := range 400 {
		s := a
		if rng.IntN(2) == 0 {
			s = b
		}
		switch op := rng.IntN(10); {
		case op < 4 || len(live) == 0:
			tk := Task{ID: randomID(), Name: "n", Command: "c", Status: statuses[rng.IntN(5)],
				WorkflowType: wfs[rng.IntN(3)], Priority: 1 + rng.IntN(3),
				CreatedAt: t0.Add(time.Duration(rng.IntN(50)) * time.Second), UpdatedAt: t0}
			require.NoError(t, s.Create(ctx, tk))
			tk.Version = 0
			live = append(live, tk)
		case op < 8:
			k := rng.IntN(len(live))
			live[k].Version++
			live[k].Status = statuses[rng.IntN(5)]
			live[k].Priority = 1 + rng.IntN(3)
			require.NoError(t, s.Put(ctx, live[k]))
		default:
			k := rng.IntN(len(live))
			require.NoError(t, s.Delete(ctx, live[k].ID))
			live = append(live[:k], live[k+1:]...)
		}
		if i%20 != 19 {
			continue
		}
		for _, lf := range []ListFilter{
			{}, {Status: StatusRunning}, {WorkflowType: "TestEnvWorkflow"},
			{Status: StatusFailed, WorkflowType: "ServerCreateWorkflow"}, {Priority: 2},
			{Status: StatusPending, Priority: 3, Limit: 4, Offset: 2}, {Limit: 7, Offset: 11},
		} {
			requireListsAgree(t, base, lf, fmt.Sprintf("round %d", i), a, b)
		}
	}
	require.Equal(t, int64(1), a.scans.Load(), "the journal carried every change")
	require.Equal(t, int64(1), b.scans.Load())
}

// twoStoresAndReference opens two indexed stores on one fresh directory
// and a third that reads every List from the files (no index), the
// reference the others are compared with.
func twoStoresAndReference(t *testing.T) (a, b, reference *Filesystem) {
	t.Helper()
	dir := t.TempDir()
	open := func() *Filesystem {
		f, err := NewFilesystem(dir)
		require.NoError(t, err)
		t.Cleanup(func() { f.Close() })
		return f
	}
	a, b, reference = open(), open(), open()
	reference.noIndexCache = true
	return a, b, reference
}

// requireListsAgree: each store's page and total for lf equal the
// reference's.
func requireListsAgree(t *testing.T, reference *Filesystem, lf ListFilter, when string, stores ...*Filesystem) {
	t.Helper()
	want, wantTotal, err := reference.List(context.Background(), lf)
	require.NoError(t, err)
	for _, s := range stores {
		got, gotTotal, err := s.List(context.Background(), lf)
		require.NoError(t, err)
		require.Equal(t, wantTotal, gotTotal, "%s %+v", when, lf)
		require.Equal(t, taskLabels(want), taskLabels(got), "%s %+v", when, lf)
	}
}

func taskLabels(ts []Task) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = fmt.Sprintf("%s %s", t.ID, t.Status)
	}
	return out
}

// TestIndexConcurrentWritesListsAndSafetyNet: writers on two stores, Lists
// and safety-net scans all at once (run it with -race); once the writes
// stop, the index agrees with a full read.
func TestIndexConcurrentWritesListsAndSafetyNet(t *testing.T) {
	a, b, base := twoStoresAndReference(t)
	ctx := context.Background()
	ids := seedFiles(t, a, 200, time.Now().Add(-time.Hour))
	_, _, err := a.List(ctx, ListFilter{})
	require.NoError(t, err)

	statuses := []TaskStatus{StatusPending, StatusRunning, StatusCompleted, StatusFailed, StatusCancelled}
	done := make(chan struct{})
	errs := make(chan error, 3)
	for w, s := range []*Filesystem{a, b} {
		go func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			var err error
			for i := range 60 {
				id := ids[rng.IntN(len(ids))]
				var tk Task
				if tk, err = s.Get(ctx, id); err != nil {
					break
				}
				tk.Status, tk.Version = statuses[rng.IntN(5)], tk.Version+int64(i)+1
				if err = s.Put(ctx, tk); err != nil {
					break
				}
			}
			errs <- err
		}()
	}
	go func() {
		var err error
		for {
			select {
			case <-done:
				errs <- err
				return
			default:
			}
			a.cacheMu.Lock()
			a.lastScan = time.Time{} // the safety net is always due
			a.cacheMu.Unlock()
			if _, _, err = a.List(ctx, ListFilter{Status: StatusRunning, Limit: 10}); err != nil {
				errs <- err
				return
			}
		}
	}()
	require.NoError(t, <-errs)
	require.NoError(t, <-errs)
	close(done)
	require.NoError(t, <-errs)
	require.Eventually(t, func() bool { return !a.bgScan.Load() }, 10*time.Second, 5*time.Millisecond)
	require.Positive(t, a.scans.Load()-1, "safety-net scans ran")
	for _, lf := range []ListFilter{{}, {Status: StatusRunning}, {Status: StatusFailed, Limit: 7, Offset: 3}} {
		requireListsAgree(t, base, lf, "after the writes", a)
	}
}
