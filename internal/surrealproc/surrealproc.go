// Package surrealproc starts and supervises a local SurrealDB server process
// for --storage-type surrealdb-embedded: the orchestrator runs a
// `surreal`-compatible executable bound to loopback on a port chosen once,
// with generated root credentials and its data under
// {data-dir}/orchestrator.db, waits until it is healthy, restarts it (with
// backoff, forever) whenever it exits unexpectedly, and stops it on Stop.
//
// The child is started as
//
//	surreal start --bind 127.0.0.1:PORT --user U --log warn surrealkv://{data-dir}/orchestrator.db
//
// with the password in the environment (SURREAL_PASS, which the real server
// reads like --pass) rather than on the command line, where every local user
// could read it in the process list.
//
// Next to the store the supervisor keeps orchestrator.db.lock (an flock: a
// second orchestrator process on the same data directory fails at once) and
// orchestrator.db.credentials (mode 0600: the root credentials, generated
// with crypto/rand on first use and reused afterwards, because SurrealDB
// keeps the root user it creates from --user/--pass in the store).
package surrealproc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/provisioning/orchestrator/internal/devserver"
)

// Engines for Options.Engine.
const (
	EngineSurrealKV = "surrealkv"
	EngineRocksDB   = "rocksdb"
)

// Defaults for Options.
const (
	DefaultPath              = "surreal"
	DefaultStartTimeout      = 30 * time.Second
	DefaultRestartBackoff    = 250 * time.Millisecond
	DefaultMaxRestartBackoff = 30 * time.Second
	DefaultStopGrace         = 10 * time.Second
	DefaultLogLevel          = "warn"
)

// StoreName is the store's name under the data directory. The lock file
// ({DataDir}/orchestrator.db.lock) and the credentials file
// ({DataDir}/orchestrator.db.credentials) sit next to it.
const StoreName = "orchestrator.db"

// host is the only interface the server binds.
const host = "127.0.0.1"

// healthyResetAfter: a child that stayed up this long before exiting is
// restarted after the initial backoff again rather than the grown one.
const healthyResetAfter = time.Minute

// maxEarlyExits bounds how often the first start retries a child that exits
// before it is healthy (a wrong executable should fail in seconds, not after
// StartTimeout); a previous child's store lock is gone well within that.
const maxEarlyExits = 5

// Options configure Start.
type Options struct {
	// Path of the `surreal`-compatible executable, looked up in PATH when
	// it has no slash. Default "surreal".
	Path string
	// DataDir holds the store ({DataDir}/orchestrator.db). Required; it is
	// created if missing.
	DataDir string
	// Engine is the storage engine: "surrealkv" (default) or "rocksdb".
	Engine string
	// Logger receives supervision events and the server's output (one
	// record per line, lines truncated). Default slog.Default().
	Logger *slog.Logger
	// LogLevel is the server's --log level. Default "warn".
	LogLevel string
	// StartTimeout bounds the first start (until /health answers 200) and
	// each restart attempt. Default 30s.
	StartTimeout time.Duration
	// RestartBackoff is the delay before restarting a child that exited
	// unexpectedly; it doubles after every failed or short-lived attempt up
	// to MaxRestartBackoff. Defaults 250ms and 30s.
	RestartBackoff    time.Duration
	MaxRestartBackoff time.Duration
	// StopGrace is how long Stop waits after SIGTERM before SIGKILL.
	// Default 10s.
	StopGrace time.Duration
}

// Process is a supervised SurrealDB server. Its methods are safe for
// concurrent use.
type Process struct {
	opts      Options
	path      string // resolved executable
	log       *slog.Logger
	storePath string
	user      string
	pass      string
	lock      *os.File

	addr atomic.Value // string, 127.0.0.1:PORT; fixed once healthy
	// current child; nil while none runs
	mu       sync.Mutex
	child    *child
	restarts atomic.Int64

	stopCtx context.Context // canceled by Stop
	stop    context.CancelFunc
	done    chan struct{} // closed when supervision has ended (no child left)
	stopErr error         // set before done is closed
	out     *output
}

// child is one run of the executable.
type child struct {
	cmd     *exec.Cmd
	pid     int
	started time.Time
	exited  chan struct{} // closed once Wait returned
	waitErr error         // valid after exited is closed
}

// Start checks the executable, prepares the data directory, credentials and
// port, starts the server and waits until it is healthy. ctx bounds only the
// start-up; the process runs until Stop. Call Stop when done (the child also
// dies with this process: SIGKILL on parent death on Linux, and
// SURREAL_EXIT_WITH_PARENT=1 for servers that honour it).
func Start(ctx context.Context, o Options) (*Process, error) {
	if o.Path == "" {
		o.Path = DefaultPath
	}
	if o.Engine == "" {
		o.Engine = EngineSurrealKV
	}
	if o.Engine != EngineSurrealKV && o.Engine != EngineRocksDB {
		return nil, fmt.Errorf("surrealproc: unknown storage engine %q (use %s or %s)", o.Engine, EngineSurrealKV, EngineRocksDB)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.LogLevel == "" {
		o.LogLevel = DefaultLogLevel
	}
	if o.StartTimeout <= 0 {
		o.StartTimeout = DefaultStartTimeout
	}
	if o.RestartBackoff <= 0 {
		o.RestartBackoff = DefaultRestartBackoff
	}
	if o.MaxRestartBackoff <= 0 {
		o.MaxRestartBackoff = DefaultMaxRestartBackoff
	}
	if o.MaxRestartBackoff < o.RestartBackoff {
		o.MaxRestartBackoff = o.RestartBackoff
	}
	if o.StopGrace <= 0 {
		o.StopGrace = DefaultStopGrace
	}

	path, err := exec.LookPath(o.Path)
	if err != nil {
		return nil, fmt.Errorf("SurrealDB executable %q not found or not executable (set --surreal-path to a `surreal`-compatible server executable): %w", o.Path, err)
	}
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	if o.DataDir == "" {
		return nil, errors.New("surrealproc: no data directory")
	}
	dataDir, err := filepath.Abs(o.DataDir)
	if err != nil {
		return nil, fmt.Errorf("surrealproc: data directory: %w", err)
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("surrealproc: create data directory: %w", err)
	}
	storePath := filepath.Join(dataDir, StoreName)

	lock, err := lockStore(storePath + ".lock")
	if err != nil {
		return nil, err
	}
	user, pass, err := credentials(storePath, o.Logger)
	if err != nil {
		unlockStore(lock)
		return nil, err
	}
	port, err := devserver.FreePort(host)
	if err != nil {
		unlockStore(lock)
		return nil, fmt.Errorf("surrealproc: %w", err)
	}

	p := &Process{
		opts:      o,
		path:      path,
		log:       o.Logger.With("component", "surrealdb"),
		storePath: storePath,
		user:      user,
		pass:      pass,
		lock:      lock,
		done:      make(chan struct{}),
	}
	p.stopCtx, p.stop = context.WithCancel(context.Background())
	p.out = newOutput(p.log)
	p.addr.Store(net.JoinHostPort(host, strconv.Itoa(port)))

	started := make(chan error, 1)
	go p.supervise(ctx, started)
	if err := <-started; err != nil {
		<-p.done // supervise has released the lock
		return nil, err
	}
	return p, nil
}

// URL is the server's WebSocket endpoint, ws://127.0.0.1:PORT (what
// surrealdb.go expects; it appends /rpc). It stays the same across restarts.
func (p *Process) URL() string { return "ws://" + p.Addr() }

// HTTPURL is http://127.0.0.1:PORT (GET /health, POST /rpc).
func (p *Process) HTTPURL() string { return "http://" + p.Addr() }

// Addr is 127.0.0.1:PORT.
func (p *Process) Addr() string { return p.addr.Load().(string) }

// Username and Password are the root credentials.
func (p *Process) Username() string { return p.user }

// Password is the root user's password.
func (p *Process) Password() string { return p.pass }

// StorePath is the on-disk store, {DataDir}/orchestrator.db.
func (p *Process) StorePath() string { return p.storePath }

// Restarts counts how often the server was restarted, and healthy again,
// after it exited unexpectedly.
func (p *Process) Restarts() int64 { return p.restarts.Load() }

// PID is the running server's process id, 0 while none runs (between a
// crash and its restart, or after Stop).
func (p *Process) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.child == nil {
		return 0
	}
	select {
	case <-p.child.exited:
		return 0
	default:
		return p.child.pid
	}
}

// Healthy reports whether GET /health answers 200 now.
func (p *Process) Healthy(ctx context.Context) error {
	return healthCheck(ctx, p.HTTPURL())
}

// Output returns the server's most recent output lines (bounded), for
// diagnostics.
func (p *Process) Output() string { return p.out.recent() }

// Stop ends supervision and stops the server: SIGTERM, then SIGKILL after
// Options.StopGrace. It waits until the process has exited and releases the
// data directory. It is idempotent; every call returns the same result.
func (p *Process) Stop() error {
	p.stop()
	<-p.done
	return p.stopErr
}

// supervise owns every child: it starts them, waits on them, restarts them
// and stops the last one. It runs on a locked OS thread so that the
// parent-death signal (Linux: sent when the thread that started the child
// exits) only fires when supervision ends or the whole process dies.
func (p *Process) supervise(ctx context.Context, started chan<- error) {
	runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
	defer func() {
		unlockStore(p.lock)
		close(p.done)
	}()

	c, err := p.startFirst(ctx)
	started <- err
	if err != nil {
		return
	}
	p.log.Info("SurrealDB started", "url", p.URL(), "pid", c.pid, "store", p.storeURL(), "executable", p.path)

	backoff := p.opts.RestartBackoff
	for {
		select {
		case <-p.stopCtx.Done():
			p.stopErr = p.terminate(c)
			p.log.Info("SurrealDB stopped", "pid", c.pid)
			return
		case <-c.exited:
		}
		uptime := time.Since(c.started)
		if uptime >= healthyResetAfter {
			backoff = p.opts.RestartBackoff
		}
		p.log.Error("SurrealDB exited unexpectedly; restarting it",
			"pid", c.pid, "status", exitStatus(c.waitErr), "uptime", uptime.Round(time.Millisecond),
			"restart_in", backoff, "last_output", p.out.recent())

		// Restart with backoff until a child is healthy or Stop is called.
		for {
			if !p.sleep(backoff) {
				return
			}
			backoff = min(backoff*2, p.opts.MaxRestartBackoff)
			nc, err := p.attempt(p.stopCtx)
			if err == nil {
				c = nc
				n := p.restarts.Add(1)
				p.log.Warn("SurrealDB restarted", "url", p.URL(), "pid", c.pid, "restarts", n)
				break
			}
			if errors.Is(err, errStopped) {
				return
			}
			p.log.Error("SurrealDB restart failed; retrying", "error", err, "retry_in", backoff)
		}
	}
}

var errStopped = errors.New("surrealproc: stopped")

// startFirst makes the first start: attempts until StartTimeout, picking a
// new port if the chosen one got taken meanwhile.
func (p *Process) startFirst(ctx context.Context) (*child, error) {
	ctx, cancel := context.WithTimeout(ctx, p.opts.StartTimeout)
	defer cancel()
	backoff := p.opts.RestartBackoff
	early := 0
	for {
		c, err := p.attempt(ctx)
		if err == nil {
			return c, nil
		}
		if errors.Is(err, errStopped) {
			return nil, err
		}
		var ee *earlyExitError
		if errors.As(err, &ee) {
			early++
		}
		if ctx.Err() != nil || early >= maxEarlyExits {
			return nil, fmt.Errorf("start SurrealDB (%s start --bind %s ... %s): %w", p.path, p.Addr(), p.storeURL(), err)
		}
		if !portFree(p.Addr()) {
			if port, perr := devserver.FreePort(host); perr == nil {
				p.log.Warn("SurrealDB port was taken; using another", "old", p.Addr(), "port", port)
				p.addr.Store(net.JoinHostPort(host, strconv.Itoa(port)))
			}
		}
		p.log.Warn("SurrealDB did not start; retrying", "error", err, "retry_in", backoff)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return nil, fmt.Errorf("start SurrealDB (%s start --bind %s ... %s): %w (last attempt: %w)", p.path, p.Addr(), p.storeURL(), ctx.Err(), err)
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

// earlyExitError: the child exited before it was healthy.
type earlyExitError struct {
	status string
	output string
}

func (e *earlyExitError) Error() string {
	if e.output == "" {
		return "server exited before it was healthy (" + e.status + "), no output"
	}
	return "server exited before it was healthy (" + e.status + "); its last output:\n" + e.output
}

// attempt starts one child and waits until it is healthy (bounded by
// StartTimeout and ctx). On failure no child is left running.
func (p *Process) attempt(ctx context.Context) (*child, error) {
	ctx, cancel := context.WithTimeout(ctx, p.opts.StartTimeout)
	defer cancel()

	p.out.reset()
	if !portFree(p.Addr()) {
		// Checked first so that a /health answer below comes from our
		// child, not from whatever holds the port.
		return nil, fmt.Errorf("%s is in use by another process", p.Addr())
	}
	cmd := exec.Command(p.path, "start",
		"--bind", p.Addr(),
		"--user", p.user,
		"--log", p.opts.LogLevel,
		p.storeURL())
	cmd.Env = append(childEnv(os.Environ()), "SURREAL_PASS="+p.pass, "SURREAL_EXIT_WITH_PARENT=1")
	cmd.Dir = filepath.Dir(p.storePath)
	cmd.Stdout = p.out
	cmd.Stderr = p.out
	cmd.SysProcAttr = sysProcAttr()
	// Output copying must not keep Wait from returning if the server left
	// a descendant holding the pipe.
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("run %s: %w", p.path, err)
	}
	c := &child{cmd: cmd, pid: cmd.Process.Pid, started: time.Now(), exited: make(chan struct{})}
	go func() {
		c.waitErr = cmd.Wait()
		close(c.exited)
	}()
	p.mu.Lock()
	p.child = c
	p.mu.Unlock()

	url := p.HTTPURL()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		hctx, hcancel := context.WithTimeout(ctx, 2*time.Second)
		last = healthCheck(hctx, url)
		hcancel()
		if last == nil {
			select {
			case <-c.exited:
			default:
				return c, nil
			}
		}
		select {
		case <-c.exited:
			return nil, &earlyExitError{status: exitStatus(c.waitErr), output: p.out.recent()}
		case <-ctx.Done():
			if p.stopCtx.Err() != nil {
				_ = p.terminate(c)
				return nil, errStopped
			}
			_ = p.kill(c)
			return nil, fmt.Errorf("server not healthy (%w; GET %s/health: %w); its last output:\n%s", ctx.Err(), url, last, p.out.recent())
		case <-tick.C:
		}
	}
}

// sleep waits d; false if Stop was called meanwhile.
func (p *Process) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-p.stopCtx.Done():
		return false
	}
}

// terminate stops c gracefully (SIGTERM, SIGKILL after StopGrace) and waits
// until it has exited.
func (p *Process) terminate(c *child) error {
	select {
	case <-c.exited:
		return nil
	default:
	}
	if err := terminateSignal(c.cmd.Process); err != nil {
		return p.kill(c)
	}
	t := time.NewTimer(p.opts.StopGrace)
	defer t.Stop()
	select {
	case <-c.exited:
		return nil
	case <-t.C:
		p.log.Warn("SurrealDB did not stop after SIGTERM; killing it", "pid", c.pid, "grace", p.opts.StopGrace)
		if err := p.kill(c); err != nil {
			return err
		}
		return fmt.Errorf("surrealproc: SurrealDB (pid %d) did not stop within %s of SIGTERM and was killed", c.pid, p.opts.StopGrace)
	}
}

// kill SIGKILLs c and waits until it has exited.
func (p *Process) kill(c *child) error {
	_ = c.cmd.Process.Kill()
	<-c.exited
	return nil
}

func (p *Process) storeURL() string {
	return p.opts.Engine + "://" + p.storePath
}

// childEnv keeps what the server process needs of env (PATH, HOME, the
// locale, time zone, temp dir, and NODE_* for an engine packaged for
// Node.js) and nothing else: not the orchestrator's secrets
// (ORCHESTRATOR_AUTH_TOKEN, ...) and not SURREAL_* variables that would
// override or weaken what the supervisor passes, such as
// SURREAL_UNAUTHENTICATED=true.
func childEnv(env []string) []string {
	keep := map[string]bool{"PATH": true, "HOME": true, "USER": true, "LANG": true, "LANGUAGE": true, "TZ": true, "TMPDIR": true}
	out := make([]string, 0, len(keep))
	for _, kv := range env {
		name, _, ok := strings.Cut(kv, "=")
		if ok && (keep[name] || strings.HasPrefix(name, "LC_") || strings.HasPrefix(name, "NODE_")) {
			out = append(out, kv)
		}
	}
	return out
}

// healthClient keeps no idle connections to a server that may be killed.
var healthClient = &http.Client{
	Timeout:   2 * time.Second,
	Transport: &http.Transport{DisableKeepAlives: true},
}

func healthCheck(ctx context.Context, baseURL string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, baseURL+"/health", nil)
	if err != nil {
		return err
	}
	resp, err := healthClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
}

func portFree(addr string) bool {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	_ = l.Close()
	return true
}

func exitStatus(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// storedCredentials is the credentials file's content.
type storedCredentials struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

// credentials returns the root credentials for the store, generating them
// (crypto/rand) on first use. They are kept in
// {DataDir}/orchestrator.db.credentials (mode 0600) because SurrealDB
// persists the root user that --user/--pass create in the store and only
// creates it while no root user exists: fresh credentials on every start
// could not sign in to an existing store.
func credentials(storePath string, log *slog.Logger) (user, pass string, err error) {
	file := storePath + ".credentials"
	b, err := os.ReadFile(file)
	switch {
	case err == nil:
		var c storedCredentials
		if err := json.Unmarshal(b, &c); err != nil || c.Username == "" || c.Password == "" {
			return "", "", fmt.Errorf("surrealproc: credentials file %s is damaged (remove it only together with the store %s)", file, storePath)
		}
		return c.Username, c.Password, nil
	case !errors.Is(err, fs.ErrNotExist):
		return "", "", fmt.Errorf("surrealproc: read credentials: %w", err)
	}
	if _, err := os.Stat(storePath); err == nil {
		log.Warn("SurrealDB store exists without a credentials file; generating new root credentials, which a SurrealDB server only accepts if the store has no root user yet",
			"store", storePath, "credentials", file)
	}
	c := storedCredentials{Username: "orchestrator_" + randomHex(4), Password: randomHex(24)}
	b, _ = json.Marshal(c)
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return "", "", fmt.Errorf("surrealproc: write credentials: %w", err)
	}
	if err := os.Rename(tmp, file); err != nil {
		_ = os.Remove(tmp)
		return "", "", fmt.Errorf("surrealproc: write credentials: %w", err)
	}
	return c.Username, c.Password, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b)
}
