package surrealdb

import (
	"context"
	"fmt"
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/provisioning/orchestrator/internal/testsupport"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/storage/storagetest"
)

// explain returns SurrealDB's query plan of sql (EXPLAIN) as text.
func explain(t *testing.T, s *Store, sql string, vars map[string]any) string {
	t.Helper()
	res, err := s.query(context.Background(), "explain", "EXPLAIN "+sql, vars)
	require.NoError(t, err)
	var plan any
	require.NoError(t, decodeResult(res, 0, &plan))
	return fmt.Sprint(plan)
}

// TestSurrealListQueryPlan checks, with the real engine, that every List
// page without a priority filter is an index range read that stops after
// the page (limit and offset pushed into the IndexScan, no sort), and that
// its total is a range read of the filter's counter shards: nothing in
// either grows with the store.
func TestSurrealListQueryPlan(t *testing.T) {
	srv := testsupport.StartSurreal(t, "mem://")
	ctx := context.Background()
	s, err := New(ctx, Options{URL: srv.URL, Username: srv.User, Password: srv.Pass, Database: "plan", OpTimeout: time.Minute})
	require.NoError(t, err)
	defer s.Close()
	seedSurreal(t, s, 300)

	for _, c := range []struct {
		lf    storage.ListFilter
		index string
	}{
		{storage.ListFilter{Status: storage.StatusRunning, Limit: 50, Offset: 100}, "task_status_list"},
		{storage.ListFilter{WorkflowType: "ServerCreateWorkflow"}, "task_workflow_list"},
		{storage.ListFilter{Status: storage.StatusFailed, WorkflowType: "ServerCreateWorkflow", Limit: 7}, "task_status_workflow_list"},
		{storage.ListFilter{Offset: 3}, "task_list"},
	} {
		pageSQL, countSQL, vars := listQueries(c.lf)
		plan := explain(t, s, pageSQL, vars)
		require.Contains(t, plan, "IndexScan", "%+v: %s", c.lf, plan)
		require.Contains(t, plan, "index: "+c.index, "%+v: %s", c.lf, plan)
		require.Contains(t, plan, "limit: $limit, offset: $offset", "%+v: %s", c.lf, plan)
		require.NotContains(t, strings.ToLower(plan), "sort", "%+v: %s", c.lf, plan)

		// The total is the sum of the counter's shards (EXPLAIN plans a
		// SELECT only).
		sel := regexp.MustCompile(`SELECT VALUE n FROM task_count:\[[^\]]*\]\.\.\[[^\]]*\]`).FindString(countSQL)
		require.NotEmpty(t, sel, countSQL)
		plan = explain(t, s, sel+";", vars)
		require.Contains(t, plan, "RecordIdScan", "%+v: %s", c.lf, plan)
		require.Contains(t, plan, ", 0]..[", "a range over the shards: %+v: %s", c.lf, plan)
		require.NotContains(t, plan, "TableScan", "%+v: %s", c.lf, plan)

		_, total, err := s.List(ctx, c.lf)
		require.NoError(t, err)
		require.Equal(t, map[bool]int{true: 60, false: 300}[c.lf.Status != ""], total, "%+v", c.lf)
	}
}

// TestSurrealCountersOfOlderDatabase: a database written before the
// task_count counters existed (none of them, no ready marker) lists the
// right totals by counting its keys, and the next connection that defines
// the schema counts them once; writes then keep them.
func TestSurrealCountersOfOlderDatabase(t *testing.T) {
	ctx := context.Background()
	opts, ss := surrealStores(t, "mem://", 1)
	s := ss[0]
	tasks := seedSurreal(t, s, 100)
	_, err := s.query(ctx, "drop counters", `DELETE task_count;`, nil)
	require.NoError(t, err)

	running := storage.ListFilter{Status: storage.StatusRunning}
	_, total, err := s.List(ctx, running)
	require.NoError(t, err)
	require.Equal(t, 20, total, "counted from the keys")

	again, err := New(ctx, opts)
	require.NoError(t, err)
	defer again.Close()
	res, err := again.query(ctx, "counter", "RETURN "+counterSumSQL(counterRange("s", "$status"))+";", map[string]any{"status": "Running"})
	require.NoError(t, err)
	var n int
	require.NoError(t, decodeResult(res, 0, &n))
	require.Equal(t, 20, n, "counted when the schema was defined")

	tk := tasks[0] // Pending
	tk.Status, tk.Version = storage.StatusRunning, 2
	require.NoError(t, again.Put(ctx, tk))
	require.NoError(t, again.Delete(ctx, tasks[1].ID)) // Running
	for _, c := range []struct {
		lf   storage.ListFilter
		want int
	}{
		{running, 20}, {storage.ListFilter{Status: storage.StatusPending}, 19}, {storage.ListFilter{}, 99},
		{storage.ListFilter{WorkflowType: "ServerCreateWorkflow"}, 99},
		{storage.ListFilter{Status: storage.StatusRunning, WorkflowType: "ServerCreateWorkflow"}, 20},
	} {
		_, total, err := s.List(ctx, c.lf)
		require.NoError(t, err)
		require.Equal(t, c.want, total, "%+v", c.lf)
	}
}

// TestSurrealCountersOfUnshardedDatabase: a database with the older,
// unsharded counters (task_count:['s', status] ..., marked
// task_count:ready) is counted again into the shards when a connection
// defines the schema: the older records are gone and the totals right.
func TestSurrealCountersOfUnshardedDatabase(t *testing.T) {
	ctx := context.Background()
	opts, ss := surrealStores(t, "mem://", 1)
	s := ss[0]
	seedSurreal(t, s, 50) // 10 of each status
	_, err := s.query(ctx, "older counters", `DELETE task_count;
		UPSERT task_count:['all'] SET n = 7; UPSERT task_count:['s', 'Running'] SET n = 3;
		CREATE task_count:ready;`, nil)
	require.NoError(t, err)

	again, err := New(ctx, opts)
	require.NoError(t, err)
	defer again.Close()
	res, err := again.query(ctx, "older records", `RETURN [record::exists(task_count:ready), record::exists(task_count:['all'])];`, nil)
	require.NoError(t, err)
	var left []bool
	require.NoError(t, decodeResult(res, 0, &left))
	require.Equal(t, []bool{false, false}, left)
	for lf, want := range map[storage.ListFilter]int{{}: 50, {Status: storage.StatusRunning}: 10} {
		_, total, err := again.List(ctx, lf)
		require.NoError(t, err)
		require.Equal(t, want, total, "%+v", lf)
	}
}

// TestSurrealCountersUnderConcurrentWrites: writers create, change and
// delete tasks at once; every write succeeds, and afterwards every
// filter's total equals a count of the tasks themselves. With one store
// (one process) on mem://, whose engine loses concurrent updates unless
// the store serialises its writes, and with two stores (two processes) on
// RocksDB, the engine that keeps them.
func TestSurrealCountersUnderConcurrentWrites(t *testing.T) {
	for _, c := range []struct {
		name   string
		engine func(t *testing.T) string
		stores int
	}{
		{"one store, mem", func(*testing.T) string { return "mem://" }, 1},
		{"two stores, rocksdb", func(t *testing.T) string { return "rocksdb://" + t.TempDir() + "/db" }, 2},
	} {
		t.Run(c.name, func(t *testing.T) { testCountersUnderConcurrentWrites(t, c.engine(t), c.stores) })
	}
}

func testCountersUnderConcurrentWrites(t *testing.T, engine string, n int) {
	ctx := context.Background()
	_, stores := surrealStores(t, engine, n)
	statuses := []storage.TaskStatus{storage.StatusPending, storage.StatusRunning, storage.StatusCompleted, storage.StatusFailed}
	wfs := []string{"ServerCreateWorkflow", "TestEnvWorkflow"}
	var g errgroup.Group
	for w := range 8 {
		s := stores[w%n]
		g.Go(func() error {
			rng := rand.New(rand.NewPCG(uint64(w), 3))
			var mine []storage.Task
			for i := range 40 {
				switch op := rng.IntN(10); {
				case op < 4 || len(mine) == 0:
					tk := storage.Task{ID: storagetest.NewID(), Name: "n", Command: "c", Status: statuses[rng.IntN(4)],
						WorkflowType: wfs[rng.IntN(2)], CreatedAt: time.Now(), UpdatedAt: time.Now()}
					if err := s.Create(ctx, tk); err != nil {
						return fmt.Errorf("writer %d op %d: %w", w, i, err)
					}
					mine = append(mine, tk)
				case op < 8:
					k := rng.IntN(len(mine))
					mine[k].Version++
					mine[k].Status, mine[k].WorkflowType = statuses[rng.IntN(4)], wfs[rng.IntN(2)]
					if err := s.Put(ctx, mine[k]); err != nil {
						return fmt.Errorf("writer %d op %d: %w", w, i, err)
					}
				default:
					k := rng.IntN(len(mine))
					if err := s.Delete(ctx, mine[k].ID); err != nil {
						return fmt.Errorf("writer %d op %d: %w", w, i, err)
					}
					mine = append(mine[:k], mine[k+1:]...)
				}
			}
			return nil
		})
	}
	require.NoError(t, g.Wait())

	filters := []storage.ListFilter{{}}
	for _, st := range statuses {
		filters = append(filters, storage.ListFilter{Status: st})
		for _, wf := range wfs {
			filters = append(filters, storage.ListFilter{Status: st, WorkflowType: wf})
		}
	}
	for _, wf := range wfs {
		filters = append(filters, storage.ListFilter{WorkflowType: wf})
	}
	for _, lf := range filters {
		res, err := stores[0].query(ctx, "count", `RETURN (SELECT count() AS n FROM task
			WHERE ($status = "" OR status = $status) AND ($wf = "" OR workflow_type = $wf) GROUP ALL)[0].n ?? 0;`,
			map[string]any{"status": string(lf.Status), "wf": lf.WorkflowType})
		require.NoError(t, err)
		var want int
		require.NoError(t, decodeResult(res, 0, &want))
		_, total, err := stores[n-1].List(ctx, lf)
		require.NoError(t, err)
		require.Equal(t, want, total, "%+v", lf)
	}
}

// surrealStores starts a SurrealDB server on engine and opens n stores
// (as n processes would) on one database of it, closed when the test ends.
func surrealStores(t *testing.T, engine string, n int) (Options, []*Store) {
	t.Helper()
	srv := testsupport.StartSurreal(t, engine)
	opts := Options{URL: srv.URL, Username: srv.User, Password: srv.Pass, Database: "test", OpTimeout: time.Minute}
	stores := make([]*Store, n)
	for i := range stores {
		s, err := New(context.Background(), opts)
		require.NoError(t, err)
		t.Cleanup(func() { s.Close() })
		stores[i] = s
	}
	return opts, stores
}
