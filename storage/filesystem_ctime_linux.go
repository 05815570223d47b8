package storage

import (
	"io/fs"
	"syscall"
)

// ctimeOf is the inode change time of the file fi describes, in Unix
// nanoseconds.
func ctimeOf(fi fs.FileInfo) (int64, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return st.Ctim.Nano(), true
}
