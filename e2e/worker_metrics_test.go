package e2e

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/internal/app"
	"github.com/provisioning/orchestrator/internal/testsupport"
)

// A worker-only process has no REST API; --metrics-port serves its own
// metrics (its Nushell runs and Temporal SDK calls happen only there).
func TestWorkerServesItsOwnMetrics(t *testing.T) {
	h := startApp(t)
	cfg := app.DefaultConfig()
	cfg.Mode = app.ModeWorker
	cfg.TemporalAddress = h.app.TemporalAddress()
	cfg.DataDir = h.dataDir
	cfg.NuPath = testsupport.NuPath(t)
	cfg.ProvisioningPath = filepath.Join(testsupport.RepoRoot(t), "core", "nulib", "provisioning")
	cfg.MetricsPort = freePort(t)
	cfg.JanitorInterval = 0
	w, err := app.Start(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		w.Stop(ctx)
	})
	base := "http://" + w.HTTPAddr()
	res, err := http.Get(base + "/health")
	require.NoError(t, err)
	res.Body.Close()
	assert.Equal(t, http.StatusOK, res.StatusCode)

	var body string
	eventually(t, 30*time.Second, "temporal SDK metrics from the worker", func() bool {
		res, err := http.Get(base + "/metrics")
		if err != nil {
			return false
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		body = string(b)
		return strings.Contains(body, "temporal_")
	})
	assert.Contains(t, body, "orchestrator_tasks")
	// The worker has no REST API.
	res, err = http.Get(base + "/tasks")
	require.NoError(t, err)
	res.Body.Close()
	assert.NotEqual(t, http.StatusOK, res.StatusCode)
}
