package migrate

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/provisioning/orchestrator/storage"
)

// verify reads every record on both sides. A difference that a copy can
// resolve (the source changed since the last pass, an entry missing) is
// copied and checked once more; what still differs is a mismatch.
func (m *migration) verify(ctx context.Context, rep *Report) error {
	start := time.Now()
	m.resetIssues()
	srcIDs, err := m.ids(ctx, m.src, "source")
	if err != nil {
		return err
	}
	var c counters
	var verified atomic.Int64
	n := rep.Passes + 1
	stopProgress := m.progress(n, PassVerify, len(srcIDs), &c, start)
	err = forEach(ctx, m.opts.Concurrency, slices.Collect(slices.Chunk(srcIDs, verifyChunk)), func(ctx context.Context, ids []string) error {
		pre, err := m.readTargets(ctx, ids)
		switch {
		case err != nil && fatal(err):
			return fmt.Errorf("read target: %w", err)
		case err != nil:
			// Read them one by one: each failure becomes that record's.
			m.log.Warn("cannot read target records together; reading them one by one", "error", err)
			pre = nil
		}
		for _, id := range ids {
			p, ok := pre[id]
			if err := m.verifyOne(ctx, id, p, ok, &c, &verified); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		stopProgress(c.stats(n, PassVerify, time.Since(start)), false)
		return err
	}
	// The target's side: the source's tasks must all be there (checked
	// above); anything else must have been there before.
	dstIDs, err := m.ids(ctx, m.dst, "target")
	if err != nil {
		return err
	}
	deletedBefore := c.deleted.Load()
	for _, id := range extras(srcIDs, dstIDs) {
		if err := m.gone(ctx, id, &c); err != nil {
			return err
		}
	}
	if c.deleted.Load() != deletedBefore {
		if dstIDs, err = m.ids(ctx, m.dst, "target"); err != nil {
			return err
		}
	}
	for _, id := range extras(srcIDs, dstIDs) {
		switch {
		case m.preExisting[id]:
			rep.TargetExtra = append(rep.TargetExtra, id)
		case m.hasIssue(id):
		default:
			m.setIssue(id, "in the target but not in the source, and not there before the migration")
		}
	}
	rep.Source, rep.Target = len(srcIDs), len(dstIDs)
	rep.Verified = int(verified.Load())
	if missing := rep.Source - rep.Verified; missing > 0 {
		m.log.Warn("verification: records differ", "count", missing)
	}
	st := c.stats(n, PassVerify, time.Since(start))
	stopProgress(st, true)
	m.addPass(rep, st)
	m.checkpoint(m.issueCount() == 0)
	return nil
}

// verifyChunk is how many records the verification takes at a time: the
// target's side of them is read in one call where the target is a
// storage.BulkReader.
const verifyChunk = 64

// verifyOne compares source record id with its copy: p when pre (read
// ahead), else read now. A difference a copy can fix is copied and
// compared once more.
func (m *migration) verifyOne(ctx context.Context, id string, p prefetched, pre bool, c *counters, verified *atomic.Int64) error {
	defer c.checked.Add(1)
	if !pre {
		p.rec, p.found, p.err = m.read(ctx, m.dst, id)
	}
	if p.err == nil {
		ok, err := m.verifiedByStamp(ctx, id, p.rec, p.found)
		if err != nil {
			return err
		}
		if ok {
			verified.Add(1)
			m.setIssue(id, "")
			return nil
		}
	}
	for attempt := 1; ; attempt++ {
		s, ok, err := m.readSource(ctx, id, c)
		if !ok {
			return err
		}
		d, dfound, err := p.rec, p.found, p.err
		if attempt > 1 {
			d, dfound, err = m.read(ctx, m.dst, id)
		}
		if err != nil {
			return m.recordErr(id, "read target", err)
		}
		reason, fixable := compare(s, d, dfound)
		if reason == "" {
			verified.Add(1)
			m.setIssue(id, "")
			m.setKnown(id, s.known())
			return nil
		}
		if !fixable || attempt > 1 {
			m.setIssue(id, reason)
			return nil
		}
		r, err := m.syncRecord(ctx, id, s, false)
		if err != nil {
			return err
		}
		c.addSync(r, false)
	}
}

// verifiedByStamp reports whether target record d (dfound: it exists) is
// verified as a copy of source record id without reading the source: the
// source's change stamp is still the one of the read this migration
// compared or copied it by (so the source still holds that record), the
// task's checksum is that read's, and so is the checksum of the target's
// audit trail without the entries the target may have appended itself.
// That is what compare checks; false sends the caller to read the source
// and compare.
func (m *migration) verifiedByStamp(ctx context.Context, id string, d record, dfound bool) (bool, error) {
	k, ok := m.getKnown(id)
	if !ok || !dfound || d.sum != k.task {
		return false, nil
	}
	same, err := m.unchanged(ctx, id, k)
	if err != nil && fatal(err) {
		return false, fmt.Errorf("stat source: task %s: %w", id, err)
	}
	return same && d.stateWithout(ownEntry) == k.state, nil
}

// compare returns why target record d (dfound: it exists) differs from
// source record s, "" if it does not, and whether copying can fix it.
func compare(s, d record, dfound bool) (reason string, fixable bool) {
	switch {
	case !dfound:
		return "missing in target", true
	case d.task.Version > s.task.Version:
		return reasonNewer(s, d), false
	case d.sum != s.sum:
		return fmt.Sprintf("content checksum differs: source version %d sha256 %s, target version %d sha256 %s",
			s.task.Version, s.sum[:16], d.task.Version, d.sum[:16]), true
	}
	missing, differ := auditDiff(s, d)
	if len(differ) > 0 {
		return reasonAuditDiffers(differ), false
	}
	if len(missing) > 0 {
		return "audit entries missing in target: " + listIDs(entryIDs(missing)), true
	}
	return "", false
}

// reasonNewer and reasonAuditDiffers are the mismatches no copy can fix;
// a pass (syncRecord) and the verification (compare) report them alike.
func reasonNewer(s, d record) string {
	return fmt.Sprintf("target has version %d, newer than the source's %d: not overwritten", d.task.Version, s.task.Version)
}

func reasonAuditDiffers(ids []string) string {
	return "audit entries differ in target (same ID, other content): " + listIDs(ids)
}

// auditDiff: the source's entries the target lacks (source order), and the
// IDs present on both sides with different content.
func auditDiff(s, d record) (missing []storage.AuditEntry, differ []string) {
	for _, e := range s.audit {
		ds, ok := d.auditSums[e.ID]
		switch {
		case !ok:
			missing = append(missing, e)
		case ds != s.auditSums[e.ID]:
			differ = append(differ, e.ID)
		}
	}
	return missing, differ
}

func entryIDs(es []storage.AuditEntry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.ID
	}
	return out
}

// listIDs shortens a list of IDs for a mismatch reason.
func listIDs(ids []string) string {
	const show = 5
	if len(ids) <= show {
		return strings.Join(ids, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(ids[:show], ", "), len(ids)-show)
}

// extras are the ids of b that are not in a, sorted.
func extras(a, b []string) []string {
	in := make(map[string]struct{}, len(a))
	for _, id := range a {
		in[id] = struct{}{}
	}
	var out []string
	for _, id := range b {
		if _, ok := in[id]; !ok {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}
