// Package devserver runs a Temporal server and its Web UI inside the
// orchestrator process, persisted in a SQLite file, so that the quick start
// needs no separate Temporal installation. Production deployments point the
// orchestrator at a real cluster with --temporal-address instead.
package devserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	uiserver "github.com/temporalio/ui-server/v2/server"
	uiconfig "github.com/temporalio/ui-server/v2/server/config"
	uiserveroptions "github.com/temporalio/ui-server/v2/server/server_options"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/server/common/authorization"
	"go.temporal.io/server/common/cluster"
	"go.temporal.io/server/common/config"
	"go.temporal.io/server/common/dynamicconfig"
	"go.temporal.io/server/common/membership/static"
	sqliteplugin "go.temporal.io/server/common/persistence/sql/sqlplugin/sqlite"
	"go.temporal.io/server/common/primitives"
	sqliteschema "go.temporal.io/server/schema/sqlite"
	"go.temporal.io/server/temporal"
)

// Options configures the embedded server. Zero values take the defaults
// documented on each field.
type Options struct {
	// DataDir holds the SQLite database (temporal.db) and a lock file.
	// Required.
	DataDir string
	// IP to bind; default 127.0.0.1. Static membership needs an IP, not a
	// host name such as localhost.
	IP string
	// FrontendPort is the gRPC port clients dial; default 7233.
	FrontendPort int
	// UIPort serves the Temporal Web UI; default 8233, negative disables it.
	UIPort int
	// Namespaces to create before start-up; default ["default"].
	Namespaces []string
	// Logger receives the server's logs; default slog.Default().
	Logger *slog.Logger
	// LogLevel filters the server's very chatty logs; default Warn.
	LogLevel slog.Level
	// LogLevelSet must be true for LogLevel to be used (so that the zero
	// value means Warn rather than Info).
	LogLevelSet bool
	// NoFairness turns off fairness between fairness keys (infras):
	// within a priority level the backlog is then first in, first out.
	// Default false (fairness on); baselines and comparisons set it.
	NoFairness bool
	// SearchAttributes are custom search attributes every namespace gets:
	// a new database has them from its creation, an existing one (made by
	// an older version) gets those it lacks added through the operator API
	// at start-up, so restarts on the same SQLite file are no-ops. Default
	// none.
	SearchAttributes map[string]enumspb.IndexedValueType
	// Postgres, when set, keeps Temporal's state in PostgreSQL instead
	// of the SQLite file in DataDir (then DataDir is unused): the
	// databases get their schema set up or upgraded, the namespaces are
	// registered through the frontend and the search attributes added,
	// each only when missing. Default nil (SQLite).
	Postgres *Postgres
}

// Server is a running embedded Temporal server.
type Server struct {
	srv      temporal.Server
	ui       *uiserver.Server
	lock     *os.File
	logLevel *slog.LevelVar
	address  string
	uiAddr   string
	dbPath   string
	stopOnce bool
}

// Address is the frontend host:port for SDK clients.
func (s *Server) Address() string { return s.address }

// UIAddress is the Web UI host:port, or "" when disabled.
func (s *Server) UIAddress() string { return s.uiAddr }

// DatabasePath is the SQLite file holding all Temporal state, or the
// PostgreSQL databases (without password).
func (s *Server) DatabasePath() string { return s.dbPath }

// Start prepares the schema and namespaces and starts the server. It fails
// with a clear error, rather than letting the server os.Exit, when a port is
// taken or another process already uses the same data directory.
func Start(o Options) (*Server, error) {
	if o.DataDir == "" && o.Postgres == nil {
		return nil, errors.New("devserver: DataDir is required")
	}
	if o.IP == "" {
		o.IP = "127.0.0.1"
	}
	if o.FrontendPort == 0 {
		o.FrontendPort = 7233
	}
	if o.UIPort == 0 {
		o.UIPort = 8233
	}
	if len(o.Namespaces) == 0 {
		o.Namespaces = []string{"default"}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if !o.LogLevelSet {
		o.LogLevel = slog.LevelWarn
	}
	var lock *os.File
	if o.Postgres == nil {
		if err := os.MkdirAll(o.DataDir, 0o755); err != nil {
			return nil, fmt.Errorf("devserver: create data dir: %w", err)
		}
		var err error
		if lock, err = lockDataDir(o.DataDir); err != nil {
			return nil, err
		}
	}
	ok := false
	defer func() {
		if !ok && lock != nil {
			_ = lock.Close()
		}
	}()

	// The server calls os.Exit when it cannot bind, so probe first.
	if err := checkPortFree(o.IP, o.FrontendPort); err != nil {
		return nil, &portTakenError{fmt.Errorf("embedded Temporal frontend port: %w (use --temporal-port to pick another, or --temporal-address to use an existing server)", err)}
	}
	if o.UIPort > 0 {
		if err := checkPortFree(o.IP, o.UIPort); err != nil {
			return nil, &portTakenError{fmt.Errorf("embedded Temporal UI port: %w (use --temporal-ui-port to pick another, or -1 to disable the UI)", err)}
		}
	}

	var p persistence
	var dbPath string
	if o.Postgres != nil {
		def, vis, err := preparePostgres(o.Postgres, o.Logger)
		if err != nil {
			return nil, err
		}
		shards := o.Postgres.HistoryShards
		if shards <= 0 {
			shards = PostgresHistoryShards
		}
		p = persistence{def: def, vis: vis, shards: shards}
		dbPath = o.Postgres.Redacted()
	} else {
		dbPath = filepath.Join(o.DataDir, "temporal.db")
		sqlConf, err := prepareSQLite(dbPath, o.Namespaces, o.SearchAttributes)
		if err != nil {
			return nil, err
		}
		p = persistence{def: sqlConf, shards: 1}
	}
	srv, logger, err := startServer(o, p)
	if err != nil {
		return nil, err
	}
	s := &Server{
		srv:      srv,
		lock:     lock,
		logLevel: logger.level,
		address:  net.JoinHostPort(o.IP, strconv.Itoa(o.FrontendPort)),
		dbPath:   dbPath,
	}
	if o.UIPort > 0 {
		s.uiAddr = net.JoinHostPort(o.IP, strconv.Itoa(o.UIPort))
		s.ui = uiserver.NewServer(uiserveroptions.WithConfigProvider(&uiconfig.Config{
			Host:                o.IP,
			Port:                o.UIPort,
			TemporalGRPCAddress: s.address,
			EnableUI:            true,
			CORS:                uiconfig.CORS{CookieInsecure: true},
			HideLogs:            true,
			DisableNewsFetch:    true,
		}))
		go func() {
			// Start blocks until Stop; a failure here only loses the UI,
			// not the orchestrator, so it is logged rather than fatal.
			if err := s.ui.Start(); err != nil && !errors.Is(err, net.ErrClosed) && err.Error() != "http: Server closed" {
				o.Logger.Error("temporal web UI stopped", "error", err)
			}
		}()
	}
	if o.Postgres != nil {
		ctx, cancel := context.WithTimeout(context.Background(), searchAttributeTimeout)
		err := registerNamespaces(ctx, s.address, o.Namespaces, o.Logger)
		cancel()
		if err != nil {
			s.Stop()
			return nil, err
		}
	}
	if len(o.SearchAttributes) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), searchAttributeTimeout)
		err := ensureSearchAttributes(ctx, s.address, o.Namespaces, o.SearchAttributes, o.Logger)
		cancel()
		if err != nil {
			s.Stop()
			return nil, err
		}
	}
	ok = true
	return s, nil
}

// listenAttempts bounds the retries when an internal port is taken between
// FreePort and the server's bind (another process on a busy machine).
const listenAttempts = 4

// startServer builds and starts the server, choosing fresh internal ports
// and trying again when one of them was taken meanwhile. A clash on the
// frontend port (chosen by the caller) is returned as a *FatalError.
func startServer(o Options, p persistence) (temporal.Server, slogAdapter, error) {
	logger := newLogger(o.Logger.With("component", "temporal"), o.LogLevel)
	for attempt := 1; ; attempt++ {
		srv, err := buildAndStart(o, p, logger)
		var fe *FatalError
		if errors.As(err, &fe) && fe.isListenerClash() && fe.Service != "frontend" && attempt < listenAttempts {
			o.Logger.Warn("embedded Temporal: an internal port was taken before the server bound it; trying other ports",
				"service", fe.Service, "address", fe.Address, "attempt", attempt)
			continue
		}
		return srv, logger, err
	}
}

// buildAndStart turns a fatal report of the server during construction or
// start (a panic from slogAdapter.Fatal) into an error.
func buildAndStart(o Options, p persistence, logger slogAdapter) (_ temporal.Server, err error) {
	logger.building.Store(true)
	defer func() {
		logger.building.Store(false)
		if r := recover(); r != nil {
			fe, ok := r.(*FatalError)
			if !ok {
				panic(r)
			}
			err = fe
		}
	}()
	httpPort, err := pickPort(o.IP)
	if err != nil {
		return nil, err
	}
	conf, err := buildConfig(o, p, httpPort)
	if err != nil {
		return nil, err
	}

	authorizer, err := authorization.GetAuthorizerFromConfig(&conf.Global.Authorization)
	if err != nil {
		return nil, fmt.Errorf("devserver: authorizer: %w", err)
	}
	claimMapper, err := authorization.GetClaimMapperFromConfig(&conf.Global.Authorization, logger)
	if err != nil {
		return nil, fmt.Errorf("devserver: claim mapper: %w", err)
	}
	hosts := map[primitives.ServiceName]static.Hosts{}
	for name, svc := range map[primitives.ServiceName]string{
		primitives.FrontendService: "frontend",
		primitives.HistoryService:  "history",
		primitives.MatchingService: "matching",
		primitives.WorkerService:   "worker",
	} {
		hosts[name] = static.SingleLocalHost(net.JoinHostPort(o.IP, strconv.Itoa(conf.Services[svc].RPC.GRPCPort)))
	}
	dyn := dynamicconfig.StaticClient{
		dynamicconfig.HistoryCacheHostLevelMaxSize.Key():                 8096,
		dynamicconfig.FrontendMaxNamespaceVisibilityRPSPerInstance.Key(): 100,
		// A single-host dev server has no reason to throttle its only user.
		dynamicconfig.FrontendRPS.Key():                                 10000,
		dynamicconfig.FrontendNamespaceReplicationInducingAPIsRPS.Key(): 1000,
		// Tasks carry their infra as fairness key: one infra's backlog
		// must not starve another's (priority keys work without this).
		dynamicconfig.MatchingEnableFairness.Key(): !o.NoFairness,
		// One partition per task queue, as Temporal's own dev server has:
		// priorities and fairness order tasks within a partition, and a
		// single host gains nothing from four (the default), whose pollers
		// would take tasks from whichever partition they happen to poll.
		dynamicconfig.MatchingNumTaskqueueReadPartitions.Key():  1,
		dynamicconfig.MatchingNumTaskqueueWritePartitions.Key(): 1,
	}
	srv, err := temporal.NewServer(
		temporal.WithConfig(conf),
		temporal.ForServices(temporal.DefaultServices),
		temporal.WithStaticHosts(hosts),
		temporal.WithLogger(logger),
		temporal.WithAuthorizer(authorizer),
		temporal.WithClaimMapper(func(*config.Config) authorization.ClaimMapper { return claimMapper }),
		temporal.WithDynamicConfigClient(dyn),
	)
	if err != nil {
		return nil, fmt.Errorf("devserver: new server: %w", err)
	}
	if err := srv.Start(); err != nil {
		return nil, fmt.Errorf("devserver: start: %w", err)
	}
	return srv, nil
}

// Stop shuts down the UI and the server and releases the data dir lock.
func (s *Server) Stop() {
	if s.stopOnce {
		return
	}
	s.stopOnce = true
	// Its internal workers complain loudly about the connections that the
	// shutdown itself closes; only real errors are worth showing now.
	s.logLevel.Set(slog.LevelError)
	if s.ui != nil {
		s.ui.Stop()
	}
	_ = s.srv.Stop()
	if s.lock != nil {
		_ = s.lock.Close()
	}
}

func prepareSQLite(dbPath string, namespaces []string, searchAttributes map[string]enumspb.IndexedValueType) (*config.SQL, error) {
	conf := &config.SQL{
		PluginName:   sqliteplugin.PluginName,
		DatabaseName: dbPath,
		// WAL with a single connection measured fastest here and avoids
		// "database is locked" under concurrent workflows.
		ConnectAttributes: map[string]string{
			"mode":         "rwc",
			"journal_mode": "wal",
			"synchronous":  "1",
			"busy_timeout": "10000",
		},
		MaxConns:     1,
		MaxIdleConns: 1,
	}
	if _, err := os.Stat(dbPath); errors.Is(err, os.ErrNotExist) {
		if err := sqliteschema.SetupSchema(conf); err != nil {
			return nil, fmt.Errorf("devserver: set up SQLite schema in %s: %w", dbPath, err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("devserver: %w", err)
	}
	nsConfs := make([]*sqliteschema.NamespaceConfig, 0, len(namespaces))
	for _, ns := range namespaces {
		c, err := sqliteschema.NewNamespaceConfig(clusterName, ns, false, searchAttributes)
		if err != nil {
			return nil, fmt.Errorf("devserver: namespace %q: %w", ns, err)
		}
		nsConfs = append(nsConfs, c)
	}
	if err := sqliteschema.CreateNamespaces(conf, nsConfs...); err != nil {
		return nil, fmt.Errorf("devserver: create namespaces: %w", err)
	}
	return conf, nil
}

const clusterName = "active"

// persistence is the server's stores: vis nil shares def (SQLite's one
// file holds both).
type persistence struct {
	def, vis *config.SQL
	shards   int32
}

func buildConfig(o Options, p persistence, httpPort int) (*config.Config, error) {
	var conf config.Config
	conf.Global.Membership.MaxJoinDuration = 30 * time.Second
	conf.Global.Membership.BroadcastAddress = o.IP
	conf.Persistence.NumHistoryShards = p.shards
	if p.vis == nil {
		conf.Persistence.DefaultStore = "sqlite-default"
		conf.Persistence.VisibilityStore = "sqlite-default"
		conf.Persistence.DataStores = map[string]config.DataStore{"sqlite-default": {SQL: p.def}}
	} else {
		conf.Persistence.DefaultStore = "default"
		conf.Persistence.VisibilityStore = "visibility"
		conf.Persistence.DataStores = map[string]config.DataStore{"default": {SQL: p.def}, "visibility": {SQL: p.vis}}
	}
	frontend := net.JoinHostPort(o.IP, strconv.Itoa(o.FrontendPort))
	conf.ClusterMetadata = &cluster.Config{
		FailoverVersionIncrement: 10,
		MasterClusterName:        clusterName,
		CurrentClusterName:       clusterName,
		ClusterInformation: map[string]cluster.ClusterInformation{
			clusterName: {
				Enabled:                true,
				InitialFailoverVersion: 1,
				RPCAddress:             frontend,
				HTTPAddress:            net.JoinHostPort(o.IP, strconv.Itoa(httpPort)),
				ClusterID:              "6f726368-6573-7472-6174-6f7200000001", // fixed so restarts keep one identity
			},
		},
	}
	conf.DCRedirectionPolicy.Policy = "noop"
	conf.Services = map[string]config.Service{}
	for _, name := range []string{"frontend", "history", "matching", "worker"} {
		var svc config.Service
		svc.RPC.BindOnIP = o.IP
		if name == "frontend" {
			svc.RPC.GRPCPort = o.FrontendPort
			svc.RPC.HTTPPort = httpPort
		} else {
			p, err := pickPort(o.IP)
			if err != nil {
				return nil, err
			}
			svc.RPC.GRPCPort = p
		}
		conf.Services[name] = svc
	}
	conf.Archival.History.State = "disabled"
	conf.Archival.Visibility.State = "disabled"
	conf.NamespaceDefaults.Archival.History.State = "disabled"
	conf.NamespaceDefaults.Archival.Visibility.State = "disabled"
	conf.PublicClient.HostPort = frontend
	return &conf, nil
}

// lockDataDir takes an exclusive flock so two processes never open one
// SQLite file as two servers, which corrupts nothing but makes both fail in
// confusing ways.
func lockDataDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, "temporal.lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("devserver: open lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("devserver: data dir %s is in use by another orchestrator process (lock %s): %w", dir, path, err)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteString(strconv.Itoa(os.Getpid()) + "\n")
	return f, nil
}

type portTakenError struct{ err error }

func (e *portTakenError) Error() string { return e.err.Error() }
func (e *portTakenError) Unwrap() error { return e.err }

// PortTaken reports whether Start failed because the frontend or UI port
// was in use, so that a caller that chose them with FreePort can choose
// again.
func PortTaken(err error) bool {
	var pt *portTakenError
	if errors.As(err, &pt) {
		return true
	}
	var fe *FatalError
	return errors.As(err, &fe) && fe.isListenerClash()
}

func checkPortFree(ip string, port int) error {
	l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
	if err != nil {
		return fmt.Errorf("%s:%d is not available: %w", ip, port, err)
	}
	return l.Close()
}

// FreePort returns a TCP port on ip that is free now, for a server to bind
// a moment later. It picks from below the kernel's ephemeral range: a port
// from bind(":0") comes from that range and can be taken as the source
// port of any outgoing connection before the server binds it (seen here
// under load: "address already in use" at start-up).
func FreePort(ip string) (int, error) {
	lo, _ := ephemeralRange()
	if lo > 12000 {
		for range 64 {
			port := 10000 + rand.IntN(lo-10000)
			l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
			if err == nil {
				_ = l.Close()
				return port, nil
			}
		}
	}
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return 0, fmt.Errorf("devserver: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// pickPort chooses the server's internal ports; a variable so that a test
// can hand out a port that is taken.
var pickPort = FreePort

// ephemeralRange reads the kernel's local port range (Linux), defaulting
// to the usual 32768-60999.
func ephemeralRange() (lo, hi int) {
	lo, hi = 32768, 60999
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return lo, hi
	}
	f := strings.Fields(string(b))
	if len(f) == 2 {
		if l, err := strconv.Atoi(f[0]); err == nil {
			lo = l
		}
		if h, err := strconv.Atoi(f[1]); err == nil {
			hi = h
		}
	}
	return lo, hi
}
