package surrealproc_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/provisioning/orchestrator/internal/surrealproc"
	"github.com/provisioning/orchestrator/internal/testsupport"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/storage/storagetest"
	"github.com/provisioning/orchestrator/storage/surrealdb"
)

// syncBuffer is a log sink safe for the supervisor's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func start(t *testing.T, dataDir string) (*surrealproc.Process, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	p, err := surrealproc.Start(ctx, surrealproc.Options{
		Path:         testsupport.SurrealPath(t),
		DataDir:      dataDir,
		Logger:       slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		StartTimeout: 60 * time.Second,
	})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		_ = p.Stop()
		if t.Failed() {
			t.Logf("supervisor log:\n%s", logs.String())
		}
	})
	return p, logs
}

func health(url string) error {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url + "/health")
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return errors.New(resp.Status)
	}
	return nil
}

// alive reports whether pid names a live (not zombie) process.
func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile(filepath.Join("/proc", itoa(pid), "stat"))
	if err != nil {
		return true // no procfs: trust kill(0)
	}
	// pid (comm) STATE ...
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}

func itoa(n int) string { return strconv.Itoa(n) }

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestStartHealthyStop(t *testing.T) {
	dir := t.TempDir()
	p, _ := start(t, dir)

	if !strings.HasPrefix(p.URL(), "ws://127.0.0.1:") || p.HTTPURL() != "http://"+p.Addr() {
		t.Fatalf("URL %q, HTTPURL %q, Addr %q", p.URL(), p.HTTPURL(), p.Addr())
	}
	if err := health(p.HTTPURL()); err != nil {
		t.Fatalf("GET /health: %v", err)
	}
	if p.Username() == "" || len(p.Password()) < 32 {
		t.Fatalf("weak or missing credentials: %q / %d chars", p.Username(), len(p.Password()))
	}
	if p.StorePath() != filepath.Join(dir, "orchestrator.db") {
		t.Fatalf("StorePath %q", p.StorePath())
	}
	if _, err := os.Stat(p.StorePath()); err != nil {
		t.Fatalf("store not created: %v", err)
	}
	pid := p.PID()
	if pid == 0 || !alive(pid) {
		t.Fatalf("PID %d not alive", pid)
	}
	// The password is not on the command line (readable by every user).
	if cmdline, err := os.ReadFile(filepath.Join("/proc", itoa(pid), "cmdline")); err == nil {
		if bytes.Contains(cmdline, []byte(p.Password())) {
			t.Fatalf("password on the command line: %q", cmdline)
		}
		if !bytes.Contains(cmdline, []byte("surrealkv://"+p.StorePath())) {
			t.Fatalf("command line %q lacks the store", cmdline)
		}
	}
	// A second supervisor on the same data directory is refused at once.
	_, err := surrealproc.Start(context.Background(), surrealproc.Options{Path: testsupport.SurrealPath(t), DataDir: dir})
	if err == nil || !strings.Contains(err.Error(), "in use by another orchestrator process") {
		t.Fatalf("second Start on the same data dir: %v", err)
	}

	if err := p.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if alive(pid) {
		t.Fatalf("pid %d still alive after Stop", pid)
	}
	if p.PID() != 0 {
		t.Fatalf("PID() = %d after Stop", p.PID())
	}
	if err := health(p.HTTPURL()); err == nil {
		t.Fatal("/health still answers after Stop")
	}
	if err := p.Stop(); err != nil { // idempotent
		t.Fatalf("second Stop: %v", err)
	}

	// Credentials survive a restart of the supervisor (SurrealDB keeps the
	// root user in the store), and the data directory is free again.
	p2, _ := start(t, dir)
	if p2.Username() != p.Username() || p2.Password() != p.Password() {
		t.Fatal("credentials changed across supervisor restarts")
	}
	if err := health(p2.HTTPURL()); err != nil {
		t.Fatalf("GET /health after restart: %v", err)
	}
}

func TestRestartAfterKill(t *testing.T) {
	p, logs := start(t, t.TempDir())
	url := p.HTTPURL()
	pid := p.PID()
	marker := filepath.Join(p.StorePath(), "..", "marker")
	if err := os.WriteFile(marker, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}

	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill %d: %v", pid, err)
	}
	waitFor(t, "the supervisor to restart the server", 60*time.Second, func() bool {
		return p.Restarts() == 1 && p.PID() != 0 && p.PID() != pid && health(url) == nil
	})
	if p.HTTPURL() != url {
		t.Fatalf("URL changed across the restart: %s -> %s", url, p.HTTPURL())
	}
	if alive(pid) {
		t.Fatalf("old pid %d still alive", pid)
	}
	if !strings.Contains(logs.String(), "exited unexpectedly") || !strings.Contains(logs.String(), "SurrealDB restarted") {
		t.Fatalf("restart not logged:\n%s", logs.String())
	}
	if _, err := os.Stat(p.StorePath()); err != nil {
		t.Fatalf("store gone after restart: %v", err)
	}

	// Twice more: the counter follows, the URL stays.
	for i := 2; i <= 3; i++ {
		pid = p.PID()
		_ = syscall.Kill(pid, syscall.SIGKILL)
		waitFor(t, "restart", 60*time.Second, func() bool {
			return p.Restarts() == int64(i) && p.PID() != 0 && p.PID() != pid && health(url) == nil
		})
	}

	newPID := p.PID()
	if err := p.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if alive(newPID) {
		t.Fatalf("pid %d alive after Stop", newPID)
	}
	time.Sleep(500 * time.Millisecond)
	if p.Restarts() != 3 {
		t.Fatalf("Restarts() = %d after Stop, want 3 (Stop must not restart)", p.Restarts())
	}
}

func TestMissingExecutable(t *testing.T) {
	dir := t.TempDir()
	for _, path := range []string{"surreal-does-not-exist-xyz", filepath.Join(dir, "nope", "surreal")} {
		_, err := surrealproc.Start(context.Background(), surrealproc.Options{Path: path, DataDir: dir})
		if err == nil {
			t.Fatalf("Start(%q) succeeded", path)
		}
		if !strings.Contains(err.Error(), "--surreal-path") || !strings.Contains(err.Error(), path) {
			t.Fatalf("error does not name --surreal-path and %q: %v", path, err)
		}
	}
}

func TestExecutableThatIsNotAServer(t *testing.T) {
	// An executable that exits at once fails Start quickly with its output,
	// rather than after the whole StartTimeout.
	dir := t.TempDir()
	script := filepath.Join(dir, "fake-surreal")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho 'error: not a surreal server' >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	_, err := surrealproc.Start(context.Background(), surrealproc.Options{Path: script, DataDir: dir, StartTimeout: time.Minute})
	if err == nil {
		t.Fatal("Start succeeded")
	}
	if !strings.Contains(err.Error(), "not a surreal server") || !strings.Contains(err.Error(), "exit status 3") {
		t.Fatalf("error lacks the output/status: %v", err)
	}
	if d := time.Since(began); d > 20*time.Second {
		t.Fatalf("took %s", d)
	}
	// The data directory is free again.
	if _, err := surrealproc.Start(context.Background(), surrealproc.Options{Path: script, DataDir: dir, StartTimeout: time.Second}); err != nil &&
		strings.Contains(err.Error(), "in use") {
		t.Fatalf("lock not released: %v", err)
	}
}

func TestUnknownEngine(t *testing.T) {
	_, err := surrealproc.Start(context.Background(), surrealproc.Options{Path: "/bin/sh", DataDir: t.TempDir(), Engine: "tikv"})
	if err == nil || !strings.Contains(err.Error(), "tikv") {
		t.Fatalf("err = %v", err)
	}
}

func TestDataSurvivesKillAndSupervisorRestart(t *testing.T) {
	dir := t.TempDir()
	p, _ := start(t, dir)
	ctx := storage.WithActor(context.Background(), "test")
	open := func(p *surrealproc.Process) *surrealdb.Store {
		t.Helper()
		s, err := surrealdb.New(ctx, surrealdb.Options{
			URL: p.URL(), Username: p.Username(), Password: p.Password(), OpTimeout: 5 * time.Second,
		})
		if err != nil {
			t.Fatalf("surrealdb.New: %v", err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
	s := open(p)
	task := storage.Task{
		ID: storagetest.NewID(), Name: "survivor", Status: storage.StatusRunning,
		CreatedAt: time.Now().UTC().Truncate(time.Microsecond), Version: 1,
	}
	if err := s.Create(ctx, task); err != nil {
		t.Fatalf("Create: %v", err)
	}

	pid := p.PID()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var got storage.Task
	waitFor(t, "the task to be readable after the restart", 60*time.Second, func() bool {
		var err error
		got, err = s.Get(ctx, task.ID)
		if err != nil && !errors.Is(err, storage.ErrUnavailable) {
			t.Fatalf("Get: %v", err)
		}
		return err == nil
	})
	if got.Name != "survivor" || p.Restarts() != 1 {
		t.Fatalf("Get = %+v, restarts %d", got, p.Restarts())
	}

	// A new supervisor on the same data directory (new port) signs in with
	// the persisted credentials and finds the task.
	_ = s.Close()
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	p2, _ := start(t, dir)
	got, err := open(p2).Get(ctx, task.ID)
	if err != nil || got.Name != "survivor" {
		t.Fatalf("Get after supervisor restart = %+v, %v", got, err)
	}
}

func TestStopDuringRestartBackoff(t *testing.T) {
	logs := &syncBuffer{}
	p, err := surrealproc.Start(context.Background(), surrealproc.Options{
		Path:           testsupport.SurrealPath(t),
		DataDir:        t.TempDir(),
		Logger:         slog.New(slog.NewTextHandler(logs, nil)),
		RestartBackoff: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	pid := p.PID()
	_ = syscall.Kill(pid, syscall.SIGKILL)
	waitFor(t, "the crash to be noticed", 10*time.Second, func() bool { return p.PID() == 0 })
	began := time.Now()
	if err := p.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if d := time.Since(began); d > 2*time.Second {
		t.Fatalf("Stop waited %s for the backoff", d)
	}
	time.Sleep(300 * time.Millisecond)
	if p.PID() != 0 || p.Restarts() != 0 {
		t.Fatalf("restarted after Stop: pid %d, restarts %d", p.PID(), p.Restarts())
	}
	if err := health(p.HTTPURL()); err == nil {
		t.Fatal("a server answers after Stop")
	}
}

func TestRocksDBEngine(t *testing.T) {
	p, err := surrealproc.Start(context.Background(), surrealproc.Options{
		Path: testsupport.SurrealPath(t), DataDir: t.TempDir(), Engine: surrealproc.EngineRocksDB,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	if err := health(p.HTTPURL()); err != nil {
		t.Fatal(err)
	}
	cmdline, err := os.ReadFile(filepath.Join("/proc", itoa(p.PID()), "cmdline"))
	if err == nil && !bytes.Contains(cmdline, []byte("rocksdb://"+p.StorePath())) {
		t.Fatalf("command line %q", cmdline)
	}
}

// TestServerDiesWithOrchestrator: when the supervising process is killed
// (no Stop), the server does not outlive it.
func TestServerDiesWithOrchestrator(t *testing.T) {
	if os.Getenv("SURREALPROC_HELPER_DIR") != "" {
		return // the helper's own run of this test: see TestHelperSupervisor
	}
	surreal := testsupport.SurrealPath(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperSupervisor$", "-test.count=1")
	cmd.Env = append(os.Environ(), "SURREALPROC_HELPER_DIR="+t.TempDir(), "SURREALPROC_HELPER_PATH="+surreal)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if pid, ok := strings.CutPrefix(sc.Text(), "SURREAL_PID="); ok {
				lines <- pid
			}
		}
		close(lines)
	}()
	var pid int
	select {
	case s, ok := <-lines:
		if !ok {
			t.Fatal("helper ended without starting a server")
		}
		pid, _ = strconv.Atoi(s)
	case <-time.After(90 * time.Second):
		t.Fatal("helper did not start a server")
	}
	if !alive(pid) {
		t.Fatalf("server pid %d not alive", pid)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	waitFor(t, "the server to die with its supervisor", 10*time.Second, func() bool { return !alive(pid) })
}

// TestHelperSupervisor is the supervising process of
// TestServerDiesWithOrchestrator; it does nothing in a normal run.
func TestHelperSupervisor(t *testing.T) {
	dir := os.Getenv("SURREALPROC_HELPER_DIR")
	if dir == "" {
		t.Skip("helper process only")
	}
	p, err := surrealproc.Start(context.Background(), surrealproc.Options{Path: os.Getenv("SURREALPROC_HELPER_PATH"), DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("SURREAL_PID=%d\n", p.PID())
	time.Sleep(time.Hour) // killed by the parent test
}
