package testenv

import (
	"errors"
	"strings"
	"testing"
)

func res(cpu, mem int64) *Resources { return &Resources{CPUMillicores: cpu, MemoryMB: mem} }

func single() CreateRequest {
	return CreateRequest{Config: EnvConfig{Type: TypeSingleTaskserv, Taskserv: "kubernetes", BaseImage: "ubuntu:22.04", Resources: res(2000, 4096)},
		Infra: "prod-stack", AutoStart: true}
}

func server() CreateRequest {
	return CreateRequest{Config: EnvConfig{Type: TypeServerSimulation, ServerName: "web-01", Taskservs: []string{"containerd", "nginx"}}}
}

func cluster() CreateRequest {
	return CreateRequest{Config: EnvConfig{Type: TypeClusterTopology, ClusterType: "kubernetes", Topology: &Topology{
		Nodes: []Node{
			{Name: "cp-01", Role: RoleControlPlane, Taskservs: []string{"etcd", "kubernetes"}, Resources: res(1000, 512)},
			{Name: "worker-01", Role: RoleWorker, Taskservs: []string{"kubernetes"}},
		},
		Network: Network{Subnet: "10.213.5.0/24"},
	}}}
}

func fromTemplate(name string) CreateRequest {
	return CreateRequest{Config: EnvConfig{Type: TypeClusterTopology, Template: name}}
}

// fieldOf returns the *FieldError's field, or fails.
func fieldOf(t *testing.T, err error) string {
	t.Helper()
	var fe *FieldError
	if !errors.As(err, &fe) {
		t.Fatalf("want *FieldError, got %T %v", err, err)
	}
	if fe.Message == "" {
		t.Fatalf("empty message for %s", fe.Field)
	}
	return fe.Field
}

func TestValidateAccepts(t *testing.T) {
	ok := map[string]CreateRequest{
		"single":         single(),
		"server":         server(),
		"cluster":        cluster(),
		"template":       fromTemplate("kubernetes_3node"),
		"minimal single": {Config: EnvConfig{Type: TypeSingleTaskserv, Taskserv: "etcd"}},
		"ttl and keep": func() CreateRequest {
			r := single()
			r.TTL, r.KeepOnFailure, r.AutoCleanup = "90m", true, true
			return r
		}(),
		"any role": func() CreateRequest {
			r := cluster()
			r.Config.Topology.Nodes[1].Role = "ingress.gw_1"
			return r
		}(),
		"empty role and taskservs": func() CreateRequest {
			r := cluster()
			r.Config.Topology.Nodes[1].Role = ""
			r.Config.Topology.Nodes[1].Taskservs = nil
			return r
		}(),
		"no subnet": func() CreateRequest {
			r := cluster()
			r.Config.Topology.Network.Subnet = ""
			return r
		}(),
		"only memory": func() CreateRequest {
			r := single()
			r.Config.Resources = res(0, 6)
			return r
		}(),
		"image refs": func() CreateRequest {
			r := cluster()
			r.Config.BaseImage = "localhost:5000/team/busybox-test:Latest_1"
			r.Config.Topology.Nodes[0].BaseImage = "busybox@sha256:" + strings.Repeat("a", 64)
			return r
		}(),
		"max nodes": func() CreateRequest {
			r := cluster()
			r.Config.Topology.Nodes = nil
			for i := range MaxNodes {
				r.Config.Topology.Nodes = append(r.Config.Topology.Nodes, Node{Name: "n" + string(rune('a'+i%26)) + string(rune('a'+i/26))})
			}
			return r
		}(),
	}
	for name, r := range ok {
		t.Run(name, func(t *testing.T) {
			if err := r.Validate(nil); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestValidateRejects(t *testing.T) {
	type mod func(r *CreateRequest)
	cases := []struct {
		name  string
		base  func() CreateRequest
		mod   mod
		field string
	}{
		// type
		{"empty type", single, func(r *CreateRequest) { r.Config.Type = "" }, "config.type"},
		{"unknown type", single, func(r *CreateRequest) { r.Config.Type = "vm" }, "config.type"},
		// single_taskserv
		{"no taskserv", single, func(r *CreateRequest) { r.Config.Taskserv = "" }, "config.taskserv"},
		{"bad taskserv", single, func(r *CreateRequest) { r.Config.Taskserv = "Kube;rm" }, "config.taskserv"},
		{"taskserv leading dash", single, func(r *CreateRequest) { r.Config.Taskserv = "-x" }, "config.taskserv"},
		{"single with topology", single, func(r *CreateRequest) { r.Config.Topology = &Topology{} }, "config.topology"},
		{"single with server_name", single, func(r *CreateRequest) { r.Config.ServerName = "a" }, "config.server_name"},
		// server_simulation
		{"no server_name", server, func(r *CreateRequest) { r.Config.ServerName = "" }, "config.server_name"},
		{"server_name uppercase", server, func(r *CreateRequest) { r.Config.ServerName = "Web01" }, "config.server_name"},
		{"server_name underscore", server, func(r *CreateRequest) { r.Config.ServerName = "web_01" }, "config.server_name"},
		{"server_name trailing dash", server, func(r *CreateRequest) { r.Config.ServerName = "web-" }, "config.server_name"},
		{"server_name too long", server, func(r *CreateRequest) { r.Config.ServerName = strings.Repeat("a", 64) }, "config.server_name"},
		{"no taskservs", server, func(r *CreateRequest) { r.Config.Taskservs = nil }, "config.taskservs"},
		{"bad taskservs item", server, func(r *CreateRequest) { r.Config.Taskservs = []string{"ok", "b d"} }, "config.taskservs[1]"},
		{"duplicate taskservs", server, func(r *CreateRequest) { r.Config.Taskservs = []string{"a", "a"} }, "config.taskservs[1]"},
		{"server with taskserv", server, func(r *CreateRequest) { r.Config.Taskserv = "x" }, "config.taskserv"},
		{"server with template", server, func(r *CreateRequest) { r.Config.Template = "etcd_cluster" }, "config.template"},
		// cluster_topology
		{"neither topology nor template", cluster, func(r *CreateRequest) { r.Config.Topology = nil }, "config.topology"},
		{"both topology and template", cluster, func(r *CreateRequest) { r.Config.Template = "etcd_cluster" }, "config.template"},
		{"unknown template", func() CreateRequest { return fromTemplate("nope") }, func(*CreateRequest) {}, "config.template"},
		{"zero nodes", cluster, func(r *CreateRequest) { r.Config.Topology.Nodes = []Node{} }, "config.topology.nodes"},
		{"too many nodes", cluster, func(r *CreateRequest) {
			r.Config.Topology.Nodes = make([]Node, MaxNodes+1)
		}, "config.topology.nodes"},
		{"duplicate node names", cluster, func(r *CreateRequest) { r.Config.Topology.Nodes[1].Name = "cp-01" }, "config.topology.nodes[1].name"},
		{"empty node name", cluster, func(r *CreateRequest) { r.Config.Topology.Nodes[1].Name = "" }, "config.topology.nodes[1].name"},
		{"node name not hostname", cluster, func(r *CreateRequest) { r.Config.Topology.Nodes[0].Name = "cp.01" }, "config.topology.nodes[0].name"},
		{"node name uppercase", cluster, func(r *CreateRequest) { r.Config.Topology.Nodes[1].Name = "Worker" }, "config.topology.nodes[1].name"},
		{"node name leading dash", cluster, func(r *CreateRequest) { r.Config.Topology.Nodes[1].Name = "-w" }, "config.topology.nodes[1].name"},
		{"node name shell", cluster, func(r *CreateRequest) { r.Config.Topology.Nodes[1].Name = "w;reboot" }, "config.topology.nodes[1].name"},
		{"bad role", cluster, func(r *CreateRequest) { r.Config.Topology.Nodes[1].Role = "Control Plane" }, "config.topology.nodes[1].role"},
		{"bad node taskserv", cluster, func(r *CreateRequest) { r.Config.Topology.Nodes[0].Taskservs = []string{"etcd", "$(x)"} }, "config.topology.nodes[0].taskservs[1]"},
		{"bad node image", cluster, func(r *CreateRequest) { r.Config.Topology.Nodes[1].BaseImage = "ubuntu 22.04" }, "config.topology.nodes[1].base_image"},
		{"negative node cpu", cluster, func(r *CreateRequest) { r.Config.Topology.Nodes[0].Resources = res(-1, 0) }, "config.topology.nodes[0].resources.cpu_millicores"},
		{"absurd node memory", cluster, func(r *CreateRequest) { r.Config.Topology.Nodes[0].Resources = res(0, 1<<40) }, "config.topology.nodes[0].resources.memory_mb"},
		{"bad cluster_type", cluster, func(r *CreateRequest) { r.Config.ClusterType = "k8s cluster" }, "config.cluster_type"},
		{"cluster with taskservs", cluster, func(r *CreateRequest) { r.Config.Taskservs = []string{"a"} }, "config.taskservs"},
		// subnet
		{"subnet garbage", cluster, func(r *CreateRequest) { r.Config.Topology.Network.Subnet = "banana" }, "config.topology.network.subnet"},
		{"subnet no prefix", cluster, func(r *CreateRequest) { r.Config.Topology.Network.Subnet = "10.1.2.0" }, "config.topology.network.subnet"},
		{"subnet ipv6", cluster, func(r *CreateRequest) { r.Config.Topology.Network.Subnet = "fd00::/64" }, "config.topology.network.subnet"},
		{"subnet public", cluster, func(r *CreateRequest) { r.Config.Topology.Network.Subnet = "8.8.8.0/24" }, "config.topology.network.subnet"},
		{"subnet host bits", cluster, func(r *CreateRequest) { r.Config.Topology.Network.Subnet = "10.1.2.3/24" }, "config.topology.network.subnet"},
		{"subnet too large", cluster, func(r *CreateRequest) { r.Config.Topology.Network.Subnet = "10.0.0.0/8" }, "config.topology.network.subnet"},
		{"subnet too small", cluster, func(r *CreateRequest) { r.Config.Topology.Network.Subnet = "10.0.0.0/30" }, "config.topology.network.subnet"},
		{"subnet 172.32 not private", cluster, func(r *CreateRequest) { r.Config.Topology.Network.Subnet = "172.32.0.0/16" }, "config.topology.network.subnet"},
		// common fields
		{"bad base_image", single, func(r *CreateRequest) { r.Config.BaseImage = "ubuntu:22.04;rm -rf /" }, "config.base_image"},
		{"base_image uppercase repo", single, func(r *CreateRequest) { r.Config.BaseImage = "ubuntu/Foo:1" }, "config.base_image"},
		{"base_image malformed", single, func(r *CreateRequest) { r.Config.BaseImage = "ubuntu::1" }, "config.base_image"},
		{"negative cpu", single, func(r *CreateRequest) { r.Config.Resources = res(-500, 512) }, "config.resources.cpu_millicores"},
		{"absurd cpu", single, func(r *CreateRequest) { r.Config.Resources = res(64001, 512) }, "config.resources.cpu_millicores"},
		{"negative memory", single, func(r *CreateRequest) { r.Config.Resources = res(500, -1) }, "config.resources.memory_mb"},
		{"tiny memory", single, func(r *CreateRequest) { r.Config.Resources = res(500, 5) }, "config.resources.memory_mb"},
		{"absurd memory", single, func(r *CreateRequest) { r.Config.Resources = res(500, 262145) }, "config.resources.memory_mb"},
		{"tiny disk", single, func(r *CreateRequest) { r.Config.Resources = &Resources{DiskMB: 1} }, "config.resources.disk_mb"},
		{"negative tmp", single, func(r *CreateRequest) { r.Config.Resources = &Resources{TmpMB: -1} }, "config.resources.tmp_mb"},
		{"absurd node tmp", cluster, func(r *CreateRequest) { r.Config.Topology.Nodes[0].Resources = &Resources{TmpMB: MaxTmpMB + 1} }, "config.topology.nodes[0].resources.tmp_mb"},
		{"bad infra", single, func(r *CreateRequest) { r.Infra = "../etc" }, "infra"},
		{"bad ttl", single, func(r *CreateRequest) { r.TTL = "forever" }, "ttl"},
		{"ttl days unsupported", single, func(r *CreateRequest) { r.TTL = "1d" }, "ttl"},
		{"ttl too short", single, func(r *CreateRequest) { r.TTL = "59s" }, "ttl"},
		{"ttl too long", single, func(r *CreateRequest) { r.TTL = "169h" }, "ttl"},
		{"ttl negative", single, func(r *CreateRequest) { r.TTL = "-1h" }, "ttl"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := c.base()
			c.mod(&r)
			err := r.Validate(nil)
			if err == nil {
				t.Fatal("accepted")
			}
			if got := fieldOf(t, err); got != c.field {
				t.Fatalf("field %q, want %q (%v)", got, c.field, err)
			}
		})
	}
}

func TestUnknownTemplateListsKnown(t *testing.T) {
	err := fromTemplate("kubernetes_5node").Validate(DefaultTemplates())
	if err == nil || !strings.Contains(err.Error(), "kubernetes_3node") {
		t.Fatalf("want the known names in %v", err)
	}
	// A template known only to a custom set.
	custom, err := ParseTemplates("custom.toml", []byte(`
[templates.mine]
[[templates.mine.nodes]]
name = "a"
`))
	if err != nil {
		t.Fatal(err)
	}
	if err := fromTemplate("mine").Validate(custom); err != nil {
		t.Fatal(err)
	}
	if err := fromTemplate("mine").Validate(nil); err == nil {
		t.Fatal("custom template accepted by the default set")
	}
}

func TestParseTTL(t *testing.T) {
	for in, want := range map[string]string{"": "0s", "1m": "1m0s", "4h": "4h0m0s", "168h": "168h0m0s"} {
		d, err := ParseTTL(in)
		if err != nil || d.String() != want {
			t.Errorf("ParseTTL(%q) = %v, %v; want %s", in, d, err, want)
		}
	}
}
