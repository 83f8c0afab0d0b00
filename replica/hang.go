package replica

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"
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
// the background: what it returns then is dropped, and the detached disk,
// Inconsistent, gets a full resync when it is attached again. A node that
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
	go func() { done <- call(ctx) }()
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case err := <-done:
			return err
		case <-t.C:
		}
		waited := n.clock.Now().Sub(start).Round(time.Millisecond)
		reason := fmt.Sprintf("local disk has not completed %s of %d bytes at %d in %s (--disk-timeout %s)", what, length, off, waited, d)
		if length == 0 {
			reason = fmt.Sprintf("local disk has not completed %s in %s (--disk-timeout %s)", what, waited, d)
		}
		err := n.detachFor(reason)
		if err == nil {
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
