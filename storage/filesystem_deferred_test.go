package storage_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/storage"
)

// CreateDeferred's record and audit entry are there before its commit; the
// commit still succeeds after a Put replaced the file (it fsyncs by path);
// the ID is taken as with Create.
func TestFilesystemCreateDeferred(t *testing.T) {
	fs, err := storage.NewFilesystem(t.TempDir())
	require.NoError(t, err)
	t.Cleanup(func() { _ = fs.Close() })
	ctx := storage.WithActor(context.Background(), "alice")
	now := time.Now().UTC().Truncate(time.Microsecond)
	task := storage.Normalize(storage.Task{ID: uuid.NewString(), Name: "server create demo", Command: "server create",
		Status: storage.StatusPending, CreatedAt: now, UpdatedAt: now, WorkflowType: "ServerCreate"})

	commit, err := fs.CreateDeferred(ctx, task)
	require.NoError(t, err)
	got, err := fs.Get(ctx, task.ID)
	require.NoError(t, err, "visible before the commit")
	assert.Equal(t, storage.StatusPending, got.Status)
	page, total, err := fs.List(ctx, storage.ListFilter{Status: storage.StatusPending})
	require.NoError(t, err)
	assert.Equal(t, 1, total)
	require.Len(t, page, 1)

	// The workflow's first projection may land before the commit runs.
	running := got
	running.Status, running.Version = storage.StatusRunning, got.Version+1
	require.NoError(t, fs.Put(ctx, running))
	require.NoError(t, commit())

	_, err = fs.CreateDeferred(ctx, task)
	require.ErrorIs(t, err, storage.ErrExists)
	entries, err := fs.ListAudit(ctx, storage.AuditFilter{TaskID: task.ID})
	require.NoError(t, err)
	require.NotEmpty(t, entries)
	assert.Equal(t, storage.AuditCreate, entries[0].Action)
	assert.Equal(t, "alice", entries[0].Actor)
	got, err = fs.Get(ctx, task.ID)
	require.NoError(t, err)
	assert.Equal(t, storage.StatusRunning, got.Status, "the commit does not bring the Pending record back")
}
