//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package surrealproc

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// lockStore takes an exclusive flock on path so that a second orchestrator
// process on the same data directory fails at once with a clear message
// instead of waiting for the SurrealDB server to refuse the locked store.
func lockStore(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("surrealproc: open lock file: %w", err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		owner := ""
		if b, rerr := os.ReadFile(path); rerr == nil {
			if pid := strings.TrimSpace(string(b)); pid != "" {
				owner = " (pid " + pid + ")"
			}
		}
		_ = f.Close()
		return nil, fmt.Errorf("surrealproc: the SurrealDB store %s is in use by another orchestrator process%s (lock %s): %w",
			strings.TrimSuffix(path, ".lock"), owner, path, err)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return f, nil
}

func unlockStore(f *os.File) {
	if f == nil {
		return
	}
	_ = f.Truncate(0)
	_ = f.Close() // releases the flock
}

// terminateSignal asks the server to shut down cleanly.
func terminateSignal(p *os.Process) error { return p.Signal(syscall.SIGTERM) }
