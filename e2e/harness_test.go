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
	opts := []func(*app.Config){withDemoProvider(t, scriptEnv...)}
	if mutate != nil {
		opts = append(opts, mutate)
	}
	cfg := appConfig(t, opts...)
	a, _ := launchApp(t, cfg)
	return &harness{t: t, app: a, base: baseURL(a), stateDir: providerState(cfg), dataDir: cfg.DataDir}
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

// send does one REST request and decodes the reply's envelope. body is
// nil, an io.Reader sent as it is, or a value sent as JSON (with its
// Content-Type); header is name, value pairs. It returns an error instead of
// failing, so it can run on any goroutine: when the request fails or the
// reply is not an envelope. What the status means is for the caller.
func send(c *http.Client, method, url string, body any, header ...string) (response, error) {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case io.Reader:
		rd = b
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			return response{}, err
		}
		rd = bytes.NewReader(raw)
		header = append([]string{"Content-Type", "application/json"}, header...)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return response{}, err
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	res, err := c.Do(req)
	if err != nil {
		return response{}, err
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		return response{status: res.StatusCode, header: res.Header}, err
	}
	r := response{status: res.StatusCode, header: res.Header, raw: raw}
	if err := json.Unmarshal(raw, &r.env); err != nil {
		return r, fmt.Errorf("%s %s: HTTP %d, not an envelope: %s", method, url, res.StatusCode, raw)
	}
	return r, nil
}

// sendOK is send, and an error too when the envelope reports a failure.
func sendOK(c *http.Client, method, url string, body any) (response, error) {
	r, err := send(c, method, url, body)
	if err == nil && !r.env.Success {
		err = fmt.Errorf("%s %s: HTTP %d: %s", method, url, r.status, r.raw)
	}
	return r, err
}

// do sends a request (with contentType when not empty) and fails the test
// unless the reply is a well-formed envelope: success without an error,
// failure with an error code and message.
func do(t testing.TB, method, url, contentType string, body io.Reader) response {
	t.Helper()
	var header []string
	if contentType != "" {
		header = []string{"Content-Type", contentType}
	}
	r, err := send(http.DefaultClient, method, url, body, header...)
	require.NoError(t, err)
	if r.env.Success {
		require.Nil(t, r.env.Error, "success with error: %s", r.raw)
	} else {
		require.NotNil(t, r.env.Error, "failure without error: %s", r.raw)
		require.NotEmpty(t, r.env.Error.Code)
		require.NotEmpty(t, r.env.Error.Message)
	}
	return r
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
