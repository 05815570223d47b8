//go:build !nosurrealdb

package app

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/provisioning/orchestrator/internal/testsupport"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/storage/storagetest"
)

func openEmbedded(t *testing.T, dataDir string) (storage.Store, *embeddedSurreal) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	st, err := OpenStore(ctx, StoreConfig{
		Type:        StorageSurrealEmbedded,
		DataDir:     dataDir,
		SurrealPath: testsupport.SurrealPath(t),
	}, nil)
	if err != nil {
		t.Fatalf("OpenStore: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	es, ok := st.(*embeddedSurreal)
	if !ok {
		t.Fatalf("OpenStore returned %T", st)
	}
	return st, es
}

func pidAlive(pid int) bool { return pid > 0 && syscall.Kill(pid, 0) == nil }

func TestOpenStoreSurrealEmbedded(t *testing.T) {
	dir := t.TempDir()
	st, es := openEmbedded(t, dir)
	ctx := storage.WithActor(context.Background(), "test")

	task := storage.Task{
		ID: storagetest.NewID(), Name: "embedded", Command: "create_server", Status: storage.StatusPending,
		CreatedAt: time.Now().UTC().Truncate(time.Microsecond), Version: 1,
	}
	if err := st.Create(ctx, task); err != nil {
		t.Fatalf("Create: %v", err)
	}
	got, err := st.Get(ctx, task.ID)
	if err != nil || got.Name != "embedded" {
		t.Fatalf("Get = %+v, %v", got, err)
	}

	// Kill the database process: operations fail with ErrUnavailable (never
	// another error) until the supervisor has restarted it, then recover by
	// themselves with the data intact.
	pid := es.proc.PID()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill %d: %v", pid, err)
	}
	sawUnavailable := false
	deadline := time.Now().Add(60 * time.Second)
	for {
		octx, cancel := context.WithTimeout(ctx, 5*time.Second)
		got, err = st.Get(octx, task.ID)
		cancel()
		if err == nil {
			break
		}
		if !errors.Is(err, storage.ErrUnavailable) {
			t.Fatalf("Get during the outage: %v, want ErrUnavailable", err)
		}
		sawUnavailable = true
		if time.Now().After(deadline) {
			t.Fatalf("store did not recover: %v (restarts %d)\nserver output:\n%s", err, es.proc.Restarts(), es.proc.Output())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !sawUnavailable {
		t.Fatal("no operation failed with ErrUnavailable while the database was down")
	}
	if got.ID != task.ID || got.Name != "embedded" {
		t.Fatalf("after restart Get = %+v", got)
	}
	// The store can reconnect a moment before the supervisor's own health
	// poll counts the restart, so await the counter rather than read it.
	for es.proc.Restarts() != 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if es.proc.Restarts() != 1 {
		t.Fatalf("Restarts() = %d, want 1", es.proc.Restarts())
	}
	task2 := task
	task2.ID = storagetest.NewID()
	if err := st.Create(ctx, task2); err != nil {
		t.Fatalf("Create after restart: %v", err)
	}

	// Close stops the process and frees the data directory.
	newPID := es.proc.PID()
	if err := st.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if pidAlive(newPID) {
		t.Fatalf("database pid %d alive after Close", newPID)
	}
	if err := st.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := st.Get(ctx, task.ID); !errors.Is(err, storage.ErrUnavailable) {
		t.Fatalf("Get after Close: %v", err)
	}

	// A new run on the same data directory sees both tasks.
	st2, _ := openEmbedded(t, dir)
	ids, err := st2.IDs(ctx)
	if err != nil || len(ids) != 2 {
		t.Fatalf("IDs after reopening = %v, %v", ids, err)
	}
}

func TestOpenStoreSurrealEmbeddedMissingExecutable(t *testing.T) {
	_, err := OpenStore(context.Background(), StoreConfig{
		Type:        StorageSurrealEmbedded,
		DataDir:     t.TempDir(),
		SurrealPath: "surreal-missing-for-test",
	}, nil)
	if err == nil || !strings.Contains(err.Error(), "--surreal-path") || !strings.Contains(err.Error(), "surreal-missing-for-test") {
		t.Fatalf("err = %v, want one naming --surreal-path", err)
	}
}
