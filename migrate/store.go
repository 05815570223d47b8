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
}

// known is what the target holds once it holds this (source) record.
func (r record) known() knownRecord {
	return knownRecord{task: r.sum, state: r.state}
}

// read gets task id and its audit trail from st. found is false when the
// task does not exist (for the target, the audit trail is still read).
func (m *migration) read(ctx context.Context, st storage.Store, id string) (rec record, found bool, err error) {
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
	h := sha256.New()
	h.Write([]byte(rec.sum))
	rec.auditSums = make(map[string]string, len(rec.audit))
	for _, e := range rec.audit {
		s, err := AuditChecksum(e)
		if err != nil {
			return rec, false, err
		}
		rec.auditSums[e.ID] = s
		fmt.Fprintf(h, "\n%s %s", e.ID, s)
	}
	rec.state = hex.EncodeToString(h.Sum(nil))
	return rec, found, nil
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
