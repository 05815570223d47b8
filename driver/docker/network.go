package docker

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"

	"github.com/provisioning/orchestrator/testenv"
)

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
func (r *Runtime) CreateNetwork(ctx context.Context, p testenv.Plan) (id, subnet string, err error) {
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
func (r *Runtime) existingNetwork(ctx context.Context, p testenv.Plan, name string) (id, subnet string, found bool, err error) {
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
func (r *Runtime) networkSubnet(ctx context.Context, name string) (string, error) {
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

// UsedSubnets returns every subnet (CIDR) configured on any network of the
// engine, managed or not, sorted and without duplicates, so a new
// environment's subnet can be chosen not to overlap any of them.
func (r *Runtime) UsedSubnets(ctx context.Context) ([]string, error) {
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
