package docker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"

	"github.com/provisioning/orchestrator/driver"
	"github.com/provisioning/orchestrator/testenv"
)

// CreateNode creates (does not start) the container for node n:
// name n.ContainerName (default "orch-<first 8 of EnvID>-<Name>"), hostname
// n.Name, image n.Image (which must be present: run EnsureImage first),
// command n.Command (empty: the image's CMD), labels p.Labels + n.Labels
// plus managed-by, environment, node and role labels (always set), NanoCPUs
// and Memory limits (0 = unlimited), a pids limit (DefaultPidsLimit, so a
// fork bomb in a node cannot take the host), rotated json-file logs
// (DefaultLogMaxSize × DefaultLogMaxFiles), no restart policy, attached only to the
// environment network with alias n.Name so other nodes reach it by name.
//
// Idempotent: when a container of that name carrying this environment's
// labels exists (whatever its state), its id is returned. A same-named
// container of anything else is an error and is left alone.
func (r *Runtime) CreateNode(ctx context.Context, p testenv.Plan, n testenv.NodePlan) (id string, err error) {
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
	mounts, err := r.nodeVolumes(ctx, p.EnvID, n, labels)
	if err != nil {
		return "", err
	}
	cfg := &container.Config{
		Hostname: n.Name,
		Image:    n.Image,
		Cmd:      n.Command,
		Labels:   labels,
	}
	pids := int64(DefaultPidsLimit)
	initProcess := true
	hostCfg := &container.HostConfig{
		// The engine's init (tini) as PID 1 reaps what installs and
		// checks orphan inside the node, and passes signals on.
		Init:        &initProcess,
		NetworkMode: container.NetworkMode(netName),
		Resources: container.Resources{
			NanoCPUs:  n.NanoCPUs,
			Memory:    n.MemoryBytes,
			PidsLimit: &pids,
		},
		Mounts: mounts,
		// Node logs are kept for the logs endpoint; rotation bounds a
		// chatty node's disk use on the host.
		LogConfig: container.LogConfig{Type: "json-file", Config: map[string]string{
			"max-size": DefaultLogMaxSize, "max-file": DefaultLogMaxFiles,
		}},
	}
	if n.DiskBytes > 0 {
		hostCfg.StorageOpt = map[string]string{"size": fmt.Sprintf("%dM", n.DiskBytes>>20)}
	}
	if n.TmpBytes > 0 {
		hostCfg.Tmpfs = map[string]string{"/tmp": fmt.Sprintf("size=%dm,mode=1777", n.TmpBytes>>20)}
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
		if n.DiskBytes > 0 && isNoQuota(err) {
			return "", &driver.SpecError{Msg: fmt.Sprintf("node %s: resources.disk_mb cannot be enforced by this engine (%v): its storage driver needs quota support (overlay2 or vfs on xfs mounted with pquota, btrfs, zfs); omit disk_mb, or use tmp_mb for a size-limited /tmp", n.Name, err), Err: err}
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

func (r *Runtime) existingContainer(ctx context.Context, envID, name string) (id string, found bool, err error) {
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
func (r *Runtime) StartNode(ctx context.Context, containerID string) error {
	if err := r.Client.ContainerStart(ctx, containerID, container.StartOptions{}); err != nil {
		return fmt.Errorf("start container %s: %w", shortID(containerID), err)
	}
	return nil
}

// InspectNodes returns the status of every container of the environment
// (found by the managed-by and environment labels, in any state), sorted by
// node name. An environment with no containers yields an empty slice.
func (r *Runtime) InspectNodes(ctx context.Context, envID string) ([]testenv.NodeStatus, error) {
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
	out := make([]testenv.NodeStatus, 0, len(list))
	for _, s := range list {
		c, err := r.Client.ContainerInspect(ctx, s.ID)
		if cerrdefs.IsNotFound(err) {
			continue // removed since the list
		}
		if err != nil {
			return nil, fmt.Errorf("inspect container %s: %w", shortID(s.ID), err)
		}
		st := testenv.NodeStatus{
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
			if c.HostConfig.PidsLimit != nil {
				st.PidsLimit = *c.HostConfig.PidsLimit
			}
			st.DiskLimit = c.HostConfig.StorageOpt["size"]
			if len(c.HostConfig.Tmpfs) > 0 {
				st.Tmpfs = c.HostConfig.Tmpfs
			}
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
	slices.SortFunc(out, func(a, b testenv.NodeStatus) int {
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

// nodeVolumes creates the node's named volumes, labelled like the node so
// that cleanup and the janitor remove them, and returns their mounts. A
// volume of that name already made for this environment (a retried create)
// is reused; one that is not this environment's is an error and is left
// alone.
func (r *Runtime) nodeVolumes(ctx context.Context, envID string, n testenv.NodePlan, labels map[string]string) ([]mount.Mount, error) {
	var mounts []mount.Mount
	for _, v := range n.Volumes {
		existing, err := r.Client.VolumeInspect(ctx, v.VolumeName)
		switch {
		case err == nil && !isOurs(existing.Labels, envID):
			return nil, fmt.Errorf("volume name %s is already used by a volume that does not belong to environment %s", v.VolumeName, envID)
		case err == nil:
		case cerrdefs.IsNotFound(err):
			if _, err := r.Client.VolumeCreate(ctx, volume.CreateOptions{Name: v.VolumeName, Driver: "local", Labels: labels}); err != nil {
				return nil, fmt.Errorf("create volume %s for node %s: %w", v.VolumeName, n.Name, err)
			}
		default:
			return nil, fmt.Errorf("inspect volume %s: %w", v.VolumeName, err)
		}
		mounts = append(mounts, mount.Mount{Type: mount.TypeVolume, Source: v.VolumeName, Target: v.Path})
	}
	return mounts, nil
}

// isNoQuota reports whether the engine refused a storage-opt size because
// its storage driver or backing filesystem has no quotas.
func isNoQuota(err error) bool {
	msg := strings.ToLower(err.Error())
	return strings.Contains(msg, "quota") || strings.Contains(msg, "storage-opt") || strings.Contains(msg, "storage opt")
}
