package migrate_test

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/internal/app"
	"github.com/provisioning/orchestrator/migrate"
	"github.com/provisioning/orchestrator/migrate/migratetest"
	"github.com/provisioning/orchestrator/storage"
)

func TestMain(m *testing.M) {
	migratetest.RunChildIfRequested()
	os.Exit(m.Run())
}

func newFilesystem(tb testing.TB) storage.Store {
	fs, err := storage.NewFilesystem(tb.TempDir())
	require.NoError(tb, err)
	return fs
}

// filesystemSource is a filesystem store holding n tasks written directly
// (see writeFilesystemTasks), closed when the benchmark ends.
func filesystemSource(b *testing.B, n int) storage.Store {
	dir := b.TempDir()
	writeFilesystemTasks(b, dir, n)
	src, err := storage.NewFilesystem(dir)
	require.NoError(b, err)
	b.Cleanup(func() { src.Close() })
	return src
}

func TestMigrateFilesystemToFilesystem(t *testing.T) {
	migratetest.RunMigrationSuite(t, newFilesystem, newFilesystem)
}

func TestKillMidwayAndRerunCLI(t *testing.T) {
	migratetest.RunKillResume(t, migratetest.FilesystemCLIStore, migratetest.FilesystemCLIStore, 1000)
}

func TestChecksum(t *testing.T) {
	task := migratetest.Advance(migratetest.Task(0)) // has an environment
	sum, err := migrate.Checksum(task)
	require.NoError(t, err)
	require.Len(t, sum, 64)

	// Same content, other representation: same checksum.
	same := task
	same.CreatedAt = task.CreatedAt.In(time.FixedZone("X", -7*3600))
	same.Environment = json.RawMessage(`{ "ratio": 0.250, "ttl_seconds": 3.6e3,
		"nodes": [ {"ip": "10.0.0.0", "name": "n1"} ], "name": "env-0" }`)
	s2, err := migrate.Checksum(same)
	require.NoError(t, err)
	assert.Equal(t, sum, s2)

	a := migratetest.Task(1)
	a.Environment, a.Args, a.Dependencies, a.Steps = nil, nil, nil, nil
	b := a
	b.Environment, b.Args, b.Dependencies, b.Steps = json.RawMessage("null"), []string{}, []string{}, []storage.StepResult{}
	sa, _ := migrate.Checksum(a)
	sb, _ := migrate.Checksum(b)
	assert.Equal(t, sa, sb, "nil vs empty slices, absent vs null environment")

	// Any change of content changes it.
	for name, change := range map[string]func(*storage.Task){
		"version": func(t *storage.Task) { t.Version++ },
		"status":  func(t *storage.Task) { t.Status = storage.StatusFailed },
		"output":  func(t *storage.Task) { out := "x"; t.Output = &out },
		"time µs": func(t *storage.Task) { t.UpdatedAt = t.UpdatedAt.Add(time.Microsecond) },
		"step":    func(t *storage.Task) { t.Steps = append([]storage.StepResult{}, t.Steps...); t.Steps[0].Attempts++ },
		"env":     func(t *storage.Task) { t.Environment = json.RawMessage(`{"name":"other"}`) },
		"env num": func(t *storage.Task) {
			t.Environment = json.RawMessage(strings.Replace(string(t.Environment), "0.25", "0.26", 1))
		},
		"arg":      func(t *storage.Task) { t.Args = append([]string{}, t.Args...); t.Args[0] = "--x" },
		"progress": func(t *storage.Task) { t.Progress.Done++ },
	} {
		changed := task
		change(&changed)
		s, err := migrate.Checksum(changed)
		require.NoError(t, err)
		assert.NotEqual(t, sum, s, name)
	}
}

// runMigrateCLI runs `orchestrator migrate args...` in this process.
func runMigrateCLI(t *testing.T, env map[string]string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errb bytes.Buffer
	err = app.RunMigrate(context.Background(), args, func(k string) string { return env[k] }, &out, &errb)
	return out.String(), errb.String(), err
}

func TestCLI(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	fromDir, toDir := filepath.Join(dir, "from"), filepath.Join(dir, "to")
	src, err := storage.NewFilesystem(fromDir)
	require.NoError(t, err)
	ids := migratetest.Seed(t, src, 120)
	require.NoError(t, src.Close())

	// Dry run through the environment only.
	env := map[string]string{
		"ORCHESTRATOR_MIGRATE_FROM": "filesystem", "ORCHESTRATOR_MIGRATE_FROM_DATA_DIR": fromDir,
		"ORCHESTRATOR_MIGRATE_TO": "filesystem", "ORCHESTRATOR_MIGRATE_TO_DATA_DIR": toDir,
		"ORCHESTRATOR_MIGRATE_DRY_RUN": "true",
	}
	stdout, stderr, err := runMigrateCLI(t, env)
	require.NoError(t, err, stderr)
	assert.Contains(t, stdout, "dry run (nothing written): filesystem:"+fromDir+" -> filesystem:"+toDir)
	assert.Contains(t, stdout, "to copy:           120 tasks")
	assert.Contains(t, stderr, "pass 1 (full): 120/120 tasks (100%), would copy 120")
	dst, err := storage.NewFilesystem(toDir)
	require.NoError(t, err)
	n, err := dst.IDs(ctx)
	require.NoError(t, err)
	assert.Empty(t, n)

	// The real thing; the flag wins over the environment.
	checkpoint := filepath.Join(dir, "cp.json")
	stdout, stderr, err = runMigrateCLI(t, env, "--dry-run=false", "--concurrency", "3", "--checkpoint", checkpoint)
	require.NoError(t, err, stderr)
	t.Logf("stdout:\n%s", stdout)
	assert.Contains(t, stdout, "migration: filesystem:"+fromDir+" -> filesystem:"+toDir)
	assert.Contains(t, stdout, "source tasks:      120")
	assert.Contains(t, stdout, "target tasks:      120 (0 before)")
	assert.Contains(t, stdout, "copied:            120 tasks")
	assert.Contains(t, stdout, "verification:      OK: 120/120 tasks with equal sha256 content checksums")
	assert.Regexp(t, `rate: +\d+ tasks/s`, stdout)
	assert.Contains(t, stderr, "pass 1 (full): 120/120 tasks (100%), copied 120, identical 0")
	assert.NotContains(t, stdout, "pass 1")
	assert.FileExists(t, checkpoint)

	// A target record newer than the source's: mismatch, non-zero exit.
	task, err := dst.Get(ctx, ids[5])
	require.NoError(t, err)
	task.Version += 3
	require.NoError(t, dst.Put(ctx, task))
	require.NoError(t, dst.Close())
	stdout, _, err = runMigrateCLI(t, nil, "--from", "filesystem", "--from-data-dir", fromDir, "--to", "filesystem", "--to-data-dir", toDir)
	require.ErrorIs(t, err, migrate.ErrMismatch)
	assert.Contains(t, stdout, "verification:      FAILED: 119/120 tasks verified")
	assert.Contains(t, stdout, ids[5]+": target has version")

	// Stamps can be ignored, by flag or environment.
	sides := []string{"--from", "filesystem", "--from-data-dir", fromDir, "--to", "filesystem", "--to-data-dir", toDir}
	cfg, err := app.ParseMigrateConfig(append(sides, "--ignore-change-stamps"), func(string) string { return "" }, io.Discard)
	require.NoError(t, err)
	assert.True(t, cfg.IgnoreChangeStamps)
	cfg, err = app.ParseMigrateConfig(sides, func(k string) string {
		return map[string]string{"ORCHESTRATOR_MIGRATE_IGNORE_CHANGE_STAMPS": "true"}[k]
	}, io.Discard)
	require.NoError(t, err)
	assert.True(t, cfg.IgnoreChangeStamps)

	// Through app.Run (what main calls), the subcommand is dispatched.
	err = app.Run(ctx, []string{"migrate", "--from", "filesystem"}, &bytes.Buffer{})
	require.ErrorContains(t, err, "--from-data-dir: is required with --from filesystem")
}

func TestCLIBadValues(t *testing.T) {
	dir := t.TempDir()
	fs, err := storage.NewFilesystem(dir) // a (empty) source store
	require.NoError(t, err)
	require.NoError(t, fs.Close())
	cases := []struct {
		args []string
		env  map[string]string
		want []string
	}{
		{nil, nil, []string{"--from: is required", "--to: is required"}},
		{[]string{"--from", "mysql", "--to", "filesystem", "--to-data-dir", dir}, nil, []string{`--from: "mysql" is not one of filesystem, surrealdb-embedded, surrealdb-server`}},
		{[]string{"--from", "filesystem", "--from-data-dir", dir, "--to", "surrealdb-server"}, nil, []string{"--to-surrealdb-url: is required with --to surrealdb-server"}},
		{[]string{"--from", "filesystem", "--from-data-dir", dir, "--to", "surrealdb-server", "--to-surrealdb-url", "ftp://x"}, nil, []string{"--to-surrealdb-url:", "scheme must be ws, wss, http or https"}},
		{[]string{"--from", "filesystem", "--from-data-dir", dir, "--to", "filesystem", "--to-data-dir", dir + "/."}, nil, []string{"--to: is the same store as --from", "refusing"}},
		{[]string{"--from", "surrealdb-server", "--from-surrealdb-url", "ws://localhost:8000/rpc", "--to", "surrealdb-server", "--to-surrealdb-url", "http://127.0.0.1:8000"}, nil, []string{"--to: is the same store as --from"}},
		{[]string{"--from", "surrealdb-embedded", "--from-data-dir", dir, "--to", "surrealdb-embedded", "--to-data-dir", dir, "--to-surrealdb-namespace", "other"}, nil, []string{"--to: is the same store as --from"}},
		{[]string{"--from", "filesystem", "--from-data-dir", dir, "--to", "filesystem", "--to-data-dir", dir + "/b", "--concurrency", "0"}, nil, []string{"--concurrency: 0 must be from 1 to 256"}},
		{[]string{"--from", "filesystem", "--from-data-dir", dir, "--to", "filesystem", "--to-data-dir", dir + "/b", "--checkpoint", "/nonexistent/dir/cp.json"}, nil, []string{"--checkpoint: directory /nonexistent/dir does not exist"}},
		{[]string{"--from", "filesystem", "--from-data-dir", dir, "--to", "filesystem", "--to-data-dir", dir + "/b"}, map[string]string{"ORCHESTRATOR_MIGRATE_CONCURRENCY": "many"}, []string{`invalid value "many" for ORCHESTRATOR_MIGRATE_CONCURRENCY (flag --concurrency)`}},
		{[]string{"--from", "filesystem", "--from-data-dir", dir, "--to", "filesystem", "--to-data-dir", dir + "/b", "extra"}, nil, []string{`unexpected argument "extra"`}},
		{[]string{"--from", "filesystem", "--from-data-dir", dir + "/typo", "--to", "filesystem", "--to-data-dir", dir + "/b"}, nil, []string{"--from-data-dir: " + dir + "/typo holds no filesystem store (no queue.rkvs/tasks)"}},
	}
	for i, c := range cases {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			_, err := app.ParseMigrateConfig(c.args, func(k string) string { return c.env[k] }, &bytes.Buffer{})
			require.Error(t, err)
			for _, w := range c.want {
				assert.Contains(t, err.Error(), w)
			}
		})
	}
	// Valid: filesystem to an embedded SurrealDB in the same data dir (a
	// different store), and two databases of one server.
	_, err = app.ParseMigrateConfig([]string{"--from", "filesystem", "--from-data-dir", dir, "--to", "surrealdb-embedded", "--to-data-dir", dir}, func(string) string { return "" }, &bytes.Buffer{})
	require.NoError(t, err)
	_, err = app.ParseMigrateConfig([]string{"--from", "surrealdb-server", "--from-surrealdb-url", "ws://h:8000", "--to", "surrealdb-server", "--to-surrealdb-url", "ws://h:8000", "--to-surrealdb-database", "tasks2"}, func(string) string { return "" }, &bytes.Buffer{})
	require.NoError(t, err)
	// Help exits cleanly and lists the flags.
	var help bytes.Buffer
	_, err = app.ParseMigrateConfig([]string{"-h"}, func(string) string { return "" }, &help)
	require.ErrorIs(t, err, flag.ErrHelp)
	assert.Contains(t, help.String(), "-from-surrealdb-url")
	assert.Contains(t, help.String(), "ORCHESTRATOR_MIGRATE_")
}

// BenchmarkMigrate10k migrates 10,000 tasks (with 2-3 audit entries each)
// from one filesystem store to a fresh one per iteration and reports
// tasks/s. The source files are written directly (no fsync) to keep the
// setup short.
func BenchmarkMigrate10k(b *testing.B) {
	const n = 10_000
	migratetest.Benchmark(b, filesystemSource(b, n), n, newFilesystem)
}

// vsRawRounds is how many rounds (each: raw insert and migration, in
// alternating order) the VsRawInsert benchmarks run per iteration.
var vsRawRounds = flag.Int("bench.vsrawrounds", 2, "rounds of BenchmarkMigrateVsRawInsert*")

// BenchmarkMigrateVsRawInsert measures, in one run, the raw insert rate of
// 10,000 tasks (with their 25,000 audit entries) into a fresh filesystem
// store and the migration of the same tasks from a filesystem source into
// another fresh one (see migratetest.BenchmarkVsRawInsert).
func BenchmarkMigrateVsRawInsert(b *testing.B) {
	src := filesystemSource(b, 10_000)
	b.Run("filesystem", func(b *testing.B) {
		migratetest.BenchmarkVsRawInsert(b, src, *vsRawRounds, newFilesystem)
	})
}

// writeFilesystemTasks writes n tasks and their audit trails in the
// filesystem backend's layout, as a seeded store would hold them.
func writeFilesystemTasks(b *testing.B, dir string, n int) {
	tasksDir := filepath.Join(dir, filepath.FromSlash(storage.TasksSubdir))
	auditDir := filepath.Join(dir, filepath.FromSlash(storage.AuditSubdir))
	require.NoError(b, os.MkdirAll(tasksDir, 0o755))
	require.NoError(b, os.MkdirAll(auditDir, 0o755))
	for i := range n {
		t := migratetest.Task(i)
		entries := []storage.AuditEntry{{ID: storage.AuditCreateID(t.ID), TaskID: t.ID, Time: t.CreatedAt.UTC(),
			Actor: "workflow", Action: storage.AuditCreate, After: t.Status, Version: t.Version}}
		for range 1 + i%2 {
			before := t.Status
			t = migratetest.Advance(t)
			entries = append(entries, storage.AuditEntry{ID: storage.AuditTransitionID(t.ID, t.Version), TaskID: t.ID,
				Time: t.UpdatedAt.UTC(), Actor: "workflow", Action: storage.AuditTransition, Before: before, After: t.Status, Version: t.Version})
		}
		data, err := json.Marshal(storage.Normalize(t))
		require.NoError(b, err)
		require.NoError(b, os.WriteFile(filepath.Join(tasksDir, t.ID+".json"), append(data, '\n'), 0o644))
		var lines []byte
		for _, e := range entries {
			l, err := json.Marshal(e)
			require.NoError(b, err)
			lines = append(append(lines, l...), '\n')
		}
		require.NoError(b, os.WriteFile(filepath.Join(auditDir, t.ID+".jsonl"), lines, 0o644))
	}
}

// --validate writes nothing, says which side lacks its schema, and compares
// counts and records; --output json is the ValidateReport.
func TestCLIValidate(t *testing.T) {
	dir := t.TempDir()
	fromDir, toDir := filepath.Join(dir, "from"), filepath.Join(dir, "to")
	src, err := storage.NewFilesystem(fromDir)
	require.NoError(t, err)
	ids := migratetest.Seed(t, src, 40)
	require.NoError(t, src.Close())
	require.NoError(t, os.MkdirAll(toDir, 0o755))
	sides := []string{"--from", "filesystem", "--from-data-dir", fromDir, "--to", "filesystem", "--to-data-dir", toDir}
	validate := func() (app.ValidateReport, error) {
		t.Helper()
		out, _, err := runMigrateCLI(t, nil, append([]string{"--validate", "--output", "json"}, sides...)...)
		var rep app.ValidateReport
		require.NoError(t, json.Unmarshal([]byte(out), &rep), out)
		return rep, err
	}

	rep, err := validate()
	require.ErrorIs(t, err, app.ErrNotInSync)
	assert.True(t, rep.From.Reachable && rep.From.Schema)
	assert.True(t, rep.To.Reachable)
	assert.False(t, rep.To.Schema)
	assert.Equal(t, []string{"queue.rkvs/tasks"}, rep.To.Missing)
	assert.False(t, rep.Compared)
	assert.NoDirExists(t, filepath.Join(toDir, "queue.rkvs"), "a validation creates nothing")

	_, _, err = runMigrateCLI(t, nil, sides...)
	require.NoError(t, err)
	rep, err = validate()
	require.NoError(t, err)
	assert.True(t, rep.InSync)
	assert.Equal(t, 40, rep.From.Tasks)
	assert.Equal(t, 40, rep.To.Tasks)
	assert.Equal(t, 40, rep.Identical)

	// One task gone from the target: not in sync, one to copy; the text
	// form says so too.
	dst, err := storage.NewFilesystem(toDir)
	require.NoError(t, err)
	require.NoError(t, dst.Delete(context.Background(), ids[3]))
	require.NoError(t, dst.Close())
	rep, err = validate()
	require.ErrorIs(t, err, app.ErrNotInSync)
	assert.False(t, rep.InSync)
	assert.Equal(t, 39, rep.To.Tasks)
	assert.Equal(t, 1, rep.ToCopy)
	out, _, err := runMigrateCLI(t, nil, append([]string{"--validate"}, sides...)...)
	require.Error(t, err)
	assert.Contains(t, out, "to copy: 1 tasks")
	assert.Contains(t, out, "validation: NOT IN SYNC")

	// A missing source directory is reported, not refused by flag checks.
	rep, err = func() (app.ValidateReport, error) {
		out, _, err := runMigrateCLI(t, nil, "--validate", "--output", "json", "--from", "filesystem", "--from-data-dir",
			filepath.Join(dir, "nosuch"), "--to", "filesystem", "--to-data-dir", toDir)
		var rep app.ValidateReport
		require.NoError(t, json.Unmarshal([]byte(out), &rep), out)
		return rep, err
	}()
	require.ErrorIs(t, err, app.ErrNotInSync)
	assert.False(t, rep.From.Reachable)
	assert.Contains(t, rep.From.Error, "does not exist")

	// --checkpoint makes no sense with it.
	_, _, err = runMigrateCLI(t, nil, append([]string{"--validate", "--checkpoint", filepath.Join(dir, "ck")}, sides...)...)
	assert.ErrorContains(t, err, "--checkpoint")
}
