package e2e

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/internal/testsupport"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/workflows"
)

// nuBatch is the batch summary the Nushell batch commands return.
type nuBatch struct {
	TaskID     string `json:"task_id"`
	ID         string `json:"id"`
	Name       string `json:"name"`
	Status     string `json:"status"`
	Mode       string `json:"mode"`
	Phase      string `json:"phase"`
	Error      string `json:"error"`
	Operations []struct {
		ID         string `json:"id"`
		Type       string `json:"type"`
		Status     string `json:"status"`
		TaskID     string `json:"task_id"`
		RolledBack bool   `json:"rolled_back"`
	} `json:"operations"`
	Approval *storage.Approval `json:"approval"`
	Plans    []struct {
		ID     string `json:"id"`
		Status string `json:"status"`
		TaskID string `json:"task_id"`
		Plan   string `json:"plan"`
	} `json:"plans"`
	Compensations []map[string]any `json:"compensations"`
}

// exampleBatch is examples/batch.yaml, by absolute path (the CLI runs from
// a temporary directory).
func exampleBatch(t *testing.T) string {
	return filepath.Join(testsupport.RepoRoot(t), "examples", "batch.yaml")
}

// exampleOps are the operation ids of examples/batch.yaml, in its order.
var exampleOps = []string{"web", "db", "k8s-web", "k8s-db", "pg", "cluster"}

// stateFiles lists the regular files under the provider's state dir.
func stateFiles(t *testing.T, dir string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		if d.Type().IsRegular() {
			files = append(files, p)
		}
		return nil
	})
	require.NoError(t, err)
	return files
}

// `batch plan` shows every operation's plan and changes nothing; `batch
// submit --wait` runs the example to the end, each operation a task with
// its dependencies; `batch status` shows the operations table.
func TestNuBatchPlanThenSubmit(t *testing.T) {
	h := startApp(t)
	require.NotEmpty(t, h.stateDir)
	file := exampleBatch(t)

	r := provisioning(t, h.base, nil, "help")
	require.Equal(t, 0, r.exitCode)
	for _, c := range []string{"batch submit", "batch plan", "batch status", "task approve", "task reject"} {
		assert.Contains(t, r.stdout, c)
	}

	var plan nuBatch
	r = provisioning(t, h.base, &plan, "batch", "plan", file, "--out", "json")
	assert.Contains(t, r.stderr, "batch "+plan.ID+" submitted (plan)")
	assert.Equal(t, "Completed", plan.Status)
	assert.Equal(t, workflows.BatchModePlan, plan.Mode)
	require.Len(t, plan.Plans, len(exampleOps))
	for i, p := range plan.Plans {
		assert.Equal(t, exampleOps[i], p.ID)
		assert.Equal(t, "Completed", p.Status, p.ID)
		assert.NotEmpty(t, strings.TrimSpace(p.Plan), "plan of %s", p.ID)
		assert.Equal(t, workflows.OperationTaskID(plan.ID, p.ID, true), p.TaskID)
	}
	assert.Contains(t, plan.Plans[0].Plan, "web-01")
	assert.Contains(t, plan.Plans[5].Plan, "buildkit")
	assert.Empty(t, stateFiles(t, h.stateDir), "a plan changes nothing in the provider's state")

	var done nuBatch
	r = provisioning(t, h.base, &done, "batch", "submit", file, "--wait", "--priority", "2", "--out", "json")
	require.NotEmpty(t, done.ID)
	assert.Contains(t, r.stderr, "batch "+done.ID+" submitted")
	assert.Equal(t, "Completed", done.Status, done.Error)
	assert.Equal(t, storage.PhaseDone, done.Phase)
	require.Len(t, done.Operations, len(exampleOps))
	for i, o := range done.Operations {
		assert.Equal(t, exampleOps[i], o.ID)
		assert.Equal(t, "Completed", o.Status, o.ID)
		assert.False(t, o.RolledBack)
		task := h.task(o.TaskID)
		assert.Equal(t, storage.StatusCompleted, task.Status, o.ID)
		assert.Equal(t, 2, task.Priority, "--priority reaches %s", o.ID)
	}
	// cluster depends on k8s-web and pg: its task names theirs.
	assert.ElementsMatch(t, []string{done.Operations[2].TaskID, done.Operations[4].TaskID}, h.task(done.Operations[5].TaskID).Dependencies)
	assert.Equal(t, 2, h.task(done.ID).Priority)
	for _, f := range []string{"servers/web-01.json", "servers/db-01.json", "taskservs/web-01/kubernetes.json",
		"taskservs/db-01/postgres.json", "clusters/buildkit.json"} {
		assert.FileExists(t, filepath.Join(h.stateDir, "production", f))
	}

	var st nuBatch
	provisioning(t, h.base, &st, "batch", "status", done.ID, "--out", "json")
	assert.Equal(t, done.Operations, st.Operations)
	assert.Nil(t, st.Approval)
	assert.Empty(t, st.Compensations)
	// The table keeps exactly the columns the command documents.
	var raw map[string]json.RawMessage
	provisioning(t, h.base, &raw, "batch", "status", done.ID, "--out", "json")
	var rows []map[string]any
	require.NoError(t, json.Unmarshal(raw["operations"], &rows))
	require.NotEmpty(t, rows)
	for _, c := range []string{"id", "type", "status", "task_id", "rolled_back"} {
		assert.Contains(t, rows[0], c)
	}

	// Without --wait: the id at once.
	var started nuBatch
	provisioning(t, h.base, &started, "batch", "submit", file, "--out", "json")
	require.NoError(t, storage.ValidateID(started.TaskID))
	waitTask(t, h.base, started.TaskID, time.Minute, terminal)
	assert.Equal(t, storage.StatusCompleted, h.task(started.TaskID).Status)

	// A task that is not a batch: `batch status` says so.
	r = provisioning(t, h.base, nil, "batch", "status", done.Operations[0].TaskID)
	assert.NotEqual(t, 0, r.exitCode)
	assert.Contains(t, errorText(r.stderr), "is a ServerCreate, not a batch")
}

// --require-approval shows the plan once the batch awaits approval and
// returns; `task approve` applies it, `task reject` cancels it. Bad files
// exit non-zero naming the field (or the file) and start nothing.
func TestNuBatchApproveRejectAndBadFiles(t *testing.T) {
	h := startApp(t)
	file := exampleBatch(t)

	var waiting nuBatch
	r := provisioning(t, h.base, &waiting, "batch", "submit", file, "--require-approval", "--out", "json")
	assert.Equal(t, "Running", waiting.Status)
	assert.Equal(t, storage.PhaseAwaitingApproval, waiting.Phase)
	require.NotNil(t, waiting.Approval)
	assert.Equal(t, storage.DecisionPending, waiting.Approval.Decision)
	require.Len(t, waiting.Plans, len(exampleOps))
	for _, p := range waiting.Plans {
		assert.Equal(t, "Completed", p.Status, p.ID)
		assert.NotEmpty(t, p.Plan, p.ID)
	}
	assert.Contains(t, r.stderr, "task approve "+waiting.ID)
	assert.Empty(t, stateFiles(t, h.stateDir), "nothing applied before the approval")
	for _, o := range waiting.Operations {
		assert.Equal(t, "Pending", o.Status, o.ID)
	}

	var approved nuBatch
	provisioning(t, h.base, &approved, "task", "approve", waiting.ID, "--comment", "looks right", "--out", "json")
	require.NotNil(t, approved.Approval)
	assert.Equal(t, storage.DecisionApproved, approved.Approval.Decision)
	assert.Equal(t, "looks right", approved.Approval.Comment)
	assert.NotEmpty(t, approved.Approval.Approver)
	final, _ := waitTask(t, h.base, waiting.ID, 2*time.Minute, terminal)
	assert.Equal(t, storage.StatusCompleted, final.Status)
	assert.FileExists(t, filepath.Join(h.stateDir, "production", "clusters", "buildkit.json"))

	// Deciding again: the API's 409, non-zero exit.
	r = provisioning(t, h.base, nil, "task", "reject", waiting.ID)
	assert.NotEqual(t, 0, r.exitCode)
	assert.Contains(t, errorText(r.stderr), "not_awaiting_approval")

	// --require-approval --wait: shows the plan, then follows the batch
	// through someone else's approval to its end.
	type nuRes struct {
		b nuBatch
		r nuResult
	}
	ended := make(chan nuRes, 1)
	go func() {
		r := runScript(t, t.TempDir(), "nulib/provisioning", []string{"ORCHESTRATOR_URL=" + h.base}, nil, 3*time.Minute,
			"batch", "submit", file, "--require-approval", "--wait", "--out", "json")
		var b nuBatch
		_ = json.Unmarshal([]byte(r.stdout), &b)
		ended <- nuRes{b, r}
	}()
	var awaiting string
	eventually(t, time.Minute, "a batch awaiting approval", func() bool {
		for _, tk := range listTasks(t, h) {
			if tk.Batch != nil && tk.Batch.Phase == storage.PhaseAwaitingApproval {
				awaiting = tk.ID
				return true
			}
		}
		return false
	})
	h.postJSON("/tasks/"+awaiting+"/approve", map[string]string{"comment": "from REST"})
	got := <-ended
	require.Equal(t, 0, got.r.exitCode, "stderr: %s", got.r.stderr)
	assert.Equal(t, awaiting, got.b.ID)
	assert.Equal(t, "Completed", got.b.Status)
	require.NotNil(t, got.b.Approval)
	assert.Equal(t, storage.DecisionApproved, got.b.Approval.Decision)
	assert.Len(t, got.b.Plans, len(exampleOps), "the plan is shown too")
	for _, o := range got.b.Operations {
		assert.Equal(t, "Completed", o.Status, o.ID)
	}

	var second nuBatch
	provisioning(t, h.base, &second, "batch", "submit", file, "--require-approval", "--out", "json")
	require.Equal(t, storage.PhaseAwaitingApproval, second.Phase)
	var rejected nuBatch
	provisioning(t, h.base, &rejected, "task", "reject", second.ID, "--comment", "not today", "--out", "json")
	assert.Equal(t, storage.DecisionRejected, rejected.Approval.Decision)
	final, _ = waitTask(t, h.base, second.ID, time.Minute, terminal)
	assert.Equal(t, storage.StatusCancelled, final.Status)
	var st nuBatch
	provisioning(t, h.base, &st, "batch", "status", second.ID, "--out", "json")
	assert.Equal(t, "Cancelled", st.Status)
	for _, o := range st.Operations {
		assert.Equal(t, "Cancelled", o.Status, o.ID)
		assert.Equal(t, storage.StatusCancelled, h.task(o.TaskID).Status, o.ID)
	}

	before := len(listTasks(t, h))
	dir := t.TempDir()
	cases := []struct{ name, body, want string }{
		{"unknown-dep.yaml", "infra: production\nsettings: ./settings.yaml\noperations:\n  - {id: web, type: server, servers: [web-01]}\n  - {id: k8s, type: taskserv, taskserv: kubernetes, depends_on: [nope]}\n",
			"operations[1].depends_on[0]: operation k8s depends on unknown operation \"nope\""},
		{"typo.toml", "infra = \"production\"\nsettings = \"./settings.yaml\"\n[[operations]]\nid = \"web\"\ntype = \"server\"\nserverz = [\"web-01\"]\n",
			"serverz: unknown field"},
		{"no-type.nuon", "{infra: production, settings: ./settings.yaml, operations: [{id: web}]}",
			"operations[0].type: is required"},
		{"broken.yaml", "operations: [\n  - id: : x\n", "not valid YAML"},
		{"batch.txt", "{}", "unknown extension 'txt'"},
	}
	for _, c := range cases {
		path := filepath.Join(dir, c.name)
		require.NoError(t, os.WriteFile(path, []byte(c.body), 0o644))
		r := provisioning(t, h.base, nil, "batch", "submit", path)
		assert.NotEqual(t, 0, r.exitCode, c.name)
		assert.Contains(t, errorText(r.stderr), c.want, c.name)
	}
	r = provisioning(t, h.base, nil, "batch", "plan", filepath.Join(dir, "missing.yaml"))
	assert.NotEqual(t, 0, r.exitCode)
	assert.Contains(t, errorText(r.stderr), "missing.yaml: not found")
	assert.Len(t, listTasks(t, h), before, "a bad file starts nothing")
}

// listTasks is GET /tasks?limit=1000.
func listTasks(t *testing.T, h *harness) []storage.Task {
	t.Helper()
	r := h.get("/tasks?limit=1000")
	require.Equal(t, 200, r.status, "%s", r.raw)
	var tasks []storage.Task
	require.NoError(t, json.Unmarshal(r.env.Data, &tasks))
	return tasks
}
