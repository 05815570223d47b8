//go:build nosurrealdb

package app

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Built with -tags nosurrealdb, only the filesystem backend is listed, and
// asking for a SurrealDB one fails at start-up with an error naming the tag
// (not as an unknown storage type).
func TestNoSurrealDBBackends(t *testing.T) {
	assert.Equal(t, []string{StorageFilesystem}, ReadBuildInfo().Backends)
	for _, typ := range []string{StorageSurrealServer, StorageSurrealEmbedded} {
		_, err := OpenStore(context.Background(), StoreConfig{
			Type: typ, DataDir: t.TempDir(), SurrealURL: "ws://127.0.0.1:1", SurrealPath: "surreal",
		}, nil)
		require.Error(t, err, typ)
		assert.Equal(t, "--storage-type "+typ+": "+errNoSurrealDB.Error(), err.Error())
		assert.Contains(t, err.Error(), "-tags nosurrealdb")
	}
}
