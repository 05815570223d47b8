package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/provisioning/orchestrator/migrate"
	"github.com/provisioning/orchestrator/storage"
)

// ModeMigrate is the `orchestrator migrate` subcommand: copy the task store
// from one backend to another and verify it (package migrate).
const ModeMigrate Mode = "migrate"

// MigrateConfig is the configuration of `orchestrator migrate`, from flags
// or ORCHESTRATOR_MIGRATE_* environment variables (flag wins).
type MigrateConfig struct {
	// From and To are the source and target stores.
	From StoreConfig
	To   StoreConfig
	// DryRun compares and reports only.
	DryRun bool
	// Concurrency: records read at once, and records written at once;
	// default 4.
	Concurrency int
	// IgnoreChangeStamps: read every source record in every pass (see
	// migrate.Options.IgnoreChangeStamps); default false.
	IgnoreChangeStamps bool
	// MaxDeltaPasses after the first pass; default 3.
	MaxDeltaPasses int
	// Checkpoint file that makes a rerun skip work already done.
	Checkpoint string
	// ValidateOnly compares the two stores read-only (ValidateStores)
	// instead of migrating (flag --validate).
	ValidateOnly bool
	// Output of the summary on stdout: "text" (default) or "json" (the
	// Report, or the ValidateReport with Validate).
	Output    string
	LogLevel  slog.Level
	LogFormat string
	// Throttle pauses after each record of the first pass. Not a flag: set
	// only by tests (ORCHESTRATOR_MIGRATE_TEST_THROTTLE) to interrupt a
	// migration midway.
	Throttle time.Duration
}

// MigrateEnvName is the environment variable of a migrate flag:
// --from-data-dir reads ORCHESTRATOR_MIGRATE_FROM_DATA_DIR.
func MigrateEnvName(flagName string) string {
	return EnvName(string(ModeMigrate) + "-" + flagName)
}

// migrateThrottleEnv is the test-only throttle (a Go duration).
const migrateThrottleEnv = EnvPrefix + "MIGRATE_TEST_THROTTLE"

// ParseMigrateConfig reads the flags of `orchestrator migrate` (args
// without the subcommand) with environment fallbacks from getenv.
func ParseMigrateConfig(args []string, getenv func(string) string, out io.Writer) (MigrateConfig, error) {
	var cfg MigrateConfig
	fs := flag.NewFlagSet("orchestrator migrate", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `Usage: orchestrator migrate --from TYPE --to TYPE [flags]

Copies every task and its audit trail from one storage backend to another,
then verifies counts and a SHA-256 content checksum per record. Idempotent
and resumable: rerun it after an interruption, or to copy what the service
wrote meanwhile. Exits non-zero on any mismatch. Progress goes to stderr,
the summary to stdout. Types: filesystem, surrealdb-embedded,
surrealdb-server. Every flag can be set as ORCHESTRATOR_MIGRATE_<FLAG>
(e.g. ORCHESTRATOR_MIGRATE_FROM_DATA_DIR).

Flags:
`)
		fs.PrintDefaults()
	}
	side := func(sc *StoreConfig, name, role string) {
		fs.StringVar(&sc.Type, name, "", "`type` of the "+role+" store: filesystem, surrealdb-embedded or surrealdb-server (required)")
		fs.StringVar(&sc.DataDir, name+"-data-dir", "", "data directory of a filesystem or surrealdb-embedded "+role)
		fs.StringVar(&sc.SurrealURL, name+"-surrealdb-url", "", "SurrealDB server URL (ws://host:8000 or http://...) of a surrealdb-server "+role)
		fs.StringVar(&sc.SurrealNamespace, name+"-surrealdb-namespace", DefaultSurrealNamespace, "SurrealDB namespace of the "+role)
		fs.StringVar(&sc.SurrealDatabase, name+"-surrealdb-database", DefaultSurrealDatabase, "SurrealDB database of the "+role)
		fs.StringVar(&sc.SurrealUsername, name+"-surrealdb-username", "", "SurrealDB root user of the "+role)
		fs.StringVar(&sc.SurrealPassword, name+"-surrealdb-password", "", "SurrealDB root password of the "+role)
		fs.StringVar(&sc.SurrealPath, name+"-surreal-path", DefaultSurrealExecutable, "surreal executable of a surrealdb-embedded "+role)
	}
	side(&cfg.From, "from", "source")
	side(&cfg.To, "to", "target")
	fs.BoolVar(&cfg.DryRun, "dry-run", false, "read and compare only; report what would be copied")
	fs.IntVar(&cfg.Concurrency, "concurrency", migrate.DefaultConcurrency, "records read at once from the source, and written at once to the target (1-256)")
	fs.BoolVar(&cfg.IgnoreChangeStamps, "ignore-change-stamps", false, "read every source record in every pass and in the verification; by default a filesystem source's record whose files (inode, size, mtime, ctime) did not change since it was read is not read again")
	fs.IntVar(&cfg.MaxDeltaPasses, "max-delta-passes", migrate.DefaultMaxDeltaPasses, "passes after the first that copy what the service changed meanwhile (1-100)")
	fs.StringVar(&cfg.Checkpoint, "checkpoint", "", "`file` recording progress so that a rerun skips what is done (optional)")
	fs.BoolVar(&cfg.ValidateOnly, "validate", false, "write nothing: check both stores are reachable and have their schema, count and compare their tasks; exit non-zero unless they are in sync")
	fs.StringVar(&cfg.Output, "output", "text", "summary on stdout: text or json")
	logLevel := fs.String("log-level", "warn", "debug, info, warn or error")
	fs.StringVar(&cfg.LogFormat, "log-format", "auto", "json, text, or auto (text on a terminal, json otherwise)")

	if err := parseWithEnv(fs, args, getenv, MigrateEnvName); err != nil {
		return cfg, err
	}
	var err error
	if cfg.LogLevel, err = parseLevel("log-level", *logLevel); err != nil {
		return cfg, err
	}
	if v := getenv(migrateThrottleEnv); v != "" {
		if cfg.Throttle, err = time.ParseDuration(v); err != nil || cfg.Throttle < 0 {
			return cfg, fmt.Errorf("%s: %q is not a duration", migrateThrottleEnv, v)
		}
	}
	return cfg, cfg.Validate()
}

// Validate checks the migrate settings; every error names its flag.
func (c MigrateConfig) Validate() error {
	var errs []error
	bad := func(flagName, format string, a ...any) {
		errs = append(errs, fmt.Errorf("--%s: %s", flagName, fmt.Sprintf(format, a...)))
	}
	checkSide := func(name string, sc StoreConfig) {
		switch sc.Type {
		case "":
			bad(name, "is required: filesystem, surrealdb-embedded or surrealdb-server")
			return
		case StorageFilesystem, StorageSurrealEmbedded:
			if sc.DataDir == "" {
				bad(name+"-data-dir", "is required with --%s %s", name, sc.Type)
			}
			if sc.Type == StorageSurrealEmbedded && sc.SurrealPath == "" {
				bad(name+"-surreal-path", "must not be empty with --%s %s", name, sc.Type)
			}
		case StorageSurrealServer:
			if sc.SurrealURL == "" {
				bad(name+"-surrealdb-url", "is required with --%s %s", name, sc.Type)
			} else if _, err := surrealEndpoint(sc.SurrealURL); err != nil {
				bad(name+"-surrealdb-url", "%v", err)
			}
		default:
			bad(name, "%q is not one of filesystem, surrealdb-embedded, surrealdb-server", sc.Type)
			return
		}
		if sc.Type != StorageFilesystem {
			if sc.SurrealNamespace == "" {
				bad(name+"-surrealdb-namespace", "must not be empty")
			}
			if sc.SurrealDatabase == "" {
				bad(name+"-surrealdb-database", "must not be empty")
			}
		}
	}
	checkSide("from", c.From)
	checkSide("to", c.To)
	if len(errs) == 0 && sameStore(c.From, c.To) {
		bad("to", "is the same store as --from (%s): refusing to migrate a store onto itself", storeName(c.From))
	}
	// A mistyped source path must not migrate an empty store (opening it
	// would even create one). A validation reports it instead.
	if d := c.From.DataDir; d != "" && !c.ValidateOnly {
		var inside string
		switch c.From.Type {
		case StorageFilesystem:
			inside = filepath.FromSlash(storage.TasksSubdir)
		case StorageSurrealEmbedded:
			inside = "orchestrator.db"
		}
		if inside != "" {
			if _, err := os.Stat(filepath.Join(d, inside)); err != nil {
				bad("from-data-dir", "%s holds no %s store (no %s): %v", d, c.From.Type, inside, errors.Unwrap(err))
			}
		}
	}
	if c.Concurrency < 1 || c.Concurrency > 256 {
		bad("concurrency", "%d must be from 1 to 256", c.Concurrency)
	}
	if c.MaxDeltaPasses < 1 || c.MaxDeltaPasses > 100 {
		bad("max-delta-passes", "%d must be from 1 to 100", c.MaxDeltaPasses)
	}
	if c.Checkpoint != "" {
		if fi, err := os.Stat(filepath.Dir(c.Checkpoint)); err != nil || !fi.IsDir() {
			bad("checkpoint", "directory %s does not exist", filepath.Dir(c.Checkpoint))
		}
	}
	if c.ValidateOnly && c.Checkpoint != "" {
		bad("checkpoint", "is not used with --validate (a validation reads both stores in full and writes nothing)")
	}
	switch c.Output {
	case "text", "json":
	default:
		bad("output", "%q is not one of text, json", c.Output)
	}
	switch c.LogFormat {
	case "auto", "json", "text":
	default:
		bad("log-format", "%q is not one of auto, json, text", c.LogFormat)
	}
	return errors.Join(errs...)
}

// storeName identifies a store for people, for the checkpoint, and to
// refuse migrating a store onto itself: two configs with the same name are
// the same data.
func storeName(sc StoreConfig) string {
	switch sc.Type {
	case StorageFilesystem:
		return sc.Type + ":" + canonicalDir(sc.DataDir)
	case StorageSurrealEmbedded:
		return fmt.Sprintf("%s:%s ns=%s db=%s", sc.Type, canonicalDir(sc.DataDir), sc.SurrealNamespace, sc.SurrealDatabase)
	case StorageSurrealServer:
		ep, err := surrealEndpoint(sc.SurrealURL)
		if err != nil {
			ep = sc.SurrealURL
		}
		return fmt.Sprintf("%s:%s ns=%s db=%s", sc.Type, ep, sc.SurrealNamespace, sc.SurrealDatabase)
	}
	return sc.Type
}

// sameStore reports whether a and b name the same data. Two embedded
// SurrealDBs in one data directory are the same database files (and could
// not both be started), whatever their namespaces.
func sameStore(a, b StoreConfig) bool {
	if a.Type == StorageSurrealEmbedded && b.Type == StorageSurrealEmbedded {
		return canonicalDir(a.DataDir) == canonicalDir(b.DataDir)
	}
	return storeName(a) == storeName(b)
}

// canonicalDir is dir made absolute, cleaned, and with symlinks resolved
// where it exists.
func canonicalDir(dir string) string {
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		dir = real
	}
	return filepath.Clean(dir)
}

// surrealEndpoint reduces a SurrealDB URL to the server it names, so that
// ws://localhost:8000/rpc and http://127.0.0.1:8000 compare equal.
func surrealEndpoint(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("%q is not a ws://, wss://, http:// or https:// URL", raw)
	}
	var port string
	switch strings.ToLower(u.Scheme) {
	case "ws", "http":
		port = "80"
	case "wss", "https":
		port = "443"
	default:
		return "", fmt.Errorf("%q: scheme must be ws, wss, http or https", raw)
	}
	host := strings.ToLower(u.Hostname())
	if p := u.Port(); p != "" {
		port = p
	}
	if host == "localhost" || host == "::1" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port), nil
}

// RunMigrate is `orchestrator migrate`: it parses args (after the
// subcommand), opens both stores, migrates with progress on stderr and
// prints the summary on stdout. Any mismatch is an error (non-zero exit).
func RunMigrate(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := ParseMigrateConfig(args, getenv, stderr)
	if err != nil {
		return err
	}
	log := NewLogger(stderr, cfg.LogFormat, cfg.LogLevel).With("component", "migrate")
	if cfg.ValidateOnly {
		rep, err := ValidateStores(ctx, cfg, log)
		if cfg.Output == "json" {
			if werr := writeJSON(stdout, rep); werr != nil {
				return errors.Join(err, werr)
			}
		} else {
			rep.WriteText(stdout)
		}
		return err
	}
	src, err := OpenStore(ctx, cfg.From, log.With("store", "source"))
	if err != nil {
		return fmt.Errorf("--from: %w", err)
	}
	defer src.Close()
	dst, err := OpenStore(ctx, cfg.To, log.With("store", "target"))
	if err != nil {
		return fmt.Errorf("--to: %w", err)
	}
	defer dst.Close()

	rep, err := migrate.Run(ctx, src, dst, migrate.Options{
		DryRun:         cfg.DryRun,
		Progress:       stderr,
		Concurrency:    cfg.Concurrency,
		MaxDeltaPasses: cfg.MaxDeltaPasses,
		CheckpointPath: cfg.Checkpoint,
		SourceName:     storeName(cfg.From),
		TargetName:     storeName(cfg.To),
		Logger:         log,
		Throttle:       cfg.Throttle,

		IgnoreChangeStamps: cfg.IgnoreChangeStamps,
	})
	if err != nil && !errors.Is(err, migrate.ErrMismatch) {
		return fmt.Errorf("migration interrupted (rerun to resume; the copy is idempotent): %w", err)
	}
	if cfg.Output == "json" {
		if werr := writeJSON(stdout, rep); werr != nil {
			return errors.Join(err, werr)
		}
	} else {
		rep.WriteSummary(stdout)
	}
	return err
}
