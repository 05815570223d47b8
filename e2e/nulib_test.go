package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/internal/app"
	"github.com/provisioning/orchestrator/internal/testsupport"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/testenv"
)

// nuResult is one run of the real `nu` on the shipped nulib modules.
type nuResult struct {
	stdout, stderr string
	exitCode       int
}

// runNu runs `nu -c '<uses>; <script>'` against url with a bound on time.
func runNu(t *testing.T, url, script string, modules ...string) nuResult {
	t.Helper()
	root := testsupport.RepoRoot(t)
	var uses []string
	for _, m := range modules {
		uses = append(uses, "use '"+filepath.Join(root, "nulib", m)+"' *")
	}
	full := strings.Join(append(uses, script), "; ")
	cmd := exec.Command(testsupport.NuPath(t), "--no-config-file", "-c", full)
	cmd.Env = append(os.Environ(), "ORCHESTRATOR_URL="+url)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	require.NoError(t, cmd.Start())
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(3 * time.Minute):
		_ = cmd.Process.Kill()
		t.Fatalf("nu did not finish: %s\nstderr: %s", full, errb.String())
	}
	res := nuResult{stdout: out.String(), stderr: errb.String()}
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		res.exitCode = ee.ExitCode()
	} else {
		require.NoError(t, err)
	}
	t.Logf("nu -c %q → exit %d\nstderr: %s", script, res.exitCode, res.stderr)
	return res
}

// runNuJSON runs script (which must end in `| to json`) and decodes stdout.
func runNuJSON(t *testing.T, url, script string, v any, modules ...string) nuResult {
	t.Helper()
	r := runNu(t, url, script, modules...)
	require.Equal(t, 0, r.exitCode, "stderr: %s", r.stderr)
	require.NoError(t, json.Unmarshal([]byte(r.stdout), v), "stdout: %s", r.stdout)
	return r
}

// errorText joins the wrapped lines of nu's error rendering into one message.
func errorText(stderr string) string {
	var parts []string
	for _, l := range strings.Split(stderr, "\n") {
		l = strings.TrimSpace(l)
		l = strings.TrimPrefix(strings.TrimPrefix(l, "x "), "| ")
		if l == "" || strings.HasPrefix(l, "Error: nu::shell::error") {
			continue
		}
		parts = append(parts, l)
	}
	return strings.Join(parts, " ")
}

type nuTask struct {
	ID       string `json:"id"`
	Status   string `json:"status"`
	Progress struct {
		Done  int `json:"done"`
		Total int `json:"total"`
	} `json:"progress"`
}

func TestNuWorkflowWrappers(t *testing.T) {
	h := startApp(t)
	const mods = "workflows/server_create.nu"

	var task nuTask
	r := runNuJSON(t, h.base, "server_create_workflow prod web-01 web-02 --settings ./settings.yaml --wait --priority 2 | to json", &task,
		mods, "workflows/workflow.nu")
	assert.Equal(t, "Completed", task.Status)
	assert.Equal(t, 2, h.task(task.ID).Priority, "--priority")
	assert.Equal(t, 2, task.Progress.Done)
	assert.Equal(t, 2, task.Progress.Total)
	assert.Contains(t, r.stderr, "Completed 2/2", "progress goes to stderr")
	require.Equal(t, storage.StatusCompleted, h.task(task.ID).Status)

	var listed []nuTask
	runNuJSON(t, h.base, "workflow list --status Completed --limit 10 | to json", &listed, "workflows/workflow.nu")
	var ids []string
	for _, l := range listed {
		assert.Equal(t, "Completed", l.Status)
		ids = append(ids, l.ID)
	}
	assert.Contains(t, ids, task.ID)

	var got map[string]any
	runNuJSON(t, h.base, "workflow status "+task.ID+" | to json", &got, "workflows/workflow.nu")
	assert.Equal(t, task.ID, got["id"])
	assert.Equal(t, "Completed", got["status"])
	assert.Contains(t, got, "steps")

	// Without --wait: the task id comes back at once.
	var started map[string]string
	runNuJSON(t, h.base, "taskserv_create_workflow etcd prod web-01 --settings ./s.yaml | to json", &started, mods)
	require.NotEmpty(t, started["task_id"])
	waitTask(t, h.base, started["task_id"], time.Minute, func(tk storage.Task) bool { return tk.Status == storage.StatusCompleted })
	runNuJSON(t, h.base, "cluster_create_workflow k8s prod --settings ./s.yaml --check --wait | to json", &task, mods)
	assert.Equal(t, "Completed", task.Status)

	// Cancelling a finished task: the API's 409 message, non-zero exit.
	r = runNu(t, h.base, "workflow cancel "+task.ID, "workflows/workflow.nu")
	assert.NotEqual(t, 0, r.exitCode)
	assert.Contains(t, errorText(r.stderr), "already")
	assert.Contains(t, errorText(r.stderr), task.ID)

	// A 400 names the field.
	r = runNu(t, h.base, `server_create_workflow prod "bad name" --settings ./s.yaml`, mods)
	assert.NotEqual(t, 0, r.exitCode)
	assert.Contains(t, errorText(r.stderr), "servers[0]")
	assert.Contains(t, errorText(r.stderr), "HTTP 400")
}

func TestNuDownServiceGivesOneLineError(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	url := "http://" + l.Addr().String()
	require.NoError(t, l.Close())

	for _, script := range []string{"workflow list", "workflow status 6e910fc7-8b45-4e5a-aaba-26961bc94911"} {
		r := runNu(t, url, script, "workflows/workflow.nu")
		assert.NotEqual(t, 0, r.exitCode)
		msg := errorText(r.stderr)
		assert.Equal(t, "cannot reach the orchestrator at "+url+": Connection refused", msg)
		assert.NotContains(t, r.stderr, "I/O error")
		assert.NotContains(t, r.stderr, "connection_refused")
	}
	// With nu's short error style it is literally one line.
	r := runNu(t, url, "$env.config.error_style = 'short'; test env list", "test_environments.nu")
	assert.NotEqual(t, 0, r.exitCode)
	assert.Equal(t, 1, strings.Count(strings.TrimSpace(r.stderr), "\n")+1, "stderr: %q", r.stderr)
	assert.Contains(t, r.stderr, "cannot reach the orchestrator at "+url)
}

type nuRun struct {
	Passed    bool   `json:"passed"`
	Total     int    `json:"total"`
	Failed    int    `json:"failed"`
	EnvID     string `json:"env_id"`
	EnvStatus string `json:"env_status"`
	Steps     []struct {
		Step   string `json:"step"`
		Status string `json:"status"`
		Detail string `json:"detail"`
	} `json:"steps"`
	Converge    []testenv.TaskservResult  `json:"converge"`
	Idempotence *testenv.IdempotenceCheck `json:"idempotence"`
}

func (r nuRun) stepStatuses() []string {
	var out []string
	for _, s := range r.Steps {
		out = append(out, s.Step+":"+s.Status)
	}
	return out
}

func TestNuTestEnvironmentWrappers(t *testing.T) {
	h := startEnvApp(t)
	const mod = "test_environments.nu"

	var run nuRun
	runNuJSON(t, h.base, "test quick etcd --base-image '"+h.image+"' | to json", &run, mod)
	assert.True(t, run.Passed)
	assert.Positive(t, run.Total)
	assert.Equal(t, "cleaned", run.EnvStatus)
	assert.Equal(t, []string{"create:passed", "converge:passed", "idempotence:passed", "verify:passed", "destroy:passed"}, run.stepStatuses())
	require.Len(t, run.Converge, 1)
	assert.Equal(t, "etcd", run.Converge[0].Taskserv)
	require.NotNil(t, run.Idempotence)
	assert.True(t, run.Idempotence.Passed)
	require.NotEmpty(t, run.EnvID)
	assert.Equal(t, "cleaned", h.env(run.EnvID).Status)
	c, n := h.objects(run.EnvID)
	assert.Equal(t, 0, c, "containers left")
	assert.Equal(t, 0, n, "networks left")

	var env struct {
		ID     string `json:"id"`
		Status string `json:"status"`
		Type   string `json:"type"`
		Nodes  []struct {
			Node string `json:"node"`
		} `json:"nodes"`
	}
	runNuJSON(t, h.base, "test topology load kubernetes_3node | test env cluster kubernetes --auto-start --wait --priority 2 --base-image '"+h.image+"' | to json", &env, mod)
	require.NotEmpty(t, env.ID)
	assert.Equal(t, 2, getTask(t, h.base, env.ID).Priority, "--priority reaches the environment's task")
	assert.Equal(t, "ready", env.Status)
	assert.Equal(t, "cluster_topology", env.Type)
	assert.Len(t, env.Nodes, 3)
	c, _ = h.objects(env.ID)
	assert.Equal(t, 3, c)

	var list []map[string]any
	runNuJSON(t, h.base, "test env list | to json", &list, mod)
	var ids []any
	for _, e := range list {
		ids = append(ids, e["id"])
	}
	assert.Contains(t, ids, env.ID)

	// A failing test run comes back as a record; the run's failure is data.
	var failed nuRun
	runNuJSON(t, h.base, "test env run "+env.ID+" --tests [{name: nope, node: cp-01, command: [\"false\"]}] | to json", &failed, mod)
	assert.False(t, failed.Passed)
	assert.Equal(t, 1, failed.Failed)

	var logs struct {
		Nodes []map[string]any `json:"nodes"`
		Tests []map[string]any `json:"tests"`
	}
	runNuJSON(t, h.base, "test env logs "+env.ID+" --node cp-01 --tail 10 | to json", &logs, mod)
	assert.Len(t, logs.Nodes, 1)
	assert.Len(t, logs.Tests, 1)

	r := runNu(t, h.base, "test env logs "+env.ID+" --node nosuch", mod)
	assert.NotEqual(t, 0, r.exitCode)
	assert.Contains(t, errorText(r.stderr), `node: "nosuch" is not a node`)

	var rep testenv.ConvergeReport
	runNuJSON(t, h.base, "test env converge "+env.ID+" --idempotence | to json", &rep, mod)
	assert.True(t, rep.Passed, rep.Error)
	require.NotNil(t, rep.Idempotence)
	assert.True(t, rep.Idempotence.Passed)

	var st map[string]any
	runNuJSON(t, h.base, "test env cleanup "+env.ID+" --wait | to json", &st, mod)
	assert.Equal(t, "cleaned", st["status"])
	c, n = h.objects(env.ID)
	assert.Equal(t, 0, c)
	assert.Equal(t, 0, n)
}

// `test quick` exits non-zero naming the failed step (here converge, with
// the node and taskserv), and still destroys the environment.
func TestNuTestQuickFailsNamingTheStep(t *testing.T) {
	h := startEnvApp(t, func(c *app.Config) {
		c.ScriptEnv = append(c.ScriptEnv, "PROVISIONING_DEMO_FAIL=kubelet:permanent")
	})
	const mod = "test_environments.nu"
	r := runNu(t, h.base, "test quick kubelet --base-image '"+h.image+"'", mod)
	require.NotEqual(t, 0, r.exitCode, "stdout: %s", r.stdout)
	msg := errorText(r.stderr)
	assert.Contains(t, msg, "test quick kubelet: failed at converge")
	assert.Contains(t, msg, "taskserv kubelet on node")
	assert.Contains(t, r.stderr, "test quick kubelet: destroy passed")

	var run nuRun
	runNuJSON(t, h.base, "test quick kubelet --no-fail --base-image '"+h.image+"' | to json", &run, mod)
	assert.False(t, run.Passed)
	assert.Equal(t, []string{"create:passed", "converge:failed", "destroy:passed"}, run.stepStatuses())
	assert.Equal(t, "error", run.EnvStatus, "a failed creation ends in error, rolled back")
	c, n := h.objects(run.EnvID)
	assert.Zero(t, c+n, "nothing left")
}
