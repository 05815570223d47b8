package storage_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/storage/storagetest"
)

// The backend helpers are the contract both backends share; the
// conformance suite checks them through each backend, these tests pin the
// helpers themselves.

func TestPrepareWriteAndDecodeTask(t *testing.T) {
	_, _, err := storage.PrepareWrite(storage.Task{ID: "nope"})
	require.ErrorIs(t, err, storage.ErrInvalidID)

	_, _, err = storage.PrepareWrite(storage.Task{ID: storagetest.NewID(), Environment: json.RawMessage("{")})
	require.ErrorContains(t, err, "storage: encode task")

	local := time.FixedZone("x", 3600)
	in := storage.Task{ID: storagetest.NewID(), Status: storage.StatusPending, CreatedAt: time.Date(2025, 1, 2, 3, 4, 5, 6000, local)}
	got, doc, err := storage.PrepareWrite(in)
	require.NoError(t, err)
	assert.Equal(t, storage.Normalize(in), got, "normalized")
	assert.Equal(t, time.UTC, got.CreatedAt.Location())

	back, err := storage.DecodeTask(in.ID, doc)
	require.NoError(t, err)
	assert.Equal(t, got, back, "the document round-trips")

	_, err = storage.DecodeTask(storagetest.NewID(), doc)
	require.ErrorContains(t, err, "content has id")
	_, err = storage.DecodeTask(in.ID, []byte("{"))
	require.Error(t, err)
}

func TestAuditEntriesOfWrites(t *testing.T) {
	ctx := storage.WithActor(context.Background(), "workflow")
	at := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	task := storage.Task{ID: storagetest.NewID(), Status: storage.StatusRunning, CreatedAt: at.Add(-time.Hour), UpdatedAt: at, Version: 3}

	assert.Equal(t, storage.AuditEntry{
		ID: storage.AuditCreateID(task.ID), TaskID: task.ID, Time: at, Actor: "workflow",
		Action: storage.AuditCreate, After: storage.StatusRunning, Version: 3,
	}, storage.CreateAuditEntry(ctx, task))
	assert.Equal(t, storage.AuditEntry{
		ID: storage.AuditTransitionID(task.ID, 3), TaskID: task.ID, Time: at, Actor: "workflow",
		Action: storage.AuditTransition, Before: storage.StatusPending, After: storage.StatusRunning, Version: 3,
	}, storage.TransitionAuditEntry(ctx, task, storage.StatusPending))

	// Without UpdatedAt the creation time is the entry's time.
	task.UpdatedAt = time.Time{}
	assert.Equal(t, at.Add(-time.Hour), storage.CreateAuditEntry(ctx, task).Time)
}

func TestPrepareAuditEntry(t *testing.T) {
	ctx := storage.WithActor(context.Background(), "alice")
	_, err := storage.PrepareAuditEntry(ctx, storage.AuditEntry{ID: "x", TaskID: "nope"})
	require.ErrorIs(t, err, storage.ErrInvalidID)
	id := storagetest.NewID()
	_, err = storage.PrepareAuditEntry(ctx, storage.AuditEntry{TaskID: id})
	require.ErrorContains(t, err, "has no id")

	before := time.Now()
	e, err := storage.PrepareAuditEntry(ctx, storage.AuditEntry{ID: "x", TaskID: id})
	require.NoError(t, err)
	assert.Equal(t, "alice", e.Actor)
	assert.False(t, e.Time.Before(before))

	at := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	e, err = storage.PrepareAuditEntry(ctx, storage.AuditEntry{ID: "x", TaskID: id, Actor: "bob", Time: at})
	require.NoError(t, err)
	assert.Equal(t, "bob", e.Actor, "an explicit actor is kept")
	assert.Equal(t, at, e.Time)
}

func TestPrepareAuditFilter(t *testing.T) {
	_, err := storage.PrepareAuditFilter(storage.AuditFilter{TaskID: "nope"})
	require.ErrorIs(t, err, storage.ErrInvalidID)
	f, err := storage.PrepareAuditFilter(storage.AuditFilter{})
	require.NoError(t, err)
	assert.Equal(t, storage.DefaultAuditLimit, f.Limit)
	f, err = storage.PrepareAuditFilter(storage.AuditFilter{Limit: 7})
	require.NoError(t, err)
	assert.Equal(t, 7, f.Limit)
}

func TestNewestAudit(t *testing.T) {
	at := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	entries := []storage.AuditEntry{
		{ID: "c", Time: at.Add(time.Second)},
		{ID: "b", Time: at},
		{ID: "a", Time: at},
		{ID: "d", Time: at.Add(2 * time.Second)},
	}
	ids := func(es []storage.AuditEntry) (out []string) {
		for _, e := range es {
			out = append(out, e.ID)
		}
		return out
	}
	assert.Equal(t, []string{"a", "b", "c", "d"}, ids(storage.NewestAudit(entries, 10)))
	assert.Equal(t, []string{"c", "d"}, ids(storage.NewestAudit(entries, 2)))
	empty := storage.NewestAudit(nil, 10)
	require.NotNil(t, empty, "an empty trail is [] in JSON, not null")
	assert.Empty(t, empty)
}

func TestListFilterPage(t *testing.T) {
	for _, c := range []struct{ limit, offset, wantOffset, wantLimit int }{
		{0, 0, 0, storage.DefaultLimit},
		{-5, -3, 0, storage.DefaultLimit},
		{10, 20, 20, 10},
		{storage.MaxLimit + 1, 0, 0, storage.MaxLimit},
	} {
		offset, limit := storage.ListFilter{Limit: c.limit, Offset: c.offset}.Page()
		assert.Equal(t, [2]int{c.wantOffset, c.wantLimit}, [2]int{offset, limit}, "%+v", c)
	}
}
