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
