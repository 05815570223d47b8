package nushell

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// testCgroups opens a parent of the test's own below this process's cgroup,
// removed at the end. Without a writable cgroup v2 mount the test is
// skipped, or fails when ORCHESTRATOR_REQUIRE_CGROUP=1 (CI sets it).
func testCgroups(t *testing.T) *Cgroups {
	t.Helper()
	own, err := ownCgroupDir()
	if err == nil {
		var c *Cgroups
		parent := filepath.Join(own, "orchestrator-test-"+newRunToken())
		if c, err = OpenCgroups(parent); err == nil {
			t.Cleanup(func() { _ = os.Remove(parent) })
			return c
		}
	}
	msg := "needs a writable cgroup v2 mount (root on a host with /sys/fs/cgroup or /sys/fs/cgroup/unified): " + err.Error()
	if os.Getenv("ORCHESTRATOR_REQUIRE_CGROUP") == "1" {
		t.Fatal(msg + " (ORCHESTRATOR_REQUIRE_CGROUP=1, so this is a failure, not a skip)")
	}
	t.Skip(msg)
	return nil
}

func runCgroupDirs(t *testing.T, c *Cgroups) []string {
	t.Helper()
	entries, err := os.ReadDir(c.Parent())
	require.NoError(t, err)
	var dirs []string
	for _, e := range entries {
		if e.IsDir() {
			dirs = append(dirs, e.Name())
		}
	}
	return dirs
}

// A process that leaves the session and starts over with an empty
// environment carries nothing the /proc scan could find; its cgroup still
// ties it to the run, and the run's end kills it.
func TestRunWithCgroupsStopsProcessesThatClearedTheirEnvironment(t *testing.T) {
	t.Parallel()
	setsid, err := exec.LookPath("setsid")
	if err != nil {
		t.Skip("needs setsid (util-linux)")
	}
	envBin, err := exec.LookPath("env")
	if err != nil {
		t.Skip("needs env (coreutils)")
	}
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("needs sh")
	}
	script := `def main [setsid: string, envbin: string, sh: string, pidfile: string] {
    ^$setsid -f $envbin -i $sh -c 'echo $$ > "$1.tmp" && mv "$1.tmp" "$1"; exec sleep 300' sh $pidfile o> /dev/null e> /dev/null
    while not ($pidfile | path exists) { sleep 10ms }
    print "finished"
}`
	run := func(t *testing.T, cg *Cgroups) int {
		pidFile := filepath.Join(t.TempDir(), "pid")
		r := scriptRunner(t, script)
		r.KillGrace = 200 * time.Millisecond
		r.Cgroups = cg
		res, err := r.Run(testContext(t), []string{setsid, envBin, sh, pidFile}, nil, nil, 0)
		require.NoError(t, err, res.Stderr)
		data, err := os.ReadFile(pidFile)
		require.NoError(t, err)
		pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
		require.NoError(t, err)
		return pid
	}
	cg := testCgroups(t)

	// The baseline shows what the cgroup is needed for.
	survivor := run(t, nil)
	t.Cleanup(func() { _ = syscall.Kill(survivor, syscall.SIGKILL) })
	assert.False(t, processGone(survivor), "without a cgroup the process should be beyond reach")

	requireAllGone(t, []int{run(t, cg)})
	assert.Empty(t, runCgroupDirs(t, cg), "the run's cgroup is removed when it ends")
}

// Cancelling a run with cgroups kills its whole tree, as without them.
func TestRunWithCgroupsCancelKillsEverything(t *testing.T) {
	t.Parallel()
	cg := testCgroups(t)
	pidFile := filepath.Join(t.TempDir(), "pid")
	r := scriptRunner(t, `def main [pidfile: string] {
    let p = (job spawn { ^sh -c 'echo $$ > "$1.tmp" && mv "$1.tmp" "$1"; exec sleep 300' sh $pidfile })
    sleep 300sec
}`)
	r.KillGrace = 200 * time.Millisecond
	r.Cgroups = cg
	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := r.Run(ctx, []string{pidFile}, nil, nil, 0)
		done <- err
	}()
	pid := awaitPidFile(t, pidFile)
	cancel()
	require.Error(t, <-done)
	requireAllGone(t, []int{pid})
	assert.Empty(t, runCgroupDirs(t, cg))
}

// A worker that crashed leaves its steps' processes running in their
// cgroups (Pdeathsig reaches nu only); the next OpenCgroups on that parent
// kills them and removes the cgroups, leaving live owners' runs alone.
func TestOpenCgroupsSweepsRunsOfDeadOwners(t *testing.T) {
	t.Parallel()
	cg := testCgroups(t)

	dead := exec.Command("true")
	require.NoError(t, dead.Run())
	deadPid := dead.ProcessState.Pid()

	start := func(owner int) (string, *exec.Cmd) {
		dir := filepath.Join(cg.Parent(), runCgroupPrefix+strconv.Itoa(owner)+"-"+newRunToken())
		require.NoError(t, os.Mkdir(dir, 0o755))
		fd, err := os.Open(dir)
		require.NoError(t, err)
		defer fd.Close()
		cmd := exec.Command("sleep", "300")
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(fd.Fd())}
		require.NoError(t, cmd.Start())
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			_ = os.Remove(dir)
		})
		return dir, cmd
	}
	orphanDir, orphan := start(deadPid)
	liveDir, live := start(os.Getpid())

	reopened, err := OpenCgroups(cg.Parent())
	require.NoError(t, err)
	assert.Equal(t, cg.Parent(), reopened.Parent())

	state, err := orphan.Process.Wait()
	require.NoError(t, err)
	assert.Equal(t, syscall.SIGKILL, state.Sys().(syscall.WaitStatus).Signal())
	assert.NoDirExists(t, orphanDir)

	assert.DirExists(t, liveDir, "a live owner's run is not touched")
	assert.Nil(t, live.ProcessState)
	assert.NoError(t, live.Process.Signal(syscall.Signal(0)))
}

func TestUnescapeMountinfo(t *testing.T) {
	assert.Equal(t, "/sys/fs/cgroup", unescapeMountinfo("/sys/fs/cgroup"))
	assert.Equal(t, "/mnt/a b\tc", unescapeMountinfo(`/mnt/a\040b\011c`))
	assert.Equal(t, `/x\`, unescapeMountinfo(`/x\`))
}

func TestRunCgroupOwner(t *testing.T) {
	pid, ok := runCgroupOwner("run-123-abcdef")
	assert.True(t, ok)
	assert.Equal(t, 123, pid)
	for _, name := range []string{"probe", "run-", "run-x-abc", "run-0-a", "run-12"} {
		_, ok := runCgroupOwner(name)
		assert.False(t, ok, name)
	}
}

// awaitPidFile waits for a script to write its pid file (atomically, by
// rename) and returns the pid.
func awaitPidFile(t *testing.T, path string) int {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for {
		if data, err := os.ReadFile(path); err == nil {
			pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
			require.NoError(t, err)
			return pid
		}
		require.True(t, time.Now().Before(deadline), "no pid file %s", path)
		time.Sleep(10 * time.Millisecond)
	}
}
