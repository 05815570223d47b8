// Package sdk lets CI jobs drive the orchestrator through the Temporal SDK
// instead of the REST API. It starts the same workflows, with the same
// inputs, IDs and validation the REST API uses, so a task started here shows
// up in GET /tasks/{id} like any other and can be watched or cancelled from
// either side.
//
// # Connecting
//
// Dial connects to Temporal. The orchestrator's embedded development server
// listens on 127.0.0.1:7233 (the serve command's --temporal-port) in the
// "default" namespace:
//
//	c, err := sdk.Dial(ctx, "127.0.0.1:7233", "default")
//
// Against a real cluster give its frontend address and namespace (for TLS or
// API keys build a client.Client with client.Dial yourself and put it in
// Client.Temporal). The workers must poll the same task queue as
// Client.TaskQueue (workflows.DefaultTaskQueue, "provisioning", unless the
// service runs with --task-queue).
//
// # Names for operators
//
// Every task is a workflow whose ID is the task id, so the temporal CLI
// works on any task, however it was started:
//
//   - workflow types: ServerCreate, TaskservCreate, ClusterCreate,
//     TestEnvironment (workflows.*WorkflowName);
//   - query "status" (workflows.StatusQuery) answers the current
//     storage.Task, or testenv.EnvState for an environment:
//     temporal workflow query --type status -w <task id>;
//   - signal "cleanup" (workflows.CleanupSignal, no input) removes a test
//     environment: temporal workflow signal --name cleanup -w <env id>;
//   - update "run-tests" (workflows.RunTestsUpdate, input testenv.RunRequest,
//     result testenv.TestRun) runs tests in a ready environment:
//     temporal workflow update execute --name run-tests -w <env id> --input '{}';
//   - cancellation ends a task as Cancelled (and kills its processes):
//     temporal workflow cancel -w <task id>;
//   - search attributes Infra (Keyword) and Priority (Int), when the
//     namespace defines them (the embedded server does):
//     temporal workflow list --query 'Infra="production" AND Priority=1'.
//
// Do not terminate or reset a task workflow while it runs: terminate skips
// its cleanup, and the task API keeps showing its last projected state.
package sdk

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/provisioning/orchestrator/internal/searchattr"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/workflows"
)

// DefaultNamespace is the Temporal namespace Dial uses when none is given;
// the embedded development server serves it.
const DefaultNamespace = "default"

// DefaultHostPort is the embedded development server's frontend address.
const DefaultHostPort = "127.0.0.1:7233"

// Client starts and follows orchestrator workflows. The zero TaskQueue means
// workflows.DefaultTaskQueue; the zero Policy means the workflows' documented
// defaults (the REST API passes its --policy flags instead).
type Client struct {
	// Temporal is the connection; required.
	Temporal client.Client
	// TaskQueue workflows are started on; empty means
	// workflows.DefaultTaskQueue.
	TaskQueue string
	// Policy bounds parallelism, retries and timeouts of provisioning
	// workflows; zero fields take their defaults.
	Policy workflows.ExecPolicy
	// Instance, when set, labels test-environment Docker objects like the
	// service's --instance, so that instance's janitor owns them.
	Instance string
	// Namespace is Temporal's namespace of the connection, asked once which
	// search attributes (Infra, Priority) it defines before the first start;
	// empty means DefaultNamespace. Dial sets it.
	Namespace string

	// attrsMu guards attrs, the search attributes detected (nil: not yet).
	attrsMu sync.Mutex
	attrs   *searchattr.Set
}

// Dial connects to the Temporal frontend at hostPort (empty means
// DefaultHostPort) in namespace (empty means DefaultNamespace). Close the
// result's Temporal client when done.
func Dial(ctx context.Context, hostPort, namespace string) (*Client, error) {
	if hostPort == "" {
		hostPort = DefaultHostPort
	}
	if namespace == "" {
		namespace = DefaultNamespace
	}
	c, err := client.DialContext(ctx, client.Options{HostPort: hostPort, Namespace: namespace})
	if err != nil {
		return nil, fmt.Errorf("sdk: dial temporal %s (namespace %s): %w", hostPort, namespace, err)
	}
	return &Client{Temporal: c, Namespace: namespace}, nil
}

// Close closes the Temporal connection.
func (c *Client) Close() {
	if c.Temporal != nil {
		c.Temporal.Close()
	}
}

// Option adjusts a provisioning request.
type Option func(*options)

type options struct {
	checkMode      bool
	wait           bool
	taskID         string
	idempotencyKey string
	priority       int
	webhook        string
}

// WithPriority sets the task's priority, 1 (most urgent) to 5, like the REST
// requests' priority; default 3. Temporal dispatches the steps of more
// urgent tasks first when workers are busy.
func WithPriority(p int) Option { return func(o *options) { o.priority = p } }

// WithCheckMode asks the script for a dry run (--check), like check_mode.
func WithCheckMode(on bool) Option { return func(o *options) { o.checkMode = on } }

// WithWait asks the script to wait for resources to be ready (--wait).
func WithWait(on bool) Option { return func(o *options) { o.wait = on } }

// WithTaskID uses id instead of a fresh UUID as task and workflow id, so a
// retried CI job cannot start the same work twice: a second start with the
// same id fails with ErrAlreadyExists, as the REST API answers 409.
func WithTaskID(id string) Option { return func(o *options) { o.taskID = id } }

// WithIdempotencyKey makes a retried start safe, like the REST API's
// Idempotency-Key header: the key (1 to 128 of letters, digits, . _ : -)
// names the task id, and a start whose task exists already returns that
// task's Run instead of an error, so a retried CI job never runs the same
// provisioning twice. Keys are scoped to the SDK and the workflow type (the
// REST API scopes them per token, so the two never name the same task).
func WithIdempotencyKey(key string) Option { return func(o *options) { o.idempotencyKey = key } }

// WithWebhook delivers the task's status changes (Running, then Completed,
// Failed or Cancelled) to url as HMAC-signed POSTs, like the REST
// requests' webhook; verify them with webhook.Verify. The workers sign
// with their --webhook-secret-file: without one, deliveries fail and the
// task's audit trail says so. Default none.
func WithWebhook(url string) Option { return func(o *options) { o.webhook = url } }

// ErrAlreadyExists reports that a task with the requested id exists (running
// or finished); ids are never reused.
var ErrAlreadyExists = errors.New("sdk: task already exists")

func (c *Client) taskQueue() string {
	if c.TaskQueue == "" {
		return workflows.DefaultTaskQueue
	}
	return c.TaskQueue
}

func (c *Client) common(wfType, infra, settings string, opts []Option) (workflows.Common, bool, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	id := o.taskID
	keyed := o.idempotencyKey != ""
	if keyed {
		if id != "" {
			return workflows.Common{}, false, &workflows.FieldError{Field: "idempotency_key", Message: "give WithTaskID or WithIdempotencyKey, not both"}
		}
		if err := storage.ValidateIdempotencyKey(o.idempotencyKey); err != nil {
			return workflows.Common{}, false, &workflows.FieldError{Field: "idempotency_key", Message: err.Error()}
		}
		id = storage.IdempotentID("sdk\x00"+wfType, o.idempotencyKey)
	} else if id == "" {
		id = uuid.NewString()
	} else if err := storage.ValidateID(id); err != nil {
		return workflows.Common{}, false, &workflows.FieldError{Field: "task_id", Message: err.Error()}
	}
	var hook *workflows.Webhook
	if o.webhook != "" {
		hook = &workflows.Webhook{URL: o.webhook}
	}
	return workflows.Common{
		TaskID:    id,
		Infra:     infra,
		Settings:  settings,
		CheckMode: o.checkMode,
		Wait:      o.wait,
		CreatedAt: time.Now().UTC().Truncate(time.Microsecond),
		Policy:    c.Policy,
		Priority:  o.priority,
		Webhook:   hook,
	}, keyed, nil
}

// startKeyed is start, except that with an idempotency key an existing
// task of the same workflow type is the result, not an error.
func (c *Client) startKeyed(ctx context.Context, keyed bool, common workflows.Common, wfType string, input interface{ Task() workflows.TaskSpec }) error {
	id := common.TaskID
	err := c.start(ctx, id, wfType, input, common.Infra, common.TemporalPriority(), input.Task().Summary(), common.Details())
	if err == nil || !keyed || !errors.Is(err, ErrAlreadyExists) {
		return err
	}
	desc, derr := c.Temporal.DescribeWorkflowExecution(ctx, id, "")
	if derr != nil {
		return fmt.Errorf("sdk: %s exists but cannot be described: %w", id, derr)
	}
	if got := desc.GetWorkflowExecutionInfo().GetType().GetName(); got != wfType {
		return fmt.Errorf("%w: %s is a %s, not a %s: the idempotency key was used for another request", ErrAlreadyExists, id, got, wfType)
	}
	return nil
}

// start starts a workflow with ID = id under the REST API's policy: an id
// is never reused, and a running one is never joined. It carries the
// search attributes of infra and prio.PriorityKey the namespace defines.
func (c *Client) start(ctx context.Context, id, wfType string, input any, infra string, prio temporal.Priority, summary, details string) error {
	if c.Temporal == nil {
		return errors.New("sdk: Client.Temporal is nil")
	}
	attrs := c.searchAttributes(ctx)
	err := c.execute(ctx, id, wfType, input, prio, summary, details, attrs.Start(infra, prio.PriorityKey))
	if err != nil && attrs != (searchattr.Set{}) && undefinedSearchAttribute(err) {
		// Detected on another namespace than the connection's (Namespace
		// not set to it): start without them, from now on.
		c.attrsMu.Lock()
		c.attrs = &searchattr.Set{}
		c.attrsMu.Unlock()
		err = c.execute(ctx, id, wfType, input, prio, summary, details, temporal.SearchAttributes{})
	}
	if err != nil {
		if isAlreadyStarted(err) {
			return fmt.Errorf("%w: %s", ErrAlreadyExists, id)
		}
		return fmt.Errorf("sdk: start %s %s: %w", wfType, id, err)
	}
	return nil
}

// searchAttributes asks the namespace once which of the orchestrator's
// search attributes it defines; a failed question is asked again at the
// next start, and meanwhile tasks start without them.
func (c *Client) searchAttributes(ctx context.Context) searchattr.Set {
	c.attrsMu.Lock()
	defer c.attrsMu.Unlock()
	if c.attrs != nil {
		return *c.attrs
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	set, _, err := searchattr.Detect(dctx, c.Temporal, cmp.Or(c.Namespace, DefaultNamespace))
	if err != nil {
		return searchattr.Set{}
	}
	c.attrs = &set
	return set
}

// undefinedSearchAttribute reports Temporal's rejection of a start naming
// a search attribute the namespace does not define.
func undefinedSearchAttribute(err error) bool {
	var ia *serviceerror.InvalidArgument
	return errors.As(err, &ia) && strings.Contains(strings.ToLower(ia.Message), "search attribute")
}

func (c *Client) execute(ctx context.Context, id, wfType string, input any, prio temporal.Priority, summary, details string, attrs temporal.SearchAttributes) error {
	_, err := c.Temporal.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID:                       id,
		TaskQueue:                c.taskQueue(),
		WorkflowIDReusePolicy:    enumspb.WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATE,
		WorkflowIDConflictPolicy: enumspb.WORKFLOW_ID_CONFLICT_POLICY_FAIL,
		// Without this the SDK hides the rejection and returns the
		// existing run, so a duplicate id would silently join it.
		WorkflowExecutionErrorWhenAlreadyStarted: true,
		Priority:                                 prio,
		StaticSummary:                            summary,
		StaticDetails:                            details,
		TypedSearchAttributes:                    attrs,
	}, wfType, input)
	return err
}

// StartServerCreate starts a ServerCreate workflow creating servers of infra
// from the settings file, like POST /workflows/servers/create. No servers
// (nil or empty) means every server the settings define: the workflow asks
// the provisioning script (`server list`) first. An invalid request is a
// *workflows.FieldError and starts nothing.
func (c *Client) StartServerCreate(ctx context.Context, infra, settings string, servers []string, opts ...Option) (Run, error) {
	common, keyed, err := c.common(workflows.ServerCreateWorkflowName, infra, settings, opts)
	if err != nil {
		return Run{}, err
	}
	in := workflows.ServerCreateInput{Common: common, Servers: servers}
	if err := in.Validate(); err != nil {
		return Run{}, err
	}
	if err := c.startKeyed(ctx, keyed, in.Common, workflows.ServerCreateWorkflowName, in); err != nil {
		return Run{}, err
	}
	return c.Task(in.TaskID), nil
}

// StartTaskservCreate starts a TaskservCreate workflow installing taskserv
// on servers (empty: the script's default, all), like
// POST /workflows/taskserv/create. An invalid request is a
// *workflows.FieldError and starts nothing.
func (c *Client) StartTaskservCreate(ctx context.Context, infra, settings, taskserv string, servers []string, opts ...Option) (Run, error) {
	common, keyed, err := c.common(workflows.TaskservCreateWorkflowName, infra, settings, opts)
	if err != nil {
		return Run{}, err
	}
	in := workflows.TaskservCreateInput{Common: common, Taskserv: taskserv, Servers: servers}
	if err := in.Validate(); err != nil {
		return Run{}, err
	}
	if err := c.startKeyed(ctx, keyed, in.Common, workflows.TaskservCreateWorkflowName, in); err != nil {
		return Run{}, err
	}
	return c.Task(in.TaskID), nil
}

// StartClusterCreate starts a ClusterCreate workflow building cluster, like
// POST /workflows/cluster/create. An invalid request is a
// *workflows.FieldError and starts nothing.
func (c *Client) StartClusterCreate(ctx context.Context, infra, settings, cluster string, opts ...Option) (Run, error) {
	common, keyed, err := c.common(workflows.ClusterCreateWorkflowName, infra, settings, opts)
	if err != nil {
		return Run{}, err
	}
	in := workflows.ClusterCreateInput{Common: common, Cluster: cluster}
	if err := in.Validate(); err != nil {
		return Run{}, err
	}
	if err := c.startKeyed(ctx, keyed, in.Common, workflows.ClusterCreateWorkflowName, in); err != nil {
		return Run{}, err
	}
	return c.Task(in.TaskID), nil
}

// Retry starts a new task that runs again what the Failed or Cancelled task
// id did not complete, like POST /tasks/{id}/retry (workflows.Retry): the
// same workflow type, infra, settings and options, only the servers whose
// steps did not complete, and id in the new task's dependencies. The
// original request is read from the task's Temporal history and the steps'
// outcome with the status query, so the history must still exist and a
// worker must be running. WithPriority overrides the task's priority,
// WithTaskID and WithIdempotencyKey name the new task as on the starts
// (a key is scoped apart from theirs); without either the new task's id is
// workflows.DefaultRetryID, the REST API's, so retrying the same task again
// returns the same retry; WithCheckMode and WithWait are
// ignored: a retry keeps the original's. A task that cannot be retried
// (still running, completed, a test environment) is a
// *workflows.NotRetryableError. The REST API also records the retry in
// both tasks' audit trails; the SDK does not (it has no store).
func (c *Client) Retry(ctx context.Context, id string, opts ...Option) (Run, error) {
	if c.Temporal == nil {
		return Run{}, errors.New("sdk: Client.Temporal is nil")
	}
	old, err := c.Task(id).Status(ctx)
	if err != nil {
		return Run{}, err
	}
	if err := workflows.CheckRetryable(old); err != nil {
		return Run{}, err
	}
	it := c.Temporal.GetWorkflowHistory(ctx, id, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	if !it.HasNext() {
		return Run{}, fmt.Errorf("sdk: retry %s: its history is empty", id)
	}
	first, err := it.Next()
	if err != nil {
		return Run{}, fmt.Errorf("sdk: retry %s: read its history: %w", id, err)
	}
	orig, err := workflows.DecodeStartInput(id, old.WorkflowType, first)
	if err != nil {
		return Run{}, err
	}
	in, err := workflows.Retry(orig, old)
	if err != nil {
		return Run{}, err
	}
	fresh, keyed, err := c.common(retryScope+old.WorkflowType, "", "", opts)
	if err != nil {
		return Run{}, err
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if o.taskID == "" && o.idempotencyKey == "" {
		// The REST API's default: one retry per task.
		fresh.TaskID, keyed = workflows.DefaultRetryID(old), true
	}
	common := in.Fields()
	common.TaskID, common.CreatedAt, common.Policy = fresh.TaskID, fresh.CreatedAt, c.Policy
	if fresh.Priority != 0 {
		common.Priority = fresh.Priority
	}
	if err := in.Validate(); err != nil {
		return Run{}, err
	}
	if err := c.startKeyed(ctx, keyed, *common, old.WorkflowType, in); err != nil {
		return Run{}, err
	}
	return c.Task(common.TaskID), nil
}

// retryScope scopes a retry's idempotency key apart from the starts'.
const retryScope = "retry:"

// Task returns a handle on an existing provisioning task (however it was
// started, REST included) by its id.
func (c *Client) Task(id string) Run { return Run{c: c, id: id} }

// Run is a started provisioning task.
type Run struct {
	c  *Client
	id string
}

// ID is the task id, which is also the workflow id.
func (r Run) ID() string { return r.id }

// Wait blocks until the task ends (or ctx is done) and returns it. A
// Completed task returns a nil error. A Failed task returns the task and an
// error (a *temporal.ApplicationError of type workflows.ErrTypeProvisioningFailed, "ProvisioningFailed"); a
// Cancelled one the task and a *temporal.CanceledError. The failed task is
// read with the status query, so it needs a running worker; if that fails
// only the error is meaningful.
func (r Run) Wait(ctx context.Context) (storage.Task, error) {
	var task storage.Task
	err := r.c.Temporal.GetWorkflow(ctx, r.id, "").Get(ctx, &task)
	if err == nil {
		return task, nil
	}
	if ctx.Err() != nil {
		return task, fmt.Errorf("sdk: wait for task %s: %w", r.id, err)
	}
	// A workflow's result is dropped when it fails; its last state is not.
	qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if t, qerr := r.Status(qctx); qerr == nil {
		task = t
	} else {
		task.ID = r.id
	}
	return task, fmt.Errorf("sdk: task %s: %w", r.id, err)
}

// Status returns the task's current state with the status query (it works
// on running and finished tasks alike).
func (r Run) Status(ctx context.Context) (storage.Task, error) {
	var task storage.Task
	if err := query(ctx, r.c.Temporal, r.id, &task); err != nil {
		return task, fmt.Errorf("sdk: status of task %s: %w", r.id, err)
	}
	return task, nil
}

// SetPriority changes an unfinished task's priority (1 to 5), like PATCH
// /tasks/{id}: the steps it starts from then on are scheduled with it. It
// returns the task as it is after the change.
func (r Run) SetPriority(ctx context.Context, priority int) (storage.Task, error) {
	var t storage.Task
	h, err := r.c.Temporal.UpdateWorkflow(ctx, client.UpdateWorkflowOptions{
		WorkflowID:   r.id,
		UpdateName:   workflows.SetPriorityUpdate,
		Args:         []any{workflows.SetPriorityRequest{Priority: priority}},
		WaitForStage: client.WorkflowUpdateStageCompleted,
	})
	if err == nil {
		err = h.Get(ctx, &t)
	}
	if err != nil {
		return t, fmt.Errorf("sdk: set priority of task %s: %w", r.id, err)
	}
	return t, nil
}

// Cancel requests cancellation, like POST /tasks/{id}/cancel: running steps
// are stopped (their processes killed) and the task ends Cancelled. It
// returns once the request is recorded; Wait for the end.
func (r Run) Cancel(ctx context.Context) error {
	if err := r.c.Temporal.CancelWorkflow(ctx, r.id, ""); err != nil {
		return fmt.Errorf("sdk: cancel task %s: %w", r.id, err)
	}
	return nil
}

func query(ctx context.Context, c client.Client, id string, out any) error {
	v, err := c.QueryWorkflow(ctx, id, "", workflows.StatusQuery)
	if err != nil {
		return err
	}
	return v.Get(out)
}
