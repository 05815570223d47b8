package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/sdk"
	"github.com/provisioning/orchestrator/server"
	"github.com/provisioning/orchestrator/storage"
)

// A client that retries a create (its first answer lost) gets the same
// task, and the provider runs once: through REST with Idempotency-Key and
// through the SDK with WithIdempotencyKey, on the real Temporal and nu.
func TestIdempotentCreatesRunOnce(t *testing.T) {
	h := startApp(t)
	body := `{"infra":"lab","settings":"./s.yaml","servers":["idem-01"]}`
	post := func(key string) response {
		r, err := send(http.DefaultClient, http.MethodPost, h.base+"/workflows/servers/create", strings.NewReader(body),
			"Content-Type", "application/json", server.IdempotencyKeyHeader, key)
		require.NoError(t, err)
		return r
	}
	jsonData := func(r response, v any) error { return json.Unmarshal(r.env.Data, v) }
	first := post("retry-me-1")
	require.Equal(t, http.StatusOK, first.status, "%s", first.raw)
	var id string
	require.NoError(t, jsonData(first, &id))
	// Retries, while the task runs and after it ended.
	second := post("retry-me-1")
	require.Equal(t, http.StatusOK, second.status, "%s", second.raw)
	assert.Equal(t, "true", second.header.Get(server.IdempotentReplayedHeader))
	var again string
	require.NoError(t, jsonData(second, &again))
	assert.Equal(t, id, again)
	task, _ := waitTask(t, h.base, id, 60*time.Second, func(t storage.Task) bool { return t.Status.Terminal() })
	require.Equal(t, storage.StatusCompleted, task.Status)
	third := post("retry-me-1")
	require.Equal(t, http.StatusOK, third.status, "%s", third.raw)
	assert.Equal(t, int32(1), task.Steps[0].Attempts)
	desc, err := h.app.Client().DescribeWorkflowExecution(context.Background(), id, "")
	require.NoError(t, err)
	assert.Equal(t, id, desc.WorkflowExecutionInfo.Execution.WorkflowId)
	r := h.get("/tasks?workflow_type=ServerCreate")
	require.Equal(t, "1", r.header.Get("X-Total-Count"), "one task, not three")

	// The SDK: a retried start returns the same run.
	c := &sdk.Client{Temporal: h.app.Client()}
	ctx := context.Background()
	run1, err := c.StartClusterCreate(ctx, "lab", "./s.yaml", "k8s", sdk.WithIdempotencyKey("job-77"))
	require.NoError(t, err)
	run2, err := c.StartClusterCreate(ctx, "lab", "./s.yaml", "k8s", sdk.WithIdempotencyKey("job-77"))
	require.NoError(t, err, "a retried start is not an error")
	assert.Equal(t, run1.ID(), run2.ID())
	done, err := run2.Wait(ctx)
	require.NoError(t, err)
	assert.Equal(t, storage.StatusCompleted, done.Status)
	// The key names a ClusterCreate: a ServerCreate with it is another task.
	run3, err := c.StartServerCreate(ctx, "lab", "./s.yaml", []string{"x"}, sdk.WithIdempotencyKey("job-77"))
	require.NoError(t, err)
	assert.NotEqual(t, run1.ID(), run3.ID())
}
