// Package testenv models containerised test environments: the request
// shapes of the original orchestrator (single_taskserv, server_simulation,
// cluster_topology), topology templates, validation, and the container plan
// that the Docker activities carry out. Everything here is pure data and
// deterministic, so workflows can use it.
package testenv

import "slices"

// Label keys put on every Docker object this service creates. Cleanup and
// the janitor select by them and never touch objects without ManagedByLabel.
const (
	// ManagedByLabel marks an object as created by this service.
	ManagedByLabel = "io.provisioning.orchestrator/managed-by"
	// ManagedByValue is ManagedByLabel's value.
	ManagedByValue = "provisioning-orchestrator"
	// EnvIDLabel holds the environment id (= workflow id).
	EnvIDLabel = "io.provisioning.orchestrator/environment"
	// NodeLabel holds the node name (containers only).
	NodeLabel = "io.provisioning.orchestrator/node"
	// RoleLabel holds the node role (containers only).
	RoleLabel = "io.provisioning.orchestrator/role"
	// InstanceLabel names the orchestrator deployment (--instance) that
	// made the object; each janitor sweeps only its own instance's objects.
	InstanceLabel = "io.provisioning.orchestrator/instance"
)

// Plan is everything needed to create one environment's Docker objects.
type Plan struct {
	// EnvID is the environment id (a lowercase UUID), also the workflow id.
	EnvID string `json:"env_id"`
	// NetworkName is the dedicated bridge network, "orch-env-<EnvID>".
	NetworkName string `json:"network_name"`
	// Subnet in CIDR form; empty lets the engine choose one.
	Subnet string `json:"subnet"`
	// Nodes, one container each.
	Nodes []NodePlan `json:"nodes"`
	// Labels common to every object of the environment (managed-by, env id).
	Labels map[string]string `json:"labels"`
	// Type is the request's config.type.
	Type string `json:"type"`
	// ClusterType is the request's cluster_type, else the template's.
	ClusterType string `json:"cluster_type,omitempty"`
	// Template is the template the nodes came from, if any.
	Template string `json:"template,omitempty"`
}

// NetworkName is the environment's network: "orch-env-<envID>".
func NetworkName(envID string) string { return "orch-env-" + envID }

// ContainerName is a node's container: "orch-<first 8 of envID>-<node>".
func ContainerName(envID, node string) string {
	short := envID
	if len(short) > 8 {
		short = short[:8]
	}
	return "orch-" + short + "-" + node
}

// EnvLabels are the labels on every object of the environment: managed-by
// and the environment id. Cleanup filters on them.
func EnvLabels(envID string) map[string]string {
	return map[string]string{ManagedByLabel: ManagedByValue, EnvIDLabel: envID}
}

// NodeLabels are a node container's labels: EnvLabels plus node and role.
func NodeLabels(envID, node, role string) map[string]string {
	l := EnvLabels(envID)
	l[NodeLabel] = node
	l[RoleLabel] = role
	return l
}

// NodeNames returns the node names in plan order.
func (p Plan) NodeNames() []string {
	names := make([]string, len(p.Nodes))
	for i, n := range p.Nodes {
		names[i] = n.Name
	}
	return names
}

// Node returns the named node.
func (p Plan) Node(name string) (NodePlan, bool) {
	i := slices.IndexFunc(p.Nodes, func(n NodePlan) bool { return n.Name == name })
	if i < 0 {
		return NodePlan{}, false
	}
	return p.Nodes[i], true
}

// DefaultTests are the default checks of every node, in node order (see
// DefaultChecks).
func (p Plan) DefaultTests() []TestSpec {
	var out []TestSpec
	for _, n := range p.Nodes {
		out = append(out, DefaultChecks(p, n)...)
	}
	return out
}

// NodePlan is one container.
type NodePlan struct {
	// Name is the node name: hostname and network alias.
	Name string `json:"name"`
	// ContainerName is "orch-<first 8 of EnvID>-<Name>", unique per engine.
	ContainerName string   `json:"container_name"`
	Role          string   `json:"role"`
	Taskservs     []string `json:"taskservs"`
	Image         string   `json:"image"`
	// NanoCPUs is cpu_millicores * 1e6; 0 = unlimited.
	NanoCPUs int64 `json:"nano_cpus"`
	// MemoryBytes is memory_mb * 1 MiB; 0 = unlimited.
	MemoryBytes int64 `json:"memory_bytes"`
	// DiskBytes is disk_mb * 1 MiB (the root filesystem's size); 0 =
	// unlimited.
	DiskBytes int64 `json:"disk_bytes,omitempty"`
	// TmpBytes is tmp_mb * 1 MiB, the size of a tmpfs on /tmp; 0 = none.
	TmpBytes int64 `json:"tmp_bytes,omitempty"`
	// Command keeps the container alive for exec'd tests: KeepAliveCommand.
	Command []string `json:"command"`
	// Volumes are the node's named volumes: config.volumes then the node's.
	Volumes []VolumePlan `json:"volumes,omitempty"`
	// Labels: the plan's labels plus node and role.
	Labels map[string]string `json:"labels"`
}

// VolumePlan is one named volume of a node.
type VolumePlan struct {
	// Name is the request's name; the engine volume is VolumeName.
	Name string `json:"name"`
	// VolumeName is "<container name>-<name>", unique per engine.
	VolumeName string `json:"volume_name"`
	// Path is where the node mounts it.
	Path string `json:"path"`
}

// Default limits of a node that asks for none: without them one busy node
// could take every CPU and all the memory of the host.
const (
	// DefaultNodeCPUMillicores is one CPU.
	DefaultNodeCPUMillicores = 1000
	// DefaultNodeMemoryMB is 512 MiB (the pinned nu and a provisioning
	// script fit well within it).
	DefaultNodeMemoryMB = 512
)

// ApplyDefaultLimits gives every node without a CPU or memory limit the
// given one (millicores, MiB); 0 leaves that resource unlimited.
func (p *Plan) ApplyDefaultLimits(cpuMillicores, memoryMB int64) {
	for i := range p.Nodes {
		if p.Nodes[i].NanoCPUs == 0 {
			p.Nodes[i].NanoCPUs = cpuMillicores * 1_000_000
		}
		if p.Nodes[i].MemoryBytes == 0 {
			p.Nodes[i].MemoryBytes = memoryMB << 20
		}
	}
}

// SetInstance labels the environment and its nodes with the orchestrator
// instance that owns them (the janitor's scope); "" leaves them unlabelled.
func (p *Plan) SetInstance(instance string) {
	if instance == "" {
		return
	}
	p.Labels[InstanceLabel] = instance
	for i := range p.Nodes {
		p.Nodes[i].Labels[InstanceLabel] = instance
	}
}
