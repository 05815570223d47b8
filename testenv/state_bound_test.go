package testenv

import (
	"strings"
	"testing"
)

func TestRunBoundOutput(t *testing.T) {
	r := TestRun{Results: []TestResult{
		{Name: "small", Stdout: "ok\n"},
		{Name: "big", Stdout: strings.Repeat("a", 1000) + "END", Stderr: strings.Repeat("é", 300)},
		{Name: "mid", Stderr: strings.Repeat("m", 200)},
	}}
	r.BoundOutput(10 << 10)
	if r.OutputTrimmed || r.Results[1].Stdout[1000:] != "END" {
		t.Fatal("under the limit nothing is cut")
	}
	r.BoundOutput(700)
	total := 0
	for _, res := range r.Results {
		total += len(res.Stdout) + len(res.Stderr)
	}
	if !r.OutputTrimmed || total > 700 {
		t.Fatalf("total %d, trimmed %v", total, r.OutputTrimmed)
	}
	if r.Results[0].Stdout != "ok\n" || len(r.Results[2].Stderr) != 200 {
		t.Errorf("short streams stay whole: %q %d", r.Results[0].Stdout, len(r.Results[2].Stderr))
	}
	if !strings.HasSuffix(r.Results[1].Stdout, "END") || !strings.HasPrefix(r.Results[1].Stderr, "é") {
		t.Errorf("tails kept on character boundaries: %q", r.Results[1].Stderr[:4])
	}

	old := r.WithoutOutput()
	if old.Results[1].Stdout != "" || !old.OutputTrimmed || r.Results[1].Stdout == "" {
		t.Error("WithoutOutput drops output from a copy only")
	}
}
