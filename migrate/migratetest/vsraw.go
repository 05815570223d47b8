package migratetest

import (
	"bytes"
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/migrate"
	"github.com/provisioning/orchestrator/storage"
)

// RawRecord is one task with its audit trail, as a bulk import gets it.
type RawRecord struct {
	Task  storage.Task
	Audit []storage.AuditEntry
}

// ReadAll reads every task of st with its audit trail (the raw insert's
// input, read before its clock starts).
func ReadAll(tb testing.TB, st storage.Store) []RawRecord {
	tb.Helper()
	ctx := context.Background()
	ids, err := st.IDs(ctx)
	require.NoError(tb, err)
	out := make([]RawRecord, len(ids))
	for i, id := range ids {
		out[i].Task, err = st.Get(ctx, id)
		require.NoError(tb, err)
		out[i].Audit, err = st.ListAudit(ctx, storage.AuditFilter{TaskID: id, Limit: 100_000})
		require.NoError(tb, err)
	}
	return out
}

// RawInsert writes recs into dst the way a bulk import with the store's
// public API would, durably, on concurrency goroutines: per task, its
// audit entries (AppendAudit, which returns once the entry is durable),
// then the task (Put, likewise; it finds its transition entry already
// there and appends none). This is the migration's write work and
// nothing else: no source reads, no comparison, no verification.
func RawInsert(ctx context.Context, dst storage.Store, recs []RawRecord, concurrency int) error {
	wctx := storage.WithActor(ctx, migrate.Actor)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, concurrency)
	for w := range concurrency {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(recs) {
					return
				}
				r := recs[i]
				for _, e := range r.Audit {
					if err := dst.AppendAudit(wctx, e); err != nil {
						errs[w] = err
						return
					}
				}
				if err := dst.Put(wctx, r.Task); err != nil {
					errs[w] = err
					return
				}
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// BenchmarkVsRawInsert measures, in one process and per round, both sides
// of the migration's target: the raw insert of src's records (RawInsert,
// at the migration's default concurrency) into a fresh target, and the
// migration (migrate.Run with default options: full pass, delta pass,
// verification) of src into another fresh target. Rounds alternate which
// side goes first. It reports raw-tasks/s, migrate-tasks/s (tasks over
// the summed time of each side) and their ratio.
func BenchmarkVsRawInsert(b *testing.B, src storage.Store, rounds int, newTarget Factory) {
	recs := ReadAll(b, src)
	n := len(recs)
	audit := 0
	for _, r := range recs {
		audit += len(r.Audit)
	}
	ctx := context.Background()
	var rawTime, migTime time.Duration
	var ratios []float64
	for b.Loop() {
		for round := range rounds {
			var rawD, migD, rawCPU, migCPU time.Duration
			raw := func() {
				dst := newTarget(b)
				defer dst.Close()
				flushWrites()
				start, cpu := time.Now(), processCPU()
				require.NoError(b, RawInsert(ctx, dst, recs, migrate.DefaultConcurrency))
				rawD, rawCPU = time.Since(start), processCPU()-cpu
			}
			mig := func() {
				dst := newTarget(b)
				defer dst.Close()
				flushWrites()
				start, cpu := time.Now(), processCPU()
				rep, err := migrate.Run(ctx, src, dst, migrate.Options{})
				migD, migCPU = time.Since(start), processCPU()-cpu
				if err != nil || !rep.OK() {
					var buf bytes.Buffer
					rep.WriteSummary(&buf)
					b.Fatalf("migration: %v\n%s", err, buf.String())
				}
				require.Equal(b, n, rep.Copied)
				require.Equal(b, n, rep.Verified)
				b.Logf("round %d migration passes: %+v", round+1, rep.PassStats)
			}
			if round%2 == 0 {
				raw()
				mig()
			} else {
				mig()
				raw()
			}
			rawTime += rawD
			migTime += migD
			ratio := rawD.Seconds() / migD.Seconds()
			ratios = append(ratios, ratio)
			b.Logf("round %d: raw insert %.0f tasks/s (%s, this process's CPU %.0f µs/task), migration %.0f tasks/s (%s, CPU %.0f µs/task), ratio %.2f",
				round+1, float64(n)/rawD.Seconds(), rawD.Round(time.Millisecond), float64(rawCPU.Microseconds())/float64(n),
				float64(n)/migD.Seconds(), migD.Round(time.Millisecond), float64(migCPU.Microseconds())/float64(n), ratio)
		}
	}
	total := float64(n * rounds * b.N)
	b.ReportMetric(total/rawTime.Seconds(), "raw-tasks/s")
	b.ReportMetric(total/migTime.Seconds(), "migrate-tasks/s")
	b.ReportMetric(rawTime.Seconds()/migTime.Seconds(), "ratio")
	b.ReportMetric(float64(audit), "audit-entries")
	b.ReportMetric(0, "ns/op") // one op mixes both sides: dropped from the output
	b.Logf("%d tasks, %d audit entries, %d rounds: ratios %.2f", n, audit, rounds, ratios)
}
