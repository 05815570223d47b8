package migrate

import (
	"fmt"
	"strings"
	"sync"
	"time"
)

// progress prints a line every ProgressInterval until the returned
// function is called, which prints the pass's final line.
func (m *migration) progress(n int, kind string, total int, c *counters, start time.Time) (stop func(PassStats, bool)) {
	w := m.opts.Progress
	if w == nil {
		return func(PassStats, bool) {}
	}
	var mu sync.Mutex // one line at a time
	line := func(st PassStats, elapsed time.Duration, final bool) {
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
		fmt.Fprintf(&b, " (%.0f/s)", perSecond(st.Checked, elapsed))
		if final {
			fmt.Fprintf(&b, " done in %s", elapsed.Round(time.Millisecond))
		}
		mu.Lock()
		fmt.Fprintln(w, b.String())
		mu.Unlock()
	}
	stopTicks := every(m.opts.ProgressInterval, func() time.Duration {
		line(c.stats(n, kind, 0), time.Since(start), false)
		return m.opts.ProgressInterval
	})
	return func(st PassStats, ok bool) {
		stopTicks()
		if ok {
			line(st, st.Duration, true)
		}
	}
}

// resume loads the checkpoint into known, so that the full pass skips
// what an earlier run already copied. A dry run ignores it and compares
// every record itself.
func (m *migration) resume() error {
	if m.opts.CheckpointPath == "" || m.opts.DryRun {
		return nil
	}
	cp, err := loadCheckpoint(m.opts.CheckpointPath, m.opts.SourceName, m.opts.TargetName)
	if err != nil {
		return err
	}
	m.known = make(map[string]knownRecord, len(cp))
	m.fromCheckpoint = make(map[string]bool, len(cp))
	for id, e := range cp {
		m.known[id] = knownRecord{task: e.T, state: e.S, stamp: e.C}
		m.fromCheckpoint[id] = true
	}
	if len(cp) > 0 {
		m.log.Info("resuming from checkpoint", "path", m.opts.CheckpointPath, "records", len(cp))
	}
	return nil
}

// startCheckpointer writes the checkpoint every CheckpointInterval while
// the migration runs; the returned function stops it.
func (m *migration) startCheckpointer() (stop func()) {
	if m.opts.CheckpointPath == "" || m.opts.DryRun {
		return func() {}
	}
	interval := m.opts.CheckpointInterval
	return every(interval, func() time.Duration {
		took := m.checkpoint(false)
		// Never spend more than a tenth of the time writing it.
		return max(interval, 10*took)
	})
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
		cp.Tasks[id] = checkpointEntry{T: k.task, S: k.state, C: k.stamp}
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

// every runs tick on its own goroutine after wait, then again after each
// wait tick returns, until the returned function is called; that returns
// once no tick runs, so nothing is written after it.
func every(wait time.Duration, tick func() (next time.Duration)) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		timer := time.NewTimer(wait)
		defer timer.Stop()
		for {
			select {
			case <-done:
				return
			case <-timer.C:
			}
			timer.Reset(tick())
		}
	}()
	return func() {
		close(done)
		<-finished
	}
}
