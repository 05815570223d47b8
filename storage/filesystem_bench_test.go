package storage

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// BenchmarkFilesystem measures Put, Get and List (status filter, page of
// 50) on stores holding 100 and 10,000 tasks. List runs with the index
// (warm; warm but with a forced full scan of the directory, what a journal
// rotation or the safety-net scan costs; cold: a fresh store each
// iteration) and, as the baseline in the same run, without it (index=off:
// every file read and parsed on every call). BenchmarkFilesystemListScale
// compares 100 with 100,000 tasks, with and without writes going on.
//
//	go test -run xxx -bench . -benchtime 200x ./storage/
func BenchmarkFilesystem(b *testing.B) {
	for _, n := range []int{100, 10_000} {
		b.Run(fmt.Sprintf("tasks=%d", n), func(b *testing.B) {
			dataDir := b.TempDir()
			f, err := NewFilesystem(dataDir)
			require.NoError(b, err)
			defer f.Close()
			// Settled tasks, as most of a long-running store's are.
			past := time.Now().Add(-time.Hour)
			ids := seedFiles(b, f, n, past)
			require.NoError(b, os.Chtimes(f.dir, past, past))
			ctx := context.Background()
			// Running is a fifth of the tasks; walk the first pages.
			running := n / 5
			pages := max(1, min(4, running/50))
			wantLen := min(50, running)
			filter := func(i int) ListFilter {
				return ListFilter{Status: StatusRunning, Limit: 50, Offset: (i % pages) * 50}
			}

			b.Run("Get", func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					if _, err := f.Get(ctx, ids[(i*7919)%n]); err != nil {
						b.Fatal(err)
					}
				}
				reportOps(b)
			})

			listWarm := func(b *testing.B, rescan bool) {
				if _, _, err := f.List(ctx, filter(0)); err != nil { // build the index
					b.Fatal(err)
				}
				parses, scans := f.parses.Load(), f.scans.Load()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					if rescan {
						forceFullScan(f)
					}
					page, _, err := f.List(ctx, filter(i))
					if err != nil || len(page) != wantLen {
						b.Fatalf("list: %d tasks, %v", len(page), err)
					}
				}
				reportOps(b)
				b.ReportMetric(float64(f.scans.Load()-scans)/float64(b.N), "scans/op")
				b.ReportMetric(float64(f.parses.Load()-parses)/float64(b.N), "parses/op")
			}
			// Nothing written since the last List: one stat of the journal.
			b.Run("List/index=warm", func(b *testing.B) { listWarm(b, false) })
			// A full scan (journal rotated): stat every file, parse none of
			// the unchanged ones.
			b.Run("List/index=rescan", func(b *testing.B) { listWarm(b, true) })

			b.Run("List/index=cold", func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					fresh, err := NewFilesystem(dataDir)
					if err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
					page, _, err := fresh.List(ctx, filter(i))
					if err != nil || len(page) != wantLen {
						b.Fatalf("list: %d tasks, %v", len(page), err)
					}
					b.StopTimer()
					_ = fresh.Close()
					b.StartTimer()
				}
				reportOps(b)
			})

			b.Run("List/index=off", func(b *testing.B) {
				base, err := NewFilesystem(dataDir)
				require.NoError(b, err)
				defer base.Close()
				base.noIndexCache = true
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					page, _, err := base.List(ctx, filter(i))
					if err != nil || len(page) != wantLen {
						b.Fatalf("list: %d tasks, %v", len(page), err)
					}
				}
				reportOps(b)
			})

			// Last: it rewrites files, which then are fresh (racy) for the
			// index for a couple of seconds.
			b.Run("Put", func(b *testing.B) {
				tasks := make([]Task, len(ids))
				for i, id := range ids {
					t, err := f.Get(ctx, id)
					require.NoError(b, err)
					tasks[i] = t
				}
				version := int64(1)
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					t := tasks[(i*7919)%n]
					version++
					t.Version = version
					t.Status = StatusCompleted
					if err := f.Put(ctx, t); err != nil {
						b.Fatal(err)
					}
				}
				reportOps(b)
			})
		})
	}
}

func reportOps(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

func randomID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// seedFiles writes n task files directly (no fsync: setup only) and sets
// their mtime, e.g. in the past so the index treats them as settled.
// Statuses cycle through all five; CreatedAt increases with i.
func seedFiles(tb testing.TB, f *Filesystem, n int, mtime time.Time) []string {
	tb.Helper()
	return seedFilesWith(tb, f, n, mtime, []TaskStatus{StatusPending, StatusRunning, StatusCompleted, StatusFailed, StatusCancelled})
}

// seedFilesWith is seedFiles with the statuses to cycle through.
func seedFilesWith(tb testing.TB, f *Filesystem, n int, mtime time.Time, statuses []TaskStatus) []string {
	tb.Helper()
	base := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	ids := make([]string, n)
	for i := range n {
		id := randomID()
		ids[i] = id
		out := fmt.Sprintf("server web-%03d: created\n", i%1000)
		t := Normalize(Task{
			ID: id, Name: fmt.Sprintf("task %d", i), Command: "server create",
			Args:      []string{"--infra", "prod-stack", fmt.Sprintf("web-%03d", i%1000)},
			Status:    statuses[i%len(statuses)],
			CreatedAt: base.Add(time.Duration(i) * time.Second),
			UpdatedAt: base.Add(time.Duration(i)*time.Second + time.Minute),
			Output:    &out, WorkflowType: "ServerCreateWorkflow",
			Progress: Progress{Done: 1, Total: 1},
			Steps: []StepResult{{
				Name: fmt.Sprintf("web-%03d", i%1000), Status: StatusCompleted,
				Attempts: 1, Output: out, DurationMS: 1200,
			}},
			Version: 1,
		})
		data, err := json.Marshal(t)
		require.NoError(tb, err)
		path := f.path(id)
		require.NoError(tb, os.WriteFile(path, data, 0o644))
		require.NoError(tb, os.Chtimes(path, mtime, mtime))
	}
	return ids
}

// BenchmarkFilesystemMemory reports what the task list and the audit
// trail cost in memory as the store grows to 100,000 tasks (each with 3
// audit entries): the heap the list index keeps per task (index-B/task,
// measured after a GC), and what one call allocates (B/op) for a page of
// 50 with a status filter and for the newest 100 audit entries. The 1,000
// task store in the same run is the baseline: bounded endpoints allocate
// about the same per call whatever the store size.
//
//	go test -run xxx -bench FilesystemMemory -benchtime 20x ./storage/
func BenchmarkFilesystemMemory(b *testing.B) {
	for _, n := range []int{1_000, 100_000} {
		b.Run(fmt.Sprintf("tasks=%d", n), func(b *testing.B) {
			f, err := NewFilesystem(b.TempDir())
			require.NoError(b, err)
			defer f.Close()
			past := time.Now().Add(-time.Hour)
			ids := seedFiles(b, f, n, past)
			seedAudit(b, f, ids)
			require.NoError(b, os.Chtimes(f.dir, past, past))
			ctx := context.Background()

			before := heapInUse()
			if _, _, err := f.List(ctx, ListFilter{Status: StatusRunning, Limit: 50}); err != nil {
				b.Fatal(err)
			}
			indexBytes := heapInUse() - before

			b.Run("List", func(b *testing.B) {
				b.ReportAllocs()
				for i := 0; i < b.N; i++ {
					page, _, err := f.List(ctx, ListFilter{Status: StatusRunning, Limit: 50, Offset: (i % 4) * 50})
					if err != nil || len(page) != 50 {
						b.Fatalf("list: %d tasks, %v", len(page), err)
					}
				}
				b.ReportMetric(float64(indexBytes)/float64(n), "index-B/task")
			})
			b.Run("ListAudit", func(b *testing.B) {
				b.ReportAllocs()
				for i := 0; i < b.N; i++ {
					got, err := f.ListAudit(ctx, AuditFilter{Limit: 100})
					if err != nil || len(got) != 100 {
						b.Fatalf("audit: %d entries, %v", len(got), err)
					}
				}
			})
		})
	}
}

// seedAudit writes three audit entries per task straight into the audit
// files (setup only), with the mtime AppendAudit leaves: the newest
// entry's time.
func seedAudit(tb testing.TB, f *Filesystem, ids []string) {
	tb.Helper()
	base := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for i, id := range ids {
		var buf []byte
		for j, status := range []TaskStatus{StatusPending, StatusRunning, StatusCompleted} {
			line, err := json.Marshal(AuditEntry{
				ID: fmt.Sprintf("%s/%d", id, j+1), TaskID: id, Actor: "workflow", Action: "status",
				After: status, Version: int64(j + 1), Time: base.Add(time.Duration(3*i+j) * time.Second),
			})
			require.NoError(tb, err)
			buf = append(append(buf, line...), '\n')
		}
		require.NoError(tb, os.WriteFile(f.auditPath(id), buf, 0o644))
		newest := base.Add(time.Duration(3*i+2) * time.Second)
		require.NoError(tb, os.Chtimes(f.auditPath(id), newest, newest))
	}
}

func heapInUse() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse)
}
