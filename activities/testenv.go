package activities

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/testenv"
)

// Error types of the test-environment activities.
const (
	// ErrTypeImageMissing: the base image is neither local nor pullable.
	ErrTypeImageMissing = "ImageMissing"
	// ErrTypeInvalidSpec: the plan cannot be carried out as given (e.g. its
	// subnet overlaps an existing network).
	ErrTypeInvalidSpec = "InvalidSpec"
	// ErrTypeNoDocker: the worker has no Docker engine configured.
	ErrTypeNoDocker = "DockerUnavailable"
)

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
}

// EnvState is an environment as the API shows it; the workflow owns it and
// projects it into the task store.
type EnvState struct {
	ID          string                `json:"id"`
	Status      string                `json:"status"`
	Type        string                `json:"type"`
	Infra       string                `json:"infra"`
	Request     testenv.CreateRequest `json:"request"`
	Network     EnvNetwork            `json:"network"`
	Nodes       []NodeStatus          `json:"nodes"`
	AutoStart   bool                  `json:"auto_start"`
	AutoCleanup bool                  `json:"auto_cleanup"`
	Runs        []TestRun             `json:"runs"`
	LastRun     *TestRun              `json:"last_run"`
	Error       string                `json:"error,omitempty"`
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
	if s.LastRun != nil && len(s.Runs) > 0 {
		s.LastRun = &s.Runs[len(s.Runs)-1]
	}
	return s
}

// CreateEnvInput is CreateEnvironment's input.
type CreateEnvInput struct {
	Plan testenv.Plan `json:"plan"`
	// Start the containers after creating them (auto_start).
	Start bool `json:"start"`
}

// EnvInfo is what CreateEnvironment made.
type EnvInfo struct {
	NetworkID string       `json:"network_id"`
	Subnet    string       `json:"subnet"`
	Nodes     []NodeStatus `json:"nodes"`
}

// RunTestsInput is RunTests' input.
type RunTestsInput struct {
	EnvID string             `json:"env_id"`
	Tests []testenv.TestSpec `json:"tests"`
	// Nodes map node names to containers.
	Nodes []NodeStatus `json:"nodes"`
}

func (a *Activities) docker() (*DockerRuntime, error) {
	if a.Docker == nil {
		return nil, temporal.NewNonRetryableApplicationError(
			"this worker has no Docker engine (start dockerd, or set DOCKER_HOST) so it cannot run test environments",
			ErrTypeNoDocker, nil)
	}
	return a.Docker, nil
}

// CreateEnvironment makes the network and containers of a plan, checking
// images first so that a missing image creates nothing. Every step is
// idempotent (by name and label), so a retry after a crash continues where
// the last attempt stopped. It heartbeats between steps.
func (a *Activities) CreateEnvironment(ctx context.Context, in CreateEnvInput) (EnvInfo, error) {
	rt, err := a.docker()
	if err != nil {
		return EnvInfo{}, err
	}
	p := in.Plan
	log := a.logger().With("env_id", p.EnvID)
	hb := func(what string) { activity.RecordHeartbeat(ctx, what) }

	seen := map[string]bool{}
	for _, n := range p.Nodes {
		if seen[n.Image] {
			continue
		}
		seen[n.Image] = true
		hb("image " + n.Image)
		if err := rt.EnsureImage(ctx, n.Image); err != nil {
			if IsImageMissing(err) {
				return EnvInfo{}, temporal.NewNonRetryableApplicationError(err.Error(), ErrTypeImageMissing, err)
			}
			return EnvInfo{}, err
		}
	}

	used, err := rt.UsedSubnets(ctx)
	if err != nil {
		return EnvInfo{}, err
	}
	netName := p.NetworkName
	existing, _ := rt.networkSubnet(ctx, netName)
	switch {
	case existing != "":
		// An earlier attempt made our network: keep its subnet.
		p.Subnet = existing
	case p.Subnet == "":
		if p.Subnet, err = testenv.ChooseSubnet(used); err != nil {
			return EnvInfo{}, temporal.NewNonRetryableApplicationError(err.Error(), ErrTypeInvalidSpec, err)
		}
	default:
		for _, u := range used {
			overlap, oerr := testenv.SubnetsOverlap(p.Subnet, u)
			if oerr == nil && overlap {
				msg := fmt.Sprintf("config.topology.network.subnet: %s overlaps the existing network subnet %s", p.Subnet, u)
				return EnvInfo{}, temporal.NewNonRetryableApplicationError(msg, ErrTypeInvalidSpec, nil)
			}
		}
	}
	hb("network")
	netID, subnet, err := rt.CreateNetwork(ctx, p)
	if err != nil {
		return EnvInfo{}, err
	}
	log.Info("environment network ready", "network", netName, "subnet", subnet)
	for _, n := range p.Nodes {
		hb("create " + n.Name)
		if _, err := rt.CreateNode(ctx, p, n); err != nil {
			return EnvInfo{}, fmt.Errorf("create node %s: %w", n.Name, err)
		}
	}
	if in.Start {
		if err := a.startAll(ctx, rt, p.EnvID, hb); err != nil {
			return EnvInfo{}, err
		}
	}
	nodes, err := rt.InspectNodes(ctx, p.EnvID)
	if err != nil {
		return EnvInfo{}, err
	}
	sortNodes(nodes, p)
	log.Info("environment created", "nodes", len(nodes), "started", in.Start)
	return EnvInfo{NetworkID: netID, Subnet: subnet, Nodes: nodes}, nil
}

func (a *Activities) startAll(ctx context.Context, rt *DockerRuntime, envID string, hb func(string)) error {
	nodes, err := rt.InspectNodes(ctx, envID)
	if err != nil {
		return err
	}
	for _, n := range nodes {
		hb("start " + n.Node)
		if err := rt.StartNode(ctx, n.ContainerID); err != nil {
			return fmt.Errorf("start node %s: %w", n.Node, err)
		}
	}
	// A node that exits right away (bad image command) is a failed start.
	nodes, err = rt.InspectNodes(ctx, envID)
	if err != nil {
		return err
	}
	for _, n := range nodes {
		if n.State != "running" {
			return temporal.NewNonRetryableApplicationError(
				fmt.Sprintf("node %s did not keep running (state %s, exit code %d)", n.Node, n.State, n.ExitCode), ErrTypeInvalidSpec, nil)
		}
	}
	return nil
}

// StartEnvironment starts every container of an environment that was
// created without auto_start.
func (a *Activities) StartEnvironment(ctx context.Context, envID string) error {
	rt, err := a.docker()
	if err != nil {
		return err
	}
	return a.startAll(ctx, rt, envID, func(what string) { activity.RecordHeartbeat(ctx, what) })
}

// InspectEnvironment reports the containers' current state.
func (a *Activities) InspectEnvironment(ctx context.Context, envID string) ([]NodeStatus, error) {
	rt, err := a.docker()
	if err != nil {
		return nil, err
	}
	return rt.InspectNodes(ctx, envID)
}

// RunTests execs each test in its node's container, one after another,
// heartbeating between tests, and reports every result; a failing test does
// not stop the run.
func (a *Activities) RunTests(ctx context.Context, in RunTestsInput) (TestRun, error) {
	rt, err := a.docker()
	if err != nil {
		return TestRun{}, err
	}
	containers := map[string]string{}
	for _, n := range in.Nodes {
		containers[n.Node] = n.ContainerID
	}
	run := TestRun{Passed: true, Total: len(in.Tests)}
	for _, t := range in.Tests {
		activity.RecordHeartbeat(ctx, t.Name)
		res := TestResult{Name: t.Name, Node: t.Node, Command: t.Command}
		id, ok := containers[t.Node]
		if !ok {
			res.Error = "no container for node " + t.Node
			res.ExitCode = -1
		} else {
			timeout := time.Duration(t.TimeoutSeconds) * time.Second
			if timeout <= 0 {
				timeout = time.Minute
			}
			er, err := rt.Exec(ctx, id, t.Command, timeout)
			if ctx.Err() != nil {
				return TestRun{}, ctx.Err()
			}
			res.ExitCode = er.ExitCode
			res.Stdout = er.Stdout
			res.Stderr = er.Stderr
			res.TimedOut = er.TimedOut
			res.DurationMS = er.Duration.Milliseconds()
			if err != nil {
				res.Error = err.Error()
				if res.ExitCode == 0 {
					res.ExitCode = -1
				}
			}
			if er.TimedOut && res.Error == "" {
				res.Error = fmt.Sprintf("timed out after %s", timeout)
			}
		}
		res.Passed = res.ExitCode == 0 && !res.TimedOut && res.Error == ""
		if !res.Passed {
			run.Passed = false
			run.Failed++
		}
		run.Results = append(run.Results, res)
	}
	a.logger().Info("test run finished", "env_id", in.EnvID, "total", run.Total, "failed", run.Failed)
	return run, nil
}

// RemoveEnvironment deletes every object labelled with the environment id.
// Already-gone objects are fine, so cleanup can be retried or repeated.
func (a *Activities) RemoveEnvironment(ctx context.Context, envID string) (RemovedCounts, error) {
	rt, err := a.docker()
	if err != nil {
		return RemovedCounts{}, err
	}
	if err := storage.ValidateID(envID); err != nil {
		return RemovedCounts{}, temporal.NewNonRetryableApplicationError(err.Error(), ErrTypeInvalidSpec, err)
	}
	removed, err := rt.RemoveEnvironment(ctx, envID)
	if err != nil {
		return removed, err
	}
	a.logger().Info("environment removed", "env_id", envID, "containers", removed.Containers, "networks", removed.Networks, "volumes", removed.Volumes)
	return removed, nil
}

// ProjectEnvironment writes an environment's state to the task store as a
// task of workflow type TestEnvironment, so GET /tasks lists environments
// too and the environment endpoints read them without querying Temporal.
func (a *Activities) ProjectEnvironment(ctx context.Context, s EnvState) error {
	t, err := EnvTask(s)
	if err != nil {
		return temporal.NewNonRetryableApplicationError(err.Error(), "InvalidTaskID", err)
	}
	return a.ProjectTask(ctx, t)
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

func sortNodes(nodes []NodeStatus, p testenv.Plan) {
	order := map[string]int{}
	for i, n := range p.Nodes {
		order[n.Name] = i
	}
	slices.SortFunc(nodes, func(x, y NodeStatus) int { return order[x.Node] - order[y.Node] })
}
