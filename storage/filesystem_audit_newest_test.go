package storage_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/storage"
)

// GET /audit over many tasks keeps only the newest entries while reading
// (bounded memory) and still returns exactly the newest, newest last.
func TestListAuditNewestAcrossManyTasks(t *testing.T) {
	fs, err := storage.NewFilesystem(t.TempDir())
	require.NoError(t, err)
	defer fs.Close()
	ctx := context.Background()
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	n := 0
	for i := range 300 {
		id := uuid.NewString()
		for j := range 3 {
			n++
			require.NoError(t, fs.AppendAudit(ctx, storage.AuditEntry{ID: fmt.Sprintf("%s/e%d", id, j), TaskID: id,
				Time: base.Add(time.Duration(i*3+j) * time.Second), Actor: "t", Action: "note", Version: int64(j + 1)}))
		}
	}
	got, err := fs.ListAudit(ctx, storage.AuditFilter{Limit: 7})
	require.NoError(t, err)
	require.Len(t, got, 7)
	for k, e := range got {
		want := base.Add(time.Duration(n-7+k) * time.Second)
		require.True(t, want.Equal(e.Time), "entry %d: %v, want %v", k, e.Time, want)
	}
}
