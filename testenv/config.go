package testenv

import (
	"fmt"
	"path"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/distribution/reference"
	"github.com/provisioning/orchestrator/storage"
)

// Environment types (EnvConfig.Type), as in the original orchestrator.
const (
	// TypeSingleTaskserv is one container testing one taskserv.
	TypeSingleTaskserv = "single_taskserv"
	// TypeServerSimulation is one container (a simulated server) with many taskservs.
	TypeServerSimulation = "server_simulation"
	// TypeClusterTopology is one container per node of a topology or template.
	TypeClusterTopology = "cluster_topology"
)

// Well-known node roles. Any role matching the taskserv-name pattern
// (^[a-z0-9][a-z0-9._-]{0,62}$) is accepted: the role is only recorded in a
// label and reported back, so there is no reason to restrict it to this
// list, which documents the roles the built-in templates use.
const (
	RoleControlPlane = "control-plane"
	RoleWorker       = "worker"
	RoleEtcd         = "etcd"
	RoleDatabase     = "database"
	RoleCache        = "cache"
	RoleServer       = "server"
	// RoleNode is the default role of a node that names none, and the role
	// of the single node of single_taskserv.
	RoleNode = "node"
)

// Request limits.
const (
	// MaxNodes bounds the nodes of one environment.
	MaxNodes = 32
	// MaxTaskservs bounds the taskservs of one node.
	MaxTaskservs = 32
	// MinCPUMillicores and MaxCPUMillicores bound resources.cpu_millicores
	// when set (0 = not set = no limit).
	MinCPUMillicores = 1
	MaxCPUMillicores = 64000
	// MinMemoryMB (Docker's minimum, 6 MiB) and MaxMemoryMB (256 GiB) bound
	// resources.memory_mb when set (0 = not set = no limit).
	MinMemoryMB = 6
	MaxMemoryMB = 262144
	// MinDiskMB..MaxDiskMB bound resources.disk_mb (1 TiB), and
	// 1..MaxTmpMB resources.tmp_mb (64 GiB).
	MinDiskMB = 16
	MaxDiskMB = 1 << 20
	MaxTmpMB  = 65536
	// MinTTL and MaxTTL bound CreateRequest.TTL when set.
	MinTTL = time.Minute
	MaxTTL = 7 * 24 * time.Hour
)

// CreateRequest is the body of POST /test/environments/create, with the
// original orchestrator's JSON field names.
type CreateRequest struct {
	Config EnvConfig `json:"config"`
	// Infra optionally names the infrastructure the environment tests
	// (recorded, not used to create anything).
	Infra string `json:"infra"`
	// AutoStart starts the containers once created and converges them:
	// the provisioning script installs each node's taskservs inside it.
	AutoStart bool `json:"auto_start"`
	// Settings is the settings path the provisioning script gets when it
	// converges the nodes (--settings); default DefaultSettings.
	Settings string `json:"settings,omitempty"`
	// Idempotence converges every taskserv a second time after each
	// converge (at auto_start, before the first run, and by default on
	// POST .../converge) and fails unless every install reports that it
	// changed nothing (see ChangeReport). Default false.
	Idempotence bool `json:"idempotence,omitempty"`
	// AutoCleanup removes everything right after the (first) test run.
	AutoCleanup bool `json:"auto_cleanup"`
	// KeepOnFailure (debugging) skips the rollback when creation fails.
	KeepOnFailure bool `json:"keep_on_failure"`
	// TTL optionally bounds the environment's life (a Go duration such as
	// "30m" or "4h", MinTTL..MaxTTL); empty means the service default.
	TTL string `json:"ttl"`
	// Priority of the environment's work (create, converge, runs) on busy
	// workers: storage.MinPriority (1, most urgent) to storage.MaxPriority
	// (5); 0 means storage.DefaultPriority (3).
	Priority int `json:"priority,omitempty"`
}

// EnvConfig describes the environment; which fields apply depends on Type.
type EnvConfig struct {
	// Type is single_taskserv, server_simulation or cluster_topology.
	Type string `json:"type"`
	// Taskserv (single_taskserv) is the taskserv under test.
	Taskserv string `json:"taskserv"`
	// BaseImage (all types) is the containers' image; empty means the
	// service's default. A node's own base_image overrides it.
	BaseImage string `json:"base_image"`
	// Resources (all types) limits every container; a node's own resources
	// override it field by field.
	Resources *Resources `json:"resources"`
	// Volumes (all types) are named volumes mounted in every node (a node's
	// own volumes add to them); each node gets its own, removed with the
	// environment.
	Volumes []Volume `json:"volumes,omitempty"`
	// ServerName (server_simulation) is the simulated server's hostname.
	ServerName string `json:"server_name"`
	// Taskservs (server_simulation) are installed on the simulated server.
	Taskservs []string `json:"taskservs"`
	// ClusterType (cluster_topology) optionally names the kind of cluster;
	// a template supplies its own when this is empty.
	ClusterType string `json:"cluster_type"`
	// Topology (cluster_topology) lists the nodes; exclusive with Template.
	Topology *Topology `json:"topology"`
	// Template (cluster_topology) names a topology template; exclusive with
	// Topology.
	Template string `json:"template"`
}

// Resources are CPU and memory limits. A zero field is "not set": no limit
// (or, on a node, the config-level value).
type Resources struct {
	// CPUMillicores: 1000 = one CPU; becomes NanoCPUs (x 1e6).
	CPUMillicores int64 `json:"cpu_millicores" toml:"cpu_millicores"`
	// MemoryMB in MiB; becomes the memory limit in bytes (x 2^20).
	MemoryMB int64 `json:"memory_mb" toml:"memory_mb"`
	// DiskMB limits the container's writable root filesystem (the
	// engine's storage-opt size). Only storage drivers with quotas support
	// it (overlay2 or vfs on xfs with pquota, btrfs, zfs); other engines
	// refuse it and the environment fails with a message saying so. 0 =
	// no limit.
	DiskMB int64 `json:"disk_mb,omitempty" toml:"disk_mb"`
	// TmpMB makes /tmp a tmpfs of this size (MiB), on every engine: a
	// size-limited writable scratch space (its pages count against the
	// memory limit). 0 = /tmp is part of the root filesystem.
	TmpMB int64 `json:"tmp_mb,omitempty" toml:"tmp_mb"`
}

// Topology is an explicit cluster: nodes and their network.
type Topology struct {
	Nodes   []Node  `json:"nodes" toml:"nodes"`
	Network Network `json:"network" toml:"network"`
}

// Node is one container of a cluster topology.
type Node struct {
	// Name is an RFC 1123 label: the hostname and network alias.
	Name string `json:"name" toml:"name"`
	// Role is recorded in a label; empty means RoleNode.
	Role      string     `json:"role" toml:"role"`
	Taskservs []string   `json:"taskservs" toml:"taskservs"`
	Resources *Resources `json:"resources" toml:"resources"`
	BaseImage string     `json:"base_image" toml:"base_image"`
	// Volumes are mounted in this node in addition to config.volumes.
	Volumes []Volume `json:"volumes,omitempty" toml:"volumes"`
}

// Volume is a named volume mounted in a node at Path. The engine volume is
// the node's own ("<container name>-<name>"), labelled like every object of
// the environment so cleanup removes it.
type Volume struct {
	// Name: [a-z0-9][a-z0-9_.-]{0,62}.
	Name string `json:"name" toml:"name"`
	// Path is an absolute, clean path in the node other than "/".
	Path string `json:"path" toml:"path"`
}

// settingsRE allows relative or absolute paths without whitespace, quotes,
// or shell metacharacters, and never a leading '-' (it would read as a flag).
var settingsRE = regexp.MustCompile(`^[A-Za-z0-9._/~+@:=,][A-Za-z0-9._/~+@:=,-]*$`)

// maxSettingsLen bounds the settings path (PATH_MAX).
const maxSettingsLen = 4096

// ValidateSettings checks the path of an infra's settings file, which the
// provisioning script receives as one argv element (--settings).
func ValidateSettings(field, v string) error {
	if v == "" {
		return &FieldError{Field: field, Message: "must not be empty: give the path of the infra's settings file"}
	}
	if len(v) > maxSettingsLen {
		return &FieldError{Field: field, Message: fmt.Sprintf("longer than %d bytes", maxSettingsLen)}
	}
	if !settingsRE.MatchString(v) {
		return &FieldError{Field: field, Message: fmt.Sprintf("%q is not an acceptable path: no whitespace, quotes or shell metacharacters, and it must not start with '-'", v)}
	}
	return nil
}

// Defaults of converging a node when the request names none.
const (
	// DefaultInfra is the --infra of an environment's converge.
	DefaultInfra = "test-env"
	// DefaultSettings is the --settings of an environment's converge.
	DefaultSettings = "./settings.yaml"
)

// ConvergeSpec is one taskserv install inside a node: the provisioning
// script runs `taskserv create <Taskserv> --infra <Infra> --settings
// <Settings> [--check] <Node>` in the node's container.
type ConvergeSpec struct {
	Node     string `json:"node"`
	Taskserv string `json:"taskserv"`
	Infra    string `json:"infra"`
	Settings string `json:"settings"`
	Check    bool   `json:"check,omitempty"`
}

// Args is the script's argv for the install.
func (c ConvergeSpec) Args() []string {
	args := []string{"taskserv", "create", c.Taskserv, "--infra", c.Infra, "--settings", c.Settings}
	if c.Check {
		args = append(args, "--check")
	}
	return append(args, c.Node)
}

// ConvergeRequest is the body of POST /test/environments/{id}/converge
// (optional: an empty body converges with the environment's options).
type ConvergeRequest struct {
	// Idempotence overrides the environment's idempotence option for this
	// converge: true runs the second converge and checks it changed
	// nothing.
	Idempotence *bool `json:"idempotence,omitempty"`
}

// ConvergeReport is what a converge returns: every install's result and,
// when asked for, the idempotence check.
type ConvergeReport struct {
	// Passed: every install succeeded and, when checked, idempotence held.
	Passed bool `json:"passed"`
	// Converge is one result per node and taskserv, in install order.
	Converge []TaskservResult `json:"converge"`
	// Idempotence is the second converge's check, when asked for.
	Idempotence *IdempotenceCheck `json:"idempotence,omitempty"`
	// Error names the node and taskserv that failed, or what was not
	// idempotent.
	Error string `json:"error,omitempty"`
}

// MaxVolumes bounds the volumes of one node.
const MaxVolumes = 16

var volumePathRE = regexp.MustCompile(`^(/[A-Za-z0-9._-]+)+$`)

// validateVolumes checks a volume list (field is its request field); seen
// holds names and paths already used on the same node (config.volumes),
// so duplicates across the two lists are refused too.
func validateVolumes(field string, vols []Volume, seen map[string]string) error {
	if len(vols) > MaxVolumes {
		return &FieldError{field, fmt.Sprintf("%d volumes: at most %d", len(vols), MaxVolumes)}
	}
	for i, v := range vols {
		vf := fmt.Sprintf("%s[%d]", field, i)
		if err := ValidateTaskserv(join(vf, "name"), v.Name); err != nil {
			return err
		}
		if v.Path != path.Clean(v.Path) || !volumePathRE.MatchString(v.Path) || len(v.Path) > 255 || slices.Contains(strings.Split(v.Path, "/"), "..") {
			return &FieldError{join(vf, "path"), fmt.Sprintf("%q must be an absolute, clean path other than / (letters, digits, . _ - and /)", v.Path)}
		}
		for _, key := range []string{"name:" + v.Name, "path:" + v.Path} {
			if other, dup := seen[key]; dup {
				return &FieldError{vf, fmt.Sprintf("duplicate volume %s (also %s)", strings.TrimPrefix(strings.TrimPrefix(key, "name:"), "path:"), other)}
			}
			seen[key] = vf
		}
	}
	return nil
}

// seenVolumes starts a node's duplicate check with config.volumes.
func seenVolumes(vols []Volume) map[string]string {
	seen := map[string]string{}
	for i, v := range vols {
		vf := fmt.Sprintf("config.volumes[%d]", i)
		seen["name:"+v.Name], seen["path:"+v.Path] = vf, vf
	}
	return seen
}

// Network is the environment's bridge network.
type Network struct {
	// Subnet is a private IPv4 CIDR; empty means one is chosen that does
	// not overlap the engine's networks (see ChooseSubnet).
	Subnet string `json:"subnet" toml:"subnet"`
}

// FieldError names the request field that is invalid, as a JSON path such
// as "config.topology.nodes[1].name". The HTTP layer answers it with 400.
type FieldError struct {
	Field   string
	Message string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Message }

// join builds a field path: join("config", "type") = "config.type";
// join("", "nodes[0]") = "nodes[0]".
func join(prefix, field string) string {
	if prefix == "" {
		return field
	}
	return prefix + "." + field
}

// nameRE is the documented safe set for infra and cluster-type names (the
// same set as the provisioning requests').
var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// taskservRE is the set for taskserv names and roles.
var taskservRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// dnsLabelRE is an RFC 1123 label, lowercase only.
var dnsLabelRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// imageCharsRE is the character set of an image reference we accept before
// parsing it: no whitespace, quotes or shell metacharacters.
var imageCharsRE = regexp.MustCompile(`^[a-z0-9][A-Za-z0-9._/:@-]{0,254}$`)

// ValidateName checks a name against the safe set
// [A-Za-z0-9][A-Za-z0-9._-]{0,62}.
func ValidateName(field, v string) error {
	if v == "" {
		return &FieldError{field, "must not be empty"}
	}
	if !nameRE.MatchString(v) {
		return &FieldError{field, fmt.Sprintf("%q is not a valid name: use 1-63 characters from [A-Za-z0-9._-], starting with a letter or digit", v)}
	}
	return nil
}

// ValidateHostname checks an RFC 1123 label: 1-63 lowercase letters, digits
// and '-', not starting or ending with '-'. Node and server names must be
// such labels because they become hostnames and DNS aliases.
func ValidateHostname(field, v string) error {
	if v == "" {
		return &FieldError{field, "must not be empty"}
	}
	if !dnsLabelRE.MatchString(v) {
		return &FieldError{field, fmt.Sprintf("%q is not a valid hostname: use 1-63 lowercase letters, digits and '-', not starting or ending with '-'", v)}
	}
	return nil
}

// ValidateTaskserv checks a taskserv name (also used for roles):
// ^[a-z0-9][a-z0-9._-]{0,62}$.
func ValidateTaskserv(field, v string) error {
	if v == "" {
		return &FieldError{field, "must not be empty"}
	}
	if !taskservRE.MatchString(v) {
		return &FieldError{field, fmt.Sprintf("%q is not valid: use 1-63 characters from [a-z0-9._-], starting with a letter or digit", v)}
	}
	return nil
}

// ValidateImage checks a Docker image reference such as "ubuntu:22.04",
// "localhost:5000/team/img:v1" or "busybox@sha256:<hex>": at most 255
// characters from [A-Za-z0-9._/:@-] starting with a lowercase letter or
// digit, and well-formed by Docker's reference grammar.
func ValidateImage(field, v string) error {
	if v == "" {
		return &FieldError{field, "must not be empty"}
	}
	if !imageCharsRE.MatchString(v) {
		return &FieldError{field, fmt.Sprintf("%q is not a valid image reference: at most 255 characters from [A-Za-z0-9._/:@-], starting with a lowercase letter or digit", v)}
	}
	if _, err := reference.ParseNormalizedNamed(v); err != nil {
		return &FieldError{field, fmt.Sprintf("%q is not a valid image reference: %v", v, err)}
	}
	return nil
}

// ValidateResources checks limits that are set (non-zero): cpu_millicores
// MinCPUMillicores..MaxCPUMillicores, memory_mb MinMemoryMB..MaxMemoryMB,
// disk_mb MinDiskMB..MaxDiskMB, tmp_mb 1..MaxTmpMB.
// Negative values are always rejected. r may be nil.
func ValidateResources(field string, r *Resources) error {
	if r == nil {
		return nil
	}
	if r.CPUMillicores != 0 && (r.CPUMillicores < MinCPUMillicores || r.CPUMillicores > MaxCPUMillicores) {
		return &FieldError{join(field, "cpu_millicores"), fmt.Sprintf("%d is out of range: give %d..%d (1000 = one CPU), or omit it for no limit", r.CPUMillicores, MinCPUMillicores, MaxCPUMillicores)}
	}
	if r.MemoryMB != 0 && (r.MemoryMB < MinMemoryMB || r.MemoryMB > MaxMemoryMB) {
		return &FieldError{join(field, "memory_mb"), fmt.Sprintf("%d is out of range: give %d..%d (MiB), or omit it for no limit", r.MemoryMB, MinMemoryMB, MaxMemoryMB)}
	}
	if r.DiskMB != 0 && (r.DiskMB < MinDiskMB || r.DiskMB > MaxDiskMB) {
		return &FieldError{join(field, "disk_mb"), fmt.Sprintf("%d is out of range: give %d..%d (MiB), or omit it for no limit", r.DiskMB, MinDiskMB, MaxDiskMB)}
	}
	if r.TmpMB < 0 || r.TmpMB > MaxTmpMB {
		return &FieldError{join(field, "tmp_mb"), fmt.Sprintf("%d is out of range: give 1..%d (MiB), or omit it for no tmpfs", r.TmpMB, MaxTmpMB)}
	}
	return nil
}

// ParseTTL parses CreateRequest.TTL: "" gives 0 (use the service default),
// otherwise a Go duration between MinTTL and MaxTTL.
func ParseTTL(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, &FieldError{"ttl", fmt.Sprintf("%q is not a duration: use a Go duration such as \"30m\" or \"4h\"", s)}
	}
	if d < MinTTL || d > MaxTTL {
		return 0, &FieldError{"ttl", fmt.Sprintf("%s is out of range: give %s..%s", s, MinTTL, MaxTTL)}
	}
	return d, nil
}

func validateTaskservs(field string, list []string, required bool) error {
	if required && len(list) == 0 {
		return &FieldError{field, "at least one taskserv is required"}
	}
	if len(list) > MaxTaskservs {
		return &FieldError{field, fmt.Sprintf("at most %d taskservs", MaxTaskservs)}
	}
	for i, ts := range list {
		f := fmt.Sprintf("%s[%d]", field, i)
		if err := ValidateTaskserv(f, ts); err != nil {
			return err
		}
		for _, prev := range list[:i] {
			if prev == ts {
				return &FieldError{f, fmt.Sprintf("duplicate taskserv %q", ts)}
			}
		}
	}
	return nil
}

// validateTopology checks nodes and network; prefix is "config.topology"
// for requests and "" for templates.
func validateTopology(prefix string, nodes []Node, network Network, configVolumes []Volume) error {
	if len(nodes) == 0 {
		return &FieldError{join(prefix, "nodes"), "at least one node is required"}
	}
	if len(nodes) > MaxNodes {
		return &FieldError{join(prefix, "nodes"), fmt.Sprintf("%d nodes: at most %d", len(nodes), MaxNodes)}
	}
	for i, n := range nodes {
		np := join(prefix, fmt.Sprintf("nodes[%d]", i))
		if err := ValidateHostname(join(np, "name"), n.Name); err != nil {
			return err
		}
		for j := range i {
			if nodes[j].Name == n.Name {
				return &FieldError{join(np, "name"), fmt.Sprintf("duplicate node name %q (also nodes[%d])", n.Name, j)}
			}
		}
		if n.Role != "" {
			if err := ValidateTaskserv(join(np, "role"), n.Role); err != nil {
				return err
			}
		}
		if err := validateTaskservs(join(np, "taskservs"), n.Taskservs, false); err != nil {
			return err
		}
		if err := ValidateResources(join(np, "resources"), n.Resources); err != nil {
			return err
		}
		if err := validateVolumes(join(np, "volumes"), n.Volumes, seenVolumes(configVolumes)); err != nil {
			return err
		}
		if n.BaseImage != "" {
			if err := ValidateImage(join(np, "base_image"), n.BaseImage); err != nil {
				return err
			}
		}
	}
	if network.Subnet != "" {
		if err := ValidateSubnet(join(prefix, "network.subnet"), network.Subnet); err != nil {
			return err
		}
	}
	return nil
}

// notUsed rejects a field that does not belong to the request's type, so a
// misplaced field is not silently ignored.
func notUsed(field, typ string) error {
	return &FieldError{field, fmt.Sprintf("not used by type %s", typ)}
}

// Validate reports the first invalid field as a *FieldError. templates
// resolves config.template; nil means DefaultTemplates(). The subnet is
// checked for form only: overlap with the engine's networks is checked
// when the environment is created.
func (r CreateRequest) Validate(templates *Templates) error {
	c := r.Config
	switch c.Type {
	case TypeSingleTaskserv:
		if err := ValidateTaskserv("config.taskserv", c.Taskserv); err != nil {
			return err
		}
		if err := c.rejectFields(false, true, true); err != nil {
			return err
		}
	case TypeServerSimulation:
		if err := ValidateHostname("config.server_name", c.ServerName); err != nil {
			return err
		}
		if err := validateTaskservs("config.taskservs", c.Taskservs, true); err != nil {
			return err
		}
		if err := c.rejectFields(true, false, true); err != nil {
			return err
		}
	case TypeClusterTopology:
		if err := c.rejectFields(true, true, false); err != nil {
			return err
		}
		if c.ClusterType != "" {
			if err := ValidateName("config.cluster_type", c.ClusterType); err != nil {
				return err
			}
		}
		switch {
		case c.Topology != nil && c.Template != "":
			return &FieldError{"config.template", "give either template or topology, not both"}
		case c.Template != "":
			t, err := resolveTemplate(templates, c.Template)
			if err != nil {
				return err
			}
			for _, n := range t.Nodes {
				// The template's own volumes are valid; config.volumes must
				// not clash with them.
				seen := map[string]string{}
				for i, v := range n.Volumes {
					vf := fmt.Sprintf("template node %s volumes[%d]", n.Name, i)
					seen["name:"+v.Name], seen["path:"+v.Path] = vf, vf
				}
				if err := validateVolumes("config.volumes", c.Volumes, seen); err != nil {
					return err
				}
			}
		case c.Topology != nil:
			if err := validateTopology("config.topology", c.Topology.Nodes, c.Topology.Network, c.Volumes); err != nil {
				return err
			}
		default:
			return &FieldError{"config.topology", "required for cluster_topology: give topology or template"}
		}
	case "":
		return &FieldError{"config.type", fmt.Sprintf("must not be empty: give %s, %s or %s", TypeSingleTaskserv, TypeServerSimulation, TypeClusterTopology)}
	default:
		return &FieldError{"config.type", fmt.Sprintf("unknown type %q: give %s, %s or %s", c.Type, TypeSingleTaskserv, TypeServerSimulation, TypeClusterTopology)}
	}
	if c.BaseImage != "" {
		if err := ValidateImage("config.base_image", c.BaseImage); err != nil {
			return err
		}
	}
	if err := ValidateResources("config.resources", c.Resources); err != nil {
		return err
	}
	if err := validateVolumes("config.volumes", c.Volumes, map[string]string{}); err != nil {
		return err
	}
	if r.Infra != "" {
		if err := ValidateName("infra", r.Infra); err != nil {
			return err
		}
	}
	if r.Settings != "" {
		if err := ValidateSettings("settings", r.Settings); err != nil {
			return err
		}
	}
	if r.Priority != 0 && (r.Priority < storage.MinPriority || r.Priority > storage.MaxPriority) {
		return &FieldError{"priority", fmt.Sprintf("must be %d (most urgent) to %d; default %d", storage.MinPriority, storage.MaxPriority, storage.DefaultPriority)}
	}
	_, err := ParseTTL(r.TTL)
	return err
}

// rejectFields rejects non-empty fields of the other types: taskserv
// (single_taskserv), server_name and taskservs (server_simulation),
// cluster_type, topology and template (cluster_topology).
func (c EnvConfig) rejectFields(taskserv, server, cluster bool) error {
	switch {
	case taskserv && c.Taskserv != "":
		return notUsed("config.taskserv", c.Type)
	case server && c.ServerName != "":
		return notUsed("config.server_name", c.Type)
	case server && len(c.Taskservs) > 0:
		return notUsed("config.taskservs", c.Type)
	case cluster && c.ClusterType != "":
		return notUsed("config.cluster_type", c.Type)
	case cluster && c.Topology != nil:
		return notUsed("config.topology", c.Type)
	case cluster && c.Template != "":
		return notUsed("config.template", c.Type)
	}
	return nil
}

// resolveTemplate looks a template up, answering a *FieldError on
// config.template that lists the known names.
func resolveTemplate(templates *Templates, name string) (Template, error) {
	if templates == nil {
		templates = DefaultTemplates()
	}
	if t, ok := templates.Get(name); ok {
		return t, nil
	}
	return Template{}, &FieldError{"config.template", fmt.Sprintf("unknown template %q: known templates are %s", name, strings.Join(templates.Names(), ", "))}
}
