package e2e

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/internal/testsupport/openapicheck"
	"github.com/provisioning/orchestrator/server"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/workflows"
)

// apiChecker sends requests and validates every response against the
// OpenAPI document the running app serves, recording which documented
// operations were exercised.
type apiChecker struct {
	t    *testing.T
	doc  map[string]any
	seen map[string]bool
}

func (c *apiChecker) call(base, method, tmpl, path string, body any) (int, []byte) {
	c.t.Helper()
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(c.t, err)
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, base+path, r)
	require.NoError(c.t, err)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := http.DefaultClient.Do(req)
	require.NoError(c.t, err)
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	require.NoError(c.t, err)
	if c.doc != nil {
		assert.NoError(c.t, openapicheck.ValidateResponse(c.doc, tmpl, method, res.StatusCode, res.Header.Get("Content-Type"), raw))
	}
	if c.seen == nil {
		c.seen = map[string]bool{}
	}
	c.seen[strings.ToLower(method)+" "+tmpl] = true
	return res.StatusCode, raw
}

func (c *apiChecker) expect(base string, want int, method, tmpl, path string, body any) json.RawMessage {
	c.t.Helper()
	status, raw := c.call(base, method, tmpl, path, body)
	require.Equal(c.t, want, status, "%s %s: %s", method, path, raw)
	var env struct {
		Data json.RawMessage `json:"data"`
	}
	if strings.HasPrefix(strings.TrimSpace(string(raw)), "{") {
		require.NoError(c.t, json.Unmarshal(raw, &env))
	}
	return env.Data
}

func (c *apiChecker) str(data json.RawMessage) string {
	c.t.Helper()
	var s string
	require.NoError(c.t, json.Unmarshal(data, &s))
	return s
}

func TestOpenAPIMatchesEveryEndpoint(t *testing.T) {
	c := &apiChecker{t: t}
	h := startApp(t, "PROVISIONING_DEMO_DELAY_MS=120000")
	env := startEnvApp(t)

	// The document itself, fetched from the running app.
	status, raw := c.call(h.base, http.MethodGet, server.OpenAPIPath, server.OpenAPIPath, nil)
	require.Equal(t, http.StatusOK, status, "%s", raw)
	require.NoError(t, json.Unmarshal(raw, &c.doc))
	require.NoError(t, openapicheck.ValidateResponse(c.doc, server.OpenAPIPath, http.MethodGet, status, "application/json", raw))

	// Tasks.
	b := h.base
	assert.Equal(t, server.HealthyMessage, c.str(c.expect(b, 200, "GET", "/health", "/health", nil)))
	c.expect(b, 200, "GET", "/metrics", "/metrics", nil)
	id := c.str(c.expect(b, 200, "POST", "/workflows/servers/create", "/workflows/servers/create", serverBody("web-01")))
	c.expect(b, 200, "POST", "/workflows/taskserv/create", "/workflows/taskserv/create", map[string]any{
		"infra": "production", "settings": "./settings.yaml", "taskserv": "kubernetes", "servers": []string{"web-01"}})
	c.expect(b, 200, "POST", "/workflows/cluster/create", "/workflows/cluster/create", map[string]any{
		"infra": "production", "settings": "./settings.yaml", "cluster": "buildkit"})
	c.expect(b, 400, "POST", "/workflows/servers/create", "/workflows/servers/create", map[string]any{"infra": "production", "bogus": 1})
	c.expect(b, 400, "POST", "/workflows/cluster/create", "/workflows/cluster/create", map[string]any{"infra": "production"})
	c.expect(b, 400, "POST", "/workflows/taskserv/create", "/workflows/taskserv/create", map[string]any{"infra": "x y"})

	waitTask(t, b, id, 30*time.Second, func(tk storage.Task) bool { return tk.Status == storage.StatusRunning })
	c.expect(b, 200, "GET", "/tasks", "/tasks", nil)
	c.expect(b, 200, "GET", "/tasks", "/tasks?status=Running&limit=2&offset=0&workflow_type="+workflows.ServerCreateWorkflowName, nil)
	c.expect(b, 400, "GET", "/tasks", "/tasks?limit=0", nil)
	c.expect(b, 400, "GET", "/tasks", "/tasks?status=Sleeping", nil)
	c.expect(b, 200, "GET", "/tasks/{id}", "/tasks/"+id, nil)
	c.expect(b, 400, "GET", "/tasks/{id}", "/tasks/not-a-uuid", nil)
	c.expect(b, 404, "GET", "/tasks/{id}", "/tasks/00000000-0000-4000-8000-000000000000", nil)
	c.expect(b, 200, "PATCH", "/tasks/{id}", "/tasks/"+id, map[string]any{"priority": 2})
	c.expect(b, 400, "PATCH", "/tasks/{id}", "/tasks/"+id, map[string]any{"priority": 7})
	c.expect(b, 404, "PATCH", "/tasks/{id}", "/tasks/00000000-0000-4000-8000-000000000000", map[string]any{"priority": 2})
	c.expect(b, 409, "POST", "/tasks/{id}/retry", "/tasks/"+id+"/retry", nil)
	c.expect(b, 202, "POST", "/tasks/{id}/cancel", "/tasks/"+id+"/cancel", nil)
	waitTask(t, b, id, 30*time.Second, terminal)
	c.expect(b, 400, "POST", "/tasks/{id}/retry", "/tasks/"+id+"/retry", map[string]any{"priority": 9})
	c.expect(b, 404, "POST", "/tasks/{id}/retry", "/tasks/00000000-0000-4000-8000-000000000000/retry", nil)
	retryID := c.str(c.expect(b, 200, "POST", "/tasks/{id}/retry", "/tasks/"+id+"/retry", map[string]any{"priority": 1}))
	c.expect(b, 202, "POST", "/tasks/{id}/cancel", "/tasks/"+retryID+"/cancel", nil)
	waitTask(t, b, retryID, 30*time.Second, terminal)
	c.expect(b, 409, "POST", "/tasks/{id}/cancel", "/tasks/"+id+"/cancel", nil)
	c.expect(b, 409, "PATCH", "/tasks/{id}", "/tasks/"+id, map[string]any{"priority": 2})
	c.expect(b, 404, "POST", "/tasks/{id}/cancel", "/tasks/00000000-0000-4000-8000-000000000000/cancel", nil)
	c.expect(b, 200, "GET", "/tasks/{id}", "/tasks/"+id, nil)
	c.expect(b, 200, "GET", "/tasks/{id}/audit", "/tasks/"+id+"/audit?limit=10", nil)
	c.expect(b, 404, "GET", "/tasks/{id}/audit", "/tasks/00000000-0000-4000-8000-000000000000/audit", nil)
	// The cancelled attempt's output was stored.
	c.expect(b, 200, "GET", "/tasks/{id}/steps/{step}/output", "/tasks/"+id+"/steps/web-01/output", nil)
	c.expect(b, 404, "GET", "/tasks/{id}/steps/{step}/output", "/tasks/"+id+"/steps/web-01/output?attempt=9", nil)
	c.expect(b, 400, "GET", "/tasks/{id}/steps/{step}/output", "/tasks/"+id+"/steps/-bad/output", nil)
	// The finished task's event stream: every event, then the server ends it.
	c.expect(b, 200, "GET", "/tasks/{id}/events", "/tasks/"+id+"/events", nil)
	c.expect(b, 200, "GET", "/tasks/{id}/events", "/tasks/"+id+"/events?last_event_id=2", nil)
	c.expect(b, 400, "GET", "/tasks/{id}/events", "/tasks/"+id+"/events?last_event_id=x", nil)
	c.expect(b, 404, "GET", "/tasks/{id}/events", "/tasks/00000000-0000-4000-8000-000000000000/events", nil)
	c.expect(b, 400, "GET", "/events", "/events?infra=a%20b", nil)
	c.expect(b, 200, "GET", "/audit", "/audit", nil)
	c.expect(b, 200, "GET", "/audit", "/audit?task_id="+id+"&limit=5", nil)
	c.expect(b, 400, "GET", "/audit", "/audit?task_id=nope", nil)
	c.expect(b, 404, "GET", "/test/environments/{id}", "/test/environments/"+id, nil)
	c.expect(b, 200, "GET", "/queue", "/queue", nil)
	c.expect(b, 400, "GET", "/queue", "/queue?limit=1", nil)

	// Batches (on the app whose provider is quick): plan, wait for a
	// decision, approve; reject another.
	bb := env.base
	batchBody := func(infra string) map[string]any {
		return map[string]any{"infra": infra, "settings": "s.yaml", "require_approval": true, "operations": []any{
			map[string]any{"id": "web", "type": "server", "servers": []string{"web-01"}},
			map[string]any{"id": "redis", "type": "taskserv", "taskserv": "redis", "servers": []string{"web-01"}, "depends_on": []string{"web"}},
		}}
	}
	c.expect(bb, 400, "POST", "/workflows/batch", "/workflows/batch", map[string]any{"infra": "x", "operations": []any{}})
	batchIDs := []string{
		c.str(c.expect(bb, 200, "POST", "/workflows/batch", "/workflows/batch", batchBody("batch-a"))),
		c.str(c.expect(bb, 200, "POST", "/workflows/batch", "/workflows/batch", batchBody("batch-b"))),
	}
	for _, bid := range batchIDs {
		waitTask(t, bb, bid, 60*time.Second, func(tk storage.Task) bool {
			return tk.Status.Terminal() || (tk.Batch != nil && tk.Batch.Phase == storage.PhaseAwaitingApproval)
		})
	}
	c.expect(b, 409, "POST", "/tasks/{id}/approve", "/tasks/"+id+"/approve", nil)
	c.expect(b, 404, "POST", "/tasks/{id}/approve", "/tasks/00000000-0000-4000-8000-000000000000/approve", nil)
	c.expect(bb, 400, "POST", "/tasks/{id}/approve", "/tasks/"+batchIDs[0]+"/approve", map[string]any{"comment": 5})
	c.expect(bb, 200, "POST", "/tasks/{id}/approve", "/tasks/"+batchIDs[0]+"/approve", map[string]any{"comment": "ok"})
	c.expect(bb, 409, "POST", "/tasks/{id}/reject", "/tasks/"+batchIDs[0]+"/reject", nil)
	c.expect(bb, 200, "POST", "/tasks/{id}/reject", "/tasks/"+batchIDs[1]+"/reject", nil)
	c.expect(b, 404, "POST", "/tasks/{id}/reject", "/tasks/00000000-0000-4000-8000-000000000000/reject", nil)

	// Schedules.
	sched := map[string]any{"id": "oa", "interval": "1h", "paused": true, "action": map[string]any{
		"type": "cluster", "infra": "production", "settings": "./settings.yaml", "cluster": "buildkit"}}
	c.expect(b, 201, "POST", "/schedules", "/schedules", sched)
	c.expect(b, 409, "POST", "/schedules", "/schedules", sched)
	c.expect(b, 400, "POST", "/schedules", "/schedules", map[string]any{"id": "oa2", "interval": "1ms"})
	c.expect(b, 200, "GET", "/schedules", "/schedules", nil)
	c.expect(b, 400, "GET", "/schedules", "/schedules?limit=1", nil)
	c.expect(b, 200, "GET", "/schedules/{schedule}", "/schedules/oa", nil)
	c.expect(b, 404, "GET", "/schedules/{schedule}", "/schedules/nope", nil)
	c.expect(b, 400, "GET", "/schedules/{schedule}", "/schedules/-bad", nil)
	c.expect(b, 200, "POST", "/schedules/{schedule}/unpause", "/schedules/oa/unpause", map[string]any{"note": "go"})
	c.expect(b, 404, "POST", "/schedules/{schedule}/unpause", "/schedules/nope/unpause", nil)
	c.expect(b, 200, "POST", "/schedules/{schedule}/pause", "/schedules/oa/pause", nil)
	c.expect(b, 400, "POST", "/schedules/{schedule}/pause", "/schedules/oa/pause", map[string]any{"note": 1})
	c.expect(b, 202, "POST", "/schedules/{schedule}/trigger", "/schedules/oa/trigger", nil)
	c.expect(b, 404, "POST", "/schedules/{schedule}/trigger", "/schedules/nope/trigger", nil)
	var sv server.ScheduleView
	eventually(t, 30*time.Second, "the triggered run", func() bool {
		require.NoError(t, json.Unmarshal(c.expect(b, 200, "GET", "/schedules/{schedule}", "/schedules/oa", nil), &sv))
		return len(sv.RecentRuns) == 1 && sv.RecentRuns[0].Status != ""
	})
	c.expect(b, 202, "POST", "/tasks/{id}/cancel", "/tasks/"+sv.RecentRuns[0].TaskID+"/cancel", nil)
	c.expect(b, 200, "DELETE", "/schedules/{schedule}", "/schedules/oa", nil)
	c.expect(b, 404, "DELETE", "/schedules/{schedule}", "/schedules/oa", nil)

	// Test environments.
	e := env.base
	c.expect(e, 200, "GET", "/test/topologies", "/test/topologies", nil)
	c.expect(e, 400, "POST", "/test/environments/create", "/test/environments/create", map[string]any{"config": map[string]any{"type": "nope"}})
	envID := c.str(c.expect(e, 200, "POST", "/test/environments/create", "/test/environments/create", map[string]any{
		"config": map[string]any{"type": "single_taskserv", "taskserv": "containerd", "base_image": env.image},
		"infra":  "prod-stack", "auto_start": true,
	}))
	c.expect(e, 200, "GET", "/test/environments/{id}", "/test/environments/"+envID, nil)
	st := env.waitEnv(envID, 60*time.Second, statusIs(workflows.EnvReady, workflows.EnvError))
	require.Equal(t, workflows.EnvReady, st.Status, st.Error)
	c.expect(e, 200, "GET", "/test/environments", "/test/environments", nil)
	c.expect(e, 400, "GET", "/test/environments", "/test/environments?limit=-1", nil)
	c.expect(e, 200, "POST", "/test/environments/{id}/run", "/test/environments/"+envID+"/run", map[string]any{
		"tests": []any{map[string]any{"name": "echo", "command": []string{"echo", "hi"}}}})
	c.expect(e, 400, "POST", "/test/environments/{id}/run", "/test/environments/"+envID+"/run", map[string]any{"tests": "no"})
	c.expect(e, 200, "POST", "/test/environments/{id}/converge", "/test/environments/"+envID+"/converge", map[string]any{"idempotence": true})
	c.expect(e, 400, "POST", "/test/environments/{id}/converge", "/test/environments/"+envID+"/converge", map[string]any{"idempotence": "yes"})
	c.expect(e, 200, "GET", "/test/environments/{id}", "/test/environments/"+envID, nil)
	c.expect(e, 200, "GET", "/test/environments/{id}/logs", "/test/environments/"+envID+"/logs?tail=20&node=containerd", nil)
	c.expect(e, 400, "GET", "/test/environments/{id}/logs", "/test/environments/"+envID+"/logs?tail=0", nil)
	c.expect(e, 404, "GET", "/test/environments/{id}/logs", "/test/environments/00000000-0000-4000-8000-000000000000/logs", nil)
	c.expect(e, 202, "DELETE", "/test/environments/{id}", "/test/environments/"+envID, nil)
	env.waitEnv(envID, 60*time.Second, statusIs(workflows.EnvCleaned))
	c.expect(e, 200, "DELETE", "/test/environments/{id}", "/test/environments/"+envID, nil)
	c.expect(e, 404, "DELETE", "/test/environments/{id}", "/test/environments/00000000-0000-4000-8000-000000000000", nil)
	c.expect(e, 409, "POST", "/test/environments/{id}/run", "/test/environments/"+envID+"/run", nil)
	c.expect(e, 409, "POST", "/test/environments/{id}/converge", "/test/environments/"+envID+"/converge", nil)
	c.expect(e, 200, "GET", "/test/environments/{id}/logs", "/test/environments/"+envID+"/logs", nil)
	c.expect(e, 200, "GET", "/test/environments", "/test/environments?limit=5", nil)

	// Every documented operation was exercised.
	var missing []string
	for p, item := range c.doc["paths"].(map[string]any) {
		for m := range item.(map[string]any) {
			if !c.seen[m+" "+p] {
				missing = append(missing, m+" "+p)
			}
		}
	}
	sort.Strings(missing)
	assert.Empty(t, missing, "documented operations this test never exercised")
}
