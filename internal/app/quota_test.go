package app

import (
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestEnvironmentQuotaFlags(t *testing.T) {
	noEnv := func(string) string { return "" }
	cfg, err := ParseConfig(nil, noEnv, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, DefaultMaxEnvironments, cfg.MaxEnvironments)
	assert.Equal(t, DefaultMaxNodes, cfg.MaxNodes)

	cfg, err = ParseConfig([]string{"--max-environments", "0", "--max-nodes", "4"}, noEnv, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, 0, cfg.MaxEnvironments, "0 lifts the bound")
	assert.Equal(t, 4, cfg.MaxNodes)

	cfg, err = ParseConfig(nil, func(k string) string {
		return map[string]string{"ORCHESTRATOR_MAX_ENVIRONMENTS": "7"}[k]
	}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, 7, cfg.MaxEnvironments)

	for _, args := range [][]string{{"--max-environments", "-1"}, {"--max-nodes", "-2"}} {
		_, err := ParseConfig(args, noEnv, io.Discard)
		require.Error(t, err)
		assert.Contains(t, err.Error(), args[0])
	}
}

func TestNodeLimitAndUpdatesFlags(t *testing.T) {
	noEnv := func(string) string { return "" }
	cfg, err := ParseConfig(nil, noEnv, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, int64(1000), cfg.TestNodeCPUMillicores)
	assert.Equal(t, int64(512), cfg.TestNodeMemoryMB)
	assert.Equal(t, 100, cfg.TestEnvUpdatesPerRun)

	cfg, err = ParseConfig([]string{"--test-node-cpu-millicores", "0", "--test-node-memory-mb", "256", "--test-env-updates-per-run", "5"}, noEnv, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, int64(0), cfg.TestNodeCPUMillicores, "0: no default limit")
	assert.Equal(t, int64(256), cfg.TestNodeMemoryMB)
	assert.Equal(t, 5, cfg.TestEnvUpdatesPerRun)

	for _, args := range [][]string{{"--test-node-cpu-millicores", "-5"}, {"--test-node-memory-mb", "3"}, {"--test-env-updates-per-run", "0"}} {
		_, err := ParseConfig(args, noEnv, io.Discard)
		require.Error(t, err)
		assert.Contains(t, err.Error(), args[0])
	}
}

// Serving the API beyond loopback without auth refuses to start unless
// --insecure says so; loopback (the quick start) and auth are fine.
func TestExposedWithoutAuthRefused(t *testing.T) {
	noEnv := func(string) string { return "" }
	_, err := ParseConfig([]string{"--host", "0.0.0.0"}, noEnv, io.Discard)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "--host")
	assert.Contains(t, err.Error(), "--insecure")
	for _, args := range [][]string{
		{"--host", "0.0.0.0", "--insecure"},
		{"--host", "0.0.0.0", "--auth-token", "t0k3n"},
		{"--host", "::1"},
		{"--host", "localhost"},
		{},
		{"worker", "--host", "0.0.0.0", "--temporal-address", "t:7233"}, // no API
	} {
		_, err := ParseConfig(args, noEnv, io.Discard)
		assert.NoError(t, err, "%v", args)
	}
}

// A SurrealDB password can come from a file (a Docker secret), read when
// the store opens.
func TestSecretFromFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "surreal")
	require.NoError(t, os.WriteFile(f, []byte("s3cret\n"), 0o600))
	env := map[string]string{"ORCHESTRATOR_SURREALDB_PASSWORD_FILE": f}
	cfg, err := ParseConfig(nil, func(k string) string { return env[k] }, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, f, cfg.Store.SurrealPasswordFile)
	sc := cfg.StoreConfig()
	sc.Type = "surrealdb-server"
	sc.SurrealPasswordFile = filepath.Join(t.TempDir(), "missing")
	_, err = OpenStore(t.Context(), sc, nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "--surrealdb-password-file")
}
