package storage_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/storage/storagetest"
)

// Step outputs live at queue.rkvs/outputs/{task id}/{sha256(step)}-{attempt}.json:
// a step name never becomes part of a path, no temp file stays behind, and
// Delete removes the task's directory.
func TestFilesystemStepOutputLayout(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	s := newFS(t, dataDir)
	ctx := context.Background()
	id := storagetest.NewID()
	require.NoError(t, s.Create(ctx, task(id, storage.StatusRunning, fixedTime)))

	steps := []string{"web-01", "../../escape", "/abs/path", "a\x00b"}
	for _, step := range steps {
		require.NoError(t, s.PutStepOutput(ctx, storage.StepOutput{TaskID: id, Step: step, Attempt: 2, Stdout: "out of " + step}))
	}
	outDir := filepath.Join(dataDir, "queue.rkvs", "outputs")
	var files []string
	require.NoError(t, filepath.WalkDir(filepath.Join(dataDir), func(path string, d fs.DirEntry, err error) error {
		require.NoError(t, err)
		if !d.IsDir() && strings.HasPrefix(path, outDir) {
			files = append(files, path)
		}
		return nil
	}))
	var want []string
	for _, step := range steps {
		sum := sha256.Sum256([]byte(step))
		want = append(want, filepath.Join(outDir, id, hex.EncodeToString(sum[:])+"-2.json"))
	}
	require.ElementsMatch(t, want, files, "one file per output, named by the hash, nothing else (no temps)")
	fi, err := os.Stat(want[0])
	require.NoError(t, err)
	require.Equal(t, fs.FileMode(0o644), fi.Mode().Perm())
	_, err = os.Stat(filepath.Join(dataDir, "escape"))
	require.ErrorIs(t, err, fs.ErrNotExist)

	require.NoError(t, s.Delete(ctx, id))
	_, err = os.Stat(filepath.Join(outDir, id))
	require.ErrorIs(t, err, fs.ErrNotExist, "Delete removes the task's outputs")
}

// A corrupt output file is ErrCorrupt, an output file of another key too.
func TestFilesystemStepOutputCorrupt(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	s := newFS(t, dataDir)
	ctx := context.Background()
	id := storagetest.NewID()
	require.NoError(t, s.Create(ctx, task(id, storage.StatusRunning, fixedTime)))
	require.NoError(t, s.PutStepOutput(ctx, storage.StepOutput{TaskID: id, Step: "a", Attempt: 1, Time: time.Now()}))
	require.NoError(t, s.PutStepOutput(ctx, storage.StepOutput{TaskID: id, Step: "b", Attempt: 1, Time: time.Now()}))
	sum := func(step string) string { h := sha256.Sum256([]byte(step)); return hex.EncodeToString(h[:]) }
	dir := filepath.Join(dataDir, "queue.rkvs", "outputs", id)
	// b's file now holds a's content.
	raw, err := os.ReadFile(filepath.Join(dir, sum("a")+"-1.json"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, sum("b")+"-1.json"), raw, 0o644))
	_, err = s.GetStepOutput(ctx, id, "b", 1)
	require.ErrorIs(t, err, storage.ErrCorrupt)
	require.NoError(t, os.WriteFile(filepath.Join(dir, sum("a")+"-1.json"), []byte("{"), 0o644))
	_, err = s.GetStepOutput(ctx, id, "a", 0)
	require.ErrorIs(t, err, storage.ErrCorrupt)
}
