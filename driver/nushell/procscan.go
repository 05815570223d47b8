package nushell

import (
	"bytes"
	"os"
	"strconv"
	"sync"
)

// procScans is the process's shared /proc scanner.
var procScans procScanner

// procScanner shares scans of /proc between the runs that end at about
// the same time. A scan reads every process's stat (and the environment of
// the few that can have escaped a run), which costs O(processes): with
// hundreds of runs at once, one scan per run's end was most of the
// runner's CPU. A run's request is answered by a scan that started after
// the request, so it sees the machine as it was after the run's nu exited.
type procScanner struct {
	mu       sync.Mutex
	waiting  []*scanRequest
	scanning bool
	// scans counts scans done (tests and benchmarks).
	scans int
}

type scanRequest struct {
	r    run
	pids []int
	err  error
	done chan struct{}
}

// members returns the live processes of run r (see sessionMembers). The
// first caller while no scan runs becomes the scanner for everyone waiting.
func (p *procScanner) members(r run) ([]int, error) {
	req := &scanRequest{r: r, done: make(chan struct{})}
	p.mu.Lock()
	p.waiting = append(p.waiting, req)
	if p.scanning {
		p.mu.Unlock()
		<-req.done
		return req.pids, req.err
	}
	p.scanning = true
	for len(p.waiting) > 0 {
		batch := p.waiting
		p.waiting = nil
		p.scans++
		p.mu.Unlock()
		scanProc(batch)
		for _, q := range batch {
			close(q.done)
		}
		p.mu.Lock()
	}
	p.scanning = false
	p.mu.Unlock()
	return req.pids, req.err
}

// scanProc answers every request of batch from one pass over /proc.
func scanProc(batch []*scanRequest) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		for _, q := range batch {
			q.err = err
		}
		return
	}
	bySession := make(map[int][]*scanRequest, len(batch))
	byToken := make(map[string]*scanRequest, len(batch))
	for _, q := range batch {
		bySession[q.r.sid] = append(bySession[q.r.sid], q)
		if q.r.token != "" {
			byToken[q.r.token] = q
		}
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // exited since ReadDir
		}
		st, ok := parseProcStatFields(data)
		if !ok || st.state == 'Z' || st.state == 'X' {
			continue
		}
		if qs, ok := bySession[st.session]; ok {
			for _, q := range qs {
				q.pids = append(q.pids, pid)
			}
			continue
		}
		if len(byToken) == 0 || !mayHaveEscapedAny(st, batch) {
			continue
		}
		if q, ok := byToken[runTokenOf(e.Name())]; ok && mayHaveEscaped(st, q.r) {
			q.pids = append(q.pids, pid)
		}
	}
}

// mayHaveEscapedAny reports whether the process can belong to any run of
// batch (mayHaveEscaped), so that its environment is worth reading.
func mayHaveEscapedAny(st procStat, batch []*scanRequest) bool {
	for _, q := range batch {
		if q.r.token != "" && mayHaveEscaped(st, q.r) {
			return true
		}
	}
	return false
}

// runTokenOf is the RunTokenEnv value in process pid's environment, or ""
// (none, or unreadable: other users' processes).
func runTokenOf(pid string) string {
	env, err := os.ReadFile("/proc/" + pid + "/environ")
	if err != nil {
		return ""
	}
	prefix := []byte(RunTokenEnv + "=")
	for kv := range bytes.SplitSeq(env, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, prefix); ok {
			return string(v)
		}
	}
	return ""
}
