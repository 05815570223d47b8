package testenv

import (
	"fmt"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Test run limits.
const (
	// MaxTests bounds the tests of one run request (before expansion to
	// every node).
	MaxTests = 64
	// DefaultTestTimeoutSeconds applies to a test without timeout_seconds.
	DefaultTestTimeoutSeconds = 60
	// DefaultRunTimeoutSeconds applies to a run without timeout_seconds.
	DefaultRunTimeoutSeconds = 300
	// MaxTimeoutSeconds bounds both timeouts.
	MaxTimeoutSeconds = 3600
	// maxTestName bounds a test name.
	maxTestName = 128
	// maxArgs and maxArgvBytes bound one test's command.
	maxArgs      = 1024
	maxArgvBytes = 128 << 10
)

// Timeouts of the default checks.
const (
	checkTimeoutSeconds = 30
	pingTimeoutSeconds  = 10
)

// TestSpec is one command to exec in one node's container. In a RunRequest
// an empty Node means every node; after ExpandTests Node is always set.
type TestSpec struct {
	Name string `json:"name"`
	Node string `json:"node"`
	// Command is the argv, run without a shell unless it invokes one.
	// Give either Command or Taskserv.
	Command []string `json:"command"`
	// Taskserv, instead of Command, checks that taskserv with the user's
	// provisioning script inside the node: `taskserv check <Taskserv>
	// --infra <infra> --settings <settings> <node>` (exit 0 = installed),
	// run by the pinned nu the converge step copied in.
	Taskserv string `json:"taskserv,omitempty"`
	// TimeoutSeconds bounds the exec; 0 in a request means
	// DefaultTestTimeoutSeconds.
	TimeoutSeconds int `json:"timeout_seconds"`
}

// RunRequest is the body of POST /test/environments/{id}/run. No tests
// means the environment's default checks (Plan.DefaultTests).
type RunRequest struct {
	Tests []TestSpec `json:"tests"`
	// TimeoutSeconds bounds the whole run; 0 means DefaultRunTimeoutSeconds.
	TimeoutSeconds int `json:"timeout_seconds"`
}

// RunTimeoutSeconds is the run's timeout with the default applied.
func (r RunRequest) RunTimeoutSeconds() int {
	if r.TimeoutSeconds == 0 {
		return DefaultRunTimeoutSeconds
	}
	return r.TimeoutSeconds
}

// Validate reports the first invalid field as a *FieldError ("tests[0].node",
// ...). plan is the environment's: a test's node must be one of its nodes.
func (r RunRequest) Validate(plan Plan) error {
	nodes := plan.NodeNames()
	if err := validateTimeout("timeout_seconds", r.TimeoutSeconds); err != nil {
		return err
	}
	if len(r.Tests) > MaxTests {
		return &FieldError{"tests", fmt.Sprintf("%d tests: at most %d", len(r.Tests), MaxTests)}
	}
	for i, t := range r.Tests {
		f := fmt.Sprintf("tests[%d]", i)
		if err := validateTestName(f+".name", t.Name); err != nil {
			return err
		}
		if t.Node != "" && !slices.Contains(nodes, t.Node) {
			return &FieldError{f + ".node", fmt.Sprintf("unknown node %q: the environment's nodes are %s (or leave it empty for all nodes)", t.Node, strings.Join(nodes, ", "))}
		}
		for j, prev := range r.Tests[:i] {
			if prev.Name == t.Name && (prev.Node == "" || t.Node == "" || prev.Node == t.Node) {
				return &FieldError{f + ".name", fmt.Sprintf("duplicate test %q on the same node as tests[%d]", t.Name, j)}
			}
		}
		switch {
		case t.Taskserv != "" && len(t.Command) > 0:
			return &FieldError{f + ".taskserv", "give either command or taskserv, not both"}
		case t.Taskserv != "":
			if err := ValidateTaskserv(f+".taskserv", t.Taskserv); err != nil {
				return err
			}
		default:
			if err := validateArgv(f+".command", t.Command); err != nil {
				return err
			}
		}
		if err := validateTimeout(f+".timeout_seconds", t.TimeoutSeconds); err != nil {
			return err
		}
	}
	return nil
}

func validateTimeout(field string, s int) error {
	if s < 0 || s > MaxTimeoutSeconds {
		return &FieldError{field, fmt.Sprintf("%d is out of range: give 1..%d seconds, or omit it for the default", s, MaxTimeoutSeconds)}
	}
	return nil
}

func validateTestName(field, name string) error {
	if name == "" {
		return &FieldError{field, "must not be empty"}
	}
	if len(name) > maxTestName {
		return &FieldError{field, fmt.Sprintf("longer than %d bytes", maxTestName)}
	}
	if !utf8.ValidString(name) || strings.IndexFunc(name, unicode.IsControl) >= 0 {
		return &FieldError{field, "must be printable UTF-8 without control characters"}
	}
	return nil
}

func validateArgv(field string, argv []string) error {
	if len(argv) == 0 {
		return &FieldError{field, "must not be empty: give the argv, e.g. [\"sh\", \"-c\", \"...\"]"}
	}
	if len(argv) > maxArgs {
		return &FieldError{field, fmt.Sprintf("at most %d arguments", maxArgs)}
	}
	if argv[0] == "" {
		return &FieldError{field + "[0]", "the program must not be empty"}
	}
	total := 0
	for i, a := range argv {
		if strings.IndexByte(a, 0) >= 0 {
			return &FieldError{fmt.Sprintf("%s[%d]", field, i), "must not contain NUL bytes"}
		}
		total += len(a)
	}
	if total > maxArgvBytes {
		return &FieldError{field, fmt.Sprintf("longer than %d bytes in total", maxArgvBytes)}
	}
	return nil
}

// ExpandTests turns a (validated) run request into one TestSpec per node
// and test: a test without node runs on every node, in plan order; default
// timeouts are filled in. No tests means plan.DefaultTests().
func ExpandTests(req RunRequest, plan Plan) []TestSpec {
	if len(req.Tests) == 0 {
		return plan.DefaultTests()
	}
	var out []TestSpec
	for _, t := range req.Tests {
		if t.TimeoutSeconds == 0 {
			t.TimeoutSeconds = DefaultTestTimeoutSeconds
		}
		nodes := []string{t.Node}
		if t.Node == "" {
			nodes = plan.NodeNames()
		}
		for _, n := range nodes {
			s := t
			s.Node = n
			s.Command = slices.Clone(t.Command)
			out = append(out, s)
		}
	}
	return out
}

// DefaultChecks are a node's default tests, run when a run request names
// none:
//
//   - "hostname": the container's hostname is the node name;
//   - "ping:<peer>" per other node of plan: the peer is reachable by name on the
//     environment's network (ping when the image has it, as busybox does;
//     otherwise, e.g. on ubuntu images, name resolution via getent);
//   - "taskserv:<ts>" per taskserv: the provisioning script's `taskserv
//     check <ts>` inside the node (TestSpec.Taskserv), which fails unless
//     the converge step really installed it.
//
// Names are passed as arguments ("$1"), never spliced into the script.
func DefaultChecks(plan Plan, n NodePlan) []TestSpec {
	out := []TestSpec{{
		Name: "hostname",
		Node: n.Name,
		Command: []string{"sh", "-c",
			`h=$(hostname 2>/dev/null || cat /proc/sys/kernel/hostname); if [ "$h" = "$1" ]; then echo "hostname $h"; else echo "hostname is $h, want $1" >&2; exit 1; fi`,
			"check", n.Name},
		TimeoutSeconds: checkTimeoutSeconds,
	}}
	for _, peer := range plan.NodeNames() {
		if peer == n.Name {
			continue
		}
		out = append(out, TestSpec{
			Name: "ping:" + peer,
			Node: n.Name,
			Command: []string{"sh", "-c",
				`if command -v ping >/dev/null 2>&1; then ping -c1 -W2 "$1"; else echo "no ping in the image: checking that $1 resolves"; getent hosts "$1"; fi`,
				"check", peer},
			TimeoutSeconds: pingTimeoutSeconds,
		})
	}
	for _, ts := range n.Taskservs {
		out = append(out, TestSpec{Name: "taskserv:" + ts, Node: n.Name, Taskserv: ts, TimeoutSeconds: checkTimeoutSeconds})
	}
	return out
}

// CheckArgs is the provisioning script's argv that checks taskserv ts on
// node: `taskserv check <ts> --infra <infra> --settings <settings> <node>`.
func CheckArgs(ts, infra, settings, node string) []string {
	return []string{"taskserv", "check", ts, "--infra", infra, "--settings", settings, node}
}
