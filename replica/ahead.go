package replica

import (
	"context"
	"sync/atomic"
)

// aheadRun is the longest run of writes between two flushes that still
// counts as "flushes follow writes closely".
const aheadRun = 2

// flushAhead starts a node's fdatasync early when a flush is likely to
// follow the write just done.
//
// A database commits with a write and an fsync; fio --fsync=1 and ext4's
// journal behave alike. When the last run of writes between two flushes
// was at most aheadRun long, a node starts its fdatasync right after each
// of the next aheadRun writes, in the time it waits anyway: a Primary for
// its peer's answer, a Secondary for the next frame. The flush that
// follows then finds the write durable, or joins the sync already running
// (nbd.File.Flush skips or shares a sync that covers it). A wrong guess
// costs one fdatasync; a workload without flushes, or with long runs of
// writes between them, never starts one.
//
// wrote and flushed may be called from any goroutine; run does the syncs,
// one at a time, and kicks arriving meanwhile are merged.
type flushAhead struct {
	since atomic.Int64 // writes since the last flush
	short atomic.Bool  // the last run between two flushes had 1..aheadRun writes
	kick  chan struct{}
}

func newFlushAhead() *flushAhead { return &flushAhead{kick: make(chan struct{}, 1)} }

// wrote counts a completed write (not FUA) and reports whether a flush is
// likely to follow it; the caller then calls start once the frames it must
// send first have left.
func (f *flushAhead) wrote() bool {
	return f.since.Add(1) <= aheadRun && f.short.Load()
}

// flushed notes a flush (or a FUA write): it ends the current run. A flush
// with no write since the last one changes nothing.
func (f *flushAhead) flushed() {
	if n := f.since.Swap(0); n > 0 {
		f.short.Store(n <= aheadRun)
	}
}

// start asks run for an fdatasync; it never blocks.
func (f *flushAhead) start() {
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

// run performs the requested syncs on disk until ctx ends. A failed sync
// is the disk's business: it is sticky there, and the next real flush
// reports it.
func (f *flushAhead) run(ctx context.Context, flush func(context.Context) error) error {
	for {
		select {
		case <-f.kick:
			_ = flush(ctx)
		case <-ctx.Done():
			return nil
		}
	}
}

// flushAheadOnce is one sync started ahead, reported to Observe as
// "flush_ahead". It uses the disk's FlushBackground if it has one
// (nbd.File: the sync then leaves the Go processor free for the peer's
// answer), else its Flush.
func (n *Node) flushAheadOnce(ctx context.Context) error {
	if n.isDiskless() {
		return nil // the detached disk is not used
	}
	start := n.clock.Now()
	var err error
	if bg, ok := n.backend().(interface{ FlushBackground(context.Context) error }); ok {
		err = bg.FlushBackground(ctx)
	} else {
		err = n.backend().Flush(ctx)
	}
	n.observe("flush_ahead", false, 0, start)
	return err
}
