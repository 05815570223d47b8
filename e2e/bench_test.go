package e2e

// Benchmarks of the orchestration overhead, through the real parts: real
// HTTP, the embedded Temporal server (SQLite), a real worker, the real `nu`
// running a trivial script, and the filesystem store.
//
// Each iteration of a benchmark is one whole batch (hundreds of tasks), so
// run them with -benchtime 1x:
//
//	go test -run '^$' -bench . -benchtime 1x ./e2e/
//
// A larger b.N just repeats the batch on the same app; the reported figures
// are then aggregated over all batches. Batch sizes and the time cap come
// from flags (after the package, e.g. `./e2e/ -bench.tasks 50`) or from the
// environment: ORCHESTRATOR_BENCH_TASKS (default 200),
// ORCHESTRATOR_BENCH_SUBMITS (default 200) and ORCHESTRATOR_BENCH_MAX_TIME
// (default 5m).

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"golang.org/x/sync/errgroup"

	"github.com/provisioning/orchestrator/driver/nushell"
	"github.com/provisioning/orchestrator/internal/app"
	"github.com/provisioning/orchestrator/internal/testsupport"
	"github.com/provisioning/orchestrator/server"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/workflows"
)

var (
	benchTasks   = flag.Int("bench.tasks", envInt("ORCHESTRATOR_BENCH_TASKS", 200), "server-create tasks per batch in BenchmarkOrchestratedVsDirect (env ORCHESTRATOR_BENCH_TASKS)")
	benchSubmits = flag.Int("bench.submits", envInt("ORCHESTRATOR_BENCH_SUBMITS", 200), "submissions per side in BenchmarkSubmitLatency (env ORCHESTRATOR_BENCH_SUBMITS)")
	benchClients = flag.Int("bench.clients", envInt("ORCHESTRATOR_BENCH_CLIENTS", 16), "concurrent clients in BenchmarkSubmitThroughput (env ORCHESTRATOR_BENCH_CLIENTS)")
	benchMaxTime = flag.Duration("bench.maxtime", envDuration("ORCHESTRATOR_BENCH_MAX_TIME", 5*time.Minute), "cap on each measured phase; what finished by then is reported (env ORCHESTRATOR_BENCH_MAX_TIME)")
)

// benchConcurrency bounds both sides of BenchmarkOrchestratedVsDirect: the
// worker's activity slots (global across tasks) and the direct pool.
const benchConcurrency = 4

// benchPoll is how often completion is polled over HTTP. It bounds the
// measurement error of a batch (seconds long) to one interval.
const benchPoll = 50 * time.Millisecond

// benchScript is the trivial provisioning script: accepts any argv, prints ok.
const benchScript = "def --wrapped main [...rest] { print \"ok\" }\n"

const (
	benchInfra    = "bench"
	benchSettings = "./s.yaml"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func envDuration(name string, def time.Duration) time.Duration {
	if v, err := time.ParseDuration(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// benchInput is the workflow input for one server; its ServerArgs is the argv
// both sides run: server create --infra bench --settings ./s.yaml s-<i>.
func benchInput(server string) workflows.ServerCreateInput {
	return workflows.ServerCreateInput{
		Common: workflows.Common{
			TaskID:    uuid.NewString(),
			Infra:     benchInfra,
			Settings:  benchSettings,
			CreatedAt: time.Now().UTC().Truncate(time.Microsecond),
			Policy:    benchPolicy(),
		},
		Servers: []string{server},
	}
}

func benchPolicy() workflows.ExecPolicy {
	p := fastPolicy
	p.Parallelism = benchConcurrency
	return p
}

// benchApp is an in-process orchestrator (serve mode) running the trivial
// script, with the worker bounded to benchConcurrency activities.
type benchApp struct {
	app    *app.App
	base   string
	http   *http.Client
	nu     string
	script string
	warns  *appLog
}

func startBenchApp(b *testing.B, opts ...func(*app.Config)) *benchApp {
	b.Helper()
	script := filepath.Join(b.TempDir(), "provisioning.nu")
	if err := os.WriteFile(script, []byte(benchScript), 0o644); err != nil {
		b.Fatal(err)
	}
	cfg := appConfig(b, withNu(b, script), func(c *app.Config) {
		c.Policy = benchPolicy()
		c.MaxConcurrentActivities = benchConcurrency
		for _, o := range opts {
			o(c)
		}
	})
	a, warns := launchApp(b, cfg)
	return &benchApp{
		app:    a,
		base:   baseURL(a),
		http:   &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 32}, Timeout: time.Minute},
		nu:     cfg.NuPath,
		script: script,
		warns:  warns,
	}
}

// call does one REST request and decodes the envelope; errors (also for a
// status other than 200) instead of failing, so it can run on any goroutine.
func (h *benchApp) call(method, path string, body any) (envelope, http.Header, error) {
	r, err := sendOK(h.http, method, h.base+path, body)
	if err == nil && r.status != http.StatusOK {
		err = fmt.Errorf("%s %s: HTTP %d: %s", method, path, r.status, r.raw)
	}
	return r.env, r.header, err
}

// submitServer posts one server-create request and returns the task id.
func (h *benchApp) submitServer(server string) (string, error) {
	env, _, err := h.call(http.MethodPost, "/workflows/servers/create", serverReq(server))
	if err != nil {
		return "", err
	}
	var id string
	if err := json.Unmarshal(env.Data, &id); err != nil {
		return "", err
	}
	return id, nil
}

func serverReq(name string) server.CreateServersRequest {
	return server.CreateServersRequest{Infra: benchInfra, Settings: benchSettings, Servers: []string{name}}
}

// count is X-Total-Count of GET /tasks?status=<status>.
func (h *benchApp) count(status storage.TaskStatus) (int, error) {
	_, hdr, err := h.call(http.MethodGet, "/tasks?limit=1&status="+string(status), nil)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(hdr.Get("X-Total-Count"))
}

// waitCompleted polls until want tasks are Completed or the deadline passes,
// and returns how many were. Any Failed or Cancelled task is an error.
func (h *benchApp) waitCompleted(want int, deadline time.Time) (int, error) {
	return h.waitCompletedEvery(want, deadline, benchPoll)
}

// benchTemporalDB puts the bench app's embedded Temporal on PostgreSQL when
// ORCHESTRATOR_BENCH_TEMPORAL=postgres (a database of its own on
// ORCHESTRATOR_TEST_POSTGRES_DSN's server); SQLite otherwise.
func benchTemporalDB(b *testing.B) func(*app.Config) {
	if os.Getenv("ORCHESTRATOR_BENCH_TEMPORAL") != "postgres" {
		return func(*app.Config) {}
	}
	dsn := testsupport.Postgres(b).DSN
	return func(c *app.Config) { c.TemporalDB = dsn }
}

// postgresCPU is the CPU time of every process named postgres on this
// machine (0 without any): with Temporal on PostgreSQL, the persistence
// work the SQLite side does in-process.
func postgresCPU() time.Duration {
	entries, _ := os.ReadDir("/proc")
	var ticks int64
	for _, e := range entries {
		data, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(data)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || end < open || s[open+1:end] != "postgres" {
			continue
		}
		f := strings.Fields(s[end+1:])
		if len(f) > 12 {
			u, _ := strconv.ParseInt(f[11], 10, 64)
			st, _ := strconv.ParseInt(f[12], 10, 64)
			ticks += u + st
		}
	}
	return time.Duration(ticks) * (time.Second / 100) // USER_HZ
}

// benchSlowPoll is the completion poll of batches whose end is read from
// the tasks' completed_at afterwards.
const benchSlowPoll = 500 * time.Millisecond

// lastCompletion is the latest completed_at of those of the tasks ids that
// are Completed (not before since), and how many are.
func (h *benchApp) lastCompletion(b *testing.B, ids []string, since time.Time) (last time.Time, completed int) {
	b.Helper()
	last = since
	for _, id := range ids {
		t, err := h.app.Store().Get(context.Background(), id)
		if err != nil {
			b.Fatal(err)
		}
		if t.Status != storage.StatusCompleted || t.CompletedAt == nil {
			continue
		}
		completed++
		if t.CompletedAt.After(last) {
			last = *t.CompletedAt
		}
	}
	return last, completed
}

// waitCompletedEvery is waitCompleted polling every poll.
func (h *benchApp) waitCompletedEvery(want int, deadline time.Time, poll time.Duration) (int, error) {
	for {
		done, err := h.count(storage.StatusCompleted)
		if err != nil {
			return done, err
		}
		if done >= want || time.Now().After(deadline) {
			return done, nil
		}
		for _, st := range []storage.TaskStatus{storage.StatusFailed, storage.StatusCancelled} {
			if n, err := h.count(st); err != nil || n > 0 {
				return done, errors.Join(err, h.describe(st, n))
			}
		}
		time.Sleep(poll)
	}
}

func (h *benchApp) describe(st storage.TaskStatus, n int) error {
	if n == 0 {
		return nil
	}
	env, _, err := h.call(http.MethodGet, "/tasks?limit=1&status="+string(st), nil)
	if err != nil {
		return err
	}
	return fmt.Errorf("%d task(s) %s, e.g. %s", n, st, env.Data)
}

// direct runs nu exactly as the worker's activity does (same runner, argv
// and per-step environment), with no orchestration around it.
func (h *benchApp) direct(ctx context.Context, runner *nushell.Runner, server string) (time.Duration, error) {
	in := benchInput(server)
	env := []string{"ORCHESTRATOR_TASK_ID=" + in.TaskID, "ORCHESTRATOR_STEP=" + server, "ORCHESTRATOR_ATTEMPT=1"}
	res, err := runner.Run(ctx, in.ServerArgs(server), env, func() {}, nushell.DefaultHeartbeatInterval)
	if err != nil {
		return res.Duration, fmt.Errorf("direct nu %s: %w (stderr: %s)", server, err, res.Stderr)
	}
	if strings.TrimSpace(res.Stdout) != "ok" {
		return res.Duration, fmt.Errorf("direct nu %s: stdout %q, want ok", server, res.Stdout)
	}
	return res.Duration, nil
}

// BenchmarkOrchestratedVsDirect runs N one-server server-create tasks through
// the whole orchestrator (POST, Temporal workflow, activity running nu,
// projections to the store) and the same N nu runs from a plain pool of
// goroutines, both bounded to 4 concurrent nu processes, and reports the
// throughput of each and their ratio. Use -benchtime 1x: one iteration is
// one batch on each side.
func BenchmarkOrchestratedVsDirect(b *testing.B) {
	n, maxTime := *benchTasks, *benchMaxTime
	h := startBenchApp(b, benchTemporalDB(b))
	runner := &nushell.Runner{NuPath: h.nu, ScriptPath: h.script}
	ctx := context.Background()

	// Warm up both paths (page cache for nu, SQLite, connections) so the
	// first batch is not charged with one-off start-up costs.
	if _, err := h.direct(ctx, runner, "warmup"); err != nil {
		b.Fatal(err)
	}
	if _, err := h.submitServer("warmup"); err != nil {
		b.Fatal(err)
	}
	if done, err := h.waitCompleted(1, time.Now().Add(time.Minute)); err != nil || done < 1 {
		b.Fatalf("warm-up task did not complete: done=%d err=%v", done, err)
	}

	var (
		orchDone, directDone         int
		orchTime, directTime         time.Duration
		orchSubmitted, directStarted int
		ids                          []string
		directNuMS                   []float64
		orchSelf, orchNu             time.Duration // CPU used in the orchestrated phases
		orchPG                       time.Duration // PostgreSQL's CPU then (Temporal on PostgreSQL)
		directSelf, directNu         time.Duration // CPU used in the direct phases
	)
	b.ResetTimer()
	for iter := 0; iter < b.N; iter++ {
		// Direct: a pool of benchConcurrency goroutines over N runs.
		{
			self0, nu0 := cpuTimes()
			start := time.Now()
			deadline := start.Add(maxTime)
			next := atomic.Int64{}
			var mu sync.Mutex
			var firstErr error
			var wg sync.WaitGroup
			for range benchConcurrency {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						i := int(next.Add(1)) - 1
						if i >= n || time.Now().After(deadline) {
							return
						}
						d, err := h.direct(ctx, runner, fmt.Sprintf("s-%d", i))
						mu.Lock()
						if err != nil {
							if firstErr == nil {
								firstErr = err
							}
							mu.Unlock()
							return
						}
						directNuMS = append(directNuMS, ms(d))
						directDone++
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			directTime += time.Since(start)
			self1, nu1 := cpuTimes()
			directSelf += self1 - self0
			directNu += nu1 - nu0
			directStarted += min(int(next.Load()), n)
			if firstErr != nil {
				b.Fatal(firstErr)
			}
		}

		// Orchestrated: POST N tasks (from benchConcurrency clients, so the
		// client is not the bottleneck), then poll until all are Completed.
		{
			base, err := h.count(storage.StatusCompleted)
			if err != nil {
				b.Fatal(err)
			}
			self0, nu0 := cpuTimes()
			pg0 := postgresCPU()
			start := time.Now()
			deadline := start.Add(maxTime)
			next := atomic.Int64{}
			firstID := len(ids)
			var submitted atomic.Int64
			var mu sync.Mutex
			var firstErr error
			var wg sync.WaitGroup
			for range benchConcurrency {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						i := int(next.Add(1)) - 1
						if i >= n || time.Now().After(deadline) {
							return
						}
						id, err := h.submitServer(fmt.Sprintf("s-%d", i))
						mu.Lock()
						if err != nil {
							if firstErr == nil {
								firstErr = err
							}
							mu.Unlock()
							return
						}
						ids = append(ids, id)
						mu.Unlock()
						submitted.Add(1)
					}
				}()
			}
			wg.Wait()
			if firstErr != nil {
				b.Fatal(firstErr)
			}
			sub := int(submitted.Load())
			submitTime := time.Since(start)
			// Polled slowly (the poll's own CPU would be charged to the
			// orchestrator); the batch ends at its last recorded completion.
			done, err := h.waitCompletedEvery(base+sub, deadline, benchSlowPoll)
			self1, nu1 := cpuTimes()
			last, _ := h.lastCompletion(b, ids[firstID:], start)
			orchTime += last.Sub(start)
			orchPG += postgresCPU() - pg0
			orchSelf += self1 - self0
			orchNu += nu1 - nu0
			orchDone += done - base
			orchSubmitted += sub
			if err != nil {
				b.Fatal(err)
			}
			b.Logf("batch %d: %d tasks submitted in %s", iter+1, sub, submitTime.Round(time.Millisecond))
		}
	}
	b.StopTimer()

	orchRate := float64(orchDone) / orchTime.Seconds()
	directRate := float64(directDone) / directTime.Seconds()
	b.ReportMetric(0, "ns/op") // one op is a whole batch on both sides: meaningless
	b.ReportMetric(orchRate, "orch-tasks/s")
	b.ReportMetric(directRate, "direct-tasks/s")
	b.ReportMetric(orchRate/directRate, "orch/direct")

	// Where the time went, from the projected task records (not timed).
	var nuMS, queueMS, e2eMS []float64
	for _, id := range ids {
		t, err := h.app.Store().Get(ctx, id)
		if err != nil || t.Status != storage.StatusCompleted || t.StartedAt == nil || t.CompletedAt == nil || len(t.Steps) != 1 {
			continue
		}
		nuMS = append(nuMS, float64(t.Steps[0].DurationMS))
		queueMS = append(queueMS, float64(t.StartedAt.Sub(t.CreatedAt).Milliseconds()))
		e2eMS = append(e2eMS, float64(t.CompletedAt.Sub(t.CreatedAt).Milliseconds()))
	}
	b.ReportMetric(mean(directNuMS), "direct-nu-ms")
	b.ReportMetric(msPer(orchSelf, orchDone), "orch-cpu-ms/task")
	b.ReportMetric(msPer(directNu, directDone), "nu-cpu-ms/task")
	if len(nuMS) > 0 {
		b.ReportMetric(mean(nuMS), "orch-nu-ms")
	}
	b.Logf("orchestrated: %d/%d tasks Completed in %s = %.1f tasks/s; direct: %d/%d nu runs in %s = %.1f tasks/s; orchestrated/direct = %.2f (concurrency %d, %d batch(es))",
		orchDone, orchSubmitted, orchTime.Round(time.Millisecond), orchRate,
		directDone, directStarted, directTime.Round(time.Millisecond), directRate,
		orchRate/directRate, benchConcurrency, b.N)
	if len(nuMS) > 0 {
		b.Logf("mean nu run (ms): direct %.0f, orchestrated step %.0f; per orchestrated task (ms): created->started p50 %.0f p99 %.0f; created->completed p50 %.0f p99 %.0f",
			mean(directNuMS), mean(nuMS), percentile(queueMS, 50), percentile(queueMS, 99), percentile(e2eMS, 50), percentile(e2eMS, 99))
	}
	b.Logf("CPU per task (ms): orchestrated: orchestrator process %.1f + nu %.1f + PostgreSQL %.1f; direct: runner %.1f + nu %.1f (%d CPUs available)",
		msPer(orchSelf, orchDone), msPer(orchNu, orchDone), msPer(orchPG, orchDone), msPer(directSelf, directDone), msPer(directNu, directDone), runtime.NumCPU())
	if len(ids) > 0 {
		b.Logf("history of one orchestrated task: %s", historySummary(ctx, h.app.Client(), ids[0]))
	}
	if orchDone < orchSubmitted || orchSubmitted < n*b.N {
		b.Logf("time cap %s reached: only what finished is counted", maxTime)
	}
	if w := h.warns.count(); w > 0 {
		b.Logf("%d warning/error log line(s) from the app during the run", w)
	}
}

// BenchmarkSubmitLatency measures how long a client waits to get a task
// started: POST /workflows/servers/create through REST (validation, Pending
// record in the store, ExecuteWorkflow) against a direct SDK
// client.ExecuteWorkflow with the same input. Submissions alternate REST and
// SDK, one at a time, so both see the same background load from the worker
// running the started workflows. Two diagnostic series, timed in the same
// rounds, attribute the difference: the store write the REST path adds
// (Store.Create of a Pending record) and a bare REST round trip (GET of an
// unknown task). Use -benchtime 1x.
func BenchmarkSubmitLatency(b *testing.B) {
	submitLatency(b, startBenchApp(b), nil)
}

// BenchmarkSubmitLatencyQuiet is BenchmarkSubmitLatency with the worker
// held: one activity slot, whose script waits for a gate file that is
// created only after the measurement, so the started tasks queue instead
// of running nu on the two CPUs the submissions need. What remains in the
// background is each start's own work (its first workflow task and
// Running projection): the REST façade's cost without the machine's
// saturation.
func BenchmarkSubmitLatencyQuiet(b *testing.B) {
	gate := filepath.Join(b.TempDir(), "open")
	script := filepath.Join(b.TempDir(), "gated.nu")
	if err := os.WriteFile(script, []byte(gatedScript), 0o644); err != nil {
		b.Fatal(err)
	}
	h := startBenchApp(b, func(c *app.Config) {
		c.ProvisioningPath = script
		c.ScriptEnv = append(c.ScriptEnv, "BENCH_GATE="+gate)
		c.MaxConcurrentActivities = 1
	})
	open := func() {
		if err := os.WriteFile(gate, nil, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	open() // for the warm-up tasks
	submitLatency(b, h, &latencyHooks{
		measuring: func() {
			if err := os.Remove(gate); err != nil {
				b.Fatal(err)
			}
		},
		measured: open,
	})
}

// gatedScript prints ok once the file $env.BENCH_GATE exists.
const gatedScript = "def --wrapped main [...rest] { while not ($env.BENCH_GATE | path exists) { sleep 20ms }; print \"ok\" }\n"

// latencyHooks run just before and just after submitLatency's measurement.
type latencyHooks struct{ measuring, measured func() }

// submitLatency measures sequential submissions on h: REST, SDK, SDK with
// eager start, and the attribution probes, interleaved.
func submitLatency(b *testing.B, h *benchApp, hooks *latencyHooks) {
	m, maxTime := *benchSubmits, *benchMaxTime
	c := h.app.Client()
	ctx := context.Background()

	sdkStart := func(server string) error { return sdkExecute(ctx, c, server, false) }
	// The API's own start options (eager start): what the REST path adds
	// besides them.
	sdkEagerStart := func(server string) error { return sdkExecute(ctx, c, server, true) }
	// Every start option the API sets (eager start, priority, summary,
	// details, search attributes): what the REST path adds around the very
	// same start.
	attrs := h.app.SearchAttributes()
	sdkSameStart := func(server string) error {
		return sdkExecuteWith(ctx, c, server, func(o *client.StartWorkflowOptions, in workflows.ServerCreateInput) {
			o.EnableEagerStart = true
			o.WorkflowExecutionErrorWhenAlreadyStarted = true
			o.Priority = in.TemporalPriority()
			o.StaticSummary = in.Task().Summary()
			o.StaticDetails = in.Details()
			o.TypedSearchAttributes = attrs.Start(in.Infra, storage.DefaultPriority)
		})
	}
	// Warm up connections and code paths on both sides.
	if _, err := h.submitServer("warmup-rest"); err != nil {
		b.Fatal(err)
	}
	if err := sdkStart("warmup-sdk"); err != nil {
		b.Fatal(err)
	}
	if done, err := h.waitCompleted(2, time.Now().Add(time.Minute)); err != nil || done < 2 {
		b.Fatalf("warm-up tasks did not complete: done=%d err=%v", done, err)
	}

	// For attribution only: the REST path's own store write (a fsynced
	// Pending record), timed under the same load, then removed again.
	storeCreate := func(i int) (time.Duration, error) {
		t := storage.Task{ID: uuid.NewString(), Name: "bench probe", Command: "server create",
			Status: storage.StatusPending, CreatedAt: time.Now().UTC(), WorkflowType: workflows.ServerCreateWorkflowName}
		t0 := time.Now()
		if err := h.app.Store().Create(ctx, storage.Normalize(t)); err != nil {
			return 0, fmt.Errorf("store probe %d: %w", i, err)
		}
		d := time.Since(t0)
		return d, h.app.Store().Delete(ctx, t.ID)
	}

	// Also for attribution: a bare REST round trip (GET of an unknown task:
	// HTTP, routing, middleware, envelope, one stat) under the same load.
	httpProbe := func() (time.Duration, error) {
		t0 := time.Now()
		res, err := h.http.Get(h.base + "/tasks/" + uuid.NewString())
		if err != nil {
			return 0, err
		}
		_, err = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusNotFound {
			return 0, fmt.Errorf("GET unknown task: HTTP %d, want 404", res.StatusCode)
		}
		return time.Since(t0), err
	}

	var rest, sdk, sdkEager, sdkSame, store, rtt []float64
	if hooks != nil {
		hooks.measuring()
	}
	b.ResetTimer()
	for iter := 0; iter < b.N; iter++ {
		deadline := time.Now().Add(maxTime)
		for i := 0; i < m && time.Now().Before(deadline); i++ {
			t0 := time.Now()
			if _, err := h.submitServer(fmt.Sprintf("r-%d", i)); err != nil {
				b.Fatal(err)
			}
			rest = append(rest, ms(time.Since(t0)))

			t0 = time.Now()
			if err := sdkStart(fmt.Sprintf("k-%d", i)); err != nil {
				b.Fatalf("sdk ExecuteWorkflow: %v", err)
			}
			sdk = append(sdk, ms(time.Since(t0)))

			t0 = time.Now()
			if err := sdkEagerStart(fmt.Sprintf("e-%d", i)); err != nil {
				b.Fatalf("sdk ExecuteWorkflow (eager): %v", err)
			}
			sdkEager = append(sdkEager, ms(time.Since(t0)))

			t0 = time.Now()
			if err := sdkSameStart(fmt.Sprintf("o-%d", i)); err != nil {
				b.Fatalf("sdk ExecuteWorkflow (the API's options): %v", err)
			}
			sdkSame = append(sdkSame, ms(time.Since(t0)))

			d, err := storeCreate(i)
			if err != nil {
				b.Fatal(err)
			}
			store = append(store, ms(d))

			if d, err = httpProbe(); err != nil {
				b.Fatal(err)
			}
			rtt = append(rtt, ms(d))
		}
	}
	b.StopTimer()
	if hooks != nil {
		hooks.measured()
	}

	b.ReportMetric(0, "ns/op")
	b.ReportMetric(percentile(rest, 50), "rest-p50-ms")
	b.ReportMetric(percentile(rest, 99), "rest-p99-ms")
	b.ReportMetric(percentile(sdk, 50), "sdk-p50-ms")
	b.ReportMetric(percentile(sdk, 99), "sdk-p99-ms")
	b.ReportMetric(percentile(sdkEager, 50), "sdk-eager-p50-ms")
	b.ReportMetric(percentile(sdkEager, 99), "sdk-eager-p99-ms")
	b.ReportMetric(percentile(sdkSame, 50), "sdk-same-p50-ms")
	b.ReportMetric(percentile(sdkSame, 99), "sdk-same-p99-ms")
	b.ReportMetric(percentile(store, 50), "store-create-p50-ms")
	b.Logf("submit latency over %d+%d submissions: REST p50 %.2f ms p99 %.2f ms mean %.2f ms; SDK ExecuteWorkflow p50 %.2f ms p99 %.2f ms mean %.2f ms",
		len(rest), len(sdk), percentile(rest, 50), percentile(rest, 99), mean(rest),
		percentile(sdk, 50), percentile(sdk, 99), mean(sdk))
	b.Logf("SDK ExecuteWorkflow with the API's eager start: p50 %.2f ms p99 %.2f ms mean %.2f ms; REST - SDK(eager) p50 %.2f ms",
		percentile(sdkEager, 50), percentile(sdkEager, 99), mean(sdkEager), percentile(rest, 50)-percentile(sdkEager, 50))
	b.Logf("SDK ExecuteWorkflow with every start option the API sets: p50 %.2f ms p99 %.2f ms mean %.2f ms; REST - SDK(same options) p50 %.2f ms, REST p99 / SDK(same options) p99 %.2f",
		percentile(sdkSame, 50), percentile(sdkSame, 99), mean(sdkSame), percentile(rest, 50)-percentile(sdkSame, 50), percentile(rest, 99)/percentile(sdkSame, 99))
	b.Logf("for attribution, same load: Store.Create of a Pending record (fsynced) p50 %.2f ms p99 %.2f ms; bare REST round trip (GET unknown task, 404) p50 %.2f ms p99 %.2f ms",
		percentile(store, 50), percentile(store, 99), percentile(rtt, 50), percentile(rtt, 99))

	// The started workflows must really run to completion (not timed).
	want := 2 + len(rest) + len(sdk) + len(sdkEager) + len(sdkSame)
	done, err := h.waitCompleted(want, time.Now().Add(maxTime))
	if err != nil {
		b.Fatal(err)
	}
	if done < want {
		b.Errorf("only %d of %d started tasks Completed within %s", done, want, maxTime)
	}
	if w := h.warns.count(); w > 0 {
		b.Logf("%d warning/error log line(s) from the app during the run", w)
	}
}

// sdkExecute starts a server-create task the way a Go SDK client does:
// eager asks for the first workflow task in the start's answer, as the API
// does (Temporal honours it only for a client whose worker shares it: serve
// mode); without it, as a CI job in another process starts one.
func sdkExecute(ctx context.Context, c client.Client, server string, eager bool) error {
	return sdkExecuteWith(ctx, c, server, func(o *client.StartWorkflowOptions, _ workflows.ServerCreateInput) {
		o.EnableEagerStart = eager
	})
}

// sdkExecuteWith is sdkExecute with the options set by with, after the
// ID, task queue and the API's reuse and conflict policies.
func sdkExecuteWith(ctx context.Context, c client.Client, server string, with func(*client.StartWorkflowOptions, workflows.ServerCreateInput)) error {
	in := benchInput(server)
	o := client.StartWorkflowOptions{
		ID:                       in.TaskID,
		TaskQueue:                workflows.DefaultTaskQueue,
		WorkflowIDReusePolicy:    enumspb.WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATE,
		WorkflowIDConflictPolicy: enumspb.WORKFLOW_ID_CONFLICT_POLICY_FAIL,
	}
	with(&o, in)
	_, err := c.ExecuteWorkflow(ctx, o, workflows.ServerCreateWorkflowName, in)
	return err
}

// BenchmarkSubmitThroughput: how many tasks per second benchSubmits
// submissions from benchClients concurrent clients get started, through
// REST and through the SDK's ExecuteWorkflow, with the API's start options
// (sdk-eager: the same process's client, eager start) and without eager
// start (sdk: what a CI job in another process gets). Phases run in the
// order rest, sdk, sdk-eager, sdk-eager, sdk, rest, and
// every phase's tasks run to completion before the next phase starts, so
// both sides submit against the same background.
func BenchmarkSubmitThroughput(b *testing.B) {
	m, clients, maxTime := *benchSubmits, *benchClients, *benchMaxTime
	h := startBenchApp(b)
	c := h.app.Client()
	ctx := context.Background()
	sdkStart := func(eager bool) func(string) error {
		return func(server string) error { return sdkExecute(ctx, c, server, eager) }
	}
	restStart := func(server string) error {
		_, err := h.submitServer(server)
		return err
	}
	// phase submits m tasks from clients goroutines and returns the
	// wall-clock time and each submission's latency.
	phase := func(name string, submit func(string) error) (time.Duration, []float64, error) {
		var (
			next atomic.Int64
			mu   sync.Mutex
			lat  []float64
		)
		var g errgroup.Group
		t0 := time.Now()
		deadline := t0.Add(maxTime)
		for range clients {
			g.Go(func() error {
				for {
					i := next.Add(1)
					if i > int64(m) || time.Now().After(deadline) {
						return nil
					}
					s0 := time.Now()
					if err := submit(fmt.Sprintf("%s-%d", name, i)); err != nil {
						return err
					}
					d := ms(time.Since(s0))
					mu.Lock()
					lat = append(lat, d)
					mu.Unlock()
				}
			})
		}
		err := g.Wait()
		return time.Since(t0), lat, err
	}

	if err := restStart("warmup-rest"); err != nil {
		b.Fatal(err)
	}
	if err := sdkStart(false)("warmup-sdk"); err != nil {
		b.Fatal(err)
	}
	started := 2
	took := map[string]time.Duration{}
	lats := map[string][]float64{}
	sides := []string{"rest", "sdk", "sdk-eager", "sdk-eager", "sdk", "rest"}
	b.ResetTimer()
	for iter := 0; iter < b.N; iter++ {
		for _, side := range sides {
			// Every earlier task done first: each phase starts on an idle worker.
			b.StopTimer()
			if done, err := h.waitCompleted(started, time.Now().Add(maxTime)); err != nil || done < started {
				b.Fatalf("before the %s phase: %d of %d tasks Completed (err %v)", side, done, started, err)
			}
			b.StartTimer()
			submit := map[string]func(string) error{"rest": restStart, "sdk": sdkStart(false), "sdk-eager": sdkStart(true)}[side]
			d, lat, err := phase(fmt.Sprintf("%s%d", side, iter), submit)
			if err != nil {
				b.Fatalf("%s phase: %v", side, err)
			}
			started += len(lat)
			took[side] += d
			lats[side] = append(lats[side], lat...)
		}
	}
	b.StopTimer()
	rate := map[string]float64{}
	for _, side := range sides[:3] {
		rate[side] = float64(len(lats[side])) / took[side].Seconds()
		b.Logf("%d clients, %-9s %4d starts in %7s = %5.1f/s (p50 %6.2f ms, p99 %7.2f ms)", clients, side+":",
			len(lats[side]), took[side].Round(time.Millisecond), rate[side], percentile(lats[side], 50), percentile(lats[side], 99))
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(rate["rest"], "rest-starts/s")
	b.ReportMetric(rate["sdk"], "sdk-starts/s")
	b.ReportMetric(rate["sdk-eager"], "sdk-eager-starts/s")
	b.ReportMetric(rate["rest"]/rate["sdk-eager"], "rest/sdk-eager")
	b.ReportMetric(rate["rest"]/rate["sdk"], "rest/sdk")
	if done, err := h.waitCompleted(started, time.Now().Add(maxTime)); err != nil || done < started {
		b.Errorf("only %d of %d started tasks Completed within %s (err %v)", done, started, maxTime, err)
	}
}

// historySummary counts the events Temporal persisted for one workflow: the
// per-task work the orchestration adds on the server side.
func historySummary(ctx context.Context, c client.Client, id string) string {
	it := c.GetWorkflowHistory(ctx, id, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	var total, wfTasks, actTasks, markers int
	for it.HasNext() {
		ev, err := it.Next()
		if err != nil {
			return "unavailable: " + err.Error()
		}
		total++
		switch ev.GetEventType() {
		case enumspb.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
			wfTasks++
		case enumspb.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
			actTasks++
		case enumspb.EVENT_TYPE_MARKER_RECORDED:
			markers++
		}
	}
	return fmt.Sprintf("%d events: %d workflow tasks, %d activity tasks (nu), %d local-activity markers (store projections)",
		total, wfTasks, actTasks, markers)
}

// cpuTimes is the CPU time (user+system) used so far by this process (the
// whole in-process orchestrator: Temporal server, worker, REST API, and the
// benchmark's HTTP client) and by its reaped children (the nu runs).
func cpuTimes() (self, children time.Duration) {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	if syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru) == nil {
		children = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	return self, children
}

// ms is d in milliseconds, to the microsecond.
func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func msPer(d time.Duration, n int) float64 {
	return ms(d) / float64(max(n, 1))
}

// percentile is the nearest-rank p-th percentile of xs (NaN when empty).
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	k := int(math.Ceil(p / 100 * float64(len(s))))
	return s[min(max(k-1, 0), len(s)-1)]
}

// mean is the arithmetic mean of xs (NaN when empty).
func mean(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	var sum float64
	for _, x := range xs {
		sum += x
	}
	return sum / float64(len(xs))
}
