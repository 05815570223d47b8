package storage

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// White-box tests of the List index cache. They live in package storage
// (the conformance suite cannot be imported from here: storagetest imports
// storage).

func TestIndexCacheReadsOnlyChangedFiles(t *testing.T) {
	f, err := NewFilesystem(t.TempDir())
	require.NoError(t, err)
	defer f.Close()
	ctx := context.Background()
	ids := seedFiles(t, f, 40, time.Now().Add(-time.Hour))

	_, total, err := f.List(ctx, ListFilter{Status: StatusRunning})
	require.NoError(t, err)
	require.Equal(t, 8, total)
	require.Equal(t, int64(40), f.parses.Load(), "first List indexes every file")

	for range 3 {
		_, total, err = f.List(ctx, ListFilter{Status: StatusRunning})
		require.NoError(t, err)
		require.Equal(t, 8, total)
	}
	require.Equal(t, int64(40), f.parses.Load(), "settled files are not re-read")

	// One write by another store on the same dir: exactly that file is
	// re-read (and, being fresh, again on later Lists until it settles).
	other, err := NewFilesystem(f.dataDir)
	require.NoError(t, err)
	defer other.Close()
	tk, err := other.Get(ctx, ids[0]) // Pending
	require.NoError(t, err)
	tk.Status, tk.Version = StatusRunning, 2
	require.NoError(t, other.Put(ctx, tk))
	_, total, err = f.List(ctx, ListFilter{Status: StatusRunning})
	require.NoError(t, err)
	require.Equal(t, 9, total)
	require.Equal(t, int64(41), f.parses.Load())

	// Deleting a file needs no parse at all.
	require.NoError(t, other.Delete(ctx, ids[1]))
	_, total, err = f.List(ctx, ListFilter{})
	require.NoError(t, err)
	require.Equal(t, 39, total)
	require.LessOrEqual(t, f.parses.Load(), int64(42), "only the fresh file may be re-read")
}

// TestIndexCacheRacyWindow pins down the rule that makes the stat key safe
// against coarse mtimes: an entry is trusted only when its mtime was more
// than racyWindow older than the moment it was read.
func TestIndexCacheRacyWindow(t *testing.T) {
	f, err := NewFilesystem(t.TempDir())
	require.NoError(t, err)
	defer f.Close()
	ctx := context.Background()
	id := seedFiles(t, f, 1, time.Now())[0] // Pending, mtime now
	path := f.path(id)

	rewriteSameStat := func(from, to TaskStatus) {
		t.Helper()
		before, err := os.Stat(path)
		require.NoError(t, err)
		data, err := os.ReadFile(path)
		require.NoError(t, err)
		require.Len(t, string(to), len(from), "same size")
		old := `"status":"` + string(from) + `"`
		require.Contains(t, string(data), old)
		data = []byte(strings.Replace(string(data), old, `"status":"`+string(to)+`"`, 1))
		fh, err := os.OpenFile(path, os.O_WRONLY, 0)
		require.NoError(t, err)
		_, err = fh.WriteAt(data, 0)
		require.NoError(t, err)
		require.NoError(t, fh.Close())
		require.NoError(t, os.Chtimes(path, before.ModTime(), before.ModTime()))
		after, err := os.Stat(path)
		require.NoError(t, err)
		require.Equal(t, keyOf(before), keyOf(after), "the rewrite is invisible to stat")
	}
	// count reports what the index believes: with the offset past the end
	// no page is read from disk. Every call stats every file (this test is
	// about file entries, not the directory shortcut).
	count := func(st TaskStatus) int {
		t.Helper()
		forceFullScan(f)
		_, total, err := f.List(ctx, ListFilter{Status: st, Offset: 1000})
		require.NoError(t, err)
		return total
	}

	require.Equal(t, 1, count(StatusPending))
	require.True(t, f.cache[id].racy(), "read right after it was written")
	rewriteSameStat(StatusPending, StatusRunning)
	require.Equal(t, 1, count(StatusRunning), "racy entry re-read")
	require.Equal(t, 0, count(StatusPending))

	// Once settled (mtime well before the read), the stat key alone
	// decides: the same invisible rewrite now goes unnoticed by the index,
	// which proves the entry is served from the cache.
	old := time.Now().Add(-time.Hour)
	require.NoError(t, os.Chtimes(path, old, old))
	require.Equal(t, 1, count(StatusRunning))
	require.False(t, f.cache[id].racy())
	parses := f.parses.Load()
	rewriteSameStat(StatusRunning, StatusPending)
	require.Equal(t, 1, count(StatusRunning), "settled entry trusted")
	require.Equal(t, parses, f.parses.Load())

	// When such a stale entry lands on a page, the page read notices the
	// mismatch, drops the entry and List retries: the page is right.
	page, _, err := f.List(ctx, ListFilter{})
	require.NoError(t, err)
	require.Len(t, page, 1)
	require.Equal(t, StatusPending, page[0].Status)
	require.Equal(t, 0, count(StatusRunning))
	require.Equal(t, 1, count(StatusPending))
}

func TestListUncachedMatchesCached(t *testing.T) {
	dir := t.TempDir()
	f, err := NewFilesystem(dir)
	require.NoError(t, err)
	defer f.Close()
	base, err := NewFilesystem(dir)
	require.NoError(t, err)
	defer base.Close()
	base.noIndexCache = true
	seedFiles(t, f, 60, time.Now().Add(-time.Hour))
	require.NoError(t, os.WriteFile(filepath.Join(f.dir, randomID()+".json"), []byte("{"), 0o644))

	ctx := context.Background()
	for _, lf := range []ListFilter{{}, {Status: StatusFailed}, {Limit: 7, Offset: 5}, {Status: StatusPending, Limit: 3, Offset: 10}, {Offset: 100}} {
		want, wantTotal, err := f.List(ctx, lf)
		require.NoError(t, err)
		got, gotTotal, err := base.List(ctx, lf)
		require.NoError(t, err)
		require.Equal(t, wantTotal, gotTotal, "%+v", lf)
		require.Equal(t, want, got, "%+v", lf)
	}
}

func forceFullScan(f *Filesystem) {
	f.cacheMu.Lock()
	f.forceScan = true
	f.cacheMu.Unlock()
}

func TestIsCanonicalUUIDMatchesValidateID(t *testing.T) {
	id := randomID()
	cases := []string{
		id, "", "x", id[:35], id + "0", strings.ToUpper(id), "../" + id[3:],
		strings.ReplaceAll(id, "-", "_"), "00000000-0000-0000-0000-000000000000",
		"ffffffff-ffff-ffff-ffff-ffffffffffff", "gfffffff-ffff-ffff-ffff-ffffffffffff",
		"ffffffff-ffff-ffff-ffff-fffffffffff/", "ffffffff-ffff-ffff-ffff-fffffffffff\x00",
		"ffffffffffff-ffff-ffff-ffff-ffffffff", "ffffffff-fff-fffff-ffff-ffffffffffff",
	}
	for i := 0; i < 36; i++ {
		for _, c := range []byte{'-', '0', 'a', 'f', 'g', 'A', '.', '/', 0} {
			b := []byte(id)
			b[i] = c
			cases = append(cases, string(b))
		}
	}
	for _, c := range cases {
		require.Equal(t, ValidateID(c) == nil, isCanonicalUUID(c), "%q", c)
	}
}

// TestAuditEntrySurvivesCrashBeforeRename cuts real Creates and Puts short
// between the audit append and the rename (as a crash would): the entry is
// on disk, the task is not updated; the retry lands the task and appends
// nothing new.
func TestAuditEntrySurvivesCrashBeforeRename(t *testing.T) {
	f, err := NewFilesystem(t.TempDir())
	require.NoError(t, err)
	defer f.Close()
	ctx := WithActor(context.Background(), "workflow")
	id := randomID()
	crash := errors.New("crash")
	f.beforeRename = func(string) error { return crash }

	base := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	tk := Task{ID: id, Name: "n", Command: "c", Status: StatusPending, CreatedAt: base, UpdatedAt: base}
	require.ErrorIs(t, f.Create(ctx, tk), crash)
	_, err = f.Get(ctx, id)
	require.ErrorIs(t, err, ErrNotFound)
	entries, err := f.ListAudit(ctx, AuditFilter{TaskID: id})
	require.NoError(t, err)
	require.Len(t, entries, 1, "the create entry was appended before the crash")

	f.beforeRename = nil
	require.NoError(t, f.Create(ctx, tk), "the retried Create")
	entries, err = f.ListAudit(ctx, AuditFilter{TaskID: id})
	require.NoError(t, err)
	require.Len(t, entries, 1)

	running := tk
	running.Status, running.Version, running.UpdatedAt = StatusRunning, 1, base.Add(time.Second)
	f.beforeRename = func(string) error { return crash }
	require.ErrorIs(t, f.Put(ctx, running), crash)
	got, err := f.Get(ctx, id)
	require.NoError(t, err)
	require.Equal(t, StatusPending, got.Status)
	f.beforeRename = nil
	require.NoError(t, f.Put(ctx, running), "the retried Put")
	require.NoError(t, f.Put(ctx, running), "and once more")
	got, err = f.Get(ctx, id)
	require.NoError(t, err)
	require.Equal(t, StatusRunning, got.Status)

	entries, err = f.ListAudit(ctx, AuditFilter{TaskID: id})
	require.NoError(t, err)
	require.Equal(t, []AuditEntry{
		{ID: AuditCreateID(id), TaskID: id, Time: base, Actor: "workflow", Action: AuditCreate, After: StatusPending},
		{ID: AuditTransitionID(id, 1), TaskID: id, Time: base.Add(time.Second), Actor: "workflow",
			Action: AuditTransition, Before: StatusPending, After: StatusRunning, Version: 1},
	}, entries)
	ents, err := os.ReadDir(f.dir)
	require.NoError(t, err)
	for _, e := range ents {
		require.False(t, strings.HasPrefix(e.Name(), tempPrefix), "temp file %s left", e.Name())
	}
}
