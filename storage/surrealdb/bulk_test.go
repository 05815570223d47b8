package surrealdb

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/internal/testsupport"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/storage/storagetest"
)

// ReadRecords returns what Get and ListAudit return, per id and in order,
// missing tasks (with or without audit entries) included.
func TestReadRecords(t *testing.T) {
	srv := testsupport.StartSurreal(t, "mem://")
	ctx := context.Background()
	s, err := New(ctx, Options{URL: srv.URL, Username: srv.User, Password: srv.Pass, Database: "bulk"})
	require.NoError(t, err)
	defer s.Close()
	var ids []string
	for i := range 300 {
		id := storagetest.NewID()
		ids = append(ids, id)
		if i%10 == 3 {
			continue // no task at all
		}
		at := time.Date(2026, 1, 1, 0, 0, i, 0, time.UTC)
		require.NoError(t, s.AppendAudit(ctx, storage.AuditEntry{ID: id + "/note", TaskID: id, Time: at, Actor: "x", Action: "annotate"}))
		if i%10 == 5 {
			continue // audit entries only
		}
		task := storage.Task{ID: id, Name: "t", Command: "c", Status: storage.StatusPending, CreatedAt: at, UpdatedAt: at, Version: 1}
		require.NoError(t, s.Put(ctx, task))
		task.Status, task.Version = storage.StatusRunning, 2
		require.NoError(t, s.Put(ctx, task))
	}
	{
		var recs []storage.BulkRecord
		for chunk := range 300 / 60 {
			got, err := s.ReadRecords(ctx, ids[chunk*60:chunk*60+60], 1000)
			require.NoError(t, err)
			recs = append(recs, got...)
		}
		require.Len(t, recs, len(ids))
		for i, r := range recs {
			assert.Equal(t, ids[i], r.ID)
			want, werr := s.Get(ctx, ids[i])
			if werr != nil {
				assert.True(t, errors.Is(r.Err, storage.ErrNotFound), "%d: %v", i, r.Err)
			} else {
				require.NoError(t, r.Err)
				assert.Equal(t, want, r.Task)
			}
			audit, err := s.ListAudit(ctx, storage.AuditFilter{TaskID: ids[i], Limit: 1000})
			require.NoError(t, err)
			assert.Equal(t, audit, r.Audit, "%d", i)
		}
	}
}
