package testsupport

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// surrealStartTimeout bounds how long StartSurreal waits for the server to
// report that it listens and is healthy.
const surrealStartTimeout = 60 * time.Second

// surrealStopTimeout bounds how long a graceful stop (SIGTERM) may take before
// the process is killed.
const surrealStopTimeout = 15 * time.Second

// SurrealPath returns the `surreal`-compatible executable the tests use:
// $ORCHESTRATOR_SURREAL_PATH when set (e.g. a real SurrealDB binary; the test
// fails if it is not executable), else the repo's test server
// internal/testsupport/surrealserver/surreal, which serves the real SurrealDB
// engine from the npm package @surrealdb/node (installed by `npm install` in
// the repo root) and accepts `surreal start --bind ... --user ... --pass ...
// <store>` like the real binary.
//
// Without node on PATH or node_modules/@surrealdb/node the test is skipped, or
// fails when ORCHESTRATOR_REQUIRE_SURREALDB=1 (CI sets it, so CI can never
// pass by skipping).
func SurrealPath(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("ORCHESTRATOR_SURREAL_PATH"); p != "" {
		resolved, err := exec.LookPath(p)
		if err != nil {
			t.Fatalf("ORCHESTRATOR_SURREAL_PATH=%q is not an executable: %v", p, err)
		}
		return resolved
	}
	root := RepoRoot(t)
	script := filepath.Join(root, "internal", "testsupport", "surrealserver", "surreal")
	var problem string
	if _, err := exec.LookPath("node"); err != nil {
		problem = "node (Node.js) is not on PATH"
	} else if _, err := os.Stat(filepath.Join(root, "node_modules", "@surrealdb", "node", "package.json")); err != nil {
		problem = "node_modules/@surrealdb/node is missing"
	} else if _, err := os.Stat(filepath.Join(root, "node_modules", "ws", "package.json")); err != nil {
		problem = "node_modules/ws is missing"
	} else if _, err := exec.LookPath(script); err != nil {
		problem = fmt.Sprintf("%s is not executable: %v", script, err)
	}
	if problem == "" {
		return script
	}
	msg := "SurrealDB for tests not available: " + problem +
		"; run `npm install` in the repo root (it installs the real SurrealDB engine, @surrealdb/node), " +
		"or set ORCHESTRATOR_SURREAL_PATH to a surreal executable"
	if os.Getenv("ORCHESTRATOR_REQUIRE_SURREALDB") == "1" {
		t.Fatal(msg + " (ORCHESTRATOR_REQUIRE_SURREALDB=1, so this is a failure, not a skip)")
	}
	t.Skip(msg)
	return ""
}

// SurrealServer is a SurrealDB server process started for a test.
type SurrealServer struct {
	// URL is the WebSocket endpoint for surrealdb.go, ws://127.0.0.1:PORT.
	URL string
	// Addr is 127.0.0.1:PORT; HTTPURL is http://127.0.0.1:PORT.
	Addr, HTTPURL string
	// User and Pass are the root credentials (random per server).
	User, Pass string
	// Store is the store argument, e.g. mem:// or surrealkv:///tmp/x.
	Store string

	path string

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{} // closed when cmd has exited
	output *lineLog
}

// StartSurreal starts a SurrealDB server on a free loopback port with random
// root credentials and the given store ("" means mem://; else mem://,
// surrealkv://PATH or rocksdb://PATH, PATH usually under t.TempDir()), waits
// until it is listening and healthy, and stops it when the test ends.
func StartSurreal(t testing.TB, store string) *SurrealServer {
	t.Helper()
	if store == "" {
		store = "mem://"
	}
	s := &SurrealServer{
		User:  "root_" + randomHex(t, 4),
		Pass:  randomHex(t, 16),
		Store: store,
		path:  SurrealPath(t),
	}
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("surreal server output:\n%s", s.Output())
		}
	})
	s.start(t, "127.0.0.1:0")
	return s
}

// Kill kills the server process (SIGKILL, no clean shutdown), as in a crash,
// and waits until it has exited. Restart brings it back.
func (s *SurrealServer) Kill() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// Stop stops the server gracefully (SIGTERM; SIGKILL if it has not exited
// after a while) and waits until it has exited. It is a no-op if the server
// is not running.
func (s *SurrealServer) Stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(surrealStopTimeout):
		_ = cmd.Process.Kill()
		<-done
	}
}

// Running reports whether the server process is alive.
func (s *SurrealServer) Running() bool {
	s.mu.Lock()
	done := s.done
	s.mu.Unlock()
	if done == nil {
		return false
	}
	select {
	case <-done:
		return false
	default:
		return true
	}
}

// Restart stops the server if it is still running (gracefully) and starts it
// again on the same port with the same store and credentials, waiting until it
// is healthy. Data in an on-disk store survives; a mem:// store starts empty.
func (s *SurrealServer) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	// The port was just released; another process could grab it in between,
	// which is unlikely on loopback, so retry briefly before giving up.
	var err error
	for attempt := 0; attempt < 20; attempt++ {
		if err = s.launch(s.Addr); err == nil {
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("restart surreal server on %s: %v\noutput:\n%s", s.Addr, err, s.Output())
}

// Output returns everything the server process(es) printed so far.
func (s *SurrealServer) Output() string {
	s.mu.Lock()
	out := s.output
	s.mu.Unlock()
	if out == nil {
		return ""
	}
	return out.String()
}

func (s *SurrealServer) start(t testing.TB, bind string) {
	t.Helper()
	if err := s.launch(bind); err != nil {
		t.Fatalf("start surreal server (%s %s): %v\noutput:\n%s", s.path, s.Store, err, s.Output())
	}
}

// launch starts the process bound to bind and waits until it is ready.
func (s *SurrealServer) launch(bind string) error {
	s.mu.Lock()
	if s.output == nil {
		s.output = &lineLog{}
	}
	out := s.output
	s.mu.Unlock()

	ready := make(chan string, 1)
	out.watch(func(line string) {
		if addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening on "); ok {
			select {
			case ready <- addr:
			default:
			}
		}
	})
	defer out.watch(nil)

	fmt.Fprintf(out, "\n=== %s start --bind %s %s\n", filepath.Base(s.path), bind, s.Store)
	cmd := exec.Command(s.path, "start",
		"--bind", bind,
		"--user", s.User,
		"--pass", s.Pass,
		"--log", "info",
		s.Store)
	cmd.Env = append(os.Environ(), "SURREAL_EXIT_WITH_PARENT=1")
	cmd.Stdout = out
	cmd.Stderr = out
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(done)
	}()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()

	fail := func(err error) error {
		_ = cmd.Process.Kill()
		<-done
		return err
	}
	deadline := time.After(surrealStartTimeout)
	var addr string
	select {
	case addr = <-ready:
	case <-done:
		return fmt.Errorf("surreal server exited before listening: %w", exitError(waitErr))
	case <-deadline:
		return fail(errors.New("surreal server did not report `listening on ADDR` in time"))
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fail(fmt.Errorf("surreal server reported a bad address %q: %w", addr, err))
	}
	httpURL := "http://" + addr
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		resp, err := client.Get(httpURL + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case <-done:
			return fmt.Errorf("surreal server exited before it was healthy: %w", exitError(waitErr))
		case <-deadline:
			return fail(errors.New("surreal server did not become healthy in time"))
		case <-time.After(50 * time.Millisecond):
		}
	}
	// The address fields are set once (tests read them without locking);
	// a restart binds the same address.
	if s.Addr == "" {
		s.Addr, s.HTTPURL, s.URL = addr, httpURL, "ws://"+addr
	} else if addr != s.Addr {
		return fail(fmt.Errorf("surreal server restarted on %s, want %s", addr, s.Addr))
	}
	return nil
}

// exitError describes how a process ended (nil from Wait means status 0).
func exitError(err error) error {
	if err == nil {
		return errors.New("exit status 0")
	}
	return err
}

func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("random: %v", err)
	}
	return hex.EncodeToString(b)
}

// lineLog collects a process's output and hands each complete line to an
// optional watcher.
type lineLog struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	partial []byte
	watcher func(string)
}

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		line := string(l.partial[:i])
		l.partial = l.partial[i+1:]
		if l.watcher != nil {
			l.watcher(line)
		}
	}
	return len(p), nil
}

func (l *lineLog) watch(f func(string)) {
	l.mu.Lock()
	l.watcher = f
	l.mu.Unlock()
}

func (l *lineLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}
