package nushell

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Cgroups gives every run a cgroup v2 of its own below one parent, so that
// the end of a step reaches every process the step started, whatever it
// did to escape: left the session with setsid, cleared its environment,
// double-forked. A cgroup is inherited by every descendant and cannot be
// left without privileges, so the run's cgroup.procs is the complete list
// and cgroup.kill (Linux 5.14+) ends them all at once. It also reaches the
// processes of a worker that crashed: OpenCgroups sweeps the run cgroups
// whose owning process is gone.
//
// Use OpenCgroups; a nil *Cgroups means runs are tracked by session and
// RunTokenEnv only.
type Cgroups struct {
	parent string
	// canKill reports whether the kernel has cgroup.kill.
	canKill bool
}

// DefaultCgroupParentName is the directory OpenCgroups("") creates in the
// orchestrator's own cgroup to hold the run cgroups.
const DefaultCgroupParentName = "orchestrator-steps"

// runCgroupPrefix starts every run cgroup's name; the owner's pid follows,
// so a sweep knows whose runs it finds.
const runCgroupPrefix = "run-"

// OpenCgroups prepares parent (a directory on a cgroup v2 mount) to hold the
// run cgroups, creating it if needed, and removes what crashed workers left
// there (killing their processes). An empty parent means
// DefaultCgroupParentName inside the cgroup this process belongs to on the
// cgroup v2 (or hybrid "unified") mount.
//
// It fails when there is no cgroup v2 mount or it is not writable (as
// inside most containers); the caller then runs without cgroups and says so.
func OpenCgroups(parent string) (*Cgroups, error) {
	if parent == "" {
		own, err := ownCgroupDir()
		if err != nil {
			return nil, err
		}
		parent = filepath.Join(own, DefaultCgroupParentName)
	}
	if err := os.Mkdir(parent, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("creating the step cgroup parent: %w", err)
	}
	if _, err := os.Stat(filepath.Join(parent, "cgroup.procs")); err != nil {
		return nil, fmt.Errorf("%s is not a cgroup v2 directory: %w", parent, err)
	}
	c := &Cgroups{parent: parent}
	_, err := os.Stat(filepath.Join(parent, "cgroup.kill"))
	c.canKill = err == nil
	// A probe: cgroupfs may let us create the parent yet refuse processes
	// in its children (a domain controller enabled above us, say).
	probe, err := c.newRun("probe")
	if err != nil {
		return nil, err
	}
	if err := probe.remove(time.Second); err != nil {
		return nil, err
	}
	c.sweep()
	return c, nil
}

// Parent is the directory holding the run cgroups.
func (c *Cgroups) Parent() string { return c.parent }

// sweep kills and removes the run cgroups whose owner process is gone: a
// crashed worker's steps, which Pdeathsig only reaches for nu itself.
func (c *Cgroups) sweep() {
	entries, err := os.ReadDir(c.parent)
	if err != nil {
		return
	}
	for _, e := range entries {
		owner, ok := runCgroupOwner(e.Name())
		if !ok || !e.IsDir() || owner == os.Getpid() || processExists(owner) {
			continue
		}
		rc := &runCgroup{dir: filepath.Join(c.parent, e.Name()), canKill: c.canKill}
		rc.killAll()
		_ = rc.remove(DefaultKillGrace)
	}
}

func runCgroupOwner(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, runCgroupPrefix)
	if !ok {
		return 0, false
	}
	pidStr, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(pidStr)
	return pid, err == nil && pid > 0
}

func processExists(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// runCgroup is one run's cgroup.
type runCgroup struct {
	dir     string
	fd      *os.File // open while the run starts: clone3 places nu in it
	canKill bool
}

// newRun creates the cgroup of one run, named after this process and the
// run's token.
func (c *Cgroups) newRun(token string) (*runCgroup, error) {
	dir := filepath.Join(c.parent, fmt.Sprintf("%s%d-%s", runCgroupPrefix, os.Getpid(), token))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating the run cgroup: %w", err)
	}
	fd, err := os.Open(dir)
	if err != nil {
		_ = os.Remove(dir)
		return nil, fmt.Errorf("opening the run cgroup: %w", err)
	}
	return &runCgroup{dir: dir, fd: fd, canKill: c.canKill}, nil
}

// members lists the processes in the cgroup. Exited processes leave it at
// once (zombies included), so every pid listed is alive.
func (rc *runCgroup) members() ([]int, error) {
	data, err := os.ReadFile(filepath.Join(rc.dir, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	var pids []int
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if pid, err := strconv.Atoi(strings.TrimSpace(sc.Text())); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// killAll sends SIGKILL to everything in the cgroup: atomically through
// cgroup.kill where the kernel has it (a process forking meanwhile cannot
// slip through), else to each listed process.
func (rc *runCgroup) killAll() {
	if rc.canKill {
		if err := os.WriteFile(filepath.Join(rc.dir, "cgroup.kill"), []byte("1"), 0); err == nil {
			return
		}
	}
	pids, _ := rc.members()
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// closeFD releases the directory handle once the run has started.
func (rc *runCgroup) closeFD() {
	if rc.fd != nil {
		_ = rc.fd.Close()
		rc.fd = nil
	}
}

// remove deletes the (empty) cgroup, waiting up to wait for the kernel to
// finish taking killed processes out of it.
func (rc *runCgroup) remove(wait time.Duration) error {
	rc.closeFD()
	deadline := time.Now().Add(wait)
	for {
		err := os.Remove(rc.dir)
		if err == nil || errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
			return fmt.Errorf("removing the run cgroup: %w", err)
		}
		time.Sleep(procPollInterval)
	}
}

// ownCgroupDir is this process's cgroup directory on the cgroup v2 mount.
func ownCgroupDir() (string, error) {
	mount, root, err := cgroup2Mount()
	if err != nil {
		return "", err
	}
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	for line := range strings.Lines(string(data)) {
		if path, ok := strings.CutPrefix(strings.TrimSpace(line), "0::"); ok {
			rel, err := filepath.Rel(root, path)
			if err != nil || strings.HasPrefix(rel, "..") {
				// Our cgroup is outside what the mount shows (a
				// cgroup namespace boundary): use the mount's root.
				rel = "."
			}
			return filepath.Join(mount, rel), nil
		}
	}
	return "", errors.New("this process has no cgroup v2 membership (/proc/self/cgroup has no 0:: line)")
}

// cgroup2Mount finds the cgroup v2 mount point and the cgroup it shows as
// its root, from /proc/self/mountinfo.
func cgroup2Mount() (mount, root string, err error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", "", err
	}
	for line := range strings.Lines(string(data)) {
		// id parent major:minor root mountpoint opts [optional...] - fstype source superopts
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		if f := strings.Fields(post); len(f) == 0 || f[0] != "cgroup2" {
			continue
		}
		f := strings.Fields(pre)
		if len(f) < 6 {
			continue
		}
		if strings.HasPrefix(f[5], "ro") && (len(f[5]) == 2 || f[5][2] == ',') {
			return "", "", fmt.Errorf("the cgroup v2 mount %s is read-only", f[4])
		}
		return unescapeMountinfo(f[4]), unescapeMountinfo(f[3]), nil
	}
	return "", "", errors.New("no cgroup v2 mount in /proc/self/mountinfo")
}

// unescapeMountinfo undoes the octal escapes (\040 for a space) of
// mountinfo's path fields.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
