package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/provisioning/orchestrator/driver/nushell"
	"github.com/provisioning/orchestrator/internal/app"
	"github.com/provisioning/orchestrator/internal/testsupport"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/workflows"
)

var (
	benchScaleTasks = flag.Int("bench.scaletasks", envInt("ORCHESTRATOR_BENCH_SCALE_TASKS", 1000),
		"tasks (and direct nu runs) per side in BenchmarkScale (env ORCHESTRATOR_BENCH_SCALE_TASKS)")
	benchScaleStep = flag.Duration("bench.scalestep", envDuration("ORCHESTRATOR_BENCH_SCALE_STEP", 5*time.Second),
		"how long each task's one step (the script's sleep) takes in BenchmarkScale (env ORCHESTRATOR_BENCH_SCALE_STEP)")
	benchScaleWidth = flag.Int("bench.scalewidth", envInt("ORCHESTRATOR_BENCH_SCALE_WIDTH", 500),
		"nu processes at once: the worker's --max-concurrent-activities (split between workers) and the direct pool's width (env ORCHESTRATOR_BENCH_SCALE_WIDTH)")
	benchScaleSides = flag.String("bench.scalesides", envString("ORCHESTRATOR_BENCH_SCALE_SIDES", "direct,sqlite"),
		"BenchmarkScale's sides in run order, comma-separated: direct, sqlite, sqlite-2workers, sqlite-noeager, postgres, postgres-2workers, postgres-noeager (env ORCHESTRATOR_BENCH_SCALE_SIDES)")
)

func envString(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// scaleScript is the provisioning script of BenchmarkScale: each call
// sleeps for the step's duration, then prints ok.
func scaleScript(step time.Duration) string {
	return fmt.Sprintf("def --wrapped main [...rest] { sleep %dms; print \"ok\" }\n", step.Milliseconds())
}

// scaleResult is one side of BenchmarkScale.
type scaleResult struct {
	makespan, submit time.Duration
	done             int
	cpuSelf, cpuNu   time.Duration
	// Orchestrated sides only: the process's peak resident set and Go
	// heap above the baseline taken just before the side, and the most
	// tasks seen Running at once.
	peakRSS, peakHeap int64
	peakRunning       int
}

// BenchmarkScale: many tasks whose step takes a while (default 1,000 ×
// 5 s, 500 at once) through the whole orchestrator, against the same nu
// runs from a plain Go pool of the same width, in one run. The tasks are
// submitted over REST by -bench.clients concurrent clients; the makespan
// runs from the first submission to the last task's completed_at (read
// from the store afterwards, so the completion poll can be slow and
// cheap). Reports each side's makespan, the ratio to the direct pool, the
// orchestrator's CPU per task, and its memory per in-flight task (peak RSS
// and Go heap above the baseline, over the peak count of Running tasks).
//
// Sides (-bench.scalesides): direct; sqlite (serve mode, embedded Temporal
// on SQLite); postgres (embedded Temporal on PostgreSQL, needs
// ORCHESTRATOR_TEST_POSTGRES_DSN); and their -2workers variants, where a
// second worker (worker mode, same store and task queue, in this process)
// takes half of the activity slots: the same width, split across workers;
// and their -noeager variants (--eager-start=false).
//
//	go test -run '^$' -bench Scale -benchtime 1x -timeout 30m ./e2e/ -bench.scalesides direct,sqlite,postgres,sqlite-2workers,postgres-2workers
//	go test -run '^$' -bench Scale -benchtime 1x ./e2e/ -bench.scaletasks 40 -bench.scalestep 1s -bench.scalewidth 4
func BenchmarkScale(b *testing.B) {
	n, step, width, maxTime := *benchScaleTasks, *benchScaleStep, *benchScaleWidth, *benchMaxTime
	sides := strings.Split(*benchScaleSides, ",")
	script := filepath.Join(b.TempDir(), "provisioning.nu")
	if err := os.WriteFile(script, []byte(scaleScript(step)), 0o644); err != nil {
		b.Fatal(err)
	}
	results := map[string]scaleResult{}
	b.ResetTimer()
	for iter := 0; iter < b.N; iter++ {
		for _, side := range sides {
			var r scaleResult
			switch side {
			case "direct":
				r = scaleDirect(b, script, n, width, maxTime)
			case "sqlite", "sqlite-2workers", "postgres", "postgres-2workers", "sqlite-noeager", "postgres-noeager":
				r = scaleOrchestrated(b, side, script, n, width, maxTime)
			default:
				b.Fatalf("unknown side %q in -bench.scalesides", side)
			}
			b.Logf("%s: %d/%d done, makespan %s (submitted in %s); CPU per task: process %.1f ms, nu %.1f ms; peak running %d; memory per in-flight task: RSS %.1f KiB, Go heap %.1f KiB (load %s)",
				side, r.done, n, r.makespan.Round(time.Millisecond), r.submit.Round(time.Millisecond),
				msPer(r.cpuSelf, r.done), msPer(r.cpuNu, r.done), r.peakRunning,
				perTaskKiB(r.peakRSS, r.peakRunning), perTaskKiB(r.peakHeap, r.peakRunning), loadAvg())
			if r.done < n {
				b.Errorf("%s: only %d of %d finished within %s", side, r.done, n, maxTime)
			}
			prev := results[side]
			if prev.makespan == 0 || r.makespan < prev.makespan {
				results[side] = r // best of b.N
			}
		}
	}
	b.StopTimer()
	b.ReportMetric(0, "ns/op")
	direct, haveDirect := results["direct"]
	for _, side := range sides {
		r := results[side]
		b.ReportMetric(r.makespan.Seconds(), side+"-s")
		if side == "direct" {
			continue
		}
		if haveDirect {
			b.ReportMetric(r.makespan.Seconds()/direct.makespan.Seconds(), side+"/direct")
		}
		b.ReportMetric(perTaskKiB(r.peakRSS, r.peakRunning), side+"-rss-KiB/task")
		b.ReportMetric(msPer(r.cpuSelf, r.done), side+"-cpu-ms/task")
	}
	b.Logf("%d tasks × %s step, %d wide, %d submitting clients, %d CPUs", n, step, width, *benchClients, runtime.NumCPU())
}

func perTaskKiB(bytes int64, tasks int) float64 {
	return float64(bytes) / 1024 / float64(max(tasks, 1))
}

func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(string(data))[:3], " ")
}

// scaleDirect runs n nu calls of the script from a pool of width goroutines,
// with the worker activity's runner, argv and environment.
func scaleDirect(b *testing.B, script string, n, width int, maxTime time.Duration) scaleResult {
	b.Helper()
	runner := &nushell.Runner{NuPath: testsupport.NuPath(b), ScriptPath: script}
	h := &benchApp{}
	ctx, cancel := context.WithTimeout(context.Background(), maxTime)
	defer cancel()
	self0, nu0 := cpuTimes()
	start := time.Now()
	var next, done atomic.Int64
	var g errgroup.Group
	for range width {
		g.Go(func() error {
			for i := next.Add(1) - 1; i < int64(n); i = next.Add(1) - 1 {
				if _, err := h.direct(ctx, runner, fmt.Sprintf("d-%d", i)); err != nil {
					return err
				}
				done.Add(1)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	r := scaleResult{makespan: time.Since(start), done: int(done.Load())}
	self1, nu1 := cpuTimes()
	r.cpuSelf, r.cpuNu = self1-self0, nu1-nu0
	return r
}

// scaleOrchestrated starts a fresh orchestrator for side, submits n tasks
// over REST and waits for them.
func scaleOrchestrated(b *testing.B, side, script string, n, width int, maxTime time.Duration) scaleResult {
	b.Helper()
	twoWorkers := strings.HasSuffix(side, "-2workers")
	noEager := strings.HasSuffix(side, "-noeager")
	slots := width
	if twoWorkers {
		slots = (width + 1) / 2
	}
	var dsn string
	if strings.HasPrefix(side, "postgres") {
		dsn = testsupport.Postgres(b).DSN
	}
	h := startBenchApp(b, func(c *app.Config) {
		c.ProvisioningPath = script
		// What `serve` runs with (30 s heartbeat timeout): the tests' 2 s
		// is too tight for 500 nu processes on 2 CPUs.
		c.Policy = workflows.ExecPolicy{}.WithDefaults()
		c.TemporalDB = dsn
		c.MaxConcurrentActivities = slots
		c.EagerStart = !noEager
	})
	h.script = script
	if twoWorkers {
		launchApp(b, appConfig(b, withNu(b, script), func(c *app.Config) {
			c.Mode = app.ModeWorker
			c.TemporalAddress = h.app.TemporalAddress()
			c.DataDir = h.app.Config().DataDir
			c.Policy = workflows.ExecPolicy{}.WithDefaults()
			c.MaxConcurrentActivities = width - slots
		}))
	}
	// One task through first: connections, caches and the script warm.
	if _, err := h.submitServer("warmup"); err != nil {
		b.Fatal(err)
	}
	if done, err := h.waitCompleted(1, time.Now().Add(time.Minute)); err != nil || done < 1 {
		b.Fatalf("%s: warm-up task did not complete: done=%d err=%v", side, done, err)
	}

	runtime.GC()
	rss0, heap0 := memNow()
	var peakRSS, peakHeap atomic.Int64
	var peakRunning atomic.Int64
	sampleCtx, stopSampling := context.WithCancel(context.Background())
	var sampler sync.WaitGroup
	sampler.Go(func() {
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-sampleCtx.Done():
				return
			case <-tick.C:
			}
			rss, heap := memNow()
			storeMax(&peakRSS, rss-rss0)
			storeMax(&peakHeap, heap-heap0)
			if i%2 == 0 {
				if running, err := h.count(storage.StatusRunning); err == nil {
					storeMax(&peakRunning, int64(running))
				}
			}
		}
	})

	self0, nu0 := cpuTimes()
	start := time.Now()
	ids := make([]string, n)
	var next atomic.Int64
	var g errgroup.Group
	for range *benchClients {
		g.Go(func() error {
			for i := next.Add(1) - 1; i < int64(n); i = next.Add(1) - 1 {
				id, err := h.submitServer(fmt.Sprintf("%s-%d", side, i))
				if err != nil {
					return err
				}
				ids[i] = id
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	r := scaleResult{submit: time.Since(start)}
	_, err := h.waitCompletedEvery(1+n, start.Add(maxTime), 500*time.Millisecond)
	self1, nu1 := cpuTimes()
	stopSampling()
	sampler.Wait()
	if err != nil {
		b.Fatal(err)
	}
	r.cpuSelf, r.cpuNu = self1-self0, nu1-nu0
	r.peakRSS, r.peakHeap, r.peakRunning = peakRSS.Load(), peakHeap.Load(), int(peakRunning.Load())
	// The makespan ends at the last completion the workflows recorded.
	last, completed := h.lastCompletion(b, ids, start)
	r.done, r.makespan = completed, last.Sub(start)
	return r
}

func storeMax(v *atomic.Int64, x int64) {
	for {
		cur := v.Load()
		if x <= cur || v.CompareAndSwap(cur, x) {
			return
		}
	}
}

// memNow is this process's resident set (VmRSS) and Go heap in use, bytes.
func memNow() (rss, heap int64) {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	heap = int64(ms.HeapInuse)
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, heap
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb * 1024, heap
		}
	}
	return 0, heap
}
