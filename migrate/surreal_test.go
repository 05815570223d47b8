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

func surrealFactory(srv *testsupport.SurrealServer) migratetest.Factory {
	return func(t *testing.T) storage.Store {
		st, err := surrealdb.New(context.Background(), surrealdb.Options{
			URL: srv.URL, Username: srv.User, Password: srv.Pass,
			Namespace: "orchestrator", Database: surrealDatabase(),
		})
		require.NoError(t, err)
		return st
	}
}

func surrealCLIStore(srv *testsupport.SurrealServer) migratetest.CLIStore {
	return func(t *testing.T, side string) ([]string, func(t *testing.T) storage.Store) {
		db := surrealDatabase()
		args := []string{"--" + side, "surrealdb-server",
			"--" + side + "-surrealdb-url", srv.URL,
			"--" + side + "-surrealdb-username", srv.User,
			"--" + side + "-surrealdb-password", srv.Pass,
			"--" + side + "-surrealdb-database", db}
		return args, func(t *testing.T) storage.Store {
			st, err := surrealdb.New(context.Background(), surrealdb.Options{
				URL: srv.URL, Username: srv.User, Password: srv.Pass,
				Namespace: "orchestrator", Database: db,
			})
			require.NoError(t, err)
			return st
		}
	}
}

// The real SurrealDB engine on both sides of a migration, in both
// directions, including a SIGKILL of the migrate process midway.
func TestMigrateFilesystemToSurrealAndBack(t *testing.T) {
	srv := testsupport.StartSurreal(t, "mem://")
	t.Run("filesystem->surrealdb", func(t *testing.T) {
		migratetest.RunMigrationSuite(t, newFilesystem, surrealFactory(srv))
	})
	t.Run("surrealdb->filesystem", func(t *testing.T) {
		migratetest.RunMigrationSuite(t, surrealFactory(srv), newFilesystem)
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
	srcDir := b.TempDir()
	writeFilesystemTasks(b, srcDir, n)
	fsSrc, err := storage.NewFilesystem(srcDir)
	require.NoError(b, err)
	defer fsSrc.Close()
	open := func(b *testing.B) storage.Store {
		st, err := surrealdb.New(context.Background(), surrealdb.Options{
			URL: srv.URL, Username: srv.User, Password: srv.Pass,
			Namespace: "orchestrator", Database: surrealDatabase(), OpTimeout: time.Minute,
		})
		require.NoError(b, err)
		return st
	}
	// A SurrealDB source for the reverse direction, filled once.
	surSrc := open(b)
	defer surSrc.Close()
	_, err = migrate.Run(context.Background(), fsSrc, surSrc, migrate.Options{})
	require.NoError(b, err)

	b.Run("filesystem->surrealdb", func(b *testing.B) {
		migratetest.Benchmark(b, fsSrc, n, open)
	})
	b.Run("surrealdb->filesystem", func(b *testing.B) {
		migratetest.Benchmark(b, surSrc, n, func(b *testing.B) storage.Store {
			fs, err := storage.NewFilesystem(b.TempDir())
			require.NoError(b, err)
			return fs
		})
	})
}

// BenchmarkMigrateVsRawInsertSurreal is BenchmarkMigrateVsRawInsert with
// SurrealDB targets (a fresh database on one server per side and round).
func BenchmarkMigrateVsRawInsertSurreal(b *testing.B) {
	const n = 10_000
	srv := testsupport.StartSurreal(b, "mem://")
	srcDir := b.TempDir()
	writeFilesystemTasks(b, srcDir, n)
	src, err := storage.NewFilesystem(srcDir)
	require.NoError(b, err)
	defer src.Close()
	b.Run("surrealdb", func(b *testing.B) {
		migratetest.BenchmarkVsRawInsert(b, src, *vsRawRounds, func(b *testing.B) storage.Store {
			st, err := surrealdb.New(context.Background(), surrealdb.Options{
				URL: srv.URL, Username: srv.User, Password: srv.Pass,
				Namespace: "orchestrator", Database: surrealDatabase(), OpTimeout: time.Minute,
			})
			require.NoError(b, err)
			return st
		})
	})
}
