package storage_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/storage/storagetest"
)

// Environment of the helper process started by TestFilesystemCrossProcessPuts.
const (
	helperDirEnv      = "STORAGE_FS_HELPER_DIR"
	helperIDEnv       = "STORAGE_FS_HELPER_ID"
	helperVersionsEnv = "STORAGE_FS_HELPER_VERSIONS" // "first,step,last"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(helperDirEnv); dir != "" {
		if err := helperPuts(dir); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			os.Exit(2)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// helperPuts is the body of the helper process: Put the versions it was
// given, in order, into the shared data dir.
func helperPuts(dir string) error {
	var first, step, last int64
	if _, err := fmt.Sscanf(os.Getenv(helperVersionsEnv), "%d,%d,%d", &first, &step, &last); err != nil {
		return err
	}
	s, err := storage.NewFilesystem(dir)
	if err != nil {
		return err
	}
	defer s.Close()
	id := os.Getenv(helperIDEnv)
	for v := first; v <= last; v += step {
		if err := s.Put(context.Background(), versioned(id, v)); err != nil {
			return err
		}
	}
	return nil
}

func versioned(id string, v int64) storage.Task {
	return storage.Task{
		ID: id, Name: "version " + strconv.FormatInt(v, 10), Command: "server create",
		Status: storage.StatusRunning, CreatedAt: fixedTime, UpdatedAt: fixedTime, Version: v,
	}
}

var fixedTime = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

func newFS(t *testing.T, dir string) *storage.Filesystem {
	t.Helper()
	s, err := storage.NewFilesystem(dir)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func tasksDir(dataDir string) string {
	return filepath.Join(dataDir, "queue.rkvs", "tasks")
}

func task(id string, status storage.TaskStatus, created time.Time) storage.Task {
	return storage.Task{
		ID: id, Name: "t", Command: "taskserv create", Status: status,
		CreatedAt: created, UpdatedAt: created, Version: 1,
	}
}

// writeRaw writes a task file directly, bypassing the store.
func writeRaw(t testing.TB, dataDir string, tk storage.Task) {
	t.Helper()
	data, err := json.Marshal(storage.Normalize(tk))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(tasksDir(dataDir), tk.ID+".json"), data, 0o644))
}

// logBuffer is a slog handler target safe for concurrent writes.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestFilesystemConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Store {
		s, err := storage.NewFilesystem(t.TempDir())
		require.NoError(t, err)
		return s
	})
}

func TestNewFilesystemRejectsEmptyDir(t *testing.T) {
	_, err := storage.NewFilesystem("")
	require.Error(t, err)
}

func TestFilesystemFileLayout(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	s := newFS(t, dataDir)
	ctx := context.Background()
	id := storagetest.NewID()
	require.NoError(t, s.Create(ctx, task(id, storage.StatusPending, fixedTime.In(time.FixedZone("X", 3600)))))

	path := filepath.Join(dataDir, "queue.rkvs", "tasks", id+".json")
	require.Equal(t, filepath.Dir(path), s.Dir())
	fi, err := os.Stat(path)
	require.NoError(t, err, "task file at the documented path")
	require.Equal(t, fs.FileMode(0o644), fi.Mode().Perm())
	for _, d := range []string{filepath.Join(dataDir, "queue.rkvs"), tasksDir(dataDir)} {
		di, err := os.Stat(d)
		require.NoError(t, err)
		require.Equal(t, fs.FileMode(0o755), di.Mode().Perm(), d)
	}

	// The file is the REST task object: explicit nulls, empty arrays, UTC.
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	var obj map[string]any
	require.NoError(t, json.Unmarshal(raw, &obj))
	for _, k := range []string{"started_at", "completed_at", "output", "error"} {
		v, ok := obj[k]
		require.True(t, ok, "%s present", k)
		require.Nil(t, v, "%s is null", k)
	}
	require.Equal(t, []any{}, obj["args"])
	require.Equal(t, []any{}, obj["dependencies"])
	require.Equal(t, []any{}, obj["steps"])
	require.Equal(t, "2025-01-02T03:04:05Z", obj["created_at"])
	require.Equal(t, id, obj["id"])
}

// listDir returns every name in the tasks dir except the lock directory.
func listDir(t *testing.T, dataDir string) []string {
	t.Helper()
	ents, err := os.ReadDir(tasksDir(dataDir))
	require.NoError(t, err)
	var names []string
	for _, e := range ents {
		if e.Name() != ".locks" {
			names = append(names, e.Name())
		}
	}
	return names
}

func TestFilesystemNoTempFilesLeft(t *testing.T) {
	dataDir := t.TempDir()
	s := newFS(t, dataDir)
	ctx := context.Background()
	var want []string
	var wg sync.WaitGroup
	for i := range 20 {
		id := storagetest.NewID()
		if i%4 != 0 {
			want = append(want, id+".json")
		}
		wg.Go(func() {
			assert.NoError(t, s.Create(ctx, task(id, storage.StatusPending, fixedTime)))
			for v := int64(2); v < 6; v++ {
				tk := task(id, storage.StatusRunning, fixedTime)
				tk.Version = v
				assert.NoError(t, s.Put(ctx, tk))
			}
			assert.ErrorIs(t, s.Create(ctx, task(id, storage.StatusPending, fixedTime)), storage.ErrExists)
			if i%4 == 0 {
				assert.NoError(t, s.Delete(ctx, id))
			}
			assert.NoError(t, s.Ping(ctx))
		})
	}
	wg.Wait()
	require.ElementsMatch(t, want, listDir(t, dataDir), "only task files remain")
}

func TestFilesystemStaleTempFilesRemovedOnOpen(t *testing.T) {
	dataDir := t.TempDir()
	newFS(t, dataDir)
	dir := tasksDir(dataDir)
	stale := filepath.Join(dir, ".tmp-"+storagetest.NewID()+"-123")
	fresh := filepath.Join(dir, ".tmp-"+storagetest.NewID()+"-456")
	require.NoError(t, os.WriteFile(stale, []byte("{"), 0o600))
	require.NoError(t, os.WriteFile(fresh, []byte("{"), 0o600))
	old := time.Now().Add(-2 * time.Hour)
	require.NoError(t, os.Chtimes(stale, old, old))

	newFS(t, dataDir)
	require.NoFileExists(t, stale, "a temp file left by a crash long ago is removed")
	require.FileExists(t, fresh, "a fresh temp file may be another process's write in progress")
}

func TestFilesystemCorruptFiles(t *testing.T) {
	dataDir := t.TempDir()
	var logs logBuffer
	s := newFS(t, dataDir).WithLogger(slog.New(slog.NewTextHandler(&logs, nil)))
	ctx := context.Background()

	good := task(storagetest.NewID(), storage.StatusRunning, fixedTime)
	require.NoError(t, s.Create(ctx, good))

	otherID := storagetest.NewID()
	corrupt := map[string]string{
		storagetest.NewID(): "not json at all",
		storagetest.NewID(): `{"id": "truncated", "name": "par`,
		storagetest.NewID(): "",
		storagetest.NewID(): "null",
		storagetest.NewID(): `{"id":"` + otherID + `","status":"Running","created_at":"2025-01-01T00:00:00Z"}`,
		storagetest.NewID(): `{"id": 42}`,
	}
	for id, content := range corrupt {
		require.NoError(t, os.WriteFile(filepath.Join(tasksDir(dataDir), id+".json"), []byte(content), 0o644))
	}

	for range 3 {
		got, total, err := s.List(ctx, storage.ListFilter{})
		require.NoError(t, err, "corrupt files do not break List")
		require.Equal(t, 1, total)
		require.Len(t, got, 1)
		require.Equal(t, good.ID, got[0].ID)
	}
	out := logs.String()
	for id := range corrupt {
		require.Equal(t, 1, strings.Count(out, "path="+filepath.Join(tasksDir(dataDir), id+".json")), "corrupt file %s logged once, not on every List:\n%s", id, out)
	}

	for id := range corrupt {
		_, err := s.Get(ctx, id)
		require.Error(t, err)
		require.NotErrorIs(t, err, storage.ErrNotFound)
		require.NotErrorIs(t, err, storage.ErrInvalidID)
		require.Contains(t, err.Error(), id)
	}

	var bad string
	for id := range corrupt {
		bad = id
		break
	}
	// Put repairs a corrupt file; List then shows it.
	require.NoError(t, s.Put(ctx, task(bad, storage.StatusFailed, fixedTime.Add(time.Hour))))
	got, total, err := s.List(ctx, storage.ListFilter{})
	require.NoError(t, err)
	require.Equal(t, 2, total)
	require.Equal(t, []string{bad, good.ID}, []string{got[0].ID, got[1].ID})

	// A file that goes bad after being indexed disappears from List.
	require.NoError(t, os.WriteFile(filepath.Join(tasksDir(dataDir), good.ID+".json"), []byte("{garbage"), 0o644))
	got, total, err = s.List(ctx, storage.ListFilter{})
	require.NoError(t, err)
	require.Equal(t, 1, total)
	require.Equal(t, bad, got[0].ID)
}

func TestFilesystemIgnoresStrayFiles(t *testing.T) {
	dataDir := t.TempDir()
	s := newFS(t, dataDir)
	ctx := context.Background()
	good := task(storagetest.NewID(), storage.StatusPending, fixedTime)
	require.NoError(t, s.Create(ctx, good))

	dir := tasksDir(dataDir)
	upper := strings.ToUpper(storagetest.NewID())
	writeRaw(t, dataDir, task(storagetest.NewID(), storage.StatusPending, fixedTime)) // counted
	for name, content := range map[string]string{
		"README.txt":                 "hello",
		"not-a-uuid.json":            `{"id":"not-a-uuid"}`,
		upper + ".json":              `{"id":"` + upper + `"}`,
		".tmp-" + good.ID + "-99999": `{"id":"` + good.ID + `"}`,
		good.ID + ".json.bak":        `{}`,
	} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644))
	}
	require.NoError(t, os.Mkdir(filepath.Join(dir, storagetest.NewID()+".json"), 0o755))

	got, total, err := s.List(ctx, storage.ListFilter{})
	require.NoError(t, err)
	require.Equal(t, 2, total)
	require.Len(t, got, 2)
}

func TestFilesystemIDCannotEscapeDir(t *testing.T) {
	dataDir := t.TempDir()
	s := newFS(t, dataDir)
	ctx := context.Background()
	outside := filepath.Join(dataDir, "queue.rkvs", "x.json")
	require.NoError(t, os.WriteFile(outside, []byte(`{"id":"../x"}`), 0o644))

	_, err := s.Get(ctx, "../x")
	require.ErrorIs(t, err, storage.ErrInvalidID)
	require.ErrorIs(t, s.Delete(ctx, "../x"), storage.ErrInvalidID)
	require.ErrorIs(t, s.Put(ctx, task("../x", storage.StatusPending, fixedTime)), storage.ErrInvalidID)
	require.FileExists(t, outside)
	content, err := os.ReadFile(outside)
	require.NoError(t, err)
	require.Equal(t, `{"id":"../x"}`, string(content))
}

// TestFilesystemSharedDirectory: two stores on one data dir (as an API
// process and a worker process would be) see each other's writes at once,
// including rewrites that keep the file size and land in the same second.
func TestFilesystemSharedDirectory(t *testing.T) {
	dataDir := t.TempDir()
	api, worker := newFS(t, dataDir), newFS(t, dataDir)
	ctx := context.Background()

	_, total, err := api.List(ctx, storage.ListFilter{})
	require.NoError(t, err)
	require.Zero(t, total)

	id := storagetest.NewID()
	require.NoError(t, worker.Create(ctx, task(id, storage.StatusPending, fixedTime)))
	got, err := api.Get(ctx, id)
	require.NoError(t, err)
	require.Equal(t, storage.StatusPending, got.Status)

	// Pending and Running have the same length, and versions 2..9 one
	// digit: every rewrite keeps the file size, and all happen well within
	// one mtime tick on coarse-timestamp filesystems.
	for v := int64(2); v <= 9; v++ {
		st := storage.StatusRunning
		if v%2 == 1 {
			st = storage.StatusPending
		}
		tk := task(id, st, fixedTime)
		tk.Version = v
		require.NoError(t, worker.Put(ctx, tk))

		page, total, err := api.List(ctx, storage.ListFilter{Status: st})
		require.NoError(t, err)
		require.Equal(t, 1, total, "v%d: the api store sees the worker's write", v)
		require.Equal(t, v, page[0].Version)
		other := storage.StatusPending
		if st == storage.StatusPending {
			other = storage.StatusRunning
		}
		_, total, err = api.List(ctx, storage.ListFilter{Status: other})
		require.NoError(t, err)
		require.Zero(t, total, "v%d: no stale index entry", v)
	}

	// New tasks and deletions from either side.
	id2 := storagetest.NewID()
	require.NoError(t, api.Create(ctx, task(id2, storage.StatusPending, fixedTime.Add(time.Second))))
	page, total, err := worker.List(ctx, storage.ListFilter{})
	require.NoError(t, err)
	require.Equal(t, 2, total)
	require.Equal(t, id2, page[0].ID)
	require.ErrorIs(t, worker.Create(ctx, task(id2, storage.StatusPending, fixedTime)), storage.ErrExists)

	require.NoError(t, worker.Delete(ctx, id))
	page, total, err = api.List(ctx, storage.ListFilter{})
	require.NoError(t, err)
	require.Equal(t, 1, total)
	require.Equal(t, []string{id2}, []string{page[0].ID})
}

// TestFilesystemListSeesSameStatRewrite: a rewrite that leaves size, mtime
// and inode unchanged (an in-place edit within one timestamp tick) is still
// seen, because entries read within the racy window are always re-read.
func TestFilesystemListSeesSameStatRewrite(t *testing.T) {
	dataDir := t.TempDir()
	s := newFS(t, dataDir)
	ctx := context.Background()
	id := storagetest.NewID()
	writeRaw(t, dataDir, task(id, storage.StatusRunning, fixedTime))
	path := filepath.Join(tasksDir(dataDir), id+".json")
	before, err := os.Stat(path)
	require.NoError(t, err)

	_, total, err := s.List(ctx, storage.ListFilter{Status: storage.StatusRunning})
	require.NoError(t, err)
	require.Equal(t, 1, total)

	// Rewrite in place (same inode), same size, then restore the mtime.
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	data = bytes.Replace(data, []byte(`"Running"`), []byte(`"Pending"`), 1)
	fh, err := os.OpenFile(path, os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = fh.WriteAt(data, 0)
	require.NoError(t, err)
	require.NoError(t, fh.Close())
	require.NoError(t, os.Chtimes(path, before.ModTime(), before.ModTime()))
	after, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, before.Size(), after.Size())
	require.Equal(t, before.ModTime(), after.ModTime())
	require.True(t, os.SameFile(before, after))

	_, total, err = s.List(ctx, storage.ListFilter{Status: storage.StatusRunning})
	require.NoError(t, err)
	require.Zero(t, total, "index entry re-read although its stat key did not change")
	page, total, err := s.List(ctx, storage.ListFilter{Status: storage.StatusPending})
	require.NoError(t, err)
	require.Equal(t, 1, total)
	require.Equal(t, storage.StatusPending, page[0].Status)
}

// watchVersions polls id until stop is closed and reports whether the
// stored version ever went down: it never may, whoever writes.
func watchVersions(t *testing.T, s storage.Store, id string) (stop func() (observed int, regressions []string)) {
	t.Helper()
	done := make(chan struct{})
	result := make(chan []string, 1)
	var seen int
	go func() {
		var regr []string
		last := int64(0)
		for {
			select {
			case <-done:
				result <- regr
				return
			default:
			}
			got, err := s.Get(context.Background(), id)
			if err != nil {
				continue // not created yet
			}
			seen++
			if got.Version < last {
				regr = append(regr, fmt.Sprintf("v%d after v%d", got.Version, last))
			}
			last = max(last, got.Version)
		}
	}()
	return func() (int, []string) {
		close(done)
		r := <-result
		return seen, r
	}
}

func TestFilesystemCrossInstanceVersionCheck(t *testing.T) {
	dataDir := t.TempDir()
	a, b := newFS(t, dataDir), newFS(t, dataDir)
	ctx := context.Background()
	id := storagetest.NewID()

	require.NoError(t, a.Put(ctx, versioned(id, 10)))
	require.NoError(t, b.Put(ctx, versioned(id, 5)), "a stale write is a no-op, not an error")
	got, err := b.Get(ctx, id)
	require.NoError(t, err)
	require.Equal(t, int64(10), got.Version)
	require.NoError(t, b.Put(ctx, versioned(id, 11)))
	got, err = a.Get(ctx, id)
	require.NoError(t, err)
	require.Equal(t, int64(11), got.Version)

	// Interleaved writers on two stores: the highest version wins.
	id2 := storagetest.NewID()
	const last = 200
	stop := watchVersions(t, newFS(t, dataDir), id2)
	var wg sync.WaitGroup
	for w, s := range []*storage.Filesystem{a, b, a, b} {
		wg.Go(func() {
			for v := int64(w + 1); v <= last; v += 4 {
				assert.NoError(t, s.Put(ctx, versioned(id2, v)))
			}
		})
	}
	wg.Wait()
	observed, regressions := stop()
	require.Empty(t, regressions, "stored version went backwards (%d reads)", observed)
	got, err = a.Get(ctx, id2)
	require.NoError(t, err)
	require.Equal(t, int64(last), got.Version)
	require.Equal(t, fmt.Sprintf("version %d", last), got.Name)
}

// TestFilesystemCrossProcessPuts runs writers in two other processes and
// this one against one data dir; the flock keeps the version check atomic.
func TestFilesystemCrossProcessPuts(t *testing.T) {
	dataDir := t.TempDir()
	s := newFS(t, dataDir)
	id := storagetest.NewID()
	const step, last = 3, 150

	stop := watchVersions(t, s, id)
	var cmds []*exec.Cmd
	var outs []*bytes.Buffer
	for first := 1; first <= 2; first++ {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(),
			helperDirEnv+"="+dataDir,
			helperIDEnv+"="+id,
			fmt.Sprintf("%s=%d,%d,%d", helperVersionsEnv, first, step, last),
		)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		require.NoError(t, cmd.Start())
		cmds, outs = append(cmds, cmd), append(outs, &out)
	}
	for v := int64(step); v <= last; v += step {
		require.NoError(t, s.Put(context.Background(), versioned(id, v)))
	}
	for i, cmd := range cmds {
		require.NoError(t, cmd.Wait(), "helper output: %s", outs[i])
	}
	observed, regressions := stop()
	require.Empty(t, regressions, "stored version went backwards (%d reads)", observed)

	got, err := s.Get(context.Background(), id)
	require.NoError(t, err)
	require.Equal(t, int64(last), got.Version)
	require.Equal(t, fmt.Sprintf("version %d", last), got.Name)
	require.Equal(t, []string{id + ".json"}, listDir(t, dataDir))
}

func TestFilesystemListClampsLimit(t *testing.T) {
	dataDir := t.TempDir()
	s := newFS(t, dataDir)
	n := storage.MaxLimit + 5
	for i := range n {
		writeRaw(t, dataDir, task(storagetest.NewID(), storage.StatusCompleted, fixedTime.Add(time.Duration(i)*time.Second)))
	}
	ctx := context.Background()
	got, total, err := s.List(ctx, storage.ListFilter{Limit: 5000})
	require.NoError(t, err)
	require.Equal(t, n, total)
	require.Len(t, got, storage.MaxLimit)
	for i := 1; i < len(got); i++ {
		require.True(t, got[i-1].CreatedAt.After(got[i].CreatedAt), "newest first")
	}

	got, _, err = s.List(ctx, storage.ListFilter{Limit: -1, Offset: -3})
	require.NoError(t, err)
	require.Len(t, got, storage.DefaultLimit, "negative limit means the default, negative offset 0")
	require.Equal(t, fixedTime.Add(time.Duration(n-1)*time.Second), got[0].CreatedAt)
}

func TestFilesystemDiskErrorsAreUnavailable(t *testing.T) {
	dataDir := t.TempDir()
	s := newFS(t, dataDir)
	ctx := context.Background()
	id := storagetest.NewID()
	require.NoError(t, s.Create(ctx, task(id, storage.StatusPending, fixedTime)))
	require.NoError(t, s.Ping(ctx))

	// Pull the directory out from under the store (works as root too,
	// unlike a permission change).
	require.NoError(t, os.RemoveAll(tasksDir(dataDir)))

	require.ErrorIs(t, s.Ping(ctx), storage.ErrUnavailable)
	require.ErrorIs(t, s.Put(ctx, task(storagetest.NewID(), storage.StatusPending, fixedTime)), storage.ErrUnavailable)
	_, _, err := s.List(ctx, storage.ListFilter{})
	require.ErrorIs(t, err, storage.ErrUnavailable)
	_, err = s.Get(ctx, id)
	require.ErrorIs(t, err, storage.ErrNotFound, "a missing file is not-found, not a disk error")

	// A path that cannot be created at all.
	blocker := filepath.Join(t.TempDir(), "file")
	require.NoError(t, os.WriteFile(blocker, nil, 0o644))
	_, err = storage.NewFilesystem(blocker)
	require.ErrorIs(t, err, storage.ErrUnavailable)
}

func TestFilesystemClosed(t *testing.T) {
	s, err := storage.NewFilesystem(t.TempDir())
	require.NoError(t, err)
	ctx := context.Background()
	id := storagetest.NewID()
	require.NoError(t, s.Create(ctx, task(id, storage.StatusPending, fixedTime)))
	require.NoError(t, s.Close())
	require.NoError(t, s.Close(), "closing twice is harmless")

	require.ErrorIs(t, s.Put(ctx, task(id, storage.StatusRunning, fixedTime)), storage.ErrUnavailable)
	_, err = s.Get(ctx, id)
	require.ErrorIs(t, err, storage.ErrUnavailable)
	_, _, err = s.List(ctx, storage.ListFilter{})
	require.ErrorIs(t, err, storage.ErrUnavailable)
	require.ErrorIs(t, s.Ping(ctx), storage.ErrUnavailable)
}

func auditFile(dataDir, id string) string {
	return filepath.Join(dataDir, "queue.rkvs", "audit", id+".jsonl")
}

func appendRaw(t *testing.T, path, s string) {
	t.Helper()
	fh, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	require.NoError(t, err)
	_, err = fh.WriteString(s)
	require.NoError(t, err)
	require.NoError(t, fh.Close())
}

func auditIDs(t *testing.T, s storage.Store, id string) []string {
	t.Helper()
	got, err := s.ListAudit(context.Background(), storage.AuditFilter{TaskID: id})
	require.NoError(t, err)
	out := make([]string, len(got))
	for i, e := range got {
		out[i] = e.ID
	}
	return out
}

func TestFilesystemAuditLayout(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	s := newFS(t, dataDir)
	ctx := storage.WithActor(context.Background(), "alice")
	id := storagetest.NewID()
	require.NoError(t, s.Create(ctx, task(id, storage.StatusPending, fixedTime)))
	running := task(id, storage.StatusRunning, fixedTime)
	running.Version = 2
	require.NoError(t, s.Put(ctx, running))

	di, err := os.Stat(filepath.Join(dataDir, "queue.rkvs", "audit"))
	require.NoError(t, err)
	require.Equal(t, fs.FileMode(0o755), di.Mode().Perm())
	path := auditFile(dataDir, id)
	fi, err := os.Stat(path)
	require.NoError(t, err, "audit file at the documented path")
	require.Equal(t, fs.FileMode(0o644), fi.Mode().Perm())

	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSuffix(string(raw), "\n"), "\n")
	require.Len(t, lines, 2, "one JSON entry per line:\n%s", raw)
	var first map[string]any
	require.NoError(t, json.Unmarshal([]byte(lines[0]), &first))
	require.Equal(t, map[string]any{
		"id": id + "/create", "task_id": id, "time": "2025-01-02T03:04:05Z", "actor": "alice",
		"action": "create", "before": "", "after": "Pending", "version": float64(1),
	}, first)
	require.Contains(t, lines[1], `"id":"`+id+`/v2"`)

	// Deleting the task keeps its audit trail.
	require.NoError(t, s.Delete(ctx, id))
	require.Equal(t, []string{id + "/create", id + "/v2"}, auditIDs(t, s, id))
	require.FileExists(t, path)
}

// TestFilesystemAuditTornLine: a crash in the middle of an append leaves a
// last line without newline; readers skip it and the next append starts a
// new line instead of gluing itself to the fragment.
func TestFilesystemAuditTornLine(t *testing.T) {
	dataDir := t.TempDir()
	var logs logBuffer
	s := newFS(t, dataDir).WithLogger(slog.New(slog.NewTextHandler(&logs, nil)))
	ctx := context.Background()
	id := storagetest.NewID()
	require.NoError(t, s.Create(ctx, task(id, storage.StatusPending, fixedTime)))
	path := auditFile(dataDir, id)

	fragment := `{"id":"` + id + `/v9","task_id":"` + id + `","time":"2025-01-0`
	appendRaw(t, path, fragment)
	require.Equal(t, []string{id + "/create"}, auditIDs(t, s, id), "the torn line is skipped")
	require.Contains(t, logs.String(), "skipping unreadable audit line")

	running := task(id, storage.StatusRunning, fixedTime.Add(time.Second))
	running.Version = 2
	require.NoError(t, s.Put(ctx, running))
	require.Equal(t, []string{id + "/create", id + "/v2"}, auditIDs(t, s, id))
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	lines := strings.Split(string(raw), "\n")
	require.Len(t, lines, 4, "create, fragment, v2, and the final newline:\n%s", raw)
	require.Equal(t, fragment, lines[1], "the fragment stays on a line of its own")
	require.Empty(t, lines[3])

	// A crash right before the newline leaves a whole entry without it: it
	// is read, and it counts for idempotency.
	done := running
	done.Status, done.Version = storage.StatusCompleted, 3
	line, err := json.Marshal(storage.AuditEntry{
		ID: storage.AuditTransitionID(id, 3), TaskID: id, Time: fixedTime, Actor: "before the crash",
		Action: storage.AuditTransition, Before: storage.StatusRunning, After: storage.StatusCompleted, Version: 3,
	})
	require.NoError(t, err)
	appendRaw(t, path, string(line))
	require.NoError(t, s.Put(ctx, done))
	got, err := s.ListAudit(ctx, storage.AuditFilter{TaskID: id})
	require.NoError(t, err)
	require.Len(t, got, 3, "v3 not duplicated")
	for _, e := range got {
		if e.ID == storage.AuditTransitionID(id, 3) {
			require.Equal(t, "before the crash", e.Actor, "the entry found on disk is kept")
		}
	}

	require.NoError(t, s.AppendAudit(ctx, storage.AuditEntry{ID: id + "/later", TaskID: id, Time: fixedTime.Add(time.Hour), Action: "x"}))
	got, err = s.ListAudit(ctx, storage.AuditFilter{TaskID: id})
	require.NoError(t, err)
	require.Len(t, got, 4)
	require.Equal(t, id+"/later", got[3].ID)
	raw, err = os.ReadFile(path)
	require.NoError(t, err)
	require.True(t, strings.HasSuffix(string(raw), "\n"))
	require.Equal(t, 5, strings.Count(string(raw), "\n"), "create, fragment, v2, v3, later:\n%s", raw)
}

// TestFilesystemAuditCrashWindow simulates a crash after Put appended its
// audit entry but before it renamed the task file into place: the entry
// is on disk, the task file is still the old one, a temp file is left. The
// retried Put lands the task and appends nothing new.
func TestFilesystemAuditCrashWindow(t *testing.T) {
	dataDir := t.TempDir()
	s := newFS(t, dataDir)
	ctx := storage.WithActor(context.Background(), "workflow")
	id := storagetest.NewID()
	require.NoError(t, s.Create(ctx, task(id, storage.StatusPending, fixedTime)))

	running := task(id, storage.StatusRunning, fixedTime)
	running.Version = 2
	running.UpdatedAt = fixedTime.Add(time.Minute)
	// What the crashed Put had written: its entry, and its temp file.
	require.NoError(t, s.AppendAudit(ctx, storage.AuditEntry{
		ID: storage.AuditTransitionID(id, 2), TaskID: id, Time: running.UpdatedAt, Actor: "workflow",
		Action: storage.AuditTransition, Before: storage.StatusPending, After: storage.StatusRunning, Version: 2,
	}))
	require.NoError(t, os.WriteFile(filepath.Join(tasksDir(dataDir), ".tmp-"+id+"-4242"), []byte(`{"id":"`+id), 0o644))
	got, err := s.Get(ctx, id)
	require.NoError(t, err)
	require.Equal(t, storage.StatusPending, got.Status, "the rename did not happen")

	before, err := os.ReadFile(auditFile(dataDir, id))
	require.NoError(t, err)
	require.NoError(t, s.Put(ctx, running), "the retry")
	got, err = s.Get(ctx, id)
	require.NoError(t, err)
	require.Equal(t, storage.StatusRunning, got.Status, "the retry lands the task")
	require.Equal(t, int64(2), got.Version)
	after, err := os.ReadFile(auditFile(dataDir, id))
	require.NoError(t, err)
	require.Equal(t, string(before), string(after), "the retry appends nothing")

	entries, err := s.ListAudit(ctx, storage.AuditFilter{TaskID: id})
	require.NoError(t, err)
	require.Len(t, entries, 2)
	require.Equal(t, storage.AuditEntry{
		ID: id + "/v2", TaskID: id, Time: fixedTime.Add(time.Minute), Actor: "workflow",
		Action: storage.AuditTransition, Before: storage.StatusPending, After: storage.StatusRunning, Version: 2,
	}, entries[1])

	// The same for Create: entry appended, task file never renamed.
	id2 := storagetest.NewID()
	require.NoError(t, s.AppendAudit(ctx, storage.AuditEntry{
		ID: storage.AuditCreateID(id2), TaskID: id2, Time: fixedTime, Actor: "workflow",
		Action: storage.AuditCreate, After: storage.StatusPending, Version: 1,
	}))
	require.NoError(t, s.Create(ctx, task(id2, storage.StatusPending, fixedTime)))
	require.Equal(t, []string{id2 + "/create"}, auditIDs(t, s, id2))
	_, err = s.Get(ctx, id2)
	require.NoError(t, err)
}

// TestFilesystemAuditSharedDirectory: stores on one data dir (other file
// descriptions, so the flock is what serialises them) append the same
// entries and race projections; every entry is stored once and the
// transition chain stays consistent.
func TestFilesystemAuditSharedDirectory(t *testing.T) {
	dataDir := t.TempDir()
	stores := []*storage.Filesystem{newFS(t, dataDir), newFS(t, dataDir), newFS(t, dataDir)}
	ctx := context.Background()
	id := storagetest.NewID()
	statusOf := func(v int64) storage.TaskStatus {
		if v%2 == 0 {
			return storage.StatusRunning
		}
		return storage.StatusPending
	}
	const last = 90
	var wg sync.WaitGroup
	for w, s := range stores {
		wg.Go(func() {
			for v := int64(w + 1); v <= last; v += int64(len(stores)) {
				tk := task(id, statusOf(v), fixedTime)
				tk.Version = v
				tk.UpdatedAt = fixedTime.Add(time.Duration(v) * time.Second)
				assert.NoError(t, s.Put(ctx, tk))
			}
			for i := range 30 {
				assert.NoError(t, s.AppendAudit(ctx, storage.AuditEntry{
					ID: fmt.Sprintf("api/%02d", i), TaskID: id, Time: fixedTime.Add(time.Hour), Action: "x",
				}))
			}
		})
	}
	wg.Wait()
	got, err := stores[0].ListAudit(ctx, storage.AuditFilter{TaskID: id})
	require.NoError(t, err)
	prev, api := storage.TaskStatus(""), 0
	seen := map[string]bool{}
	for _, e := range got {
		require.False(t, seen[e.ID], "duplicate %s", e.ID)
		seen[e.ID] = true
		if e.Action == "x" {
			api++
			continue
		}
		require.Equal(t, prev, e.Before, e.ID)
		require.Equal(t, statusOf(e.Version), e.After, e.ID)
		prev = e.After
	}
	require.Equal(t, 30, api)
	stored, err := stores[1].Get(ctx, id)
	require.NoError(t, err)
	require.Equal(t, stored.Status, prev)
}

func TestFilesystemAuditIgnoresStrays(t *testing.T) {
	dataDir := t.TempDir()
	var logs logBuffer
	s := newFS(t, dataDir).WithLogger(slog.New(slog.NewTextHandler(&logs, nil)))
	ctx := context.Background()
	id := storagetest.NewID()
	require.NoError(t, s.Create(ctx, task(id, storage.StatusPending, fixedTime)))

	auditDir := filepath.Join(dataDir, "queue.rkvs", "audit")
	other := storagetest.NewID()
	for name, content := range map[string]string{
		"README.txt":                               `{"id":"a","task_id":"` + id + `"}` + "\n",
		strings.ToUpper(other) + ".jsonl":          `{"id":"b","task_id":"` + strings.ToUpper(other) + `"}` + "\n",
		storagetest.NewID() + ".jsonl.bak":         `{"id":"c"}` + "\n",
		other + ".jsonl":                           `{"id":"d","task_id":"` + id + `"}` + "\n" + `{"task_id":"` + other + `"}` + "\n\n",
		filepath.Join("..", "tasks", "stray.json"): "{}",
	} {
		require.NoError(t, os.WriteFile(filepath.Join(auditDir, name), []byte(content), 0o644))
	}
	require.NoError(t, os.Mkdir(filepath.Join(auditDir, storagetest.NewID()+".jsonl"), 0o755))

	got, err := s.ListAudit(ctx, storage.AuditFilter{})
	require.NoError(t, err)
	require.Len(t, got, 1, "%+v", got)
	require.Equal(t, id+"/create", got[0].ID)
	require.Contains(t, logs.String(), "entry of task", "a line of another task is skipped and logged")

	// IDs lists task files only, corrupt ones included; no strays.
	corrupt := storagetest.NewID()
	require.NoError(t, os.WriteFile(filepath.Join(tasksDir(dataDir), corrupt+".json"), []byte("{garbage"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(tasksDir(dataDir), ".tmp-"+storagetest.NewID()+"-1"), []byte("{}"), 0o644))
	ids, err := s.IDs(ctx)
	require.NoError(t, err)
	require.ElementsMatch(t, []string{id, corrupt}, ids)
}
