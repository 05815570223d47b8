package metrics

import (
	"context"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Task types of the queue gauges' task_type label.
const (
	TaskTypeWorkflow = "workflow"
	TaskTypeActivity = "activity"
)

// PriorityAll is the priority label of a queue's totals over every
// priority; PriorityOther that of priority keys outside 1..QueuePriorities.
const (
	PriorityAll   = "all"
	PriorityOther = "other"
)

// QueuePriorities is how many priority keys (1..QueuePriorities) get a
// series of their own: Temporal's default number of priority levels
// (matching.priorityLevels) and the orchestrator's priorities 1..5.
const QueuePriorities = 5

// QueueBacklog is one task queue's backlog of one task type, at one
// priority key (0: the totals over every priority).
type QueueBacklog struct {
	TaskQueue string
	TaskType  string
	// Priority is a Temporal priority key, 0 for the totals.
	Priority int
	Count    int64
	Age      time.Duration
}

// QueuePollers is how many pollers Temporal lists for a task queue and
// task type.
type QueuePollers struct {
	TaskQueue string
	TaskType  string
	Pollers   int
}

// QueueFigures is what the queue gauges show: Temporal's description of the
// task queues the orchestrator uses.
type QueueFigures struct {
	Backlogs []QueueBacklog
	Pollers  []QueuePollers
	// RunningSteps counts in-flight (started, not finished) activities.
	RunningSteps int
}

var (
	queueBacklogDesc = prometheus.NewDesc(Namespace+"_queue_backlog_tasks",
		"Approximate backlog of a Temporal task queue (tasks waiting for a worker), by task queue, task type (workflow, activity) and priority key (1..5; all = every priority; other = keys beyond 5). From Temporal's DescribeTaskQueue stats.",
		[]string{"task_queue", "task_type", "priority"}, nil)
	queueBacklogAgeDesc = prometheus.NewDesc(Namespace+"_queue_backlog_age_seconds",
		"Approximate age of the oldest task in a Temporal task queue's backlog (0 when empty), by task queue, task type and priority key.",
		[]string{"task_queue", "task_type", "priority"}, nil)
	queuePollersDesc = prometheus.NewDesc(Namespace+"_queue_pollers",
		"Pollers Temporal lists for a task queue and task type (it keeps a poller listed for a few minutes after its last poll).",
		[]string{"task_queue", "task_type"}, nil)
	queueRunningDesc = prometheus.NewDesc(Namespace+"_queue_running_steps",
		"In-flight activities (started, not finished) of the running workflows on the orchestrator's task queue, from Temporal.", nil, nil)
	queueErrDesc = prometheus.NewDesc(Namespace+"_queue_scrape_error",
		"1 when Temporal's task-queue description could not be read for this scrape (the queue gauges are then absent).", nil, nil)
)

// RegisterQueue adds the queue gauges, computed at scrape time from read
// (which should cache: a scrape calls it once). timeout bounds one read;
// default 5s. queues and the task types fix the label sets: every queue gets
// its totals (all), priorities 1..QueuePriorities and other for both task
// types, zero when read does not mention them, so a drained backlog shows
// as 0 rather than vanishing. Figures of other queues or task types are
// dropped.
func (m *Metrics) RegisterQueue(queues []string, read func(context.Context) (QueueFigures, error), timeout time.Duration) error {
	if m == nil {
		return nil
	}
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	return m.reg.Register(&queueCollector{queues: queues, read: read, timeout: timeout})
}

type queueCollector struct {
	queues  []string
	read    func(context.Context) (QueueFigures, error)
	timeout time.Duration
}

func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- queueBacklogDesc
	ch <- queueBacklogAgeDesc
	ch <- queuePollersDesc
	ch <- queueRunningDesc
	ch <- queueErrDesc
}

// priorityLabel is a priority key as a bounded label value.
func priorityLabel(key int) string {
	switch {
	case key == 0:
		return PriorityAll
	case key >= 1 && key <= QueuePriorities:
		return strconv.Itoa(key)
	}
	return PriorityOther
}

type backlogKey struct{ queue, taskType, priority string }

func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	f, err := c.read(ctx)
	if err != nil {
		ch <- prometheus.MustNewConstMetric(queueErrDesc, prometheus.GaugeValue, 1)
		return
	}
	ch <- prometheus.MustNewConstMetric(queueErrDesc, prometheus.GaugeValue, 0)
	known := map[string]bool{}
	for _, q := range c.queues {
		known[q] = true
	}
	type backlog struct {
		count float64
		age   time.Duration
	}
	backlogs := map[backlogKey]*backlog{}
	pollers := map[backlogKey]float64{}
	for _, q := range c.queues {
		for _, tt := range []string{TaskTypeWorkflow, TaskTypeActivity} {
			for p := range QueuePriorities + 2 { // all, 1..5, other
				backlogs[backlogKey{q, tt, priorityLabel(p)}] = &backlog{}
			}
			pollers[backlogKey{q, tt, ""}] = 0
		}
	}
	for _, b := range f.Backlogs {
		if !known[b.TaskQueue] || (b.TaskType != TaskTypeWorkflow && b.TaskType != TaskTypeActivity) {
			continue // only the fixed label sets
		}
		x := backlogs[backlogKey{b.TaskQueue, b.TaskType, priorityLabel(b.Priority)}]
		x.count += float64(b.Count)
		x.age = max(x.age, b.Age)
	}
	for _, p := range f.Pollers {
		k := backlogKey{p.TaskQueue, p.TaskType, ""}
		if _, fixed := pollers[k]; fixed {
			pollers[k] += float64(p.Pollers)
		}
	}
	for k, b := range backlogs {
		ch <- prometheus.MustNewConstMetric(queueBacklogDesc, prometheus.GaugeValue, b.count, k.queue, k.taskType, k.priority)
		ch <- prometheus.MustNewConstMetric(queueBacklogAgeDesc, prometheus.GaugeValue, b.age.Seconds(), k.queue, k.taskType, k.priority)
	}
	for k, n := range pollers {
		ch <- prometheus.MustNewConstMetric(queuePollersDesc, prometheus.GaugeValue, n, k.queue, k.taskType)
	}
	ch <- prometheus.MustNewConstMetric(queueRunningDesc, prometheus.GaugeValue, float64(f.RunningSteps))
}
