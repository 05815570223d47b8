//go:build unix

package storage

import (
	"context"
	"flag"
	"fmt"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
)

var benchWriters = flag.Int("bench.writers", 16, "BenchmarkFilesystemConcurrentPut: concurrent writers")

// BenchmarkFilesystemConcurrentPut runs what the API and the worker of one
// process do to a task, from bench.writers goroutines at once: Create (the
// Pending record), then Puts to Running and Completed, every write durable.
// The side "grouped" shares the directory fsyncs among concurrent writers
// (what the store does); "ungrouped" fsyncs the directory once per write
// (the baseline). Sides alternate within one run (-count). Reported:
// tasks/s, this process's CPU (user + system: ext4 fsyncs are mostly
// system time) and directory fsyncs per task.
//
//	go test -run xxx -bench FilesystemConcurrentPut -benchtime 2000x -count 3 ./storage/
func BenchmarkFilesystemConcurrentPut(b *testing.B) {
	for _, side := range []string{"ungrouped", "grouped"} {
		b.Run(side, func(b *testing.B) {
			f, err := NewFilesystem(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			f.ungroupedDirSyncs = side == "ungrouped"
			var dirSyncs atomic.Int64
			f.dirSyncHook = func(dir string) error {
				dirSyncs.Add(1)
				return syncPath(dir)
			}
			ctx := context.Background()
			var next atomic.Int64
			cpu0 := processCPU()
			b.ResetTimer()
			var g errgroup.Group
			for range *benchWriters {
				g.Go(func() error {
					for next.Add(1) <= int64(b.N) {
						now := time.Now().UTC()
						t := Task{ID: randomID(), Name: "bench", Command: "server create", Status: StatusPending, CreatedAt: now, UpdatedAt: now, Version: 1}
						if err := f.Create(ctx, t); err != nil {
							return err
						}
						for _, s := range []TaskStatus{StatusRunning, StatusCompleted} {
							t.Status, t.Version = s, t.Version+1
							if err := f.Put(ctx, t); err != nil {
								return fmt.Errorf("put %s: %w", s, err)
							}
						}
					}
					return nil
				})
			}
			if err := g.Wait(); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			cpu := processCPU() - cpu0
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/task")
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tasks/s")
			b.ReportMetric(float64(dirSyncs.Load())/float64(b.N), "dir-fsyncs/task")
		})
	}
}

// processCPU is this process's CPU time so far, user and system.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
