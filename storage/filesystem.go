package storage

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Layout of the filesystem backend under the data directory.
const (
	// TasksSubdir is where task files live, relative to the data directory:
	// one {id}.json file per task.
	TasksSubdir = "queue.rkvs/tasks"
	// AuditSubdir holds the audit trail, relative to the data directory:
	// one {id}.jsonl file per task, one JSON entry per line.
	AuditSubdir = "queue.rkvs/audit"

	taskFileExt = ".json"
	// tempPrefix marks in-flight temp files (and Ping probes). Names that
	// start with a dot are never taken for task files.
	tempPrefix = ".tmp-"
	// lockSubdir holds the stripe lock files, inside the tasks directory.
	lockSubdir = ".locks"
	// lockStripes is how many lock files writes are spread over: writers
	// of different tasks rarely wait for each other, and the number of
	// lock files stays bounded however many tasks there are.
	lockStripes = 64
	// staleTempAge: temp files older than this were left by a crashed
	// writer and are removed when a store is opened.
	staleTempAge = time.Hour
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

// errCorrupt marks a task file that exists but cannot be decoded, or
// whose content names another ID than its file name.
var errCorrupt = errors.New("corrupt task file")

// Filesystem is the default Store: one JSON file per task under
// {dataDir}/queue.rkvs/tasks/{id}.json.
//
// Writes go to a temp file in the same directory that is fsynced, renamed
// over the task file, after which the directory is fsynced, so readers see
// either the old or the new task, never a partial one, and a write that
// returned nil survives a crash. Several processes (an API process and
// workers on one host) may share the data directory: Create, Put and Delete
// hold an flock on one of a fixed set of stripe lock files (plus an
// in-process semaphore), so Put's version check and Create's existence
// check are race-free across processes.
//
// List keeps an in-memory index (status, created_at) keyed by file name,
// size, mtime and inode and only re-reads files whose key changed, so it
// sees other processes' writes without parsing every file on every call;
// the page it returns is always read from disk. Get always reads the file.
// While the tasks directory itself is unchanged (every write renames a file
// into it, every delete removes one), List skips even the per-file stats;
// a task file edited in place by hand, bypassing the store, is therefore
// noticed by List's filter and order only within fullScanEvery (10 s).
//
// The audit trail lives in {dataDir}/queue.rkvs/audit/{id}.jsonl, appended
// under the same per-task lock (see filesystem_audit.go). Deleting a task
// keeps its audit file.
type Filesystem struct {
	dataDir  string
	dir      string // tasks directory
	lockDir  string
	auditDir string

	// beforeRename, when set (tests only), runs after a Create's or Put's
	// audit entry is appended and before its task file is renamed into
	// place; an error aborts the write there, as a crash would.
	beforeRename func(id string) error

	logger atomic.Pointer[slog.Logger]
	closed atomic.Bool

	stripes [lockStripes]lockStripe

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

// lockStripe serialises writers of the tasks hashed to it: sem within the
// process, an flock on file across processes.
type lockStripe struct {
	sem  chan struct{}
	file *os.File // opened lazily; guarded by sem
}

// fileKey identifies one version of a task file as far as stat can tell.
// Every write renames a fresh temp file into place, so the inode changes
// too, unless the kernel reuses the inode number of the file it replaced.
type fileKey struct {
	size  int64
	mtime int64 // UnixNano
	ino   uint64
}

func keyOf(fi fs.FileInfo) fileKey {
	return fileKey{size: fi.Size(), mtime: fi.ModTime().UnixNano(), ino: inodeOf(fi)}
}

// indexEntry is what List needs to select and order tasks.
type indexEntry struct {
	id      string
	status  TaskStatus
	wfType  string
	created time.Time
}

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

var _ Store = (*Filesystem)(nil)

// NewFilesystem opens (creating if needed, mode 0o755) the task store under
// dataDir. Temp files that a crashed writer left behind more than an hour
// ago are removed.
func NewFilesystem(dataDir string) (*Filesystem, error) {
	if dataDir == "" {
		return nil, errors.New("storage: filesystem data dir is empty")
	}
	dir := filepath.Join(dataDir, filepath.FromSlash(TasksSubdir))
	lockDir := filepath.Join(dir, lockSubdir)
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		return nil, unavailable("create tasks dir", err)
	}
	auditDir := filepath.Join(dataDir, filepath.FromSlash(AuditSubdir))
	if err := os.MkdirAll(auditDir, 0o755); err != nil {
		return nil, unavailable("create audit dir", err)
	}
	f := &Filesystem{
		dataDir:  dataDir,
		dir:      dir,
		lockDir:  lockDir,
		auditDir: auditDir,
		cache:    make(map[string]*indexCacheEntry),
	}
	for i := range f.stripes {
		f.stripes[i].sem = make(chan struct{}, 1)
	}
	f.removeStaleTemps()
	return f, nil
}

// WithLogger sets the logger that reports skipped corrupt files and
// similar anomalies (nil: discard). It returns f for chaining and may be
// called at any time.
func (f *Filesystem) WithLogger(l *slog.Logger) *Filesystem {
	f.logger.Store(l)
	return f
}

func (f *Filesystem) log() *slog.Logger {
	if l := f.logger.Load(); l != nil {
		return l
	}
	return slog.New(slog.DiscardHandler)
}

// Dir returns the directory holding the task files.
func (f *Filesystem) Dir() string { return f.dir }

// Create stores a new task and appends its AuditCreate entry (actor from
// ctx); ErrExists if the ID is taken. The entry is appended, under the
// task's lock, before the task file is renamed into place: a crash between
// the two leaves an entry that the retried Create finds (by ID) and keeps.
func (f *Filesystem) Create(ctx context.Context, t Task) error {
	if err := ValidateID(t.ID); err != nil {
		return err
	}
	if err := f.usable(ctx); err != nil {
		return err
	}
	t = Normalize(t)
	data, err := encodeTask(t)
	if err != nil {
		return err
	}
	unlock, err := f.lock(ctx, t.ID)
	if err != nil {
		return err
	}
	defer unlock()
	switch _, err := os.Lstat(f.path(t.ID)); {
	case err == nil:
		return fmt.Errorf("%w: %s", ErrExists, t.ID)
	case !errors.Is(err, fs.ErrNotExist):
		return unavailable("stat task "+t.ID, err)
	}
	entry := AuditEntry{
		ID: AuditCreateID(t.ID), TaskID: t.ID, Time: auditTime(t), Actor: ActorFrom(ctx),
		Action: AuditCreate, After: t.Status, Version: t.Version,
	}
	if err := f.appendAuditLocked(entry); err != nil {
		return err
	}
	return f.writeFile(t.ID, data)
}

// Put upserts t unless the stored task has a higher Version. A stored file
// that cannot be decoded is overwritten (and logged).
//
// When the write creates the task or changes its stored status, an
// AuditTransition entry (ID AuditTransitionID, actor from ctx) is appended
// under the task's lock before the task file is renamed into place. A
// retry after a crash between the two sees the old status again, finds the
// entry by its ID and appends nothing, so the entry is neither lost nor
// duplicated.
func (f *Filesystem) Put(ctx context.Context, t Task) error {
	if err := ValidateID(t.ID); err != nil {
		return err
	}
	if err := f.usable(ctx); err != nil {
		return err
	}
	t = Normalize(t)
	data, err := encodeTask(t)
	if err != nil {
		return err
	}
	unlock, err := f.lock(ctx, t.ID)
	if err != nil {
		return err
	}
	defer unlock()
	cur, _, err := f.readFile(t.ID)
	var before TaskStatus // "": no (readable) task stored
	stored := false
	switch {
	case err == nil:
		if cur.Version > t.Version {
			return nil
		}
		before, stored = cur.Status, true
	case errors.Is(err, ErrNotFound):
	case errors.Is(err, errCorrupt):
		f.log().Warn("overwriting corrupt task file", "id", t.ID, "error", err)
	default:
		return err
	}
	if !stored || before != t.Status {
		entry := AuditEntry{
			ID: AuditTransitionID(t.ID, t.Version), TaskID: t.ID, Time: auditTime(t), Actor: ActorFrom(ctx),
			Action: AuditTransition, Before: before, After: t.Status, Version: t.Version,
		}
		if err := f.appendAuditLocked(entry); err != nil {
			return err
		}
	}
	return f.writeFile(t.ID, data)
}

// Get reads the task's file: ErrNotFound if there is none, a wrapped
// decode error if it is corrupt, ErrUnavailable for disk errors.
func (f *Filesystem) Get(ctx context.Context, id string) (Task, error) {
	if err := ValidateID(id); err != nil {
		return Task{}, err
	}
	if err := f.usable(ctx); err != nil {
		return Task{}, err
	}
	t, _, err := f.readFile(id)
	return t, err
}

// Delete removes the task's file; a missing task is not an error.
func (f *Filesystem) Delete(ctx context.Context, id string) error {
	if err := ValidateID(id); err != nil {
		return err
	}
	if err := f.usable(ctx); err != nil {
		return err
	}
	unlock, err := f.lock(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	if err := os.Remove(f.path(id)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return unavailable("delete task "+id, err)
	}
	if err := syncDir(f.dir); err != nil {
		return unavailable("sync tasks dir", err)
	}
	return nil
}

// List returns one page of matching tasks, newest first (CreatedAt, then
// ID descending), and the number of matching tasks. Limit 0 (or negative)
// means DefaultLimit, larger than MaxLimit is clamped; a negative Offset is
// taken as 0. Corrupt files are skipped and logged.
func (f *Filesystem) List(ctx context.Context, lf ListFilter) ([]Task, int, error) {
	if err := f.usable(ctx); err != nil {
		return nil, 0, err
	}
	limit := lf.Limit
	if limit <= 0 {
		limit = DefaultLimit
	}
	limit = min(limit, MaxLimit)
	offset := max(lf.Offset, 0)
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
			case err == nil && t.Status == e.status && t.WorkflowType == e.wfType && t.CreatedAt.Equal(e.created):
				out = append(out, t)
			case err == nil:
				// Changed since the index saw it: the next attempt re-reads it.
				stale = true
				f.invalidate(e.id)
				if last && matches(lf, t.Status, t.WorkflowType) {
					out = append(out, t)
				}
			case errors.Is(err, ErrNotFound), errors.Is(err, errCorrupt):
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

// Ping checks that the tasks directory is writable by creating and
// removing a temp file in it.
func (f *Filesystem) Ping(ctx context.Context) error {
	if err := f.usable(ctx); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(f.dir, tempPrefix+"ping-*")
	if err != nil {
		return unavailable("ping", err)
	}
	name := tmp.Name()
	cerr := tmp.Close()
	rerr := os.Remove(name)
	if err := errors.Join(cerr, rerr); err != nil {
		return unavailable("ping", err)
	}
	return nil
}

// Close releases the lock files. Calls after Close fail with
// ErrUnavailable; closing twice is a no-op.
func (f *Filesystem) Close() error {
	if !f.closed.CompareAndSwap(false, true) {
		return nil
	}
	var errs []error
	for i := range f.stripes {
		s := &f.stripes[i]
		s.sem <- struct{}{}
		if s.file != nil {
			errs = append(errs, s.file.Close())
			s.file = nil
		}
		<-s.sem
	}
	f.cacheMu.Lock()
	f.cache = make(map[string]*indexCacheEntry)
	f.sorted = nil
	f.scanned = false
	f.cacheMu.Unlock()
	return errors.Join(errs...)
}

func (f *Filesystem) usable(ctx context.Context) error {
	if f.closed.Load() {
		return fmt.Errorf("%w: filesystem store is closed", ErrUnavailable)
	}
	return ctx.Err()
}

func (f *Filesystem) path(id string) string {
	return filepath.Join(f.dir, id+taskFileExt)
}

// lock takes the in-process semaphore and the flock of id's stripe. The
// flock is polled without blocking so that ctx can interrupt the wait.
func (f *Filesystem) lock(ctx context.Context, id string) (unlock func(), err error) {
	h := fnv.New32a()
	_, _ = io.WriteString(h, id)
	s := &f.stripes[h.Sum32()%lockStripes]
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	release := func() { <-s.sem }
	if f.closed.Load() {
		release()
		return nil, fmt.Errorf("%w: filesystem store is closed", ErrUnavailable)
	}
	if s.file == nil {
		name := filepath.Join(f.lockDir, fmt.Sprintf("%02d.lock", h.Sum32()%lockStripes))
		lf, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			release()
			return nil, unavailable("open lock file", err)
		}
		s.file = lf
	}
	wait := 50 * time.Microsecond
	for {
		ok, err := tryFlock(s.file)
		if err != nil {
			release()
			return nil, unavailable("lock "+s.file.Name(), err)
		}
		if ok {
			break
		}
		timer := time.NewTimer(wait)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			release()
			return nil, ctx.Err()
		}
		wait = min(2*wait, 10*time.Millisecond)
	}
	return func() {
		if err := funlock(s.file); err != nil {
			// Closing the descriptor is the only sure way to drop the lock.
			f.log().Error("unlock failed; reopening lock file", "file", s.file.Name(), "error", err)
			_ = s.file.Close()
			s.file = nil
		}
		release()
	}, nil
}

// writeFile atomically replaces id's file with data: temp file in the same
// directory, write, fsync, rename, fsync the directory.
func (f *Filesystem) writeFile(id string, data []byte) (err error) {
	tmp, err := os.CreateTemp(f.dir, tempPrefix+id+"-*")
	if err != nil {
		return unavailable("write task "+id, err)
	}
	name := tmp.Name()
	renamed := false
	defer func() {
		if !renamed {
			_ = tmp.Close()
			_ = os.Remove(name)
		}
	}()
	if err := tmp.Chmod(0o644); err != nil {
		return unavailable("write task "+id, err)
	}
	if _, err := tmp.Write(data); err != nil {
		return unavailable("write task "+id, err)
	}
	if err := tmp.Sync(); err != nil {
		return unavailable("write task "+id, err)
	}
	if err := tmp.Close(); err != nil {
		return unavailable("write task "+id, err)
	}
	if f.beforeRename != nil {
		if err := f.beforeRename(id); err != nil {
			return err
		}
	}
	if err := os.Rename(name, f.path(id)); err != nil {
		return unavailable("write task "+id, err)
	}
	renamed = true
	if err := syncDir(f.dir); err != nil {
		return unavailable("sync tasks dir", err)
	}
	return nil
}

// readFile reads and decodes id's file. The key is the fstat of the very
// file that was read.
func (f *Filesystem) readFile(id string) (Task, fileKey, error) {
	fh, err := os.Open(f.path(id))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return Task{}, fileKey{}, fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		return Task{}, fileKey{}, unavailable("read task "+id, err)
	}
	defer fh.Close()
	fi, err := fh.Stat()
	if err != nil {
		return Task{}, fileKey{}, unavailable("read task "+id, err)
	}
	buf := make([]byte, 0, fi.Size()+1)
	for {
		n, err := fh.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			return Task{}, fileKey{}, unavailable("read task "+id, err)
		}
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, 4096)
		}
	}
	t, err := decodeTask(id, buf)
	return t, keyOf(fi), err
}

func encodeTask(t Task) ([]byte, error) {
	data, err := json.Marshal(t)
	if err != nil {
		return nil, fmt.Errorf("storage: encode task %s: %w", t.ID, err)
	}
	return append(data, '\n'), nil
}

func decodeTask(id string, data []byte) (Task, error) {
	var t Task
	if err := json.Unmarshal(data, &t); err != nil {
		return Task{}, fmt.Errorf("%w %s%s: %w", errCorrupt, id, taskFileExt, err)
	}
	if t.ID != id {
		return Task{}, fmt.Errorf("%w %s%s: content has id %q", errCorrupt, id, taskFileExt, t.ID)
	}
	return Normalize(t), nil
}

// taskIDFromName returns the task ID of a directory entry name, or false
// for anything that is not {uuid}.json (temp files, locks, strays).
func taskIDFromName(name string) (string, bool) {
	id, ok := strings.CutSuffix(name, taskFileExt)
	if !ok || !isCanonicalUUID(id) {
		return "", false
	}
	return id, true
}

// isCanonicalUUID is ValidateID's check without the regexp: List runs it on
// every file name of the directory.
func isCanonicalUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
				return false
			}
		}
	}
	return true
}

type dirFile struct {
	id  string
	key fileKey
}

// scanDir lists the task files with their stat keys.
func (f *Filesystem) scanDir(ctx context.Context) ([]dirFile, error) {
	d, err := os.Open(f.dir)
	if err != nil {
		return nil, unavailable("list tasks", err)
	}
	ents, err := d.ReadDir(-1)
	_ = d.Close()
	if err != nil {
		return nil, unavailable("list tasks", err)
	}
	out := make([]dirFile, 0, len(ents))
	for i, e := range ents {
		if i%1024 == 1023 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		id, ok := taskIDFromName(e.Name())
		if !ok || !e.Type().IsRegular() {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue // deleted since ReadDir
			}
			return nil, unavailable("list tasks", err)
		}
		out = append(out, dirFile{id: id, key: keyOf(fi)})
	}
	return out, nil
}

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
		case errors.Is(r.err, errCorrupt):
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
			r.entry = indexEntry{id: t.ID, status: t.Status, wfType: t.WorkflowType, created: t.CreatedAt}
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
		case errors.Is(err, errCorrupt):
			f.log().Warn("skipping corrupt task file", "path", f.path(df.id), "error", err)
			continue
		default:
			return nil, 0, err
		}
		if matches(lf, t.Status, t.WorkflowType) {
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
func matches(lf ListFilter, status TaskStatus, wfType string) bool {
	return (lf.Status == "" || status == lf.Status) && (lf.WorkflowType == "" || wfType == lf.WorkflowType)
}

func selectPage(idx []indexEntry, lf ListFilter, offset, limit int) (page []indexEntry, total int) {
	for _, e := range idx {
		if !matches(lf, e.status, e.wfType) {
			continue
		}
		if total >= offset && len(page) < limit {
			page = append(page, e)
		}
		total++
	}
	return page, total
}

// removeStaleTemps deletes temp files a crashed writer left long ago.
// Fresh ones may belong to another process's write in progress.
func (f *Filesystem) removeStaleTemps() {
	ents, err := os.ReadDir(f.dir)
	if err != nil {
		return
	}
	cutoff := time.Now().Add(-staleTempAge)
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), tempPrefix) || !e.Type().IsRegular() {
			continue
		}
		if fi, err := e.Info(); err == nil && fi.ModTime().Before(cutoff) {
			_ = os.Remove(filepath.Join(f.dir, e.Name()))
		}
	}
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if errors.Is(err, syscall.EINVAL) {
		err = nil // filesystems that cannot fsync a directory
	}
	return errors.Join(err, d.Close())
}

func unavailable(op string, err error) error {
	return fmt.Errorf("%w: %s: %w", ErrUnavailable, op, err)
}
