package server

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	commonpb "go.temporal.io/api/common/v1"
	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/mocks"

	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/workflows"
)

// Handler tests of POST /tasks/{id}/retry and of `servers: []`.

// failedServerTask stores a Failed server create of web-01 (completed),
// web-02 (failed) and web-03 (cancelled) with the args the workflow
// projects, and returns it with the input it was started with.
func (f *fixture) failedServerTask(status storage.TaskStatus) (storage.Task, workflows.ServerCreateInput) {
	f.t.Helper()
	now := time.Now().UTC().Truncate(time.Microsecond)
	in := workflows.ServerCreateInput{Common: workflows.Common{TaskID: uuid.NewString(), Infra: "prod", Settings: "./s.yaml",
		CheckMode: true, Priority: 4, CreatedAt: now}, Servers: []string{"web-01", "web-02", "web-03"}}
	spec := in.Task()
	task := storage.Task{ID: in.TaskID, Name: spec.Name, Command: spec.Command, Args: spec.Args, Status: status,
		CreatedAt: now, UpdatedAt: now, StartedAt: &now, WorkflowType: spec.Workflow, Priority: 4, Version: 5,
		Steps: []storage.StepResult{
			{Name: "web-01", Status: storage.StatusCompleted},
			{Name: "web-02", Status: storage.StatusFailed, Error: "boom"},
			{Name: "web-03", Status: storage.StatusCancelled},
		}}
	if status.Terminal() {
		task.CompletedAt = &now
	}
	require.NoError(f.t, f.store.Put(f.t.Context(), task))
	return mustGet(f.t, f.store, task.ID), in
}

// expectHistory expects one GetWorkflowHistory of id whose first event
// starts wfType with input; err instead fails the read.
func (f *fixture) expectHistory(id, wfType string, input any, err error) {
	it := &mocks.HistoryEventIterator{}
	it.Test(f.t)
	f.t.Cleanup(func() { it.AssertExpectations(f.t) })
	if err != nil {
		it.On("HasNext").Return(true).Once()
		it.On("Next").Return(nil, err).Once()
	} else {
		payloads, perr := converter.GetDefaultDataConverter().ToPayloads(input)
		require.NoError(f.t, perr)
		it.On("HasNext").Return(true).Once()
		it.On("Next").Return(&historypb.HistoryEvent{EventId: 1, EventType: enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED,
			Attributes: &historypb.HistoryEvent_WorkflowExecutionStartedEventAttributes{
				WorkflowExecutionStartedEventAttributes: &historypb.WorkflowExecutionStartedEventAttributes{
					WorkflowType: &commonpb.WorkflowType{Name: wfType}, Input: payloads}}}, nil).Once()
	}
	f.client.On("GetWorkflowHistory", mock.Anything, id, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT).Return(it).Once()
}

func auditActions(entries []storage.AuditEntry) map[string]string {
	out := map[string]string{}
	for _, e := range entries {
		out[e.Action] = e.Detail
	}
	return out
}

// A retry starts the same workflow with only the steps that did not
// complete, the original's options, the old id as dependency, and records
// itself in both audit trails.
func TestRetryStartsOnlyWhatDidNotComplete(t *testing.T) {
	for _, tc := range []struct {
		name    string
		history error // nil: the history has the input
		body    string
		prio    int
	}{
		{name: "from the history", prio: 4},
		{name: "from the record once the history is gone", history: serviceerror.NewNotFound("workflow not found"), prio: 4},
		{name: "with a new priority", body: `{"priority":1}`, prio: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, Options{TaskQueue: testQueue, Policy: workflows.ExecPolicy{MaxAttempts: 7},
				FairnessWeights: map[string]float32{"prod": 3}})
			old, orig := f.failedServerTask(storage.StatusFailed)
			f.expectHistory(old.ID, workflows.ServerCreateWorkflowName, orig, tc.history)
			call := f.expectStart(workflows.ServerCreateWorkflowName, nil)

			var newID string
			f.ok(http.StatusOK, http.MethodPost, "/tasks/"+old.ID+"/retry", tc.body, &newID)
			require.NotEqual(t, old.ID, newID)

			in := call.input.(*workflows.ServerCreateInput)
			assert.Equal(t, []string{"web-02", "web-03"}, in.Servers, "only the steps that did not complete")
			assert.Equal(t, newID, in.TaskID)
			assert.Equal(t, "prod", in.Infra)
			assert.Equal(t, "./s.yaml", in.Settings)
			assert.True(t, in.CheckMode)
			assert.False(t, in.Wait)
			assert.Equal(t, tc.prio, in.Priority)
			assert.Equal(t, []string{old.ID}, in.Dependencies)
			assert.Equal(t, workflows.ExecPolicy{MaxAttempts: 7}, in.Policy, "the service's policy, like any new task")
			assert.Equal(t, float32(3), in.FairnessWeight)
			assert.Equal(t, testQueue, call.opts.TaskQueue)
			assert.Equal(t, tc.prio, call.opts.Priority.PriorityKey)
			assert.Equal(t, "server create prod: web-02, web-03", call.opts.StaticSummary)

			assert.Equal(t, []string{old.ID}, call.pending.Dependencies, "the Pending record shows the dependency")
			assert.Equal(t, storage.StatusPending, call.pending.Status)
			assert.Equal(t, tc.prio, call.pending.Priority)

			assert.Equal(t, old.ID, auditActions(f.audit("/tasks/" + newID + "/audit"))[ActionRetryOf])
			assert.Equal(t, newID, auditActions(f.audit("/tasks/" + old.ID + "/audit"))[ActionRetriedAs])
			assert.Equal(t, old, mustGet(t, f.store, old.ID), "the old task is not changed")
			assert.Equal(t, workflows.DefaultRetryID(old), newID, "without a key: one retry per task")

			// The same retry again (a double click): the same task, nothing started.
			f.expectHistory(old.ID, workflows.ServerCreateWorkflowName, orig, tc.history)
			again := f.ok(http.StatusOK, http.MethodPost, "/tasks/"+old.ID+"/retry", tc.body, nil)
			assert.Equal(t, newID, taskIDOf(t, again.data))
			assert.Equal(t, "true", again.header.Get(IdempotentReplayedHeader))
			assert.Len(t, f.tasks(), 2)
		})
	}
}

func TestRetryRefuses(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status storage.TaskStatus
		wfType string
		want   string
	}{
		{"running", storage.StatusRunning, "", "it is still Running; wait for it to end or cancel it first"},
		{"pending", storage.StatusPending, "", "it is still Pending"},
		{"completed", storage.StatusCompleted, "", "it completed; there is nothing to retry"},
		{"test environment", storage.StatusFailed, workflows.TestEnvironmentWorkflowName, "it is a test environment; environments are not retried, create a new one"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, Options{})
			task := f.putTask(tc.status)
			if tc.wfType != "" {
				task.WorkflowType = tc.wfType
				task.Version++
				require.NoError(t, f.store.Put(t.Context(), task))
			}
			e := f.fail(http.StatusConflict, http.MethodPost, "/tasks/"+task.ID+"/retry", "")
			assert.Equal(t, CodeConflict, e.Code)
			assert.Equal(t, "task "+task.ID+" cannot be retried: "+tc.want, e.Message[:min(len(e.Message), len("task "+task.ID+" cannot be retried: "+tc.want))])
			assert.Len(t, f.tasks(), 1, "nothing started")
		})
	}
}

func TestRetryBadRequests(t *testing.T) {
	f := newFixture(t, Options{})
	e := f.fail(http.StatusNotFound, http.MethodPost, "/tasks/"+uuid.NewString()+"/retry", "")
	assert.Equal(t, ErrorBody{Code: CodeNotFound, Message: "task not found"}, e)

	e = f.fail(http.StatusBadRequest, http.MethodPost, "/tasks/NOT-A-UUID/retry", "")
	assert.Equal(t, "id", e.Field)

	old, _ := f.failedServerTask(storage.StatusFailed)
	e = f.fail(http.StatusBadRequest, http.MethodPost, "/tasks/"+old.ID+"/retry", `{"priority":9}`)
	assert.Equal(t, "priority", e.Field)
	e = f.fail(http.StatusBadRequest, http.MethodPost, "/tasks/"+old.ID+"/retry", `{"servers":["web-01"]}`)
	assert.Equal(t, "servers", e.Field)
	assert.Equal(t, "servers: unknown field", e.Message)

	// A history that cannot be read is Temporal's outage, not the task's.
	f.expectHistory(old.ID, "", nil, serviceerror.NewUnavailable("connection refused"))
	e = f.fail(http.StatusServiceUnavailable, http.MethodPost, "/tasks/"+old.ID+"/retry", "")
	assert.Equal(t, CodeUnavailable, e.Code)

	// A history that is not this task's is refused.
	f.expectHistory(old.ID, workflows.ClusterCreateWorkflowName, workflows.ClusterCreateInput{}, nil)
	e = f.fail(http.StatusConflict, http.MethodPost, "/tasks/"+old.ID+"/retry", "")
	assert.Contains(t, e.Message, "its workflow is a ClusterCreate, but its record says ServerCreate")
	assert.Len(t, f.tasks(), 1, "nothing started")
}

// The same Idempotency-Key names the same retry: no second task, and the
// audit trails record it once.
func TestRetryIdempotencyKey(t *testing.T) {
	f := newFixture(t, Options{})
	old, orig := f.failedServerTask(storage.StatusCancelled)
	send := func() reply {
		req := httptest.NewRequest(http.MethodPost, "/tasks/"+old.ID+"/retry", nil)
		req.Header.Set(IdempotencyKeyHeader, "retry-42")
		rec := httptest.NewRecorder()
		f.srv.ServeHTTP(rec, req)
		r := reply{code: rec.Code, header: rec.Header()}
		require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
		return r
	}
	f.expectHistory(old.ID, workflows.ServerCreateWorkflowName, orig, nil)
	call := f.expectStart(workflows.ServerCreateWorkflowName, nil)
	send()
	newID := call.opts.ID
	assert.Equal(t, storage.IdempotentID("anonymous\x00"+retryScope+workflows.ServerCreateWorkflowName, "retry-42"), newID)

	f.expectHistory(old.ID, workflows.ServerCreateWorkflowName, orig, nil)
	again := send()
	assert.Equal(t, "true", again.header.Get(IdempotentReplayedHeader))
	assert.Len(t, f.tasks(), 2, "no third task")
	n := 0
	for _, e := range f.audit("/tasks/" + old.ID + "/audit") {
		if e.Action == ActionRetriedAs {
			n++
		}
	}
	assert.Equal(t, 1, n, "one retried_as entry")
}

// `servers: []` starts a server create of every server the settings define
// (the workflow lists them); an absent or null list is still refused.
func TestCreateServersEmptyMeansEvery(t *testing.T) {
	f := newFixture(t, Options{})
	call := f.expectStart(workflows.ServerCreateWorkflowName, nil)
	f.ok(http.StatusOK, http.MethodPost, "/workflows/servers/create", `{"infra":"production","settings":"./settings.yaml","servers":[],"wait":true}`, nil)
	in := call.input.(workflows.ServerCreateInput)
	assert.Empty(t, in.Servers)
	assert.Equal(t, "server create production", call.opts.StaticSummary)

	for _, body := range []string{`{"infra":"production","settings":"./settings.yaml"}`, `{"infra":"production","settings":"./settings.yaml","servers":null}`} {
		e := f.fail(http.StatusBadRequest, http.MethodPost, "/workflows/servers/create", body)
		assert.Equal(t, "servers", e.Field)
		assert.True(t, strings.Contains(e.Message, "send [] for every server the settings define"), e.Message)
	}
}
