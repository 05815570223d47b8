//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package storage

import (
	"io/fs"
	"os"
)

// Without flock only the in-process semaphore serialises writers: on these
// platforms several processes must not share one data directory.
func tryFlock(*os.File) (bool, error) { return true, nil }

func funlock(*os.File) error { return nil }

func inodeOf(fs.FileInfo) uint64 { return 0 }
