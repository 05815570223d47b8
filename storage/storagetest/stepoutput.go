package storagetest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/storage"
)

// Conformance of storage.StepOutputStore: every backend of this suite must
// implement it.

func stepOutputTests() []struct {
	name string
	fn   func(t *testing.T, s storage.Store)
} {
	return []struct {
		name string
		fn   func(t *testing.T, s storage.Store)
	}{
		{"StepOutputRoundTrip", testStepOutputRoundTrip},
		{"StepOutputOverwriteSameAttempt", testStepOutputOverwrite},
		{"StepOutputAttempts", testStepOutputAttempts},
		{"StepOutputUnknown", testStepOutputUnknown},
		{"StepOutputBigStreams", testStepOutputBig},
		{"StepOutputInvalidKeys", testStepOutputInvalid},
		{"StepOutputDeletedWithTask", testStepOutputDelete},
		{"StepOutputConcurrentAttempts", testStepOutputConcurrent},
	}
}

func outputs(t *testing.T, s storage.Store) storage.StepOutputStore {
	t.Helper()
	o, ok := s.(storage.StepOutputStore)
	require.True(t, ok, "%T does not implement storage.StepOutputStore", s)
	return o
}

// storedTask creates a minimal task and returns its id.
func storedTask(t *testing.T, s storage.Store) string {
	t.Helper()
	id := NewID()
	require.NoError(t, s.Create(context.Background(), minimalTask(id, storage.StatusRunning, base)))
	return id
}

func sampleOutput(taskID, step string, attempt int) storage.StepOutput {
	return storage.StepOutput{
		TaskID: taskID, Step: step, Attempt: attempt, ExitCode: 1,
		Stdout:          fmt.Sprintf("attempt %d of %s ✓\n\x00binary-ish\ttabs \"quotes\" <html>\n", attempt, step),
		Stderr:          "provisioning: simulated failure\n",
		StdoutTruncated: true,
		DurationMS:      1234,
		Error:           "nu exited with code 1 (retryable)",
		Time:            base.Add(time.Duration(attempt) * time.Second),
	}
}

// want is o as a backend returns it: sizes set, time in UTC.
func want(o storage.StepOutput) storage.StepOutput {
	o.StdoutBytes, o.StderrBytes = len(o.Stdout), len(o.Stderr)
	o.Time = o.Time.UTC()
	return o
}

func testStepOutputRoundTrip(t *testing.T, s storage.Store) {
	ctx := context.Background()
	st := outputs(t, s)
	id := storedTask(t, s)
	in := sampleOutput(id, "web-01", 1)
	require.NoError(t, st.PutStepOutput(ctx, in))

	got, err := st.GetStepOutput(ctx, id, "web-01", 1)
	require.NoError(t, err)
	require.Equal(t, want(in), got)
	require.Equal(t, time.UTC, got.Time.Location())

	latest, err := st.GetStepOutput(ctx, id, "web-01", 0)
	require.NoError(t, err)
	require.Equal(t, want(in), latest, "attempt 0 is the latest")

	attempts, err := st.ListStepOutputAttempts(ctx, id, "web-01")
	require.NoError(t, err)
	require.Equal(t, []int{1}, attempts)

	// Invalid UTF-8 becomes U+FFFD in every backend; NUL is kept.
	odd := sampleOutput(id, "web-03", 1)
	odd.Stderr = "bad \xff\xfe byte\x00nul"
	require.NoError(t, st.PutStepOutput(ctx, odd))
	got, err = st.GetStepOutput(ctx, id, "web-03", 1)
	require.NoError(t, err)
	require.Equal(t, "bad \uFFFD byte\x00nul", got.Stderr)
	require.Equal(t, len(got.Stderr), got.StderrBytes)

	// A zero time is taken as the time of the write.
	before := time.Now().Add(-time.Second)
	noTime := sampleOutput(id, "web-02", 1)
	noTime.Time = time.Time{}
	require.NoError(t, st.PutStepOutput(ctx, noTime))
	got, err = st.GetStepOutput(ctx, id, "web-02", 1)
	require.NoError(t, err)
	require.True(t, got.Time.After(before), "time %s", got.Time)
}

func testStepOutputOverwrite(t *testing.T, s storage.Store) {
	ctx := context.Background()
	st := outputs(t, s)
	id := storedTask(t, s)
	first := sampleOutput(id, "web-01", 2)
	require.NoError(t, st.PutStepOutput(ctx, first))
	second := first
	second.Stdout, second.Stderr, second.ExitCode, second.StdoutTruncated, second.Error = "second write\n", "", 0, false, ""
	require.NoError(t, st.PutStepOutput(ctx, second))

	got, err := st.GetStepOutput(ctx, id, "web-01", 2)
	require.NoError(t, err)
	require.Equal(t, want(second), got)
	attempts, err := st.ListStepOutputAttempts(ctx, id, "web-01")
	require.NoError(t, err)
	require.Equal(t, []int{2}, attempts, "one record per attempt")
}

func testStepOutputAttempts(t *testing.T, s storage.Store) {
	ctx := context.Background()
	st := outputs(t, s)
	id := storedTask(t, s)
	// Names a path-based backend must not take as paths, and names that
	// differ only slightly: each is its own step.
	steps := []string{"web-01", "web-01 ", "WEB-01", "../../etc/passwd", "a/b", ".", "名前", strings.Repeat("s", storage.MaxStepNameBytes)}
	for i, step := range steps {
		for _, a := range []int{3, 1, 10, 2} { // out of order
			o := sampleOutput(id, step, a)
			o.Stdout = fmt.Sprintf("%d/%d", i, a)
			require.NoError(t, st.PutStepOutput(ctx, o), "step %q attempt %d", step, a)
		}
	}
	for i, step := range steps {
		attempts, err := st.ListStepOutputAttempts(ctx, id, step)
		require.NoError(t, err)
		require.Equal(t, []int{1, 2, 3, 10}, attempts, "step %q: ascending, numerically", step)
		for _, a := range attempts {
			got, err := st.GetStepOutput(ctx, id, step, a)
			require.NoError(t, err)
			require.Equal(t, fmt.Sprintf("%d/%d", i, a), got.Stdout)
			require.Equal(t, step, got.Step)
			require.Equal(t, a, got.Attempt)
		}
		latest, err := st.GetStepOutput(ctx, id, step, 0)
		require.NoError(t, err)
		require.Equal(t, 10, latest.Attempt)
		require.Equal(t, fmt.Sprintf("%d/10", i), latest.Stdout)
	}
	// Another task's step of the same name is separate.
	other := storedTask(t, s)
	attempts, err := st.ListStepOutputAttempts(ctx, other, "web-01")
	require.NoError(t, err)
	require.Empty(t, attempts)
}

func testStepOutputUnknown(t *testing.T, s storage.Store) {
	ctx := context.Background()
	st := outputs(t, s)

	unknown := NewID()
	_, err := st.GetStepOutput(ctx, unknown, "web-01", 0)
	require.ErrorIs(t, err, storage.ErrNotFound)
	attempts, err := st.ListStepOutputAttempts(ctx, unknown, "web-01")
	require.NoError(t, err)
	require.NotNil(t, attempts)
	require.Empty(t, attempts)
	err = st.PutStepOutput(ctx, sampleOutput(unknown, "web-01", 1))
	require.ErrorIs(t, err, storage.ErrNotFound, "an output needs its task")
	_, err = s.Get(ctx, unknown)
	require.ErrorIs(t, err, storage.ErrNotFound, "a refused output creates no task")

	id := storedTask(t, s)
	_, err = st.GetStepOutput(ctx, id, "web-01", 0)
	require.ErrorIs(t, err, storage.ErrNotFound, "unknown step")
	_, err = st.GetStepOutput(ctx, id, "web-01", 1)
	require.ErrorIs(t, err, storage.ErrNotFound, "unknown step, given attempt")
	require.NoError(t, st.PutStepOutput(ctx, sampleOutput(id, "web-01", 1)))
	_, err = st.GetStepOutput(ctx, id, "web-01", 2)
	require.ErrorIs(t, err, storage.ErrNotFound, "unknown attempt")
	_, err = st.GetStepOutput(ctx, id, "web-02", 1)
	require.ErrorIs(t, err, storage.ErrNotFound, "unknown step of a task with outputs")
}

// bigText is n bytes of lines with multi-byte characters and a numbered
// line every 64 bytes, so a lost or reordered chunk shows.
func bigText(n int, tag string) string {
	var b strings.Builder
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "%s line %08d é漢 %s\n", tag, i, strings.Repeat("x", 30))
	}
	return b.String()[:n]
}

func testStepOutputBig(t *testing.T, s storage.Store) {
	ctx := context.Background()
	st := outputs(t, s)
	id := storedTask(t, s)
	in := sampleOutput(id, "big", 1)
	in.Stdout, in.Stderr = bigText(256<<10, "out"), bigText(256<<10, "err")
	require.NoError(t, st.PutStepOutput(ctx, in))
	got, err := st.GetStepOutput(ctx, id, "big", 1)
	require.NoError(t, err)
	require.Equal(t, len(in.Stdout), len(got.Stdout))
	require.True(t, in.Stdout == got.Stdout, "256 KiB stdout round-trips byte for byte")
	require.True(t, in.Stderr == got.Stderr, "256 KiB stderr round-trips byte for byte")
	require.Equal(t, 256<<10, got.StdoutBytes)
	require.Equal(t, 256<<10, got.StderrBytes)

	// Beyond MaxStepStreamBytes the tail is kept and marked truncated.
	huge := sampleOutput(id, "huge", 1)
	huge.Stdout, huge.StdoutTruncated = strings.Repeat("a", 100)+bigText(storage.MaxStepStreamBytes, "tail"), false
	require.NoError(t, st.PutStepOutput(ctx, huge))
	got, err = st.GetStepOutput(ctx, id, "huge", 1)
	require.NoError(t, err)
	require.True(t, got.StdoutTruncated)
	require.LessOrEqual(t, len(got.Stdout), storage.MaxStepStreamBytes)
	require.True(t, strings.HasSuffix(huge.Stdout, got.Stdout), "the kept part is the tail")
	require.Equal(t, len(got.Stdout), got.StdoutBytes)
}

func testStepOutputInvalid(t *testing.T, s storage.Store) {
	ctx := context.Background()
	st := outputs(t, s)
	id := storedTask(t, s)
	for _, bad := range []string{"", "not-a-uuid", "../" + id, strings.ToUpper(id)} {
		err := st.PutStepOutput(ctx, sampleOutput(bad, "web-01", 1))
		require.ErrorIs(t, err, storage.ErrInvalidID, "put %q", bad)
		_, err = st.GetStepOutput(ctx, bad, "web-01", 1)
		require.ErrorIs(t, err, storage.ErrInvalidID, "get %q", bad)
		_, err = st.ListStepOutputAttempts(ctx, bad, "web-01")
		require.ErrorIs(t, err, storage.ErrInvalidID, "list %q", bad)
	}
	for _, bad := range []storage.StepOutput{
		sampleOutput(id, "", 1),
		sampleOutput(id, strings.Repeat("s", storage.MaxStepNameBytes+1), 1),
		sampleOutput(id, "bad\xffutf8", 1),
		sampleOutput(id, "web-01", 0),
		sampleOutput(id, "web-01", -1),
		sampleOutput(id, "web-01", 1<<31),
	} {
		require.ErrorIs(t, st.PutStepOutput(ctx, bad), storage.ErrInvalidStepOutput, "put %q attempt %d", bad.Step, bad.Attempt)
	}
	_, err := st.GetStepOutput(ctx, id, "web-01", -1)
	require.ErrorIs(t, err, storage.ErrInvalidStepOutput)
	_, err = st.GetStepOutput(ctx, id, "", 1)
	require.ErrorIs(t, err, storage.ErrInvalidStepOutput)
	_, err = st.ListStepOutputAttempts(ctx, id, "")
	require.ErrorIs(t, err, storage.ErrInvalidStepOutput)
}

func testStepOutputDelete(t *testing.T, s storage.Store) {
	ctx := context.Background()
	st := outputs(t, s)
	gone, keep := storedTask(t, s), storedTask(t, s)
	for _, id := range []string{gone, keep} {
		for a := 1; a <= 2; a++ {
			require.NoError(t, st.PutStepOutput(ctx, sampleOutput(id, "web-01", a)))
		}
		require.NoError(t, st.PutStepOutput(ctx, sampleOutput(id, "web-02", 1)))
	}
	require.NoError(t, s.Delete(ctx, gone))
	for _, step := range []string{"web-01", "web-02"} {
		attempts, err := st.ListStepOutputAttempts(ctx, gone, step)
		require.NoError(t, err)
		require.Empty(t, attempts, "outputs of a deleted task are gone")
		_, err = st.GetStepOutput(ctx, gone, step, 1)
		require.ErrorIs(t, err, storage.ErrNotFound)
	}
	attempts, err := st.ListStepOutputAttempts(ctx, keep, "web-01")
	require.NoError(t, err)
	require.Equal(t, []int{1, 2}, attempts, "another task's outputs stay")

	// The id reused for a new task starts without outputs, and a write
	// after the delete is refused.
	require.ErrorIs(t, st.PutStepOutput(ctx, sampleOutput(gone, "web-01", 3)), storage.ErrNotFound)
	require.NoError(t, s.Create(ctx, minimalTask(gone, storage.StatusPending, base)))
	attempts, err = st.ListStepOutputAttempts(ctx, gone, "web-01")
	require.NoError(t, err)
	require.Empty(t, attempts)
}

func testStepOutputConcurrent(t *testing.T, s storage.Store) {
	ctx := context.Background()
	st := outputs(t, s)
	id := storedTask(t, s)
	const n = 16
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			o := sampleOutput(id, fmt.Sprintf("web-%02d", i%4), i/4+1)
			o.Stdout = bigText(32<<10, fmt.Sprint(i))
			errs[i] = st.PutStepOutput(ctx, o)
		})
	}
	wg.Wait()
	for i, err := range errs {
		require.NoError(t, err, "writer %d", i)
	}
	for step := range 4 {
		attempts, err := st.ListStepOutputAttempts(ctx, id, fmt.Sprintf("web-%02d", step))
		require.NoError(t, err)
		require.Equal(t, []int{1, 2, 3, 4}, attempts)
		for _, a := range attempts {
			got, err := st.GetStepOutput(ctx, id, fmt.Sprintf("web-%02d", step), a)
			require.NoError(t, err)
			require.Equal(t, bigText(32<<10, fmt.Sprint((a-1)*4+step)), got.Stdout)
		}
	}
}
