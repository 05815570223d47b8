package app

import (
	"io"
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
