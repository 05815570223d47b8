package migrate

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// checkpointFormat is the version of the checkpoint file layout.
const checkpointFormat = 1

// checkpointFile is the JSON content of Options.CheckpointPath: which
// source records the target is known to hold, by checksum. It only saves
// work on a rerun (the target is not read again for a record whose source
// checksum is unchanged); the final verification still reads both sides,
// so a stale or lost checkpoint can never make a migration pass that
// should fail.
type checkpointFile struct {
	Format    int                        `json:"format"`
	Source    string                     `json:"source"`
	Target    string                     `json:"target"`
	UpdatedAt time.Time                  `json:"updated_at"`
	Complete  bool                       `json:"complete"`
	Tasks     map[string]checkpointEntry `json:"tasks"`
}

// checkpointEntry: T is the task's checksum, S the checksum of the task
// together with its audit trail (what a pass compares), C the source's
// change stamp when it was read (absent: none; see
// storage.ChangeStamper). A rerun does not read a source record whose
// stamp is still C.
type checkpointEntry struct {
	T string `json:"t"`
	S string `json:"s"`
	C string `json:"c,omitempty"`
}

// loadCheckpoint reads path; a missing file is an empty checkpoint. A file
// written for another source or target is an error, so a mistyped path is
// noticed instead of silently ignored.
func loadCheckpoint(path, source, target string) (map[string]checkpointEntry, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]checkpointEntry{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	var cp checkpointFile
	if err := json.Unmarshal(data, &cp); err != nil {
		return nil, fmt.Errorf("checkpoint %s is unreadable (delete it to start over; the copy is idempotent): %w", path, err)
	}
	if cp.Format != checkpointFormat {
		return nil, fmt.Errorf("checkpoint %s has format %d, this version writes %d (delete it to start over)", path, cp.Format, checkpointFormat)
	}
	if cp.Source != source || cp.Target != target {
		return nil, fmt.Errorf("checkpoint %s belongs to the migration from %s to %s, not from %s to %s (use another --checkpoint file or delete it)",
			path, cp.Source, cp.Target, source, target)
	}
	if cp.Tasks == nil {
		cp.Tasks = map[string]checkpointEntry{}
	}
	return cp.Tasks, nil
}

// writeCheckpoint replaces path atomically: temp file in the same
// directory, fsync, rename.
func writeCheckpoint(path string, cp checkpointFile) (err error) {
	data, err := json.Marshal(cp)
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if _, err = tmp.Write(data); err != nil {
		return err
	}
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
