package storage

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// Event is one entry of a task's live event stream (GET /tasks/{id}/events
// and GET /events): a status/progress transition, a step starting,
// finishing or failing an attempt, or a batch of a running step's output
// lines. Producers (the projection and Nushell activities, the API's
// create) append events to the store, so the stream works whatever process
// the API and the workers run in.
//
// Fields other than TaskID, Seq, Key, Type and Time are set by type; the
// others are left empty (and omitted from JSON).
type Event struct {
	// TaskID is the task's id.
	TaskID string `json:"task_id"`
	// Seq is the event's position in its task's stream, from 1, assigned
	// by the store on append (the SSE id of GET /tasks/{id}/events).
	Seq int64 `json:"seq"`
	// Key makes appends idempotent: a second append of a key the task
	// already has is dropped, so retried producers never duplicate an
	// event. See the *EventKey functions.
	Key string `json:"key"`
	// Type is one of the Event* constants.
	Type string `json:"type"`
	// Time is when the store appended the event (UTC); a producer's value
	// is ignored.
	Time time.Time `json:"time"`

	// Status, Version, Progress, WorkflowType, Infra and Steps describe a
	// transition (EventTransition): the task's snapshot of that version.
	Status       TaskStatus  `json:"status,omitempty"`
	Version      int64       `json:"version,omitempty"`
	Progress     *Progress   `json:"progress,omitempty"`
	WorkflowType string      `json:"workflow_type,omitempty"`
	Infra        string      `json:"infra,omitempty"`
	Steps        []StepState `json:"steps,omitempty"`

	// Step and Attempt name the step attempt of step and output events.
	Step    string `json:"step,omitempty"`
	Attempt int    `json:"attempt,omitempty"`
	// ExitCode is the attempt's exit status (step_finished,
	// step_attempt_failed) when the process ran.
	ExitCode *int `json:"exit_code,omitempty"`
	// Error is the failure message (transition to Failed, a failed step or
	// attempt).
	Error string `json:"error,omitempty"`
	// Retrying (step_attempt_failed) reports whether Temporal will run
	// another attempt, as far as the worker can tell from the retry policy.
	Retrying *bool `json:"retrying,omitempty"`
	// Stream is "stdout" or "stderr" (output events).
	Stream string `json:"stream,omitempty"`
	// Lines are output lines without their newline, each at most
	// MaxEventLineBytes (output events).
	Lines []string `json:"lines,omitempty"`
	// Message is a human-readable note (output_truncated).
	Message string `json:"message,omitempty"`
}

// StepState is a step's status inside a transition event.
type StepState struct {
	Name     string     `json:"name"`
	Status   TaskStatus `json:"status"`
	Attempts int32      `json:"attempts"`
}

// Event types.
const (
	// EventTransition: the task's projected snapshot changed (status,
	// progress, steps); one per task version.
	EventTransition = "transition"
	// EventStepStarted: an attempt of a step started running.
	EventStepStarted = "step_started"
	// EventStepFinished: a step ended for good (Completed, Failed or
	// Cancelled): Status holds which.
	EventStepFinished = "step_finished"
	// EventStepAttemptFailed: an attempt failed; Retrying says whether
	// another follows.
	EventStepAttemptFailed = "step_attempt_failed"
	// EventOutput: lines a running step printed.
	EventOutput = "output"
	// EventOutputTruncated: the attempt's live output reached its bound;
	// no more output events follow for it (the full output is kept at
	// GET /tasks/{id}/steps/{step}/output).
	EventOutputTruncated = "output_truncated"
)

// Bounds of event streams.
const (
	// MaxEventLineBytes bounds one output line in an event; a longer line
	// is cut (at a UTF-8 boundary) and ends with "…".
	MaxEventLineBytes = 4 << 10
	// MaxEventsPerAppend bounds one AppendEvents call.
	MaxEventsPerAppend = 1000
	// MaxTaskEvents and MaxTaskEventBytes bound what a task's stream keeps
	// of output events: once a task holds this many events, or this many
	// bytes of output lines, further output events are dropped (the other
	// types are always kept; they are bounded by the task's versions and
	// steps).
	MaxTaskEvents     = 20000
	MaxTaskEventBytes = 32 << 20
	// MaxEventKeyBytes bounds Event.Key.
	MaxEventKeyBytes = 512
)

// ErrInvalidEvent reports an event that cannot be stored (no key, unknown
// type, bad step name).
var ErrInvalidEvent = errors.New("invalid event")

// EventStore is the optional capability of a Store to keep each task's
// live event stream. Both built-in backends implement it; callers check
// with a type assertion.
//
// Events belong to their task: AppendEvents refuses a task that is not
// stored (ErrNotFound) and Store.Delete removes the task's events.
type EventStore interface {
	// AppendEvents appends events to the task's stream in order, assigning
	// each the next Seq and the store's time; an event whose Key the task
	// already has is skipped (idempotent), as are output events beyond the
	// task's bounds (MaxTaskEvents, MaxTaskEventBytes). Safe for
	// concurrent use by several processes. Errors: ErrInvalidID,
	// ErrInvalidEvent, ErrNotFound (no such task), ErrUnavailable.
	AppendEvents(ctx context.Context, taskID string, events []Event) error
	// ListEvents returns up to limit (1..MaxEventsPerAppend; 0 means
	// MaxEventsPerAppend) of the task's events with Seq > afterSeq,
	// ascending; empty (non-nil) when there are none or no such task.
	ListEvents(ctx context.Context, taskID string, afterSeq int64, limit int) ([]Event, error)
	// ListRecentEvents returns events of every task appended at or after
	// since, ordered by (Time, TaskID, Seq), at most limit (0 means
	// MaxEventsPerAppend) of the oldest of them. The global stream polls
	// it with a short look-back and drops what it has sent already.
	ListRecentEvents(ctx context.Context, since time.Time, limit int) ([]Event, error)
}

// Event keys: one per event a producer may append more than once.

// TransitionEventKey is the key of the transition to version.
func TransitionEventKey(version int64) string { return fmt.Sprintf("transition/%d", version) }

// StepStartedEventKey is the key of an attempt's step_started event.
func StepStartedEventKey(step string, attempt int) string {
	return fmt.Sprintf("step/%d/%s/started", attempt, step)
}

// StepFinishedEventKey is the key of a step's step_finished event (a step
// finishes once).
func StepFinishedEventKey(step string) string { return "step/" + step + "/finished" }

// StepAttemptFailedEventKey is the key of an attempt's failure event.
func StepAttemptFailedEventKey(step string, attempt int) string {
	return fmt.Sprintf("step/%d/%s/failed", attempt, step)
}

// OutputEventKey is the key of the chunk-th output batch of an attempt.
func OutputEventKey(step string, attempt, chunk int) string {
	return fmt.Sprintf("output/%d/%d/%s", attempt, chunk, step)
}

// OutputTruncatedEventKey is the key of an attempt's output_truncated event.
func OutputTruncatedEventKey(step string, attempt int) string {
	return fmt.Sprintf("output/%d/truncated/%s", attempt, step)
}

// PrepareEvents checks a batch for AppendEvents (ErrInvalidID,
// ErrInvalidEvent) and returns copies with TaskID set, output lines made
// valid UTF-8 and cut to MaxEventLineBytes, and Seq and Time cleared.
func PrepareEvents(taskID string, events []Event) ([]Event, error) {
	if err := ValidateID(taskID); err != nil {
		return nil, err
	}
	if len(events) > MaxEventsPerAppend {
		return nil, fmt.Errorf("%w: %d events in one append (at most %d)", ErrInvalidEvent, len(events), MaxEventsPerAppend)
	}
	out := make([]Event, len(events))
	for i, e := range events {
		if e.Key == "" || len(e.Key) > MaxEventKeyBytes || !utf8.ValidString(e.Key) {
			return nil, fmt.Errorf("%w: key must be 1 to %d bytes of UTF-8", ErrInvalidEvent, MaxEventKeyBytes)
		}
		switch e.Type {
		case EventTransition, EventStepStarted, EventStepFinished, EventStepAttemptFailed, EventOutput, EventOutputTruncated:
		default:
			return nil, fmt.Errorf("%w: unknown type %q", ErrInvalidEvent, e.Type)
		}
		if e.Step != "" && (len(e.Step) > MaxStepNameBytes || !utf8.ValidString(e.Step)) {
			return nil, fmt.Errorf("%w: step name must be at most %d bytes of UTF-8", ErrInvalidEvent, MaxStepNameBytes)
		}
		e.TaskID, e.Seq, e.Time = taskID, 0, time.Time{}
		e.Error = strings.ToValidUTF8(e.Error, "\uFFFD")
		e.Message = strings.ToValidUTF8(e.Message, "\uFFFD")
		if e.Lines != nil {
			lines := make([]string, len(e.Lines))
			for j, l := range e.Lines {
				lines[j] = CutLine(l)
			}
			e.Lines = lines
		}
		out[i] = e
	}
	return out, nil
}

// CutLine makes line valid UTF-8 and, when longer than MaxEventLineBytes,
// cuts it at a character boundary and marks the cut with "…".
func CutLine(line string) string {
	line = strings.ToValidUTF8(line, "\uFFFD")
	if len(line) <= MaxEventLineBytes {
		return line
	}
	cut := MaxEventLineBytes - len("…")
	for cut > 0 && !utf8.RuneStart(line[cut]) {
		cut--
	}
	return line[:cut] + "…"
}

// EventLineBytes is what an event counts against MaxTaskEventBytes: the
// bytes of its output lines.
func EventLineBytes(e Event) int {
	n := 0
	for _, l := range e.Lines {
		n += len(l)
	}
	return n
}

// EventLimit is the limit ListEvents and ListRecentEvents apply: 0 or
// negative means MaxEventsPerAppend, and more is clamped to it.
func EventLimit(limit int) int {
	if limit <= 0 || limit > MaxEventsPerAppend {
		return MaxEventsPerAppend
	}
	return limit
}

// EventTally is what a backend knows about a task's stream when it
// appends: the last Seq, the keys present, and the output it holds.
// Backends call Admit for each prepared event in order.
type EventTally struct {
	Seq    int64
	Keys   map[string]bool
	Count  int
	Bytes  int
	Output int // output events dropped for the task's bounds (not persisted)
}

// Admit decides whether e is appended (a new key within bounds); if so it
// assigns e's Seq and Time, counts it, records its key (Keys must be
// non-nil), and returns true.
func (t *EventTally) Admit(e *Event, now time.Time) bool {
	if t.Keys[e.Key] {
		return false
	}
	if e.Type == EventOutput && (t.Count >= MaxTaskEvents || t.Bytes+EventLineBytes(*e) > MaxTaskEventBytes) {
		t.Output++
		return false
	}
	t.Seq++
	t.Count++
	t.Bytes += EventLineBytes(*e)
	t.Keys[e.Key] = true
	e.Seq, e.Time = t.Seq, now.UTC()
	return true
}

// CompareEvents orders events as ListRecentEvents returns them: by Time,
// then TaskID, then Seq.
func CompareEvents(a, b Event) int {
	if c := a.Time.Compare(b.Time); c != 0 {
		return c
	}
	if c := cmp.Compare(a.TaskID, b.TaskID); c != 0 {
		return c
	}
	return cmp.Compare(a.Seq, b.Seq)
}

// EncodeEvent and DecodeEvent are the stored form of an event (one JSON
// document), shared by the backends.
func EncodeEvent(e Event) ([]byte, error) { return json.Marshal(e) }

// DecodeEvent decodes a stored event and checks it belongs to taskID.
func DecodeEvent(taskID string, doc []byte) (Event, error) {
	var e Event
	if err := json.Unmarshal(doc, &e); err != nil {
		return Event{}, err
	}
	if e.TaskID != taskID || e.Seq < 1 {
		return Event{}, fmt.Errorf("event of task %q seq %d stored under task %s", e.TaskID, e.Seq, taskID)
	}
	e.Time = e.Time.UTC()
	return e, nil
}

// TaskInfra returns the value after "--infra" in a task's Args ("" when
// absent): the infra a provisioning task works on.
func TaskInfra(t Task) string {
	for i := 0; i+1 < len(t.Args); i++ {
		if t.Args[i] == "--infra" {
			return t.Args[i+1]
		}
	}
	return ""
}

// TransitionEvents are the events a stored snapshot t stands for: its
// transition (key TransitionEventKey(t.Version)) followed by a
// step_finished event for each step that is finished in t. Appending them
// after every projection is idempotent: a step's step_finished is appended
// once, by the first snapshot that shows it finished.
func TransitionEvents(t Task) []Event {
	p := t.Progress
	tr := Event{
		Key: TransitionEventKey(t.Version), Type: EventTransition, Status: t.Status, Version: t.Version,
		Progress: &p, WorkflowType: t.WorkflowType, Infra: TaskInfra(t),
	}
	if t.Status == StatusFailed && t.Error != nil {
		tr.Error = lastLines(*t.Error, 4<<10)
	}
	var finished []Event
	for _, s := range t.Steps {
		tr.Steps = append(tr.Steps, StepState{Name: s.Name, Status: s.Status, Attempts: s.Attempts})
		if !s.Status.Terminal() || s.Name == "" {
			continue
		}
		ev := Event{Key: StepFinishedEventKey(s.Name), Type: EventStepFinished, Step: s.Name,
			Attempt: int(s.Attempts), Status: s.Status, ExitCode: s.ExitCode}
		if s.Status != StatusCompleted {
			ev.Error = lastLines(s.Error, 4<<10)
		}
		finished = append(finished, ev)
	}
	// The step events come first: a client that ends its stream at the
	// task's terminal transition has seen every step end by then.
	return append(finished, tr)
}

// lastLines is s's last max bytes, at a UTF-8 boundary.
func lastLines(s string, max int) string {
	if len(s) <= max {
		return s
	}
	s = s[len(s)-max:]
	for len(s) > 0 && !utf8.RuneStart(s[0]) {
		s = s[1:]
	}
	return s
}

// AppendTransition appends the events of the stored snapshot t
// (TransitionEvents) to s's stream of t, if s keeps events (EventStore);
// it returns nil for stores that do not.
func AppendTransition(ctx context.Context, s Store, t Task) error {
	es, ok := s.(EventStore)
	if !ok {
		return nil
	}
	return es.AppendEvents(ctx, t.ID, TransitionEvents(Normalize(t)))
}
