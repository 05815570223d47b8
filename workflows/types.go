// Package workflows holds the orchestrator's deterministic Temporal workflow
// code and its public SDK surface: workflow names, the task queue, input
// types, and query names. CI jobs that prefer the Temporal SDK to REST start
// these workflows directly with the same inputs the REST API builds.
//
// Nothing here performs I/O, reads the clock or starts goroutines; side
// effects live in the activities package (workflowcheck keeps this true).
package workflows

import (
	"cmp"
	"fmt"
	"strings"
	"time"

	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/testenv"
	"github.com/provisioning/orchestrator/webhook"
	"go.temporal.io/sdk/temporal"
)

// DefaultTaskQueue is the task queue the worker polls and the API starts
// workflows on unless --task-queue says otherwise.
const DefaultTaskQueue = "provisioning"

// Registered workflow type names. They are stable: renaming one breaks
// running workflows and SDK clients.
const (
	ServerCreateWorkflowName   = "ServerCreate"
	TaskservCreateWorkflowName = "TaskservCreate"
	ClusterCreateWorkflowName  = "ClusterCreate"
)

// Error types of the workflows' own failures, as operators see
// them in `temporal workflow show` and SDK callers in ApplicationError.Type.
const (
	// ErrTypeInvalidInput: the input can never succeed (bad names, no id).
	ErrTypeInvalidInput = "InvalidInput"
	// ErrTypeProvisioningFailed: at least one step failed for good.
	ErrTypeProvisioningFailed = "ProvisioningFailed"
	// ErrTypeEnvironmentCreateFailed: a test environment could not be
	// created (and was rolled back unless kept).
	ErrTypeEnvironmentCreateFailed = "EnvironmentCreateFailed"
	// ErrTypeConvergeFailed: a taskserv could not be installed inside a
	// test-environment node; the message names the node and taskserv.
	ErrTypeConvergeFailed = "ConvergeFailed"
	// ErrTypeIdempotenceFailed: a second converge changed something (or
	// could not say whether it did).
	ErrTypeIdempotenceFailed = "IdempotenceFailed"
	// ErrTypeTaskFinished: an update asked a task that has finished to
	// change (its priority, say).
	ErrTypeTaskFinished = "TaskFinished"
)

// StatusQuery is the query every task workflow answers with its current
// storage.Task snapshot: `temporal workflow query --type status -w <task id>`.
const StatusQuery = "status"

// ExecPolicy bounds how a workflow runs its Nushell steps. The zero value of
// each field means its documented default; the API fills it from flags so
// tests can shorten retries and timeouts.
type ExecPolicy struct {
	// Parallelism is how many steps (servers) run at once; default 4.
	Parallelism int `json:"parallelism,omitempty"`
	// MaxAttempts per step, first run included; default 3.
	MaxAttempts int32 `json:"max_attempts,omitempty"`
	// InitialInterval before the first retry; default 1s.
	InitialInterval time.Duration `json:"initial_interval,omitempty"`
	// BackoffCoefficient multiplies the interval after each retry; default 2.
	BackoffCoefficient float64 `json:"backoff_coefficient,omitempty"`
	// MaxInterval caps the retry interval; default 1m.
	MaxInterval time.Duration `json:"max_interval,omitempty"`
	// StepTimeout bounds one attempt of one step; default 1h.
	StepTimeout time.Duration `json:"step_timeout,omitempty"`
	// HeartbeatTimeout: a step whose worker stops heartbeating for this long
	// (crash, kill) is retried elsewhere; default 30s.
	HeartbeatTimeout time.Duration `json:"heartbeat_timeout,omitempty"`
}

// Defaults for ExecPolicy.
const (
	DefaultParallelism        = 4
	DefaultMaxAttempts        = 3
	DefaultInitialInterval    = time.Second
	DefaultBackoffCoefficient = 2.0
	DefaultMaxInterval        = time.Minute
	DefaultStepTimeout        = time.Hour
	DefaultHeartbeatTimeout   = 30 * time.Second
)

// WithDefaults returns p with every zero field set to its default.
func (p ExecPolicy) WithDefaults() ExecPolicy {
	if p.Parallelism <= 0 {
		p.Parallelism = DefaultParallelism
	}
	if p.MaxAttempts <= 0 {
		p.MaxAttempts = DefaultMaxAttempts
	}
	if p.InitialInterval <= 0 {
		p.InitialInterval = DefaultInitialInterval
	}
	if p.BackoffCoefficient < 1 {
		p.BackoffCoefficient = DefaultBackoffCoefficient
	}
	if p.MaxInterval <= 0 {
		p.MaxInterval = DefaultMaxInterval
	}
	if p.StepTimeout <= 0 {
		p.StepTimeout = DefaultStepTimeout
	}
	if p.HeartbeatTimeout <= 0 {
		p.HeartbeatTimeout = DefaultHeartbeatTimeout
	}
	return p
}

// Common carries the fields every provisioning request shares.
type Common struct {
	// TaskID is the task's UUID and also the workflow ID.
	TaskID string `json:"task_id"`
	// Infra names the infrastructure (a directory of the user's settings).
	Infra string `json:"infra"`
	// Settings is the path of the settings file, passed to the script as is.
	Settings string `json:"settings"`
	// CheckMode asks the script for a dry run (--check).
	CheckMode bool `json:"check_mode"`
	// Wait asks the script to wait for resources to be ready (--wait).
	Wait bool `json:"wait"`
	// CreatedAt is when the API accepted the request; it becomes the
	// task's created_at.
	CreatedAt time.Time `json:"created_at"`
	// Policy bounds parallelism, retries and timeouts.
	Policy ExecPolicy `json:"policy"`
	// Priority is the task's scheduling priority, storage.MinPriority (1,
	// most urgent) to storage.MaxPriority (5); 0 means
	// storage.DefaultPriority (3). The API starts the workflow with it as
	// Temporal's priority key, which its steps inherit.
	Priority int `json:"priority,omitempty"`
	// FairnessWeight is the weight of the task's infra (its fairness key)
	// when Temporal shares a queue's throughput between infras; 0 means 1.
	FairnessWeight float32 `json:"fairness_weight,omitempty"`
	// Dependencies are the ids of tasks this one follows from, shown as the
	// task's dependencies: a retry holds the task it retries (see Retry).
	// Empty by default.
	Dependencies []string `json:"dependencies,omitempty"`
	// Parent is the batch (task id) that started this task as one of its
	// operations; empty for tasks submitted on their own.
	Parent string `json:"parent,omitempty"`
	// Schedule, when set, is the id of the schedule (POST /schedules) this
	// task is a run of; the task's name ends "(schedule <id>)". Empty by
	// default.
	Schedule string `json:"schedule,omitempty"`
	// Webhook, when set, receives a signed POST on every status change of
	// the task (see package webhook and notifier); nil (the default)
	// sends nothing.
	Webhook *Webhook `json:"webhook,omitempty"`
}

// Webhook is where a task's status changes are delivered: an HMAC-signed
// POST per change (package webhook describes the request), retried by the
// DeliverWebhook activity. The key is the service's
// (--webhook-secret-file), never part of a request or of history.
type Webhook struct {
	// URL is an absolute http:// or https:// URL with a host, at most
	// webhook.MaxURLBytes, without user:password.
	URL string `json:"url"`
}

// ValidateWebhook accepts nil (no webhook) and a valid URL; the error
// names field + ".url".
func ValidateWebhook(field string, w *Webhook) error {
	if w == nil {
		return nil
	}
	if err := webhook.ValidateURL(w.URL); err != nil {
		return &FieldError{Field: field + ".url", Message: err.Error()}
	}
	return nil
}

// TemporalPriority is the Temporal priority of a task with these fields:
// the priority as key and the infra as fairness key, so a busy infra
// cannot starve another.
func (c Common) TemporalPriority() temporal.Priority {
	return temporal.Priority{PriorityKey: cmp.Or(c.Priority, storage.DefaultPriority), FairnessKey: c.Infra, FairnessWeight: c.FairnessWeight}
}

// ValidatePriority accepts 0 (the default) and storage.MinPriority to
// storage.MaxPriority.
func ValidatePriority(field string, p int) error {
	if p != 0 && (p < storage.MinPriority || p > storage.MaxPriority) {
		return &FieldError{Field: field, Message: fmt.Sprintf("must be %d (most urgent) to %d; default %d", storage.MinPriority, storage.MaxPriority, storage.DefaultPriority)}
	}
	return nil
}

// SetPriorityUpdate is the workflow update (`temporal workflow update
// execute --name set-priority -w <task id> --input '{"priority": 1}'`, or
// PATCH /tasks/{id}) that changes an unfinished provisioning task's
// priority: the steps it starts from then on are scheduled with it. It
// answers with the task.
const SetPriorityUpdate = "set-priority"

// SetPriorityRequest is SetPriorityUpdate's input.
type SetPriorityRequest struct {
	// Priority, storage.MinPriority to storage.MaxPriority.
	Priority int `json:"priority"`
}

// ServerCreateInput starts ServerCreateWorkflow: one Nushell call per server.
type ServerCreateInput struct {
	Common
	// Servers to create. Empty (or absent) means every server the settings
	// define: the workflow first asks the provisioning script
	// (ServerListArgs) and then creates each server it names.
	Servers []string `json:"servers"`
}

// TaskservCreateInput starts TaskservCreateWorkflow: install one taskserv on
// each listed server, or once for the whole infra when Servers is empty.
type TaskservCreateInput struct {
	Common
	// Taskserv names the task service (kubernetes, containerd, ...).
	Taskserv string `json:"taskserv"`
	// Servers to install on; empty means the script's default (all).
	Servers []string `json:"servers"`
}

// ClusterCreateInput starts ClusterCreateWorkflow: one Nushell call.
type ClusterCreateInput struct {
	Common
	// Cluster names the cluster definition to build.
	Cluster string `json:"cluster"`
}

// MaxServers bounds one request so a single task cannot flood history.
const MaxServers = 500

// FieldError names the request field that is invalid; the REST API
// answers it with 400 and the field. Shared with test-environment requests.
type FieldError = testenv.FieldError

// ValidateName checks a name against the documented safe set
// ([A-Za-z0-9][A-Za-z0-9._-]{0,62}).
func ValidateName(field, v string) error { return testenv.ValidateName(field, v) }

func (c Common) validate() error {
	if err := ValidateName("infra", c.Infra); err != nil {
		return err
	}
	if err := ValidatePriority("priority", c.Priority); err != nil {
		return err
	}
	if err := ValidateWebhook("webhook", c.Webhook); err != nil {
		return err
	}
	return testenv.ValidateSettings("settings", c.Settings)
}

func validateServers(servers []string, required bool) error {
	if required && len(servers) == 0 {
		return &FieldError{Field: "servers", Message: "at least one server is required"}
	}
	if len(servers) > MaxServers {
		return &FieldError{Field: "servers", Message: fmt.Sprintf("at most %d servers per request", MaxServers)}
	}
	seen := make(map[string]bool, len(servers))
	for i, s := range servers {
		field := fmt.Sprintf("servers[%d]", i)
		if err := ValidateName(field, s); err != nil {
			return err
		}
		if seen[s] {
			return &FieldError{Field: field, Message: fmt.Sprintf("duplicate server %q", s)}
		}
		seen[s] = true
	}
	return nil
}

// Validate reports the first invalid field as a *FieldError. No servers is
// valid: it means every server the settings define.
func (in ServerCreateInput) Validate() error {
	if err := in.validate(); err != nil {
		return err
	}
	return validateServers(in.Servers, false)
}

// validateRequired is Validate as it was before `servers: []` meant every
// server: at least one server. Workflows started then replay with it.
func (in ServerCreateInput) validateRequired() error {
	if err := in.validate(); err != nil {
		return err
	}
	return validateServers(in.Servers, true)
}

// ValidateListed checks the names `server list` printed: at least one, at
// most MaxServers, each a valid name and none twice. The error names the
// offending entry of the list.
func ValidateListed(servers []string) error {
	if len(servers) == 0 {
		return &FieldError{Field: "servers", Message: "the settings define no servers (`server list` printed an empty list)"}
	}
	if len(servers) > MaxServers {
		return &FieldError{Field: "servers", Message: fmt.Sprintf("the settings define %d servers; a task creates at most %d (name them in batches)", len(servers), MaxServers)}
	}
	return validateServers(servers, true)
}

// Validate reports the first invalid field as a *FieldError.
func (in TaskservCreateInput) Validate() error {
	if err := in.validate(); err != nil {
		return err
	}
	if err := ValidateName("taskserv", in.Taskserv); err != nil {
		return err
	}
	return validateServers(in.Servers, false)
}

// Validate reports the first invalid field as a *FieldError.
func (in ClusterCreateInput) Validate() error {
	if err := in.validate(); err != nil {
		return err
	}
	return ValidateName("cluster", in.Cluster)
}

// TaskSpec is how a workflow input describes its task: the one source of the
// name, command and arguments that the API's Pending record and the
// workflow's projections show.
type TaskSpec struct {
	// Workflow is the registered workflow type.
	Workflow string
	// Name is the task's display name, e.g. "server create production".
	Name string
	// Command is the provisioning command, e.g. "server create".
	Command string
	// Args are the command's arguments as the task shows them.
	Args []string
	// Targets are what the task provisions: servers, or the cluster.
	Targets []string
}

// maxSummary bounds a summary: the Web UI shows it on one line.
const maxSummary = 200

// Summary is the one-line description Temporal's Web UI and CLI show for
// the task's workflow: "server create production: web-01, web-02".
func (s TaskSpec) Summary() string {
	out := s.Name
	if len(s.Targets) > 0 {
		out += ": " + strings.Join(s.Targets, ", ")
	}
	if r := []rune(out); len(r) > maxSummary {
		out = string(r[:maxSummary-1]) + "…"
	}
	return out
}

// Details is the workflow's static details (Markdown) for the Web UI: the
// request's infra, settings, priority and mode.
func (c Common) Details() string {
	return fmt.Sprintf("**infra** %s  \n**settings** `%s`  \n**priority** %d  \n**check mode** %t",
		c.Infra, c.Settings, cmp.Or(c.Priority, storage.DefaultPriority), c.CheckMode)
}

// Task names a server-create task: "server create <infra>".
func (in ServerCreateInput) Task() TaskSpec {
	return TaskSpec{Workflow: ServerCreateWorkflowName, Name: scheduledName("server create "+in.Infra, in.Schedule), Command: "server create",
		Args: append(in.flags(), in.Servers...), Targets: in.Servers}
}

// Task names a taskserv-create task: "taskserv create <taskserv>".
func (in TaskservCreateInput) Task() TaskSpec {
	return TaskSpec{Workflow: TaskservCreateWorkflowName, Name: scheduledName("taskserv create "+in.Taskserv, in.Schedule), Command: "taskserv create",
		Args: append(append([]string{in.Taskserv}, in.flags()...), in.Servers...), Targets: in.Servers}
}

// Task names a cluster-create task: "cluster create <cluster>".
func (in ClusterCreateInput) Task() TaskSpec {
	return TaskSpec{Workflow: ClusterCreateWorkflowName, Name: scheduledName("cluster create "+in.Cluster, in.Schedule), Command: "cluster create",
		Args: append([]string{in.Cluster}, in.flags()...), Targets: []string{in.Infra}}
}

// flags renders the shared flags in the documented argv order.
func (c Common) flags() []string {
	args := []string{"--infra", c.Infra, "--settings", c.Settings}
	if c.CheckMode {
		args = append(args, "--check")
	}
	if c.Wait {
		args = append(args, "--wait")
	}
	return args
}

// ServerArgs is the argv (after `nu <provisioning-path>`) for one server:
// `server create --infra I --settings S [--check] [--wait] <server>`.
func (in ServerCreateInput) ServerArgs(server string) []string {
	return append(append([]string{"server", "create"}, in.flags()...), server)
}

// ServerListArgs is the argv that asks the provisioning script which servers
// the settings define: `server list --infra I --settings S`. The script
// prints them as a JSON array of names.
func (in ServerCreateInput) ServerListArgs() []string {
	return []string{"server", "list", "--infra", in.Infra, "--settings", in.Settings}
}

// TaskservArgs is the argv for one server (or all, when server is ""):
// `taskserv create <taskserv> --infra I --settings S [--check] [--wait] [<server>]`.
func (in TaskservCreateInput) TaskservArgs(server string) []string {
	args := append([]string{"taskserv", "create", in.Taskserv}, in.flags()...)
	if server != "" {
		args = append(args, server)
	}
	return args
}

// ClusterArgs is the argv: `cluster create <cluster> --infra I --settings S [--check] [--wait]`.
func (in ClusterCreateInput) ClusterArgs() []string {
	return append([]string{"cluster", "create", in.Cluster}, in.flags()...)
}
