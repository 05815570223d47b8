//go:build darwin || freebsd || netbsd || openbsd || dragonfly

package surrealproc

import "syscall"

// sysProcAttr puts the server in its own process group (a Ctrl-C in the
// terminal reaches the orchestrator, which then stops the server in order).
// Without a parent-death signal, servers honouring SURREAL_EXIT_WITH_PARENT=1
// still exit when the orchestrator dies.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
