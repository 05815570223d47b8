package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/storage"
)

// A provider script that daemonizes a helper the hard way (new session,
// empty environment, so neither the session nor the run token ties it to
// the step) does not leave it running once the step is over: the service
// runs every step in a cgroup of its own (--step-cgroup auto). CI requires
// cgroups (ORCHESTRATOR_REQUIRE_CGROUP=1); elsewhere the test is skipped
// where the service would fall back to session tracking.
func TestStepLeavesNoDaemonBehind(t *testing.T) {
	if os.Getenv("ORCHESTRATOR_REQUIRE_CGROUP") != "1" {
		if _, err := os.Stat("/sys/fs/cgroup"); err != nil || os.Geteuid() != 0 {
			t.Skip("needs root and a writable cgroup v2 mount; set ORCHESTRATOR_REQUIRE_CGROUP=1 to require it")
		}
	}
	for _, tool := range []string{"setsid", "env", "sh"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "daemon.pid")
	script := filepath.Join(dir, "provisioning")
	require.NoError(t, os.WriteFile(script, []byte(`def --wrapped main [...rest] {
    ^setsid -f env -i sh -c 'echo $$ > "$1.tmp" && mv "$1.tmp" "$1"; exec sleep 300' sh `+strconv.Quote(pidFile)+` o> /dev/null e> /dev/null
    while not (`+strconv.Quote(pidFile)+` | path exists) { sleep 10ms }
    print "daemon started"
}
`), 0o644))
	a, _ := launchApp(t, appConfig(t, withNu(t, script)))
	h := &harness{t: t, app: a, base: baseURL(a)}
	id := h.submit("/workflows/servers/create", map[string]any{"infra": "lab", "settings": "./s.yaml", "servers": []string{"d-01"}})
	task, _ := waitTask(t, h.base, id, 60*time.Second, func(t storage.Task) bool { return t.Status.Terminal() })
	require.Equal(t, storage.StatusCompleted, task.Status, task.Error)

	data, err := os.ReadFile(pidFile)
	require.NoError(t, err)
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	require.NoError(t, err)
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("the daemon %d outlived its step", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
