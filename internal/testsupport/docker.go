package testsupport

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sync"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
)

// BusyboxImageRef is the local test image BusyboxImage builds: a static
// busybox rootfs, since no registry is reachable on the machines the tests
// run on.
const BusyboxImageRef = "orchestrator-test/busybox:latest"

// busyboxImageLabel carries a digest of the image's content recipe (the
// busybox binary and the layout below). An image under BusyboxImageRef
// without the matching value (built by an older recipe, or by hand) is
// rebuilt, so tests can rely on every applet listed here.
const busyboxImageLabel = "io.provisioning.orchestrator/test-image-recipe"

// busyboxLayoutVersion changes whenever busyboxApplets or the files written
// by busyboxRootfs change, forcing a rebuild.
const busyboxLayoutVersion = "1"

// busyboxApplets get a /bin symlink to busybox. The brief's list plus a few
// applets tests commonly reach for (kill, timeout, sed, awk, ...).
var busyboxApplets = []string{
	"sh", "ping", "sleep", "ls", "cat", "echo", "hostname", "ip", "nslookup",
	"wget", "true", "false", "env", "id", "ps", "grep", "head", "tail", "wc",
	"date", "mkdir", "rm", "touch", "printf", "test", "[", "tr", "cut", "seq",
	"nc", "ifconfig", "top",
	"kill", "timeout", "sed", "awk", "cp", "mv", "uname", "which", "yes",
}

const dockerMissing = "Docker Engine not reachable: install docker.io and start " +
	"`dockerd --storage-driver=vfs` (or point DOCKER_HOST at an engine)"

// SkipOrFailDocker skips the test or benchmark with msg, or fails it when
// ORCHESTRATOR_REQUIRE_DOCKER=1 (CI sets it, so CI never passes by skipping):
// for any missing part of the Docker set-up.
func SkipOrFailDocker(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv("ORCHESTRATOR_REQUIRE_DOCKER") == "1" {
		t.Fatal(msg + " (ORCHESTRATOR_REQUIRE_DOCKER=1, so this is a failure, not a skip)")
	}
	t.Skip(msg)
}

// Docker returns a client for the engine named by the environment
// (DOCKER_HOST etc., default unix:///var/run/docker.sock) with API version
// negotiation, so a 20.10 engine (API 1.41) works. It pings the engine; if
// that fails the test is skipped, or fails when ORCHESTRATOR_REQUIRE_DOCKER=1.
// The client is closed when the test ends.
func Docker(t testing.TB) *client.Client {
	t.Helper()
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		SkipOrFailDocker(t, fmt.Sprintf("%s: %v", dockerMissing, err))
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Ping(ctx); err != nil {
		_ = cli.Close()
		SkipOrFailDocker(t, fmt.Sprintf("%s: ping %s: %v", dockerMissing, cli.DaemonHost(), err))
		return nil
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

var busyboxBuild struct {
	// mu, not sync.Once: a build that failed (engine hiccup) is retried by
	// the next caller instead of failing every later test the same way, and
	// the caller's own client is used.
	mu   sync.Mutex
	done bool
}

// BusyboxImage returns BusyboxImageRef, importing it into the engine first
// unless an image with this recipe is already there. The rootfs is /bin/busybox
// copied from $BUSYBOX_PATH (default /usr/bin/busybox, from Debian's
// busybox-static) plus /bin symlinks for common applets, the usual empty
// directories, and a root entry in /etc/passwd and /etc/group; the image's
// CMD is /bin/sh. Safe for parallel callers; other test processes building
// concurrently only re-tag the same content. A missing busybox binary skips
// the test, or fails it when ORCHESTRATOR_REQUIRE_DOCKER=1.
func BusyboxImage(t testing.TB, cli *client.Client) string {
	t.Helper()
	busyboxBuild.mu.Lock()
	defer busyboxBuild.mu.Unlock()
	if busyboxBuild.done {
		return BusyboxImageRef
	}

	src := os.Getenv("BUSYBOX_PATH")
	if src == "" {
		src = "/usr/bin/busybox"
	}
	bin, err := os.ReadFile(src)
	if err != nil {
		SkipOrFailDocker(t, fmt.Sprintf("static busybox not found at %s (set BUSYBOX_PATH or apt-get install busybox-static): %v", src, err))
		return ""
	}
	sum := sha256.New()
	sum.Write(bin)
	sum.Write([]byte("layout " + busyboxLayoutVersion))
	recipe := hex.EncodeToString(sum.Sum(nil))

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	inspect, err := cli.ImageInspect(ctx, BusyboxImageRef)
	switch {
	case err == nil && inspect.Config != nil && inspect.Config.Labels[busyboxImageLabel] == recipe:
		busyboxBuild.done = true
		return BusyboxImageRef
	case err != nil && !cerrdefs.IsNotFound(err):
		t.Fatalf("inspect %s: %v", BusyboxImageRef, err)
	}

	rootfs, err := busyboxRootfs(bin)
	if err != nil {
		t.Fatalf("busybox rootfs: %v", err)
	}
	rc, err := cli.ImageImport(ctx,
		image.ImportSource{Source: bytes.NewReader(rootfs), SourceName: "-"},
		BusyboxImageRef,
		image.ImportOptions{Changes: []string{
			`CMD ["/bin/sh"]`,
			// Explicit, so exec'd commands find the applets whatever the
			// engine's default PATH for images without one.
			`ENV PATH=/bin:/sbin:/usr/bin:/usr/sbin`,
			fmt.Sprintf(`LABEL %s=%s`, busyboxImageLabel, recipe),
		}},
	)
	if err != nil {
		t.Fatalf("import %s: %v", BusyboxImageRef, err)
	}
	// The import only completes once its progress stream has been read.
	_, copyErr := io.Copy(io.Discard, rc)
	_ = rc.Close()
	if copyErr != nil {
		t.Fatalf("import %s: %v", BusyboxImageRef, copyErr)
	}
	inspect, err = cli.ImageInspect(ctx, BusyboxImageRef)
	if err != nil {
		t.Fatalf("inspect %s after import: %v", BusyboxImageRef, err)
	}
	if inspect.Config == nil || inspect.Config.Labels[busyboxImageLabel] != recipe {
		// Another process may have imported concurrently with the same
		// recipe (same label); anything else means the import lost content.
		t.Fatalf("%s after import lacks label %s=%s", BusyboxImageRef, busyboxImageLabel, recipe)
	}
	busyboxBuild.done = true
	return BusyboxImageRef
}

// busyboxRootfs returns an uncompressed tar of the test image's filesystem.
func busyboxRootfs(busybox []byte) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	// A fixed mtime keeps the tar identical across runs.
	mtime := time.Unix(0, 0)
	dir := func(name string, mode int64) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, ModTime: mtime})
	}
	file := func(name string, mode int64, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: mtime}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	var errs []error
	for _, d := range []string{"bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "root", "proc", "sys", "dev", "var", "var/run", "home"} {
		errs = append(errs, dir(d, 0o755))
	}
	// /tmp is world-writable and sticky, as everywhere.
	errs = append(errs, dir("tmp", 0o1777))
	errs = append(errs, file("bin/busybox", 0o755, busybox))
	for _, applet := range busyboxApplets {
		errs = append(errs, tw.WriteHeader(&tar.Header{
			Typeflag: tar.TypeSymlink, Name: path.Join("bin", applet), Linkname: "busybox", Mode: 0o777, ModTime: mtime,
		}))
	}
	// id, ps and whoami print names instead of bare numbers.
	errs = append(errs,
		file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")),
		file("etc/group", 0o644, []byte("root:x:0:\nnogroup:x:65534:\n")),
		tw.Close(),
	)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
