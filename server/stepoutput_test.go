package server

import (
	"context"
	"encoding/json"
	"fmt"
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
	"github.com/provisioning/orchestrator/metrics"
	"github.com/provisioning/orchestrator/storage"
)

// bigOutput is n bytes of numbered lines, so a lost or moved chunk shows.
func bigOutput(n int) string {
	var b strings.Builder
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "line %07d ✓ %s\n", i, strings.Repeat("x", 40))
	}
	return b.String()[:n]
}

// putOutputs stores a failed attempt 1 (256 KiB stdout) and a successful
// attempt 2 of step web-01 of a new task.
func (f *fixture) putOutputs() (storage.Task, storage.StepOutput, storage.StepOutput) {
	f.t.Helper()
	task := f.putTask(storage.StatusRunning)
	first := storage.StepOutput{TaskID: task.ID, Step: "web-01", Attempt: 1, ExitCode: 1,
		Stdout: bigOutput(256 << 10), Stderr: "provisioning: simulated failure\n", StdoutTruncated: true, Error: "nu exited with code 1"}
	second := storage.StepOutput{TaskID: task.ID, Step: "web-01", Attempt: 2, Stdout: "created\n"}
	for _, o := range []storage.StepOutput{first, second} {
		require.NoError(f.t, f.store.PutStepOutput(f.t.Context(), o))
	}
	return task, first, second
}

// raw serves a GET and returns the recorder, after checking the answer
// against the OpenAPI document.
func (f *fixture) raw(path string, header ...string) *httptest.ResponseRecorder {
	f.t.Helper()
	req := httptest.NewRequest(http.MethodGet, path, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	rec := httptest.NewRecorder()
	f.srv.ServeHTTP(rec, req)
	assert.NoError(f.t, openapicheck.ValidateResponse(f.doc, openAPIPath(StepOutputPath), http.MethodGet, rec.Code, rec.Header().Get("Content-Type"), rec.Body.Bytes()))
	return rec
}

func TestStepOutputEndpoint(t *testing.T) {
	f := newFixture(t, Options{})
	task, first, second := f.putOutputs()
	base := "/tasks/" + task.ID + "/steps/web-01/output"

	// Latest attempt by default, with the list of attempts.
	var got StepOutputData
	r := f.ok(http.StatusOK, http.MethodGet, base, "", &got)
	assert.Equal(t, 2, got.Attempt)
	assert.Equal(t, second.Stdout, got.Stdout)
	assert.Equal(t, []int{1, 2}, got.Attempts)
	assert.Equal(t, task.ID, got.TaskID)
	assert.Equal(t, "web-01", got.Step)
	assert.Equal(t, "2", r.header.Get(StepAttemptHeader))
	assert.Equal(t, "false", r.header.Get(OutputTruncatedHeader))

	// A given attempt: the 256 KiB stdout comes back whole.
	got = StepOutputData{}
	r = f.ok(http.StatusOK, http.MethodGet, base+"?attempt=1", "", &got)
	assert.Equal(t, 1, got.Attempt)
	assert.Equal(t, 1, got.ExitCode)
	require.Len(t, got.Stdout, 256<<10)
	assert.True(t, got.Stdout == first.Stdout, "byte for byte")
	assert.Equal(t, 256<<10, got.StdoutBytes)
	assert.True(t, got.StdoutTruncated)
	assert.Equal(t, first.Error, got.Error)
	assert.Equal(t, "true", r.header.Get(OutputTruncatedHeader))

	// The raw JSON has the documented field names.
	var obj map[string]any
	rec := f.raw(base + "?attempt=1")
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &obj))
	data := obj["data"].(map[string]any)
	for _, k := range []string{"task_id", "step", "attempt", "exit_code", "stdout", "stderr", "stdout_truncated", "stderr_truncated", "stdout_bytes", "stderr_bytes", "time", "attempts"} {
		assert.Contains(t, data, k)
	}

	// One stream as text/plain.
	rec = f.raw(base + "?attempt=1&stream=stdout")
	require.Equal(t, http.StatusOK, rec.Code)
	assert.Equal(t, "text/plain; charset=UTF-8", rec.Header().Get("Content-Type"))
	assert.Equal(t, "1", rec.Header().Get(StepAttemptHeader))
	assert.Equal(t, "true", rec.Header().Get(OutputTruncatedHeader))
	body, _ := io.ReadAll(rec.Body)
	assert.True(t, string(body) == first.Stdout, "the raw 256 KiB stdout, whole")
	rec = f.raw(base + "?stream=stderr")
	require.Equal(t, http.StatusOK, rec.Code)
	assert.Empty(t, rec.Body.String(), "attempt 2 printed nothing to stderr")
	rec = f.raw(base + "?stream=stderr&attempt=1")
	assert.Equal(t, first.Stderr, rec.Body.String())
}

func TestStepOutputEndpointErrors(t *testing.T) {
	f := newFixture(t, Options{})
	task, _, _ := f.putOutputs()
	base := "/tasks/" + task.ID + "/steps/web-01/output"

	// 400 naming the field.
	for path, field := range map[string]string{
		"/tasks/not-a-uuid/steps/web-01/output":                               "id",
		"/tasks/" + strings.ToUpper(task.ID) + "/steps/web-01/output":         "id",
		"/tasks/" + task.ID + "/steps/-web/output":                            "step",
		"/tasks/" + task.ID + "/steps/../output":                              "step",
		"/tasks/" + task.ID + "/steps/..%2F..%2Fetc/output":                   "step",
		"/tasks/" + task.ID + "/steps/a%20b/output":                           "step",
		"/tasks/" + task.ID + "/steps/a%00b/output":                           "step",
		"/tasks/" + task.ID + "/steps/" + strings.Repeat("a", 64) + "/output": "step",
		base + "?attempt=0":           "attempt",
		base + "?attempt=-1":          "attempt",
		base + "?attempt=two":         "attempt",
		base + "?attempt=99999999999": "attempt",
		base + "?stream=both":         "stream",
		base + "?stream=":             "stream",
		base + "?stream=STDOUT":       "stream",
		base + "?verbose=1":           "verbose",
	} {
		e := f.fail(http.StatusBadRequest, http.MethodGet, path, "")
		assert.Equal(t, field, e.Field, path)
		assert.Equal(t, CodeValidation, e.Code, path)
	}

	// 404 naming what is missing.
	unknown := "00000000-0000-4000-8000-000000000000"
	e := f.fail(http.StatusNotFound, http.MethodGet, "/tasks/"+unknown+"/steps/web-01/output", "")
	assert.Equal(t, CodeNotFound, e.Code)
	assert.Equal(t, "task "+unknown+" not found", e.Message)
	e = f.fail(http.StatusNotFound, http.MethodGet, "/tasks/"+task.ID+"/steps/web-09/output", "")
	assert.Contains(t, e.Message, `step "web-09"`)
	assert.Contains(t, e.Message, "no stored output")
	e = f.fail(http.StatusNotFound, http.MethodGet, base+"?attempt=7", "")
	assert.Contains(t, e.Message, `attempt 7 of step "web-01"`)
	assert.Contains(t, e.Message, "[1 2]", "names the attempts there are")
	rec := f.raw(base + "?attempt=7&stream=stdout")
	assert.Equal(t, http.StatusNotFound, rec.Code, "errors stay JSON envelopes with ?stream")
	assert.Contains(t, rec.Header().Get("Content-Type"), "application/json")

	// Deleting the task removes its outputs: 404 for the task.
	require.NoError(t, f.store.Delete(context.Background(), task.ID))
	e = f.fail(http.StatusNotFound, http.MethodGet, base, "")
	assert.Equal(t, "task "+task.ID+" not found", e.Message)
}

// The route takes a token like every other task route, and is counted in
// the metrics under its template, not the request path.
func TestStepOutputEndpointAuthAndMetrics(t *testing.T) {
	m := metrics.New()
	f := newFixture(t, Options{AuthTokens: map[string]string{"ci": "tok"}, Metrics: m}).withoutTemporalQueue()
	task, _, _ := f.putOutputs()
	path := "/tasks/" + task.ID + "/steps/web-01/output?stream=stdout"
	assert.Equal(t, http.StatusUnauthorized, f.raw(path).Code)
	assert.Equal(t, http.StatusOK, f.raw(path, "Authorization", "Bearer tok").Code)

	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	rec := httptest.NewRecorder()
	f.srv.ServeHTTP(rec, req)
	assert.Contains(t, rec.Body.String(), `route="/tasks/:id/steps/:step/output"`)
	assert.NotContains(t, rec.Body.String(), task.ID, "no task id becomes a label")
}

// A store without the capability answers 404 saying so, not a 500.
func TestStepOutputEndpointWithoutCapability(t *testing.T) {
	fs, err := storage.NewFilesystem(t.TempDir())
	require.NoError(t, err)
	t.Cleanup(func() { _ = fs.Close() })
	srv := New(Options{Client: &mocks.Client{}, Store: struct{ storage.Store }{fs}, Logger: slog.New(slog.DiscardHandler)})
	rec := httptest.NewRecorder()
	srv.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/tasks/00000000-0000-4000-8000-000000000000/steps/web-01/output", nil))
	assert.Equal(t, http.StatusNotFound, rec.Code)
	assert.Contains(t, rec.Body.String(), "keeps no step outputs")
}
