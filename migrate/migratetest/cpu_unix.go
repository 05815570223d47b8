//go:build unix

package migratetest

import (
	"syscall"
	"time"
)

// processCPU is the CPU time (user and system) this process used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// flushWrites has the kernel write back every dirty page before a side's
// clock starts, so that neither side's fsyncs also pay for the write-back
// of what the side before it (or the source's set-up) left behind.
func flushWrites() { syscall.Sync() }
