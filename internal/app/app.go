// Package app wires the orchestrator's parts together for the run modes
// (serve, worker, api, temporal). cmd/orchestrator stays a thin wrapper so tests
// start exactly what users start.
package app

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	sdklog "go.temporal.io/sdk/log"

	"github.com/provisioning/orchestrator/activities"
	"github.com/provisioning/orchestrator/driver"
	"github.com/provisioning/orchestrator/driver/docker"
	"github.com/provisioning/orchestrator/driver/nushell"
	"github.com/provisioning/orchestrator/internal/devserver"
	"github.com/provisioning/orchestrator/internal/searchattr"
	"github.com/provisioning/orchestrator/metrics"
	"github.com/provisioning/orchestrator/server"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/testenv"
	"github.com/provisioning/orchestrator/worker"
)

// App is a running orchestrator process.
type App struct {
	cfg      Config
	log      *slog.Logger
	temporal *devserver.Server
	client   client.Client
	store    storage.Store
	worker   *worker.Workers
	http     *http.Server
	httpAddr string
	httpErr  chan error
	docker   *docker.Runtime
	janitor  *worker.Janitor
	stopBg   context.CancelFunc
	bgCtx    context.Context
	// reconciler settles tasks stuck without a workflow (serve, api).
	reconciler *worker.Reconciler
	bg         sync.WaitGroup
	metrics    *metrics.Metrics
	// searchAttrs are the custom search attributes the namespace has
	// (detected once at start-up); workflows start with those only.
	searchAttrs searchattr.Set
}

// Metrics is the app's metrics registry (served at /metrics by the API).
func (a *App) Metrics() *metrics.Metrics { return a.metrics }

// Config is the configuration the app runs with.
func (a *App) Config() Config { return a.cfg }

// Docker is the Docker runtime, nil when no engine was reachable at start.
func (a *App) Docker() *docker.Runtime { return a.docker }

// engine is the Docker runtime as the activities and the API take it: an
// untyped nil without an engine, so their nil checks see "no engine".
func (a *App) engine() driver.Engine {
	if a.docker == nil {
		return nil
	}
	return a.docker
}

// Janitor sweeps leftover Docker objects; nil without Docker or outside
// worker mode.
func (a *App) Janitor() *worker.Janitor { return a.janitor }

// HTTPAddr is the REST API's host:port ("" in worker mode).
func (a *App) HTTPAddr() string { return a.httpAddr }

// TemporalAddress is the Temporal frontend in use.
func (a *App) TemporalAddress() string {
	if a.temporal != nil {
		return a.temporal.Address()
	}
	return a.cfg.TemporalAddress
}

// TemporalUIAddress is the embedded Web UI's host:port, or "".
func (a *App) TemporalUIAddress() string {
	if a.temporal != nil {
		return a.temporal.UIAddress()
	}
	return ""
}

// Client is the Temporal client the app uses.
func (a *App) Client() client.Client { return a.client }

// Store is the task store the app uses.
func (a *App) Store() storage.Store { return a.store }

// Errors reports a fatal serving error (the HTTP listener died).
func (a *App) Errors() <-chan error { return a.httpErr }

// NewLogger builds the process logger: JSON unless format is text or auto
// on a terminal.
func NewLogger(w io.Writer, format string, level slog.Level) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "text" || (format == "auto" && w == os.Stderr && isTerminal(os.Stderr)) {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// Start brings up the parts cfg.Mode asks for and returns once they serve.
// On error, whatever was started is stopped again.
func Start(ctx context.Context, cfg Config, log *slog.Logger) (_ *App, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	a := &App{cfg: cfg, log: log, httpErr: make(chan error, 1), metrics: metrics.New()}
	defer func() {
		if err != nil {
			a.Stop(context.Background())
		}
	}()
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("--data-dir %s: %w", cfg.DataDir, err)
	}

	address := cfg.TemporalAddress
	if address == "" {
		started := time.Now()
		pg, err := cfg.temporalPostgres()
		if err != nil {
			return nil, err
		}
		tip, err := resolveTemporalIP(cfg.TemporalIP, os.Hostname, net.LookupIP)
		if err != nil {
			return nil, err
		}
		// Ports this process picks itself can be taken by another process
		// before the server binds them; then it picks again.
		for attempt := 1; ; attempt++ {
			uiPort, fport := cfg.TemporalUIPort, cfg.TemporalPort
			if uiPort == 0 {
				if uiPort, err = devserver.FreePort(tip); err != nil {
					return nil, err
				}
			}
			if fport == 0 {
				if fport, err = devserver.FreePort(tip); err != nil {
					return nil, err
				}
			}
			a.temporal, err = devserver.Start(devserver.Options{
				DataDir:      filepath.Join(cfg.DataDir, "temporal"),
				IP:           tip,
				FrontendPort: fport,
				UIPort:       uiPort,
				Namespaces:   []string{cfg.TemporalNamespace},
				Logger:       log,
				LogLevel:     cfg.TemporalLogLevel,
				LogLevelSet:  true,
				NoFairness:   cfg.TemporalNoFairness,
				// Infra and Priority: `temporal workflow list --query
				// 'Infra="production"'` and the Web UI's search.
				SearchAttributes: searchattr.Types(),
				Postgres:         pg,
			})
			picked := cfg.TemporalUIPort == 0 || cfg.TemporalPort == 0
			if err == nil || !picked || !devserver.PortTaken(err) || attempt == 4 {
				break
			}
			log.Warn("embedded temporal: a picked port was taken meanwhile; picking again", "error", err, "attempt", attempt)
		}
		if err != nil {
			return nil, err
		}
		address = a.temporal.Address()
		log.Info("embedded temporal started", "address", address, "ui", a.temporal.UIAddress(),
			"database", a.temporal.DatabasePath(), "took_ms", time.Since(started).Milliseconds())
	}
	if cfg.Mode == ModeTemporal {
		// Only the server: no client, store, worker or API.
		return a, nil
	}

	dialCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	a.client, err = client.DialContext(dialCtx, client.Options{
		HostPort:       address,
		Namespace:      cfg.TemporalNamespace,
		Logger:         sdklog.NewStructuredLogger(log.With("component", "temporal-sdk")),
		MetricsHandler: a.metrics.TemporalHandler(),
	})
	if err != nil {
		return nil, fmt.Errorf("connect to Temporal at %s (--temporal-address): %w", address, err)
	}
	if a.cfg.Instance == "" {
		if a.cfg.Instance, err = deriveInstance(ctx, a.client, cfg.TemporalNamespace); err != nil {
			return nil, err
		}
		cfg = a.cfg
		log.Info("instance derived from the Temporal namespace", "instance", cfg.Instance)
	}

	if a.store, err = OpenStore(ctx, cfg.StoreConfig(), log); err != nil {
		return nil, err
	}

	// Docker is optional: without it provisioning works and test
	// environments fail with a clear error.
	dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
	a.docker, err = docker.New(dctx)
	dcancel()
	if err != nil {
		log.Warn("Docker engine unavailable: test environments disabled", "error", err)
		a.docker = nil
	} else {
		a.docker.Logger = log
		// Converging a node copies this worker's nu and provisioning
		// script into it; nu may be a name looked up in PATH.
		if nu, err := exec.LookPath(cfg.NuPath); err == nil {
			script, _ := filepath.Abs(cfg.ProvisioningPath)
			a.docker.Toolchain = docker.Toolchain{NuPath: nu, ScriptPath: script}
		}
	}
	if cfg.Mode == ModeServe || cfg.Mode == ModeWorker {
		if err := a.startWorker(); err != nil {
			return nil, err
		}
	}
	if cfg.Mode == ModeServe || cfg.Mode == ModeAPI {
		a.searchAttrs = a.detectSearchAttributes(ctx)
		if err := a.startHTTP(); err != nil {
			return nil, err
		}
		if cfg.ReconcileInterval > 0 {
			a.reconciler = &worker.Reconciler{Store: a.store, Client: a.client, Logger: a.log, Grace: cfg.ReconcileGrace}
			a.background(func(ctx context.Context) { a.reconciler.Run(ctx, cfg.ReconcileInterval) })
		}
	}
	return a, nil
}

// temporalPostgres is the embedded server's PostgreSQL, or nil for
// SQLite. The password comes from --temporal-db-password-file, else
// --temporal-db-password, else the URL.
func (c Config) temporalPostgres() (*devserver.Postgres, error) {
	if c.TemporalDB == "" {
		return nil, nil
	}
	password := c.TemporalDBPassword
	if c.TemporalDBPasswordFile != "" {
		b, err := os.ReadFile(c.TemporalDBPasswordFile)
		if err != nil {
			return nil, fmt.Errorf("--temporal-db-password-file: %w", err)
		}
		password = strings.TrimRight(string(b), "\r\n")
	}
	pg, err := devserver.ParsePostgresURL(c.TemporalDB, password)
	if err != nil {
		return nil, fmt.Errorf("--temporal-db: %w", err)
	}
	return pg, nil
}

// deriveInstance names a deployment after its Temporal namespace and that
// namespace's id, which is unique per namespace registration (two
// embedded servers, or two clusters, never share it).
func deriveInstance(ctx context.Context, c client.Client, namespace string) (string, error) {
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	desc, err := c.WorkflowService().DescribeNamespace(dctx, &workflowservice.DescribeNamespaceRequest{Namespace: namespace})
	if err != nil {
		return "", fmt.Errorf("describe Temporal namespace %q (to derive --instance; or set --instance): %w", namespace, err)
	}
	// Hashed: namespace ids can be time-ordered UUIDs whose first digits
	// two deployments made the same minute share.
	sum := sha256.Sum256([]byte(desc.GetNamespaceInfo().GetId()))
	id := hex.EncodeToString(sum[:4])
	name := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-' {
			return r
		}
		return '-'
	}, namespace)
	name = strings.TrimLeft(name, "._-")
	if len(name) > 50 {
		name = name[:50]
	}
	if name == "" {
		name = "ns"
	}
	return name + "-" + id, nil
}

// SearchAttributes are the custom search attributes workflows start with
// (none outside serve and api modes).
func (a *App) SearchAttributes() searchattr.Set { return a.searchAttrs }

// detectSearchAttributes asks the namespace once which custom search
// attributes it defines. The embedded server has them all; another cluster
// may not, and a start naming an undefined attribute is rejected, so then
// tasks start without the missing ones and the warning says how to
// register them.
func (a *App) detectSearchAttributes(ctx context.Context) searchattr.Set {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	set, missing, err := searchattr.Detect(dctx, a.client, a.cfg.TemporalNamespace)
	if len(missing) > 0 {
		args := []any{"missing", missing, "namespace", a.cfg.TemporalNamespace,
			"register_with", searchattr.CreateCommand(a.TemporalAddress(), a.cfg.TemporalNamespace, missing)}
		if err != nil {
			args = append(args, "error", err)
		}
		a.log.Warn("Temporal search attributes missing: tasks start without them, so `temporal workflow list --query` and the Web UI cannot search by them; register them and restart", args...)
	}
	return set
}

// background runs fn on its own goroutine until Stop.
func (a *App) background(fn func(ctx context.Context)) {
	if a.stopBg == nil {
		ctx, cancel := context.WithCancel(context.Background())
		a.bgCtx, a.stopBg = ctx, cancel
	}
	a.bg.Add(1)
	go func() {
		defer a.bg.Done()
		fn(a.bgCtx)
	}()
}

// Reconciler settles stuck tasks; nil outside serve and api modes or with
// --reconcile-interval 0.
func (a *App) Reconciler() *worker.Reconciler { return a.reconciler }

func (a *App) startWorker() error {
	var env []string
	// The demo provider keeps its state with the rest of the orchestrator's
	// data unless the operator chose a place. Later entries win, so
	// ScriptEnv can still override it.
	if os.Getenv("PROVISIONING_STATE_DIR") == "" {
		abs, err := filepath.Abs(filepath.Join(a.cfg.DataDir, "provider-state"))
		if err != nil {
			return err
		}
		env = append(env, "PROVISIONING_STATE_DIR="+abs)
	}
	env = append(env, a.cfg.ScriptEnv...)
	cgroups, err := a.stepCgroups()
	if err != nil {
		return err
	}
	webhookSecret, err := a.cfg.WebhookSecret()
	if err != nil {
		return err
	}
	acts := &activities.Activities{
		Runner: &nushell.Runner{
			NuPath:     a.cfg.NuPath,
			ScriptPath: a.cfg.ProvisioningPath,
			BaseEnv:    nushell.SafeEnviron(os.Environ(), a.cfg.ScriptEnvPass),
			Env:        env,
			Cgroups:    cgroups,
		},
		Store:       a.store,
		Docker:      a.engine(),
		ConvergeEnv: env,
		Logger:      a.log,
		Metrics:     a.metrics,
		// Deliveries are signed with it; without one they fail visibly.
		WebhookSecret: webhookSecret,
	}
	// Live events the worker could not store (the store was down or too
	// slow): dropped so that steps never wait, counted here.
	dropped := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Namespace: metrics.Namespace, Name: "live_events_dropped_total",
		Help: "Live task events (step output batches, step events) dropped because the store failed or was too slow.",
	}, func() float64 { return float64(activities.LiveEventsDropped.Load()) })
	if err := a.metrics.Registry().Register(dropped); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	ws := worker.New(a.client, acts, worker.Options{
		TaskQueue:                  a.cfg.TaskQueue,
		MaxConcurrentActivities:    a.cfg.MaxConcurrentActivities,
		MaxConcurrentEnvActivities: a.cfg.MaxConcurrentEnvActivities,
	})
	a.worker = &ws
	if err := a.worker.Start(); err != nil {
		a.worker = nil
		return fmt.Errorf("start worker on task queue %q: %w", a.cfg.TaskQueue, err)
	}
	if a.docker != nil {
		a.janitor = &worker.Janitor{Docker: a.docker, Client: a.client, Logger: a.log, Instance: a.cfg.Instance}
	}
	if a.janitor != nil && a.cfg.JanitorInterval > 0 {
		a.background(func(ctx context.Context) { a.janitor.Run(ctx, a.cfg.JanitorInterval) })
	}
	if a.cfg.Mode == ModeWorker && a.cfg.MetricsPort > 0 {
		if err := a.startOpsHTTP(); err != nil {
			return err
		}
	}
	a.log.Info("worker started", "task_queue", a.cfg.TaskQueue, "nu_path", a.cfg.NuPath, "provisioning_path", a.cfg.ProvisioningPath)
	return nil
}

// startOpsHTTP serves a worker's own /metrics (its Nushell, task and
// Temporal SDK metrics exist only in this process) and a liveness /health.
func (a *App) startOpsHTTP() error {
	src := metrics.ScrapeSources{Store: a.store}
	if err := a.metrics.RegisterScrape(src); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", a.metrics.Handler())
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"success":true,"data":"Orchestrator worker is healthy"}`))
	})
	if err := a.listen("metrics-port", a.cfg.MetricsPort, mux); err != nil {
		return err
	}
	a.log.Info("worker metrics listening", "address", "http://"+a.httpAddr+"/metrics")
	return nil
}

func (a *App) startHTTP() error {
	templates, err := testenv.LoadTemplates(a.cfg.TestTopologies...)
	if err != nil {
		return fmt.Errorf("--test-topologies: %w", err)
	}
	tokens, err := a.cfg.AuthTokens()
	if err != nil {
		return err
	}
	webhookSecret, err := a.cfg.WebhookSecret()
	if err != nil {
		return err
	}
	src := metrics.ScrapeSources{Store: a.store}
	if d := a.docker; d != nil {
		instance := a.cfg.Instance
		src.Containers = func(ctx context.Context) (int, error) {
			envs, err := d.ListManagedEnvironments(ctx, instance)
			n := 0
			for _, e := range envs {
				n += e.Containers
			}
			return n, err
		}
	}
	if err := a.metrics.RegisterScrape(src); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	srv := server.New(server.Options{
		Client:           a.client,
		Store:            a.store,
		TaskQueue:        a.cfg.TaskQueue,
		Policy:           a.cfg.Policy,
		NoEagerStart:     !a.cfg.EagerStart,
		FairnessWeights:  a.cfg.FairnessWeights,
		Logger:           a.log,
		Metrics:          a.metrics,
		AuthTokens:       tokens,
		SearchAttributes: a.searchAttrs,
		Webhooks:         len(webhookSecret) > 0,
		TestEnv: server.TestEnvOptions{
			Templates:         templates,
			DefaultImage:      a.cfg.TestBaseImage,
			DefaultTTL:        a.cfg.TestEnvTTL,
			Docker:            a.engine(),
			Instance:          a.cfg.Instance,
			MaxEnvironments:   a.cfg.MaxEnvironments,
			MaxNodes:          a.cfg.MaxNodes,
			UpdatesPerRun:     a.cfg.TestEnvUpdatesPerRun,
			NodeCPUMillicores: a.cfg.TestNodeCPUMillicores,
			NodeMemoryMB:      a.cfg.TestNodeMemoryMB,
		},
	})
	if err := a.listen("port", a.cfg.Port, srv); err != nil {
		return err
	}
	// Event streams last as long as their tasks: end them when the
	// server shuts down instead of waiting out the drain.
	a.http.RegisterOnShutdown(srv.StopStreams)
	a.log.Info("REST API listening", "address", "http://"+a.httpAddr)
	return nil
}

// listen binds host:port (flagName names the flag in errors) and serves h
// until Stop; a serving failure is reported on Errors().
func (a *App) listen(flagName string, port int, h http.Handler) error {
	ln, err := net.Listen("tcp", net.JoinHostPort(a.cfg.Host, strconv.Itoa(port)))
	if err != nil {
		return fmt.Errorf("--%s %d: %w", flagName, port, err)
	}
	a.httpAddr = ln.Addr().String()
	a.http = &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		// Bodies are at most 1 MiB: a client that trickles one is cut off.
		ReadTimeout: time.Minute,
		// Longer than the longest handler wait (a test run or converge,
		// server.DefaultRunWait), so a waiting client gets its answer.
		WriteTimeout:   server.DefaultRunWait + time.Minute,
		IdleTimeout:    2 * time.Minute,
		MaxHeaderBytes: 64 << 10,
	}
	// The goroutine gets its own reference: a Stop right after start
	// clears a.http before the goroutine may have run.
	srv := a.http
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.httpErr <- err
		}
	}()
	return nil
}

// Stop shuts down in dependency order: stop accepting requests, let the
// worker finish or hand back its tasks, then close the client, the embedded
// server and the store. ctx bounds the HTTP drain.
func (a *App) Stop(ctx context.Context) {
	if a.http != nil {
		if err := a.http.Shutdown(ctx); err != nil {
			a.log.Warn("HTTP shutdown", "error", err)
			_ = a.http.Close()
		}
		a.http = nil
	}
	if a.stopBg != nil {
		a.stopBg()
		a.bg.Wait()
		a.stopBg = nil
	}
	if a.worker != nil {
		a.worker.Stop()
		a.worker = nil
	}
	if a.docker != nil {
		_ = a.docker.Close()
		a.docker = nil
	}
	if a.client != nil {
		a.client.Close()
		a.client = nil
	}
	if a.temporal != nil {
		a.temporal.Stop()
		a.temporal = nil
	}
	if a.store != nil {
		_ = a.store.Close()
		a.store = nil
	}
}

// Run parses args, starts the app, and serves until ctx is done or serving
// fails. It is the whole of main.
func Run(ctx context.Context, args []string, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "openapi" {
		return WriteOpenAPI(os.Stdout)
	}
	if len(args) > 0 && args[0] == string(ModeVersion) {
		return RunVersion(args[1:], os.Stdout, stderr)
	}
	if len(args) > 0 && args[0] == string(ModeMigrate) {
		return RunMigrate(ctx, args[1:], os.Getenv, os.Stdout, stderr)
	}
	cfg, err := ParseConfig(args, os.Getenv, stderr)
	if err != nil {
		return err
	}
	log := NewLogger(stderr, cfg.LogFormat, cfg.LogLevel)
	if cfg.Mode == ModeDoctor {
		return RunDoctor(ctx, cfg, log, os.Stdout)
	}
	a, err := Start(ctx, cfg, log)
	if err != nil {
		return err
	}
	if a.httpAddr != "" {
		log.Info("orchestrator ready", "mode", cfg.Mode, "api", "http://"+a.httpAddr,
			"temporal", a.TemporalAddress(), "temporal_ui", a.TemporalUIAddress(),
			"auth", cfg.AuthToken != "" || cfg.AuthTokenFile != "")
	} else {
		log.Info("orchestrator ready", "mode", cfg.Mode, "temporal", a.TemporalAddress(), "temporal_ui", a.TemporalUIAddress())
	}
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err = <-a.httpErr:
		log.Error("REST API failed", "error", err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	a.Stop(sctx)
	return err
}

// stepCgroups opens the per-step cgroups --step-cgroup asks for (nil when
// off or, for "auto", not available here).
func (a *App) stepCgroups() (*nushell.Cgroups, error) {
	if os.Getpid() == 1 {
		// Orphans of scripts are re-parented to PID 1; Go's runtime never
		// reaps them, so they would pile up as zombies.
		a.log.Warn("running as PID 1 without an init: orphaned processes of provisioning scripts are not reaped; use `docker run --init` (compose: init: true)")
	}
	switch a.cfg.StepCgroup {
	case "off":
		return nil, nil
	case "", "auto":
		cg, err := nushell.OpenCgroups("")
		if err != nil {
			a.log.Warn("provisioning steps run without a cgroup each: a process that leaves the step's session and clears its environment can outlive the step (--step-cgroup)", "reason", err)
			return nil, nil
		}
		a.log.Info("provisioning steps run in a cgroup each", "parent", cg.Parent())
		return cg, nil
	default:
		cg, err := nushell.OpenCgroups(a.cfg.StepCgroup)
		if err != nil {
			return nil, fmt.Errorf("--step-cgroup: %w", err)
		}
		return cg, nil
	}
}

// resolveTemporalIP is the address --temporal-ip asks for: the default,
// an IP as given, or (TemporalIPHostname) the first non-loopback address
// the host's name resolves to.
func resolveTemporalIP(flag string, hostname func() (string, error), lookup func(string) ([]net.IP, error)) (string, error) {
	switch flag {
	case "":
		return DefaultTemporalIP, nil
	case TemporalIPHostname:
	default:
		return flag, nil
	}
	host, err := hostname()
	if err != nil {
		return "", fmt.Errorf("--temporal-ip %s: %w", flag, err)
	}
	addrs, err := lookup(host)
	if err != nil {
		return "", fmt.Errorf("--temporal-ip %s: resolve %q: %w", flag, host, err)
	}
	for _, ip := range addrs {
		if !ip.IsLoopback() && !ip.IsUnspecified() {
			return ip.String(), nil
		}
	}
	return "", fmt.Errorf("--temporal-ip %s: %q resolves to no address other hosts can dial (%v): give the IP", flag, host, addrs)
}
