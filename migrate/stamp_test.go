package migrate_test

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/migrate"
	"github.com/provisioning/orchestrator/migrate/migratetest"
	"github.com/provisioning/orchestrator/storage"
)

// countingSource is a filesystem source (a storage.ChangeStamper, through
// the embedded store) that counts the reads of each task.
type countingSource struct {
	*storage.Filesystem
	mu    sync.Mutex
	reads map[string]int
}

func (c *countingSource) Get(ctx context.Context, id string) (storage.Task, error) {
	c.mu.Lock()
	c.reads[id]++
	c.mu.Unlock()
	return c.Filesystem.Get(ctx, id)
}

// takeReads returns the reads counted so far and starts counting afresh.
func (c *countingSource) takeReads() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.reads
	c.reads = map[string]int{}
	return r
}

// settledSource seeds n tasks into a filesystem store and waits until
// every task has a change stamp (its files are older than the store
// trusts timestamps for, 2 s).
func settledSource(t *testing.T, n int) (*countingSource, []string) {
	t.Helper()
	fs, err := storage.NewFilesystem(t.TempDir())
	require.NoError(t, err)
	t.Cleanup(func() { fs.Close() })
	ids := migratetest.Seed(t, fs, n)
	require.Eventually(t, func() bool {
		for _, id := range ids {
			if st, err := fs.ChangeStamp(context.Background(), id); err != nil || st == "" {
				return false
			}
		}
		return true
	}, 15*time.Second, 50*time.Millisecond)
	return &countingSource{Filesystem: fs, reads: map[string]int{}}, ids
}

// With a source that gives change stamps, a record is read once: the delta
// pass and the verification read again only what changed after the full
// pass (and what changed too recently to be judged by its stamp). Changes
// made between the passes still arrive; with IgnoreChangeStamps every
// record is read in every pass.
func TestMigrateReadsUnchangedSourceOnce(t *testing.T) {
	ctx := context.Background()
	src, ids := settledSource(t, 40)
	wctx := storage.WithActor(ctx, "workflow")
	changed, appended, deleted := ids[0], ids[1], ids[2]
	wantAudit := 1 // the appended entry, and the changed task's transition entry if its status changed
	dst := newFilesystem(t)
	rep, err := migrate.Run(ctx, src, dst, migrate.Options{
		AfterPass: func(st migrate.PassStats) {
			if st.Pass != 1 {
				return
			}
			cur, err := src.Get(ctx, changed)
			require.NoError(t, err)
			next := migratetest.Advance(cur)
			if next.Status != cur.Status {
				wantAudit++
			}
			require.NoError(t, src.Put(wctx, next))
			require.NoError(t, src.AppendAudit(wctx, storage.AuditEntry{ID: appended + "/late", TaskID: appended, Action: "annotate"}))
			require.NoError(t, src.Delete(wctx, deleted))
		},
	})
	reads := src.takeReads()
	require.NoError(t, err)
	require.True(t, rep.OK(), "%+v", rep.Mismatches)
	delta := rep.PassStats[1]
	require.Equal(t, migrate.PassDelta, delta.Kind)
	assert.Equal(t, 1, delta.Copied, "the changed task")
	assert.Equal(t, wantAudit, delta.AuditCopied)
	assert.Equal(t, 1, delta.Deleted)
	for _, id := range ids[3:] {
		assert.Equal(t, 1, reads[id], "unchanged %s is read once", id)
	}
	// Pass 1, the AfterPass hook, the delta pass (changes found), the
	// verification: their files are too recent for a stamp to be trusted.
	assert.GreaterOrEqual(t, reads[changed], 4)
	assert.GreaterOrEqual(t, reads[appended], 3)
	assert.Equal(t, 39, rep.Verified)
	assert.Equal(t, 39, migratetest.AssertIdentical(t, src, dst))
	_, err = dst.Get(ctx, deleted)
	require.ErrorIs(t, err, storage.ErrNotFound)

	src.takeReads()
	rep, err = migrate.Run(ctx, src, newFilesystem(t), migrate.Options{IgnoreChangeStamps: true})
	reads = src.takeReads()
	require.NoError(t, err)
	require.True(t, rep.OK())
	for _, id := range ids[3:] {
		assert.Equal(t, 3, reads[id], "ignoring stamps, %s is read by the full pass, the delta pass and the verification", id)
	}
}

// The verification reads the whole target even where the source's stamps
// say the source is unchanged: a target copy changed or damaged after the
// last pass is noticed (and, being fixable, copied again).
func TestMigrateVerificationReadsTargetDespiteStamps(t *testing.T) {
	ctx := context.Background()
	src, ids := settledSource(t, 30)
	dataDir := t.TempDir()
	dst, err := storage.NewFilesystem(dataDir)
	require.NoError(t, err)
	defer dst.Close()
	rewritten, lostAudit := ids[4], ids[5]
	rep, err := migrate.Run(ctx, src, dst, migrate.Options{
		AfterPass: func(st migrate.PassStats) {
			if st.Kind != migrate.PassDelta {
				return
			}
			// Same version, other content: Put accepts it.
			cur, err := dst.Get(ctx, rewritten)
			require.NoError(t, err)
			cur.Name += " (edited in the target)"
			require.NoError(t, dst.Put(ctx, cur))
			require.NoError(t, os.Remove(filepath.Join(dataDir, filepath.FromSlash(storage.AuditSubdir), lostAudit+".jsonl")))
		},
	})
	require.NoError(t, err)
	require.True(t, rep.OK(), "%+v", rep.Mismatches)
	verify := rep.PassStats[len(rep.PassStats)-1]
	require.Equal(t, migrate.PassVerify, verify.Kind)
	assert.Equal(t, 1, verify.Copied, "the edited task copied again")
	assert.Positive(t, verify.AuditCopied, "the lost audit trail copied again")
	reads := src.takeReads()
	assert.Equal(t, 1, reads[ids[6]], "an untouched record is still read once")
	assert.GreaterOrEqual(t, reads[rewritten], 2, "a record whose copy differs is compared with a fresh read of the source")
	assert.Equal(t, 30, rep.Verified)
	assert.Equal(t, 30, migratetest.AssertIdentical(t, src, dst))
}

// The checkpoint keeps the stamps: a rerun against an unchanged source
// reads no source record at all and still verifies every one against the
// target.
func TestMigrateRerunFromCheckpointReadsNoUnchangedSource(t *testing.T) {
	ctx := context.Background()
	src, ids := settledSource(t, 30)
	dst := newFilesystem(t)
	checkpoint := filepath.Join(t.TempDir(), "cp.json")
	rep, err := migrate.Run(ctx, src, dst, migrate.Options{CheckpointPath: checkpoint})
	require.NoError(t, err)
	require.True(t, rep.OK())
	src.takeReads()

	rep, err = migrate.Run(ctx, src, dst, migrate.Options{CheckpointPath: checkpoint})
	reads := src.takeReads()
	require.NoError(t, err)
	require.True(t, rep.OK(), "%+v", rep.Mismatches)
	assert.Empty(t, reads, "no source record read")
	assert.Equal(t, 30, rep.Resumed)
	assert.Equal(t, 30, rep.Verified)

	// A change after the checkpoint is read and copied.
	cur, err := src.Get(ctx, ids[9])
	require.NoError(t, err)
	require.NoError(t, src.Put(storage.WithActor(ctx, "workflow"), migratetest.Advance(cur)))
	src.takeReads()
	rep, err = migrate.Run(ctx, src, dst, migrate.Options{CheckpointPath: checkpoint})
	reads = src.takeReads()
	require.NoError(t, err)
	require.True(t, rep.OK())
	assert.Equal(t, 1, rep.Copied)
	assert.Positive(t, reads[ids[9]])
	assert.Zero(t, reads[ids[10]])
	assert.Equal(t, 30, migratetest.AssertIdentical(t, src, dst))
}
