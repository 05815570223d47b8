package server

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/labstack/echo/v4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/metrics"
)

func metricsText(t *testing.T, srv *Server) string {
	t.Helper()
	rec := httptest.NewRecorder()
	srv.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	require.Equal(t, http.StatusOK, rec.Code)
	b, err := io.ReadAll(rec.Body)
	require.NoError(t, err)
	return string(b)
}

// Nothing a client sends becomes a label value: made-up methods count as
// OTHER, unknown paths as "unmatched", so 300 of each add a handful of
// series, not hundreds.
func TestMetricLabelsAreBounded(t *testing.T) {
	f := newFixture(t, Options{Metrics: metrics.New()}).withoutTemporalQueue()
	before := strings.Count(metricsText(t, f.srv), "\n")
	for i := range 300 {
		req := httptest.NewRequest("M"+strings.Repeat("X", i%50)+string(rune('A'+i%26)), "/tasks", nil)
		f.srv.ServeHTTP(httptest.NewRecorder(), req)
		f.srv.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/no/such/path/"+strings.Repeat("z", i), nil))
	}
	text := metricsText(t, f.srv)
	after := strings.Count(text, "\n")
	assert.Less(t, after-before, 80, "series grew with client input")
	assert.Contains(t, text, `method="OTHER"`)
	assert.Contains(t, text, `route="unmatched"`)
	assert.NotContains(t, text, "MXX")
	assert.NotContains(t, text, "zzzz")
}

// A client's X-Request-ID is echoed only when it is a sane token.
func TestRequestIDIsSanitised(t *testing.T) {
	f := newFixture(t, Options{})
	for _, tc := range []struct {
		given string
		kept  bool
	}{{"abc-123.def:9", true}, {strings.Repeat("a", 200), false}, {"a b\"c", false}, {"x\x1by", false}} {
		req := httptest.NewRequest(http.MethodGet, OpenAPIPath, nil)
		req.Header.Set(echo.HeaderXRequestID, tc.given)
		rec := httptest.NewRecorder()
		f.srv.ServeHTTP(rec, req)
		got := rec.Header().Get(echo.HeaderXRequestID)
		require.NotEmpty(t, got)
		assert.Equal(t, tc.kept, got == tc.given, "%q -> %q", tc.given, got)
	}
}

// /health is open; without a valid token it says which dependency is down
// but not the internal error text.
func TestHealthHidesErrorTextWithoutAuth(t *testing.T) {
	f := newFixture(t, Options{AuthTokens: map[string]string{"ci": "tok"}})
	f.client.On("CheckHealth", mock.Anything, mock.Anything).Return(nil, errors.New("dial tcp 10.1.2.3:7233: connection refused"))
	rec := httptest.NewRecorder()
	f.srv.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/health", nil))
	assert.Equal(t, http.StatusServiceUnavailable, rec.Code)
	assert.Contains(t, rec.Body.String(), `"temporal":"unavailable"`)
	assert.NotContains(t, rec.Body.String(), "10.1.2.3")

	req := httptest.NewRequest(http.MethodGet, "/health", nil)
	req.Header.Set("Authorization", "Bearer tok")
	rec = httptest.NewRecorder()
	f.srv.ServeHTTP(rec, req)
	assert.Equal(t, http.StatusServiceUnavailable, rec.Code)
	assert.Contains(t, rec.Body.String(), "10.1.2.3", "an operator with a token sees why")
}

// A corrupt task file is a clear 422 naming the record and the doctor
// command on every endpoint that reads it, never a 500.
func TestCorruptRecordIsAClearError(t *testing.T) {
	f := newFixture(t, Options{})
	id := "8d3c7a10-4b2d-4f6e-8a1c-5d7e9f0a1b99"
	require.NoError(t, os.MkdirAll(filepath.Join(f.dir, "queue.rkvs", "tasks"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(f.dir, "queue.rkvs", "tasks", id+".json"), []byte(`{"id": "`+id+`", "status": `), 0o644))
	for _, tc := range []struct{ method, path string }{
		{http.MethodGet, "/tasks/" + id},
		{http.MethodPost, "/tasks/" + id + "/cancel"},
		{http.MethodGet, "/test/environments/" + id},
	} {
		e := f.fail(http.StatusUnprocessableEntity, tc.method, tc.path, "")
		assert.Equal(t, CodeCorrupt, e.Code, tc.path)
		assert.Contains(t, e.Message, id, tc.path)
		assert.Contains(t, e.Message, "orchestrator doctor", tc.path)
	}
}
