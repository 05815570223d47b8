package migrate

import (
	"context"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
)

// counters are one pass's live statistics: the pass's goroutines add to
// them while the progress lines read them.
type counters struct {
	checked, copied, skipped, resumed, audit, deleted atomic.Int64
}

func (c *counters) stats(pass int, kind string, d time.Duration) PassStats {
	return PassStats{
		Pass: pass, Kind: kind, Checked: int(c.checked.Load()), Copied: int(c.copied.Load()),
		Skipped: int(c.skipped.Load()), Resumed: int(c.resumed.Load()), AuditCopied: int(c.audit.Load()),
		Deleted: int(c.deleted.Load()), Duration: d,
	}
}

// addSync counts what syncRecord did; a task found identical counts as
// skipped only in the full pass (full), the only one that reports it.
func (c *counters) addSync(r syncResult, full bool) {
	c.audit.Add(int64(r.audit))
	switch {
	case r.copied:
		c.copied.Add(1)
	case r.identical && full:
		c.skipped.Add(1)
	}
}

// pass runs one full or delta pass over the source's current IDs.
func (m *migration) pass(ctx context.Context, n int, kind string, rep *Report) (PassStats, error) {
	start := time.Now()
	ids, err := m.ids(ctx, m.src, "source")
	if err != nil {
		return PassStats{}, err
	}
	// The source's own order, not sorted: a filesystem lists its
	// directory in hash order, and creating the target's files in that
	// order (the same hash on the same filesystem) touches the target
	// directory's blocks in sequence; sorted IDs are random in hash
	// order and made each create dirty another directory block for the
	// next fsync (audit appends took 40% more CPU than the raw insert's).
	var c counters
	stopProgress := m.progress(n, kind, len(ids), &c, start)
	err = m.copyAll(ctx, ids, kind == PassFull, &c)
	if err == nil {
		// Tasks this migration copied that are gone from the source.
		err = m.each(ctx, m.goneIDs(ids), func(ctx context.Context, id string) error {
			return m.gone(ctx, id, &c)
		})
	}
	st := c.stats(n, kind, time.Since(start))
	stopProgress(st, err == nil)
	if err != nil {
		return st, err
	}
	m.addPass(rep, st)
	m.checkpoint(false)
	return st, nil
}

// goneIDs are the known ids (copied by this migration) missing from ids.
func (m *migration) goneIDs(ids []string) []string {
	m.mu.Lock()
	known := make([]string, 0, len(m.known))
	for id := range m.known {
		known = append(known, id)
	}
	m.mu.Unlock()
	return extras(ids, known)
}

// copyAll brings the source records ids over, in two stages joined by a
// short queue: Options.Concurrency goroutines read the source (readToSync)
// and as many write what the target lacks (syncRecord). The writes wait
// on the target's commits (fsyncs, round trips); reading ahead meanwhile
// keeps the writers from waiting on the source as well, so a pass costs
// about what writing alone costs.
func (m *migration) copyAll(ctx context.Context, ids []string, full bool, c *counters) error {
	type toSync struct {
		id string
		s  record
	}
	conc := m.opts.Concurrency
	queue := make(chan toSync, 2*conc)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		defer close(queue) // forEach returns once its goroutines did
		return forEach(gctx, conc, ids, func(ctx context.Context, id string) error {
			s, ok, err := m.readToSync(ctx, id, full, c)
			switch {
			case err != nil:
				return err
			case ok:
				select {
				case queue <- toSync{id, s}:
				case <-ctx.Done():
					return context.Cause(ctx)
				}
			default:
				c.checked.Add(1)
			}
			if full && m.opts.Throttle > 0 {
				return sleep(ctx, m.opts.Throttle)
			}
			return nil
		})
	})
	for range conc {
		g.Go(func() error {
			for it := range queue {
				if gctx.Err() != nil {
					continue // drain: the readers stop on their own
				}
				_, listed := m.atStart[it.id]
				r, err := m.syncRecord(gctx, it.id, it.s, full && !listed && !m.opts.DryRun)
				if err != nil {
					return err
				}
				c.addSync(r, full)
				c.checked.Add(1)
			}
			return nil
		})
	}
	return g.Wait()
}

// readToSync reads source record id for a pass; ok is true when the target
// may lack something of it (syncRecord is to run). In the full pass a
// record the target is known (from the checkpoint) to hold unchanged is
// skipped without reading the target; in a delta pass one unchanged since
// this migration copied it is skipped. Unchanged is told by the source's
// change stamp where it has one (then the source is not read either), else
// by reading the source and comparing checksums.
func (m *migration) readToSync(ctx context.Context, id string, full bool, c *counters) (record, bool, error) {
	skip := func() (record, bool, error) {
		if full {
			c.skipped.Add(1)
			c.resumed.Add(1)
		}
		return record{}, false, nil
	}
	k, known := m.getKnown(id)
	if known {
		same, err := m.unchanged(ctx, id, k)
		if err != nil {
			return record{}, false, m.recordErr(id, "stat source", err)
		}
		if same {
			return skip()
		}
	}
	s, ok, err := m.readSource(ctx, id, c)
	if !ok {
		return s, false, err
	}
	if known && k.state == s.state {
		m.setKnown(id, s.known()) // the new stamp: the next pass need not read it
		return skip()
	}
	return s, true, nil
}

// readSource reads source record id for a pass or the verification. ok
// is false when there is nothing more to do for id: the read failed (a
// mismatch, or a fatal err) or the source no longer has it (see gone).
func (m *migration) readSource(ctx context.Context, id string, c *counters) (s record, ok bool, err error) {
	s, found, err := m.read(ctx, m.src, id)
	if err != nil {
		return s, false, m.recordErr(id, "read source", err)
	}
	if !found {
		return s, false, m.gone(ctx, id, c)
	}
	return s, true, nil
}

type syncResult struct {
	copied    bool // the task was (or would be) written
	identical bool // the target already held the task
	audit     int  // audit entries appended (or that would be)
}

// syncRecord writes what the target lacks of source record s: missing
// audit entries first (so that the Put does not make the target append its
// own entry under an ID the source has), then the task if its checksum
// differs. A target version higher than the source's is a mismatch, and
// nothing is written.
//
// With absent set (the full pass, for an id the target did not list at
// the start) the target is not read: it is taken to hold neither the task
// nor audit entries, and everything is written. That halves a fresh
// target's reads (on a database, its round trips) and stays safe if the
// assumption is wrong: Put never overwrites a newer version, AppendAudit
// keeps an entry whose ID is already there, and the verification, which
// reads the target, reports what differs.
func (m *migration) syncRecord(ctx context.Context, id string, s record, absent bool) (syncResult, error) {
	var r syncResult
	var d record
	dfound := false
	if !absent {
		var err error
		if d, dfound, err = m.read(ctx, m.dst, id); err != nil {
			return r, m.recordErr(id, "read target", err)
		}
	}
	if dfound && d.task.Version > s.task.Version {
		m.setIssue(id, reasonNewer(s, d))
		return r, nil
	}
	missing, differ := auditDiff(s, d)
	needTask := !dfound || d.sum != s.sum
	r.copied, r.identical, r.audit = needTask, !needTask, len(missing)
	if !m.opts.DryRun {
		wctx := m.wctx(ctx, Actor)
		for _, e := range missing {
			if err := m.call(ctx, func() error { return m.dst.AppendAudit(wctx, e) }); err != nil {
				return syncResult{}, m.recordErr(id, "append audit entry "+e.ID+" to target", err)
			}
		}
		if needTask {
			if err := m.call(ctx, func() error { return m.dst.Put(wctx, s.task) }); err != nil {
				return syncResult{}, m.recordErr(id, "write target", err)
			}
		}
	}
	if len(differ) > 0 {
		m.setIssue(id, reasonAuditDiffers(differ))
		return r, nil
	}
	m.setIssue(id, "")
	if !m.opts.DryRun {
		m.setKnown(id, s.known())
	}
	return r, nil
}

// gone handles a known id the source no longer has: the target's copy is
// deleted if it is still what this migration copied. A task the target
// held before the migration began is never deleted.
func (m *migration) gone(ctx context.Context, id string, c *counters) error {
	k, ok := m.getKnown(id)
	if !ok {
		return nil
	}
	if m.preExisting[id] {
		m.dropKnown(id)
		return nil
	}
	d, dfound, err := m.read(ctx, m.dst, id)
	if err != nil {
		return m.recordErr(id, "read target", err)
	}
	if !dfound {
		m.dropKnown(id)
		return nil
	}
	if d.sum != k.task {
		m.setIssue(id, "deleted from the source during the migration, but the target's copy changed since it was copied: left in place")
		return nil
	}
	if !m.opts.DryRun {
		if err := m.call(ctx, func() error { return m.dst.Delete(m.wctx(ctx, Actor), id) }); err != nil {
			return m.recordErr(id, "delete from target", err)
		}
		m.dropKnown(id)
	}
	m.setIssue(id, "")
	c.deleted.Add(1)
	return nil
}

// finishDryRun fills the counts of a dry run.
func (m *migration) finishDryRun(ctx context.Context, rep *Report) error {
	srcIDs, err := m.ids(ctx, m.src, "source")
	if err != nil {
		return err
	}
	dstIDs, err := m.ids(ctx, m.dst, "target")
	if err != nil {
		return err
	}
	rep.Source, rep.Target = len(srcIDs), len(dstIDs)
	rep.TargetExtra = extras(srcIDs, dstIDs)
	return nil
}
