//go:build !nosurrealdb

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/internal/app"
	"github.com/provisioning/orchestrator/internal/testsupport"
	"github.com/provisioning/orchestrator/storage"
)

// surrealOutageEnv sets how long TestChaosSurrealDownForMinutesUnderLoad
// keeps SurrealDB away (a Go duration); default defaultSurrealOutage.
const surrealOutageEnv = "ORCHESTRATOR_CHAOS_SURREAL_OUTAGE"

const defaultSurrealOutage = 2 * time.Minute

// apiTally counts the API's answers by kind, from several goroutines.
type apiTally struct {
	mu       sync.Mutex
	ok       int
	u503     int
	bad      []string // any other answer: a 500, another status, no envelope, no answer
	lastDown time.Time
}

func (a *apiTally) record(what string, r response, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case err == nil && r.status == http.StatusOK:
		a.ok++
	case err == nil && r.status == http.StatusServiceUnavailable && r.env.Error != nil && r.env.Error.Code == "service_unavailable":
		a.u503++
		a.lastDown = time.Now()
	default:
		if len(a.bad) < 20 {
			a.bad = append(a.bad, fmt.Sprintf("%s: HTTP %d, %v: %.300s", what, r.status, err, r.raw))
		}
	}
}

func (a *apiTally) snapshot() (ok, u503 int, bad []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ok, a.u503, slices.Clone(a.bad)
}

// TestChaosSurrealDownForMinutesUnderLoad submits a steady stream of
// server-create tasks (one a second, 1–3 servers each) to a service on the
// SurrealDB backend and kills SurrealDB for minutes
// (ORCHESTRATOR_CHAOS_SURREAL_OUTAGE, default 2m) in the middle of it.
// While it is away every answer is 200 or 503, never 500; once it is back
// every accepted task reaches Completed with every status transition in its
// audit trail in version order, and the provider's run log shows how many
// servers were provisioned more than once.
func TestChaosSurrealDownForMinutesUnderLoad(t *testing.T) {
	requireChaos(t)
	outage := defaultSurrealOutage
	if v := os.Getenv(surrealOutageEnv); v != "" {
		d, err := time.ParseDuration(v)
		require.NoError(t, err, surrealOutageEnv)
		outage = d
	}
	const (
		before   = 20 * time.Second // load before the kill
		after    = 20 * time.Second // load after the restart
		interval = time.Second      // one create attempt a second
	)
	srv := testsupport.StartSurreal(t, "surrealkv://"+filepath.Join(t.TempDir(), "db"))
	runLog := filepath.Join(t.TempDir(), "runs.log")
	h := startAppWith(t, func(c *app.Config) {
		c.StorageType = app.StorageSurrealServer
		c.Store.SurrealURL = srv.URL
		c.Store.SurrealUsername = srv.User
		c.Store.SurrealPassword = srv.Pass
		// Enough attempts that load alone never fails a step.
		c.Policy.MaxAttempts = 10
	}, "PROVISIONING_DEMO_DELAY_MS=3000", "PROVISIONING_DEMO_RUN_LOG="+runLog)
	client := &http.Client{Timeout: 30 * time.Second}

	var (
		tally    apiTally
		mu       sync.Mutex
		accepted []string
		when     []time.Time             // when each was accepted
		servers  = map[string][]string{} // task id → its servers
	)
	ctx, stopLoad := context.WithCancel(context.Background())
	loadDone := make(chan struct{})
	// The load: one create a second, for the whole window, bounded.
	maxAttempts := int((before + outage + after + 30*time.Second) / interval)
	go func() {
		defer close(loadDone)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for i := 0; i < maxAttempts; i++ {
			names := []string{fmt.Sprintf("c%03d-a", i)}
			for j := range i % 3 {
				names = append(names, fmt.Sprintf("c%03d-%c", i, 'b'+j))
			}
			r, err := send(client, http.MethodPost, h.base+"/workflows/servers/create", serverBody(names...))
			tally.record("create", r, err)
			if err == nil && r.status == http.StatusOK {
				var id string
				if json.Unmarshal(r.env.Data, &id) == nil {
					mu.Lock()
					accepted = append(accepted, id)
					when = append(when, time.Now())
					servers[id] = names
					mu.Unlock()
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	// Readers: a task, the task list and health, twice a second.
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			mu.Lock()
			var id string
			if len(accepted) > 0 {
				id = accepted[i%len(accepted)]
			}
			mu.Unlock()
			if id != "" {
				r, err := send(client, http.MethodGet, h.base+"/tasks/"+id, nil)
				tally.record("GET /tasks/"+id, r, err)
			}
			r, err := send(client, http.MethodGet, h.base+"/tasks?limit=20", nil)
			tally.record("GET /tasks", r, err)
			r, err = send(client, http.MethodGet, h.base+"/health", nil)
			tally.record("GET /health", r, err)
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			stopLoad()
			<-loadDone
			<-readDone
		}
	}
	defer stop()

	// Kill once the load has run a while and steps are in flight.
	time.Sleep(before) // the load's own pace: nothing to await but time
	eventually(t, time.Minute, "nu steps in flight", func() bool {
		mu.Lock()
		ids := slices.Clone(accepted)
		mu.Unlock()
		for _, id := range ids {
			if len(taskProcesses(id)) > 0 {
				return true
			}
		}
		return false
	})
	mu.Lock()
	acceptedBefore := len(accepted)
	mu.Unlock()
	srv.Kill()
	killed := time.Now()
	t.Logf("SurrealDB killed with %d tasks accepted; down for %s", acceptedBefore, outage)
	eventually(t, 30*time.Second, "the API to answer 503", func() bool {
		_, n, _ := tally.snapshot()
		return n > 0
	})
	// The outage itself: wall-clock time is the scenario.
	time.Sleep(time.Until(killed.Add(outage)))
	_, down503, _ := tally.snapshot()
	mu.Lock()
	acceptedDuring := len(accepted) - acceptedBefore
	mu.Unlock()
	srv.Restart(t)
	back := time.Now()
	t.Logf("SurrealDB back after %s", back.Sub(killed).Round(time.Second))

	// Drain: the tasks accepted before the kill (those in flight lost
	// their projections) all reach a final state.
	mu.Lock()
	inFlight := slices.Clone(accepted[:acceptedBefore])
	mu.Unlock()
	final := map[string]storage.Task{}
	awaitFinal(client, h.base, inFlight, final, time.Now().Add(6*time.Minute))
	drain := time.Since(back)

	// Let the load run on a little with the database back, then stop it.
	eventually(t, 2*time.Minute, "creates to succeed again", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(accepted) > acceptedBefore+acceptedDuring
	})
	mu.Lock()
	firstOK := when[acceptedBefore+acceptedDuring].Sub(back)
	mu.Unlock()
	time.Sleep(time.Until(back.Add(after))) // the load's own pace
	stop()
	ok, total503, bad := tally.snapshot()
	mu.Lock()
	ids := slices.Clone(accepted)
	mu.Unlock()

	// Every accepted task reaches a final state: none lost.
	awaitFinal(client, h.base, ids, final, time.Now().Add(3*time.Minute))
	byStatus := map[storage.TaskStatus]int{}
	var stuck []string
	for _, id := range ids {
		task, done := final[id]
		if !done {
			task = h.task(id)
			stuck = append(stuck, fmt.Sprintf("%s %s v%d", id, task.Status, task.Version))
		}
		byStatus[task.Status]++
	}
	// What Temporal says about the workflows of tasks that did not complete.
	var notCompleted []string
	for _, id := range ids {
		if task, done := final[id]; done && task.Status == storage.StatusCompleted {
			continue
		}
		desc, err := h.app.Client().DescribeWorkflowExecution(context.Background(), id, "")
		if err != nil {
			notCompleted = append(notCompleted, fmt.Sprintf("%s: describe: %v", id, err))
			continue
		}
		line := fmt.Sprintf("%s: workflow %s", id, desc.GetWorkflowExecutionInfo().GetStatus())
		if task, done := final[id]; done {
			line += fmt.Sprintf(", task %s: %s", task.Status, firstLine(deref(task.Error)))
		}
		notCompleted = append(notCompleted, line)
	}

	// Every transition in the audit trail, in version order.
	lost := 0
	var lostDetail []string
	want := []storage.TaskStatus{storage.StatusPending, storage.StatusRunning, storage.StatusCompleted}
	for _, id := range ids {
		r, err := send(client, http.MethodGet, h.base+"/tasks/"+id+"/audit", nil)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, r.status, "%s", r.raw)
		var entries []storage.AuditEntry
		require.NoError(t, json.Unmarshal(r.env.Data, &entries))
		var chain []storage.TaskStatus
		var versions []int64
		for _, e := range entries {
			if e.Action == storage.AuditCreate || e.Action == storage.AuditTransition {
				chain = append(chain, e.After)
				versions = append(versions, e.Version)
			}
		}
		for i := 1; i < len(versions); i++ {
			assert.Less(t, versions[i-1], versions[i], "task %s: audit transitions out of version order: %v %v", id, chain, versions)
		}
		for _, s := range want {
			if !slices.Contains(chain, s) {
				lost++
				lostDetail = append(lostDetail, fmt.Sprintf("%s: %s (chain %v)", id, s, chain))
			}
		}
	}

	// The provider's own count of runs.
	raw, err := os.ReadFile(runLog)
	require.NoError(t, err)
	changed := map[string]int{}
	runs, unchanged := 0, 0
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		if line == "" {
			continue
		}
		runs++
		if what, ok := strings.CutSuffix(line, " changed"); ok {
			changed[what]++
		} else {
			unchanged++
		}
	}
	wantServers, duplicated, dupServers := 0, 0, 0
	for _, id := range ids {
		wantServers += len(servers[id])
	}
	for what, n := range changed {
		if n > 1 {
			duplicated += n - 1
			dupServers++
			t.Logf("%s provisioned %d times", what, n)
		}
	}

	// The task store holds no task nobody was told about.
	lr := h.get("/tasks?limit=1")
	require.Equal(t, http.StatusOK, lr.status, "%s", lr.raw)

	t.Logf("SurrealDB down %s under load (a create attempt every %s, at most %d): %d tasks accepted (%d before the kill, %d during, %d after), %d answers 200, %d answers 503 (%d while it was down), other answers %d",
		outage, interval, maxAttempts, len(ids), acceptedBefore, acceptedDuring, len(ids)-acceptedBefore-acceptedDuring, ok, total503, down503, len(bad))
	t.Logf("after the restart: first create accepted after %s, the %d tasks accepted before the kill final after %s; all final: %v; store lists %s tasks; not completed: %d %v",
		firstOK.Round(100*time.Millisecond), len(inFlight), drain.Round(time.Second), byStatus, lr.header.Get("X-Total-Count"), len(notCompleted), notCompleted)
	t.Logf("audit: %d lost transitions %v; provider: %d runs for %d servers, %d found the work done, %d servers provisioned more than once (%d duplicate runs)",
		lost, lostDetail, runs, wantServers, unchanged, dupServers, duplicated)

	assert.Empty(t, bad, "every answer is 200 or 503 (never 500, never none)")
	assert.Positive(t, down503, "the API answered 503 while SurrealDB was down")
	assert.GreaterOrEqual(t, len(ids), 30, "a load of at least 30 tasks")
	assert.Empty(t, stuck, "tasks not final after the database returned")
	assert.Equal(t, len(ids), byStatus[storage.StatusCompleted], "every task Completed: %v", notCompleted)
	assert.Zero(t, lost, "lost transitions: %v", lostDetail)
	assert.Equal(t, fmt.Sprint(len(ids)), lr.header.Get("X-Total-Count"), "the store holds exactly the accepted tasks")
	assert.Len(t, changed, wantServers, "every server provisioned")
	assert.Zero(t, duplicated, "servers provisioned more than once")
}

// awaitFinal polls GET /tasks/{id} for ids not yet in final until each is in
// a final state (recorded in final) or deadline passes.
func awaitFinal(c *http.Client, base string, ids []string, final map[string]storage.Task, deadline time.Time) {
	for {
		left := 0
		for _, id := range ids {
			if _, done := final[id]; done {
				continue
			}
			r, err := send(c, http.MethodGet, base+"/tasks/"+id, nil)
			var task storage.Task
			if err == nil && r.status == http.StatusOK && json.Unmarshal(r.env.Data, &task) == nil && task.Status.Terminal() {
				final[id] = task
				continue
			}
			left++
		}
		if left == 0 || time.Now().After(deadline) {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}
