package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/internal/app"
	"github.com/provisioning/orchestrator/storage"
)

// scrape fetches /metrics (no token) as text.
func scrape(t *testing.T, base string) string {
	t.Helper()
	res, err := http.Get(base + "/metrics")
	require.NoError(t, err)
	defer res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode)
	b, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	return string(b)
}

// metricValue is the value of the first sample whose line starts with
// prefix (name plus, optionally, the start of its labels), or -1.
func metricValue(text, prefix string) float64 {
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			return v
		}
	}
	return -1
}

func TestMetricsExposed(t *testing.T) {
	h := startApp(t)
	id := h.submit("/workflows/servers/create", serverBody("web-01"))
	task, _ := waitTask(t, h.base, id, 60*time.Second, terminal)
	require.Equal(t, storage.StatusCompleted, task.Status, "error: %v", task.Error)
	h.get("/tasks")
	h.get("/tasks/" + id)
	h.get("/tasks/not-a-uuid")

	// The duration is observed once the terminal projection (record, then
	// its events) is stored, a moment after GET shows the status: await it.
	durationCount := `orchestrator_task_duration_seconds_count{status="Completed",workflow_type="ServerCreate`
	var text string
	require.Eventually(t, func() bool {
		res, err := http.Get(h.base + "/metrics")
		if err != nil {
			return false
		}
		defer res.Body.Close()
		b, err := io.ReadAll(res.Body)
		text = string(b)
		return err == nil && res.StatusCode == http.StatusOK && metricValue(text, durationCount) >= 0
	}, 10*time.Second, 20*time.Millisecond, "task duration never observed")
	// HTTP metrics are labelled by route template, not raw path.
	assert.Regexp(t, `orchestrator_http_requests_total\{method="GET",route="/tasks/:id",status="200"\} \d+`, text)
	assert.Regexp(t, `orchestrator_http_requests_total\{method="GET",route="/tasks/:id",status="400"\} 1`, text)
	assert.Regexp(t, `orchestrator_http_requests_total\{method="POST",route="/workflows/servers/create",status="200"\} 1`, text)
	assert.Regexp(t, `orchestrator_http_request_duration_seconds_bucket\{method="GET",route="/tasks",status="200",le="[^"]+"\}`, text)
	assert.NotContains(t, text, id, "raw paths must not become label values")

	// Domain metrics.
	assert.GreaterOrEqual(t, metricValue(text, `orchestrator_tasks{status="Completed"}`), 1.0, text)
	assert.Equal(t, 0.0, metricValue(text, `orchestrator_tasks{status="Failed"}`))
	assert.Equal(t, 0.0, metricValue(text, `orchestrator_test_environments_alive `))
	assert.GreaterOrEqual(t, metricValue(text, `orchestrator_nushell_invocations_total{outcome="success"}`), 1.0)
	assert.Equal(t, 1.0, metricValue(text, durationCount), text)

	// Temporal SDK metrics through the adapter.
	assert.Regexp(t, regexp.MustCompile(`(?m)^temporal_request\{.*\} \d+`), text)
	assert.Regexp(t, regexp.MustCompile(`(?m)^temporal_request_latency_seconds_bucket\{`), text)
}

// authDo sends a request with an optional bearer token and decodes the
// envelope.
func authDo(t *testing.T, method, url, token string, body any) response {
	t.Helper()
	var header []string
	if token != "" {
		header = []string{"Authorization", "Bearer " + token}
	}
	r, err := send(http.DefaultClient, method, url, body, header...)
	require.NoError(t, err)
	return r
}

func TestAuthBearerTokens(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "tokens")
	require.NoError(t, os.WriteFile(tokenFile, []byte("# CI jobs\n\nci:ci-secret-token\nops: ops-secret\n"), 0o600))
	h := startAppWith(t, func(c *app.Config) {
		c.AuthToken = "main-secret"
		c.AuthTokenFile = tokenFile
	})

	creates := map[string]any{
		"/workflows/servers/create":  serverBody("web-01"),
		"/workflows/taskserv/create": map[string]any{"infra": "production", "settings": "./s.yaml", "taskserv": "kubernetes"},
		"/workflows/cluster/create":  map[string]any{"infra": "production", "settings": "./s.yaml", "cluster": "buildkit"},
		"/test/environments/create":  map[string]any{"config": map[string]any{"type": "single_taskserv", "taskserv": "redis"}},
	}
	for _, token := range []string{"", "wrong", "ci-secret-tokenX", "ci-secret-toke"} {
		r := authDo(t, http.MethodGet, h.base+"/tasks", token, nil)
		require.Equal(t, http.StatusUnauthorized, r.status, "token %q: %s", token, r.raw)
		require.NotNil(t, r.env.Error)
		assert.Equal(t, "unauthorized", r.env.Error.Code)
		assert.Equal(t, "Bearer", r.header.Get("WWW-Authenticate"))
		for path, body := range creates {
			r := authDo(t, http.MethodPost, h.base+path, token, body)
			assert.Equal(t, http.StatusUnauthorized, r.status, "%s token %q: %s", path, token, r.raw)
		}
		r = authDo(t, http.MethodGet, h.base+"/audit", token, nil)
		assert.Equal(t, http.StatusUnauthorized, r.status)
	}
	// Nothing was created by the rejected requests.
	for _, token := range []string{"main-secret", "ci-secret-token", "ops-secret"} {
		r := authDo(t, http.MethodGet, h.base+"/tasks", token, nil)
		require.Equal(t, http.StatusOK, r.status, "%s", r.raw)
		assert.Equal(t, "0", r.header.Get("X-Total-Count"))
	}

	// /health and /metrics stay open.
	r := authDo(t, http.MethodGet, h.base+"/health", "", nil)
	assert.Equal(t, http.StatusOK, r.status, "%s", r.raw)
	text := scrape(t, h.base)
	assert.Regexp(t, `orchestrator_http_requests_total\{method="GET",route="/tasks",status="401"\} \d+`, text)

	// The token's name is the audit actor.
	r = authDo(t, http.MethodPost, h.base+"/workflows/servers/create", "ci-secret-token", serverBody("web-01"))
	require.Equal(t, http.StatusOK, r.status, "%s", r.raw)
	var id string
	require.NoError(t, json.Unmarshal(r.env.Data, &id))
	r = authDo(t, http.MethodGet, h.base+"/tasks/"+id+"/audit", "ops-secret", nil)
	require.Equal(t, http.StatusOK, r.status, "%s", r.raw)
	var entries []storage.AuditEntry
	require.NoError(t, json.Unmarshal(r.env.Data, &entries))
	require.NotEmpty(t, entries)
	assert.Equal(t, storage.AuditCreate, entries[0].Action)
	assert.Equal(t, "ci", entries[0].Actor)

	// A cancel made with the default token is recorded as "default".
	r = authDo(t, http.MethodPost, h.base+"/tasks/"+id+"/cancel", "main-secret", nil)
	if r.status == http.StatusAccepted {
		r = authDo(t, http.MethodGet, h.base+"/audit?task_id="+id, "main-secret", nil)
		require.NoError(t, json.Unmarshal(r.env.Data, &entries))
		var actors []string
		for _, e := range entries {
			if e.Action == "cancel_requested" {
				actors = append(actors, e.Actor)
			}
		}
		assert.Equal(t, []string{app.DefaultTokenName}, actors)
	}
}

func TestAuthTokenFileErrors(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"nocolon":   "ci-secret\n",
		"emptyname": ":secret\n",
		"dup":       "ci:a\nci:b\n",
	} {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
		_, err := app.Config{AuthTokenFile: p}.AuthTokens()
		require.Error(t, err, name)
		assert.NotContains(t, err.Error(), "secret", "%s: tokens must not appear in errors", name)
	}
	_, err := app.Config{AuthTokenFile: filepath.Join(dir, "missing")}.AuthTokens()
	require.Error(t, err)
	cfg, err := app.ParseConfig(nil, func(k string) string {
		if k == "ORCHESTRATOR_AUTH_TOKEN" {
			return "from-env"
		}
		return ""
	}, io.Discard)
	require.NoError(t, err)
	tokens, err := cfg.AuthTokens()
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"default": "from-env"}, tokens)
}
