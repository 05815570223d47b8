package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// The change journal of the filesystem backend:
// {tasks dir}/.locks/list.journal, one record per task write, appended by
// every process that shares the directory.
//
// Create, Put and Delete append the task's ID (36 bytes and a newline)
// after renaming its file into place (or removing it), still holding the
// task's stripe lock; List's index (filesystem_index.go) reads the records
// appended since its last refresh and re-reads just those files. Because
// the record follows the rename, a file read after its record was seen is
// at least that new. A process that dies between the rename and the append
// leaves a write the journal does not name: the index's background
// safety-net scan picks it up (as it does files changed by hand).
//
// The journal is not fsynced: after a machine crash every process starts
// again and builds its index by a full scan. When it grows beyond
// journalRotateSize the writer that noticed replaces it with an empty file
// while holding every stripe lock, so no write is between its rename and
// its append; readers see the new inode (or a shorter file) and make one
// full scan.

const (
	// journalName is the journal's file name in the lock directory (where
	// no task file can be).
	journalName = "list.journal"
	// journalRecordLen is one record: a task ID and a newline.
	journalRecordLen = 36 + 1
	// journalRotateSize: a journal longer than this (about 113,000
	// records) is replaced by an empty one.
	journalRotateSize = 4 << 20
)

// journalPos is how far a reader has read the journal: its inode and the
// offset after the last complete record read.
type journalPos struct {
	ino uint64
	off int64
}

func (f *Filesystem) journalPath() string { return filepath.Join(f.lockDir, journalName) }

// appendJournal records that id's file changed (call it under id's stripe
// lock, after the rename or remove) and returns the journal's size after
// the append. A failure (a full disk) is logged, not returned: the write
// itself is done; this store's own index re-reads id on its next refresh,
// other processes' find it by their safety-net scan.
func (f *Filesystem) appendJournal(id string) int64 {
	if f.journalHook != nil {
		if err := f.journalHook(id); err != nil {
			return 0
		}
	}
	end, err := f.appendJournalRecord(id)
	if err != nil {
		f.invalidate(id)
		f.log().Warn("cannot append to the task list journal; other processes' List sees the write after their next full scan", "id", id, "error", err)
	}
	return end
}

// appendJournalRecord appends id's record (open, write, close: a journal
// rotated by another process is never written to through an old file).
func (f *Filesystem) appendJournalRecord(id string) (int64, error) {
	var rec [journalRecordLen]byte
	copy(rec[:], id)
	rec[journalRecordLen-1] = '\n'
	fh, err := os.OpenFile(f.journalPath(), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return 0, err
	}
	_, err = fh.Write(rec[:])
	var end int64
	if err == nil {
		end, err = fh.Seek(0, io.SeekCurrent)
	}
	return end, errors.Join(err, fh.Close())
}

// journalEnd opens (creating if needed) the journal and returns its end.
func (f *Filesystem) journalEnd() (journalPos, error) {
	fh, err := os.OpenFile(f.journalPath(), os.O_RDONLY|os.O_CREATE, 0o644)
	if err != nil {
		return journalPos{}, unavailable("open task list journal", err)
	}
	defer fh.Close()
	fi, err := fh.Stat()
	if err != nil {
		return journalPos{}, unavailable("stat task list journal", err)
	}
	return journalPos{ino: inodeOf(fi), off: fi.Size()}, nil
}

// readJournal returns the IDs recorded after pos and the position after
// the last complete record; rotated when the journal is not the file pos
// refers to any more (replaced, removed, or shorter), which calls for a
// full scan. The common case, nothing new, is one stat.
func (f *Filesystem) readJournal(pos journalPos) (ids []string, next journalPos, rotated bool, err error) {
	fi, err := os.Stat(f.journalPath())
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, pos, true, nil
	case err != nil:
		return nil, pos, false, unavailable("stat task list journal", err)
	case inodeOf(fi) != pos.ino || fi.Size() < pos.off:
		return nil, pos, true, nil
	case fi.Size() == pos.off:
		return nil, pos, false, nil
	}
	fh, err := os.Open(f.journalPath())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, pos, true, nil
	}
	if err != nil {
		return nil, pos, false, unavailable("open task list journal", err)
	}
	defer fh.Close()
	if fi, err = fh.Stat(); err != nil {
		return nil, pos, false, unavailable("stat task list journal", err)
	}
	if inodeOf(fi) != pos.ino || fi.Size() < pos.off {
		return nil, pos, true, nil
	}
	buf := make([]byte, fi.Size()-pos.off)
	n, err := fh.ReadAt(buf, pos.off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, pos, false, unavailable("read task list journal", err)
	}
	buf = buf[:n]
	// Only complete lines: a record being appended may be half visible.
	done := 0
	for done < len(buf) {
		nl := -1
		for i := done; i < len(buf); i++ {
			if buf[i] == '\n' {
				nl = i
				break
			}
		}
		if nl < 0 {
			if len(buf)-done > journalRecordLen {
				// Longer than any record without its newline: not a
				// record being appended but garbage; skip it.
				done = len(buf)
			}
			break
		}
		if id := string(buf[done:nl]); isCanonicalUUID(id) {
			ids = append(ids, id)
		}
		done = nl + 1
	}
	return ids, journalPos{ino: pos.ino, off: pos.off + int64(done)}, false, nil
}

// maybeRotateJournal replaces the journal by an empty file when an append
// left it longer than journalRotateSize. Call it without holding a stripe
// lock: it takes all of them (in order, so two rotating processes cannot
// deadlock), so that no write is between its rename and its append.
func (f *Filesystem) maybeRotateJournal(end int64) {
	if end <= journalRotateSize {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var unlocks []func()
	defer func() {
		for _, u := range unlocks {
			u()
		}
	}()
	for i := range lockStripes {
		u, err := f.lockStripe(ctx, uint32(i))
		if err != nil {
			f.log().Warn("cannot rotate the task list journal", "error", err)
			return
		}
		unlocks = append(unlocks, u)
	}
	if fi, err := os.Stat(f.journalPath()); err == nil && fi.Size() <= journalRotateSize {
		return // another writer rotated it meanwhile
	}
	tmp, err := os.CreateTemp(f.lockDir, tempPrefix+"journal-*")
	if err == nil {
		name := tmp.Name()
		err = errors.Join(tmp.Chmod(0o644), tmp.Close())
		if err == nil {
			err = os.Rename(name, f.journalPath())
		}
		if err != nil {
			_ = os.Remove(name)
		}
	}
	if err != nil {
		f.log().Warn("cannot rotate the task list journal", "error", fmt.Errorf("%w", err))
	}
}
