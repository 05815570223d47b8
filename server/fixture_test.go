package server

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/mocks"

	"github.com/provisioning/orchestrator/internal/testsupport/openapicheck"
	"github.com/provisioning/orchestrator/storage"
)

// fixture is a Server on a real filesystem store and a mocked Temporal
// client. The mock fails the test on any call nobody expected, and every
// expectation must have been met when the test ends.
type fixture struct {
	t      *testing.T
	dir    string // the store's data dir
	store  *storage.Filesystem
	client *mocks.Client
	srv    *Server
	// doc is the server's OpenAPI document as a client decodes it; every
	// response is checked against it.
	doc map[string]any
}

// newFixture builds a server from o with the fixture's client, store and a
// silent logger.
func newFixture(t *testing.T, o Options) *fixture {
	t.Helper()
	dir := t.TempDir()
	store, err := storage.NewFilesystem(dir)
	require.NoError(t, err)
	t.Cleanup(func() { _ = store.Close() })
	c := &mocks.Client{}
	c.Test(t)
	t.Cleanup(func() { c.AssertExpectations(t) })
	o.Client, o.Store = c, store
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	srv := New(o)
	raw, err := json.Marshal(srv.OpenAPI())
	require.NoError(t, err)
	var doc map[string]any
	require.NoError(t, json.Unmarshal(raw, &doc))
	return &fixture{t: t, dir: dir, store: store, client: c, srv: srv, doc: doc}
}

// reply is a decoded envelope response.
type reply struct {
	code   int
	header http.Header
	data   json.RawMessage
	err    *ErrorBody
}

// send serves one request (contentType is set when not empty) and decodes
// the envelope. The response must match the OpenAPI document.
func (f *fixture) send(method, path, contentType, body string) reply {
	f.t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, path, r)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	rec := httptest.NewRecorder()
	f.srv.ServeHTTP(rec, req)
	if tmpl := f.route(method, req.URL.Path); tmpl != "" {
		assert.NoError(f.t, openapicheck.ValidateResponse(f.doc, tmpl, method, rec.Code, rec.Header().Get("Content-Type"), rec.Body.Bytes()))
	}
	var env struct {
		Success bool            `json:"success"`
		Data    json.RawMessage `json:"data"`
		Error   *ErrorBody      `json:"error"`
	}
	require.NoError(f.t, json.Unmarshal(rec.Body.Bytes(), &env), rec.Body.String())
	require.Equal(f.t, rec.Code < 300, env.Success, rec.Body.String())
	require.Equal(f.t, env.Success, env.Error == nil, rec.Body.String())
	return reply{code: rec.Code, header: rec.Header(), data: env.Data, err: env.Error}
}

// route is the OpenAPI path template (/tasks/{id}) of the registered route
// that serves method and path, or "" if none does.
func (f *fixture) route(method, path string) string {
	got := strings.Split(path, "/")
	for _, r := range f.srv.e.Routes() {
		want := strings.Split(r.Path, "/")
		if r.Method != method || len(want) != len(got) {
			continue
		}
		match := true
		for i := range want {
			match = match && (want[i] == got[i] || strings.HasPrefix(want[i], ":") && got[i] != "")
		}
		if match {
			return openAPIPath(r.Path)
		}
	}
	return ""
}

// do sends a JSON body (none when empty) and returns the status and the
// envelope's data, or its error encoded as JSON.
func (f *fixture) do(method, path, body string) (int, json.RawMessage) {
	f.t.Helper()
	ct := ""
	if body != "" {
		ct = "application/json"
	}
	r := f.send(method, path, ct, body)
	if r.err != nil {
		b, _ := json.Marshal(r.err)
		return r.code, b
	}
	return r.code, r.data
}

// ok sends a JSON body and requires status want, decoding data into out
// (unless nil).
func (f *fixture) ok(want int, method, path, body string, out any) reply {
	f.t.Helper()
	ct := ""
	if body != "" {
		ct = "application/json"
	}
	r := f.send(method, path, ct, body)
	require.Equal(f.t, want, r.code, "%s %s: %s %+v", method, path, r.data, r.err)
	if out != nil {
		require.NoError(f.t, json.Unmarshal(r.data, out), string(r.data))
	}
	return r
}

// fail sends a JSON body and requires status want; it returns the error.
func (f *fixture) fail(want int, method, path, body string) ErrorBody {
	f.t.Helper()
	ct := ""
	if body != "" {
		ct = "application/json"
	}
	r := f.send(method, path, ct, body)
	require.Equal(f.t, want, r.code, "%s %s: %s %+v", method, path, r.data, r.err)
	require.NotNil(f.t, r.err)
	return *r.err
}

// tasks returns every stored task.
func (f *fixture) tasks() []storage.Task {
	f.t.Helper()
	all, _, err := f.store.List(f.t.Context(), storage.ListFilter{Limit: storage.MaxLimit})
	require.NoError(f.t, err)
	return all
}
