//go:build nosurrealdb

package app

import (
	"context"
	"errors"
	"log/slog"

	"github.com/provisioning/orchestrator/storage"
)

// The nosurrealdb build tag leaves the SurrealDB backends (and with them
// the SurrealDB client and the embedded-server supervisor) out of the
// binary, for deployments that only ever use the filesystem store. Their
// storage types stay known to the flags and the configuration checks, so
// that a configuration asking for one fails when the store is opened, with
// an error that says why and what to do, rather than as an unknown type.

// errNoSurrealDB is what opening a SurrealDB backend returns in this build
// (OpenStore prefixes it with --storage-type and the type).
var errNoSurrealDB = errors.New("this orchestrator was built with -tags nosurrealdb, which leaves the SurrealDB backends out; rebuild without that tag")

func init() {
	for _, typ := range []string{StorageSurrealServer, StorageSurrealEmbedded} {
		openers[typ] = openNoSurreal
		builtWithout[typ] = true
	}
}

// openNoSurreal stands in for the SurrealDB openers.
func openNoSurreal(context.Context, StoreConfig, *slog.Logger) (storage.Store, error) {
	return nil, errNoSurrealDB
}
