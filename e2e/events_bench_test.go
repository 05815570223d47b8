package e2e

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/provisioning/orchestrator/internal/app"
	"github.com/provisioning/orchestrator/sdk"
	"github.com/provisioning/orchestrator/storage"
)

var (
	benchEventTasks = flag.Int("bench.eventtasks", envInt("ORCHESTRATOR_BENCH_EVENT_TASKS", 50),
		"trivial tasks per batch in BenchmarkLiveEvents' throughput phases (env ORCHESTRATOR_BENCH_EVENT_TASKS)")
	benchEventRounds = flag.Int("bench.eventrounds", envInt("ORCHESTRATOR_BENCH_EVENT_ROUNDS", 2),
		"rounds of the three throughput modes, in rotating order (env ORCHESTRATOR_BENCH_EVENT_ROUNDS)")
	benchLatTasks = flag.Int("bench.lattasks", envInt("ORCHESTRATOR_BENCH_LAT_TASKS", 10),
		"tasks of 20 timed lines each in BenchmarkLiveEvents' latency phase (env ORCHESTRATOR_BENCH_LAT_TASKS)")
)

// BenchmarkLiveEvents measures the live event stream through the real
// parts (REST, Temporal, worker, nu, filesystem store):
//
//   - latency: a script prints lines carrying their print time; the
//     time until each arrives at an SSE client (GET /tasks/{id}/events),
//     p50/p99, from the serve-mode process that also runs the worker (its
//     streams wake on the store's own appends) and from a separate API
//     instance on the same data dir (its streams see the worker's appends
//     by polling, as in the split api/worker set-up);
//   - the cost of streaming on P1-style throughput: batches of trivial
//     one-server tasks (4 concurrent nu, as BenchmarkOrchestratedVsDirect)
//     without a subscriber, with one GET /events subscriber, and with one
//     GET /tasks/{id}/events watcher per task (what --wait does), in the
//     same run, in rotating order over -bench.eventrounds rounds.
//
// Use -benchtime 1x.
func BenchmarkLiveEvents(b *testing.B) {
	script := filepath.Join(b.TempDir(), "provisioning")
	if err := os.WriteFile(script, []byte(eventsScript), 0o644); err != nil {
		b.Fatal(err)
	}
	cfg := appConfig(b, withNu(b, script), func(c *app.Config) {
		c.Policy = benchPolicy()
		c.MaxConcurrentActivities = benchConcurrency
	})
	serve, _ := launchApp(b, cfg)
	apiCfg := cfg
	apiCfg.Mode = app.ModeAPI
	apiCfg.TemporalAddress = serve.TemporalAddress()
	apiCfg.Port = 0
	api, _ := launchApp(b, apiCfg)
	h := &benchApp{app: serve, base: baseURL(serve),
		http: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 32}, Timeout: time.Minute}}
	ctx, cancel := context.WithTimeout(context.Background(), *benchMaxTime)
	defer cancel()

	for b.Loop() {
		// Latency.
		var serveLat, splitLat []float64
		for i := range *benchLatTasks {
			id, err := h.submitServer(fmt.Sprintf("lat-%d", i))
			if err != nil {
				b.Fatal(err)
			}
			var wg sync.WaitGroup
			var mu sync.Mutex
			errs := make(chan error, 2)
			for _, sub := range []struct {
				base string
				into *[]float64
			}{{baseURL(serve), &serveLat}, {baseURL(api), &splitLat}} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					lat, err := tickLatencies(ctx, sub.base, id)
					mu.Lock()
					*sub.into = append(*sub.into, lat...)
					mu.Unlock()
					errs <- err
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					b.Fatal(err)
				}
			}
		}
		b.ReportMetric(0, "ns/op")
		b.ReportMetric(percentile(serveLat, 50), "serve-p50-ms")
		b.ReportMetric(percentile(serveLat, 99), "serve-p99-ms")
		b.ReportMetric(percentile(splitLat, 50), "split-p50-ms")
		b.ReportMetric(percentile(splitLat, 99), "split-p99-ms")
		b.Logf("latency samples: serve %d, split %d", len(serveLat), len(splitLat))

		// Throughput: warm up, then rounds of the three modes in rotating
		// order (the machine's load drifts; rotation spreads it), each
		// mode's batches summed.
		if _, err := h.batch(ctx, "warm", 20, "none"); err != nil {
			b.Fatal(err)
		}
		modes := []string{"none", "global", "per-task"}
		elapsed := map[string]time.Duration{}
		for round := range *benchEventRounds {
			for k := range modes {
				mode := modes[(k+round)%len(modes)]
				rate, err := h.batch(ctx, fmt.Sprintf("%s%d", mode, round), *benchEventTasks, mode)
				if err != nil {
					b.Fatal(err)
				}
				b.Logf("round %d %s: %.2f tasks/s", round, mode, rate)
				elapsed[mode] += time.Duration(float64(*benchEventTasks) / rate * float64(time.Second))
			}
		}
		for _, mode := range modes {
			b.ReportMetric(float64(*benchEventTasks**benchEventRounds)/elapsed[mode].Seconds(), "tasks/s-"+mode)
		}
	}
}

// tickLatencies watches a lat-* task and returns, per "tick <ns>" line,
// how long after its print it arrived (ms).
func tickLatencies(ctx context.Context, base, id string) ([]float64, error) {
	s, err := sdk.WatchTask(ctx, base, id, sdk.WatchOptions{})
	if err != nil {
		return nil, err
	}
	defer s.Close()
	var out []float64
	for {
		ev, err := s.Next()
		if errors.Is(err, io.EOF) {
			if len(out) != 20 {
				return out, fmt.Errorf("task %s: %d tick lines, want 20", id, len(out))
			}
			return out, nil
		}
		if err != nil {
			return out, err
		}
		now := time.Now()
		for _, l := range ev.Lines {
			ns, ok := strings.CutPrefix(l, "tick ")
			if !ok {
				continue
			}
			n, err := strconv.ParseInt(ns, 10, 64)
			if err != nil {
				return out, fmt.Errorf("line %q: %w", l, err)
			}
			out = append(out, float64(now.Sub(time.Unix(0, n)).Microseconds())/1000)
		}
		if ev.Type == storage.EventTransition && ev.Status.Terminal() && ev.Status != storage.StatusCompleted {
			return out, fmt.Errorf("task %s ended %s", id, ev.Status)
		}
	}
}

// batch runs n trivial tasks (4 submitters) and returns tasks/s from the
// first submit until all completed. subscribers: "none"; "global" (one
// GET /events client reading everything meanwhile); "per-task" (every
// task watched to its end through GET /tasks/{id}/events, which is how
// completion is then detected).
func (h *benchApp) batch(ctx context.Context, prefix string, n int, subscribers string) (float64, error) {
	before, err := h.count(storage.StatusCompleted)
	if err != nil {
		return 0, err
	}
	var global *sdk.EventStream
	globalEvents := 0
	globalDone := make(chan struct{})
	if subscribers == "global" {
		global, err = sdk.WatchAll(ctx, h.base, "", "", sdk.WatchOptions{})
		if err != nil {
			return 0, err
		}
		go func() {
			defer close(globalDone)
			for {
				if _, err := global.Next(); err != nil {
					return
				}
				globalEvents++
			}
		}()
	}
	start := time.Now()
	ids := make(chan string, n)
	var wg sync.WaitGroup
	errs := make(chan error, n+benchConcurrency)
	for w := range benchConcurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += benchConcurrency {
				id, err := h.submitServer(fmt.Sprintf("%s-%d", prefix, i))
				if err != nil {
					errs <- err
					return
				}
				ids <- id
			}
		}()
	}
	var watchers sync.WaitGroup
	if subscribers == "per-task" {
		for range n {
			id := <-ids
			watchers.Add(1)
			go func() {
				defer watchers.Done()
				s, err := sdk.WatchTask(ctx, h.base, id, sdk.WatchOptions{})
				if err != nil {
					errs <- err
					return
				}
				defer s.Close()
				var last sdk.StreamEvent
				for {
					ev, err := s.Next()
					if errors.Is(err, io.EOF) {
						break
					}
					if err != nil {
						errs <- err
						return
					}
					last = ev
				}
				if last.Status != storage.StatusCompleted {
					errs <- fmt.Errorf("task %s: stream ended at %+v", id, last.Event)
				}
			}()
		}
	}
	wg.Wait()
	watchers.Wait()
	select {
	case err := <-errs:
		return 0, err
	default:
	}
	done, err := h.waitCompleted(before+n, time.Now().Add(*benchMaxTime))
	if err != nil {
		return 0, err
	}
	if done < before+n {
		return 0, fmt.Errorf("%s: %d of %d tasks completed in time", prefix, done-before, n)
	}
	elapsed := time.Since(start)
	if global != nil {
		_ = global.Close()
		<-globalDone
	}
	return float64(n) / elapsed.Seconds(), nil
}
