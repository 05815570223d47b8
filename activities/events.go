package activities

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.temporal.io/sdk/activity"

	"github.com/provisioning/orchestrator/storage"
)

// Bounds of the live output a running step streams as events (see
// liveOutput). The step's full captured output is kept apart
// (storage.StepOutputStore); the live stream is a bounded tail for
// watchers.
const (
	// LiveFlushInterval is the shortest time between two flushes of an
	// attempt's output lines to the store: a line printed after a quiet
	// spell is flushed at once, a burst is batched.
	LiveFlushInterval = 200 * time.Millisecond
	// LiveFlushTimeout bounds one flush: a slow or unavailable store
	// loses live events, never step time.
	LiveFlushTimeout = 2 * time.Second
	// LiveDrainTimeout bounds how long a finished attempt waits for its
	// last events to be stored before it returns its result (they are
	// stored before the workflow's next projection unless the store is
	// that slow).
	LiveDrainTimeout = time.Second
	// LiveMaxLinesPerEvent caps the lines of one output event.
	LiveMaxLinesPerEvent = 200
	// LiveMaxLines and LiveMaxBytes cap the output lines streamed per
	// attempt (both streams together); past them one output_truncated
	// event is appended and the rest is only in the stored output.
	LiveMaxLines = 2000
	LiveMaxBytes = 256 << 10
)

// LiveEventsDropped counts live events (output batches, step events) that
// could not be stored because the store failed or was too slow; they are
// dropped, never retried, so the step is not held back.
var LiveEventsDropped atomic.Int64

// liveOutput turns an attempt's output, as the Nushell runner taps it,
// into output events: complete lines are queued (within the attempt's
// bounds) and a goroutine appends them to the store at most every
// LiveFlushInterval. Writers never wait for the store.
type liveOutput struct {
	store   storage.EventStore
	taskID  string
	step    string
	attempt int
	log     *slog.Logger

	mu        sync.Mutex
	partial   map[string][]byte // incomplete last line per stream (at most MaxEventLineBytes+1 kept)
	pending   []pendingLine
	lines     int
	bytes     int
	truncated bool // the bound was reached
	noticed   bool // the output_truncated event was queued
	chunk     int

	wake chan struct{}
	stop chan struct{}
	done chan struct{}
}

// pendingLine is a queued output line, or (ev set) a step event, kept in
// the order they happened.
type pendingLine struct {
	stream, text string
	ev           *storage.Event
}

func newLiveOutput(store storage.EventStore, step NuStep, attempt int, log *slog.Logger) *liveOutput {
	l := &liveOutput{
		store: store, taskID: step.TaskID, step: step.Step, attempt: attempt, log: log,
		partial: map[string][]byte{},
		wake:    make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
	}
	go l.run()
	return l
}

// streamWriter is the io.Writer the runner taps one stream into.
type streamWriter struct {
	l      *liveOutput
	stream string
}

func (w streamWriter) Write(p []byte) (int, error) {
	w.l.add(w.stream, p)
	return len(p), nil
}

func (l *liveOutput) writer(stream string) streamWriter { return streamWriter{l: l, stream: stream} }

// add splits p into lines, queueing the complete ones.
func (l *liveOutput) add(stream string, p []byte) {
	l.mu.Lock()
	queued := false
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		part := p
		if i >= 0 {
			part = p[:i]
		}
		buf := l.partial[stream]
		// Beyond the bound the line's rest is dropped; CutLine marks it.
		if room := storage.MaxEventLineBytes + 1 - len(buf); room > 0 {
			buf = append(buf, part[:min(len(part), room)]...)
		}
		l.partial[stream] = buf
		if i < 0 {
			break
		}
		queued = l.queueLocked(stream) || queued
		p = p[i+1:]
	}
	l.mu.Unlock()
	if queued {
		select {
		case l.wake <- struct{}{}:
		default:
		}
	}
}

// queueLocked moves the stream's partial line to the queue, within the
// attempt's bounds, and reports whether the flusher has work.
func (l *liveOutput) queueLocked(stream string) bool {
	line := string(bytes.TrimSuffix(l.partial[stream], []byte{'\r'}))
	l.partial[stream] = l.partial[stream][:0]
	line = storage.CutLine(line)
	if l.truncated || l.lines+1 > LiveMaxLines || l.bytes+len(line) > LiveMaxBytes {
		l.truncated = true
		return !l.noticed
	}
	l.lines++
	l.bytes += len(line)
	l.pending = append(l.pending, pendingLine{stream: stream, text: line})
	return true
}

// run flushes whenever something is queued, at most every
// LiveFlushInterval, and once more when stopped.
func (l *liveOutput) run() {
	defer close(l.done)
	for {
		select {
		case <-l.wake:
		case <-l.stop:
			l.flush()
			return
		}
		l.flush()
		t := time.NewTimer(LiveFlushInterval)
		select {
		case <-t.C:
		case <-l.stop:
			t.Stop()
			l.flush()
			return
		}
	}
}

// event queues a step event behind the output queued so far.
func (l *liveOutput) event(ev storage.Event) {
	l.mu.Lock()
	l.pending = append(l.pending, pendingLine{ev: &ev})
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// finish queues the unterminated last lines and then final (the attempt's
// outcome), and stops the flusher, waiting at most LiveDrainTimeout for
// it to store them. Call it once, after the run ended.
func (l *liveOutput) finish(final ...storage.Event) {
	l.mu.Lock()
	for _, stream := range slices.Sorted(maps.Keys(l.partial)) {
		if len(l.partial[stream]) > 0 {
			l.queueLocked(stream)
		}
	}
	for _, ev := range final {
		l.pending = append(l.pending, pendingLine{ev: &ev})
	}
	l.mu.Unlock()
	close(l.stop)
	t := time.NewTimer(LiveDrainTimeout)
	defer t.Stop()
	select {
	case <-l.done:
	case <-t.C:
		l.log.Debug("live events still being stored; the step's result does not wait for them")
	}
}

// flush appends the queued lines (and the truncation notice, once) as
// events. Best effort: a failure drops them.
func (l *liveOutput) flush() {
	l.mu.Lock()
	pending := l.pending
	l.pending = nil
	var evs []storage.Event
	for len(pending) > 0 {
		if ev := pending[0].ev; ev != nil {
			evs = append(evs, *ev)
			pending = pending[1:]
			continue
		}
		// One event per run of lines of the same stream, at most
		// LiveMaxLinesPerEvent lines each.
		n := 1
		for n < len(pending) && n < LiveMaxLinesPerEvent && pending[n].ev == nil && pending[n].stream == pending[0].stream {
			n++
		}
		lines := make([]string, n)
		for i := range n {
			lines[i] = pending[i].text
		}
		l.chunk++
		evs = append(evs, storage.Event{Key: storage.OutputEventKey(l.step, l.attempt, l.chunk), Type: storage.EventOutput,
			Step: l.step, Attempt: l.attempt, Stream: pending[0].stream, Lines: lines})
		pending = pending[n:]
	}
	if l.truncated && !l.noticed {
		l.noticed = true
		// The notice goes before any step event of this batch (the
		// attempt's end): it is about output printed before that.
		at := len(evs)
		for at > 0 && evs[at-1].Type != storage.EventOutput {
			at--
		}
		evs = slices.Insert(evs, at, storage.Event{Key: storage.OutputTruncatedEventKey(l.step, l.attempt), Type: storage.EventOutputTruncated,
			Step: l.step, Attempt: l.attempt,
			Message: fmt.Sprintf("output truncated after %d lines / %d bytes; full output at GET /tasks/%s/steps/%s/output?attempt=%d",
				l.lines, l.bytes, l.taskID, l.step, l.attempt)})
	}
	l.mu.Unlock()
	appendLive(l.store, l.taskID, evs, l.log)
}

// appendLive appends events best effort, bounded by LiveFlushTimeout.
func appendLive(store storage.EventStore, taskID string, evs []storage.Event, log *slog.Logger) {
	if len(evs) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), LiveFlushTimeout)
	defer cancel()
	if err := store.AppendEvents(ctx, taskID, evs); err != nil {
		LiveEventsDropped.Add(int64(len(evs)))
		log.Debug("live events dropped", "events", len(evs), "error", err)
	}
}

// willRetry reports whether Temporal schedules another attempt after this
// one failed with an error of type errType (non-retryable: nonRetryable),
// as far as the activity's retry policy says.
func willRetry(info activity.Info, errType string, nonRetryable bool) bool {
	if nonRetryable {
		return false
	}
	p := info.RetryPolicy
	if p == nil {
		return true
	}
	if p.MaximumAttempts > 0 && info.Attempt >= p.MaximumAttempts {
		return false
	}
	return !slices.Contains(p.NonRetryableErrorTypes, errType)
}
