package migrate

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/provisioning/orchestrator/storage"
)

// auditLimit is the ListAudit limit used per task. A task with this many
// entries or more cannot be verified completely and is reported.
const auditLimit = 100_000

// Retry of storage.ErrUnavailable failures (a database restarting).
const (
	retryAttempts = 6
	retryFirst    = 100 * time.Millisecond
	retryMax      = 5 * time.Second
)

// record is one task with its audit trail as read from a store.
type record struct {
	task      storage.Task
	sum       string
	audit     []storage.AuditEntry
	auditSums map[string]string
	state     string
	// stamp: the source's change stamp taken before this record was read
	// ("" none; see storage.ChangeStamper).
	stamp string
}

// known is what the target holds once it holds this (source) record.
func (r record) known() knownRecord {
	return knownRecord{task: r.sum, state: r.state, stamp: r.stamp}
}

// read gets task id and its audit trail from st. found is false when the
// task does not exist (for the target, the audit trail is still read).
func (m *migration) read(ctx context.Context, st storage.Store, id string) (rec record, found bool, err error) {
	var stamp string
	if st == m.src {
		// Before the read: a write in between moves the stamp, and the
		// next pass reads the record again.
		if stamp, err = m.stamp(ctx, id); err != nil {
			return rec, false, err
		}
	}
	defer func() { rec.stamp = stamp }()
	err = m.call(ctx, func() error {
		var gerr error
		rec.task, gerr = st.Get(ctx, id)
		return gerr
	})
	switch {
	case err == nil:
		found = true
	case errors.Is(err, storage.ErrNotFound):
		if st == m.src {
			return rec, false, nil
		}
	default:
		return rec, false, err
	}
	// The audit trail is read after the task: a transition's entry is
	// appended atomically with its write, so the entry of the version just
	// read is already there.
	var audit []storage.AuditEntry
	err = m.call(ctx, func() error {
		var lerr error
		audit, lerr = st.ListAudit(ctx, storage.AuditFilter{TaskID: id, Limit: auditLimit})
		return lerr
	})
	if err != nil {
		return rec, false, fmt.Errorf("audit trail: %w", err)
	}
	return completeRecord(rec.task, found, audit)
}

// completeRecord is the record of task t (found: it exists) with audit
// trail audit, its checksums computed.
func completeRecord(t storage.Task, found bool, audit []storage.AuditEntry) (rec record, _ bool, err error) {
	rec.task, rec.audit = t, audit
	if found {
		if rec.sum, err = Checksum(rec.task); err != nil {
			return rec, false, err
		}
	}
	if len(rec.audit) >= auditLimit {
		return rec, false, fmt.Errorf("audit trail has %d entries or more; cannot migrate it completely", auditLimit)
	}
	rec.auditSums = make(map[string]string, len(rec.audit))
	for _, e := range rec.audit {
		s, err := AuditChecksum(e)
		if err != nil {
			return rec, false, err
		}
		rec.auditSums[e.ID] = s
	}
	rec.state = rec.stateWithout(nil)
	return rec, found, nil
}

// stateWithout is the checksum of the task together with its audit trail
// (oldest first), leaving out the entries skip is true for (nil: none).
func (r record) stateWithout(skip func(storage.AuditEntry) bool) string {
	h := sha256.New()
	h.Write([]byte(r.sum))
	for _, e := range r.audit {
		if skip == nil || !skip(e) {
			fmt.Fprintf(h, "\n%s %s", e.ID, r.auditSums[e.ID])
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// ownEntry reports whether e may be an entry the target appended itself
// when this migration's Put created a task (a transition entry by Actor):
// such entries are in the target's trail and not in the source's.
func ownEntry(e storage.AuditEntry) bool {
	return e.Actor == Actor && e.Action == storage.AuditTransition
}

// stamp is the source's change stamp of id, "" when it has none (not a
// storage.ChangeStamper, Options.IgnoreChangeStamps, or too recent).
func (m *migration) stamp(ctx context.Context, id string) (string, error) {
	if m.stamper == nil {
		return "", nil
	}
	var stamp string
	err := m.call(ctx, func() error {
		var err error
		stamp, err = m.stamper.ChangeStamp(ctx, id)
		return err
	})
	return stamp, err
}

// unchanged reports whether the source record id is still what this
// migration last read of it (k), by its change stamp, without reading it.
func (m *migration) unchanged(ctx context.Context, id string, k knownRecord) (bool, error) {
	if k.stamp == "" || m.stamper == nil {
		return false, nil
	}
	stamp, err := m.stamp(ctx, id)
	return err == nil && stamp == k.stamp, err
}

// prefetched is a target record read ahead by readTargets.
type prefetched struct {
	rec   record
	found bool
	err   error
}

// readTargets reads the target records of ids in one call when the
// target is a storage.BulkReader (a database: one round trip instead of
// two per record); nil otherwise, and the caller reads them one by one.
func (m *migration) readTargets(ctx context.Context, ids []string) (map[string]prefetched, error) {
	br, ok := m.dst.(storage.BulkReader)
	if !ok {
		return nil, nil
	}
	var recs []storage.BulkRecord
	err := m.call(ctx, func() error {
		var err error
		recs, err = br.ReadRecords(ctx, ids, auditLimit)
		return err
	})
	if err != nil {
		return nil, err
	}
	out := make(map[string]prefetched, len(recs))
	for _, r := range recs {
		var p prefetched
		switch {
		case r.Err == nil:
			p.rec, p.found, p.err = completeRecord(r.Task, true, r.Audit)
		case errors.Is(r.Err, storage.ErrNotFound):
			p.rec, p.found, p.err = completeRecord(storage.Task{}, false, r.Audit)
		default:
			p.err = r.Err
		}
		out[r.ID] = p
	}
	return out, nil
}

// recordErr turns a per-record failure into a mismatch (the migration goes
// on with the other records) unless it is fatal: the store stayed
// unavailable through the retries, or ctx is done.
func (m *migration) recordErr(id, what string, err error) error {
	if fatal(err) {
		return fmt.Errorf("%s: task %s: %w", what, id, err)
	}
	m.setIssue(id, fmt.Sprintf("%s: %v", what, err))
	return nil
}

func fatal(err error) bool {
	return errors.Is(err, storage.ErrUnavailable) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// call runs fn, retrying storage.ErrUnavailable with backoff.
func (m *migration) call(ctx context.Context, fn func() error) error {
	delay := retryFirst
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil || !errors.Is(err, storage.ErrUnavailable) || attempt == retryAttempts {
			return err
		}
		m.log.Warn("storage unavailable; retrying", "attempt", attempt, "in", delay, "error", err)
		if serr := sleep(ctx, delay); serr != nil {
			return serr
		}
		delay = min(2*delay, retryMax)
	}
}

// ids lists st's task IDs (side names it in the error).
func (m *migration) ids(ctx context.Context, st storage.Store, side string) ([]string, error) {
	var ids []string
	err := m.call(ctx, func() error {
		var err error
		ids, err = st.IDs(ctx)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list %s tasks: %w", side, err)
	}
	return ids, nil
}

// each runs fn for every id on opts.Concurrency goroutines; the first
// error stops it.
func (m *migration) each(ctx context.Context, ids []string, fn func(ctx context.Context, id string) error) error {
	return forEach(ctx, m.opts.Concurrency, ids, fn)
}

// forEach runs fn for every item on concurrency goroutines; the first
// error stops it.
func forEach[T any](ctx context.Context, concurrency int, items []T, fn func(ctx context.Context, item T) error) error {
	if len(items) == 0 {
		return ctx.Err()
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	ch := make(chan T)
	var wg sync.WaitGroup
	for range min(concurrency, len(items)) {
		wg.Go(func() {
			for it := range ch {
				if err := fn(ctx, it); err != nil {
					cancel(err)
					return
				}
			}
		})
	}
feed:
	for _, it := range items {
		select {
		case ch <- it:
		case <-ctx.Done():
			break feed
		}
	}
	close(ch)
	wg.Wait()
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return nil
}

// sleep waits d or until ctx is done, whichever comes first.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
