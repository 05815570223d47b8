package e2e

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/internal/app"
)

// A worker-only process has no REST API; --metrics-port serves its own
// metrics (its Nushell runs and Temporal SDK calls happen only there).
func TestWorkerServesItsOwnMetrics(t *testing.T) {
	h := startApp(t)
	// A second worker for h's cluster, like h's own: same data dir, demo
	// provider and provider state.
	cfg := appConfig(t, func(c *app.Config) { c.DataDir = h.dataDir }, withDemoProvider(t), func(c *app.Config) {
		c.Mode = app.ModeWorker
		c.TemporalAddress = h.app.TemporalAddress()
		c.MetricsPort = freePort(t)
		c.JanitorInterval = 0
	})
	w, _ := launchApp(t, cfg)
	base := baseURL(w)
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
