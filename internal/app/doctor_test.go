package app

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/storage"
)

// doctor names every corrupt record, where it is and what to do, and fails;
// a healthy store passes.
func TestDoctorFindsCorruptRecords(t *testing.T) {
	dir := t.TempDir()
	fs, err := storage.NewFilesystem(dir)
	require.NoError(t, err)
	now := time.Now().UTC()
	good := "11111111-2222-4333-8444-555555555555"
	require.NoError(t, fs.Create(context.Background(), storage.Task{ID: good, Name: "t", Command: "server create", Status: storage.StatusPending, CreatedAt: now, UpdatedAt: now, Version: 1}))
	require.NoError(t, fs.Close())

	cfg, err := ParseConfig([]string{"doctor", "--data-dir", dir}, func(string) string { return "" }, io.Discard)
	require.NoError(t, err)
	log := slog.New(slog.DiscardHandler)
	var out bytes.Buffer
	require.NoError(t, RunDoctor(context.Background(), cfg, log, &out))
	assert.Contains(t, out.String(), "checked 1 task records in the filesystem store: 0 problem(s)")

	bad := "99999999-2222-4333-8444-555555555555"
	path := filepath.Join(dir, "queue.rkvs", "tasks", bad+".json")
	require.NoError(t, os.WriteFile(path, []byte(`{"id": "`+bad+`", "sta`), 0o644))
	out.Reset()
	err = RunDoctor(context.Background(), cfg, log, &out)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "1 problem(s) found")
	assert.Contains(t, out.String(), "PROBLEM task "+bad+" cannot be read")
	assert.Contains(t, out.String(), "where: "+path)
	assert.Contains(t, out.String(), "move the file aside")
	assert.Contains(t, out.String(), "checked 2 task records")
	_, err = os.Stat(path)
	assert.NoError(t, err, "doctor changes nothing")
}
