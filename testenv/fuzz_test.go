package testenv

import (
	"encoding/json"
	"testing"
)

// FuzzCreateRequest: any JSON a client sends as a create request is either
// refused by Validate or becomes a plan whose names are all valid; nothing
// panics. `go test -fuzz FuzzCreateRequest ./testenv` explores.
func FuzzCreateRequest(f *testing.F) {
	for _, s := range []string{
		`{"config":{"type":"single_taskserv","taskserv":"etcd"}}`,
		`{"config":{"type":"server_simulation","server_name":"web-01","taskservs":["a","b"]},"idempotence":true}`,
		`{"config":{"type":"cluster_topology","template":"kubernetes_3node"}}`,
		`{"config":{"type":"cluster_topology","topology":{"nodes":[{"name":"cp","role":"control-plane","taskservs":["etcd"],"resources":{"disk_mb":64,"tmp_mb":8}}],"network":{"subnet":"10.9.0.0/24"}}}}`,
		`{"config":{"type":"cluster_topology","topology":{"nodes":[{"name":"-x"}]}}}`,
		`{"config":{"type":"single_taskserv","taskserv":"etcd","volumes":[{"name":"d","path":"/../etc"}]},"ttl":"1000h"}`,
	} {
		f.Add([]byte(s))
	}
	templates := DefaultTemplates()
	f.Fuzz(func(t *testing.T, data []byte) {
		var req CreateRequest
		if json.Unmarshal(data, &req) != nil {
			return
		}
		if req.Validate(templates) != nil {
			return
		}
		p, err := BuildPlan("8d3c7a10-4b2d-4f6e-8a1c-5d7e9f0a1b99", req, templates, "busybox:latest")
		if err != nil {
			return
		}
		for _, n := range p.Nodes {
			if ValidateHostname("node", n.Name) != nil {
				t.Fatalf("a valid request made node name %q", n.Name)
			}
			for _, ts := range n.Taskservs {
				if ValidateTaskserv("taskserv", ts) != nil {
					t.Fatalf("a valid request made taskserv %q", ts)
				}
			}
		}
	})
}

// FuzzParseChangeReport: a result file's content never panics the parser,
// and what it accepts is bounded.
func FuzzParseChangeReport(f *testing.F) {
	for _, s := range []string{`{"changed":false}`, `{"changed":true,"resources":["a",{"k":1},[1,2]]}`, `{"changed":"x"}`, `[]`, ``, `{"changed":true,"resources":null}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		rep, err := ParseChangeReport(data)
		if err != nil {
			return
		}
		if len(rep.Resources) > maxReportResources+1 {
			t.Fatalf("%d resources kept", len(rep.Resources))
		}
		for _, r := range rep.Resources {
			if len(r) > maxReportResource+3 {
				t.Fatalf("resource of %d bytes kept", len(r))
			}
		}
	})
}
