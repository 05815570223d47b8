package storage

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"strconv"
	"time"
)

var _ ChangeStamper = (*Filesystem)(nil)

// ChangeStamp implements ChangeStamper from the stat of the task's file
// and of its audit file: inode, size, mtime and ctime of each ("-" for a
// file that does not exist). Every write of a task renames a new file into
// place and every audit append grows its file, and both set the ctime,
// which no tool can set back (utimes sets only atime and mtime, and moves
// the ctime to now).
//
// A stamp is "" (no stamp) when either file's mtime or ctime is within
// racyWindow of now: a write after the stamp could otherwise land in the
// same timestamp tick (kernel clocks are coarse; some filesystems keep
// whole seconds) with the same size and a reused inode number and look
// unchanged. Outside that window a later write carries a later time. This
// is Git's racy-index rule; it relies on the clock not being stepped
// back. On platforms without a ctime here every stamp is "".
func (f *Filesystem) ChangeStamp(ctx context.Context, id string) (string, error) {
	if err := ValidateID(id); err != nil {
		return "", err
	}
	if err := f.usable(ctx); err != nil {
		return "", err
	}
	settled := time.Now().Add(-racyWindow).UnixNano()
	b := make([]byte, 0, 112)
	for i, p := range [2]string{f.path(id), f.auditPath(id)} {
		if i > 0 {
			b = append(b, '/')
		}
		fi, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			b = append(b, '-')
			continue
		}
		if err != nil {
			return "", unavailable("stat task "+id, err)
		}
		ctime, ok := ctimeOf(fi)
		mtime := fi.ModTime().UnixNano()
		if !ok || max(ctime, mtime) >= settled {
			return "", nil
		}
		b = strconv.AppendUint(b, inodeOf(fi), 36)
		for _, n := range [3]int64{fi.Size(), mtime, ctime} {
			b = strconv.AppendInt(append(b, '.'), n, 36)
		}
	}
	return string(b), nil
}
