package migrate_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/migrate"
	"github.com/provisioning/orchestrator/migrate/migratetest"
	"github.com/provisioning/orchestrator/storage"
)

// The direct canonical encoding (the checksums' fast path) produces the
// same bytes as the general route, for the store's types with every kind
// of content: escapes, HTML characters, non-ASCII, invalid UTF-8, nil and
// empty slices, omitted fields, batches, environments with numbers.
func TestCanonicalFastPath(t *testing.T) {
	odd := []string{"", "plain", `quote"d <&> \back`, "tab\tnl\nnul\x00", "done ✓ é 日本",
		"bad \xff\xfe utf8", "sep \u2028 \u2029", "\x7f del", "emoji 🎉"}
	at := time.Date(2026, 12, 3, 1, 2, 3, 456789000, time.UTC)
	var tasks []storage.Task
	for i := range 30 {
		tk := migratetest.Task(i)
		for range i % 4 {
			tk = migratetest.Advance(tk)
		}
		tasks = append(tasks, storage.Normalize(tk))
	}
	for i, s := range odd {
		tk := storage.Normalize(migratetest.Task(100 + i))
		tk.Name, tk.Command, tk.Args = s, s, []string{s, s + "x"}
		tk.Output, tk.Error, tk.Parent = &s, &s, s
		tk.Steps[0].Output, tk.Steps[0].Error = s, s
		tk.Environment = json.RawMessage(`{"k": "` + "v" + `", "n": [1.0, 2.50, 3e2, -0, 1e400], "s": "<&>", "z": null}`)
		tk.Batch = &storage.Batch{Mode: "apply", Phase: s, Parallelism: 3, FailFast: i%2 == 0,
			Operations: []storage.BatchOperation{{ID: s, Type: "server", DependsOn: []string{s}, TaskID: tk.ID,
				Status: storage.StatusRunning, StartedAt: &at, Plan: s}},
			Approval:      &storage.Approval{Decision: "pending", Deadline: at, Comment: s},
			Compensations: []storage.Compensation{{Operation: s, Args: nil, Status: storage.StatusFailed, CompletedAt: &at}}}
		tasks = append(tasks, tk)
	}
	bare := storage.Task{ID: "x", CreatedAt: at, UpdatedAt: at}
	tasks = append(tasks, bare, storage.Task{ID: "y", Batch: &storage.Batch{}})
	for i, tk := range tasks {
		want, err := migrate.SlowCanonicalJSON(tk)
		require.NoError(t, err)
		got, err := migrate.FastCanonicalJSON(tk)
		require.NoError(t, err, "task %d", i)
		assert.Equal(t, string(want), string(got), "task %d", i)
	}
	for i, s := range odd {
		e := storage.AuditEntry{ID: s + "/v1", TaskID: s, Time: at, Actor: s, Action: "annotate",
			Before: storage.StatusRunning, Version: int64(i) - 3, Detail: s}
		want, err := migrate.SlowCanonicalJSON(e)
		require.NoError(t, err)
		got, err := migrate.FastCanonicalJSON(e)
		require.NoError(t, err)
		assert.Equal(t, string(want), string(got), "entry %d", i)
	}
	// Invalid environment JSON: the fast path declines, Checksum fails as before.
	bad := migratetest.Task(1)
	bad.Environment = json.RawMessage(`{} x`)
	_, err := migrate.FastCanonicalJSON(bad)
	require.Error(t, err)
	_, err = migrate.Checksum(bad)
	require.Error(t, err)
}

func BenchmarkChecksum(b *testing.B) {
	tk := migratetest.Advance(migratetest.Advance(migratetest.Task(0)))
	e := storage.AuditEntry{ID: tk.ID + "/v2", TaskID: tk.ID, Time: tk.UpdatedAt, Actor: "workflow", Action: "transition",
		Before: storage.StatusPending, After: storage.StatusRunning, Version: 2}
	b.Run("task", func(b *testing.B) {
		for b.Loop() {
			_, _ = migrate.Checksum(tk)
		}
	})
	b.Run("task-slow", func(b *testing.B) {
		for b.Loop() {
			_, _ = migrate.SlowCanonicalJSON(storage.Normalize(tk))
		}
	})
	b.Run("audit", func(b *testing.B) {
		for b.Loop() {
			_, _ = migrate.AuditChecksum(e)
		}
	})
}
