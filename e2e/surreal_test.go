//go:build !nosurrealdb

package e2e

import (
	"encoding/json"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/internal/app"
	"github.com/provisioning/orchestrator/internal/testsupport"
	"github.com/provisioning/orchestrator/storage"
)

// TestSurrealOutageLosesNoTransition runs tasks on the surrealdb-server
// backend and takes the database away mid-task: the API answers 503 while
// it is gone, Temporal retries the projections, and once it is back every
// task reaches its final state with every transition in the audit trail.
func TestSurrealOutageLosesNoTransition(t *testing.T) {
	srv := testsupport.StartSurreal(t, "surrealkv://"+filepath.Join(t.TempDir(), "db"))
	h := startAppWith(t, func(c *app.Config) {
		c.StorageType = app.StorageSurrealServer
		c.Store.SurrealURL = srv.URL
		c.Store.SurrealUsername = srv.User
		c.Store.SurrealPassword = srv.Pass
	}, "PROVISIONING_DEMO_DELAY_MS=3000")

	id := h.submit("/workflows/servers/create", serverBody("web-01", "web-02"))
	waitTask(t, h.base, id, 30*time.Second, func(task storage.Task) bool { return task.Status == storage.StatusRunning })

	srv.Kill()
	eventually(t, 20*time.Second, "the task API to answer 503", func() bool {
		r := do(t, http.MethodGet, h.base+"/tasks/"+id, "", nil)
		return r.status == http.StatusServiceUnavailable && r.env.Error.Code == "service_unavailable"
	})
	r := h.get("/health")
	assert.Equal(t, http.StatusServiceUnavailable, r.status)
	assert.NotEqual(t, "ok", r.env.Error.Details["storage"])
	// The steps finish while the database is away; their projections fail
	// and are retried by Temporal.
	eventually(t, 30*time.Second, "the nu steps to finish", func() bool { return len(taskProcesses(id)) == 0 })

	srv.Restart(t)
	// The store redials with backoff, so 503s may continue for a moment.
	var task storage.Task
	eventually(t, 90*time.Second, "the task to finish after the database returned", func() bool {
		r := do(t, http.MethodGet, h.base+"/tasks/"+id, "", nil)
		if r.status != http.StatusOK {
			return false
		}
		require.NoError(t, json.Unmarshal(r.env.Data, &task))
		return task.Status.Terminal()
	})
	require.Equal(t, storage.StatusCompleted, task.Status, "error: %v", task.Error)
	assert.Equal(t, storage.Progress{Done: 2, Total: 2}, task.Progress)

	ar := h.get("/tasks/" + id + "/audit")
	require.Equal(t, http.StatusOK, ar.status, "%s", ar.raw)
	var entries []storage.AuditEntry
	require.NoError(t, json.Unmarshal(ar.env.Data, &entries))
	var chain []storage.TaskStatus
	for _, e := range entries {
		if e.Action == storage.AuditCreate || e.Action == storage.AuditTransition {
			chain = append(chain, e.After)
		}
	}
	assert.Equal(t, []storage.TaskStatus{storage.StatusPending, storage.StatusRunning, storage.StatusCompleted}, chain)
	assert.Equal(t, http.StatusOK, h.get("/health").status)
}
