package replica

import (
	"context"
	"slices"
	"sync"
)

// rangeLock serialises overlapping byte ranges. Every application write
// holds its range from before it is sent to the peer until its local write
// completed, so overlapping writes in flight together are sent and written
// locally in the same order, and the peer applies them in send order: both
// disks end up alike (ordering rule 3). A resync copy holds its range from
// its local read until the target acknowledged it, so resync data never
// overwrites a newer application write on the target (ordering rule 5).
// Ranges that do not overlap proceed in parallel. Waiters are woken in no
// particular order.
//
// Held ranges live in a slice scanned under one mutex: they are few (the
// requests in flight), and a range nobody waits for costs no channel.
type rangeLock struct {
	mu   sync.Mutex
	held []*heldRange
}

type heldRange struct {
	l        *rangeLock
	off, end int64
	done     chan struct{} // made by the first waiter, closed on unlock; guarded by l.mu
}

func newRangeLock() *rangeLock { return &rangeLock{} }

// lock waits until no held range overlaps [off, off+length) and takes it. The
// returned function releases it and must be called exactly once.
func (l *rangeLock) lock(ctx context.Context, off, length int64) (func(), error) {
	h := &heldRange{l: l, off: off, end: off + length}
	for {
		l.mu.Lock()
		var wait chan struct{}
		for _, o := range l.held {
			if o.off < h.end && h.off < o.end {
				if o.done == nil {
					o.done = make(chan struct{})
				}
				wait = o.done
				break
			}
		}
		if wait == nil {
			l.held = append(l.held, h)
			l.mu.Unlock()
			return h.unlock, nil
		}
		l.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (h *heldRange) unlock() {
	l := h.l
	l.mu.Lock()
	if i := slices.Index(l.held, h); i >= 0 {
		l.held = slices.Delete(l.held, i, i+1)
	}
	done := h.done
	l.mu.Unlock()
	if done != nil {
		close(done)
	}
}
