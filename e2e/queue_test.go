package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/internal/app"
	"github.com/provisioning/orchestrator/server"
	"github.com/provisioning/orchestrator/storage"
)

// queueReport is GET /queue's data.
func queueReport(t *testing.T, base string) server.QueueReport {
	t.Helper()
	r := do(t, http.MethodGet, base+"/queue", "", nil)
	require.Equal(t, http.StatusOK, r.status, "%s", r.raw)
	var rep server.QueueReport
	require.NoError(t, json.Unmarshal(r.env.Data, &rep))
	require.Len(t, rep.TaskQueues, 2, "%s", r.raw)
	return rep
}

// queueGauge is the backlog gauge (or, with age, the backlog age gauge) of
// a queue and task type over every priority, as /metrics shows it.
func queueGauge(t *testing.T, base, name, queue, taskType string) float64 {
	t.Helper()
	return metricValue(scrape(t, base), fmt.Sprintf(`%s{priority="all",task_queue=%q,task_type=%q} `, name, queue, taskType))
}

// TestQueueDepthFromTemporal: GET /queue reports a backlog the orchestrator
// never counted itself. An API process with no worker starts tasks, so
// their workflow tasks wait in Temporal's provisioning queue: /queue (and
// the gauges, and `workflow queue`) show them, with no pollers. Then a
// worker with one activity slot and slow steps comes: its identity shows
// as a poller, the steps queue up as an activity backlog, at most one step
// runs at a time, and once everything finished every backlog is 0.
func TestQueueDepthFromTemporal(t *testing.T) {
	temporal, _ := launchApp(t, appConfig(t, func(c *app.Config) { c.Mode = app.ModeTemporal }))
	taddr := temporal.TemporalAddress()

	apiCfg := appConfig(t, withDemoProvider(t), func(c *app.Config) {
		c.Mode = app.ModeAPI
		c.TemporalAddress = taddr
		c.ReconcileInterval = 0
	})
	api, _ := launchApp(t, apiCfg)
	base := baseURL(api)
	h := &harness{t: t, base: base}
	const queue, envQueue = "provisioning", "provisioning-testenv"

	// Nothing queued yet, nobody polls.
	rep := queueReport(t, base)
	assert.Equal(t, queue, rep.TaskQueues[0].Name)
	assert.Equal(t, server.QueueKindProvisioning, rep.TaskQueues[0].Kind)
	assert.Equal(t, envQueue, rep.TaskQueues[1].Name)
	assert.Equal(t, server.QueueKindTestEnv, rep.TaskQueues[1].Kind)
	for _, q := range rep.TaskQueues {
		assert.Zero(t, q.Workflow.Backlog, q.Name)
		assert.Zero(t, q.Activity.Backlog, q.Name)
		assert.Empty(t, q.Workflow.Pollers, q.Name)
		assert.Empty(t, q.Activity.Pollers, q.Name)
	}
	assert.Zero(t, rep.RunningSteps.Count)

	const tasks = 8
	var ids []string
	for i := range tasks {
		ids = append(ids, h.submit("/workflows/servers/create", serverBody(fmt.Sprintf("q%d-a", i), fmt.Sprintf("q%d-b", i))))
	}
	// Our own records say Pending; the backlog figure must come from
	// Temporal (its stats are cached up to 5s by the matching service).
	var queued server.QueueReport
	eventually(t, 30*time.Second, "Temporal to report the workflow backlog", func() bool {
		queued = queueReport(t, base)
		// Visibility (which the running-steps scan lists) may lag the start.
		return queued.TaskQueues[0].Workflow.Backlog >= tasks && queued.RunningSteps.WorkflowsScanned == tasks
	})
	wf := queued.TaskQueues[0].Workflow
	t.Logf("backlog with no worker: %d workflow tasks, oldest %.1fs, by priority %+v", wf.Backlog, wf.BacklogAgeSeconds, wf.ByPriority)
	assert.Equal(t, int64(tasks), wf.Backlog, "one workflow task per started task")
	assert.Positive(t, wf.BacklogAgeSeconds)
	assert.Empty(t, wf.Pollers, "no worker polls")
	var byPriority int64
	for _, p := range wf.ByPriority {
		byPriority += p.Backlog
	}
	assert.Equal(t, wf.Backlog, byPriority, "the per-priority backlogs add up to the total")
	assert.Zero(t, queued.RunningSteps.Count)
	for _, id := range ids {
		assert.Equal(t, storage.StatusPending, h.task(id).Status)
	}

	// The gauges show the same figure (the same cached description, or a
	// later one equal to it: nothing moves without a worker).
	eventually(t, 15*time.Second, "the backlog gauge to match /queue", func() bool {
		return queueGauge(t, base, "orchestrator_queue_backlog_tasks", queue, "workflow") == float64(queueReport(t, base).TaskQueues[0].Workflow.Backlog)
	})
	text := scrape(t, base)
	assert.Equal(t, float64(tasks), metricValue(text, `orchestrator_queue_backlog_tasks{priority="all",task_queue="provisioning",task_type="workflow"} `))
	assert.Positive(t, metricValue(text, `orchestrator_queue_backlog_age_seconds{priority="all",task_queue="provisioning",task_type="workflow"} `))
	assert.Equal(t, 0.0, metricValue(text, `orchestrator_queue_pollers{task_queue="provisioning",task_type="workflow"} `))
	assert.Equal(t, 0.0, metricValue(text, `orchestrator_queue_backlog_tasks{priority="all",task_queue="provisioning-testenv",task_type="activity"} `))
	assert.Equal(t, 0.0, metricValue(text, `orchestrator_queue_running_steps `))
	assert.Equal(t, 0.0, metricValue(text, `orchestrator_queue_scrape_error `))
	assert.Contains(t, text, `orchestrator_http_requests_total{method="GET",route="/queue",status="200"}`)

	// The Nushell wrapper shows the same.
	var nuQueue struct {
		RunningSteps int `json:"running_steps"`
		Queues       []struct {
			TaskQueue  string         `json:"task_queue"`
			TaskType   string         `json:"task_type"`
			Backlog    int64          `json:"backlog"`
			Pollers    []string       `json:"pollers"`
			ByPriority map[string]int `json:"by_priority"`
		} `json:"queues"`
	}
	runNuJSON(t, base, "workflow queue | to json", &nuQueue, "workflows/workflow.nu")
	require.Len(t, nuQueue.Queues, 4, "2 queues x 2 task types")
	assert.Equal(t, queue, nuQueue.Queues[0].TaskQueue)
	assert.Equal(t, "workflow", nuQueue.Queues[0].TaskType)
	assert.Equal(t, int64(tasks), nuQueue.Queues[0].Backlog)
	assert.Empty(t, nuQueue.Queues[0].Pollers)
	sum := 0
	for _, n := range nuQueue.Queues[0].ByPriority {
		sum += n
	}
	assert.Equal(t, tasks, sum)
	assert.Equal(t, "activity", nuQueue.Queues[1].TaskType)
	assert.Equal(t, envQueue, nuQueue.Queues[2].TaskQueue)
	var full map[string]any
	runNuJSON(t, base, "workflow queue --full | to json", &full, "workflows/workflow.nu")
	assert.Contains(t, full, "running_steps")
	assert.Contains(t, full, "cache_ttl_ms")

	// A worker with one activity slot and slow steps.
	workerCfg := appConfig(t, withDemoProvider(t, "PROVISIONING_DEMO_DELAY_MS=700"), func(c *app.Config) {
		c.Mode = app.ModeWorker
		c.TemporalAddress = taddr
		c.DataDir = apiCfg.DataDir
		c.MaxConcurrentActivities = 1
	})
	launchApp(t, workerCfg)

	var sawActivityBacklog, sawRunning bool
	var sawPollers map[string]bool
	maxRunning := 0
	eventually(t, 120*time.Second, "the worker to drain every task", func() bool {
		rep := queueReport(t, base)
		prov := rep.TaskQueues[0]
		maxRunning = max(maxRunning, rep.RunningSteps.ByActivityType["RunNushell"])
		sawRunning = sawRunning || rep.RunningSteps.ByActivityType["RunNushell"] == 1
		if prov.Activity.Backlog > 0 && !sawActivityBacklog {
			sawActivityBacklog = true
			t.Logf("activity backlog while draining: %d, oldest %.1fs, running steps %d", prov.Activity.Backlog, prov.Activity.BacklogAgeSeconds, rep.RunningSteps.Count)
		}
		if len(prov.Workflow.Pollers) > 0 && len(prov.Activity.Pollers) > 0 && len(rep.TaskQueues[1].Activity.Pollers) > 0 && sawPollers == nil {
			sawPollers = map[string]bool{}
			for _, p := range append(append(prov.Workflow.Pollers, prov.Activity.Pollers...), rep.TaskQueues[1].Activity.Pollers...) {
				sawPollers[p.Identity] = true
				assert.NotNil(t, p.LastAccessTime, "poller %s", p.Identity)
				if p.LastAccessTime != nil {
					assert.WithinDuration(t, time.Now(), *p.LastAccessTime, time.Minute)
				}
			}
		}
		for _, id := range ids {
			if h.task(id).Status != storage.StatusCompleted {
				return false
			}
		}
		return true
	})
	t.Logf("pollers seen: %v; most RunNushell in flight at once: %d", sawPollers, maxRunning)
	assert.True(t, sawActivityBacklog, "steps waited for the single activity slot in Temporal's activity backlog")
	assert.True(t, sawRunning, "a running step was reported")
	assert.LessOrEqual(t, maxRunning, 1, "one activity slot: at most one step in flight")
	assert.NotEmpty(t, sawPollers, "the worker polled every queue and type")

	// Drained: every backlog 0 once Temporal's stats catch up.
	eventually(t, 60*time.Second, "every backlog to read 0", func() bool {
		rep := queueReport(t, base)
		for _, q := range rep.TaskQueues {
			if q.Workflow.Backlog != 0 || q.Activity.Backlog != 0 {
				return false
			}
		}
		return rep.RunningSteps.Count == 0
	})
	eventually(t, 15*time.Second, "the gauges to read 0", func() bool {
		return queueGauge(t, base, "orchestrator_queue_backlog_tasks", queue, "workflow") == 0 &&
			queueGauge(t, base, "orchestrator_queue_backlog_tasks", queue, "activity") == 0
	})
	text = scrape(t, base)
	assert.Equal(t, 0.0, metricValue(text, `orchestrator_queue_running_steps `))
	assert.Positive(t, metricValue(text, `orchestrator_queue_pollers{task_queue="provisioning",task_type="activity"} `))
	assert.Positive(t, metricValue(text, `orchestrator_queue_pollers{task_queue="provisioning-testenv",task_type="activity"} `))
}
