package storage

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The newest entries across tasks come from the most recently written
// audit files, so GET /audit reads a handful of files, not every task's;
// an entry up to auditMtimeSlack newer than its file (coarse mtimes, a
// Temporal server's clock ahead of ours) is still found.
func TestNewestAuditReadsOnlyRecentFiles(t *testing.T) {
	f, err := NewFilesystem(t.TempDir())
	require.NoError(t, err)
	defer f.Close()
	ctx := context.Background()
	now := time.Now()
	base := now.Add(-2 * time.Hour)
	const n = 300
	ids := make([]string, n)
	for i := range n {
		ids[i] = randomID()
		at := base.Add(time.Duration(i) * time.Second)
		// Entries recorded long after their time, as a migration does:
		// the file's mtime is still the entry's time.
		require.NoError(t, f.AppendAudit(ctx, AuditEntry{ID: ids[i] + "/e", TaskID: ids[i], Time: at, Actor: "t", Action: "note", Version: 1}))
		info, err := os.Stat(f.auditPath(ids[i]))
		require.NoError(t, err)
		require.True(t, at.Equal(info.ModTime()), "mtime %v, want the entry's time %v", info.ModTime(), at)
	}
	// Stamped 10 s ahead by a skewed clock, and the file has its write time
	// (a crash before the mtime was set).
	skewed := randomID()
	require.NoError(t, f.AppendAudit(ctx, AuditEntry{ID: skewed + "/e", TaskID: skewed, Time: now.Add(10 * time.Second), Actor: "t", Action: "note", Version: 1}))
	require.NoError(t, os.Chtimes(f.auditPath(skewed), now, now))

	got, err := f.ListAudit(ctx, AuditFilter{Limit: 5})
	require.NoError(t, err)
	require.Len(t, got, 5)
	assert.Equal(t, skewed, got[4].TaskID, "the newest entry")
	for k, id := range ids[n-4:] {
		assert.Equal(t, id, got[k].TaskID)
	}
	assert.LessOrEqual(t, f.auditReads.Load(), int64(5+30+2), "read files: the 5 newest, those within the 30 s slack, one to stop")
}
