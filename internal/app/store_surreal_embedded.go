//go:build !nosurrealdb

package app

import (
	"context"
	"errors"
	"log/slog"
	"sync"

	"github.com/provisioning/orchestrator/internal/surrealproc"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/storage/surrealdb"
)

func init() {
	openers[StorageSurrealEmbedded] = openSurrealEmbedded
}

// openSurrealEmbedded starts a supervised local SurrealDB server on the data
// directory ({DataDir}/orchestrator.db) and connects the SurrealDB store to
// it. While the supervisor restarts a crashed server, store operations fail
// with storage.ErrUnavailable and then recover by themselves (the store
// reconnects to the same URL and credentials).
func openSurrealEmbedded(ctx context.Context, sc StoreConfig, log *slog.Logger) (storage.Store, error) {
	if sc.DataDir == "" {
		return nil, errors.New("--data-dir is required (the embedded SurrealDB keeps its data in {data-dir}/orchestrator.db)")
	}
	path := sc.SurrealPath
	if path == "" {
		path = DefaultSurrealExecutable
	}
	proc, err := surrealproc.Start(ctx, surrealproc.Options{
		Path:    path,
		DataDir: sc.DataDir,
		Logger:  log,
	})
	if err != nil {
		return nil, err
	}
	ns, db := sc.SurrealNamespace, sc.SurrealDatabase
	if ns == "" {
		ns = DefaultSurrealNamespace
	}
	if db == "" {
		db = DefaultSurrealDatabase
	}
	st, err := surrealdb.New(ctx, surrealdb.Options{
		URL:       proc.URL(),
		Namespace: ns,
		Database:  db,
		Username:  proc.Username(),
		Password:  proc.Password(),
		Logger:    log.With("component", "surrealdb-store"),
	})
	if err != nil {
		return nil, errors.Join(err, proc.Stop())
	}
	return &embeddedSurreal{Store: st, proc: proc}, nil
}

// embeddedSurreal is the SurrealDB store plus the server process it owns.
// It embeds the concrete store, not storage.Store, so that the optional
// capabilities callers look for by type assertion (storage.StepOutputStore)
// stay visible through it.
type embeddedSurreal struct {
	*surrealdb.Store
	proc *surrealproc.Process

	closeOnce sync.Once
	closeErr  error
}

// Close closes the store, then stops the SurrealDB process. Idempotent.
func (s *embeddedSurreal) Close() error {
	s.closeOnce.Do(func() {
		s.closeErr = errors.Join(s.Store.Close(), s.proc.Stop())
	})
	return s.closeErr
}

var _ storage.StepOutputStore = (*embeddedSurreal)(nil)
