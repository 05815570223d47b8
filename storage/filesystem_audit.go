package storage

import (
	"bytes"
	"container/heap"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Audit trail of the filesystem backend: {dataDir}/queue.rkvs/audit/{id}.jsonl,
// one JSON AuditEntry per line, oldest append first. Every append to a
// task's file holds that task's stripe lock (the same lock as its Create,
// Put and Delete), reads the file to skip an entry whose ID is already
// there, and writes one whole line with O_APPEND followed by fsync.
//
// A crash in the middle of an append can leave a torn last line (no
// newline). Readers skip lines that do not decode; the next append starts
// with a newline, so the fragment stays on a line of its own.

const auditFileExt = ".jsonl"

// AppendAudit appends e to its task's audit file unless an entry with the
// same ID is already there (then it is a no-op). e.TaskID must be a valid
// task id (the task itself need not exist) and e.ID non-empty. A zero Time
// is taken as now, an empty Actor as ActorFrom(ctx); Time is stored in UTC.
func (f *Filesystem) AppendAudit(ctx context.Context, e AuditEntry) error {
	e, err := PrepareAuditEntry(ctx, e)
	if err != nil {
		return err
	}
	if err := f.usable(ctx); err != nil {
		return err
	}
	unlock, err := f.lock(ctx, e.TaskID)
	if err != nil {
		return err
	}
	defer unlock()
	return f.appendAuditLocked(e, true)
}

// ListAudit returns the matching entries oldest first (Time, then ID). With
// more than the limit (default DefaultAuditLimit) matching, the newest are
// kept. Without a TaskID it reads every task's audit file.
func (f *Filesystem) ListAudit(ctx context.Context, af AuditFilter) ([]AuditEntry, error) {
	af, err := PrepareAuditFilter(af)
	if err != nil {
		return nil, err
	}
	if err := f.usable(ctx); err != nil {
		return nil, err
	}
	var all []AuditEntry
	if af.TaskID != "" {
		data, err := f.readAuditFile(af.TaskID)
		if err != nil {
			return nil, err
		}
		all = f.parseAudit(af.TaskID, data, true)
	} else {
		if all, err = f.readNewestAudit(ctx, af.Limit); err != nil {
			return nil, err
		}
	}
	return NewestAudit(all, af.Limit), nil
}

func (f *Filesystem) auditPath(id string) string {
	return filepath.Join(f.auditDir, id+auditFileExt)
}

// appendAuditLocked appends e to its task's audit file unless its ID is
// there already. The caller holds e.TaskID's lock and validated the IDs.
// When it returns nil the entry is on disk (file and, for a new file, the
// directory entry fsynced), unless durable is false: then the caller
// fsyncs both later.
func (f *Filesystem) appendAuditLocked(e AuditEntry, durable bool) error {
	e.Time = e.Time.UTC()
	line, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("storage: encode audit entry %s: %w", e.ID, err)
	}
	line = append(line, '\n')

	path := f.auditPath(e.TaskID)
	fh, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return unavailable("open audit file of "+e.TaskID, err)
	}
	defer fh.Close()
	data, err := io.ReadAll(fh)
	if err != nil {
		return unavailable("read audit file of "+e.TaskID, err)
	}
	newest := e.Time
	for _, have := range f.parseAudit(e.TaskID, data, false) {
		if have.ID == e.ID {
			return nil
		}
		if have.Time.After(newest) {
			newest = have.Time
		}
	}
	if len(data) > 0 && data[len(data)-1] != '\n' {
		// A torn line left by a crash: keep it on a line of its own.
		line = append([]byte{'\n'}, line...)
	}
	if _, err := fh.Write(line); err != nil {
		return unavailable("append audit entry of "+e.TaskID, err)
	}
	// The file's mtime is its newest entry's time, so the newest entries
	// across tasks are found in the files with the newest mtimes (see
	// readNewestAudit). Best effort: a failure or a crash leaves the write
	// time, which is no older than the entries but for clock skew.
	_ = os.Chtimes(path, time.Time{}, newest)
	if !durable {
		return nil // the caller fsyncs later (CreateDeferred)
	}
	if err := fh.Sync(); err != nil {
		return unavailable("sync audit file of "+e.TaskID, err)
	}
	if len(data) == 0 {
		// Possibly a new file: make its directory entry durable too.
		if err := f.fsync(f.auditDir); err != nil {
			return unavailable("sync audit dir", err)
		}
	}
	return nil
}

// readAuditFile returns the content of id's audit file (nil if none).
func (f *Filesystem) readAuditFile(id string) ([]byte, error) {
	data, err := os.ReadFile(f.auditPath(id))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, unavailable("read audit file of "+id, err)
	}
	return data, nil
}

// parseAudit decodes the lines of id's audit file. Lines that do not decode
// (a torn append), have no ID, or belong to another task are skipped (and
// logged when warn is set); a repeated ID keeps its first entry.
func (f *Filesystem) parseAudit(id string, data []byte, warn bool) []AuditEntry {
	var out []AuditEntry
	seen := map[string]struct{}{}
	for n := 1; len(data) > 0; n++ {
		var line []byte
		line, data, _ = bytes.Cut(data, []byte{'\n'})
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var e AuditEntry
		err := json.Unmarshal(line, &e)
		switch {
		case err != nil:
		case e.ID == "":
			err = errors.New("entry has no id")
		case e.TaskID != id:
			err = fmt.Errorf("entry of task %q", e.TaskID)
		}
		if err != nil {
			if warn {
				f.log().Warn("skipping unreadable audit line", "path", f.auditPath(id), "line", n, "error", err)
			}
			continue
		}
		if _, dup := seen[e.ID]; dup {
			continue
		}
		seen[e.ID] = struct{}{}
		e.Time = e.Time.UTC()
		out = append(out, e)
	}
	return out
}

// auditMtimeSlack is how much newer than its file's mtime an audit entry
// may be: AppendAudit sets a file's mtime to its newest entry's time, but a
// crash between the write and that, or a file written before it did so,
// has the write time, and projection entries carry the workflow's time,
// taken on the Temporal server, whose clock may run ahead of this
// machine's.
const auditMtimeSlack = 30 * time.Second

// readNewestAudit returns (at least) the newest limit entries of all
// tasks without reading every audit file: no entry of a file is newer than
// the file's mtime (give or take auditMtimeSlack). Files are read newest
// mtime first, and reading stops once the limit-th newest entry kept is
// newer than the next file's mtime plus the slack. The stat of every file
// (in parallel) is what remains proportional to the number of tasks;
// memory holds the stats and the limit newest entries.
func (f *Filesystem) readNewestAudit(ctx context.Context, limit int) ([]AuditEntry, error) {
	ents, err := readDir(f.auditDir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, unavailable("list audit files", err)
	}
	type auditFile struct {
		id    string
		mtime time.Time
	}
	files := make([]auditFile, 0, len(ents))
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), auditFileExt)
		if ok && isCanonicalUUID(id) && e.Type().IsRegular() {
			files = append(files, auditFile{id: id})
		}
	}
	workers := min(runtime.GOMAXPROCS(0), 8, len(files)/256+1)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(files) || ctx.Err() != nil {
					return
				}
				// A file gone since the listing keeps the zero time: read
				// last, found empty.
				if info, err := os.Stat(f.auditPath(files[i].id)); err == nil {
					files[i].mtime = info.ModTime()
				}
			}
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	slices.SortFunc(files, func(a, b auditFile) int { return b.mtime.Compare(a.mtime) })

	kept := &auditHeap{}
	for _, file := range files {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if kept.Len() >= limit && (*kept)[0].Time.After(file.mtime.Add(auditMtimeSlack)) {
			break
		}
		f.auditReads.Add(1)
		data, err := f.readAuditFile(file.id)
		if err != nil {
			return nil, err
		}
		for _, e := range f.parseAudit(file.id, data, true) {
			switch {
			case kept.Len() < limit:
				heap.Push(kept, e)
			case compareAudit(e, (*kept)[0]) > 0:
				(*kept)[0] = e
				heap.Fix(kept, 0)
			}
		}
	}
	return *kept, nil
}

// auditHeap is a min-heap of entries (oldest at the root), holding the
// newest entries seen so far.
type auditHeap []AuditEntry

func (h auditHeap) Len() int           { return len(h) }
func (h auditHeap) Less(i, j int) bool { return compareAudit(h[i], h[j]) < 0 }
func (h auditHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *auditHeap) Push(x any)        { *h = append(*h, x.(AuditEntry)) }
func (h *auditHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}
