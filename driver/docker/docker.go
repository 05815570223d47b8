// Package docker is the Docker Engine driver of test environments: one
// bridge network per environment, one container per node, exec'd tests,
// logs, and removal by label. It implements driver.Engine on the Engine API
// (github.com/docker/docker/client with version negotiation, so a remote or
// older engine works) and knows nothing of Temporal.
//
// Files: docker.go (connection), environment.go (create/start/test an
// environment from a testenv.Plan), image.go, network.go, node.go, exec.go
// (exec and logs), labels.go (the labels that make cleanup exact),
// remove.go (removal and the janitor's listing).
package docker

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/docker/docker/client"
	"github.com/provisioning/orchestrator/driver"
)

// Defaults of the Docker side effects.
const (
	// DefaultExecTimeout bounds an Exec whose timeout argument is zero or
	// negative, so a hung test command cannot hold an activity forever.
	DefaultExecTimeout = 10 * time.Minute
	// DefaultLogTail is the number of log lines Logs fetches when its tail
	// argument is zero or negative; the byte bound applies on top.
	DefaultLogTail = 1000
	// DefaultPingTimeout bounds New's ping when ctx has no
	// deadline, so a dead socket fails fast instead of hanging worker start.
	DefaultPingTimeout = 10 * time.Second
	// DefaultPidsLimit bounds the processes of one node container.
	DefaultPidsLimit = 1024
	// DefaultLogMaxSize and DefaultLogMaxFiles rotate a node's json-file
	// log: at most 3 × 10 MiB on the host per node.
	DefaultLogMaxSize  = "10m"
	DefaultLogMaxFiles = "3"
	// MaxOutputBytes bounds what Exec and Logs keep of each stream (the
	// last bytes), so results stay far below Temporal's payload limits.
	MaxOutputBytes = 64 << 10
	// execExitPollTimeout bounds the wait for the engine to mark an exec as
	// finished after its output stream has ended (the two are not atomic).
	execExitPollTimeout = 5 * time.Second
)

var _ driver.Engine = (*Runtime)(nil)

// Runtime performs the test-environment side effects on a Docker
// Engine. Its methods are plain Go (Temporal wrapping lives elsewhere), are
// safe for concurrent use, and are idempotent where the doc says so, because
// activities are retried.
type Runtime struct {
	// Client talks to the engine. It must have API version negotiation
	// enabled (New does) so a 20.10 engine (API 1.41) works.
	Client *client.Client
	// Logger, default slog.Default().
	Logger *slog.Logger
	// Toolchain is what Converge copies into nodes: the worker's nu and
	// provisioning script. Empty: nodes cannot be converged.
	Toolchain Toolchain

	// subnetMu serialises choosing and creating environment networks.
	subnetMu sync.Mutex
	// toolchains remembers the containers this process installed the
	// toolchain in (container id → true), so later installs in the same
	// node skip the engine's archive stats, which cost a filesystem mount
	// each on some storage drivers (vfs).
	toolchains sync.Map
}

// New connects to the engine named by the environment
// (DOCKER_HOST, DOCKER_API_VERSION, DOCKER_CERT_PATH, DOCKER_TLS_VERIFY;
// default unix:///var/run/docker.sock) with API version negotiation and
// pings it, so a worker started without an engine fails at start with a
// clear error rather than at the first environment. The ping is bounded by
// ctx, or by DefaultPingTimeout (10s) when ctx has no deadline. Logger is
// slog.Default(); Close releases the client.
func New(ctx context.Context) (*Runtime, error) {
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, fmt.Errorf("docker client (check DOCKER_HOST=%q and related variables): %w", os.Getenv("DOCKER_HOST"), err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultPingTimeout)
		defer cancel()
	}
	if _, err := cli.Ping(ctx); err != nil {
		_ = cli.Close()
		return nil, fmt.Errorf("docker engine at %s is unreachable (set DOCKER_HOST to the engine's address, currently %q, "+
			"or start one: dockerd --storage-driver=vfs): %w", cli.DaemonHost(), os.Getenv("DOCKER_HOST"), err)
	}
	return &Runtime{Client: cli, Logger: slog.Default()}, nil
}

// Close releases the client's connections.
func (r *Runtime) Close() error { return r.Client.Close() }

func (r *Runtime) logger() *slog.Logger {
	if r.Logger != nil {
		return r.Logger
	}
	return slog.Default()
}

// Ping checks that the engine answers.
func (r *Runtime) Ping(ctx context.Context) error {
	_, err := r.Client.Ping(ctx)
	return err
}
