package server

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/mocks"

	"github.com/provisioning/orchestrator/storage"
)

// tmpfsDir mounts a size-limited tmpfs for the test (root only). Under
// ORCHESTRATOR_REQUIRE_TMPFS=1 (CI) not being able to is a failure.
func tmpfsDir(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput()
	if err != nil {
		msg := "cannot mount a size-limited tmpfs (needs root): " + strings.TrimSpace(string(out))
		if os.Getenv("ORCHESTRATOR_REQUIRE_TMPFS") == "1" {
			t.Fatal(msg + " (ORCHESTRATOR_REQUIRE_TMPFS=1, so this is a failure, not a skip)")
		}
		t.Skip(msg)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
	return dir
}

// The filesystem store's disk fills up: creates answer clean 503s (never a
// 500, never half a task), every stored record still parses, and creates
// work again once space returns.
func TestDiskFullIsA503AndRecovers(t *testing.T) {
	dir := tmpfsDir(t, "1m")
	store, err := storage.NewFilesystem(dir)
	require.NoError(t, err)
	t.Cleanup(func() { _ = store.Close() })
	c := &mocks.Client{}
	c.On("ExecuteWorkflow", mock.Anything, mock.Anything, mock.Anything, mock.Anything).Return(&mocks.WorkflowRun{}, nil).Maybe()
	srv := New(Options{Client: c, Store: store, Logger: slog.New(slog.DiscardHandler)})
	post := func() int {
		body := `{"infra":"prod","settings":"s.k","servers":["web-01"]}`
		req := httptest.NewRequest(http.MethodPost, "/workflows/servers/create", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		return rec.Code
	}
	// Leave little room, then create until the disk is full.
	filler := filepath.Join(dir, "filler")
	f, err := os.Create(filler)
	require.NoError(t, err)
	_, _ = f.Write(make([]byte, 900<<10))
	require.NoError(t, f.Close())
	created, full := 0, 0
	for range 500 {
		switch code := post(); code {
		case http.StatusOK:
			created++
		case http.StatusServiceUnavailable:
			full++
		default:
			t.Fatalf("HTTP %d while the disk fills", code)
		}
		if full >= 5 {
			break
		}
	}
	require.Positive(t, full, "the disk never filled (created %d)", created)
	t.Logf("created %d tasks, then %d clean 503s", created, full)

	// No torn record: every task file is whole JSON.
	entries, err := os.ReadDir(filepath.Join(dir, "queue.rkvs", "tasks"))
	require.NoError(t, err)
	files := 0
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		files++
		b, err := os.ReadFile(filepath.Join(dir, "queue.rkvs", "tasks", e.Name()))
		require.NoError(t, err)
		var task storage.Task
		require.NoError(t, json.Unmarshal(b, &task), "%s is torn", e.Name())
	}
	assert.Equal(t, created, files, "one whole file per created task, nothing half-created")

	// Space returns: creates work again.
	require.NoError(t, os.Remove(filler))
	assert.Equal(t, http.StatusOK, post())
}
