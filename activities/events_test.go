package activities_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/activities"
	"github.com/provisioning/orchestrator/storage"
)

// An attempt's live events, through the real runner and nu: step_started,
// its output lines as events (both streams, stdout in order), and, as it
// failed, step_attempt_failed with its exit code after every line.
func TestRunNushellLiveEvents(t *testing.T) {
	st, id := fsStoreWithTask(t)
	env, acts := nuActivities(t, st)
	_, err := env.ExecuteActivity(acts.RunNushell, activities.NuStep{TaskID: id, Step: "web-01", Args: []string{"3", "1"}})
	require.Error(t, err)

	evs, err := st.ListEvents(context.Background(), id, 0, 0)
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(evs), 3)
	assert.Equal(t, storage.EventStepStarted, evs[0].Type)
	assert.Equal(t, 1, evs[0].Attempt)
	last := evs[len(evs)-1]
	assert.Equal(t, storage.EventStepAttemptFailed, last.Type)
	require.NotNil(t, last.ExitCode)
	assert.Equal(t, 1, *last.ExitCode)
	require.NotNil(t, last.Retrying)
	assert.Contains(t, last.Error, "exit")

	var stdout, stderr []string
	for _, e := range evs[1 : len(evs)-1] {
		require.Equal(t, storage.EventOutput, e.Type)
		assert.Equal(t, "web-01", e.Step)
		if e.Stream == "stderr" {
			stderr = append(stderr, e.Lines...)
		} else {
			stdout = append(stdout, e.Lines...)
		}
	}
	require.Len(t, stdout, 4)
	for i, l := range stdout[:3] {
		assert.True(t, strings.HasPrefix(l, "00000"+string(rune('1'+i))+" xxx"), l)
		assert.Len(t, l, 1007)
	}
	assert.Equal(t, "end of output", stdout[3])
	assert.Equal(t, []string{"provisioning: stderr line"}, stderr)
}

// hangingEvents is a store whose event appends hang until their deadline,
// as a store in an outage would.
type hangingEvents struct {
	*storage.Filesystem
	calls chan struct{}
}

func (h *hangingEvents) AppendEvents(ctx context.Context, _ string, _ []storage.Event) error {
	select {
	case h.calls <- struct{}{}:
	default:
	}
	<-ctx.Done()
	return ctx.Err()
}

// A store that hangs on events neither fails the step nor holds it back
// for more than LiveDrainTimeout; the events are dropped and counted.
func TestRunNushellLiveEventsStoreOutageIsHarmless(t *testing.T) {
	fs, id := fsStoreWithTask(t)
	st := &hangingEvents{Filesystem: fs, calls: make(chan struct{}, 1)}
	env, acts := nuActivities(t, st)
	before := activities.LiveEventsDropped.Load()
	start := time.Now()
	val, err := env.ExecuteActivity(acts.RunNushell, activities.NuStep{TaskID: id, Step: "web-01", Args: []string{"2", "0"}})
	took := time.Since(start)
	require.NoError(t, err)
	var res activities.NuStepResult
	require.NoError(t, val.Get(&res))
	assert.Contains(t, res.Stdout, "end of output")
	extra := took - time.Duration(res.DurationMS)*time.Millisecond
	t.Logf("step took %s, nu %d ms: %s more with the store hanging", took, res.DurationMS, extra)
	assert.Less(t, extra, activities.LiveDrainTimeout+time.Second, "the step waits at most LiveDrainTimeout for its events")
	select {
	case <-st.calls:
	default:
		t.Fatal("no append was attempted")
	}
	require.Eventually(t, func() bool { return activities.LiveEventsDropped.Load() > before },
		2*activities.LiveFlushTimeout+time.Second, 20*time.Millisecond, "dropped events are counted")
}
