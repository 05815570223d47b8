package workflows

import (
	"fmt"
	"slices"

	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/sdk/converter"

	"github.com/provisioning/orchestrator/storage"
)

// ProvisioningInput is the input of one of the provisioning workflows:
// *ServerCreateInput, *TaskservCreateInput or *ClusterCreateInput. Retry
// works on it without knowing which.
type ProvisioningInput interface {
	// Task describes the task the input starts.
	Task() TaskSpec
	// Validate reports the first invalid field as a *FieldError.
	Validate() error
	// Fields is the input's Common, to change in place (a new task id,
	// priority, ...).
	Fields() *Common
}

// Fields is the input's Common, to change in place.
func (in *ServerCreateInput) Fields() *Common { return &in.Common }

// Fields is the input's Common, to change in place.
func (in *TaskservCreateInput) Fields() *Common { return &in.Common }

// Fields is the input's Common, to change in place.
func (in *ClusterCreateInput) Fields() *Common { return &in.Common }

// NewInput returns a zero input of the provisioning workflow type wfType,
// to decode a recorded input into; nil when wfType is not a provisioning
// workflow.
func NewInput(wfType string) ProvisioningInput {
	switch wfType {
	case ServerCreateWorkflowName:
		return &ServerCreateInput{}
	case TaskservCreateWorkflowName:
		return &TaskservCreateInput{}
	case ClusterCreateWorkflowName:
		return &ClusterCreateInput{}
	}
	return nil
}

// NotRetryableError says why a task cannot be retried: it has not finished,
// it completed, or it is not a provisioning task. The REST API answers it
// with 409.
type NotRetryableError struct {
	// TaskID is the task that cannot be retried.
	TaskID string
	// Reason says why, for a person: "it completed; there is nothing to
	// retry".
	Reason string
}

func (e *NotRetryableError) Error() string {
	return fmt.Sprintf("task %s cannot be retried: %s", e.TaskID, e.Reason)
}

// CheckRetryable returns a *NotRetryableError unless t is a provisioning
// task that ended Failed or Cancelled.
func CheckRetryable(t storage.Task) error {
	no := func(reason string) error { return &NotRetryableError{TaskID: t.ID, Reason: reason} }
	switch {
	case t.WorkflowType == TestEnvironmentWorkflowName:
		return no("it is a test environment; environments are not retried, create a new one (POST /test/environments/create)")
	case t.WorkflowType == BatchWorkflowName:
		return no("it is a batch; submit it again (POST /workflows/batch), or retry its failed operations' tasks one by one")
	case NewInput(t.WorkflowType) == nil:
		return no(fmt.Sprintf("it is a %q task, not a server, taskserv or cluster create", t.WorkflowType))
	case t.Status == storage.StatusCompleted:
		return no("it completed; there is nothing to retry")
	case !t.Status.Terminal():
		return no(fmt.Sprintf("it is still %s; wait for it to end or cancel it first", t.Status))
	}
	return nil
}

// Retry returns the input of a new task that runs again what finished (a
// Failed or Cancelled task) did not complete, given orig, the input
// finished was started with:
//
//   - a server create runs only the servers whose steps did not complete;
//   - a taskserv create on listed servers runs only those servers; one for
//     the whole infra, and a cluster create, have a single step and run as
//     they were;
//   - a task that failed before any step (invalid input, or listing the
//     servers of `servers: []` failed) runs as it was.
//
// Infra, settings, check mode, wait and priority are orig's (priority:
// finished's current one, which an operator may have changed); the new
// input depends on finished (Dependencies = [finished.ID]). The caller
// sets the new TaskID, CreatedAt, Policy and FairnessWeight. A task that
// cannot be retried is a *NotRetryableError.
func Retry(orig ProvisioningInput, finished storage.Task) (ProvisioningInput, error) {
	if err := CheckRetryable(finished); err != nil {
		return nil, err
	}
	var todo []string
	for _, s := range finished.Steps {
		if s.Status != storage.StatusCompleted {
			todo = append(todo, s.Name)
		}
	}
	if len(finished.Steps) > 0 && len(todo) == 0 {
		return nil, &NotRetryableError{TaskID: finished.ID, Reason: "every step completed; there is nothing to retry"}
	}
	switch in := orig.(type) {
	case *ServerCreateInput:
		out := *in
		if len(finished.Steps) > 0 {
			out.Servers = todo
		}
		return retryFields(&out, finished), nil
	case *TaskservCreateInput:
		out := *in
		// Without servers the task had one step for the whole infra.
		if len(in.Servers) > 0 && len(finished.Steps) > 0 {
			out.Servers = todo
		}
		return retryFields(&out, finished), nil
	case *ClusterCreateInput:
		out := *in
		return retryFields(&out, finished), nil
	}
	return nil, &NotRetryableError{TaskID: finished.ID, Reason: fmt.Sprintf("its input is a %T, not a provisioning input", orig)}
}

func retryFields(in ProvisioningInput, finished storage.Task) ProvisioningInput {
	c := in.Fields()
	c.TaskID = ""
	c.Dependencies = []string{finished.ID}
	// A retry is a task of its own: no longer one of a batch's operations
	// or a schedule's run.
	c.Parent = ""
	c.Schedule = ""
	if finished.Priority != 0 {
		c.Priority = finished.Priority
	}
	return in
}

// DefaultRetryID is the id of finished's retry when the caller names none
// (no Idempotency-Key, no sdk.WithTaskID or WithIdempotencyKey): derived
// from finished's id, so a retry sent twice (a double click, a CI job run
// again, REST and SDK alike) names the same new task instead of running
// the same servers twice. To retry again after that retry ended, retry the
// retry, or give a key.
func DefaultRetryID(finished storage.Task) string {
	return storage.IdempotentID("retry\x00"+finished.WorkflowType, finished.ID)
}

// InputFromTask rebuilds the input a provisioning task was started with
// from its record, for when Temporal no longer has the task's history
// (retention): the workflow type plus the args the workflow projected
// (`[<taskserv|cluster>] --infra I --settings S [--check] [--wait]
// [<servers>...]`). Names and settings can never start with "-", so the
// args parse without ambiguity. Priority is the record's; Policy and
// FairnessWeight are left zero. A record without args (a task that never
// ran) is a *NotRetryableError.
func InputFromTask(t storage.Task) (ProvisioningInput, error) {
	no := func(reason string) error { return &NotRetryableError{TaskID: t.ID, Reason: reason} }
	in := NewInput(t.WorkflowType)
	if in == nil {
		return nil, CheckRetryable(t)
	}
	args := slices.Clone(t.Args)
	var name string
	if t.WorkflowType != ServerCreateWorkflowName {
		if len(args) == 0 {
			return nil, no("its record has no arguments (it never ran) and Temporal no longer has its history")
		}
		name, args = args[0], args[1:]
	}
	if len(args) < 4 || args[0] != "--infra" || args[2] != "--settings" {
		return nil, no("its record's arguments are not `--infra <infra> --settings <settings> ...` and Temporal no longer has its history")
	}
	c := in.Fields()
	c.Infra, c.Settings, args = args[1], args[3], args[4:]
	if len(args) > 0 && args[0] == "--check" {
		c.CheckMode, args = true, args[1:]
	}
	if len(args) > 0 && args[0] == "--wait" {
		c.Wait, args = true, args[1:]
	}
	c.TaskID, c.CreatedAt, c.Priority = t.ID, t.CreatedAt, t.Priority
	switch in := in.(type) {
	case *ServerCreateInput:
		in.Servers = args
	case *TaskservCreateInput:
		in.Taskserv, in.Servers = name, args
	case *ClusterCreateInput:
		in.Cluster = name
		if len(args) > 0 {
			return nil, no(fmt.Sprintf("its record's arguments end in %q, which a cluster create never has", args))
		}
	}
	if err := in.Validate(); err != nil {
		return nil, no("its record's arguments are not a valid request (" + err.Error() + ")")
	}
	return in, nil
}

// DecodeStartInput decodes the input of a provisioning task's workflow from
// the first event of its history (the exact request it was started with);
// wfType is the type the task record names. An event that is not a start
// of that type, or an input that does not decode, is a
// *NotRetryableError.
func DecodeStartInput(taskID, wfType string, first *historypb.HistoryEvent) (ProvisioningInput, error) {
	no := func(reason string) error { return &NotRetryableError{TaskID: taskID, Reason: reason} }
	attrs := first.GetWorkflowExecutionStartedEventAttributes()
	if attrs == nil {
		return nil, no(fmt.Sprintf("its history starts with a %s event, not a workflow start", first.GetEventType()))
	}
	if got := attrs.GetWorkflowType().GetName(); got != wfType {
		return nil, no(fmt.Sprintf("its workflow is a %s, but its record says %s", got, wfType))
	}
	in := NewInput(wfType)
	if in == nil {
		return nil, no(fmt.Sprintf("it is a %q task, not a server, taskserv or cluster create", wfType))
	}
	if err := converter.GetDefaultDataConverter().FromPayloads(attrs.GetInput(), in); err != nil {
		return nil, no("its recorded input does not decode: " + err.Error())
	}
	return in, nil
}
