//go:build !nosurrealdb

package app

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// A default build has every backend.
func TestBackendsWithSurrealDB(t *testing.T) {
	assert.Equal(t, []string{StorageFilesystem, StorageSurrealEmbedded, StorageSurrealServer}, ReadBuildInfo().Backends)
}
