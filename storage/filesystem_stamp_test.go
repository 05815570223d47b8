package storage_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/storage"
)

// A change stamp stays put while a task and its audit trail do not change,
// moves with every write to either (through the store, or around it: an
// in-place rewrite of the same size with the old mtime put back), and is
// "" while the files are too recent for their timestamps to be trusted.
func TestFilesystemChangeStamp(t *testing.T) {
	dir := t.TempDir()
	s := newFS(t, dir)
	ctx := context.Background()
	// put, audit, delete, raw rewrite, untouched; then one never created
	var ids []string
	for i := range 5 {
		ids = append(ids, fmt.Sprintf("5e7a0000-0000-4000-8000-%012d", i))
	}
	missing := fmt.Sprintf("5e7a0000-0000-4000-8000-%012d", 99)
	for _, id := range ids {
		require.NoError(t, s.Create(ctx, versioned(id, 1)))
	}
	fresh, err := s.ChangeStamp(ctx, ids[0])
	require.NoError(t, err)
	assert.Empty(t, fresh, "just written: too recent to be trusted")
	_, err = s.ChangeStamp(ctx, "../escape")
	require.Error(t, err)

	// settled waits until every stamp is usable (the files' times are
	// 2 s old) and returns them.
	all := append(append([]string{}, ids...), missing)
	settled := func() map[string]string {
		t.Helper()
		stamps := map[string]string{}
		require.Eventually(t, func() bool {
			for _, id := range all {
				st, err := s.ChangeStamp(ctx, id)
				require.NoError(t, err)
				if st == "" {
					return false
				}
				stamps[id] = st
			}
			return true
		}, 15*time.Second, 50*time.Millisecond)
		return stamps
	}
	before := settled()
	assert.Equal(t, "-/-", before[missing], "a task that does not exist has a stamp too")
	again := map[string]string{}
	for _, id := range all {
		again[id], err = s.ChangeStamp(ctx, id)
		require.NoError(t, err)
	}
	assert.Equal(t, before, again, "nothing changed")

	require.NoError(t, s.Put(ctx, versioned(ids[0], 2)))
	require.NoError(t, s.AppendAudit(ctx, storage.AuditEntry{ID: ids[1] + "/note", TaskID: ids[1], Actor: "test", Action: "annotate"}))
	require.NoError(t, s.Delete(ctx, ids[2]))
	path := filepath.Join(tasksDir(dir), ids[3]+".json")
	fi, err := os.Stat(path)
	require.NoError(t, err)
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	changed := bytes.Replace(data, []byte("version 1"), []byte("version 9"), 1)
	require.NotEqual(t, data, changed)
	require.NoError(t, os.WriteFile(path, changed, 0o644))
	require.NoError(t, os.Chtimes(path, fi.ModTime(), fi.ModTime()))
	for _, id := range ids[:4] {
		st, err := s.ChangeStamp(ctx, id)
		require.NoError(t, err)
		assert.NotEqual(t, before[id], st, "%s right after its write", id)
	}

	after := settled()
	for _, id := range ids[:4] {
		assert.NotEqual(t, before[id], after[id], id)
	}
	assert.Equal(t, before[ids[4]], after[ids[4]], "untouched task")
}
