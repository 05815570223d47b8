package app

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/storage"
)

// surrealClientModule is the SurrealDB client the nosurrealdb tag leaves
// out of the binary.
const surrealClientModule = "github.com/surrealdb/surrealdb.go"

// TestNoSurrealDBBinary builds the real binary with -tags nosurrealdb and
// checks what that tag promises: no SurrealDB client (nor the backend
// package) linked in, `orchestrator version` listing only filesystem, and
// a SurrealDB --storage-type failing at start-up, non-zero, with an error
// that names the tag, both for serving and for migrating.
func TestNoSurrealDBBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the orchestrator binary")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH")
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	gocmd := func(args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, goBin, args...)
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "go %s:\n%s", strings.Join(args, " "), out)
		return string(out)
	}

	// The default build links the client, so the check below is not vacuous.
	require.Contains(t, gocmd("list", "-deps", "./cmd/orchestrator"), surrealClientModule)
	for _, pkg := range strings.Fields(gocmd("list", "-deps", "-tags", "nosurrealdb", "./cmd/orchestrator")) {
		assert.NotContains(t, pkg, "surrealdb.go", "a nosurrealdb build links %s", pkg)
		assert.NotEqual(t, "github.com/provisioning/orchestrator/storage/surrealdb", pkg)
	}

	bin := filepath.Join(t.TempDir(), "orchestrator")
	gocmd("build", "-tags", "nosurrealdb", "-o", bin, "./cmd/orchestrator")
	run := func(args ...string) (stdout, stderr string, code int) {
		t.Helper()
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Dir = t.TempDir()
		cmd.Env = cleanEnv()
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		err := cmd.Run()
		var exit *exec.ExitError
		switch {
		case err == nil:
		case errors.As(err, &exit):
			code = exit.ExitCode()
		default:
			require.NoError(t, err)
		}
		return o.String(), e.String(), code
	}

	out, errOut, code := run("version")
	require.Zero(t, code, errOut)
	assert.Contains(t, out, "\nbackends filesystem\n")
	assert.True(t, strings.HasPrefix(out, "orchestrator "), out)

	const tagErr = "this orchestrator was built with -tags nosurrealdb, which leaves the SurrealDB backends out; rebuild without that tag"

	// Migrating to a SurrealDB backend: the target's opener refuses.
	src := t.TempDir()
	fs, err := storage.NewFilesystem(src)
	require.NoError(t, err)
	require.NoError(t, fs.Close())
	_, errOut, code = run("migrate", "--from", "filesystem", "--from-data-dir", src,
		"--to", "surrealdb-server", "--to-surrealdb-url", "ws://127.0.0.1:1")
	assert.Equal(t, 1, code, errOut)
	assert.Contains(t, errOut, "orchestrator: --to: --storage-type surrealdb-server: "+tagErr)

	// Serving on a SurrealDB backend (after the embedded Temporal server
	// started, where the store is opened): a start-up error.
	_, errOut, code = run("--storage-type", "surrealdb-server", "--surrealdb-url", "ws://127.0.0.1:1",
		"--data-dir", t.TempDir(), "--port", "0", "--temporal-port", "0", "--temporal-ui-port", "-1")
	assert.Equal(t, 1, code, errOut)
	assert.Contains(t, errOut, "orchestrator: --storage-type surrealdb-server: "+tagErr)
}

// cleanEnv is the test's environment without ORCHESTRATOR_* settings, which
// would change the configuration of the binary under test.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, EnvPrefix) {
			env = append(env, kv)
		}
	}
	return env
}
