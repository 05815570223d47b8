package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/activities"
	"github.com/provisioning/orchestrator/internal/app"
	"github.com/provisioning/orchestrator/internal/testsupport"
	"github.com/provisioning/orchestrator/internal/testsupport/openapicheck"
	"github.com/provisioning/orchestrator/server"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/storage/storagetest"
)

// stepOutputScript is a provider that prints numbered 128-byte lines: 400
// of them (about 50 KiB, far over the 8 KiB a task record keeps), 2,500
// (about 312 KiB, over the 256 KiB the supervisor captures) for servers
// named big-*; servers named flaky-* fail their first attempt after
// printing. Attempts are counted in a file under PROVISIONING_STATE_DIR,
// because every attempt is a process of its own.
const stepOutputScript = `def --wrapped main [...rest] {
    let name = ($rest | last)
    let state = $env.PROVISIONING_STATE_DIR
    mkdir $state
    let counter = ($state | path join $"attempts-($name)")
    let attempt = if ($counter | path exists) { (open --raw $counter | str trim | into int) + 1 } else { 1 }
    $attempt | into string | save --force $counter
    let lines = if ($name | str starts-with "big") { 2500 } else { 400 }
    let pad = ("x" | fill --character "x" --width 80)
    print (1..$lines | each {|i|
        $"($name) attempt ($attempt) line ($i | fill --alignment right --character '0' --width 5) ($pad)" | fill --character "." --width 127
    } | str join "\n")
    print --stderr $"($name) attempt ($attempt) says goodbye on stderr"
    print $"done ($name) attempt ($attempt)"
    if ($name | str starts-with "flaky") and $attempt == 1 { exit 1 }
}
`

// stepOutputAPI reads GET /tasks/{id}/steps/{step}/output and checks every
// answer against the OpenAPI document the app serves.
type stepOutputAPI struct {
	t    *testing.T
	base string
	doc  map[string]any
}

func (a *stepOutputAPI) get(path string) (int, http.Header, []byte) {
	a.t.Helper()
	res, err := http.Get(a.base + path)
	require.NoError(a.t, err)
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	require.NoError(a.t, err)
	assert.NoError(a.t, openapicheck.ValidateResponse(a.doc, "/tasks/{id}/steps/{step}/output", http.MethodGet,
		res.StatusCode, res.Header.Get("Content-Type"), body))
	return res.StatusCode, res.Header, body
}

func (a *stepOutputAPI) output(taskID, step, query string) server.StepOutputData {
	a.t.Helper()
	code, _, body := a.get("/tasks/" + taskID + "/steps/" + step + "/output" + query)
	require.Equal(a.t, http.StatusOK, code, "%s", body)
	var env struct {
		Data server.StepOutputData `json:"data"`
	}
	require.NoError(a.t, json.Unmarshal(body, &env))
	return env.Data
}

func (a *stepOutputAPI) fails(want int, path string) string {
	a.t.Helper()
	code, _, body := a.get(path)
	require.Equal(a.t, want, code, "%s", body)
	var env envelope
	require.NoError(a.t, json.Unmarshal(body, &env))
	require.NotNil(a.t, env.Error)
	return env.Error.Message
}

// Through the real parts (REST, Temporal, worker, nu, filesystem store):
// every attempt's output is kept whole in the store and served by the
// endpoint, beyond the 8 KiB tail the task record holds; the tail is the
// end of the stored output; a failed-then-retried step has both attempts;
// a stream longer than the 256 KiB capture comes back as its 256 KiB tail.
// Once on each backend.
func TestStepOutputKeptWholeAndServed(t *testing.T) {
	t.Run("filesystem", func(t *testing.T) { testStepOutputKept(t, nil) })
	t.Run("surrealdb", func(t *testing.T) {
		srv := testsupport.StartSurreal(t, "mem://")
		testStepOutputKept(t, func(c *app.Config) {
			c.StorageType = app.StorageSurrealServer
			c.Store.SurrealURL, c.Store.SurrealUsername, c.Store.SurrealPassword = srv.URL, srv.User, srv.Pass
		})
	})
}

func testStepOutputKept(t *testing.T, backend func(*app.Config)) {
	dir := t.TempDir()
	script := filepath.Join(dir, "provisioning")
	require.NoError(t, os.WriteFile(script, []byte(stepOutputScript), 0o644))
	opts := []func(*app.Config){withNu(t, script)}
	if backend != nil {
		opts = append(opts, backend)
	}
	cfg := appConfig(t, opts...)
	a, _ := launchApp(t, cfg)
	h := &harness{t: t, app: a, base: baseURL(a), dataDir: cfg.DataDir}
	api := &stepOutputAPI{t: t, base: h.base}
	res, err := http.Get(h.base + server.OpenAPIPath)
	require.NoError(t, err)
	require.NoError(t, json.NewDecoder(res.Body).Decode(&api.doc))
	require.NoError(t, res.Body.Close())

	id := h.submit("/workflows/servers/create", map[string]any{
		"infra": "lab", "settings": "./s.yaml", "servers": []string{"web-01", "flaky-01", "big-01"}})
	task, _ := waitTask(t, h.base, id, 2*time.Minute, terminal)
	require.Equal(t, storage.StatusCompleted, task.Status, "%+v", task)
	steps := map[string]storage.StepResult{}
	for _, s := range task.Steps {
		steps[s.Name] = s
	}

	// web-01: about 50 KiB, all of it stored; the record keeps 8 KiB.
	web := api.output(id, "web-01", "")
	assert.Equal(t, []int{1}, web.Attempts)
	assert.Equal(t, 0, web.ExitCode)
	assert.Equal(t, 400*128+len("done web-01 attempt 1\n"), len(web.Stdout), "every line")
	assert.True(t, strings.HasPrefix(web.Stdout, "web-01 attempt 1 line 00001 "), "from the first line")
	assert.False(t, web.StdoutTruncated)
	assert.Equal(t, "web-01 attempt 1 says goodbye on stderr\n", web.Stderr)
	rec := steps["web-01"].Output
	assert.LessOrEqual(t, len(rec), activities.MaxReturnedOutput)
	assert.Greater(t, len(web.Stdout), 6*len(rec), "the endpoint has far more than the task record")
	assert.True(t, strings.HasSuffix(web.Stdout, rec), "the record's tail is the end of the stored output")

	// flaky-01: attempt 1 failed, attempt 2 succeeded; both are kept.
	assert.Equal(t, int32(2), steps["flaky-01"].Attempts)
	latest := api.output(id, "flaky-01", "")
	assert.Equal(t, []int{1, 2}, latest.Attempts)
	assert.Equal(t, 2, latest.Attempt)
	assert.Equal(t, 0, latest.ExitCode)
	assert.Contains(t, latest.Stdout, "done flaky-01 attempt 2\n")
	assert.True(t, strings.HasSuffix(latest.Stdout, steps["flaky-01"].Output))
	failed := api.output(id, "flaky-01", "?attempt=1")
	assert.Equal(t, 1, failed.Attempt)
	assert.Equal(t, 1, failed.ExitCode)
	assert.Contains(t, failed.Error, "exited with code 1")
	assert.True(t, strings.HasPrefix(failed.Stdout, "flaky-01 attempt 1 line 00001 "))
	assert.Contains(t, failed.Stdout, "done flaky-01 attempt 1\n")
	assert.Equal(t, "flaky-01 attempt 1 says goodbye on stderr\n", failed.Stderr)
	assert.NotContains(t, failed.Stdout, "attempt 2")

	// big-01: 312 KiB printed; the 256 KiB the supervisor captured come
	// back whole, as JSON and as text/plain.
	big := api.output(id, "big-01", "")
	assert.Len(t, big.Stdout, 256<<10)
	assert.Equal(t, 256<<10, big.StdoutBytes)
	assert.True(t, big.StdoutTruncated)
	assert.True(t, strings.HasSuffix(big.Stdout, "big-01 attempt 1 line 02500 "+strings.Repeat("x", 80)+strings.Repeat(".", 127-len("big-01 attempt 1 line 02500 ")-80)+"\ndone big-01 attempt 1\n"))
	assert.True(t, strings.HasSuffix(big.Stdout, steps["big-01"].Output))
	start := time.Now()
	code, hdr, raw := api.get("/tasks/" + id + "/steps/big-01/output?stream=stdout")
	took := time.Since(start)
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, "text/plain; charset=UTF-8", hdr.Get("Content-Type"))
	assert.Equal(t, "1", hdr.Get(server.StepAttemptHeader))
	assert.Equal(t, "true", hdr.Get(server.OutputTruncatedHeader))
	assert.True(t, string(raw) == big.Stdout, "the raw stream is the JSON's stdout")
	t.Logf("stored stdout: web-01 %d B, flaky-01 %d+%d B, big-01 %d B; GET ?stream=stdout of big-01: %s",
		len(web.Stdout), len(failed.Stdout), len(latest.Stdout), len(big.Stdout), took)

	// 404s name what is missing; 400s the field.
	unknown := storagetest.NewID()
	assert.Equal(t, "task "+unknown+" not found", api.fails(http.StatusNotFound, "/tasks/"+unknown+"/steps/web-01/output"))
	assert.Contains(t, api.fails(http.StatusNotFound, "/tasks/"+id+"/steps/web-02/output"), `step "web-02"`)
	assert.Contains(t, api.fails(http.StatusNotFound, "/tasks/"+id+"/steps/flaky-01/output?attempt=3"), "attempt 3")
	api.fails(http.StatusBadRequest, "/tasks/"+id+"/steps/..%2Fweb-01/output?stream=stdout")
	api.fails(http.StatusBadRequest, "/tasks/"+id+"/steps/web-01/output?attempt=0")
	api.fails(http.StatusBadRequest, "/tasks/"+id+"/steps/web-01/output?stream=all")

	// What one write of a full capture (2 × 256 KiB) costs in this store,
	// on a task of its own; deleting the task removes its outputs.
	st, ok := a.Store().(storage.StepOutputStore)
	require.True(t, ok)
	ctx := context.Background()
	probe := storagetest.NewID()
	require.NoError(t, a.Store().Create(ctx, storage.Task{ID: probe, Status: storage.StatusRunning, CreatedAt: time.Now(), Version: 1}))
	var worst time.Duration
	for i := 1; i <= 5; i++ {
		start := time.Now()
		require.NoError(t, st.PutStepOutput(ctx, storage.StepOutput{TaskID: probe, Step: "probe", Attempt: i, Stdout: big.Stdout, Stderr: big.Stdout}))
		worst = max(worst, time.Since(start))
	}
	t.Logf("PutStepOutput of 2 × 256 KiB (%s): slowest of 5 %s", cfg.StorageType, worst)
	assert.Less(t, worst, activities.OutputWriteTimeout, "a full capture is written well within the activity's bound")
	require.NoError(t, a.Store().Delete(ctx, probe))
	attempts, err := st.ListStepOutputAttempts(ctx, probe, "probe")
	require.NoError(t, err)
	assert.Empty(t, attempts, "Delete removed the task's outputs")
	if cfg.StorageType != app.StorageFilesystem {
		return
	}
	_, err = os.Stat(filepath.Join(cfg.DataDir, filepath.FromSlash(storage.OutputsSubdir), probe))
	assert.True(t, os.IsNotExist(err), "Delete removed the task's outputs: %v", err)
	_, err = os.Stat(filepath.Join(cfg.DataDir, filepath.FromSlash(storage.OutputsSubdir), id))
	assert.NoError(t, err, "the provisioning task's outputs are where the docs say")
}
