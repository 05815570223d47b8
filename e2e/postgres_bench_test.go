package e2e

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/provisioning/orchestrator/internal/app"
	"github.com/provisioning/orchestrator/internal/testsupport"
	"github.com/provisioning/orchestrator/storage"
)

// orchestrateBatch submits n trivial one-server tasks from
// benchConcurrency clients and waits until all are Completed; it returns
// the tasks completed per second, submit to last completion.
func (h *benchApp) orchestrateBatch(b *testing.B, prefix string, n int, maxTime time.Duration) float64 {
	b.Helper()
	base, err := h.count(storage.StatusCompleted)
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	var next, submitted atomic.Int64
	var wg sync.WaitGroup
	var once sync.Once
	var firstErr error
	for range benchConcurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				if _, err := h.submitServer(fmt.Sprintf("%s-%d", prefix, i)); err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				submitted.Add(1)
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	done, err := h.waitCompleted(base+int(submitted.Load()), start.Add(maxTime))
	if err != nil {
		b.Fatal(err)
	}
	took := time.Since(start)
	if done-base < n {
		b.Fatalf("%s: %d of %d tasks completed within %s", prefix, done-base, n, maxTime)
	}
	return float64(n) / took.Seconds()
}

// BenchmarkTemporalSQLiteVsPostgres: P1's trivial tasks (one server, the
// `print ok` script, 4 activity slots, 4 submitting clients) on two
// orchestrators side by side in one process, one with the embedded
// Temporal on SQLite (the default), the other on PostgreSQL
// (--temporal-db); batches alternate between them so that both see the
// same machine load. A third side runs on PostgreSQL with a second worker
// (in-process, worker mode, 4 more slots): whether more workers add
// throughput here. Reports the median tasks/s of each and the ratios.
// Rounds from ORCHESTRATOR_BENCH_ROUNDS (default 3), tasks per batch from
// -bench.tasks / ORCHESTRATOR_BENCH_TASKS.
//
//	ORCHESTRATOR_TEST_POSTGRES_DSN=postgres://... go test -run '^$' -bench TemporalSQLiteVsPostgres -benchtime 1x ./e2e/ -bench.tasks 100
func BenchmarkTemporalSQLiteVsPostgres(b *testing.B) {
	pg := testsupport.Postgres(b)
	n, maxTime, rounds := *benchTasks, *benchMaxTime, envInt("ORCHESTRATOR_BENCH_ROUNDS", 3)
	pg2, pg3 := testsupport.Postgres(b), testsupport.Postgres(b)
	twoWorkers := startBenchApp(b, func(c *app.Config) { c.TemporalDB = pg2.DSN })
	// The second worker: same script, slots, task queue and store as the
	// serve process's own worker.
	launchApp(b, appConfig(b, withNu(b, twoWorkers.script), func(c *app.Config) {
		c.Mode = app.ModeWorker
		c.TemporalAddress = twoWorkers.app.TemporalAddress()
		c.DataDir = twoWorkers.app.Config().DataDir
		c.Policy = benchPolicy()
		c.MaxConcurrentActivities = benchConcurrency
	}))
	sides := []struct {
		name string
		h    *benchApp
	}{
		{"sqlite", startBenchApp(b)},
		{"postgres", startBenchApp(b, func(c *app.Config) { c.TemporalDB = pg.DSN })},
		{"postgres-2workers", twoWorkers},
		// PostgreSQL commits without waiting for the WAL flush (a crash
		// may lose the last moments; the database stays consistent), as
		// the SQLite file runs with synchronous=NORMAL: how much of the
		// difference is the per-commit fsync.
		{"postgres-async-commit", startBenchApp(b, func(c *app.Config) { c.TemporalDB = pg3.DSN + "&synchronous_commit=off" })},
	}
	for _, s := range sides {
		s.h.orchestrateBatch(b, s.name+"-warmup", 10, time.Minute)
	}
	rates := map[string][]float64{}
	b.ResetTimer()
	for iter := 0; iter < b.N; iter++ {
		for r := range rounds {
			for _, s := range sides {
				rate := s.h.orchestrateBatch(b, fmt.Sprintf("%s-%d-%d", s.name, iter, r), n, maxTime)
				rates[s.name] = append(rates[s.name], rate)
			}
		}
	}
	b.StopTimer()
	med := func(xs []float64) float64 { return percentile(xs, 50) }
	for _, s := range sides {
		xs := rates[s.name]
		b.Logf("%s: median %.1f tasks/s, range %.1f-%.1f over %d batches of %d (in order: %.1f)", s.name, med(xs), slices.Min(xs), slices.Max(xs), len(xs), n, xs)
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(med(rates["sqlite"]), "sqlite-tasks/s")
	b.ReportMetric(med(rates["postgres"]), "postgres-tasks/s")
	b.ReportMetric(med(rates["postgres"])/med(rates["sqlite"]), "postgres/sqlite")
	b.ReportMetric(med(rates["postgres-2workers"]), "postgres-2w-tasks/s")
	b.ReportMetric(med(rates["postgres-2workers"])/med(rates["postgres"]), "2w/1w")
	b.ReportMetric(med(rates["postgres-async-commit"]), "postgres-async-tasks/s")
}
