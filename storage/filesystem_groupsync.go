package storage

import "sync"

// groupSync coalesces the fsyncs of one directory within a process (group
// commit): a caller needs an fsync that starts after its own rename or
// create, so while one fsync runs every caller arriving meanwhile waits for
// it and then shares the next one. With k writers at once that is about two
// fsyncs instead of k, and never fewer than the durability rule needs: a
// caller returns only after an fsync that began after it called sync
// finished. Writers in other processes fsync on their own.
type groupSync struct {
	mu      sync.Mutex
	cond    *sync.Cond
	started uint64 // fsyncs begun
	done    uint64 // fsyncs finished; one runs at a time, so one runs while started > done
	err     error  // the result of fsync number done
	waiting int    // callers waiting for an fsync another caller runs
}

// sync returns once an fsync of path (by do) that began after this call
// has finished, with that fsync's error (or a later one's, which covers
// this caller too).
func (g *groupSync) sync(path string, do func(string) error) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cond == nil {
		g.cond = sync.NewCond(&g.mu)
	}
	// A running fsync may have begun before the caller's write: only the
	// next one to begin counts.
	need := g.started + 1
	for g.done < need {
		if g.started > g.done {
			g.waiting++
			g.cond.Wait()
			g.waiting--
			continue
		}
		g.started++
		n := g.started
		g.mu.Unlock()
		err := do(path)
		g.mu.Lock()
		g.done, g.err = n, err
		g.cond.Broadcast()
	}
	return g.err
}

// dirSyncs holds the group fsyncs of the store's shared directories; the
// per-task output directories are fsynced directly.
type dirSyncs struct {
	tasks, audit, outputs groupSync
}

// fsync fsyncs the file or directory at path, shared with concurrent
// writers of this store when path is one of its shared directories.
func (f *Filesystem) fsync(path string) error {
	var g *groupSync
	switch path {
	case f.dir:
		g = &f.dirSyncs.tasks
	case f.auditDir:
		g = &f.dirSyncs.audit
	case f.outputsDir:
		g = &f.dirSyncs.outputs
	default:
		return syncPath(path)
	}
	do := syncPath
	if f.dirSyncHook != nil {
		do = f.dirSyncHook
	}
	if f.ungroupedDirSyncs {
		return do(path)
	}
	return g.sync(path, do)
}
