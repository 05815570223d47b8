package testsupport

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TemporalCLIInstall is the command that installs the pinned `temporal` CLI
// into the repo's bin/ (gitignored). v1.5.1 is the newest release that still
// builds with `go install`.
const TemporalCLIInstall = `GOBIN="$PWD/bin" go install github.com/temporalio/cli/cmd/temporal@v1.5.1`

// TemporalCLI returns the temporal CLI executable the tests should run,
// looking in order at:
//  1. $ORCHESTRATOR_TEMPORAL_CLI (the test fails if it is set but not
//     executable: a misconfigured CI must not turn into a skip);
//  2. <repo root>/bin/temporal, where TemporalCLIInstall puts it;
//  3. temporal on PATH.
//
// If none is found the test is skipped, or fails when
// ORCHESTRATOR_REQUIRE_TEMPORAL_CLI=1 (CI sets it).
func TemporalCLI(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("ORCHESTRATOR_TEMPORAL_CLI"); p != "" {
		resolved, err := exec.LookPath(p)
		if err != nil {
			t.Fatalf("ORCHESTRATOR_TEMPORAL_CLI=%q is not an executable: %v", p, err)
		}
		return resolved
	}
	local := filepath.Join(RepoRoot(t), "bin", "temporal")
	if _, err := exec.LookPath(local); err == nil {
		return local
	}
	if p, err := exec.LookPath("temporal"); err == nil {
		return p
	} else if !errors.Is(err, exec.ErrNotFound) {
		t.Logf("temporal on PATH is not usable: %v", err)
	}
	const msg = "temporal CLI not found: run `" + TemporalCLIInstall + "` in the repo root, " +
		"or set ORCHESTRATOR_TEMPORAL_CLI"
	if os.Getenv("ORCHESTRATOR_REQUIRE_TEMPORAL_CLI") == "1" {
		t.Fatal(msg + " (ORCHESTRATOR_REQUIRE_TEMPORAL_CLI=1, so this is a failure, not a skip)")
	}
	t.Skip(msg)
	return ""
}
