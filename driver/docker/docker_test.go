package docker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/driver"
	"github.com/provisioning/orchestrator/internal/testsupport"
	"github.com/provisioning/orchestrator/testenv"
)

// dockerTestTimeout bounds each Docker test; the vfs storage driver makes
// container creation and removal slower than usual.
const dockerTestTimeout = 2 * time.Minute

func dockerCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), dockerTestTimeout)
	t.Cleanup(cancel)
	return ctx
}

// dockerEnv is one test's environment on the real engine.
type dockerEnv struct {
	rt    *Runtime
	image string
	plan  testenv.Plan
}

// newDockerEnv builds a plan by hand (a random environment id, the busybox
// test image, a sleeping command per node) and registers its removal.
func newDockerEnv(t *testing.T, nodes ...string) *dockerEnv {
	t.Helper()
	cli := testsupport.Docker(t)
	img := testsupport.BusyboxImage(t, cli)
	rt := &Runtime{Client: cli, Logger: slog.New(slog.DiscardHandler)}
	envID := uuid.NewString()
	p := testenv.Plan{
		EnvID:       envID,
		NetworkName: testenv.NetworkName(envID),
		Labels:      testenv.EnvLabels(envID),
	}
	for _, name := range nodes {
		p.Nodes = append(p.Nodes, testenv.NodePlan{
			Name:          name,
			ContainerName: testenv.ContainerName(envID, name),
			Role:          "worker",
			Image:         img,
			Command:       []string{"sleep", "3600"},
			Labels:        testenv.NodeLabels(envID, name, "worker"),
		})
	}
	t.Cleanup(func() {
		// A fresh context: the test's may be done by now.
		ctx, cancel := context.WithTimeout(context.Background(), dockerTestTimeout)
		defer cancel()
		if _, err := rt.RemoveEnvironment(ctx, envID); err != nil {
			t.Errorf("cleanup of environment %s: %v", envID, err)
		}
	})
	return &dockerEnv{rt: rt, image: img, plan: p}
}

// withFreeSubnet sets a random /24 in 10.200.0.0–10.249.255.0 that overlaps
// no existing network. Tests (and other packages' tests) run in parallel, so
// a network create can still lose a race; createNetwork retries then.
func (e *dockerEnv) withFreeSubnet(t *testing.T, ctx context.Context) {
	t.Helper()
	used, err := e.rt.UsedSubnets(ctx)
	require.NoError(t, err)
	for range 100 {
		cand := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(200 + rand.IntN(50)), byte(rand.IntN(256)), 0}), 24)
		if !slices.ContainsFunc(used, func(u string) bool {
			p, err := netip.ParsePrefix(u)
			return err == nil && p.Overlaps(cand)
		}) {
			e.plan.Subnet = cand.String()
			return
		}
	}
	t.Fatal("no free /24 found in 10.200.0.0/14")
}

func (e *dockerEnv) createNetwork(t *testing.T, ctx context.Context) (id, subnet string) {
	t.Helper()
	requested := e.plan.Subnet != ""
	for attempt := 0; ; attempt++ {
		id, subnet, err := e.rt.CreateNetwork(ctx, e.plan)
		if err == nil {
			return id, subnet
		}
		if !requested || attempt == 4 || !strings.Contains(err.Error(), "overlap") {
			require.NoError(t, err)
		}
		e.withFreeSubnet(t, ctx)
	}
}

// up creates the network and every node, starts them and waits until all
// run.
func (e *dockerEnv) up(t *testing.T, ctx context.Context) []testenv.NodeStatus {
	t.Helper()
	e.createNetwork(t, ctx)
	for _, n := range e.plan.Nodes {
		id, err := e.rt.CreateNode(ctx, e.plan, n)
		require.NoError(t, err)
		require.NoError(t, e.rt.StartNode(ctx, id))
	}
	var nodes []testenv.NodeStatus
	waitUntil(t, 30*time.Second, func() (bool, string) {
		var err error
		nodes, err = e.rt.InspectNodes(ctx, e.plan.EnvID)
		require.NoError(t, err)
		if len(nodes) != len(e.plan.Nodes) {
			return false, fmt.Sprintf("%d nodes, want %d", len(nodes), len(e.plan.Nodes))
		}
		for _, n := range nodes {
			if n.State != "running" || n.IP == "" {
				return false, fmt.Sprintf("node %s: state %s ip %q", n.Node, n.State, n.IP)
			}
		}
		return true, ""
	})
	return nodes
}

func (e *dockerEnv) containerID(t *testing.T, nodes []testenv.NodeStatus, node string) string {
	t.Helper()
	i := slices.IndexFunc(nodes, func(n testenv.NodeStatus) bool { return n.Node == node })
	require.GreaterOrEqual(t, i, 0, "node %s not found", node)
	return nodes[i].ContainerID
}

// waitUntil polls cond every 50ms until it holds or timeout passes; it
// fails the test with cond's last explanation.
func waitUntil(t *testing.T, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s: %s", timeout, why)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// labelled counts the containers, networks and volumes carrying label
// (key=value), queried directly on the engine.
func labelled(t *testing.T, ctx context.Context, rt *Runtime, labels ...string) testenv.RemovedCounts {
	t.Helper()
	f := filters.NewArgs()
	for _, l := range labels {
		f.Add("label", l)
	}
	cs, err := rt.Client.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
	require.NoError(t, err)
	ns, err := rt.Client.NetworkList(ctx, network.ListOptions{Filters: f})
	require.NoError(t, err)
	vs, err := rt.Client.VolumeList(ctx, volume.ListOptions{Filters: f})
	require.NoError(t, err)
	return testenv.RemovedCounts{Containers: len(cs), Networks: len(ns), Volumes: len(vs.Volumes)}
}

func TestDockerNewRuntime(t *testing.T) {
	testsupport.Docker(t) // skip (or fail in CI) without an engine
	ctx := dockerCtx(t)
	rt, err := New(ctx)
	require.NoError(t, err)
	require.NoError(t, rt.Close())

	t.Setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
	_, err = New(ctx)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "unreachable")
	assert.Contains(t, err.Error(), "DOCKER_HOST")
	assert.Contains(t, err.Error(), "/nonexistent/docker.sock")
}

func TestDockerEnsureImage(t *testing.T) {
	t.Parallel()
	e := newDockerEnv(t)
	ctx := dockerCtx(t)

	require.NoError(t, e.rt.EnsureImage(ctx, e.image))

	const missing = "orchestrator-test/does-not-exist:1"
	err := e.rt.EnsureImage(ctx, missing)
	require.Error(t, err)
	assert.True(t, driver.IsImageMissing(err), "%v", err)
	assert.True(t, driver.IsImageMissing(fmt.Errorf("wrapped: %w", err)))
	var ie *driver.ImageError
	require.ErrorAs(t, err, &ie)
	assert.Equal(t, missing, ie.Ref)
	assert.Contains(t, err.Error(), "image "+missing+" is not present locally and could not be pulled")
	assert.Contains(t, err.Error(), "build or load it")

	assert.Error(t, e.rt.EnsureImage(ctx, ""))
	assert.False(t, driver.IsImageMissing(errors.New("other")))
}

func TestDockerNetworkWithLabelsAndSubnet(t *testing.T) {
	t.Parallel()
	e := newDockerEnv(t)
	ctx := dockerCtx(t)
	e.plan.Labels["io.provisioning.orchestrator/test-extra"] = "yes"
	e.withFreeSubnet(t, ctx)
	id, subnet := e.createNetwork(t, ctx)
	prefix := netip.MustParsePrefix(e.plan.Subnet)
	assert.Equal(t, prefix.String(), subnet)

	ins, err := e.rt.Client.NetworkInspect(ctx, id, network.InspectOptions{})
	require.NoError(t, err)
	assert.Equal(t, e.plan.NetworkName, ins.Name)
	assert.Equal(t, "bridge", ins.Driver)
	require.Len(t, ins.IPAM.Config, 1)
	assert.Equal(t, prefix.String(), ins.IPAM.Config[0].Subnet)
	assert.Equal(t, prefix.Addr().Next().String(), ins.IPAM.Config[0].Gateway, "gateway is the first host")
	assert.Equal(t, testenv.ManagedByValue, ins.Labels[testenv.ManagedByLabel])
	assert.Equal(t, e.plan.EnvID, ins.Labels[testenv.EnvIDLabel])
	assert.Equal(t, "yes", ins.Labels["io.provisioning.orchestrator/test-extra"])

	// Idempotent: the same network comes back.
	id2, subnet2, err := e.rt.CreateNetwork(ctx, e.plan)
	require.NoError(t, err)
	assert.Equal(t, id, id2)
	assert.Equal(t, subnet, subnet2)
	got, err := e.rt.networkSubnet(ctx, e.plan.NetworkName)
	require.NoError(t, err)
	assert.Equal(t, subnet, got)

	// Asking for the same network with another subnet is an error, not a
	// silent reuse.
	other := e.plan
	other.Subnet = "10.199.255.0/24"
	_, _, err = e.rt.CreateNetwork(ctx, other)
	assert.ErrorContains(t, err, "not the requested")

	used, err := e.rt.UsedSubnets(ctx)
	require.NoError(t, err)
	assert.Contains(t, used, subnet)
	assert.True(t, slices.IsSorted(used))

	envs, err := e.rt.ListManagedEnvironments(ctx, "")
	require.NoError(t, err)
	assert.Equal(t, testenv.RemovedCounts{Networks: 1}, envs[e.plan.EnvID])
}

func TestDockerNetworkEngineChosenSubnet(t *testing.T) {
	t.Parallel()
	e := newDockerEnv(t)
	ctx := dockerCtx(t)
	_, subnet := e.createNetwork(t, ctx)
	_, err := netip.ParsePrefix(subnet)
	require.NoError(t, err, "engine-chosen subnet %q", subnet)
	used, err := e.rt.UsedSubnets(ctx)
	require.NoError(t, err)
	assert.Contains(t, used, subnet)
}

func TestDockerNodesPingEachOtherByName(t *testing.T) {
	t.Parallel()
	e := newDockerEnv(t, "alpha", "beta")
	ctx := dockerCtx(t)
	e.withFreeSubnet(t, ctx)
	nodes := e.up(t, ctx)
	prefix := netip.MustParsePrefix(e.plan.Subnet)

	require.Len(t, nodes, 2)
	for i, want := range []string{"alpha", "beta"} {
		n := nodes[i]
		assert.Equal(t, want, n.Node)
		assert.Equal(t, "worker", n.Role)
		assert.Equal(t, testenv.ContainerName(e.plan.EnvID, want), n.Name)
		assert.Equal(t, e.image, n.Image)
		assert.True(t, prefix.Contains(netip.MustParseAddr(n.IP)), "ip %s in %s", n.IP, prefix)
		assert.False(t, n.StartedAt.IsZero())
		assert.True(t, n.FinishedAt.IsZero())
		assert.False(t, n.CreatedAt.IsZero())
	}

	for _, pair := range [][2]string{{"alpha", "beta"}, {"beta", "alpha"}} {
		res, err := e.rt.Exec(ctx, e.containerID(t, nodes, pair[0]), []string{"ping", "-c1", "-W2", pair[1]}, 20*time.Second)
		require.NoError(t, err)
		assert.Equal(t, 0, res.ExitCode, "%s ping %s: %+v", pair[0], pair[1], res)
		assert.Contains(t, res.Stdout, "1 packets received")
	}

	res, err := e.rt.Exec(ctx, e.containerID(t, nodes, "alpha"), []string{"hostname"}, 10*time.Second)
	require.NoError(t, err)
	assert.Equal(t, "alpha\n", res.Stdout, "hostname is the node name")
}

func TestDockerLimitsVisibleInInspect(t *testing.T) {
	t.Parallel()
	e := newDockerEnv(t, "limited")
	ctx := dockerCtx(t)
	e.plan.Nodes[0].NanoCPUs = 500 * 1_000_000 // 500 millicores
	e.plan.Nodes[0].MemoryBytes = 64 << 20     // 64 MiB
	e.plan.Nodes[0].TmpBytes = 4 << 20         // a 4 MiB tmpfs on /tmp
	nodes := e.up(t, ctx)

	ins, err := e.rt.Client.ContainerInspect(ctx, nodes[0].ContainerID)
	require.NoError(t, err)
	assert.Equal(t, int64(500000000), ins.HostConfig.NanoCPUs)
	assert.Equal(t, int64(64*1024*1024), ins.HostConfig.Memory)
	require.NotNil(t, ins.HostConfig.PidsLimit, "a pids limit is set")
	assert.Equal(t, int64(DefaultPidsLimit), *ins.HostConfig.PidsLimit)
	assert.Equal(t, "json-file", ins.HostConfig.LogConfig.Type)
	assert.Equal(t, map[string]string{"max-size": "10m", "max-file": "3"}, ins.HostConfig.LogConfig.Config, "node logs rotate")
	assert.Equal(t, "limited", ins.Config.Hostname)
	assert.Equal(t, []string{"sleep", "3600"}, []string(ins.Config.Cmd))
	require.NotNil(t, ins.HostConfig.Init, "nodes run the engine's init")
	assert.True(t, *ins.HostConfig.Init)
	assert.Contains(t, []container.RestartPolicyMode{"", container.RestartPolicyDisabled}, ins.HostConfig.RestartPolicy.Name)
	assert.Equal(t, "limited", ins.Config.Labels[testenv.NodeLabel])
	assert.Equal(t, "worker", ins.Config.Labels[testenv.RoleLabel])
	assert.Equal(t, e.plan.EnvID, ins.Config.Labels[testenv.EnvIDLabel])
	assert.Equal(t, testenv.ManagedByValue, ins.Config.Labels[testenv.ManagedByLabel])
	ep := ins.NetworkSettings.Networks[e.plan.NetworkName]
	require.NotNil(t, ep, "attached to the environment network")
	assert.Contains(t, ep.Aliases, "limited")
	assert.Len(t, ins.NetworkSettings.Networks, 1, "attached to no other network")

	assert.Equal(t, int64(500000000), nodes[0].NanoCPUs)
	assert.Equal(t, int64(64<<20), nodes[0].MemoryBytes)
	assert.Equal(t, int64(DefaultPidsLimit), nodes[0].PidsLimit)
	assert.Equal(t, map[string]string{"/tmp": "size=4m,mode=1777"}, ins.HostConfig.Tmpfs)
	assert.Equal(t, map[string]string{"/tmp": "size=4m,mode=1777"}, nodes[0].Tmpfs)

	// /tmp holds 4 MiB and no more.
	res, err := e.rt.Exec(ctx, nodes[0].ContainerID, []string{"sh", "-c",
		"dd if=/dev/zero of=/tmp/fill bs=1M count=3 2>&1 && echo FIT3; dd if=/dev/zero of=/tmp/more bs=1M count=8 2>&1 && echo FIT11"}, 60*time.Second)
	require.NoError(t, err)
	assert.Contains(t, res.Stdout, "FIT3")
	assert.NotContains(t, res.Stdout, "FIT11", "writing past the tmpfs size must fail")
	assert.Contains(t, res.Stdout, "No space left on device")

	// The limit holds: a node cannot start more processes than it allows.
	res, err = e.rt.Exec(ctx, nodes[0].ContainerID, []string{"sh", "-c",
		"i=0; while [ $i -lt 1100 ]; do sleep 300 & i=$((i+1)); done; echo ALLFORKED"}, 60*time.Second)
	require.NoError(t, err)
	assert.False(t, res.TimedOut)
	assert.NotContains(t, res.Stdout, "ALLFORKED", "forking past the limit must fail")
	assert.NotEqual(t, 0, res.ExitCode, "stderr: %s", res.Stderr)
}

// disk_mb is the engine's storage-opt size: enforced where the storage
// driver has quotas (the node reports the limit), refused with a message
// naming the field and the alternative where it has none (vfs on ext4,
// as on the CI machines).
func TestDockerDiskLimit(t *testing.T) {
	t.Parallel()
	e := newDockerEnv(t, "disk")
	ctx := dockerCtx(t)
	e.plan.Nodes[0].DiskBytes = 64 << 20
	e.createNetwork(t, ctx)
	id, err := e.rt.CreateNode(ctx, e.plan, e.plan.Nodes[0])
	if err != nil {
		var spec *driver.SpecError
		require.ErrorAs(t, err, &spec)
		assert.Contains(t, err.Error(), "node disk: resources.disk_mb cannot be enforced by this engine")
		assert.Contains(t, err.Error(), "tmp_mb")
		info, ierr := e.rt.Client.Info(ctx)
		require.NoError(t, ierr)
		t.Logf("storage driver %s has no quotas here: %v", info.Driver, err)
		return
	}
	require.NoError(t, e.rt.StartNode(ctx, id))
	nodes, err := e.rt.InspectNodes(ctx, e.plan.EnvID)
	require.NoError(t, err)
	require.Len(t, nodes, 1)
	assert.Equal(t, "64M", nodes[0].DiskLimit)
}

func TestDockerExec(t *testing.T) {
	t.Parallel()
	e := newDockerEnv(t, "runner")
	ctx := dockerCtx(t)
	id := e.up(t, ctx)[0].ContainerID

	t.Run("passing", func(t *testing.T) {
		res, err := e.rt.Exec(ctx, id, []string{"sh", "-c", "echo to-out; echo to-err >&2"}, 10*time.Second)
		require.NoError(t, err)
		assert.Equal(t, 0, res.ExitCode)
		assert.Equal(t, "to-out\n", res.Stdout)
		assert.Equal(t, "to-err\n", res.Stderr)
		assert.False(t, res.TimedOut)
		assert.False(t, res.StartedAt.IsZero())
		assert.Equal(t, res.Duration.Milliseconds(), res.DurationMS)
	})
	t.Run("failing", func(t *testing.T) {
		res, err := e.rt.Exec(ctx, id, []string{"sh", "-c", "echo partial; echo broken >&2; exit 3"}, 10*time.Second)
		require.NoError(t, err, "a non-zero exit is a result, not an error")
		assert.Equal(t, 3, res.ExitCode)
		assert.Equal(t, "partial\n", res.Stdout)
		assert.Equal(t, "broken\n", res.Stderr)
	})
	t.Run("argv is not shell-interpreted", func(t *testing.T) {
		res, err := e.rt.Exec(ctx, id, []string{"echo", "$HOME", "*", "a;b"}, 10*time.Second)
		require.NoError(t, err)
		assert.Equal(t, 0, res.ExitCode)
		assert.Equal(t, "$HOME * a;b\n", res.Stdout)
	})
	t.Run("command not found", func(t *testing.T) {
		res, err := e.rt.Exec(ctx, id, []string{"no-such-command"}, 10*time.Second)
		require.NoError(t, err)
		// Engine 20.10 says 126 (not 127) and writes runc's message to the
		// exec's stdout stream, not stderr.
		assert.Contains(t, []int{126, 127}, res.ExitCode, "%+v", res)
		assert.Contains(t, res.Stdout+res.Stderr, "executable file not found")
	})
	t.Run("output keeps the last 64 KiB", func(t *testing.T) {
		// seq 1 100000 prints 588,895 bytes.
		res, err := e.rt.Exec(ctx, id, []string{"seq", "1", "100000"}, 30*time.Second)
		require.NoError(t, err)
		assert.Equal(t, 0, res.ExitCode)
		assert.True(t, res.StdoutTruncated)
		assert.False(t, res.StderrTruncated)
		assert.LessOrEqual(t, len(res.Stdout), MaxOutputBytes)
		assert.Greater(t, len(res.Stdout), MaxOutputBytes-16)
		assert.True(t, strings.HasSuffix(res.Stdout, "\n99999\n100000\n"))
	})
	t.Run("missing container", func(t *testing.T) {
		_, err := e.rt.Exec(ctx, "orch-no-such-container", []string{"true"}, 10*time.Second)
		require.Error(t, err)
		assert.True(t, cerrdefs.IsNotFound(err), "%v", err)
	})
	t.Run("empty argv", func(t *testing.T) {
		_, err := e.rt.Exec(ctx, id, nil, time.Second)
		assert.Error(t, err)
	})
}

func TestDockerExecTimeout(t *testing.T) {
	t.Parallel()
	e := newDockerEnv(t, "slow")
	ctx := dockerCtx(t)
	id := e.up(t, ctx)[0].ContainerID

	hbCtx := driver.WithHeartbeat(ctx, func(string) {})
	start := time.Now()
	res, err := e.rt.Exec(hbCtx, id, []string{"sh", "-c", "echo started; sleep 30"}, time.Second)
	elapsed := time.Since(start)
	require.NoError(t, err)
	assert.True(t, res.TimedOut)
	assert.Equal(t, -1, res.ExitCode)
	assert.Less(t, elapsed, 10*time.Second, "returns at the timeout, not when the command ends")
	assert.GreaterOrEqual(t, res.Duration, time.Second)
	assert.Equal(t, "started\n", res.Stdout, "output up to the timeout is kept")

	// A cancelled context ends the exec with an error (not a timeout).
	cctx, cancel := context.WithCancel(ctx)
	time.AfterFunc(200*time.Millisecond, cancel)
	res, err = e.rt.Exec(cctx, id, []string{"sleep", "30"}, time.Minute)
	require.ErrorIs(t, err, context.Canceled)
	assert.False(t, res.TimedOut)
}

func TestDockerLogs(t *testing.T) {
	t.Parallel()
	e := newDockerEnv(t, "talker")
	e.plan.Nodes[0].Command = []string{"sh", "-c", "echo hello-from-node; echo hello-on-stderr >&2; echo second-line; sleep 3600"}
	ctx := dockerCtx(t)
	id := e.up(t, ctx)[0].ContainerID

	var stdout, stderr string
	waitUntil(t, 20*time.Second, func() (bool, string) {
		var err error
		stdout, stderr, err = e.rt.Logs(ctx, id, 0)
		require.NoError(t, err)
		return strings.Contains(stdout, "second-line") && strings.Contains(stderr, "hello-on-stderr"),
			fmt.Sprintf("stdout %q stderr %q", stdout, stderr)
	})
	assert.Contains(t, stdout, "hello-from-node")
	assert.NotContains(t, stdout, "hello-on-stderr")
	assert.NotContains(t, stderr, "hello-from-node")
	// Every line starts with the engine's RFC 3339 timestamp.
	for line := range strings.Lines(stdout) {
		ts, _, ok := strings.Cut(line, " ")
		require.True(t, ok, "line %q", line)
		_, err := time.Parse(time.RFC3339Nano, ts)
		assert.NoError(t, err, "line %q", line)
	}

	// The engine orders lines of the two streams only roughly (separate
	// copiers), so the last line may be either second-line or the stderr one.
	stdout, stderr, err := e.rt.Logs(ctx, id, 1)
	require.NoError(t, err)
	assert.Equal(t, 1, strings.Count(stdout+stderr, "\n"), "tail 1 keeps one line: %q %q", stdout, stderr)
	assert.NotContains(t, stdout, "hello-from-node", "tail 1 keeps only the last line")

	_, _, err = e.rt.Logs(ctx, "orch-no-such-container", 10)
	assert.True(t, cerrdefs.IsNotFound(err), "%v", err)
}

func TestDockerInspectNodesReportsStates(t *testing.T) {
	t.Parallel()
	e := newDockerEnv(t, "idle", "quits", "up")
	ctx := dockerCtx(t)
	e.plan.Nodes[1].Command = []string{"sh", "-c", "exit 7"}
	e.createNetwork(t, ctx)
	ids := map[string]string{}
	for _, n := range e.plan.Nodes {
		id, err := e.rt.CreateNode(ctx, e.plan, n)
		require.NoError(t, err)
		ids[n.Name] = id
	}
	require.NoError(t, e.rt.StartNode(ctx, ids["quits"]))
	require.NoError(t, e.rt.StartNode(ctx, ids["up"]))

	var nodes []testenv.NodeStatus
	waitUntil(t, 30*time.Second, func() (bool, string) {
		var err error
		nodes, err = e.rt.InspectNodes(ctx, e.plan.EnvID)
		require.NoError(t, err)
		states := map[string]string{}
		for _, n := range nodes {
			states[n.Node] = n.State
		}
		want := map[string]string{"idle": "created", "quits": "exited", "up": "running"}
		return fmt.Sprint(states) == fmt.Sprint(want), fmt.Sprintf("states %v", states)
	})
	require.Equal(t, []string{"idle", "quits", "up"}, []string{nodes[0].Node, nodes[1].Node, nodes[2].Node}, "sorted by node")
	assert.True(t, nodes[0].StartedAt.IsZero())
	assert.Empty(t, nodes[0].IP, "a container that never ran has no address")
	assert.Equal(t, 7, nodes[1].ExitCode)
	assert.False(t, nodes[1].FinishedAt.IsZero())
	assert.NotEmpty(t, nodes[2].IP)

	// Starting a running container again is fine.
	require.NoError(t, e.rt.StartNode(ctx, ids["up"]))

	none, err := e.rt.InspectNodes(ctx, uuid.NewString())
	require.NoError(t, err)
	assert.Empty(t, none)
}

func TestDockerCreateIsIdempotent(t *testing.T) {
	t.Parallel()
	e := newDockerEnv(t, "solo")
	ctx := dockerCtx(t)

	netID, subnet := e.createNetwork(t, ctx)
	netID2, subnet2, err := e.rt.CreateNetwork(ctx, e.plan)
	require.NoError(t, err)
	assert.Equal(t, netID, netID2)
	assert.Equal(t, subnet, subnet2)

	n := e.plan.Nodes[0]
	id, err := e.rt.CreateNode(ctx, e.plan, n)
	require.NoError(t, err)
	id2, err := e.rt.CreateNode(ctx, e.plan, n)
	require.NoError(t, err)
	assert.Equal(t, id, id2)
	require.NoError(t, e.rt.StartNode(ctx, id))
	id3, err := e.rt.CreateNode(ctx, e.plan, n) // also once running
	require.NoError(t, err)
	assert.Equal(t, id, id3)

	assert.Equal(t, testenv.RemovedCounts{Containers: 1, Networks: 1},
		labelled(t, ctx, e.rt, testenv.EnvIDLabel+"="+e.plan.EnvID), "no duplicates were made")
	envs, err := e.rt.ListManagedEnvironments(ctx, "")
	require.NoError(t, err)
	assert.Equal(t, testenv.RemovedCounts{Containers: 1, Networks: 1}, envs[e.plan.EnvID])
}

func TestDockerCreateRefusesForeignNames(t *testing.T) {
	t.Parallel()
	e := newDockerEnv(t, "taken")
	ctx := dockerCtx(t)
	cli := e.rt.Client

	// A same-named network without our labels.
	foreignNet, err := cli.NetworkCreate(ctx, e.plan.NetworkName, network.CreateOptions{Driver: "bridge"})
	require.NoError(t, err)
	t.Cleanup(func() { _ = cli.NetworkRemove(context.Background(), foreignNet.ID) })
	_, _, err = e.rt.CreateNetwork(ctx, e.plan)
	assert.ErrorContains(t, err, "does not belong to environment")
	require.NoError(t, cli.NetworkRemove(ctx, foreignNet.ID))
	e.createNetwork(t, ctx)

	// A same-named container without our labels.
	foreign, err := cli.ContainerCreate(ctx, &container.Config{Image: e.image, Cmd: []string{"sleep", "3600"}}, nil, nil, nil, e.plan.Nodes[0].ContainerName)
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = cli.ContainerRemove(context.Background(), foreign.ID, container.RemoveOptions{Force: true})
	})
	_, err = e.rt.CreateNode(ctx, e.plan, e.plan.Nodes[0])
	assert.ErrorContains(t, err, "does not belong to environment")
	_, err = cli.ContainerInspect(ctx, foreign.ID)
	assert.NoError(t, err, "the foreign container is left alone")
}

func TestDockerRemoveEnvironment(t *testing.T) {
	t.Parallel()
	e := newDockerEnv(t, "one", "two")
	ctx := dockerCtx(t)
	e.up(t, ctx)
	// The plan makes no volumes yet; cleanup must still remove labelled ones.
	_, err := e.rt.Client.VolumeCreate(ctx, volume.CreateOptions{Labels: testenv.EnvLabels(e.plan.EnvID)})
	require.NoError(t, err)

	envLabel := testenv.EnvIDLabel + "=" + e.plan.EnvID
	want := testenv.RemovedCounts{Containers: 2, Networks: 1, Volumes: 1}
	assert.Equal(t, want, labelled(t, ctx, e.rt, envLabel))
	envs, err := e.rt.ListManagedEnvironments(ctx, "")
	require.NoError(t, err)
	assert.Equal(t, want, envs[e.plan.EnvID])

	removed, err := e.rt.RemoveEnvironment(driver.WithHeartbeat(ctx, func(string) {}), e.plan.EnvID)
	require.NoError(t, err)
	assert.Equal(t, want, removed)
	assert.Equal(t, testenv.RemovedCounts{}, labelled(t, ctx, e.rt, envLabel), "zero labelled objects left")

	again, err := e.rt.RemoveEnvironment(ctx, e.plan.EnvID)
	require.NoError(t, err, "a second removal is not an error")
	assert.Equal(t, testenv.RemovedCounts{}, again)

	envs, err = e.rt.ListManagedEnvironments(ctx, "")
	require.NoError(t, err)
	assert.NotContains(t, envs, e.plan.EnvID)

	_, err = e.rt.RemoveEnvironment(ctx, "")
	assert.Error(t, err, "an empty id must not select anything")
}

func TestDockerRemoveEnvironmentLeavesForeignObjects(t *testing.T) {
	t.Parallel()
	e := newDockerEnv(t, "ours")
	ctx := dockerCtx(t)
	e.up(t, ctx)
	cli := e.rt.Client
	suffix := e.plan.EnvID[:8]
	removeContainer := func(id string) {
		t.Cleanup(func() {
			_ = cli.ContainerRemove(context.Background(), id, container.RemoveOptions{Force: true})
		})
	}

	// Unlabelled network and container, made directly with the client.
	plainNet, err := cli.NetworkCreate(ctx, "orch-test-plain-"+suffix, network.CreateOptions{Driver: "bridge"})
	require.NoError(t, err)
	t.Cleanup(func() { _ = cli.NetworkRemove(context.Background(), plainNet.ID) })
	plain, err := cli.ContainerCreate(ctx,
		&container.Config{Image: e.image, Cmd: []string{"sleep", "3600"}},
		&container.HostConfig{NetworkMode: container.NetworkMode("orch-test-plain-" + suffix)},
		nil, nil, "orch-test-plain-"+suffix)
	require.NoError(t, err)
	removeContainer(plain.ID)
	require.NoError(t, cli.ContainerStart(ctx, plain.ID, container.StartOptions{}))

	// Managed, but another environment.
	otherEnv := uuid.NewString()
	t.Cleanup(func() { _, _ = e.rt.RemoveEnvironment(context.Background(), otherEnv) })
	other, err := cli.ContainerCreate(ctx,
		&container.Config{Image: e.image, Cmd: []string{"sleep", "3600"}, Labels: testenv.EnvLabels(otherEnv)},
		&container.HostConfig{NetworkMode: "none"}, nil, nil, "orch-test-other-"+suffix)
	require.NoError(t, err)
	removeContainer(other.ID)

	// Our environment's id, but without the managed-by label: not ours.
	unmanaged, err := cli.ContainerCreate(ctx,
		&container.Config{Image: e.image, Cmd: []string{"sleep", "3600"}, Labels: map[string]string{testenv.EnvIDLabel: e.plan.EnvID}},
		&container.HostConfig{NetworkMode: "none"}, nil, nil, "orch-test-unmanaged-"+suffix)
	require.NoError(t, err)
	removeContainer(unmanaged.ID)

	removed, err := e.rt.RemoveEnvironment(ctx, e.plan.EnvID)
	require.NoError(t, err)
	assert.Equal(t, testenv.RemovedCounts{Containers: 1, Networks: 1}, removed)

	for name, id := range map[string]string{"unlabelled": plain.ID, "other env": other.ID, "not managed": unmanaged.ID} {
		_, err := cli.ContainerInspect(ctx, id)
		assert.NoError(t, err, "%s container must survive", name)
	}
	ins, err := cli.ContainerInspect(ctx, plain.ID)
	require.NoError(t, err)
	assert.True(t, ins.State.Running, "the unlabelled container keeps running")
	_, err = cli.NetworkInspect(ctx, plainNet.ID, network.InspectOptions{})
	assert.NoError(t, err, "the unlabelled network must survive")

	envs, err := e.rt.ListManagedEnvironments(ctx, "")
	require.NoError(t, err)
	assert.Equal(t, testenv.RemovedCounts{Containers: 1}, envs[otherEnv])
	assert.NotContains(t, envs, e.plan.EnvID, "objects without managed-by are not listed")
}

// What an install orphans inside a node is reaped by the node's init
// (without it, PID 1 is `sleep` and every orphan stays a zombie).
func TestNodeInitReapsOrphans(t *testing.T) {
	t.Parallel()
	e := newDockerEnv(t, "reaper")
	ctx := dockerCtx(t)
	nodes := e.up(t, ctx)
	exec := func(script string) string {
		res, err := e.rt.Exec(ctx, nodes[0].ContainerID, []string{"sh", "-c", script}, 20*time.Second)
		require.NoError(t, err)
		require.Equal(t, 0, res.ExitCode, res.Stderr)
		return strings.TrimSpace(res.Stdout)
	}

	assert.Contains(t, exec(`tr '\0' ' ' < /proc/1/cmdline`), "init", "PID 1 is an init, not the node's command")
	// The subshell exits at once, so the sleep's parent becomes PID 1.
	pid := exec(`(sh -c 'echo $$ > /tmp/orphan.pid; exec sleep 0.2' &); while [ ! -s /tmp/orphan.pid ]; do sleep 0.01; done; cat /tmp/orphan.pid`)
	require.Regexp(t, `^[0-9]+$`, pid)
	// A zombie keeps its /proc entry until it is reaped.
	deadline := time.Now().Add(10 * time.Second)
	for exec(`[ -e /proc/`+pid+` ] && echo present || echo gone`) != "gone" {
		require.True(t, time.Now().Before(deadline), "orphan %s not reaped: %s", pid, exec(`cat /proc/`+pid+`/stat 2>&1; true`))
		time.Sleep(50 * time.Millisecond)
	}
}
