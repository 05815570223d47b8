// Package worker registers the orchestrator's workflows and activities on a
// Temporal worker.
package worker

import (
	"go.temporal.io/sdk/client"
	sdkworker "go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/provisioning/orchestrator/activities"
	"github.com/provisioning/orchestrator/workflows"
)

// Register adds every workflow (under its stable exported name) and the
// activities' methods to r. Tests and the replayer use it too, so what is
// registered is the same everywhere.
func Register(r sdkworker.Registry, acts *activities.Activities) {
	RegisterWorkflows(r)
	if acts != nil {
		r.RegisterActivity(acts)
	}
}

// RegisterWorkflows adds only the workflows, under their stable names; the
// replayer (which has no activities) uses it.
func RegisterWorkflows(r sdkworker.WorkflowRegistry) {
	r.RegisterWorkflowWithOptions(workflows.ServerCreateWorkflow, workflow.RegisterOptions{Name: workflows.ServerCreateWorkflowName})
	r.RegisterWorkflowWithOptions(workflows.TaskservCreateWorkflow, workflow.RegisterOptions{Name: workflows.TaskservCreateWorkflowName})
	r.RegisterWorkflowWithOptions(workflows.ClusterCreateWorkflow, workflow.RegisterOptions{Name: workflows.ClusterCreateWorkflowName})
	r.RegisterWorkflowWithOptions(workflows.TestEnvironmentWorkflow, workflow.RegisterOptions{Name: workflows.TestEnvironmentWorkflowName})
}

// Options configures New.
type Options struct {
	// TaskQueue to poll; default workflows.DefaultTaskQueue.
	TaskQueue string
	// MaxConcurrentActivities bounds activity slots (Nushell processes) on
	// this worker; default 32. Per-task parallelism is bounded separately.
	MaxConcurrentActivities int
}

// New creates (but does not start) a worker with everything registered.
func New(c client.Client, acts *activities.Activities, o Options) sdkworker.Worker {
	if o.TaskQueue == "" {
		o.TaskQueue = workflows.DefaultTaskQueue
	}
	if o.MaxConcurrentActivities <= 0 {
		o.MaxConcurrentActivities = 32
	}
	w := sdkworker.New(c, o.TaskQueue, sdkworker.Options{
		MaxConcurrentActivityExecutionSize: o.MaxConcurrentActivities,
	})
	Register(w, acts)
	return w
}
