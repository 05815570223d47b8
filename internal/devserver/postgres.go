package devserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	sdklog "go.temporal.io/sdk/log"
	"go.temporal.io/server/common/config"
	"go.temporal.io/server/common/log"
	// Importing it registers the postgres12 and postgres12_pgx SQL plugins.
	"go.temporal.io/server/common/persistence/sql/sqlplugin/postgresql"
	"go.temporal.io/server/tools/common/schema"
	sqltool "go.temporal.io/server/tools/sql"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Postgres locates the PostgreSQL databases of a Temporal server that is
// not the single-file SQLite one. Temporal keeps its two stores in two
// databases, as its own tooling lays them out: Database (executions,
// task queues, namespaces) and VisibilityDatabase (the workflow list).
type Postgres struct {
	// Address is host:port; default 127.0.0.1:5432.
	Address string
	// User and Password of a role that owns both databases (and may
	// create them: a missing database is created when the role has
	// CREATEDB).
	User     string
	Password string
	// Database of the default store; default "temporal".
	Database string
	// VisibilityDatabase; default Database + "_visibility".
	VisibilityDatabase string
	// ConnectAttributes are passed to the driver, e.g. sslmode=disable.
	ConnectAttributes map[string]string
	// HistoryShards is fixed when the database is set up; later changes
	// are refused by the server. Default PostgresHistoryShards.
	HistoryShards int32
}

// PostgresHistoryShards is the default number of history shards of a
// PostgreSQL-backed server: more than SQLite's one so that history work
// for different workflows does not serialise on one shard lock, few
// enough for a small machine.
const PostgresHistoryShards = 4

// ParsePostgresURL reads postgres://user[:password]@host[:port]/dbname?opts
// (or postgresql://). password, when not empty, replaces the URL's. Query
// parameters become connect attributes, except visibility_db, which
// names the visibility database. Errors never contain the password.
func ParsePostgresURL(dsn, password string) (*Postgres, error) {
	u, err := url.Parse(dsn)
	if err != nil {
		// url errors quote the input, which may hold a password.
		return nil, errors.New("not a URL (want postgres://user:password@host:5432/dbname?sslmode=disable)")
	}
	if u.Scheme != "postgres" && u.Scheme != "postgresql" {
		return nil, fmt.Errorf("scheme %q is not postgres:// (want postgres://user:password@host:5432/dbname?sslmode=disable)", u.Scheme)
	}
	p := &Postgres{Address: u.Host, Database: strings.TrimPrefix(u.Path, "/"), ConnectAttributes: map[string]string{}}
	if p.Address == "" {
		p.Address = "127.0.0.1:5432"
	} else if _, _, err := net.SplitHostPort(p.Address); err != nil {
		p.Address = net.JoinHostPort(p.Address, "5432")
	}
	if u.User != nil {
		p.User = u.User.Username()
		p.Password, _ = u.User.Password()
	}
	if password != "" {
		p.Password = password
	}
	if p.User == "" {
		return nil, errors.New("no user (want postgres://user:password@host:5432/dbname)")
	}
	if p.Database == "" {
		p.Database = "temporal"
	}
	for k, vs := range u.Query() {
		if len(vs) == 0 {
			continue
		}
		if k == "visibility_db" {
			p.VisibilityDatabase = vs[0]
			continue
		}
		p.ConnectAttributes[k] = vs[0]
	}
	if p.VisibilityDatabase == "" {
		p.VisibilityDatabase = p.Database + "_visibility"
	}
	return p, nil
}

// Redacted is the connection without its password, for logs.
func (p *Postgres) Redacted() string {
	return fmt.Sprintf("postgres://%s@%s/%s (visibility %s)", p.User, p.Address, p.Database, p.VisibilityDatabase)
}

func (p *Postgres) sqlConfig(db string) *config.SQL {
	return &config.SQL{
		PluginName:        postgresql.PluginNamePGX,
		DatabaseName:      db,
		ConnectAddr:       p.Address,
		ConnectProtocol:   "tcp",
		User:              p.User,
		Password:          p.Password,
		ConnectAttributes: p.ConnectAttributes,
		MaxConns:          20,
		MaxIdleConns:      20,
		MaxConnLifetime:   time.Hour,
	}
}

// Schema directories inside go.temporal.io/server/schema's embedded files.
const (
	postgresSchema           = "postgresql/v12/temporal"
	postgresVisibilitySchema = "postgresql/v12/visibility"
)

// preparePostgres creates the databases when missing, sets up the schema
// of an empty one and upgrades an older one to the version this build
// embeds; on an up-to-date database it changes nothing.
func preparePostgres(p *Postgres, logger *slog.Logger) (def, vis *config.SQL, err error) {
	tl := newLogger(logger.With("component", "temporal-schema"), slog.LevelWarn)
	def, vis = p.sqlConfig(p.Database), p.sqlConfig(p.VisibilityDatabase)
	for _, s := range []struct {
		conf   *config.SQL
		schema string
	}{{def, postgresSchema}, {vis, postgresVisibilitySchema}} {
		if err := prepareDatabase(s.conf, s.schema, tl); err != nil {
			return nil, nil, fmt.Errorf("--temporal-db %s: database %s: %w", p.Redacted(), s.conf.DatabaseName, err)
		}
	}
	return def, vis, nil
}

func prepareDatabase(conf *config.SQL, schemaName string, logger log.Logger) error {
	// The probe is silent: a missing database (normal on first start)
	// would otherwise be logged as an error by the connection pool.
	quiet := newLogger(slog.New(slog.DiscardHandler), slog.LevelError+1)
	conn, err := sqltool.NewConnection(conf, quiet)
	if err == nil {
		_, err = conn.ListTables()
		if err != nil {
			conn.Close()
		}
	}
	if err != nil {
		// The plugin reports a missing database as no usable
		// connection: try to create it from the server's default
		// database, which also shows why an unreachable server is.
		// (DoCreateDatabase points the config it gets at that database.)
		admin := *conf
		if cerr := sqltool.DoCreateDatabase(&admin, "postgres", quiet); cerr != nil {
			// The plugin's errors say only "no usable database
			// connection found"; the driver says why.
			return fmt.Errorf("cannot connect (%w), nor create the database from %q (%w)", diagnose(conf, conf.DatabaseName), admin.DatabaseName, diagnose(conf, admin.DatabaseName))
		}
		logger.Info("created database " + conf.DatabaseName)
		if conn, err = sqltool.NewConnection(conf, logger); err != nil {
			return fmt.Errorf("connect after creating it: %w", err)
		}
	}
	defer conn.Close()
	if _, err := conn.ReadSchemaVersion(); err != nil {
		// No version table yet: an empty database. Version 0.0 then
		// lets the update below apply every versioned step, as
		// temporal-sql-tool setup-schema -v 0.0 + update-schema does.
		tables, lerr := conn.ListTables()
		if lerr != nil {
			return fmt.Errorf("list tables: %w", lerr)
		}
		if len(tables) > 0 {
			return fmt.Errorf("has tables %v but no Temporal schema version: not a Temporal database (use an empty one)", tables)
		}
		if err := schema.NewSetupSchemaTask(conn, &schema.SetupConfig{InitialVersion: "0.0"}, logger).Run(); err != nil {
			return fmt.Errorf("set up schema: %w", err)
		}
	}
	if err := schema.NewUpdateSchemaTask(conn, &schema.UpdateConfig{DBName: conf.DatabaseName, SchemaName: schemaName}, logger).Run(); err != nil {
		return fmt.Errorf("update schema: %w", err)
	}
	return nil
}

// registerNamespaces creates the namespaces a PostgreSQL-backed server
// lacks through its frontend (the SQLite path writes them into the file
// before start-up) and waits until the frontend serves them.
func registerNamespaces(ctx context.Context, address string, namespaces []string, logger *slog.Logger) error {
	c, err := client.DialContext(ctx, client.Options{HostPort: address, Logger: sdklog.NewStructuredLogger(logger.With("component", "temporal-sdk"))})
	if err != nil {
		return fmt.Errorf("devserver: connect to register namespaces: %w", err)
	}
	defer c.Close()
	for _, ns := range namespaces {
		_, err := c.WorkflowService().RegisterNamespace(ctx, &workflowservice.RegisterNamespaceRequest{
			Namespace: ns,
			// 24 h, as the SQLite path creates namespaces.
			WorkflowExecutionRetentionPeriod: durationpb.New(24 * time.Hour),
		})
		var exists *serviceerror.NamespaceAlreadyExists
		if err != nil && !errors.As(err, &exists) {
			return fmt.Errorf("devserver: register namespace %q: %w", ns, err)
		}
		if err == nil {
			logger.Info("temporal namespace registered", "namespace", ns)
		}
		for {
			_, err := c.WorkflowService().ListWorkflowExecutions(ctx, &workflowservice.ListWorkflowExecutionsRequest{Namespace: ns, PageSize: 1})
			if err == nil {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("devserver: namespace %q not served after registering it: %w", ns, err)
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	return nil
}

// diagnose connects to database db with conf's settings through the
// driver itself and returns its error (nil if it connects). pgx's errors
// name host, user and database, never the password.
func diagnose(conf *config.SQL, db string) error {
	q := url.Values{}
	for k, v := range conf.ConnectAttributes {
		q.Set(k, v)
	}
	u := url.URL{Scheme: "postgres", User: url.UserPassword(conf.User, conf.Password), Host: conf.ConnectAddr, Path: "/" + db, RawQuery: q.Encode()}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, u.String())
	if err != nil {
		return err
	}
	return c.Close(ctx)
}
