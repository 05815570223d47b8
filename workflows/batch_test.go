package workflows_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/provisioning/orchestrator/activities"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/workflows"
)

// sixOps is the DAG: two servers, a taskserv on each, a cluster
// over both.
func sixOps() []workflows.Operation {
	return []workflows.Operation{
		{ID: "web", Type: "server", Servers: []string{"web-01"}},
		{ID: "db", Type: "server", Servers: []string{"db-01"}},
		{ID: "k8s-web", Type: "taskserv", Taskserv: "kubernetes", Servers: []string{"web-01"}, DependsOn: []string{"web"}},
		{ID: "k8s-db", Type: "taskserv", Taskserv: "kubernetes", Servers: []string{"db-01"}, DependsOn: []string{"db"}},
		{ID: "pg", Type: "taskserv", Taskserv: "postgres", Servers: []string{"db-01"}, DependsOn: []string{"k8s-db"}},
		{ID: "cluster", Type: "cluster", Cluster: "buildkit", DependsOn: []string{"k8s-web", "pg"}},
	}
}

func batchInput(ops []workflows.Operation) workflows.BatchInput {
	return workflows.BatchInput{
		Common: workflows.Common{TaskID: taskID1, Infra: "production", Settings: "./settings.yaml", CreatedAt: createdAt,
			Policy: workflows.ExecPolicy{MaxAttempts: 2, InitialInterval: time.Second}},
		Operations: ops,
	}
}

// call is one provider call as "<kind> <verb> <name>[@server]", with when
// it started and ended on the workflow clock.
type call struct {
	what       string
	start, end time.Time
}

// provider mocks RunNushell as the demo provider: each call takes d,
// failing ones per fail (by what), and records what ran when.
type provider struct {
	h     *harness
	d     time.Duration
	fail  map[string]bool
	calls []call
}

func describeArgs(args []string) string {
	var pos []string
	for i := 0; i < len(args); i++ {
		switch args[i] {
		case "--infra", "--settings":
			i++
		case "--check", "--wait":
		default:
			pos = append(pos, args[i])
		}
	}
	out := strings.Join(pos[:2], " ") + " " + pos[2]
	if len(pos) > 3 {
		out += "@" + pos[3]
	}
	return out
}

func newProvider(h *harness, d time.Duration, fail ...string) *provider {
	p := &provider{h: h, d: d, fail: map[string]bool{}}
	for _, f := range fail {
		p.fail[f] = true
	}
	h.env.OnActivity(h.acts.RunNushell, mock.Anything, mock.Anything).Return(
		func(ctx context.Context, step activities.NuStep) (activities.NuStepResult, error) {
			start := h.env.Now()
			what := describeArgs(step.Args)
			// The clock of the test environment moves with timers only.
			time.Sleep(time.Millisecond)
			h.mu.Lock()
			p.calls = append(p.calls, call{what: what, start: start, end: start.Add(p.d)})
			h.mu.Unlock()
			res := activities.NuStepResult{Stdout: "would " + what + "\n", Attempt: activity.GetInfo(ctx).Attempt}
			if p.fail[what] {
				res.ExitCode = 3
				res.Stderr = "simulated invalid configuration for " + what
				return res, temporal.NewApplicationErrorWithOptions("exit status 3", activities.ErrTypeNushellPermanent,
					temporal.ApplicationErrorOptions{NonRetryable: true, Details: []any{res}})
			}
			return res, nil
		}).After(d)
	return p
}

func (p *provider) ran() []string {
	p.h.mu.Lock()
	defer p.h.mu.Unlock()
	var out []string
	for _, c := range p.calls {
		out = append(out, c.what)
	}
	return out
}

func (p *provider) first(what string) call {
	p.h.t.Helper()
	p.h.mu.Lock()
	defer p.h.mu.Unlock()
	for _, c := range p.calls {
		if c.what == what {
			return c
		}
	}
	p.h.t.Fatalf("%s never ran; ran: %v", what, p.calls)
	return call{}
}

func opByID(t *testing.T, task storage.Task, id string) storage.BatchOperation {
	t.Helper()
	require.NotNil(t, task.Batch)
	for _, o := range task.Batch.Operations {
		if o.ID == id {
			return o
		}
	}
	t.Fatalf("no operation %s", id)
	return storage.BatchOperation{}
}

func TestBatch_RunsTheDAGInDependencyOrder(t *testing.T) {
	h := newHarness(t)
	p := newProvider(h, 10*time.Second)
	h.env.ExecuteWorkflow(workflows.BatchWorkflowName, batchInput(sixOps()))
	task := h.result()

	assert.Equal(t, storage.StatusCompleted, task.Status)
	assert.Equal(t, storage.Progress{Done: 6, Total: 6}, task.Progress)
	assert.ElementsMatch(t, []string{"server create web-01", "server create db-01", "taskserv create kubernetes@web-01",
		"taskserv create kubernetes@db-01", "taskserv create postgres@db-01", "cluster create buildkit"}, p.ran())
	// Independent branches run together; each operation starts once its
	// dependencies ended.
	assert.Equal(t, p.first("server create web-01").start, p.first("server create db-01").start)
	assert.Equal(t, p.first("taskserv create kubernetes@web-01").start, p.first("taskserv create kubernetes@db-01").start)
	assert.False(t, p.first("taskserv create kubernetes@web-01").start.Before(p.first("server create web-01").end))
	assert.False(t, p.first("taskserv create postgres@db-01").start.Before(p.first("taskserv create kubernetes@db-01").end))
	cl := p.first("cluster create buildkit")
	assert.False(t, cl.start.Before(p.first("taskserv create postgres@db-01").end))
	assert.False(t, cl.start.Before(p.first("taskserv create kubernetes@web-01").end))

	// Each operation is a task of its own with its dependencies' task ids.
	for _, id := range []string{"web", "db", "k8s-web", "k8s-db", "pg", "cluster"} {
		o := opByID(t, task, id)
		assert.Equal(t, storage.StatusCompleted, o.Status, id)
		assert.Equal(t, workflows.OperationTaskID(taskID1, id, false), o.TaskID)
		child, err := h.store.last(o.TaskID)
		require.NoError(t, err, id)
		assert.Equal(t, storage.StatusCompleted, child.Status, id)
		var wantDeps []string
		for _, d := range o.DependsOn {
			wantDeps = append(wantDeps, workflows.OperationTaskID(taskID1, d, false))
		}
		if wantDeps == nil {
			wantDeps = []string{}
		}
		assert.Equal(t, wantDeps, child.Dependencies, id)
	}
	assert.Empty(t, task.Batch.Compensations)
	assert.Equal(t, storage.PhaseDone, task.Batch.Phase)
}

func TestBatch_FailureRollsBackCompletedOperationsInReverse(t *testing.T) {
	h := newHarness(t)
	p := newProvider(h, 10*time.Second, "taskserv create postgres@db-01")
	h.env.ExecuteWorkflow(workflows.BatchWorkflowName, batchInput(sixOps()))
	err := h.workflowErr()
	var appErr *temporal.ApplicationError
	require.ErrorAs(t, err, &appErr)
	assert.Equal(t, workflows.ErrTypeBatchFailed, appErr.Type())

	task := h.lastProjection(taskID1)
	assert.Equal(t, storage.StatusFailed, task.Status)
	assert.Equal(t, storage.StatusFailed, opByID(t, task, "pg").Status)
	cl := opByID(t, task, "cluster")
	assert.Equal(t, storage.StatusCancelled, cl.Status)
	assert.Contains(t, cl.Error, "not started: it depends on pg, which failed")
	child, err := h.store.last(cl.TaskID)
	require.NoError(t, err)
	assert.Equal(t, storage.StatusCancelled, child.Status, "the dependent's task says it never ran")
	require.NotNil(t, task.Error)
	assert.Contains(t, *task.Error, "pg: ")
	assert.Contains(t, *task.Error, "not started: cluster")

	// The cluster never ran; the completed operations were undone, the
	// last completed first.
	ran := p.ran()
	assert.NotContains(t, ran, "cluster create buildkit")
	var deletes []string
	for _, r := range ran {
		if strings.Contains(r, " delete ") {
			deletes = append(deletes, r)
		}
	}
	require.Len(t, deletes, 4)
	// k8s-web and k8s-db completed together (same workflow time): either
	// order is a reverse completion order, but every taskserv goes before
	// the servers it runs on.
	assert.ElementsMatch(t, []string{"taskserv delete kubernetes@web-01", "taskserv delete kubernetes@db-01"}, deletes[:2])
	assert.ElementsMatch(t, []string{"server delete web-01", "server delete db-01"}, deletes[2:])
	require.Len(t, task.Batch.Compensations, 4)
	for _, c := range task.Batch.Compensations {
		assert.Equal(t, storage.StatusCompleted, c.Status, c.Target)
		assert.Equal(t, int32(1), c.Attempts)
	}
	for _, id := range []string{"web", "db", "k8s-web", "k8s-db"} {
		assert.True(t, opByID(t, task, id).RolledBack, id)
	}
	assert.False(t, opByID(t, task, "pg").RolledBack)
	assert.Contains(t, *task.Error, "rolled back: ")
}

func TestBatch_RollbackFalseKeepsWhatWasMade(t *testing.T) {
	h := newHarness(t)
	p := newProvider(h, time.Second, "server create db-01")
	in := batchInput(sixOps())
	in.NoRollback = true
	h.env.ExecuteWorkflow(workflows.BatchWorkflowName, in)
	_ = h.workflowErr()
	for _, r := range p.ran() {
		assert.NotContains(t, r, " delete ")
	}
	task := h.lastProjection(taskID1)
	// The web branch does not depend on db: it went on.
	assert.Equal(t, storage.StatusCompleted, opByID(t, task, "k8s-web").Status)
	assert.Equal(t, storage.StatusCancelled, opByID(t, task, "pg").Status)
	assert.Contains(t, opByID(t, task, "pg").Error, "depends on k8s-db, which did not complete")
}

func TestBatch_FailFastStopsOtherBranches(t *testing.T) {
	h := newHarness(t)
	p := newProvider(h, 10*time.Second, "server create db-01")
	in := batchInput(sixOps())
	in.FailFast = true
	in.NoRollback = true
	h.env.ExecuteWorkflow(workflows.BatchWorkflowName, in)
	_ = h.workflowErr()
	assert.NotContains(t, p.ran(), "taskserv create kubernetes@web-01")
	task := h.lastProjection(taskID1)
	assert.Contains(t, opByID(t, task, "k8s-web").Error, "fail_fast stopped the batch after db failed")
}

func TestBatch_PlanModeChecksEverythingAndChangesNothing(t *testing.T) {
	h := newHarness(t)
	var args [][]string
	h.mockRun(nil, time.Second, func(ctx context.Context, step activities.NuStep) (activities.NuStepResult, error) {
		h.mu.Lock()
		args = append(args, step.Args)
		h.mu.Unlock()
		return activities.NuStepResult{Stdout: "would " + describeArgs(step.Args) + "\n", Attempt: 1}, nil
	})
	in := batchInput(sixOps())
	in.Mode = workflows.BatchModePlan
	h.env.ExecuteWorkflow(workflows.BatchWorkflowName, in)
	task := h.result()
	require.Len(t, args, 6)
	for _, a := range args {
		assert.Contains(t, a, "--check")
		assert.NotContains(t, a, "delete")
	}
	assert.Equal(t, storage.StatusCompleted, task.Status)
	for _, o := range task.Batch.Operations {
		assert.Equal(t, workflows.OperationTaskID(taskID1, o.ID, true), o.TaskID)
		assert.Equal(t, o.TaskID, o.PlanTaskID)
		assert.Contains(t, o.Plan, "would ")
	}
	assert.Contains(t, *task.Output, "== plan cluster ==\nwould cluster create buildkit")
}

func approvalInput() workflows.BatchInput {
	in := batchInput([]workflows.Operation{
		{ID: "web", Type: "server", Servers: []string{"web-01"}},
		{ID: "k8s", Type: "taskserv", Taskserv: "kubernetes", Servers: []string{"web-01"}, DependsOn: []string{"web"}},
	})
	in.RequireApproval = true
	in.ApprovalTimeout = time.Hour
	return in
}

// decideAfter sends an approval update once the plan has run.
func (h *harness) decideAfter(d time.Duration, update string, req workflows.ApprovalRequest, check func(error)) {
	h.env.RegisterDelayedCallback(func() {
		var once bool
		report := func(err error) {
			if !once {
				once = true
				check(err)
			}
		}
		h.env.UpdateWorkflow(update, "u-"+update+d.String(), &testsuite.TestUpdateCallback{
			OnAccept:   func() {},
			OnReject:   report,
			OnComplete: func(_ any, err error) { report(err) },
		}, req)
	}, d)
}

func TestBatch_ApprovalThenApply(t *testing.T) {
	h := newHarness(t)
	p := newProvider(h, time.Second)
	// Asked before the plan ran, an approval is refused.
	var early, empty, late error
	h.decideAfter(500*time.Millisecond, workflows.ApproveUpdate, workflows.ApprovalRequest{Approver: "alice"}, func(err error) { early = err })
	h.decideAfter(time.Minute, workflows.ApproveUpdate, workflows.ApprovalRequest{}, func(err error) { empty = err })
	h.decideAfter(2*time.Minute, workflows.ApproveUpdate, workflows.ApprovalRequest{Approver: "alice", Comment: "lgtm"}, func(err error) { require.NoError(t, err) })
	h.decideAfter(2*time.Minute+500*time.Millisecond, workflows.RejectUpdate, workflows.ApprovalRequest{Approver: "bob"}, func(err error) { late = err })
	h.env.ExecuteWorkflow(workflows.BatchWorkflowName, approvalInput())
	task := h.result()

	var appErr *temporal.ApplicationError
	require.ErrorAs(t, early, &appErr)
	assert.Equal(t, workflows.ErrTypeNotAwaitingApproval, appErr.Type())
	require.Error(t, empty)
	assert.Contains(t, empty.Error(), "approver")
	assert.Error(t, late, "a second decision is refused")

	ran := p.ran()
	require.Len(t, ran, 4)
	// Plan first (both with --check: the mock's description hides flags,
	// so count the apply calls after the approval instead).
	assert.Equal(t, "server create web-01", ran[0])
	assert.Equal(t, "server create web-01", ran[2])
	assert.False(t, p.calls[2].start.Before(t0.Add(2*time.Minute)), "apply starts after the approval")
	assert.Equal(t, storage.StatusCompleted, task.Status)
	ap := task.Batch.Approval
	require.NotNil(t, ap)
	assert.Equal(t, storage.DecisionApproved, ap.Decision)
	assert.Equal(t, "alice", ap.Approver)
	assert.Equal(t, "lgtm", ap.Comment)
	require.Len(t, task.Steps, 4)
	assert.Equal(t, "plan web", task.Steps[0].Name)
	assert.Equal(t, storage.StatusCompleted, opByID(t, task, "k8s").PlanStatus)
	assert.Equal(t, storage.StatusCompleted, opByID(t, task, "k8s").Status)
}

func TestBatch_RejectCancelsAndTimeoutFails(t *testing.T) {
	t.Run("reject", func(t *testing.T) {
		h := newHarness(t)
		p := newProvider(h, time.Second)
		h.decideAfter(time.Minute, workflows.RejectUpdate, workflows.ApprovalRequest{Approver: "bob", Comment: "not today"}, func(err error) { require.NoError(t, err) })
		h.env.ExecuteWorkflow(workflows.BatchWorkflowName, approvalInput())
		err := h.workflowErr()
		var canceled *temporal.CanceledError
		require.ErrorAs(t, err, &canceled)
		assert.Len(t, p.ran(), 2, "only the plan ran")
		task := h.lastProjection(taskID1)
		assert.Equal(t, storage.StatusCancelled, task.Status)
		assert.Equal(t, "plan rejected by bob: not today", *task.Error)
		apply, err := h.store.last(opByID(t, task, "web").TaskID)
		require.NoError(t, err)
		assert.Equal(t, storage.StatusCancelled, apply.Status)
	})
	t.Run("timeout", func(t *testing.T) {
		h := newHarness(t)
		p := newProvider(h, time.Second)
		in := approvalInput()
		in.ApprovalTimeout = 10 * time.Minute
		h.env.ExecuteWorkflow(workflows.BatchWorkflowName, in)
		err := h.workflowErr()
		var appErr *temporal.ApplicationError
		require.ErrorAs(t, err, &appErr)
		assert.Equal(t, workflows.ErrTypeApprovalTimedOut, appErr.Type())
		assert.Len(t, p.ran(), 2)
		task := h.lastProjection(taskID1)
		assert.Equal(t, storage.StatusFailed, task.Status)
		assert.Equal(t, storage.DecisionTimedOut, task.Batch.Approval.Decision)
	})
}

func TestBatch_CancelRollsBack(t *testing.T) {
	h := newHarness(t)
	p := newProvider(h, 10*time.Second)
	h.env.RegisterDelayedCallback(h.env.CancelWorkflow, 15*time.Second)
	h.env.ExecuteWorkflow(workflows.BatchWorkflowName, batchInput(sixOps()))
	err := h.workflowErr()
	var canceled *temporal.CanceledError
	require.True(t, errors.As(err, &canceled), "%v", err)
	task := h.lastProjection(taskID1)
	assert.Equal(t, storage.StatusCancelled, task.Status)
	ran := p.ran()
	assert.NotContains(t, ran, "cluster create buildkit")
	assert.Contains(t, ran, "server delete web-01")
	assert.Contains(t, ran, "server delete db-01")
	assert.Equal(t, storage.StatusCancelled, opByID(t, task, "cluster").Status)
}

func TestBatchInput_Validate(t *testing.T) {
	ok := batchInput(sixOps())
	require.NoError(t, ok.Validate())
	tests := []struct {
		name      string
		mutate    func(*workflows.BatchInput)
		field     string
		substring string
	}{
		{"no operations", func(in *workflows.BatchInput) { in.Operations = nil }, "operations", "at least one"},
		{"duplicate id", func(in *workflows.BatchInput) { in.Operations[1].ID = "web" }, "operations[1].id", `duplicate operation id "web"`},
		{"unknown dependency", func(in *workflows.BatchInput) { in.Operations[2].DependsOn = []string{"nope"} }, "operations[2].depends_on[0]", `operation k8s-web depends on unknown operation "nope"`},
		{"self dependency", func(in *workflows.BatchInput) { in.Operations[0].DependsOn = []string{"web"} }, "operations[0].depends_on[0]", "depends on itself"},
		{"cycle", func(in *workflows.BatchInput) { in.Operations[0].DependsOn = []string{"cluster"} }, "operations[0].depends_on", "cycle: web -> cluster -> k8s-web -> web"},
		{"bad type", func(in *workflows.BatchInput) { in.Operations[3].Type = "volume" }, "operations[3].type", `unknown type "volume"`},
		{"taskserv without name", func(in *workflows.BatchInput) { in.Operations[3].Taskserv = "" }, "operations[3].taskserv", "(operation k8s-db)"},
		{"cluster with servers", func(in *workflows.BatchInput) { in.Operations[5].Servers = []string{"x"} }, "operations[5].servers", "not used"},
		{"bad server name", func(in *workflows.BatchInput) { in.Operations[0].Servers = []string{"a b"} }, "operations[0].servers[0]", ""},
		{"no infra anywhere", func(in *workflows.BatchInput) { in.Infra = "" }, "operations[0].infra", ""},
		{"bad mode", func(in *workflows.BatchInput) { in.Mode = "yolo" }, "mode", ""},
		{"plan with approval", func(in *workflows.BatchInput) { in.Mode = "plan"; in.RequireApproval = true }, "require_approval", ""},
		{"parallelism", func(in *workflows.BatchInput) { in.Parallelism = 101 }, "parallelism", ""},
		{"approval timeout", func(in *workflows.BatchInput) { in.ApprovalTimeout = time.Millisecond }, "approval_timeout", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := batchInput(sixOps())
			tt.mutate(&in)
			err := in.Validate()
			var fe *workflows.FieldError
			require.ErrorAs(t, err, &fe)
			assert.Equal(t, tt.field, fe.Field)
			assert.Contains(t, fe.Message, tt.substring)
		})
	}
	// Per-operation infra overrides the batch's.
	in := batchInput(sixOps())
	in.Infra = ""
	for i := range in.Operations {
		in.Operations[i].Infra = "staging"
	}
	assert.NoError(t, in.Validate())
}

// While operations run, the batch record is written at most once per
// 250 ms of workflow time (and at phase ends), not once per operation's
// start or end: 20 operations ending 100 ms apart make a handful of
// batch projections, each operation's own task still all of its own.
func TestBatch_ProjectionsAreCoalesced(t *testing.T) {
	h := newHarness(t)
	var ops []workflows.Operation
	for i := range 20 {
		ops = append(ops, workflows.Operation{ID: fmt.Sprintf("s%02d", i), Type: "server", Servers: []string{fmt.Sprintf("s%02d", i)}})
	}
	in := batchInput(ops)
	in.Parallelism = 20
	// Each server takes 100 ms longer than the one before.
	for i := range ops {
		d := time.Duration(i+1) * 100 * time.Millisecond
		name := ops[i].ID
		h.env.OnActivity(h.acts.RunNushell, mock.Anything, mock.MatchedBy(func(s activities.NuStep) bool { return s.Step == name })).
			Return(activities.NuStepResult{Stdout: "ok\n", Attempt: 1}, nil).After(d)
	}
	h.env.ExecuteWorkflow(workflows.BatchWorkflowName, in)
	task := h.result()
	assert.Equal(t, storage.Progress{Done: 20, Total: 20}, task.Progress)
	batchWrites := len(h.store.projections(taskID1))
	// Running, then one per 250 ms of the ~2 s the operations take (at
	// most 9), the phase's end and the final one: far below the 40 a
	// write per start and end would make.
	assert.LessOrEqual(t, batchWrites, 12, "batch projections")
	assert.GreaterOrEqual(t, batchWrites, 3)
	for _, o := range task.Batch.Operations {
		child, err := h.store.last(o.TaskID)
		require.NoError(t, err)
		assert.Equal(t, storage.StatusCompleted, child.Status)
	}
	t.Logf("20 operations ending 100 ms apart: %d batch projections", batchWrites)
}
