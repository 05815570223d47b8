package storage

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
)

// BenchmarkFilesystemCreate times Create (the API's Pending record: file
// and create audit entry, each with its directory, fsynced) while another
// store on the same directory keeps projecting other tasks (Puts that
// change their status, fsynced too), as a worker does while the API takes
// submissions. Reported: p50-ms and p90-ms of the Creates.
//
//	go test -run xxx -bench FilesystemCreate -benchtime 300x ./storage/
func BenchmarkFilesystemCreate(b *testing.B) {
	dir := b.TempDir()
	api, err := NewFilesystem(dir)
	if err != nil {
		b.Fatal(err)
	}
	defer api.Close()
	worker, err := NewFilesystem(dir)
	if err != nil {
		b.Fatal(err)
	}
	defer worker.Close()
	ctx := context.Background()
	others := seedFiles(b, worker, 50, time.Now().Add(-time.Hour))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		statuses := []TaskStatus{StatusRunning, StatusCompleted}
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			t, err := worker.Get(ctx, others[i%len(others)])
			if err != nil {
				b.Error(err)
				return
			}
			t.Version++
			t.Status = statuses[i%2]
			if err := worker.Put(ctx, t); err != nil {
				b.Error(err)
				return
			}
		}
	}()
	var took []float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		now := time.Now().UTC()
		t := Task{ID: uuid.NewString(), Name: "bench", Command: "server create", Status: StatusPending, CreatedAt: now, UpdatedAt: now}
		start := time.Now()
		if err := api.Create(ctx, t); err != nil {
			b.Fatal(err)
		}
		took = append(took, float64(time.Since(start).Microseconds())/1000)
	}
	b.StopTimer()
	close(stop)
	wg.Wait()
	slices.Sort(took)
	b.ReportMetric(took[len(took)/2], "p50-ms")
	b.ReportMetric(took[len(took)*9/10], "p90-ms")
}
