// Package migrate copies the task store (tasks and their audit trails)
// from one storage backend to another and verifies the copy.
//
// Run makes a full pass over the source (storage.Store.IDs, then Get and
// ListAudit per task), writing to the target whatever it lacks: missing
// audit entries first (AppendAudit is idempotent by ID), then the task
// (Put is version-checked, so a rerun or a retried write is harmless). A
// record the target already holds identically is skipped. Because the
// service may keep writing to the source meanwhile, delta passes follow:
// each lists the source again and copies what appeared or changed (source
// checksum differs from what was copied) and deletes from the target what
// this migration copied and the source has since deleted, until a pass
// copies nothing or Options.MaxDeltaPasses is reached. A final
// verification reads every record on both sides and compares content
// checksums (Checksum: SHA-256 of canonical JSON) and audit entries; any
// difference is a Mismatch and makes Run return an error wrapping
// ErrMismatch.
//
// A target record with a higher version than the source's is never
// overwritten (Put would ignore it anyway): it is reported as a mismatch.
//
// # Switch-over with no downtime
//
//  1. While the service runs on the old backend, run the migration. It may
//     take as long as it needs; writes that land meanwhile are picked up by
//     the delta passes (its verification may still report records that
//     changed after the last delta pass: that is expected while the
//     service writes).
//  2. Stop the writers (the worker and API processes; Temporal keeps the
//     workflows and their pending projections, nothing is lost while they
//     are down) or keep them stopped only for this step.
//  3. Run the same migration again with the same --checkpoint: it copies
//     only what changed since step 1, verifies every record, and exits 0
//     only if source and target are identical.
//  4. Start the service on the new backend. Projections retried by
//     Temporal land on the new backend (Put's version check keeps them
//     idempotent).
package migrate

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/provisioning/orchestrator/storage"
)

// Defaults of Options.
const (
	DefaultConcurrency        = 4
	DefaultMaxDeltaPasses     = 3
	DefaultProgressInterval   = time.Second
	DefaultCheckpointInterval = time.Second
)

// Actor is the actor of the writes the migration makes on the target (see
// storage.WithActor): a Put that creates a task whose transition entry the
// source does not have (its last write did not change the status) makes
// the target append an AuditTransition entry by this actor.
const Actor = "migrate"

// auditLimit is the ListAudit limit used per task. A task with this many
// entries or more cannot be verified completely and is reported.
const auditLimit = 100_000

// Retry of storage.ErrUnavailable failures (a database restarting).
const (
	retryAttempts = 6
	retryFirst    = 100 * time.Millisecond
	retryMax      = 5 * time.Second
)

// ErrMismatch is wrapped by the error Run returns when verification (or,
// in a dry run, the comparison) found differences it could not resolve.
var ErrMismatch = errors.New("migration verification failed")

// Options tunes Run. The zero value is usable.
type Options struct {
	// DryRun reads and compares only: the report says what would be
	// copied, nothing is written (not even the checkpoint).
	DryRun bool
	// Progress receives a line per ProgressInterval while a pass runs and
	// one at the end of each pass; nil: none.
	Progress io.Writer
	// ProgressInterval between progress lines; default 1s.
	ProgressInterval time.Duration
	// Concurrency is how many records are processed at once; default 4.
	Concurrency int
	// MaxDeltaPasses bounds the passes after the first; default 3.
	MaxDeltaPasses int
	// CheckpointPath, when set, is a JSON file recording which source
	// records the target is known to hold, rewritten (atomically) every
	// CheckpointInterval and after every pass. A rerun (for instance after
	// the process was killed) does not read the target again for those
	// whose source checksum is unchanged. Correctness does not depend on
	// it: the copy is idempotent and the verification reads everything.
	CheckpointPath string
	// CheckpointInterval between checkpoint writes; default 1s (stretched
	// when writing it takes long).
	CheckpointInterval time.Duration
	// SourceName and TargetName describe the two stores in progress lines
	// and the report, and tie the checkpoint file to this pair.
	SourceName string
	TargetName string
	// Logger receives warnings (retries) and a line per pass; nil: discard.
	Logger *slog.Logger
	// AfterPass, when set, is called synchronously after every pass
	// (including the verification) before the next begins.
	AfterPass func(PassStats)
	// Throttle pauses after each record of the first pass. A testing aid
	// (to interrupt a migration midway); zero in real use.
	Throttle time.Duration
}

// Mismatch is one record that differs between source and target after the
// migration, or that could not be migrated.
type Mismatch struct {
	ID     string `json:"id"`
	Reason string `json:"reason"`
}

// Pass kinds.
const (
	PassFull   = "full"
	PassDelta  = "delta"
	PassVerify = "verify"
)

// PassStats counts what one pass did (in a dry run: would have done).
type PassStats struct {
	Pass int    `json:"pass"`
	Kind string `json:"kind"`
	// Checked records (source IDs listed by this pass).
	Checked int `json:"checked"`
	// Copied tasks written to the target.
	Copied int `json:"copied"`
	// Skipped tasks already identical in the target (first pass only).
	Skipped int `json:"skipped"`
	// Resumed: skipped without reading the target, per the checkpoint.
	Resumed int `json:"resumed"`
	// AuditCopied audit entries appended to the target.
	AuditCopied int `json:"audit_copied"`
	// Deleted from the target: copied by this migration, since deleted
	// from the source.
	Deleted  int           `json:"deleted"`
	Duration time.Duration `json:"duration"`
}

// Report is the outcome of Run.
type Report struct {
	SourceName string `json:"source_name"`
	TargetName string `json:"target_name"`
	DryRun     bool   `json:"dry_run"`
	// Source and Target count the tasks of each side at the end (after
	// the verification; in a dry run, after the comparison).
	Source int `json:"source"`
	Target int `json:"target"`
	// TargetBefore counts the target's tasks when the migration began.
	TargetBefore int `json:"target_before"`
	// Copied tasks, over all passes (a task changed during the migration
	// counts once per copy); in a dry run: tasks that would be copied.
	Copied int `json:"copied"`
	// Skipped tasks the first pass found already identical in the target.
	Skipped int `json:"skipped"`
	// Resumed is the part of Skipped known from the checkpoint.
	Resumed int `json:"resumed"`
	// AuditCopied audit entries, over all passes.
	AuditCopied int `json:"audit_copied"`
	// Deleted tasks from the target (deleted from the source meanwhile).
	Deleted int `json:"deleted"`
	// Verified tasks: content checksum and audit trail equal on both sides.
	Verified int `json:"verified"`
	// Passes run, the verification included.
	Passes    int         `json:"passes"`
	PassStats []PassStats `json:"pass_stats"`
	// Mismatches found; non-empty means Run returned an error.
	Mismatches []Mismatch `json:"mismatches"`
	// TargetExtra lists tasks the target held before the migration began
	// that the source does not have. They are left alone.
	TargetExtra []string      `json:"target_extra"`
	Duration    time.Duration `json:"duration"`
	// Rate is source tasks per second of Duration.
	Rate float64 `json:"rate"`
}

// OK reports whether the migration verified without a mismatch.
func (r Report) OK() bool { return len(r.Mismatches) == 0 }

// Run migrates src to dst; see the package documentation. The returned
// report is filled as far as the migration got, also on error. Errors other
// than ErrMismatch are failures to run at all (a store unreachable after
// retries, ctx done).
func Run(ctx context.Context, src, dst storage.Store, opts Options) (Report, error) {
	if opts.Concurrency <= 0 {
		opts.Concurrency = DefaultConcurrency
	}
	if opts.MaxDeltaPasses <= 0 {
		opts.MaxDeltaPasses = DefaultMaxDeltaPasses
	}
	if opts.ProgressInterval <= 0 {
		opts.ProgressInterval = DefaultProgressInterval
	}
	if opts.CheckpointInterval <= 0 {
		opts.CheckpointInterval = DefaultCheckpointInterval
	}
	if opts.SourceName == "" {
		opts.SourceName = "source"
	}
	if opts.TargetName == "" {
		opts.TargetName = "target"
	}
	m := &migration{
		src: src, dst: dst, opts: opts,
		log:    opts.Logger,
		wctx:   storage.WithActor,
		known:  map[string]knownRecord{},
		issues: map[string]string{},
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	start := time.Now()
	rep := Report{SourceName: opts.SourceName, TargetName: opts.TargetName, DryRun: opts.DryRun}
	err := m.run(ctx, &rep)
	rep.Duration = time.Since(start)
	if s := rep.Duration.Seconds(); s > 0 {
		rep.Rate = float64(rep.Source) / s
	}
	for id, reason := range m.issues {
		rep.Mismatches = append(rep.Mismatches, Mismatch{ID: id, Reason: reason})
	}
	slices.SortFunc(rep.Mismatches, func(a, b Mismatch) int { return strings.Compare(a.ID, b.ID) })
	if err == nil && len(rep.Mismatches) > 0 {
		what := "verification"
		if opts.DryRun {
			what = "comparison (dry run)"
		}
		err = fmt.Errorf("%w: %s found %d mismatching record(s)", ErrMismatch, what, len(rep.Mismatches))
	}
	return rep, err
}

// knownRecord is what the target is known to hold for a source record:
// task is the task's checksum, state that of the task and its audit trail.
type knownRecord struct {
	task  string
	state string
}

type migration struct {
	src, dst storage.Store
	opts     Options
	log      *slog.Logger
	wctx     func(context.Context, string) context.Context

	mu sync.Mutex
	// known: records this migration copied or found identical (or the
	// checkpoint says so), by source id.
	known map[string]knownRecord
	// fromCheckpoint: known entries not yet confirmed by this run.
	fromCheckpoint map[string]bool
	// preExisting: in the target at the start and not known.
	preExisting map[string]bool
	// issues of the current phase, by id (the verification starts afresh).
	issues map[string]string
	// knownGen counts changes to known (to skip needless checkpoints).
	knownGen int64
	cpGen    int64
}

func (m *migration) run(ctx context.Context, rep *Report) error {
	dstStart, err := m.ids(ctx, m.dst, "target")
	if err != nil {
		return err
	}
	rep.TargetBefore = len(dstStart)
	if m.opts.CheckpointPath != "" && !m.opts.DryRun {
		cp, err := loadCheckpoint(m.opts.CheckpointPath, m.opts.SourceName, m.opts.TargetName)
		if err != nil {
			return err
		}
		m.known = make(map[string]knownRecord, len(cp))
		m.fromCheckpoint = make(map[string]bool, len(cp))
		for id, e := range cp {
			m.known[id] = knownRecord{task: e.T, state: e.S}
			m.fromCheckpoint[id] = true
		}
		if len(cp) > 0 {
			m.log.Info("resuming from checkpoint", "path", m.opts.CheckpointPath, "records", len(cp))
		}
	}
	m.preExisting = map[string]bool{}
	for _, id := range dstStart {
		if _, ok := m.known[id]; !ok {
			m.preExisting[id] = true
		}
	}

	stopCP := m.startCheckpointer()
	defer func() {
		stopCP()
		m.checkpoint(false) // also after a failure: what was done stays done
	}()

	// Pass 1: everything.
	st, err := m.pass(ctx, 1, PassFull, rep)
	if err != nil {
		return err
	}
	if m.opts.DryRun {
		return m.finishDryRun(ctx, rep)
	}
	// Delta passes until one finds nothing to do.
	for i := 1; i <= m.opts.MaxDeltaPasses && st.Copied+st.AuditCopied+st.Deleted > 0; i++ {
		if st, err = m.pass(ctx, 1+i, PassDelta, rep); err != nil {
			return err
		}
	}
	if st.Copied+st.AuditCopied+st.Deleted > 0 {
		m.log.Warn("source still changing after the delta passes; verifying anyway", "max_delta_passes", m.opts.MaxDeltaPasses)
	}
	return m.verify(ctx, rep)
}

// counters are one pass's live statistics.
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

// pass runs one full or delta pass over the source's current IDs.
func (m *migration) pass(ctx context.Context, n int, kind string, rep *Report) (PassStats, error) {
	start := time.Now()
	ids, err := m.ids(ctx, m.src, "source")
	if err != nil {
		return PassStats{}, err
	}
	slices.Sort(ids)
	var c counters
	stopProgress := m.progress(n, kind, len(ids), &c, start)
	err = m.each(ctx, ids, func(ctx context.Context, id string) error {
		defer c.checked.Add(1)
		if err := m.processID(ctx, id, kind == PassFull, &c); err != nil {
			return err
		}
		if kind == PassFull && m.opts.Throttle > 0 {
			return sleep(ctx, m.opts.Throttle)
		}
		return nil
	})
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

func (m *migration) addPass(rep *Report, st PassStats) {
	rep.Passes++
	rep.PassStats = append(rep.PassStats, st)
	rep.Copied += st.Copied
	rep.AuditCopied += st.AuditCopied
	rep.Deleted += st.Deleted
	if st.Kind == PassFull {
		rep.Skipped += st.Skipped
		rep.Resumed += st.Resumed
	}
	m.log.Info("migration pass done", "pass", st.Pass, "kind", st.Kind, "checked", st.Checked,
		"copied", st.Copied, "skipped", st.Skipped, "audit_copied", st.AuditCopied, "deleted", st.Deleted,
		"took", st.Duration.Round(time.Millisecond), "dry_run", m.opts.DryRun)
	if m.opts.AfterPass != nil {
		m.opts.AfterPass(st)
	}
}

// goneIDs are the known ids (copied by this migration) missing from ids.
func (m *migration) goneIDs(ids []string) []string {
	present := make(map[string]struct{}, len(ids))
	for _, id := range ids {
		present[id] = struct{}{}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for id := range m.known {
		if _, ok := present[id]; !ok {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

// processID brings one source record over. In the full pass a record the
// target is known (from the checkpoint) to hold unchanged is skipped
// without reading the target; in a delta pass one unchanged since this
// migration copied it is skipped.
func (m *migration) processID(ctx context.Context, id string, full bool, c *counters) error {
	s, found, err := m.read(ctx, m.src, id)
	if err != nil {
		return m.recordErr(id, "read source", err)
	}
	if !found {
		return m.gone(ctx, id, c)
	}
	if k, ok := m.getKnown(id); ok && k.state == s.state {
		if full {
			c.skipped.Add(1)
			c.resumed.Add(1)
		}
		return nil
	}
	r, err := m.syncRecord(ctx, id, s)
	if err != nil {
		return err
	}
	c.audit.Add(int64(r.audit))
	switch {
	case r.copied:
		c.copied.Add(1)
	case r.identical && full:
		c.skipped.Add(1)
	}
	return nil
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
func (m *migration) syncRecord(ctx context.Context, id string, s record) (syncResult, error) {
	var r syncResult
	d, dfound, err := m.read(ctx, m.dst, id)
	if err != nil {
		return r, m.recordErr(id, "read target", err)
	}
	if dfound && d.task.Version > s.task.Version {
		m.setIssue(id, fmt.Sprintf("target has version %d, newer than the source's %d: not overwritten", d.task.Version, s.task.Version))
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
		m.setIssue(id, "audit entries differ in target (same ID, other content): "+listIDs(differ))
		return r, nil
	}
	m.setIssue(id, "")
	if !m.opts.DryRun {
		m.setKnown(id, knownRecord{task: s.sum, state: s.state})
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

// verify reads every record on both sides. A difference that a copy can
// resolve (the source changed since the last pass, an entry missing) is
// copied and checked once more; what still differs is a mismatch.
func (m *migration) verify(ctx context.Context, rep *Report) error {
	start := time.Now()
	m.mu.Lock()
	m.issues = map[string]string{}
	m.mu.Unlock()
	srcIDs, err := m.ids(ctx, m.src, "source")
	if err != nil {
		return err
	}
	slices.Sort(srcIDs)
	var c counters
	var verified atomic.Int64
	n := rep.Passes + 1
	stopProgress := m.progress(n, PassVerify, len(srcIDs), &c, start)
	err = m.each(ctx, srcIDs, func(ctx context.Context, id string) error {
		defer c.checked.Add(1)
		for attempt := 1; ; attempt++ {
			s, sfound, err := m.read(ctx, m.src, id)
			if err != nil {
				return m.recordErr(id, "read source", err)
			}
			if !sfound {
				return m.gone(ctx, id, &c)
			}
			d, dfound, err := m.read(ctx, m.dst, id)
			if err != nil {
				return m.recordErr(id, "read target", err)
			}
			reason, fixable := compare(s, d, dfound)
			if reason == "" {
				verified.Add(1)
				m.setIssue(id, "")
				m.setKnown(id, knownRecord{task: s.sum, state: s.state})
				return nil
			}
			if !fixable || attempt > 1 {
				m.setIssue(id, reason)
				return nil
			}
			r, err := m.syncRecord(ctx, id, s)
			if err != nil {
				return err
			}
			c.audit.Add(int64(r.audit))
			if r.copied {
				c.copied.Add(1)
			}
		}
	})
	if err != nil {
		stopProgress(c.stats(n, PassVerify, time.Since(start)), false)
		return err
	}
	// The target's side: the source's tasks must all be there (checked
	// above); anything else must have been there before.
	srcSet := make(map[string]struct{}, len(srcIDs))
	for _, id := range srcIDs {
		srcSet[id] = struct{}{}
	}
	dstIDs, err := m.ids(ctx, m.dst, "target")
	if err != nil {
		return err
	}
	var extra []string
	for _, id := range dstIDs {
		if _, ok := srcSet[id]; !ok {
			extra = append(extra, id)
		}
	}
	deletedBefore := c.deleted.Load()
	for _, id := range extra {
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
	m.mu.Lock()
	complete := len(m.issues) == 0
	m.mu.Unlock()
	m.checkpoint(complete)
	return nil
}

// compare returns why target record d (dfound: it exists) differs from
// source record s, "" if it does not, and whether copying can fix it.
func compare(s, d record, dfound bool) (reason string, fixable bool) {
	switch {
	case !dfound:
		return "missing in target", true
	case d.task.Version > s.task.Version:
		return fmt.Sprintf("target has version %d, newer than the source's %d: not overwritten", d.task.Version, s.task.Version), false
	case d.sum != s.sum:
		return fmt.Sprintf("content checksum differs: source version %d sha256 %s, target version %d sha256 %s",
			s.task.Version, s.sum[:16], d.task.Version, d.sum[:16]), true
	}
	missing, differ := auditDiff(s, d)
	if len(differ) > 0 {
		return "audit entries differ in target (same ID, other content): " + listIDs(differ), false
	}
	if len(missing) > 0 {
		return "audit entries missing in target: " + listIDs(entryIDs(missing)), true
	}
	return "", false
}

// record is one task with its audit trail as read from a store.
type record struct {
	task      storage.Task
	sum       string
	audit     []storage.AuditEntry
	auditSums map[string]string
	state     string
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
		if rec.sum, err = Checksum(rec.task); err != nil {
			return rec, false, err
		}
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
	err = m.call(ctx, func() error {
		var lerr error
		rec.audit, lerr = st.ListAudit(ctx, storage.AuditFilter{TaskID: id, Limit: auditLimit})
		return lerr
	})
	if err != nil {
		return rec, false, fmt.Errorf("audit trail: %w", err)
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
	if len(ids) == 0 {
		return ctx.Err()
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	ch := make(chan string)
	var wg sync.WaitGroup
	for range min(m.opts.Concurrency, len(ids)) {
		wg.Go(func() {
			for id := range ch {
				if err := fn(ctx, id); err != nil {
					cancel(err)
					return
				}
			}
		})
	}
feed:
	for _, id := range ids {
		select {
		case ch <- id:
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

func (m *migration) getKnown(id string) (knownRecord, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k, ok := m.known[id]
	return k, ok
}

func (m *migration) setKnown(id string, k knownRecord) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.fromCheckpoint, id)
	if m.known[id] != k {
		m.known[id] = k
		m.knownGen++
	}
}

func (m *migration) dropKnown(id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.fromCheckpoint, id)
	if _, ok := m.known[id]; ok {
		delete(m.known, id)
		m.knownGen++
	}
}

// setIssue records (or, with "", clears) the current phase's mismatch for id.
func (m *migration) setIssue(id, reason string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if reason == "" {
		delete(m.issues, id)
	} else {
		m.issues[id] = reason
	}
}

func (m *migration) hasIssue(id string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.issues[id]
	return ok
}

// startCheckpointer writes the checkpoint every CheckpointInterval while
// the migration runs; the returned function stops it.
func (m *migration) startCheckpointer() (stop func()) {
	if m.opts.CheckpointPath == "" || m.opts.DryRun {
		return func() {}
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		interval := m.opts.CheckpointInterval
		timer := time.NewTimer(interval)
		defer timer.Stop()
		for {
			select {
			case <-done:
				return
			case <-timer.C:
			}
			took := m.checkpoint(false)
			// Never spend more than a tenth of the time writing it.
			timer.Reset(max(interval, 10*took))
		}
	}()
	return func() {
		close(done)
		<-finished
	}
}

// checkpoint writes the checkpoint file if known changed since the last
// write and returns how long that took. Failures are logged: the
// checkpoint only saves work.
func (m *migration) checkpoint(complete bool) time.Duration {
	if m.opts.CheckpointPath == "" || m.opts.DryRun {
		return 0
	}
	start := time.Now()
	m.mu.Lock()
	if m.knownGen == m.cpGen && !complete {
		m.mu.Unlock()
		return 0
	}
	gen := m.knownGen
	cp := checkpointFile{
		Format: checkpointFormat, Source: m.opts.SourceName, Target: m.opts.TargetName,
		UpdatedAt: start.UTC(), Complete: complete,
		Tasks: make(map[string]checkpointEntry, len(m.known)),
	}
	for id, k := range m.known {
		cp.Tasks[id] = checkpointEntry{T: k.task, S: k.state}
	}
	m.mu.Unlock()
	if err := writeCheckpoint(m.opts.CheckpointPath, cp); err != nil {
		m.log.Warn("cannot write checkpoint", "path", m.opts.CheckpointPath, "error", err)
		return time.Since(start)
	}
	m.mu.Lock()
	m.cpGen = max(m.cpGen, gen)
	m.mu.Unlock()
	return time.Since(start)
}

// progress prints a line every ProgressInterval until the returned
// function is called, which prints the pass's final line.
func (m *migration) progress(n int, kind string, total int, c *counters, start time.Time) (stop func(PassStats, bool)) {
	w := m.opts.Progress
	if w == nil {
		return func(PassStats, bool) {}
	}
	var mu sync.Mutex // one line at a time
	line := func(st PassStats, elapsed time.Duration, final bool) {
		rate := 0.0
		if s := elapsed.Seconds(); s > 0 {
			rate = float64(st.Checked) / s
		}
		verb := "copied"
		if m.opts.DryRun {
			verb = "would copy"
		}
		pct := 100.0
		if total > 0 {
			pct = 100 * float64(st.Checked) / float64(total)
		}
		var b strings.Builder
		fmt.Fprintf(&b, "pass %d (%s): %d/%d tasks (%.0f%%), %s %d, ", n, kind, st.Checked, total, pct, verb, st.Copied)
		if kind == PassFull {
			fmt.Fprintf(&b, "identical %d, ", st.Skipped)
		}
		fmt.Fprintf(&b, "audit entries %d", st.AuditCopied)
		if st.Deleted > 0 {
			fmt.Fprintf(&b, ", deleted %d", st.Deleted)
		}
		fmt.Fprintf(&b, " (%.0f/s)", rate)
		if final {
			fmt.Fprintf(&b, " done in %s", elapsed.Round(time.Millisecond))
		}
		mu.Lock()
		fmt.Fprintln(w, b.String())
		mu.Unlock()
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(m.opts.ProgressInterval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				line(c.stats(n, kind, 0), time.Since(start), false)
			}
		}
	}()
	return func(st PassStats, ok bool) {
		close(done)
		<-finished
		if ok {
			line(st, st.Duration, true)
		}
	}
}

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

// WriteSummary prints the report for people: counts, verification,
// duration and rate, then the mismatches (at most 50).
func (r Report) WriteSummary(w io.Writer) {
	mode := "migration"
	if r.DryRun {
		mode = "dry run (nothing written)"
	}
	fmt.Fprintf(w, "%s: %s -> %s\n", mode, r.SourceName, r.TargetName)
	fmt.Fprintf(w, "  source tasks:      %d\n", r.Source)
	fmt.Fprintf(w, "  target tasks:      %d (%d before", r.Target, r.TargetBefore)
	if len(r.TargetExtra) > 0 {
		fmt.Fprintf(w, "; %d not in the source, there before the migration, left alone", len(r.TargetExtra))
	}
	fmt.Fprintln(w, ")")
	verb := "copied"
	if r.DryRun {
		verb = "to copy"
	}
	fmt.Fprintf(w, "  %-18s %d tasks, %d audit entries\n", verb+":", r.Copied, r.AuditCopied)
	fmt.Fprintf(w, "  already identical: %d", r.Skipped)
	if r.Resumed > 0 {
		fmt.Fprintf(w, " (%d known from the checkpoint)", r.Resumed)
	}
	fmt.Fprintln(w)
	if r.Deleted > 0 {
		fmt.Fprintf(w, "  deleted:           %d (deleted from the source during the migration)\n", r.Deleted)
	}
	kinds := make([]string, len(r.PassStats))
	for i, p := range r.PassStats {
		kinds[i] = p.Kind
	}
	fmt.Fprintf(w, "  passes:            %d (%s)\n", r.Passes, strings.Join(kinds, ", "))
	switch {
	case r.DryRun:
		fmt.Fprintf(w, "  verification:      not run (dry run)\n")
	case r.OK():
		fmt.Fprintf(w, "  verification:      OK: %d/%d tasks with equal sha256 content checksums and complete audit trails; counts equal\n", r.Verified, r.Source)
	default:
		fmt.Fprintf(w, "  verification:      FAILED: %d/%d tasks verified\n", r.Verified, r.Source)
	}
	fmt.Fprintf(w, "  duration:          %s\n", r.Duration.Round(time.Millisecond))
	fmt.Fprintf(w, "  rate:              %.0f tasks/s\n", r.Rate)
	if len(r.Mismatches) > 0 {
		fmt.Fprintf(w, "  mismatches:        %d\n", len(r.Mismatches))
		for i, mm := range r.Mismatches {
			if i == 50 {
				fmt.Fprintf(w, "    ... and %d more\n", len(r.Mismatches)-50)
				break
			}
			fmt.Fprintf(w, "    %s: %s\n", mm.ID, mm.Reason)
		}
	}
}
