package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	sdkworker "go.temporal.io/sdk/worker"

	"github.com/provisioning/orchestrator/internal/app"
	"github.com/provisioning/orchestrator/internal/devserver"
	"github.com/provisioning/orchestrator/internal/searchattr"
	"github.com/provisioning/orchestrator/internal/testsupport"
	"github.com/provisioning/orchestrator/sdk"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/worker"
)

// gatedApp runs an orchestrator whose provisioning script holds each step
// until the test creates the file named after its server in gates, so the
// test decides when a step ends (no sleeps). mutate adjusts the config.
type gatedApp struct {
	*harness
	gates string
}

func startGatedApp(t *testing.T, mutate func(*app.Config)) gatedApp {
	t.Helper()
	dir := t.TempDir()
	gates := filepath.Join(dir, "gates")
	require.NoError(t, os.MkdirAll(gates, 0o755))
	script := filepath.Join(dir, "provisioning")
	// The server is the last argument of `server create ... <server>`.
	require.NoError(t, os.WriteFile(script, []byte(`def --wrapped main [...rest] {
    let name = ($rest | last)
    let gate = ($env.TEST_GATES | path join $name)
    print $"waiting for ($gate)"
    loop { if ($gate | path exists) { break }; sleep 20ms }
    print $"created ($name)"
}
`), 0o644))
	opts := []func(*app.Config){withNu(t, script, "TEST_GATES="+gates), func(c *app.Config) {
		// fastPolicy's 2 s heartbeat timeout retries steps whose heartbeat
		// is late on a loaded machine (seen with Chromium running here):
		// the gated steps must run once, as the details say.
		c.Policy.HeartbeatTimeout = 30 * time.Second
	}}
	if mutate != nil {
		opts = append(opts, mutate)
	}
	cfg := appConfig(t, opts...)
	a, _ := launchApp(t, cfg)
	return gatedApp{harness: &harness{t: t, app: a, base: baseURL(a), dataDir: cfg.DataDir}, gates: gates}
}

// open lets the steps of servers finish.
func (g gatedApp) open(servers ...string) {
	g.t.Helper()
	for _, s := range servers {
		require.NoError(g.t, os.WriteFile(filepath.Join(g.gates, s), nil, 0o644))
	}
}

// listIDs runs `temporal workflow list --query query` and returns the
// workflow ids it lists, sorted.
func listIDs(t *testing.T, a *app.App, query string) []string {
	t.Helper()
	out := temporalCLI(t, a, "workflow", "list", "--query", query, "--output", "jsonl")
	var ids []string
	for line := range bytes.Lines(out) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var wf struct {
			Execution struct {
				WorkflowID string `json:"workflowId"`
			} `json:"execution"`
		}
		require.NoError(t, json.Unmarshal(line, &wf), "temporal workflow list line: %s", line)
		ids = append(ids, wf.Execution.WorkflowID)
	}
	slices.Sort(ids)
	return ids
}

// awaitList waits until `temporal workflow list --query query` lists
// exactly want: visibility is updated asynchronously after a start or an
// upsert.
func awaitList(t *testing.T, a *app.App, query string, want ...string) {
	t.Helper()
	want = slices.Sorted(slices.Values(want))
	var got []string
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if got = listIDs(t, a, query); slices.Equal(got, want) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("temporal workflow list --query %q: got %v, want %v", query, got, want)
}

// currentDetails reads a workflow's current details through the CLI, from
// the metadata query the Web UI uses too.
func currentDetails(t *testing.T, a *app.App, id string) string {
	t.Helper()
	out := temporalCLI(t, a, "workflow", "query", "--type", "__temporal_workflow_metadata", "--workflow-id", id, "--output", "json")
	var md struct {
		CurrentDetails string `json:"currentDetails"`
	}
	queryResult(t, out, &md)
	return md.CurrentDetails
}

// awaitDetails waits until id's current details are want.
func awaitDetails(t *testing.T, a *app.App, id, want string) {
	t.Helper()
	var got string
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if got = currentDetails(t, a, id); got == want {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("current details of %s: got %q, want %q", id, got, want)
}

// TestSearchAttributesAndCurrentDetailsThroughTemporalCLI: operators find
// tasks with `temporal workflow list --query` by infra, priority and
// workflow type, whether the REST API or the SDK started them; a priority
// change through PATCH /tasks/{id} is searchable; and a running task's
// current details say how far it is.
func TestSearchAttributesAndCurrentDetailsThroughTemporalCLI(t *testing.T) {
	testsupport.TemporalCLI(t) // skip (or fail in CI) before starting anything
	g := startGatedApp(t, nil)
	require.Equal(t, searchattr.All, g.app.SearchAttributes(), "the embedded server defines every attribute")

	prodUrgent := g.submit("/workflows/servers/create", map[string]any{"infra": "production", "settings": "./s.yaml", "servers": []string{"p1"}, "priority": 1})
	prodNormal := g.submit("/workflows/servers/create", map[string]any{"infra": "production", "settings": "./s.yaml", "servers": []string{"p2", "p3"}})
	staging := g.submit("/workflows/taskserv/create", map[string]any{"infra": "staging", "settings": "./s.yaml", "taskserv": "kubernetes", "servers": []string{"s1"}, "priority": 5})
	c := &sdk.Client{Temporal: g.app.Client(), Namespace: app.DefaultNamespace, Policy: fastPolicy}
	run, err := c.StartServerCreate(t.Context(), "sdk-lab", "./s.yaml", []string{"l1"}, sdk.WithPriority(1))
	require.NoError(t, err)

	awaitList(t, g.app, `Infra="production"`, prodUrgent, prodNormal)
	awaitList(t, g.app, `Infra="staging"`, staging)
	awaitList(t, g.app, `Infra="sdk-lab"`, run.ID())
	awaitList(t, g.app, `Priority=1`, prodUrgent, run.ID())
	awaitList(t, g.app, `Priority=5`, staging)
	awaitList(t, g.app, `Infra="production" AND WorkflowType="ServerCreate" AND Priority=3`, prodNormal)
	awaitList(t, g.app, `WorkflowType="TaskservCreate"`, staging)

	// Current details while the steps run.
	awaitDetails(t, g.app, prodNormal, "0/2 done · running p2, p3 · priority 3")

	// An operator makes the task urgent: search and details follow.
	r, err := send(http.DefaultClient, http.MethodPatch, g.base+"/tasks/"+prodNormal, map[string]any{"priority": 1})
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, r.status, "%s", r.raw)
	awaitList(t, g.app, `Priority=1`, prodUrgent, prodNormal, run.ID())
	awaitList(t, g.app, `Priority=3`)
	awaitDetails(t, g.app, prodNormal, "0/2 done · running p2, p3 · priority 1")

	g.open("p2")
	awaitDetails(t, g.app, prodNormal, "1/2 done · running p3 · priority 1")
	g.open("p1", "p3", "s1", "l1")
	for _, id := range []string{prodUrgent, prodNormal, staging, run.ID()} {
		task, _ := waitTask(t, g.base, id, 60*time.Second, terminal)
		require.Equal(t, storage.StatusCompleted, task.Status, "%s: %v", id, task.Error)
	}
	assert.Equal(t, "Completed · 2/2 done", currentDetails(t, g.app, prodNormal))
	// Finished tasks keep their attributes: search covers history too.
	awaitList(t, g.app, `Infra="production" AND ExecutionStatus="Completed"`, prodUrgent, prodNormal)

	// The history of the reprioritized task (version marker, upsert)
	// replays against the workflow code: it is deterministic.
	hist := g.app.Client().GetWorkflowHistory(t.Context(), prodNormal, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	var events []*historypb.HistoryEvent
	upserts := 0
	for hist.HasNext() {
		ev, err := hist.Next()
		require.NoError(t, err)
		events = append(events, ev)
		// GetVersion upserts TemporalChangeVersion itself; count ours.
		attrs := ev.GetUpsertWorkflowSearchAttributesEventAttributes().GetSearchAttributes().GetIndexedFields()
		if _, ok := attrs[searchattr.PriorityName]; ok {
			upserts++
		}
	}
	assert.Equal(t, 1, upserts, "one upsert of Priority: the priority change")
	replayer := sdkworker.NewWorkflowReplayer()
	worker.RegisterWorkflows(replayer)
	require.NoError(t, replayer.ReplayWorkflowHistory(nil, &historypb.History{Events: events}))
}

// TestWebUIShowsTaskSummaryInBrowser: the embedded Temporal Web UI, loaded
// in headless Chromium, lists a task with its Infra and Priority when
// searched by infra (and not another infra's task), and the task's page
// shows its summary and current details. Screenshots go to
// $ORCHESTRATOR_SCREENSHOT_DIR when set (docs/webui-workflow.png is one),
// else to a temporary directory.
func TestWebUIShowsTaskSummaryInBrowser(t *testing.T) {
	b := testsupport.HeadlessBrowser(t)
	g := startGatedApp(t, func(c *app.Config) { c.TemporalUIPort = 0 })
	require.NotEmpty(t, g.app.TemporalUIAddress(), "the embedded UI runs")

	prod := g.submit("/workflows/servers/create", map[string]any{"infra": "production", "settings": "./settings.yaml", "servers": []string{"web-01", "web-02"}, "priority": 2})
	staging := g.submit("/workflows/servers/create", map[string]any{"infra": "staging", "settings": "./settings.yaml", "servers": []string{"stage-01"}})
	t.Cleanup(func() {
		g.open("web-01", "web-02", "stage-01")
		for _, id := range []string{prod, staging} {
			waitTask(t, g.base, id, 60*time.Second, terminal)
		}
	})
	const summary = "server create production: web-01, web-02"
	const details = "0/2 done · running web-01, web-02 · priority 2"
	awaitDetails(t, g.app, prod, details)
	awaitList(t, g.app, `Infra="production"`, prod)

	out := os.Getenv("ORCHESTRATOR_SCREENSHOT_DIR")
	if out == "" {
		out = t.TempDir()
	}
	script := filepath.Join(testsupport.RepoRoot(t), "e2e", "testdata", "browser", "ui_check.mjs")
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, b.Node, script)
	cmd.Dir = testsupport.RepoRoot(t)
	cmd.Env = append(os.Environ(),
		"UI_URL=http://"+g.app.TemporalUIAddress(),
		"UI_NAMESPACE="+app.DefaultNamespace,
		"WORKFLOW_ID="+prod,
		`LIST_QUERY=Infra="production"`,
		"EXPECT_ROW=production\n2",
		"ABSENT_LIST="+staging,
		"EXPECT_PAGE="+summary+"\n"+details,
		"OUT_DIR="+out,
		"CHROMIUM="+b.Chromium,
	)
	began := time.Now()
	res, err := cmd.CombinedOutput()
	t.Logf("ui_check.mjs (%s):\n%s", time.Since(began).Round(time.Millisecond), res)
	require.NoError(t, err, "the browser check failed; screenshots in %s", out)
	for _, name := range []string{"workflows.png", "workflow.png"} {
		png, err := os.ReadFile(filepath.Join(out, name))
		require.NoError(t, err)
		require.True(t, bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")), "%s is a PNG", name)
	}
}

// lockedBuffer collects an app's log lines from several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestStartsWithoutSearchAttributesOnAClusterLackingThem: against a
// Temporal whose namespace lacks Infra and Priority (not the embedded
// server: another cluster), the service starts, warns once naming the
// command that registers them, and tasks run without them: REST and SDK
// starts succeed, and a priority change does not upsert an attribute
// Temporal would reject (the task still completes).
func TestStartsWithoutSearchAttributesOnAClusterLackingThem(t *testing.T) {
	fport, err := devserver.FreePort("127.0.0.1")
	require.NoError(t, err)
	bare, err := devserver.Start(devserver.Options{DataDir: t.TempDir(), FrontendPort: fport, UIPort: -1,
		Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	t.Cleanup(bare.Stop)

	cfg := appConfig(t, withDemoProvider(t, "PROVISIONING_DEMO_DELAY_MS=300"), func(c *app.Config) {
		c.TemporalAddress = bare.Address()
		c.Policy.Parallelism = 1
	})
	var logs lockedBuffer
	a, err := app.Start(t.Context(), cfg, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn})))
	require.NoError(t, err, "starting must not fail for want of search attributes")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		a.Stop(ctx)
	})
	assert.Equal(t, searchattr.Set{}, a.SearchAttributes())
	assert.Contains(t, logs.String(), "Temporal search attributes missing")
	assert.Contains(t, logs.String(), "temporal operator search-attribute create --address "+bare.Address()+
		" --namespace default --name Infra --type Keyword --name Priority --type Int")

	h := &harness{t: t, app: a, base: baseURL(a)}
	id := h.submit("/workflows/servers/create", map[string]any{"infra": "production", "settings": "./s.yaml", "servers": []string{"n1", "n2", "n3"}})
	r, err := send(http.DefaultClient, http.MethodPatch, h.base+"/tasks/"+id, map[string]any{"priority": 1})
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, r.status, "%s", r.raw)
	c := &sdk.Client{Temporal: a.Client(), Namespace: app.DefaultNamespace, Policy: fastPolicy}
	run, err := c.StartServerCreate(t.Context(), "lab", "./s.yaml", []string{"n4"})
	require.NoError(t, err)

	for _, tid := range []string{id, run.ID()} {
		task, _ := waitTask(t, h.base, tid, 90*time.Second, terminal)
		require.Equal(t, storage.StatusCompleted, task.Status, "%s: %v", tid, task.Error)
		desc, err := a.Client().DescribeWorkflowExecution(t.Context(), tid, "")
		require.NoError(t, err)
		assert.NotContains(t, desc.GetWorkflowExecutionInfo().GetSearchAttributes().GetIndexedFields(), searchattr.InfraName)
	}
	assert.Equal(t, 1, getTask(t, h.base, id).Priority)
}
