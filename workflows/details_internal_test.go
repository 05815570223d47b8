package workflows

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/provisioning/orchestrator/testenv"
)

// A test environment's current details name its phase and what matters in
// it: nodes, taskservs installed, the last run, when it expires.
func TestEnvDetails(t *testing.T) {
	exp := time.Date(2026, 12, 2, 18, 5, 0, 0, time.UTC)
	nodes := make([]testenv.NodeStatus, 3)
	done := time.Date(2026, 12, 2, 17, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		s    testenv.EnvState
		want string
	}{
		{testenv.EnvState{Status: EnvCreating, Nodes: nodes, ExpiresAt: exp}, "creating · 3 nodes · expires 2026-12-02 18:05:00 UTC"},
		{testenv.EnvState{Status: EnvConverging, Nodes: nodes, ExpiresAt: exp, Converge: []testenv.TaskservResult{
			{Status: "completed"}, {Status: "running"}, {Status: "pending"}}}, "converging · 1/3 taskservs installed · 3 nodes · expires 2026-12-02 18:05:00 UTC"},
		{testenv.EnvState{Status: EnvReady, Nodes: nodes, ExpiresAt: exp}, "ready · 3 nodes · expires 2026-12-02 18:05:00 UTC"},
		{testenv.EnvState{Status: EnvReady, Nodes: nodes[:1], ExpiresAt: exp}, "ready · 1 node · expires 2026-12-02 18:05:00 UTC"},
		{testenv.EnvState{Status: EnvFailed, Nodes: nodes, ExpiresAt: exp, LastRun: &testenv.TestRun{Number: 2, Total: 5, Failed: 1}},
			"failed · 3 nodes · run 2 failed (1 of 5 tests) · expires 2026-12-02 18:05:00 UTC"},
		{testenv.EnvState{Status: EnvPassed, Nodes: nodes, ExpiresAt: exp, LastRun: &testenv.TestRun{Number: 1, Total: 5, Passed: true}},
			"passed · 3 nodes · run 1 passed · expires 2026-12-02 18:05:00 UTC"},
		{testenv.EnvState{Status: EnvCleaned, Nodes: nodes, ExpiresAt: exp, EndReason: "ttl expired", FinishedAt: &done}, "cleaned · ttl expired"},
		{testenv.EnvState{Status: EnvError, Nodes: nodes, ExpiresAt: exp, Error: "image not found\nmore", FinishedAt: &done}, "error · image not found"},
	} {
		assert.Equal(t, tc.want, envDetails(tc.s))
	}
}
