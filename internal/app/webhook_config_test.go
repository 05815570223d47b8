package app

import (
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestWebhookSecretFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "key")
	require.NoError(t, os.WriteFile(good, []byte("0123456789abcdef0123\n"), 0o600))
	short := filepath.Join(dir, "short")
	require.NoError(t, os.WriteFile(short, []byte("tiny\n"), 0o600))

	// The flag, or its variable.
	cfg, err := ParseConfig(nil, func(k string) string {
		if k == "ORCHESTRATOR_WEBHOOK_SECRET_FILE" {
			return good
		}
		return ""
	}, io.Discard)
	require.NoError(t, err)
	key, err := cfg.WebhookSecret()
	require.NoError(t, err)
	assert.Equal(t, "0123456789abcdef0123", string(key), "the trailing newline is not part of the key")

	none, err := DefaultConfig().WebhookSecret()
	require.NoError(t, err)
	assert.Nil(t, none, "no file: webhooks off")

	cfg, err = ParseConfig([]string{"--webhook-secret-file", short}, func(string) string { return "" }, io.Discard)
	require.NoError(t, err)
	_, err = cfg.WebhookSecret()
	require.ErrorContains(t, err, "at least 16")
	assert.NotContains(t, err.Error(), "tiny", "the key is never echoed")

	cfg.WebhookSecretFile = filepath.Join(dir, "missing")
	_, err = cfg.WebhookSecret()
	require.ErrorContains(t, err, "--webhook-secret-file")
}
