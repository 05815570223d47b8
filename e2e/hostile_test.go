package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/api/workflowservice/v1"
)

// hostileRequests is how many generated requests TestHostileRequests sends.
const hostileRequests = 10_000

// TestHostileRequests sends 10,000 generated hostile requests across every
// endpoint of a real orchestrator (with Docker, so the environment
// endpoints are live): random bytes, deep nesting, NUL bytes, 5,000-element
// arrays, huge numbers, wrong types, odd methods, paths, queries and
// headers. Nothing answers 5xx (a recovered panic would be a 500), and
// nothing is created: no task, no workflow, no Docker object.
func TestHostileRequests(t *testing.T) {
	h := startEnvApp(t)
	rng := rand.New(rand.NewPCG(42, 2026))
	var mu sync.Mutex
	gen := func() (string, string, []byte, []string) {
		mu.Lock()
		defer mu.Unlock()
		return hostileRequest(rng)
	}
	var sent, answered, fivexx atomic.Int64
	var failures sync.Map
	hc := &http.Client{Timeout: 30 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil && sent.Add(1) <= hostileRequests {
				// Each slot is one request the server answers: a generated
				// request Go's client refuses to send is replaced.
				var method, path string
				var body []byte
				var resp *http.Response
				var err error
				for ctx.Err() == nil {
					var header []string
					method, path, body, header = gen()
					req, rerr := http.NewRequestWithContext(ctx, method, h.base+path, bytes.NewReader(body))
					if rerr != nil {
						continue
					}
					for i := 0; i+1 < len(header); i += 2 {
						req.Header.Set(header[i], header[i+1])
					}
					resp, err = hc.Do(req)
					if err != nil && (strings.Contains(err.Error(), "invalid header field") || strings.Contains(err.Error(), "invalid method")) {
						continue
					}
					break
				}
				if err != nil || resp == nil {
					if ctx.Err() == nil {
						failures.Store(string(truncate([]byte(method+" "+path), 200)), fmt.Sprint(err))
					}
					continue
				}
				answered.Add(1)
				b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
				resp.Body.Close()
				if resp.StatusCode >= 500 {
					fivexx.Add(1)
					failures.Store(fmt.Sprintf("%s %s %q", method, truncate([]byte(path), 200), truncate(body, 200)), fmt.Sprintf("%d %s", resp.StatusCode, b))
				}
			}
		}()
	}
	wg.Wait()
	require.NoError(t, ctx.Err(), "the run did not finish in time")
	n := 0
	failures.Range(func(k, v any) bool {
		if n < 10 {
			t.Errorf("%v -> %v", k, v)
		}
		n++
		return true
	})
	assert.Zero(t, fivexx.Load(), "5xx answers")
	assert.Zero(t, n, "transport errors or 5xx")
	assert.GreaterOrEqual(t, answered.Load(), int64(hostileRequests))
	t.Logf("%d hostile requests answered, %d 5xx, %d transport errors", answered.Load(), fivexx.Load(), n)

	r := h.get("/tasks")
	assert.Equal(t, "0", r.header.Get("X-Total-Count"), "nothing created")
	resp, err := h.app.Client().ListWorkflow(context.Background(), &workflowservice.ListWorkflowExecutionsRequest{})
	require.NoError(t, err)
	assert.Empty(t, resp.Executions, "no workflow started")
	assert.Empty(t, h.instanceEnvs(), "no Docker object")
}

func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}

// hostilePaths are every route, with :id to fill in.
var hostilePaths = []string{
	"/health", "/metrics", "/openapi.json", "/tasks", "/tasks/:id", "/tasks/:id/cancel", "/tasks/:id/audit", "/audit",
	"/tasks/:id/steps/web-01/output", "/tasks/:id/steps/:id/output", "/queue",
	"/workflows/servers/create", "/workflows/taskserv/create", "/workflows/cluster/create", "/workflows/batch",
	"/tasks/:id/approve", "/tasks/:id/reject", "/tasks/:id/retry",
	"/test/environments/create", "/test/environments", "/test/environments/:id", "/test/environments/:id/run",
	"/test/environments/:id/converge", "/test/environments/:id/logs", "/test/topologies",
}

func hostileRequest(rng *rand.Rand) (method, path string, body []byte, header []string) {
	methods := []string{"GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS", "HEAD", "PROPFIND", "X" + strings.Repeat("Y", rng.IntN(40))}
	method = methods[rng.IntN(len(methods))]
	if rng.IntN(3) > 0 {
		method = []string{"GET", "POST", "DELETE"}[rng.IntN(3)]
	}
	ids := []string{"00000000-0000-4000-8000-000000000000", "not-a-uuid", "%00", "..%2F..%2Fetc%2Fpasswd", strings.Repeat("a", 3000),
		"8D3C7A10-4B2D-4F6E-8A1C-5D7E9F0A1B99", "%E2%80%AE", "'; DROP TABLE task; --", "task:⟨x⟩"}
	path = hostilePaths[rng.IntN(len(hostilePaths))]
	for strings.Contains(path, ":id") {
		path = strings.Replace(path, ":id", ids[rng.IntN(len(ids))], 1)
	}
	queries := []string{"", "?limit=-1", "?limit=99999999999999999999", "?offset=%00", "?status=Running%00", "?status=" + strings.Repeat("x", 5000),
		"?task_id=../../x", "?node=%0a&tail=1e9", "?limit=1&limit=2", "?workflow_type=⟨⟩"}
	path += queries[rng.IntN(len(queries))]
	header = []string{"Content-Type", []string{"application/json", "text/plain", "application/json; charset=utf-16", "application/x-www-form-urlencoded", "", "application/json;;;"}[rng.IntN(6)]}
	if rng.IntN(4) == 0 {
		header = append(header, "Idempotency-Key", []string{"", strings.Repeat("k", 500), "k\x7f", "ok-key"}[rng.IntN(4)])
	}
	if rng.IntN(4) == 0 {
		header = append(header, "X-Request-ID", strings.Repeat("r", rng.IntN(2000)))
	}
	if rng.IntN(8) == 0 {
		header = append(header, "Authorization", "Bearer "+strings.Repeat("x", rng.IntN(100)))
	}
	return method, path, hostileBody(rng), header
}

// hostileBody is never a valid request: every generator breaks at least
// one rule (so nothing may be created).
func hostileBody(rng *rand.Rand) []byte {
	switch rng.IntN(10) {
	case 0:
		b := make([]byte, rng.IntN(2048))
		for i := range b {
			b[i] = byte(rng.IntN(256))
		}
		return b
	case 1:
		d := 1 + rng.IntN(20000)
		return []byte(strings.Repeat("[", d) + strings.Repeat("]", d))
	case 2:
		return []byte(`{"infra":"p\u0000x","settings":"s","servers":["a"]}`)
	case 3:
		return []byte(`{"infra":"p","settings":"s","servers":[` + strings.Repeat(`"a",`, 5000) + `"a"]}`)
	case 4:
		return []byte(fmt.Sprintf(`{"infra":"p","settings":"s","servers":["a"],"check_mode":%d%s}`, rng.Int64(), strings.Repeat("9", rng.IntN(400))))
	case 5:
		return []byte(`{"config":{"type":"cluster_topology","topology":{"nodes":[{"name":"; rm -rf /","taskservs":["x"]}]}}}`)
	case 6:
		return []byte(`{"tests":[{"name":"x","command":["sh"],"timeout_seconds":1e309}]}`)
	case 7:
		return []byte(`{"infra":["p"],"settings":{"a":1},"servers":"web-01","cluster":7,"taskserv":null,"unknown":1}`)
	case 8:
		if rng.IntN(2) == 0 {
			return []byte(`{"infra":"p","settings":"s","operations":[{"id":"a","type":"server","depends_on":["a"]}]}`)
		}
		return []byte(`{"config":{"type":"single_taskserv","taskserv":"etcd","resources":{"memory_mb":-1}},"idempotence":"yes"}`)
	default:
		return bytes.Repeat([]byte(`{"a":"`+strings.Repeat("\\u0000", 10)+`"},`), rng.IntN(5000))
	}
}
