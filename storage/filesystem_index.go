package storage

import (
	"cmp"
	"context"
	"errors"
	"io/fs"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// List and its index, of the filesystem backend.
//
// List keeps an in-memory index (status, workflow type, created_at) of
// every task file, keyed by file name, size, mtime and inode, and only
// re-reads files whose key changed: it sees other processes' writes
// without parsing every file on every call. The page it returns is always
// read from disk, and a page whose files changed since the index saw them
// makes List start again (at most listAttempts times).

const (
	// racyWindow: a cached index entry is trusted only if the file's mtime
	// was at least this much older than the moment it was read. A file
	// rewritten within the same timestamp tick (coarse kernel clocks,
	// 1–2 s on some filesystems) with the same size could otherwise look
	// unchanged; such "racy" entries are re-read on every List until they
	// settle (the idea of Git's racy-index check).
	racyWindow = 2 * time.Second
	// listAttempts bounds how often List restarts when the files of the
	// selected page changed under it.
	listAttempts = 3
	// fullScanEvery bounds how long List relies on the directory's own
	// stat key alone (see Filesystem.index) before it stats every file.
	fullScanEvery = 10 * time.Second
)

// listIndex is the Filesystem's List index; Filesystem embeds it.
type listIndex struct {
	// noIndexCache makes List read and parse every file on every call (the
	// baseline in benchmarks). Set only before first use.
	noIndexCache bool

	// refreshMu serialises index refreshes; cacheMu guards the fields
	// below it (held only briefly, never during I/O).
	refreshMu sync.Mutex
	cacheMu   sync.Mutex
	cache     map[string]*indexCacheEntry // by task ID
	sorted    []indexEntry                // valid entries, List order
	dirty     bool                        // sorted must be rebuilt
	scanned   bool                        // dirKey and dirScanAt are set
	forceScan bool                        // an entry was invalidated
	dirKey    fileKey                     // tasks dir at the last full scan
	dirScanAt time.Time                   // when that scan started
	// scans counts full directory scans (tests/benchmarks).
	scans atomic.Int64
	// parses counts files decoded to refresh the index (tests/benchmarks).
	parses atomic.Int64
}

// reset forgets everything (Close), so a closed store holds no memory for
// its tasks.
func (x *listIndex) reset() {
	x.cacheMu.Lock()
	x.cache = make(map[string]*indexCacheEntry)
	x.sorted = nil
	x.scanned = false
	x.cacheMu.Unlock()
}

// List returns one page of matching tasks, newest first (CreatedAt, then
// ID descending), and the number of matching tasks. Limit 0 (or negative)
// means DefaultLimit, larger than MaxLimit is clamped; a negative Offset is
// taken as 0. Corrupt files are skipped and logged.
func (f *Filesystem) List(ctx context.Context, lf ListFilter) ([]Task, int, error) {
	if err := f.usable(ctx); err != nil {
		return nil, 0, err
	}
	offset, limit := lf.Page()
	if f.noIndexCache {
		return f.listUncached(ctx, lf, offset, limit)
	}

	for attempt := 1; ; attempt++ {
		idx, err := f.index(ctx)
		if err != nil {
			return nil, 0, err
		}
		page, total := selectPage(idx, lf, offset, limit)
		out := make([]Task, 0, len(page))
		stale := false
		last := attempt == listAttempts
		for _, e := range page {
			t, _, err := f.readFile(e.id)
			switch {
			case err == nil && t.Status == e.status && t.WorkflowType == e.wfType && t.Priority == e.prio && t.CreatedAt.Equal(e.created):
				out = append(out, t)
			case err == nil:
				// Changed since the index saw it: the next attempt re-reads it.
				stale = true
				f.invalidate(e.id)
				if last && matches(lf, t) {
					out = append(out, t)
				}
			case errors.Is(err, ErrNotFound), errors.Is(err, ErrCorrupt):
				stale = true
				f.invalidate(e.id)
			default:
				return nil, 0, err
			}
		}
		if !stale || last {
			return out, total, nil
		}
	}
}

// fileKey identifies one version of a task file as far as stat can tell.
// Every write renames a fresh temp file into place, so the inode changes
// too, unless the kernel reuses the inode number of the file it replaced.
type fileKey struct {
	size  int64
	mtime int64 // UnixNano
	ino   uint64
}

// keyOf is the key of the file fi describes.
func keyOf(fi fs.FileInfo) fileKey {
	return fileKey{size: fi.Size(), mtime: fi.ModTime().UnixNano(), ino: inodeOf(fi)}
}

// indexEntry is what List needs to select and order tasks.
type indexEntry struct {
	id      string
	status  TaskStatus
	wfType  string
	prio    int
	created time.Time
}

// indexCacheEntry is what the index knows of one task file.
type indexCacheEntry struct {
	key    fileKey
	readAt time.Time // taken before the file was opened
	ok     bool      // false: the file is corrupt (logged once per key)
	entry  indexEntry
}

// racy reports whether the entry may hide a rewrite that left size, mtime
// and inode unchanged: the file was read too soon after its mtime.
func (c *indexCacheEntry) racy() bool {
	return c.readAt.Sub(time.Unix(0, c.key.mtime)) <= racyWindow
}

// indexRead is one file read by an index refresh (readIndexEntries):
// the outcome is filled in by the reader, without holding cacheMu.
type indexRead struct {
	id     string
	key    fileKey
	readAt time.Time
	entry  indexEntry
	err    error
}

// index refreshes the cache against the directory and returns all valid
// entries in List order. Only files that are new, changed (name, size,
// mtime, inode) or racy are read. The returned slice is never modified.
//
// Before that, the directory's own stat key is compared with the one taken
// at the last full scan. Every Create, Put and Delete (of any process)
// renames into or removes from the directory and so changes its mtime; if
// the key is unchanged, the last scan began more than racyWindow after the
// directory's mtime (so no change can hide within one timestamp tick), and
// that scan is recent, the index is returned as it is.
func (f *Filesystem) index(ctx context.Context) ([]indexEntry, error) {
	f.refreshMu.Lock()
	defer f.refreshMu.Unlock()

	start := time.Now()
	dirFi, err := os.Stat(f.dir)
	if err != nil {
		return nil, unavailable("list tasks", err)
	}
	dk := keyOf(dirFi)
	f.cacheMu.Lock()
	if f.scanned && !f.forceScan && f.dirKey == dk &&
		f.dirScanAt.Sub(time.Unix(0, dk.mtime)) > racyWindow &&
		start.Sub(f.dirScanAt) < fullScanEvery {
		sorted := f.sorted
		f.cacheMu.Unlock()
		return sorted, nil
	}
	f.forceScan = false
	f.cacheMu.Unlock()

	f.scans.Add(1)
	files, err := f.scanDir(ctx)
	if err != nil {
		return nil, err
	}

	f.cacheMu.Lock()
	var todo []indexRead
	for _, df := range files {
		c := f.cache[df.id]
		if c == nil || c.key != df.key || c.racy() {
			todo = append(todo, indexRead{id: df.id})
		}
	}
	f.cacheMu.Unlock()

	f.readIndexEntries(ctx, todo)
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	f.cacheMu.Lock()
	defer f.cacheMu.Unlock()
	dirty := f.dirty
	gone := 0
	for _, r := range todo {
		prev := f.cache[r.id]
		switch {
		case r.err == nil:
			if prev == nil || !prev.ok || prev.entry != r.entry {
				dirty = true
			}
			f.cache[r.id] = &indexCacheEntry{key: r.key, readAt: r.readAt, ok: true, entry: r.entry}
		case errors.Is(r.err, ErrNotFound):
			gone++
			if prev != nil {
				delete(f.cache, r.id)
				dirty = dirty || prev.ok
			}
		case errors.Is(r.err, ErrCorrupt):
			if prev == nil || prev.ok || prev.key != r.key {
				f.log().Warn("skipping corrupt task file", "path", f.path(r.id), "error", r.err)
			}
			if prev != nil && prev.ok {
				dirty = true
			}
			f.cache[r.id] = &indexCacheEntry{key: r.key, readAt: r.readAt, ok: false}
		default:
			return nil, r.err
		}
	}
	// Every listed file is now cached, unless it vanished meanwhile; more
	// cache entries than that means files were deleted.
	if len(f.cache) != len(files)-gone {
		present := make(map[string]struct{}, len(files))
		for _, df := range files {
			present[df.id] = struct{}{}
		}
		for id, c := range f.cache {
			if _, ok := present[id]; !ok {
				delete(f.cache, id)
				dirty = dirty || c.ok
			}
		}
	}
	if dirty || (f.sorted == nil && len(f.cache) > 0) {
		sorted := make([]indexEntry, 0, len(f.cache))
		for _, c := range f.cache {
			if c.ok {
				sorted = append(sorted, c.entry)
			}
		}
		slices.SortFunc(sorted, compareEntries)
		f.sorted = sorted
		f.dirty = false
	}
	f.dirKey, f.dirScanAt, f.scanned = dk, start, true
	return f.sorted, nil
}

// readIndexEntries reads the files in todo, in parallel when there are many
// (the first List over a large directory).
func (f *Filesystem) readIndexEntries(ctx context.Context, todo []indexRead) {
	read := func(r *indexRead) {
		r.readAt = time.Now()
		t, key, err := f.readFile(r.id)
		f.parses.Add(1)
		r.key, r.err = key, err
		if err == nil {
			r.entry = indexEntry{id: t.ID, status: t.Status, wfType: t.WorkflowType, prio: t.Priority, created: t.CreatedAt}
		}
	}
	workers := min(runtime.GOMAXPROCS(0), 8, len(todo)/64+1)
	if workers <= 1 {
		for i := range todo {
			read(&todo[i])
		}
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(todo) || ctx.Err() != nil {
					return
				}
				read(&todo[i])
			}
		})
	}
	wg.Wait()
}

// invalidate drops id's cache entry so the next index refresh re-reads it.
func (f *Filesystem) invalidate(id string) {
	f.cacheMu.Lock()
	delete(f.cache, id)
	f.dirty = true
	f.forceScan = true
	f.cacheMu.Unlock()
}

// listUncached is List without the index: read and parse every file.
func (f *Filesystem) listUncached(ctx context.Context, lf ListFilter, offset, limit int) ([]Task, int, error) {
	files, err := f.scanDir(ctx)
	if err != nil {
		return nil, 0, err
	}
	var matched []Task
	for _, df := range files {
		t, _, err := f.readFile(df.id)
		switch {
		case err == nil:
		case errors.Is(err, ErrNotFound):
			continue
		case errors.Is(err, ErrCorrupt):
			f.log().Warn("skipping corrupt task file", "path", f.path(df.id), "error", err)
			continue
		default:
			return nil, 0, err
		}
		if matches(lf, t) {
			matched = append(matched, t)
		}
	}
	slices.SortFunc(matched, func(a, b Task) int {
		return compareEntries(indexEntry{id: a.ID, created: a.CreatedAt}, indexEntry{id: b.ID, created: b.CreatedAt})
	})
	total := len(matched)
	lo := min(offset, total)
	hi := min(lo+limit, total)
	return append(make([]Task, 0, hi-lo), matched[lo:hi]...), total, nil
}

// compareEntries orders newest first by creation time, then ID descending.
func compareEntries(a, b indexEntry) int {
	if c := b.created.Compare(a.created); c != 0 {
		return c
	}
	return cmp.Compare(b.id, a.id)
}

// matches applies a ListFilter's selection (not its paging).
func matches(lf ListFilter, t Task) bool {
	return (lf.Status == "" || t.Status == lf.Status) && (lf.WorkflowType == "" || t.WorkflowType == lf.WorkflowType) &&
		(lf.Priority == 0 || t.Priority == lf.Priority)
}

func selectPage(idx []indexEntry, lf ListFilter, offset, limit int) (page []indexEntry, total int) {
	for _, e := range idx {
		if !matches(lf, Task{Status: e.status, WorkflowType: e.wfType, Priority: e.prio}) {
			continue
		}
		if total >= offset && len(page) < limit {
			page = append(page, e)
		}
		total++
	}
	return page, total
}
