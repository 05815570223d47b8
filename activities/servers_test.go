package activities_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/provisioning/orchestrator/activities"
	"github.com/provisioning/orchestrator/driver/nushell"
	"github.com/provisioning/orchestrator/internal/testsupport"
)

// echoScript prints its first argument to stdout as it is and exits with
// its second.
const echoScript = `def --wrapped main [...rest] {
    print --no-newline ($rest | first)
    exit ($rest | get 1 | into int)
}
`

// ListServers parses the JSON array a real nu printed, returns the names
// even when they are bad (the workflow validates them), and fails for good
// on anything but one JSON array of strings; a failing script is the
// same error as RunNushell's.
func TestListServersParsesTheScriptsJSON(t *testing.T) {
	st, id := fsStoreWithTask(t)
	script := filepath.Join(t.TempDir(), "provisioning")
	require.NoError(t, os.WriteFile(script, []byte(echoScript), 0o644))
	var s testsuite.WorkflowTestSuite
	env := s.NewTestActivityEnvironment()
	acts := &activities.Activities{Runner: &nushell.Runner{NuPath: testsupport.NuPath(t), ScriptPath: script}, Store: st}
	env.RegisterActivity(acts)
	list := func(out string, code int) ([]string, error) {
		val, err := env.ExecuteActivity(acts.ListServers, activities.NuStep{TaskID: id, Step: "list servers", Args: []string{out, fmt.Sprint(code)}})
		if err != nil {
			return nil, err
		}
		var names []string
		require.NoError(t, val.Get(&names))
		return names, nil
	}

	names, err := list(`["web-01","web-02"]`+"\n", 0)
	require.NoError(t, err)
	assert.Equal(t, []string{"web-01", "web-02"}, names)
	names, err = list(`[]`, 0)
	require.NoError(t, err)
	assert.Equal(t, []string{}, names)
	names, err = list(`["../x"]`, 0)
	require.NoError(t, err)
	assert.Equal(t, []string{"../x"}, names, "validation is the workflow's")

	for _, bad := range []string{`web-01 web-02`, `{"servers":["a"]}`, `[1,2]`, `["a"] ["b"]`, ``, strings.Repeat("x", 300)} {
		_, err := list(bad, 0)
		var appErr *temporal.ApplicationError
		require.ErrorAs(t, err, &appErr, "%q", bad)
		assert.Equal(t, activities.ErrTypeServerListOutput, appErr.Type())
		assert.True(t, appErr.NonRetryable())
		assert.Contains(t, appErr.Message(), "server list printed")
		assert.LessOrEqual(t, len(appErr.Message()), 300, "the quote is bounded")
	}

	_, err = list(`["a"]`, 3)
	var appErr *temporal.ApplicationError
	require.ErrorAs(t, err, &appErr)
	assert.Equal(t, activities.ErrTypeNushellPermanent, appErr.Type())

	out, err := st.GetStepOutput(t.Context(), id, "list servers", 0)
	require.NoError(t, err)
	assert.Equal(t, `["a"]`, out.Stdout, "the listing's output is stored like a step's")
}
