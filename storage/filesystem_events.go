package storage

import (
	"bytes"
	"cmp"
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
	// readers indexes event files for ListEvents and ListRecentEvents.
	readers map[string]*eventIndex
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
	delete(f.events.readers, id)
	f.events.mu.Unlock()
}

// eventIndex is what readers know of one event file: where each stored
// line starts and its event's seq and time, up to size bytes. Files only
// grow (appends), so a read parses only what was appended since; a file
// replaced (another inode) or shorter is indexed again.
type eventIndex struct {
	ino   uint64
	size  int64
	lines []eventLine
}

type eventLine struct {
	off  int64
	seq  int64
	time int64 // unix ns
}

// maxEventIndexes bounds the readers' index cache (a few KiB per task);
// past it the cache starts over.
const maxEventIndexes = 1024

// eventLines returns the open event file of id (nil if none), its index
// brought up to date, and the size the index covers (the end of its last
// line). The caller closes the file.
func (f *Filesystem) eventLines(id string) (*os.File, []eventLine, int64, error) {
	fh, err := os.Open(f.eventsPath(id))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil, 0, nil
		}
		return nil, nil, 0, unavailable("read events of "+id, err)
	}
	fi, err := fh.Stat()
	if err != nil {
		fh.Close()
		return nil, nil, 0, unavailable("stat events of "+id, err)
	}
	f.events.mu.Lock()
	idx := f.events.readers[id]
	f.events.mu.Unlock()
	if idx == nil || idx.ino != inodeOf(fi) || idx.size > fi.Size() {
		idx = &eventIndex{ino: inodeOf(fi)}
	}
	if fi.Size() > idx.size {
		data := make([]byte, fi.Size()-idx.size)
		n, err := fh.ReadAt(data, idx.size)
		if err != nil && !errors.Is(err, io.EOF) {
			fh.Close()
			return nil, nil, 0, unavailable("read events of "+id, err)
		}
		data = data[:n]
		// Complete lines only: an append in progress is read next time.
		data = data[:bytes.LastIndexByte(data, '\n')+1]
		// A new slice, so readers holding the old one are not disturbed.
		lines := slices.Clip(idx.lines)
		off := idx.size
		for len(data) > 0 {
			i := bytes.IndexByte(data, '\n')
			if e, err := DecodeEvent(id, data[:i]); err == nil {
				lines = append(lines, eventLine{off: off, seq: e.Seq, time: e.Time.UnixNano()})
			}
			off += int64(i + 1)
			data = data[i+1:]
		}
		idx = &eventIndex{ino: idx.ino, size: off, lines: lines}
		f.events.mu.Lock()
		if len(f.events.readers) >= maxEventIndexes {
			clear(f.events.readers)
		}
		f.events.readers[id] = idx
		f.events.mu.Unlock()
	}
	return fh, idx.lines, idx.size, nil
}

// readLines decodes the events of lines (consecutive, in file order) from
// fh.
func readLines(id string, fh *os.File, lines []eventLine, end int64) ([]Event, error) {
	if len(lines) == 0 {
		return nil, nil
	}
	data := make([]byte, end-lines[0].off)
	n, err := fh.ReadAt(data, lines[0].off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, unavailable("read events of "+id, err)
	}
	data = data[:n]
	out := make([]Event, 0, len(lines))
	for _, l := range lines {
		start := l.off - lines[0].off
		if start >= int64(len(data)) {
			break
		}
		line := data[start:]
		if i := bytes.IndexByte(line, '\n'); i >= 0 {
			line = line[:i]
		}
		if e, err := DecodeEvent(id, line); err == nil {
			out = append(out, e)
		}
	}
	return out, nil
}

// endOf is where the line after lines[i] starts (or the indexed size).
func endOf(lines []eventLine, i int, size int64) int64 {
	if i+1 < len(lines) {
		return lines[i+1].off
	}
	return size
}

// ListEvents returns the task's events after afterSeq, reading only their
// lines. See EventStore.
func (f *Filesystem) ListEvents(ctx context.Context, taskID string, afterSeq int64, limit int) ([]Event, error) {
	if err := ValidateID(taskID); err != nil {
		return nil, err
	}
	if err := f.usable(ctx); err != nil {
		return nil, err
	}
	fh, all, size, err := f.eventLines(taskID)
	if err != nil || fh == nil {
		return []Event{}, err
	}
	defer fh.Close()
	// Lines are in seq order.
	i, _ := slices.BinarySearchFunc(all, afterSeq+1, func(l eventLine, seq int64) int { return cmp.Compare(l.seq, seq) })
	n := min(len(all)-i, EventLimit(limit))
	if n <= 0 {
		return []Event{}, nil
	}
	out, err := readLines(taskID, fh, all[i:i+n], endOf(all, i+n-1, size))
	if err != nil {
		return nil, err
	}
	return out, nil
}

// ListRecentEvents returns every task's events appended since since. It
// reads only the files modified since then, and in them only the lines
// appended since. See EventStore.
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
		fh, lines, size, err := f.eventLines(id)
		if err != nil {
			return nil, err
		}
		if fh == nil {
			continue
		}
		// Times grow along the file (appends hold the task's lock); a
		// clock stepping back only makes this read more than needed.
		i := len(lines)
		for i > 0 && lines[i-1].time >= since.UnixNano() {
			i--
		}
		var evs []Event
		if i < len(lines) {
			evs, err = readLines(id, fh, lines[i:], size)
		}
		fh.Close()
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
