// Package tailbuf keeps the end of a stream: the Nushell supervisor and the
// Docker driver both bound what they capture of a process's output, and
// the end is where a failing command says why.
package tailbuf

import (
	"strings"
	"unicode/utf8"
)

// Buffer is an io.Writer keeping only the last Limit bytes written. It
// needs no lock because its users write from one copying goroutine and read
// only after that goroutine has finished (os/exec's Wait, stdcopy's return).
type Buffer struct {
	limit int
	buf   []byte
	total int64
}

// New returns a Buffer keeping the last limit bytes.
func New(limit int) *Buffer { return &Buffer{limit: limit} }

// Write keeps the tail of p; it never fails.
func (b *Buffer) Write(p []byte) (int, error) {
	n := len(p)
	b.total += int64(n)
	if n >= b.limit {
		b.buf = append(b.buf[:0], p[n-b.limit:]...)
		return n, nil
	}
	// Let buf grow to twice the limit before compacting, so each byte is
	// moved a bounded number of times however small the writes are.
	if len(b.buf)+n > 2*b.limit {
		keep := b.limit - n
		copy(b.buf, b.buf[len(b.buf)-keep:])
		b.buf = b.buf[:keep]
	}
	b.buf = append(b.buf, p...)
	return n, nil
}

// Truncated reports that more than the limit was written, so the start of
// the stream was dropped.
func (b *Buffer) Truncated() bool { return b.total > int64(b.limit) }

// String returns the kept tail, starting at a character boundary when the
// stream was cut.
func (b *Buffer) String() string {
	tail := b.buf
	if len(tail) > b.limit {
		tail = tail[len(tail)-b.limit:]
	}
	if b.Truncated() {
		tail = trimPartialRune(tail)
	}
	return string(tail)
}

// String returns the last max bytes of s, starting at a character boundary.
func String(s string, max int) string {
	if len(s) <= max {
		return s
	}
	return string(trimPartialRune([]byte(s[len(s)-max:])))
}

// trimPartialRune drops the continuation bytes a byte-wise cut may have left
// at the start, so the text stays valid UTF-8 for JSON and logs.
func trimPartialRune(b []byte) []byte {
	for i := 0; i < utf8.UTFMax && len(b) > 0 && !utf8.RuneStart(b[0]); i++ {
		b = b[1:]
	}
	return b
}

// LastLine is the last non-empty line of s, trimmed: where a failing
// script says why.
func LastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return strings.TrimSpace(s[i+1:])
	}
	return s
}

// FairCap is the largest per-text byte cap c such that the texts of the
// given lengths, each cut to min(len, c), total at most limit: short texts
// stay whole and the longest are cut first. It returns the longest length
// when everything fits already.
func FairCap(lens []int, limit int) int {
	total, longest := 0, 0
	for _, n := range lens {
		total += n
		longest = max(longest, n)
	}
	if total <= limit {
		return longest
	}
	lo, hi := 0, longest
	for lo < hi {
		mid := (lo + hi + 1) / 2
		sum := 0
		for _, n := range lens {
			sum += min(n, mid)
		}
		if sum <= limit {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo
}
