package docker

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/driver"
	"github.com/provisioning/orchestrator/internal/testsupport"
	"github.com/provisioning/orchestrator/testenv"
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

// Converge hands the script a result file and reads back its change
// report: the demo provider reports a change on the first install and none
// on the second; a taskserv check (TestSpec.Taskserv) runs the script's
// `taskserv check` in the node; a non-idempotent script reports its change
// every time, naming the resource.
func TestDockerConvergeReportsChangesAndChecksTaskservs(t *testing.T) {
	t.Parallel()
	nuPath := testsupport.NuPath(t)
	script := filepath.Join(testsupport.RepoRoot(t), "core", "nulib", "provisioning")
	e := newDockerEnv(t, "node-1", "node-2", "node-3")
	ctx := dockerCtx(t)
	nodes := e.up(t, ctx)
	id := e.containerID(t, nodes, "node-1")
	e.rt.Toolchain = Toolchain{NuPath: nuPath, ScriptPath: script}
	env := []string{"PROVISIONING_DEMO_DELAY_MS=0", "PROVISIONING_RESULT_FILE=/etc/ignored"}
	spec := testenv.ConvergeSpec{Node: "node-1", Taskserv: "redis", Infra: "lab", Settings: "s.yaml"}

	first, err := e.rt.Converge(ctx, id, spec, env)
	require.NoError(t, err)
	require.True(t, first.Passed, "stderr: %s", first.Stderr)
	require.NotNil(t, first.Report, "report error: %s", first.ReportError)
	assert.True(t, first.Report.Changed)
	assert.Contains(t, first.Report.Resources, "/var/lib/provisioning/taskservs/redis/state.json")

	assert.NotContains(t, first.Stderr, "change-report", "the report is not part of the script's stderr")
	assert.Equal(t, []string{"/opt/provisioning/bin/nu", "/opt/provisioning/nulib/provisioning", "taskserv", "create", "redis",
		"--infra", "lab", "--settings", "s.yaml", "node-1"}, first.Command, "the command shown is the script's, not the wrapper's")

	second, err := e.rt.Converge(ctx, id, spec, env)
	require.NoError(t, err)
	require.NotNil(t, second.Report, "report error: %s", second.ReportError)
	assert.False(t, second.Report.Changed, "stdout: %s", second.Stdout)

	run, err := e.rt.RunTests(ctx, []testenv.TestSpec{
		{Name: "redis", Node: "node-1", Taskserv: "redis", TimeoutSeconds: 60},
		{Name: "etcd", Node: "node-1", Taskserv: "etcd", TimeoutSeconds: 60},
	}, nodes[:1], driver.RunOptions{Infra: "lab", Settings: "s.yaml", Env: env})
	require.NoError(t, err)
	require.Len(t, run.Results, 2)
	assert.True(t, run.Results[0].Passed, "%+v", run.Results[0])
	assert.Equal(t, []string{"/opt/provisioning/bin/nu", "/opt/provisioning/nulib/provisioning", "taskserv", "check", "redis",
		"--infra", "lab", "--settings", "s.yaml", "node-1"}, run.Results[0].Command)
	assert.False(t, run.Results[1].Passed, "etcd was never installed")
	assert.Equal(t, 1, run.Results[1].ExitCode)
	assert.Contains(t, run.Results[1].Stderr, "not installed")

	// A script that changes something on every run, and one that writes
	// garbage, in a fresh node each.
	bad := t.TempDir()
	writeScript(t, filepath.Join(bad, "provisioning"), `def --wrapped main [...rest] {
    let n = (date now | format date "%s%f")
    $n | save --force /tmp/stamp
    {changed: true, resources: ["/tmp/stamp"]} | to json | save --force $env.PROVISIONING_RESULT_FILE
}`)
	e.rt.Toolchain = Toolchain{NuPath: nuPath, ScriptPath: filepath.Join(bad, "provisioning")}
	id2 := e.containerID(t, nodes, "node-2")
	for range 2 {
		res, err := e.rt.Converge(ctx, id2, spec, nil)
		require.NoError(t, err)
		require.True(t, res.Passed, "stderr: %s", res.Stderr)
		require.NotNil(t, res.Report, res.ReportError)
		assert.True(t, res.Report.Changed)
		assert.Equal(t, []string{"/tmp/stamp"}, res.Report.Resources)
	}

	garbage := t.TempDir()
	writeScript(t, filepath.Join(garbage, "provisioning"), `def --wrapped main [...rest] {
    "not json" | save --force $env.PROVISIONING_RESULT_FILE
    print --stderr "provisioning: broke"
    exit 4
}`)
	e.rt.Toolchain = Toolchain{NuPath: nuPath, ScriptPath: filepath.Join(garbage, "provisioning")}
	id3 := e.containerID(t, nodes, "node-3")
	res, err := e.rt.Converge(ctx, id3, spec, nil)
	require.NoError(t, err)
	assert.Equal(t, 4, res.ExitCode, "the script's exit code passes through the wrapper")
	assert.False(t, res.Passed)
	assert.Equal(t, "provisioning: broke", strings.TrimSpace(res.Stderr))
	assert.Nil(t, res.Report)
	assert.Contains(t, res.ReportError, "/var/lib/provisioning/results/redis-")
	assert.Contains(t, res.ReportError, ".json: not a JSON report")
}

func writeScript(t *testing.T, path, body string) {
	t.Helper()
	require.NoError(t, os.WriteFile(path, []byte(body+"\n"), 0o644))
}

func TestSplitReport(t *testing.T) {
	rest, rep, msg := splitReport("warn\n"+reportMarker+"\n{\"changed\": false}", "/r.json")
	assert.Equal(t, "warn", rest)
	require.NotNil(t, rep)
	assert.False(t, rep.Changed)
	assert.Empty(t, msg)

	rest, rep, msg = splitReport("only stderr\n", "/r.json")
	assert.Equal(t, "only stderr\n", rest)
	assert.Nil(t, rep)
	assert.Empty(t, msg)

	_, rep, msg = splitReport(reportMarker+"\ntoo-large 99999", "/r.json")
	assert.Nil(t, rep)
	assert.Equal(t, "/r.json is 99999 bytes, more than the 32768 a report may have", msg)

	_, rep, msg = splitReport(reportMarker+"\n", "/r.json")
	assert.Nil(t, rep, "an empty file is no report")
	assert.Empty(t, msg)
}
