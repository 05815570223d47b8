package surrealproc

import (
	"bytes"
	"context"
	"log/slog"
	"regexp"
	"strings"
	"sync"
)

// Output bounds.
const (
	// maxLineLen truncates each logged line (and flushes a line that has no
	// newline yet once it is this long).
	maxLineLen = 2048
	// recentLines is how many lines Output and error messages keep.
	recentLines = 30
)

var ansiRE = regexp.MustCompile(`\x1b\[[0-9;?]*[A-Za-z]`)

// output turns the server's stdout and stderr into log records, one per
// line, and keeps the last recentLines lines for error messages.
type output struct {
	log *slog.Logger

	mu       sync.Mutex
	partial  []byte
	dropping bool     // skipping the rest of a truncated line
	lines    []string // ring of at most recentLines
	next     int
}

func newOutput(log *slog.Logger) *output { return &output{log: log} }

func (o *output) Write(b []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := len(b)
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		var chunk []byte
		if i < 0 {
			chunk, b = b, nil
		} else {
			chunk, b = b[:i], b[i+1:]
		}
		if o.dropping { // the rest of an overlong line
			o.dropping = i < 0
			continue
		}
		if room := maxLineLen - len(o.partial); len(chunk) > room {
			o.partial = append(o.partial, chunk[:room]...)
			o.flush(true)
			o.dropping = i < 0
			continue
		}
		o.partial = append(o.partial, chunk...)
		if i >= 0 {
			o.flush(false)
		}
	}
	return n, nil
}

// flush logs and records the pending line. Callers hold mu.
func (o *output) flush(truncated bool) {
	line := strings.TrimRight(ansiRE.ReplaceAllString(string(o.partial), ""), "\r \t")
	o.partial = o.partial[:0]
	if truncated {
		line += " …(truncated)"
	}
	if strings.TrimSpace(line) == "" {
		return
	}
	if len(o.lines) < recentLines {
		o.lines = append(o.lines, line)
	} else {
		o.lines[o.next] = line
		o.next = (o.next + 1) % recentLines
	}
	o.log.Log(context.Background(), levelOf(line), "surreal: "+line)
}

// levelOf guesses a line's level from the server's own level marker.
func levelOf(line string) slog.Level {
	head := line
	if len(head) > 64 {
		head = head[:64]
	}
	switch {
	case strings.Contains(head, "ERROR"), strings.HasPrefix(line, "error"), strings.Contains(head, "FATAL"):
		return slog.LevelError
	case strings.Contains(head, "WARN"):
		return slog.LevelWarn
	case strings.Contains(head, "DEBUG"), strings.Contains(head, "TRACE"):
		return slog.LevelDebug
	}
	return slog.LevelInfo
}

// reset forgets the recent lines (a new child starts).
func (o *output) reset() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.partial = o.partial[:0]
	o.dropping = false
	o.lines = o.lines[:0]
	o.next = 0
}

// recent returns the kept lines, oldest first.
func (o *output) recent() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	ordered := make([]string, 0, len(o.lines)+1)
	if len(o.lines) == recentLines {
		ordered = append(ordered, o.lines[o.next:]...)
		ordered = append(ordered, o.lines[:o.next]...)
	} else {
		ordered = append(ordered, o.lines...)
	}
	if p := strings.TrimSpace(string(o.partial)); p != "" { // an unfinished last line
		ordered = append(ordered, p)
	}
	return strings.Join(ordered, "\n")
}
