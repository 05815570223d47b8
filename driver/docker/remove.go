package docker

import (
	"context"
	"errors"
	"fmt"
	"sync"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
	"golang.org/x/sync/errgroup"

	"github.com/provisioning/orchestrator/driver"
	"github.com/provisioning/orchestrator/testenv"
)

// RemoveEnvironment removes every container (forced, with its anonymous
// volumes), then every network and volume, labelled with both EnvIDLabel=
// envID and the managed-by label. Objects without both labels are never
// touched. Idempotent: objects already gone count as success, so a second
// call returns zero counts and no error. On partial failure it returns the
// counts of what was removed and all errors joined; a network still used by
// a foreign container is such an error (nothing foreign is disconnected).
func (r *Runtime) RemoveEnvironment(ctx context.Context, envID string) (testenv.RemovedCounts, error) {
	var counts testenv.RemovedCounts
	if envID == "" {
		return counts, errors.New("remove environment: empty environment id")
	}
	hb := driver.NewHeartbeater(ctx)
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
			hb.Beat("remove")
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
		hb.Beat("remove")
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
		hb.Beat("remove")
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
func (r *Runtime) ListManagedEnvironments(ctx context.Context, instance string) (map[string]testenv.RemovedCounts, error) {
	out := map[string]testenv.RemovedCounts{}
	filter := managedFilter()
	if instance != "" {
		filter.Add("label", testenv.InstanceLabel+"="+instance)
	}
	add := func(labels map[string]string, kind, name string, inc func(*testenv.RemovedCounts)) {
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
		add(c.Labels, "container", shortID(c.ID), func(rc *testenv.RemovedCounts) { rc.Containers++ })
	}
	nets, err := r.Client.NetworkList(ctx, network.ListOptions{Filters: filter})
	if err != nil {
		return nil, fmt.Errorf("list managed networks: %w", err)
	}
	for _, n := range nets {
		add(n.Labels, "network", n.Name, func(rc *testenv.RemovedCounts) { rc.Networks++ })
	}
	vols, err := r.Client.VolumeList(ctx, volume.ListOptions{Filters: filter})
	if err != nil {
		return nil, fmt.Errorf("list managed volumes: %w", err)
	}
	for _, v := range vols.Volumes {
		add(v.Labels, "volume", v.Name, func(rc *testenv.RemovedCounts) { rc.Volumes++ })
	}
	return out, nil
}
