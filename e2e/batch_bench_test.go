package e2e

// BenchmarkBatchVsIndependent: a DAG of operations submitted as one batch
// against the same operations submitted as independent tasks by a driver
// that starts each once its dependencies completed. Run it with
//
//	go test -run '^$' -bench BatchVsIndependent -benchtime 1x ./e2e/
//
// Knobs (flags after the package, or the environment):
// -bench.batchchains (ORCHESTRATOR_BENCH_BATCH_CHAINS, default 10) servers,
// -bench.batchdepth (ORCHESTRATOR_BENCH_BATCH_DEPTH, default 10) operations
// per server's chain (the server, then depth-1 taskservs each depending on
// the previous), -bench.batchparallel (ORCHESTRATOR_BENCH_BATCH_PARALLEL,
// default 10) operations at once on both sides, -bench.batchrounds
// (ORCHESTRATOR_BENCH_BATCH_ROUNDS, default 2) rounds of both sides,
// alternating which goes first, and -bench.batchdelay
// (ORCHESTRATOR_BENCH_BATCH_DELAY, default 50ms) the demo provider's
// simulated work per operation.

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"

	"github.com/provisioning/orchestrator/internal/app"
	"github.com/provisioning/orchestrator/server"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/workflows"
)

var (
	benchBatchChains   = flag.Int("bench.batchchains", envInt("ORCHESTRATOR_BENCH_BATCH_CHAINS", 10), "servers (chains) in BenchmarkBatchVsIndependent's DAG (env ORCHESTRATOR_BENCH_BATCH_CHAINS)")
	benchBatchDepth    = flag.Int("bench.batchdepth", envInt("ORCHESTRATOR_BENCH_BATCH_DEPTH", 10), "operations per chain: the server, then taskservs each depending on the previous (env ORCHESTRATOR_BENCH_BATCH_DEPTH)")
	benchBatchParallel = flag.Int("bench.batchparallel", envInt("ORCHESTRATOR_BENCH_BATCH_PARALLEL", 10), "operations at once on both sides (env ORCHESTRATOR_BENCH_BATCH_PARALLEL)")
	benchBatchRounds   = flag.Int("bench.batchrounds", envInt("ORCHESTRATOR_BENCH_BATCH_ROUNDS", 2), "rounds of both sides per iteration, alternating which goes first (env ORCHESTRATOR_BENCH_BATCH_ROUNDS)")
	benchBatchDelay    = flag.Duration("bench.batchdelay", envDuration("ORCHESTRATOR_BENCH_BATCH_DELAY", 50*time.Millisecond), "the demo provider's simulated work per operation (env ORCHESTRATOR_BENCH_BATCH_DELAY)")
)

const benchBatchSettings = "./settings.yaml"

// benchDAG is chains servers, each followed by a chain of depth-1
// taskservs on it, each depending on the one before.
func benchDAG(chains, depth int) []workflows.Operation {
	var ops []workflows.Operation
	for c := range chains {
		srv := fmt.Sprintf("s-%02d", c)
		ops = append(ops, workflows.Operation{ID: srv, Type: workflows.OperationServer, Servers: []string{srv}})
		prev := srv
		for k := 1; k < depth; k++ {
			id := fmt.Sprintf("%s-ts-%02d", srv, k)
			ops = append(ops, workflows.Operation{ID: id, Type: workflows.OperationTaskserv, Taskserv: fmt.Sprintf("ts-%02d", k),
				Servers: []string{srv}, DependsOn: []string{prev}})
			prev = id
		}
	}
	return ops
}

// sideResult is one run of one side: its makespan and its operations' task ids.
type sideResult struct {
	makespan time.Duration
	start    time.Time
	ids      []string // task id of ops[i]
	batchID  string   // the batch side's batch
}

// runBatchSide submits ops as one batch and waits for its end (the
// workflow's result, a long poll: no polling interval in the figure).
func runBatchSide(ctx context.Context, h *benchApp, infra string, ops []workflows.Operation, parallel int) (sideResult, error) {
	req := server.CreateBatchRequest{Name: infra, Infra: infra, Settings: benchBatchSettings, Parallelism: parallel, Operations: ops}
	start := time.Now()
	env, _, err := h.call(http.MethodPost, server.BatchPath, req)
	if err != nil {
		return sideResult{}, err
	}
	var id string
	if err := json.Unmarshal(env.Data, &id); err != nil {
		return sideResult{}, err
	}
	var task storage.Task
	if err := h.app.Client().GetWorkflow(ctx, id, "").Get(ctx, &task); err != nil {
		return sideResult{}, fmt.Errorf("batch %s: %w", id, err)
	}
	res := sideResult{makespan: time.Since(start), start: start, batchID: id}
	for _, op := range ops {
		res.ids = append(res.ids, workflows.OperationTaskID(id, op.ID, false))
	}
	return res, nil
}

// runIndependentSide submits each operation as a task of its own
// (POST /workflows/servers/create or /workflows/taskserv/create) as soon
// as the tasks of its dependencies completed, at most parallel at once,
// and learns of each end by the workflow's result (a long poll, as fast
// as the batch learns of its children's ends).
func runIndependentSide(ctx context.Context, h *benchApp, infra string, ops []workflows.Operation, parallel int) (sideResult, error) {
	index := map[string]int{}
	for i, op := range ops {
		index[op.ID] = i
	}
	remaining := make([]int, len(ops))
	children := make([][]int, len(ops))
	var ready []int
	for i, op := range ops {
		remaining[i] = len(op.DependsOn)
		for _, d := range op.DependsOn {
			children[index[d]] = append(children[index[d]], i)
		}
		if remaining[i] == 0 {
			ready = append(ready, i)
		}
	}
	type ended struct {
		i   int
		err error
	}
	done := make(chan ended, len(ops))
	res := sideResult{ids: make([]string, len(ops)), start: time.Now()}
	launch := func(i int) error {
		op := ops[i]
		var path string
		var body any
		switch op.Type {
		case workflows.OperationServer:
			path, body = "/workflows/servers/create", server.CreateServersRequest{Infra: infra, Settings: benchBatchSettings, Servers: op.Servers}
		default:
			path, body = "/workflows/taskserv/create", server.CreateTaskservRequest{Infra: infra, Settings: benchBatchSettings, Taskserv: op.Taskserv, Servers: op.Servers}
		}
		env, _, err := h.call(http.MethodPost, path, body)
		if err != nil {
			return err
		}
		var id string
		if err := json.Unmarshal(env.Data, &id); err != nil {
			return err
		}
		res.ids[i] = id
		go func() {
			var t storage.Task
			err := h.app.Client().GetWorkflow(ctx, id, "").Get(ctx, &t)
			done <- ended{i, err}
		}()
		return nil
	}
	inflight, finished := 0, 0
	for finished < len(ops) {
		for inflight < parallel && len(ready) > 0 {
			i := ready[0]
			ready = ready[1:]
			if err := launch(i); err != nil {
				return res, err
			}
			inflight++
		}
		e := <-done
		if e.err != nil {
			return res, fmt.Errorf("operation %s (task %s): %w", ops[e.i].ID, res.ids[e.i], e.err)
		}
		inflight--
		finished++
		for _, c := range children[e.i] {
			if remaining[c]--; remaining[c] == 0 {
				ready = append(ready, c)
			}
		}
	}
	res.makespan = time.Since(res.start)
	return res, nil
}

// dispatchMS is, per operation, how long it waited to start once it could:
// its task's started_at minus the latest completed_at of its dependencies
// (for a root, minus the side's start). It is the orchestration's latency
// between operations, from the task records.
func dispatchMS(ctx context.Context, h *benchApp, ops []workflows.Operation, r sideResult) ([]float64, []float64, error) {
	index := map[string]int{}
	for i, op := range ops {
		index[op.ID] = i
	}
	tasks := make([]storage.Task, len(ops))
	for i, id := range r.ids {
		t, err := h.app.Store().Get(ctx, id)
		if err != nil {
			return nil, nil, err
		}
		if t.Status != storage.StatusCompleted || t.StartedAt == nil || t.CompletedAt == nil {
			return nil, nil, fmt.Errorf("task %s of %s: %s without times", id, ops[i].ID, t.Status)
		}
		tasks[i] = t
	}
	var wait, run []float64
	for i, op := range ops {
		ready := r.start
		for _, d := range op.DependsOn {
			if c := *tasks[index[d]].CompletedAt; c.After(ready) {
				ready = c
			}
		}
		wait = append(wait, ms(tasks[i].StartedAt.Sub(ready)))
		run = append(run, ms(tasks[i].CompletedAt.Sub(*tasks[i].StartedAt)))
	}
	return wait, run, nil
}

// BenchmarkBatchVsIndependent reports the makespan of a 100-operation DAG
// (10 servers, each with a chain of 9 taskservs) run as one batch and as
// 100 independent tasks driven by the benchmark, both with 10 operations
// at once, on the same app (worker activity slots = that parallelism),
// rounds alternating which side goes first; and the batch's overhead per
// operation ((batch − independent makespan) / operations) and each side's
// dispatch latency (an operation's start minus its last dependency's end).
func BenchmarkBatchVsIndependent(b *testing.B) {
	chains, depth, parallel, rounds := *benchBatchChains, *benchBatchDepth, *benchBatchParallel, *benchBatchRounds
	ops := benchDAG(chains, depth)
	n := len(ops)
	if n > workflows.MaxBatchOperations || parallel > workflows.MaxBatchParallelism {
		b.Fatalf("%d operations, parallelism %d: over the batch limits (%d, %d)", n, parallel, workflows.MaxBatchOperations, workflows.MaxBatchParallelism)
	}
	cfg := appConfig(b, withDemoProvider(b, fmt.Sprintf("PROVISIONING_DEMO_DELAY_MS=%d", benchBatchDelay.Milliseconds())), func(c *app.Config) {
		c.MaxConcurrentActivities = parallel
	})
	a, warns := launchApp(b, cfg)
	h := &benchApp{app: a, base: baseURL(a), http: &http.Client{Timeout: time.Minute}, warns: warns}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()

	// Warm up both paths (nu's page cache, SQLite, connections).
	warm := benchDAG(2, 2)
	if _, err := runBatchSide(ctx, h, "warm-batch", warm, parallel); err != nil {
		b.Fatal(err)
	}
	if _, err := runIndependentSide(ctx, h, "warm-indep", warm, parallel); err != nil {
		b.Fatal(err)
	}

	var batchSpans, indepSpans []time.Duration
	lastBatch := ""
	var batchWait, indepWait, batchRun, indepRun []float64
	b.ResetTimer()
	for iter := 0; iter < b.N; iter++ {
		for r := range rounds {
			order := []string{"batch", "indep"}
			if (iter*rounds+r)%2 == 1 {
				slices.Reverse(order)
			}
			for _, side := range order {
				infra := fmt.Sprintf("%s-%d-%d", side, iter, r)
				run := runBatchSide
				if side == "indep" {
					run = runIndependentSide
				}
				res, err := run(ctx, h, infra, ops, parallel)
				if err != nil {
					b.Fatalf("%s: %v", infra, err)
				}
				wait, dur, err := dispatchMS(ctx, h, ops, res)
				if err != nil {
					b.Fatalf("%s: %v", infra, err)
				}
				if side == "batch" {
					batchSpans = append(batchSpans, res.makespan)
					lastBatch = res.batchID
					batchWait, batchRun = append(batchWait, wait...), append(batchRun, dur...)
				} else {
					indepSpans = append(indepSpans, res.makespan)
					indepWait, indepRun = append(indepWait, wait...), append(indepRun, dur...)
				}
				b.Logf("%s: %d operations in %s", infra, n, res.makespan.Round(time.Millisecond))
			}
		}
	}
	b.StopTimer()

	bs, is := meanDuration(batchSpans), meanDuration(indepSpans)
	b.ReportMetric(0, "ns/op") // one op is several runs of both sides
	b.ReportMetric(bs.Seconds(), "batch-makespan-s")
	b.ReportMetric(is.Seconds(), "indep-makespan-s")
	b.ReportMetric(bs.Seconds()/is.Seconds(), "batch/indep")
	b.ReportMetric(ms(bs-is)/float64(n), "batch-overhead-ms/op")
	b.ReportMetric(mean(batchWait), "batch-dispatch-ms")
	b.ReportMetric(mean(indepWait), "indep-dispatch-ms")
	b.Logf("%d operations (%d chains of %d), parallelism %d, provider delay %s, %d run(s) per side: makespan batch %s (%v), independent %s (%v)",
		n, chains, depth, parallel, *benchBatchDelay, len(batchSpans), bs.Round(time.Millisecond), roundAll(batchSpans),
		is.Round(time.Millisecond), roundAll(indepSpans))
	b.Logf("dispatch (ms, an operation's start after its last dependency's end): batch p50 %.0f p99 %.0f, independent p50 %.0f p99 %.0f; operation run (ms): batch p50 %.0f, independent p50 %.0f",
		percentile(batchWait, 50), percentile(batchWait, 99), percentile(indepWait, 50), percentile(indepWait, 99),
		percentile(batchRun, 50), percentile(indepRun, 50))
	if lastBatch != "" {
		b.Logf("the last batch's own workflow: %s", batchHistoryTiming(ctx, h, lastBatch))
	}
	if w := h.warns.count(); w > 0 {
		b.Logf("%d warning/error log line(s) from the app during the run", w)
	}
}

// batchHistoryTiming says where a batch workflow's time went, from its
// history: every child's end wakes the one batch workflow, whose workflow
// tasks run one at a time; a task waits in the queue (scheduled →
// started) and then runs (started → completed), which includes the
// local-activity projections of the batch record it makes (the workflow
// task stays open while they run, so the child starts it decided wait
// for them).
func batchHistoryTiming(ctx context.Context, h *benchApp, id string) string {
	it := h.app.Client().GetWorkflowHistory(ctx, id, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	var scheduled, started time.Time
	var queued, running []float64
	var events, markers, children int
	for it.HasNext() {
		ev, err := it.Next()
		if err != nil {
			return "unavailable: " + err.Error()
		}
		events++
		at := ev.GetEventTime().AsTime()
		switch ev.GetEventType() {
		case enumspb.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
			scheduled = at
		case enumspb.EVENT_TYPE_WORKFLOW_TASK_STARTED:
			started = at
			queued = append(queued, ms(at.Sub(scheduled)))
		case enumspb.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
			running = append(running, ms(at.Sub(started)))
		case enumspb.EVENT_TYPE_MARKER_RECORDED:
			markers++
		case enumspb.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
			children++
		}
	}
	return fmt.Sprintf("%d events, %d children, %d workflow tasks: queued p50 %.0f ms (sum %.1f s), running p50 %.0f ms p99 %.0f ms (sum %.1f s); %d local-activity markers (projections)",
		events, children, len(running), percentile(queued, 50), sum(queued)/1000, percentile(running, 50), percentile(running, 99), sum(running)/1000, markers)
}

func sum(xs []float64) float64 {
	var s float64
	for _, x := range xs {
		s += x
	}
	return s
}

func meanDuration(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return sum / time.Duration(len(ds))
}

func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}
