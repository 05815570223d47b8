package sdk_test

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// CI jobs import this package: it must not drag in the service's heavy
// dependencies (the Docker client, Prometheus, echo, the SurrealDB client).
func TestSDKStaysLight(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	goTool, err := exec.LookPath("go")
	require.NoError(t, err, "the go command is needed to list the package's dependencies")
	out, err := exec.Command(goTool, "list", "-deps", ".").CombinedOutput()
	require.NoError(t, err, "%s", out)
	deps := strings.Fields(string(out))
	require.Contains(t, deps, "github.com/provisioning/orchestrator/workflows", "the dependency list is real")
	for _, d := range deps {
		for _, banned := range []string{"github.com/docker/", "github.com/prometheus/", "github.com/labstack/echo", "github.com/surrealdb/"} {
			if strings.HasPrefix(d, banned) {
				t.Errorf("sdk depends on %s", d)
			}
		}
	}
}
