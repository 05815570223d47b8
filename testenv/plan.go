// Package testenv models containerised test environments: the request
// shapes of the original orchestrator (single_taskserv, server_simulation,
// cluster_topology), topology templates, validation, and the container plan
// that the Docker activities carry out. Everything here is pure data and
// deterministic, so workflows can use it.
package testenv

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
	// Command keeps the container alive for exec'd tests; default
	// ["sleep", "infinity"]-like command chosen by the plan builder.
	Command []string `json:"command"`
	// Labels: the plan's labels plus node and role.
	Labels map[string]string `json:"labels"`
}
