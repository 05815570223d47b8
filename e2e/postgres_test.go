package e2e

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"

	"github.com/provisioning/orchestrator/internal/app"
	"github.com/provisioning/orchestrator/internal/testsupport"
	"github.com/provisioning/orchestrator/storage"
)

// runLogChanged counts, per server, the "changed" lines of demo-provider
// run logs (PROVISIONING_DEMO_RUN_LOG): how often each was really
// provisioned; unchanged counts the runs that found it already done;
// perLog the "changed" lines of each log.
func runLogChanged(t *testing.T, paths ...string) (changed, unchanged map[string]int, perLog []int) {
	t.Helper()
	changed, unchanged = map[string]int{}, map[string]int{}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if os.IsNotExist(err) {
			perLog = append(perLog, 0)
			continue
		}
		require.NoError(t, err)
		n := 0
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			if what, ok := strings.CutSuffix(line, " changed"); ok {
				changed[what]++
				n++
			} else if what, ok := strings.CutSuffix(line, " unchanged"); ok {
				unchanged[what]++
			}
		}
		perLog = append(perLog, n)
	}
	return changed, unchanged, perLog
}

// TestPostgresTemporalScaleOut runs the scale-out set-up of the README as
// separate processes: `orchestrator temporal --temporal-db postgres://...`
// (a database of its own, set up by that process), one API and two
// workers on the SurrealDB server store, each process with a data dir of
// its own. Tasks run on both workers; one worker and the API are killed
// (-9) mid-run and the API restarted; then the Temporal process itself
// is killed mid-run and restarted on the same database. Every task ends
// Completed and every server is provisioned exactly once.
func TestPostgresTemporalScaleOut(t *testing.T) {
	pg := testsupport.Postgres(t)
	nu := testsupport.NuPath(t)
	root := testsupport.RepoRoot(t)
	// RocksDB, as the README advises for a store shared by processes:
	// SurrealDB 3.0's mem:// and surrealkv:// engines lose concurrent
	// updates from different connections.
	surreal := testsupport.StartSurreal(t, "rocksdb://"+filepath.Join(t.TempDir(), "surreal"))
	dir := t.TempDir()
	stateDir := filepath.Join(dir, "provider-state")
	tport, port := freePort(t), freePort(t)
	// Not the default 127.0.0.1: --temporal-ip is what other hosts dial.
	temporalAddr := fmt.Sprintf("127.0.0.2:%d", tport)

	// The password goes in through the environment, not the URL.
	u, err := url.Parse(pg.DSN)
	require.NoError(t, err)
	password, _ := u.User.Password()
	u.User = url.User(u.User.Username())
	tlog := filepath.Join(dir, "temporal.log")
	temporalArgs := []string{"temporal", "--temporal-ip", "127.0.0.2", "--temporal-port", fmt.Sprint(tport), "--temporal-ui-port", "-1",
		"--temporal-db", u.String(), "--data-dir", filepath.Join(dir, "temporal-data"), "--log-format", "json"}
	temporalEnv := []string{"ORCHESTRATOR_TEMPORAL_DB_PASSWORD=" + password}
	tchild := startChild(t, temporalArgs, temporalEnv, tlog)
	waitLogged(t, tchild, tlog, "orchestrator ready")

	store := []string{"--storage-type", "surrealdb-server", "--surrealdb-url", surreal.URL,
		"--surrealdb-username", surreal.User, "--surrealdb-password", surreal.Pass}
	alog := filepath.Join(dir, "api.log")
	apiArgs := append([]string{"api", "--temporal-address", temporalAddr, "--port", fmt.Sprint(port),
		"--data-dir", filepath.Join(dir, "api-data"), "--log-format", "json", "--max-attempts", "10",
		"--heartbeat-timeout", "5s", "--retry-initial-interval", "100ms", "--retry-max-interval", "1s"}, store...)
	api := startChild(t, apiArgs, nil, alog)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	waitHealthy(t, base, api, alog)

	wlogs := []string{filepath.Join(dir, "worker1.log"), filepath.Join(dir, "worker2.log")}
	runLogs := []string{filepath.Join(dir, "runs-worker1.log"), filepath.Join(dir, "runs-worker2.log")}
	workers := make([]*child, 2)
	for i := range workers {
		args := append([]string{"worker", "--temporal-address", temporalAddr,
			"--data-dir", filepath.Join(dir, fmt.Sprintf("worker%d-data", i+1)),
			"--nu-path", nu, "--provisioning-path", filepath.Join(root, "core", "nulib", "provisioning"),
			"--max-concurrent-activities", "4", "--log-format", "json"}, store...)
		workers[i] = startChild(t, args, []string{"PROVISIONING_STATE_DIR=" + stateDir,
			"PROVISIONING_DEMO_DELAY_MS=2000", "PROVISIONING_DEMO_RUN_LOG=" + runLogs[i]}, wlogs[i])
	}
	for i, l := range wlogs {
		waitLogged(t, workers[i], l, "orchestrator ready")
	}

	h := &harness{t: t, base: base}
	var ids, servers []string
	submit := func(prefix string, n int) []string {
		var batch []string
		for i := range n {
			name := fmt.Sprintf("%s-%02d", prefix, i)
			servers = append(servers, name)
			batch = append(batch, h.submit("/workflows/servers/create", serverBody(name)))
		}
		ids = append(ids, batch...)
		return batch
	}
	waitAll := func(batch []string) {
		for _, id := range batch {
			task, _ := waitTask(t, base, id, 3*time.Minute, terminal)
			require.Equal(t, storage.StatusCompleted, task.Status, "task %s: %s", id, deref(task.Error))
			for _, s := range task.Steps {
				assert.Equal(t, storage.StatusCompleted, s.Status, "%s/%s", id, s.Name)
			}
		}
	}

	// Phase 1: 30 tasks of one 2 s step; 8 slots over two workers. Once
	// both run steps, kill worker 1 and the API; restart the API.
	started := time.Now()
	phase1 := submit("pg", 30)
	// Kill worker 1 once both have provisioned servers and worker 1 has
	// a step in flight.
	eventually(t, 90*time.Second, "both workers to provision and worker 1 to run a step", func() bool {
		_, _, done := runLogChanged(t, runLogs...)
		return done[0] > 0 && done[1] > 0 && stepsStarted(t, wlogs[0]) > done[0]
	})
	require.NoError(t, workers[0].cmd.Process.Signal(syscall.SIGKILL))
	require.NoError(t, api.cmd.Process.Signal(syscall.SIGKILL))
	<-workers[0].done
	<-api.done
	killedAt := stepsStarted(t, wlogs[0])
	_, _, logged := runLogChanged(t, runLogs...)
	killedDone := logged[0] // worker 1's finished runs at the kill
	api = startChild(t, apiArgs, nil, alog)
	waitHealthy(t, base, api, alog)
	waitAll(phase1)
	t.Logf("phase 1: 30 tasks in %s; worker 1 killed after starting %d steps, worker 2 started %d",
		time.Since(started).Round(time.Millisecond), killedAt, stepsStarted(t, wlogs[1]))

	// Phase 2: kill -9 Temporal while tasks run; a new Temporal process on
	// the same database carries them on.
	phase2 := submit("pgrestart", 6)
	before := stepsStarted(t, wlogs[1])
	eventually(t, 60*time.Second, "worker 2 to start a phase-2 step", func() bool { return stepsStarted(t, wlogs[1]) > before })
	require.NoError(t, tchild.cmd.Process.Signal(syscall.SIGKILL))
	<-tchild.done
	tlog2 := filepath.Join(dir, "temporal-restarted.log")
	tchild = startChild(t, temporalArgs, temporalEnv, tlog2)
	waitLogged(t, tchild, tlog2, "orchestrator ready")
	waitAll(phase2)

	// The new Temporal process knows the workflows the first one ran.
	c, err := client.Dial(client.Options{HostPort: temporalAddr})
	require.NoError(t, err)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, id := range phase1 {
		desc, err := c.DescribeWorkflowExecution(ctx, id, "")
		require.NoError(t, err, id)
		assert.Equal(t, enumspb.WORKFLOW_EXECUTION_STATUS_COMPLETED, desc.GetWorkflowExecutionInfo().GetStatus(), id)
	}
	r := h.get("/tasks?status=Running")
	assert.Equal(t, "0", r.header.Get("X-Total-Count"), "tasks stuck in Running")

	changed, unchanged, perWorker := runLogChanged(t, runLogs...)
	t.Logf("servers provisioned per worker (run logs): %v", perWorker)
	assert.Positive(t, perWorker[0], "worker 1 provisioned nothing")
	assert.Positive(t, perWorker[1], "worker 2 provisioned nothing")
	// A server is provisioned once: one "changed" line. The one exception
	// is a step worker 1 was running when it was killed after the provider
	// wrote the state and before it logged the run: its retry finds the
	// server up to date ("unchanged"), so no more of those than steps in
	// flight at the kill.
	finishedByRetry := 0
	for _, s := range servers {
		switch n := changed["server "+s]; n {
		case 1:
		case 0:
			assert.Positive(t, unchanged["server "+s], "server %s provisioned 0 times", s)
			finishedByRetry++
		default:
			assert.Fail(t, "provisioned more than once", "server %s provisioned %d times", s, n)
		}
	}
	assert.LessOrEqual(t, finishedByRetry, killedAt-killedDone,
		"servers whose provisioning only a retry after the kill logged (steps in flight at the kill: %d)", killedAt-killedDone)

	// Nothing logged the database password.
	require.NotEqual(t, u.User.Username(), password, "the test role's password must differ from its name for this check")
	for _, l := range append([]string{tlog, tlog2, alog}, wlogs...) {
		b, err := os.ReadFile(l)
		require.NoError(t, err)
		assert.NotContains(t, string(b), password, l)
	}
}

// --temporal-db belongs to the modes that run the Temporal server, and
// its errors never echo the URL (it may hold the password).
func TestTemporalDBFlags(t *testing.T) {
	none := func(string) string { return "" }
	cfg, err := app.ParseConfig([]string{"temporal", "--temporal-db", "postgres://u@db:5432/t?sslmode=disable"}, none, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, "postgres://u@db:5432/t?sslmode=disable", cfg.TemporalDB)
	env := func(k string) string {
		return map[string]string{"ORCHESTRATOR_TEMPORAL_DB": "postgres://u@db/t", "ORCHESTRATOR_TEMPORAL_DB_PASSWORD": "pw"}[k]
	}
	cfg, err = app.ParseConfig([]string{"serve"}, env, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, "pw", cfg.TemporalDBPassword)
	for _, args := range [][]string{
		{"api", "--temporal-address", "127.0.0.1:7233", "--temporal-db", "postgres://u@db/t"},
		{"serve", "--temporal-address", "127.0.0.1:7233", "--temporal-db", "postgres://u@db/t"},
		{"temporal", "--temporal-db", "mysql://u:s3cret@db/t"},
		{"temporal", "--temporal-db", "postgres://:s3cret@db/t"},
	} {
		_, err := app.ParseConfig(args, none, io.Discard)
		require.ErrorContains(t, err, "--temporal-db", "%v", args)
		assert.NotContains(t, err.Error(), "s3cret")
	}
	for _, ip := range []string{"0.0.0.0", "localhost", "::"} {
		_, err := app.ParseConfig([]string{"temporal", "--temporal-ip", ip}, none, io.Discard)
		require.ErrorContains(t, err, "--temporal-ip", ip)
	}
}
