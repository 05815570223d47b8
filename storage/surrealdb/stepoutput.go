package surrealdb

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/surrealdb/surrealdb.go/pkg/models"

	"github.com/provisioning/orchestrator/storage"
)

// Step outputs (storage.StepOutputStore):
//
//	step_output:[⟨task id⟩, ⟨step⟩, ⟨attempt⟩] { task_id, step, attempt,
//	  exit_code, stdout, stderr, stdout_truncated, stderr_truncated,
//	  stdout_bytes, stderr_bytes, duration_ms, error, time }
//	              stdout and stderr are bytes values (a SurrealDB string
//	              cannot hold NUL, which a script may print)
//	              the record ID is the key, so a second write of an
//	              attempt replaces it and a step's attempts are a
//	              record-ID range (ascending by attempt); time has
//	              created_at's format; index task_id (Delete)
//
// The step name is only ever a bound variable inside the record ID, never
// spliced into SurrealQL.

// surrealTaskMissingMarker is thrown by PutStepOutput's transaction when
// the task is not stored.
const surrealTaskMissingMarker = "orchestrator:task-missing"

const surrealPutOutputSQL = `
BEGIN TRANSACTION;
IF !record::exists($rid) { THROW "` + surrealTaskMissingMarker + `" };
UPSERT $oid CONTENT $out RETURN NONE;
COMMIT TRANSACTION;
`

const surrealOutputFields = "task_id, step, attempt, exit_code, stdout, stderr, stdout_truncated, stderr_truncated, " +
	"stdout_bytes, stderr_bytes, duration_ms, error, time"

var _ storage.StepOutputStore = (*Store)(nil)

func outputRecordID(taskID, step string, attempt int) models.RecordID {
	return models.NewRecordID("step_output", []any{taskID, step, attempt})
}

// surrealOutputRow is a step_output record as read.
type surrealOutputRow struct {
	TaskID          string `json:"task_id"`
	Step            string `json:"step"`
	Attempt         int    `json:"attempt"`
	ExitCode        int    `json:"exit_code"`
	Stdout          []byte `json:"stdout"`
	Stderr          []byte `json:"stderr"`
	StdoutTruncated bool   `json:"stdout_truncated"`
	StderrTruncated bool   `json:"stderr_truncated"`
	StdoutBytes     int    `json:"stdout_bytes"`
	StderrBytes     int    `json:"stderr_bytes"`
	DurationMS      int64  `json:"duration_ms"`
	Error           string `json:"error"`
	Time            string `json:"time"`
}

// PutStepOutput stores o, replacing the output of the same task, step and
// attempt, in a transaction that checks the task is stored
// (storage.ErrNotFound otherwise). See storage.StepOutputStore.
func (s *Store) PutStepOutput(ctx context.Context, o storage.StepOutput) error {
	o, err := storage.PrepareStepOutput(o)
	if err != nil {
		return err
	}
	vars := map[string]any{
		"rid": taskRecordID(o.TaskID),
		"oid": outputRecordID(o.TaskID, o.Step, o.Attempt),
		"out": map[string]any{
			"task_id":          o.TaskID,
			"step":             o.Step,
			"attempt":          o.Attempt,
			"exit_code":        o.ExitCode,
			"stdout":           []byte(o.Stdout),
			"stderr":           []byte(o.Stderr),
			"stdout_truncated": o.StdoutTruncated,
			"stderr_truncated": o.StderrTruncated,
			"stdout_bytes":     o.StdoutBytes,
			"stderr_bytes":     o.StderrBytes,
			"duration_ms":      o.DurationMS,
			"error":            o.Error,
			"time":             surrealTime(o.Time),
		},
	}
	_, err = s.query(ctx, fmt.Sprintf("put output of task %s attempt %d", o.TaskID, o.Attempt), surrealPutOutputSQL, vars)
	if err != nil && strings.Contains(err.Error(), surrealTaskMissingMarker) {
		return fmt.Errorf("%w: %s (step output not stored)", storage.ErrNotFound, o.TaskID)
	}
	return err
}

// GetStepOutput returns the output of one attempt of a step (attempt 0:
// the latest stored). See storage.StepOutputStore.
func (s *Store) GetStepOutput(ctx context.Context, taskID, step string, attempt int) (storage.StepOutput, error) {
	if err := storage.ValidateStepKey(taskID, step, attempt, true); err != nil {
		return storage.StepOutput{}, err
	}
	if attempt == 0 {
		attempts, err := s.ListStepOutputAttempts(ctx, taskID, step)
		if err != nil {
			return storage.StepOutput{}, err
		}
		if len(attempts) == 0 {
			return storage.StepOutput{}, fmt.Errorf("%w: no output of step %q of task %s", storage.ErrNotFound, step, taskID)
		}
		attempt = attempts[len(attempts)-1]
	}
	res, err := s.query(ctx, "get output of task "+taskID, "SELECT "+surrealOutputFields+" FROM ONLY $oid;",
		map[string]any{"oid": outputRecordID(taskID, step, attempt)})
	if err != nil {
		return storage.StepOutput{}, err
	}
	var row *surrealOutputRow
	if err := decodeResult(res, 0, &row); err != nil {
		return storage.StepOutput{}, fmt.Errorf("%w: surrealdb output of task %s attempt %d: %w", storage.ErrCorrupt, taskID, attempt, err)
	}
	if row == nil {
		return storage.StepOutput{}, fmt.Errorf("%w: no output of attempt %d of step %q of task %s", storage.ErrNotFound, attempt, step, taskID)
	}
	at, err := time.Parse(surrealTimeLayout, row.Time)
	o := storage.StepOutput{
		TaskID: row.TaskID, Step: row.Step, Attempt: row.Attempt, ExitCode: row.ExitCode,
		Stdout: string(row.Stdout), Stderr: string(row.Stderr), StdoutTruncated: row.StdoutTruncated, StderrTruncated: row.StderrTruncated,
		StdoutBytes: row.StdoutBytes, StderrBytes: row.StderrBytes, DurationMS: row.DurationMS, Error: row.Error, Time: at.UTC(),
	}
	if err == nil {
		err = storage.CheckStepOutput(o, taskID, step, attempt)
	}
	if err != nil {
		return storage.StepOutput{}, fmt.Errorf("%w: surrealdb output of task %s attempt %d: %w", storage.ErrCorrupt, taskID, attempt, err)
	}
	return o, nil
}

// ListStepOutputAttempts returns the attempts stored for a step,
// ascending (a record-ID range scan). See storage.StepOutputStore.
func (s *Store) ListStepOutputAttempts(ctx context.Context, taskID, step string) ([]int, error) {
	if err := storage.ValidateStepKey(taskID, step, 0, true); err != nil {
		return nil, err
	}
	res, err := s.query(ctx, "list outputs of task "+taskID,
		"SELECT VALUE attempt FROM step_output:[$tid, $step, 1]..=[$tid, $step, $max];",
		map[string]any{"tid": taskID, "step": step, "max": math.MaxInt32})
	if err != nil {
		return nil, err
	}
	var attempts []int
	if err := decodeResult(res, 0, &attempts); err != nil {
		return nil, err
	}
	slices.Sort(attempts)
	return append(make([]int, 0, len(attempts)), attempts...), nil
}
