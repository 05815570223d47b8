package server

import (
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
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/mocks"

	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/workflows"
)

// Handler tests of the provisioning endpoints (create, cancel) against a
// filesystem store and a mocked Temporal client.

const testQueue = "provisioning-test"

var testPolicy = workflows.ExecPolicy{Parallelism: 2, MaxAttempts: 5, StepTimeout: time.Minute}

// startCall is what the handler passed to ExecuteWorkflow.
type startCall struct {
	opts     client.StartWorkflowOptions
	workflow string
	input    any
	// pending is the stored task at the time of the call.
	pending storage.Task
}

// expectStart expects one ExecuteWorkflow of workflow and records its
// arguments; it returns err (nil: a started run).
func (f *fixture) expectStart(workflow string, err error) *startCall {
	got := &startCall{}
	var run client.WorkflowRun
	if err == nil {
		run = &mocks.WorkflowRun{} // no expectations: the handler must not use it
	}
	f.client.On("ExecuteWorkflow", mock.Anything, mock.IsType(client.StartWorkflowOptions{}), workflow, mock.Anything).
		Run(func(args mock.Arguments) {
			got.opts = args.Get(1).(client.StartWorkflowOptions)
			got.workflow = args.String(2)
			got.input = args.Get(3)
			t, gerr := f.store.Get(f.t.Context(), got.opts.ID)
			require.NoError(f.t, gerr, "the Pending record is written before the workflow starts")
			got.pending = t
		}).
		Return(run, err).Once()
	var started *serviceerror.WorkflowExecutionAlreadyStarted
	if err != nil && !errors.As(err, &started) {
		// The handler looks the workflow up before removing the record.
		f.expectLookup(serviceerror.NewNotFound("workflow not found"))
	}
	return got
}

// expectLookup expects one DescribeWorkflowExecution answering err (nil:
// the workflow exists).
func (f *fixture) expectLookup(err error) {
	var resp *workflowservice.DescribeWorkflowExecutionResponse
	if err == nil {
		resp = &workflowservice.DescribeWorkflowExecutionResponse{}
	}
	f.client.On("DescribeWorkflowExecution", mock.Anything, mock.Anything, "").Return(resp, err).Once()
}

// taskID decodes data as a task id.
func taskIDOf(t *testing.T, data json.RawMessage) string {
	t.Helper()
	var id string
	require.NoError(t, json.Unmarshal(data, &id), string(data))
	require.NoError(t, storage.ValidateID(id))
	return id
}

func TestCreateEndpointsStartWorkflow(t *testing.T) {
	for _, tc := range []struct {
		name, path, contentType, body string
		workflow, wantName, wantCmd   string
		// input builds the expected workflow input around the Common the
		// handler made.
		input func(workflows.Common) any
		want  workflows.Common
	}{
		{
			name: "servers", path: "/workflows/servers/create", contentType: "application/json",
			body:     `{"infra":"production","settings":"./settings.yaml","servers":["web-01","web-02"],"check_mode":true,"wait":true}`,
			workflow: workflows.ServerCreateWorkflowName, wantName: "server create production", wantCmd: "server create",
			want: workflows.Common{Infra: "production", Settings: "./settings.yaml", CheckMode: true, Wait: true},
			input: func(c workflows.Common) any {
				return workflows.ServerCreateInput{Common: c, Servers: []string{"web-01", "web-02"}}
			},
		},
		{
			name: "taskserv on servers", path: "/workflows/taskserv/create", contentType: "application/json; charset=utf-8",
			body:     `{"infra":"prod","settings":"settings.k","taskserv":"kubernetes","servers":["web-01"],"check_mode":false,"wait":true}`,
			workflow: workflows.TaskservCreateWorkflowName, wantName: "taskserv create kubernetes", wantCmd: "taskserv create",
			want: workflows.Common{Infra: "prod", Settings: "settings.k", Wait: true},
			input: func(c workflows.Common) any {
				return workflows.TaskservCreateInput{Common: c, Taskserv: "kubernetes", Servers: []string{"web-01"}}
			},
		},
		{
			name: "taskserv for the whole infra", path: "/workflows/taskserv/create", contentType: "application/vnd.provisioning+json",
			body:     `{"infra":"prod","settings":"settings.k","taskserv":"containerd"}`,
			workflow: workflows.TaskservCreateWorkflowName, wantName: "taskserv create containerd", wantCmd: "taskserv create",
			want: workflows.Common{Infra: "prod", Settings: "settings.k"},
			input: func(c workflows.Common) any {
				return workflows.TaskservCreateInput{Common: c, Taskserv: "containerd"}
			},
		},
		{
			name: "cluster without content type", path: "/workflows/cluster/create",
			body:     `{"infra":"prod","settings":"/etc/infra/settings.k","cluster":"buildkit","check_mode":true}`,
			workflow: workflows.ClusterCreateWorkflowName, wantName: "cluster create buildkit", wantCmd: "cluster create",
			want: workflows.Common{Infra: "prod", Settings: "/etc/infra/settings.k", CheckMode: true},
			input: func(c workflows.Common) any {
				return workflows.ClusterCreateInput{Common: c, Cluster: "buildkit"}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, Options{TaskQueue: testQueue, Policy: testPolicy})
			call := f.expectStart(tc.workflow, nil)
			before := time.Now().UTC()
			r := f.send(http.MethodPost, tc.path, tc.contentType, tc.body)
			require.Equal(t, http.StatusOK, r.code, "%s %+v", r.data, r.err)
			id := taskIDOf(t, r.data)

			// The workflow: ID = task id, on the configured queue, never
			// attaching to an existing run.
			assert.Equal(t, id, call.opts.ID)
			assert.Equal(t, testQueue, call.opts.TaskQueue)
			assert.Equal(t, enumspb.WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATE, call.opts.WorkflowIDReusePolicy)
			assert.Equal(t, enumspb.WORKFLOW_ID_CONFLICT_POLICY_FAIL, call.opts.WorkflowIDConflictPolicy)
			assert.True(t, call.opts.WorkflowExecutionErrorWhenAlreadyStarted)
			assert.Equal(t, tc.workflow, call.workflow)
			// What operators see in the Web UI and the CLI.
			assert.True(t, strings.HasPrefix(call.opts.StaticSummary, tc.wantName), call.opts.StaticSummary)
			assert.Contains(t, call.opts.StaticDetails, "**infra** "+tc.want.Infra)
			assert.Equal(t, storage.DefaultPriority, call.opts.Priority.PriorityKey)
			assert.Equal(t, tc.want.Infra, call.opts.Priority.FairnessKey)

			// Its input: the request, the task id, the policy, the time.
			common := tc.want
			common.TaskID = id
			common.Policy = testPolicy
			common.CreatedAt = call.pending.CreatedAt
			assert.Equal(t, tc.input(common), call.input)
			created := call.pending.CreatedAt
			assert.Equal(t, time.UTC, created.Location())
			assert.Equal(t, created, created.Truncate(time.Microsecond))
			assert.False(t, created.Before(before.Truncate(time.Microsecond)) || created.After(time.Now()), created)

			// The Pending record, as written before the start and as stored.
			for _, task := range []storage.Task{call.pending, mustGet(t, f.store, id)} {
				assert.Equal(t, id, task.ID)
				assert.Equal(t, storage.StatusPending, task.Status)
				assert.Equal(t, tc.wantName, task.Name)
				assert.Equal(t, tc.wantCmd, task.Command)
				assert.Equal(t, tc.workflow, task.WorkflowType)
				assert.True(t, created.Equal(task.CreatedAt))
				assert.True(t, created.Equal(task.UpdatedAt))
				assert.Nil(t, task.StartedAt)
				assert.Nil(t, task.CompletedAt)
				assert.Zero(t, task.Version)
			}
			assert.Len(t, f.tasks(), 1)
		})
	}
}

func TestCreateUsesTheDefaultTaskQueue(t *testing.T) {
	f := newFixture(t, Options{})
	call := f.expectStart(workflows.ClusterCreateWorkflowName, nil)
	f.ok(http.StatusOK, http.MethodPost, "/workflows/cluster/create", `{"infra":"prod","settings":"s.k","cluster":"c1"}`, nil)
	assert.Equal(t, workflows.DefaultTaskQueue, call.opts.TaskQueue)
	assert.Equal(t, workflows.ExecPolicy{}, call.input.(workflows.ClusterCreateInput).Policy)
}

func mustGet(t *testing.T, s storage.Store, id string) storage.Task {
	t.Helper()
	task, err := s.Get(t.Context(), id)
	require.NoError(t, err)
	return task
}

var createPaths = []string{"/workflows/servers/create", "/workflows/taskserv/create", "/workflows/cluster/create"}

// TestCreateEndpointsRejectBadBodies: strict decoding answers 400, 413 or
// 415 naming the field, and nothing is stored or started (the mock fails
// on any call).
func TestCreateEndpointsRejectBadBodies(t *testing.T) {
	const limit = 256
	huge := `{"infra":"prod","settings":"` + strings.Repeat("a", limit) + `"}`
	for _, tc := range []struct {
		name, contentType, body string
		status                  int
		code, field, message    string
	}{
		{"unknown field", "application/json", `{"infra":"prod","bogus":1}`,
			http.StatusBadRequest, CodeValidation, "bogus", "bogus: unknown field"},
		{"wrong type", "application/json", `{"infra":5}`,
			http.StatusBadRequest, CodeValidation, "infra", "infra: expected string, got JSON number"},
		{"wrong type of a flag", "application/json", `{"check_mode":"yes"}`,
			http.StatusBadRequest, CodeValidation, "check_mode", "check_mode: expected bool, got JSON string"},
		{"not an object", "application/json", `["prod"]`,
			http.StatusBadRequest, CodeValidation, "body", "body: expected server.Create"},
		{"malformed", "application/json", `{"infra" "prod"}`,
			http.StatusBadRequest, CodeBadRequest, "", "malformed JSON at byte 10: invalid character"},
		{"truncated", "application/json", `{"infra":`,
			http.StatusBadRequest, CodeBadRequest, "", "malformed JSON: unexpected end of body"},
		{"empty", "application/json", ``,
			http.StatusBadRequest, CodeBadRequest, "", "request body is empty: send a JSON object"},
		{"trailing data", "application/json", `{"infra":"prod"} {}`,
			http.StatusBadRequest, CodeBadRequest, "", "request body must contain a single JSON object"},
		{"trailing garbage", "application/json", `{"infra":"prod"}x`,
			http.StatusBadRequest, CodeBadRequest, "", "request body must contain a single JSON object"},
		{"too large", "application/json", huge,
			http.StatusRequestEntityTooLarge, CodeTooLarge, "", fmt.Sprintf("request body exceeds %d bytes", limit)},
		{"too large after the object", "application/json", `{"infra":"prod"}` + strings.Repeat(" ", limit),
			http.StatusRequestEntityTooLarge, CodeTooLarge, "", fmt.Sprintf("request body exceeds %d bytes", limit)},
		{"text", "text/plain", `{"infra":"prod"}`,
			http.StatusUnsupportedMediaType, CodeUnsupportedMedia, "", `Content-Type "text/plain" is not supported: send application/json`},
		{"form", "application/x-www-form-urlencoded", `infra=prod`,
			http.StatusUnsupportedMediaType, CodeUnsupportedMedia, "", `Content-Type "application/x-www-form-urlencoded" is not supported`},
		{"unparsable content type", "application/json; charset", `{}`,
			http.StatusUnsupportedMediaType, CodeUnsupportedMedia, "", `Content-Type "application/json; charset" is not supported`},
	} {
		for _, path := range createPaths {
			t.Run(tc.name+" "+path, func(t *testing.T) {
				f := newFixture(t, Options{MaxBodyBytes: limit})
				r := f.send(http.MethodPost, path, tc.contentType, tc.body)
				require.Equal(t, tc.status, r.code, "%+v", r.err)
				require.NotNil(t, r.err)
				assert.Equal(t, tc.code, r.err.Code)
				assert.Equal(t, tc.field, r.err.Field)
				assert.True(t, strings.HasPrefix(r.err.Message, tc.message), r.err.Message)
				assert.Empty(t, f.tasks())
			})
		}
	}
}

// TestCreateEndpointsValidate: requests that decode but are invalid get a
// 400 naming the field; nothing is stored or started.
func TestCreateEndpointsValidate(t *testing.T) {
	for _, tc := range []struct {
		path, body, field, message string
	}{
		{"/workflows/servers/create", `{"settings":"s.k","servers":["web-01"]}`, "infra", "infra: "},
		{"/workflows/servers/create", `{"infra":"x y","settings":"s.k","servers":["web-01"]}`, "infra", "infra: "},
		{"/workflows/servers/create", `{"infra":"prod","servers":["web-01"]}`, "settings", "settings: must not be empty"},
		{"/workflows/servers/create", `{"infra":"prod","settings":"-rf","servers":["web-01"]}`, "settings", `settings: "-rf" is not an acceptable path`},
		{"/workflows/servers/create", `{"infra":"prod","settings":"a b","servers":["web-01"]}`, "settings", `settings: "a b" is not an acceptable path`},
		{"/workflows/servers/create", `{"infra":"prod","settings":"s.k"}`, "servers", "servers: is required: name the servers, or send [] for every server the settings define"},
		{"/workflows/servers/create", `{"infra":"prod","settings":"s.k","servers":null}`, "servers", "servers: is required: "},
		{"/workflows/servers/create", `{"infra":"prod","settings":"s.k","servers":["web 01"]}`, "servers[0]", "servers[0]: "},
		{"/workflows/servers/create", `{"infra":"prod","settings":"s.k","servers":["web-01","web-01"]}`, "servers[1]", `servers[1]: duplicate server "web-01"`},
		{"/workflows/taskserv/create", `{"infra":"prod","settings":"s.k"}`, "taskserv", "taskserv: "},
		{"/workflows/taskserv/create", `{"infra":"prod","settings":"s.k","taskserv":"k8s;rm"}`, "taskserv", "taskserv: "},
		{"/workflows/taskserv/create", `{"infra":"prod","settings":"s.k","taskserv":"k8s","servers":["ok","../etc"]}`, "servers[1]", "servers[1]: "},
		{"/workflows/cluster/create", `{"infra":"prod","settings":"s.k"}`, "cluster", "cluster: "},
		{"/workflows/cluster/create", `{"infra":"prod","settings":"s.k","cluster":"../x"}`, "cluster", "cluster: "},
		{"/workflows/cluster/create", `{"infra":"","settings":"s.k","cluster":"c"}`, "infra", "infra: "},
	} {
		t.Run(tc.path+" "+tc.field, func(t *testing.T) {
			f := newFixture(t, Options{})
			e := f.fail(http.StatusBadRequest, http.MethodPost, tc.path, tc.body)
			assert.Equal(t, CodeValidation, e.Code)
			assert.Equal(t, tc.field, e.Field)
			assert.True(t, strings.HasPrefix(e.Message, tc.message), e.Message)
			assert.Empty(t, f.tasks())
		})
	}
}

// TestCreateEndpointsStartFailures: when Temporal refuses the start the
// Pending record is removed again; a duplicate is 409, anything else 503.
func TestCreateEndpointsStartFailures(t *testing.T) {
	bodies := map[string]string{
		"/workflows/servers/create":  `{"infra":"prod","settings":"s.k","servers":["web-01"]}`,
		"/workflows/taskserv/create": `{"infra":"prod","settings":"s.k","taskserv":"kubernetes"}`,
		"/workflows/cluster/create":  `{"infra":"prod","settings":"s.k","cluster":"buildkit"}`,
	}
	workflowOf := map[string]string{
		"/workflows/servers/create":  workflows.ServerCreateWorkflowName,
		"/workflows/taskserv/create": workflows.TaskservCreateWorkflowName,
		"/workflows/cluster/create":  workflows.ClusterCreateWorkflowName,
	}
	for _, tc := range []struct {
		name   string
		err    error
		status int
		code   string
		// message is the expected error message given the task id.
		message func(id string) string
	}{
		{"already started", serviceerror.NewWorkflowExecutionAlreadyStarted("workflow execution already started", "", ""),
			http.StatusConflict, CodeConflict, func(id string) string { return "task " + id + " already exists" }},
		{"temporal unavailable", serviceerror.NewUnavailable("connection refused"),
			http.StatusServiceUnavailable, CodeUnavailable, func(string) string { return "temporal unavailable: connection refused" }},
		{"other error", errors.New("context deadline exceeded"),
			http.StatusServiceUnavailable, CodeUnavailable, func(string) string { return "temporal unavailable: context deadline exceeded" }},
	} {
		for _, path := range createPaths {
			t.Run(tc.name+" "+path, func(t *testing.T) {
				f := newFixture(t, Options{})
				call := f.expectStart(workflowOf[path], tc.err)
				e := f.fail(tc.status, http.MethodPost, path, bodies[path])
				id := call.opts.ID
				require.NoError(t, storage.ValidateID(id))
				assert.Equal(t, storage.StatusPending, call.pending.Status, "the record existed during the start")
				assert.Equal(t, tc.code, e.Code)
				assert.Equal(t, tc.message(id), e.Message)
				_, err := f.store.Get(t.Context(), id)
				assert.ErrorIs(t, err, storage.ErrNotFound, "the Pending record is removed")
				assert.Empty(t, f.tasks())
			})
		}
	}
}

// TestCreateEndpointsNewIDEachTime: every request is its own task.
func TestCreateEndpointsNewIDEachTime(t *testing.T) {
	f := newFixture(t, Options{})
	first := f.expectStart(workflows.ClusterCreateWorkflowName, nil)
	body := `{"infra":"prod","settings":"s.k","cluster":"buildkit"}`
	f.ok(http.StatusOK, http.MethodPost, "/workflows/cluster/create", body, nil)
	firstID := first.opts.ID
	second := f.expectStart(workflows.ClusterCreateWorkflowName, nil)
	f.ok(http.StatusOK, http.MethodPost, "/workflows/cluster/create", body, nil)
	assert.NotEqual(t, firstID, second.opts.ID)
	assert.Len(t, f.tasks(), 2)
}

// putTask stores a provisioning task in status st.
func (f *fixture) putTask(st storage.TaskStatus) storage.Task {
	f.t.Helper()
	now := time.Now().UTC().Truncate(time.Microsecond)
	task := storage.Task{
		ID: uuid.NewString(), Name: "server create prod", Command: "server create",
		Status: st, CreatedAt: now, UpdatedAt: now, WorkflowType: workflows.ServerCreateWorkflowName, Version: 2,
	}
	if st != storage.StatusPending {
		task.StartedAt = &now
	}
	if st.Terminal() {
		task.CompletedAt = &now
	}
	require.NoError(f.t, f.store.Put(f.t.Context(), task))
	return mustGet(f.t, f.store, task.ID)
}

func TestCancelTask(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status storage.TaskStatus
		// cancelErr is CancelWorkflow's answer; unset: it is not called.
		cancel    bool
		cancelErr error
		want      int
		code      string
		message   func(id string) string
	}{
		{name: "running", status: storage.StatusRunning, cancel: true, want: http.StatusAccepted},
		{name: "pending", status: storage.StatusPending, cancel: true, want: http.StatusAccepted},
		{name: "completed", status: storage.StatusCompleted, want: http.StatusConflict, code: CodeConflict,
			message: func(id string) string { return "task " + id + " is already Completed" }},
		{name: "failed", status: storage.StatusFailed, want: http.StatusConflict, code: CodeConflict,
			message: func(id string) string { return "task " + id + " is already Failed" }},
		{name: "cancelled", status: storage.StatusCancelled, want: http.StatusConflict, code: CodeConflict,
			message: func(id string) string { return "task " + id + " is already Cancelled" }},
		{name: "finished meanwhile", status: storage.StatusRunning, cancel: true,
			cancelErr: serviceerror.NewNotFound("workflow execution already completed"),
			want:      http.StatusConflict, code: CodeConflict,
			message: func(id string) string { return "task " + id + " has already finished" }},
		{name: "temporal unavailable", status: storage.StatusRunning, cancel: true,
			cancelErr: serviceerror.NewUnavailable("connection refused"),
			want:      http.StatusServiceUnavailable, code: CodeUnavailable,
			message: func(string) string { return "temporal unavailable: connection refused" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, Options{})
			task := f.putTask(tc.status)
			if tc.cancel {
				f.client.On("CancelWorkflow", mock.Anything, task.ID, "").Return(tc.cancelErr).Once()
			}
			r := f.send(http.MethodPost, "/tasks/"+task.ID+"/cancel", "", "")
			require.Equal(t, tc.want, r.code, "%s %+v", r.data, r.err)
			if tc.want == http.StatusAccepted {
				assert.Equal(t, task.ID, taskIDOf(t, r.data))
			} else {
				assert.Equal(t, tc.code, r.err.Code)
				assert.Equal(t, tc.message(task.ID), r.err.Message)
			}
			assert.Equal(t, task, mustGet(t, f.store, task.ID), "the handler does not write the task")
		})
	}
}

func TestCancelTaskBadRequests(t *testing.T) {
	f := newFixture(t, Options{})
	e := f.fail(http.StatusNotFound, http.MethodPost, "/tasks/"+uuid.NewString()+"/cancel", "")
	assert.Equal(t, ErrorBody{Code: CodeNotFound, Message: "task not found"}, e)
	for _, id := range []string{"not-a-uuid", strings.ToUpper(uuid.NewString()), "..", uuid.NewString() + "x"} {
		e := f.fail(http.StatusBadRequest, http.MethodPost, "/tasks/"+id+"/cancel", "")
		assert.Equal(t, ErrorBody{Code: CodeValidation, Field: "id", Message: "id: must be a task id (a lowercase UUID)"}, e, id)
	}
	e = f.fail(http.StatusMethodNotAllowed, http.MethodGet, "/tasks/"+uuid.NewString()+"/cancel", "")
	assert.Equal(t, CodeMethodNotAllowed, e.Code)
}

// A start that answers an error although the workflow started (a lost
// reply) keeps the task; one Temporal cannot confirm either way keeps the
// Pending record for the reconciler; only a confirmed absence removes it.
func TestCreateAmbiguousStartIsLookedUp(t *testing.T) {
	body := `{"infra":"prod","settings":"s.k","cluster":"buildkit"}`
	t.Run("started after all", func(t *testing.T) {
		f := newFixture(t, Options{})
		f.client.On("ExecuteWorkflow", mock.Anything, mock.Anything, workflows.ClusterCreateWorkflowName, mock.Anything).
			Return(nil, errors.New("context deadline exceeded")).Once()
		f.expectLookup(nil)
		var id string
		f.ok(http.StatusOK, http.MethodPost, "/workflows/cluster/create", body, &id)
		got, err := f.store.Get(t.Context(), id)
		require.NoError(t, err)
		assert.Equal(t, storage.StatusPending, got.Status)
	})
	t.Run("unknown", func(t *testing.T) {
		f := newFixture(t, Options{})
		f.client.On("ExecuteWorkflow", mock.Anything, mock.Anything, workflows.ClusterCreateWorkflowName, mock.Anything).
			Return(nil, errors.New("context deadline exceeded")).Once()
		f.expectLookup(serviceerror.NewUnavailable("connection refused"))
		f.fail(http.StatusServiceUnavailable, http.MethodPost, "/workflows/cluster/create", body)
		tasks := f.tasks()
		require.Len(t, tasks, 1, "the Pending record stays for the reconciler")
		assert.Equal(t, storage.StatusPending, tasks[0].Status)
	})
}

// A create with an Idempotency-Key is safe to retry: the same key names the
// same task and starts nothing more; another request with that key is 422.
func TestIdempotencyKey(t *testing.T) {
	f := newFixture(t, Options{})
	call := f.expectStart(workflows.ClusterCreateWorkflowName, nil)
	body := `{"infra":"prod","settings":"s.k","cluster":"buildkit"}`
	send := func(body, key string) reply {
		req := httptest.NewRequest(http.MethodPost, "/workflows/cluster/create", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set(IdempotencyKeyHeader, key)
		rec := httptest.NewRecorder()
		f.srv.ServeHTTP(rec, req)
		var env struct {
			Data  json.RawMessage `json:"data"`
			Error *ErrorBody      `json:"error"`
		}
		require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &env), rec.Body.String())
		return reply{code: rec.Code, header: rec.Header(), data: env.Data, err: env.Error}
	}
	first := send(body, "ci-job-42")
	require.Equal(t, http.StatusOK, first.code)
	id := taskIDOf(t, first.data)
	assert.Equal(t, call.opts.ID, id)
	assert.Equal(t, storage.IdempotentID("anonymous\x00"+workflows.ClusterCreateWorkflowName, "ci-job-42"), id)

	again := send(body, "ci-job-42")
	require.Equal(t, http.StatusOK, again.code)
	assert.Equal(t, id, taskIDOf(t, again.data))
	assert.Equal(t, "true", again.header.Get(IdempotentReplayedHeader))
	assert.Len(t, f.tasks(), 1, "no second task")

	other := send(`{"infra":"prod","settings":"s.k","cluster":"other"}`, "ci-job-42")
	require.Equal(t, http.StatusUnprocessableEntity, other.code)
	assert.Equal(t, CodeKeyReused, other.err.Code)

	bad := send(body, "bad key with spaces")
	require.Equal(t, http.StatusBadRequest, bad.code)
	assert.Equal(t, IdempotencyKeyHeader, bad.err.Field)
	assert.Len(t, f.tasks(), 1)
}

// Eager start is asked for unless the service was started without it
// (--eager-start=false); either way the Pending record is stored first.
func TestCreateAsksForEagerStartUnlessDisabled(t *testing.T) {
	for _, noEager := range []bool{false, true} {
		f := newFixture(t, Options{TaskQueue: testQueue, Policy: testPolicy, NoEagerStart: noEager})
		got := f.expectStart(workflows.ServerCreateWorkflowName, nil)
		r := f.send(http.MethodPost, "/workflows/servers/create", "application/json", `{"infra":"demo","settings":"s.k","servers":["web-01"]}`)
		require.Equal(t, http.StatusOK, r.code, "%+v", r.err)
		assert.Equal(t, !noEager, got.opts.EnableEagerStart, "NoEagerStart=%v", noEager)
		assert.Equal(t, storage.StatusPending, got.pending.Status)
	}
}
