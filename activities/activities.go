// Package activities holds the orchestrator's side effects as Temporal
// activities: running the user's Nushell provisioning scripts and projecting
// workflow state into the task store.
package activities

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"github.com/provisioning/orchestrator/metrics"
	"github.com/provisioning/orchestrator/storage"
)

// Error types carried by ApplicationErrors from RunNushell. Workflows and
// operators (temporal workflow show) see these names.
const (
	// ErrTypeNushellExit: the script exited non-zero with a retryable code.
	ErrTypeNushellExit = "NushellExit"
	// ErrTypeNushellPermanent: the script exited with a permanent code
	// (invalid spec/usage); never retried.
	ErrTypeNushellPermanent = "NushellPermanent"
	// ErrTypeNushellStart: nu or the script could not be started; never
	// retried because a retry on the same worker cannot fix it.
	ErrTypeNushellStart = "NushellStart"
	// ErrTypeInvalidArgs: the step's argv was malformed.
	ErrTypeInvalidArgs = "InvalidArgs"
)

// MaxReturnedOutput caps each stream returned to the workflow so that event
// history stays well below Temporal's payload limits; the tail is kept.
const MaxReturnedOutput = 64 << 10

// Activities is registered on the worker; workflows call its methods through
// a typed nil pointer. Its fields are the dependencies.
type Activities struct {
	// Runner runs `nu <provisioning-path> ...`.
	Runner *NuRunner
	// Store receives task projections.
	Store storage.Store
	// Docker runs test environments; nil on workers without an engine
	// (their environment activities fail with ErrTypeNoDocker).
	Docker *DockerRuntime
	// Logger, default slog.Default().
	Logger *slog.Logger
	// Metrics counts Nushell runs and task durations; nil records nothing.
	Metrics *metrics.Metrics
}

// NuStep is one Nushell invocation: argv after `nu <provisioning-path>`.
type NuStep struct {
	TaskID string   `json:"task_id"`
	Step   string   `json:"step"`
	Args   []string `json:"args"`
}

// NuStepResult is what one attempt produced. It is the activity result on
// success and the ApplicationError details on failure.
type NuStepResult struct {
	ExitCode   int    `json:"exit_code"`
	Stdout     string `json:"stdout"`
	Stderr     string `json:"stderr"`
	Truncated  bool   `json:"truncated"`
	DurationMS int64  `json:"duration_ms"`
	// Attempt is the 1-based attempt number that produced this result.
	Attempt int32 `json:"attempt"`
}

func (a *Activities) logger() *slog.Logger {
	if a.Logger != nil {
		return a.Logger
	}
	return slog.Default()
}

// RunNushell runs one step. It heartbeats at a third of the heartbeat
// timeout so a dead worker is noticed, and a cancelled workflow kills the
// script's whole process group (cancellation reaches an activity only
// through heartbeats).
func (a *Activities) RunNushell(ctx context.Context, step NuStep) (NuStepResult, error) {
	info := activity.GetInfo(ctx)
	log := a.logger().With("task_id", step.TaskID, "step", step.Step, "attempt", info.Attempt)
	every := info.HeartbeatTimeout / 3
	if every <= 0 || every > DefaultHeartbeatInterval {
		every = DefaultHeartbeatInterval
	}
	env := []string{
		"ORCHESTRATOR_TASK_ID=" + step.TaskID,
		"ORCHESTRATOR_STEP=" + step.Step,
		fmt.Sprintf("ORCHESTRATOR_ATTEMPT=%d", info.Attempt),
	}
	log.Info("nushell step starting", "args", step.Args)
	res, err := a.Runner.Run(ctx, step.Args, env, func() { activity.RecordHeartbeat(ctx, step.Step) }, every)
	out := NuStepResult{
		ExitCode:   res.ExitCode,
		Stdout:     tail(res.Stdout, MaxReturnedOutput),
		Stderr:     tail(res.Stderr, MaxReturnedOutput),
		Truncated:  res.StdoutTruncated || res.StderrTruncated || len(res.Stdout) > MaxReturnedOutput || len(res.Stderr) > MaxReturnedOutput,
		DurationMS: res.Duration.Milliseconds(),
		Attempt:    info.Attempt,
	}
	if err == nil {
		a.Metrics.NushellInvocation(metrics.OutcomeSuccess)
		log.Info("nushell step completed", "duration_ms", out.DurationMS)
		return out, nil
	}
	if ctx.Err() != nil {
		a.Metrics.NushellInvocation(metrics.OutcomeCancelled)
		log.Warn("nushell step cancelled; process group killed", "error", err)
		return out, ctx.Err()
	}
	a.Metrics.NushellInvocation(metrics.OutcomeFailure)
	log.Warn("nushell step failed", "error", err, "exit_code", out.ExitCode)
	var startErr *StartError
	var exitErr *ExitError
	switch {
	case errors.As(err, &startErr) && startErr.Flag == "":
		// Flag is empty when the argv/env itself was rejected (NUL bytes).
		out.ExitCode = -1
		return out, temporal.NewApplicationErrorWithOptions(err.Error(), ErrTypeInvalidArgs,
			temporal.ApplicationErrorOptions{NonRetryable: true, Details: []any{out}})
	case errors.As(err, &startErr):
		out.ExitCode = -1
		return out, temporal.NewApplicationErrorWithOptions(err.Error(), ErrTypeNushellStart,
			temporal.ApplicationErrorOptions{NonRetryable: true, Details: []any{out}})
	case errors.As(err, &exitErr):
		typ := ErrTypeNushellExit
		if exitErr.Permanent {
			typ = ErrTypeNushellPermanent
		}
		return out, temporal.NewApplicationErrorWithOptions(err.Error(), typ,
			temporal.ApplicationErrorOptions{NonRetryable: exitErr.Permanent, Details: []any{out}})
	default:
		out.ExitCode = -1
		return out, temporal.NewApplicationErrorWithOptions(err.Error(), ErrTypeNushellExit,
			temporal.ApplicationErrorOptions{Details: []any{out}})
	}
}

// ProjectionActor is the audit actor of the transitions that projections
// record.
const ProjectionActor = "workflow"

// ProjectTask writes a workflow's task snapshot to the store. Stores ignore
// snapshots older than what they hold, so retries and replays are harmless.
// A store outage fails the activity and Temporal retries it: no transition
// is lost. A status change is recorded in the audit trail (atomically with
// the write, by the store) with actor ProjectionActor.
func (a *Activities) ProjectTask(ctx context.Context, t storage.Task) error {
	if err := storage.ValidateID(t.ID); err != nil {
		return temporal.NewNonRetryableApplicationError(err.Error(), "InvalidTaskID", err)
	}
	ctx = storage.WithActor(ctx, ProjectionActor)
	start := time.Now()
	if err := a.Store.Put(ctx, t); err != nil {
		a.logger().Warn("task projection failed", "task_id", t.ID, "status", t.Status, "error", err)
		return fmt.Errorf("project task %s (%s): %w", t.ID, t.Status, err)
	}
	a.Metrics.ObserveTask(t)
	a.logger().Debug("task projected", "task_id", t.ID, "status", t.Status, "version", t.Version, "took", time.Since(start))
	return nil
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}
