package storage

import (
	"cmp"
	"context"
	"errors"
	"io/fs"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// List and its index, of the filesystem backend.
//
// List keeps an in-memory index (status, workflow type, priority,
// created_at) of every task file, maintained incrementally: per filter key
// (none, status, workflow type, status and workflow type) one slice of
// entries in List order, so a page and its total cost O(page + log n)
// whatever the store's size. What changed is learnt from the change journal
// (filesystem_journal.go) that every Create, Put and Delete of any process
// appends the task's ID to after its rename or remove: a refresh reads the
// journal's new records and re-reads exactly those files. The whole
// directory is scanned only when the index is first built, when the journal
// was rotated (or removed), and as a safety net in the background (at most
// every fullScanEvery, and rarely enough that it costs about 1% of the time
// it takes), which picks up files changed bypassing the store and writes
// whose process died between the rename and the journal append.
//
// The page List returns is always read from disk; an entry whose file no
// longer matches it is re-read on the next refresh and List starts again
// (at most listAttempts times).

const (
	// racyWindow: in a full scan, an entry whose file has the same stat
	// key is trusted only if its mtime was at least this much older than
	// the moment it was read. A file rewritten in place within the same
	// timestamp tick (coarse kernel clocks, 1–2 s on some filesystems)
	// with the same size could otherwise look unchanged (the idea of Git's
	// racy-index check). Writes through a store are journaled and need no
	// such care.
	racyWindow = 2 * time.Second
	// listAttempts bounds how often List restarts when the files of the
	// selected page changed under it.
	listAttempts = 3
	// fullScanEvery is the shortest interval between two safety-net scans
	// of the whole directory (see the file comment).
	fullScanEvery = 10 * time.Second
	// fullScanCostFactor: a safety-net scan starts no sooner than this many
	// times the duration of the previous full scan after it, so the scans
	// take at most about 1% of a core on a large store.
	fullScanCostFactor = 100
	// bulkRebuild: a refresh that changes more entries than this rebuilds
	// the per-filter slices by sorting instead of inserting one by one.
	bulkRebuild = 512
)

// listIndex is the Filesystem's List index; Filesystem embeds it.
type listIndex struct {
	// noIndexCache makes List read and parse every file on every call (the
	// baseline in benchmarks). Set only before first use.
	noIndexCache bool

	// refreshMu serialises index refreshes (which do I/O); cacheMu guards
	// the fields below it and is held only briefly, never during I/O.
	refreshMu sync.Mutex
	cacheMu   sync.Mutex
	cache     map[string]*indexCacheEntry // by task ID
	// lists holds, per filter key (filterKey), the valid entries oldest
	// first (the reverse of List's order, so that new tasks append).
	lists     map[string][]*indexEntry
	scanned   bool                // the index was built by a full scan
	forceScan bool                // the next refresh makes a full scan
	journal   journalPos          // how far the journal was read
	pending   map[string]struct{} // IDs to re-read on the next refresh
	lastScan  time.Time           // when the last full scan started
	scanCost  time.Duration       // how long it took

	// bgScan is set while a safety-net scan runs; bgWG lets Close wait.
	bgScan atomic.Bool
	bgWG   sync.WaitGroup

	// scans counts full directory scans (tests/benchmarks).
	scans atomic.Int64
	// parses counts files decoded to refresh the index (tests/benchmarks).
	parses atomic.Int64
}

// reset forgets everything (Close), so a closed store holds no memory for
// its tasks.
func (x *listIndex) reset() {
	x.cacheMu.Lock()
	x.cacheMu.Unlock() //nolint:staticcheck // a barrier: no safety-net scan starts after this
	x.bgWG.Wait()
	x.cacheMu.Lock()
	x.cache = make(map[string]*indexCacheEntry)
	x.lists = nil
	x.pending = nil
	x.scanned = false
	x.cacheMu.Unlock()
}

// List returns one page of matching tasks, newest first (CreatedAt, then
// ID descending), and the number of matching tasks. Limit 0 (or negative)
// means DefaultLimit, larger than MaxLimit is clamped; a negative Offset is
// taken as 0. Corrupt files are skipped and logged.
//
// With a Priority filter the page and total walk the entries of the other
// filters (O(n)): priority filters are rare, as in the SurrealDB backend.
func (f *Filesystem) List(ctx context.Context, lf ListFilter) ([]Task, int, error) {
	if err := f.usable(ctx); err != nil {
		return nil, 0, err
	}
	offset, limit := lf.Page()
	if f.noIndexCache {
		return f.listUncached(ctx, lf, offset, limit)
	}

	for attempt := 1; ; attempt++ {
		if err := f.refresh(ctx); err != nil {
			return nil, 0, err
		}
		page, total := f.selectPage(lf, offset, limit)
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

// indexEntry is what List needs to select and order tasks. Entries are
// immutable once linked into the lists: a change replaces the entry.
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
	readAt time.Time   // taken before the file was opened
	entry  *indexEntry // nil: the file is corrupt (logged once per key)
}

// racy reports whether the entry may hide an in-place rewrite that left
// size, mtime and inode unchanged: the file was read too soon after its
// mtime.
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

// filterKey names the list of the entries matching a status and workflow
// type filter ("" for either: no filter on it).
func filterKey(status TaskStatus, wfType string) string {
	switch {
	case status != "" && wfType != "":
		return "sw\x00" + string(status) + "\x00" + wfType
	case status != "":
		return "s\x00" + string(status)
	case wfType != "":
		return "w\x00" + wfType
	default:
		return ""
	}
}

// filterKeys are the keys of the lists e belongs to.
func (e *indexEntry) filterKeys() []string {
	keys := []string{"", filterKey(e.status, "")}
	if e.wfType != "" {
		keys = append(keys, filterKey("", e.wfType), filterKey(e.status, e.wfType))
	}
	return keys
}

// ascending orders entries oldest first: the reverse of List's order.
func ascending(a, b *indexEntry) int { return compareEntries(*b, *a) }

// selectPage picks one page and the total from the index (under cacheMu:
// O(page + log n) without a priority filter).
func (f *Filesystem) selectPage(lf ListFilter, offset, limit int) (page []indexEntry, total int) {
	f.cacheMu.Lock()
	defer f.cacheMu.Unlock()
	l := f.lists[filterKey(lf.Status, lf.WorkflowType)]
	if lf.Priority != 0 {
		for i := len(l) - 1; i >= 0; i-- {
			if l[i].prio != lf.Priority {
				continue
			}
			if total >= offset && len(page) < limit {
				page = append(page, *l[i])
			}
			total++
		}
		return page, total
	}
	total = len(l)
	for i := total - 1 - offset; i >= 0 && len(page) < limit; i-- {
		page = append(page, *l[i])
	}
	return page, total
}

// refresh brings the index up to date: a full scan when there is no index
// yet, the journal was rotated or an entry was found inconsistent in a way
// that needs one; otherwise the files named by the journal's new records
// and the pending IDs are re-read. It also starts the safety-net scan when
// it is due.
func (f *Filesystem) refresh(ctx context.Context) error {
	f.refreshMu.Lock()
	defer f.refreshMu.Unlock()

	f.cacheMu.Lock()
	full := !f.scanned || f.forceScan
	pos := f.journal
	f.cacheMu.Unlock()

	var ids []string
	if !full {
		var err error
		var rotated bool
		ids, pos, rotated, err = f.readJournal(pos)
		if err != nil {
			return err
		}
		full = rotated
	}
	if full {
		return f.fullScan(ctx)
	}

	f.cacheMu.Lock()
	for id := range f.pending {
		ids = append(ids, id)
	}
	f.pending = nil
	due := !f.bgScan.Load() && time.Since(f.lastScan) >= max(fullScanEvery, fullScanCostFactor*f.scanCost)
	f.cacheMu.Unlock()

	if len(ids) > 0 {
		slices.Sort(ids)
		ids = slices.Compact(ids)
		todo := make([]indexRead, len(ids))
		for i, id := range ids {
			todo[i].id = id
		}
		f.readIndexEntries(ctx, todo)
		if err := ctx.Err(); err != nil {
			return err
		}
		f.cacheMu.Lock()
		err := f.applyReads(todo, len(todo) > bulkRebuild)
		f.cacheMu.Unlock()
		if err != nil {
			return err
		}
	}
	f.cacheMu.Lock()
	f.journal = pos
	// Started under cacheMu, after checking closed: reset (Close) takes
	// cacheMu before it waits for the scan.
	if due && !f.closed.Load() && f.bgScan.CompareAndSwap(false, true) {
		f.bgWG.Go(f.safetyNetScan)
	}
	f.cacheMu.Unlock()
	return nil
}

// fullScan (under refreshMu) stats every task file and re-reads those that
// are new, changed (size, mtime, inode) or racy; entries whose file is gone
// are dropped. The journal position is taken before the scan, so a write
// whose record comes later is re-read from the journal afterwards.
func (f *Filesystem) fullScan(ctx context.Context) error {
	start := time.Now()
	f.scans.Add(1)
	pos, err := f.journalEnd()
	if err != nil {
		return err
	}
	files, err := f.scanDir(ctx)
	if err != nil {
		return err
	}
	todo, gone := f.diffScan(files, start, true)
	f.readIndexEntries(ctx, todo)
	if err := ctx.Err(); err != nil {
		return err
	}

	f.cacheMu.Lock()
	defer f.cacheMu.Unlock()
	for _, id := range gone {
		todo = append(todo, indexRead{id: id, err: ErrNotFound})
	}
	bulk := !f.scanned || len(todo) > bulkRebuild
	if err := f.applyReads(todo, bulk); err != nil {
		return err
	}
	f.journal, f.scanned, f.forceScan = pos, true, false
	f.lastScan, f.scanCost = start, time.Since(start)
	return nil
}

// diffScan compares a directory scan started at start with the cache: the
// files to (re-)read, and the cached IDs without a file. Racy entries are
// re-read when racy is set; cached entries read after the scan started are
// left alone (their file may be newer than the scan).
func (f *Filesystem) diffScan(files []dirFile, start time.Time, racy bool) (todo []indexRead, gone []string) {
	f.cacheMu.Lock()
	defer f.cacheMu.Unlock()
	present := make(map[string]struct{}, len(files))
	cached := 0
	for _, df := range files {
		present[df.id] = struct{}{}
		c := f.cache[df.id]
		if c != nil {
			cached++
		}
		if c == nil || (c.key != df.key && c.readAt.Before(start)) || (racy && c.racy()) {
			todo = append(todo, indexRead{id: df.id})
		}
	}
	// More cache entries than cached files listed: some files are gone.
	if len(f.cache) > cached {
		for id, c := range f.cache {
			if _, ok := present[id]; !ok && c.readAt.Before(start) {
				gone = append(gone, id)
			}
		}
	}
	return todo, gone
}

// safetyNetScan runs in the background (bgScan set): it stats every file
// without holding any lock, then, under refreshMu, re-reads the files whose
// stat key differs from the index's and drops entries whose file is gone
// (after checking that it still is).
func (f *Filesystem) safetyNetScan() {
	defer f.bgScan.Store(false)
	ctx := context.Background()
	start := time.Now()
	files, err := f.scanDir(ctx)
	if err != nil || f.closed.Load() {
		return
	}
	f.refreshMu.Lock()
	defer f.refreshMu.Unlock()
	f.scans.Add(1)
	todo, gone := f.diffScan(files, start, true)
	for _, id := range gone {
		todo = append(todo, indexRead{id: id})
	}
	f.readIndexEntries(ctx, todo)
	f.cacheMu.Lock()
	defer f.cacheMu.Unlock()
	if f.closed.Load() {
		return
	}
	_ = f.applyReads(todo, len(todo) > bulkRebuild)
	f.lastScan, f.scanCost = start, time.Since(start)
}

// applyReads (under cacheMu) stores the outcome of file reads in the cache
// and the lists, one by one or, when bulk, by rebuilding the lists.
func (f *Filesystem) applyReads(todo []indexRead, bulk bool) error {
	for _, r := range todo {
		prev := f.cache[r.id]
		var old *indexEntry
		if prev != nil {
			old = prev.entry
		}
		switch {
		case r.err == nil:
			e := old
			if old == nil || *old != r.entry {
				e = &indexEntry{}
				*e = r.entry
			}
			f.cache[r.id] = &indexCacheEntry{key: r.key, readAt: r.readAt, entry: e}
			if e != old && !bulk {
				f.relink(old, e)
			}
		case errors.Is(r.err, ErrNotFound):
			if prev != nil {
				delete(f.cache, r.id)
				if !bulk {
					f.unlink(old)
				}
			}
		case errors.Is(r.err, ErrCorrupt):
			if prev == nil || prev.entry != nil || prev.key != r.key {
				f.log().Warn("skipping corrupt task file", "path", f.path(r.id), "error", r.err)
			}
			f.cache[r.id] = &indexCacheEntry{key: r.key, readAt: r.readAt}
			if !bulk {
				f.unlink(old)
			}
		default:
			if bulk {
				f.rebuild()
			}
			return r.err
		}
	}
	if bulk {
		f.rebuild()
	}
	return nil
}

// link inserts e into its lists (under cacheMu).
func (f *Filesystem) link(e *indexEntry) {
	if e == nil {
		return
	}
	for _, k := range e.filterKeys() {
		f.linkKey(k, e)
	}
}

// linkKey inserts e into list k (under cacheMu): O(log n) to find the
// place, and a move of the newer entries (few: new tasks are the newest).
func (f *Filesystem) linkKey(k string, e *indexEntry) {
	if f.lists == nil {
		f.lists = make(map[string][]*indexEntry)
	}
	l := f.lists[k]
	i, _ := slices.BinarySearchFunc(l, e, ascending)
	f.lists[k] = slices.Insert(l, i, e)
}

// relink replaces old (nil: none) by e in the lists (under cacheMu). In
// the lists both belong to (the same task, created at the same time) e
// takes old's place: a status change moves the task between two status
// lists only.
func (f *Filesystem) relink(old, e *indexEntry) {
	if old == nil || old.id != e.id || !old.created.Equal(e.created) {
		f.unlink(old)
		f.link(e)
		return
	}
	oldKeys, newKeys := old.filterKeys(), e.filterKeys()
	for _, k := range oldKeys {
		if !slices.Contains(newKeys, k) {
			f.unlinkKey(k, old)
			continue
		}
		l := f.lists[k]
		if i, found := slices.BinarySearchFunc(l, old, ascending); found {
			l[i] = e
		}
	}
	for _, k := range newKeys {
		if !slices.Contains(oldKeys, k) {
			f.linkKey(k, e)
		}
	}
}

// unlink removes e from its lists (under cacheMu).
func (f *Filesystem) unlink(e *indexEntry) {
	if e == nil {
		return
	}
	for _, k := range e.filterKeys() {
		f.unlinkKey(k, e)
	}
}

// unlinkKey removes e from list k (under cacheMu).
func (f *Filesystem) unlinkKey(k string, e *indexEntry) {
	l := f.lists[k]
	i, found := slices.BinarySearchFunc(l, e, ascending)
	if !found {
		return
	}
	if l = slices.Delete(l, i, i+1); len(l) == 0 {
		delete(f.lists, k)
	} else {
		f.lists[k] = l
	}
}

// rebuild recomputes every list from the cache (under cacheMu).
func (f *Filesystem) rebuild() {
	lists := make(map[string][]*indexEntry)
	all := make([]*indexEntry, 0, len(f.cache))
	for _, c := range f.cache {
		if c.entry != nil {
			all = append(all, c.entry)
		}
	}
	slices.SortFunc(all, ascending)
	for _, e := range all {
		for _, k := range e.filterKeys() {
			lists[k] = append(lists[k], e)
		}
	}
	f.lists = lists
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

// invalidate makes the next refresh re-read id: a page read found its file
// different from the index.
func (f *Filesystem) invalidate(id string) {
	f.cacheMu.Lock()
	if f.pending == nil {
		f.pending = make(map[string]struct{})
	}
	f.pending[id] = struct{}{}
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
