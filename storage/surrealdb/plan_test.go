package surrealdb

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/internal/testsupport"
	"github.com/provisioning/orchestrator/storage"
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
// its total is one counter record: nothing in either grows with the store.
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

		// The total is the counter record (EXPLAIN plans a SELECT only).
		require.Contains(t, countSQL, "SELECT VALUE n FROM ONLY $cid")
		plan = explain(t, s, "SELECT VALUE n FROM ONLY $cid;", vars)
		require.Contains(t, plan, "RecordIdScan", "%+v: %s", c.lf, plan)

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
	srv := testsupport.StartSurreal(t, "mem://")
	ctx := context.Background()
	opts := Options{URL: srv.URL, Username: srv.User, Password: srv.Pass, Database: "older", OpTimeout: time.Minute}
	s, err := New(ctx, opts)
	require.NoError(t, err)
	defer s.Close()
	tasks := seedSurreal(t, s, 100)
	_, err = s.query(ctx, "drop counters", `DELETE task_count;`, nil)
	require.NoError(t, err)

	running := storage.ListFilter{Status: storage.StatusRunning}
	_, total, err := s.List(ctx, running)
	require.NoError(t, err)
	require.Equal(t, 20, total, "counted from the keys")

	again, err := New(ctx, opts)
	require.NoError(t, err)
	defer again.Close()
	res, err := again.query(ctx, "counter", `SELECT VALUE n FROM ONLY $cid;`, map[string]any{"cid": countRecordID("s", "Running")})
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
