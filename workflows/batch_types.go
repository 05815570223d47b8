package workflows

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"

	"github.com/google/uuid"

	"github.com/provisioning/orchestrator/internal/searchattr"

	"github.com/provisioning/orchestrator/storage"
)

// BatchWorkflowName is the registered type of batch workflows
// (POST /workflows/batch): a DAG of provisioning operations, each run as
// a child workflow that is a task of its own.
const BatchWorkflowName = "Batch"

// Operation types of a batch: the three provisioning workflows.
const (
	OperationServer   = "server"
	OperationTaskserv = "taskserv"
	OperationCluster  = "cluster"
)

// Batch modes.
const (
	// BatchModeApply does the operations (the default).
	BatchModeApply = "apply"
	// BatchModePlan runs every operation with --check and keeps each
	// output as its plan; nothing changes.
	BatchModePlan = "plan"
)

// Batch limits and defaults.
const (
	// DefaultBatchParallelism is how many operations run at once unless
	// the batch says otherwise.
	DefaultBatchParallelism = 4
	// MaxBatchParallelism bounds BatchInput.Parallelism.
	MaxBatchParallelism = 100
	// MaxBatchOperations bounds one batch: each operation is a child
	// workflow and a few events in the batch's history.
	MaxBatchOperations = 500
	// DefaultApprovalTimeout is how long a batch with require_approval
	// waits for a decision before it fails.
	DefaultApprovalTimeout = 24 * time.Hour
	// MaxApprovalTimeout bounds BatchInput.ApprovalTimeout.
	MaxApprovalTimeout = 30 * 24 * time.Hour
	// maxBatchName bounds a batch's display name.
	maxBatchName = 128
)

// Batch updates: the decision on a batch that waits for approval
// (POST /tasks/{id}/approve and /reject, or `temporal workflow update
// execute --name approve -w <batch id> --input '{"approver": "alice"}'`).
// Both answer with the batch task. Asked of a batch that is not waiting
// for a decision they fail with ErrTypeNotAwaitingApproval.
const (
	ApproveUpdate = "approve"
	RejectUpdate  = "reject"
)

// ApprovalRequest is the input of ApproveUpdate and RejectUpdate.
type ApprovalRequest struct {
	// Approver names who decides; the audit trail records it as the
	// actor. Required. The REST API sets it to the caller's token name.
	Approver string `json:"approver"`
	// Comment is an optional note kept with the decision.
	Comment string `json:"comment,omitempty"`
}

// Error types of batches.
const (
	// ErrTypeBatchFailed: at least one operation failed (the message
	// names them, what did not start and what was rolled back).
	ErrTypeBatchFailed = "BatchFailed"
	// ErrTypeApprovalTimedOut: nobody approved or rejected in time.
	ErrTypeApprovalTimedOut = "ApprovalTimedOut"
	// ErrTypeNotAwaitingApproval: an approve or reject reached a batch
	// that is not waiting for a decision.
	ErrTypeNotAwaitingApproval = "NotAwaitingApproval"
)

// Operation is one node of a batch's DAG. Infra, Settings, CheckMode and
// Wait default to the batch's.
type Operation struct {
	// ID names the operation within the batch ([A-Za-z0-9][A-Za-z0-9._-]{0,62}).
	ID string `json:"id"`
	// Type is server, taskserv or cluster.
	Type string `json:"type"`
	// Infra and Settings override the batch's.
	Infra    string `json:"infra,omitempty"`
	Settings string `json:"settings,omitempty"`
	// CheckMode and Wait are or-ed with the batch's.
	CheckMode bool `json:"check_mode,omitempty"`
	Wait      bool `json:"wait,omitempty"`
	// Servers: for server, the servers to create (empty: every server the
	// settings define); for taskserv, where to install it (empty: the
	// script's default). Not allowed for cluster.
	Servers []string `json:"servers,omitempty"`
	// Taskserv names the task service (taskserv only, required).
	Taskserv string `json:"taskserv,omitempty"`
	// Cluster names the cluster (cluster only, required).
	Cluster string `json:"cluster,omitempty"`
	// DependsOn names operations that must complete before this one
	// starts. A failed dependency means this one never starts.
	DependsOn []string `json:"depends_on,omitempty"`
}

// BatchInput starts BatchWorkflow. Common's TaskID is the batch's task id;
// its Infra, Settings, CheckMode, Wait, Policy and Priority are the
// operations' defaults.
type BatchInput struct {
	Common
	// Name is the batch's display name; default "batch <infra>".
	Name string `json:"name,omitempty"`
	// Operations, 1 to MaxBatchOperations, forming a DAG.
	Operations []Operation `json:"operations"`
	// Parallelism is how many operations run at once; default
	// DefaultBatchParallelism.
	Parallelism int `json:"parallelism,omitempty"`
	// FailFast: after the first failure nothing new starts and running
	// operations are cancelled. Default false: independent branches go on.
	FailFast bool `json:"fail_fast,omitempty"`
	// NoRollback keeps what completed operations made when the batch
	// fails or is cancelled. Default false: they are compensated.
	NoRollback bool `json:"no_rollback,omitempty"`
	// Mode is BatchModeApply (default) or BatchModePlan.
	Mode string `json:"mode,omitempty"`
	// RequireApproval: run the plan, wait for ApproveUpdate (or
	// RejectUpdate), then apply. Mode apply only.
	RequireApproval bool `json:"require_approval,omitempty"`
	// ApprovalTimeout bounds the wait; default DefaultApprovalTimeout.
	ApprovalTimeout time.Duration `json:"approval_timeout,omitempty"`
	// SearchAttributes are the custom search attributes (Infra, Priority)
	// the namespace defines: each operation's workflow starts with them,
	// so `temporal workflow list --query 'Infra="production"'` finds it.
	// Default none.
	SearchAttributes searchattr.Set `json:"search_attributes,omitzero"`
}

// Task names a batch task: "batch <name>" (or "batch <infra>").
func (in BatchInput) Task() TaskSpec {
	name := in.Name
	if name == "" {
		name = in.Infra
	}
	if name == "" {
		name = fmt.Sprintf("%d operations", len(in.Operations))
	}
	args := []string{}
	if in.Infra != "" {
		args = append(args, "--infra", in.Infra)
	}
	if in.Settings != "" {
		args = append(args, "--settings", in.Settings)
	}
	if in.mode() == BatchModePlan {
		args = append(args, "--check")
	}
	ids := make([]string, len(in.Operations))
	for i, op := range in.Operations {
		ids[i] = op.ID
	}
	return TaskSpec{Workflow: BatchWorkflowName, Name: scheduledName("batch "+name, in.Schedule), Command: "batch",
		Args: append(args, ids...), Targets: ids}
}

func (in BatchInput) mode() string {
	if in.Mode == "" {
		return BatchModeApply
	}
	return in.Mode
}

func (in BatchInput) parallelism() int {
	if in.Parallelism <= 0 {
		return DefaultBatchParallelism
	}
	return in.Parallelism
}

func (in BatchInput) approvalTimeout() time.Duration {
	if in.ApprovalTimeout <= 0 {
		return DefaultApprovalTimeout
	}
	return in.ApprovalTimeout
}

// planning reports whether the batch runs a plan phase.
func (in BatchInput) planning() bool { return in.mode() == BatchModePlan || in.RequireApproval }

// OperationTaskID is the task id (and child workflow id) of operation opID
// of batch batchID: a UUIDv5 in the batch's id, so it is known before the
// operation starts and the same on every replay. plan selects the
// operation's check run.
func OperationTaskID(batchID, opID string, plan bool) string {
	phase := "apply/"
	if plan {
		phase = "plan/"
	}
	ns, err := uuid.Parse(batchID)
	if err != nil {
		// Validate refuses such batches before any child is named.
		return ""
	}
	return uuid.NewSHA1(ns, []byte(phase+opID)).String()
}

// Validate reports the first invalid field as a *FieldError naming the
// operation: unknown or duplicate ids, unknown dependencies, cycles, and
// each operation's own fields (with the batch's defaults applied).
func (in BatchInput) Validate() error {
	if err := storage.ValidateID(in.TaskID); err != nil {
		return &FieldError{Field: "task_id", Message: "must be a lowercase UUID"}
	}
	if err := validateBatchName(in.Name); err != nil {
		return err
	}
	switch in.Mode {
	case "", BatchModeApply, BatchModePlan:
	default:
		return &FieldError{Field: "mode", Message: fmt.Sprintf("must be %q or %q", BatchModeApply, BatchModePlan)}
	}
	if in.RequireApproval && in.mode() == BatchModePlan {
		return &FieldError{Field: "require_approval", Message: "applies to mode apply (it runs the plan itself, then waits)"}
	}
	if in.Parallelism < 0 || in.Parallelism > MaxBatchParallelism {
		return &FieldError{Field: "parallelism", Message: fmt.Sprintf("must be 1 to %d; default %d", MaxBatchParallelism, DefaultBatchParallelism)}
	}
	if in.ApprovalTimeout < 0 || in.ApprovalTimeout > MaxApprovalTimeout || (in.ApprovalTimeout > 0 && in.ApprovalTimeout < time.Second) {
		return &FieldError{Field: "approval_timeout", Message: fmt.Sprintf("must be 1s to %s; default %s", MaxApprovalTimeout, DefaultApprovalTimeout)}
	}
	if err := ValidatePriority("priority", in.Priority); err != nil {
		return err
	}
	if err := ValidateWebhook("webhook", in.Webhook); err != nil {
		return err
	}
	if len(in.Operations) == 0 {
		return &FieldError{Field: "operations", Message: "at least one operation is required"}
	}
	if len(in.Operations) > MaxBatchOperations {
		return &FieldError{Field: "operations", Message: fmt.Sprintf("at most %d operations per batch", MaxBatchOperations)}
	}
	index := make(map[string]int, len(in.Operations))
	for i, op := range in.Operations {
		field := fmt.Sprintf("operations[%d]", i)
		if err := ValidateName(field+".id", op.ID); err != nil {
			return err
		}
		if j, dup := index[op.ID]; dup {
			return &FieldError{Field: field + ".id", Message: fmt.Sprintf("duplicate operation id %q (also operations[%d])", op.ID, j)}
		}
		index[op.ID] = i
	}
	for i, op := range in.Operations {
		field := fmt.Sprintf("operations[%d]", i)
		if err := in.validateOperation(op); err != nil {
			var fe *FieldError
			if errors.As(err, &fe) {
				return &FieldError{Field: field + "." + fe.Field, Message: fmt.Sprintf("%s (operation %s)", fe.Message, op.ID)}
			}
			return err
		}
		seen := make(map[string]bool, len(op.DependsOn))
		for k, d := range op.DependsOn {
			dfield := fmt.Sprintf("%s.depends_on[%d]", field, k)
			switch _, known := index[d]; {
			case !known:
				return &FieldError{Field: dfield, Message: fmt.Sprintf("operation %s depends on unknown operation %q", op.ID, d)}
			case d == op.ID:
				return &FieldError{Field: dfield, Message: fmt.Sprintf("operation %s depends on itself", op.ID)}
			case seen[d]:
				return &FieldError{Field: dfield, Message: fmt.Sprintf("operation %s lists %q twice", op.ID, d)}
			}
			seen[d] = true
		}
	}
	if cycle := findCycle(in.Operations, index); cycle != nil {
		i := index[cycle[0]]
		return &FieldError{Field: fmt.Sprintf("operations[%d].depends_on", i),
			Message: fmt.Sprintf("operation %s is part of a dependency cycle: %s", cycle[0], strings.Join(cycle, " -> "))}
	}
	return nil
}

func validateBatchName(name string) error {
	if len([]rune(name)) > maxBatchName {
		return &FieldError{Field: "name", Message: fmt.Sprintf("at most %d characters", maxBatchName)}
	}
	for _, r := range name {
		if !unicode.IsPrint(r) {
			return &FieldError{Field: "name", Message: "must be printable text (no control characters)"}
		}
	}
	return nil
}

// validateOperation checks op's fields with the batch's defaults applied;
// field names are relative to the operation.
func (in BatchInput) validateOperation(op Operation) error {
	c := in.operationCommon(op, "", false, nil)
	switch op.Type {
	case OperationServer:
		if op.Taskserv != "" {
			return &FieldError{Field: "taskserv", Message: "is for taskserv operations"}
		}
		if op.Cluster != "" {
			return &FieldError{Field: "cluster", Message: "is for cluster operations"}
		}
		return ServerCreateInput{Common: c, Servers: op.Servers}.Validate()
	case OperationTaskserv:
		if op.Cluster != "" {
			return &FieldError{Field: "cluster", Message: "is for cluster operations"}
		}
		return TaskservCreateInput{Common: c, Taskserv: op.Taskserv, Servers: op.Servers}.Validate()
	case OperationCluster:
		if len(op.Servers) > 0 {
			return &FieldError{Field: "servers", Message: "is not used by cluster operations"}
		}
		if op.Taskserv != "" {
			return &FieldError{Field: "taskserv", Message: "is for taskserv operations"}
		}
		return ClusterCreateInput{Common: c, Cluster: op.Cluster}.Validate()
	case "":
		return &FieldError{Field: "type", Message: "is required: server, taskserv or cluster"}
	default:
		return &FieldError{Field: "type", Message: fmt.Sprintf("unknown type %q: server, taskserv or cluster", op.Type)}
	}
}

// findCycle returns the ids of one dependency cycle (first id repeated at
// the end), or nil. Depth-first in request order, so the answer is stable.
func findCycle(ops []Operation, index map[string]int) []string {
	const (
		unseen = iota
		active
		done
	)
	state := make([]int, len(ops))
	var path []string
	var visit func(i int) []string
	visit = func(i int) []string {
		state[i] = active
		path = append(path, ops[i].ID)
		for _, d := range ops[i].DependsOn {
			j := index[d]
			switch state[j] {
			case active:
				start := 0
				for k, id := range path {
					if id == d {
						start = k
					}
				}
				return append(append([]string{}, path[start:]...), d)
			case unseen:
				if c := visit(j); c != nil {
					return c
				}
			}
		}
		path = path[:len(path)-1]
		state[i] = done
		return nil
	}
	for i := range ops {
		if state[i] == unseen {
			if c := visit(i); c != nil {
				return c
			}
		}
	}
	return nil
}

// operationCommon is the Common of operation op's child task.
func (in BatchInput) operationCommon(op Operation, taskID string, plan bool, deps []string) Common {
	c := in.Common
	c.TaskID = taskID
	if op.Infra != "" {
		c.Infra = op.Infra
	}
	if op.Settings != "" {
		c.Settings = op.Settings
	}
	c.CheckMode = c.CheckMode || op.CheckMode || plan
	c.Wait = c.Wait || op.Wait
	c.Dependencies = deps
	c.Parent = in.TaskID
	return c
}

// childInput is the workflow type and input of operation op's child task.
func (in BatchInput) childInput(op Operation, c Common) (string, TaskSpec, any) {
	switch op.Type {
	case OperationServer:
		ci := ServerCreateInput{Common: c, Servers: op.Servers}
		return ServerCreateWorkflowName, ci.Task(), ci
	case OperationTaskserv:
		ci := TaskservCreateInput{Common: c, Taskserv: op.Taskserv, Servers: op.Servers}
		return TaskservCreateWorkflowName, ci.Task(), ci
	default:
		ci := ClusterCreateInput{Common: c, Cluster: op.Cluster}
		return ClusterCreateWorkflowName, ci.Task(), ci
	}
}

// compensations are the provider calls undoing what operation op created
// (created lists the servers a server operation without servers created):
// `server delete`, `taskserv delete`, `cluster delete`, with the
// operation's infra and settings. Nothing for a check-mode operation.
func compensations(op Operation, c Common, created []string) (targets []string, argvs [][]string) {
	if c.CheckMode {
		return nil, nil
	}
	flags := []string{"--infra", c.Infra, "--settings", c.Settings}
	switch op.Type {
	case OperationServer:
		servers := op.Servers
		if len(servers) == 0 {
			servers = created
		}
		for _, s := range servers {
			targets = append(targets, "server "+s)
			argvs = append(argvs, append(append([]string{"server", "delete"}, flags...), s))
		}
	case OperationTaskserv:
		if len(op.Servers) == 0 {
			targets = append(targets, "taskserv "+op.Taskserv)
			argvs = append(argvs, append([]string{"taskserv", "delete", op.Taskserv}, flags...))
		}
		for _, s := range op.Servers {
			targets = append(targets, "taskserv "+op.Taskserv+" on "+s)
			argvs = append(argvs, append(append([]string{"taskserv", "delete", op.Taskserv}, flags...), s))
		}
	case OperationCluster:
		targets = append(targets, "cluster "+op.Cluster)
		argvs = append(argvs, append([]string{"cluster", "delete", op.Cluster}, flags...))
	}
	return targets, argvs
}
