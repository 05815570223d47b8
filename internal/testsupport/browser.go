package testsupport

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Browser is what a browser test runs: node, and the Chromium that npm's
// playwright-core drives.
type Browser struct {
	// Node is the node executable.
	Node string
	// Chromium is the browser executable.
	Chromium string
}

// BrowserInstall says how to get the browser test's parts.
const BrowserInstall = "apt-get install -y chromium (Debian's) and npm install (playwright-core, pinned in package-lock.json)"

// HeadlessBrowser returns node and Chromium for a browser test: Chromium
// from $ORCHESTRATOR_CHROMIUM (the test fails if it is set but not
// executable), else /usr/bin/chromium or chromium on PATH; node on PATH;
// and playwright-core installed in the repo's node_modules. When a part is
// missing the test is skipped, or fails when ORCHESTRATOR_REQUIRE_BROWSER=1
// (CI sets it).
func HeadlessBrowser(t testing.TB) Browser {
	t.Helper()
	var b Browser
	missing := ""
	if p := os.Getenv("ORCHESTRATOR_CHROMIUM"); p != "" {
		resolved, err := exec.LookPath(p)
		if err != nil {
			t.Fatalf("ORCHESTRATOR_CHROMIUM=%q is not an executable: %v", p, err)
		}
		b.Chromium = resolved
	} else if p, err := exec.LookPath("/usr/bin/chromium"); err == nil {
		b.Chromium = p
	} else if p, err := exec.LookPath("chromium"); err == nil {
		b.Chromium = p
	} else {
		missing = "chromium not found"
	}
	if p, err := exec.LookPath("node"); err == nil {
		b.Node = p
	} else if missing == "" {
		missing = "node not found"
	}
	if _, err := os.Stat(filepath.Join(RepoRoot(t), "node_modules", "playwright-core", "package.json")); err != nil && missing == "" {
		missing = "playwright-core is not installed in node_modules"
	}
	if missing == "" {
		return b
	}
	msg := missing + ": " + BrowserInstall + ", or set ORCHESTRATOR_CHROMIUM"
	if os.Getenv("ORCHESTRATOR_REQUIRE_BROWSER") == "1" {
		t.Fatal(msg + " (ORCHESTRATOR_REQUIRE_BROWSER=1, so this is a failure, not a skip)")
	}
	t.Skip(msg)
	return b
}
