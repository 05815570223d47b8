package docker

import (
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/provisioning/orchestrator/testenv"
)

// Environments created at the same moment each get their own subnet:
// choosing a free subnet and creating the network are two engine calls, so
// without coordination they pick the same one and all but one fail. Half
// of the environments share one Runtime (one worker process), the other
// half have a Runtime each (as separate worker processes would).
func TestDockerParallelCreatesGetDistinctSubnets(t *testing.T) {
	t.Parallel()
	ctx := dockerCtx(t)
	const n = 8
	envs := make([]*dockerEnv, n)
	for i := range envs {
		envs[i] = newDockerEnv(t, "node")
	}
	shared := &Runtime{Client: envs[0].rt.Client, Logger: slog.New(slog.DiscardHandler)}
	for i := range n / 2 {
		envs[i].rt = shared
	}
	infos := make([]testenv.EnvInfo, n)
	var g errgroup.Group
	for i, e := range envs {
		g.Go(func() error {
			info, err := e.rt.CreateEnvironment(ctx, e.plan, true)
			infos[i] = info
			if err != nil {
				return fmt.Errorf("environment %d: %w", i, err)
			}
			return nil
		})
	}
	require.NoError(t, g.Wait())

	seen := map[string]int{}
	for i, info := range infos {
		require.NotEmpty(t, info.Subnet, "environment %d", i)
		p := netip.MustParsePrefix(info.Subnet)
		for s, j := range seen {
			assert.False(t, netip.MustParsePrefix(s).Overlaps(p), "environments %d and %d share %s/%s", j, i, s, info.Subnet)
		}
		seen[info.Subnet] = i
		require.Len(t, info.Nodes, 1)
		assert.Equal(t, "running", info.Nodes[0].State)
	}
}

// A node of one environment cannot reach a node of another, by address or
// by name, while nodes of one environment reach each other: each
// environment has its own bridge network, and the engine's iptables rules
// (dockerd must not run with --iptables=false) keep bridges apart.
func TestDockerEnvironmentsAreIsolated(t *testing.T) {
	t.Parallel()
	ctx := dockerCtx(t)
	a, b := newDockerEnv(t, "a1", "a2"), newDockerEnv(t, "b1")
	var wg sync.WaitGroup
	var aNodes, bNodes []testenv.NodeStatus
	wg.Go(func() { aNodes = a.up(t, ctx) })
	wg.Go(func() { bNodes = b.up(t, ctx) })
	wg.Wait()
	require.Len(t, aNodes, 2)
	require.Len(t, bNodes, 1)

	ping := func(from string, to string) int {
		res, err := a.rt.Exec(ctx, from, []string{"ping", "-c1", "-W2", to}, 20*time.Second)
		require.NoError(t, err)
		return res.ExitCode
	}
	// blocked probes up to three times: Docker 20.10 deletes and re-inserts
	// the FORWARD jump to DOCKER-ISOLATION-STAGE-1 on every network create
	// (EnsureJumpRule), so while other tests create networks a single packet
	// can slip through that millisecond window (measured: 17 of 3,000 pings
	// at 10 ms during 30 network create/remove cycles). Missing isolation
	// answers every probe and still fails.
	blocked := func(from, to string) bool {
		for range 3 {
			if ping(from, to) != 0 {
				return true
			}
		}
		return false
	}
	a1 := a.containerID(t, aNodes, "a1")
	assert.Equal(t, 0, ping(a1, "a2"), "nodes of one environment reach each other by name")
	assert.Equal(t, 0, ping(a1, aNodes[1].IP), "and by address")
	assert.True(t, blocked(a1, bNodes[0].IP), "a node reached %s, a node of another environment, three times", bNodes[0].IP)
	assert.NotEqual(t, 0, ping(a1, "b1"), "another environment's node name resolves")
	b1 := b.containerID(t, bNodes, "b1")
	assert.True(t, blocked(b1, aNodes[0].IP), "and the other way round")
}
