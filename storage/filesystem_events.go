package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// Event streams of the filesystem backend (EventStore):
//
//	{dataDir}/queue.rkvs/events/{task id}.jsonl
//
// one JSON Event per line in Seq order. An append holds the task's stripe
// lock (the lock of its Create, Put and Delete, shared across processes by
// flock), checks the task is stored, skips keys the file already has, and
// writes all new lines with one O_APPEND write. It does not fsync: events
// are a live view whose loss in a crash costs nothing the task record and
// step outputs do not keep, and an fsync per 200 ms output batch would
// cost every running step a disk flush. Readers parse complete lines only,
// so a concurrent append is never seen half-written.
//
// What an appender knows about a file (last Seq, keys, bounds) is cached
// per task and extended by reading only what was appended since (by this
// or another process), so an append does not re-read the whole stream.

// EventsSubdir holds event streams, relative to the data directory.
const EventsSubdir = "queue.rkvs/events"

const eventFileExt = ".jsonl"

// maxEventCache bounds the appenders' per-task cache; past it the cache
// starts over (it is rebuilt from the files).
const maxEventCache = 256

var _ EventStore = (*Filesystem)(nil)

// eventCache is the appenders' knowledge of event files, guarded by mu
// (appends of one task are also serialised by its stripe lock).
type eventCache struct {
	mu    sync.Mutex
	tasks map[string]*eventFileState
	// changed is closed (and replaced) by every append of this process.
	changed chan struct{}
}

// EventsChanged returns a channel that is closed at the next append of
// events by this process (to any task): readers in the same process (the
// API's event streams in serve mode) wake at once instead of at their
// next poll. Appends by other processes are seen by polling.
func (f *Filesystem) EventsChanged() <-chan struct{} {
	f.events.mu.Lock()
	defer f.events.mu.Unlock()
	if f.events.changed == nil {
		f.events.changed = make(chan struct{})
	}
	return f.events.changed
}

// eventFileState is what the file of one task held up to off.
type eventFileState struct {
	ino   uint64
	off   int64
	tally EventTally
}

func (f *Filesystem) eventsPath(id string) string {
	return filepath.Join(f.eventsDir, id+eventFileExt)
}

// AppendEvents appends events to the task's stream. See EventStore.
func (f *Filesystem) AppendEvents(ctx context.Context, taskID string, events []Event) error {
	events, err := PrepareEvents(taskID, events)
	if err != nil {
		return err
	}
	if err := f.usable(ctx); err != nil {
		return err
	}
	if len(events) == 0 {
		return nil
	}
	unlock, err := f.lock(ctx, taskID)
	if err != nil {
		return err
	}
	defer unlock()
	switch _, err := os.Lstat(f.path(taskID)); {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%w: %s (events not stored)", ErrNotFound, taskID)
	case err != nil:
		return unavailable("stat task "+taskID, err)
	}
	path := f.eventsPath(taskID)
	fh, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return unavailable("open events of "+taskID, err)
	}
	defer fh.Close()
	st, err := f.eventState(taskID, fh)
	if err != nil {
		return err
	}
	now := time.Now()
	var buf bytes.Buffer
	// tally counts on a copy, its Keys holding this batch's keys only: a
	// failed write leaves the cached state as it was.
	tally := st.tally
	tally.Keys = map[string]bool{}
	for i := range events {
		e := &events[i]
		if st.tally.Keys[e.Key] || !tally.Admit(e, now) {
			continue
		}
		line, err := EncodeEvent(*e)
		if err != nil {
			return fmt.Errorf("storage: encode event of task %s: %w", taskID, err)
		}
		buf.Write(line)
		buf.WriteByte('\n')
	}
	if buf.Len() == 0 {
		return nil
	}
	if _, err := fh.Write(buf.Bytes()); err != nil {
		f.dropEventState(taskID)
		return unavailable("append events of "+taskID, err)
	}
	if st.tally.Keys == nil {
		st.tally.Keys = map[string]bool{}
	}
	for k := range tally.Keys {
		st.tally.Keys[k] = true
	}
	tally.Keys = st.tally.Keys
	st.tally = tally
	st.off += int64(buf.Len())
	f.events.mu.Lock()
	if f.events.changed != nil {
		close(f.events.changed)
		f.events.changed = nil
	}
	f.events.mu.Unlock()
	return nil
}

// eventState returns the cached state of id's event file, brought up to
// date with what fh (open on it) holds. The caller holds id's lock.
func (f *Filesystem) eventState(id string, fh *os.File) (*eventFileState, error) {
	fi, err := fh.Stat()
	if err != nil {
		return nil, unavailable("stat events of "+id, err)
	}
	f.events.mu.Lock()
	st := f.events.tasks[id]
	f.events.mu.Unlock()
	if st == nil || st.ino != inodeOf(fi) || st.off > fi.Size() {
		st = &eventFileState{ino: inodeOf(fi)}
	}
	if fi.Size() > st.off {
		data := make([]byte, fi.Size()-st.off)
		n, err := fh.ReadAt(data, st.off)
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, unavailable("read events of "+id, err)
		}
		data = data[:n]
		end := bytes.LastIndexByte(data, '\n') + 1
		if end < len(data) {
			// A torn line (a crashed writer): end it so the next line
			// starts on its own.
			if _, err := fh.Write([]byte{'\n'}); err != nil {
				return nil, unavailable("append events of "+id, err)
			}
			end = len(data) + 1
		}
		for _, line := range bytes.Split(data[:min(end, len(data))], []byte{'\n'}) {
			e, err := DecodeEvent(id, line)
			if err != nil {
				continue
			}
			if st.tally.Keys == nil {
				st.tally.Keys = map[string]bool{}
			}
			st.tally.Keys[e.Key] = true
			st.tally.Seq = max(st.tally.Seq, e.Seq)
			st.tally.Count++
			st.tally.Bytes += EventLineBytes(e)
		}
		st.off += int64(end)
	}
	f.events.mu.Lock()
	if len(f.events.tasks) >= maxEventCache {
		clear(f.events.tasks)
	}
	f.events.tasks[id] = st
	f.events.mu.Unlock()
	return st, nil
}

func (f *Filesystem) dropEventState(id string) {
	f.events.mu.Lock()
	delete(f.events.tasks, id)
	f.events.mu.Unlock()
}

// readEvents parses the complete lines of id's event file (nil if none).
func (f *Filesystem) readEvents(id string) ([]Event, error) {
	data, err := os.ReadFile(f.eventsPath(id))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, unavailable("read events of "+id, err)
	}
	data = data[:bytes.LastIndexByte(data, '\n')+1]
	var out []Event
	for len(data) > 0 {
		i := bytes.IndexByte(data, '\n')
		if e, err := DecodeEvent(id, data[:i]); err == nil {
			out = append(out, e)
		}
		data = data[i+1:]
	}
	return out, nil
}

// ListEvents returns the task's events after afterSeq. See EventStore.
func (f *Filesystem) ListEvents(ctx context.Context, taskID string, afterSeq int64, limit int) ([]Event, error) {
	if err := ValidateID(taskID); err != nil {
		return nil, err
	}
	if err := f.usable(ctx); err != nil {
		return nil, err
	}
	all, err := f.readEvents(taskID)
	if err != nil {
		return nil, err
	}
	// Lines are in Seq order: find the first after afterSeq.
	i, _ := slices.BinarySearchFunc(all, afterSeq+1, func(e Event, seq int64) int {
		switch {
		case e.Seq < seq:
			return -1
		case e.Seq > seq:
			return 1
		}
		return 0
	})
	all = all[i:]
	if limit = EventLimit(limit); len(all) > limit {
		all = all[:limit]
	}
	return append(make([]Event, 0, len(all)), all...), nil
}

// ListRecentEvents returns every task's events appended since since. It
// reads only the files modified since then. See EventStore.
func (f *Filesystem) ListRecentEvents(ctx context.Context, since time.Time, limit int) ([]Event, error) {
	if err := f.usable(ctx); err != nil {
		return nil, err
	}
	ents, err := readDir(f.eventsDir)
	if err != nil {
		return nil, unavailable("list events", err)
	}
	var out []Event
	for _, ent := range ents {
		id, ok := strings.CutSuffix(ent.Name(), eventFileExt)
		if !ok || !isCanonicalUUID(id) {
			continue
		}
		fi, err := ent.Info()
		// Appends set the mtime; a second of slack covers filesystems with
		// coarse timestamps.
		if err != nil || fi.ModTime().Before(since.Add(-time.Second)) {
			continue
		}
		evs, err := f.readEvents(id)
		if err != nil {
			return nil, err
		}
		for _, e := range evs {
			if !e.Time.Before(since) {
				out = append(out, e)
			}
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
	slices.SortFunc(out, CompareEvents)
	if limit = EventLimit(limit); len(out) > limit {
		out = out[:limit]
	}
	return append(make([]Event, 0, len(out)), out...), nil
}

// deleteEventsLocked removes a task's event file. The caller holds the
// task's lock.
func (f *Filesystem) deleteEventsLocked(id string) error {
	f.dropEventState(id)
	if err := os.Remove(f.eventsPath(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return unavailable("delete events of task "+id, err)
	}
	return nil
}
