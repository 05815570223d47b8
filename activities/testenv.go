package activities

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"github.com/provisioning/orchestrator/driver"
	"github.com/provisioning/orchestrator/driver/nushell"
	"github.com/provisioning/orchestrator/internal/tailbuf"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/testenv"
)

// Error types of the test-environment activities.
const (
	// ErrTypeImageMissing: the base image is neither local nor pullable.
	ErrTypeImageMissing = "ImageMissing"
	// ErrTypeInvalidSpec: the plan cannot be carried out as given (e.g. its
	// subnet overlaps an existing network).
	ErrTypeInvalidSpec = "InvalidSpec"
	// ErrTypeNoDocker: the worker has no Docker engine configured.
	ErrTypeNoDocker = "DockerUnavailable"
)

// CreateEnvInput is CreateEnvironment's input.
type CreateEnvInput struct {
	Plan testenv.Plan `json:"plan"`
	// Start the containers after creating them (auto_start).
	Start bool `json:"start"`
}

// RunTestsInput is RunTests' input.
type RunTestsInput struct {
	EnvID string             `json:"env_id"`
	Tests []testenv.TestSpec `json:"tests"`
	// Nodes map node names to containers.
	Nodes []testenv.NodeStatus `json:"nodes"`
	// Infra and Settings are the provisioning script's --infra and
	// --settings for taskserv checks (TestSpec.Taskserv).
	Infra    string `json:"infra,omitempty"`
	Settings string `json:"settings,omitempty"`
}

// engine returns the worker's engine, with the context carrying the
// activity's heartbeat so the driver heartbeats during long engine calls
// (pulls, execs, removals), not only between them.
func (a *Activities) engine(ctx context.Context) (driver.Engine, context.Context, error) {
	if a.Docker == nil {
		return nil, ctx, temporal.NewNonRetryableApplicationError(
			"this worker has no Docker engine (start dockerd, or set DOCKER_HOST) so it cannot run test environments",
			ErrTypeNoDocker, nil)
	}
	return a.Docker, driver.WithHeartbeat(ctx, func(d string) { activity.RecordHeartbeat(ctx, d) }), nil
}

// classifyEngineError makes the errors a retry cannot fix non-retryable,
// with the error types workflows and operators see; the rest stay
// retryable.
func classifyEngineError(err error) error {
	var spec *driver.SpecError
	switch {
	case err == nil:
		return nil
	case driver.IsImageMissing(err):
		return temporal.NewNonRetryableApplicationError(err.Error(), ErrTypeImageMissing, err)
	case errors.As(err, &spec):
		return temporal.NewNonRetryableApplicationError(err.Error(), ErrTypeInvalidSpec, spec.Err)
	}
	return err
}

// CreateEnvironment makes the network and containers of a plan (and starts
// them when asked); see driver.Engine.CreateEnvironment. Every step is
// idempotent, so a retry after a crash continues where the last attempt
// stopped.
func (a *Activities) CreateEnvironment(ctx context.Context, in CreateEnvInput) (testenv.EnvInfo, error) {
	eng, ctx, err := a.engine(ctx)
	if err != nil {
		return testenv.EnvInfo{}, err
	}
	info, err := eng.CreateEnvironment(ctx, in.Plan, in.Start)
	return info, classifyEngineError(err)
}

// StartEnvironment starts every container of an environment that was
// created without auto_start.
func (a *Activities) StartEnvironment(ctx context.Context, envID string) error {
	eng, ctx, err := a.engine(ctx)
	if err != nil {
		return err
	}
	return classifyEngineError(eng.StartEnvironment(ctx, envID))
}

// InspectEnvironment reports the containers' current state.
func (a *Activities) InspectEnvironment(ctx context.Context, envID string) ([]testenv.NodeStatus, error) {
	eng, ctx, err := a.engine(ctx)
	if err != nil {
		return nil, err
	}
	return eng.InspectNodes(ctx, envID)
}

// RunTests execs each test in its node's container, one after another,
// heartbeating before and during each test, and reports every result; a
// failing test does not stop the run.
func (a *Activities) RunTests(ctx context.Context, in RunTestsInput) (testenv.TestRun, error) {
	eng, ctx, err := a.engine(ctx)
	if err != nil {
		return testenv.TestRun{}, err
	}
	run, err := eng.RunTests(ctx, in.Tests, in.Nodes, driver.RunOptions{
		Infra: in.Infra, Settings: in.Settings, Env: a.nodeEnv(ctx, in.EnvID, "run"),
	})
	if err != nil {
		return testenv.TestRun{}, err
	}
	run.BoundOutput(testenv.MaxRunOutputBytes)
	a.logger().Info("test run finished", "env_id", in.EnvID, "total", run.Total, "failed", run.Failed)
	return run, nil
}

// RemoveEnvironment deletes every object labelled with the environment id.
// Already-gone objects are fine, so cleanup can be retried or repeated.
func (a *Activities) RemoveEnvironment(ctx context.Context, envID string) (testenv.RemovedCounts, error) {
	eng, ctx, err := a.engine(ctx)
	if err != nil {
		return testenv.RemovedCounts{}, err
	}
	if err := storage.ValidateID(envID); err != nil {
		return testenv.RemovedCounts{}, temporal.NewNonRetryableApplicationError(err.Error(), ErrTypeInvalidSpec, err)
	}
	removed, err := eng.RemoveEnvironment(ctx, envID)
	if err != nil {
		return removed, err
	}
	a.logger().Info("environment removed", "env_id", envID, "containers", removed.Containers, "networks", removed.Networks, "volumes", removed.Volumes)
	return removed, nil
}

// ProjectEnvironment writes an environment's state to the task store as a
// task of workflow type TestEnvironment, so GET /tasks lists environments
// too and the environment endpoints read them without querying Temporal.
func (a *Activities) ProjectEnvironment(ctx context.Context, s testenv.EnvState) error {
	t, err := testenv.EnvTask(s)
	if err != nil {
		return temporal.NewNonRetryableApplicationError(err.Error(), ErrTypeInvalidTaskID, err)
	}
	return a.ProjectTask(ctx, t)
}

// ConvergeInput is ConvergeTaskserv's input: one taskserv in one node.
type ConvergeInput struct {
	EnvID       string               `json:"env_id"`
	ContainerID string               `json:"container_id"`
	Spec        testenv.ConvergeSpec `json:"spec"`
}

// nodeEnv is the environment of a provisioning script run inside a node:
// the worker's converge environment plus the task, step and attempt.
func (a *Activities) nodeEnv(ctx context.Context, envID, step string) []string {
	return append(slices.Clone(a.ConvergeEnv),
		"ORCHESTRATOR_TASK_ID="+envID,
		"ORCHESTRATOR_STEP="+step,
		fmt.Sprintf("ORCHESTRATOR_ATTEMPT=%d", activity.GetInfo(ctx).Attempt))
}

// maxConvergeOutput bounds the output tail a converge result keeps: the
// environment's state holds one per node and taskserv.
const maxConvergeOutput = 4 << 10

// ConvergeTaskserv installs one taskserv inside one node with the user's
// provisioning script, heartbeating while it runs. Exit codes are classified
// as for provisioning steps: 2, 3, 126 and 127 are permanent
// (ErrTypeNushellPermanent), other failures are retried
// (ErrTypeNushellExit); the failure's details are the TaskservResult.
func (a *Activities) ConvergeTaskserv(ctx context.Context, in ConvergeInput) (testenv.TaskservResult, error) {
	eng, ctx, err := a.engine(ctx)
	if err != nil {
		return testenv.TaskservResult{}, err
	}
	info := activity.GetInfo(ctx)
	env := a.nodeEnv(ctx, in.EnvID, in.Spec.Node+"/"+in.Spec.Taskserv)
	res, err := eng.Converge(ctx, in.ContainerID, in.Spec, env)
	if err != nil {
		return testenv.TaskservResult{}, classifyEngineError(err)
	}
	code := res.ExitCode
	out := testenv.TaskservResult{Node: in.Spec.Node, Taskserv: in.Spec.Taskserv, Status: "completed", Attempts: info.Attempt,
		ExitCode: &code, DurationMS: res.DurationMS, Output: tailbuf.String(res.Stdout, maxConvergeOutput),
		ReportError: res.ReportError}
	if res.Report != nil {
		changed := res.Report.Changed
		out.Changed, out.Resources = &changed, res.Report.Resources
	}
	if res.Passed {
		a.logger().Info("taskserv converged", "env_id", in.EnvID, "node", in.Spec.Node, "taskserv", in.Spec.Taskserv, "duration_ms", res.DurationMS)
		return out, nil
	}
	out.Status = "failed"
	reason := fmt.Sprintf("exit code %d", res.ExitCode)
	if res.TimedOut {
		reason = "timed out"
	}
	if last := tailbuf.LastLine(res.Stderr); last != "" {
		reason += ": " + last
	}
	out.Error = fmt.Sprintf("taskserv %s on node %s: %s", in.Spec.Taskserv, in.Spec.Node, reason)
	typ := ErrTypeNushellExit
	permanent := slices.Contains(nushell.DefaultPermanentExitCodes, res.ExitCode)
	if permanent {
		typ = ErrTypeNushellPermanent
	}
	return out, temporal.NewApplicationErrorWithOptions(out.Error, typ,
		temporal.ApplicationErrorOptions{NonRetryable: permanent, Details: []any{out}})
}
