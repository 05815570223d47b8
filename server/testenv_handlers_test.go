package server

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/mocks"
	"go.temporal.io/sdk/temporal"

	"github.com/provisioning/orchestrator/driver"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/testenv"
	"github.com/provisioning/orchestrator/workflows"
)

// Handler tests of the test-environment endpoints against a filesystem
// store, a mocked Temporal client and a fake container engine.

// fakeEngine is the driver.Environments the API reads container logs from.
type fakeEngine struct {
	t *testing.T
	// logs by container id; a container not listed has no logs (error).
	logs  map[string]fakeLogs
	calls []logsCall
}

type fakeLogs struct {
	stdout, stderr string
	err            error
}

type logsCall struct {
	containerID string
	tail        int
}

var _ driver.Environments = (*fakeEngine)(nil)

func (e *fakeEngine) Ping(context.Context) error { return nil }

func (e *fakeEngine) Logs(_ context.Context, containerID string, tail int) (string, string, error) {
	e.calls = append(e.calls, logsCall{containerID, tail})
	l, found := e.logs[containerID]
	if !found {
		return "", "", fmt.Errorf("no such container: %s", containerID)
	}
	return l.stdout, l.stderr, l.err
}

func (e *fakeEngine) ListManagedEnvironments(context.Context, string) (map[string]testenv.RemovedCounts, error) {
	e.t.Error("the API does not list engine objects")
	return nil, errors.New("unexpected call")
}

func (e *fakeEngine) RemoveEnvironment(context.Context, string) (testenv.RemovedCounts, error) {
	e.t.Error("the API does not remove environments (the workflow does)")
	return testenv.RemovedCounts{}, errors.New("unexpected call")
}

// envState is a kubernetes_3node environment in status st: two nodes
// with containers and a third that has none yet.
func envState(status string) testenv.EnvState {
	now := time.Now().UTC().Truncate(time.Microsecond)
	st := testenv.EnvState{
		ID: uuid.NewString(), Status: status, Type: testenv.TypeClusterTopology, Infra: "prod",
		Request: testenv.CreateRequest{
			Config: testenv.EnvConfig{Type: testenv.TypeClusterTopology, Template: "kubernetes_3node", BaseImage: "busybox:latest"},
			Infra:  "prod",
		},
		Network: testenv.EnvNetwork{Name: "orch-env-x", Subnet: "10.201.0.0/24"},
		Nodes: []testenv.NodeStatus{
			{ContainerID: "c-cp", Name: "orch-x-cp-01", Node: "cp-01", Role: "control-plane", State: "running", Image: "busybox:latest"},
			{ContainerID: "c-w1", Name: "orch-x-worker-01", Node: "worker-01", Role: "worker", State: "running", Image: "busybox:latest"},
			{Name: "orch-x-worker-02", Node: "worker-02", Role: "worker", State: "created", Image: "busybox:latest"},
		},
		CreatedAt: now, UpdatedAt: now, ExpiresAt: now.Add(time.Hour), Version: 3,
	}
	switch status {
	case workflows.EnvCleaned, workflows.EnvError:
		st.FinishedAt = &now
	}
	return st
}

// withRun gives st a finished run with results on two nodes.
func withRun(st testenv.EnvState) testenv.EnvState {
	run := testenv.TestRun{
		Number: 1, Total: 3, Failed: 1, StartedAt: st.CreatedAt, FinishedAt: st.CreatedAt.Add(time.Second),
		Results: []testenv.TestResult{
			{Name: "sh", Node: "cp-01", Command: []string{"true"}, Passed: true, Stdout: "ok"},
			{Name: "sh", Node: "worker-01", Command: []string{"true"}, Passed: true},
			{Name: "kubelet", Node: "worker-01", Command: []string{"false"}, ExitCode: 1, Stderr: "no"},
		},
	}
	st.Runs = []testenv.TestRun{run}
	st.LastRun = &st.Runs[0]
	return st
}

// putEnv stores st the way the workflow projects it.
func (f *fixture) putEnv(st testenv.EnvState) testenv.EnvState {
	f.t.Helper()
	task, err := testenv.EnvTask(st)
	require.NoError(f.t, err)
	require.NoError(f.t, f.store.Put(f.t.Context(), task))
	return st
}

func TestCreateEnvironment(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts TestEnvOptions
		body string
		// ttl is the expected lifetime.
		ttl      time.Duration
		wantName string
		nodes    []string
		image    string
	}{
		{
			name:     "single taskserv, service defaults",
			opts:     TestEnvOptions{DefaultImage: "busybox:latest", DefaultTTL: 45 * time.Minute},
			body:     `{"config":{"type":"single_taskserv","taskserv":"containerd"},"infra":"prod-stack","auto_start":true}`,
			ttl:      45 * time.Minute,
			wantName: "test env single_taskserv containerd",
			nodes:    []string{"containerd"},
			image:    "busybox:latest",
		},
		{
			name:     "server simulation with ttl and instance",
			opts:     TestEnvOptions{DefaultImage: "busybox:latest", Instance: "ci-7"},
			body:     `{"config":{"type":"server_simulation","server_name":"web-01","taskservs":["containerd","etcd"],"base_image":"alpine:3"},"ttl":"30m","auto_cleanup":true,"priority":2}`,
			ttl:      30 * time.Minute,
			wantName: "test env server_simulation web-01",
			nodes:    []string{"web-01"},
			image:    "alpine:3",
		},
		{
			name:     "cluster from a template, workflow default ttl",
			opts:     TestEnvOptions{Instance: "ci-7"},
			body:     `{"config":{"type":"cluster_topology","template":"kubernetes_3node","base_image":"busybox:1.36"},"keep_on_failure":true}`,
			ttl:      workflows.DefaultEnvTTL,
			wantName: "test env cluster_topology kubernetes_3node",
			nodes:    []string{"cp-01", "worker-01", "worker-02"},
			image:    "busybox:1.36",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, Options{TaskQueue: testQueue, TestEnv: tc.opts})
			call := f.expectStart(workflows.TestEnvironmentWorkflowName, nil)
			before := time.Now().UTC().Truncate(time.Microsecond)
			r := f.ok(http.StatusOK, http.MethodPost, "/test/environments/create", tc.body, nil)
			id := taskIDOf(t, r.data)

			assert.Equal(t, id, call.opts.ID)
			assert.Equal(t, testQueue, call.opts.TaskQueue)
			assert.True(t, call.opts.WorkflowExecutionErrorWhenAlreadyStarted)
			in, isInput := call.input.(workflows.TestEnvInput)
			require.True(t, isInput, "%T", call.input)

			var req testenv.CreateRequest
			require.NoError(t, json.Unmarshal([]byte(tc.body), &req))
			// The environment's work runs at its priority (default 3), its
			// infra the fairness key; the task shows the priority.
			assert.Equal(t, cmp.Or(req.Priority, storage.DefaultPriority), call.opts.Priority.PriorityKey)
			assert.Equal(t, req.Infra, call.opts.Priority.FairnessKey)
			assert.Equal(t, cmp.Or(req.Priority, storage.DefaultPriority), call.pending.Priority)
			assert.Equal(t, tc.wantName, call.opts.StaticSummary)
			assert.Equal(t, id, in.EnvID)
			assert.Equal(t, req, in.Request)
			assert.Equal(t, tc.ttl, in.TTL)
			assert.False(t, in.CreatedAt.Before(before) || in.CreatedAt.After(time.Now()), in.CreatedAt)
			assert.Equal(t, in.CreatedAt, in.CreatedAt.UTC().Truncate(time.Microsecond))

			// The plan: built from the request with the service's defaults,
			// every object labelled with the instance when there is one.
			want, err := testenv.BuildPlan(id, req, testenv.DefaultTemplates(), tc.opts.DefaultImage)
			require.NoError(t, err)
			if tc.opts.Instance != "" {
				want.Labels[testenv.InstanceLabel] = tc.opts.Instance
				for i := range want.Nodes {
					want.Nodes[i].Labels[testenv.InstanceLabel] = tc.opts.Instance
				}
			}
			assert.Equal(t, want, in.Plan)
			assert.Equal(t, tc.nodes, in.Plan.NodeNames())
			for _, n := range in.Plan.Nodes {
				assert.Equal(t, tc.image, n.Image)
				assert.Equal(t, id, n.Labels[testenv.EnvIDLabel])
				inst, labelled := n.Labels[testenv.InstanceLabel]
				assert.Equal(t, tc.opts.Instance != "", labelled)
				assert.Equal(t, tc.opts.Instance, inst)
			}

			// The Pending record carries the environment (status creating).
			for _, task := range []storage.Task{call.pending, mustGet(t, f.store, id)} {
				assert.Equal(t, storage.StatusPending, task.Status)
				assert.Equal(t, tc.wantName, task.Name)
				assert.Equal(t, "test env create", task.Command)
				assert.Equal(t, []string{req.Config.Type}, task.Args)
				assert.Equal(t, workflows.TestEnvironmentWorkflowName, task.WorkflowType)
				assert.True(t, in.CreatedAt.Equal(task.CreatedAt))
				st, err := envView(task)
				require.NoError(t, err)
				assert.Equal(t, testenv.EnvState{
					ID: id, Status: workflows.EnvCreating, Type: req.Config.Type, Infra: req.Infra, Request: req,
					CreatedAt: in.CreatedAt, UpdatedAt: in.CreatedAt, ExpiresAt: in.CreatedAt.Add(tc.ttl),
				}, st)
			}

			// It is readable at once.
			var st testenv.EnvState
			f.ok(http.StatusOK, http.MethodGet, "/test/environments/"+id, "", &st)
			assert.Equal(t, workflows.EnvCreating, st.Status)
			assert.Equal(t, req, st.Request)
		})
	}
}

func TestCreateEnvironmentRejectsBadRequests(t *testing.T) {
	for _, tc := range []struct {
		name, body    string
		status        int
		code, field   string
		messagePrefix string
	}{
		{"no type", `{"config":{}}`, http.StatusBadRequest, CodeValidation, "config.type", "config.type: must not be empty"},
		{"unknown type", `{"config":{"type":"nope"}}`, http.StatusBadRequest, CodeValidation, "config.type", `config.type: unknown type "nope"`},
		{"field of another type", `{"config":{"type":"single_taskserv","taskserv":"etcd","server_name":"web-01"}}`,
			http.StatusBadRequest, CodeValidation, "config.server_name", "config.server_name: not used by type single_taskserv"},
		{"unknown template", `{"config":{"type":"cluster_topology","template":"nope"}}`,
			http.StatusBadRequest, CodeValidation, "config.template", "config.template: "},
		{"no image anywhere", `{"config":{"type":"single_taskserv","taskserv":"etcd"}}`,
			http.StatusBadRequest, CodeValidation, "config.base_image", "config.base_image: required: the service has no default base image"},
		{"ttl not a duration", `{"config":{"type":"single_taskserv","taskserv":"etcd","base_image":"busybox"},"ttl":"soon"}`,
			http.StatusBadRequest, CodeValidation, "ttl", `ttl: "soon" is not a duration`},
		{"ttl too short", `{"config":{"type":"single_taskserv","taskserv":"etcd","base_image":"busybox"},"ttl":"5s"}`,
			http.StatusBadRequest, CodeValidation, "ttl", "ttl: 5s is out of range"},
		{"bad infra", `{"config":{"type":"single_taskserv","taskserv":"etcd","base_image":"busybox"},"infra":"a b"}`,
			http.StatusBadRequest, CodeValidation, "infra", "infra: "},
		{"bad priority", `{"config":{"type":"single_taskserv","taskserv":"etcd","base_image":"busybox"},"priority":9}`,
			http.StatusBadRequest, CodeValidation, "priority", "priority: must be 1 (most urgent) to 5"},
		{"nested wrong type", `{"config":{"type":5}}`, http.StatusBadRequest, CodeValidation, "config.type", "config.type: expected string, got JSON number"},
		{"unknown field", `{"config":{"type":"single_taskserv"},"bogus":true}`, http.StatusBadRequest, CodeValidation, "bogus", "bogus: unknown field"},
		{"trailing data", `{"config":{}}{}`, http.StatusBadRequest, CodeBadRequest, "", "request body must contain a single JSON object"},
		{"empty", ``, http.StatusBadRequest, CodeBadRequest, "", "request body is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, Options{})
			e := f.fail(tc.status, http.MethodPost, "/test/environments/create", tc.body)
			assert.Equal(t, tc.code, e.Code)
			assert.Equal(t, tc.field, e.Field)
			assert.True(t, strings.HasPrefix(e.Message, tc.messagePrefix), e.Message)
			assert.Empty(t, f.tasks())
		})
	}
	t.Run("text body", func(t *testing.T) {
		f := newFixture(t, Options{})
		r := f.send(http.MethodPost, "/test/environments/create", "text/plain", `{"config":{}}`)
		require.Equal(t, http.StatusUnsupportedMediaType, r.code)
		assert.Equal(t, CodeUnsupportedMedia, r.err.Code)
	})
	t.Run("too large", func(t *testing.T) {
		f := newFixture(t, Options{MaxBodyBytes: 64})
		e := f.fail(http.StatusRequestEntityTooLarge, http.MethodPost, "/test/environments/create",
			`{"config":{"type":"single_taskserv","taskserv":"`+strings.Repeat("x", 64)+`"}}`)
		assert.Equal(t, ErrorBody{Code: CodeTooLarge, Message: "request body exceeds 64 bytes"}, e)
	})
}

func TestCreateEnvironmentStartFailures(t *testing.T) {
	body := `{"config":{"type":"single_taskserv","taskserv":"etcd","base_image":"busybox"}}`
	for _, tc := range []struct {
		name    string
		err     error
		status  int
		code    string
		message func(id string) string
	}{
		{"already started", serviceerror.NewWorkflowExecutionAlreadyStarted("already started", "", ""),
			http.StatusConflict, CodeConflict, func(id string) string { return "task " + id + " already exists" }},
		{"temporal unavailable", serviceerror.NewUnavailable("connection refused"),
			http.StatusServiceUnavailable, CodeUnavailable, func(string) string { return "temporal unavailable: connection refused" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, Options{})
			call := f.expectStart(workflows.TestEnvironmentWorkflowName, tc.err)
			e := f.fail(tc.status, http.MethodPost, "/test/environments/create", body)
			id := call.opts.ID
			assert.Equal(t, ErrorBody{Code: tc.code, Message: tc.message(id)}, e)
			assert.Equal(t, storage.StatusPending, call.pending.Status, "the record existed during the start")
			_, err := f.store.Get(t.Context(), id)
			assert.ErrorIs(t, err, storage.ErrNotFound, "the Pending record is removed")
			assert.Empty(t, f.tasks())
			f.fail(http.StatusNotFound, http.MethodGet, "/test/environments/"+id, "")
		})
	}
}

func TestListEnvironments(t *testing.T) {
	f := newFixture(t, Options{})
	var empty []testenv.EnvState
	r := f.ok(http.StatusOK, http.MethodGet, "/test/environments", "", &empty)
	assert.JSONEq(t, `[]`, string(r.data), "no environments is [], not null")
	assert.Equal(t, "0", r.header.Get("X-Total-Count"))

	older := envState(workflows.EnvReady)
	older.CreatedAt = older.CreatedAt.Add(-time.Minute)
	older = f.putEnv(withRun(older))
	newer := f.putEnv(envState(workflows.EnvCleaned))
	f.putTask(storage.StatusRunning) // a provisioning task is not an environment

	var got []testenv.EnvState
	r = f.ok(http.StatusOK, http.MethodGet, "/test/environments", "", &got)
	assert.Equal(t, "2", r.header.Get("X-Total-Count"))
	require.Len(t, got, 2)
	assert.Equal(t, []string{newer.ID, older.ID}, []string{got[0].ID, got[1].ID}, "newest first")
	light := older
	light.Request, light.Runs = testenv.CreateRequest{}, nil // the list leaves them out
	assert.Equal(t, light, got[1])
	assert.Equal(t, older.LastRun, got[1].LastRun, "the last run stays")
	assert.Equal(t, workflows.EnvCleaned, got[0].Status)

	r = f.ok(http.StatusOK, http.MethodGet, "/test/environments?limit=1", "", &got)
	assert.Equal(t, "2", r.header.Get("X-Total-Count"))
	require.Len(t, got, 1)
	assert.Equal(t, newer.ID, got[0].ID)

	for _, q := range []string{"limit=0", "limit=1001", "limit=x", "limit=-1"} {
		e := f.fail(http.StatusBadRequest, http.MethodGet, "/test/environments?"+q, "")
		assert.Equal(t, ErrorBody{Code: CodeValidation, Field: "limit", Message: "limit: must be an integer from 1 to 1000"}, e, q)
	}
}

func TestGetEnvironment(t *testing.T) {
	f := newFixture(t, Options{})
	st := f.putEnv(withRun(envState(workflows.EnvFailed)))
	var got testenv.EnvState
	f.ok(http.StatusOK, http.MethodGet, "/test/environments/"+st.ID, "", &got)
	assert.Equal(t, st, got)

	expectEnvLookupErrors(t, f, http.MethodGet, "")
}

// expectEnvLookupErrors checks the answers every /test/environments/{id}
// endpoint gives for ids that are not environments.
func expectEnvLookupErrors(t *testing.T, f *fixture, method, suffix string) {
	t.Helper()
	task := f.putTask(storage.StatusRunning)
	for _, tc := range []struct {
		id   string
		code int
		want ErrorBody
	}{
		{uuid.NewString(), http.StatusNotFound, ErrorBody{Code: CodeNotFound, Message: "test environment not found"}},
		{task.ID, http.StatusNotFound, ErrorBody{Code: CodeNotFound, Message: "test environment not found (that id is a provisioning task)"}},
		{"not-a-uuid", http.StatusBadRequest, ErrorBody{Code: CodeValidation, Field: "id", Message: "id: must be a task id (a lowercase UUID)"}},
		{strings.ToUpper(uuid.NewString()), http.StatusBadRequest, ErrorBody{Code: CodeValidation, Field: "id", Message: "id: must be a task id (a lowercase UUID)"}},
	} {
		e := f.fail(tc.code, method, "/test/environments/"+tc.id+suffix, "")
		assert.Equal(t, tc.want, e, "%s %s", method, tc.id)
	}
}

// expectUpdate expects one update of envID and returns the options the
// handler passed. A non-nil updateErr fails UpdateWorkflow itself;
// otherwise the handle's Get answers getErr, or run when getErr is nil.
func (f *fixture) expectUpdate(envID string, updateErr, getErr error, run testenv.TestRun) *client.UpdateWorkflowOptions {
	got := &client.UpdateWorkflowOptions{}
	var handle client.WorkflowUpdateHandle
	if updateErr == nil {
		h := &mocks.WorkflowUpdateHandle{}
		h.Test(f.t)
		f.t.Cleanup(func() { h.AssertExpectations(f.t) })
		h.On("Get", mock.Anything, mock.AnythingOfType("*testenv.TestRun")).Run(func(args mock.Arguments) {
			if getErr == nil {
				*args.Get(1).(*testenv.TestRun) = run
			}
		}).Return(getErr).Once()
		handle = h
	}
	f.client.On("UpdateWorkflow", mock.Anything, mock.MatchedBy(func(o client.UpdateWorkflowOptions) bool {
		return o.WorkflowID == envID
	})).Run(func(args mock.Arguments) {
		*got = args.Get(1).(client.UpdateWorkflowOptions)
		_, hasDeadline := args.Get(0).(context.Context).Deadline()
		assert.True(f.t, hasDeadline, "the run is bounded by RunWait")
	}).Return(handle, updateErr).Once()
	return got
}

func TestRunEnvironmentTests(t *testing.T) {
	result := testenv.TestRun{Number: 2, Passed: true, Total: 1,
		Results: []testenv.TestResult{{Name: "echo", Node: "cp-01", Command: []string{"echo", "hi"}, Passed: true, Stdout: "hi\n"}}}
	for _, tc := range []struct {
		name, status, body string
		want               testenv.RunRequest
	}{
		{"ready, given tests", workflows.EnvReady,
			`{"tests":[{"name":"echo","node":"cp-01","command":["echo","hi"],"timeout_seconds":5}],"timeout_seconds":90}`,
			testenv.RunRequest{Tests: []testenv.TestSpec{{Name: "echo", Node: "cp-01", Command: []string{"echo", "hi"}, TimeoutSeconds: 5}}, TimeoutSeconds: 90}},
		{"ready, no body: default checks", workflows.EnvReady, ``, testenv.RunRequest{}},
		{"passed, again", workflows.EnvPassed, `{}`, testenv.RunRequest{}},
		{"failed, again", workflows.EnvFailed, `{"tests":[]}`, testenv.RunRequest{Tests: []testenv.TestSpec{}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, Options{})
			st := f.putEnv(envState(tc.status))
			opts := f.expectUpdate(st.ID, nil, nil, result)
			var got testenv.TestRun
			f.ok(http.StatusOK, http.MethodPost, "/test/environments/"+st.ID+"/run", tc.body, &got)
			assert.Equal(t, result, got)
			assert.Equal(t, client.UpdateWorkflowOptions{
				WorkflowID:   st.ID,
				UpdateName:   workflows.RunTestsUpdate,
				Args:         []any{tc.want},
				WaitForStage: client.WorkflowUpdateStageCompleted,
			}, *opts)
		})
	}
}

func TestRunEnvironmentTestsRefused(t *testing.T) {
	t.Run("not in a state to run", func(t *testing.T) {
		for status, msg := range map[string]string{
			workflows.EnvCreating: "test environment %s is still being created",
			workflows.EnvCleaning: "test environment %s is cleaning",
			workflows.EnvCleaned:  "test environment %s is cleaned",
			workflows.EnvError:    "test environment %s is error",
		} {
			f := newFixture(t, Options{})
			st := f.putEnv(envState(status))
			e := f.fail(http.StatusConflict, http.MethodPost, "/test/environments/"+st.ID+"/run", "")
			assert.Equal(t, ErrorBody{Code: CodeConflict, Message: fmt.Sprintf(msg, st.ID)}, e, status)
		}
	})

	runBody := `{"tests":[{"name":"x","node":"nope","command":["true"]}]}`
	for _, tc := range []struct {
		name                string
		updateErr, getErr   error
		status              int
		want                func(id string) ErrorBody
		recordsNoAuditEvent bool
	}{
		{name: "run in progress",
			getErr: temporal.NewApplicationError("a test run is already in progress in this environment", workflows.ErrTypeRunInProgress),
			status: http.StatusConflict,
			want: func(string) ErrorBody {
				return ErrorBody{Code: CodeConflict, Message: "a test run is already in progress in this environment"}
			}},
		{name: "not ready",
			getErr: temporal.NewApplicationError("environment cleanup was requested", workflows.ErrTypeEnvNotReady),
			status: http.StatusConflict,
			want: func(string) ErrorBody {
				return ErrorBody{Code: CodeConflict, Message: "environment cleanup was requested"}
			}},
		{name: "invalid run request",
			getErr: temporal.NewApplicationError(`tests[0].node: unknown node "nope"`, workflows.ErrTypeInvalidRunSpec),
			status: http.StatusBadRequest,
			want: func(string) ErrorBody {
				return ErrorBody{Code: CodeValidation, Message: `tests[0].node: unknown node "nope"`}
			}},
		{name: "invalid run request with its field",
			getErr: temporal.NewApplicationErrorWithCause("invalid", workflows.ErrTypeInvalidRunSpec,
				&testenv.FieldError{Field: "tests[0].node", Message: `unknown node "nope"`}),
			status: http.StatusBadRequest,
			want: func(string) ErrorBody {
				return ErrorBody{Code: CodeValidation, Field: "tests[0].node", Message: `tests[0].node: unknown node "nope"`}
			}},
		{name: "workflow gone",
			updateErr: serviceerror.NewNotFound("workflow execution already completed"),
			status:    http.StatusConflict,
			want: func(id string) ErrorBody {
				return ErrorBody{Code: CodeConflict, Message: "test environment " + id + " has already ended"}
			}},
		{name: "temporal unavailable",
			updateErr: serviceerror.NewUnavailable("connection refused"),
			status:    http.StatusServiceUnavailable,
			want: func(string) ErrorBody {
				return ErrorBody{Code: CodeUnavailable, Message: "temporal unavailable: connection refused"}
			}},
		{name: "result unreadable",
			getErr: errors.New("payload decode failed"),
			status: http.StatusServiceUnavailable,
			want: func(string) ErrorBody {
				return ErrorBody{Code: CodeUnavailable, Message: "temporal unavailable: payload decode failed"}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, Options{})
			st := f.putEnv(envState(workflows.EnvReady))
			f.expectUpdate(st.ID, tc.updateErr, tc.getErr, testenv.TestRun{})
			e := f.fail(tc.status, http.MethodPost, "/test/environments/"+st.ID+"/run", runBody)
			assert.Equal(t, tc.want(st.ID), e)
			trail := f.audit("/tasks/" + st.ID + "/audit")
			require.Len(t, trail, 1, "a refused run records nothing: %+v", trail)
			assert.Equal(t, storage.AuditTransition, trail[0].Action)
		})
	}
}

func TestRunEnvironmentTestsTimesOut(t *testing.T) {
	const wait = 50 * time.Millisecond
	f := newFixture(t, Options{TestEnv: TestEnvOptions{RunWait: wait}})
	st := f.putEnv(envState(workflows.EnvReady))
	f.client.On("UpdateWorkflow", mock.Anything, mock.Anything).Return(
		func(ctx context.Context, _ client.UpdateWorkflowOptions) (client.WorkflowUpdateHandle, error) {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(5 * time.Second):
				return nil, errors.New("the update's context has no RunWait deadline")
			}
		}).Once()
	start := time.Now()
	e := f.fail(http.StatusGatewayTimeout, http.MethodPost, "/test/environments/"+st.ID+"/run", "")
	assert.Less(t, time.Since(start), 10*time.Second)
	assert.Equal(t, ErrorBody{Code: "timeout",
		Message: "the test run did not finish in time; its results will appear in GET /test/environments/" + st.ID}, e)
	trail := f.audit("/tasks/" + st.ID + "/audit")
	require.Len(t, trail, 2)
	assert.Equal(t, ActionTestRunRequested, trail[1].Action)
	assert.Equal(t, "no result within "+wait.String(), trail[1].Detail)
}

func TestRunEnvironmentTestsBadRequests(t *testing.T) {
	f := newFixture(t, Options{})
	st := f.putEnv(envState(workflows.EnvReady))
	path := "/test/environments/" + st.ID + "/run"
	e := f.fail(http.StatusBadRequest, http.MethodPost, path, `{"tests":"no"}`)
	assert.Equal(t, CodeValidation, e.Code)
	assert.Equal(t, "tests", e.Field)
	e = f.fail(http.StatusBadRequest, http.MethodPost, path, `{"test":[]}`)
	assert.Equal(t, ErrorBody{Code: CodeValidation, Field: "test", Message: "test: unknown field"}, e)
	e = f.fail(http.StatusBadRequest, http.MethodPost, path, `{}{}`)
	assert.Equal(t, CodeBadRequest, e.Code)
	r := f.send(http.MethodPost, path, "text/plain", `{}`)
	assert.Equal(t, http.StatusUnsupportedMediaType, r.code)

	expectEnvLookupErrors(t, f, http.MethodPost, "/run")
}

func TestDeleteEnvironment(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status string
		// finished clears FinishedAt when false (an error still rolling back).
		finished  bool
		signal    bool
		signalErr error
		want      int
		// wantStatus is the status in the answer.
		wantStatus string
		message    string
	}{
		{name: "ready", status: workflows.EnvReady, signal: true, want: http.StatusAccepted, wantStatus: workflows.EnvCleaning},
		{name: "creating", status: workflows.EnvCreating, signal: true, want: http.StatusAccepted, wantStatus: workflows.EnvCleaning},
		{name: "failed", status: workflows.EnvFailed, signal: true, want: http.StatusAccepted, wantStatus: workflows.EnvCleaning},
		{name: "error, workflow still running", status: workflows.EnvError, signal: true, want: http.StatusAccepted, wantStatus: workflows.EnvCleaning},
		{name: "already cleaned", status: workflows.EnvCleaned, finished: true, want: http.StatusOK, wantStatus: workflows.EnvCleaned},
		{name: "error, workflow ended", status: workflows.EnvError, finished: true, want: http.StatusOK, wantStatus: workflows.EnvError},
		{name: "workflow gone meanwhile", status: workflows.EnvReady, signal: true,
			signalErr: serviceerror.NewNotFound("workflow execution already completed"),
			want:      http.StatusOK, wantStatus: workflows.EnvReady},
		{name: "temporal unavailable", status: workflows.EnvReady, signal: true,
			signalErr: serviceerror.NewUnavailable("connection refused"),
			want:      http.StatusServiceUnavailable, message: "temporal unavailable: connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, Options{})
			st := envState(tc.status)
			if !tc.finished {
				st.FinishedAt = nil
			}
			st = f.putEnv(st)
			if tc.signal {
				f.client.On("SignalWorkflow", mock.Anything, st.ID, "", workflows.CleanupSignal, nil).Return(tc.signalErr).Once()
			}
			r := f.send(http.MethodDelete, "/test/environments/"+st.ID, "", "")
			require.Equal(t, tc.want, r.code, "%s %+v", r.data, r.err)
			if tc.message != "" {
				assert.Equal(t, ErrorBody{Code: CodeUnavailable, Message: tc.message}, *r.err)
				return
			}
			var got testenv.EnvState
			require.NoError(t, json.Unmarshal(r.data, &got))
			want := st
			want.Status = tc.wantStatus
			assert.Equal(t, want, got)
			stored, err := envView(mustGet(t, f.store, st.ID))
			require.NoError(t, err)
			assert.Equal(t, st, stored, "the workflow, not the API, projects the cleanup")
			trail := f.audit("/tasks/" + st.ID + "/audit")
			if tc.want == http.StatusAccepted {
				require.Len(t, trail, 2)
				assert.Equal(t, ActionCleanupRequested, trail[1].Action)
				assert.Equal(t, "environment was "+tc.status, trail[1].Detail)
			} else {
				assert.Len(t, trail, 1, "nothing was requested")
			}
		})
	}
	t.Run("not an environment", func(t *testing.T) {
		expectEnvLookupErrors(t, newFixture(t, Options{}), http.MethodDelete, "")
	})
}

func TestEnvironmentLogs(t *testing.T) {
	engineLogs := map[string]fakeLogs{
		"c-cp": {stdout: "cp out\n", stderr: "cp err\n"},
		"c-w1": {stdout: "w1 out\n"},
	}
	cp := NodeLogs{Node: "cp-01", ContainerID: "c-cp", Stdout: "cp out\n", Stderr: "cp err\n"}
	w1 := NodeLogs{Node: "worker-01", ContainerID: "c-w1", Stdout: "w1 out\n"}
	run := withRun(envState(workflows.EnvFailed)).LastRun.Results
	for _, tc := range []struct {
		name, query string
		status      string
		noRun       bool
		logs        map[string]fakeLogs
		wantCalls   []logsCall
		wantNodes   []NodeLogs
		wantTests   []testenv.TestResult
	}{
		{name: "every node with a container", status: workflows.EnvFailed, logs: engineLogs,
			wantCalls: []logsCall{{"c-cp", 200}, {"c-w1", 200}},
			wantNodes: []NodeLogs{cp, w1}, wantTests: run},
		{name: "one node, tail", query: "?node=worker-01&tail=20", status: workflows.EnvPassed, logs: engineLogs,
			wantCalls: []logsCall{{"c-w1", 20}},
			wantNodes: []NodeLogs{w1}, wantTests: run[1:]},
		{name: "node without container", query: "?node=worker-02", status: workflows.EnvReady, logs: engineLogs,
			wantNodes: []NodeLogs{}, wantTests: []testenv.TestResult{}},
		{name: "no run yet", query: "?tail=10000", status: workflows.EnvReady, noRun: true, logs: engineLogs,
			wantCalls: []logsCall{{"c-cp", 10000}, {"c-w1", 10000}},
			wantNodes: []NodeLogs{cp, w1}, wantTests: []testenv.TestResult{}},
		{name: "engine error is per node", status: workflows.EnvReady, noRun: true,
			logs:      map[string]fakeLogs{"c-cp": engineLogs["c-cp"], "c-w1": {stdout: "partial", err: errors.New("container is gone")}},
			wantCalls: []logsCall{{"c-cp", 200}, {"c-w1", 200}},
			wantNodes: []NodeLogs{cp, {Node: "worker-01", ContainerID: "c-w1", Stdout: "partial", Error: "container is gone"}},
			wantTests: []testenv.TestResult{}},
		{name: "cleaned: results only", status: workflows.EnvCleaned, logs: engineLogs,
			wantNodes: []NodeLogs{}, wantTests: run},
	} {
		t.Run(tc.name, func(t *testing.T) {
			engine := &fakeEngine{t: t, logs: tc.logs}
			f := newFixture(t, Options{TestEnv: TestEnvOptions{Docker: engine}})
			st := envState(tc.status)
			if !tc.noRun {
				st = withRun(st)
			}
			f.putEnv(st)
			var got EnvLogs
			r := f.ok(http.StatusOK, http.MethodGet, "/test/environments/"+st.ID+"/logs"+tc.query, "", &got)
			assert.Equal(t, EnvLogs{ID: st.ID, Nodes: tc.wantNodes, Tests: tc.wantTests}, got)
			assert.Equal(t, tc.wantCalls, engine.calls)
			assert.NotContains(t, string(r.data), "null", "nodes and tests are lists, never null")
		})
	}
}

func TestEnvironmentLogsBadRequests(t *testing.T) {
	engine := &fakeEngine{t: t}
	f := newFixture(t, Options{TestEnv: TestEnvOptions{Docker: engine}})
	st := f.putEnv(withRun(envState(workflows.EnvReady)))
	path := "/test/environments/" + st.ID + "/logs"
	for q, want := range map[string]ErrorBody{
		"?node=nope":  {Code: CodeValidation, Field: "node", Message: `node: "nope" is not a node of this environment`},
		"?tail=0":     {Code: CodeValidation, Field: "tail", Message: "tail: must be an integer from 1 to 10000"},
		"?tail=10001": {Code: CodeValidation, Field: "tail", Message: "tail: must be an integer from 1 to 10000"},
		"?tail=many":  {Code: CodeValidation, Field: "tail", Message: "tail: must be an integer from 1 to 10000"},
		"?since=1h":   {Code: CodeValidation, Field: "since", Message: "since: unknown query parameter (use node, tail)"},
	} {
		assert.Equal(t, want, f.fail(http.StatusBadRequest, http.MethodGet, path+q, ""), q)
	}
	assert.Empty(t, engine.calls)
	expectEnvLookupErrors(t, f, http.MethodGet, "/logs")
}

func TestEnvironmentLogsWithoutDocker(t *testing.T) {
	f := newFixture(t, Options{})
	live := f.putEnv(withRun(envState(workflows.EnvReady)))
	e := f.fail(http.StatusServiceUnavailable, http.MethodGet, "/test/environments/"+live.ID+"/logs", "")
	assert.Equal(t, ErrorBody{Code: CodeUnavailable,
		Message: "docker unavailable: this API process has no Docker engine to read container logs from"}, e)

	// A cleaned environment has no containers left: its results need no engine.
	cleaned := f.putEnv(withRun(envState(workflows.EnvCleaned)))
	var got EnvLogs
	f.ok(http.StatusOK, http.MethodGet, "/test/environments/"+cleaned.ID+"/logs?node=cp-01", "", &got)
	assert.Equal(t, EnvLogs{ID: cleaned.ID, Nodes: []NodeLogs{}, Tests: cleaned.LastRun.Results[:1]}, got)
}

// --max-environments: creates past the number of live environments answer
// 429 and start nothing; an environment that ended frees its place.
// --max-nodes: a topology with more nodes answers 400 naming the field.
func TestCreateEnvironmentQuotas(t *testing.T) {
	single := `{"config":{"type":"single_taskserv","taskserv":"containerd"}}`
	f := newFixture(t, Options{TaskQueue: testQueue, TestEnv: TestEnvOptions{DefaultImage: "busybox:latest", MaxEnvironments: 2, MaxNodes: 2}})

	var ids []string
	for range 2 {
		f.expectStart(workflows.TestEnvironmentWorkflowName, nil)
		ids = append(ids, taskIDOf(t, f.ok(http.StatusOK, http.MethodPost, "/test/environments/create", single, nil).data))
	}
	e := f.fail(http.StatusTooManyRequests, http.MethodPost, "/test/environments/create", single)
	assert.Equal(t, CodeQuota, e.Code)
	assert.Equal(t, "2 test environments are alive; this orchestrator allows at most 2 (--max-environments): delete one first", e.Message)
	assert.Len(t, f.tasks(), 2, "a refused create stores nothing")

	// One serving (Running) and one ended (Completed): one place is free.
	for i, status := range []storage.TaskStatus{storage.StatusRunning, storage.StatusCompleted} {
		task := mustGet(t, f.store, ids[i])
		task.Status = status
		task.Version++
		require.NoError(t, f.store.Put(context.Background(), task))
	}
	f.expectStart(workflows.TestEnvironmentWorkflowName, nil)
	f.ok(http.StatusOK, http.MethodPost, "/test/environments/create", single, nil)
	f.fail(http.StatusTooManyRequests, http.MethodPost, "/test/environments/create", single)

	for _, tc := range []struct{ body, field string }{
		{`{"config":{"type":"cluster_topology","template":"kubernetes_3node","base_image":"busybox"}}`, "config.template"},
		{`{"config":{"type":"cluster_topology","topology":{"nodes":[{"name":"a"},{"name":"b"},{"name":"c"}]},"base_image":"busybox"}}`, "config.topology.nodes"},
	} {
		e := f.fail(http.StatusBadRequest, http.MethodPost, "/test/environments/create", tc.body)
		assert.Equal(t, ErrorBody{Code: CodeValidation, Field: tc.field,
			Message: tc.field + ": 3 nodes requested; this orchestrator allows at most 2 per environment (--max-nodes)"}, e)
	}
	assert.Len(t, f.tasks(), 3)
}

func TestConvergeEnvironment(t *testing.T) {
	yes, no := true, false
	report := testenv.ConvergeReport{Passed: false, Error: "converge failed: idempotence failed: taskserv etcd on node cp-01: changed on the second converge: /etc/etcd.conf",
		Converge:    []testenv.TaskservResult{{Node: "cp-01", Taskserv: "etcd", Status: "completed", Changed: &yes}},
		Idempotence: &testenv.IdempotenceCheck{Failures: []string{"x"}, Results: []testenv.TaskservResult{{Node: "cp-01", Taskserv: "etcd", Status: "completed", Changed: &yes}}}}
	for _, tc := range []struct {
		name, status, body string
		want               testenv.ConvergeRequest
	}{
		{"ready, no body: the environment's options", workflows.EnvReady, ``, testenv.ConvergeRequest{}},
		{"passed, idempotence on", workflows.EnvPassed, `{"idempotence":true}`, testenv.ConvergeRequest{Idempotence: &yes}},
		{"failed, idempotence off", workflows.EnvFailed, `{"idempotence":false}`, testenv.ConvergeRequest{Idempotence: &no}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, Options{})
			st := f.putEnv(envState(tc.status))
			got := &client.UpdateWorkflowOptions{}
			h := &mocks.WorkflowUpdateHandle{}
			h.Test(t)
			h.On("Get", mock.Anything, mock.AnythingOfType("*testenv.ConvergeReport")).Run(func(args mock.Arguments) {
				*args.Get(1).(*testenv.ConvergeReport) = report
			}).Return(nil).Once()
			f.client.On("UpdateWorkflow", mock.Anything, mock.Anything).Run(func(args mock.Arguments) {
				*got = args.Get(1).(client.UpdateWorkflowOptions)
			}).Return(h, nil).Once()
			var rep testenv.ConvergeReport
			f.ok(http.StatusOK, http.MethodPost, "/test/environments/"+st.ID+"/converge", tc.body, &rep)
			assert.Equal(t, report, rep)
			assert.Equal(t, client.UpdateWorkflowOptions{WorkflowID: st.ID, UpdateName: workflows.ConvergeUpdate,
				Args: []any{tc.want}, WaitForStage: client.WorkflowUpdateStageCompleted}, *got)
			h.AssertExpectations(t)
		})
	}
	t.Run("bad body", func(t *testing.T) {
		f := newFixture(t, Options{})
		st := f.putEnv(envState(workflows.EnvReady))
		e := f.fail(http.StatusBadRequest, http.MethodPost, "/test/environments/"+st.ID+"/converge", `{"idempotence":"yes"}`)
		assert.Equal(t, "idempotence", e.Field)
	})
	t.Run("not ready", func(t *testing.T) {
		f := newFixture(t, Options{})
		st := f.putEnv(envState(workflows.EnvCreating))
		e := f.fail(http.StatusConflict, http.MethodPost, "/test/environments/"+st.ID+"/converge", "")
		assert.Equal(t, ErrorBody{Code: CodeConflict, Message: fmt.Sprintf("test environment %s is still being created", st.ID)}, e)
	})
	t.Run("in progress", func(t *testing.T) {
		f := newFixture(t, Options{})
		st := f.putEnv(envState(workflows.EnvReady))
		f.client.On("UpdateWorkflow", mock.Anything, mock.Anything).Return(nil,
			temporal.NewApplicationError("a test run is already in progress in this environment", workflows.ErrTypeRunInProgress)).Once()
		e := f.fail(http.StatusConflict, http.MethodPost, "/test/environments/"+st.ID+"/converge", "")
		assert.Equal(t, "a test run is already in progress in this environment", e.Message)
	})
}

// A keyed environment create is replayed before the quota is counted: the
// retry of the request that filled the last slot gets its environment.
func TestCreateEnvironmentIdempotencyKeyBeforeQuota(t *testing.T) {
	f := newFixture(t, Options{TestEnv: TestEnvOptions{DefaultImage: "busybox:latest", MaxEnvironments: 1}})
	f.expectStart(workflows.TestEnvironmentWorkflowName, nil)
	body := `{"config":{"type":"single_taskserv","taskserv":"containerd"}}`
	send := func() *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodPost, "/test/environments/create", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set(IdempotencyKeyHeader, "env-for-job-7")
		rec := httptest.NewRecorder()
		f.srv.ServeHTTP(rec, req)
		return rec
	}
	first := send()
	require.Equal(t, http.StatusOK, first.Code, first.Body.String())
	again := send()
	require.Equal(t, http.StatusOK, again.Code, "a replay, not 429: %s", again.Body.String())
	assert.Equal(t, first.Body.String(), again.Body.String())
	assert.Equal(t, "true", again.Header().Get(IdempotentReplayedHeader))
	assert.Len(t, f.tasks(), 1)
}
