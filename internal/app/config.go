package app

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/provisioning/orchestrator/internal/devserver"
	"github.com/provisioning/orchestrator/testenv"
	"github.com/provisioning/orchestrator/worker"
	"github.com/provisioning/orchestrator/workflows"
)

// Mode selects which parts one process runs.
type Mode string

// Modes: serve runs everything (the default); worker and api are the two
// halves for scaling out; temporal runs only the embedded Temporal server
// (and its UI) for api and worker processes to share.
const (
	ModeServe    Mode = "serve"
	ModeWorker   Mode = "worker"
	ModeAPI      Mode = "api"
	ModeTemporal Mode = "temporal"
	// ModeDoctor checks the task store for records it cannot read and says
	// what to do about each (`orchestrator doctor`).
	ModeDoctor Mode = "doctor"
)

// Config is every setting, from flags or ORCHESTRATOR_* environment
// variables (flag wins). Zero values mean the documented defaults.
type Config struct {
	Mode Mode

	// Host and Port of the REST API; defaults 127.0.0.1 and 8080 (0 picks
	// a free port).
	Host string
	Port int
	// DataDir holds the task store, the embedded Temporal database and the
	// demo provider's state; default ./data.
	DataDir string
	// StorageType: filesystem (default), surrealdb-embedded or
	// surrealdb-server.
	StorageType string
	// Store holds the SurrealDB settings (Type and DataDir are filled from
	// StorageType and DataDir).
	Store StoreConfig
	// NuPath and ProvisioningPath locate Nushell and the user's script.
	NuPath           string
	ProvisioningPath string

	// TemporalAddress of an external cluster; empty starts the embedded
	// server (serve mode only).
	TemporalAddress   string
	TemporalNamespace string
	TaskQueue         string
	// TemporalPort and TemporalUIPort of the embedded server (7233, 8233;
	// UI -1 disables it, 0 picks a free port).
	TemporalPort   int
	TemporalUIPort int
	// TemporalDB, when set (serve and temporal modes), keeps the embedded
	// server's state in PostgreSQL instead of the SQLite file under
	// DataDir: postgres://user[:password]@host[:port]/dbname?sslmode=...
	// (visibility in dbname_visibility, or ?visibility_db=name). Default
	// "" (SQLite).
	TemporalDB string
	// TemporalIP is the address the embedded server's services bind and
	// announce (static membership: an IP of this host, not 0.0.0.0);
	// default 127.0.0.1. Another host's workers need a reachable one.
	// TemporalIPHostname ("hostname") takes the address this host's name
	// resolves to: a container's own address, which compose assigns.
	TemporalIP string
	// TemporalDBPassword and TemporalDBPasswordFile supply the password
	// outside the URL (the file is read at start); either wins over
	// one in the URL.
	TemporalDBPassword     string
	TemporalDBPasswordFile string

	// Policy for every workflow the API starts.
	Policy workflows.ExecPolicy
	// MaxConcurrentActivities per worker process; default 32.
	MaxConcurrentActivities int
	// EagerStart lets the API ask Temporal for a new workflow's first
	// workflow task in the start's answer (serve mode: the worker shares
	// the API's client): tasks start at once instead of queueing in
	// matching, at the price of that work running while clients still
	// submit (docs/benchmarks.md). Default true.
	EagerStart bool
	// MaxConcurrentEnvActivities per worker process for test-environment
	// activities (their own task queue and slots); default 16.
	MaxConcurrentEnvActivities int

	LogLevel  slog.Level
	LogFormat string
	// TemporalLogLevel filters the embedded server's logs; default warn.
	TemporalLogLevel slog.Level
	// TemporalNoFairness turns the embedded server's fairness between
	// infras off (FIFO within a priority); default false (fairness on).
	TemporalNoFairness bool
	// ShutdownTimeout bounds graceful shutdown; default 15s.
	ShutdownTimeout time.Duration

	// TestBaseImage is the image of test-environment nodes that name none;
	// default ubuntu:22.04.
	TestBaseImage string
	// TestEnvTTL bounds environments that ask for no ttl; default 2h.
	TestEnvTTL time.Duration
	// MaxEnvironments bounds the test environments alive at once (429
	// past it); default 20, 0 = no bound.
	MaxEnvironments int
	// MaxNodes bounds the nodes of one test environment (400 past it);
	// default 16, 0 = no bound.
	MaxNodes int
	// TestNodeCPUMillicores and TestNodeMemoryMB limit test-environment
	// nodes that ask for no limit; defaults testenv.DefaultNodeCPUMillicores
	// (1000) and testenv.DefaultNodeMemoryMB (512), 0 = unlimited.
	TestNodeCPUMillicores int64
	TestNodeMemoryMB      int64
	// TestEnvUpdatesPerRun is how many test runs and converges one
	// environment workflow run serves before it continues as new; default
	// workflows.DefaultUpdatesPerRun.
	TestEnvUpdatesPerRun int
	// TestTopologies are extra template files (TOML) added to the built-in
	// ones.
	TestTopologies []string
	// Instance names this deployment on every Docker object it creates;
	// its janitor sweeps only objects of the same instance. Default ""
	// derives it from the Temporal namespace and that namespace's unique
	// id ("<namespace>-<8 hex>"), so two deployments sharing one engine
	// never sweep each other's environments.
	Instance string
	// MetricsPort, when > 0 in worker mode, serves GET /metrics and
	// GET /health there (workers have no REST API); default 0 = off.
	MetricsPort int
	// JanitorInterval between sweeps for leftover Docker objects; 0
	// disables the janitor. Default 5m.
	JanitorInterval time.Duration
	// ReconcileInterval between passes of the reconciler (serve and api
	// modes), which fails tasks stuck Pending/Running without a workflow;
	// default 1m, 0 disables. ReconcileGrace is how long such a task sits
	// unchanged first; default 2m.
	ReconcileInterval time.Duration
	ReconcileGrace    time.Duration

	// AuthToken is a bearer token named "default"; AuthTokenFile holds
	// `name:token` lines (blank lines and # comments ignored). With any
	// token, every endpoint but /health and /metrics requires one.
	AuthToken     string
	AuthTokenFile string
	// Insecure allows a non-loopback Host without AuthToken or
	// AuthTokenFile; without it such a configuration refuses to start.
	Insecure bool
	// WebhookSecretFile holds the key that signs webhook deliveries
	// (HMAC-SHA256; at least MinWebhookSecretBytes, trailing newlines
	// ignored). Without it webhooks are off: the API refuses requests
	// with a webhook. API and worker processes both need it. Default "".
	WebhookSecretFile string

	// ScriptEnvPass names variables of the service's environment that
	// provisioning runs inherit besides the safe base (PATH, HOME, locale,
	// PROVISIONING_*; see nushell.SafeEnviron). Default none.
	ScriptEnvPass []string
	// FairnessWeights weigh infras against each other on a shared task
	// queue (Temporal fairness, key = infra); unlisted infras weigh 1.
	FairnessWeights map[string]float32
	// StepCgroup is where every provisioning step gets a cgroup v2 of its
	// own, so the step's end reaches every process it started: "auto" (the
	// default) uses a directory in the service's own cgroup and falls back
	// to session tracking, with a warning, where cgroups are not writable
	// (most containers); "off" never uses cgroups; anything else is the
	// parent directory to use, and start-up fails if it is not usable.
	StepCgroup string

	// ScriptEnv is extra KEY=VALUE environment for every Nushell run, on
	// top of the safe base. Not a flag: for embedding and tests.
	ScriptEnv []string
}

// Defaults.
const (
	DefaultPort       = 8080
	DefaultHost       = "127.0.0.1"
	DefaultTemporalIP = "127.0.0.1"
	// TemporalIPHostname as --temporal-ip: the address the host's name
	// resolves to (the first that is not a loopback one).
	TemporalIPHostname      = "hostname"
	DefaultDataDir          = "./data"
	DefaultStorageType      = "filesystem"
	DefaultNuPath           = "nu"
	DefaultProvisioningPath = "./core/nulib/provisioning"
	DefaultNamespace        = "default"
	DefaultTemporalPort     = 7233
	DefaultTemporalUIPort   = 8233
	DefaultTestBaseImage    = "ubuntu:22.04"
	DefaultMaxEnvironments  = 20
	DefaultMaxNodes         = 16
)

// EnvPrefix prefixes the environment variable of every flag:
// --data-dir reads ORCHESTRATOR_DATA_DIR.
const EnvPrefix = "ORCHESTRATOR_"

// EnvName is the environment variable for a flag.
func EnvName(flagName string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// isLoopback reports whether host (an IP or a name) only listens on this
// machine.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// envNameRE is what --script-env-pass accepts as a variable name.
var envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// ParseConfig reads a subcommand (serve, worker, api; default serve) and
// flags from args, with environment fallbacks from getenv.
func ParseConfig(args []string, getenv func(string) string, out io.Writer) (Config, error) {
	cfg := Config{Mode: ModeServe}
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		switch Mode(args[0]) {
		case ModeServe, ModeWorker, ModeAPI, ModeTemporal, ModeDoctor:
			cfg.Mode = Mode(args[0])
			args = args[1:]
		default:
			return cfg, fmt.Errorf("unknown command %q: use serve (default), worker, api, temporal, doctor, migrate, openapi or version", args[0])
		}
	}
	fs := flag.NewFlagSet("orchestrator "+string(cfg.Mode), flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&cfg.Host, "host", DefaultHost, "address the REST API listens on")
	fs.IntVar(&cfg.Port, "port", DefaultPort, "REST API port")
	fs.StringVar(&cfg.DataDir, "data-dir", DefaultDataDir, "directory for tasks, the embedded Temporal database and demo provider state")
	fs.StringVar(&cfg.StorageType, "storage-type", DefaultStorageType, "task store backend: filesystem, surrealdb-embedded or surrealdb-server")
	fs.StringVar(&cfg.Store.SurrealURL, "surrealdb-url", "", "SurrealDB server URL (ws://host:8000 or http://...) for surrealdb-server")
	fs.StringVar(&cfg.Store.SurrealNamespace, "surrealdb-namespace", DefaultSurrealNamespace, "SurrealDB namespace")
	fs.StringVar(&cfg.Store.SurrealDatabase, "surrealdb-database", DefaultSurrealDatabase, "SurrealDB database")
	fs.StringVar(&cfg.Store.SurrealUsername, "surrealdb-username", "", "SurrealDB root user")
	fs.StringVar(&cfg.Store.SurrealPassword, "surrealdb-password", "", "SurrealDB root password")
	fs.StringVar(&cfg.Store.SurrealPasswordFile, "surrealdb-password-file", "", "file holding the SurrealDB root password (e.g. a Docker secret); read at start")
	fs.StringVar(&cfg.Store.SurrealPath, "surreal-path", DefaultSurrealExecutable, "surreal executable started by --storage-type surrealdb-embedded")
	fs.StringVar(&cfg.NuPath, "nu-path", DefaultNuPath, "Nushell executable")
	fs.StringVar(&cfg.ProvisioningPath, "provisioning-path", DefaultProvisioningPath, "provisioning Nushell script run by activities")
	fs.StringVar(&cfg.TemporalAddress, "temporal-address", "", "host:port of an external Temporal frontend; empty starts the embedded server")
	fs.StringVar(&cfg.TemporalNamespace, "temporal-namespace", DefaultNamespace, "Temporal namespace")
	fs.StringVar(&cfg.TaskQueue, "task-queue", workflows.DefaultTaskQueue, "Temporal task queue")
	fs.IntVar(&cfg.TemporalPort, "temporal-port", DefaultTemporalPort, "embedded Temporal frontend port (0 = free port)")
	fs.IntVar(&cfg.TemporalUIPort, "temporal-ui-port", DefaultTemporalUIPort, "embedded Temporal Web UI port (-1 disables, 0 = free port)")
	fs.StringVar(&cfg.TemporalIP, "temporal-ip", DefaultTemporalIP, `IP the embedded Temporal server binds and announces (an address of this host, not 0.0.0.0; workers on other hosts dial it), or "hostname": the address this host's name resolves to (a container's own)`)
	fs.StringVar(&cfg.TemporalDB, "temporal-db", "", "embedded Temporal on PostgreSQL: postgres://user@host:5432/dbname?sslmode=disable (schema set up or upgraded at start; empty = SQLite under --data-dir)")
	fs.StringVar(&cfg.TemporalDBPassword, "temporal-db-password", "", "password for --temporal-db")
	fs.StringVar(&cfg.TemporalDBPasswordFile, "temporal-db-password-file", "", "file holding the password for --temporal-db (e.g. a Docker secret); read at start")
	fs.IntVar(&cfg.Policy.Parallelism, "parallelism", workflows.DefaultParallelism, "servers provisioned at once per task")
	var maxAttempts int
	fs.IntVar(&maxAttempts, "max-attempts", workflows.DefaultMaxAttempts, "attempts per Nushell step, first run included")
	fs.DurationVar(&cfg.Policy.InitialInterval, "retry-initial-interval", workflows.DefaultInitialInterval, "delay before the first retry")
	fs.Float64Var(&cfg.Policy.BackoffCoefficient, "retry-backoff", workflows.DefaultBackoffCoefficient, "retry interval multiplier")
	fs.DurationVar(&cfg.Policy.MaxInterval, "retry-max-interval", workflows.DefaultMaxInterval, "longest retry delay")
	fs.DurationVar(&cfg.Policy.StepTimeout, "step-timeout", workflows.DefaultStepTimeout, "time limit of one Nushell attempt")
	fs.DurationVar(&cfg.Policy.HeartbeatTimeout, "heartbeat-timeout", workflows.DefaultHeartbeatTimeout, "a step whose worker is silent this long is retried")
	fs.IntVar(&cfg.MaxConcurrentActivities, "max-concurrent-activities", 32, "Nushell processes one worker runs at once")
	fs.BoolVar(&cfg.EagerStart, "eager-start", true, "serve mode: start a new task's workflow on this process's worker at once (Temporal's eager workflow start) instead of through the task queue")
	fs.IntVar(&cfg.MaxConcurrentEnvActivities, "max-concurrent-env-activities", 16, "test-environment activities (Docker calls, test runs, converges) one worker runs at once, on their own task queue <task-queue>-testenv")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	temporalLogLevel := fs.String("temporal-log-level", "warn", "log level of the embedded Temporal server")
	fairness := fs.Bool("temporal-fairness", true, "embedded Temporal: share each priority level of a busy task queue between infras (matching.enableFairness); false is first in, first out")
	fs.StringVar(&cfg.LogFormat, "log-format", "auto", "json, text, or auto (text on a terminal, json otherwise)")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", 15*time.Second, "bound on graceful shutdown")
	fs.StringVar(&cfg.TestBaseImage, "test-base-image", DefaultTestBaseImage, "image for test-environment nodes that name no base_image")
	fs.DurationVar(&cfg.TestEnvTTL, "test-env-ttl", 2*time.Hour, "lifetime of test environments that ask for no ttl")
	fs.IntVar(&cfg.MaxEnvironments, "max-environments", DefaultMaxEnvironments, "test environments alive at once (0: no bound)")
	fs.IntVar(&cfg.MaxNodes, "max-nodes", DefaultMaxNodes, "nodes of one test environment (0: no bound)")
	fs.Int64Var(&cfg.TestNodeCPUMillicores, "test-node-cpu-millicores", testenv.DefaultNodeCPUMillicores, "CPU limit of test-environment nodes that set none (1000 = one CPU; 0 = unlimited)")
	fs.Int64Var(&cfg.TestNodeMemoryMB, "test-node-memory-mb", testenv.DefaultNodeMemoryMB, "memory limit (MiB) of test-environment nodes that set none (0 = unlimited)")
	fs.IntVar(&cfg.TestEnvUpdatesPerRun, "test-env-updates-per-run", workflows.DefaultUpdatesPerRun, "test runs and converges per environment workflow run before it continues as new (bounds its history)")
	topologies := fs.String("test-topologies", "", "extra topology template file(s) (TOML), comma-separated")
	scriptEnvPass := fs.String("script-env-pass", "", "names of service environment variables provisioning runs inherit, comma-separated (besides PATH, HOME, locale and PROVISIONING_*; never secrets)")
	weights := fs.String("fairness-weights", "", "infra=weight pairs, comma-separated: an infra's share of a busy task queue relative to others (default 1 each)")
	fs.StringVar(&cfg.StepCgroup, "step-cgroup", "auto", `cgroup v2 parent of the per-step cgroups that stop every process a step started: "auto", "off" or a directory`)
	fs.StringVar(&cfg.Instance, "instance", "", "deployment name labelled on Docker objects; the janitor sweeps only its own (default: derived from the Temporal namespace and its id)")
	fs.IntVar(&cfg.MetricsPort, "metrics-port", 0, "worker mode: serve /metrics and /health on this port (0 = off)")
	fs.DurationVar(&cfg.JanitorInterval, "janitor-interval", 5*time.Minute, "sweep for leftover Docker objects this often (0 disables)")
	fs.DurationVar(&cfg.ReconcileInterval, "reconcile-interval", worker.DefaultReconcileInterval, "look for tasks stuck Pending/Running without a workflow this often (0 disables)")
	fs.DurationVar(&cfg.ReconcileGrace, "reconcile-grace", worker.DefaultReconcileGrace, "how long a task sits unchanged before the reconciler asks Temporal about it")
	fs.StringVar(&cfg.AuthToken, "auth-token", "", `bearer token (named "default") required on every endpoint but /health and /metrics`)
	fs.StringVar(&cfg.AuthTokenFile, "auth-token-file", "", "file of name:token lines; each token is accepted and its name is the audit actor")
	fs.BoolVar(&cfg.Insecure, "insecure", false, "allow serving the API on a non-loopback --host without authentication")
	fs.StringVar(&cfg.WebhookSecretFile, "webhook-secret-file", "", "file holding the key that signs webhook deliveries (HMAC-SHA256); without it requests with a webhook are refused")

	if err := parseWithEnv(fs, args, getenv, EnvName); err != nil {
		return cfg, err
	}
	cfg.Policy.MaxAttempts = int32(maxAttempts)
	for _, p := range strings.Split(*topologies, ",") {
		if p = strings.TrimSpace(p); p != "" {
			cfg.TestTopologies = append(cfg.TestTopologies, p)
		}
	}
	for _, n := range strings.Split(*scriptEnvPass, ",") {
		if n = strings.TrimSpace(n); n != "" {
			if !envNameRE.MatchString(n) {
				return cfg, fmt.Errorf("--script-env-pass: %q is not an environment variable name", n)
			}
			cfg.ScriptEnvPass = append(cfg.ScriptEnvPass, n)
		}
	}
	var err error
	if cfg.FairnessWeights, err = parseWeights(*weights); err != nil {
		return cfg, err
	}
	if cfg.LogLevel, err = parseLevel("log-level", *logLevel); err != nil {
		return cfg, err
	}
	if cfg.TemporalLogLevel, err = parseLevel("temporal-log-level", *temporalLogLevel); err != nil {
		return cfg, err
	}
	cfg.TemporalNoFairness = !*fairness
	return cfg, cfg.Validate()
}

// parseWithEnv parses args into fs, then fills every flag not given on the
// command line from its environment variable (envName), so flags win.
// Errors name both the variable and the flag; secret values are never
// echoed.
func parseWithEnv(fs *flag.FlagSet, args []string, getenv func(string) string, envName func(string) string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || envErr != nil {
			return
		}
		v := getenv(envName(f.Name))
		if v == "" {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			if secretFlags[strings.TrimPrefix(strings.TrimPrefix(f.Name, "from-"), "to-")] {
				envErr = fmt.Errorf("invalid value for %s (flag --%s): %w", envName(f.Name), f.Name, err)
			} else {
				envErr = fmt.Errorf("invalid value %q for %s (flag --%s): %w", v, envName(f.Name), f.Name, err)
			}
		}
	})
	return envErr
}

// secretFlags are never echoed in error messages.
var secretFlags = map[string]bool{"auth-token": true, "surrealdb-password": true, "temporal-db": true, "temporal-db-password": true}

// DefaultTokenName is the name of the --auth-token token.
const DefaultTokenName = "default"

// AuthTokens returns the configured bearer tokens by name: --auth-token
// as DefaultTokenName and the lines of --auth-token-file. Error messages
// name lines, never tokens.
func (c Config) AuthTokens() (map[string]string, error) {
	tokens := map[string]string{}
	if c.AuthToken != "" {
		tokens[DefaultTokenName] = c.AuthToken
	}
	if c.AuthTokenFile == "" {
		return tokens, nil
	}
	b, err := os.ReadFile(c.AuthTokenFile)
	if err != nil {
		return nil, fmt.Errorf("--auth-token-file: %w", err)
	}
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, token, ok := strings.Cut(line, ":")
		name, token = strings.TrimSpace(name), strings.TrimSpace(token)
		switch {
		case !ok || name == "" || token == "":
			return nil, fmt.Errorf("--auth-token-file %s line %d: want name:token", c.AuthTokenFile, i+1)
		case strings.ContainsAny(token, " \t"):
			return nil, fmt.Errorf("--auth-token-file %s line %d: token of %q contains whitespace", c.AuthTokenFile, i+1, name)
		}
		if _, dup := tokens[name]; dup {
			return nil, fmt.Errorf("--auth-token-file %s line %d: token name %q is used twice", c.AuthTokenFile, i+1, name)
		}
		tokens[name] = token
	}
	return tokens, nil
}

// MinWebhookSecretBytes is the shortest webhook key accepted: shorter keys
// can be guessed from signed deliveries.
const MinWebhookSecretBytes = 16

// WebhookSecret reads --webhook-secret-file: nil without one. Errors name
// the flag and the file, never the key.
func (c Config) WebhookSecret() ([]byte, error) {
	if c.WebhookSecretFile == "" {
		return nil, nil
	}
	b, err := os.ReadFile(c.WebhookSecretFile)
	if err != nil {
		return nil, fmt.Errorf("--webhook-secret-file: %w", err)
	}
	key := []byte(strings.TrimRight(string(b), "\r\n"))
	if len(key) < MinWebhookSecretBytes {
		return nil, fmt.Errorf("--webhook-secret-file %s: the key has %d bytes; use at least %d (e.g. `openssl rand -hex 32 > %s`)",
			c.WebhookSecretFile, len(key), MinWebhookSecretBytes, c.WebhookSecretFile)
	}
	return key, nil
}

func parseLevel(flagName, v string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(v)); err != nil {
		return l, fmt.Errorf("--%s: %q is not one of debug, info, warn, error", flagName, v)
	}
	return l, nil
}

// Validate checks value ranges so a bad setting stops start-up with a clear
// message instead of failing later.
func (c Config) Validate() error {
	var errs []error
	bad := func(flagName, format string, a ...any) {
		errs = append(errs, fmt.Errorf("--%s: %s", flagName, fmt.Sprintf(format, a...)))
	}
	if c.Port < 0 || c.Port > 65535 {
		bad("port", "%d is not a TCP port (0-65535)", c.Port)
	}
	if c.TemporalPort < 0 || c.TemporalPort > 65535 {
		bad("temporal-port", "%d is not a TCP port", c.TemporalPort)
	}
	if c.TemporalUIPort < -1 || c.TemporalUIPort > 65535 {
		bad("temporal-ui-port", "%d is not a TCP port (or -1 to disable)", c.TemporalUIPort)
	}
	if c.DataDir == "" {
		bad("data-dir", "must not be empty")
	}
	switch c.StorageType {
	case "filesystem":
	case StorageSurrealServer:
		if c.Store.SurrealURL == "" {
			bad("surrealdb-url", "is required with --storage-type surrealdb-server")
		}
	case StorageSurrealEmbedded:
		if c.Store.SurrealPath == "" {
			bad("surreal-path", "must not be empty with --storage-type surrealdb-embedded")
		}
	default:
		bad("storage-type", "%q is not one of filesystem, surrealdb-embedded, surrealdb-server", c.StorageType)
	}
	if c.NuPath == "" {
		bad("nu-path", "must not be empty")
	}
	if c.ProvisioningPath == "" {
		bad("provisioning-path", "must not be empty")
	}
	if c.TemporalNamespace == "" {
		bad("temporal-namespace", "must not be empty")
	}
	if c.TaskQueue == "" {
		bad("task-queue", "must not be empty")
	}
	if ip := net.ParseIP(c.TemporalIP); c.TemporalIP != "" && c.TemporalIP != TemporalIPHostname && (ip == nil || ip.IsUnspecified()) {
		bad("temporal-ip", "%q is not an IP address of this host (the server announces it to itself; 0.0.0.0 cannot be dialled) nor %q", c.TemporalIP, TemporalIPHostname)
	}
	if c.TemporalDB != "" {
		switch {
		case c.Mode != ModeServe && c.Mode != ModeTemporal:
			bad("temporal-db", "is only for serve and temporal modes (which run the Temporal server)")
		case c.TemporalAddress != "":
			bad("temporal-db", "conflicts with --temporal-address (an external server keeps its own database)")
		default:
			if _, err := devserver.ParsePostgresURL(c.TemporalDB, ""); err != nil {
				bad("temporal-db", "%v", err)
			}
		}
	}
	switch {
	case c.Mode == ModeTemporal && c.TemporalAddress != "":
		bad("temporal-address", "must be empty in temporal mode (it runs the embedded server)")
	case c.Mode != ModeServe && c.Mode != ModeTemporal && c.Mode != ModeDoctor && c.TemporalAddress == "":
		bad("temporal-address", "is required in %s mode (the embedded server runs only with serve or temporal)", c.Mode)
	}
	p := c.Policy
	if p.Parallelism < 1 || p.Parallelism > 1000 {
		bad("parallelism", "%d must be from 1 to 1000", p.Parallelism)
	}
	if p.MaxAttempts < 1 || p.MaxAttempts > 100 {
		bad("max-attempts", "%d must be from 1 to 100", p.MaxAttempts)
	}
	if p.InitialInterval <= 0 {
		bad("retry-initial-interval", "must be positive")
	}
	if p.BackoffCoefficient < 1 {
		bad("retry-backoff", "must be at least 1")
	}
	if p.MaxInterval < p.InitialInterval {
		bad("retry-max-interval", "must be at least --retry-initial-interval")
	}
	if p.StepTimeout <= 0 {
		bad("step-timeout", "must be positive")
	}
	if p.HeartbeatTimeout < time.Second {
		bad("heartbeat-timeout", "must be at least 1s")
	}
	if c.MaxConcurrentActivities < 1 {
		bad("max-concurrent-activities", "must be at least 1")
	}
	if c.MaxConcurrentEnvActivities < 1 {
		bad("max-concurrent-env-activities", "must be at least 1")
	}
	switch c.LogFormat {
	case "auto", "json", "text":
	default:
		bad("log-format", "%q is not one of auto, json, text", c.LogFormat)
	}
	if c.TestBaseImage == "" {
		bad("test-base-image", "must not be empty")
	}
	if c.MaxEnvironments < 0 {
		bad("max-environments", "%d must be 0 (no bound) or more", c.MaxEnvironments)
	}
	if c.TestNodeCPUMillicores != 0 {
		if err := testenv.ValidateResources("", &testenv.Resources{CPUMillicores: c.TestNodeCPUMillicores}); err != nil || c.TestNodeCPUMillicores < 0 {
			bad("test-node-cpu-millicores", "%d is out of range: give %d..%d, or 0 for no default limit", c.TestNodeCPUMillicores, testenv.MinCPUMillicores, testenv.MaxCPUMillicores)
		}
	}
	if c.TestNodeMemoryMB != 0 {
		if err := testenv.ValidateResources("", &testenv.Resources{MemoryMB: c.TestNodeMemoryMB}); err != nil || c.TestNodeMemoryMB < 0 {
			bad("test-node-memory-mb", "%d is out of range: give %d..%d, or 0 for no default limit", c.TestNodeMemoryMB, testenv.MinMemoryMB, testenv.MaxMemoryMB)
		}
	}
	if (c.Mode == ModeServe || c.Mode == ModeAPI) && c.AuthToken == "" && c.AuthTokenFile == "" && !c.Insecure && !isLoopback(c.Host) {
		bad("host", "%s exposes the API beyond this machine without authentication: set --auth-token or --auth-token-file (or ORCHESTRATOR_AUTH_TOKEN[_FILE]), or pass --insecure to accept that", c.Host)
	}
	if c.ReconcileInterval < 0 {
		bad("reconcile-interval", "%s must be 0 (off) or positive", c.ReconcileInterval)
	}
	if c.ReconcileGrace < 10*time.Second {
		bad("reconcile-grace", "%s is too short: a task needs a moment between its record and its workflow (at least 10s)", c.ReconcileGrace)
	}
	if c.TestEnvUpdatesPerRun < 1 {
		bad("test-env-updates-per-run", "%d must be 1 or more", c.TestEnvUpdatesPerRun)
	}
	if c.MaxNodes < 0 {
		bad("max-nodes", "%d must be 0 (no bound) or more", c.MaxNodes)
	}
	if c.TestEnvTTL < time.Second || c.TestEnvTTL > 7*24*time.Hour {
		bad("test-env-ttl", "%s must be from 1s to 168h", c.TestEnvTTL)
	}
	if c.Instance != "" {
		if err := testenv.ValidateName("instance", c.Instance); err != nil {
			bad("instance", "%v", err)
		}
	}
	if c.MetricsPort < 0 || c.MetricsPort > 65535 {
		bad("metrics-port", "%d is not a TCP port", c.MetricsPort)
	}
	if c.JanitorInterval < 0 {
		bad("janitor-interval", "must not be negative")
	}
	if c.ShutdownTimeout <= 0 {
		bad("shutdown-timeout", "must be positive")
	}
	return errors.Join(errs...)
}

// DefaultConfig is the configuration with every default, as ParseConfig
// returns for no flags and no environment.
func DefaultConfig() Config {
	cfg, err := ParseConfig(nil, func(string) string { return "" }, io.Discard)
	if err != nil {
		panic(err)
	}
	return cfg
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// parseWeights reads --fairness-weights: infra=weight pairs.
func parseWeights(v string) (map[string]float32, error) {
	if strings.TrimSpace(v) == "" {
		return nil, nil
	}
	out := map[string]float32{}
	for _, pair := range strings.Split(v, ",") {
		name, w, ok := strings.Cut(strings.TrimSpace(pair), "=")
		if !ok {
			return nil, fmt.Errorf("--fairness-weights: %q is not infra=weight", pair)
		}
		if err := workflows.ValidateName("infra", name); err != nil {
			return nil, fmt.Errorf("--fairness-weights: %q: %w", name, err)
		}
		f, err := strconv.ParseFloat(w, 32)
		if err != nil || f <= 0 || f > 1000 {
			return nil, fmt.Errorf("--fairness-weights: weight of %s must be a number above 0 and at most 1000, not %q", name, w)
		}
		out[name] = float32(f)
	}
	return out, nil
}
