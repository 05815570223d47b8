package surrealproc

import "syscall"

// sysProcAttr puts the server in its own process group (a Ctrl-C in the
// terminal reaches the orchestrator, which then stops the server in order,
// rather than both at once) and has the kernel SIGKILL it if the
// orchestrator dies without stopping it.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
