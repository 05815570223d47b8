//go:build !nosurrealdb

package app

import (
	"cmp"
	"context"
	"errors"
	"log/slog"

	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/storage/surrealdb"
)

func init() {
	openers[StorageSurrealServer] = openSurrealServer
	schemaCheckers[StorageSurrealServer] = checkSurrealServer
}

// checkSurrealServer connects to a surrealdb-server store without defining
// its tables and lists the tables it lacks (for `migrate --validate`). The
// store is nil when the server cannot be reached or refuses the sign-in.
func checkSurrealServer(ctx context.Context, sc StoreConfig, log *slog.Logger) (storage.Store, []string, error) {
	if sc.SurrealURL == "" {
		return nil, nil, errors.New("--surrealdb-url is required")
	}
	s, err := surrealdb.New(ctx, surrealdb.Options{
		URL:       sc.SurrealURL,
		Namespace: cmp.Or(sc.SurrealNamespace, DefaultSurrealNamespace),
		Database:  cmp.Or(sc.SurrealDatabase, DefaultSurrealDatabase),
		Username:  sc.SurrealUsername,
		Password:  sc.SurrealPassword,
		Logger:    log.With("backend", StorageSurrealServer),
		NoDefine:  true,
	})
	if err != nil {
		return nil, nil, err
	}
	missing, err := s.MissingTables(ctx)
	return s, missing, err
}

// openSurrealServer opens --storage-type surrealdb-server: a SurrealDB
// server at --surrealdb-url, signed in with --surrealdb-username/-password
// (root), in --surrealdb-namespace/--surrealdb-database (defaults
// orchestrator/tasks). The store reconnects by itself after an outage;
// meanwhile operations fail with storage.ErrUnavailable (HTTP 503).
func openSurrealServer(ctx context.Context, sc StoreConfig, log *slog.Logger) (storage.Store, error) {
	if sc.SurrealURL == "" {
		return nil, errors.New("--surrealdb-url is required")
	}
	s, err := surrealdb.New(ctx, surrealdb.Options{
		URL:       sc.SurrealURL,
		Namespace: cmp.Or(sc.SurrealNamespace, DefaultSurrealNamespace),
		Database:  cmp.Or(sc.SurrealDatabase, DefaultSurrealDatabase),
		Username:  sc.SurrealUsername,
		Password:  sc.SurrealPassword,
		Logger:    log.With("backend", StorageSurrealServer),
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}
