// Package e2e tests the orchestrator through its real parts: real HTTP, the
// embedded Temporal server, a real worker and the real `nu` running the
// shipped demo provider, and the filesystem store.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/internal/app"
	"github.com/provisioning/orchestrator/internal/testsupport"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/workflows"
)

// childEnv makes the test binary act as the orchestrator itself, so the
// kill/restart test can SIGKILL a real process without a separate build.
const childEnv = "ORCHESTRATOR_E2E_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		err := app.Run(ctx, strings.Fields(os.Getenv("ORCHESTRATOR_E2E_ARGS")), os.Stderr)
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, "orchestrator:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// fastPolicy keeps retries and crash detection short so tests finish fast;
// the shape (3 attempts, exponential backoff) is the production one.
var fastPolicy = workflows.ExecPolicy{
	Parallelism:        4,
	MaxAttempts:        3,
	InitialInterval:    100 * time.Millisecond,
	BackoffCoefficient: 2,
	MaxInterval:        time.Second,
	StepTimeout:        2 * time.Minute,
	HeartbeatTimeout:   2 * time.Second,
}

type harness struct {
	t        *testing.T
	app      *app.App
	base     string
	stateDir string
	dataDir  string
}

// startApp runs a whole orchestrator (serve mode) in-process with its own
// data dir and free ports. scriptEnv configures the demo provider.
func startApp(t *testing.T, scriptEnv ...string) *harness {
	t.Helper()
	return startAppWith(t, nil, scriptEnv...)
}

// startAppWith is startApp with a chance to change the configuration.
func startAppWith(t *testing.T, mutate func(*app.Config), scriptEnv ...string) *harness {
	t.Helper()
	nu := testsupport.NuPath(t)
	root := testsupport.RepoRoot(t)
	dir := t.TempDir()
	stateDir := filepath.Join(dir, "provider-state")
	cfg := app.DefaultConfig()
	cfg.Port = 0
	cfg.TemporalPort = 0
	cfg.TemporalUIPort = -1
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.NuPath = nu
	cfg.ProvisioningPath = filepath.Join(root, "core", "nulib", "provisioning")
	cfg.Policy = fastPolicy
	cfg.ScriptEnv = append([]string{"PROVISIONING_STATE_DIR=" + stateDir, "PROVISIONING_DEMO_DELAY_MS=50"}, scriptEnv...)
	if mutate != nil {
		mutate(&cfg)
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	a, err := app.Start(context.Background(), cfg, log)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		a.Stop(ctx)
	})
	return &harness{t: t, app: a, base: "http://" + a.HTTPAddr(), stateDir: stateDir, dataDir: cfg.DataDir}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// envelope mirrors the REST envelope for decoding.
type envelope struct {
	Success bool            `json:"success"`
	Data    json.RawMessage `json:"data"`
	Error   *struct {
		Code    string         `json:"code"`
		Message string         `json:"message"`
		Field   string         `json:"field"`
		Details map[string]any `json:"details"`
	} `json:"error"`
}

type response struct {
	status int
	env    envelope
	header http.Header
	raw    []byte
}

func do(t *testing.T, method, url, contentType string, body io.Reader) response {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	require.NoError(t, err)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	var env envelope
	require.NoError(t, json.Unmarshal(raw, &env), "body is not an envelope: %s", raw)
	if env.Success {
		require.Nil(t, env.Error, "success with error: %s", raw)
	} else {
		require.NotNil(t, env.Error, "failure without error: %s", raw)
		require.NotEmpty(t, env.Error.Code)
		require.NotEmpty(t, env.Error.Message)
	}
	return response{status: res.StatusCode, env: env, header: res.Header, raw: raw}
}

func (h *harness) postJSON(path string, body any) response {
	h.t.Helper()
	b, err := json.Marshal(body)
	require.NoError(h.t, err)
	return do(h.t, http.MethodPost, h.base+path, "application/json", bytes.NewReader(b))
}

func (h *harness) get(path string) response {
	h.t.Helper()
	return do(h.t, http.MethodGet, h.base+path, "", nil)
}

// submit posts a create request and returns the task id.
func (h *harness) submit(path string, body any) string {
	h.t.Helper()
	r := h.postJSON(path, body)
	require.Equal(h.t, http.StatusOK, r.status, "%s", r.raw)
	var id string
	require.NoError(h.t, json.Unmarshal(r.env.Data, &id))
	require.NoError(h.t, storage.ValidateID(id))
	return id
}

func (h *harness) task(id string) storage.Task {
	h.t.Helper()
	return getTask(h.t, h.base, id)
}

func getTask(t *testing.T, base, id string) storage.Task {
	t.Helper()
	r := do(t, http.MethodGet, base+"/tasks/"+id, "", nil)
	require.Equal(t, http.StatusOK, r.status, "%s", r.raw)
	var task storage.Task
	require.NoError(t, json.Unmarshal(r.env.Data, &task))
	return task
}

// waitTask polls GET /tasks/{id} until cond holds, recording every status
// seen on the way.
func waitTask(t *testing.T, base, id string, timeout time.Duration, cond func(storage.Task) bool) (storage.Task, []storage.TaskStatus) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var seen []storage.TaskStatus
	for {
		task := getTask(t, base, id)
		if len(seen) == 0 || seen[len(seen)-1] != task.Status {
			seen = append(seen, task.Status)
		}
		if cond(task) {
			return task, seen
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s: condition not met within %s; statuses seen %v; last: %+v", id, timeout, seen, task)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func terminal(task storage.Task) bool { return task.Status.Terminal() }

// eventually polls cond until it holds or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// taskProcesses lists PIDs whose environment carries this task's id: the nu
// processes the orchestrator started for it (and their children).
func taskProcesses(taskID string) []int {
	needle := []byte("ORCHESTRATOR_TASK_ID=" + taskID + "\x00")
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil || !bytes.Contains(env, needle) {
			continue
		}
		// Zombies keep their environ until reaped; they are not running.
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err == nil {
			if i := bytes.LastIndexByte(stat, ')'); i > 0 && len(stat) > i+2 && stat[i+2] == 'Z' {
				continue
			}
		}
		pids = append(pids, pid)
	}
	return pids
}
