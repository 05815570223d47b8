package tailbuf

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestTailBuffer(t *testing.T) {
	t.Parallel()
	var all strings.Builder
	b := New(100)
	// Writes of every size, below, at and above the limit.
	for i := range 400 {
		chunk := strings.Repeat(string(rune('a'+i%26)), i%150)
		all.WriteString(chunk)
		n, err := b.Write([]byte(chunk))
		require.NoError(t, err)
		require.Equal(t, len(chunk), n)
		want := all.String()
		if len(want) > 100 {
			want = want[len(want)-100:]
		}
		require.Equal(t, want, b.String(), "after write %d", i)
		require.Equal(t, all.Len() > 100, b.Truncated())
		require.LessOrEqual(t, cap(b.buf), 2*100+150, "the buffer stays bounded")
	}

	// A cut in the middle of a multi-byte character is not kept.
	b = New(4)
	_, _ = b.Write([]byte("xé€")) // 1 + 2 + 3 bytes: the last 4 start inside é
	assert.Equal(t, "€", b.String())
	assert.True(t, b.Truncated())
}
