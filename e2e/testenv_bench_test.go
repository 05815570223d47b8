package e2e

// BenchmarkTestEnv3NodeCreateCleanup: what a 3-node test environment costs
// through the orchestrator's REST API (workflow, activities, store
// projections) against the same Docker objects made by hand with the docker
// CLI (testdata/docker_cli_3node.sh), in the same run on the same engine.
// Each iteration is one full cycle of each, so use a small fixed count:
//
//	ORCHESTRATOR_REQUIRE_DOCKER=1 go test -run '^$' -bench TestEnv3Node -benchtime 5x ./e2e/

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/google/uuid"
	enumspb "go.temporal.io/api/enums/v1"

	"github.com/provisioning/orchestrator/internal/app"
	"github.com/provisioning/orchestrator/internal/testsupport"
	"github.com/provisioning/orchestrator/testenv"
	"github.com/provisioning/orchestrator/workflows"
)

const (
	// tenv3Script is the docker CLI baseline, run as `bash <script> <image> <prefix>`.
	tenv3Script = "testdata/docker_cli_3node.sh"
	// tenv3RunLabel is the label key the script puts on its objects (value:
	// the prefix); the benchmark's cleanup removes leftovers by it.
	tenv3RunLabel = "io.provisioning.orchestrator.bench/run"
	// tenv3Poll is how often GET /test/environments/{id} is polled; it
	// bounds the measurement error of each API phase to about one interval.
	tenv3Poll = 10 * time.Millisecond
	// tenv3Timeout bounds each phase; far above the seconds a phase takes.
	tenv3Timeout = 2 * time.Minute

	tenv3CPUMillicores = 250
	tenv3MemoryMB      = 64
)

// tenv3Nodes are the environment's nodes (name, role), the same in the REST
// request and in the script.
var tenv3Nodes = [][2]string{{"cp-01", "control-plane"}, {"worker-01", "worker"}, {"worker-02", "worker"}}

var tenv3ScriptOut = regexp.MustCompile(`(?m)^create_ms=(\d+) cleanup_ms=(\d+)$`)

// tenv3Bench is an in-process orchestrator with Docker, configured as
// startEnvApp's (startDockerApp).
type tenv3Bench struct {
	b        *testing.B
	app      *app.App
	base     string
	http     *http.Client
	docker   *client.Client
	image    string
	script   string
	log      *appLog
	mu       sync.Mutex
	prefixes []string // script runs, for the leftover sweep
}

func startTenv3Bench(b *testing.B) *tenv3Bench {
	b.Helper()
	for _, tool := range []string{"bash", "docker"} {
		if _, err := exec.LookPath(tool); err != nil {
			testsupport.SkipOrFailDocker(b, fmt.Sprintf("the docker CLI baseline needs %s on PATH: %v", tool, err))
		}
	}
	script, err := filepath.Abs(tenv3Script)
	if err != nil {
		b.Fatal(err)
	}
	// Skips, or fails under ORCHESTRATOR_REQUIRE_DOCKER=1, without an engine.
	d := startDockerApp(b, "e2e-bench")
	h := &tenv3Bench{
		b: b, app: d.app, base: baseURL(d.app),
		http:   &http.Client{Timeout: time.Minute},
		docker: d.docker, image: d.image, script: script, log: d.log,
	}
	b.Cleanup(func() {
		// Whatever a failed iteration left behind goes too: the script
		// runs' objects (startDockerApp removes this instance's
		// environments).
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		h.mu.Lock()
		prefixes := slices.Clone(h.prefixes)
		h.mu.Unlock()
		for _, p := range prefixes {
			h.removeScriptObjects(ctx, p)
		}
	})
	return h
}

func (h *tenv3Bench) removeScriptObjects(ctx context.Context, prefix string) {
	f := filters.NewArgs(filters.Arg("label", tenv3RunLabel+"="+prefix))
	if cs, err := h.docker.ContainerList(ctx, container.ListOptions{All: true, Filters: f}); err == nil {
		for _, c := range cs {
			_ = h.docker.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true})
		}
	}
	if ns, err := h.docker.NetworkList(ctx, network.ListOptions{Filters: f}); err == nil {
		for _, n := range ns {
			_ = h.docker.NetworkRemove(ctx, n.ID)
		}
	}
}

// count counts containers and networks carrying label (key=value).
func (h *tenv3Bench) count(label string) (containers, networks int) {
	h.b.Helper()
	return countObjects(h.b, h.docker, label)
}

// call does one REST request and decodes the envelope.
func (h *tenv3Bench) call(method, path string, body any) (envelope, int, error) {
	r, err := sendOK(h.http, method, h.base+path, body)
	return r.env, r.status, err
}

// waitStatus polls the environment until its status is one of want and
// returns that state and when the poll that saw it returned.
func (h *tenv3Bench) waitStatus(id string, want ...string) (testenv.EnvState, time.Time) {
	h.b.Helper()
	deadline := time.Now().Add(tenv3Timeout)
	var st testenv.EnvState
	for {
		env, _, err := h.call(http.MethodGet, "/test/environments/"+id, nil)
		if err != nil {
			h.b.Fatal(err)
		}
		seen := time.Now()
		st = testenv.EnvState{}
		if err := json.Unmarshal(env.Data, &st); err != nil {
			h.b.Fatal(err)
		}
		if slices.Contains(want, st.Status) {
			return st, seen
		}
		if seen.After(deadline) {
			h.b.Fatalf("environment %s: status %q, not %v, after %s (error: %s)", id, st.Status, want, tenv3Timeout, st.Error)
		}
		time.Sleep(tenv3Poll)
	}
}

func tenv3Request(img string) map[string]any {
	var nodes []map[string]any
	for _, n := range tenv3Nodes {
		nodes = append(nodes, map[string]any{"name": n[0], "role": n[1],
			"resources": map[string]any{"cpu_millicores": tenv3CPUMillicores, "memory_mb": tenv3MemoryMB}})
	}
	return map[string]any{
		"config": map[string]any{"type": "cluster_topology", "cluster_type": "kubernetes", "base_image": img,
			"topology": map[string]any{"nodes": nodes}},
		"auto_start": true,
	}
}

// tenv3APICycle is one environment through the REST API: POST create, wait
// for ready, DELETE, wait for cleaned. Checks (outside the timed spans) that
// the nodes run with the requested limits and that nothing is left.
type tenv3APICycle struct {
	id                           string
	t0, ready, del, gone         time.Time
	createMS, cleanupMS, totalMS float64
}

func (h *tenv3Bench) apiCycle() tenv3APICycle {
	h.b.Helper()
	var c tenv3APICycle
	body := tenv3Request(h.image)

	c.t0 = time.Now()
	env, _, err := h.call(http.MethodPost, "/test/environments/create", body)
	if err != nil {
		h.b.Fatal(err)
	}
	if err := json.Unmarshal(env.Data, &c.id); err != nil {
		h.b.Fatal(err)
	}
	st, ready := h.waitStatus(c.id, workflows.EnvReady, workflows.EnvError)
	c.ready = ready
	if st.Status != workflows.EnvReady {
		h.b.Fatalf("environment %s: %s: %s", c.id, st.Status, st.Error)
	}

	// Not timed: it is what was asked for.
	if len(st.Nodes) != len(tenv3Nodes) {
		h.b.Fatalf("environment %s has %d nodes, want %d: %+v", c.id, len(st.Nodes), len(tenv3Nodes), st.Nodes)
	}
	for _, n := range st.Nodes {
		if n.State != "running" || n.IP == "" || n.NanoCPUs != tenv3CPUMillicores*1_000_000 || n.MemoryBytes != tenv3MemoryMB<<20 {
			h.b.Fatalf("environment %s node %s: state %s ip %q nano_cpus %d memory %d", c.id, n.Node, n.State, n.IP, n.NanoCPUs, n.MemoryBytes)
		}
	}
	if cs, ns := h.count(testenv.EnvIDLabel + "=" + c.id); cs != len(tenv3Nodes) || ns != 1 {
		h.b.Fatalf("environment %s: %d containers and %d networks on the engine, want %d and 1", c.id, cs, ns, len(tenv3Nodes))
	}

	c.del = time.Now()
	if _, code, err := h.call(http.MethodDelete, "/test/environments/"+c.id, nil); err != nil || (code != http.StatusAccepted && code != http.StatusOK) {
		h.b.Fatalf("DELETE %s: HTTP %d: %v", c.id, code, err)
	}
	st, gone := h.waitStatus(c.id, workflows.EnvCleaned, workflows.EnvError)
	c.gone = gone
	if st.Status != workflows.EnvCleaned {
		h.b.Fatalf("environment %s: %s after DELETE: %s", c.id, st.Status, st.Error)
	}
	if cs, ns := h.count(testenv.EnvIDLabel + "=" + c.id); cs+ns != 0 {
		h.b.Fatalf("environment %s cleaned but %d containers and %d networks are left", c.id, cs, ns)
	}
	c.createMS = ms(c.ready.Sub(c.t0))
	c.cleanupMS = ms(c.gone.Sub(c.del))
	c.totalMS = c.createMS + c.cleanupMS
	return c
}

// tenv3CLICycle is one run of the script.
type tenv3CLICycle struct {
	createMS, cleanupMS, totalMS float64
	// wallMS is the script's whole run as seen from Go: bash and the
	// trap included, and the verification output when asked for.
	wallMS float64
	stdout string
}

func (h *tenv3Bench) cliCycle(verify bool) tenv3CLICycle {
	h.b.Helper()
	prefix := "orch-bench-" + uuid.NewString()[:8]
	h.mu.Lock()
	h.prefixes = append(h.prefixes, prefix)
	h.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), 2*tenv3Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", h.script, h.image, prefix)
	// On timeout, SIGTERM so the script's trap removes its objects.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	cmd.Env = os.Environ()
	if verify {
		cmd.Env = append(cmd.Env, "DOCKER_CLI_3NODE_VERIFY=1")
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	t0 := time.Now()
	err := cmd.Run()
	wall := time.Since(t0)
	if err != nil {
		h.b.Fatalf("bash %s %s %s: %v\nstdout:\n%s\nstderr:\n%s", tenv3Script, h.image, prefix, err, stdout.String(), stderr.String())
	}
	m := tenv3ScriptOut.FindStringSubmatch(stdout.String())
	if m == nil {
		h.b.Fatalf("%s printed no `create_ms=N cleanup_ms=N` line:\n%s\nstderr:\n%s", tenv3Script, stdout.String(), stderr.String())
	}
	if cs, ns := h.count(tenv3RunLabel + "=" + prefix); cs+ns != 0 {
		h.b.Fatalf("%s left %d containers and %d networks labelled %s=%s", tenv3Script, cs, ns, tenv3RunLabel, prefix)
	}
	create, _ := strconv.ParseFloat(m[1], 64)
	cleanup, _ := strconv.ParseFloat(m[2], 64)
	return tenv3CLICycle{createMS: create, cleanupMS: cleanup, totalMS: create + cleanup, wallMS: ms(wall), stdout: stdout.String()}
}

// checkVerify checks the script's DOCKER_CLI_3NODE_VERIFY lines: the
// baseline creates what the orchestrator creates.
func (h *tenv3Bench) checkVerify(out string) {
	h.b.Helper()
	var n int
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "verify" {
			continue
		}
		n++
		// verify /<prefix>-<node> <hostname> <nanocpus> <memory> <status> <aliases>
		if len(f) != 7 || !strings.HasSuffix(f[1], "-"+f[2]) ||
			f[3] != strconv.Itoa(tenv3CPUMillicores*1_000_000) || f[4] != strconv.Itoa(tenv3MemoryMB<<20) ||
			f[5] != "running" || !strings.Contains(f[6], `"`+f[2]+`"`) {
			h.b.Fatalf("the CLI baseline's container differs from the orchestrator's: %q", line)
		}
	}
	if n != len(tenv3Nodes) {
		h.b.Fatalf("the CLI baseline reported %d containers, want %d:\n%s", n, len(tenv3Nodes), out)
	}
}

// tenv3Spans attributes an API cycle's time from the workflow history
// (server-side event times, same clock as the benchmark's).
type tenv3Spans struct {
	// create phase: POST → workflow started (HTTP, validation, plan, store
	// record, StartWorkflow); → CreateEnvironment activity started
	// (workflow task, "creating" projection, activity dispatch); the
	// activity body (all Docker calls); → ready seen by the poller
	// (workflow task, "ready" projection, poll interval).
	submit, preCreate, createAct, postCreate float64
	// cleanup phase: DELETE → signal recorded; → RemoveEnvironment started
	// (workflow task, "cleaning" projection, dispatch); the activity body;
	// → cleaned seen by the poller.
	signal, preRemove, removeAct, postRemove float64
	events, workflowTasks, markers           int
}

func (h *tenv3Bench) spans(c tenv3APICycle) (tenv3Spans, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	it := h.app.Client().GetWorkflowHistory(ctx, c.id, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	var (
		s                 tenv3Spans
		started, signaled time.Time
		sched             = map[int64]string{} // scheduled event id → activity type
		actStart, actEnd  = map[string]time.Time{}, map[string]time.Time{}
	)
	for it.HasNext() {
		ev, err := it.Next()
		if err != nil {
			return s, err
		}
		s.events++
		t := ev.GetEventTime().AsTime()
		switch ev.GetEventType() {
		case enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
			started = t
		case enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
			if signaled.IsZero() {
				signaled = t
			}
		case enumspb.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
			s.workflowTasks++
		case enumspb.EVENT_TYPE_MARKER_RECORDED:
			s.markers++
		case enumspb.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
			sched[ev.GetEventId()] = ev.GetActivityTaskScheduledEventAttributes().GetActivityType().GetName()
		case enumspb.EVENT_TYPE_ACTIVITY_TASK_STARTED:
			name := sched[ev.GetActivityTaskStartedEventAttributes().GetScheduledEventId()]
			if actStart[name].IsZero() {
				actStart[name] = t
			}
		case enumspb.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
			name := sched[ev.GetActivityTaskCompletedEventAttributes().GetScheduledEventId()]
			actEnd[name] = t
		}
	}
	createStarted, removeStart := actStart["CreateEnvironment"], actStart["RemoveEnvironment"]
	if started.IsZero() || signaled.IsZero() || createStarted.IsZero() || removeStart.IsZero() ||
		actEnd["CreateEnvironment"].IsZero() || actEnd["RemoveEnvironment"].IsZero() {
		return s, fmt.Errorf("history of %s lacks expected events (%d events)", c.id, s.events)
	}
	s.submit = ms(started.Sub(c.t0))
	s.preCreate = ms(createStarted.Sub(started))
	s.createAct = ms(actEnd["CreateEnvironment"].Sub(createStarted))
	s.postCreate = ms(c.ready.Sub(actEnd["CreateEnvironment"]))
	s.signal = ms(signaled.Sub(c.del))
	s.preRemove = ms(removeStart.Sub(signaled))
	s.removeAct = ms(actEnd["RemoveEnvironment"].Sub(removeStart))
	s.postRemove = ms(c.gone.Sub(actEnd["RemoveEnvironment"]))
	return s, nil
}

// cliCallMS times one cheap docker CLI call (a list that matches nothing):
// process start, API version negotiation, one engine request. The fixed
// cost every step of the script pays.
func (h *tenv3Bench) cliCallMS() float64 {
	h.b.Helper()
	t0 := time.Now()
	out, err := exec.Command("docker", "ps", "-aq", "--filter", "label="+tenv3RunLabel+"=none-"+uuid.NewString()[:8]).CombinedOutput()
	if err != nil {
		h.b.Fatalf("docker ps: %v: %s", err, out)
	}
	return ms(time.Since(t0))
}

// BenchmarkTestEnv3NodeCreateCleanup measures a 3-node cluster_topology test
// environment (busybox, auto_start, 250 millicores and 64 MB per node)
// through the REST API: POST /test/environments/create → status ready →
// DELETE → status cleaned, wall time of each phase as the client sees it
// (polling every 10 ms). The baseline, in the same run and iteration,
// creates and removes the same Docker objects with the docker CLI
// (testdata/docker_cli_3node.sh, which times its own phases). The two sides
// alternate which goes first. One untimed warm-up of each precedes the
// iterations; the reported metrics are means over iterations. It uses
// b.Loop, so the orchestrator starts once per run whatever -benchtime.
func BenchmarkTestEnv3NodeCreateCleanup(b *testing.B) {
	h := startTenv3Bench(b)

	// Warm-up (not reported): first workflow/activity dispatch, first
	// network on the engine, CLI binary in the page cache. Also checks the
	// baseline's objects match the orchestrator's.
	h.apiCycle()
	h.checkVerify(h.cliCycle(true).stdout)

	var (
		apiCreate, apiCleanup, apiTotal []float64
		cliCreate, cliCleanup, cliTotal []float64
		cliWall, cliCall                []float64
		spans                           []tenv3Spans
		spanErr                         error
	)
	i := 0
	for b.Loop() {
		var a tenv3APICycle
		var c tenv3CLICycle
		if i%2 == 0 {
			a = h.apiCycle()
			c = h.cliCycle(false)
		} else {
			c = h.cliCycle(false)
			a = h.apiCycle()
		}
		i++
		b.StopTimer()
		apiCreate, apiCleanup, apiTotal = append(apiCreate, a.createMS), append(apiCleanup, a.cleanupMS), append(apiTotal, a.totalMS)
		cliCreate, cliCleanup, cliTotal = append(cliCreate, c.createMS), append(cliCleanup, c.cleanupMS), append(cliTotal, c.totalMS)
		cliWall = append(cliWall, c.wallMS)
		cliCall = append(cliCall, h.cliCallMS())
		if s, err := h.spans(a); err == nil {
			spans = append(spans, s)
		} else {
			spanErr = err
		}
		b.StartTimer()
	}
	b.StopTimer()

	ratio := mean(apiTotal) / mean(cliTotal)
	b.ReportMetric(0, "ns/op") // each op is two whole cycles; the figures below are what matter
	b.ReportMetric(mean(apiCreate), "api-create-ms")
	b.ReportMetric(mean(apiCleanup), "api-cleanup-ms")
	b.ReportMetric(mean(apiTotal), "api-total-ms")
	b.ReportMetric(mean(cliCreate), "cli-create-ms")
	b.ReportMetric(mean(cliCleanup), "cli-cleanup-ms")
	b.ReportMetric(mean(cliTotal), "cli-total-ms")
	b.ReportMetric(ratio, "ratio-api/cli")

	// The summary stays within the 10 lines go test prints of a
	// benchmark's log without -v.
	stat := func(xs []float64) string {
		return fmt.Sprintf("%.0f (median %.0f, %.0f-%.0f)", mean(xs), tenv3Median(xs), slices.Min(xs), slices.Max(xs))
	}
	b.Logf("3-node env, %d iterations, mean ms: API create→ready %s, delete→cleaned %s, total %s",
		len(apiTotal), stat(apiCreate), stat(apiCleanup), stat(apiTotal))
	b.Logf("docker CLI script, same objects: create %s, cleanup %s, total %s; API/CLI total %.2f, API adds %.0f ms (create %+.0f, cleanup %+.0f)",
		stat(cliCreate), stat(cliCleanup), stat(cliTotal), ratio,
		mean(apiTotal)-mean(cliTotal), mean(apiCreate)-mean(cliCreate), mean(apiCleanup)-mean(cliCleanup))
	b.Logf("CLI detail: script wall from Go (bash, trap) %.0f ms; one trivial docker CLI call (process + API negotiation + 1 request) %.0f ms",
		mean(cliWall), mean(cliCall))
	if len(spans) > 0 {
		pick := func(f func(tenv3Spans) float64) float64 {
			xs := make([]float64, len(spans))
			for i, s := range spans {
				xs[i] = f(s)
			}
			return mean(xs)
		}
		b.Logf("API create from workflow history, mean ms: POST→workflow started %.1f, →CreateEnvironment activity started %.1f, activity body %.1f, →ready seen by poller %.1f",
			pick(func(s tenv3Spans) float64 { return s.submit }), pick(func(s tenv3Spans) float64 { return s.preCreate }),
			pick(func(s tenv3Spans) float64 { return s.createAct }), pick(func(s tenv3Spans) float64 { return s.postCreate }))
		b.Logf("API cleanup from workflow history, mean ms: DELETE→signal recorded %.1f, →RemoveEnvironment activity started %.1f, activity body %.1f, →cleaned seen by poller %.1f",
			pick(func(s tenv3Spans) float64 { return s.signal }), pick(func(s tenv3Spans) float64 { return s.preRemove }),
			pick(func(s tenv3Spans) float64 { return s.removeAct }), pick(func(s tenv3Spans) float64 { return s.postRemove }))
		last := spans[len(spans)-1]
		b.Logf("one environment's history: %d events, %d workflow tasks, %d local-activity markers (store projections)", last.events, last.workflowTasks, last.markers)
	}
	if spanErr != nil {
		b.Logf("workflow history attribution incomplete: %v", spanErr)
	}
	if w := h.log.count(); w > 0 {
		b.Logf("%d warning/error log line(s) from the app during the run (run with -v to see them)", w)
	}
}

func tenv3Median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Sorted(slices.Values(xs))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
