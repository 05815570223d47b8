package server

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/mocks"

	"github.com/provisioning/orchestrator/activities"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/testenv"
	"github.com/provisioning/orchestrator/workflows"
)

func newAuditFixture(t *testing.T) *fixture {
	t.Helper()
	return newFixture(t, Options{})
}

func (f *fixture) audit(path string) []storage.AuditEntry {
	f.t.Helper()
	code, data := f.do(http.MethodGet, path, "")
	require.Equal(f.t, http.StatusOK, code, string(data))
	var out []storage.AuditEntry
	require.NoError(f.t, json.Unmarshal(data, &out))
	require.NotNil(f.t, out, "an empty trail is [], not null")
	return out
}

func TestAuditCreateAndCancel(t *testing.T) {
	f := newAuditFixture(t)
	f.client.On("ExecuteWorkflow", mock.Anything, mock.Anything, workflows.ServerCreateWorkflowName, mock.Anything).
		Return(nil, nil).Once()
	code, data := f.do(http.MethodPost, "/workflows/servers/create",
		`{"infra":"prod","settings":"settings.k","servers":["web-01"]}`)
	require.Equal(t, http.StatusOK, code, string(data))
	var id string
	require.NoError(t, json.Unmarshal(data, &id))

	got := f.audit("/tasks/" + id + "/audit")
	require.Len(t, got, 1)
	require.Equal(t, storage.AuditCreateID(id), got[0].ID)
	require.Equal(t, storage.AuditCreate, got[0].Action)
	require.Equal(t, AnonymousActor, got[0].Actor)
	require.Equal(t, storage.StatusPending, got[0].After)

	// The workflow's projection, then a cancel request.
	tk, err := f.store.Get(context.Background(), id)
	require.NoError(t, err)
	tk.Status, tk.Version, tk.UpdatedAt = storage.StatusRunning, 1, tk.CreatedAt.Add(time.Microsecond)
	require.NoError(t, (&activities.Activities{Store: f.store}).ProjectTask(context.Background(), tk))
	time.Sleep(5 * time.Millisecond) // the cancel comes strictly later (audit order is by time)
	f.client.On("CancelWorkflow", mock.Anything, id, "").Return(nil).Once()
	code, data = f.do(http.MethodPost, "/tasks/"+id+"/cancel", "")
	require.Equal(t, http.StatusAccepted, code, string(data))

	got = f.audit("/tasks/" + id + "/audit")
	require.Len(t, got, 3)
	require.Equal(t, storage.AuditTransitionID(id, 1), got[1].ID)
	require.Equal(t, activities.ProjectionActor, got[1].Actor)
	require.Equal(t, storage.StatusPending, got[1].Before)
	require.Equal(t, storage.StatusRunning, got[1].After)
	cancel := got[2]
	require.True(t, strings.HasPrefix(cancel.ID, id+"/cancel/"), cancel.ID)
	require.Equal(t, ActionCancelRequested, cancel.Action)
	require.Equal(t, AnonymousActor, cancel.Actor)
	require.Equal(t, storage.StatusRunning, cancel.Before)
	require.Equal(t, int64(1), cancel.Version)

	// A refused cancel (terminal task) records nothing.
	tk.Status, tk.Version, tk.UpdatedAt = storage.StatusCancelled, 2, time.Now()
	require.NoError(t, f.store.Put(context.Background(), tk))
	code, _ = f.do(http.MethodPost, "/tasks/"+id+"/cancel", "")
	require.Equal(t, http.StatusConflict, code)
	require.Len(t, f.audit("/tasks/"+id+"/audit"), 4, "the Cancelled transition, no second cancel")

	// GET /audit: all tasks, filter, limit.
	require.Len(t, f.audit("/audit"), 4)
	require.Equal(t, got[2:3], f.audit("/audit?task_id=" + id + "&limit=2")[:1])
	last := f.audit("/audit?limit=1")
	require.Len(t, last, 1)
	require.Equal(t, storage.StatusCancelled, last[0].After)
	require.Empty(t, f.audit("/audit?task_id="+uuid.NewString()))
	require.Len(t, f.audit("/tasks/"+id+"/audit?limit=2"), 2)
}

func TestAuditEndpointErrors(t *testing.T) {
	f := newAuditFixture(t)
	for path, want := range map[string]int{
		"/tasks/" + uuid.NewString() + "/audit":   http.StatusNotFound,
		"/tasks/NOT-A-UUID/audit":                 http.StatusBadRequest,
		"/audit?task_id=../x":                     http.StatusBadRequest,
		"/audit?limit=0":                          http.StatusBadRequest,
		"/audit?limit=1001":                       http.StatusBadRequest,
		"/audit?limit=x":                          http.StatusBadRequest,
		"/audit?status=Running":                   http.StatusBadRequest,
		"/tasks/" + uuid.NewString() + "/audit?x": http.StatusBadRequest,
	} {
		code, data := f.do(http.MethodGet, path, "")
		require.Equal(t, want, code, "%s: %s", path, data)
	}
	require.Len(t, f.audit("/audit?limit=1000"), 0)
}

func TestAuditFailedStart(t *testing.T) {
	f := newAuditFixture(t)
	f.client.On("ExecuteWorkflow", mock.Anything, mock.Anything, mock.Anything, mock.Anything).
		Return(nil, errors.New("temporal is down")).Once()
	f.expectLookup(serviceerror.NewNotFound("workflow not found"))
	code, _ := f.do(http.MethodPost, "/workflows/servers/create",
		`{"infra":"prod","settings":"settings.k","servers":["web-01"]}`)
	require.Equal(t, http.StatusServiceUnavailable, code)

	got := f.audit("/audit")
	require.Len(t, got, 2, "%+v", got)
	id := got[0].TaskID
	require.Equal(t, storage.AuditCreateID(id), got[0].ID)
	require.Equal(t, id+"/"+ActionStartFailed, got[1].ID)
	require.Contains(t, got[1].Detail, "temporal is down")
	code, _ = f.do(http.MethodGet, "/tasks/"+id+"/audit", "")
	require.Equal(t, http.StatusNotFound, code, "the task itself is gone")
}

func TestAuditEnvironmentEvents(t *testing.T) {
	f := newAuditFixture(t)
	now := time.Now().UTC().Truncate(time.Microsecond)
	st := testenv.EnvState{ID: uuid.NewString(), Status: "ready", Type: "single", CreatedAt: now, UpdatedAt: now, Version: 3}
	tk, err := testenv.EnvTask(st)
	require.NoError(t, err)
	require.NoError(t, f.store.Put(context.Background(), tk))

	handle := &mocks.WorkflowUpdateHandle{}
	handle.On("Get", mock.Anything, mock.Anything).Run(func(args mock.Arguments) {
		*args.Get(1).(*testenv.TestRun) = testenv.TestRun{Number: 1, Passed: false, Total: 4, Failed: 1}
	}).Return(nil).Once()
	f.client.On("UpdateWorkflow", mock.Anything, mock.Anything).Return(handle, nil).Once()
	code, data := f.do(http.MethodPost, "/test/environments/"+st.ID+"/run", "")
	require.Equal(t, http.StatusOK, code, string(data))

	f.client.On("SignalWorkflow", mock.Anything, st.ID, "", workflows.CleanupSignal, nil).Return(nil).Once()
	code, data = f.do(http.MethodDelete, "/test/environments/"+st.ID, "")
	require.Equal(t, http.StatusAccepted, code, string(data))

	got := f.audit("/tasks/" + st.ID + "/audit")
	require.Len(t, got, 3, "%+v", got)
	require.Equal(t, storage.AuditTransition, got[0].Action, "the Put that created the environment task")
	run, cleanup := got[1], got[2]
	require.Equal(t, ActionTestRunRequested, run.Action)
	require.True(t, strings.HasPrefix(run.ID, st.ID+"/run/"), run.ID)
	require.Equal(t, "run 1: 3 of 4 tests passed", run.Detail)
	require.Equal(t, storage.StatusRunning, run.Before)
	require.Equal(t, ActionCleanupRequested, cleanup.Action)
	require.True(t, strings.HasPrefix(cleanup.ID, st.ID+"/cleanup/"), cleanup.ID)
	require.Equal(t, AnonymousActor, cleanup.Actor)
	require.Equal(t, int64(3), cleanup.Version)
	handle.AssertExpectations(t)
}
