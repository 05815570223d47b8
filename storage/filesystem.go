package storage

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
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
)

// Filesystem is the default Store: one JSON file per task under
// {dataDir}/queue.rkvs/tasks/{id}.json.
//
// Writes go to a temp file in the same directory that is fsynced, renamed
// over the task file, after which the directory is fsynced, so readers see
// either the old or the new task, never a partial one, and a write that
// returned nil survives a crash. Concurrent writers of one store share the
// directory fsyncs (filesystem_groupsync.go). Several processes (an API process and
// workers on one host) may share the data directory: Create, Put and Delete
// hold an flock on one of a fixed set of stripe lock files (plus an
// in-process semaphore), so Put's version check and Create's existence
// check are race-free across processes.
//
// List keeps an in-memory index (status, workflow type, priority,
// created_at) with one ordered slice per filter, so a page costs
// O(page + log n). Every write of any process appends the task's ID to a
// change journal ({tasks dir}/.locks/list.journal) after its rename, and
// List re-reads just the files the journal names since its last call (see
// filesystem_index.go and filesystem_journal.go); the page it returns is
// always read from disk. Get always reads the file. A task file changed by
// hand, bypassing the store, is noticed by List's filter and order when it
// lands on a page or at the next background safety-net scan (at least
// 10 s apart).
//
// The audit trail lives in {dataDir}/queue.rkvs/audit/{id}.jsonl, appended
// under the same per-task lock (see filesystem_audit.go). Deleting a task
// keeps its audit file.
//
// Step outputs (StepOutputStore) live in
// {dataDir}/queue.rkvs/outputs/{id}/ (see filesystem_stepoutput.go) and
// event streams (EventStore) in {dataDir}/queue.rkvs/events/{id}.jsonl
// (see filesystem_events.go); deleting a task removes both.
type Filesystem struct {
	dataDir    string
	dir        string // tasks directory
	lockDir    string
	auditDir   string
	outputsDir string
	eventsDir  string

	// events caches what appenders know about event files
	// (filesystem_events.go).
	events eventCache

	// beforeRename, when set (tests only), runs after a Create's or Put's
	// audit entry is appended and before its task file is renamed into
	// place; an error aborts the write there, as a crash would.
	beforeRename func(id string) error
	// journalHook, when set (tests only), runs after a write's rename and
	// before its journal append; an error skips the append, as a crash
	// there would.
	journalHook func(id string) error

	logger atomic.Pointer[slog.Logger]
	closed atomic.Bool

	stripes [lockStripes]lockStripe

	// listIndex is List's index (filesystem_index.go).
	listIndex

	// auditReads counts audit files read for the newest entries across
	// tasks (tests/benchmarks).
	auditReads atomic.Int64

	// dirSyncs coalesces concurrent fsyncs of the shared directories
	// (filesystem_groupsync.go).
	dirSyncs dirSyncs
	// dirSyncHook, when set (tests only), replaces the fsync of a shared
	// directory.
	dirSyncHook func(dir string) error
	// ungroupedDirSyncs (benchmarks only) has every writer fsync a shared
	// directory on its own: the baseline of BenchmarkFilesystemConcurrentPut.
	ungroupedDirSyncs bool
}

// lockStripe serialises writers of the tasks hashed to it: sem within the
// process, an flock on file across processes.
type lockStripe struct {
	sem  chan struct{}
	file *os.File // opened lazily; guarded by sem
}

var (
	_ Store           = (*Filesystem)(nil)
	_ DeferredCreator = (*Filesystem)(nil)
)

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
	outputsDir := filepath.Join(dataDir, filepath.FromSlash(OutputsSubdir))
	if err := os.MkdirAll(outputsDir, 0o755); err != nil {
		return nil, unavailable("create outputs dir", err)
	}
	eventsDir := filepath.Join(dataDir, filepath.FromSlash(EventsSubdir))
	if err := os.MkdirAll(eventsDir, 0o755); err != nil {
		return nil, unavailable("create events dir", err)
	}
	f := &Filesystem{
		dataDir:    dataDir,
		dir:        dir,
		lockDir:    lockDir,
		auditDir:   auditDir,
		outputsDir: outputsDir,
		eventsDir:  eventsDir,
		events:     eventCache{tasks: map[string]*eventFileState{}, readers: map[string]*eventIndex{}},
	}
	f.cache = make(map[string]*indexCacheEntry)
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
	commit, err := f.CreateDeferred(ctx, t)
	if err != nil {
		return err
	}
	return commit()
}

// CreateDeferred is Create whose record is visible (Get, List) when it
// returns but durable only once commit returned nil: the fsyncs of the
// audit file, the task file and their directories are left to commit, so
// a caller can overlap them with other work (the API: the workflow start).
// A process crash loses nothing (the data is in the page cache); an OS crash
// before commit may leave the task file empty or missing, which a later
// Put overwrites (corrupt files are) or creates. commit fsyncs by path, so
// it is harmless when a Put replaced the file meanwhile, and safe to call
// from another goroutine.
func (f *Filesystem) CreateDeferred(ctx context.Context, t Task) (commit func() error, err error) {
	t, data, err := prepareFile(t)
	if err != nil {
		return nil, err
	}
	if err := f.usable(ctx); err != nil {
		return nil, err
	}
	var end int64                                // journal size after this write's record
	defer func() { f.maybeRotateJournal(end) }() // after the unlock
	unlock, err := f.lock(ctx, t.ID)
	if err != nil {
		return nil, err
	}
	defer unlock()
	switch _, err := os.Lstat(f.path(t.ID)); {
	case err == nil:
		return nil, fmt.Errorf("%w: %s", ErrExists, t.ID)
	case !errors.Is(err, fs.ErrNotExist):
		return nil, unavailable("stat task "+t.ID, err)
	}
	if err := f.appendAuditLocked(CreateAuditEntry(ctx, t), false); err != nil {
		return nil, err
	}
	if end, err = f.writeFile(t.ID, data, false); err != nil {
		return nil, err
	}
	id := t.ID
	return func() error {
		for _, p := range []string{f.auditPath(id), f.auditDir, f.path(id), f.dir} {
			if err := f.fsync(p); err != nil {
				return unavailable("sync "+p, err)
			}
		}
		return nil
	}, nil
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
	t, data, err := prepareFile(t)
	if err != nil {
		return err
	}
	if err := f.usable(ctx); err != nil {
		return err
	}
	var end int64                                // journal size after this write's record
	defer func() { f.maybeRotateJournal(end) }() // after the unlock
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
	case errors.Is(err, ErrCorrupt):
		f.log().Warn("overwriting corrupt task file", "id", t.ID, "error", err)
	default:
		return err
	}
	if !stored || before != t.Status {
		if err := f.appendAuditLocked(TransitionAuditEntry(ctx, t, before), true); err != nil {
			return err
		}
	}
	end, err = f.writeFile(t.ID, data, true)
	return err
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

// Delete removes the task's file, its step outputs and its events; a missing task is
// not an error (outputs left by an interrupted Delete are removed then).
// The outputs go first, so a crash in between leaves a task without
// outputs rather than outputs without a task.
func (f *Filesystem) Delete(ctx context.Context, id string) error {
	if err := ValidateID(id); err != nil {
		return err
	}
	if err := f.usable(ctx); err != nil {
		return err
	}
	var end int64                                // journal size after this delete's record
	defer func() { f.maybeRotateJournal(end) }() // after the unlock
	unlock, err := f.lock(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	if err := f.deleteOutputsLocked(id); err != nil {
		return err
	}
	if err := f.deleteEventsLocked(id); err != nil {
		return err
	}
	if err := os.Remove(f.path(id)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return unavailable("delete task "+id, err)
	}
	end = f.appendJournal(id)
	if err := f.fsync(f.dir); err != nil {
		return unavailable("sync tasks dir", err)
	}
	return nil
}

// IDs returns the id of every task file (any order). It reads the
// directory on every call (the same scan List's index makes), so tasks
// created since an earlier call are included and a file deleted during
// the scan is not. Corrupt task files are included: they are tasks on
// disk.
func (f *Filesystem) IDs(ctx context.Context) ([]string, error) {
	if err := f.usable(ctx); err != nil {
		return nil, err
	}
	files, err := f.scanDir(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(files))
	for i, df := range files {
		out[i] = df.id
	}
	return out, nil
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
	f.reset()
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
	return f.lockStripe(ctx, h.Sum32()%lockStripes)
}

// lockStripe takes the in-process semaphore and the flock of stripe i.
func (f *Filesystem) lockStripe(ctx context.Context, i uint32) (unlock func(), err error) {
	s := &f.stripes[i]
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
		name := filepath.Join(f.lockDir, fmt.Sprintf("%02d.lock", i))
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
// directory, write, fsync, rename, journal record, fsync the directory. It
// returns the journal's size after the record (see appendJournal). Without
// durable the fsyncs are the caller's (CreateDeferred's commit).
func (f *Filesystem) writeFile(id string, data []byte, durable bool) (end int64, err error) {
	tmp, err := os.CreateTemp(f.dir, tempPrefix+id+"-*")
	if err != nil {
		return 0, unavailable("write task "+id, err)
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
		return 0, unavailable("write task "+id, err)
	}
	if _, err := tmp.Write(data); err != nil {
		return 0, unavailable("write task "+id, err)
	}
	if durable {
		if err := tmp.Sync(); err != nil {
			return 0, unavailable("write task "+id, err)
		}
	}
	if err := tmp.Close(); err != nil {
		return 0, unavailable("write task "+id, err)
	}
	if f.beforeRename != nil {
		if err := f.beforeRename(id); err != nil {
			return 0, err
		}
	}
	if err := os.Rename(name, f.path(id)); err != nil {
		return 0, unavailable("write task "+id, err)
	}
	renamed = true
	end = f.appendJournal(id)
	if !durable {
		return end, nil
	}
	if err := f.fsync(f.dir); err != nil {
		return end, unavailable("sync tasks dir", err)
	}
	return end, nil
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
	t, err := decodeFile(id, buf)
	return t, keyOf(fi), err
}

// prepareFile is PrepareWrite for a task file: the document plus a
// newline, so the file is a text file.
func prepareFile(t Task) (Task, []byte, error) {
	t, doc, err := PrepareWrite(t)
	if err != nil {
		return Task{}, nil, err
	}
	return t, append(doc, '\n'), nil
}

// decodeFile decodes the content of id's task file (DecodeTask), naming
// the file in errors.
func decodeFile(id string, data []byte) (Task, error) {
	t, err := DecodeTask(id, data)
	if err != nil {
		return Task{}, fmt.Errorf("%w %s%s: %w", ErrCorrupt, id, taskFileExt, err)
	}
	return t, nil
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

// dirFile is one task file found by scanDir.
type dirFile struct {
	id  string
	key fileKey
}

// scanDir lists the task files with their stat keys.
func (f *Filesystem) scanDir(ctx context.Context) ([]dirFile, error) {
	ents, err := readDir(f.dir)
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

// readDir lists dir; unlike os.ReadDir it does not sort the entries,
// which callers do not need.
func readDir(dir string) ([]os.DirEntry, error) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return d.ReadDir(-1)
}

// removeStaleTemps deletes temp files a crashed writer left long ago.
// Fresh ones may belong to another process's write in progress.
func (f *Filesystem) removeStaleTemps() {
	cutoff := time.Now().Add(-staleTempAge)
	for _, dir := range []string{f.dir, f.outputsDir, f.lockDir} { // lockDir: journal rotations
		ents, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if !strings.HasPrefix(e.Name(), tempPrefix) || !e.Type().IsRegular() {
				continue
			}
			if fi, err := e.Info(); err == nil && fi.ModTime().Before(cutoff) {
				_ = os.Remove(filepath.Join(dir, e.Name()))
			}
		}
	}
}

// syncPath fsyncs the file or directory at path.
func syncPath(path string) error {
	d, err := os.Open(path)
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
