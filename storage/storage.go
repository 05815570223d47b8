// Package storage holds the task store: the projection of workflow state that
// the REST task API reads. Temporal stays the source of truth; the store is
// written by workflow activities on every state transition so that the task
// API is fast and outlives Temporal's history retention.
//
// The filesystem backend (Filesystem) lives here; the SurrealDB backend
// lives in package storage/surrealdb, so that importing storage does not
// pull in the SurrealDB client. Both build on the helpers in backend.go
// for everything that is not about their own storage.
package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"time"
)

// TaskStatus is the lifecycle state of a task, spelled exactly as in the
// original orchestrator's REST contract.
type TaskStatus string

// Task statuses. Terminal ones are Completed, Failed and Cancelled.
const (
	StatusPending   TaskStatus = "Pending"
	StatusRunning   TaskStatus = "Running"
	StatusCompleted TaskStatus = "Completed"
	StatusFailed    TaskStatus = "Failed"
	StatusCancelled TaskStatus = "Cancelled"
)

// Valid reports whether s is one of the five known statuses.
func (s TaskStatus) Valid() bool {
	switch s {
	case StatusPending, StatusRunning, StatusCompleted, StatusFailed, StatusCancelled:
		return true
	}
	return false
}

// Terminal reports whether no further transition can follow s.
func (s TaskStatus) Terminal() bool {
	return s == StatusCompleted || s == StatusFailed || s == StatusCancelled
}

// StepResult is the outcome of one Nushell invocation inside a task (one per
// server for server and taskserv workflows, one for a cluster).
type StepResult struct {
	// Name identifies the step, usually the server name.
	Name string `json:"name"`
	// Status is Pending, Running, Completed, Failed or Cancelled.
	Status TaskStatus `json:"status"`
	// Attempts is how many times the step's process was started.
	Attempts int32 `json:"attempts"`
	// ExitCode of the last attempt; nil while it has not exited.
	ExitCode *int `json:"exit_code"`
	// Output is the (bounded) stdout of the last attempt.
	Output string `json:"output"`
	// Error is the failure message of the last attempt, empty on success.
	Error string `json:"error"`
	// DurationMS is the wall time of the last attempt in milliseconds.
	DurationMS int64 `json:"duration_ms"`
}

// Task is one provisioning job as the task API shows it. Field names and
// null-ness follow the original REST contract: absent timestamps, output and
// error are explicit JSON nulls.
type Task struct {
	ID           string     `json:"id"`
	Name         string     `json:"name"`
	Command      string     `json:"command"`
	Args         []string   `json:"args"`
	Dependencies []string   `json:"dependencies"`
	Status       TaskStatus `json:"status"`
	CreatedAt    time.Time  `json:"created_at"`
	StartedAt    *time.Time `json:"started_at"`
	CompletedAt  *time.Time `json:"completed_at"`
	Output       *string    `json:"output"`
	Error        *string    `json:"error"`

	// WorkflowType is the Temporal workflow type running this task.
	WorkflowType string `json:"workflow_type"`
	// Priority is the task's scheduling priority, MinPriority (1, most
	// urgent) to MaxPriority (5); DefaultPriority (3) when the request set
	// none (and for records written before priorities existed).
	Priority int `json:"priority"`
	// Progress counts finished steps out of all steps.
	Progress Progress `json:"progress"`
	// Steps holds per-server (or per-cluster) results.
	Steps []StepResult `json:"steps"`
	// Version increases with every projected transition. A write whose
	// Version is lower than the stored one is ignored, so a retried or
	// reordered projection can never move a task backwards.
	Version int64 `json:"version"`
	// UpdatedAt is when the last transition happened (workflow time).
	UpdatedAt time.Time `json:"updated_at"`
	// Environment holds a test environment's full state (JSON) for tasks
	// of workflow type TestEnvironment; absent for other tasks.
	Environment json.RawMessage `json:"environment,omitempty"`
	// Batch holds a batch's operations, approval and rollback for tasks of
	// workflow type Batch; absent for other tasks.
	Batch *Batch `json:"batch,omitempty"`
	// Parent is the id of the batch this task is an operation of; absent
	// for tasks submitted on their own.
	Parent string `json:"parent,omitempty"`
}

// Progress counts a task's finished steps.
type Progress struct {
	Done  int `json:"done"`
	Total int `json:"total"`
}

// ListFilter selects and pages tasks. Results are ordered newest first by
// CreatedAt, ties broken by ID descending so paging is stable.
type ListFilter struct {
	// Status, when non-empty, keeps only tasks in that status.
	Status TaskStatus
	// WorkflowType, when non-empty, keeps only tasks of that workflow type
	// (e.g. test environments).
	WorkflowType string
	// Priority, when non-zero, keeps only tasks of that priority.
	Priority int
	// Limit is the page size; 0 means DefaultLimit.
	Limit int
	// Offset skips that many matching tasks.
	Offset int
}

// Page sizes accepted by List.
const (
	DefaultLimit = 50
	MaxLimit     = 1000
)

// Errors returned by every Store implementation.
var (
	// ErrNotFound: no task with that ID.
	ErrNotFound = errors.New("task not found")
	// ErrExists: Create was called for an ID that is already stored.
	ErrExists = errors.New("task already exists")
	// ErrInvalidID: the ID is not a canonical lowercase UUID.
	ErrInvalidID = errors.New("invalid task id")
	// ErrUnavailable wraps backend failures that a caller may retry later
	// (database down, disk full); the API maps it to 503.
	ErrUnavailable = errors.New("storage unavailable")
	// ErrCorrupt: a stored task (a file, a database record) exists but
	// cannot be decoded, or names another ID than it is stored under.
	// Get returns it; List skips such tasks and Put overwrites them.
	ErrCorrupt = errors.New("corrupt task file")
)

// DeferredCreator is a Store that can split Create in two: the record is
// stored and visible when CreateDeferred returns, and durable once commit
// returned nil. The API overlaps commit (the filesystem backend's fsyncs)
// with the workflow start, which is the request's durable commit point:
// the workflow's own projections write the task again if an OS crash lost
// a record that was not yet committed.
type DeferredCreator interface {
	CreateDeferred(ctx context.Context, t Task) (commit func() error, err error)
}

// Store persists tasks. Implementations are safe for concurrent use by many
// goroutines and, for the filesystem backend, by several processes sharing
// one data directory.
type Store interface {
	// Create stores a new task and appends an AuditCreate entry; ErrExists
	// if the ID is taken.
	Create(ctx context.Context, t Task) error
	// Put upserts t unless the stored task has a higher Version, in which
	// case it is a no-op returning nil (projections are idempotent). When
	// the write changes the stored status (or creates the task) it appends
	// an AuditTransition entry atomically with the write.
	Put(ctx context.Context, t Task) error
	// Get returns the task or ErrNotFound.
	Get(ctx context.Context, id string) (Task, error)
	// List returns one page of matching tasks and the total number of
	// matching tasks.
	List(ctx context.Context, f ListFilter) ([]Task, int, error)
	// Delete removes a task; deleting a missing task is not an error.
	Delete(ctx context.Context, id string) error
	// Ping reports whether the backend is usable.
	Ping(ctx context.Context) error
	// Close releases resources.
	Close() error

	// IDs returns every stored task id (any order). Migration iterates
	// with it, so it must see tasks created while it runs on a later call.
	IDs(ctx context.Context) ([]string, error)
	// AppendAudit records an event; entries are idempotent by ID (a second
	// append with the same ID is a no-op), so retried callers are safe.
	AppendAudit(ctx context.Context, e AuditEntry) error
	// ListAudit returns matching entries oldest first (Time, then ID).
	ListAudit(ctx context.Context, f AuditFilter) ([]AuditEntry, error)
}

// BulkReader is implemented by stores that read many tasks with their
// audit trails in one call, where one call costs much more than the
// records (a database round trip). Migration's verification uses it to
// read the target; stores without it are read task by task.
type BulkReader interface {
	// ReadRecords returns one BulkRecord per id, in the order of ids, each
	// with its task (Err ErrNotFound when there is none, ErrCorrupt when it
	// cannot be decoded) and its whole audit trail oldest first (ListAudit
	// with a TaskID and auditLimit). An error fails the whole call.
	ReadRecords(ctx context.Context, ids []string, auditLimit int) ([]BulkRecord, error)
}

// ChangeStamper is implemented by stores that can tell, without reading a
// task or its audit trail, that neither changed: the migration reads a
// source record again only when its stamp moved.
type ChangeStamper interface {
	// ChangeStamp returns an opaque stamp of task id and its audit trail
	// as stored now (a task that does not exist has one too). A stamp
	// taken before reading a record and equal to a stamp taken later
	// means the record did not change in between. "" means the store
	// cannot tell (the record changed too recently for its timestamps to
	// be trusted, or the platform does not say): read the record.
	ChangeStamp(ctx context.Context, id string) (string, error)
}

// BulkRecord is one task of BulkReader.ReadRecords.
type BulkRecord struct {
	ID    string
	Task  Task
	Err   error
	Audit []AuditEntry
}

// Audit actions.
const (
	// AuditCreate: a task was created (Create).
	AuditCreate = "create"
	// AuditTransition: a projection changed a task's status (Put). Its ID
	// is "<task id>/v<version>", so a retried projection never duplicates it.
	AuditTransition = "transition"
)

// AuditEntry is one line of the audit trail: every status transition (Put
// and Create append them atomically with the write, in every backend) and
// every API call that changes something (cancel, delete, ...).
type AuditEntry struct {
	// ID is unique per event and makes appends idempotent.
	ID     string    `json:"id"`
	TaskID string    `json:"task_id"`
	Time   time.Time `json:"time"`
	// Actor is who acted: a token name, "anonymous", or "workflow" for
	// projections (see WithActor).
	Actor  string `json:"actor"`
	Action string `json:"action"`
	// Before and After are the task status around the event ("" = none).
	Before  TaskStatus `json:"before"`
	After   TaskStatus `json:"after"`
	Version int64      `json:"version"`
	Detail  string     `json:"detail,omitempty"`
}

// AuditFilter selects audit entries.
type AuditFilter struct {
	// TaskID, when set, keeps only that task's entries.
	TaskID string
	// Limit caps the result (newest entries kept); 0 means 1000.
	Limit int
}

type actorKey struct{}

// WithActor tags ctx with who is acting; stores record it in the audit
// entries they append.
func WithActor(ctx context.Context, actor string) context.Context {
	return context.WithValue(ctx, actorKey{}, actor)
}

// ActorFrom returns the actor set by WithActor, or "system".
func ActorFrom(ctx context.Context) string {
	if a, ok := ctx.Value(actorKey{}).(string); ok && a != "" {
		return a
	}
	return "system"
}

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// ValidateID returns ErrInvalidID unless id is a canonical lowercase UUID.
// Every backend calls it before using an ID in a path or query.
func ValidateID(id string) error {
	if !uuidRE.MatchString(id) {
		return fmt.Errorf("%w: %q is not a lowercase UUID", ErrInvalidID, id)
	}
	return nil
}

// Normalize fills the slices and timestamps a Task must never serialise as
// null or in a non-UTC zone.
func Normalize(t Task) Task {
	if t.Priority == 0 {
		t.Priority = DefaultPriority
	}
	if t.Args == nil {
		t.Args = []string{}
	}
	if t.Dependencies == nil {
		t.Dependencies = []string{}
	}
	if t.Steps == nil {
		t.Steps = []StepResult{}
	}
	t.CreatedAt = t.CreatedAt.UTC()
	t.UpdatedAt = t.UpdatedAt.UTC()
	if t.StartedAt != nil {
		u := t.StartedAt.UTC()
		t.StartedAt = &u
	}
	if t.CompletedAt != nil {
		u := t.CompletedAt.UTC()
		t.CompletedAt = &u
	}
	return t
}

// Task priorities: 1 is the most urgent. Temporal's matching dispatches
// lower keys first.
const (
	MinPriority     = 1
	MaxPriority     = 5
	DefaultPriority = 3
)

// DefaultAuditLimit is ListAudit's limit when AuditFilter.Limit is 0.
const DefaultAuditLimit = 1000

// AuditCreateID is the ID of the AuditCreate entry that Create appends for
// a task. Every backend uses it (and AuditTransitionID), so entries copied
// between backends by a migration collide with, rather than duplicate, the
// ones the target's own Create/Put would append.
func AuditCreateID(taskID string) string { return taskID + "/create" }

// AuditTransitionID is the ID of the AuditTransition entry that a Put of
// the given version appends: "<task id>/v<version>".
func AuditTransitionID(taskID string, version int64) string {
	return fmt.Sprintf("%s/v%d", taskID, version)
}
