package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/internal/app"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/testenv"
	"github.com/provisioning/orchestrator/workflows"
)

type envHarness struct {
	*harness
	docker *client.Client
	image  string
}

// startEnvApp runs an orchestrator with Docker (startDockerApp); its
// instance scopes its objects and janitor so parallel test packages never
// touch each other's.
func startEnvApp(t *testing.T, mutate ...func(*app.Config)) *envHarness {
	t.Helper()
	d := startDockerApp(t, "e2e", mutate...)
	return &envHarness{
		harness: &harness{t: t, app: d.app, base: baseURL(d.app), dataDir: d.app.Config().DataDir},
		docker:  d.docker, image: d.image,
	}
}

// instanceEnvs lists env ids of managed objects of this app's instance.
func (h *envHarness) instanceEnvs() []string {
	ids, err := instanceEnvs(context.Background(), h.docker, h.app.Config().Instance)
	require.NoError(h.t, err)
	return ids
}

// objects counts the Docker objects labelled with envID.
func (h *envHarness) objects(envID string) (containers, networks int) {
	return countObjects(h.t, h.docker, testenv.EnvIDLabel+"="+envID)
}

func (h *envHarness) env(id string) testenv.EnvState {
	h.t.Helper()
	r := h.get("/test/environments/" + id)
	require.Equal(h.t, http.StatusOK, r.status, "%s", r.raw)
	var st testenv.EnvState
	require.NoError(h.t, json.Unmarshal(r.env.Data, &st))
	return st
}

func (h *envHarness) waitEnv(id string, timeout time.Duration, cond func(testenv.EnvState) bool) testenv.EnvState {
	h.t.Helper()
	var st testenv.EnvState
	eventually(h.t, timeout, "environment "+id+" condition", func() bool {
		st = h.env(id)
		return cond(st)
	})
	return st
}

func statusIs(s ...string) func(testenv.EnvState) bool {
	return func(st testenv.EnvState) bool {
		for _, x := range s {
			if st.Status == x {
				return true
			}
		}
		return false
	}
}

func (h *envHarness) run(id string, body any) (testenv.TestRun, response) {
	h.t.Helper()
	r := h.postJSON("/test/environments/"+id+"/run", body)
	var run testenv.TestRun
	if r.status == http.StatusOK {
		require.NoError(h.t, json.Unmarshal(r.env.Data, &run))
	}
	return run, r
}

func (h *envHarness) deleteAndWait(id string) testenv.EnvState {
	h.t.Helper()
	r := do(h.t, http.MethodDelete, h.base+"/test/environments/"+id, "", nil)
	require.Contains(h.t, []int{http.StatusOK, http.StatusAccepted}, r.status, "%s", r.raw)
	st := h.waitEnv(id, 60*time.Second, statusIs(workflows.EnvCleaned))
	c, n := h.objects(id)
	assert.Zero(h.t, c, "containers left")
	assert.Zero(h.t, n, "networks left")
	// A second DELETE is not an error.
	r = do(h.t, http.MethodDelete, h.base+"/test/environments/"+id, "", nil)
	assert.Equal(h.t, http.StatusOK, r.status, "%s", r.raw)
	return st
}

func TestEnvSingleTaskservLifecycle(t *testing.T) {
	h := startEnvApp(t)
	id := h.submit("/test/environments/create", map[string]any{
		"config": map[string]any{"type": "single_taskserv", "taskserv": "containerd", "base_image": h.image,
			"resources": map[string]any{"cpu_millicores": 500, "memory_mb": 64}},
		"infra": "prod-stack", "auto_start": true, "auto_cleanup": false,
	})
	st := h.waitEnv(id, 60*time.Second, statusIs(workflows.EnvReady, workflows.EnvError))
	require.Equal(t, workflows.EnvReady, st.Status, st.Error)
	require.Len(t, st.Nodes, 1)
	n := st.Nodes[0]
	assert.Equal(t, "containerd", n.Node)
	assert.Equal(t, "running", n.State)
	assert.NotEmpty(t, n.IP)
	assert.Equal(t, int64(500_000_000), n.NanoCPUs)
	assert.Equal(t, int64(64<<20), n.MemoryBytes)

	// The limits are real: docker inspect shows them.
	ins, err := h.docker.ContainerInspect(context.Background(), n.ContainerID)
	require.NoError(t, err)
	assert.Equal(t, int64(500_000_000), ins.HostConfig.NanoCPUs)
	assert.Equal(t, int64(64<<20), ins.HostConfig.Memory)
	assert.Equal(t, "containerd", ins.Config.Hostname)
	assert.Equal(t, id, ins.Config.Labels[testenv.EnvIDLabel])

	// The task API lists the environment too.
	task := h.task(id)
	assert.Equal(t, "TestEnvironment", task.WorkflowType)

	run, r := h.run(id, nil)
	require.Equal(t, http.StatusOK, r.status, "%s", r.raw)
	assert.True(t, run.Passed, "%+v", run)
	assert.NotZero(t, run.Total)
	assert.Equal(t, workflows.EnvPassed, h.env(id).Status)

	logs := h.get("/test/environments/" + id + "/logs?tail=50")
	require.Equal(t, http.StatusOK, logs.status, "%s", logs.raw)
	var lg struct {
		Nodes []struct{ Node string }
		Tests []testenv.TestResult
	}
	require.NoError(t, json.Unmarshal(logs.env.Data, &lg))
	require.Len(t, lg.Nodes, 1)
	assert.Equal(t, run.Total, len(lg.Tests))

	st = h.deleteAndWait(id)
	assert.Equal(t, "cleanup requested", st.EndReason)
	assert.Equal(t, "Completed", string(h.task(id).Status))
}

func TestEnvServerSimulationPassingAndFailingRuns(t *testing.T) {
	h := startEnvApp(t)
	id := h.submit("/test/environments/create", map[string]any{
		"config": map[string]any{"type": "server_simulation", "server_name": "web-01", "taskservs": []string{"containerd", "kubernetes"}, "base_image": h.image},
		"infra":  "prod-stack", "auto_start": false,
	})
	st := h.waitEnv(id, 60*time.Second, statusIs(workflows.EnvReady, workflows.EnvError))
	require.Equal(t, workflows.EnvReady, st.Status, st.Error)
	assert.Equal(t, "created", st.Nodes[0].State, "auto_start false leaves containers created, not running")

	// Run starts the containers first.
	run, r := h.run(id, map[string]any{"tests": []map[string]any{
		{"name": "echo", "command": []string{"sh", "-c", "echo out; echo err >&2"}},
		{"name": "false", "command": []string{"sh", "-c", "exit 3"}},
	}})
	require.Equal(t, http.StatusOK, r.status, "%s", r.raw)
	assert.False(t, run.Passed)
	require.Len(t, run.Results, 2)
	assert.True(t, run.Results[0].Passed)
	assert.Equal(t, "out\n", run.Results[0].Stdout)
	assert.Equal(t, "err\n", run.Results[0].Stderr)
	assert.False(t, run.Results[1].Passed)
	assert.Equal(t, 3, run.Results[1].ExitCode)
	assert.Equal(t, workflows.EnvFailed, h.env(id).Status)

	run, r = h.run(id, map[string]any{"tests": []map[string]any{{"name": "ok", "node": "web-01", "command": []string{"true"}}}})
	require.Equal(t, http.StatusOK, r.status, "%s", r.raw)
	assert.True(t, run.Passed)
	st = h.env(id)
	assert.Equal(t, workflows.EnvPassed, st.Status)
	assert.Len(t, st.Runs, 2)

	// Bad run requests are 400 naming the field.
	_, r = h.run(id, map[string]any{"tests": []map[string]any{{"name": "x", "node": "nope", "command": []string{"true"}}}})
	assert.Equal(t, http.StatusBadRequest, r.status, "%s", r.raw)
	assert.Contains(t, r.env.Error.Message, "tests[0].node")
	h.deleteAndWait(id)
}

func TestEnvClusterTopologyNodesReachEachOtherAndRunsSerialise(t *testing.T) {
	h := startEnvApp(t)
	id := h.submit("/test/environments/create", map[string]any{
		"config": map[string]any{"type": "cluster_topology", "cluster_type": "kubernetes", "base_image": h.image,
			"topology": map[string]any{
				"nodes": []map[string]any{
					{"name": "cp-01", "role": "control-plane", "taskservs": []string{"etcd"}, "resources": map[string]any{"cpu_millicores": 250, "memory_mb": 32}},
					{"name": "worker-01", "role": "worker"},
					{"name": "worker-02", "role": "worker"},
				},
				"network": map[string]any{"subnet": "10.231.7.0/24"},
			}},
		"auto_start": true,
	})
	st := h.waitEnv(id, 90*time.Second, statusIs(workflows.EnvReady, workflows.EnvError))
	require.Equal(t, workflows.EnvReady, st.Status, st.Error)
	assert.Equal(t, "10.231.7.0/24", st.Network.Subnet)
	require.Len(t, st.Nodes, 3)
	for _, n := range st.Nodes {
		assert.True(t, strings.HasPrefix(n.IP, "10.231.7."), "%s has IP %s", n.Node, n.IP)
	}
	assert.Equal(t, int64(32<<20), st.Nodes[0].MemoryBytes)

	// Default checks include every node pinging every other by name.
	run, r := h.run(id, nil)
	require.Equal(t, http.StatusOK, r.status, "%s", r.raw)
	assert.True(t, run.Passed, "%+v", run)
	pings := 0
	for _, res := range run.Results {
		if strings.HasPrefix(res.Name, "ping") {
			pings++
		}
	}
	assert.Equal(t, 6, pings, "3 nodes × 2 peers")

	// A second run while one is in progress is refused with 409.
	slow := make(chan response, 1)
	go func() {
		b, _ := json.Marshal(map[string]any{"tests": []map[string]any{{"name": "slow", "node": "cp-01", "command": []string{"sleep", "3"}}}})
		slow <- do(t, http.MethodPost, h.base+"/test/environments/"+id+"/run", "application/json", bytes.NewReader(b))
	}()
	eventually(t, 20*time.Second, "slow run to start", func() bool { return h.env(id).Status == workflows.EnvRunning })
	_, r = h.run(id, map[string]any{"tests": []map[string]any{{"name": "fast", "command": []string{"true"}}}})
	assert.Equal(t, http.StatusConflict, r.status, "%s", r.raw)
	assert.Equal(t, http.StatusOK, (<-slow).status)
	h.deleteAndWait(id)
}

func TestEnvTemplateWithAutoCleanup(t *testing.T) {
	h := startEnvApp(t)
	r := h.get("/test/topologies")
	require.Equal(t, http.StatusOK, r.status)
	var tpls []testenv.Template
	require.NoError(t, json.Unmarshal(r.env.Data, &tpls))
	var names []string
	for _, tp := range tpls {
		names = append(names, tp.Name)
	}
	assert.Subset(t, names, []string{"kubernetes_3node", "kubernetes_single", "etcd_cluster", "containerd_test", "postgres_redis"})

	id := h.submit("/test/environments/create", map[string]any{
		"config":     map[string]any{"type": "cluster_topology", "template": "kubernetes_3node"},
		"auto_start": true, "auto_cleanup": true,
	})
	st := h.waitEnv(id, 90*time.Second, statusIs(workflows.EnvReady, workflows.EnvError))
	require.Equal(t, workflows.EnvReady, st.Status, st.Error)
	require.Len(t, st.Nodes, 3)
	assert.Equal(t, "control-plane", st.Nodes[0].Role)
	run, r := h.run(id, nil)
	require.Equal(t, http.StatusOK, r.status, "%s", r.raw)
	assert.True(t, run.Passed, "%+v", run)
	st = h.waitEnv(id, 60*time.Second, statusIs(workflows.EnvCleaned))
	assert.Equal(t, "auto_cleanup after run", st.EndReason)
	c, n := h.objects(id)
	assert.Zero(t, c+n, "auto_cleanup left objects")
}

func TestEnvTTLCleansUp(t *testing.T) {
	h := startEnvApp(t, func(c *app.Config) { c.TestEnvTTL = 3 * time.Second })
	id := h.submit("/test/environments/create", map[string]any{
		"config": map[string]any{"type": "single_taskserv", "taskserv": "etcd", "base_image": h.image}, "auto_start": true,
	})
	st := h.waitEnv(id, 60*time.Second, statusIs(workflows.EnvCleaned, workflows.EnvError))
	require.Equal(t, workflows.EnvCleaned, st.Status, st.Error)
	assert.Equal(t, "ttl expired", st.EndReason)
	c, n := h.objects(id)
	assert.Zero(t, c+n)
}

// brokenImage has no /bin/sh, so its containers are created but cannot start.
func brokenImage(t *testing.T, cli *client.Client) string {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	require.NoError(t, tw.WriteHeader(&tar.Header{Name: "README", Mode: 0o644, Size: 5}))
	_, _ = tw.Write([]byte("empty"))
	require.NoError(t, tw.Close())
	ref := "orchestrator-test/broken:latest"
	rc, err := cli.ImageImport(context.Background(), image.ImportSource{Source: &buf, SourceName: "-"}, ref, image.ImportOptions{})
	require.NoError(t, err)
	_, _ = bytes.NewBuffer(nil).ReadFrom(rc)
	rc.Close()
	return ref
}

func TestEnvRollbackWhenANodeCannotStart(t *testing.T) {
	h := startEnvApp(t)
	broken := brokenImage(t, h.docker)
	body := func(keep bool) map[string]any {
		return map[string]any{
			"config": map[string]any{"type": "cluster_topology", "base_image": h.image, "topology": map[string]any{
				"nodes": []map[string]any{{"name": "good-01"}, {"name": "bad-01", "base_image": broken}},
			}},
			"auto_start": true, "keep_on_failure": keep,
		}
	}
	id := h.submit("/test/environments/create", body(false))
	st := h.waitEnv(id, 90*time.Second, statusIs(workflows.EnvError, workflows.EnvReady))
	require.Equal(t, workflows.EnvError, st.Status)
	assert.Contains(t, st.Error, "bad-01")
	assert.Contains(t, st.Error, "rolled back")
	c, n := h.objects(id)
	assert.Zero(t, c+n, "rollback left objects")
	assert.Equal(t, "Failed", string(h.task(id).Status))

	// keep_on_failure leaves them for debugging; the janitor or DELETE removes them.
	kept := h.submit("/test/environments/create", body(true))
	st = h.waitEnv(kept, 90*time.Second, statusIs(workflows.EnvError, workflows.EnvReady))
	require.Equal(t, workflows.EnvError, st.Status)
	c, n = h.objects(kept)
	assert.Equal(t, 2, c)
	assert.Equal(t, 1, n)
	rep, err := h.app.Janitor().RunOnce(context.Background())
	require.NoError(t, err)
	assert.Contains(t, rep.Removed, kept, "the failed environment's workflow ended, so its objects are leftovers")
	c, n = h.objects(kept)
	assert.Zero(t, c+n)
}

func TestEnvMissingImageFailsClearlyAndLeavesNothing(t *testing.T) {
	h := startEnvApp(t)
	id := h.submit("/test/environments/create", map[string]any{
		"config": map[string]any{"type": "single_taskserv", "taskserv": "postgres", "base_image": "orchestrator-test/not-here:0.1"}, "auto_start": true,
	})
	st := h.waitEnv(id, 60*time.Second, statusIs(workflows.EnvError, workflows.EnvReady))
	require.Equal(t, workflows.EnvError, st.Status)
	assert.Contains(t, st.Error, "orchestrator-test/not-here:0.1")
	assert.Contains(t, st.Error, "not present locally")
	c, n := h.objects(id)
	assert.Zero(t, c+n)
}

func TestJanitorRemovesOnlyOrphanedLabelledObjects(t *testing.T) {
	h := startEnvApp(t)
	ctx := context.Background()
	orphan := uuid.NewString()
	labels := map[string]string{testenv.ManagedByLabel: testenv.ManagedByValue, testenv.EnvIDLabel: orphan, testenv.InstanceLabel: h.app.Config().Instance}
	// What a crash midway through creation leaves: a network and a container.
	nw, err := h.docker.NetworkCreate(ctx, "orch-env-"+orphan, network.CreateOptions{Driver: "bridge", Labels: labels})
	require.NoError(t, err)
	c1, err := h.docker.ContainerCreate(ctx, &container.Config{Image: h.image, Cmd: []string{"sleep", "300"}, Labels: labels}, nil, nil, nil, "orch-orphan-"+orphan[:8])
	require.NoError(t, err)
	// Not ours: no managed-by label. Must survive.
	foreign, err := h.docker.ContainerCreate(ctx, &container.Config{Image: h.image, Cmd: []string{"sleep", "300"},
		Labels: map[string]string{testenv.EnvIDLabel: orphan}}, nil, nil, nil, "foreign-"+orphan[:8])
	require.NoError(t, err)
	t.Cleanup(func() { _ = h.docker.ContainerRemove(ctx, foreign.ID, container.RemoveOptions{Force: true}) })

	// A live environment must survive too.
	live := h.submit("/test/environments/create", map[string]any{
		"config": map[string]any{"type": "single_taskserv", "taskserv": "redis", "base_image": h.image}, "auto_start": true,
	})
	h.waitEnv(live, 60*time.Second, statusIs(workflows.EnvReady))

	rep, err := h.app.Janitor().RunOnce(ctx)
	require.NoError(t, err)
	assert.Contains(t, rep.Removed, orphan)
	assert.Equal(t, 1, rep.Removed[orphan].Containers)
	assert.Equal(t, 1, rep.Removed[orphan].Networks)
	assert.NotContains(t, rep.Removed, live)
	assert.Contains(t, rep.Kept, live)

	_, err = h.docker.ContainerInspect(ctx, c1.ID)
	assert.Error(t, err, "orphan container still exists")
	_, err = h.docker.NetworkInspect(ctx, nw.ID, network.InspectOptions{})
	assert.Error(t, err, "orphan network still exists")
	_, err = h.docker.ContainerInspect(ctx, foreign.ID)
	assert.NoError(t, err, "the janitor removed an object without the managed-by label")
	c, n := h.objects(live)
	assert.Equal(t, 1, c)
	assert.Equal(t, 1, n)
	h.deleteAndWait(live)
}

func TestEnvBadInputCreatesNothing(t *testing.T) {
	h := startEnvApp(t)
	before := len(h.instanceEnvs())
	cases := []struct {
		name  string
		body  string
		field string
	}{
		{"unknown type", `{"config":{"type":"vm"}}`, "config.type"},
		{"zero nodes", `{"config":{"type":"cluster_topology","topology":{"nodes":[]}}}`, "config.topology.nodes"},
		{"duplicate nodes", `{"config":{"type":"cluster_topology","topology":{"nodes":[{"name":"a"},{"name":"a"}]}}}`, "config.topology.nodes[1].name"},
		{"bad hostname", `{"config":{"type":"cluster_topology","topology":{"nodes":[{"name":"Bad_Name"}]}}}`, "config.topology.nodes[0].name"},
		{"bad subnet", `{"config":{"type":"cluster_topology","topology":{"nodes":[{"name":"a"}],"network":{"subnet":"10.0.0.1/33"}}}}`, "config.topology.network.subnet"},
		{"public subnet", `{"config":{"type":"cluster_topology","topology":{"nodes":[{"name":"a"}],"network":{"subnet":"8.8.8.0/24"}}}}`, "config.topology.network.subnet"},
		{"negative cpu", `{"config":{"type":"single_taskserv","taskserv":"etcd","resources":{"cpu_millicores":-1}}}`, "config.resources.cpu_millicores"},
		{"absurd memory", `{"config":{"type":"single_taskserv","taskserv":"etcd","resources":{"memory_mb":99999999}}}`, "config.resources.memory_mb"},
		{"unknown template", `{"config":{"type":"cluster_topology","template":"nope"}}`, "config.template"},
		{"unknown field", `{"config":{"type":"single_taskserv","taskserv":"etcd","cpus":2}}`, "cpus"},
		{"shell in image", `{"config":{"type":"single_taskserv","taskserv":"etcd","base_image":"busybox; rm -rf /"}}`, "config.base_image"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := do(t, http.MethodPost, h.base+"/test/environments/create", "application/json", strings.NewReader(tc.body))
			require.Equal(t, http.StatusBadRequest, r.status, "%s", r.raw)
			assert.Equal(t, tc.field, r.env.Error.Field, "%s", r.raw)
		})
	}
	r := h.get("/test/environments")
	var envs []json.RawMessage
	require.NoError(t, json.Unmarshal(r.env.Data, &envs))
	assert.Empty(t, envs)
	assert.Equal(t, before, len(h.instanceEnvs()))
	r = h.get("/test/environments/" + uuid.NewString())
	assert.Equal(t, http.StatusNotFound, r.status)
	r = do(t, http.MethodDelete, h.base+"/test/environments/"+uuid.NewString(), "", nil)
	assert.Equal(t, http.StatusNotFound, r.status)
}

// A test that runs longer than the Docker activities' 30 s heartbeat
// timeout passes: the driver heartbeats through the activity while the
// exec'd command runs (before, every step over 30 s was killed and
// retried, and the run failed).
func TestEnvLongTestPassesHeartbeating(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a 45 s test command")
	}
	h := startEnvApp(t)
	id := h.submit("/test/environments/create", map[string]any{
		"config": map[string]any{"type": "single_taskserv", "taskserv": "containerd", "base_image": h.image},
		"infra":  "prod-stack", "auto_start": true,
	})
	st := h.waitEnv(id, 60*time.Second, statusIs(workflows.EnvReady, workflows.EnvError))
	require.Equal(t, workflows.EnvReady, st.Status, st.Error)

	run, r := h.run(id, map[string]any{"tests": []map[string]any{
		{"name": "slow", "command": []string{"sh", "-c", "sleep 45; echo done"}, "timeout_seconds": 120},
	}})
	require.Equal(t, http.StatusOK, r.status, "%s", r.raw)
	require.Len(t, run.Results, 1)
	res := run.Results[0]
	assert.True(t, res.Passed, "%+v", res)
	assert.Equal(t, "done\n", res.Stdout)
	assert.GreaterOrEqual(t, res.DurationMS, int64(45_000))
	assert.Equal(t, workflows.EnvPassed, h.env(id).Status)
	h.deleteAndWait(id)
}

// A volume asked for through the API is mounted in the node and removed
// with the environment.
func TestEnvVolumeMountedAndRemoved(t *testing.T) {
	h := startEnvApp(t)
	id := h.submit("/test/environments/create", map[string]any{
		"config": map[string]any{"type": "single_taskserv", "taskserv": "postgres", "base_image": h.image,
			"volumes": []map[string]any{{"name": "data", "path": "/var/lib/postgresql"}}},
		"auto_start": true,
	})
	st := h.waitEnv(id, 60*time.Second, statusIs(workflows.EnvReady, workflows.EnvError))
	require.Equal(t, workflows.EnvReady, st.Status, st.Error)
	ctx := context.Background()
	ins, err := h.docker.ContainerInspect(ctx, st.Nodes[0].ContainerID)
	require.NoError(t, err)
	require.Len(t, ins.Mounts, 1)
	vol := ins.Mounts[0].Name
	assert.Equal(t, "/var/lib/postgresql", ins.Mounts[0].Destination)
	v, err := h.docker.VolumeInspect(ctx, vol)
	require.NoError(t, err)
	assert.Equal(t, id, v.Labels[testenv.EnvIDLabel])

	run, r := h.run(id, map[string]any{"tests": []map[string]any{
		{"name": "write", "command": []string{"sh", "-c", "echo ok > /var/lib/postgresql/f && cat /var/lib/postgresql/f"}},
	}})
	require.Equal(t, http.StatusOK, r.status, "%s", r.raw)
	assert.True(t, run.Passed, "%+v", run)

	end := h.deleteAndWait(id)
	require.NotNil(t, end.Removed)
	assert.Equal(t, 1, end.Removed.Volumes)
	_, err = h.docker.VolumeInspect(ctx, vol)
	assert.Error(t, err, "the volume is removed with the environment")
}

// auto_start creates and converges: the demo provider, run inside each
// node with the pinned nu, installs the node's taskservs (control-plane
// first), and each node really holds them; a failing install names node
// and taskserv and the environment is rolled back.
func TestEnvConvergeInstallsTaskservsInsideNodes(t *testing.T) {
	h := startEnvApp(t)
	id := h.submit("/test/environments/create", map[string]any{
		"config": map[string]any{"type": "cluster_topology", "base_image": h.image, "topology": map[string]any{
			"nodes": []map[string]any{
				{"name": "worker-1", "role": "worker", "taskservs": []string{"containerd", "kubelet"}},
				{"name": "cp-1", "role": "control-plane", "taskservs": []string{"etcd"}},
			}}},
		"infra": "lab", "auto_start": true,
	})
	st := h.waitEnv(id, 2*time.Minute, statusIs(workflows.EnvReady, workflows.EnvError))
	require.Equal(t, workflows.EnvReady, st.Status, st.Error)
	require.Len(t, st.Converge, 3)
	var order []string
	for _, r := range st.Converge {
		order = append(order, r.Node+"/"+r.Taskserv)
		assert.Equal(t, "completed", r.Status, "%+v", r)
		require.NotNil(t, r.ExitCode)
		assert.Equal(t, 0, *r.ExitCode)
		assert.Contains(t, r.Output, "created")
	}
	assert.Equal(t, []string{"cp-1/etcd", "worker-1/containerd", "worker-1/kubelet"}, order)

	// Each node holds its taskservs, and only its own.
	for _, n := range st.Nodes {
		for _, ts := range []string{"etcd", "containerd", "kubelet"} {
			res, err := h.docker.ContainerExecCreate(context.Background(), n.ContainerID, container.ExecOptions{
				Cmd: []string{"test", "-f", "/var/lib/provisioning/taskservs/" + ts + "/state.json"}})
			require.NoError(t, err)
			require.NoError(t, h.docker.ContainerExecStart(context.Background(), res.ID, container.ExecStartOptions{}))
			var code int
			eventually(t, 10*time.Second, "exec finished", func() bool {
				ins, err := h.docker.ContainerExecInspect(context.Background(), res.ID)
				code = ins.ExitCode
				return err == nil && !ins.Running
			})
			want := slices.Contains(n.Taskservs, ts)
			assert.Equal(t, want, code == 0, "node %s holds %s: %v", n.Node, ts, want)
		}
	}
	h.deleteAndWait(id)
}

func TestEnvConvergeFailureNamesNodeAndTaskserv(t *testing.T) {
	h := startEnvApp(t, func(c *app.Config) {
		c.ScriptEnv = append(c.ScriptEnv, "PROVISIONING_DEMO_FAIL=kubelet:permanent")
	})
	id := h.submit("/test/environments/create", map[string]any{
		"config": map[string]any{"type": "server_simulation", "server_name": "web-01", "taskservs": []string{"containerd", "kubelet"},
			"base_image": h.image},
		"auto_start": true,
	})
	st := h.waitEnv(id, 2*time.Minute, statusIs(workflows.EnvReady, workflows.EnvError))
	require.Equal(t, workflows.EnvError, st.Status)
	assert.Contains(t, st.Error, "taskserv kubelet on node web-01: exit code 3")
	assert.Contains(t, st.Error, "(rolled back)")
	require.Len(t, st.Converge, 2)
	assert.Equal(t, "completed", st.Converge[0].Status)
	assert.Equal(t, "failed", st.Converge[1].Status)
	c, n := h.objects(id)
	assert.Zero(t, c+n, "rolled back: nothing left")
}

// The Molecule sequence through the API on the real engine: create with
// auto_start and idempotence converges twice (the demo provider reports
// its changes through PROVISIONING_RESULT_FILE: changed the first time,
// nothing the second), the default checks run `taskserv check` inside the
// nodes, and POST .../converge converges again on demand. A script that
// changes something on every run fails the idempotence check naming the
// taskserv, node and resource.
func TestEnvIdempotenceAndVerify(t *testing.T) {
	h := startEnvApp(t)
	id := h.submit("/test/environments/create", map[string]any{
		"config": map[string]any{"type": "server_simulation", "server_name": "web-01", "taskservs": []string{"containerd", "redis"},
			"base_image": h.image},
		"infra": "lab", "auto_start": true, "idempotence": true,
	})
	st := h.waitEnv(id, 2*time.Minute, statusIs(workflows.EnvReady, workflows.EnvError))
	require.Equal(t, workflows.EnvReady, st.Status, st.Error)
	// A node that asks for no limits gets the service's defaults.
	assert.Equal(t, int64(testenv.DefaultNodeCPUMillicores)*1_000_000, st.Nodes[0].NanoCPUs)
	assert.Equal(t, int64(testenv.DefaultNodeMemoryMB)<<20, st.Nodes[0].MemoryBytes)
	require.NotNil(t, st.Idempotence)
	assert.True(t, st.Idempotence.Passed, "%v", st.Idempotence.Failures)
	for i, r := range st.Converge {
		require.NotNil(t, r.Changed, "%+v", r)
		assert.True(t, *r.Changed, "first converge of %s", r.Taskserv)
		second := st.Idempotence.Results[i]
		require.NotNil(t, second.Changed, "%+v", second)
		assert.False(t, *second.Changed, "second converge of %s", second.Taskserv)
		assert.Contains(t, second.Output, "nothing changed")
	}

	// Verify: the default checks ask the provisioning script in the node.
	run, r := h.run(id, nil)
	require.Equal(t, http.StatusOK, r.status, "%s", r.raw)
	assert.True(t, run.Passed, "%+v", run.Results)
	var checked []string
	for _, res := range run.Results {
		if strings.HasPrefix(res.Name, "taskserv:") {
			checked = append(checked, res.Name)
			assert.Contains(t, res.Stdout, "is installed", res.Name)
		}
	}
	assert.Equal(t, []string{"taskserv:containerd", "taskserv:redis"}, checked)
	// A taskserv the environment never installed fails its check.
	run, r = h.run(id, map[string]any{"tests": []map[string]any{{"name": "etcd there", "taskserv": "etcd"}}})
	require.Equal(t, http.StatusOK, r.status, "%s", r.raw)
	assert.False(t, run.Passed)
	require.Len(t, run.Results, 1)
	assert.Contains(t, run.Results[0].Stderr, "is not installed")

	// Converge again on demand: nothing changes.
	r = h.postJSON("/test/environments/"+id+"/converge", map[string]any{"idempotence": false})
	require.Equal(t, http.StatusOK, r.status, "%s", r.raw)
	var rep testenv.ConvergeReport
	require.NoError(t, json.Unmarshal(r.env.Data, &rep))
	assert.True(t, rep.Passed, rep.Error)
	require.Len(t, rep.Converge, 2)
	for _, c := range rep.Converge {
		require.NotNil(t, c.Changed)
		assert.False(t, *c.Changed)
	}
	assert.Nil(t, rep.Idempotence)
	h.deleteAndWait(id)
}

func TestEnvIdempotenceFailsForANonIdempotentScript(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "provisioning")
	// Installs "work" by appending to a file: every converge changes it.
	require.NoError(t, os.WriteFile(script, []byte(`def --wrapped main [...rest] {
    let ts = $rest | get 2
    mkdir /var/lib/provisioning/taskservs
    $"installed\n" | save --append $"/var/lib/provisioning/taskservs/($ts).log"
    {changed: true, resources: [$"/var/lib/provisioning/taskservs/($ts).log"]} | to json | save --force $env.PROVISIONING_RESULT_FILE
}
`), 0o644))
	h := startEnvApp(t, func(c *app.Config) { c.ProvisioningPath = script })
	id := h.submit("/test/environments/create", map[string]any{
		"config":     map[string]any{"type": "single_taskserv", "taskserv": "nginx", "base_image": h.image},
		"auto_start": true,
	})
	st := h.waitEnv(id, 2*time.Minute, statusIs(workflows.EnvReady, workflows.EnvError))
	require.Equal(t, workflows.EnvReady, st.Status, st.Error)
	r := h.postJSON("/test/environments/"+id+"/converge", map[string]any{"idempotence": true})
	require.Equal(t, http.StatusOK, r.status, "%s", r.raw)
	var rep testenv.ConvergeReport
	require.NoError(t, json.Unmarshal(r.env.Data, &rep))
	assert.False(t, rep.Passed)
	require.NotNil(t, rep.Idempotence)
	node := st.Nodes[0].Node
	assert.Contains(t, rep.Error, "idempotence failed: taskserv nginx on node "+node+": changed on the second converge: /var/lib/provisioning/taskservs/nginx.log")
	st = h.env(id)
	assert.Equal(t, workflows.EnvFailed, st.Status)
	assert.Equal(t, rep.Error, st.Error)
	h.deleteAndWait(id)
}

// A long-lived environment continues as new between runs
// (--test-env-updates-per-run) and goes on serving: run numbers continue,
// the API and cleanup find the current run, and each workflow run's
// history stays short.
func TestEnvContinuesAsNewAndKeepsServing(t *testing.T) {
	h := startEnvApp(t, func(c *app.Config) { c.TestEnvUpdatesPerRun = 2 })
	id := h.submit("/test/environments/create", map[string]any{
		"config":     map[string]any{"type": "single_taskserv", "taskserv": "etcd", "base_image": h.image},
		"auto_start": true,
	})
	st := h.waitEnv(id, 2*time.Minute, statusIs(workflows.EnvReady, workflows.EnvError))
	require.Equal(t, workflows.EnvReady, st.Status, st.Error)
	ctx := t.Context()
	first, err := h.app.Client().DescribeWorkflowExecution(ctx, id, "")
	require.NoError(t, err)
	firstRun := first.WorkflowExecutionInfo.Execution.RunId
	for i := 1; i <= 5; i++ {
		body := map[string]any{"tests": []map[string]any{{"name": "echo", "command": []string{"echo", fmt.Sprint("run ", i)}}}}
		// An update sent while the workflow continues as new goes to the
		// new run: every run must pass.
		run, r := h.run(id, body)
		require.Equal(t, http.StatusOK, r.status, "run %d: %s", i, r.raw)
		assert.Equal(t, i, run.Number)
		assert.True(t, run.Passed)
		assert.Equal(t, fmt.Sprintf("run %d\n", i), run.Results[0].Stdout)
	}
	now, err := h.app.Client().DescribeWorkflowExecution(ctx, id, "")
	require.NoError(t, err)
	assert.NotEqual(t, firstRun, now.WorkflowExecutionInfo.Execution.RunId, "the workflow continued as new")
	assert.Less(t, now.WorkflowExecutionInfo.HistoryLength, int64(60), "the current run's history is short")
	st = h.env(id)
	require.Len(t, st.Runs, 5)
	assert.Empty(t, st.Runs[0].Results[0].Stdout, "older runs keep no output")
	assert.Equal(t, "run 5\n", st.Runs[4].Results[0].Stdout)
	h.deleteAndWait(id)
}

// A long test run cannot starve provisioning: the environment's activities
// run on their own task queue and slots, so with a single provisioning slot
// a server create completes while a 20 s test runs.
func TestLongTestRunDoesNotStarveProvisioning(t *testing.T) {
	h := startEnvApp(t, func(c *app.Config) { c.MaxConcurrentActivities = 1 })
	id := h.submit("/test/environments/create", map[string]any{
		"config": map[string]any{"type": "single_taskserv", "taskserv": "etcd", "base_image": h.image}, "auto_start": true,
	})
	st := h.waitEnv(id, 2*time.Minute, statusIs(workflows.EnvReady, workflows.EnvError))
	require.Equal(t, workflows.EnvReady, st.Status, st.Error)
	runDone := make(chan response, 1)
	go func() {
		r, err := send(http.DefaultClient, http.MethodPost, h.base+"/test/environments/"+id+"/run",
			map[string]any{"tests": []map[string]any{{"name": "long", "command": []string{"sleep", "20"}, "timeout_seconds": 60}}})
		if err != nil {
			r.status = -1
		}
		runDone <- r
	}()
	h.waitEnv(id, 30*time.Second, statusIs(workflows.EnvRunning))
	task := h.submit("/workflows/servers/create", map[string]any{"infra": "lab", "settings": "./s.yaml", "servers": []string{"web-01"}})
	done, _ := waitTask(t, h.base, task, 15*time.Second, func(t storage.Task) bool { return t.Status.Terminal() })
	assert.Equal(t, storage.StatusCompleted, done.Status)
	select {
	case <-runDone:
		t.Fatal("the test run ended before the provisioning task: nothing was shown")
	default:
	}
	r := <-runDone
	assert.Equal(t, http.StatusOK, r.status, "%s", r.raw)
	h.deleteAndWait(id)
}
