package devserver

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/operatorservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/server/tools/common/schema"
	sqltool "go.temporal.io/server/tools/sql"

	"github.com/provisioning/orchestrator/internal/testsupport"
)

func startPostgres(t *testing.T, p *Postgres, attrs map[string]enumspb.IndexedValueType) *Server {
	t.Helper()
	fport, err := FreePort("127.0.0.1")
	require.NoError(t, err)
	srv, err := Start(Options{
		Postgres:         p,
		FrontendPort:     fport,
		UIPort:           -1,
		Namespaces:       []string{"default", "other"},
		SearchAttributes: attrs,
		Logger:           slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	require.NoError(t, err)
	return srv
}

func schemaVersion(t *testing.T, p *Postgres, db string) string {
	t.Helper()
	conn, err := sqltool.NewConnection(p.sqlConfig(db), newLogger(slog.New(slog.NewTextHandler(io.Discard, nil)), slog.LevelWarn))
	require.NoError(t, err)
	defer conn.Close()
	v, err := conn.ReadSchemaVersion()
	require.NoError(t, err)
	return v
}

// On an empty server the databases are created with the schema, the
// namespaces registered and the search attributes added; a second start
// on the same databases changes nothing and keeps what was there. A
// database left at an older schema version is upgraded.
func TestPostgresSetUpRestartAndUpgrade(t *testing.T) {
	pg := testsupport.Postgres(t)
	p, err := ParsePostgresURL(pg.DSN, "")
	require.NoError(t, err)
	attrs := map[string]enumspb.IndexedValueType{"Infra": enumspb.INDEXED_VALUE_TYPE_KEYWORD, "Priority": enumspb.INDEXED_VALUE_TYPE_INT}

	// An older deployment: the default store at schema 1.10 only.
	logger := newLogger(slog.New(slog.NewTextHandler(io.Discard, nil)), slog.LevelWarn)
	require.NoError(t, sqltool.DoCreateDatabase(p.sqlConfig(p.Database), "", logger))
	conn, err := sqltool.NewConnection(p.sqlConfig(p.Database), logger)
	require.NoError(t, err)
	require.NoError(t, schema.NewSetupSchemaTask(conn, &schema.SetupConfig{InitialVersion: "0.0"}, logger).Run())
	require.NoError(t, schema.NewUpdateSchemaTask(conn, &schema.UpdateConfig{SchemaName: postgresSchema, TargetVersion: "1.10"}, logger).Run())
	conn.Close()
	require.Equal(t, "1.10", schemaVersion(t, p, p.Database))

	srv := startPostgres(t, p, attrs)
	latest := schemaVersion(t, p, p.Database)
	assert.NotEqual(t, "1.10", latest, "default store upgraded")
	visVersion := schemaVersion(t, p, p.VisibilityDatabase)
	t.Logf("schema versions: default %s, visibility %s", latest, visVersion)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := client.DialContext(ctx, client.Options{HostPort: srv.Address()})
	require.NoError(t, err)
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: "kept", TaskQueue: "nobody-polls"}, "SomeWorkflow")
	require.NoError(t, err)
	for _, ns := range []string{"default", "other"} {
		resp, err := c.OperatorService().ListSearchAttributes(ctx, &operatorservice.ListSearchAttributesRequest{Namespace: ns})
		require.NoError(t, err, ns)
		for name, typ := range attrs {
			assert.Equal(t, typ, resp.GetCustomAttributes()[name], "%s %s", ns, name)
		}
	}
	c.Close()
	srv.Stop()

	// Restart on the same databases: no error, same versions, the
	// workflow is still there.
	srv = startPostgres(t, p, attrs)
	defer srv.Stop()
	assert.Equal(t, latest, schemaVersion(t, p, p.Database))
	assert.Equal(t, visVersion, schemaVersion(t, p, p.VisibilityDatabase))
	c, err = client.DialContext(ctx, client.Options{HostPort: srv.Address()})
	require.NoError(t, err)
	defer c.Close()
	desc, err := c.DescribeWorkflowExecution(ctx, "kept", run.GetRunID())
	require.NoError(t, err)
	assert.Equal(t, enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING, desc.GetWorkflowExecutionInfo().GetStatus())
}

// An unreachable server fails start-up with an error naming the flag,
// without the password.
func TestPostgresUnreachable(t *testing.T) {
	p, err := ParsePostgresURL("postgres://u:s3cret@127.0.0.1:1/temporal?sslmode=disable", "")
	require.NoError(t, err)
	fport, err := FreePort("127.0.0.1")
	require.NoError(t, err)
	_, err = Start(Options{Postgres: p, FrontendPort: fport, UIPort: -1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "--temporal-db")
	assert.NotContains(t, err.Error(), "s3cret")
	t.Logf("unreachable: %v", err)
}

func TestParsePostgresURL(t *testing.T) {
	p, err := ParsePostgresURL("postgres://me:pw@db.example:6543/tdb?sslmode=disable&visibility_db=tvis", "")
	require.NoError(t, err)
	assert.Equal(t, &Postgres{Address: "db.example:6543", User: "me", Password: "pw", Database: "tdb", VisibilityDatabase: "tvis",
		ConnectAttributes: map[string]string{"sslmode": "disable"}}, p)
	p, err = ParsePostgresURL("postgresql://me@db.example", "fromfile")
	require.NoError(t, err)
	assert.Equal(t, "db.example:5432", p.Address)
	assert.Equal(t, "fromfile", p.Password)
	assert.Equal(t, "temporal", p.Database)
	assert.Equal(t, "temporal_visibility", p.VisibilityDatabase)
	assert.NotContains(t, p.Redacted(), "fromfile")
	for _, bad := range []string{"mysql://me:pw@h/db", "postgres://h/db", "postgres://me:pw@h:bad port/db"} {
		_, err := ParsePostgresURL(bad, "")
		require.Error(t, err, bad)
		assert.NotContains(t, err.Error(), "pw", bad)
	}
}
