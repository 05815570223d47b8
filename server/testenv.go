package server

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/provisioning/orchestrator/driver"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/testenv"
	"github.com/provisioning/orchestrator/workflows"
)

// TestEnvOptions configures the test environment endpoints.
type TestEnvOptions struct {
	// Templates are the named topologies; default testenv.DefaultTemplates().
	Templates *testenv.Templates
	// DefaultImage is used when a request names no base_image.
	DefaultImage string
	// DefaultTTL bounds environments that ask for none; default
	// workflows.DefaultEnvTTL.
	DefaultTTL time.Duration
	// Docker reads container logs; nil makes the logs endpoint answer 503.
	Docker driver.Environments
	// RunWait bounds how long POST .../run waits for results; default 15m.
	RunWait time.Duration
	// Instance is put on every Docker object as testenv.InstanceLabel.
	Instance string
	// MaxEnvironments bounds the environments alive at once (creating or
	// serving); another create answers 429. 0 means no bound.
	MaxEnvironments int
	// MaxNodes bounds the nodes of one environment; a bigger request
	// answers 400. 0 means no bound.
	MaxNodes int
	// UpdatesPerRun is workflows.TestEnvInput.UpdatesPerRun; 0 means its
	// default.
	UpdatesPerRun int
	// NodeCPUMillicores and NodeMemoryMB limit nodes that ask for no
	// limit (testenv.Plan.ApplyDefaultLimits); 0 leaves them unlimited.
	NodeCPUMillicores int64
	NodeMemoryMB      int64
}

func (s *Server) routeTestEnv() {
	s.e.POST("/test/environments/create", s.createEnv)
	s.e.GET("/test/environments", s.listEnvs)
	s.e.GET("/test/environments/:id", s.getEnv)
	s.e.POST("/test/environments/:id/run", s.runEnv)
	s.e.POST("/test/environments/:id/converge", s.convergeEnv)
	s.e.DELETE("/test/environments/:id", s.deleteEnv)
	s.e.GET("/test/environments/:id/logs", s.envLogs)
	s.e.GET("/test/topologies", s.listTopologies)
}

func (s *Server) createEnv(c echo.Context) error {
	var req testenv.CreateRequest
	if err := s.decodeJSON(c, &req); err != nil {
		return err
	}
	if err := req.Validate(s.envOpts.Templates); err != nil {
		return envValidationErr(err)
	}
	id, keyed, err := s.newTaskID(c, workflows.TestEnvironmentWorkflowName)
	if err != nil {
		return err
	}
	plan, err := testenv.BuildPlan(id, req, s.envOpts.Templates, s.envOpts.DefaultImage)
	if err != nil {
		return envValidationErr(err)
	}
	if max := s.envOpts.MaxNodes; max > 0 && len(plan.Nodes) > max {
		field := "config.topology.nodes"
		if req.Config.Template != "" {
			field = "config.template"
		}
		return fieldErr(field, fmt.Sprintf("%d nodes requested; this orchestrator allows at most %d per environment (--max-nodes)", len(plan.Nodes), max))
	}
	plan.ApplyDefaultLimits(s.envOpts.NodeCPUMillicores, s.envOpts.NodeMemoryMB)
	plan.SetInstance(s.envOpts.Instance)
	ttl := s.envOpts.DefaultTTL
	if req.TTL != "" {
		if ttl, err = time.ParseDuration(req.TTL); err != nil {
			return fieldErr("ttl", err.Error())
		}
	}
	now := time.Now().UTC().Truncate(time.Microsecond)
	in := workflows.TestEnvInput{EnvID: id, Request: req, Plan: plan, TTL: ttl, CreatedAt: now, UpdatesPerRun: s.envOpts.UpdatesPerRun,
		ActivityTaskQueue: workflows.EnvTaskQueue(s.taskQueue)}
	state := testenv.EnvState{ID: id, Status: workflows.EnvCreating, Type: req.Config.Type, Infra: req.Infra,
		Request: req, CreatedAt: now, UpdatedAt: now, ExpiresAt: now.Add(ttl)}
	task, err := testenv.EnvTask(state)
	if err != nil {
		return err
	}
	if keyed {
		// A replay is answered before the quota: it creates nothing.
		if handled, err := s.replay(c, task); handled {
			return err
		}
	}
	if s.envOpts.MaxEnvironments > 0 {
		// Counting and creating are two store calls: creates through this
		// API process take turns so that they cannot overshoot together.
		s.envAdmit.Lock()
		defer s.envAdmit.Unlock()
		if err := s.admitEnvironment(c.Request().Context()); err != nil {
			return err
		}
	}
	// The infra (if any) is the fairness key, as for provisioning tasks.
	prio := temporal.Priority{PriorityKey: cmp.Or(req.Priority, storage.DefaultPriority), FairnessKey: req.Infra, FairnessWeight: s.weights[req.Infra]}
	return s.startTask(c, task, keyed, workflowStart{wfType: workflows.TestEnvironmentWorkflowName, input: in,
		prio: prio, summary: task.Name, attrs: s.attrs.Start(cmp.Or(req.Infra, testenv.DefaultInfra), prio.PriorityKey)})
}

// admitEnvironment answers 429 when MaxEnvironments environments are
// alive: their tasks are Pending (creating) or Running (serving).
func (s *Server) admitEnvironment(ctx context.Context) error {
	alive := 0
	for _, st := range []storage.TaskStatus{storage.StatusPending, storage.StatusRunning} {
		_, n, err := s.store.List(ctx, storage.ListFilter{WorkflowType: testenv.EnvTaskType, Status: st, Limit: 1})
		if err != nil {
			return s.storeErr(err)
		}
		alive += n
	}
	if alive >= s.envOpts.MaxEnvironments {
		return &APIError{Status: http.StatusTooManyRequests, Body: ErrorBody{Code: CodeQuota, Message: fmt.Sprintf(
			"%d test environments are alive; this orchestrator allows at most %d (--max-environments): delete one first", alive, s.envOpts.MaxEnvironments)}}
	}
	return nil
}

// envView decodes an environment task's state.
func envView(t storage.Task) (testenv.EnvState, error) {
	var st testenv.EnvState
	if len(t.Environment) == 0 {
		return st, errors.New("not a test environment")
	}
	err := json.Unmarshal(t.Environment, &st)
	return st, err
}

func (s *Server) listEnvs(c echo.Context) error {
	f := storage.ListFilter{WorkflowType: testenv.EnvTaskType, Limit: storage.MaxLimit}
	if n, ok, err := intParam(c, "limit", 1, storage.MaxLimit); err != nil {
		return err
	} else if ok {
		f.Limit = n
	}
	tasks, total, err := s.store.List(c.Request().Context(), f)
	if err != nil {
		return s.storeErr(err)
	}
	out := make([]testenv.EnvState, 0, len(tasks))
	for _, t := range tasks {
		if st, err := envView(t); err == nil {
			st.Request = testenv.CreateRequest{} // keep the list light
			st.Runs = nil
			out = append(out, st)
		}
	}
	c.Response().Header().Set("X-Total-Count", strconv.Itoa(total))
	return ok(c, http.StatusOK, out)
}

func (s *Server) env(c echo.Context) (testenv.EnvState, error) {
	id, err := s.taskID(c)
	if err != nil {
		return testenv.EnvState{}, err
	}
	t, err := s.store.Get(c.Request().Context(), id)
	if err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return testenv.EnvState{}, notFound("test environment not found")
		}
		return testenv.EnvState{}, s.storeErr(err)
	}
	st, err := envView(t)
	if err != nil {
		return testenv.EnvState{}, notFound("test environment not found (that id is a provisioning task)")
	}
	return st, nil
}

func (s *Server) getEnv(c echo.Context) error {
	st, err := s.env(c)
	if err != nil {
		return err
	}
	return ok(c, http.StatusOK, st)
}

func (s *Server) runEnv(c echo.Context) error {
	return envUpdate[testenv.RunRequest](s, c, workflows.RunTestsUpdate, ActionTestRunRequested, "run", "test run",
		func(run testenv.TestRun) string {
			return fmt.Sprintf("run %d: %d of %d tests passed", run.Number, run.Total-run.Failed, run.Total)
		})
}

// convergeEnv converges an environment again (idempotence check when asked)
// and answers with every install's result: 200 whether it passed or not
// (passed says which), 409 when the environment cannot converge now.
func (s *Server) convergeEnv(c echo.Context) error {
	return envUpdate[testenv.ConvergeRequest](s, c, workflows.ConvergeUpdate, ActionConvergeRequested, "converge", "converge",
		func(rep testenv.ConvergeReport) string {
			d := fmt.Sprintf("%d installs, passed %v", len(rep.Converge), rep.Passed)
			if rep.Idempotence != nil {
				d += fmt.Sprintf(", idempotent %v", rep.Idempotence.Passed)
			}
			return d
		})
}

// envUpdate is the shape of the endpoints that send an environment an
// update and wait for its result: the optional body decoded as Req, 409
// unless the environment can take it, the wait bounded by RunWait, an audit
// event (action, under key) with detail of the Res, or of the timeout.
func envUpdate[Req, Res any](s *Server, c echo.Context, update, action, key, what string, detail func(Res) string) error {
	st, err := s.env(c)
	if err != nil {
		return err
	}
	var req Req
	if err := s.decodeOptionalJSON(c, &req); err != nil {
		return err
	}
	switch st.Status {
	case workflows.EnvCleaning, workflows.EnvCleaned, workflows.EnvError:
		return conflict(fmt.Sprintf("test environment %s is %s", st.ID, st.Status))
	case workflows.EnvCreating:
		return conflict(fmt.Sprintf("test environment %s is still being created", st.ID))
	}
	ctx, cancel := context.WithTimeout(actorCtx(c), s.envOpts.RunWait)
	defer cancel()
	h, err := s.client.UpdateWorkflow(ctx, client.UpdateWorkflowOptions{
		WorkflowID:   st.ID,
		UpdateName:   update,
		Args:         []any{req},
		WaitForStage: client.WorkflowUpdateStageCompleted,
	})
	status, version := envStatus(st)
	event := storage.AuditEntry{Action: action, Before: status, After: status, Version: version}
	if err == nil {
		var res Res
		if err = h.Get(ctx, &res); err == nil {
			event.Detail = detail(res)
			s.recordEvent(ctx, st.ID, key, false, event)
			return ok(c, http.StatusOK, res)
		}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		event.Detail = fmt.Sprintf("no result within %s", s.envOpts.RunWait)
		s.recordEvent(ctx, st.ID, key, false, event)
	}
	return s.updateErr(st.ID, what, err)
}

func (s *Server) updateErr(id, what string, err error) error {
	var appErr *temporal.ApplicationError
	var nf *serviceerror.NotFound
	switch {
	case errors.As(err, &appErr) && appErr.Type() == workflows.ErrTypeRunInProgress:
		return conflict(appErr.Message())
	case errors.As(err, &appErr) && appErr.Type() == workflows.ErrTypeEnvNotReady:
		return conflict(appErr.Message())
	case errors.As(err, &appErr) && appErr.Type() == workflows.ErrTypeInvalidRunSpec:
		var fe *testenv.FieldError
		msg := appErr.Message()
		if errors.As(err, &fe) {
			return fieldErr(fe.Field, fe.Message)
		}
		return &APIError{Status: http.StatusBadRequest, Body: ErrorBody{Code: CodeValidation, Message: msg}}
	case errors.As(err, &nf):
		return conflict(fmt.Sprintf("test environment %s has already ended", id))
	case errors.Is(err, context.DeadlineExceeded):
		return &APIError{Status: http.StatusGatewayTimeout, Body: ErrorBody{Code: "timeout", Message: "the " + what + " did not finish in time; its results will appear in GET /test/environments/" + id}}
	}
	return unavailable("temporal", err)
}

func (s *Server) deleteEnv(c echo.Context) error {
	st, err := s.env(c)
	if err != nil {
		return err
	}
	if st.Status == workflows.EnvCleaned || st.Status == workflows.EnvError && st.FinishedAt != nil {
		// Already gone: DELETE is idempotent.
		return ok(c, http.StatusOK, st)
	}
	ctx := actorCtx(c)
	err = s.client.SignalWorkflow(ctx, st.ID, "", workflows.CleanupSignal, nil)
	var nf *serviceerror.NotFound
	if errors.As(err, &nf) {
		return ok(c, http.StatusOK, st)
	}
	if err != nil {
		return unavailable("temporal", err)
	}
	status, version := envStatus(st)
	s.recordEvent(ctx, st.ID, "cleanup", false, storage.AuditEntry{
		Action: ActionCleanupRequested, Before: status, After: status, Version: version,
		Detail: "environment was " + st.Status})
	st.Status = workflows.EnvCleaning
	return ok(c, http.StatusAccepted, st)
}

// EnvLogs is the body of GET /test/environments/{id}/logs.
type EnvLogs struct {
	ID    string               `json:"id"`
	Nodes []NodeLogs           `json:"nodes"`
	Tests []testenv.TestResult `json:"tests"`
}

// NodeLogs is one container's output.
type NodeLogs struct {
	Node        string `json:"node"`
	ContainerID string `json:"container_id"`
	Stdout      string `json:"stdout"`
	Stderr      string `json:"stderr"`
	Error       string `json:"error,omitempty"`
}

func (s *Server) envLogs(c echo.Context) error {
	st, err := s.env(c)
	if err != nil {
		return err
	}
	for k := range c.QueryParams() {
		if k != "node" && k != "tail" {
			return fieldErr(k, "unknown query parameter (use node, tail)")
		}
	}
	tail := 200
	if n, ok, err := intParam(c, "tail", 1, 10000); err != nil {
		return err
	} else if ok {
		tail = n
	}
	node := c.QueryParam("node")
	if node != "" {
		found := false
		for _, n := range st.Nodes {
			found = found || n.Node == node
		}
		if !found {
			return fieldErr("node", fmt.Sprintf("%q is not a node of this environment", node))
		}
	}
	out := EnvLogs{ID: st.ID, Nodes: []NodeLogs{}, Tests: []testenv.TestResult{}}
	if st.LastRun != nil {
		for _, r := range st.LastRun.Results {
			if node == "" || r.Node == node {
				out.Tests = append(out.Tests, r)
			}
		}
	}
	if st.Status != workflows.EnvCleaned {
		if s.envOpts.Docker == nil {
			return unavailable("docker", errors.New("this API process has no Docker engine to read container logs from"))
		}
		for _, n := range st.Nodes {
			if node != "" && n.Node != node || n.ContainerID == "" {
				continue
			}
			nl := NodeLogs{Node: n.Node, ContainerID: n.ContainerID}
			nl.Stdout, nl.Stderr, err = s.envOpts.Docker.Logs(c.Request().Context(), n.ContainerID, tail)
			if err != nil {
				nl.Error = err.Error()
			}
			out.Nodes = append(out.Nodes, nl)
		}
	}
	return ok(c, http.StatusOK, out)
}

func (s *Server) listTopologies(c echo.Context) error {
	return ok(c, http.StatusOK, s.envOpts.Templates.List())
}

func envValidationErr(err error) error {
	var fe *testenv.FieldError
	if errors.As(err, &fe) {
		return fieldErr(fe.Field, fe.Message)
	}
	return &APIError{Status: http.StatusBadRequest, Body: ErrorBody{Code: CodeValidation, Message: err.Error()}}
}
