package workflows_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	sdkpb "go.temporal.io/api/sdk/v1"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/provisioning/orchestrator/activities"
	"github.com/provisioning/orchestrator/internal/searchattr"
	"github.com/provisioning/orchestrator/workflows"
)

// currentDetails asks the workflow's metadata query, as the Web UI does,
// for its current details.
func (h *harness) currentDetails() string {
	h.t.Helper()
	v, err := h.env.QueryWorkflow("__temporal_workflow_metadata")
	require.NoError(h.t, err)
	var md sdkpb.WorkflowMetadata
	require.NoError(h.t, v.Get(&md))
	return md.GetCurrentDetails()
}

// While a task runs its current details say how far it is, which steps run
// and which failed; at the end, how it ended.
func TestServerCreate_CurrentDetails(t *testing.T) {
	h := newHarness(t)
	h.mockRun(stepIs("web-01"), time.Second, succeed).Once()
	h.mockRun(stepIs("web-02"), time.Second, failWith(activities.ErrTypeNushellPermanent, true, 3, "no such image")).Once()
	h.mockRun(stepIs("web-03", "web-04"), time.Second, succeed).Twice()
	in := serverInput(taskID1, "web-01", "web-02", "web-03", "web-04")
	in.Policy.Parallelism = 2
	in.Priority = 2

	var early, mid string
	h.env.RegisterDelayedCallback(func() { early = h.currentDetails() }, 500*time.Millisecond)
	h.env.RegisterDelayedCallback(func() { mid = h.currentDetails() }, 1500*time.Millisecond)
	h.env.ExecuteWorkflow(workflows.ServerCreateWorkflowName, in)
	_ = h.workflowErr()

	assert.Equal(t, "0/4 done · running web-01, web-02 · priority 2", early)
	assert.Equal(t, "2/4 done · running web-03, web-04 · 1 failed: web-02 · priority 2", mid)
	assert.Equal(t, "Failed · 4/4 done · 1 failed: web-02", h.currentDetails())
}

// A long list of running steps is cut: the line stays readable.
func TestServerCreate_CurrentDetailsBounded(t *testing.T) {
	h := newHarness(t)
	h.mockRun(nil, time.Second, succeed).Times(8)
	in := serverInput(taskID1, "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8")
	in.Policy.Parallelism = 8
	var early string
	h.env.RegisterDelayedCallback(func() { early = h.currentDetails() }, 500*time.Millisecond)
	h.env.ExecuteWorkflow(workflows.ServerCreateWorkflowName, in)
	h.result()
	assert.Equal(t, "0/8 done · running s1, s2, s3, s4, s5 and 3 more · priority 3", early)
	assert.Equal(t, "Completed · 8/8 done", h.currentDetails())
}

// A priority change upserts the Priority search attribute when the start
// carried it, so `temporal workflow list --query 'Priority=1'` finds the
// task; without it at start (a cluster lacking the attribute) nothing is
// upserted, since Temporal would reject it.
func TestServerCreate_SetPriorityUpsertsSearchAttribute(t *testing.T) {
	for _, withAttrs := range []bool{true, false} {
		t.Run(fmt.Sprintf("start_attributes=%v", withAttrs), func(t *testing.T) {
			h := newHarness(t)
			h.mockRun(nil, time.Second, succeed).Times(2)
			in := serverInput(taskID1, "web-01", "web-02")
			in.Policy.Parallelism = 1
			in.Priority = 4
			if withAttrs {
				require.NoError(t, h.env.SetTypedSearchAttributesOnStart(searchattr.All.Start(in.Infra, in.Priority)))
			}
			var upserted []temporal.SearchAttributes
			h.env.OnUpsertTypedSearchAttributes(mock.Anything).Run(func(args mock.Arguments) {
				upserted = append(upserted, args.Get(0).(temporal.SearchAttributes))
			}).Return(nil).Maybe()
			var done bool
			var uerr error
			h.env.RegisterDelayedCallback(func() {
				h.env.UpdateWorkflow(workflows.SetPriorityUpdate, "prio", &testsuite.TestUpdateCallback{
					OnAccept:   func() {},
					OnReject:   func(err error) { uerr, done = err, true },
					OnComplete: func(_ any, err error) { uerr, done = err, true },
				}, workflows.SetPriorityRequest{Priority: 1})
			}, 500*time.Millisecond)
			h.env.ExecuteWorkflow(workflows.ServerCreateWorkflowName, in)
			h.result()
			require.True(t, done)
			require.NoError(t, uerr)
			if !withAttrs {
				assert.Empty(t, upserted)
				return
			}
			require.Len(t, upserted, 1)
			p, ok := upserted[0].GetInt64(searchattr.Priority)
			require.True(t, ok)
			assert.Equal(t, int64(1), p)
			_, infra := upserted[0].GetKeyword(searchattr.Infra)
			assert.False(t, infra, "only the priority changes")
		})
	}
}
