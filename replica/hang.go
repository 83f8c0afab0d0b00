package replica

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/urbd/urbd/protocol"
)

// A disk that fails returns an error, which detach handles; a disk that
// hangs returns nothing, and the application's request waits with it.
// disk-timeout (DRBD's) bounds that wait on a Primary whose peer holds the
// data: the disk is detached and the request served by the peer.

// errDiskTimeout is the error of a local request given up after
// disk-timeout, once the disk was detached: the caller serves the request
// from the peer, as after a disk error.
var errDiskTimeout = errors.New("no answer from the disk within --disk-timeout")

// hungWarnEvery bounds how often a node that cannot detach its hung disk
// says so in the log.
const hungWarnEvery = time.Minute

// CheckDiskTimeout says what is wrong with d as disk-timeout, or nil: a
// duration, or 0 for off.
func CheckDiskTimeout(d time.Duration) error {
	if d < 0 {
		return fmt.Errorf("disk-timeout %s: use a duration such as 30s, or 0 for off", d)
	}
	return nil
}

// ParseDiskTimeout parses a disk-timeout as typed (urbd adjust, the
// resource file) and checks it.
func ParseDiskTimeout(s string) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return 0, fmt.Errorf("disk-timeout %q: use a duration such as 30s, or 0 for off", s)
	}
	return d, CheckDiskTimeout(d)
}

// SetDiskTimeout changes disk-timeout (`urbd adjust --disk-timeout`), for
// the requests that start after it; 0 turns it off.
func (n *Node) SetDiskTimeout(d time.Duration) error {
	if err := CheckDiskTimeout(d); err != nil {
		return fmt.Errorf("replica: %w", err)
	}
	if n.diskTimeout.Swap(int64(d)) != int64(d) {
		n.log.Info("disk-timeout changed", "disk_timeout", d)
	}
	return nil
}

// timedLocal runs call, an application request to this node's disk of
// length bytes at off (what names it: "a write", "a flush", "a read"...).
// Without disk-timeout, or on a Diskless node, it just calls it. With it,
// call runs in its own goroutine; when it has not returned after the
// timeout, the node detaches its disk if its peer holds the data (a Primary
// connected to an UpToDate peer, with no resync running: goDisklessLocked),
// and timedLocal returns errDiskTimeout, leaving call to finish, or not, in
// the background, no longer counted in lo: (localAbandoned): what it
// returns then is dropped, and the detached disk, Inconsistent, gets a
// full resync when it is attached again. A node that
// cannot detach goes on waiting for the disk, as without disk-timeout (it
// has no other copy to serve from), trying again every timeout, and says so
// in the log at most once a minute.
//
// call must not write into memory the caller reuses after timedLocal
// returns (a read goes to a buffer of its own; see ReadAt).
func (n *Node) timedLocal(ctx context.Context, what string, off, length int64, call func(context.Context) error) error {
	d := time.Duration(n.diskTimeout.Load())
	if d <= 0 || n.isDiskless() {
		return call(ctx)
	}
	start := n.clock.Now()
	done := make(chan error, 1)
	var state atomic.Int32 // 0 running, 1 returned, 2 given up on
	go func() {
		err := call(ctx)
		if !state.CompareAndSwap(0, 1) {
			n.stats.localAbandoned.Add(-1)
		}
		done <- err
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case err := <-done:
			return err
		case <-t.C:
		}
		waited := n.clock.Now().Sub(start).Round(time.Millisecond)
		op := watchedOp{what: what, off: off, length: length}
		reason := fmt.Sprintf("local disk has not completed %s in %s (--disk-timeout %s)", op, waited, d)
		err := n.detachFor(reason)
		if err == nil {
			if state.CompareAndSwap(0, 2) {
				// Still at the detached disk, perhaps for good: no
				// longer in lo: or the blocked flag (localPending).
				n.stats.localAbandoned.Add(1)
			}
			return errDiskTimeout
		}
		if n.hungWarned.shouldSay(n.clock.Now()) {
			n.log.Warn("the local disk does not answer and cannot be detached: waiting for it", "waited", waited, "request", what, "why", err)
		}
		t.Reset(d)
	}
}

// rateGate lets one caller through per hungWarnEvery.
type rateGate struct{ last atomic.Int64 }

func (g *rateGate) shouldSay(now time.Time) bool {
	last := g.last.Load()
	return now.UnixNano()-last >= int64(hungWarnEvery) && g.last.CompareAndSwap(last, now.UnixNano())
}

// A Secondary's disk that hangs holds its Primary's writes, and under
// protocol C the application with them, while the daemon still answers
// pings. ko-count lets the Primary notice that from afar; with disk-timeout
// the Secondary notices it itself: once a request it runs for the Primary
// (a replicated write, a flush, a read) has waited disk-timeout, it leaves
// the Primary, Outdated, and the Primary goes on alone.

// diskWatch holds the disk requests a Secondary runs for its Primary that
// have not returned, while disk-timeout is set (session.checkHungDisk).
// Requests that start while it is off are not watched.
type diskWatch struct {
	mu   sync.Mutex
	next uint64               // the token of the next request
	ops  map[uint64]watchedOp // by token
}

// watchedOp is a request diskWatch holds, or one timedLocal names.
type watchedOp struct {
	what        string // "a replicated write", "a flush"...
	off, length int64  // length 0: the request has no range (a flush)
	start       time.Time
}

// String names op as a reason does: "a replicated write of 4096 bytes at
// 8192", "a flush".
func (op watchedOp) String() string {
	if op.length == 0 {
		return op.what
	}
	return fmt.Sprintf("%s of %d bytes at %d", op.what, op.length, op.off)
}

// begin counts a request to this node's disk for the peer (diskBegin)
// and, when disk-timeout is set, records it, starting now; it returns the
// token end takes (0: not recorded).
func (s *session) begin(what string, off, length int64) uint64 {
	s.n.diskBegin()
	if s.n.diskTimeout.Load() <= 0 {
		return 0
	}
	w := &s.watch
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ops == nil {
		w.ops = make(map[uint64]watchedOp)
	}
	w.next++
	w.ops[w.next] = watchedOp{what: what, off: off, length: length, start: time.Now()}
	return w.next
}

// end records that the request begin returned token for has returned.
func (s *session) end(token uint64) {
	s.n.diskEnd()
	if token == 0 {
		return
	}
	s.watch.mu.Lock()
	delete(s.watch.ops, token)
	s.watch.mu.Unlock()
}

// oldest returns the request that has waited longest, if any.
func (w *diskWatch) oldest() (op watchedOp, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, o := range w.ops {
		if !ok || o.start.Before(op.start) {
			op, ok = o, true
		}
	}
	return op, ok
}

// checkHungDisk runs on the keepalive's ticks. Once a request this node
// runs for its peer has waited disk-timeout, it leaves: its disk marked
// Outdated (it lacks writes the Primary goes on to answer; the Primary is
// told and fences nothing), a goodbye that names the request, the
// local-io-error handler, and the session ends with a localStop. The
// waiting writes then complete on the Primary, marked out of sync, as for
// any peer loss. The hung request stays behind, and with it the session's
// goroutines, so this node refuses to connect as busy until the disk
// answers, then connects again by itself and takes a bitmap resync (see
// busy). A Secondary that serves a Diskless Primary stays: its disk holds
// that Primary's only data, and leaving would fail every request; it says
// so in the log at most once a minute.
func (s *session) checkHungDisk(now time.Time) error {
	d := time.Duration(s.n.diskTimeout.Load())
	op, ok := s.watch.oldest()
	if d <= 0 || !ok || now.Sub(op.start) < d {
		return nil
	}
	n := s.n
	waited := now.Sub(op.start).Round(time.Millisecond)
	if n.State().servesDisklessPrimary() {
		if n.hungWarned.shouldSay(now) {
			n.log.Warn("the local disk does not answer, but the Primary is Diskless and this disk holds its only data: waiting for it", "waited", waited, "request", op.String())
		}
		return nil
	}
	hung := fmt.Sprintf("has not completed %s in %s (--disk-timeout %s)", op, waited, d)
	stop := &localStop{reason: "local disk " + hung + "; left the peer, which goes on alone; this node connects again once its disk answers"}
	s.leaving.Store(stop)
	n.log.Error(stop.reason)
	n.outdateBeforeLeaving("local disk " + hung + ": left the Primary, which goes on alone")
	s.goodbye("the peer's disk " + hung + ": the peer left, and comes back once its disk answers")
	n.event("local-io-error", map[string]string{"URBD_REASON": stop.reason})
	return stop
}

// replicatedNoun names a replicated write of flags for checkHungDisk.
func replicatedNoun(flags uint32) string {
	switch {
	case flags&protocol.FlagTrim != 0:
		return "a replicated trim"
	case flags&protocol.FlagZero != 0:
		return "a replicated zeroing"
	}
	return "a replicated write"
}
