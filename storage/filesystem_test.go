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
