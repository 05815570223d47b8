package worker

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/provisioning/orchestrator/driver"
	"github.com/provisioning/orchestrator/testenv"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
)

// DefaultJanitorInterval is how often a worker sweeps for leftover Docker
// objects.
const DefaultJanitorInterval = 5 * time.Minute

// Janitor removes Docker objects labelled by this service whose environment
// workflow is unknown or no longer running: what a crash during creation
// or cleanup leaves behind. Objects without the service's managed-by label
// are never listed, so never touched.
type Janitor struct {
	Docker driver.Environments
	Client client.Client
	Logger *slog.Logger
	// Instance limits the sweep to objects of this deployment
	// (InstanceLabel); empty sweeps every managed object.
	Instance string
}

// JanitorReport says what one sweep did.
type JanitorReport struct {
	// Removed maps environment ids to what was removed.
	Removed map[string]testenv.RemovedCounts `json:"removed"`
	// Kept are environments whose workflow still runs.
	Kept []string `json:"kept"`
}

// RunOnce sweeps once. An environment whose workflow state cannot be read
// (Temporal down) is kept: removing a live environment is worse than
// waiting for the next sweep.
func (j *Janitor) RunOnce(ctx context.Context) (JanitorReport, error) {
	rep := JanitorReport{Removed: map[string]testenv.RemovedCounts{}}
	envs, err := j.Docker.ListManagedEnvironments(ctx, j.Instance)
	if err != nil {
		return rep, err
	}
	var errs []error
	for envID := range envs {
		alive, err := j.workflowRunning(ctx, envID)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if alive {
			rep.Kept = append(rep.Kept, envID)
			continue
		}
		removed, err := j.Docker.RemoveEnvironment(ctx, envID)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		rep.Removed[envID] = removed
		j.log().Warn("janitor removed leftover test environment objects", "env_id", envID,
			"containers", removed.Containers, "networks", removed.Networks, "volumes", removed.Volumes)
	}
	return rep, errors.Join(errs...)
}

func (j *Janitor) workflowRunning(ctx context.Context, envID string) (bool, error) {
	if envID == "" {
		return false, nil
	}
	desc, err := j.Client.DescribeWorkflowExecution(ctx, envID, "")
	var nf *serviceerror.NotFound
	if errors.As(err, &nf) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return desc.GetWorkflowExecutionInfo().GetStatus() == enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING, nil
}

// Run sweeps every interval until ctx ends.
func (j *Janitor) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if _, err := j.RunOnce(ctx); err != nil && ctx.Err() == nil {
			j.log().Warn("janitor sweep incomplete", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (j *Janitor) log() *slog.Logger {
	if j.Logger != nil {
		return j.Logger
	}
	return slog.Default()
}
