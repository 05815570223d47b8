package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/internal/app"
	"github.com/provisioning/orchestrator/storage"
)

// The service's secrets never reach a provisioning run: a script that
// prints its whole environment shows PATH and the provisioning variables,
// the variables the operator passes by name, and nothing else of the
// service's environment.
func TestScriptsDoNotSeeTheServicesSecrets(t *testing.T) {
	t.Setenv("ORCHESTRATOR_AUTH_TOKEN", "tok-s3cret-e2e")
	t.Setenv("ORCHESTRATOR_SURREAL_PASS", "surreal-s3cret-e2e")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "aws-s3cret-e2e")
	t.Setenv("HCLOUD_TOKEN", "passed-on-purpose")
	t.Setenv("PROVISIONING_CUSTOM", "provisioning-var")
	dir := t.TempDir()
	script := filepath.Join(dir, "provisioning")
	require.NoError(t, os.WriteFile(script, []byte(`def --wrapped main [...rest] {
    $env | items {|k, v| $"($k)=($v | to text)" } | str join "\n" | print
}
`), 0o644))
	cfg := appConfig(t, withNu(t, script), func(c *app.Config) {
		c.ScriptEnvPass = []string{"HCLOUD_TOKEN"}
		// The token is in the environment, but the API itself is not under
		// test here: requests go without it.
	})
	a, _ := launchApp(t, cfg)
	h := &harness{t: t, app: a, base: baseURL(a)}
	id := h.submit("/workflows/servers/create", map[string]any{"infra": "lab", "settings": "./s.yaml", "servers": []string{"env-01"}})
	task, _ := waitTask(t, h.base, id, 60*time.Second, func(t storage.Task) bool { return t.Status.Terminal() })
	require.Equal(t, storage.StatusCompleted, task.Status)
	out := task.Steps[0].Output
	assert.Contains(t, out, "PATH=")
	assert.Contains(t, out, "PROVISIONING_CUSTOM=provisioning-var")
	assert.Contains(t, out, "HCLOUD_TOKEN=passed-on-purpose", "--script-env-pass names it")
	for _, secret := range []string{"tok-s3cret-e2e", "surreal-s3cret-e2e", "aws-s3cret-e2e"} {
		assert.NotContains(t, out, secret)
	}
	// Of the orchestrator's variables only the step's own identity is there.
	for _, line := range strings.Split(out, "\n") {
		name, _, _ := strings.Cut(line, "=")
		if strings.HasPrefix(name, "ORCHESTRATOR_") {
			assert.Contains(t, []string{"ORCHESTRATOR_TASK_ID", "ORCHESTRATOR_STEP", "ORCHESTRATOR_ATTEMPT", "ORCHESTRATOR_RUN_TOKEN"}, name, "leaked: %s", line)
		}
	}
}

// Without --instance a deployment names itself after its Temporal
// namespace and that namespace's unique id: stable across restarts (the
// janitor keeps owning its environments), different for another
// deployment (which never sweeps them).
func TestInstanceDerivedFromTheNamespace(t *testing.T) {
	cfg := appConfig(t, withNu(t, filepath.Join(t.TempDir(), "unused")))
	require.Empty(t, cfg.Instance)
	a, _ := launchApp(t, cfg)
	first := a.Config().Instance
	assert.Regexp(t, `^default-[0-9a-f]{8}$`, first)
	a.Stop(t.Context())

	again, _ := launchApp(t, cfg)
	assert.Equal(t, first, again.Config().Instance, "the same data dir is the same deployment")

	other, _ := launchApp(t, appConfig(t))
	assert.NotEqual(t, first, other.Config().Instance, "another deployment")
}
