package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/activities"
	"github.com/provisioning/orchestrator/internal/app"
	"github.com/provisioning/orchestrator/internal/testsupport"
	"github.com/provisioning/orchestrator/sdk"
	"github.com/provisioning/orchestrator/storage"
)

// eventsScript is the provider of the live-event tests. Servers named
// live-* print a line, then wait until the test creates the file
// go-<name> in PROVISIONING_STATE_DIR, then print another; flaky-* fail
// their first attempt; huge-* print 5,000 lines of about 120 bytes (600
// KB, beyond every live-output bound) at once (5,000 separate prints take
// nu minutes on a loaded machine); lat-* print 20 lines carrying the
// time they were printed (ns since the epoch), 50 ms apart.
const eventsScript = `def --wrapped main [...rest] {
    let name = ($rest | last)
    let state = $env.PROVISIONING_STATE_DIR
    mkdir $state
    let counter = ($state | path join $"attempts-($name)")
    let attempt = if ($counter | path exists) { (open --raw $counter | str trim | into int) + 1 } else { 1 }
    $attempt | into string | save --force $counter
    if ($name | str starts-with "live") {
        print $"hello from ($name)"
        let go = ($state | path join $"go-($name)")
        while not ($go | path exists) { sleep 10ms }
        print $"bye from ($name)"
    } else if ($name | str starts-with "flaky") {
        print $"($name) attempt ($attempt)"
        if $attempt == 1 { print --stderr "simulated failure"; exit 1 }
    } else if ($name | str starts-with "huge") {
        let pad = ("x" | fill --character "x" --width 100)
        print (1..5000 | each {|i| $"($name) line ($i) ($pad)" } | str join "\n")
    } else if ($name | str starts-with "lat") {
        for i in 1..20 { print $"tick ((date now) | into int)"; sleep 50ms }
    } else {
        print $"done ($name)"
    }
}
`

// splitSetup runs Temporal, the REST API and one worker as three OS
// processes (the production shape), the API and the worker sharing the
// filesystem store's data dir, the worker running eventsScript. It
// returns the API's base URL and the provider's state dir.
func splitSetup(t *testing.T) (base, stateDir string) {
	t.Helper()
	nu := testsupport.NuPath(t)
	dir := t.TempDir()
	script := filepath.Join(dir, "provisioning")
	require.NoError(t, os.WriteFile(script, []byte(eventsScript), 0o644))
	dataDir := filepath.Join(dir, "data")
	stateDir = filepath.Join(dir, "provider-state")
	tport, port := freePort(t), freePort(t)
	temporalAddr := fmt.Sprintf("127.0.0.1:%d", tport)

	tlog := filepath.Join(dir, "temporal.log")
	tchild := startChild(t, []string{"temporal", "--temporal-port", fmt.Sprint(tport), "--temporal-ui-port", "-1",
		"--data-dir", filepath.Join(dir, "temporal-data"), "--log-format", "json"}, nil, tlog)
	waitLogged(t, tchild, tlog, "orchestrator ready")

	alog := filepath.Join(dir, "api.log")
	api := startChild(t, []string{"api", "--temporal-address", temporalAddr, "--port", fmt.Sprint(port),
		"--data-dir", dataDir, "--log-format", "json",
		"--retry-initial-interval", "100ms", "--retry-max-interval", "1s"}, nil, alog)
	base = fmt.Sprintf("http://127.0.0.1:%d", port)
	waitHealthy(t, base, api, alog)

	wlog := filepath.Join(dir, "worker.log")
	w := startChild(t, []string{"worker", "--temporal-address", temporalAddr, "--data-dir", dataDir,
		"--nu-path", nu, "--provisioning-path", script, "--log-format", "json"},
		[]string{providerStateEnv + "=" + stateDir}, wlog)
	waitLogged(t, w, wlog, "orchestrator ready")
	return base, stateDir
}

// readAll reads a task's stream from lastID to its end.
func readAll(t *testing.T, ctx context.Context, base, id, lastID string) []sdk.StreamEvent {
	t.Helper()
	s, err := sdk.WatchTask(ctx, base, id, sdk.WatchOptions{LastEventID: lastID})
	require.NoError(t, err)
	defer s.Close()
	var out []sdk.StreamEvent
	for {
		ev, err := s.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		require.NoError(t, err)
		out = append(out, ev)
	}
}

// summary renders events compactly for assertions and failure messages.
func summary(evs []sdk.StreamEvent) []string {
	var out []string
	for _, e := range evs {
		switch e.Type {
		case storage.EventTransition:
			out = append(out, "transition:"+string(e.Status))
		case storage.EventOutput:
			for _, l := range e.Lines {
				out = append(out, "output:"+l)
			}
		case storage.EventStepFinished:
			out = append(out, fmt.Sprintf("step_finished:%s:%s", e.Step, e.Status))
		default:
			out = append(out, fmt.Sprintf("%s:%s:%d", e.Type, e.Step, e.Attempt))
		}
	}
	return out
}

// Through the real parts, with the API and the worker in separate
// processes: an SSE client sees Pending → Running → the step's output line
// while the step still runs → step finished → Completed, in order; after
// a disconnect it resumes with Last-Event-ID and loses or repeats nothing;
// a retried step shows its failed attempt and a second start; a step that
// prints 600 KB streams a bounded tail and one truncation notice.
func TestLiveEventsSplitAPIAndWorker(t *testing.T) {
	start := time.Now()
	base, stateDir := splitSetup(t)
	t.Logf("processes up after %s", time.Since(start))
	h := &harness{t: t, base: base}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// 1. Live output before the step finishes, then resume.
	id := h.submit("/workflows/servers/create", map[string]any{"infra": "lab", "settings": "./s.yaml", "servers": []string{"live-01"}})
	s, err := sdk.WatchTask(ctx, base, id, sdk.WatchOptions{})
	require.NoError(t, err)
	var first []sdk.StreamEvent
	for {
		ev, err := s.Next()
		require.NoError(t, err, "events so far: %v", summary(first))
		first = append(first, ev)
		if ev.Type == storage.EventOutput && slicesContains(ev.Lines, "hello from live-01") {
			break
		}
	}
	require.NoError(t, s.Close())
	// The script is still waiting for its go file: the step cannot have
	// finished, and the record says so too.
	task := h.task(id)
	require.Equal(t, storage.StatusRunning, task.Status)
	require.Len(t, task.Steps, 1)
	assert.False(t, task.Steps[0].Status.Terminal(), "the line arrived while the step ran: %+v", task.Steps[0])
	for _, e := range first {
		require.NotEqual(t, storage.EventStepFinished, e.Type)
	}
	assert.Equal(t, []string{"transition:Pending", "transition:Running", "step_started:live-01:1", "output:hello from live-01"}, summary(first))

	// Disconnected; the step goes on and ends; the client resumes.
	require.NoError(t, os.WriteFile(filepath.Join(stateDir, "go-live-01"), nil, 0o644))
	rest := readAll(t, ctx, base, id, first[len(first)-1].ID)
	all := append(append([]sdk.StreamEvent{}, first...), rest...)
	assert.Equal(t, []string{"transition:Pending", "transition:Running", "step_started:live-01:1", "output:hello from live-01",
		"output:bye from live-01", "step_finished:live-01:Completed", "transition:Running", "transition:Completed"}, summary(all))
	for i, e := range all {
		assert.Equal(t, strconv.Itoa(i+1), e.ID, "ids are 1..n: nothing lost or repeated across the reconnect")
	}
	whole := readAll(t, ctx, base, id, "")
	assert.Equal(t, summary(all), summary(whole), "a fresh client sees the same stream")

	t.Logf("live-01 done at %s", time.Since(start))

	// 2. A retried step: attempt 1 fails (Temporal retries), attempt 2 runs.
	id = h.submit("/workflows/servers/create", map[string]any{"infra": "lab", "settings": "./s.yaml", "servers": []string{"flaky-01"}})
	evs := readAll(t, ctx, base, id, "")
	got := summary(evs)
	// stdout and stderr are two pipes: their lines' relative order is
	// not guaranteed, so the stderr line is checked apart.
	at := slices.Index(got, "output:simulated failure")
	require.Positive(t, at, "the stderr line is streamed: %v", got)
	assert.Less(t, at, slices.Index(got, "step_attempt_failed:flaky-01:1"), "before the attempt's failure")
	got = slices.Delete(got, at, at+1)
	assert.Equal(t, []string{"transition:Pending", "transition:Running", "step_started:flaky-01:1", "output:flaky-01 attempt 1",
		"step_attempt_failed:flaky-01:1", "step_started:flaky-01:2", "output:flaky-01 attempt 2",
		"step_finished:flaky-01:Completed", "transition:Running", "transition:Completed"}, got)
	for _, e := range evs {
		if e.Type == storage.EventStepAttemptFailed {
			require.NotNil(t, e.Retrying)
			assert.True(t, *e.Retrying, "attempt 1 of 3 is retried")
			require.NotNil(t, e.ExitCode)
			assert.Equal(t, 1, *e.ExitCode)
			assert.Contains(t, e.Error, "exit")
		}
		if e.Type == storage.EventOutput && slicesContains(e.Lines, "simulated failure") {
			assert.Equal(t, "stderr", e.Stream)
		}
	}

	t.Logf("flaky-01 done at %s", time.Since(start))

	// 3. A huge output stays bounded.
	id = h.submit("/workflows/servers/create", map[string]any{"infra": "lab", "settings": "./s.yaml", "servers": []string{"huge-01"}})
	evs = readAll(t, ctx, base, id, "")
	lines, bytes, notices := 0, 0, 0
	for _, e := range evs {
		lines += len(e.Lines)
		bytes += storage.EventLineBytes(e.Event)
		assert.LessOrEqual(t, len(e.Lines), activities.LiveMaxLinesPerEvent)
		if e.Type == storage.EventOutputTruncated {
			notices++
			assert.Contains(t, e.Message, "/tasks/"+id+"/steps/huge-01/output")
		}
	}
	t.Logf("huge-01: %d events, %d lines, %d bytes of output streamed (printed: 5000 lines, ~600 KB)", len(evs), lines, bytes)
	assert.Equal(t, 1, notices)
	assert.LessOrEqual(t, lines, activities.LiveMaxLines)
	assert.LessOrEqual(t, bytes, activities.LiveMaxBytes)
	assert.Greater(t, lines, 1000, "the tail is streamed up to the bound")
	last := evs[len(evs)-1]
	assert.Equal(t, storage.StatusCompleted, last.Status)
	assert.Equal(t, []string{"transition:Pending", "transition:Running", "step_started:huge-01:1"}, summary(evs)[:3])
	t.Logf("huge-01 done at %s", time.Since(start))
}

func slicesContains(lines []string, want string) bool {
	for _, l := range lines {
		if l == want {
			return true
		}
	}
	return false
}

// The same stream on the SurrealDB backend (serve mode): a retried step's
// events in order, ids 1..n, ending with Completed.
func TestLiveEventsSurreal(t *testing.T) {
	srv := testsupport.StartSurreal(t, "mem://")
	dir := t.TempDir()
	script := filepath.Join(dir, "provisioning")
	require.NoError(t, os.WriteFile(script, []byte(eventsScript), 0o644))
	cfg := appConfig(t, withNu(t, script), func(c *app.Config) {
		c.StorageType = app.StorageSurrealServer
		c.Store.SurrealURL, c.Store.SurrealUsername, c.Store.SurrealPassword = srv.URL, srv.User, srv.Pass
	})
	a, _ := launchApp(t, cfg)
	h := &harness{t: t, app: a, base: baseURL(a)}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	id := h.submit("/workflows/servers/create", map[string]any{"infra": "lab", "settings": "./s.yaml", "servers": []string{"flaky-03"}})
	evs := readAll(t, ctx, h.base, id, "")
	got := summary(evs)
	got = slices.DeleteFunc(got, func(s string) bool { return s == "output:simulated failure" })
	assert.Equal(t, []string{"transition:Pending", "transition:Running", "step_started:flaky-03:1", "output:flaky-03 attempt 1",
		"step_attempt_failed:flaky-03:1", "step_started:flaky-03:2", "output:flaky-03 attempt 2",
		"step_finished:flaky-03:Completed", "transition:Running", "transition:Completed"}, got)
	for i, e := range evs {
		assert.Equal(t, strconv.Itoa(i+1), e.ID)
	}
}
