//go:build !unix

package migratetest

import "time"

// processCPU is not measured here: the benchmark logs report 0.
func processCPU() time.Duration { return 0 }

// flushWrites: no sync(2) here.
func flushWrites() {}
