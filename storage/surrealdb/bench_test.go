package surrealdb

import (
	"context"
	"flag"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/provisioning/orchestrator/internal/testsupport"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/storage/storagetest"
)

// BenchmarkSurreal measures Put, Get and List (status filter, page of 50)
// on stores holding 100 and 10,000 tasks, like BenchmarkFilesystem (same
// tasks, same filter and pages), against the real SurrealDB engine
// (testsupport.StartSurreal, mem://) over one WebSocket connection from one
// goroutine.
//
//	go test -run xxx -bench . -benchtime 200x ./storage/surrealdb/
func BenchmarkSurreal(b *testing.B) {
	srv := testsupport.StartSurreal(b, "mem://")
	for _, n := range []int{100, 10_000} {
		b.Run(fmt.Sprintf("tasks=%d", n), func(b *testing.B) {
			ctx := context.Background()
			s, err := New(ctx, Options{
				URL: srv.URL, Username: srv.User, Password: srv.Pass,
				Database: fmt.Sprintf("bench%d", n), OpTimeout: time.Minute,
			})
			require.NoError(b, err)
			defer s.Close()
			tasks := seedSurreal(b, s, n)
			// Running is a fifth of the tasks; walk the first pages.
			running := n / 5
			pages := max(1, min(4, running/50))
			wantLen := min(50, running)
			filter := func(i int) storage.ListFilter {
				return storage.ListFilter{Status: storage.StatusRunning, Limit: 50, Offset: (i % pages) * 50}
			}

			b.Run("Get", func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					if _, err := s.Get(ctx, tasks[(i*7919)%n].ID); err != nil {
						b.Fatal(err)
					}
				}
				reportOps(b)
			})

			b.Run("List", func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					page, total, err := s.List(ctx, filter(i))
					if err != nil || len(page) != wantLen || total != running {
						b.Fatalf("list: %d tasks of %d, %v", len(page), total, err)
					}
				}
				reportOps(b)
			})

			b.Run("Put", func(b *testing.B) {
				version := int64(1)
				for i := 0; i < b.N; i++ {
					t := tasks[(i*7919)%n]
					version++
					t.Version = version
					t.Status = storage.StatusCompleted
					if err := s.Put(ctx, t); err != nil {
						b.Fatal(err)
					}
				}
				reportOps(b)
			})
		})
	}
}

// seedSurreal stores n tasks like seedFiles' (statuses cycling through all
// five, CreatedAt increasing with i), in batches of 500 tasks
// (their records and task_key records) per query.
func seedSurreal(tb testing.TB, s *Store, n int) []storage.Task {
	tb.Helper()
	return seedSurrealWith(tb, s, n, []storage.TaskStatus{storage.StatusPending, storage.StatusRunning, storage.StatusCompleted, storage.StatusFailed, storage.StatusCancelled})
}

// seedSurrealWith is seedSurreal with the statuses to cycle through.
func seedSurrealWith(tb testing.TB, s *Store, n int, statuses []storage.TaskStatus) []storage.Task {
	tb.Helper()
	base := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	tasks := make([]storage.Task, n)
	const batch = 500
	for lo := 0; lo < n; lo += batch {
		var rows, keys []map[string]any
		for i := lo; i < min(lo+batch, n); i++ {
			out := fmt.Sprintf("server web-%03d: created\n", i%1000)
			t, doc, err := storage.PrepareWrite(storage.Task{
				ID: storagetest.NewID(), Name: fmt.Sprintf("task %d", i), Command: "server create",
				Args:      []string{"--infra", "prod-stack", fmt.Sprintf("web-%03d", i%1000)},
				Status:    statuses[i%len(statuses)],
				CreatedAt: base.Add(time.Duration(i) * time.Second),
				UpdatedAt: base.Add(time.Duration(i)*time.Second + time.Minute),
				Output:    &out, WorkflowType: "ServerCreateWorkflow",
				Progress: storage.Progress{Done: 1, Total: 1},
				Steps: []storage.StepResult{{
					Name: fmt.Sprintf("web-%03d", i%1000), Status: storage.StatusCompleted,
					Attempts: 1, Output: out, DurationMS: 1200,
				}},
				Version: 1,
			})
			require.NoError(tb, err)
			tasks[i] = t
			row := surrealTaskContent(t, doc)
			row["id"] = taskRecordID(t.ID)
			rows = append(rows, row)
			for _, k := range surrealTaskKeys(t) {
				keys = append(keys, map[string]any{"id": k})
			}
		}
		_, err := s.query(context.Background(), "seed",
			`INSERT INTO task $rows RETURN NONE; INSERT INTO task_key $keys RETURN NONE;`,
			map[string]any{"rows": rows, "keys": keys})
		require.NoError(tb, err)
	}
	// The counters, as for a database written before they existed.
	_, err := s.query(context.Background(), "seed counters", `DELETE task_count:sharded;`+surrealCountInitSQL, nil)
	require.NoError(tb, err)
	return tasks
}

// reportOps reports throughput in the unit BenchmarkFilesystem uses, so
// the two benchmarks' results line up.
func reportOps(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

// BenchmarkSurrealListScale is the task list page (status filter, first
// page of 50) on a database of 100 tasks and one of 100,000 (6 in 10 tasks
// Running, so both pages are full), in the same run and interleaved (one
// call on each in turn), like BenchmarkFilesystemListScale; and Put (a
// status change) on both. Reported: small-ms and large-ms per call and
// ratio (large/small; the target for List is at most 1.3).
//
//	ORCHESTRATOR_REQUIRE_SURREALDB=1 go test -run xxx -bench SurrealListScale -benchtime 400x ./storage/surrealdb/
func BenchmarkSurrealListScale(b *testing.B) {
	srv := testsupport.StartSurreal(b, "mem://")
	ctx := context.Background()
	type side struct {
		s       *Store
		tasks   []storage.Task
		running int
		elapsed time.Duration
	}
	statuses := []storage.TaskStatus{
		storage.StatusRunning, storage.StatusPending, storage.StatusRunning, storage.StatusCompleted, storage.StatusRunning,
		storage.StatusFailed, storage.StatusRunning, storage.StatusCancelled, storage.StatusRunning, storage.StatusRunning,
	}
	open := func(n int) *side {
		s, err := New(ctx, Options{
			URL: srv.URL, Username: srv.User, Password: srv.Pass,
			Database: fmt.Sprintf("scale%d", n), OpTimeout: time.Minute,
		})
		require.NoError(b, err)
		b.Cleanup(func() { _ = s.Close() })
		return &side{s: s, tasks: seedSurrealWith(b, s, n, statuses), running: n * 6 / 10}
	}
	small, large := open(100), open(100_000)
	list := func(b *testing.B, sd *side) {
		start := time.Now()
		page, total, err := sd.s.List(ctx, storage.ListFilter{Status: storage.StatusRunning, Limit: 50})
		sd.elapsed += time.Since(start)
		if err != nil || len(page) != 50 || total != sd.running {
			b.Fatalf("list: %d tasks of %d, %v", len(page), total, err)
		}
	}
	version := int64(1)
	put := func(b *testing.B, sd *side, i int) {
		// Tasks that are Completed move to Failed and back: the Running
		// total stays put.
		t := sd.tasks[(i*10+3)%len(sd.tasks)]
		version++
		t.Version = version
		if version%2 == 0 {
			t.Status = storage.StatusFailed
		}
		start := time.Now()
		if err := sd.s.Put(ctx, t); err != nil {
			b.Fatal(err)
		}
		sd.elapsed += time.Since(start)
	}
	report := func(b *testing.B) {
		b.ReportMetric(float64(small.elapsed.Microseconds())/1000/float64(b.N), "small-ms")
		b.ReportMetric(float64(large.elapsed.Microseconds())/1000/float64(b.N), "large-ms")
		b.ReportMetric(float64(large.elapsed)/float64(small.elapsed), "ratio")
	}
	b.Run("List", func(b *testing.B) {
		small.elapsed, large.elapsed = 0, 0
		for i := 0; i < b.N; i++ {
			list(b, small)
			list(b, large)
		}
		report(b)
	})
	b.Run("Put", func(b *testing.B) {
		small.elapsed, large.elapsed = 0, 0
		for i := 0; i < b.N; i++ {
			put(b, small, i)
			put(b, large, i)
		}
		report(b)
	})
}

// concurrentWriters is how many goroutines BenchmarkSurrealConcurrentWrites
// writes with, in total.
var concurrentWriters = flag.Int("bench.writers", 8, "writers of BenchmarkSurrealConcurrentWrites")

// BenchmarkSurrealConcurrentWrites measures write throughput with
// concurrent writers, each changing the status of its own tasks (so every
// write moves a task between counters): all writers on one Store (one
// process: a migration's workers, a worker's projections), and split over
// two Stores on one database (two processes: an API and a worker). Each
// side writes b.N × writers Puts to a database of 125 tasks per writer. Reported:
// writes/s and conflicts (statements retried) per write.
//
//	ORCHESTRATOR_REQUIRE_SURREALDB=1 go test -run xxx -bench SurrealConcurrentWrites -benchtime 200x ./storage/surrealdb/
func BenchmarkSurrealConcurrentWrites(b *testing.B) {
	srv := testsupport.StartSurreal(b, "mem://")
	ctx := context.Background()
	writers := *concurrentWriters
	for _, stores := range []int{1, 2} {
		b.Run(fmt.Sprintf("stores=%d", stores), func(b *testing.B) {
			db := fmt.Sprintf("writes%d_%d", stores, time.Now().UnixNano())
			ss := make([]*Store, stores)
			for i := range ss {
				s, err := New(ctx, Options{URL: srv.URL, Username: srv.User, Password: srv.Pass, Database: db, OpTimeout: time.Minute})
				require.NoError(b, err)
				b.Cleanup(func() { _ = s.Close() })
				ss[i] = s
			}
			tasks := seedSurreal(b, ss[0], 125*writers)
			statuses := []storage.TaskStatus{storage.StatusRunning, storage.StatusCompleted, storage.StatusFailed}
			b.ResetTimer()
			var g errgroup.Group
			for w := range writers {
				s := ss[w%stores]
				g.Go(func() error {
					for i := range b.N {
						// Writer w owns tasks w, w+writers, ...: no two
						// writers touch one task record.
						t := tasks[(w+i*writers)%len(tasks)]
						t.Version = int64(2 + i)
						t.Status = statuses[i%len(statuses)]
						if err := s.Put(ctx, t); err != nil {
							return err
						}
					}
					return nil
				})
			}
			require.NoError(b, g.Wait())
			b.StopTimer()
			var conflicts int64
			for _, s := range ss {
				conflicts += s.conflicts.Load()
			}
			writes := float64(b.N * writers)
			b.ReportMetric(writes/b.Elapsed().Seconds(), "writes/s")
			b.ReportMetric(float64(conflicts)/writes, "conflicts/write")
		})
	}
}
