package storage

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/provisioning/orchestrator/internal/tailbuf"
)

// StepOutput is the captured output of one attempt of one step of a task:
// what the Nushell supervisor kept of the process's stdout and stderr
// (their last 256 KiB each by default), far more than the 8 KiB tails that
// travel through Temporal history into Task.Steps. It is keyed by
// (TaskID, Step, Attempt); a second write of the same key replaces the
// first.
type StepOutput struct {
	// TaskID is the task's id (a canonical lowercase UUID).
	TaskID string `json:"task_id"`
	// Step is the step's name (StepResult.Name, usually a server name):
	// 1 to MaxStepNameBytes bytes of valid UTF-8. Backends never use it
	// in a file path or splice it into a query.
	Step string `json:"step"`
	// Attempt is the 1-based attempt number (Temporal's activity attempt),
	// at most math.MaxInt32.
	Attempt int `json:"attempt"`
	// ExitCode is the process's exit status; -1 when it could not be
	// started or was killed.
	ExitCode int `json:"exit_code"`
	// Stdout and Stderr are the captured tails of the two streams, as
	// UTF-8: PrepareStepOutput replaces invalid sequences with U+FFFD (as
	// JSON encoding would), so every backend returns the same text. Any
	// other byte, NUL included, is kept.
	Stdout string `json:"stdout"`
	Stderr string `json:"stderr"`
	// StdoutTruncated and StderrTruncated report that the start of the
	// stream was dropped (by the supervisor's bound or by
	// MaxStepStreamBytes), so Stdout/Stderr are its tail.
	StdoutTruncated bool `json:"stdout_truncated"`
	StderrTruncated bool `json:"stderr_truncated"`
	// StdoutBytes and StderrBytes are the sizes in bytes of Stdout and
	// Stderr as stored (set by PrepareStepOutput; what a caller puts there
	// is ignored).
	StdoutBytes int `json:"stdout_bytes"`
	StderrBytes int `json:"stderr_bytes"`
	// DurationMS is the attempt's wall time in milliseconds.
	DurationMS int64 `json:"duration_ms"`
	// Error is the attempt's failure message; empty on success.
	Error string `json:"error"`
	// Time is when the attempt ended, stored in UTC; a zero Time is taken
	// as the time of the write.
	Time time.Time `json:"time"`
}

// StepOutputStore is the optional capability of a Store to keep every
// step attempt's full captured output. Both built-in backends (Filesystem
// and surrealdb.Store) implement it; callers check for it with a type
// assertion so that other Store implementations keep working without it.
//
// Outputs belong to their task: PutStepOutput refuses a task that is not
// stored (ErrNotFound), and Store.Delete removes the task's outputs with
// it, so no output outlives its task.
type StepOutputStore interface {
	// PutStepOutput stores o (after PrepareStepOutput), replacing any
	// output stored for the same task, step and attempt. Errors:
	// ErrInvalidID (bad task id), ErrInvalidStepOutput (bad step name or
	// attempt), ErrNotFound (no such task), ErrUnavailable (backend down).
	PutStepOutput(ctx context.Context, o StepOutput) error
	// GetStepOutput returns the output of the given attempt of a step, or
	// of its latest (highest-numbered) stored attempt when attempt is 0.
	// ErrNotFound when nothing is stored for it (or the task is unknown);
	// ErrInvalidID / ErrInvalidStepOutput for a bad key; a stored output
	// that cannot be decoded is ErrCorrupt.
	GetStepOutput(ctx context.Context, taskID, step string, attempt int) (StepOutput, error)
	// ListStepOutputAttempts returns the attempt numbers stored for a
	// step, ascending; an empty (non-nil) slice when there are none,
	// whether or not the task exists.
	ListStepOutputAttempts(ctx context.Context, taskID, step string) ([]int, error)
}

// Bounds of step outputs.
const (
	// MaxStepNameBytes bounds StepOutput.Step (the REST API accepts
	// stricter names: [A-Za-z0-9][A-Za-z0-9._-]{0,62}).
	MaxStepNameBytes = 256
	// MaxStepStreamBytes bounds each stream of a stored output (1 MiB, four
	// times the Nushell supervisor's default capture of 256 KiB):
	// PrepareStepOutput keeps the tail of a longer stream and marks it
	// truncated, so one output stays a bounded record in every backend.
	MaxStepStreamBytes = 1 << 20
)

// ErrInvalidStepOutput reports a step output key whose step name or
// attempt number is not acceptable (see StepOutput). A bad task id is
// ErrInvalidID.
var ErrInvalidStepOutput = errors.New("invalid step output key")

// ValidateStepKey checks the key of a step output: a canonical task id
// (ErrInvalidID), a step name of 1 to MaxStepNameBytes bytes of valid
// UTF-8 and, unless allowLatest permits 0, an attempt from 1 to
// math.MaxInt32 (ErrInvalidStepOutput).
func ValidateStepKey(taskID, step string, attempt int, allowLatest bool) error {
	if err := ValidateID(taskID); err != nil {
		return err
	}
	if step == "" || len(step) > MaxStepNameBytes || !utf8.ValidString(step) {
		return fmt.Errorf("%w: step name must be 1 to %d bytes of UTF-8", ErrInvalidStepOutput, MaxStepNameBytes)
	}
	lo := 1
	if allowLatest {
		lo = 0
	}
	if attempt < lo || attempt > math.MaxInt32 {
		return fmt.Errorf("%w: attempt %d is not between %d and %d", ErrInvalidStepOutput, attempt, lo, math.MaxInt32)
	}
	return nil
}

// PrepareStepOutput is what PutStepOutput does before it touches storage:
// it checks the key (ValidateStepKey), makes each stream valid UTF-8
// (invalid sequences become U+FFFD), cuts it to its last
// MaxStepStreamBytes (marking it truncated), sets the byte counts, and
// takes a zero Time as now; Time is returned in UTC.
func PrepareStepOutput(o StepOutput) (StepOutput, error) {
	if err := ValidateStepKey(o.TaskID, o.Step, o.Attempt, false); err != nil {
		return StepOutput{}, err
	}
	o.Stdout = strings.ToValidUTF8(o.Stdout, "\uFFFD")
	o.Stderr = strings.ToValidUTF8(o.Stderr, "\uFFFD")
	if len(o.Stdout) > MaxStepStreamBytes {
		o.Stdout, o.StdoutTruncated = tailbuf.String(o.Stdout, MaxStepStreamBytes), true
	}
	if len(o.Stderr) > MaxStepStreamBytes {
		o.Stderr, o.StderrTruncated = tailbuf.String(o.Stderr, MaxStepStreamBytes), true
	}
	o.StdoutBytes, o.StderrBytes = len(o.Stdout), len(o.Stderr)
	if o.Time.IsZero() {
		o.Time = time.Now()
	}
	o.Time = o.Time.UTC()
	return o, nil
}

// CheckStepOutput verifies that a decoded output is the one stored under
// (taskID, step, attempt); backends wrap its error with ErrCorrupt.
func CheckStepOutput(o StepOutput, taskID, step string, attempt int) error {
	if o.TaskID != taskID || o.Step != step || o.Attempt != attempt {
		return fmt.Errorf("content is task %q step %q attempt %d", o.TaskID, o.Step, o.Attempt)
	}
	return nil
}
