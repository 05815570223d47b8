package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/pkg/stdcopy"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/internal/app"
	"github.com/provisioning/orchestrator/internal/testsupport"
	"github.com/provisioning/orchestrator/testenv"
)

// TestImageBuildsFromLocalBase builds the orchestrator image from a local
// base (no registry here) with deploy/Dockerfile.runtime and runs the binary
// inside it: `orchestrator openapi` must print the same document as the code.
func TestImageBuildsFromLocalBase(t *testing.T) {
	cli := testsupport.Docker(t)
	base := testsupport.BusyboxImage(t, cli)
	root := testsupport.RepoRoot(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "orchestrator")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/orchestrator")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)

	dockerfile, err := os.ReadFile(filepath.Join(root, "deploy", "Dockerfile.runtime"))
	require.NoError(t, err)
	binData, err := os.ReadFile(bin)
	require.NoError(t, err)
	var ctxTar bytes.Buffer
	tw := tar.NewWriter(&ctxTar)
	for name, data := range map[string][]byte{"Dockerfile": dockerfile, "orchestrator": binData} {
		require.NoError(t, tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, Size: int64(len(data))}))
		_, err := tw.Write(data)
		require.NoError(t, err)
	}
	require.NoError(t, tw.Close())

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ref := "orchestrator-test/orchestrator:e2e"
	resp, err := cli.ImageBuild(ctx, &ctxTar, build.ImageBuildOptions{
		Tags: []string{ref}, Remove: true, ForceRemove: true,
		BuildArgs: map[string]*string{"BASE": &base},
		Labels:    map[string]string{testenv.ManagedByLabel + "-test": "image-build"},
	})
	require.NoError(t, err)
	buildLog, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NotContains(t, string(buildLog), `"error"`, "%s", buildLog)
	t.Cleanup(func() {
		_, _ = cli.ImageRemove(context.Background(), ref, image.RemoveOptions{Force: true, PruneChildren: true})
	})

	c, err := cli.ContainerCreate(ctx, &container.Config{Image: ref, Cmd: []string{"openapi"}}, nil, nil, nil, "")
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = cli.ContainerRemove(context.Background(), c.ID, container.RemoveOptions{Force: true})
	})
	require.NoError(t, cli.ContainerStart(ctx, c.ID, container.StartOptions{}))
	waitC, errC := cli.ContainerWait(ctx, c.ID, container.WaitConditionNotRunning)
	select {
	case w := <-waitC:
		require.Zero(t, w.StatusCode)
	case err := <-errC:
		require.NoError(t, err)
	}
	logs, err := cli.ContainerLogs(ctx, c.ID, container.LogsOptions{ShowStdout: true, ShowStderr: true})
	require.NoError(t, err)
	var stdout, stderr bytes.Buffer
	_, err = stdcopy.StdCopy(&stdout, &stderr, logs)
	logs.Close()
	require.NoError(t, err)

	var want bytes.Buffer
	require.NoError(t, app.WriteOpenAPI(&want))
	assert.JSONEq(t, want.String(), stdout.String(), "stderr: %s", stderr.String())
	var doc map[string]any
	require.NoError(t, json.Unmarshal(stdout.Bytes(), &doc))
	assert.Equal(t, "3.0.3", doc["openapi"])
}
