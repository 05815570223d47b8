//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package surrealproc

import (
	"errors"
	"os"
	"syscall"
)

// Without flock only one orchestrator process may use a data directory.
func lockStore(string) (*os.File, error) { return nil, nil }

func unlockStore(*os.File) {}

func sysProcAttr() *syscall.SysProcAttr { return nil }

// terminateSignal: no SIGTERM here; Stop kills the server.
func terminateSignal(*os.Process) error { return errors.New("no SIGTERM on this platform") }
