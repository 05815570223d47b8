package surrealdb

import (
	"context"
	"fmt"
	"hash/fnv"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/surrealdb/surrealdb.go/pkg/models"

	"github.com/provisioning/orchestrator/storage"
)

// Event streams (storage.EventStore):
//
//	task_event:[⟨task id⟩, ⟨seq⟩] { task_id, seq, time, doc }
//	              doc is the JSON event as bytes (output lines may hold
//	              NUL, which a SurrealDB string cannot); the record ID
//	              orders a task's stream, so ListEvents is a range scan;
//	              time has created_at's format (sortable); indexes
//	              task_id (Delete) and time (the global stream)
//	task_event_key:[⟨task id⟩, ⟨key⟩] { task_id, key }
//	              the keys a task's stream holds (idempotent appends)
//	task_event_head:⟨task id⟩ { seq, count, bytes }
//	              the last seq and the output bounds' counters
//
// An append reads the head and which of its keys exist, decides in Go
// (storage.EventTally), then writes in a transaction that fails when the
// head moved meanwhile (another appender won): it is then retried, so
// concurrent appenders, in any process, get contiguous seqs and never
// store a key twice. Keys and step names are bound variables, never
// spliced into SurrealQL.

// surrealEventRaceMarker is thrown by the append transaction when the
// head's seq is not the one the append was computed against.
const surrealEventRaceMarker = "orchestrator:event-race"

// surrealEventHeadBehindMarker is thrown by the append transaction when
// an event already holds the seq after the head's: the head lost an
// update (see Store.taskLocks) and is repaired before the retry.
const surrealEventHeadBehindMarker = "orchestrator:event-head-behind"

// surrealEventAppendAttempts bounds the retries of a raced append.
const surrealEventAppendAttempts = 50

const surrealAppendEventsSQL = `
BEGIN TRANSACTION;
IF !record::exists($rid) { THROW "` + surrealTaskMissingMarker + `" };
LET $cur = (SELECT VALUE seq FROM ONLY $hid) ?? 0;
IF $cur != $expect { THROW "` + surrealEventRaceMarker + `" };
IF record::exists(type::record('task_event', [$tid, $expect + 1])) { THROW "` + surrealEventHeadBehindMarker + `" };
UPSERT $hid CONTENT $head RETURN NONE;
INSERT INTO task_event $rows RETURN NONE;
INSERT INTO task_event_key $keys RETURN NONE;
COMMIT TRANSACTION;
`

// surrealEventHeadRepairSQL moves a head that is behind the task's last
// stored event up to it. Its count and bytes (the output bounds) keep
// what they had: at most the overwritten appends go uncounted.
const surrealEventHeadRepairSQL = `
BEGIN TRANSACTION;
LET $last = math::max((SELECT VALUE seq FROM task_event:[$tid, 0]..=[$tid, $max])) ?? 0;
LET $cur = (SELECT VALUE seq FROM ONLY $hid) ?? 0;
IF $last > $cur { UPSERT $hid MERGE { seq: $last } RETURN NONE };
RETURN [$cur, $last];
COMMIT TRANSACTION;
`

const surrealEventHeadSQL = `
SELECT seq, count, bytes FROM ONLY $hid;
SELECT VALUE key FROM $kids WHERE key != NONE;
`

var _ storage.EventStore = (*Store)(nil)

func eventHeadID(taskID string) models.RecordID { return models.NewRecordID("task_event_head", taskID) }

func eventKeyID(taskID, key string) models.RecordID {
	return models.NewRecordID("task_event_key", []any{taskID, key})
}

type surrealEventHead struct {
	Seq   int64 `json:"seq"`
	Count int   `json:"count"`
	Bytes int   `json:"bytes"`
}

// AppendEvents appends events to the task's stream. See storage.EventStore.
func (s *Store) AppendEvents(ctx context.Context, taskID string, events []storage.Event) error {
	events, err := storage.PrepareEvents(taskID, events)
	if err != nil || len(events) == 0 {
		return err
	}
	kids := make([]models.RecordID, len(events))
	for i, e := range events {
		kids[i] = eventKeyID(taskID, e.Key)
	}
	op := "append events of task " + taskID
	mu := s.taskLock(taskID)
	mu.Lock()
	defer mu.Unlock()
	for attempt := 1; ; attempt++ {
		res, err := s.query(ctx, op, surrealEventHeadSQL, map[string]any{"hid": eventHeadID(taskID), "kids": kids})
		if err != nil {
			return err
		}
		var head *surrealEventHead
		var have []string
		if err := decodeResult(res, 0, &head); err != nil {
			return err
		}
		if err := decodeResult(res, 1, &have); err != nil {
			return err
		}
		if head == nil {
			head = &surrealEventHead{}
		}
		tally := storage.EventTally{Seq: head.Seq, Count: head.Count, Bytes: head.Bytes, Keys: map[string]bool{}}
		for _, k := range have {
			tally.Keys[k] = true
		}
		now := time.Now()
		var rows, keys []map[string]any
		for i := range events {
			e := events[i]
			if !tally.Admit(&e, now) {
				continue
			}
			doc, err := storage.EncodeEvent(e)
			if err != nil {
				return fmt.Errorf("storage: encode event of task %s: %w", taskID, err)
			}
			rows = append(rows, map[string]any{
				"id":      models.NewRecordID("task_event", []any{taskID, e.Seq}),
				"task_id": taskID, "seq": e.Seq, "time": surrealTime(e.Time), "doc": doc,
			})
			keys = append(keys, map[string]any{"id": eventKeyID(taskID, e.Key), "task_id": taskID, "key": e.Key})
		}
		if len(rows) == 0 {
			return nil
		}
		_, err = s.query(ctx, op, surrealAppendEventsSQL, map[string]any{
			"rid": taskRecordID(taskID), "hid": eventHeadID(taskID), "tid": taskID, "expect": head.Seq,
			"head": map[string]any{"seq": tally.Seq, "count": tally.Count, "bytes": tally.Bytes},
			"rows": rows, "keys": keys,
		})
		switch {
		case err == nil:
			return nil
		case strings.Contains(err.Error(), surrealTaskMissingMarker):
			return fmt.Errorf("%w: %s (events not stored)", storage.ErrNotFound, taskID)
		case strings.Contains(err.Error(), surrealEventRaceMarker) && attempt < surrealEventAppendAttempts:
			if !conflictPause(ctx, min(attempt, 5)) {
				return ctxError(ctx, op)
			}
		case strings.Contains(err.Error(), surrealEventHeadBehindMarker) && attempt < surrealEventAppendAttempts:
			// Without the repair every later append would find the
			// seq taken, and the task's projections would fail for good.
			res, rerr := s.query(ctx, "repair event head of task "+taskID, surrealEventHeadRepairSQL,
				map[string]any{"tid": taskID, "hid": eventHeadID(taskID), "max": int64(math.MaxInt64)})
			if rerr != nil {
				return rerr
			}
			var seqs []int64
			_ = decodeResult(res, len(res)-2, &seqs) // the RETURN, before COMMIT's
			s.log.Warn("event stream head was behind its last event (an update lost by the database engine); moved it up",
				"task_id", taskID, "head_and_last", seqs)
		default:
			return err
		}
	}
}

// decodeEvents decodes stored event documents of taskID, skipping any
// that do not decode (a damaged record must not stop a stream).
func decodeEvents(taskID string, docs [][]byte) []storage.Event {
	out := make([]storage.Event, 0, len(docs))
	for _, d := range docs {
		if e, err := storage.DecodeEvent(taskID, d); err == nil {
			out = append(out, e)
		}
	}
	return out
}

// ListEvents returns the task's events after afterSeq (a record-ID range
// scan). See storage.EventStore.
func (s *Store) ListEvents(ctx context.Context, taskID string, afterSeq int64, limit int) ([]storage.Event, error) {
	if err := storage.ValidateID(taskID); err != nil {
		return nil, err
	}
	res, err := s.query(ctx, "list events of task "+taskID,
		"SELECT VALUE doc FROM task_event:[$tid, $from]..=[$tid, $max] LIMIT $limit;",
		map[string]any{"tid": taskID, "from": max(afterSeq, 0) + 1, "max": int64(math.MaxInt64), "limit": storage.EventLimit(limit)})
	if err != nil {
		return nil, err
	}
	var docs [][]byte
	if err := decodeResult(res, 0, &docs); err != nil {
		return nil, err
	}
	out := decodeEvents(taskID, docs)
	slices.SortFunc(out, storage.CompareEvents)
	return out, nil
}

// ListRecentEvents returns every task's events appended since since (an
// index range on time). See storage.EventStore.
func (s *Store) ListRecentEvents(ctx context.Context, since time.Time, limit int) ([]storage.Event, error) {
	res, err := s.query(ctx, "list recent events",
		"SELECT task_id, doc, time FROM task_event WHERE time >= $since ORDER BY time LIMIT $limit;",
		map[string]any{"since": surrealTime(since), "limit": storage.EventLimit(limit)})
	if err != nil {
		return nil, err
	}
	var rows []struct {
		TaskID string `json:"task_id"`
		Doc    []byte `json:"doc"`
	}
	if err := decodeResult(res, 0, &rows); err != nil {
		return nil, err
	}
	out := make([]storage.Event, 0, len(rows))
	for _, r := range rows {
		out = append(out, decodeEvents(r.TaskID, [][]byte{r.Doc})...)
	}
	slices.SortFunc(out, storage.CompareEvents)
	return out, nil
}

// fnvIndex is a stripe index in [0, n) for key (FNV-1a).
func fnvIndex(key string, n int) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	return int(h.Sum32() % uint32(n))
}
