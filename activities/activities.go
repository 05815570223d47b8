// Package activities holds the orchestrator's side effects as Temporal
// activities: thin adapters over the drivers (driver/nushell runs the
// user's provisioning scripts, driver/docker the test environments) and
// the task store. They heartbeat, classify errors into retryable and
// non-retryable Temporal error types, and shape bounded results; the work
// itself is in the drivers.
//
// The package imports no Docker client and no Prometheus, so workflows (and
// the Go SDK, which imports them) stay light: the engine and the metrics
// come in through the driver.Engine and Recorder interfaces.
package activities

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"github.com/provisioning/orchestrator/driver"
	"github.com/provisioning/orchestrator/driver/nushell"
	"github.com/provisioning/orchestrator/internal/tailbuf"
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
	// ErrTypeInvalidTaskID: a projection named a task id the store refuses;
	// never retried.
	ErrTypeInvalidTaskID = "InvalidTaskID"
)

// MaxReturnedOutput caps each stream returned to the workflow so that event
// history stays well below Temporal's limits whatever a script prints: a
// MaxServers (500) task carries at most 500 × 2 × 8 KiB = 8 MB of output
// (the history limit is 50 MB, a payload's 2 MB). The tail is kept.
const MaxReturnedOutput = 8 << 10

// OutputWriteTimeout bounds RunNushell's write of an attempt's full output
// to the store (storage.StepOutputStore): the write is best effort and
// must not hold the step's result back for long.
const OutputWriteTimeout = 5 * time.Second

// Activities is registered on the worker; workflows call its methods through
// a typed nil pointer. Its fields are the dependencies.
type Activities struct {
	// Runner runs `nu <provisioning-path> ...`.
	Runner *nushell.Runner
	// Store receives task projections and, when it implements
	// storage.StepOutputStore, every step attempt's full captured output.
	Store storage.Store
	// Docker runs test environments (a *docker.Runtime in production); nil
	// on workers without an engine (their environment activities fail with
	// ErrTypeNoDocker). Leave it nil, not a typed nil pointer.
	Docker driver.Engine
	// ConvergeEnv are KEY=VALUE entries every converge inside a node gets
	// (the worker's script environment; the node's own state directories
	// override any given here).
	ConvergeEnv []string
	// Logger, default slog.Default().
	Logger *slog.Logger
	// Metrics counts Nushell runs and task durations (a *metrics.Metrics in
	// production); nil records nothing.
	Metrics Recorder
	// WebhookSecret signs webhook deliveries (DeliverWebhook); empty fails
	// them (never retried) instead of sending anything unsigned.
	WebhookSecret []byte
	// WebhookClient makes the deliveries; nil means webhook.Client
	// (bounded attempts, redirects not followed).
	WebhookClient *http.Client
}

// Recorder is what the activities record in the process's metrics.
type Recorder interface {
	// NushellInvocation counts one run by outcome (nushell.Outcome*).
	NushellInvocation(outcome string)
	// ObserveTask records a projected task (its duration once finished).
	ObserveTask(t storage.Task)
}

type noRecorder struct{}

func (noRecorder) NushellInvocation(string) {}
func (noRecorder) ObserveTask(storage.Task) {}

func (a *Activities) metrics() Recorder {
	if a.Metrics == nil {
		return noRecorder{}
	}
	return a.Metrics
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
//
// After every attempt (success, failure or cancellation) it writes what
// the runner captured (each stream's last 256 KiB by default) to the store
// as a storage.StepOutput, if the store implements
// storage.StepOutputStore; the result that travels through history keeps
// only the last MaxReturnedOutput bytes of each stream. The write is best
// effort, bounded by OutputWriteTimeout: a failure is logged and changes
// nothing about the step's result.
func (a *Activities) RunNushell(ctx context.Context, step NuStep) (NuStepResult, error) {
	out, _, err := a.runNushell(ctx, step)
	return out, err
}

// interrupted is the error of a step whose context ended: it still wraps
// ctx.Err() (a cancellation Temporal asked for is reported as one), and
// says why when the cause is not the plain cancellation, e.g. the worker
// shutting down or Temporal no longer knowing the attempt (it timed out:
// its heartbeats came too late), so a step that fails that way does not
// read only "context canceled".
func interrupted(ctx context.Context) error {
	err := ctx.Err()
	if cause := context.Cause(ctx); cause != nil && !errors.Is(err, cause) {
		return fmt.Errorf("step interrupted on this worker: %w: %w", cause, err)
	}
	return err
}

// runNushell is RunNushell, also returning everything the runner captured
// (stdout unbounded by MaxReturnedOutput) for callers that parse it.
func (a *Activities) runNushell(ctx context.Context, step NuStep) (NuStepResult, nushell.Result, error) {
	info := activity.GetInfo(ctx)
	log := a.logger().With("task_id", step.TaskID, "step", step.Step, "attempt", info.Attempt)
	every := info.HeartbeatTimeout / 3
	if every <= 0 || every > nushell.DefaultHeartbeatInterval {
		every = nushell.DefaultHeartbeatInterval
	}
	env := []string{
		"ORCHESTRATOR_TASK_ID=" + step.TaskID,
		"ORCHESTRATOR_STEP=" + step.Step,
		fmt.Sprintf("ORCHESTRATOR_ATTEMPT=%d", info.Attempt),
	}
	log.Info("nushell step starting", "args", step.Args)
	events, live := a.Store.(storage.EventStore)
	var tapOut, tapErr io.Writer
	var lo *liveOutput
	if live {
		// Events are stored by lo's goroutine, in order, best effort:
		// the step never waits for the store (but LiveDrainTimeout at
		// its end).
		lo = newLiveOutput(events, step, int(info.Attempt), log)
		lo.event(storage.Event{Key: storage.StepStartedEventKey(step.Step, int(info.Attempt)),
			Type: storage.EventStepStarted, Step: step.Step, Attempt: int(info.Attempt)})
		tapOut, tapErr = lo.writer("stdout"), lo.writer("stderr")
	}
	res, err := a.Runner.RunTapped(ctx, step.Args, env, func() { activity.RecordHeartbeat(ctx, step.Step) }, every, tapOut, tapErr)
	if lo != nil && (err == nil || ctx.Err() != nil) {
		lo.finish()
	}
	out := NuStepResult{
		ExitCode:   res.ExitCode,
		Stdout:     tailbuf.String(res.Stdout, MaxReturnedOutput),
		Stderr:     tailbuf.String(res.Stderr, MaxReturnedOutput),
		Truncated:  res.StdoutTruncated || res.StderrTruncated || len(res.Stdout) > MaxReturnedOutput || len(res.Stderr) > MaxReturnedOutput,
		DurationMS: res.Duration.Milliseconds(),
		Attempt:    info.Attempt,
	}
	errText := ""
	if err != nil {
		errText = err.Error()
	}
	a.saveOutput(ctx, log, step, int(info.Attempt), res, errText)
	if err == nil {
		a.metrics().NushellInvocation(nushell.OutcomeSuccess)
		log.Info("nushell step completed", "duration_ms", out.DurationMS)
		return out, res, nil
	}
	if ctx.Err() != nil {
		a.metrics().NushellInvocation(nushell.OutcomeCancelled)
		log.Warn("nushell step cancelled; process group killed", "error", err, "cause", context.Cause(ctx))
		return out, res, interrupted(ctx)
	}
	a.metrics().NushellInvocation(nushell.OutcomeFailure)
	log.Warn("nushell step failed", "error", err, "exit_code", out.ExitCode)
	typ, permanent := ErrTypeNushellExit, false
	var startErr *nushell.StartError
	var exitErr *nushell.ExitError
	switch {
	case errors.As(err, &startErr) && startErr.Flag == "":
		// Flag is empty when the argv/env itself was rejected (NUL bytes).
		out.ExitCode = -1
		typ, permanent = ErrTypeInvalidArgs, true
	case errors.As(err, &startErr):
		out.ExitCode = -1
		typ, permanent = ErrTypeNushellStart, true
	case errors.As(err, &exitErr):
		if exitErr.Permanent {
			typ, permanent = ErrTypeNushellPermanent, true
		}
	default:
		out.ExitCode = -1
	}
	if lo != nil {
		retrying := willRetry(info, typ, permanent)
		code := out.ExitCode
		lo.finish(storage.Event{Key: storage.StepAttemptFailedEventKey(step.Step, int(info.Attempt)),
			Type: storage.EventStepAttemptFailed, Step: step.Step, Attempt: int(info.Attempt), ExitCode: &code,
			Error: tailbuf.LastLine(errText), Retrying: &retrying})
	}
	return out, res, temporal.NewApplicationErrorWithOptions(err.Error(), typ,
		temporal.ApplicationErrorOptions{NonRetryable: permanent, Details: []any{out}})
}

// saveOutput writes an attempt's full captured output to the store, if it
// can keep outputs. Best effort: bounded by OutputWriteTimeout (even when
// ctx is already cancelled), and a failure is only logged.
func (a *Activities) saveOutput(ctx context.Context, log *slog.Logger, step NuStep, attempt int, res nushell.Result, errText string) {
	st, ok := a.Store.(storage.StepOutputStore)
	if !ok {
		return
	}
	exit := res.ExitCode
	if errText != "" && exit == 0 {
		exit = -1 // not started, or killed before an exit status
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), OutputWriteTimeout)
	defer cancel()
	start := time.Now()
	err := st.PutStepOutput(wctx, storage.StepOutput{
		TaskID: step.TaskID, Step: step.Step, Attempt: attempt, ExitCode: exit,
		Stdout: res.Stdout, Stderr: res.Stderr,
		StdoutTruncated: res.StdoutTruncated, StderrTruncated: res.StderrTruncated,
		DurationMS: res.Duration.Milliseconds(), Error: errText, Time: time.Now(),
	})
	if err != nil {
		log.Warn("could not store the step's full output; the task keeps its tail", "error", err, "took", time.Since(start))
		return
	}
	log.Debug("step output stored", "stdout_bytes", len(res.Stdout), "stderr_bytes", len(res.Stderr), "took", time.Since(start))
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
		return temporal.NewNonRetryableApplicationError(err.Error(), ErrTypeInvalidTaskID, err)
	}
	ctx = storage.WithActor(ctx, ProjectionActor)
	start := time.Now()
	if err := a.Store.Put(ctx, t); err != nil {
		a.logger().Warn("task projection failed", "task_id", t.ID, "status", t.Status, "error", err)
		return fmt.Errorf("project task %s (%s): %w", t.ID, t.Status, err)
	}
	// The transition's live events (and those of the steps it shows
	// finished) go to the same store; a failure is retried with the
	// projection, so a watcher never misses a transition.
	if err := storage.AppendTransition(ctx, a.Store, t); err != nil {
		a.logger().Warn("task projection's events failed", "task_id", t.ID, "status", t.Status, "error", err)
		return fmt.Errorf("project task %s (%s) events: %w", t.ID, t.Status, err)
	}
	a.metrics().ObserveTask(t)
	a.logger().Debug("task projected", "task_id", t.ID, "status", t.Status, "version", t.Version, "took", time.Since(start))
	return nil
}
