package storage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Step outputs of the filesystem backend (StepOutputStore):
//
//	{dataDir}/queue.rkvs/outputs/{task id}/{sha256(step) in hex}-{attempt}.json
//
// one JSON StepOutput per file. The step name is hashed, never used in a
// path, so any name is safe. A write encodes and fsyncs a temp file in the
// outputs directory without holding a lock, then, under the task's stripe
// lock (the lock of its Create, Put and Delete), checks that the task is
// stored, renames the temp file into the task's output directory and
// fsyncs that directory: readers see the old or the new output, never a
// partial one, and Delete cannot interleave with the rename. Delete
// removes the task's output directory.

// OutputsSubdir holds step outputs, relative to the data directory: one
// directory per task, one {sha256(step)}-{attempt}.json file per attempt.
const OutputsSubdir = "queue.rkvs/outputs"

const outputFileExt = ".json"

var _ StepOutputStore = (*Filesystem)(nil)

// outputTaskDir is the directory of a task's outputs.
func (f *Filesystem) outputTaskDir(id string) string {
	return filepath.Join(f.outputsDir, id)
}

// stepFilePrefix is the file name prefix of a step's outputs: the hex
// SHA-256 of its name and a dash.
func stepFilePrefix(step string) string {
	sum := sha256.Sum256([]byte(step))
	return hex.EncodeToString(sum[:]) + "-"
}

func (f *Filesystem) outputPath(id, step string, attempt int) string {
	return filepath.Join(f.outputTaskDir(id), stepFilePrefix(step)+strconv.Itoa(attempt)+outputFileExt)
}

// PutStepOutput stores o, replacing the output of the same task, step and
// attempt; ErrNotFound if the task is not stored. See StepOutputStore.
func (f *Filesystem) PutStepOutput(ctx context.Context, o StepOutput) (err error) {
	o, err = PrepareStepOutput(o)
	if err != nil {
		return err
	}
	if err := f.usable(ctx); err != nil {
		return err
	}
	data, err := json.Marshal(o)
	if err != nil {
		return fmt.Errorf("storage: encode output of task %s: %w", o.TaskID, err)
	}
	data = append(data, '\n')
	what := fmt.Sprintf("write output of task %s attempt %d", o.TaskID, o.Attempt)

	// The slow part (writing and syncing up to 2 MiB) runs unlocked.
	tmp, err := os.CreateTemp(f.outputsDir, tempPrefix+o.TaskID+"-*")
	if err != nil {
		return unavailable(what, err)
	}
	name := tmp.Name()
	renamed := false
	defer func() {
		if !renamed {
			_ = tmp.Close()
			_ = os.Remove(name)
		}
	}()
	if err := tmp.Chmod(0o644); err != nil {
		return unavailable(what, err)
	}
	if _, err := tmp.Write(data); err != nil {
		return unavailable(what, err)
	}
	if err := tmp.Sync(); err != nil {
		return unavailable(what, err)
	}
	if err := tmp.Close(); err != nil {
		return unavailable(what, err)
	}

	unlock, err := f.lock(ctx, o.TaskID)
	if err != nil {
		return err
	}
	defer unlock()
	switch _, err := os.Lstat(f.path(o.TaskID)); {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%w: %s (step output not stored)", ErrNotFound, o.TaskID)
	case err != nil:
		return unavailable("stat task "+o.TaskID, err)
	}
	dir := f.outputTaskDir(o.TaskID)
	_, statErr := os.Lstat(dir)
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return unavailable(what, err)
	}
	if statErr != nil {
		// A new directory: make its entry durable.
		if err := f.fsync(f.outputsDir); err != nil {
			return unavailable("sync outputs dir", err)
		}
	}
	if err := os.Rename(name, f.outputPath(o.TaskID, o.Step, o.Attempt)); err != nil {
		return unavailable(what, err)
	}
	renamed = true
	if err := syncPath(dir); err != nil {
		return unavailable("sync outputs dir of "+o.TaskID, err)
	}
	return nil
}

// GetStepOutput returns the output of one attempt of a step (attempt 0:
// the latest stored). See StepOutputStore.
func (f *Filesystem) GetStepOutput(ctx context.Context, taskID, step string, attempt int) (StepOutput, error) {
	if err := ValidateStepKey(taskID, step, attempt, true); err != nil {
		return StepOutput{}, err
	}
	if err := f.usable(ctx); err != nil {
		return StepOutput{}, err
	}
	if attempt == 0 {
		attempts, err := f.ListStepOutputAttempts(ctx, taskID, step)
		if err != nil {
			return StepOutput{}, err
		}
		if len(attempts) == 0 {
			return StepOutput{}, fmt.Errorf("%w: no output of step %q of task %s", ErrNotFound, step, taskID)
		}
		attempt = attempts[len(attempts)-1]
	}
	path := f.outputPath(taskID, step, attempt)
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return StepOutput{}, fmt.Errorf("%w: no output of attempt %d of step %q of task %s", ErrNotFound, attempt, step, taskID)
		}
		return StepOutput{}, unavailable("read output of task "+taskID, err)
	}
	var o StepOutput
	err = json.Unmarshal(data, &o)
	if err == nil {
		err = CheckStepOutput(o, taskID, step, attempt)
	}
	if err != nil {
		return StepOutput{}, fmt.Errorf("%w %s: %w", ErrCorrupt, path, err)
	}
	o.Time = o.Time.UTC()
	return o, nil
}

// ListStepOutputAttempts returns the attempts stored for a step,
// ascending. See StepOutputStore.
func (f *Filesystem) ListStepOutputAttempts(ctx context.Context, taskID, step string) ([]int, error) {
	if err := ValidateStepKey(taskID, step, 0, true); err != nil {
		return nil, err
	}
	if err := f.usable(ctx); err != nil {
		return nil, err
	}
	ents, err := readDir(f.outputTaskDir(taskID))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return []int{}, nil
		}
		return nil, unavailable("list outputs of task "+taskID, err)
	}
	prefix := stepFilePrefix(step)
	out := []int{}
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok || !e.Type().IsRegular() {
			continue
		}
		num, ok := strings.CutSuffix(rest, outputFileExt)
		if !ok {
			continue
		}
		n, err := strconv.Atoi(num)
		if err != nil || n < 1 || strconv.Itoa(n) != num {
			continue // not a name this store writes
		}
		out = append(out, n)
	}
	slices.Sort(out)
	return out, nil
}

// deleteOutputsLocked removes a task's output directory. The caller holds
// the task's lock.
func (f *Filesystem) deleteOutputsLocked(id string) error {
	dir := f.outputTaskDir(id)
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := os.RemoveAll(dir); err != nil {
		return unavailable("delete outputs of task "+id, err)
	}
	if err := f.fsync(f.outputsDir); err != nil {
		return unavailable("sync outputs dir", err)
	}
	return nil
}
