// Package surrealdb is the SurrealDB backend of storage.Store: the
// --storage-type surrealdb-server store, and the client of the embedded
// mode's supervised server (internal/surrealproc). It lives in its own
// package so that importing storage does not pull in the SurrealDB client,
// and an orchestrator built with -tags nosurrealdb (see internal/app)
// leaves out both.
//
// It shares everything that is not about SurrealDB with the filesystem
// backend through storage's backend helpers (storage.PrepareWrite,
// storage.CreateAuditEntry, storage.PrepareAuditEntry, ...): the two
// accept, record and page alike, and storagetest checks that they do.
//
// Schema (defined idempotently on every (re)connect, so a server that lost
// its data, e.g. mem://, is usable again at once):
//
//	task:⟨uuid⟩ { doc, status, workflow_type, created_at, list_key, version }
//	  doc         the task as JSON (the encoding of the filesystem
//	              backend's {id}.json files), decoded on read
//	  created_at  fixed-width UTC "2006-01-02T15:04:05.000000000Z"
//	  list_key    created_at and id with every digit inverted, so that its
//	              ascending order is List's order (newest first, then ID
//	              descending): SurrealDB 3 reads an index in ascending
//	              order only, and stops after the page when the ORDER BY
//	              matches the index
//	  indexes     list_key; (status, list_key); (workflow_type, list_key);
//	              (status, workflow_type, list_key): one per List filter,
//	              each covering its whole WHERE clause
//	task_key:['s', status, id], ['w', workflow_type, id],
//	  ['sw', status, workflow_type, id]
//	              empty records that exist while the task does: List's
//	              total on a database whose counters are not ready yet
//	              is a count over a record-ID range
//	task_count:['all', shard], ['s', status, shard],
//	  ['w', workflow_type, shard], ['sw', status, workflow_type, shard] { n }
//	              how many tasks each filter matches, kept by Create, Put
//	              and Delete in their transactions, so List's total is a
//	              read of countShards records whatever the store's size;
//	              each write adds its changes to one shard (0 to
//	              countShards-1) that no other write of its process
//	              holds meanwhile, so concurrent writes touch different
//	              counter records (one shared record made any two
//	              writes conflict); a shard may go negative, the sum is
//	              the total.
//	              task_count:sharded marks them complete (a database
//	              written before they existed, or with the older
//	              unsharded counters and their task_count:ready marker,
//	              gets them counted once, when a connection defines the
//	              schema)
//	audit:[⟨task id⟩, ⟨entry id⟩] { task_id, eid, time, list_key, actor,
//	  action, status_before, status_after, version, detail }
//	              the record ID makes appends idempotent per (task, entry
//	              ID), like the filesystem backend's per-task files; time
//	              has created_at's format, list_key is it inverted (newest
//	              first); indexes list_key, (task_id, list_key)
//	step_output:[⟨task id⟩, ⟨step⟩, ⟨attempt⟩] { ... }
//	              step outputs (see stepoutput.go); Delete removes a
//	              task's outputs in its transaction
//
// Create, Put and Delete are one transaction each (version check, task,
// keys, counters and audit entry together); concurrent transactions on one task
// conflict in SurrealDB and are retried. Values are always bound variables,
// never spliced into SurrealQL.
//
// A List page is an index range read that stops after the page (its query
// plan, checked by TestSurrealListQueryPlan: IndexScan with the limit and
// offset pushed down, no sort) and its total one counter record, so a page
// costs the same with 100 or 100,000 tasks. List names its index (WITH INDEX) and the ORDER BY repeats the index's
// columns: SurrealDB 3.0.2 applies LIMIT/START inside an ordered index scan
// even when a filter the index does not cover runs after it, which returns
// wrong pages (see TestSurrealListModel), so every List query's WHERE is
// exactly its index's equality prefix.
package surrealdb

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/surrealdb/surrealdb.go/pkg/models"
	"github.com/surrealdb/surrealdb.go/surrealcbor"

	"github.com/provisioning/orchestrator/storage"
)

// Options configures New.
type Options struct {
	// URL of the server: ws://, wss://, http:// or https://HOST:PORT (a
	// trailing /rpc is accepted).
	URL string
	// Namespace and Database, defaults "orchestrator" and "tasks".
	Namespace, Database string
	// Username and Password sign in as a root user (none: no sign-in).
	Username, Password string
	// Logger reports lost and restored connections (nil: discard).
	Logger *slog.Logger
	// OpTimeout bounds every operation, including (re)connecting; default
	// 10s. A request without an answer within it counts as a lost
	// connection (storage.ErrUnavailable).
	OpTimeout time.Duration
	// NoDefine leaves the tables alone: connections do not define them, so
	// a read-only check (`orchestrator migrate --validate`, see
	// MissingTables) can tell a database without the schema from one with
	// it. Default false: New and every reconnect define the tables.
	NoDefine bool
}

// Defaults of Options.
const (
	DefaultNamespace = "orchestrator"
	DefaultDatabase  = "tasks"
	DefaultOpTimeout = 10 * time.Second
)

// Store is the storage.Store on a SurrealDB server. It reconnects by
// itself: while the server is unreachable operations fail with
// storage.ErrUnavailable (see conn.go), afterwards they succeed again on a
// new connection.
type Store struct {
	opts Options
	url  *url.URL
	log  *slog.Logger

	// taskLocks and shards keep this process's transactions (Create, Put,
	// Delete, event appends) from updating a record another one of them
	// is updating at the same time. The SurrealDB 3.0 engines behind mem://
	// and surrealkv:// (the embedded mode's default) lose one of two
	// concurrent updates of a record, both transactions committing
	// (surrealdb/surrealdb#7473; TestSurrealCountersUnderConcurrentWrites
	// saw a counter off by one in 3 of 20 runs with nothing in the way).
	// A write or append holds its task's stripe (taskLock: the task record,
	// its keys, its event stream's head and events; concurrent appends to
	// one stream lost an event ~1 run in 15 of storagetest's
	// EventsConcurrentAppends without it), and a write also holds a
	// counter shard no other write of this process holds (its counter
	// records), so up to countShards writes run at once. Processes cannot
	// be kept apart from here: exact on RocksDB (tested, also
	// TestSurrealEventAppendsFromTwoStores), not on those two engines.
	taskLocks [64]sync.Mutex
	shards    chan int
	// conflicts counts statements retried after a transaction conflict
	// (for the benchmarks).
	conflicts atomic.Int64

	mu        sync.Mutex
	conn      *surrealConn // usable connection, nil if none
	dialing   *dialAttempt // dial in progress, nil if none
	closed    bool
	connected bool      // a connection was established once
	failures  int       // failed dials since the last success
	nextDial  time.Time // no dial before this after a failure
	lastErr   error     // error of the last failed dial
}

var _ storage.Store = (*Store)(nil)

// surrealTimeLayout is fixed-width, so its strings sort like the instants
// (years 0–9999, always UTC).
const surrealTimeLayout = "2006-01-02T15:04:05.000000000Z"

// surrealExistsMarker is thrown by Create's transaction when the task exists.
const surrealExistsMarker = "orchestrator:task-exists"

const surrealSchema = `
DEFINE TABLE IF NOT EXISTS task TYPE NORMAL SCHEMALESS;
DEFINE INDEX IF NOT EXISTS task_list ON TABLE task FIELDS list_key;
DEFINE INDEX IF NOT EXISTS task_status_list ON TABLE task FIELDS status, list_key;
DEFINE INDEX IF NOT EXISTS task_workflow_list ON TABLE task FIELDS workflow_type, list_key;
DEFINE INDEX IF NOT EXISTS task_status_workflow_list ON TABLE task FIELDS status, workflow_type, list_key;
DEFINE TABLE IF NOT EXISTS task_key TYPE NORMAL SCHEMALESS;
DEFINE TABLE IF NOT EXISTS audit TYPE NORMAL SCHEMALESS;
DEFINE INDEX IF NOT EXISTS audit_list ON TABLE audit FIELDS list_key;
DEFINE INDEX IF NOT EXISTS audit_task_list ON TABLE audit FIELDS task_id, list_key;
DEFINE TABLE IF NOT EXISTS step_output TYPE NORMAL SCHEMALESS;
DEFINE INDEX IF NOT EXISTS step_output_task ON TABLE step_output FIELDS task_id;
DEFINE TABLE IF NOT EXISTS task_event TYPE NORMAL SCHEMALESS;
DEFINE INDEX IF NOT EXISTS task_event_task ON TABLE task_event FIELDS task_id;
DEFINE INDEX IF NOT EXISTS task_event_time ON TABLE task_event FIELDS time;
DEFINE TABLE IF NOT EXISTS task_event_key TYPE NORMAL SCHEMALESS;
DEFINE INDEX IF NOT EXISTS task_event_key_task ON TABLE task_event_key FIELDS task_id;
DEFINE TABLE IF NOT EXISTS task_event_head TYPE NORMAL SCHEMALESS;
DEFINE TABLE IF NOT EXISTS task_count TYPE NORMAL SCHEMALESS;
` + surrealCountInitSQL

// surrealCountInitSQL counts the tasks per List filter into task_count
// once (a database written before the counters existed, or the benchmarks'
// bulk-inserted tasks), in one transaction so that no write slips between
// the count and the counters; afterwards every write keeps them. (A FOR
// over a subquery with no rows fails in SurrealDB 3.0.2, hence $groups.)
const surrealCountInitSQL = `
BEGIN TRANSACTION;
LET $ready = record::exists(task_count:sharded);
LET $groups = IF $ready { [] } ELSE { SELECT status, workflow_type, count() AS n FROM task GROUP BY status, workflow_type };
IF !$ready { DELETE task_count RETURN NONE };
IF !$ready AND array::len($groups) > 0 {
	FOR $x IN $groups {
		UPSERT type::record('task_count', ['s', $x.status, 0]), type::record('task_count', ['w', $x.workflow_type, 0]),
			type::record('task_count', ['sw', $x.status, $x.workflow_type, 0]), task_count:['all', 0] SET n += $x.n RETURN NONE;
	};
};
IF !$ready { CREATE task_count:sharded RETURN NONE };
COMMIT TRANSACTION;
`

// The transactions below read everything they need into variables first
// and only then write, each write in its own IF: SurrealDB 3.0.2 evaluates
// a variable derived from a record to NONE when a LET inside a block reads
// it after a DELETE, and an INSERT IGNORE after a DELETE of the same record
// in one transaction inserts nothing (so task_key records are UPSERTed).

const surrealCreateSQL = `
BEGIN TRANSACTION;
IF record::exists($rid) { THROW "` + surrealExistsMarker + `" };
CREATE $rid CONTENT $task RETURN NONE;
UPSERT $k1, $k2, $k3 RETURN NONE;
UPSERT $c0, $c1, $c2, $c3 SET n += 1 RETURN NONE;
INSERT IGNORE INTO audit $entry RETURN NONE;
COMMIT TRANSACTION;
`

// surrealPutSQL writes $task unless the stored version is higher; when
// that creates the task or changes its status or workflow type it replaces
// its task_key records and moves the task between the task_count counters,
// and when it creates the task or changes its status it appends the
// transition entry (unless its ID is stored already), all in one
// transaction.
const surrealPutSQL = `
BEGIN TRANSACTION;
LET $cur = (SELECT version, status, workflow_type FROM ONLY $rid);
LET $stored = $cur != NONE;
LET $os = $cur.status ?? "";
LET $ow = $cur.workflow_type ?? "";
LET $apply = !$stored OR $cur.version == NONE OR $cur.version <= $task.version;
LET $rekey = $apply AND (!$stored OR $os != $task.status OR $ow != $task.workflow_type);
LET $transition = $apply AND (!$stored OR $os != $task.status);
IF $apply { UPSERT $rid CONTENT $task RETURN NONE };
IF $rekey AND $stored {
	DELETE task_key:['s', $os, $tid], task_key:['w', $ow, $tid], task_key:['sw', $os, $ow, $tid] RETURN NONE
};
IF $rekey { UPSERT $k1, $k2, $k3 RETURN NONE };
IF $apply AND !$stored { UPSERT $c0, $c1, $c2, $c3 SET n += 1 RETURN NONE };
IF $apply AND $stored AND $os != $task.status {
	UPSERT type::record('task_count', ['s', $os, $shard]) SET n -= 1 RETURN NONE;
	UPSERT $c1 SET n += 1 RETURN NONE
};
IF $apply AND $stored AND $ow != $task.workflow_type {
	UPSERT type::record('task_count', ['w', $ow, $shard]) SET n -= 1 RETURN NONE;
	UPSERT $c2 SET n += 1 RETURN NONE
};
IF $rekey AND $stored {
	UPSERT type::record('task_count', ['sw', $os, $ow, $shard]) SET n -= 1 RETURN NONE;
	UPSERT $c3 SET n += 1 RETURN NONE
};
IF $transition {
	INSERT IGNORE INTO audit {
		id: $aid, task_id: $tid, eid: $eid, time: $time, list_key: $alist, actor: $actor,
		action: $action, status_before: $os, status_after: $task.status,
		version: $task.version, detail: ""
	} RETURN NONE
};
COMMIT TRANSACTION;
`

const surrealDeleteSQL = `
BEGIN TRANSACTION;
LET $cur = (SELECT status, workflow_type FROM ONLY $rid);
LET $stored = $cur != NONE;
LET $os = $cur.status ?? "";
LET $ow = $cur.workflow_type ?? "";
IF $stored {
	DELETE $rid, task_key:['s', $os, $tid], task_key:['w', $ow, $tid], task_key:['sw', $os, $ow, $tid] RETURN NONE
};
IF $stored {
	UPSERT type::record('task_count', ['all', $shard]), type::record('task_count', ['s', $os, $shard]),
		type::record('task_count', ['w', $ow, $shard]), type::record('task_count', ['sw', $os, $ow, $shard]) SET n -= 1 RETURN NONE
};
DELETE step_output WHERE task_id = $tid RETURN NONE;
DELETE task_event WHERE task_id = $tid RETURN NONE;
DELETE task_event_key WHERE task_id = $tid RETURN NONE;
DELETE $hid RETURN NONE;
COMMIT TRANSACTION;
`

// New connects to a SurrealDB server (signs in, selects the namespace and
// database, defines the tables) and returns the store. A server that
// cannot be reached within ctx and OpTimeout is an error wrapping
// storage.ErrUnavailable; later outages are handled by reconnecting.
func New(ctx context.Context, o Options) (*Store, error) {
	if o.Namespace == "" {
		o.Namespace = DefaultNamespace
	}
	if o.Database == "" {
		o.Database = DefaultDatabase
	}
	if o.OpTimeout <= 0 {
		o.OpTimeout = DefaultOpTimeout
	}
	u, err := parseSurrealURL(o.URL)
	if err != nil {
		return nil, err
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Store{opts: o, url: u, log: log, shards: make(chan int, countShards)}
	// Each process hands out the shards in its own order, so that two
	// processes' first writes rarely meet on one.
	for _, i := range rand.Perm(countShards) {
		s.shards <- i
	}
	dctx, cancel := context.WithTimeout(ctx, o.OpTimeout)
	defer cancel()
	c, err := s.dialConn(dctx)
	if err != nil {
		if ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, fmt.Errorf("surrealdb: %w", ctx.Err())
		}
		return nil, fmt.Errorf("%w: surrealdb: %w", storage.ErrUnavailable, err)
	}
	s.conn, s.connected = c, true
	return s, nil
}

func parseSurrealURL(raw string) (*url.URL, error) {
	if raw == "" {
		return nil, errors.New("surrealdb: no server URL")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("surrealdb: server URL: %w", err)
	}
	switch u.Scheme {
	case "ws", "wss", "http", "https":
	default:
		return nil, fmt.Errorf("surrealdb: server URL %q: scheme must be ws, wss, http or https", u.Redacted())
	}
	if u.Host == "" {
		return nil, fmt.Errorf("surrealdb: server URL %q has no host", u.Redacted())
	}
	if p := strings.TrimSuffix(u.Path, "/"); p != "" && p != "/rpc" {
		return nil, fmt.Errorf("surrealdb: server URL %q: path must be empty or /rpc", u.Redacted())
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("surrealdb: server URL %q: no user info, query or fragment allowed (use the username/password options)", u.Redacted())
	}
	return &url.URL{Scheme: u.Scheme, Host: u.Host}, nil
}

// Close closes the connection. Calls after Close fail with
// storage.ErrUnavailable; closing twice is a no-op.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	c := s.conn
	s.conn = nil
	if c != nil {
		c.dropped = true
		if c.refs > 0 {
			c = nil // closed by its last operation's release
		}
	}
	s.mu.Unlock()
	if c != nil {
		s.closeConn(c)
	}
	return nil
}

// Create stores a new task and its storage.AuditCreate entry in one
// transaction; storage.ErrExists if the ID is taken.
func (s *Store) Create(ctx context.Context, t storage.Task) error {
	t, doc, err := storage.PrepareWrite(t)
	if err != nil {
		return err
	}
	vars := map[string]any{
		"rid":   taskRecordID(t.ID),
		"task":  surrealTaskContent(t, doc),
		"entry": surrealAuditContent(storage.CreateAuditEntry(ctx, t)),
	}
	addTaskKeys(vars, t)
	err = s.write(ctx, t, "create task "+t.ID, surrealCreateSQL, vars)
	if err != nil && strings.Contains(err.Error(), surrealExistsMarker) {
		return fmt.Errorf("%w: %s", storage.ErrExists, t.ID)
	}
	return err
}

// Put upserts t unless the stored task has a higher Version; when it
// creates the task or changes its status it appends the
// storage.AuditTransition entry (unless one with that ID is stored) in the
// same transaction.
func (s *Store) Put(ctx context.Context, t storage.Task) error {
	t, doc, err := storage.PrepareWrite(t)
	if err != nil {
		return err
	}
	// The stored status (the entry's Before) is known only inside the
	// transaction, which fills it in; the rest is bound from the entry.
	e := storage.TransitionAuditEntry(ctx, t, "")
	vars := map[string]any{
		"rid":    taskRecordID(t.ID),
		"task":   surrealTaskContent(t, doc),
		"aid":    auditRecordID(e.TaskID, e.ID),
		"eid":    e.ID,
		"time":   surrealTime(e.Time),
		"alist":  surrealTimeKey(e.Time),
		"actor":  e.Actor,
		"action": e.Action,
	}
	addTaskKeys(vars, t)
	return s.write(ctx, t, "put task "+t.ID, surrealPutSQL, vars)
}

// Get returns the task or storage.ErrNotFound.
func (s *Store) Get(ctx context.Context, id string) (storage.Task, error) {
	if err := storage.ValidateID(id); err != nil {
		return storage.Task{}, err
	}
	res, err := s.query(ctx, "get task "+id, `SELECT VALUE doc FROM ONLY $rid;`, map[string]any{"rid": taskRecordID(id)})
	if err != nil {
		return storage.Task{}, err
	}
	var doc any
	if err := decodeResult(res, 0, &doc); err != nil {
		return storage.Task{}, err
	}
	switch d := doc.(type) {
	case nil:
		return storage.Task{}, fmt.Errorf("%w: %s", storage.ErrNotFound, id)
	case string:
		return decodeSurrealTask(id, []byte(d))
	default:
		return storage.Task{}, fmt.Errorf("%w: surrealdb record task:%s: doc is a %T, not a string", storage.ErrCorrupt, id, doc)
	}
}

// List returns one page of matching tasks, newest first (CreatedAt, then
// ID descending), and the number of matching tasks; lf.Page tells which
// page. Undecodable records are skipped and logged.
func (s *Store) List(ctx context.Context, lf storage.ListFilter) ([]storage.Task, int, error) {
	pageSQL, countSQL, vars := listQueries(lf)
	res, err := s.query(ctx, "list tasks", pageSQL+"\n"+countSQL, vars)
	if err != nil {
		return nil, 0, err
	}
	return s.decodeList(res)
}

// listQueries are List's two statements, the page and the total, with
// their variables.
func listQueries(lf storage.ListFilter) (pageSQL, countSQL string, vars map[string]any) {
	offset, limit := lf.Page()
	vars = map[string]any{"limit": limit, "offset": offset, "status": string(lf.Status), "wf": lf.WorkflowType}
	var page, count, counter string
	switch {
	case lf.Status != "" && lf.WorkflowType != "":
		page = "FROM task WITH INDEX task_status_workflow_list WHERE status = $status AND workflow_type = $wf ORDER BY status, workflow_type, list_key"
		count = "task_key:['sw', $status, $wf]..['sw', $status, $wf, '~']"
		counter = counterRange("sw", "$status", "$wf")
	case lf.Status != "":
		page = "FROM task WITH INDEX task_status_list WHERE status = $status ORDER BY status, list_key"
		count = "task_key:['s', $status]..['s', $status, '~']"
		counter = counterRange("s", "$status")
	case lf.WorkflowType != "":
		page = "FROM task WITH INDEX task_workflow_list WHERE workflow_type = $wf ORDER BY workflow_type, list_key"
		count = "task_key:['w', $wf]..['w', $wf, '~']"
		counter = counterRange("w", "$wf")
	default:
		page = "FROM task WITH INDEX task_list ORDER BY list_key"
		count = "task"
		counter = counterRange("all")
	}
	// The counter, or (on a database whose counters are not ready: one
	// a read-only connection did not initialise) a count of the keys.
	count = "RETURN IF record::exists(task_count:sharded) { " + counterSumSQL(counter) + " } ELSE { " +
		"(SELECT count() AS n FROM " + count + " GROUP ALL)[0].n ?? 0 };"
	if lf.Priority != 0 {
		// Priority filters are rare (an operator looking at a level):
		// a filtered scan in list order rather than key ranges of their
		// own. Records written before priorities existed
		// have none: they are DefaultPriority.
		vars["prio"] = lf.Priority
		where := "WHERE (priority ?? " + strconv.Itoa(storage.DefaultPriority) + ") = $prio"
		if lf.Status != "" {
			where += " AND status = $status"
		}
		if lf.WorkflowType != "" {
			where += " AND workflow_type = $wf"
		}
		page = "FROM task " + where + " ORDER BY list_key"
		count = "RETURN (SELECT count() AS n FROM task " + where + " GROUP ALL)[0].n ?? 0;"
	}
	return "SELECT doc, status, workflow_type, list_key, id " + page + " LIMIT $limit START $offset;", count, vars
}

// decodeList decodes List's two results: the page and the total.
func (s *Store) decodeList(res queryResults) ([]storage.Task, int, error) {
	var rows []struct {
		ID  models.RecordID `json:"id"`
		Doc string          `json:"doc"`
	}
	if err := decodeResult(res, 0, &rows); err != nil {
		return nil, 0, err
	}
	var total int
	if err := decodeResult(res, 1, &total); err != nil {
		return nil, 0, err
	}
	out := make([]storage.Task, 0, len(rows))
	for _, r := range rows {
		id, _ := r.ID.ID.(string)
		t, err := decodeSurrealTask(id, []byte(r.Doc))
		if err != nil {
			s.log.Warn("skipping undecodable task record", "id", id, "error", err)
			continue
		}
		out = append(out, t)
	}
	return out, total, nil
}

// Delete removes a task, its step outputs and its events in one transaction; a
// missing task is not an error. Its audit entries are kept.
func (s *Store) Delete(ctx context.Context, id string) error {
	if err := storage.ValidateID(id); err != nil {
		return err
	}
	return s.write(ctx, storage.Task{ID: id}, "delete task "+id, surrealDeleteSQL,
		map[string]any{"rid": taskRecordID(id), "tid": id, "hid": eventHeadID(id)})
}

// Ping runs a trivial query (connecting first if needed).
func (s *Store) Ping(ctx context.Context) error {
	_, err := s.query(ctx, "ping", `RETURN 1;`, nil)
	return err
}

// SchemaTables are the tables the store defines and needs.
var SchemaTables = []string{"task", "task_key", "audit", "step_output"}

// MissingTables returns the SchemaTables the database does not define
// (INFO FOR DB), in SchemaTables order: all of them when the namespace or
// database does not exist. It changes nothing.
func (s *Store) MissingTables(ctx context.Context) ([]string, error) {
	res, err := s.query(ctx, "info for db", `INFO FOR DB;`, nil)
	var se *statementError
	if errors.As(err, &se) && strings.Contains(strings.ToLower(se.err.Error()), "does not exist") {
		return slices.Clone(SchemaTables), nil
	}
	if err != nil {
		return nil, err
	}
	var info struct {
		Tables map[string]any `json:"tables"`
	}
	if err := decodeResult(res, 0, &info); err != nil {
		return nil, err
	}
	var missing []string
	for _, t := range SchemaTables {
		if _, ok := info.Tables[t]; !ok {
			missing = append(missing, t)
		}
	}
	return missing, nil
}

// IDs returns every stored task id (any order).
func (s *Store) IDs(ctx context.Context) ([]string, error) {
	res, err := s.query(ctx, "list task ids", `SELECT VALUE record::id(id) FROM task;`, nil)
	if err != nil {
		return nil, err
	}
	var ids []string
	if err := decodeResult(res, 0, &ids); err != nil {
		return nil, err
	}
	return ids, nil
}

// AppendAudit stores e unless an entry with the same task and ID is stored
// already (then it is a no-op). storage.PrepareAuditEntry checks and
// completes e first; Time is stored in UTC.
func (s *Store) AppendAudit(ctx context.Context, e storage.AuditEntry) error {
	e, err := storage.PrepareAuditEntry(ctx, e)
	if err != nil {
		return err
	}
	_, err = s.query(ctx, "append audit entry of "+e.TaskID, `INSERT IGNORE INTO audit $entry RETURN NONE;`,
		map[string]any{"entry": surrealAuditContent(e)})
	return err
}

// ListAudit returns the matching entries oldest first (Time, then ID). With
// more than the limit (default storage.DefaultAuditLimit) matching, the
// newest are kept.
func (s *Store) ListAudit(ctx context.Context, af storage.AuditFilter) ([]storage.AuditEntry, error) {
	af, err := storage.PrepareAuditFilter(af)
	if err != nil {
		return nil, err
	}
	limit := af.Limit
	// The newest entries come first on the list_key index; the page ends
	// at some time T, and entries at T beyond the page may sort (by ID)
	// before some on it, so all entries at T are read too, then the newest
	// limit of both are kept.
	vars := map[string]any{"limit": limit, "tid": af.TaskID}
	from, where := "FROM audit WITH INDEX audit_list", ""
	order := " ORDER BY list_key"
	if af.TaskID != "" {
		from, where = "FROM audit WITH INDEX audit_task_list", " WHERE task_id = $tid"
		order = " ORDER BY task_id, list_key"
	}
	const fields = "SELECT task_id, eid, time, list_key, actor, action, status_before, status_after, version, detail "
	res, err := s.query(ctx, "list audit entries", fields+from+where+order+" LIMIT $limit;", vars)
	if err != nil {
		return nil, err
	}
	var rows []surrealAuditRow
	if err := decodeResult(res, 0, &rows); err != nil {
		return nil, err
	}
	if len(rows) == limit {
		vars["edge"] = rows[len(rows)-1].ListKey
		if where == "" {
			where = " WHERE list_key = $edge"
		} else {
			where += " AND list_key = $edge"
		}
		res, err := s.query(ctx, "list audit entries", fields+from+where+order+";", vars)
		if err != nil {
			return nil, err
		}
		var ties []surrealAuditRow
		if err := decodeResult(res, 0, &ties); err != nil {
			return nil, err
		}
		rows = append(rows, ties...)
	}
	return storage.NewestAudit(s.auditEntries(rows), limit), nil
}

// auditEntries converts audit rows, dropping repeated ones and (logged)
// those with a bad time.
func (s *Store) auditEntries(rows []surrealAuditRow) []storage.AuditEntry {
	out := make([]storage.AuditEntry, 0, len(rows))
	seen := make(map[[2]string]struct{}, len(rows))
	for _, r := range rows {
		if _, dup := seen[[2]string{r.TaskID, r.EID}]; dup {
			continue
		}
		seen[[2]string{r.TaskID, r.EID}] = struct{}{}
		at, err := time.Parse(surrealTimeLayout, r.Time)
		if err != nil {
			s.log.Warn("skipping audit record with a bad time", "task_id", r.TaskID, "id", r.EID, "error", err)
			continue
		}
		out = append(out, storage.AuditEntry{
			ID: r.EID, TaskID: r.TaskID, Time: at.UTC(), Actor: r.Actor, Action: r.Action,
			Before: storage.TaskStatus(r.Before), After: storage.TaskStatus(r.After), Version: r.Version, Detail: r.Detail,
		})
	}
	return out
}

var _ storage.BulkReader = (*Store)(nil)

// ReadRecords implements storage.BulkReader: one query with, per id, the
// statements of Get and of ListAudit (its index, every entry of the task).
func (s *Store) ReadRecords(ctx context.Context, ids []string, auditLimit int) ([]storage.BulkRecord, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	if auditLimit <= 0 {
		auditLimit = storage.DefaultAuditLimit
	}
	var sql strings.Builder
	vars := make(map[string]any, 2*len(ids))
	for i, id := range ids {
		if err := storage.ValidateID(id); err != nil {
			return nil, err
		}
		n := strconv.Itoa(i)
		vars["r"+n], vars["t"+n] = taskRecordID(id), id
		sql.WriteString("SELECT VALUE doc FROM ONLY $r" + n + ";\n" +
			"SELECT task_id, eid, time, list_key, actor, action, status_before, status_after, version, detail " +
			"FROM audit WITH INDEX audit_task_list WHERE task_id = $t" + n + " ORDER BY task_id, list_key;\n")
	}
	res, err := s.query(ctx, "read "+strconv.Itoa(len(ids))+" tasks", sql.String(), vars)
	if err != nil {
		return nil, err
	}
	out := make([]storage.BulkRecord, len(ids))
	for i, id := range ids {
		out[i].ID = id
		var doc any
		if err := decodeResult(res, 2*i, &doc); err != nil {
			return nil, err
		}
		switch d := doc.(type) {
		case nil:
			out[i].Err = fmt.Errorf("%w: %s", storage.ErrNotFound, id)
		case string:
			out[i].Task, out[i].Err = decodeSurrealTask(id, []byte(d))
		default:
			out[i].Err = fmt.Errorf("%w: surrealdb record task:%s: doc is a %T, not a string", storage.ErrCorrupt, id, doc)
		}
		var rows []surrealAuditRow
		if err := decodeResult(res, 2*i+1, &rows); err != nil {
			return nil, err
		}
		out[i].Audit = storage.NewestAudit(s.auditEntries(rows), auditLimit)
	}
	return out, nil
}

type surrealAuditRow struct {
	TaskID  string `json:"task_id"`
	EID     string `json:"eid"`
	Time    string `json:"time"`
	ListKey string `json:"list_key"`
	Actor   string `json:"actor"`
	Action  string `json:"action"`
	Before  string `json:"status_before"`
	After   string `json:"status_after"`
	Version int64  `json:"version"`
	Detail  string `json:"detail"`
}

func taskRecordID(id string) models.RecordID { return models.NewRecordID("task", id) }

func auditRecordID(taskID, entryID string) models.RecordID {
	return models.NewRecordID("audit", []any{taskID, entryID})
}

func surrealTime(t time.Time) string { return t.UTC().Format(surrealTimeLayout) }

var (
	surrealMinTime = time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC)
	surrealMaxTime = time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC)
)

// surrealTimeKey is the fixed-width time with every digit inverted: its
// ascending order is newest first. Times outside the years 0–9999 are
// clamped.
func surrealTimeKey(t time.Time) string {
	t = t.UTC()
	if t.Before(surrealMinTime) {
		t = surrealMinTime
	} else if t.After(surrealMaxTime) {
		t = surrealMaxTime
	}
	key := []byte(surrealTime(t))
	for i, c := range key {
		if c >= '0' && c <= '9' {
			key[i] = '9' - (c - '0')
		}
	}
	return string(key)
}

// surrealListKey orders tasks as List does when sorted ascending: the
// inverted creation time (surrealTimeKey), then the ID with every hex digit
// inverted (IDs are canonical lowercase UUIDs).
func surrealListKey(t storage.Task) string {
	id := []byte(t.ID)
	for i, c := range id {
		switch {
		case c >= '0' && c <= '9':
			id[i] = "fedcba9876"[c-'0']
		case c >= 'a' && c <= 'f':
			id[i] = "543210"[c-'a']
		}
	}
	return surrealTimeKey(t.CreatedAt) + string(id)
}

// surrealTaskKeys are the IDs of a task's task_key records (see the
// schema).
func surrealTaskKeys(t storage.Task) [3]models.RecordID {
	st := string(t.Status)
	return [3]models.RecordID{
		models.NewRecordID("task_key", []any{"s", st, t.ID}),
		models.NewRecordID("task_key", []any{"w", t.WorkflowType, t.ID}),
		models.NewRecordID("task_key", []any{"sw", st, t.WorkflowType, t.ID}),
	}
}

// addTaskKeys binds $tid and $k1..$k3 (the task's task_key IDs).
func addTaskKeys(vars map[string]any, t storage.Task) {
	k := surrealTaskKeys(t)
	vars["tid"], vars["k1"], vars["k2"], vars["k3"] = t.ID, k[0], k[1], k[2]
}

// taskLock is the stripe of task id's records (see Store.taskLocks).
func (s *Store) taskLock(id string) *sync.Mutex {
	return &s.taskLocks[fnvIndex(id, len(s.taskLocks))]
}

// write runs a Create, Put or Delete transaction of task t (for Delete
// only its ID counts) holding t's write stripe and a counter shard no
// other write of this process holds (see Store.taskLocks), bound as
// $shard, with $c0..$c3 the counter records of that shard t counts in.
func (s *Store) write(ctx context.Context, t storage.Task, op, sql string, vars map[string]any) error {
	mu := s.taskLock(t.ID)
	mu.Lock()
	defer mu.Unlock()
	var shard int
	select {
	case shard = <-s.shards:
	case <-ctx.Done():
		return ctxError(ctx, op)
	}
	defer func() { s.shards <- shard }()
	st := string(t.Status)
	vars["shard"] = shard
	vars["c0"], vars["c1"] = countRecordID(shard, "all"), countRecordID(shard, "s", st)
	vars["c2"], vars["c3"] = countRecordID(shard, "w", t.WorkflowType), countRecordID(shard, "sw", st, t.WorkflowType)
	_, err := s.query(ctx, op, sql, vars)
	return err
}

// countShards is how many task_count records each filter's count is spread
// over (see the schema), and so how many writes one process runs at once
// (each holds a shard of its own): enough for a worker's projections and a
// migration's writers, and that several processes rarely meet on one;
// few enough that List's total stays a short range read.
const countShards = 16

// countRecordID is the task_count record of one filter's shard (see the
// schema).
func countRecordID(shard int, key ...string) models.RecordID {
	id := make([]any, 0, len(key)+1)
	for _, k := range key {
		id = append(id, k)
	}
	return models.NewRecordID("task_count", append(id, shard))
}

// counterRange is the record-ID range of one filter's counter shards;
// parts are the filter's kind and the variables holding its values.
func counterRange(kind string, vars ...string) string {
	prefix := "'" + kind + "'"
	for _, v := range vars {
		prefix += ", " + v
	}
	return "task_count:[" + prefix + ", 0]..[" + prefix + ", " + strconv.Itoa(countShards) + "]"
}

// counterSumSQL is the expression summing the counter shards of a
// counterRange.
func counterSumSQL(counterRange string) string {
	return "math::sum((SELECT VALUE n FROM " + counterRange + "))"
}

// surrealTaskContent is the record of a task that storage.PrepareWrite
// normalized and encoded as doc.
func surrealTaskContent(t storage.Task, doc []byte) map[string]any {
	return map[string]any{
		"doc":           string(doc),
		"status":        string(t.Status),
		"workflow_type": t.WorkflowType,
		"priority":      t.Priority,
		"created_at":    surrealTime(t.CreatedAt),
		"list_key":      surrealListKey(t),
		"version":       t.Version,
	}
}

// surrealAuditContent is the record of an audit entry (with its id).
func surrealAuditContent(e storage.AuditEntry) map[string]any {
	return map[string]any{
		"id":            auditRecordID(e.TaskID, e.ID),
		"task_id":       e.TaskID,
		"eid":           e.ID,
		"time":          surrealTime(e.Time),
		"list_key":      surrealTimeKey(e.Time),
		"actor":         e.Actor,
		"action":        e.Action,
		"status_before": string(e.Before),
		"status_after":  string(e.After),
		"version":       e.Version,
		"detail":        e.Detail,
	}
}

// decodeSurrealTask decodes a task record's doc (storage.DecodeTask),
// naming the record in errors, which wrap storage.ErrCorrupt.
func decodeSurrealTask(id string, doc []byte) (storage.Task, error) {
	t, err := storage.DecodeTask(id, doc)
	if err != nil {
		return storage.Task{}, fmt.Errorf("%w: surrealdb record task:%s: %w", storage.ErrCorrupt, id, err)
	}
	return t, nil
}

var surrealCodec = surrealcbor.New()

// decodeResult decodes statement i's result into v.
func decodeResult(res queryResults, i int, v any) error {
	if i >= len(res) {
		return fmt.Errorf("surrealdb: %d statement results, want at least %d", len(res), i+1)
	}
	raw := res[i].Result
	if len(raw) == 0 {
		return nil
	}
	if err := surrealCodec.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("surrealdb: decode result: %w", err)
	}
	return nil
}
