package e2e

// How tests and benchmarks configure, start and stop an in-process
// orchestrator: one configuration builder (appConfig and its options), one
// start/stop helper (launchApp) and, for test environments, one Docker-backed
// variant (startDockerApp). Everything takes testing.TB, so a *testing.T and
// a *testing.B get the same orchestrator.

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/internal/app"
	"github.com/provisioning/orchestrator/internal/testsupport"
	"github.com/provisioning/orchestrator/testenv"
)

// providerStateEnv is the variable that tells the provider where to keep
// its state.
const providerStateEnv = "PROVISIONING_STATE_DIR"

// appConfig is the configuration of an in-process orchestrator in serve
// mode for one test or benchmark: the defaults, but a data dir of its own
// (<tb.TempDir()>/data), a free port for the REST API and for the embedded
// Temporal server, and no Temporal UI. Then each option, in order.
func appConfig(tb testing.TB, opts ...func(*app.Config)) app.Config {
	tb.Helper()
	cfg := app.DefaultConfig()
	cfg.Port = 0
	cfg.TemporalPort = 0
	cfg.TemporalUIPort = -1
	cfg.DataDir = filepath.Join(tb.TempDir(), "data")
	for _, o := range opts {
		o(&cfg)
	}
	return cfg
}

// withNu makes the worker run script (a provisioning entry point) with the
// nu under test (testsupport.NuPath: skips, or fails under
// ORCHESTRATOR_REQUIRE_NU=1, when there is none), under fastPolicy. The
// provider keeps its state in provider-state next to the data dir;
// scriptEnv comes after that in every nu run's environment.
func withNu(tb testing.TB, script string, scriptEnv ...string) func(*app.Config) {
	tb.Helper()
	nu := testsupport.NuPath(tb)
	return func(c *app.Config) {
		c.NuPath = nu
		c.ProvisioningPath = script
		c.Policy = fastPolicy
		stateDir := filepath.Join(filepath.Dir(c.DataDir), "provider-state")
		c.ScriptEnv = append([]string{providerStateEnv + "=" + stateDir}, scriptEnv...)
	}
}

// withDemoProvider is withNu running the shipped demo provider, each step
// delayed 50 ms unless scriptEnv says otherwise.
func withDemoProvider(tb testing.TB, scriptEnv ...string) func(*app.Config) {
	tb.Helper()
	script := filepath.Join(testsupport.RepoRoot(tb), "core", "nulib", "provisioning")
	return withNu(tb, script, append([]string{"PROVISIONING_DEMO_DELAY_MS=50"}, scriptEnv...)...)
}

// providerState is the provider's state dir for the nu runs of cfg: the
// last PROVISIONING_STATE_DIR of its ScriptEnv, "" when it sets none.
func providerState(cfg app.Config) string {
	dir := ""
	for _, kv := range cfg.ScriptEnv {
		if v, ok := strings.CutPrefix(kv, providerStateEnv+"="); ok {
			dir = v
		}
	}
	return dir
}

// withTestEnvs makes image the default of test-environment nodes, turns the
// background janitor off (tests run it by hand) and gives the app an
// instance of its own, <instancePrefix>-<8 hex digits>, which scopes its
// Docker objects and janitor so that parallel test packages and benchmark
// runs never touch each other's.
func withTestEnvs(image, instancePrefix string) func(*app.Config) {
	instance := instancePrefix + "-" + uuid.NewString()[:8]
	return func(c *app.Config) {
		c.TestBaseImage = image
		c.JanitorInterval = 0
		c.Instance = instance
	}
}

// launchApp starts an orchestrator with cfg in-process, logging its warnings
// and errors to tb through the returned appLog, and stops it when tb ends.
// Cleanups tb registers later run before the stop, with the log still open.
func launchApp(tb testing.TB, cfg app.Config) (*app.App, *appLog) {
	tb.Helper()
	lg := &appLog{tb: tb}
	a, err := app.Start(context.Background(), cfg, slog.New(slog.NewTextHandler(lg, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		tb.Fatalf("start orchestrator: %v", err)
	}
	tb.Cleanup(func() {
		// The embedded server's internal pollers log "graceful_stop"
		// warnings while shutting down: noise, so stop forwarding first.
		lg.close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		a.Stop(ctx)
	})
	return a, lg
}

// baseURL is the app's REST API root.
func baseURL(a *app.App) string { return "http://" + a.HTTPAddr() }

// appLog forwards an app's log lines to the test or benchmark log and counts
// them until closed; later lines are dropped, so a line logged during
// shutdown or by a straggling goroutine cannot reach a finished test.
type appLog struct {
	tb     testing.TB
	mu     sync.Mutex
	closed bool
	lines  int
}

func (l *appLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		l.lines++
		l.tb.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (l *appLog) close() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
}

// count is how many lines were forwarded.
func (l *appLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lines
}

// dockerApp is an in-process orchestrator whose test environments run on
// the local Docker engine.
type dockerApp struct {
	app    *app.App
	log    *appLog
	docker *client.Client
	image  string // the busybox test image, the default of every node
}

// startDockerApp runs an orchestrator with test environments on the engine
// (testsupport.Docker: skips, or fails under ORCHESTRATOR_REQUIRE_DOCKER=1,
// when there is none) and busybox nodes, configured by withTestEnvs and then
// mutate. When tb ends, whatever environments of its instance are left
// (a failed test's) are removed before the app stops.
func startDockerApp(tb testing.TB, instancePrefix string, mutate ...func(*app.Config)) dockerApp {
	tb.Helper()
	cli := testsupport.Docker(tb)
	img := testsupport.BusyboxImage(tb, cli)
	// Nodes are converged with the demo provider and the nu under test.
	cfg := appConfig(tb, append([]func(*app.Config){withTestEnvs(img, instancePrefix), withDemoProvider(tb)}, mutate...)...)
	a, lg := launchApp(tb, cfg)
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		ids, err := instanceEnvs(ctx, cli, cfg.Instance)
		if err != nil {
			tb.Errorf("listing leftover environments: %v", err)
		}
		for _, id := range ids {
			_, _ = a.Docker().RemoveEnvironment(ctx, id)
		}
	})
	return dockerApp{app: a, log: lg, docker: cli, image: img}
}

// instanceEnvs lists the ids of the environments that have managed Docker
// objects of instance on cli's engine.
func instanceEnvs(ctx context.Context, cli *client.Client, instance string) ([]string, error) {
	f := filters.NewArgs(
		filters.Arg("label", testenv.ManagedByLabel+"="+testenv.ManagedByValue),
		filters.Arg("label", testenv.InstanceLabel+"="+instance))
	ids := map[string]bool{}
	cs, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
	if err != nil {
		return nil, err
	}
	for _, c := range cs {
		ids[c.Labels[testenv.EnvIDLabel]] = true
	}
	ns, err := cli.NetworkList(ctx, network.ListOptions{Filters: f})
	if err != nil {
		return nil, err
	}
	for _, n := range ns {
		ids[n.Labels[testenv.EnvIDLabel]] = true
	}
	delete(ids, "")
	out := make([]string, 0, len(ids))
	for id := range ids {
		out = append(out, id)
	}
	return out, nil
}

// countObjects counts the containers and networks on cli's engine that
// carry label (key=value).
func countObjects(tb testing.TB, cli *client.Client, label string) (containers, networks int) {
	tb.Helper()
	f := filters.NewArgs(filters.Arg("label", label))
	cs, err := cli.ContainerList(context.Background(), container.ListOptions{All: true, Filters: f})
	require.NoError(tb, err)
	ns, err := cli.NetworkList(context.Background(), network.ListOptions{Filters: f})
	require.NoError(tb, err)
	return len(cs), len(ns)
}
