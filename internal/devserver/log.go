package devserver

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"

	"go.temporal.io/server/common/log"
	"go.temporal.io/server/common/log/tag"
)

// slogAdapter feeds the server's own logger interface into slog, filtered
// at its own level because the server logs a great deal at info.
type slogAdapter struct {
	l     *slog.Logger
	level *slog.LevelVar
	// building is true while Start builds and starts the server, where
	// a fatal report can be recovered and turned into an error.
	building *atomic.Bool
}

var _ log.Logger = slogAdapter{}

func newLogger(l *slog.Logger, level slog.Level) slogAdapter {
	v := new(slog.LevelVar)
	v.Set(level)
	return slogAdapter{l: l, level: v, building: new(atomic.Bool)}
}

func (s slogAdapter) Debug(msg string, tags ...tag.Tag)  { s.log(slog.LevelDebug, msg, tags) }
func (s slogAdapter) Info(msg string, tags ...tag.Tag)   { s.log(slog.LevelInfo, msg, tags) }
func (s slogAdapter) Warn(msg string, tags ...tag.Tag)   { s.log(slog.LevelWarn, msg, tags) }
func (s slogAdapter) Error(msg string, tags ...tag.Tag)  { s.log(slog.LevelError, msg, tags) }
func (s slogAdapter) DPanic(msg string, tags ...tag.Tag) { s.log(slog.LevelError, msg, tags) }
func (s slogAdapter) Panic(msg string, tags ...tag.Tag)  { s.log(slog.LevelError, msg, tags) }

// Fatal logs and, while Start builds the server, panics with a *FatalError
// that Start recovers into an error (and a retry on a port clash). The
// server's own zap logger would os.Exit here; merely logging let the
// server go on with a nil listener and crash later in a goroutine with a
// nil dereference. Once the server runs, Fatal only logs: a report from a
// background loop must not kill the orchestrator.
func (s slogAdapter) Fatal(msg string, tags ...tag.Tag) {
	s.log(slog.LevelError, msg, tags)
	if !s.building.Load() {
		return
	}
	fe := &FatalError{Msg: msg}
	for _, t := range tags {
		switch t.Key() {
		case "service":
			fe.Service = fmt.Sprint(t.Value())
		case "address":
			fe.Address = fmt.Sprint(t.Value())
		case "error":
			if err, ok := t.Value().(error); ok {
				fe.Err = err
			} else if t.Value() != nil {
				fe.Err = fmt.Errorf("%v", t.Value())
			}
		}
	}
	panic(fe)
}

// FatalError is what the embedded server reported as fatal.
type FatalError struct {
	// Msg is the server's message, e.g. "Failed to start gRPC listener".
	Msg string
	// Service and Address are set when the server tagged them.
	Service, Address string
	// Err is the underlying error, when the server gave one.
	Err error
}

func (e *FatalError) Error() string {
	s := "embedded Temporal: " + e.Msg
	if e.Service != "" {
		s += " (service " + e.Service + ")"
	}
	if e.Address != "" {
		s += " on " + e.Address
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *FatalError) Unwrap() error { return e.Err }

// isListenerClash reports whether the server could not bind one of its
// ports, which on a busy machine means another process took a port
// between FreePort and the bind.
func (e *FatalError) isListenerClash() bool {
	return e.Msg == "Failed to start gRPC listener"
}

func (s slogAdapter) log(level slog.Level, msg string, tags []tag.Tag) {
	if level < s.level.Level() || !s.l.Enabled(context.Background(), level) {
		return
	}
	attrs := make([]slog.Attr, len(tags))
	for i, t := range tags {
		attrs[i] = slog.Any(t.Key(), t.Value())
	}
	s.l.LogAttrs(context.Background(), level, msg, attrs...)
}
