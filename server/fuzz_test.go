package server

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"go.temporal.io/sdk/mocks"

	"github.com/provisioning/orchestrator/storage"
)

// fuzzPaths are the endpoints that take a body; the fuzzer sends each
// body to each of them.
var fuzzPaths = []string{
	"/workflows/servers/create", "/workflows/taskserv/create", "/workflows/cluster/create", BatchPath,
	"/tasks/8d3c7a10-4b2d-4f6e-8a1c-5d7e9f0a1b99/approve",
	"/test/environments/create",
	"/test/environments/8d3c7a10-4b2d-4f6e-8a1c-5d7e9f0a1b99/run",
	"/test/environments/8d3c7a10-4b2d-4f6e-8a1c-5d7e9f0a1b99/converge",
}

// FuzzRequestBodies: whatever a client sends as a body, the API answers a
// well-formed envelope with a status below 500 and never panics. (A body
// the fuzzer finds valid starts a mocked workflow: that is fine.) Seeds
// are in testdata/fuzz/FuzzRequestBodies and below; `go test` runs them,
// `go test -fuzz FuzzRequestBodies ./server` explores.
func FuzzRequestBodies(f *testing.F) {
	for _, s := range []string{
		``, `{}`, `null`, `[]`, `{"infra":`, `{"infra":"p","settings":"s","servers":["a"]}{}`,
		`{"infra":"p","settings":"s","servers":["a\u0000b"]}`, `{"servers":[` + strings.Repeat(`"a",`, 5000) + `"a"]}`,
		strings.Repeat(`[`, 10000), `{"infra":1e999999}`, `{"config":{"type":"cluster_topology","topology":{"nodes":[{"name":"-"}]}}}`,
		`{"tests":[{"name":"x","command":[]}]}`, `{"idempotence":"yes"}`, "\xff\xfe\x00",
		`{"infra":"p","settings":"s","operations":[{"id":"a","type":"server","depends_on":["b"]},{"id":"b","type":"cluster","cluster":"c","depends_on":["a"]}]}`,
		`{"infra":"p","settings":"s","approval_timeout":"-1h","operations":[{"id":"a","type":"server"}]}`, `{"comment":7}`,
	} {
		f.Add([]byte(s))
	}
	fx := newFuzzServer(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, p := range fuzzPaths {
			req := httptest.NewRequest(http.MethodPost, p, strings.NewReader(string(body)))
			req.Header.Set("Content-Type", "application/json")
			rec := httptest.NewRecorder()
			done := make(chan struct{})
			go func() { defer close(done); fx.ServeHTTP(rec, req) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatalf("%s: no answer within 10s for body %q", p, body)
			}
			if rec.Code >= 500 {
				t.Fatalf("%s: %d for body %q: %s", p, rec.Code, body, rec.Body.String())
			}
			if !strings.HasPrefix(rec.Body.String(), `{"success":`) {
				t.Fatalf("%s: not an envelope: %s", p, rec.Body.String())
			}
		}
	})
}

// newFuzzServer is a server over a real filesystem store whose Temporal
// client starts anything (a mocked run) and knows no workflow.
func newFuzzServer(tb testing.TB) *Server {
	c := &mocks.Client{}
	c.On("ExecuteWorkflow", mock.Anything, mock.Anything, mock.Anything, mock.Anything).Return(&mocks.WorkflowRun{}, nil).Maybe()
	store, err := storage.NewFilesystem(tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = store.Close() })
	return New(Options{Client: c, Store: store, Logger: slog.New(slog.DiscardHandler)})
}
