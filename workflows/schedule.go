package workflows

import (
	"cmp"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/provisioning/orchestrator/internal/searchattr"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/testenv"
)

// ScheduledRunWorkflowName is the workflow a schedule (POST /schedules)
// starts at each of its times: it runs the schedule's action as a normal
// task (a child workflow whose ID is the task id) and waits for it, so the
// schedule's overlap policy applies to the task.
const ScheduledRunWorkflowName = "ScheduledRun"

// Schedule action types: which create request a schedule repeats.
const (
	ScheduleActionServer   = "server"
	ScheduleActionTaskserv = "taskserv"
	ScheduleActionCluster  = "cluster"
	// ScheduleActionBatch repeats a batch (POST /workflows/batch): a
	// nightly drift check of a whole infra is a batch in mode plan.
	ScheduleActionBatch = "batch"
	// ScheduleActionTaskservTest repeats `test quick <taskserv>`: a
	// single_taskserv test environment created, converged (with an
	// idempotence check unless idempotence is false), checked and removed.
	// The run's task is the environment's (workflow type TestEnvironment).
	ScheduleActionTaskservTest = "taskserv_test"
)

// ScheduledTestEnv is what a taskserv_test run needs of the service's
// test-environment configuration, captured when the schedule is created
// (the API's --test-* flags): the run builds its environment's plan with it.
type ScheduledTestEnv struct {
	// DefaultImage is the nodes' base image unless the action names one.
	DefaultImage string `json:"default_image,omitempty"`
	// NodeCPUMillicores and NodeMemoryMB are the default node limits.
	NodeCPUMillicores int64 `json:"node_cpu_millicores,omitempty"`
	NodeMemoryMB      int64 `json:"node_memory_mb,omitempty"`
	// Instance labels the Docker objects (the janitor's scope).
	Instance string `json:"instance,omitempty"`
	// TTL bounds the environment's life.
	TTL time.Duration `json:"ttl,omitempty"`
	// ActivityTaskQueue is the test-environment activities' queue.
	ActivityTaskQueue string `json:"activity_task_queue,omitempty"`
	// UpdatesPerRun as in TestEnvInput.
	UpdatesPerRun int `json:"updates_per_run,omitempty"`
}

// ScheduleBatch is a batch action's DAG and options: the batch request's
// fields but the shared ones (infra, settings, check_mode, wait,
// priority), which are the action's.
type ScheduleBatch struct {
	// Name is the batch's display name; default "batch <infra>".
	Name string `json:"name,omitempty"`
	// Operations form the DAG (see Operation). Required.
	Operations []Operation `json:"operations"`
	// Parallelism, FailFast and Mode as in a batch request.
	Parallelism int    `json:"parallelism,omitempty"`
	FailFast    bool   `json:"fail_fast,omitempty"`
	Mode        string `json:"mode,omitempty"`
	// Rollback: default true, as in a batch request.
	Rollback *bool `json:"rollback,omitempty"`
}

// ScheduleAction is the work a schedule repeats: the body of a create
// request (POST /workflows/{servers,taskserv,cluster}/create) plus its
// type. A nightly drift check is a server action with check_mode set.
type ScheduleAction struct {
	// Type is one of ScheduleActionServer, ScheduleActionTaskserv,
	// ScheduleActionCluster.
	Type      string `json:"type"`
	Infra     string `json:"infra"`
	Settings  string `json:"settings"`
	CheckMode bool   `json:"check_mode,omitempty"`
	Wait      bool   `json:"wait,omitempty"`
	// Priority 1 (most urgent) to 5; default 3.
	Priority int `json:"priority,omitempty"`
	// Servers: for a server action required ([] means every server the
	// settings define, as in the create request); for a taskserv action
	// optional (empty means the script's default).
	Servers []string `json:"servers"`
	// Taskserv names the taskserv of a taskserv action.
	Taskserv string `json:"taskserv,omitempty"`
	// Cluster names the cluster of a cluster action.
	Cluster string `json:"cluster,omitempty"`
	// Batch is a batch action's DAG (required for it, refused otherwise).
	Batch *ScheduleBatch `json:"batch,omitempty"`
	// Webhook receives a signed POST on every status change of each run's
	// task (and of a batch's operations); optional.
	Webhook *Webhook `json:"webhook,omitempty"`
	// BaseImage is a taskserv_test's node image; default the service's.
	BaseImage string `json:"base_image,omitempty"`
	// Idempotence: a taskserv_test converges twice and fails unless the
	// second changed nothing; default true.
	Idempotence *bool `json:"idempotence,omitempty"`
}

// TestRequest is the test-environment request a taskserv_test action
// makes: one node with the taskserv, started and converged at creation,
// removed after its run.
func (a ScheduleAction) TestRequest() testenv.CreateRequest {
	return testenv.CreateRequest{
		Config: testenv.EnvConfig{Type: testenv.TypeSingleTaskserv, Taskserv: a.Taskserv, BaseImage: a.BaseImage},
		Infra:  a.Infra, Settings: a.Settings, AutoStart: true, AutoCleanup: true,
		Idempotence: a.Idempotence == nil || *a.Idempotence, Priority: a.Priority,
	}
}

// ScheduleRequest is the body of POST /schedules (the REST API; the Go
// SDK's API.CreateSchedule sends it).
type ScheduleRequest struct {
	// ID names the schedule ([A-Za-z0-9][A-Za-z0-9._-]{0,62}). Required.
	ID string `json:"id"`
	// Cron expressions (UTC), e.g. "0 2 * * *". Exactly one of Cron and
	// Interval is required.
	Cron []string `json:"cron,omitempty"`
	// Interval between runs as a Go duration ("2s", "1h"); at least
	// 1s (the API's MinScheduleInterval).
	Interval string `json:"interval,omitempty"`
	// Overlap: what happens when a run is due while the previous one still
	// runs: skip (default), buffer_one, buffer_all, cancel_other,
	// terminate_other, allow_all.
	Overlap string `json:"overlap,omitempty"`
	// Paused creates the schedule paused; default false.
	Paused bool `json:"paused,omitempty"`
	// Note is a free text shown with the schedule (why it is paused, say).
	Note string `json:"note,omitempty"`
	// Action is what each run does. Required.
	Action *ScheduleAction `json:"action"`
}

// ScheduleNoteRequest is the optional body of POST /schedules/{id}/pause
// and /unpause.
type ScheduleNoteRequest struct {
	Note string `json:"note,omitempty"`
}

// ScheduleRun is one recent run of a schedule.
type ScheduleRun struct {
	// TaskID is the run's task: GET /tasks/{task_id}.
	TaskID string `json:"task_id"`
	// Status is the task's status in the store ("" until the run's task
	// has been recorded).
	Status storage.TaskStatus `json:"status,omitempty"`
	// ScheduledAt is when the run was due; StartedAt when it was started.
	ScheduledAt time.Time `json:"scheduled_at"`
	StartedAt   time.Time `json:"started_at"`
}

// ScheduleView is a schedule as the API shows it.
type ScheduleView struct {
	ID string `json:"id"`
	// TemporalID is the Temporal schedule id (`temporal schedule describe
	// -s <it>`).
	TemporalID string `json:"temporal_id"`
	// AuditID is the id the schedule's changes are audited under: GET
	// /audit?task_id=<audit_id>.
	AuditID  string          `json:"audit_id"`
	Cron     []string        `json:"cron,omitempty"`
	Interval string          `json:"interval,omitempty"`
	Overlap  string          `json:"overlap"`
	Paused   bool            `json:"paused"`
	Note     string          `json:"note"`
	Action   *ScheduleAction `json:"action,omitempty"`
	// NextRuns are the next times the schedule is due (listed while paused
	// too: they are when runs would be taken).
	NextRuns []time.Time `json:"next_runs"`
	// RecentRuns are the latest runs, oldest first (Temporal keeps 10; a
	// list shows 5).
	RecentRuns []ScheduleRun `json:"recent_runs"`
	// RunningTasks are the tasks of the runs still running (GET
	// /schedules/{id} only).
	RunningTasks []string `json:"running_tasks,omitempty"`
	// Runs counts the runs taken and SkippedOverlap those skipped by the
	// overlap policy (GET /schedules/{id} only).
	Runs           int       `json:"runs"`
	SkippedOverlap int       `json:"skipped_overlap"`
	CreatedAt      time.Time `json:"created_at,omitzero"`
}

// ScheduledRunInput starts ScheduledRunWorkflow.
type ScheduledRunInput struct {
	// ScheduleID is the schedule's id as the API names it (not the
	// Temporal schedule id); the run's task name shows it.
	ScheduleID string `json:"schedule_id"`
	// Action is what each run does.
	Action ScheduleAction `json:"action"`
	// Policy bounds the runs' steps, as for any task.
	Policy ExecPolicy `json:"policy"`
	// FairnessWeight of the action's infra when Temporal shares a queue.
	FairnessWeight float32 `json:"fairness_weight,omitempty"`
	// SearchAttributes are the custom search attributes (Infra, Priority)
	// the namespace defines: each run's task starts with those, so
	// `temporal workflow list --query 'Infra="production"'` finds it.
	// Default none.
	SearchAttributes searchattr.Set `json:"search_attributes,omitzero"`
	// TestEnv is the service's test-environment configuration for
	// taskserv_test actions (set by the API; nil for other actions).
	TestEnv *ScheduledTestEnv `json:"test_env,omitempty"`
}

// ScheduledRunStatus is what ScheduledRunWorkflow's status query answers:
// the task the run is (or will be) and its status as the run last saw it.
type ScheduledRunStatus struct {
	ScheduleID string             `json:"schedule_id"`
	TaskID     string             `json:"task_id"`
	Status     storage.TaskStatus `json:"status"`
}

// scheduledRunNamespace is the UUIDv5 namespace of scheduled runs' task ids.
var scheduledRunNamespace = uuid.MustParse("5b0e3c1e-8f7a-4f5e-9d4b-2a6c1f0e9b31")

// ScheduledTaskID is the task id of the run of a schedule whose workflow
// ID is workflowID: a UUIDv5 of it. Temporal names each scheduled
// workflow uniquely (the schedule's action id plus the action's time), and
// the function is pure, so the id is the same on replay and the API can
// name the task of any run it sees in the schedule's recent actions.
func ScheduledTaskID(workflowID string) string {
	return uuid.NewSHA1(scheduledRunNamespace, []byte(workflowID)).String()
}

// scheduledName is name with the suffix a scheduled run's task name carries:
// "server create production (schedule nightly)".
func scheduledName(name, schedule string) string {
	if schedule == "" {
		return name
	}
	return name + " (schedule " + schedule + ")"
}

// Validate reports the first invalid field as a *FieldError whose field
// is prefixed "action.".
func (a ScheduleAction) Validate() error {
	switch a.Type {
	case ScheduleActionServer:
		if a.Servers == nil {
			return &FieldError{Field: "action.servers", Message: "is required: name the servers, or send [] for every server the settings define"}
		}
	case ScheduleActionTaskserv, ScheduleActionCluster:
	case ScheduleActionTaskservTest:
		if a.Servers != nil {
			return &FieldError{Field: "action.servers", Message: "a taskserv_test action names no servers (it tests in a node of its own)"}
		}
		if a.Cluster != "" || a.Batch != nil || a.CheckMode || a.Wait || a.Webhook != nil {
			return &FieldError{Field: "action", Message: "a taskserv_test action takes taskserv, infra, settings, base_image, idempotence and priority"}
		}
		// Pure for single_taskserv: templates (parsed from embedded files)
		// only matter for cluster topologies.
		//workflowcheck:ignore
		if err := a.TestRequest().Validate(nil); err != nil {
			var fe *FieldError
			if errors.As(err, &fe) {
				return &FieldError{Field: "action." + strings.TrimPrefix(fe.Field, "config."), Message: fe.Message}
			}
			return err
		}
		return nil
	case ScheduleActionBatch:
		if a.Batch == nil {
			return &FieldError{Field: "action.batch", Message: "is required for a batch action: {operations: [...], ...}"}
		}
		if a.Servers != nil {
			return &FieldError{Field: "action.servers", Message: "a batch action names its servers in its operations"}
		}
	case "":
		return &FieldError{Field: "action.type", Message: "is required: server, taskserv, cluster, batch or taskserv_test"}
	default:
		return &FieldError{Field: "action.type", Message: fmt.Sprintf("%q is not one of server, taskserv, cluster, batch, taskserv_test", a.Type)}
	}
	if a.Type != ScheduleActionBatch && a.Batch != nil {
		return &FieldError{Field: "action.batch", Message: "only a batch action has a batch"}
	}
	if a.BaseImage != "" || a.Idempotence != nil {
		return &FieldError{Field: "action.base_image", Message: "base_image and idempotence are for taskserv_test actions"}
	}
	if a.Type != ScheduleActionTaskserv && a.Taskserv != "" {
		return &FieldError{Field: "action.taskserv", Message: "only a taskserv action names a taskserv"}
	}
	if a.Type != ScheduleActionCluster && a.Cluster != "" {
		return &FieldError{Field: "action.cluster", Message: "only a cluster action names a cluster"}
	}
	if a.Type == ScheduleActionCluster && a.Servers != nil {
		return &FieldError{Field: "action.servers", Message: "a cluster action names no servers"}
	}
	// A placeholder id: validation does not look at it.
	_, input, _, _ := ScheduledRunInput{Action: a}.Child("00000000-0000-0000-0000-000000000000", time.Time{})
	if v, ok := input.(interface{ Validate() error }); ok {
		if err := v.Validate(); err != nil {
			var fe *FieldError
			if errors.As(err, &fe) {
				prefix := "action."
				if a.Type == ScheduleActionBatch && fe.Field != "priority" && !strings.HasPrefix(fe.Field, "webhook") {
					// The batch's own fields live under action.batch.
					prefix = "action.batch."
				}
				return &FieldError{Field: prefix + fe.Field, Message: fe.Message}
			}
			return err
		}
	}
	return nil
}

// Child is the task a run of the schedule is: the workflow type and input
// of its create request with the given task id and creation time, the
// shared fields, and the task's spec (its name shows the schedule).
func (in ScheduledRunInput) Child(taskID string, createdAt time.Time) (wfType string, input any, common Common, spec TaskSpec) {
	a := in.Action
	common = Common{
		TaskID: taskID, Infra: a.Infra, Settings: a.Settings, CheckMode: a.CheckMode, Wait: a.Wait,
		CreatedAt: createdAt, Policy: in.Policy, Priority: a.Priority, FairnessWeight: in.FairnessWeight,
		Schedule: in.ScheduleID, Webhook: a.Webhook,
	}
	switch a.Type {
	case ScheduleActionTaskservTest:
		// The input is built at run time (TestEnvInput).
		return TestEnvironmentWorkflowName, nil, common, TaskSpec{Workflow: TestEnvironmentWorkflowName,
			Name: scheduledName("test quick "+a.Taskserv, in.ScheduleID), Command: "test quick", Args: []string{a.Taskserv}, Targets: []string{a.Taskserv}}
	case ScheduleActionBatch:
		b := a.Batch
		if b == nil {
			b = &ScheduleBatch{}
		}
		bi := BatchInput{Common: common, Name: b.Name, Operations: b.Operations, Parallelism: b.Parallelism,
			FailFast: b.FailFast, NoRollback: b.Rollback != nil && !*b.Rollback, Mode: b.Mode, SearchAttributes: in.SearchAttributes}
		return BatchWorkflowName, bi, common, bi.Task()
	case ScheduleActionTaskserv:
		ci := TaskservCreateInput{Common: common, Taskserv: a.Taskserv, Servers: a.Servers}
		return TaskservCreateWorkflowName, ci, common, ci.Task()
	case ScheduleActionCluster:
		ci := ClusterCreateInput{Common: common, Cluster: a.Cluster}
		return ClusterCreateWorkflowName, ci, common, ci.Task()
	default:
		ci := ServerCreateInput{Common: common, Servers: a.Servers}
		return ServerCreateWorkflowName, ci, common, ci.Task()
	}
}

// ScheduledRunWorkflow is one run of a schedule. It derives the run's
// task id from its own workflow ID (ScheduledTaskID, recorded with
// workflow.SideEffect), starts the action's
// create workflow as a child with that id (the child projects the task, so
// GET /tasks/{id} shows it like any other) and waits for it. Cancelling or
// terminating the run (overlap policies cancel_other, terminate_other)
// asks the task to cancel. The result is the task's final snapshot.
func ScheduledRunWorkflow(ctx workflow.Context, in ScheduledRunInput) (storage.Task, error) {
	st := ScheduledRunStatus{ScheduleID: in.ScheduleID, Status: storage.StatusPending}
	if err := workflow.SetQueryHandler(ctx, StatusQuery, func() (ScheduledRunStatus, error) { return st, nil }); err != nil {
		return storage.Task{}, err
	}
	// Recorded in history: a replay (also by tools that replay a history
	// under another workflow ID) names the same task.
	wfID := workflow.GetInfo(ctx).WorkflowExecution.ID
	if err := workflow.SideEffect(ctx, func(workflow.Context) any { return ScheduledTaskID(wfID) }).Get(&st.TaskID); err != nil {
		return storage.Task{}, err
	}
	if err := in.Action.Validate(); err != nil {
		st.Status = storage.StatusFailed
		return storage.Task{}, temporal.NewNonRetryableApplicationError("invalid schedule action: "+err.Error(), ErrTypeInvalidInput, nil)
	}
	if in.Action.Type == ScheduleActionTaskservTest {
		return scheduledTest(ctx, in, &st)
	}
	wfType, input, common, spec := in.Child(st.TaskID, workflow.Now(ctx).UTC().Truncate(time.Microsecond))
	cctx := workflow.WithChildOptions(ctx, workflow.ChildWorkflowOptions{
		WorkflowID:            st.TaskID,
		WorkflowIDReusePolicy: enumspb.WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATE,
		// The task ends Cancelled (and says so) rather than vanishing
		// when the run is cancelled or terminated.
		ParentClosePolicy:     enumspb.PARENT_CLOSE_POLICY_REQUEST_CANCEL,
		WaitForCancellation:   true,
		Priority:              common.TemporalPriority(),
		StaticSummary:         spec.Summary(),
		StaticDetails:         common.Details(),
		TypedSearchAttributes: in.SearchAttributes.Start(common.Infra, cmp.Or(common.Priority, storage.DefaultPriority)),
	})
	st.Status = storage.StatusRunning
	var task storage.Task
	err := workflow.ExecuteChildWorkflow(cctx, wfType, input).Get(ctx, &task)
	switch {
	case task.Status != "":
		st.Status = task.Status
	case err != nil:
		st.Status = storage.StatusFailed
	}
	return task, err
}

// TestEnvInput is the environment a taskserv_test run with task (and
// environment) id envID creates: the action's request, planned with the
// service's configuration captured in TestEnv.
func (in ScheduledRunInput) TestEnvInput(envID string, createdAt time.Time) (TestEnvInput, error) {
	req := in.Action.TestRequest()
	cfg := ScheduledTestEnv{}
	if in.TestEnv != nil {
		cfg = *in.TestEnv
	}
	// Pure for single_taskserv (see Validate).
	//workflowcheck:ignore
	plan, err := testenv.BuildPlan(envID, req, nil, cfg.DefaultImage)
	if err != nil {
		return TestEnvInput{}, err
	}
	plan.ApplyDefaultLimits(cfg.NodeCPUMillicores, cfg.NodeMemoryMB)
	plan.SetInstance(cfg.Instance)
	return TestEnvInput{EnvID: envID, Request: req, Plan: plan, TTL: cmp.Or(cfg.TTL, DefaultEnvTTL), CreatedAt: createdAt,
		ActivityTaskQueue: cfg.ActivityTaskQueue, UpdatesPerRun: cfg.UpdatesPerRun, AutoRun: true}, nil
}

// scheduledTest runs a taskserv_test action: a TestEnvironment child whose
// id is the run's task id, which creates, converges, checks and removes
// its environment. The run fails unless the environment passed.
func scheduledTest(ctx workflow.Context, in ScheduledRunInput, st *ScheduledRunStatus) (storage.Task, error) {
	envIn, err := in.TestEnvInput(st.TaskID, workflow.Now(ctx).UTC().Truncate(time.Microsecond))
	if err != nil {
		st.Status = storage.StatusFailed
		return storage.Task{}, temporal.NewNonRetryableApplicationError("invalid schedule action: "+err.Error(), ErrTypeInvalidInput, nil)
	}
	a := in.Action
	cctx := workflow.WithChildOptions(ctx, workflow.ChildWorkflowOptions{
		WorkflowID:            st.TaskID,
		WorkflowIDReusePolicy: enumspb.WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATE,
		ParentClosePolicy:     enumspb.PARENT_CLOSE_POLICY_REQUEST_CANCEL,
		WaitForCancellation:   true,
		Priority:              temporal.Priority{PriorityKey: cmp.Or(a.Priority, storage.DefaultPriority), FairnessKey: a.Infra},
		StaticSummary:         scheduledName("test quick "+a.Taskserv, in.ScheduleID),
		TypedSearchAttributes: in.SearchAttributes.Start(a.Infra, cmp.Or(a.Priority, storage.DefaultPriority)),
	})
	st.Status = storage.StatusRunning
	var env testenv.EnvState
	err = workflow.ExecuteChildWorkflow(cctx, TestEnvironmentWorkflowName, envIn).Get(ctx, &env)
	task := storage.Task{ID: st.TaskID, WorkflowType: TestEnvironmentWorkflowName, Status: storage.StatusCompleted}
	switch {
	case err != nil:
		st.Status = storage.StatusFailed
		return task, err
	case env.LastStatus != EnvPassed:
		st.Status = storage.StatusFailed
		msg := fmt.Sprintf("test quick %s: the environment ended %s", a.Taskserv, cmp.Or(env.LastStatus, env.Status))
		if env.Error != "" {
			msg += ": " + env.Error
		}
		task.Status = storage.StatusFailed
		return task, temporal.NewNonRetryableApplicationError(msg, ErrTypeProvisioningFailed, nil)
	}
	st.Status = storage.StatusCompleted
	return task, nil
}
