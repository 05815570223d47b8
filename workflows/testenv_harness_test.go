// The TestEnvironment workflow test harness: a testsuite environment with
// recorded Docker activity mocks, update/signal/query helpers and fixtures.

package workflows_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/provisioning/orchestrator/activities"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/testenv"
	"github.com/provisioning/orchestrator/workflows"
)

// Environment IDs are task IDs: canonical lowercase UUIDs.
const envID1 = "3c9e7a10-4b2d-4f6e-8a1c-5d7e9f0a1b01"

// History of a TestEnvironment (auto_start false: create, one run that
// starts the containers, cleanup signal) recorded by
// record_testenv_history_test.go.
const replayTestEnvFile = "test_environment_run_cleanup.json"

// Durations of the mocked Docker activities on the workflow clock.
const (
	createTook = 20 * time.Second
	startTook  = 5 * time.Second
	runTook    = 30 * time.Second
	removeTook = 5 * time.Second
	// convergeTook is one taskserv install.
	convergeTook = 3 * time.Second
)

// testImage is the service's default base image in these tests.
const testImage = "busybox:1.36"

// removedCounts is what the mocked RemoveEnvironment reports.
var removedCounts = testenv.RemovedCounts{Containers: 2, Networks: 1, Volumes: 1}

// dockerCall is one call of a mocked Docker activity.
type dockerCall struct {
	name     string
	arg      any
	returned time.Time // workflow clock when the mocked call returned
	info     activity.Info
}

// envHarness runs TestEnvironmentWorkflow in the harness of
// workflows_test.go (worker.Register, the real ProjectEnvironment and
// ProjectTask local activities against the fake store) with the Docker
// activities mocked. Mocks a test registers before start() take precedence
// over the defaults start() adds.
type envHarness struct {
	*harness
	in workflows.TestEnvInput

	mu    sync.Mutex
	calls []dockerCall
	// starts has the workflow clock when each activity (of any kind,
	// attempts included) started, by activity type.
	starts map[string][]time.Time
}

// envRequest is a two-node cluster_topology request with auto_start.
func envRequest() testenv.CreateRequest {
	return testenv.CreateRequest{
		Config: testenv.EnvConfig{
			Type:        testenv.TypeClusterTopology,
			ClusterType: "etcd",
			Topology: &testenv.Topology{Nodes: []testenv.Node{
				{Name: "etcd-1", Role: testenv.RoleEtcd, Taskservs: []string{"etcd"}},
				{Name: "etcd-2", Role: testenv.RoleEtcd, Taskservs: []string{"etcd", "containerd"}},
			}},
		},
		Infra:     "staging",
		AutoStart: true,
	}
}

// envInput builds the workflow input the way the API does: the plan from
// testenv.BuildPlan with the built-in templates.
func envInput(t *testing.T, req testenv.CreateRequest, ttl time.Duration) workflows.TestEnvInput {
	t.Helper()
	plan, err := testenv.BuildPlan(envID1, req, testenv.DefaultTemplates(), testImage)
	require.NoError(t, err)
	return workflows.TestEnvInput{EnvID: envID1, Request: req, Plan: plan, TTL: ttl, CreatedAt: createdAt}
}

func newEnvHarness(t *testing.T, in workflows.TestEnvInput) *envHarness {
	t.Helper()
	h := &envHarness{harness: newHarness(t), in: in, starts: map[string][]time.Time{}}
	// Replaces the harness's RunNushell listener: no Nushell here.
	h.env.SetOnActivityStartedListener(func(info *activity.Info, _ context.Context, _ converter.EncodedValues) {
		now := h.env.Now()
		h.mu.Lock()
		defer h.mu.Unlock()
		h.starts[info.ActivityType.Name] = append(h.starts[info.ActivityType.Name], now)
	})
	return h
}

// startedAt is when each call of the named activity started (workflow
// clock).
func (h *envHarness) startedAt(name string) []time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]time.Time(nil), h.starts[name]...)
}

func (h *envHarness) record(ctx context.Context, name string, arg any) {
	c := dockerCall{name: name, arg: arg, returned: h.env.Now(), info: activity.GetInfo(ctx)}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls = append(h.calls, c)
}

// dockerCalls returns the mocked Docker calls named (all when none), in
// call order.
func (h *envHarness) dockerCalls(names ...string) []dockerCall {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []dockerCall
	for _, c := range h.calls {
		if len(names) == 0 || containsString(names, c.name) {
			out = append(out, c)
		}
	}
	return out
}

func (h *envHarness) callNames() []string {
	var out []string
	for _, c := range h.dockerCalls() {
		out = append(out, c.name)
	}
	return out
}

func (h *envHarness) runInputs() []activities.RunTestsInput {
	var out []activities.RunTestsInput
	for _, c := range h.dockerCalls("RunTests") {
		out = append(out, c.arg.(activities.RunTestsInput))
	}
	return out
}

func containsString(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// engineNodes is what the engine reports for the plan's containers (as
// InspectNodes does: no taskservs, they are not labels).
func engineNodes(plan testenv.Plan, state string) []testenv.NodeStatus {
	var out []testenv.NodeStatus
	for i, n := range plan.Nodes {
		ns := testenv.NodeStatus{
			ContainerID: fmt.Sprintf("c0ffee%02d", i),
			Name:        n.ContainerName,
			Node:        n.Name,
			Role:        n.Role,
			Image:       n.Image,
			State:       state,
			NanoCPUs:    n.NanoCPUs,
			MemoryBytes: n.MemoryBytes,
		}
		if state == "running" {
			ns.IP = fmt.Sprintf("172.30.0.%d", i+2)
		}
		out = append(out, ns)
	}
	return out
}

// envInfo is what CreateEnvironment reports for the plan.
func envInfo(plan testenv.Plan, started bool) testenv.EnvInfo {
	state := "created"
	if started {
		state = "running"
	}
	return testenv.EnvInfo{NetworkID: "net0123", Subnet: "172.30.0.0/24", Nodes: engineNodes(plan, state)}
}

// runResult is a TestRun for the given tests; failing names tests that fail.
func runResult(in activities.RunTestsInput, failing ...string) testenv.TestRun {
	run := testenv.TestRun{Passed: true, Total: len(in.Tests)}
	for _, s := range in.Tests {
		r := testenv.TestResult{Name: s.Name, Node: s.Node, Command: s.Command, Passed: true, Stdout: "ok\n", DurationMS: 7}
		if containsString(failing, s.Name) {
			r.Passed, r.ExitCode, r.Stdout, r.Stderr = false, 1, "", "boom\n"
			run.Passed = false
			run.Failed++
		}
		run.Results = append(run.Results, r)
	}
	return run
}

func (h *envHarness) onCreate(fn func(activities.CreateEnvInput) (testenv.EnvInfo, error)) *testsuite.MockCallWrapper {
	return h.env.OnActivity(h.acts.CreateEnvironment, mock.Anything, mock.Anything).Return(
		func(ctx context.Context, in activities.CreateEnvInput) (testenv.EnvInfo, error) {
			h.record(ctx, "CreateEnvironment", in)
			return fn(in)
		})
}

func (h *envHarness) onStart(fn func(string) error) *testsuite.MockCallWrapper {
	return h.env.OnActivity(h.acts.StartEnvironment, mock.Anything, mock.Anything).Return(
		func(ctx context.Context, envID string) error {
			h.record(ctx, "StartEnvironment", envID)
			return fn(envID)
		})
}

func (h *envHarness) onRun(fn func(activities.RunTestsInput) (testenv.TestRun, error)) *testsuite.MockCallWrapper {
	return h.env.OnActivity(h.acts.RunTests, mock.Anything, mock.Anything).Return(
		func(ctx context.Context, in activities.RunTestsInput) (testenv.TestRun, error) {
			h.record(ctx, "RunTests", in)
			return fn(in)
		})
}

func (h *envHarness) onInspect(fn func(string) ([]testenv.NodeStatus, error)) *testsuite.MockCallWrapper {
	return h.env.OnActivity(h.acts.InspectEnvironment, mock.Anything, mock.Anything).Return(
		func(ctx context.Context, envID string) ([]testenv.NodeStatus, error) {
			h.record(ctx, "InspectEnvironment", envID)
			return fn(envID)
		})
}

func (h *envHarness) onRemove(fn func(string) (testenv.RemovedCounts, error)) *testsuite.MockCallWrapper {
	return h.env.OnActivity(h.acts.RemoveEnvironment, mock.Anything, mock.Anything).Return(
		func(ctx context.Context, envID string) (testenv.RemovedCounts, error) {
			h.record(ctx, "RemoveEnvironment", envID)
			return fn(envID)
		})
}

func (h *envHarness) onConverge(fn func(activities.ConvergeInput) (testenv.TaskservResult, error)) *testsuite.MockCallWrapper {
	return h.env.OnActivity(h.acts.ConvergeTaskserv, mock.Anything, mock.Anything).Return(
		func(ctx context.Context, in activities.ConvergeInput) (testenv.TaskservResult, error) {
			h.record(ctx, "ConvergeTaskserv", in)
			return fn(in)
		})
}

// converged is a successful install's result.
func converged(in activities.ConvergeInput) testenv.TaskservResult {
	code := 0
	return testenv.TaskservResult{Node: in.Spec.Node, Taskserv: in.Spec.Taskserv, Status: "completed", Attempts: 1, ExitCode: &code,
		DurationMS: convergeTook.Milliseconds(), Output: "taskserv " + in.Spec.Taskserv + " created\n"}
}

// start adds the default Docker mocks (everything succeeds, every test
// passes) and runs the workflow to its end.
func (h *envHarness) start() {
	plan := h.in.Plan
	h.onCreate(func(in activities.CreateEnvInput) (testenv.EnvInfo, error) {
		return envInfo(in.Plan, in.Start), nil
	}).After(createTook).Maybe()
	h.onStart(func(string) error { return nil }).After(startTook).Maybe()
	h.onRun(func(in activities.RunTestsInput) (testenv.TestRun, error) {
		return runResult(in), nil
	}).After(runTook).Maybe()
	h.onInspect(func(string) ([]testenv.NodeStatus, error) {
		return engineNodes(plan, "running"), nil
	}).Maybe()
	h.onRemove(func(string) (testenv.RemovedCounts, error) {
		return removedCounts, nil
	}).After(removeTook).Maybe()
	h.onConverge(func(in activities.ConvergeInput) (testenv.TaskservResult, error) {
		return converged(in), nil
	}).After(convergeTook).Maybe()
	h.env.ExecuteWorkflow(workflows.TestEnvironmentWorkflowName, h.in)
}

// runOutcome collects the callbacks of one run-tests update.
type runOutcome struct {
	mu        sync.Mutex
	accepted  bool
	rejected  error
	completed bool
	run       testenv.TestRun
	err       error
	decodeErr error
}

func (o *runOutcome) snapshot() runOutcome {
	o.mu.Lock()
	defer o.mu.Unlock()
	return runOutcome{accepted: o.accepted, rejected: o.rejected, completed: o.completed, run: o.run, err: o.err, decodeErr: o.decodeErr}
}

// sendRun sends the run-tests update after d on the workflow clock.
func (h *envHarness) sendRun(d time.Duration, id string, req testenv.RunRequest) *runOutcome {
	o := &runOutcome{}
	h.env.RegisterDelayedCallback(func() { h.updateRun(o, id, req) }, d)
	return o
}

func (h *envHarness) updateRun(o *runOutcome, id string, req testenv.RunRequest) {
	h.env.UpdateWorkflow(workflows.RunTestsUpdate, id, &testsuite.TestUpdateCallback{
		OnAccept: func() {
			o.mu.Lock()
			defer o.mu.Unlock()
			o.accepted = true
		},
		OnReject: func(err error) {
			o.mu.Lock()
			defer o.mu.Unlock()
			o.rejected = err
		},
		OnComplete: func(v any, err error) {
			o.mu.Lock()
			defer o.mu.Unlock()
			o.completed, o.err = true, err
			if err == nil {
				// The handler's value as is; decode it the way a client would.
				b, merr := json.Marshal(v)
				if merr == nil {
					merr = json.Unmarshal(b, &o.run)
				}
				o.decodeErr = merr
			}
		},
	}, req)
}

// sendCleanup signals cleanup after d on the workflow clock.
func (h *envHarness) sendCleanup(d time.Duration) {
	h.env.RegisterDelayedCallback(func() { h.env.SignalWorkflow(workflows.CleanupSignal, nil) }, d)
}

// queryAt queries the status after d on the workflow clock.
func (h *envHarness) queryAt(d time.Duration) *testenv.EnvState {
	var st testenv.EnvState
	h.env.RegisterDelayedCallback(func() { st = h.envQuery() }, d)
	return &st
}

func (h *envHarness) envQuery() testenv.EnvState {
	h.t.Helper()
	v, err := h.env.QueryWorkflow(workflows.StatusQuery)
	require.NoError(h.t, err)
	var st testenv.EnvState
	require.NoError(h.t, v.Get(&st))
	return st
}

// envResult returns the workflow's EnvState; it fails the test unless the
// workflow completed successfully.
func (h *envHarness) envResult() testenv.EnvState {
	h.t.Helper()
	require.True(h.t, h.env.IsWorkflowCompleted(), "workflow did not complete")
	require.NoError(h.t, h.env.GetWorkflowError())
	var st testenv.EnvState
	require.NoError(h.t, h.env.GetWorkflowResult(&st))
	return st
}

// envProjections returns the accepted projections of the environment and
// the EnvState each carries.
func (h *envHarness) envProjections() ([]storage.Task, []testenv.EnvState) {
	h.t.Helper()
	ps := h.store.projections(h.in.EnvID)
	states := make([]testenv.EnvState, len(ps))
	for i, p := range ps {
		require.Equal(h.t, workflows.TestEnvironmentWorkflowName, p.WorkflowType)
		require.NoError(h.t, json.Unmarshal(p.Environment, &states[i]), "projection %d", i)
		require.Equal(h.t, p.Version, states[i].Version, "task and environment versions of projection %d", i)
	}
	return ps, states
}

func (h *envHarness) lastEnvProjection() (storage.Task, testenv.EnvState) {
	h.t.Helper()
	ps, states := h.envProjections()
	require.NotEmpty(h.t, ps, "nothing was projected")
	return ps[len(ps)-1], states[len(states)-1]
}

func envStatuses(states []testenv.EnvState) []string {
	out := make([]string, len(states))
	for i, s := range states {
		out[i] = s.Status
	}
	return out
}

// withoutTaskservs drops what the plan knows and the engine does not, to
// compare nodes with the engine's view (see TestTestEnv_NodesKeepTheirTaskservs).
func withoutTaskservs(nodes []testenv.NodeStatus) []testenv.NodeStatus {
	out := make([]testenv.NodeStatus, len(nodes))
	for i, n := range nodes {
		n.Taskservs = nil
		out[i] = n
	}
	return out
}

func nodeStates(s testenv.EnvState) []string {
	out := make([]string, len(s.Nodes))
	for i, n := range s.Nodes {
		out[i] = n.State
	}
	return out
}

func requireAppErrType(t *testing.T, err error, typ string) *temporal.ApplicationError {
	t.Helper()
	require.Error(t, err)
	var appErr *temporal.ApplicationError
	require.ErrorAs(t, err, &appErr, "want an ApplicationError, got %T %v", err, err)
	require.Equal(t, typ, appErr.Type(), "error %v", err)
	return appErr
}

func requireSameTime(t *testing.T, want, got time.Time, msgAndArgs ...any) {
	t.Helper()
	require.True(t, want.Equal(got), "want %v, got %v %v", want, got, fmt.Sprint(msgAndArgs...))
}

// uname is a test of every node.
// createdAtOffset is how long before the workflow start the API accepted
// the request (envInput's CreatedAt).
func createdAtOffset() time.Duration { return t0.Sub(createdAt) }

func nodeStatesOf(nodes []testenv.NodeStatus) []string {
	return nodeStates(testenv.EnvState{Nodes: nodes})
}

// envConverging are envRequest's projections while it converges: one as
// converging starts, one after each of its three installs.
var envConverging = []string{workflows.EnvConverging, workflows.EnvConverging, workflows.EnvConverging, workflows.EnvConverging}

// envInstalls are envRequest's install calls.
var envInstalls = []string{"ConvergeTaskserv", "ConvergeTaskserv", "ConvergeTaskserv"}

// convergeStatuses lists the status of every install in s.
func convergeStatuses(s testenv.EnvState) []string {
	out := []string{}
	for _, r := range s.Converge {
		out = append(out, r.Status)
	}
	return out
}
