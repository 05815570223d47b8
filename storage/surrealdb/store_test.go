package surrealdb_test

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/internal/testsupport"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/storage/storagetest"
	"github.com/provisioning/orchestrator/storage/surrealdb"
)

// Tests of the SurrealDB backend against the real SurrealDB engine
// (testsupport.StartSurreal: SurrealDB 3.0.2 from @surrealdb/node, served
// like `surreal start`).

// surrealDBCounter makes database names unique within a test binary run.
var surrealDBCounter atomic.Int64

// openSurreal opens a store on srv in a fresh database and closes it when
// the test ends.
func openSurreal(t testing.TB, srv *testsupport.SurrealServer, o surrealdb.Options) *surrealdb.Store {
	t.Helper()
	o.URL, o.Username, o.Password = srv.URL, srv.User, srv.Pass
	if o.Database == "" {
		o.Database = fmt.Sprintf("test%d", surrealDBCounter.Add(1))
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := surrealdb.New(ctx, o)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// TestSurrealConformance runs the shared backend suite; every subtest gets
// its own database on one server.
func TestSurrealConformance(t *testing.T) {
	srv := testsupport.StartSurreal(t, "mem://")
	storagetest.Run(t, func(t *testing.T) storage.Store {
		return openSurreal(t, srv, surrealdb.Options{})
	})
}

func TestSurrealOptions(t *testing.T) {
	ctx := context.Background()
	for _, bad := range []string{"", "ftp://h:1", "ws://", "ws://h:1/prefix", "ws://u:p@h:1", "127.0.0.1:8000"} {
		_, err := surrealdb.New(ctx, surrealdb.Options{URL: bad})
		require.Error(t, err, "%q", bad)
		require.NotErrorIs(t, err, storage.ErrUnavailable, "%q is a configuration error", bad)
	}

	srv := testsupport.StartSurreal(t, "mem://")

	// Wrong credentials: a start-up error.
	_, err := surrealdb.New(ctx, surrealdb.Options{URL: srv.URL, Username: srv.User, Password: "wrong"})
	require.Error(t, err)
	require.ErrorContains(t, err, "sign in")

	// Nothing listening: ErrUnavailable within OpTimeout.
	start := time.Now()
	_, err = surrealdb.New(ctx, surrealdb.Options{URL: "ws://127.0.0.1:1", OpTimeout: time.Second})
	require.ErrorIs(t, err, storage.ErrUnavailable)
	require.Less(t, time.Since(start), 5*time.Second)

	// Defaults: namespace orchestrator, database tasks; /rpc and http work.
	for _, u := range []string{srv.URL, srv.URL + "/rpc", srv.HTTPURL} {
		s, err := surrealdb.New(ctx, surrealdb.Options{URL: u, Username: srv.User, Password: srv.Pass})
		require.NoError(t, err, u)
		task := storage.Task{ID: storagetest.NewID(), Name: u, Status: storage.StatusPending, CreatedAt: time.Now(), Version: 1}
		require.NoError(t, s.Create(ctx, task), u)
		got, err := s.Get(ctx, task.ID)
		require.NoError(t, err, u)
		require.Equal(t, u, got.Name)
		require.NoError(t, s.Close())
		require.NoError(t, s.Close(), "closing twice")
		_, err = s.Get(ctx, task.ID)
		require.ErrorIs(t, err, storage.ErrUnavailable, "after Close")
	}
	other := openSurreal(t, srv, surrealdb.Options{Namespace: surrealdb.DefaultNamespace, Database: surrealdb.DefaultDatabase})
	_, total, err := other.List(ctx, storage.ListFilter{})
	require.NoError(t, err)
	require.Equal(t, 3, total, "the three tasks above are in orchestrator/tasks")
	fresh := openSurreal(t, srv, surrealdb.Options{})
	_, total, err = fresh.List(ctx, storage.ListFilter{})
	require.NoError(t, err)
	require.Zero(t, total, "another database is separate")
}

// TestSurrealReconnect: the server is killed (SIGKILL) and later restarted
// on its on-disk store; meanwhile every operation fails with ErrUnavailable
// within OpTimeout, afterwards the same Store works again with its data
// intact. Then the same for a graceful stop.
func TestSurrealReconnect(t *testing.T) {
	srv := testsupport.StartSurreal(t, "surrealkv://"+t.TempDir()+"/db")
	const opTimeout = 2 * time.Second
	s := openSurreal(t, srv, surrealdb.Options{OpTimeout: opTimeout})
	ctx := storage.WithActor(context.Background(), "test")

	var stored []storage.Task
	create := func() {
		t.Helper()
		task := storage.Task{
			ID: storagetest.NewID(), Name: fmt.Sprintf("task %d", len(stored)), Status: storage.StatusRunning,
			CreatedAt: time.Now().UTC().Truncate(time.Microsecond), Version: 1,
		}
		require.NoError(t, s.Create(ctx, task))
		stored = append(stored, storage.Normalize(task))
	}
	requireIntact := func() {
		t.Helper()
		for _, want := range stored {
			got, err := s.Get(ctx, want.ID)
			require.NoError(t, err)
			require.Equal(t, want, got)
		}
		_, total, err := s.List(ctx, storage.ListFilter{})
		require.NoError(t, err)
		require.Equal(t, len(stored), total)
		entries, err := s.ListAudit(ctx, storage.AuditFilter{})
		require.NoError(t, err)
		require.Len(t, entries, len(stored), "one create entry per task")
	}
	requireUnavailable := func(what string) {
		t.Helper()
		task := storage.Task{ID: storagetest.NewID(), Status: storage.StatusPending, Version: 1}
		ops := map[string]func() error{
			"Get":    func() error { _, err := s.Get(ctx, stored[0].ID); return err },
			"List":   func() error { _, _, err := s.List(ctx, storage.ListFilter{}); return err },
			"Create": func() error { return s.Create(ctx, task) },
			"Put":    func() error { return s.Put(ctx, task) },
			"Delete": func() error { return s.Delete(ctx, task.ID) },
			"Ping":   func() error { return s.Ping(ctx) },
			"IDs":    func() error { _, err := s.IDs(ctx); return err },
			"AppendAudit": func() error {
				return s.AppendAudit(ctx, storage.AuditEntry{ID: "x", TaskID: task.ID, Action: "x"})
			},
			"ListAudit": func() error { _, err := s.ListAudit(ctx, storage.AuditFilter{}); return err },
		}
		for name, op := range ops {
			start := time.Now()
			err := op()
			took := time.Since(start)
			require.ErrorIs(t, err, storage.ErrUnavailable, "%s %s", what, name)
			require.Less(t, took, opTimeout+time.Second, "%s %s: %v", what, name, err)
		}
	}
	requireRecovers := func() {
		t.Helper()
		// The first operations may still fail during the reconnect backoff.
		require.Eventually(t, func() bool { return s.Ping(ctx) == nil }, 15*time.Second, 50*time.Millisecond)
		requireIntact()
		create()
		requireIntact()
	}

	for range 3 {
		create()
	}
	requireIntact()

	// A crash while requests are in flight: they fail fast, not at their
	// deadline, and with ErrUnavailable.
	var wg sync.WaitGroup
	inflight := make(chan error, 64)
	stopLoad := make(chan struct{})
	for w := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stopLoad:
					return
				default:
				}
				task := stored[(w+i)%len(stored)]
				task.Version = int64(2 + i)
				start := time.Now()
				err := s.Put(ctx, task)
				if err != nil {
					if time.Since(start) > opTimeout+time.Second {
						err = fmt.Errorf("took %s: %w", time.Since(start), err)
					}
					inflight <- err
					return
				}
			}
		})
	}
	time.Sleep(200 * time.Millisecond)
	srv.Kill()
	close(stopLoad)
	wg.Wait()
	close(inflight)
	for err := range inflight {
		require.ErrorIs(t, err, storage.ErrUnavailable)
		require.NotContains(t, err.Error(), "took", "an in-flight request failed only at its deadline")
	}
	requireUnavailable("killed")
	requireUnavailable("killed, again")

	srv.Restart(t)
	// Puts of the load above changed versions but not statuses.
	for i := range stored {
		got, err := eventually(t, func() (storage.Task, error) { return s.Get(ctx, stored[i].ID) })
		require.NoError(t, err)
		stored[i].Version = got.Version
	}
	requireRecovers()

	// A graceful stop.
	srv.Stop()
	requireUnavailable("stopped")
	srv.Restart(t)
	requireRecovers()

	// Killed with no request in flight, restarted before the next one: the
	// dead connection was noticed when its socket closed, so the very next
	// operation reconnects and succeeds.
	srv.Kill()
	srv.Restart(t)
	require.NoError(t, s.Ping(ctx))
	requireIntact()
}

// TestSurrealUnresponsive: a server that stops answering without closing
// the socket (a network partition, a frozen process) is noticed by the
// operation timeout: ErrUnavailable within OpTimeout, for requests on the
// old connection and for new connection attempts, and recovery once it
// answers again.
func TestSurrealUnresponsive(t *testing.T) {
	srv := testsupport.StartSurreal(t, "mem://")
	proxy := newFreezeProxy(t, srv.Addr)
	const opTimeout = time.Second
	s, err := surrealdb.New(context.Background(), surrealdb.Options{
		URL: "ws://" + proxy.Addr(), Username: srv.User, Password: srv.Pass, OpTimeout: opTimeout,
		Database: fmt.Sprintf("test%d", surrealDBCounter.Add(1)),
	})
	require.NoError(t, err)
	defer s.Close()
	ctx := context.Background()
	task := storage.Task{ID: storagetest.NewID(), Status: storage.StatusPending, Version: 1}
	require.NoError(t, s.Create(ctx, task))

	proxy.Freeze(true)
	for i := range 3 { // the request on the old connection, then dials
		start := time.Now()
		_, err := s.Get(ctx, task.ID)
		require.ErrorIs(t, err, storage.ErrUnavailable, "attempt %d", i)
		require.Less(t, time.Since(start), opTimeout+time.Second, "attempt %d: %v", i, err)
	}
	proxy.Freeze(false)
	got, err := eventually(t, func() (storage.Task, error) { return s.Get(ctx, task.ID) })
	require.NoError(t, err)
	require.Equal(t, task.ID, got.ID)
}

// freezeProxy forwards TCP connections to a backend; while frozen it holds
// every byte (connections stay open, nothing arrives).
type freezeProxy struct {
	ln      net.Listener
	backend string
	mu      sync.Mutex
	cond    *sync.Cond
	frozen  bool
	conns   []net.Conn
	closed  bool
}

func newFreezeProxy(t *testing.T, backend string) *freezeProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &freezeProxy{ln: ln, backend: backend}
	p.cond = sync.NewCond(&p.mu)
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *freezeProxy) Addr() string { return p.ln.Addr().String() }

func (p *freezeProxy) Freeze(on bool) {
	p.mu.Lock()
	p.frozen = on
	p.mu.Unlock()
	p.cond.Broadcast()
}

func (p *freezeProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		b, err := net.Dial("tcp", p.backend)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, b)
		p.mu.Unlock()
		go p.pipe(b, c)
		go p.pipe(c, b)
	}
}

func (p *freezeProxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		p.mu.Lock()
		for p.frozen && !p.closed {
			p.cond.Wait()
		}
		closed := p.closed
		p.mu.Unlock()
		if closed {
			return
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *freezeProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	p.closed = true
	conns := p.conns
	p.mu.Unlock()
	p.cond.Broadcast()
	for _, c := range conns {
		c.Close()
	}
}

// TestSurrealListModel checks List (every filter combination, several
// pages) and IDs against an in-memory model after random creates, puts
// (status, workflow type and creation time changes) and deletes, with
// many equal creation times. It guards the list_key encoding, the
// task_key records behind the totals, and the query shapes against the
// SurrealDB 3.0.2 planner's LIMIT-below-filter bug.
func TestSurrealListModel(t *testing.T) {
	srv := testsupport.StartSurreal(t, "mem://")
	s := openSurreal(t, srv, surrealdb.Options{})
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	statuses := []storage.TaskStatus{storage.StatusPending, storage.StatusRunning, storage.StatusCompleted, storage.StatusFailed, storage.StatusCancelled}
	wfs := []string{"ServerCreate", "TestEnvironment", ""}
	base := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	model := map[string]storage.Task{}
	randomTask := func(id string, version int64) storage.Task {
		return storage.Normalize(storage.Task{
			ID: id, Name: "t", Status: statuses[rng.IntN(len(statuses))], WorkflowType: wfs[rng.IntN(len(wfs))],
			// Few distinct instants (ties broken by ID), some before 1970.
			CreatedAt: base.Add(time.Duration(rng.IntN(20)-5) * 1000 * time.Hour).Add(time.Duration(rng.IntN(3)) * time.Nanosecond),
			Version:   version,
		})
	}
	for range 150 {
		task := randomTask(storagetest.NewID(), 1)
		require.NoError(t, s.Create(ctx, task))
		model[task.ID] = task
	}
	ids := func() []string {
		out := make([]string, 0, len(model))
		for id := range model {
			out = append(out, id)
		}
		slices.Sort(out)
		return out
	}
	var deleted []string
	for _, id := range ids() {
		switch rng.IntN(5) {
		case 0, 1: // status, type and creation time may all change
			task := randomTask(id, model[id].Version+1)
			require.NoError(t, s.Put(ctx, task))
			model[id] = task
		case 2:
			require.NoError(t, s.Delete(ctx, id))
			delete(model, id)
			deleted = append(deleted, id)
		case 3: // a stale projection changes nothing
			task := randomTask(id, model[id].Version-1)
			require.NoError(t, s.Put(ctx, task))
		}
	}
	for i, id := range deleted {
		if i%2 == 0 { // created again, by Create or by Put
			task := randomTask(id, 1)
			if i%4 == 0 {
				require.NoError(t, s.Create(ctx, task))
			} else {
				require.NoError(t, s.Put(ctx, task))
			}
			model[id] = task
		}
	}
	for range 20 {
		task := randomTask(storagetest.NewID(), 3)
		require.NoError(t, s.Put(ctx, task))
		model[task.ID] = task
	}
	got, err := s.IDs(ctx)
	require.NoError(t, err)
	require.ElementsMatch(t, ids(), got)

	for _, st := range append([]storage.TaskStatus{""}, statuses...) {
		for _, wf := range append([]string{"*"}, wfs...) {
			f := storage.ListFilter{Status: st}
			if wf != "*" {
				f.WorkflowType = wf
			}
			if wf == "" {
				continue // "" means no filter; tasks without a type are listed among all
			}
			var want []storage.Task
			for _, task := range model {
				if (f.Status == "" || task.Status == f.Status) && (f.WorkflowType == "" || task.WorkflowType == f.WorkflowType) {
					want = append(want, task)
				}
			}
			slices.SortFunc(want, func(a, b storage.Task) int {
				if c := b.CreatedAt.Compare(a.CreatedAt); c != 0 {
					return c
				}
				return strings.Compare(b.ID, a.ID)
			})
			for _, pg := range [][2]int{{0, 0}, {3, 0}, {3, 2}, {7, 5}, {1, len(want) - 1}, {10, len(want)}} {
				f.Limit, f.Offset = pg[0], pg[1]
				page, total, err := s.List(ctx, f)
				require.NoError(t, err)
				require.Equal(t, len(want), total, "%+v", f)
				lo := min(f.Offset, len(want))
				hi := min(lo+cmp.Or(f.Limit, storage.DefaultLimit), len(want))
				require.Equal(t, want[lo:hi], page, "%+v", f)
			}
		}
	}
}

// eventually retries f for a while as long as it fails with ErrUnavailable.
func eventually[T any](t *testing.T, f func() (T, error)) (T, error) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		v, err := f()
		if err == nil || !errors.Is(err, storage.ErrUnavailable) || time.Now().After(deadline) {
			return v, err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSurrealStatementErrorsAreNotUnavailable: a request the server answers
// with an error is not an outage (no 503, no reconnect).
func TestSurrealStatementErrorsAreNotUnavailable(t *testing.T) {
	srv := testsupport.StartSurreal(t, "mem://")
	s := openSurreal(t, srv, surrealdb.Options{})
	ctx := context.Background()
	task := storage.Task{ID: storagetest.NewID(), Status: storage.StatusPending, Version: 1}
	require.NoError(t, s.Create(ctx, task))
	err := s.Create(ctx, task)
	require.ErrorIs(t, err, storage.ErrExists)
	require.NotErrorIs(t, err, storage.ErrUnavailable)
	_, err = s.Get(ctx, storagetest.NewID())
	require.ErrorIs(t, err, storage.ErrNotFound)
	require.NoError(t, s.Ping(ctx))
}

// TestSurrealDeadlineIsUnavailable: a caller's deadline that expires while
// the server does not answer is ErrUnavailable too (the API answers 503),
// a cancellation is only context.Canceled.
func TestSurrealDeadlineIsUnavailable(t *testing.T) {
	srv := testsupport.StartSurreal(t, "mem://")
	s := openSurreal(t, srv, surrealdb.Options{OpTimeout: 2 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), time.Nanosecond)
	defer cancel()
	<-ctx.Done()
	_, err := s.Get(ctx, storagetest.NewID())
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.ErrorIs(t, err, storage.ErrUnavailable)

	cctx, ccancel := context.WithCancel(context.Background())
	ccancel()
	_, err = s.Get(cctx, storagetest.NewID())
	require.ErrorIs(t, err, context.Canceled)
	require.NotErrorIs(t, err, storage.ErrUnavailable)
	assert.NoError(t, s.Ping(context.Background()))
}

// TestSurrealAuditModel checks ListAudit (all tasks and per task, every
// limit) against a model, with many entries sharing a time: the newest
// entries are read from an index in time order, and those at the page's
// oldest time are completed and ordered by ID.
func TestSurrealAuditModel(t *testing.T) {
	srv := testsupport.StartSurreal(t, "mem://")
	s := openSurreal(t, srv, surrealdb.Options{})
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(3, 4))
	tasks := []string{storagetest.NewID(), storagetest.NewID(), storagetest.NewID()}
	base := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	var all []storage.AuditEntry
	for i := range 60 {
		e := storage.AuditEntry{
			ID: fmt.Sprintf("e%02d-%d", rng.IntN(100), i), TaskID: tasks[rng.IntN(len(tasks))],
			Time: base.Add(time.Duration(rng.IntN(5)) * time.Second), Actor: "t", Action: "x",
		}
		require.NoError(t, s.AppendAudit(ctx, e))
		all = append(all, e)
	}
	sortAudit := func(es []storage.AuditEntry) {
		slices.SortFunc(es, func(a, b storage.AuditEntry) int {
			return cmp.Or(a.Time.Compare(b.Time), strings.Compare(a.ID, b.ID))
		})
	}
	for _, task := range append([]string{""}, tasks...) {
		var want []storage.AuditEntry
		for _, e := range all {
			if task == "" || e.TaskID == task {
				want = append(want, e)
			}
		}
		sortAudit(want)
		for limit := 1; limit <= len(want)+1; limit++ {
			got, err := s.ListAudit(ctx, storage.AuditFilter{TaskID: task, Limit: limit})
			require.NoError(t, err)
			require.Equal(t, want[max(0, len(want)-limit):], got, "task %q limit %d", task, limit)
		}
	}
}

// NoDefine leaves a fresh database without tables, and MissingTables tells;
// a normal connection defines them.
func TestSurrealMissingTables(t *testing.T) {
	srv := testsupport.StartSurreal(t, "mem://")
	ctx := context.Background()
	const db = "fresh"
	ro := openSurreal(t, srv, surrealdb.Options{Database: db, NoDefine: true})
	for range 2 { // checking changes nothing
		missing, err := ro.MissingTables(ctx)
		require.NoError(t, err)
		assert.Equal(t, surrealdb.SchemaTables, missing)
	}
	rw := openSurreal(t, srv, surrealdb.Options{Database: db})
	missing, err := rw.MissingTables(ctx)
	require.NoError(t, err)
	assert.Empty(t, missing)
	missing, err = ro.MissingTables(ctx)
	require.NoError(t, err)
	assert.Empty(t, missing, "the read-only connection sees them now")
}
