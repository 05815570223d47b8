//go:build !linux

package storage

import "io/fs"

// ctimeOf: not read on this platform (the Stat_t field differs per
// system); ChangeStamp then gives no stamps.
func ctimeOf(fs.FileInfo) (int64, bool) { return 0, false }
