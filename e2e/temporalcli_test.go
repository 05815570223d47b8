package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/internal/app"
	"github.com/provisioning/orchestrator/internal/testsupport"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/workflows"
)

// temporalCLI runs the real `temporal` CLI (the version .ci/run installs)
// against the orchestrator's Temporal frontend and returns its stdout.
func temporalCLI(t *testing.T, a *app.App, args ...string) []byte {
	t.Helper()
	bin := testsupport.TemporalCLI(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	args = append(args, "--address", a.TemporalAddress(), "--namespace", app.DefaultNamespace)
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(cmd.Environ(), "TEMPORAL_CLI_SHOW_STACKS=1")
	out, err := cmd.Output()
	var stderr []byte
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		stderr = ee.Stderr
	}
	require.NoError(t, err, "temporal %v\nstdout: %s\nstderr: %s", args, out, stderr)
	return out
}

// queryResult decodes `temporal workflow query --output json`: the CLI wraps
// the handler's payloads as {"queryResult": [<value>...]}.
func queryResult(t *testing.T, out []byte, v any) {
	t.Helper()
	var wrapped struct {
		QueryResult []json.RawMessage `json:"queryResult"`
	}
	require.NoError(t, json.Unmarshal(out, &wrapped), "query output: %s", out)
	require.Len(t, wrapped.QueryResult, 1, "query output: %s", out)
	require.NoError(t, json.Unmarshal(wrapped.QueryResult[0], v), "query output: %s", out)
}

// TestTemporalCLIQueryAndCancelTask: an operator's `temporal workflow query`
// sees the live task and `temporal workflow cancel` is the same as
// POST /tasks/{id}/cancel, as the README says.
func TestTemporalCLIQueryAndCancelTask(t *testing.T) {
	testsupport.TemporalCLI(t) // skip (or fail in CI) before starting anything
	h := startApp(t, "PROVISIONING_DEMO_DELAY_MS=60000")
	id := h.submit("/workflows/servers/create", serverBody("web-01", "web-02"))
	waitTask(t, h.base, id, 30*time.Second, func(task storage.Task) bool { return task.Status == storage.StatusRunning })
	eventually(t, 30*time.Second, "nu processes for the task", func() bool { return len(taskProcesses(id)) >= 2 })

	out := temporalCLI(t, h.app, "workflow", "query", "--type", workflows.StatusQuery, "--workflow-id", id, "--output", "json")
	var live storage.Task
	queryResult(t, out, &live)
	assert.Equal(t, id, live.ID)
	assert.Equal(t, storage.StatusRunning, live.Status)
	assert.Equal(t, "ServerCreate", live.WorkflowType)

	// Operators see what the task is, not a bare UUID.
	out = temporalCLI(t, h.app, "workflow", "describe", "--workflow-id", id)
	assert.Contains(t, string(out), "server create production: web-01, web-02", "static summary")

	temporalCLI(t, h.app, "workflow", "cancel", "--workflow-id", id)

	task, _ := waitTask(t, h.base, id, 30*time.Second, terminal)
	require.Equal(t, storage.StatusCancelled, task.Status)
	require.NotNil(t, task.CompletedAt)
	for _, s := range task.Steps {
		assert.Equal(t, storage.StatusCancelled, s.Status, s.Name)
	}
	assert.Empty(t, taskProcesses(id), "processes of a task cancelled through the CLI still running")
}

// TestTemporalCLISignalCleanupEnvironment: `temporal workflow signal --name
// cleanup` on a test environment is the same as DELETE on it.
func TestTemporalCLISignalCleanupEnvironment(t *testing.T) {
	testsupport.TemporalCLI(t)
	h := startEnvApp(t)
	id := h.submit("/test/environments/create", map[string]any{
		"config": map[string]any{"type": "single_taskserv", "taskserv": "containerd", "base_image": h.image},
		"infra":  "prod-stack", "auto_start": true, "auto_cleanup": false,
	})
	st := h.waitEnv(id, 60*time.Second, statusIs(workflows.EnvReady, workflows.EnvError))
	require.Equal(t, workflows.EnvReady, st.Status, st.Error)
	c, _ := h.objects(id)
	require.Equal(t, 1, c, "the environment's container exists before the signal")
	// Operators find it by infra and see its phase.
	awaitList(t, h.app, `Infra="prod-stack" AND WorkflowType="TestEnvironment"`, id)
	assert.Regexp(t, `^ready · 1 node · expires \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$`, currentDetails(t, h.app, id))

	temporalCLI(t, h.app, "workflow", "signal", "--name", workflows.CleanupSignal, "--workflow-id", id)

	st = h.waitEnv(id, 60*time.Second, statusIs(workflows.EnvCleaned))
	assert.Equal(t, "cleanup requested", st.EndReason)
	c, n := h.objects(id)
	assert.Zero(t, c, "containers left")
	assert.Zero(t, n, "networks left")
	assert.Equal(t, storage.StatusCompleted, h.task(id).Status)
}
