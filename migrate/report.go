package migrate

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

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

// addPass adds a finished pass to the report, logs it and tells
// Options.AfterPass.
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

// finish completes the report of a migration that took took and ended
// with err: duration, rate and the mismatches left (sorted by ID). It
// returns err, or, when that is nil but mismatches are left, an error
// wrapping ErrMismatch, so that no caller can miss them.
func (m *migration) finish(rep *Report, took time.Duration, err error) error {
	rep.Duration = took
	rep.Rate = perSecond(rep.Source, took)
	for id, reason := range m.issues {
		rep.Mismatches = append(rep.Mismatches, Mismatch{ID: id, Reason: reason})
	}
	slices.SortFunc(rep.Mismatches, func(a, b Mismatch) int { return strings.Compare(a.ID, b.ID) })
	if err == nil && len(rep.Mismatches) > 0 {
		what := "verification"
		if m.opts.DryRun {
			what = "comparison (dry run)"
		}
		err = fmt.Errorf("%w: %s found %d mismatching record(s)", ErrMismatch, what, len(rep.Mismatches))
	}
	return err
}

// perSecond is the rate of n in d; 0 when no time passed.
func perSecond(n int, d time.Duration) float64 {
	if s := d.Seconds(); s > 0 {
		return float64(n) / s
	}
	return 0
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
