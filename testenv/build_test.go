package testenv

import (
	"errors"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
)

const envID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"

func wantLabels(node, role string) map[string]string {
	return map[string]string{ManagedByLabel: ManagedByValue, EnvIDLabel: envID, NodeLabel: node, RoleLabel: role}
}

func TestBuildPlanSingleTaskserv(t *testing.T) {
	p, err := BuildPlan(envID, single(), nil, "busybox-test:latest")
	if err != nil {
		t.Fatal(err)
	}
	want := Plan{
		EnvID:       envID,
		NetworkName: "orch-env-" + envID,
		Labels:      map[string]string{ManagedByLabel: ManagedByValue, EnvIDLabel: envID},
		Type:        TypeSingleTaskserv,
		Nodes: []NodePlan{{
			Name:          "kubernetes",
			ContainerName: "orch-0f1e2d3c-kubernetes",
			Role:          RoleNode,
			Taskservs:     []string{"kubernetes"},
			Image:         "ubuntu:22.04",
			NanoCPUs:      2_000_000_000,
			MemoryBytes:   4096 << 20,
			Command:       []string{"/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"},
			Labels:        wantLabels("kubernetes", RoleNode),
		}},
	}
	if !reflect.DeepEqual(p, want) {
		t.Fatalf("got  %+v\nwant %+v", p, want)
	}
}

func TestBuildPlanSanitisesTaskservHostname(t *testing.T) {
	for ts, want := range map[string]string{"kubernetes": "kubernetes", "cri.o": "cri-o", "my_svc_": "my-svc", "a..b": "a--b", "x.": "x"} {
		r := CreateRequest{Config: EnvConfig{Type: TypeSingleTaskserv, Taskserv: ts}}
		p, err := BuildPlan(envID, r, nil, "busybox")
		if err != nil {
			t.Fatalf("%s: %v", ts, err)
		}
		n := p.Nodes[0]
		if n.Name != want || n.Taskservs[0] != ts {
			t.Errorf("%s: node %q taskservs %v, want %q", ts, n.Name, n.Taskservs, want)
		}
		if err := ValidateHostname("x", n.Name); err != nil {
			t.Errorf("%s: %v", ts, err)
		}
		if n.NanoCPUs != 0 || n.MemoryBytes != 0 {
			t.Errorf("%s: limits without resources: %d %d", ts, n.NanoCPUs, n.MemoryBytes)
		}
	}
}

func TestBuildPlanServerSimulation(t *testing.T) {
	p, err := BuildPlan(envID, server(), nil, "busybox-test:latest")
	if err != nil {
		t.Fatal(err)
	}
	if p.Type != TypeServerSimulation || len(p.Nodes) != 1 || p.Subnet != "" {
		t.Fatalf("plan %+v", p)
	}
	n := p.Nodes[0]
	if n.Name != "web-01" || n.ContainerName != "orch-0f1e2d3c-web-01" || n.Role != RoleServer ||
		!slices.Equal(n.Taskservs, []string{"containerd", "nginx"}) || n.Image != "busybox-test:latest" ||
		!maps.Equal(n.Labels, wantLabels("web-01", RoleServer)) {
		t.Fatalf("node %+v", n)
	}
}

func TestBuildPlanClusterTopology(t *testing.T) {
	r := cluster()
	r.Config.BaseImage = "config-image:1"
	r.Config.Resources = res(250, 128)
	r.Config.Topology.Nodes = append(r.Config.Topology.Nodes,
		Node{Name: "db", Role: "", BaseImage: "postgres:16", Resources: res(0, 1024)})
	p, err := BuildPlan(envID, r, nil, "default-image")
	if err != nil {
		t.Fatal(err)
	}
	if p.Type != TypeClusterTopology || p.ClusterType != "kubernetes" || p.Template != "" || p.Subnet != "10.213.5.0/24" {
		t.Fatalf("plan %+v", p)
	}
	type row struct {
		name, container, role, image string
		cpus, mem                    int64
	}
	want := []row{
		{"cp-01", "orch-0f1e2d3c-cp-01", RoleControlPlane, "config-image:1", 1_000_000_000, 512 << 20}, // node resources
		{"worker-01", "orch-0f1e2d3c-worker-01", RoleWorker, "config-image:1", 250_000_000, 128 << 20}, // config resources
		{"db", "orch-0f1e2d3c-db", RoleNode, "postgres:16", 250_000_000, 1024 << 20},                   // merged per field
	}
	if len(p.Nodes) != len(want) {
		t.Fatalf("%d nodes", len(p.Nodes))
	}
	for i, w := range want {
		n := p.Nodes[i]
		got := row{n.Name, n.ContainerName, n.Role, n.Image, n.NanoCPUs, n.MemoryBytes}
		if got != w {
			t.Errorf("node %d: %+v, want %+v", i, got, w)
		}
		if !maps.Equal(n.Labels, wantLabels(w.name, w.role)) {
			t.Errorf("node %d labels %v", i, n.Labels)
		}
		if !slices.Equal(n.Command, KeepAliveCommand) {
			t.Errorf("node %d command %v", i, n.Command)
		}
	}
	if !slices.Equal(p.NodeNames(), []string{"cp-01", "worker-01", "db"}) {
		t.Errorf("NodeNames %v", p.NodeNames())
	}
	if n, ok := p.Node("db"); !ok || n.Image != "postgres:16" {
		t.Errorf("Node(db) = %+v %v", n, ok)
	}
	if _, ok := p.Node("nope"); ok {
		t.Error("Node(nope) found")
	}
	// The plan does not alias the request.
	r.Config.Topology.Nodes[0].Taskservs[0] = "changed"
	if p.Nodes[0].Taskservs[0] != "etcd" {
		t.Error("plan aliases the request's taskservs")
	}
	p.Nodes[0].Command[0] = "changed"
	if KeepAliveCommand[0] != "/bin/sh" {
		t.Error("plan aliases KeepAliveCommand")
	}
}

func TestBuildPlanTemplate(t *testing.T) {
	p, err := BuildPlan(envID, fromTemplate("kubernetes_3node"), nil, "busybox-test:latest")
	if err != nil {
		t.Fatal(err)
	}
	if p.Template != "kubernetes_3node" || p.ClusterType != "kubernetes" || p.Subnet != "" {
		t.Fatalf("plan %+v", p)
	}
	want := []struct {
		name, role string
		taskservs  []string
		cpus, mem  int64
	}{
		{"cp-01", RoleControlPlane, []string{"containerd", "etcd", "kubernetes"}, 1_000_000_000, 512 << 20},
		{"worker-01", RoleWorker, []string{"containerd", "kubernetes"}, 500_000_000, 256 << 20},
		{"worker-02", RoleWorker, []string{"containerd", "kubernetes"}, 500_000_000, 256 << 20},
	}
	if len(p.Nodes) != 3 {
		t.Fatalf("%d nodes", len(p.Nodes))
	}
	for i, w := range want {
		n := p.Nodes[i]
		if n.Name != w.name || n.Role != w.role || !slices.Equal(n.Taskservs, w.taskservs) || n.NanoCPUs != w.cpus ||
			n.MemoryBytes != w.mem || n.Image != "busybox-test:latest" || n.ContainerName != "orch-0f1e2d3c-"+w.name ||
			!maps.Equal(n.Labels, wantLabels(w.name, w.role)) {
			t.Errorf("node %d: %+v", i, n)
		}
	}
	// The request's cluster_type and base_image win over the template's defaults.
	r := fromTemplate("etcd_cluster")
	r.Config.ClusterType, r.Config.BaseImage = "etcd-v3", "quay.io/coreos/etcd:v3.5.0"
	p, err = BuildPlan(envID, r, nil, "busybox")
	if err != nil {
		t.Fatal(err)
	}
	if p.ClusterType != "etcd-v3" || p.Nodes[2].Name != "etcd-03" || p.Nodes[2].Image != "quay.io/coreos/etcd:v3.5.0" {
		t.Fatalf("plan %+v", p)
	}
}

func TestBuildPlanErrors(t *testing.T) {
	// Request errors are field errors.
	r := cluster()
	r.Config.Topology.Nodes[1].Name = "cp-01"
	_, err := BuildPlan(envID, r, nil, "busybox")
	if f := fieldOf(t, err); f != "config.topology.nodes[1].name" {
		t.Fatal(f)
	}
	// No image anywhere: the caller must give one.
	r = server()
	_, err = BuildPlan(envID, r, nil, "")
	if f := fieldOf(t, err); f != "config.base_image" {
		t.Fatal(f)
	}
	r.Config.BaseImage = "busybox"
	if _, err := BuildPlan(envID, r, nil, ""); err != nil {
		t.Fatal(err)
	}
	// Caller bugs are not field errors.
	var fe *FieldError
	for _, c := range []struct{ id, image string }{{"", "busybox"}, {"Bad ID", "busybox"}, {envID, "not an image!"}} {
		_, err := BuildPlan(c.id, server(), nil, c.image)
		if err == nil || errors.As(err, &fe) {
			t.Errorf("%q %q: %v", c.id, c.image, err)
		}
	}
	// A short id is used whole in container names.
	p, err := BuildPlan("env1", server(), nil, "busybox")
	if err != nil || p.Nodes[0].ContainerName != "orch-env1-web-01" || p.NetworkName != "orch-env-env1" {
		t.Fatalf("%+v %v", p, err)
	}
}

func TestBuildPlanIsDeterministic(t *testing.T) {
	a, _ := BuildPlan(envID, fromTemplate("postgres_redis"), nil, "busybox")
	b, _ := BuildPlan(envID, fromTemplate("postgres_redis"), nil, "busybox")
	if !reflect.DeepEqual(a, b) {
		t.Fatal("plans differ")
	}
	if got := strings.Join(a.NodeNames(), ","); got != "postgres,redis" {
		t.Fatal(got)
	}
}

func TestBuildPlanDiskAndTmpLimits(t *testing.T) {
	req := CreateRequest{Config: EnvConfig{Type: TypeClusterTopology, Resources: &Resources{DiskMB: 512, TmpMB: 32},
		Topology: &Topology{Nodes: []Node{
			{Name: "a", Resources: &Resources{TmpMB: 8}},
			{Name: "b"},
		}}}}
	if err := req.Validate(nil); err != nil {
		t.Fatal(err)
	}
	p, err := BuildPlan(envID, req, nil, "busybox")
	if err != nil {
		t.Fatal(err)
	}
	if p.Nodes[0].DiskBytes != 512<<20 || p.Nodes[0].TmpBytes != 8<<20 || p.Nodes[1].TmpBytes != 32<<20 {
		t.Errorf("limits: %+v", p.Nodes)
	}
}

func TestApplyDefaultLimits(t *testing.T) {
	p := Plan{Nodes: []NodePlan{{Name: "a"}, {Name: "b", NanoCPUs: 250_000_000, MemoryBytes: 64 << 20}}}
	p.ApplyDefaultLimits(DefaultNodeCPUMillicores, DefaultNodeMemoryMB)
	if p.Nodes[0].NanoCPUs != 1_000_000_000 || p.Nodes[0].MemoryBytes != 512<<20 {
		t.Errorf("defaults not applied: %+v", p.Nodes[0])
	}
	if p.Nodes[1].NanoCPUs != 250_000_000 || p.Nodes[1].MemoryBytes != 64<<20 {
		t.Errorf("a node's own limits changed: %+v", p.Nodes[1])
	}
	q := Plan{Nodes: []NodePlan{{Name: "a"}}}
	q.ApplyDefaultLimits(0, 0)
	if q.Nodes[0].NanoCPUs != 0 || q.Nodes[0].MemoryBytes != 0 {
		t.Errorf("0 leaves nodes unlimited: %+v", q.Nodes[0])
	}
}
