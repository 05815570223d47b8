package sdk

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/testenv"
	"github.com/provisioning/orchestrator/workflows"
)

func isAlreadyStarted(err error) bool {
	var started *serviceerror.WorkflowExecutionAlreadyStarted
	return errors.As(err, &started)
}

// StartTestEnvironment starts a TestEnvironment workflow, like
// POST /test/environments/create: req is validated and turned into a plan
// with testenv.BuildPlan (templates nil means testenv.DefaultTemplates();
// defaultImage is used for nodes without a base_image and must be given
// when the request names none). ttl bounds the environment's life; zero
// means req.TTL, or workflows.DefaultEnvTTL when that is empty too. An
// invalid request is a *testenv.FieldError and starts nothing.
func (c *Client) StartTestEnvironment(ctx context.Context, req testenv.CreateRequest, templates *testenv.Templates, defaultImage string, ttl time.Duration) (EnvRun, error) {
	if templates == nil {
		templates = testenv.DefaultTemplates()
	}
	if err := req.Validate(templates); err != nil {
		return EnvRun{}, err
	}
	id := uuid.NewString()
	plan, err := testenv.BuildPlan(id, req, templates, defaultImage)
	if err != nil {
		return EnvRun{}, err
	}
	plan.ApplyDefaultLimits(testenv.DefaultNodeCPUMillicores, testenv.DefaultNodeMemoryMB)
	plan.SetInstance(c.Instance)
	if ttl <= 0 && req.TTL != "" {
		if ttl, err = time.ParseDuration(req.TTL); err != nil {
			return EnvRun{}, &testenv.FieldError{Field: "ttl", Message: err.Error()}
		}
	}
	if ttl <= 0 {
		ttl = workflows.DefaultEnvTTL
	}
	in := workflows.TestEnvInput{EnvID: id, Request: req, Plan: plan, TTL: ttl,
		CreatedAt:         time.Now().UTC().Truncate(time.Microsecond),
		ActivityTaskQueue: workflows.EnvTaskQueue(c.taskQueue())}
	// As the REST API: the environment's priority, its infra as fairness key.
	prio := temporal.Priority{PriorityKey: cmp.Or(req.Priority, storage.DefaultPriority), FairnessKey: req.Infra}
	if err := c.start(ctx, id, workflows.TestEnvironmentWorkflowName, in, cmp.Or(req.Infra, testenv.DefaultInfra), prio, "test environment "+id, ""); err != nil {
		return EnvRun{}, err
	}
	return c.Env(id), nil
}

// Env returns a handle on an existing test environment by its id.
func (c *Client) Env(id string) EnvRun { return EnvRun{c: c, id: id} }

// EnvRun is a started test environment.
type EnvRun struct {
	c  *Client
	id string
}

// ID is the environment id (= task id = workflow id).
func (e EnvRun) ID() string { return e.id }

// pollInterval is how often WaitReady asks for the status.
const pollInterval = 200 * time.Millisecond

// ErrNotReady reports that an environment ended up in a state other than
// ready (creation failed, or it was cleaned up first).
var ErrNotReady = errors.New("sdk: environment not ready")

// WaitReady polls the status query until the environment is ready for tests
// and returns its state. It returns an error wrapping ErrNotReady when the
// environment failed to come up or was cleaned up, and ctx's error when ctx
// ends first: bound it with a timeout.
func (e EnvRun) WaitReady(ctx context.Context) (testenv.EnvState, error) {
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		st, err := e.Status(ctx)
		if err == nil {
			switch st.Status {
			case workflows.EnvReady, workflows.EnvPassed, workflows.EnvFailed:
				return st, nil
			case workflows.EnvError, workflows.EnvCleaning, workflows.EnvCleaned:
				return st, fmt.Errorf("%w: %s is %s: %s", ErrNotReady, e.id, st.Status, st.Error)
			}
		} else if !retryableQueryErr(err) {
			return st, err
		}
		select {
		case <-ctx.Done():
			return st, fmt.Errorf("sdk: wait for environment %s (last %q): %w", e.id, st.Status, ctx.Err())
		case <-t.C:
		}
	}
}

// retryableQueryErr: right after the start the first workflow task may not
// have registered the query handler yet.
func retryableQueryErr(err error) bool {
	var qf *serviceerror.QueryFailed
	var nf *serviceerror.NotFound
	return errors.As(err, &qf) || errors.As(err, &nf)
}

// Status returns the environment's current state with the status query.
func (e EnvRun) Status(ctx context.Context) (testenv.EnvState, error) {
	var st testenv.EnvState
	if err := query(ctx, e.c.Temporal, e.id, &st); err != nil {
		return st, fmt.Errorf("sdk: status of environment %s: %w", e.id, err)
	}
	return st, nil
}

// RunTests runs tests in the ready environment with the run-tests update
// and returns their results, like POST /test/environments/{id}/run. Failing
// tests are a TestRun with Passed false, not an error; a rejected run (not
// ready, another run in progress, invalid request) is an error whose
// *temporal.ApplicationError type is one of workflows.ErrType*.
func (e EnvRun) RunTests(ctx context.Context, req testenv.RunRequest) (testenv.TestRun, error) {
	var run testenv.TestRun
	h, err := e.c.Temporal.UpdateWorkflow(ctx, client.UpdateWorkflowOptions{
		WorkflowID:   e.id,
		UpdateName:   workflows.RunTestsUpdate,
		Args:         []any{req},
		WaitForStage: client.WorkflowUpdateStageCompleted,
	})
	if err == nil {
		err = h.Get(ctx, &run)
	}
	if err != nil {
		return run, fmt.Errorf("sdk: run tests in %s: %w", e.id, err)
	}
	return run, nil
}

// Cleanup sends the cleanup signal, like DELETE /test/environments/{id}:
// the environment removes its containers and network and ends. An
// environment that has already ended is not an error. Wait for the end.
func (e EnvRun) Cleanup(ctx context.Context) error {
	err := e.c.Temporal.SignalWorkflow(ctx, e.id, "", workflows.CleanupSignal, nil)
	var nf *serviceerror.NotFound
	if err != nil && !errors.As(err, &nf) {
		return fmt.Errorf("sdk: clean up environment %s: %w", e.id, err)
	}
	return nil
}

// Cancel cancels the environment's workflow; it removes its Docker objects
// and ends Cancelled.
func (e EnvRun) Cancel(ctx context.Context) error {
	return e.c.Task(e.id).Cancel(ctx)
}

// Wait blocks until the environment's workflow ends and returns its final
// state (status cleaned after a cleanup or TTL). Failed creation returns
// the last state and an error.
func (e EnvRun) Wait(ctx context.Context) (testenv.EnvState, error) {
	var st testenv.EnvState
	err := e.c.Temporal.GetWorkflow(ctx, e.id, "").Get(ctx, &st)
	if err == nil {
		return st, nil
	}
	if ctx.Err() == nil {
		qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if s, qerr := e.Status(qctx); qerr == nil {
			st = s
		}
	}
	if st.ID == "" {
		st.ID = e.id
	}
	return st, fmt.Errorf("sdk: environment %s: %w", e.id, err)
}

// Task returns the environment's task as the task API shows it (the
// status query's state mapped like the service's projection).
func (e EnvRun) Task(ctx context.Context) (storage.Task, error) {
	st, err := e.Status(ctx)
	if err != nil {
		return storage.Task{}, err
	}
	return testenv.EnvTask(st)
}
