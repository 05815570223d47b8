package testenv

// The environment as the API, the SDK and the workflow see it. The
// TestEnvironment workflow owns an EnvState, the driver fills its nodes, and
// the state is projected into the task store as a task (EnvTask).

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/provisioning/orchestrator/internal/tailbuf"
	"github.com/provisioning/orchestrator/storage"
)

// NodeStatus is one container of an environment as the engine sees it.
type NodeStatus struct {
	ContainerID string `json:"container_id"`
	// Name is the container name.
	Name string `json:"name"`
	// Node and Role come from the container's labels.
	Node string `json:"node"`
	Role string `json:"role"`
	// Taskservs is not known to the engine (no label carries it):
	// InspectNodes leaves it empty, callers fill it from the plan.
	Taskservs []string `json:"taskservs,omitempty"`
	Image     string   `json:"image"`
	// State is the engine's: created, running, paused, restarting,
	// removing, exited or dead.
	State string `json:"state"`
	// Status is the engine's human summary, e.g. "Up 3 minutes".
	Status string `json:"status"`
	// ExitCode is meaningful once State is exited.
	ExitCode  int  `json:"exit_code"`
	OOMKilled bool `json:"oom_killed,omitempty"`
	// Error is the engine's last start error, if any.
	Error string `json:"error,omitempty"`
	// IP is the address on the environment network; empty unless running.
	IP string `json:"ip"`
	// NanoCPUs and MemoryBytes are the limits in force (0 = unlimited).
	NanoCPUs    int64 `json:"nano_cpus"`
	MemoryBytes int64 `json:"memory_bytes"`
	// PidsLimit is the container's process limit (0 = unknown/unlimited).
	PidsLimit int64 `json:"pids_limit,omitempty"`
	// DiskLimit is the root filesystem's size limit as the engine reports
	// it (e.g. "512M"); empty = none.
	DiskLimit string `json:"disk_limit,omitempty"`
	// Tmpfs lists the node's tmpfs mounts with their options, e.g.
	// {"/tmp": "size=64m,mode=1777"}.
	Tmpfs      map[string]string `json:"tmpfs,omitempty"`
	CreatedAt  time.Time         `json:"created_at,omitzero"`
	StartedAt  time.Time         `json:"started_at,omitzero"`
	FinishedAt time.Time         `json:"finished_at,omitzero"`
}

// RemovedCounts counts an environment's Docker objects (removed ones, or
// present ones for ListManagedEnvironments).
type RemovedCounts struct {
	Containers int `json:"containers"`
	Networks   int `json:"networks"`
	Volumes    int `json:"volumes"`
}

// Total is the number of objects of all kinds.
func (c RemovedCounts) Total() int { return c.Containers + c.Networks + c.Volumes }

// EnvNetwork is an environment's bridge network.
type EnvNetwork struct {
	Name   string `json:"name"`
	ID     string `json:"id,omitempty"`
	Subnet string `json:"subnet"`
}

// TestResult is one exec'd test.
type TestResult struct {
	Name       string   `json:"name"`
	Node       string   `json:"node"`
	Command    []string `json:"command"`
	ExitCode   int      `json:"exit_code"`
	Passed     bool     `json:"passed"`
	TimedOut   bool     `json:"timed_out"`
	Stdout     string   `json:"stdout"`
	Stderr     string   `json:"stderr"`
	DurationMS int64    `json:"duration_ms"`
	Error      string   `json:"error,omitempty"`
}

// TestRun is one POST /test/environments/{id}/run.
type TestRun struct {
	Number     int          `json:"number"`
	Passed     bool         `json:"passed"`
	Total      int          `json:"total"`
	Failed     int          `json:"failed"`
	Results    []TestResult `json:"results"`
	StartedAt  time.Time    `json:"started_at"`
	FinishedAt time.Time    `json:"finished_at"`
	// OutputTrimmed: stdout/stderr were cut to their tails to keep the run
	// within MaxRunOutputBytes, or dropped because a newer run replaced
	// this one as the environment's latest.
	OutputTrimmed bool `json:"output_trimmed,omitempty"`
}

// MaxRunOutputBytes bounds the stdout and stderr one test run keeps in
// total (each stream is also bounded by the driver, 64 KiB): a run's
// results travel through Temporal, whose payloads are limited to 2 MB.
const MaxRunOutputBytes = 512 << 10

// BoundOutput cuts the results' stdout and stderr to their tails, as
// evenly as possible, so that they total at most limit bytes: short streams
// stay whole and the longest are cut first.
func (r *TestRun) BoundOutput(limit int) {
	var lens []int
	for _, res := range r.Results {
		lens = append(lens, len(res.Stdout), len(res.Stderr))
	}
	c := tailbuf.FairCap(lens, limit)
	if slices.Max(append(lens, 0)) <= c {
		return
	}
	for i := range r.Results {
		r.Results[i].Stdout = tailbuf.String(r.Results[i].Stdout, c)
		r.Results[i].Stderr = tailbuf.String(r.Results[i].Stderr, c)
	}
	r.OutputTrimmed = true
}

// WithoutOutput is the run without its results' stdout and stderr, as the
// environment keeps runs older than its latest.
func (r TestRun) WithoutOutput() TestRun {
	r.Results = slices.Clone(r.Results)
	for i := range r.Results {
		if r.Results[i].Stdout != "" || r.Results[i].Stderr != "" {
			r.Results[i].Stdout, r.Results[i].Stderr = "", ""
			r.OutputTrimmed = true
		}
	}
	return r
}

// EnvState is an environment as the API shows it; the workflow owns it and
// projects it into the task store.
type EnvState struct {
	ID          string        `json:"id"`
	Status      string        `json:"status"`
	Type        string        `json:"type"`
	Infra       string        `json:"infra"`
	Request     CreateRequest `json:"request"`
	Network     EnvNetwork    `json:"network"`
	Nodes       []NodeStatus  `json:"nodes"`
	AutoStart   bool          `json:"auto_start"`
	AutoCleanup bool          `json:"auto_cleanup"`
	Runs        []TestRun     `json:"runs"`
	// Converge is one entry per node and taskserv, in install order.
	Converge []TaskservResult `json:"converge,omitempty"`
	// Idempotence is the last idempotence check (a second converge), when
	// one was asked for.
	Idempotence *IdempotenceCheck `json:"idempotence,omitempty"`
	LastRun     *TestRun          `json:"last_run"`
	Error       string            `json:"error,omitempty"`
	// EndReason says why cleanup happened.
	EndReason string `json:"end_reason,omitempty"`
	// LastStatus is the status before cleanup (passed/failed/ready).
	LastStatus string         `json:"last_status,omitempty"`
	Removed    *RemovedCounts `json:"removed,omitempty"`
	CreatedAt  time.Time      `json:"created_at"`
	ExpiresAt  time.Time      `json:"expires_at"`
	UpdatedAt  time.Time      `json:"updated_at"`
	FinishedAt *time.Time     `json:"finished_at"`
	Version    int64          `json:"version"`
}

// Clone deep-copies the slices so a projection handed to a local activity
// cannot change under it.
func (s EnvState) Clone() EnvState {
	s.Nodes = slices.Clone(s.Nodes)
	s.Runs = slices.Clone(s.Runs)
	s.Converge = slices.Clone(s.Converge)
	if s.Idempotence != nil {
		c := *s.Idempotence
		c.Results = slices.Clone(c.Results)
		c.Failures = slices.Clone(c.Failures)
		s.Idempotence = &c
	}
	if s.LastRun != nil && len(s.Runs) > 0 {
		s.LastRun = &s.Runs[len(s.Runs)-1]
	}
	return s
}

// EnvInfo is what CreateEnvironment made.
type EnvInfo struct {
	NetworkID string       `json:"network_id"`
	Subnet    string       `json:"subnet"`
	Nodes     []NodeStatus `json:"nodes"`
}

// EnvTaskType is the WorkflowType of environment tasks (the registered
// workflow name).
const EnvTaskType = "TestEnvironment"

// EnvTask maps an environment to the task shape: creating…failed are
// Running (the environment is alive), cleaned is Completed (Failed when the
// last run failed), error is Failed, a cancelled environment Cancelled.
func EnvTask(s EnvState) (storage.Task, error) {
	env, err := json.Marshal(s)
	if err != nil {
		return storage.Task{}, fmt.Errorf("encode environment %s: %w", s.ID, err)
	}
	status := storage.StatusRunning
	switch s.Status {
	case "creating":
		status = storage.StatusPending
	case "cleaned":
		switch {
		case s.EndReason == "cancelled":
			status = storage.StatusCancelled
		case s.LastStatus == "failed":
			status = storage.StatusFailed
		default:
			status = storage.StatusCompleted
		}
	case "error":
		status = storage.StatusFailed
	}
	name := "test env " + s.Type
	switch {
	case s.Request.Config.Taskserv != "":
		name += " " + s.Request.Config.Taskserv
	case s.Request.Config.ServerName != "":
		name += " " + s.Request.Config.ServerName
	case s.Request.Config.Template != "":
		name += " " + s.Request.Config.Template
	case s.Request.Config.ClusterType != "":
		name += " " + s.Request.Config.ClusterType
	}
	t := storage.Task{
		ID:           s.ID,
		Name:         name,
		Command:      "test env create",
		Args:         []string{s.Type},
		Status:       status,
		CreatedAt:    s.CreatedAt,
		CompletedAt:  s.FinishedAt,
		WorkflowType: EnvTaskType,
		Priority:     s.Request.Priority,
		Version:      s.Version,
		UpdatedAt:    s.UpdatedAt,
		Environment:  env,
	}
	if s.Status != "creating" {
		started := s.CreatedAt
		t.StartedAt = &started
	}
	if s.LastRun != nil {
		out := summarizeRun(*s.LastRun)
		t.Output = &out
		t.Progress = storage.Progress{Done: s.LastRun.Total - s.LastRun.Failed, Total: s.LastRun.Total}
	}
	if s.Error != "" {
		e := s.Error
		t.Error = &e
	}
	return t, nil
}

func summarizeRun(r TestRun) string {
	var b strings.Builder
	for _, res := range r.Results {
		verdict := "PASS"
		if !res.Passed {
			verdict = "FAIL"
		}
		fmt.Fprintf(&b, "%s %s [%s] exit=%d %dms\n", verdict, res.Name, res.Node, res.ExitCode, res.DurationMS)
	}
	fmt.Fprintf(&b, "%d/%d passed\n", r.Total-r.Failed, r.Total)
	return b.String()
}

// TaskservResult is one taskserv install inside one node.
type TaskservResult struct {
	Node     string `json:"node"`
	Taskserv string `json:"taskserv"`
	// Status: pending, running, completed or failed.
	Status     string `json:"status"`
	Attempts   int32  `json:"attempts,omitempty"`
	ExitCode   *int   `json:"exit_code"`
	DurationMS int64  `json:"duration_ms"`
	// Output is the tail of the install's stdout.
	Output string `json:"output,omitempty"`
	Error  string `json:"error,omitempty"`
	// Changed is what the script reported in its result file
	// (PROVISIONING_RESULT_FILE, see ChangeReport); null when it wrote none.
	Changed *bool `json:"changed"`
	// Resources are the resources the script reported (changed ones when
	// Changed is true).
	Resources []string `json:"resources,omitempty"`
	// ReportError says why a result file the script wrote was not used.
	ReportError string `json:"report_error,omitempty"`
}

// ResultFileEnv names the environment variable that holds the path of the
// result file a provisioning script may write when it installs a taskserv
// in a test-environment node. The file is JSON (see ChangeReport); the
// orchestrator empties it before each install and reads it after. Exit
// codes keep their meaning; the file only says what changed.
const ResultFileEnv = "PROVISIONING_RESULT_FILE"

// ChangeReport is the result file's contract:
//
//	{"changed": false, "resources": ["/etc/redis/redis.conf", ...]}
//
// changed is required; resources name what the install created, changed
// or (when unchanged) checked. Items may be strings or JSON objects (kept
// as compact JSON text).
type ChangeReport struct {
	Changed   bool     `json:"changed"`
	Resources []string `json:"resources"`
}

// maxReportResources and maxReportResource bound what a report keeps.
const (
	maxReportResources = 100
	maxReportResource  = 512
)

// ParseChangeReport parses a result file: a JSON object with a boolean
// "changed" (required) and an optional "resources" list of strings or
// objects. Unknown fields are allowed (a script may say more); long lists
// and items are cut.
func ParseChangeReport(data []byte) (*ChangeReport, error) {
	var raw struct {
		Changed   *bool             `json:"changed"`
		Resources []json.RawMessage `json:"resources"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("not a JSON report ({\"changed\": bool, \"resources\": [...]}): %w", err)
	}
	if raw.Changed == nil {
		return nil, errors.New(`the report lacks the boolean "changed"`)
	}
	rep := &ChangeReport{Changed: *raw.Changed}
	for i, item := range raw.Resources {
		if i == maxReportResources {
			rep.Resources = append(rep.Resources, fmt.Sprintf("... %d more", len(raw.Resources)-i))
			break
		}
		var s string
		if json.Unmarshal(item, &s) != nil {
			var buf bytes.Buffer
			if json.Compact(&buf, item) != nil {
				return nil, fmt.Errorf("resources[%d] is not valid JSON", i)
			}
			s = buf.String()
		}
		if len(s) > maxReportResource {
			s = strings.ToValidUTF8(s[:maxReportResource], "") + "..."
		}
		rep.Resources = append(rep.Resources, s)
	}
	return rep, nil
}

// IdempotenceCheck is the result of converging every taskserv a second
// time: it passes when every install reported that it changed nothing.
type IdempotenceCheck struct {
	Passed bool `json:"passed"`
	// Failures name each node/taskserv that changed something (with the
	// resources it named), did not report, or failed.
	Failures []string `json:"failures,omitempty"`
	// Results are the second converge's, one per node and taskserv.
	Results []TaskservResult `json:"results"`
}

// Evaluate fills Passed and Failures from Results.
func (c *IdempotenceCheck) Evaluate() {
	c.Failures = nil
	for _, r := range c.Results {
		where := "taskserv " + r.Taskserv + " on node " + r.Node
		switch {
		case r.Status == "pending":
			// Not reached: an earlier install failed.
		case r.Status != "completed":
			c.Failures = append(c.Failures, where+": the second converge failed: "+r.Error)
		case r.Changed == nil && r.ReportError != "":
			c.Failures = append(c.Failures, where+": "+r.ReportError)
		case r.Changed == nil:
			c.Failures = append(c.Failures, where+": reported nothing, so idempotence cannot be verified (the script must write {\"changed\": ...} to $"+ResultFileEnv+")")
		case *r.Changed:
			msg := where + ": changed on the second converge"
			if len(r.Resources) > 0 {
				msg += ": " + strings.Join(r.Resources, ", ")
			}
			c.Failures = append(c.Failures, msg)
		}
	}
	c.Passed = len(c.Failures) == 0
}

// Summary is one line naming what failed, for EnvState.Error.
func (c *IdempotenceCheck) Summary() string {
	if c.Passed {
		return ""
	}
	return "idempotence failed: " + strings.Join(c.Failures, "; ")
}
