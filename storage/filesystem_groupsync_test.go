package storage

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Callers that arrive while a directory fsync runs share the next one, and
// none of them returns before an fsync that began after its call finished.
func TestGroupSyncCoalescesAndWaitsForALaterFsync(t *testing.T) {
	f, err := NewFilesystem(t.TempDir())
	require.NoError(t, err)
	var (
		begun, finished atomic.Int32
		release         = []chan struct{}{make(chan struct{}), make(chan struct{})}
		second          = errors.New("second fsync failed")
	)
	f.dirSyncHook = func(dir string) error {
		assert.Equal(t, f.dir, dir)
		n := begun.Add(1)
		if n > 2 {
			t.Errorf("fsync %d: the waiters should have shared the second", n)
			return nil
		}
		<-release[n-1]
		finished.Add(1)
		if n == 2 {
			return second
		}
		return nil
	}

	first := make(chan error, 1)
	go func() { first <- f.fsync(f.dir) }()
	require.Eventually(t, func() bool { return begun.Load() == 1 }, 10*time.Second, time.Millisecond)

	const waiters = 8
	var wg sync.WaitGroup
	results := make(chan error, waiters)
	for range waiters {
		wg.Go(func() {
			err := f.fsync(f.dir)
			// The fsync that began before this call does not count.
			assert.Equal(t, int32(2), finished.Load(), "returned before the second fsync finished")
			results <- err
		})
	}
	require.Eventually(t, func() bool {
		g := &f.dirSyncs.tasks
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.waiting == waiters
	}, 10*time.Second, time.Millisecond)

	close(release[0])
	require.NoError(t, <-first)
	require.Eventually(t, func() bool { return begun.Load() == 2 }, 10*time.Second, time.Millisecond)
	close(release[1])
	wg.Wait()
	close(results)
	for err := range results {
		require.ErrorIs(t, err, second)
	}
	assert.Equal(t, int32(2), begun.Load(), "fsyncs for 1 + %d callers", waiters)

	// With nothing running, a caller runs its own fsync.
	f.dirSyncHook = func(string) error { begun.Add(1); return nil }
	require.NoError(t, f.fsync(f.dir))
	assert.Equal(t, int32(3), begun.Load())
}
