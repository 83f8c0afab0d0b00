package replica

import (
	"context"
	"sync"
)

// rangeLock serialises overlapping byte ranges: an application write and a
// resync copy of the same block never run at the same time, so resync data
// can never overwrite a newer application write on the target. Ranges that
// do not overlap proceed in parallel. Waiters are woken in no particular
// order; the NBD server already orders overlapping application writes.
type rangeLock struct {
	mu   sync.Mutex
	held map[*heldRange]struct{}
}

type heldRange struct {
	off, end int64
	done     chan struct{} // closed on unlock
}

func newRangeLock() *rangeLock {
	return &rangeLock{held: make(map[*heldRange]struct{})}
}

// lock waits until no held range overlaps [off, off+length) and takes it. The
// returned function releases it and must be called exactly once.
func (l *rangeLock) lock(ctx context.Context, off, length int64) (func(), error) {
	h := &heldRange{off: off, end: off + length, done: make(chan struct{})}
	for {
		l.mu.Lock()
		var wait chan struct{}
		for o := range l.held {
			if o.off < h.end && h.off < o.end {
				wait = o.done
				break
			}
		}
		if wait == nil {
			l.held[h] = struct{}{}
			l.mu.Unlock()
			return func() {
				l.mu.Lock()
				delete(l.held, h)
				l.mu.Unlock()
				close(h.done)
			}, nil
		}
		l.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}
