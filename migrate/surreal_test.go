//go:build !nosurrealdb

package migrate_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/internal/testsupport"
	"github.com/provisioning/orchestrator/migrate"
	"github.com/provisioning/orchestrator/migrate/migratetest"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/storage/surrealdb"
)

// dbSeq gives every store its own SurrealDB database on the shared server.
var dbSeq atomic.Int64

func surrealDatabase() string {
	return fmt.Sprintf("migrate_%d_%d", time.Now().UnixNano(), dbSeq.Add(1))
}

// surrealFactory opens each store on a fresh database of srv; opTimeout 0
// is the store's default.
func surrealFactory(srv *testsupport.SurrealServer, opTimeout time.Duration) migratetest.Factory {
	return func(tb testing.TB) storage.Store {
		return openSurreal(tb, srv, surrealDatabase(), opTimeout)
	}
}

func openSurreal(tb testing.TB, srv *testsupport.SurrealServer, db string, opTimeout time.Duration) storage.Store {
	st, err := surrealdb.New(context.Background(), surrealdb.Options{
		URL: srv.URL, Username: srv.User, Password: srv.Pass,
		Namespace: "orchestrator", Database: db, OpTimeout: opTimeout,
	})
	require.NoError(tb, err)
	return st
}

func surrealCLIStore(srv *testsupport.SurrealServer) migratetest.CLIStore {
	return func(t *testing.T, side string) ([]string, func(t *testing.T) storage.Store) {
		db := surrealDatabase()
		args := []string{"--" + side, "surrealdb-server",
			"--" + side + "-surrealdb-url", srv.URL,
			"--" + side + "-surrealdb-username", srv.User,
			"--" + side + "-surrealdb-password", srv.Pass,
			"--" + side + "-surrealdb-database", db}
		return args, func(t *testing.T) storage.Store { return openSurreal(t, srv, db, 0) }
	}
}

// The real SurrealDB engine on both sides of a migration, in both
// directions, including a SIGKILL of the migrate process midway.
func TestMigrateFilesystemToSurrealAndBack(t *testing.T) {
	srv := testsupport.StartSurreal(t, "mem://")
	t.Run("filesystem->surrealdb", func(t *testing.T) {
		migratetest.RunMigrationSuite(t, newFilesystem, surrealFactory(srv, 0))
	})
	t.Run("surrealdb->filesystem", func(t *testing.T) {
		migratetest.RunMigrationSuite(t, surrealFactory(srv, 0), newFilesystem)
	})
	t.Run("kill midway filesystem->surrealdb", func(t *testing.T) {
		migratetest.RunKillResume(t, migratetest.FilesystemCLIStore, surrealCLIStore(srv), 600)
	})
	t.Run("kill midway surrealdb->filesystem", func(t *testing.T) {
		migratetest.RunKillResume(t, surrealCLIStore(srv), migratetest.FilesystemCLIStore, 600)
	})
}

// BenchmarkMigrate10kSurreal measures 10,000 tasks filesystem → SurrealDB
// and, from that copy, SurrealDB → filesystem, in one run.
func BenchmarkMigrate10kSurreal(b *testing.B) {
	const n = 10_000
	srv := testsupport.StartSurreal(b, "mem://")
	fsSrc := filesystemSource(b, n)
	open := surrealFactory(srv, time.Minute)
	// A SurrealDB source for the reverse direction, filled once.
	surSrc := open(b)
	defer surSrc.Close()
	_, err := migrate.Run(context.Background(), fsSrc, surSrc, migrate.Options{})
	require.NoError(b, err)

	b.Run("filesystem->surrealdb", func(b *testing.B) {
		migratetest.Benchmark(b, fsSrc, n, open)
	})
	b.Run("surrealdb->filesystem", func(b *testing.B) {
		migratetest.Benchmark(b, surSrc, n, newFilesystem)
	})
}

// BenchmarkMigrateVsRawInsertSurreal is BenchmarkMigrateVsRawInsert with
// SurrealDB targets (a fresh database on one server per side and round).
func BenchmarkMigrateVsRawInsertSurreal(b *testing.B) {
	srv := testsupport.StartSurreal(b, "mem://")
	src := filesystemSource(b, 10_000)
	b.Run("surrealdb", func(b *testing.B) {
		migratetest.BenchmarkVsRawInsert(b, src, *vsRawRounds, surrealFactory(srv, time.Minute))
	})
}
