package storage

import "time"

// Batch is what a batch task (workflow type "Batch") shows besides its
// steps: the operations of its DAG with their own tasks, the phase it is
// in, its approval and its rollback.
type Batch struct {
	// Mode is "apply" (do the operations) or "plan" (run each with --check
	// and keep its output as the plan).
	Mode string `json:"mode"`
	// Phase is where the batch is: planning, awaiting_approval, applying,
	// rolling_back or done.
	Phase string `json:"phase"`
	// Parallelism is how many operations run at once.
	Parallelism int `json:"parallelism"`
	// FailFast: the first failure stops every other branch too.
	FailFast bool `json:"fail_fast"`
	// Rollback: on failure or cancel, completed operations are
	// compensated by the provider's delete verbs.
	Rollback bool `json:"rollback"`
	// RequireApproval: the plan runs first and the batch waits for an
	// approval before it applies.
	RequireApproval bool `json:"require_approval"`
	// Operations in the order the request listed them.
	Operations []BatchOperation `json:"operations"`
	// Approval is the decision once one is asked for (require_approval).
	Approval *Approval `json:"approval"`
	// Compensations are the rollback's provider calls, in the order they ran.
	Compensations []Compensation `json:"compensations"`
}

// Batch phases.
const (
	PhasePlanning         = "planning"
	PhaseAwaitingApproval = "awaiting_approval"
	PhaseApplying         = "applying"
	PhaseRollingBack      = "rolling_back"
	PhaseDone             = "done"
)

// BatchOperation is one operation of a batch and the task that runs it.
type BatchOperation struct {
	// ID is the operation's name in the batch request.
	ID string `json:"id"`
	// Type is server, taskserv or cluster.
	Type string `json:"type"`
	// DependsOn names the operations that must complete first.
	DependsOn []string `json:"depends_on"`
	// TaskID is the task (child workflow) doing the operation's work: the
	// apply run, or in plan mode the check run. GET /tasks/{task_id}.
	TaskID string `json:"task_id"`
	// Status is that task's status as the batch saw it; Cancelled with an
	// error when it never started because a dependency failed.
	Status TaskStatus `json:"status"`
	// Error says why the operation failed or did not run.
	Error string `json:"error,omitempty"`
	// StartedAt and CompletedAt are when the batch started it and saw it end.
	StartedAt   *time.Time `json:"started_at"`
	CompletedAt *time.Time `json:"completed_at"`
	// PlanTaskID is the check run's task (plan mode or require_approval).
	PlanTaskID string `json:"plan_task_id,omitempty"`
	// PlanStatus is the check run's status (require_approval only; in plan
	// mode Status is the check run's).
	PlanStatus TaskStatus `json:"plan_status,omitempty"`
	// Plan is the (bounded) output of the check run: what would change.
	Plan string `json:"plan,omitempty"`
	// RolledBack is set once the rollback compensated the operation.
	RolledBack bool `json:"rolled_back"`
}

// Approval records the decision on a batch that required one.
type Approval struct {
	// Decision is pending, approved, rejected or timed_out.
	Decision string `json:"decision"`
	// Approver is who decided: the API token's name, or what a temporal
	// CLI user passed.
	Approver string `json:"approver,omitempty"`
	// Comment is the approver's note.
	Comment string `json:"comment,omitempty"`
	// Deadline is when a pending approval times out (the batch fails).
	Deadline time.Time `json:"deadline"`
	// DecidedAt is when the decision was made.
	DecidedAt *time.Time `json:"decided_at"`
}

// Approval decisions.
const (
	DecisionPending  = "pending"
	DecisionApproved = "approved"
	DecisionRejected = "rejected"
	DecisionTimedOut = "timed_out"
)

// Compensation is one provider call of a rollback: `<kind> delete ...`
// for something a completed operation created.
type Compensation struct {
	// Operation is the batch operation it compensates.
	Operation string `json:"operation"`
	// Target is what it deletes (a server, a taskserv on a server, a cluster).
	Target string `json:"target"`
	// Args is the provisioning script's argv.
	Args []string `json:"args"`
	// Status is Running, Completed or Failed (after every retry).
	Status TaskStatus `json:"status"`
	// Attempts is how many times the call was started.
	Attempts int32 `json:"attempts"`
	// Output and Error are the (bounded) stdout and failure of the last attempt.
	Output string `json:"output,omitempty"`
	Error  string `json:"error,omitempty"`
	// StartedAt and CompletedAt bracket the call, retries included.
	StartedAt   *time.Time `json:"started_at"`
	CompletedAt *time.Time `json:"completed_at"`
}
