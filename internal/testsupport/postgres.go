package testsupport

import (
	"context"
	"database/sql"
	"net/url"
	"os"
	"testing"
	"time"

	// database/sql driver "pgx", already linked by Temporal's PostgreSQL plugin.
	_ "github.com/jackc/pgx/v5/stdlib"
)

// PostgresDSNEnv names the variable holding an admin DSN of a PostgreSQL
// server whose role may create databases, e.g.
// postgres://orchestrator_test:orchestrator_test@127.0.0.1:5432/postgres?sslmode=disable
// (.ci/run creates that role on Debian's PostgreSQL 15 cluster).
const PostgresDSNEnv = "ORCHESTRATOR_TEST_POSTGRES_DSN"

// PostgresDB is a database of its own for one test.
type PostgresDB struct {
	// DSN of the test's database (Temporal's visibility database is
	// DSN's name + "_visibility"; both are dropped at cleanup).
	DSN  string
	Name string
}

// Postgres gives the test a fresh database name on the server of
// ORCHESTRATOR_TEST_POSTGRES_DSN; the database itself is left for the
// code under test to create (it must), and it and its _visibility twin
// are dropped when the test ends. Without the variable or the server the
// test skips, or fails when ORCHESTRATOR_REQUIRE_POSTGRES=1.
func Postgres(t testing.TB) PostgresDB {
	t.Helper()
	admin := os.Getenv(PostgresDSNEnv)
	missing := func(why string) {
		msg := "PostgreSQL not available (" + why + "): start one (Debian: apt-get install postgresql; pg_ctlcluster 15 main start), " +
			"create a role with CREATEDB and set " + PostgresDSNEnv + "=postgres://user:password@127.0.0.1:5432/postgres?sslmode=disable"
		if os.Getenv("ORCHESTRATOR_REQUIRE_POSTGRES") == "1" {
			t.Fatal(msg + " (ORCHESTRATOR_REQUIRE_POSTGRES=1, so this is a failure, not a skip)")
		}
		t.Skip(msg)
	}
	if admin == "" {
		missing(PostgresDSNEnv + " is not set")
	}
	db, err := sql.Open("pgx", admin)
	if err != nil {
		missing("bad " + PostgresDSNEnv + ": " + err.Error())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		_ = db.Close()
		missing(err.Error())
	}
	name := "orch_test_" + randomHex(t, 6)
	t.Cleanup(func() {
		defer db.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, n := range []string{name, name + "_visibility"} {
			// The names are ours (hex), not user input; FORCE ends the
			// connections of a server a test left running.
			if _, err := db.ExecContext(ctx, "DROP DATABASE IF EXISTS "+n+" WITH (FORCE)"); err != nil {
				t.Logf("drop test database %s: %v", n, err)
			}
		}
	})
	u, err := url.Parse(admin)
	if err != nil {
		t.Fatalf("%s: not a URL", PostgresDSNEnv)
	}
	u.Path = "/" + name
	return PostgresDB{DSN: u.String(), Name: name}
}
