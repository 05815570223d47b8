package testenv

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// KeepAliveCommand is every node container's command: it idles so tests can
// be exec'd, and exits at once on SIGTERM (PID 1 gets no default signal
// handlers, so without the trap `docker stop` would wait for the kill
// timeout). It needs only a POSIX sh (busybox works).
var KeepAliveCommand = []string{"/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"}

// envIDRE: the environment id becomes part of Docker object names.
var envIDRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,63}$`)

// BuildPlan validates req (as Validate does, with templates; nil means
// DefaultTemplates()) and turns it into the environment's containers:
//
//   - single_taskserv: one node named after the taskserv made a DNS label
//     ('.' and '_' become '-'), role "node", taskservs [taskserv];
//   - server_simulation: one node named server_name, role "server",
//     the request's taskservs;
//   - cluster_topology: the topology's or template's nodes, role "node"
//     when empty.
//
// A node's image is its own base_image, else config.base_image, else
// defaultImage (the service's --test-base-image). Its limits are its own
// resources, field by field falling back to config.resources; unset means
// unlimited. Errors in the request are *FieldError; an invalid envID or
// defaultImage is a plain error (a caller bug or misconfiguration).
func BuildPlan(envID string, req CreateRequest, templates *Templates, defaultImage string) (Plan, error) {
	if !envIDRE.MatchString(envID) {
		return Plan{}, fmt.Errorf("testenv: invalid environment id %q", envID)
	}
	if defaultImage != "" {
		if err := ValidateImage("default base image", defaultImage); err != nil {
			// A misconfiguration, not a request error: do not expose the *FieldError.
			return Plan{}, errors.New("testenv: " + err.Error())
		}
	}
	if err := req.Validate(templates); err != nil {
		return Plan{}, err
	}
	c := req.Config
	plan := Plan{
		EnvID:       envID,
		NetworkName: NetworkName(envID),
		Labels:      EnvLabels(envID),
		Type:        c.Type,
		ClusterType: c.ClusterType,
	}
	var nodes []Node
	switch c.Type {
	case TypeSingleTaskserv:
		nodes = []Node{{Name: taskservHostname(c.Taskserv), Role: RoleNode, Taskservs: []string{c.Taskserv}}}
	case TypeServerSimulation:
		nodes = []Node{{Name: c.ServerName, Role: RoleServer, Taskservs: slices.Clone(c.Taskservs)}}
	case TypeClusterTopology:
		if c.Template != "" {
			t, err := resolveTemplate(templates, c.Template)
			if err != nil {
				return Plan{}, err
			}
			plan.Template = t.Name
			if plan.ClusterType == "" {
				plan.ClusterType = t.ClusterType
			}
			plan.Subnet = t.Network.Subnet
			nodes = t.Nodes
		} else {
			plan.Subnet = c.Topology.Network.Subnet
			nodes = cloneNodes(c.Topology.Nodes)
		}
	}
	for _, n := range nodes {
		image := firstNonEmpty(n.BaseImage, c.BaseImage, defaultImage)
		if image == "" {
			return Plan{}, &FieldError{"config.base_image", "required: the service has no default base image"}
		}
		role := firstNonEmpty(n.Role, RoleNode)
		res := mergeResources(n.Resources, c.Resources)
		container := ContainerName(envID, n.Name)
		var vols []VolumePlan
		for _, v := range append(slices.Clone(c.Volumes), n.Volumes...) {
			vols = append(vols, VolumePlan{Name: v.Name, VolumeName: container + "-" + v.Name, Path: v.Path})
		}
		plan.Nodes = append(plan.Nodes, NodePlan{
			Name:          n.Name,
			ContainerName: container,
			Role:          role,
			Taskservs:     nonNil(slices.Clone(n.Taskservs)),
			Image:         image,
			NanoCPUs:      res.CPUMillicores * 1_000_000,
			MemoryBytes:   res.MemoryMB << 20,
			DiskBytes:     res.DiskMB << 20,
			TmpBytes:      res.TmpMB << 20,
			Command:       slices.Clone(KeepAliveCommand),
			Labels:        NodeLabels(envID, n.Name, role),
			Volumes:       vols,
		})
	}
	return plan, nil
}

// taskservHostname makes a taskserv name (^[a-z0-9][a-z0-9._-]{0,62}$) a
// DNS label: '.' and '_' become '-', and trailing '-' are dropped.
func taskservHostname(ts string) string {
	s := strings.NewReplacer(".", "-", "_", "-").Replace(ts)
	return strings.TrimRight(s, "-")
}

// mergeResources takes each field from node when set, else from config.
func mergeResources(node, config *Resources) Resources {
	var r Resources
	if config != nil {
		r = *config
	}
	if node != nil {
		if node.CPUMillicores != 0 {
			r.CPUMillicores = node.CPUMillicores
		}
		if node.MemoryMB != 0 {
			r.MemoryMB = node.MemoryMB
		}
		if node.DiskMB != 0 {
			r.DiskMB = node.DiskMB
		}
		if node.TmpMB != 0 {
			r.TmpMB = node.TmpMB
		}
	}
	return r
}

func firstNonEmpty(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
