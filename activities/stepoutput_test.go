package activities_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/testsuite"

	"github.com/provisioning/orchestrator/activities"
	"github.com/provisioning/orchestrator/driver/nushell"
	"github.com/provisioning/orchestrator/internal/testsupport"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/storage/storagetest"
)

// chattyScript prints `<kib> KiB` of numbered lines to stdout, a line to
// stderr, and exits with the code given as its last argument.
const chattyScript = `def --wrapped main [...rest] {
    let kib = ($rest | first | into int)
    let line = ("x" | fill --character "x" --width 1000)
    for i in 1..$kib { print $"($i | fill --alignment right --character '0' --width 6) ($line)" }
    print --stderr "provisioning: stderr line"
    print "end of output"
    exit ($rest | last | into int)
}
`

func nuActivities(t *testing.T, store storage.Store) (*testsuite.TestActivityEnvironment, *activities.Activities) {
	t.Helper()
	script := filepath.Join(t.TempDir(), "provisioning")
	require.NoError(t, os.WriteFile(script, []byte(chattyScript), 0o644))
	var s testsuite.WorkflowTestSuite
	env := s.NewTestActivityEnvironment()
	acts := &activities.Activities{
		Runner: &nushell.Runner{NuPath: testsupport.NuPath(t), ScriptPath: script},
		Store:  store,
	}
	env.RegisterActivity(acts)
	return env, acts
}

func fsStoreWithTask(t *testing.T) (*storage.Filesystem, string) {
	t.Helper()
	st, err := storage.NewFilesystem(t.TempDir())
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	id := storagetest.NewID()
	require.NoError(t, st.Create(context.Background(), storage.Task{ID: id, Status: storage.StatusRunning, CreatedAt: time.Now(), Version: 1}))
	return st, id
}

// The store gets the whole captured output of an attempt, success or
// failure; the activity result (history) keeps its last 8 KiB, which is
// the end of what the store has.
func TestRunNushellStoresFullOutput(t *testing.T) {
	st, id := fsStoreWithTask(t)
	env, acts := nuActivities(t, st)

	val, err := env.ExecuteActivity(acts.RunNushell, activities.NuStep{TaskID: id, Step: "web-01", Args: []string{"40", "0"}})
	require.NoError(t, err)
	var res activities.NuStepResult
	require.NoError(t, val.Get(&res))
	require.Len(t, res.Stdout, activities.MaxReturnedOutput)

	out, err := st.GetStepOutput(context.Background(), id, "web-01", 0)
	require.NoError(t, err)
	assert.Equal(t, int(res.Attempt), out.Attempt)
	assert.Equal(t, 0, out.ExitCode)
	assert.Empty(t, out.Error)
	assert.Greater(t, len(out.Stdout), 40*1000, "the whole 40 KiB, not the 8 KiB tail")
	assert.True(t, strings.HasPrefix(out.Stdout, "000001 "), "from the first line")
	assert.True(t, strings.HasSuffix(out.Stdout, res.Stdout), "the history tail is the end of the stored output")
	assert.Equal(t, "provisioning: stderr line\n", out.Stderr)
	assert.False(t, out.StdoutTruncated)

	// A failed attempt is stored too, with its exit code and error.
	_, err = env.ExecuteActivity(acts.RunNushell, activities.NuStep{TaskID: id, Step: "web-02", Args: []string{"12", "1"}})
	require.Error(t, err)
	out, err = st.GetStepOutput(context.Background(), id, "web-02", 0)
	require.NoError(t, err)
	assert.Equal(t, 1, out.ExitCode)
	assert.Contains(t, out.Error, "exited with code 1")
	assert.Greater(t, len(out.Stdout), 12*1000)
}

// failingOutputs is a store whose output writes fail; it records the
// deadline each write was given.
type failingOutputs struct {
	*storage.Filesystem
	deadlines []time.Duration
}

func (f *failingOutputs) PutStepOutput(ctx context.Context, _ storage.StepOutput) error {
	d, ok := ctx.Deadline()
	if !ok {
		return errors.New("no deadline")
	}
	f.deadlines = append(f.deadlines, time.Until(d))
	return storage.ErrUnavailable
}

// A store that cannot keep the output changes nothing about the step's
// result, and the write runs under OutputWriteTimeout.
func TestRunNushellOutputWriteFailureIsHarmless(t *testing.T) {
	fs, id := fsStoreWithTask(t)
	st := &failingOutputs{Filesystem: fs}
	env, acts := nuActivities(t, st)
	val, err := env.ExecuteActivity(acts.RunNushell, activities.NuStep{TaskID: id, Step: "web-01", Args: []string{"1", "0"}})
	require.NoError(t, err, "the step succeeds although its output could not be stored")
	var res activities.NuStepResult
	require.NoError(t, val.Get(&res))
	assert.Contains(t, res.Stdout, "end of output")
	require.Len(t, st.deadlines, 1)
	assert.LessOrEqual(t, st.deadlines[0], activities.OutputWriteTimeout)
	assert.Greater(t, st.deadlines[0], time.Duration(0))

	// A store without the capability: nothing is written, nothing fails.
	env2, acts2 := nuActivities(t, struct{ storage.Store }{fs})
	_, err = env2.ExecuteActivity(acts2.RunNushell, activities.NuStep{TaskID: id, Step: "web-03", Args: []string{"1", "0"}})
	require.NoError(t, err)
	attempts, err := fs.ListStepOutputAttempts(context.Background(), id, "web-03")
	require.NoError(t, err)
	assert.Empty(t, attempts)
}
