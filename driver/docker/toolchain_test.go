package docker

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/internal/testsupport"
)

// The pinned static nu and the provisioning scripts are copied into a
// busybox node through the Engine API, and the user's script then installs
// a taskserv inside the node, where `taskserv check` finds it: the building
// block of converging a test environment.
func TestDockerToolchainRunsProvisioningInsideANode(t *testing.T) {
	t.Parallel()
	nuPath := testsupport.NuPath(t)
	script := filepath.Join(testsupport.RepoRoot(t), "core", "nulib", "provisioning")
	e := newDockerEnv(t, "node-1")
	ctx := dockerCtx(t)
	id := e.up(t, ctx)[0].ContainerID

	nu, inNode, err := e.rt.InstallToolchain(ctx, id, Toolchain{NuPath: nuPath, ScriptPath: script})
	require.NoError(t, err)
	assert.Equal(t, "/opt/provisioning/bin/nu", nu)
	assert.Equal(t, "/opt/provisioning/nulib/provisioning", inNode)
	// A second install (a retried activity) replaces the files.
	_, _, err = e.rt.InstallToolchain(ctx, id, Toolchain{NuPath: nuPath, ScriptPath: script})
	require.NoError(t, err)

	env := []string{
		"PROVISIONING_STATE_DIR=/var/lib/provisioning/state",
		"PROVISIONING_TASKSERV_DIR=/var/lib/provisioning/taskservs",
		"PROVISIONING_DEMO_DELAY_MS=0",
	}
	run := func(args ...string) ExecResult {
		res, err := e.rt.ExecEnv(ctx, id, append([]string{nu, inNode}, args...), env, 2*time.Minute)
		require.NoError(t, err)
		return res
	}
	flags := []string{"--infra", "test-infra", "--settings", "settings.k", "node-1"}
	res := run(append([]string{"taskserv", "check", "containerd"}, flags...)...)
	assert.Equal(t, 1, res.ExitCode, "not installed yet: %+v", res)

	res = run(append([]string{"taskserv", "create", "containerd"}, flags...)...)
	require.Equal(t, 0, res.ExitCode, "stderr: %s", res.Stderr)
	assert.Contains(t, res.Stdout, "taskserv containerd on server node-1 created")

	res = run(append([]string{"taskserv", "check", "containerd"}, flags...)...)
	assert.Equal(t, 0, res.ExitCode, "stderr: %s", res.Stderr)
	assert.Contains(t, res.Stdout, "/var/lib/provisioning/taskservs/containerd/state.json")
	res = run(append([]string{"taskserv", "check", "etcd"}, flags...)...)
	assert.Equal(t, 1, res.ExitCode, "a taskserv never installed is absent")

	// The record is the node's: the container's filesystem holds it.
	ls, err := e.rt.Exec(ctx, id, []string{"cat", "/var/lib/provisioning/taskservs/containerd/state.json"}, 10*time.Second)
	require.NoError(t, err)
	assert.Contains(t, ls.Stdout, `"name": "containerd"`)
}
