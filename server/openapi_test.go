package server

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/mocks"

	"github.com/provisioning/orchestrator/internal/testsupport/openapicheck"
	"github.com/provisioning/orchestrator/metrics"
	"github.com/provisioning/orchestrator/storage"
)

func openAPIServer(t *testing.T, o Options) *Server {
	t.Helper()
	store, err := storage.NewFilesystem(t.TempDir())
	require.NoError(t, err)
	t.Cleanup(func() { _ = store.Close() })
	o.Client = &mocks.Client{}
	o.Store = store
	o.Logger = slog.New(slog.DiscardHandler)
	return New(o)
}

// fetchDoc reads the document the way clients do: over HTTP, as JSON.
func fetchDoc(t *testing.T, s *Server) map[string]any {
	t.Helper()
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, OpenAPIPath, nil))
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.True(t, json.Valid(rec.Body.Bytes()))
	var doc map[string]any
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &doc))
	return doc
}

func TestOpenAPIDocumentCoversExactlyTheRoutes(t *testing.T) {
	for name, o := range map[string]Options{
		"plain":             {},
		"metrics and token": {Metrics: metrics.New(), AuthTokens: map[string]string{"ci": "secret"}},
	} {
		t.Run(name, func(t *testing.T) {
			s := openAPIServer(t, o)
			doc := fetchDoc(t, s)
			assert.Equal(t, "3.0.3", doc["openapi"])
			paths := doc["paths"].(map[string]any)
			registered := map[string]bool{}
			for _, r := range s.e.Routes() {
				p := openAPIPath(r.Path)
				key := strings.ToLower(r.Method) + " " + p
				registered[key] = true
				item, found := paths[p].(map[string]any)
				require.True(t, found, "route %s %s is not in the document", r.Method, r.Path)
				assert.Contains(t, item, strings.ToLower(r.Method), "route %s %s is not in the document", r.Method, r.Path)
			}
			for p, item := range paths {
				for m := range item.(map[string]any) {
					assert.True(t, registered[m+" "+p], "documented %s %s is not a route", m, p)
				}
			}
			schemes := doc["components"].(map[string]any)["securitySchemes"].(map[string]any)
			assert.Equal(t, "bearer", schemes["bearer"].(map[string]any)["scheme"])
		})
	}
}

func TestOpenAPIEveryOperationIsDescribed(t *testing.T) {
	described := map[string]bool{}
	for _, o := range apiOps() {
		described[o.method+" "+o.path] = true
	}
	s := openAPIServer(t, Options{Metrics: metrics.New()})
	for _, r := range s.e.Routes() {
		assert.True(t, described[r.Method+" "+r.Path], "%s %s", r.Method, r.Path)
	}
	assert.Len(t, described, len(s.e.Routes()), "an operation is described that no route serves")
}

func TestOpenAPIServedWithoutToken(t *testing.T) {
	s := openAPIServer(t, Options{AuthTokens: map[string]string{"ci": "secret"}})
	doc := fetchDoc(t, s)
	op := doc["paths"].(map[string]any)["/tasks"].(map[string]any)["get"].(map[string]any)
	assert.Contains(t, op["responses"], "401")
	assert.NotEmpty(t, op["security"])
}

func TestOpenAPISchemasFromGoTypes(t *testing.T) {
	s := openAPIServer(t, Options{})
	doc := fetchDoc(t, s)
	schemas := doc["components"].(map[string]any)["schemas"].(map[string]any)
	task := schemas["Task"].(map[string]any)
	props := task["properties"].(map[string]any)
	assert.Equal(t, map[string]any{"type": "string", "format": "date-time"}, props["created_at"])
	assert.Equal(t, true, props["started_at"].(map[string]any)["nullable"])
	assert.Equal(t, map[string]any{}, props["environment"])
	req := task["required"].([]any)
	assert.Contains(t, req, "started_at")
	assert.NotContains(t, req, "environment")
	env := schemas["EnvState"].(map[string]any)["properties"].(map[string]any)
	assert.Equal(t, map[string]any{"allOf": []any{map[string]any{"$ref": "#/components/schemas/TestRun"}}, "nullable": true}, env["last_run"])

	// Parameters carry their ranges and enums.
	params := doc["paths"].(map[string]any)["/tasks"].(map[string]any)["get"].(map[string]any)["parameters"].([]any)
	byName := map[string]map[string]any{}
	for _, p := range params {
		pm := p.(map[string]any)
		byName[pm["name"].(string)] = pm["schema"].(map[string]any)
	}
	assert.Len(t, byName["status"]["enum"], 5)
	assert.InDelta(t, 1000, byName["limit"]["maximum"], 0)
	assert.InDelta(t, 0, byName["offset"]["minimum"], 0)
}

func TestOpenAPIValidatorReportsThePath(t *testing.T) {
	s := openAPIServer(t, Options{})
	doc := fetchDoc(t, s)
	notAList := `{"success":true,"data":{"id":"x","task_id":"y","time":"2024-01-01T00:00:00Z","actor":"a","action":"b","before":"","after":"","version":1}}`
	bad := `{"success":true,"data":[{"id":"x","task_id":"y","time":"yesterday","actor":"a","action":"b","before":"","after":"","version":1.5,"extra":1}]}`
	require.Error(t, openapicheck.ValidateResponse(doc, "/audit", "GET", 200, "application/json", []byte(notAList)))
	err := openapicheck.ValidateResponse(doc, "/audit", "GET", 200, "application/json", []byte(bad))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "$.data[0].time")
	assert.Contains(t, err.Error(), "$.data[0].version")
	assert.Contains(t, err.Error(), "$.data[0].extra")
	require.NoError(t, openapicheck.ValidateResponse(doc, "/tasks/{id}", "GET", 404, "application/json; charset=UTF-8",
		[]byte(`{"success":false,"error":{"code":"not_found","message":"task not found"}}`)))
	err = openapicheck.ValidateResponse(doc, "/tasks/{id}", "GET", 404, "application/json", []byte(`{"success":false,"error":{"code":"not_found"}}`))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "$.error.message")
	require.Error(t, openapicheck.ValidateResponse(doc, "/nope", "GET", 200, "application/json", []byte(`{}`)))

	// Real responses of the handlers match.
	for _, path := range []string{"/tasks", "/audit", "/test/topologies", "/test/environments", "/tasks?status=bogus", "/tasks/not-a-uuid"} {
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		tmpl, _, _ := strings.Cut(path, "?")
		if strings.HasPrefix(tmpl, "/tasks/") {
			tmpl = "/tasks/{id}"
		}
		assert.NoError(t, openapicheck.ValidateResponse(doc, tmpl, "GET", rec.Code, rec.Header().Get("Content-Type"), rec.Body.Bytes()), path)
	}
}
