package app

import (
	"bytes"
	"flag"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The output format is for people and scripts alike: one labelled fact a
// line, in a fixed order.
func TestBuildInfoWriteTo(t *testing.T) {
	for _, c := range []struct {
		info BuildInfo
		want string
	}{
		{
			BuildInfo{Version: "v1.4.0", Commit: "0123456789abcdef0123456789abcdef01234567", Modified: true,
				GoVersion: "go1.26.8", Backends: []string{"filesystem", "surrealdb-embedded", "surrealdb-server"}},
			"orchestrator v1.4.0\n" +
				"commit   0123456789abcdef0123456789abcdef01234567 (modified)\n" +
				"go       go1.26.8\n" +
				"backends filesystem, surrealdb-embedded, surrealdb-server\n",
		},
		{
			BuildInfo{Version: "dev", GoVersion: "go1.26.8", Backends: []string{"filesystem"}},
			"orchestrator dev\ncommit   unknown\ngo       go1.26.8\nbackends filesystem\n",
		},
	} {
		var out bytes.Buffer
		n, err := c.info.WriteTo(&out)
		require.NoError(t, err)
		assert.Equal(t, c.want, out.String())
		assert.Equal(t, int64(out.Len()), n)
	}
}

// The backends listed are the registry's, minus the types a build left out
// (whose openers only explain that).
func TestCompiledBackendsFollowTheRegistry(t *testing.T) {
	registered := map[string]int{"zeta": 1, "alpha": 2, "left-out": 3}
	assert.Equal(t, []string{"alpha", "zeta"}, backendsOf(registered, map[string]bool{"left-out": true}))
	assert.Equal(t, backendsOf(openers, builtWithout), ReadBuildInfo().Backends)
	assert.Contains(t, ReadBuildInfo().Backends, StorageFilesystem)
}

func TestRunVersion(t *testing.T) {
	var out, errOut bytes.Buffer
	require.NoError(t, RunVersion(nil, &out, &errOut))
	var want bytes.Buffer
	_, err := ReadBuildInfo().WriteTo(&want)
	require.NoError(t, err)
	assert.Equal(t, want.String(), out.String())
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	require.Len(t, lines, 4, out.String())
	assert.Regexp(t, `^orchestrator \S+$`, lines[0])
	assert.Regexp(t, `^commit   (unknown|[0-9a-f]{40})( \(modified\))?$`, lines[1])
	assert.Equal(t, "go       "+runtime.Version(), lines[2])
	assert.Equal(t, "backends "+strings.Join(compiledBackends(), ", "), lines[3])
	assert.Empty(t, errOut.String())

	err = RunVersion([]string{"extra"}, &out, &errOut)
	require.ErrorContains(t, err, `version: unexpected argument "extra"`)

	errOut.Reset()
	require.ErrorIs(t, RunVersion([]string{"-h"}, &out, &errOut), flag.ErrHelp)
	assert.Contains(t, errOut.String(), "Usage: orchestrator version")
}
