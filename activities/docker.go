package activities

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"
	"golang.org/x/sync/errgroup"

	"github.com/provisioning/orchestrator/testenv"
)

// Defaults of the Docker side effects.
const (
	// DefaultExecTimeout bounds an Exec whose timeout argument is zero or
	// negative, so a hung test command cannot hold an activity forever.
	DefaultExecTimeout = 10 * time.Minute
	// DefaultLogTail is the number of log lines Logs fetches when its tail
	// argument is zero or negative; the byte bound applies on top.
	DefaultLogTail = 1000
	// DefaultPingTimeout bounds NewDockerRuntime's ping when ctx has no
	// deadline, so a dead socket fails fast instead of hanging worker start.
	DefaultPingTimeout = 10 * time.Second
	// dockerHeartbeatInterval is how often long Docker calls (pulls, execs,
	// removals) call the context's heartbeat; well below any sensible
	// activity heartbeat timeout.
	dockerHeartbeatInterval = 5 * time.Second
	// execExitPollTimeout bounds the wait for the engine to mark an exec as
	// finished after its output stream has ended (the two are not atomic).
	execExitPollTimeout = 5 * time.Second
)

// DockerRuntime performs the test-environment side effects on a Docker
// Engine. Its methods are plain Go (Temporal wrapping lives elsewhere), are
// safe for concurrent use, and are idempotent where the doc says so, because
// activities are retried.
type DockerRuntime struct {
	// Client talks to the engine. It must have API version negotiation
	// enabled (NewDockerRuntime does) so a 20.10 engine (API 1.41) works.
	Client *client.Client
	// Logger, default slog.Default().
	Logger *slog.Logger
}

// NewDockerRuntime connects to the engine named by the environment
// (DOCKER_HOST, DOCKER_API_VERSION, DOCKER_CERT_PATH, DOCKER_TLS_VERIFY;
// default unix:///var/run/docker.sock) with API version negotiation and
// pings it, so a worker started without an engine fails at start with a
// clear error rather than at the first environment. The ping is bounded by
// ctx, or by DefaultPingTimeout (10s) when ctx has no deadline. Logger is
// slog.Default(); Close releases the client.
func NewDockerRuntime(ctx context.Context) (*DockerRuntime, error) {
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
			"or start one: dockerd --iptables=false --storage-driver=vfs): %w", cli.DaemonHost(), os.Getenv("DOCKER_HOST"), err)
	}
	return &DockerRuntime{Client: cli, Logger: slog.Default()}, nil
}

// Close releases the client's connections.
func (r *DockerRuntime) Close() error { return r.Client.Close() }

func (r *DockerRuntime) logger() *slog.Logger {
	if r.Logger != nil {
		return r.Logger
	}
	return slog.Default()
}

type heartbeatKey struct{}

// WithHeartbeat returns a context that makes the DockerRuntime methods call
// fn periodically (at most every 5s) while they wait on long engine
// operations: image pulls, execs, log reads, removals. The Temporal wrapper
// passes func() { activity.RecordHeartbeat(ctx) }, which keeps the method
// signatures free of Temporal. A nil fn disables heartbeats.
func WithHeartbeat(ctx context.Context, fn func()) context.Context {
	return context.WithValue(ctx, heartbeatKey{}, fn)
}

// heartbeater calls the context's heartbeat at most every
// dockerHeartbeatInterval.
type heartbeater struct {
	fn   func()
	last time.Time
}

func newHeartbeater(ctx context.Context) *heartbeater {
	fn, _ := ctx.Value(heartbeatKey{}).(func())
	return &heartbeater{fn: fn, last: time.Now()}
}

func (h *heartbeater) beat() {
	if h.fn != nil && time.Since(h.last) >= dockerHeartbeatInterval {
		h.last = time.Now()
		h.fn()
	}
}

// ImageError reports that an image is neither present on the engine nor
// pullable. Retrying cannot fix it: someone has to build or load the image.
type ImageError struct {
	// Ref is the image reference as requested.
	Ref string
	// Err is why the pull failed.
	Err error
}

func (e *ImageError) Error() string {
	return fmt.Sprintf("image %s is not present locally and could not be pulled: %v; build or load it (docker import/load) first", e.Ref, e.Err)
}

func (e *ImageError) Unwrap() error { return e.Err }

// IsImageMissing reports whether err is (or wraps) an *ImageError: the image
// is missing and cannot be pulled, so the environment should fail without
// retrying.
func IsImageMissing(err error) bool {
	var ie *ImageError
	return errors.As(err, &ie)
}

// EnsureImage makes ref available on the engine: an image already present
// locally is used as is (no pull, so locally built images work offline);
// otherwise it is pulled, draining the progress stream, which is where pull
// failures are reported. If the pull fails too, the error is an *ImageError
// (see IsImageMissing). Errors talking to the engine are returned as they
// are (retryable).
func (r *DockerRuntime) EnsureImage(ctx context.Context, ref string) error {
	if ref == "" {
		return errors.New("ensure image: empty image reference")
	}
	if _, err := r.Client.ImageInspect(ctx, ref); err == nil {
		return nil
	} else if !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("inspect image %s: %w", ref, err)
	}
	r.logger().Info("pulling image", "image", ref)
	if err := r.pull(ctx, ref); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("pull image %s: %w", ref, ctx.Err())
		}
		return &ImageError{Ref: ref, Err: err}
	}
	if _, err := r.Client.ImageInspect(ctx, ref); err != nil {
		if cerrdefs.IsNotFound(err) {
			return &ImageError{Ref: ref, Err: fmt.Errorf("pull reported success but the image is absent: %w", err)}
		}
		return fmt.Errorf("inspect image %s after pull: %w", ref, err)
	}
	return nil
}

// pull pulls ref and reads the progress stream to its end, returning the
// first error message in it.
func (r *DockerRuntime) pull(ctx context.Context, ref string) error {
	rc, err := r.Client.ImagePull(ctx, ref, image.PullOptions{})
	if err != nil {
		return err
	}
	defer rc.Close()
	hb := newHeartbeater(ctx)
	dec := json.NewDecoder(rc)
	for {
		var msg struct {
			Error       string `json:"error"`
			ErrorDetail *struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&msg); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return fmt.Errorf("reading pull progress: %w", err)
		}
		if msg.ErrorDetail != nil && msg.ErrorDetail.Message != "" {
			return errors.New(msg.ErrorDetail.Message)
		}
		if msg.Error != "" {
			return errors.New(msg.Error)
		}
		hb.beat()
	}
}

// envFilter selects the objects of one environment that this service
// created: both labels must match, so an object merely carrying an
// environment label (made by hand, say) is never selected.
func envFilter(envID string) filters.Args {
	return filters.NewArgs(
		filters.Arg("label", testenv.ManagedByLabel+"="+testenv.ManagedByValue),
		filters.Arg("label", testenv.EnvIDLabel+"="+envID),
	)
}

func managedFilter() filters.Args {
	return filters.NewArgs(filters.Arg("label", testenv.ManagedByLabel+"="+testenv.ManagedByValue))
}

// isOurs reports whether labels mark an object of envID created by this
// service.
func isOurs(labels map[string]string, envID string) bool {
	return labels[testenv.ManagedByLabel] == testenv.ManagedByValue && labels[testenv.EnvIDLabel] == envID
}

// networkName is p.NetworkName, or the plan's convention when empty.
func networkName(p testenv.Plan) string {
	return cmp.Or(p.NetworkName, testenv.NetworkName(p.EnvID))
}

// objectLabels merges label sets (later wins) and then forces the managed-by
// and environment labels: whatever the plan says, every object created here
// must be findable by cleanup and the janitor.
func objectLabels(envID string, sets ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, s := range sets {
		maps.Copy(out, s)
	}
	out[testenv.ManagedByLabel] = testenv.ManagedByValue
	out[testenv.EnvIDLabel] = envID
	return out
}

// CreateNetwork creates the environment's bridge network p.NetworkName
// (default "orch-env-<EnvID>") with p.Labels plus the managed-by and
// environment labels (always set). If p.Subnet is set, the network gets that
// subnet with its first host address as gateway; otherwise the engine picks
// a free one. It returns the network id and the subnet actually in use.
//
// Idempotent: when a network of that name carrying this environment's labels
// exists, its id is returned (an error if its subnet differs from a
// requested one). A same-named network that is not this environment's is an
// error, never reused or touched.
func (r *DockerRuntime) CreateNetwork(ctx context.Context, p testenv.Plan) (id, subnet string, err error) {
	if p.EnvID == "" {
		return "", "", errors.New("create network: plan has no environment id")
	}
	name := networkName(p)
	var ipam *network.IPAM
	if p.Subnet != "" {
		prefix, err := netip.ParsePrefix(p.Subnet)
		if err != nil {
			return "", "", fmt.Errorf("create network %s: invalid subnet %q: %w", name, p.Subnet, err)
		}
		prefix = prefix.Masked()
		ipam = &network.IPAM{Driver: "default", Config: []network.IPAMConfig{{
			Subnet:  prefix.String(),
			Gateway: prefix.Addr().Next().String(),
		}}}
	}

	if id, subnet, found, err := r.existingNetwork(ctx, p, name); err != nil || found {
		return id, subnet, err
	}
	opts := network.CreateOptions{
		Driver: "bridge",
		Labels: objectLabels(p.EnvID, p.Labels),
		IPAM:   ipam,
	}
	if ipam != nil && !netip.MustParsePrefix(ipam.Config[0].Subnet).Addr().Is4() {
		enable := true
		opts.EnableIPv6 = &enable
	}
	resp, err := r.Client.NetworkCreate(ctx, name, opts)
	if err != nil {
		if cerrdefs.IsConflict(err) {
			// A concurrent attempt (or a retry whose first response was
			// lost) won the race: the name check above decides.
			if id, subnet, found, err2 := r.existingNetwork(ctx, p, name); err2 != nil || found {
				return id, subnet, err2
			}
		}
		if p.Subnet != "" {
			return "", "", fmt.Errorf("create network %s with subnet %s: %w", name, p.Subnet, err)
		}
		return "", "", fmt.Errorf("create network %s: %w", name, err)
	}
	if resp.Warning != "" {
		r.logger().Warn("docker network create warning", "network", name, "warning", resp.Warning)
	}
	inspect, err := r.Client.NetworkInspect(ctx, resp.ID, network.InspectOptions{})
	if err != nil {
		return resp.ID, "", fmt.Errorf("inspect network %s: %w", name, err)
	}
	r.logger().Debug("created network", "network", name, "id", resp.ID, "env_id", p.EnvID)
	return resp.ID, firstSubnet(inspect.IPAM), nil
}

// existingNetwork looks for a network named exactly name (the engine's name
// filter matches substrings).
func (r *DockerRuntime) existingNetwork(ctx context.Context, p testenv.Plan, name string) (id, subnet string, found bool, err error) {
	nets, err := r.Client.NetworkList(ctx, network.ListOptions{Filters: filters.NewArgs(filters.Arg("name", name))})
	if err != nil {
		return "", "", false, fmt.Errorf("list networks: %w", err)
	}
	for _, n := range nets {
		if n.Name != name {
			continue
		}
		if !isOurs(n.Labels, p.EnvID) {
			return "", "", false, fmt.Errorf("network name %s is already used by network %s, which does not belong to environment %s", name, shortID(n.ID), p.EnvID)
		}
		subnet := firstSubnet(n.IPAM)
		if p.Subnet != "" {
			want, _ := netip.ParsePrefix(p.Subnet)
			if got, err := netip.ParsePrefix(subnet); err != nil || got != want.Masked() {
				return "", "", false, fmt.Errorf("network %s of environment %s exists with subnet %q, not the requested %s", name, p.EnvID, subnet, p.Subnet)
			}
		}
		return n.ID, subnet, true, nil
	}
	return "", "", false, nil
}

// networkSubnet returns the subnet of the network named exactly name, or ""
// when there is no such network.
func (r *DockerRuntime) networkSubnet(ctx context.Context, name string) (string, error) {
	nets, err := r.Client.NetworkList(ctx, network.ListOptions{Filters: filters.NewArgs(filters.Arg("name", name))})
	if err != nil {
		return "", fmt.Errorf("list networks: %w", err)
	}
	for _, n := range nets {
		if n.Name == name {
			return firstSubnet(n.IPAM), nil
		}
	}
	return "", nil
}

func firstSubnet(ipam network.IPAM) string {
	for _, c := range ipam.Config {
		if c.Subnet != "" {
			return c.Subnet
		}
	}
	return ""
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// CreateNode creates (does not start) the container for node n:
// name n.ContainerName (default "orch-<first 8 of EnvID>-<Name>"), hostname
// n.Name, image n.Image (which must be present: run EnsureImage first),
// command n.Command (empty: the image's CMD), labels p.Labels + n.Labels
// plus managed-by, environment, node and role labels (always set), NanoCPUs
// and Memory limits (0 = unlimited), no restart policy, attached only to the
// environment network with alias n.Name so other nodes reach it by name.
//
// Idempotent: when a container of that name carrying this environment's
// labels exists (whatever its state), its id is returned. A same-named
// container of anything else is an error and is left alone.
func (r *DockerRuntime) CreateNode(ctx context.Context, p testenv.Plan, n testenv.NodePlan) (id string, err error) {
	if p.EnvID == "" {
		return "", errors.New("create node: plan has no environment id")
	}
	if n.Name == "" || n.Image == "" {
		return "", fmt.Errorf("create node: node %q needs a name and an image", n.Name)
	}
	name := n.ContainerName
	if name == "" {
		name = testenv.ContainerName(p.EnvID, n.Name)
	}
	netName := networkName(p)

	if id, found, err := r.existingContainer(ctx, p.EnvID, name); err != nil || found {
		return id, err
	}
	labels := objectLabels(p.EnvID, p.Labels, n.Labels)
	labels[testenv.NodeLabel] = n.Name
	labels[testenv.RoleLabel] = n.Role
	cfg := &container.Config{
		Hostname: n.Name,
		Image:    n.Image,
		Cmd:      n.Command,
		Labels:   labels,
	}
	hostCfg := &container.HostConfig{
		NetworkMode: container.NetworkMode(netName),
		Resources: container.Resources{
			NanoCPUs: n.NanoCPUs,
			Memory:   n.MemoryBytes,
		},
	}
	netCfg := &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{
		netName: {Aliases: []string{n.Name}},
	}}
	resp, err := r.Client.ContainerCreate(ctx, cfg, hostCfg, netCfg, nil, name)
	if err != nil {
		if cerrdefs.IsConflict(err) {
			if id, found, err2 := r.existingContainer(ctx, p.EnvID, name); err2 != nil || found {
				return id, err2
			}
		}
		return "", fmt.Errorf("create container %s for node %s (image %s, network %s): %w", name, n.Name, n.Image, netName, err)
	}
	for _, w := range resp.Warnings {
		// E.g. limits the kernel cannot enforce (no swap accounting).
		r.logger().Warn("docker container create warning", "container", name, "warning", w)
	}
	r.logger().Debug("created container", "container", name, "id", resp.ID, "env_id", p.EnvID, "node", n.Name)
	return resp.ID, nil
}

func (r *DockerRuntime) existingContainer(ctx context.Context, envID, name string) (id string, found bool, err error) {
	c, err := r.Client.ContainerInspect(ctx, name)
	if cerrdefs.IsNotFound(err) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("inspect container %s: %w", name, err)
	}
	var labels map[string]string
	if c.Config != nil {
		labels = c.Config.Labels
	}
	if !isOurs(labels, envID) {
		return "", false, fmt.Errorf("container name %s is already used by container %s, which does not belong to environment %s", name, shortID(c.ID), envID)
	}
	return c.ID, true, nil
}

// StartNode starts a created container. Starting a running container
// succeeds (the engine answers 304 Not Modified), so retries are harmless.
func (r *DockerRuntime) StartNode(ctx context.Context, containerID string) error {
	if err := r.Client.ContainerStart(ctx, containerID, container.StartOptions{}); err != nil {
		return fmt.Errorf("start container %s: %w", shortID(containerID), err)
	}
	return nil
}

// NodeStatus is one container of an environment as the engine sees it.
type NodeStatus struct {
	ContainerID string `json:"container_id"`
	// Name is the container name.
	Name string `json:"name"`
	// Node and Role come from the container's labels.
	Node string `json:"node"`
	Role string `json:"role"`
	// Taskservs is not known to the engine (no label carries it):
	// InspectNodes leaves it empty, callers fill it from the plan.
	Taskservs []string `json:"taskservs,omitempty"`
	Image     string   `json:"image"`
	// State is the engine's: created, running, paused, restarting,
	// removing, exited or dead.
	State string `json:"state"`
	// Status is the engine's human summary, e.g. "Up 3 minutes".
	Status string `json:"status"`
	// ExitCode is meaningful once State is exited.
	ExitCode  int  `json:"exit_code"`
	OOMKilled bool `json:"oom_killed,omitempty"`
	// Error is the engine's last start error, if any.
	Error string `json:"error,omitempty"`
	// IP is the address on the environment network; empty unless running.
	IP string `json:"ip"`
	// NanoCPUs and MemoryBytes are the limits in force (0 = unlimited).
	NanoCPUs    int64     `json:"nano_cpus"`
	MemoryBytes int64     `json:"memory_bytes"`
	CreatedAt   time.Time `json:"created_at,omitzero"`
	StartedAt   time.Time `json:"started_at,omitzero"`
	FinishedAt  time.Time `json:"finished_at,omitzero"`
}

// InspectNodes returns the status of every container of the environment
// (found by the managed-by and environment labels, in any state), sorted by
// node name. An environment with no containers yields an empty slice.
func (r *DockerRuntime) InspectNodes(ctx context.Context, envID string) ([]NodeStatus, error) {
	if envID == "" {
		return nil, errors.New("inspect nodes: empty environment id")
	}
	list, err := r.Client.ContainerList(ctx, container.ListOptions{All: true, Filters: envFilter(envID)})
	if err != nil {
		return nil, fmt.Errorf("list containers of environment %s: %w", envID, err)
	}
	nets, err := r.Client.NetworkList(ctx, network.ListOptions{Filters: envFilter(envID)})
	if err != nil {
		return nil, fmt.Errorf("list networks of environment %s: %w", envID, err)
	}
	envNets := map[string]bool{}
	for _, n := range nets {
		envNets[n.ID] = true
	}
	out := make([]NodeStatus, 0, len(list))
	for _, s := range list {
		c, err := r.Client.ContainerInspect(ctx, s.ID)
		if cerrdefs.IsNotFound(err) {
			continue // removed since the list
		}
		if err != nil {
			return nil, fmt.Errorf("inspect container %s: %w", shortID(s.ID), err)
		}
		st := NodeStatus{
			ContainerID: c.ID,
			Name:        strings.TrimPrefix(c.Name, "/"),
			Node:        s.Labels[testenv.NodeLabel],
			Role:        s.Labels[testenv.RoleLabel],
			Image:       s.Image,
			State:       s.State,
			Status:      s.Status,
			CreatedAt:   parseDockerTime(c.Created),
		}
		if c.State != nil {
			st.State = c.State.Status
			st.ExitCode = c.State.ExitCode
			st.OOMKilled = c.State.OOMKilled
			st.Error = c.State.Error
			st.StartedAt = parseDockerTime(c.State.StartedAt)
			st.FinishedAt = parseDockerTime(c.State.FinishedAt)
		}
		if c.HostConfig != nil {
			st.NanoCPUs = c.HostConfig.NanoCPUs
			st.MemoryBytes = c.HostConfig.Memory
		}
		if c.NetworkSettings != nil {
			for _, ep := range c.NetworkSettings.Networks {
				if ep != nil && envNets[ep.NetworkID] {
					st.IP = ep.IPAddress
				}
			}
		}
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b NodeStatus) int {
		return cmp.Or(cmp.Compare(a.Node, b.Node), cmp.Compare(a.Name, b.Name))
	})
	return out, nil
}

// parseDockerTime parses the engine's RFC 3339 timestamps; the engine's
// "never" (0001-01-01T00:00:00Z) and garbage both give the zero time.
func parseDockerTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil || t.Year() <= 1 {
		return time.Time{}
	}
	return t
}

// ExecResult is the outcome of one command run in a container.
type ExecResult struct {
	// ExitCode is the command's; -1 when it timed out or its status is
	// unknown. The engine reports 126/127 for a command that cannot be run
	// or is not found.
	ExitCode int `json:"exit_code"`
	// Stdout and Stderr are the last 64 KiB (MaxReturnedOutput) of each
	// stream, kept separate.
	Stdout          string `json:"stdout"`
	Stderr          string `json:"stderr"`
	StdoutTruncated bool   `json:"stdout_truncated,omitempty"`
	StderrTruncated bool   `json:"stderr_truncated,omitempty"`
	// TimedOut is set when the timeout expired before the command ended.
	TimedOut  bool      `json:"timed_out"`
	StartedAt time.Time `json:"started_at"`
	// Duration is from starting the exec to its end (or the timeout);
	// DurationMS is the same in milliseconds, for the REST API.
	Duration   time.Duration `json:"duration_ns"`
	DurationMS int64         `json:"duration_ms"`
}

// Exec runs argv in a running container as the image's user, exactly as
// given (no shell: pass "sh", "-c", script for one), with timeout
// (DefaultExecTimeout, 10 min, when zero or negative), and returns its exit
// code and its stdout/stderr separately, each bounded to its last 64 KiB.
// A non-zero exit is a result, not an error; errors are for commands that
// could not be run at all (container missing or not running, engine down)
// and for ctx being done.
//
// On timeout the result has TimedOut=true and ExitCode -1. The command itself
// is NOT killed: the Docker API has no call to signal an exec'd process, and
// an image may have no kill/pkill to do it from inside. It runs on until it
// exits or the container is removed (environment cleanup does that), so test
// commands should bound themselves (e.g. `timeout 30 ...` where the image has it).
func (r *DockerRuntime) Exec(ctx context.Context, containerID string, argv []string, timeout time.Duration) (ExecResult, error) {
	if len(argv) == 0 {
		return ExecResult{}, errors.New("exec: empty command")
	}
	if timeout <= 0 {
		timeout = DefaultExecTimeout
	}
	created, err := r.Client.ContainerExecCreate(ctx, containerID, container.ExecOptions{
		Cmd:          argv,
		AttachStdout: true,
		AttachStderr: true,
	})
	if err != nil {
		return ExecResult{}, fmt.Errorf("exec %q in container %s: %w", argv, shortID(containerID), err)
	}
	start := time.Now()
	// Attaching starts the exec.
	hijack, err := r.Client.ContainerExecAttach(ctx, created.ID, container.ExecAttachOptions{})
	if err != nil {
		return ExecResult{}, fmt.Errorf("start exec %q in container %s: %w", argv, shortID(containerID), err)
	}
	defer hijack.Close()

	stdout, stderr := newTailBuffer(MaxReturnedOutput), newTailBuffer(MaxReturnedOutput)
	copied := make(chan error, 1)
	go func() {
		_, err := stdcopy.StdCopy(stdout, stderr, hijack.Reader)
		copied <- err
	}()

	timer := time.NewTimer(timeout)
	defer timer.Stop()
	ticker := time.NewTicker(dockerHeartbeatInterval)
	defer ticker.Stop()
	hb := newHeartbeater(ctx)
	var copyErr error
	timedOut, copyDone := false, false
wait:
	for {
		select {
		case copyErr = <-copied:
			copyDone = true
			break wait
		case <-ticker.C:
			hb.beat()
		case <-timer.C:
			timedOut = true
			break wait
		case <-ctx.Done():
			break wait
		}
	}
	if !copyDone {
		// Timed out or ctx done. Closing the connection ends the copy; wait for it so the buffers
		// are no longer written when read below.
		hijack.Close()
		copyErr = <-copied // the error of a closed connection; not reported
	}
	result := ExecResult{
		ExitCode:        -1,
		Stdout:          stdout.String(),
		Stderr:          stderr.String(),
		StdoutTruncated: stdout.Truncated(),
		StderrTruncated: stderr.Truncated(),
		TimedOut:        timedOut,
		StartedAt:       start,
	}
	result.setDuration(time.Since(start))
	if err := ctx.Err(); err != nil && !timedOut {
		return result, fmt.Errorf("exec %q in container %s: %w", argv, shortID(containerID), err)
	}
	if timedOut {
		r.logger().Warn("exec timed out; the command keeps running in the container",
			"container", shortID(containerID), "argv", argv, "timeout", timeout)
		return result, nil
	}
	if copyErr != nil {
		return result, fmt.Errorf("exec %q in container %s: reading output: %w", argv, shortID(containerID), copyErr)
	}
	code, err := r.execExitCode(ctx, created.ID)
	if err != nil {
		return result, fmt.Errorf("exec %q in container %s: %w", argv, shortID(containerID), err)
	}
	result.ExitCode = code
	result.setDuration(time.Since(start))
	return result, nil
}

func (e *ExecResult) setDuration(d time.Duration) {
	e.Duration = d
	e.DurationMS = d.Milliseconds()
}

// execExitCode waits for the engine to record the exec's end: its output
// stream can close a moment before inspect stops reporting Running.
func (r *DockerRuntime) execExitCode(ctx context.Context, execID string) (int, error) {
	deadline := time.Now().Add(execExitPollTimeout)
	for delay := 5 * time.Millisecond; ; delay = min(2*delay, 200*time.Millisecond) {
		ins, err := r.Client.ContainerExecInspect(ctx, execID)
		if err != nil {
			return -1, fmt.Errorf("inspect exec: %w", err)
		}
		if !ins.Running {
			return ins.ExitCode, nil
		}
		if time.Now().After(deadline) {
			return -1, fmt.Errorf("exec output ended but the engine still reports it running after %s", execExitPollTimeout)
		}
		select {
		case <-ctx.Done():
			return -1, ctx.Err()
		case <-time.After(delay):
		}
	}
}

// Logs returns the last tail lines (DefaultLogTail, 1000, when zero or
// negative) of the container's output, each line prefixed with its RFC 3339
// timestamp, demultiplexed into stdout and stderr and bounded to the last
// 64 KiB (MaxReturnedOutput) of each. A container created with a TTY has a
// single stream, returned as stdout.
func (r *DockerRuntime) Logs(ctx context.Context, containerID string, tail int) (stdout, stderr string, err error) {
	if tail <= 0 {
		tail = DefaultLogTail
	}
	c, err := r.Client.ContainerInspect(ctx, containerID)
	if err != nil {
		return "", "", fmt.Errorf("logs of container %s: %w", shortID(containerID), err)
	}
	rc, err := r.Client.ContainerLogs(ctx, containerID, container.LogsOptions{
		ShowStdout: true,
		ShowStderr: true,
		Timestamps: true,
		Tail:       strconv.Itoa(tail),
	})
	if err != nil {
		return "", "", fmt.Errorf("logs of container %s: %w", shortID(containerID), err)
	}
	defer rc.Close()
	out, errOut := newTailBuffer(MaxReturnedOutput), newTailBuffer(MaxReturnedOutput)
	if c.Config != nil && c.Config.Tty {
		_, err = io.Copy(out, rc)
	} else {
		_, err = stdcopy.StdCopy(out, errOut, rc)
	}
	if err != nil {
		return out.String(), errOut.String(), fmt.Errorf("reading logs of container %s: %w", shortID(containerID), err)
	}
	return out.String(), errOut.String(), nil
}

// RemovedCounts counts an environment's Docker objects (removed ones, or
// present ones for ListManagedEnvironments).
type RemovedCounts struct {
	Containers int `json:"containers"`
	Networks   int `json:"networks"`
	Volumes    int `json:"volumes"`
}

// Total is the number of objects of all kinds.
func (c RemovedCounts) Total() int { return c.Containers + c.Networks + c.Volumes }

// RemoveEnvironment removes every container (forced, with its anonymous
// volumes), then every network and volume, labelled with both EnvIDLabel=
// envID and the managed-by label. Objects without both labels are never
// touched. Idempotent: objects already gone count as success, so a second
// call returns zero counts and no error. On partial failure it returns the
// counts of what was removed and all errors joined; a network still used by
// a foreign container is such an error (nothing foreign is disconnected).
func (r *DockerRuntime) RemoveEnvironment(ctx context.Context, envID string) (RemovedCounts, error) {
	var counts RemovedCounts
	if envID == "" {
		return counts, errors.New("remove environment: empty environment id")
	}
	hb := newHeartbeater(ctx)
	var errs []error

	containers, err := r.Client.ContainerList(ctx, container.ListOptions{All: true, Filters: envFilter(envID)})
	if err != nil {
		return counts, fmt.Errorf("list containers of environment %s: %w", envID, err)
	}
	// In parallel (bounded), as `docker rm -f a b c` does: removing a
	// container mostly waits on the engine, and a big topology would
	// otherwise pay each removal in turn.
	var mu sync.Mutex
	var g errgroup.Group
	g.SetLimit(8)
	for _, c := range containers {
		g.Go(func() error {
			err := r.Client.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				counts.Containers++
			case cerrdefs.IsNotFound(err):
			default:
				errs = append(errs, fmt.Errorf("remove container %s: %w", shortID(c.ID), err))
			}
			hb.beat()
			return nil
		})
	}
	_ = g.Wait()

	nets, err := r.Client.NetworkList(ctx, network.ListOptions{Filters: envFilter(envID)})
	if err != nil {
		errs = append(errs, fmt.Errorf("list networks of environment %s: %w", envID, err))
	}
	for _, n := range nets {
		err := r.Client.NetworkRemove(ctx, n.ID)
		switch {
		case err == nil:
			counts.Networks++
		case cerrdefs.IsNotFound(err):
		default:
			errs = append(errs, fmt.Errorf("remove network %s (%s): %w", n.Name, shortID(n.ID), err))
		}
		hb.beat()
	}

	vols, err := r.Client.VolumeList(ctx, volume.ListOptions{Filters: envFilter(envID)})
	if err != nil {
		errs = append(errs, fmt.Errorf("list volumes of environment %s: %w", envID, err))
	}
	for _, v := range vols.Volumes {
		err := r.Client.VolumeRemove(ctx, v.Name, true)
		switch {
		case err == nil:
			counts.Volumes++
		case cerrdefs.IsNotFound(err):
		default:
			errs = append(errs, fmt.Errorf("remove volume %s: %w", v.Name, err))
		}
		hb.beat()
	}

	if counts.Total() > 0 || len(errs) > 0 {
		r.logger().Info("removed environment objects", "env_id", envID,
			"containers", counts.Containers, "networks", counts.Networks, "volumes", counts.Volumes, "errors", len(errs))
	}
	return counts, errors.Join(errs...)
}

// ListManagedEnvironments returns, for every environment id found on a
// container, network or volume carrying the managed-by label, how many of
// each it has. It is the janitor's input: ids with no live workflow are
// garbage. Managed objects lacking an environment label (never created by
// this service) are logged and left out, since RemoveEnvironment could not
// select them.
//
// instance, when non-empty, keeps only objects labelled with that
// InstanceLabel value, so orchestrators sharing one engine (dev and CI, or
// parallel test runs) each sweep only their own leftovers.
func (r *DockerRuntime) ListManagedEnvironments(ctx context.Context, instance string) (map[string]RemovedCounts, error) {
	out := map[string]RemovedCounts{}
	filter := managedFilter()
	if instance != "" {
		filter.Add("label", testenv.InstanceLabel+"="+instance)
	}
	add := func(labels map[string]string, kind, name string, inc func(*RemovedCounts)) {
		env := labels[testenv.EnvIDLabel]
		if env == "" {
			r.logger().Warn("managed docker object without environment label ignored", "kind", kind, "name", name)
			return
		}
		c := out[env]
		inc(&c)
		out[env] = c
	}
	containers, err := r.Client.ContainerList(ctx, container.ListOptions{All: true, Filters: filter})
	if err != nil {
		return nil, fmt.Errorf("list managed containers: %w", err)
	}
	for _, c := range containers {
		add(c.Labels, "container", shortID(c.ID), func(rc *RemovedCounts) { rc.Containers++ })
	}
	nets, err := r.Client.NetworkList(ctx, network.ListOptions{Filters: filter})
	if err != nil {
		return nil, fmt.Errorf("list managed networks: %w", err)
	}
	for _, n := range nets {
		add(n.Labels, "network", n.Name, func(rc *RemovedCounts) { rc.Networks++ })
	}
	vols, err := r.Client.VolumeList(ctx, volume.ListOptions{Filters: filter})
	if err != nil {
		return nil, fmt.Errorf("list managed volumes: %w", err)
	}
	for _, v := range vols.Volumes {
		add(v.Labels, "volume", v.Name, func(rc *RemovedCounts) { rc.Volumes++ })
	}
	return out, nil
}

// UsedSubnets returns every subnet (CIDR) configured on any network of the
// engine, managed or not, sorted and without duplicates, so a new
// environment's subnet can be chosen not to overlap any of them.
func (r *DockerRuntime) UsedSubnets(ctx context.Context) ([]string, error) {
	nets, err := r.Client.NetworkList(ctx, network.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list networks: %w", err)
	}
	var out []string
	for _, n := range nets {
		for _, c := range n.IPAM.Config {
			if c.Subnet != "" {
				out = append(out, c.Subnet)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}
