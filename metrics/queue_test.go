package metrics

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// queueSeries gathers the registry into name{labels} → value.
func queueSeries(t *testing.T, m *Metrics) map[string]float64 {
	t.Helper()
	mfs, err := m.Registry().Gather()
	require.NoError(t, err)
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, s := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range s.GetLabel() {
				key += " " + l.GetName() + "=" + l.GetValue()
			}
			out[key] = s.GetGauge().GetValue()
		}
	}
	return out
}

func TestQueueGaugesFixedLabelSets(t *testing.T) {
	m := New()
	reads := 0
	require.NoError(t, m.RegisterQueue([]string{"q"}, func(context.Context) (QueueFigures, error) {
		reads++
		return QueueFigures{
			Backlogs: []QueueBacklog{
				{TaskQueue: "q", TaskType: TaskTypeWorkflow, Count: 9, Age: 1500 * time.Millisecond},
				{TaskQueue: "q", TaskType: TaskTypeWorkflow, Priority: 2, Count: 4, Age: time.Second},
				// Keys past 5 share one series: counts add, the oldest age wins.
				{TaskQueue: "q", TaskType: TaskTypeWorkflow, Priority: 7, Count: 2, Age: 3 * time.Second},
				{TaskQueue: "q", TaskType: TaskTypeWorkflow, Priority: 1000, Count: 3, Age: time.Second},
				// Not ours: dropped, the label sets stay fixed.
				{TaskQueue: "someone-else", TaskType: TaskTypeWorkflow, Count: 1},
				{TaskQueue: "q", TaskType: "nexus", Count: 1},
			},
			Pollers:      []QueuePollers{{TaskQueue: "q", TaskType: TaskTypeActivity, Pollers: 3}, {TaskQueue: "x", TaskType: TaskTypeActivity, Pollers: 1}},
			RunningSteps: 6,
		}, nil
	}, 0))
	got := queueSeries(t, m)
	assert.Equal(t, 1, reads, "one read per scrape")
	assert.Equal(t, 9.0, got["orchestrator_queue_backlog_tasks priority=all task_queue=q task_type=workflow"])
	assert.Equal(t, 1.5, got["orchestrator_queue_backlog_age_seconds priority=all task_queue=q task_type=workflow"])
	assert.Equal(t, 4.0, got["orchestrator_queue_backlog_tasks priority=2 task_queue=q task_type=workflow"])
	assert.Equal(t, 5.0, got["orchestrator_queue_backlog_tasks priority=other task_queue=q task_type=workflow"])
	assert.Equal(t, 3.0, got["orchestrator_queue_backlog_age_seconds priority=other task_queue=q task_type=workflow"])
	assert.Equal(t, 3.0, got["orchestrator_queue_pollers task_queue=q task_type=activity"])
	assert.Equal(t, 6.0, got["orchestrator_queue_running_steps"])
	assert.Equal(t, 0.0, got["orchestrator_queue_scrape_error"])
	backlog, age, pollers := 0, 0, 0
	for k := range got {
		switch {
		case strings.HasPrefix(k, "orchestrator_queue_backlog_tasks "):
			backlog++
		case strings.HasPrefix(k, "orchestrator_queue_backlog_age_seconds "):
			age++
		case strings.HasPrefix(k, "orchestrator_queue_pollers "):
			pollers++
		}
	}
	// 1 queue x 2 types x (all, 1..5, other); pollers per type.
	assert.Equal(t, 14, backlog)
	assert.Equal(t, 14, age)
	assert.Equal(t, 2, pollers)
	assert.Equal(t, 0.0, got["orchestrator_queue_backlog_tasks priority=5 task_queue=q task_type=activity"])
}

func TestQueueGaugesReadFails(t *testing.T) {
	m := New()
	require.NoError(t, m.RegisterQueue([]string{"q"}, func(ctx context.Context) (QueueFigures, error) {
		_, hasDeadline := ctx.Deadline()
		assert.True(t, hasDeadline, "a scrape's read is bounded")
		return QueueFigures{}, errors.New("temporal down")
	}, time.Second))
	got := queueSeries(t, m)
	assert.Equal(t, 1.0, got["orchestrator_queue_scrape_error"])
	for k := range got {
		assert.NotContains(t, k, "orchestrator_queue_backlog", "no stale figures on error")
	}
}

func TestQueueGaugesNilMetrics(t *testing.T) {
	var m *Metrics
	assert.NoError(t, m.RegisterQueue(nil, nil, 0))
}
