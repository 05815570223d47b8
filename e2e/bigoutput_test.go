package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"
	"google.golang.org/protobuf/proto"

	"github.com/provisioning/orchestrator/internal/app"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/workflows"
)

// A MaxServers-sized task whose every step prints 100 KiB to stdout and to
// stderr completes in Temporal (not only in the task API): its result and
// history stay far below the payload (2 MB) and history (50 MB) limits,
// and the store keeps each step's tail.
func TestMaxServersWithBigOutputsComplete(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "provisioning")
	require.NoError(t, os.WriteFile(script, []byte(`def --wrapped main [...rest] {
    let line = ("x" | fill --character "x" --width 1023)
    let block = (1..100 | each { $line } | str join "\n")
    print $block
    print $"done ($rest | last)"
    print --stderr $block
}
`), 0o644))
	cfg := appConfig(t, withNu(t, script), func(c *app.Config) {
		// The default heartbeat timeout: 500 busy nu runs on 2 CPUs (with the
		// rest of the suite) miss the fast tests' 2 s one.
		c.Policy = workflows.ExecPolicy{Parallelism: 8}.WithDefaults()
	})
	a, _ := launchApp(t, cfg)
	h := &harness{t: t, app: a, base: baseURL(a)}
	servers := make([]string, workflows.MaxServers)
	for i := range servers {
		servers[i] = fmt.Sprintf("big-%03d", i)
	}
	id := h.submit("/workflows/servers/create", map[string]any{"infra": "lab", "settings": "./s.yaml", "servers": servers})
	task, _ := waitTask(t, h.base, id, 10*time.Minute, func(t storage.Task) bool { return t.Status.Terminal() })
	require.Equal(t, storage.StatusCompleted, task.Status)
	require.Len(t, task.Steps, workflows.MaxServers)
	for _, s := range task.Steps {
		require.Contains(t, s.Output, "done "+s.Name, "the store keeps each step's tail")
	}

	ctx := context.Background()
	// Temporal agrees: the workflow completed (its result fits).
	var desc enumspb.WorkflowExecutionStatus
	eventually(t, time.Minute, "workflow closed", func() bool {
		d, err := a.Client().DescribeWorkflowExecution(ctx, id, "")
		require.NoError(t, err)
		desc = d.WorkflowExecutionInfo.Status
		return desc != enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING
	})
	require.Equal(t, enumspb.WORKFLOW_EXECUTION_STATUS_COMPLETED, desc)
	var result storage.Task
	require.NoError(t, a.Client().GetWorkflow(ctx, id, "").Get(ctx, &result))
	assert.Equal(t, storage.StatusCompleted, result.Status)

	it := a.Client().GetWorkflowHistory(ctx, id, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	size, events := 0, 0
	for it.HasNext() {
		ev, err := it.Next()
		require.NoError(t, err)
		size += proto.Size(ev)
		events++
	}
	t.Logf("history: %d events, %.1f MB", events, float64(size)/(1<<20))
	assert.Less(t, size, 15<<20, "history stays far below the 50 MB limit")
}
