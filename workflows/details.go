package workflows

import (
	"cmp"
	"fmt"
	"strings"
	"time"

	"go.temporal.io/sdk/workflow"

	"github.com/provisioning/orchestrator/internal/searchattr"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/testenv"
)

// maxDetailNames bounds the step names a current-details line lists: the
// Web UI shows it in a box, and a task may have hundreds of servers.
const maxDetailNames = 5

// prioritySearchAttributeChange marks the set-priority update upserting the
// Priority search attribute: histories recorded before it (no marker) do
// not, so they replay unchanged.
const prioritySearchAttributeChange = "priority-search-attribute"

// taskDetails is a provisioning task's current details, the line Temporal's
// Web UI shows while it runs (and the __temporal_workflow_metadata query
// answers), e.g. "2/5 done · running web-03, web-04 · priority 3".
func taskDetails(t storage.Task) string {
	var running, failed []string
	for _, s := range t.Steps {
		switch s.Status {
		case storage.StatusRunning:
			running = append(running, s.Name)
		case storage.StatusFailed:
			failed = append(failed, s.Name)
		}
	}
	parts := []string{fmt.Sprintf("%d/%d done", t.Progress.Done, t.Progress.Total)}
	switch {
	case t.Status.Terminal():
		parts = append([]string{string(t.Status)}, parts...)
	case t.Status == storage.StatusPending:
		parts = append([]string{"pending"}, parts...)
	case len(running) > 0:
		parts = append(parts, "running "+nameList(running))
	}
	if len(failed) > 0 {
		parts = append(parts, fmt.Sprintf("%d failed: %s", len(failed), nameList(failed)))
	}
	if !t.Status.Terminal() {
		parts = append(parts, fmt.Sprintf("priority %d", cmp.Or(t.Priority, storage.DefaultPriority)))
	}
	return strings.Join(parts, " · ")
}

// nameList joins names, at most maxDetailNames of them and how many more.
func nameList(names []string) string {
	if len(names) <= maxDetailNames {
		return strings.Join(names, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(names[:maxDetailNames], ", "), len(names)-maxDetailNames)
}

// showDetails sets the task's current details. It records nothing in
// history (the SDK keeps the line in memory), so it changes no replay.
func (w *provisioning) showDetails(ctx workflow.Context) {
	workflow.SetCurrentDetails(ctx, taskDetails(w.task))
}

// upsertPriority keeps the Priority search attribute current after an
// operator changed the priority, when the workflow started with it (the
// starter found it defined: upserting an undefined one would fail every
// workflow task).
func (w *provisioning) upsertPriority(ctx workflow.Context) error {
	if _, ok := workflow.GetTypedSearchAttributes(ctx).GetInt64(searchattr.Priority); !ok {
		return nil
	}
	if workflow.GetVersion(ctx, prioritySearchAttributeChange, workflow.DefaultVersion, 1) < 1 {
		return nil
	}
	return workflow.UpsertTypedSearchAttributes(ctx, searchattr.Priority.ValueSet(int64(w.common.Priority)))
}

// envDetails is a test environment's current details: its phase and what
// matters in it, e.g. "ready · 3 nodes · run 2 passed · expires
// 2026-12-02 18:05:00 UTC".
func envDetails(s testenv.EnvState) string {
	parts := []string{s.Status}
	switch s.Status {
	case EnvCreating:
		parts = append(parts, count(len(s.Nodes), "node"))
	case EnvConverging:
		done := 0
		for _, r := range s.Converge {
			if r.Status == "completed" || r.Status == "failed" {
				done++
			}
		}
		parts = append(parts, fmt.Sprintf("%d/%d taskservs installed", done, len(s.Converge)))
	case EnvError:
		if s.Error != "" {
			parts = append(parts, firstLine(s.Error, 160))
		}
	case EnvCleaned:
		if s.EndReason != "" {
			parts = append(parts, s.EndReason)
		}
	}
	if s.Status != EnvCreating && s.Status != EnvError && s.Status != EnvCleaned {
		parts = append(parts, count(len(s.Nodes), "node"))
		if r := s.LastRun; r != nil {
			verdict := "passed"
			if !r.Passed {
				verdict = fmt.Sprintf("failed (%d of %d tests)", r.Failed, r.Total)
			}
			parts = append(parts, fmt.Sprintf("run %d %s", r.Number, verdict))
		}
	}
	if s.FinishedAt == nil && !s.ExpiresAt.IsZero() {
		parts = append(parts, "expires "+s.ExpiresAt.UTC().Format(time.DateTime)+" UTC")
	}
	return strings.Join(parts, " · ")
}

// count is "1 node", "3 nodes".
func count(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// firstLine is s's first line, cut to max runes.
func firstLine(s string, max int) string {
	s, _, _ = strings.Cut(s, "\n")
	if r := []rune(s); len(r) > max {
		return string(r[:max-1]) + "…"
	}
	return s
}
