package storage_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/storage/storagetest"
)

// Events live at queue.rkvs/events/{task id}.jsonl; EventsChanged wakes a
// reader of the same process at the next append, also while many tasks
// append at once; a second store on the same directory (another process)
// continues the seqs where the first left them.
func TestFilesystemEventsLayoutAndWake(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	s := newFS(t, dataDir)
	ctx := context.Background()
	ids := make([]string, 8)
	for i := range ids {
		ids[i] = storagetest.NewID()
		require.NoError(t, s.Create(ctx, task(ids[i], storage.StatusRunning, fixedTime)))
	}
	changed := s.EventsChanged()
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 20 {
				ev := storage.Event{Key: fmt.Sprintf("output/1/%d/a", j+1), Type: storage.EventOutput, Step: "a", Attempt: 1, Lines: []string{"x"}}
				assert.NoError(t, s.AppendEvents(ctx, id, []storage.Event{ev}))
				_ = s.EventsChanged()
			}
		}()
	}
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("EventsChanged did not wake on an append")
	}
	wg.Wait()
	_, err := os.Stat(filepath.Join(dataDir, filepath.FromSlash(storage.EventsSubdir), ids[0]+".jsonl"))
	require.NoError(t, err)

	other := newFS(t, dataDir)
	require.NoError(t, other.AppendEvents(ctx, ids[0], []storage.Event{
		{Key: "output/1/1/a", Type: storage.EventOutput, Step: "a", Attempt: 1, Lines: []string{"dup"}},
		{Key: "output/1/99/a", Type: storage.EventOutput, Step: "a", Attempt: 1, Lines: []string{"new"}},
	}))
	require.NoError(t, s.AppendEvents(ctx, ids[0], []storage.Event{{Key: "output/1/100/a", Type: storage.EventOutput, Step: "a", Attempt: 1}}))
	evs, err := s.ListEvents(ctx, ids[0], 19, 0)
	require.NoError(t, err)
	require.Len(t, evs, 3)
	assert.Equal(t, []int64{20, 21, 22}, []int64{evs[0].Seq, evs[1].Seq, evs[2].Seq})
	assert.Equal(t, []string{"new"}, evs[1].Lines, "the other store skipped the key it did not cache")
}
