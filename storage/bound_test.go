package storage

import (
	"strings"
	"testing"
)

func TestBounded(t *testing.T) {
	var task Task
	for i := range 500 {
		task.Steps = append(task.Steps, StepResult{Name: "s", Output: strings.Repeat("o", 8<<10-1) + "\n", Error: strings.Repeat("e", 8<<10)})
		if i == 0 {
			task.Steps[0].Output = "short\n"
		}
	}
	b := Bounded(task, MaxResultBytes)
	total := 0
	for _, s := range b.Steps {
		total += len(s.Output) + len(s.Error)
	}
	if total > MaxResultBytes {
		t.Fatalf("total %d", total)
	}
	if b.Steps[0].Output != "short\n" || !strings.HasSuffix(b.Steps[1].Output, "o\n") {
		t.Errorf("short outputs stay, tails kept: %q", b.Steps[1].Output[len(b.Steps[1].Output)-3:])
	}
	if len(task.Steps[1].Output) != 8<<10 {
		t.Error("the original is unchanged")
	}
	small := Task{Steps: []StepResult{{Output: "x"}}}
	if got := Bounded(small, MaxResultBytes); got.Steps[0].Output != "x" {
		t.Error("under the limit nothing changes")
	}
}
