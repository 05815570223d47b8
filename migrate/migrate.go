// Package migrate copies the task store (tasks and their audit trails)
// from one storage backend to another and verifies the copy.
//
// Run makes a full pass over the source (storage.Store.IDs, then Get and
// ListAudit per task), writing to the target whatever it lacks: missing
// audit entries first (AppendAudit is idempotent by ID), then the task
// (Put is version-checked, so a rerun or a retried write is harmless). A
// record the target already holds identically is skipped; a task the
// target did not list when the migration began is written without reading
// the target first (a fresh target needs no compare). Because the
// service may keep writing to the source meanwhile, delta passes follow:
// each lists the source again and copies what appeared or changed (source
// checksum differs from what was copied) and deletes from the target what
// this migration copied and the source has since deleted, until a pass
// copies nothing or Options.MaxDeltaPasses is reached. A final
// verification reads every record on both sides (the target 64 records
// per call where it is a storage.BulkReader) and compares content
// checksums (Checksum: SHA-256 of canonical JSON) and audit entries; any
// difference is a Mismatch and makes Run return an error wrapping
// ErrMismatch.
//
// Where the source is a storage.ChangeStamper (the filesystem backend:
// inode, size, mtime and ctime of a task's files), a record whose stamp
// has not moved since this migration read it is not read again: a delta
// pass skips it, and the verification compares the target's copy with
// the checksums of that read. So the source is read about once in all
// (Options.IgnoreChangeStamps reads it every time); the target is still
// read in full by the verification.
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
//
// # Where things are
//
//   - migrate.go: Options, Run and the order of the phases (resume, full
//     pass, delta passes, verification), and the migration's shared state
//     (which records the target is known to hold, the mismatches found).
//   - pass.go: the full and delta passes: copying one record (syncRecord),
//     deleting what the source lost meanwhile (gone), the dry run's counts.
//   - verify.go: the final verification and the comparison of one record
//     on both sides (compare), with the mismatch reasons it reports.
//   - store.go: reading a record from a store, retries of an unavailable
//     store, listing IDs, and running work on Options.Concurrency goroutines.
//   - progress.go: the progress lines while a pass runs, and resuming from
//     and periodically writing the checkpoint.
//   - checkpoint.go: the checkpoint file's format, loading and atomic write.
//   - report.go: Report, PassStats and Mismatch, how a pass is added to the
//     report, and the human summary (Report.WriteSummary).
//   - checksum.go: the content checksums both sides are compared by.
package migrate

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
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
	// Concurrency is how many records are read from the source at once,
	// and how many written to the target at once (the reads run ahead of
	// the writes, a few records at most); default 4.
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
	// IgnoreChangeStamps makes every pass and the verification read every
	// source record, as if the source were no storage.ChangeStamper.
	// Default false: a record whose change stamp has not moved since this
	// migration (or its checkpoint) read it is not read again.
	IgnoreChangeStamps bool
}

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
	if cs, ok := src.(storage.ChangeStamper); ok && !opts.IgnoreChangeStamps {
		m.stamper = cs
	}
	start := time.Now()
	rep := Report{SourceName: opts.SourceName, TargetName: opts.TargetName, DryRun: opts.DryRun}
	err := m.run(ctx, &rep)
	err = m.finish(&rep, time.Since(start), err)
	return rep, err
}

// knownRecord is what the target is known to hold for a source record:
// task is the task's checksum, state that of the task and its audit trail,
// stamp the source's change stamp when it was read ("" none).
type knownRecord struct {
	task  string
	state string
	stamp string
}

// migration is the state of one Run, shared by the goroutines of a pass;
// mu guards the maps and generations below it.
type migration struct {
	src, dst storage.Store
	opts     Options
	log      *slog.Logger
	wctx     func(context.Context, string) context.Context
	// stamper is src when it gives change stamps (and they are not
	// ignored), else nil.
	stamper storage.ChangeStamper

	mu sync.Mutex
	// known: records this migration copied or found identical (or the
	// checkpoint says so), by source id.
	known map[string]knownRecord
	// fromCheckpoint: known entries not yet confirmed by this run.
	fromCheckpoint map[string]bool
	// preExisting: in the target at the start and not known.
	preExisting map[string]bool
	// atStart: the target's task ids at the start. The full pass does not
	// read the target for an id it did not list (see syncRecord).
	atStart map[string]struct{}
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
	if err := m.resume(); err != nil {
		return err
	}
	m.preExisting = map[string]bool{}
	m.atStart = make(map[string]struct{}, len(dstStart))
	for _, id := range dstStart {
		m.atStart[id] = struct{}{}
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

// resetIssues forgets the mismatches found so far: the verification judges
// every record afresh.
func (m *migration) resetIssues() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.issues = map[string]string{}
}

func (m *migration) issueCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.issues)
}
