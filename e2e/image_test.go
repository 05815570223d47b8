package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/api/workflowservice/v1"
	sdkclient "go.temporal.io/sdk/client"
	"go.temporal.io/sdk/log"

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

	t.Run("temporal --temporal-ip hostname", func(t *testing.T) { testTemporalInContainer(t, cli, ref) })
}

// The image's `temporal` mode with --temporal-ip hostname, as compose runs
// it: inside a container on a user-defined network, the services bind and
// announce the container's own address, and a client elsewhere (this host)
// reaches the frontend there, with the namespace registered.
func testTemporalInContainer(t *testing.T, cli *client.Client, ref string) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	labels := map[string]string{testenv.ManagedByLabel + "-test": "image-temporal"}
	nwName := "orchestrator-test-temporal-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	nw, err := cli.NetworkCreate(ctx, nwName, network.CreateOptions{Labels: labels})
	require.NoError(t, err)
	t.Cleanup(func() { _ = cli.NetworkRemove(context.Background(), nw.ID) })
	c, err := cli.ContainerCreate(ctx, &container.Config{
		Image: ref, Labels: labels,
		Cmd: []string{"temporal", "--temporal-ip", app.TemporalIPHostname, "--temporal-port", "7233",
			"--temporal-ui-port", "8233", "--data-dir", "/tmp/orchestrator"},
	}, &container.HostConfig{NetworkMode: container.NetworkMode(nw.ID)}, nil, nil, "")
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = cli.ContainerRemove(context.Background(), c.ID, container.RemoveOptions{Force: true})
	})
	require.NoError(t, cli.ContainerStart(ctx, c.ID, container.StartOptions{}))
	info, err := cli.ContainerInspect(ctx, c.ID)
	require.NoError(t, err)
	ip := info.NetworkSettings.Networks[nwName].IPAddress
	require.NotEmpty(t, ip, "container has no address on %s", nwName)

	logs := func() string {
		rc, err := cli.ContainerLogs(context.Background(), c.ID, container.LogsOptions{ShowStdout: true, ShowStderr: true})
		if err != nil {
			return err.Error()
		}
		defer rc.Close()
		var out bytes.Buffer
		_, _ = stdcopy.StdCopy(&out, &out, rc)
		return out.String()
	}
	var tc sdkclient.Client
	require.Eventually(t, func() bool {
		if tc == nil {
			tc, _ = sdkclient.Dial(sdkclient.Options{HostPort: net.JoinHostPort(ip, "7233"), Namespace: "default",
				Logger: log.NewStructuredLogger(slog.New(slog.DiscardHandler))})
		}
		if tc == nil {
			return false
		}
		hctx, hcancel := context.WithTimeout(ctx, 2*time.Second)
		defer hcancel()
		_, err := tc.WorkflowService().DescribeNamespace(hctx, &workflowservice.DescribeNamespaceRequest{Namespace: "default"})
		return err == nil
	}, 2*time.Minute, 500*time.Millisecond, "the frontend at %s:7233 (the container's address) never answered; logs:\n%s", ip, logs())
	tc.Close()
}
