package surrealproc

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

func TestOutputLinesAreBounded(t *testing.T) {
	var logged bytes.Buffer
	o := newOutput(slog.New(slog.NewTextHandler(&logged, &slog.HandlerOptions{Level: slog.LevelDebug})))
	write := func(s string) {
		// in small pieces, as a pipe may deliver it
		for len(s) > 0 {
			n := min(len(s), 700)
			if _, err := o.Write([]byte(s[:n])); err != nil {
				t.Fatal(err)
			}
			s = s[n:]
		}
	}
	write("\x1b[1;31m2026-01-01T00:00:00Z ERROR surreal::kvs: boom\x1b[0m\n")
	write(strings.Repeat("x", 5*maxLineLen) + "\nafter\n")
	for i := range 2 * recentLines {
		write("line " + strings.Repeat("y", i%3) + "\n")
	}
	write("unfinished")

	if !strings.Contains(logged.String(), "level=ERROR") || strings.Contains(logged.String(), "\x1b") {
		t.Fatalf("level or ANSI handling wrong:\n%s", logged.String())
	}
	for _, line := range strings.Split(logged.String(), "\n") {
		if len(line) > maxLineLen+200 {
			t.Fatalf("logged line of %d bytes", len(line))
		}
	}
	if !strings.Contains(logged.String(), "truncated") || !strings.Contains(logged.String(), "after") {
		t.Fatalf("overlong line handling wrong:\n%s", logged.String())
	}
	recent := strings.Split(o.recent(), "\n")
	if len(recent) != recentLines+1 || recent[len(recent)-1] != "unfinished" {
		t.Fatalf("recent = %d lines, last %q", len(recent), recent[len(recent)-1])
	}
	o.reset()
	if o.recent() != "" {
		t.Fatalf("recent after reset = %q", o.recent())
	}
}
