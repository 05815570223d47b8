package surrealdb

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/storage/storagetest"
)

// TestSurrealEventAppendsFromTwoStores: six writers on two stores (two
// processes, e.g. two workers running steps of one task) append to one
// task's stream at once, each batch with a key of its own and one shared
// key; every event is stored once, with seqs 1..n. On RocksDB: the mem://
// and surrealkv:// engines of SurrealDB 3.0 lose one of two concurrent
// updates of the stream's head now and then (about 1 round in 60 here),
// which the store serialises within a process but cannot across processes.
func TestSurrealEventAppendsFromTwoStores(t *testing.T) {
	ctx := context.Background()
	_, stores := surrealStores(t, "rocksdb://"+t.TempDir()+"/db", 2)
	const writers, each = 6, 10
	output := func(step string, chunk int) storage.Event {
		return storage.Event{Key: storage.OutputEventKey(step, 1, chunk), Type: storage.EventOutput,
			Step: step, Attempt: 1, Stream: "stdout", Lines: []string{"line"}}
	}
	for round := range 10 {
		id := storagetest.NewID()
		now := time.Now()
		require.NoError(t, stores[0].Create(ctx, storage.Task{ID: id, Name: "n", Command: "c",
			Status: storage.StatusPending, CreatedAt: now, UpdatedAt: now}))
		var g errgroup.Group
		for w := range writers {
			s := stores[w%2]
			g.Go(func() error {
				for i := range each {
					batch := []storage.Event{output(fmt.Sprintf("s%d", w), i+1), output("shared", i+1)}
					if err := s.AppendEvents(ctx, id, batch); err != nil {
						return err
					}
				}
				return nil
			})
		}
		require.NoError(t, g.Wait(), "round %d", round)
		es, err := stores[1].ListEvents(ctx, id, 0, 0)
		require.NoError(t, err)
		keys := map[string]bool{}
		for i, e := range es {
			require.Equal(t, int64(i+1), e.Seq, "round %d: seqs 1..n", round)
			require.False(t, keys[e.Key], "round %d: key %s twice", round, e.Key)
			keys[e.Key] = true
		}
		require.Len(t, es, writers*each+each, "round %d", round)
	}
}

// TestSurrealEventHeadBehindIsRepaired: a stream whose head lost an update
// (it says seq 2 while events 1..3 are stored, as the mem:// and
// surrealkv:// engines leave it after two concurrent appends) takes the
// next append at seq 4 instead of failing on the taken seq 3 for good.
func TestSurrealEventHeadBehindIsRepaired(t *testing.T) {
	ctx := context.Background()
	_, ss := surrealStores(t, "mem://", 1)
	s := ss[0]
	id := storagetest.NewID()
	now := time.Now()
	require.NoError(t, s.Create(ctx, storage.Task{ID: id, Name: "n", Command: "c", Status: storage.StatusPending, CreatedAt: now, UpdatedAt: now}))
	event := func(chunk int) storage.Event {
		return storage.Event{Key: storage.OutputEventKey("web-01", 1, chunk), Type: storage.EventOutput,
			Step: "web-01", Attempt: 1, Stream: "stdout", Lines: []string{fmt.Sprint("line ", chunk)}}
	}
	for i := 1; i <= 3; i++ {
		require.NoError(t, s.AppendEvents(ctx, id, []storage.Event{event(i)}))
	}
	_, err := s.query(ctx, "set the head back", "UPDATE $hid SET seq = 2;", map[string]any{"hid": eventHeadID(id)})
	require.NoError(t, err)

	require.NoError(t, s.AppendEvents(ctx, id, []storage.Event{event(4)}))
	require.NoError(t, s.AppendEvents(ctx, id, []storage.Event{event(5)}))
	es, err := s.ListEvents(ctx, id, 0, 0)
	require.NoError(t, err)
	var got []string
	for i, e := range es {
		require.Equal(t, int64(i+1), e.Seq)
		got = append(got, e.Key)
	}
	require.Equal(t, []string{event(1).Key, event(2).Key, event(3).Key, event(4).Key, event(5).Key}, got)
}
