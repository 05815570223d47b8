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
	r.RegisterWorkflowWithOptions(workflows.BatchWorkflow, workflow.RegisterOptions{Name: workflows.BatchWorkflowName})
	r.RegisterWorkflowWithOptions(workflows.ScheduledRunWorkflow, workflow.RegisterOptions{Name: workflows.ScheduledRunWorkflowName})
}

// Options configures New.
type Options struct {
	// TaskQueue to poll; default workflows.DefaultTaskQueue.
	TaskQueue string
	// MaxConcurrentActivities bounds activity slots (Nushell processes) on
	// this worker; default 32. Per-task parallelism is bounded separately.
	MaxConcurrentActivities int
	// MaxConcurrentEnvActivities bounds the slots of the test-environment
	// activities (workflows.EnvTaskQueue of TaskQueue), which a second
	// worker in the same process polls; default 16. A long test run takes
	// one of these, never a provisioning slot.
	MaxConcurrentEnvActivities int
}

// Workers are the two workers of a process: provisioning (workflows and
// Nushell steps) and test-environment activities.
type Workers struct {
	Main, Env sdkworker.Worker
}

// Start starts both; on failure neither runs.
func (w Workers) Start() error {
	if err := w.Main.Start(); err != nil {
		return err
	}
	if err := w.Env.Start(); err != nil {
		w.Main.Stop()
		return err
	}
	return nil
}

// Stop stops both.
func (w Workers) Stop() {
	w.Env.Stop()
	w.Main.Stop()
}

// New creates (but does not start) the process's workers: the main one
// with everything registered, and one polling the environment activities'
// queue with its own slot budget.
func New(c client.Client, acts *activities.Activities, o Options) Workers {
	if o.TaskQueue == "" {
		o.TaskQueue = workflows.DefaultTaskQueue
	}
	if o.MaxConcurrentActivities <= 0 {
		o.MaxConcurrentActivities = 32
	}
	if o.MaxConcurrentEnvActivities <= 0 {
		o.MaxConcurrentEnvActivities = 16
	}
	w := sdkworker.New(c, o.TaskQueue, sdkworker.Options{
		MaxConcurrentActivityExecutionSize: o.MaxConcurrentActivities,
	})
	Register(w, acts)
	env := sdkworker.New(c, workflows.EnvTaskQueue(o.TaskQueue), sdkworker.Options{
		MaxConcurrentActivityExecutionSize: o.MaxConcurrentEnvActivities,
		// Only activities: the environment workflows run on the main queue.
		DisableWorkflowWorker: true,
	})
	if acts != nil {
		env.RegisterActivity(acts)
	}
	return Workers{Main: w, Env: env}
}
