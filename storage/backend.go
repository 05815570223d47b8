package storage

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"
)

// The helpers below hold what every backend's Store methods do around
// their own I/O: checking and normalising what comes in, building the
// audit entries Create and Put append, and shaping List's and ListAudit's
// results. The filesystem backend (this package) and the SurrealDB backend
// (package storage/surrealdb) both call them, so the backends cannot drift
// apart on what they accept, what they record, or how they page.

// PrepareWrite is what Create and Put do before they touch storage: it
// rejects an invalid ID (ErrInvalidID), normalizes t, and encodes it as
// the JSON document backends store (DecodeTask reads it back). It returns
// the normalized task and its document.
func PrepareWrite(t Task) (Task, []byte, error) {
	if err := ValidateID(t.ID); err != nil {
		return Task{}, nil, err
	}
	t = Normalize(t)
	doc, err := json.Marshal(t)
	if err != nil {
		return Task{}, nil, fmt.Errorf("storage: encode task %s: %w", t.ID, err)
	}
	return t, doc, nil
}

// DecodeTask decodes a task document as PrepareWrite encoded it, checks
// that it is the task stored under id, and normalizes it. Its errors say
// only what is wrong with the document: callers wrap them with ErrCorrupt
// and where they found it (a file, a database record).
func DecodeTask(id string, doc []byte) (Task, error) {
	var t Task
	if err := json.Unmarshal(doc, &t); err != nil {
		return Task{}, err
	}
	if t.ID != id {
		return Task{}, fmt.Errorf("content has id %q", t.ID)
	}
	return Normalize(t), nil
}

// CreateAuditEntry is the AuditCreate entry that Create appends for the
// normalized task t, with the actor from ctx.
func CreateAuditEntry(ctx context.Context, t Task) AuditEntry {
	return AuditEntry{
		ID: AuditCreateID(t.ID), TaskID: t.ID, Time: auditTime(t), Actor: ActorFrom(ctx),
		Action: AuditCreate, After: t.Status, Version: t.Version,
	}
}

// TransitionAuditEntry is the AuditTransition entry that a Put of the
// normalized task t appends when the stored status was before ("": no task
// stored), with the actor from ctx. A backend that learns the stored status
// only inside its own transaction passes "" and substitutes it there.
func TransitionAuditEntry(ctx context.Context, t Task, before TaskStatus) AuditEntry {
	return AuditEntry{
		ID: AuditTransitionID(t.ID, t.Version), TaskID: t.ID, Time: auditTime(t), Actor: ActorFrom(ctx),
		Action: AuditTransition, Before: before, After: t.Status, Version: t.Version,
	}
}

// auditTime is the time of a Create's or Put's entry: when the transition
// happened in the workflow (UpdatedAt), so that a retried or delayed
// projection records the same time; now if the task carries no time.
func auditTime(t Task) time.Time {
	switch {
	case !t.UpdatedAt.IsZero():
		return t.UpdatedAt
	case !t.CreatedAt.IsZero():
		return t.CreatedAt
	}
	return time.Now().UTC()
}

// PrepareAuditEntry checks and completes an entry for AppendAudit before
// it is stored: e.TaskID must be a valid task id (the task itself need not
// exist) and e.ID non-empty; a zero Time becomes now and an empty Actor
// ActorFrom(ctx).
func PrepareAuditEntry(ctx context.Context, e AuditEntry) (AuditEntry, error) {
	if err := ValidateID(e.TaskID); err != nil {
		return AuditEntry{}, err
	}
	if e.ID == "" {
		return AuditEntry{}, fmt.Errorf("storage: audit entry of task %s has no id", e.TaskID)
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	if e.Actor == "" {
		e.Actor = ActorFrom(ctx)
	}
	return e, nil
}

// PrepareAuditFilter checks a ListAudit filter (a TaskID, when set, must be
// a valid task id) and returns it with the limit ListAudit applies: 0 or
// negative means DefaultAuditLimit.
func PrepareAuditFilter(f AuditFilter) (AuditFilter, error) {
	if f.TaskID != "" {
		if err := ValidateID(f.TaskID); err != nil {
			return AuditFilter{}, err
		}
	}
	if f.Limit <= 0 {
		f.Limit = DefaultAuditLimit
	}
	return f, nil
}

// NewestAudit orders entries as ListAudit returns them, oldest first (Time,
// then ID), and keeps the newest limit of them. entries is sorted in
// place; the result is a new, non-nil slice (an empty trail encodes as [],
// not null) that does not pin the rest of entries.
func NewestAudit(entries []AuditEntry, limit int) []AuditEntry {
	slices.SortFunc(entries, compareAudit)
	if len(entries) > limit {
		entries = entries[len(entries)-limit:]
	}
	return append(make([]AuditEntry, 0, len(entries)), entries...)
}

// compareAudit orders entries oldest first, ties broken by ID.
func compareAudit(a, b AuditEntry) int {
	if c := a.Time.Compare(b.Time); c != 0 {
		return c
	}
	return cmp.Compare(a.ID, b.ID)
}

// Page returns the offset and limit List applies for f: a negative Offset
// is taken as 0, a Limit of 0 (or negative) means DefaultLimit, and one
// above MaxLimit is clamped.
func (f ListFilter) Page() (offset, limit int) {
	limit = f.Limit
	if limit <= 0 {
		limit = DefaultLimit
	}
	return max(f.Offset, 0), min(limit, MaxLimit)
}
