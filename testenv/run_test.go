package testenv

import (
	"os"
	"os/exec"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func threeNodePlan(t *testing.T) Plan {
	t.Helper()
	p, err := BuildPlan(envID, fromTemplate("kubernetes_3node"), nil, "busybox")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRunRequestValidate(t *testing.T) {
	plan := threeNodePlan(t)
	good := []RunRequest{
		{},
		{TimeoutSeconds: 3600},
		{Tests: []TestSpec{{Name: "uname", Command: []string{"uname", "-a"}}}},
		{Tests: []TestSpec{
			{Name: "a", Node: "cp-01", Command: []string{"true"}, TimeoutSeconds: 1},
			{Name: "a", Node: "worker-01", Command: []string{"true"}, TimeoutSeconds: 3600},
			{Name: "b", Command: []string{"sh", "-c", "echo hi; exit 0"}},
		}},
		{Tests: []TestSpec{{Name: "etcd installed", Node: "cp-01", Taskserv: "etcd"}}},
	}
	for i, r := range good {
		if err := r.Validate(plan); err != nil {
			t.Errorf("good %d: %v", i, err)
		}
	}
	ok := func(n string) TestSpec { return TestSpec{Name: n, Command: []string{"true"}} }
	many := make([]TestSpec, MaxTests+1)
	for i := range many {
		many[i] = ok("t" + strings.Repeat("x", i))
	}
	bad := []struct {
		name  string
		req   RunRequest
		field string
	}{
		{"run timeout negative", RunRequest{TimeoutSeconds: -1}, "timeout_seconds"},
		{"run timeout absurd", RunRequest{TimeoutSeconds: 3601}, "timeout_seconds"},
		{"too many tests", RunRequest{Tests: many}, "tests"},
		{"no name", RunRequest{Tests: []TestSpec{ok("a"), {Command: []string{"true"}}}}, "tests[1].name"},
		{"control char name", RunRequest{Tests: []TestSpec{ok("a\nb")}}, "tests[0].name"},
		{"long name", RunRequest{Tests: []TestSpec{ok(strings.Repeat("n", 129))}}, "tests[0].name"},
		{"unknown node", RunRequest{Tests: []TestSpec{ok("a"), {Name: "b", Node: "worker-03", Command: []string{"true"}}}}, "tests[1].node"},
		{"duplicate on all nodes", RunRequest{Tests: []TestSpec{ok("a"), {Name: "a", Node: "cp-01", Command: []string{"true"}}}}, "tests[1].name"},
		{"duplicate on one node", RunRequest{Tests: []TestSpec{{Name: "a", Node: "cp-01", Command: []string{"x"}}, {Name: "a", Node: "cp-01", Command: []string{"y"}}}}, "tests[1].name"},
		{"no command", RunRequest{Tests: []TestSpec{{Name: "a"}}}, "tests[0].command"},
		{"command and taskserv", RunRequest{Tests: []TestSpec{{Name: "a", Command: []string{"true"}, Taskserv: "etcd"}}}, "tests[0].taskserv"},
		{"bad taskserv", RunRequest{Tests: []TestSpec{{Name: "a", Taskserv: "../etc"}}}, "tests[0].taskserv"},
		{"empty program", RunRequest{Tests: []TestSpec{{Name: "a", Command: []string{""}}}}, "tests[0].command[0]"},
		{"NUL in arg", RunRequest{Tests: []TestSpec{{Name: "a", Command: []string{"echo", "a\x00b"}}}}, "tests[0].command[1]"},
		{"huge argv", RunRequest{Tests: []TestSpec{{Name: "a", Command: []string{"echo", strings.Repeat("x", 200<<10)}}}}, "tests[0].command"},
		{"test timeout negative", RunRequest{Tests: []TestSpec{{Name: "a", Command: []string{"true"}, TimeoutSeconds: -5}}}, "tests[0].timeout_seconds"},
		{"test timeout absurd", RunRequest{Tests: []TestSpec{{Name: "a", Command: []string{"true"}, TimeoutSeconds: 7200}}}, "tests[0].timeout_seconds"},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			err := c.req.Validate(plan)
			if err == nil {
				t.Fatal("accepted")
			}
			if f := fieldOf(t, err); f != c.field {
				t.Fatalf("field %q, want %q (%v)", f, c.field, err)
			}
		})
	}
	if (RunRequest{}).RunTimeoutSeconds() != DefaultRunTimeoutSeconds || (RunRequest{TimeoutSeconds: 7}).RunTimeoutSeconds() != 7 {
		t.Error("RunTimeoutSeconds")
	}
}

func TestExpandTests(t *testing.T) {
	plan := threeNodePlan(t)
	req := RunRequest{Tests: []TestSpec{
		{Name: "all", Command: []string{"uptime"}},
		{Name: "one", Node: "worker-02", Command: []string{"sh", "-c", "exit 1"}, TimeoutSeconds: 5},
	}}
	got := ExpandTests(req, plan)
	want := []TestSpec{
		{Name: "all", Node: "cp-01", Command: []string{"uptime"}, TimeoutSeconds: DefaultTestTimeoutSeconds},
		{Name: "all", Node: "worker-01", Command: []string{"uptime"}, TimeoutSeconds: DefaultTestTimeoutSeconds},
		{Name: "all", Node: "worker-02", Command: []string{"uptime"}, TimeoutSeconds: DefaultTestTimeoutSeconds},
		{Name: "one", Node: "worker-02", Command: []string{"sh", "-c", "exit 1"}, TimeoutSeconds: 5},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}
	got[0].Command[0] = "changed"
	if got[1].Command[0] != "uptime" || req.Tests[0].Command[0] != "uptime" {
		t.Fatal("expanded tests share argv")
	}
	// No tests: the default checks.
	if got := ExpandTests(RunRequest{}, plan); !reflect.DeepEqual(got, plan.DefaultTests()) || len(got) == 0 {
		t.Fatalf("defaults: %+v", got)
	}
}

func TestDefaultChecks(t *testing.T) {
	plan := threeNodePlan(t)
	cp := plan.Nodes[0]
	checks := DefaultChecks(plan, cp)
	var names []string
	for _, c := range checks {
		names = append(names, c.Name)
		if c.Node != "cp-01" || c.TimeoutSeconds <= 0 {
			t.Errorf("check %+v", c)
		}
		// Taskservs are checked by the provisioning script, the rest by
		// a command: never both.
		if strings.HasPrefix(c.Name, "taskserv:") != (c.Taskserv != "" && len(c.Command) == 0) ||
			(c.Taskserv == "" && len(c.Command) < 2) {
			t.Errorf("check %+v", c)
		}
	}
	want := []string{"hostname", "ping:worker-01", "ping:worker-02", "taskserv:containerd", "taskserv:etcd", "taskserv:kubernetes"}
	if !slices.Equal(names, want) {
		t.Fatalf("names %v", names)
	}
	// Names are arguments, not spliced into scripts.
	for _, c := range checks {
		if c.Taskserv != "" {
			if want := "taskserv:" + c.Taskserv; c.Name != want {
				t.Errorf("%s checks taskserv %s", c.Name, c.Taskserv)
			}
			continue
		}
		last := c.Command[len(c.Command)-1]
		if strings.Contains(c.Command[2], last) {
			t.Errorf("%s: %q spliced into the script", c.Name, last)
		}
	}
	if c := checks[1].Command; c[len(c)-1] != "worker-01" {
		t.Errorf("ping argv %v", c)
	}
	// One node: no pings.
	single, _ := BuildPlan(envID, single(), nil, "busybox")
	if got := DefaultChecks(single, single.Nodes[0]); len(got) != 2 || got[1].Name != "taskserv:kubernetes" {
		t.Errorf("single: %+v", got)
	}
	if got := CheckArgs("etcd", "lab", "./s.yaml", "cp-01"); !slices.Equal(got, []string{"taskserv", "check", "etcd", "--infra", "lab", "--settings", "./s.yaml", "cp-01"}) {
		t.Errorf("check args %v", got)
	}
	all := plan.DefaultTests()
	if len(all) != 6+5+5 {
		t.Errorf("%d default tests", len(all))
	}
}

// TestDefaultChecksRunLocally runs the check scripts with the local sh to
// catch syntax and quoting errors (the real runs are in the Docker e2e).
func TestDefaultChecksRunLocally(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	host, err := os.Hostname()
	if err != nil {
		t.Skip(err)
	}
	run := func(argv []string) (string, error) {
		out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
		return string(out), err
	}
	plan := Plan{Nodes: []NodePlan{{Name: host, Taskservs: []string{"sh"}}, {Name: "localhost"}}}
	for _, c := range DefaultChecks(plan, plan.Nodes[0]) {
		if strings.HasPrefix(c.Name, "ping:") || c.Taskserv != "" {
			continue // ping needs a resolvable name; taskserv checks need a node (driver/docker tests)
		}
		out, err := run(c.Command)
		if err != nil {
			t.Errorf("%s: %v: %s", c.Name, err, out)
		}
	}
	// A wrong hostname fails and says why.
	wrong := DefaultChecks(Plan{Nodes: []NodePlan{{Name: "not-" + host}}}, NodePlan{Name: "not-" + host})[0]
	out, err := run(wrong.Command)
	if err == nil || !strings.Contains(out, "want not-"+host) {
		t.Errorf("wrong hostname: %v %s", err, out)
	}
}

func TestParseChangeReport(t *testing.T) {
	rep, err := ParseChangeReport([]byte(`{"changed": true, "resources": ["/etc/a", {"kind": "file", "path": "/etc/b"}], "extra": 1}`))
	if err != nil || !rep.Changed || !slices.Equal(rep.Resources, []string{"/etc/a", `{"kind":"file","path":"/etc/b"}`}) {
		t.Fatalf("%+v %v", rep, err)
	}
	if rep, err := ParseChangeReport([]byte(`{"changed": false}`)); err != nil || rep.Changed || rep.Resources != nil {
		t.Fatalf("%+v %v", rep, err)
	}
	for _, bad := range []string{`{"resources": []}`, `not json`, `{"changed": "no"}`, `[]`} {
		if _, err := ParseChangeReport([]byte(bad)); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
	many := `{"changed": true, "resources": [` + strings.TrimSuffix(strings.Repeat(`"r",`, 150), ",") + `]}`
	rep, err = ParseChangeReport([]byte(many))
	if err != nil || len(rep.Resources) != 101 || rep.Resources[100] != "... 50 more" {
		t.Fatalf("many: %d %v", len(rep.Resources), err)
	}
}

func TestIdempotenceCheckEvaluate(t *testing.T) {
	yes, no := true, false
	c := IdempotenceCheck{Results: []TaskservResult{
		{Node: "n1", Taskserv: "a", Status: "completed", Changed: &no},
		{Node: "n1", Taskserv: "b", Status: "completed", Changed: &yes, Resources: []string{"/etc/b.conf"}},
		{Node: "n2", Taskserv: "a", Status: "completed"},
		{Node: "n2", Taskserv: "c", Status: "failed", Error: "exit code 1"},
		{Node: "n2", Taskserv: "d", Status: "pending"},
	}}
	c.Evaluate()
	if c.Passed || len(c.Failures) != 3 {
		t.Fatalf("%+v", c)
	}
	for i, want := range []string{"taskserv b on node n1: changed on the second converge: /etc/b.conf", "taskserv a on node n2: reported nothing", "taskserv c on node n2: the second converge failed: exit code 1"} {
		if !strings.Contains(c.Failures[i], want) {
			t.Errorf("failure %d %q lacks %q", i, c.Failures[i], want)
		}
	}
	if s := c.Summary(); !strings.HasPrefix(s, "idempotence failed: ") || !strings.Contains(s, "/etc/b.conf") {
		t.Errorf("summary %q", s)
	}
	c.Results = c.Results[:1]
	c.Evaluate()
	if !c.Passed || c.Summary() != "" {
		t.Errorf("%+v", c)
	}
}
