package workflows_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"

	"github.com/provisioning/orchestrator/storage"
)

// Task IDs must be canonical lowercase UUIDs: the real ProjectTask rejects
// anything else.
const (
	taskID1 = "0b6f3a5e-2f7c-4c1e-9d1a-6a1f0e6c2b01"
	taskID2 = "0b6f3a5e-2f7c-4c1e-9d1a-6a1f0e6c2b02"
	taskID3 = "0b6f3a5e-2f7c-4c1e-9d1a-6a1f0e6c2b03"
)

var discardLogger = slog.New(slog.NewTextHandler(io.Discard, nil))

// errStoreDown is what fakeStore returns while it is "down".
var errStoreDown = fmt.Errorf("%w: connection refused", storage.ErrUnavailable)

// fakeStore is an in-memory storage.Store that records every projection it
// accepted, in order, and can be told to fail the next N Puts.
type fakeStore struct {
	mu       sync.Mutex
	tasks    map[string]storage.Task
	puts     []storage.Task // accepted Puts, in arrival order
	attempts int            // every Put call, failed ones included
	failures int            // Puts rejected with errStoreDown
	// failNext makes the next failNext Puts (matching failWhen, when set)
	// fail with errStoreDown.
	failNext int
	failWhen func(storage.Task) bool
}

var _ storage.Store = (*fakeStore)(nil)

func newFakeStore() *fakeStore { return &fakeStore{tasks: map[string]storage.Task{}} }

func (s *fakeStore) failPuts(n int, when func(storage.Task) bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failNext, s.failWhen = n, when
}

func (s *fakeStore) Create(_ context.Context, t storage.Task) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.tasks[t.ID]; ok {
		return storage.ErrExists
	}
	s.tasks[t.ID] = t
	return nil
}

func (s *fakeStore) Put(_ context.Context, t storage.Task) error {
	// Real stores serialise the snapshot; keep a deep copy so that later
	// changes to the caller's slices and pointers cannot leak in.
	t, err := deepCopy(t)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.attempts++
	if s.failNext > 0 && (s.failWhen == nil || s.failWhen(t)) {
		s.failNext--
		s.failures++
		return errStoreDown
	}
	s.puts = append(s.puts, t)
	if cur, ok := s.tasks[t.ID]; ok && cur.Version > t.Version {
		return nil
	}
	s.tasks[t.ID] = t
	return nil
}

func (s *fakeStore) Get(_ context.Context, id string) (storage.Task, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tasks[id]
	if !ok {
		return storage.Task{}, storage.ErrNotFound
	}
	return t, nil
}

func (s *fakeStore) List(_ context.Context, _ storage.ListFilter) ([]storage.Task, int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]storage.Task, 0, len(s.tasks))
	for _, t := range s.tasks {
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID > out[j].ID })
	return out, len(out), nil
}

func (s *fakeStore) Delete(_ context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.tasks, id)
	return nil
}

func (s *fakeStore) Ping(context.Context) error { return nil }
func (s *fakeStore) Close() error               { return nil }

// The workflows never read the audit trail or list ids; these satisfy the
// interface.
func (s *fakeStore) IDs(context.Context) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := make([]string, 0, len(s.tasks))
	for id := range s.tasks {
		ids = append(ids, id)
	}
	return ids, nil
}
func (s *fakeStore) AppendAudit(context.Context, storage.AuditEntry) error { return nil }
func (s *fakeStore) ListAudit(context.Context, storage.AuditFilter) ([]storage.AuditEntry, error) {
	return nil, nil
}

// projections returns a copy of the accepted Puts for one task, in order.
func (s *fakeStore) projections(id string) []storage.Task {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []storage.Task
	for _, t := range s.puts {
		if t.ID == id {
			out = append(out, t)
		}
	}
	return out
}

func (s *fakeStore) counts() (attempts, failures int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.attempts, s.failures
}

func (s *fakeStore) last(id string) (storage.Task, error) {
	p := s.projections(id)
	if len(p) == 0 {
		return storage.Task{}, errors.New("no projection for " + id)
	}
	return p[len(p)-1], nil
}

func deepCopy(t storage.Task) (storage.Task, error) {
	b, err := json.Marshal(t)
	if err != nil {
		return storage.Task{}, err
	}
	var out storage.Task
	err = json.Unmarshal(b, &out)
	return out, err
}
