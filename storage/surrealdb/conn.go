package surrealdb

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/fxamacker/cbor/v2"
	surrealclient "github.com/surrealdb/surrealdb.go"
	"github.com/surrealdb/surrealdb.go/pkg/connection"
	"github.com/surrealdb/surrealdb.go/pkg/connection/gorillaws"
	surrealhttp "github.com/surrealdb/surrealdb.go/pkg/connection/http"

	"github.com/provisioning/orchestrator/storage"
)

// Connection management of the SurrealDB backend.
//
// surrealdb.go (v1.3.0) never reconnects, and its WebSocket connection does
// not notice a dead socket by itself: after the server is killed the next
// request waits for its context, later ones fail with "broken pipe"; after a
// graceful stop they fail with "websocket: close sent". Worse, a read error
// other than a close (e.g. ECONNRESET) makes its read loop spin until
// gorilla/websocket panics ("repeated read on failed websocket connection").
//
// So the store manages connections itself:
//   - Every socket is wrapped (see installDialHook) so that any read or write
//     error marks its connection dead at once and is reported to the read
//     loop as net.ErrClosed, which ends that loop cleanly. A close frame from
//     the server (graceful stop) marks it dead too.
//   - Every operation runs under OpTimeout and is cancelled as soon as its
//     connection dies, so requests in flight fail within milliseconds of a
//     crash rather than at their deadline.
//   - A connection that died, timed out or lost its authentication is
//     dropped; the next operation dials a new one (sign-in, USE, schema),
//     once for all concurrent callers, with exponential backoff between
//     failed attempts (callers arriving during the backoff fail at once).
//   - All of these failures are returned wrapped in storage.ErrUnavailable
//     (the API answers 503); statement errors that are not about
//     connectivity stay plain errors.
//   - A connection is closed only when no operation uses it any more
//     (closing it under a running request would crash surrealdb.go).

const (
	// surrealDialBackoffMin and surrealDialBackoffMax bound the pause after
	// a failed dial before the next one is tried.
	surrealDialBackoffMin = 100 * time.Millisecond
	surrealDialBackoffMax = 2 * time.Second
	// surrealCloseTimeout bounds closing a connection (close frame).
	surrealCloseTimeout = 2 * time.Second
	// surrealConflictAttempts bounds retries of a transaction that failed on
	// a write conflict with a concurrent one.
	surrealConflictAttempts = 100
	// surrealAuthErrorCode is the RPC error of a request the session is not
	// (or no longer) authorised for.
	surrealAuthErrorCode = -32002
)

// surrealConn is one client connection (signed in, namespace and database
// selected, schema defined).
type surrealConn struct {
	db    *surrealclient.DB
	watch *connWatch
	// refs counts running operations; guarded by Store.mu.
	refs int
	// dropped: no longer handed out, closed when refs reaches 0; guarded
	// by Store.mu.
	dropped bool
}

// dialAttempt is a dial in progress; done is closed when it finished, with
// err set if it failed.
type dialAttempt struct {
	done chan struct{}
	err  error
}

// connWatch follows one socket: ctx is cancelled (with the cause) when the
// connection dies or is closed.
type connWatch struct {
	ctx    context.Context
	cancel context.CancelCauseFunc

	mu  sync.Mutex
	raw net.Conn
}

func newConnWatch() *connWatch {
	ctx, cancel := context.WithCancelCause(context.Background())
	return &connWatch{ctx: ctx, cancel: cancel}
}

func (w *connWatch) kill(cause error) { w.cancel(cause) }

// dead returns why the connection died, or nil while it is alive.
func (w *connWatch) dead() error {
	if w.ctx.Err() == nil {
		return nil
	}
	return context.Cause(w.ctx)
}

func (w *connWatch) setRaw(c net.Conn) {
	w.mu.Lock()
	w.raw = c
	w.mu.Unlock()
}

func (w *connWatch) closeRaw() {
	w.mu.Lock()
	raw := w.raw
	w.mu.Unlock()
	if raw != nil {
		_ = raw.Close()
	}
}

// watchedConn reports the first I/O error of a socket to its connWatch.
type watchedConn struct {
	net.Conn
	w *connWatch
}

func (c *watchedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil {
		c.w.kill(fmt.Errorf("connection lost: %w", err))
		if !errors.Is(err, net.ErrClosed) {
			// surrealdb.go's read loop stops cleanly only on net.ErrClosed
			// (on anything else it spins until gorilla/websocket panics).
			err = &lostConnError{err: err}
		}
	}
	return n, err
}

func (c *watchedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if err != nil {
		c.w.kill(fmt.Errorf("connection lost: %w", err))
	}
	return n, err
}

// lostConnError is a socket error that also matches net.ErrClosed.
type lostConnError struct{ err error }

func (e *lostConnError) Error() string   { return e.err.Error() }
func (e *lostConnError) Unwrap() []error { return []error{e.err, net.ErrClosed} }

type connWatchKey struct{}

var installDialHookOnce sync.Once

// installDialHook makes surrealdb.go's WebSocket dialer wrap the sockets
// it opens for a context carrying a *connWatch (only this store's dials do;
// other dials are unchanged). surrealdb.go offers no per-connection dialer,
// hence the package-level one is replaced, once, before this store's first
// dial.
func installDialHook() {
	installDialHookOnce.Do(func() {
		d := *gorillaws.DefaultDialer
		next := d.NetDialContext
		if next == nil && d.NetDial != nil {
			nd := d.NetDial
			next = func(_ context.Context, network, addr string) (net.Conn, error) { return nd(network, addr) }
		}
		if next == nil {
			next = (&net.Dialer{}).DialContext
		}
		d.NetDial = nil
		d.NetDialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := next(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			if w, ok := ctx.Value(connWatchKey{}).(*connWatch); ok {
				w.setRaw(c)
				return &watchedConn{Conn: c, w: w}, nil
			}
			return c, nil
		}
		gorillaws.DefaultDialer = &d
	})
}

// clientLogger routes surrealdb.go's own log lines (mostly late responses
// and socket errors, which this store reports itself) to Debug.
type clientLogger struct{ l *slog.Logger }

func (c clientLogger) Error(msg string, args ...any) { c.l.Debug(msg, args...) }
func (c clientLogger) Warn(msg string, args ...any)  { c.l.Debug(msg, args...) }
func (c clientLogger) Info(msg string, args ...any)  { c.l.Debug(msg, args...) }
func (c clientLogger) Debug(msg string, args ...any) { c.l.Debug(msg, args...) }

// dialConn opens, authenticates and prepares one connection.
func (s *Store) dialConn(ctx context.Context) (*surrealConn, error) {
	conf := connection.NewConfig(s.url)
	conf.Logger = clientLogger{s.log.With("component", "surrealdb.go")}
	w := newConnWatch()
	var con connection.Connection
	switch s.url.Scheme {
	case "ws", "wss":
		installDialHook()
		ws := gorillaws.New(conf)
		ws.Logger(conf.Logger)
		ws.Timeout = 0 // every call carries its own deadline
		ws.Option = append(ws.Option, func(ws *gorillaws.Connection) error {
			h := ws.Conn.CloseHandler()
			ws.Conn.SetCloseHandler(func(code int, text string) error {
				w.kill(fmt.Errorf("the server closed the connection (code %d %s)", code, text))
				return h(code, text)
			})
			return nil
		})
		con = ws
	default: // http, https (checked by New)
		con = surrealhttp.New(conf).SetTimeout(s.opts.OpTimeout)
	}
	db, err := surrealclient.FromConnection(context.WithValue(ctx, connWatchKey{}, w), con)
	if err != nil {
		w.kill(err)
		w.closeRaw()
		return nil, fmt.Errorf("connect to %s: %w", s.url.Redacted(), err)
	}
	c := &surrealConn{db: db, watch: w}
	fail := func(err error) (*surrealConn, error) {
		if cause := w.dead(); cause != nil {
			err = fmt.Errorf("%w (%w)", err, cause)
		}
		s.closeConn(c)
		return nil, err
	}
	// Give up at once if the connection dies while it is prepared.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(w.ctx, cancel)
	defer stop()
	signIn := func() error {
		if s.opts.Username == "" && s.opts.Password == "" {
			return nil
		}
		if _, err := db.SignIn(ctx, surrealclient.Auth{Username: s.opts.Username, Password: s.opts.Password}); err != nil {
			return fmt.Errorf("sign in to %s as %q: %w", s.url.Redacted(), s.opts.Username, err)
		}
		return nil
	}
	use := func() error {
		if err := db.Use(ctx, s.opts.Namespace, s.opts.Database); err != nil {
			return fmt.Errorf("use namespace %q database %q: %w", s.opts.Namespace, s.opts.Database, err)
		}
		return nil
	}
	// Over HTTP the client sends namespace and database with every request
	// (sign-in included) and refuses to sign in without them.
	steps := []func() error{signIn, use}
	if s.url.Scheme == "http" || s.url.Scheme == "https" {
		steps = []func() error{use, signIn}
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return fail(err)
		}
	}
	for attempt := 1; !s.opts.NoDefine; attempt++ {
		_, err := surrealclient.Query[cbor.RawMessage](ctx, db, surrealSchema, nil)
		if err == nil {
			break
		}
		if !isConflict(err) || attempt >= surrealConflictAttempts || ctx.Err() != nil {
			return fail(fmt.Errorf("define tables: %w", err))
		}
		conflictPause(ctx, attempt)
	}
	if err := w.dead(); err != nil {
		return fail(errors.New("connection lost while it was prepared"))
	}
	return c, nil
}

// closeConn closes c's client and socket; it must not be in use.
func (s *Store) closeConn(c *surrealConn) {
	ctx, cancel := context.WithTimeout(context.Background(), surrealCloseTimeout)
	defer cancel()
	_ = c.db.Close(ctx)
	c.watch.closeRaw()
	c.watch.kill(errors.New("connection closed"))
}

// acquire returns a usable connection, dialing one if needed, and counts
// the caller as its user until release.
func (s *Store) acquire(ctx context.Context) (*surrealConn, error) {
	for dials := 0; ; dials++ {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return nil, fmt.Errorf("%w: surrealdb store is closed", storage.ErrUnavailable)
		}
		if c := s.conn; c != nil {
			cause := c.watch.dead()
			if cause == nil {
				c.refs++
				s.mu.Unlock()
				return c, nil
			}
			s.dropLocked(c, cause)
			if dials >= 2 {
				s.mu.Unlock()
				return nil, fmt.Errorf("%w: surrealdb: connection lost right after connecting: %w", storage.ErrUnavailable, cause)
			}
		}
		d := s.dialing
		if d == nil {
			if wait := time.Until(s.nextDial); s.lastErr != nil && wait > 0 {
				err := s.lastErr
				s.mu.Unlock()
				return nil, fmt.Errorf("%w: surrealdb unreachable (next attempt in %s): %w",
					storage.ErrUnavailable, wait.Round(time.Millisecond), err)
			}
			d = &dialAttempt{done: make(chan struct{})}
			s.dialing = d
			go s.dial(d)
		}
		s.mu.Unlock()
		select {
		case <-d.done:
			if d.err != nil {
				return nil, d.err
			}
		case <-ctx.Done():
			return nil, ctxError(ctx, "connect")
		}
	}
}

// release ends an operation on c started by acquire.
func (s *Store) release(c *surrealConn) {
	s.mu.Lock()
	c.refs--
	closeNow := c.dropped && c.refs == 0
	s.mu.Unlock()
	if closeNow {
		go s.closeConn(c)
	}
}

// drop stops handing out c (it died, timed out or lost its session); it
// is closed when its last operation ends.
func (s *Store) drop(c *surrealConn, cause error) {
	s.mu.Lock()
	s.dropLocked(c, cause)
	s.mu.Unlock()
}

func (s *Store) dropLocked(c *surrealConn, cause error) {
	if c.dropped {
		return
	}
	c.dropped = true
	if s.conn == c {
		s.conn = nil
		if !s.closed {
			s.log.Warn("surrealdb connection lost; reconnecting on the next operation",
				"url", s.url.Redacted(), "error", cause)
		}
	}
	if c.refs == 0 {
		go s.closeConn(c)
	}
}

// dial runs one connection attempt in the background (callers wait for it
// with their own contexts) bounded by OpTimeout.
func (s *Store) dial(d *dialAttempt) {
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.OpTimeout)
	defer cancel()
	c, err := s.dialConn(ctx)
	s.mu.Lock()
	s.dialing = nil
	switch {
	case err != nil:
		s.failures++
		backoff := min(surrealDialBackoffMin<<min(s.failures-1, 16), surrealDialBackoffMax)
		backoff = backoff/2 + rand.N(backoff/2+1)
		s.nextDial = time.Now().Add(backoff)
		s.lastErr = err
		d.err = fmt.Errorf("%w: surrealdb: %w", storage.ErrUnavailable, err)
		if s.failures == 1 {
			s.log.Warn("surrealdb connection failed; retrying", "url", s.url.Redacted(), "error", err)
		} else {
			s.log.Debug("surrealdb connection failed", "url", s.url.Redacted(), "attempt", s.failures, "error", err)
		}
	case s.closed:
		d.err = fmt.Errorf("%w: surrealdb store is closed", storage.ErrUnavailable)
		go s.closeConn(c)
	default:
		if s.connected {
			s.log.Info("surrealdb connection restored", "url", s.url.Redacted(), "failed_attempts", s.failures)
		}
		s.connected = true
		s.failures = 0
		s.lastErr = nil
		s.conn = c
	}
	s.mu.Unlock()
	close(d.done)
}

// queryResults is the per-statement outcome of one query call.
type queryResults = []surrealclient.QueryResult[cbor.RawMessage]

// statementError is a query whose statements failed for a reason that is
// not connectivity (syntax, THROW, constraint): not retried, not
// storage.ErrUnavailable.
type statementError struct {
	op  string
	err error
}

func (e *statementError) Error() string { return "surrealdb " + e.op + ": " + e.err.Error() }
func (e *statementError) Unwrap() error { return e.err }

// query runs sql on a usable connection under OpTimeout, retrying write
// conflicts. Connectivity failures are returned wrapped in
// storage.ErrUnavailable (and drop the connection); statement failures as
// *statementError, with the results (their Error fields tell which
// statement failed).
func (s *Store) query(ctx context.Context, op, sql string, vars map[string]any) (queryResults, error) {
	if err := ctx.Err(); err != nil {
		return nil, ctxError(ctx, op)
	}
	for attempt := 1; ; attempt++ {
		res, err := s.queryOnce(ctx, op, sql, vars)
		var se *statementError
		if err == nil || !errors.As(err, &se) || !isConflict(se.err) || attempt >= surrealConflictAttempts {
			return res, err
		}
		s.conflicts.Add(1)
		if !conflictPause(ctx, attempt) {
			return nil, ctxError(ctx, op)
		}
	}
}

func (s *Store) queryOnce(ctx context.Context, op, sql string, vars map[string]any) (queryResults, error) {
	c, err := s.acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer s.release(c)
	opCtx, cancel := context.WithTimeout(ctx, s.opts.OpTimeout)
	defer cancel()
	stop := context.AfterFunc(c.watch.ctx, cancel)
	defer stop()

	res, err := surrealclient.Query[cbor.RawMessage](opCtx, c.db, sql, vars)
	if err == nil {
		if res == nil {
			return nil, nil
		}
		return *res, nil
	}
	if errors.Is(err, &surrealclient.QueryError{}) && res != nil {
		return *res, &statementError{op: op, err: err}
	}
	if ctx.Err() != nil && errors.Is(ctx.Err(), context.Canceled) {
		// The caller gave up; the connection is fine.
		return nil, ctxError(ctx, op)
	}
	var rpcErr *surrealclient.RPCError
	if errors.As(err, &rpcErr) && rpcErr.Code != surrealAuthErrorCode {
		// Parse errors and the like: the request was answered.
		return nil, &statementError{op: op, err: err}
	}
	// Anything else is about the connection: it died (the watch says why),
	// the request timed out (the socket may be dead without knowing), the
	// session lost its authentication, or the transport failed.
	cause := c.watch.dead()
	switch {
	case cause != nil:
		err = cause
	case opCtx.Err() != nil && ctx.Err() == nil:
		err = fmt.Errorf("no answer within %s: %w", s.opts.OpTimeout, err)
	}
	s.drop(c, err)
	return nil, fmt.Errorf("%w: surrealdb %s: %w", storage.ErrUnavailable, op, err)
}

// ctxError reports the caller's context ending: a cancellation as such, a
// deadline as the database being unavailable in time.
func ctxError(ctx context.Context, op string) error {
	err := ctx.Err()
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: surrealdb %s: %w", storage.ErrUnavailable, op, err)
	}
	return fmt.Errorf("surrealdb %s: %w", op, err)
}

// isConflict reports whether err is a transaction that failed on a conflict
// with a concurrent one and may be retried.
func isConflict(err error) bool {
	msg := strings.ToLower(err.Error())
	return strings.Contains(msg, "can be retried") ||
		strings.Contains(msg, "transaction conflict") ||
		strings.Contains(msg, "write conflict") ||
		strings.Contains(msg, "read or write conflict")
}

// conflictPause sleeps a short, growing, jittered time before a conflicted
// transaction is retried; false if ctx ended first.
func conflictPause(ctx context.Context, attempt int) bool {
	d := time.Duration(min(attempt, 20)) * time.Millisecond
	d = d/2 + rand.N(d/2+1)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
