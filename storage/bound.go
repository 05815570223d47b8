package storage

import (
	"slices"

	"github.com/provisioning/orchestrator/internal/tailbuf"
)

// MaxResultBytes bounds the step output and error text a task carries when
// it travels through Temporal as a workflow result or a query answer (the
// payload limit is 2 MB; a 500-server task must stay well below it).
const MaxResultBytes = 1 << 20

// Bounded returns a copy of t whose steps' Output and Error total at most
// limit bytes: short texts stay whole and the longest are cut to their
// tails first (where a script says what happened). t itself is unchanged.
//
// A batch's plans, operation errors and compensation outputs count too.
func Bounded(t Task, limit int) Task {
	var lens []int
	for _, s := range t.Steps {
		lens = append(lens, len(s.Output), len(s.Error))
	}
	if b := t.Batch; b != nil {
		for _, o := range b.Operations {
			lens = append(lens, len(o.Plan), len(o.Error))
		}
		for _, c := range b.Compensations {
			lens = append(lens, len(c.Output), len(c.Error))
		}
	}
	c := tailbuf.FairCap(lens, limit)
	if slices.Max(append(lens, 0)) <= c {
		return t
	}
	t.Steps = slices.Clone(t.Steps)
	for i := range t.Steps {
		t.Steps[i].Output = tailbuf.String(t.Steps[i].Output, c)
		t.Steps[i].Error = tailbuf.String(t.Steps[i].Error, c)
	}
	if t.Batch != nil {
		b := *t.Batch
		b.Operations = slices.Clone(b.Operations)
		for i := range b.Operations {
			b.Operations[i].Plan = tailbuf.String(b.Operations[i].Plan, c)
			b.Operations[i].Error = tailbuf.String(b.Operations[i].Error, c)
		}
		b.Compensations = slices.Clone(b.Compensations)
		for i := range b.Compensations {
			b.Compensations[i].Output = tailbuf.String(b.Compensations[i].Output, c)
			b.Compensations[i].Error = tailbuf.String(b.Compensations[i].Error, c)
		}
		t.Batch = &b
	}
	return t
}
