// Package testsupport finds the real external tools the tests exercise.
package testsupport

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// modulePath identifies this repository's go.mod, so RepoRoot cannot stop at
// some other module's go.mod (a vendored tool, a nested example).
const modulePath = "github.com/provisioning/orchestrator"

// RepoRoot returns the repository root: the nearest directory at or above the
// working directory (a test's package directory) whose go.mod declares this
// module. It fails the test if there is none.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatalf("repo root: %v", err)
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && declaresModule(data) {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("repo root: no go.mod for module %s at or above the working directory", modulePath)
		}
		dir = parent
	}
}

func declaresModule(gomod []byte) bool {
	for line := range bytes.Lines(gomod) {
		if f := bytes.Fields(line); len(f) == 2 && string(f[0]) == "module" && string(f[1]) == modulePath {
			return true
		}
	}
	return false
}

// NuPath returns the nu executable the tests should run, looking in order at:
//  1. $ORCHESTRATOR_NU_PATH (the test fails if it is set but not executable:
//     a misconfigured CI must not turn into a skip);
//  2. <repo root>/node_modules/@nushell/<os>-<arch>/bin/nu, which `npm install`
//     in the repo root provides (the version package.json pins);
//  3. nu on PATH.
//
// If none is found the test is skipped, or fails when ORCHESTRATOR_REQUIRE_NU=1
// (CI sets it, so CI can never pass by skipping).
func NuPath(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("ORCHESTRATOR_NU_PATH"); p != "" {
		resolved, err := exec.LookPath(p)
		if err != nil {
			t.Fatalf("ORCHESTRATOR_NU_PATH=%q is not an executable: %v", p, err)
		}
		return resolved
	}
	bundled := filepath.Join(RepoRoot(t), "node_modules", "@nushell", npmPlatform(), "bin", "nu")
	if _, err := exec.LookPath(bundled); err == nil {
		return bundled
	}
	if p, err := exec.LookPath("nu"); err == nil {
		return p
	} else if !errors.Is(err, exec.ErrNotFound) {
		t.Logf("nu on PATH is not usable: %v", err)
	}
	const msg = "nu (Nushell) not found: run `npm install` in the repo root (it installs " +
		"node_modules/@nushell/*/bin/nu), or set ORCHESTRATOR_NU_PATH"
	if os.Getenv("ORCHESTRATOR_REQUIRE_NU") == "1" {
		t.Fatal(msg + " (ORCHESTRATOR_REQUIRE_NU=1, so this is a failure, not a skip)")
	}
	t.Skip(msg)
	return ""
}

// npmPlatform names the platform package npm installs for this machine,
// e.g. linux-x64, the way Node spells os and arch.
func npmPlatform() string {
	arch := runtime.GOARCH
	switch arch {
	case "amd64":
		arch = "x64"
	case "386":
		arch = "ia32"
	}
	goos := runtime.GOOS
	if goos == "windows" {
		goos = "win32"
	}
	return goos + "-" + arch
}
