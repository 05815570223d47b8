package devserver

import (
	"context"
	"log/slog"

	"go.temporal.io/server/common/log"
	"go.temporal.io/server/common/log/tag"
)

// slogAdapter feeds the server's own logger interface into slog, filtered
// at its own level because the server logs a great deal at info.
type slogAdapter struct {
	l     *slog.Logger
	level *slog.LevelVar
}

var _ log.Logger = slogAdapter{}

func newLogger(l *slog.Logger, level slog.Level) slogAdapter {
	v := new(slog.LevelVar)
	v.Set(level)
	return slogAdapter{l: l, level: v}
}

func (s slogAdapter) Debug(msg string, tags ...tag.Tag)  { s.log(slog.LevelDebug, msg, tags) }
func (s slogAdapter) Info(msg string, tags ...tag.Tag)   { s.log(slog.LevelInfo, msg, tags) }
func (s slogAdapter) Warn(msg string, tags ...tag.Tag)   { s.log(slog.LevelWarn, msg, tags) }
func (s slogAdapter) Error(msg string, tags ...tag.Tag)  { s.log(slog.LevelError, msg, tags) }
func (s slogAdapter) DPanic(msg string, tags ...tag.Tag) { s.log(slog.LevelError, msg, tags) }
func (s slogAdapter) Panic(msg string, tags ...tag.Tag)  { s.log(slog.LevelError, msg, tags) }
func (s slogAdapter) Fatal(msg string, tags ...tag.Tag)  { s.log(slog.LevelError, msg, tags) }

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
