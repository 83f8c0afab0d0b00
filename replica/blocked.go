package replica

import (
	"fmt"
	"sync"
	"time"

	"github.com/urbd/urbd/status"
)

// A disk or a peer that stops answering shows first as requests that wait
// while none completes. stallWatch measures that wait, for ko-count (the
// peer), for the status's blocked flag and line (the local disk and the
// peer), from counters the I/O paths keep anyway: what is in flight and
// what has completed.

// blockedAfter is how long requests must wait with none completing before
// the status calls the disk or the peer blocked: longer than a busy disk's
// usual pause, short enough to show a hang long before ko-count or
// disk-timeout acts on it.
const blockedAfter = 2 * time.Second

// stallWatch follows a count of completed requests over successive looks.
type stallWatch struct {
	mu      sync.Mutex
	done    uint64    // the count at the last look
	pending bool      // whether requests were in flight at the last look
	at      time.Time // the last look
	since   time.Time // since when requests have waited and none completed; zero when not so
}

// look records that requests are in flight (pending) and done have
// completed so far, at now, and returns how long requests have waited with
// none completing: zero when none waits or one completed since the last
// look. A request in flight at the last look and none completed since
// means it has waited at least since that look; a stall is measured from
// the first such look, so it may have lasted up to one look's interval
// longer.
func (w *stallWatch) look(now time.Time, pending bool, done uint64) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	progress := done != w.done
	prevAt, prevPending := w.at, w.pending
	w.done, w.pending, w.at = done, pending, now
	if !pending || progress {
		w.since = time.Time{}
		return 0
	}
	if w.since.IsZero() {
		w.since = now
		if prevPending && !prevAt.IsZero() {
			w.since = prevAt
		}
	}
	return now.Sub(w.since)
}

// diskBegin and diskEnd bracket a request to this node's disk, on either
// node: a client's write, read or flush on the Primary, the Primary's
// replicated write, flush or read on the Secondary, a resync's copy or
// read and a verify's read. The status counts those in flight (lo:) and
// calls the disk blocked when they wait and none completes (localBlocked).
func (n *Node) diskBegin() { n.stats.localPending.Add(1) }

func (n *Node) diskEnd() {
	n.stats.localPending.Add(-1)
	n.stats.localDone.Add(1)
}

// localPending is lo:, the requests in flight to this node's disk, less
// those disk-timeout gave up on (they wait at a detached disk).
func (n *Node) localPending() int64 {
	return n.stats.localPending.Load() - n.stats.localAbandoned.Load()
}

// localBlocked returns how long requests have waited on this node's disk
// with none completing, as of now (see stallWatch.look).
func (n *Node) localBlocked(now time.Time) time.Duration {
	return n.diskStall.look(now, n.localPending() > 0, n.stats.localDone.Load())
}

// blocked fills r's blocked fields: what has waited blockedAfter or more
// with none of its requests completing, the local disk (local) or the peer
// (peer, timeout being the session's), with a line for each.
func (n *Node) blocked(r *status.Resource, local, peer, timeout time.Duration, st State) {
	if local >= blockedAfter {
		r.DiskBlockedSeconds = int64(local / time.Second)
		line := fmt.Sprintf("the local disk has completed no request for %s", local.Round(time.Second))
		if d := time.Duration(n.diskTimeout.Load()); d > 0 {
			line += fmt.Sprintf(" (--disk-timeout %s)", d)
		}
		r.Blocked = append(r.Blocked, line)
	}
	if peer >= blockedAfter {
		r.PeerBlockedSeconds = int64(peer / time.Second)
		line := fmt.Sprintf("the peer has completed no request for %s", peer.Round(time.Second))
		switch ko := n.koCount.Load(); {
		case st.Disk == Diskless:
			line += " (this node is Diskless: it waits for the peer, whose disk holds the only data)"
		case ko > 0:
			line += fmt.Sprintf(" (dropped after %s: --ko-count %d × --timeout %s)", time.Duration(ko)*timeout, ko, timeout)
		default:
			line += " (--ko-count 0: waiting for it)"
		}
		r.Blocked = append(r.Blocked, line)
	}
}
