package app

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// docs/openapi.json is generated (`task generate`); it must match the code.
func TestCommittedOpenAPIIsCurrent(t *testing.T) {
	var buf bytes.Buffer
	require.NoError(t, WriteOpenAPI(&buf))
	committed, err := os.ReadFile(filepath.Join("..", "..", "docs", "openapi.json"))
	require.NoError(t, err, "run: go tool -modfile=tools/go.mod task generate")
	require.Equal(t, buf.String(), string(committed), "docs/openapi.json is stale: run go tool -modfile=tools/go.mod task generate")
}
