package testenv

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/provisioning/orchestrator/config"
)

var builtin = []string{"containerd_test", "etcd_cluster", "kubernetes_3node", "kubernetes_single", "postgres_redis"}

func TestShippedTemplates(t *testing.T) {
	// The embedded bytes are the repository file.
	data, err := os.ReadFile("../config/test-topologies.toml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data, config.TestTopologies) {
		t.Fatal("config.TestTopologies differs from config/test-topologies.toml")
	}
	fromFile, err := ParseTemplates("../config/test-topologies.toml", data)
	if err != nil {
		t.Fatal(err)
	}
	for _, ts := range []*Templates{DefaultTemplates(), fromFile} {
		if got := ts.Names(); !slices.Equal(got, builtin) {
			t.Fatalf("names %v", got)
		}
		list := ts.List()
		if len(list) != len(builtin) {
			t.Fatalf("%d templates", len(list))
		}
		for i, tpl := range list {
			if tpl.Name != builtin[i] || tpl.Description == "" || tpl.ClusterType == "" || tpl.Network.Subnet != "" {
				t.Errorf("template %+v", tpl)
			}
			if err := tpl.validate(); err != nil {
				t.Errorf("%s: %v", tpl.Name, err)
			}
			for _, n := range tpl.Nodes {
				if n.Resources == nil || n.Resources.CPUMillicores == 0 || n.Resources.MemoryMB == 0 || len(n.Taskservs) == 0 || n.Role == "" {
					t.Errorf("%s/%s: %+v", tpl.Name, n.Name, n)
				}
			}
			// Every template builds.
			if _, err := BuildPlan(envID, fromTemplate(tpl.Name), ts, "busybox"); err != nil {
				t.Errorf("%s: %v", tpl.Name, err)
			}
		}
	}
	ts := DefaultTemplates()
	nodes := func(name string) (names, roles []string) {
		tpl, ok := ts.Get(name)
		if !ok {
			t.Fatalf("no %s", name)
		}
		for _, n := range tpl.Nodes {
			names, roles = append(names, n.Name), append(roles, n.Role)
		}
		return
	}
	check := func(name string, wantNames, wantRoles []string) {
		t.Helper()
		names, roles := nodes(name)
		if !slices.Equal(names, wantNames) || !slices.Equal(roles, wantRoles) {
			t.Errorf("%s: %v %v", name, names, roles)
		}
	}
	check("kubernetes_3node", []string{"cp-01", "worker-01", "worker-02"}, []string{"control-plane", "worker", "worker"})
	check("etcd_cluster", []string{"etcd-01", "etcd-02", "etcd-03"}, []string{"etcd", "etcd", "etcd"})
	check("postgres_redis", []string{"postgres", "redis"}, []string{"database", "cache"})
	if n, _ := nodes("kubernetes_single"); len(n) != 1 {
		t.Errorf("kubernetes_single: %v", n)
	}
	if n, _ := nodes("containerd_test"); len(n) != 1 {
		t.Errorf("containerd_test: %v", n)
	}
	k3, _ := ts.Get("kubernetes_3node")
	if !slices.Equal(k3.Nodes[0].Taskservs, []string{"containerd", "etcd", "kubernetes"}) ||
		!slices.Equal(k3.Nodes[1].Taskservs, []string{"containerd", "kubernetes"}) || k3.Source != BuiltinSource {
		t.Errorf("kubernetes_3node: %+v", k3)
	}
}

func TestTemplatesJSON(t *testing.T) {
	tpl, _ := DefaultTemplates().Get("postgres_redis")
	b, err := json.Marshal(tpl)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"name":"postgres_redis"`, `"cluster_type":`, `"description":`, `"nodes":[`, `"role":"database"`, `"resources":{"cpu_millicores":500,"memory_mb":512}`, `"network":{"subnet":""}`, `"source":`} {
		if !strings.Contains(string(b), key) {
			t.Errorf("no %s in %s", key, b)
		}
	}
}

func TestTemplatesGetReturnsCopies(t *testing.T) {
	ts := DefaultTemplates()
	a, _ := ts.Get("kubernetes_3node")
	a.Nodes[0].Name = "changed"
	a.Nodes[0].Taskservs[0] = "changed"
	a.Nodes[0].Resources.MemoryMB = 1
	b, _ := ts.Get("kubernetes_3node")
	if b.Nodes[0].Name != "cp-01" || b.Nodes[0].Taskservs[0] != "containerd" || b.Nodes[0].Resources.MemoryMB != 512 {
		t.Fatalf("Get aliases: %+v", b.Nodes[0])
	}
	l := ts.List()
	l[0].Nodes[0].Name = "changed"
	if ts.List()[0].Nodes[0].Name == "changed" {
		t.Fatal("List aliases")
	}
	if _, ok := ts.Get("nope"); ok {
		t.Fatal("Get(nope)")
	}
	var nilSet *Templates
	if _, ok := nilSet.Get("x"); ok || len(nilSet.List()) != 0 || nilSet.Names() != nil {
		t.Fatal("nil set not empty")
	}
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadTemplatesOverride(t *testing.T) {
	first := writeFile(t, "first.toml", `
[templates.etcd_cluster]
cluster_type = "etcd"
description = "five members"
[[templates.etcd_cluster.nodes]]
name = "e1"
[[templates.etcd_cluster.nodes]]
name = "e2"

[templates.web]
description = "one web server"
[templates.web.network]
subnet = "192.168.77.0/24"
[[templates.web.nodes]]
name = "web"
role = "server"
taskservs = ["nginx"]
base_image = "nginx:1.27"
resources = { memory_mb = 64 }
`)
	second := writeFile(t, "second.toml", `
[templates.web]
description = "replaced"
[[templates.web.nodes]]
name = "web-2"
`)
	ts, err := LoadTemplates(first)
	if err != nil {
		t.Fatal(err)
	}
	if got := ts.Names(); !slices.Equal(got, []string{"containerd_test", "etcd_cluster", "kubernetes_3node", "kubernetes_single", "postgres_redis", "web"}) {
		t.Fatalf("names %v", got)
	}
	etcd, _ := ts.Get("etcd_cluster")
	if etcd.Description != "five members" || len(etcd.Nodes) != 2 || etcd.Source != first {
		t.Fatalf("etcd_cluster not overridden: %+v", etcd)
	}
	p, err := BuildPlan(envID, fromTemplate("web"), ts, "busybox")
	if err != nil {
		t.Fatal(err)
	}
	if p.Subnet != "192.168.77.0/24" || p.Nodes[0].Image != "nginx:1.27" || p.Nodes[0].MemoryBytes != 64<<20 || p.Nodes[0].NanoCPUs != 0 {
		t.Fatalf("plan %+v", p)
	}
	// The default set is untouched.
	if d, _ := DefaultTemplates().Get("etcd_cluster"); len(d.Nodes) != 3 {
		t.Fatal("defaults changed")
	}
	// A later file wins.
	ts, err = LoadTemplates(first, second)
	if err != nil {
		t.Fatal(err)
	}
	web, _ := ts.Get("web")
	if web.Description != "replaced" || web.Nodes[0].Name != "web-2" || web.Source != second {
		t.Fatalf("web %+v", web)
	}
	// No files: the built-ins.
	ts, err = LoadTemplates()
	if err != nil || !slices.Equal(ts.Names(), builtin) {
		t.Fatalf("%v %v", ts.Names(), err)
	}
}

func TestLoadTemplatesErrors(t *testing.T) {
	cases := []struct {
		name, content string
		want          []string
	}{
		{"syntax", "[templates.x\n", nil},
		{"empty", "# nothing\n", []string{"no templates"}},
		{"unknown key", "[templates.x]\ncolour = \"red\"\n[[templates.x.nodes]]\nname = \"a\"\n", []string{"colour"}},
		{"unknown node key", "[templates.x]\n[[templates.x.nodes]]\nname = \"a\"\ncpu = 1\n", []string{"cpu"}},
		{"no nodes", "[templates.x]\ndescription = \"d\"\n", []string{`template "x"`, "nodes"}},
		{"duplicate nodes", "[templates.x]\n[[templates.x.nodes]]\nname = \"a\"\n[[templates.x.nodes]]\nname = \"a\"\n", []string{`template "x"`, "nodes[1].name", "duplicate"}},
		{"bad node name", "[templates.x]\n[[templates.x.nodes]]\nname = \"A_1\"\n", []string{`template "x"`, "nodes[0].name"}},
		{"bad resources", "[templates.x]\n[[templates.x.nodes]]\nname = \"a\"\nresources = { cpu_millicores = -5 }\n", []string{`template "x"`, "nodes[0].resources.cpu_millicores"}},
		{"bad subnet", "[templates.x]\n[templates.x.network]\nsubnet = \"8.8.8.0/24\"\n[[templates.x.nodes]]\nname = \"a\"\n", []string{`template "x"`, "network.subnet"}},
		{"bad template name", "[templates.\"a b\"]\n[[templates.\"a b\".nodes]]\nname = \"a\"\n", []string{`template "a b"`, "name"}},
		{"bad cluster_type", "[templates.x]\ncluster_type = \"a b\"\n[[templates.x.nodes]]\nname = \"a\"\n", []string{`template "x"`, "cluster_type"}},
		{"wrong type", "[templates.x]\nnodes = 3\n", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := writeFile(t, "bad.toml", c.content)
			_, err := LoadTemplates(p)
			if err == nil {
				t.Fatal("accepted")
			}
			msg := err.Error()
			if !strings.Contains(msg, p) {
				t.Errorf("error does not name the file: %v", err)
			}
			for _, w := range c.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q lacks %q", msg, w)
				}
			}
		})
	}
	if _, err := LoadTemplates(filepath.Join(t.TempDir(), "missing.toml")); err == nil || !strings.Contains(err.Error(), "missing.toml") {
		t.Fatalf("missing file: %v", err)
	}
}
