package replica

import (
	"context"
	"fmt"
	"runtime"
	"time"

	"github.com/urbd/urbd/nbd"
	"github.com/urbd/urbd/protocol"
)

// The Node is an nbd.Backend: the NBD server calls these for application I/O.
// As a SummedWriter it gets each write's checksum from the server, computed
// while the payload arrived, for the frame that carries it to the peer; it
// wants them while it has a peer session.
var (
	_ nbd.Backend      = (*Node)(nil)
	_ nbd.SummedWriter = (*Node)(nil)
)

// Size is the size of the replicated disk.
func (n *Node) Size() int64 { return n.backend().Size() }

// WriteAt replicates a write; see writeOp.
func (n *Node) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	return n.write(ctx, p, off, fua, checksum{})
}

// WriteAtSummed is WriteAt for a payload whose CRC-32C (protocol.Checksum)
// is sum; the frame to the peer carries it without checksumming p again.
func (n *Node) WriteAtSummed(ctx context.Context, p []byte, off int64, fua bool, sum uint32) error {
	return n.write(ctx, p, off, fua, checksum{sum: sum, ok: true})
}

// WantSums reports whether writes are replicated, or may be soon: while a
// peer session exists.
func (n *Node) WantSums() bool { return n.hasSession.Load() }

// checksum is a write payload's CRC-32C, if ok.
type checksum struct {
	sum uint32
	ok  bool
}

func (n *Node) write(ctx context.Context, p []byte, off int64, fua bool, sum checksum) error {
	var flags uint32
	if fua {
		flags |= protocol.FlagFUA
	}
	return n.writeOp(ctx, "write", off, int64(len(p)), p, sum, flags, func(ctx context.Context) error {
		return n.backend().WriteAt(ctx, p, off, fua)
	})
}

// Trim replicates a discard.
func (n *Node) Trim(ctx context.Context, off, length int64, fua bool) error {
	flags := uint32(protocol.FlagTrim)
	if fua {
		flags |= protocol.FlagFUA
	}
	return n.writeOp(ctx, "trim", off, length, nil, checksum{}, flags, func(ctx context.Context) error {
		return n.backend().Trim(ctx, off, length, fua)
	})
}

// WriteZeroes replicates a zeroing write.
func (n *Node) WriteZeroes(ctx context.Context, off, length int64, fua, noHole bool) error {
	flags := uint32(protocol.FlagZero)
	if fua {
		flags |= protocol.FlagFUA
	}
	if noHole {
		flags |= protocol.FlagNoHole
	}
	return n.writeOp(ctx, "zero", off, length, nil, checksum{}, flags, func(ctx context.Context) error {
		return n.backend().WriteZeroes(ctx, off, length, fua, noHole)
	})
}

// writeOp is the replicated write path shared by writes, trims and zeroes:
//
//  1. wait while writes are suspended (on-peer-loss suspend, peer away);
//  2. make the activity-log extent durable (ordering rule 1);
//  3. take the range lock of its blocks (ordering rules 3 and 5);
//  4. send to the peer (if connected and replicating) and write locally, in
//     parallel; a Diskless node only sends, and a local error may make it
//     Diskless (detach);
//  5. start a flush ahead if one is likely to follow (see flushAhead);
//  6. answer when the protocol says so. The extent stays referenced until the
//     peer answered or the write was marked out of sync.
//
// sum is data's CRC-32C if known; replicate computes it otherwise.
func (n *Node) writeOp(ctx context.Context, kind string, off, length int64, data []byte, sum checksum, flags uint32, local func(context.Context) error) error {
	if err := n.CheckServe(); err != nil {
		return fmt.Errorf("%w: %w", nbd.ErrReadOnly, err)
	}
	start := n.clock.Now()
	n.stats.appPending.Add(1)
	defer n.stats.appPending.Add(-1)
	if err := n.waitNotSuspended(ctx); err != nil {
		return err
	}
	// From BeginWrite until the write is done here (not while it waits
	// for the peer): Resize holds growMu alone to replace the store.
	n.growMu.RLock()
	if err := n.store().BeginWrite(off, length); err != nil {
		n.growMu.RUnlock()
		return fmt.Errorf("replica: %s: activity log: %w", n.cfg.Name, err)
	}
	unlock, err := n.rl.lock(ctx, off, length)
	if err != nil {
		n.store().EndWrite(off, length)
		n.growMu.RUnlock()
		return err
	}
	n.rate.NoteAppIO(length)

	proto := n.protocol() // the protocol this write is answered by
	req := n.replicate(off, length, data, sum, flags, proto)
	if n.isDiskless() {
		// Without a session the write fails: it stays off the disk being
		// attached too, which a resumed copy takes as equal to the peer's
		// wherever no write was in flight to the peer (copyPlanLocked).
		if n.attachWrites.Load() && req != nil {
			n.writeAttaching(ctx, kind, off, length, local)
		}
		if n.markDiskless.Load() {
			n.store().MarkOutOfSync(off, length)
		}
		unlock()
		n.growMu.RUnlock()
		return n.writeDiskless(ctx, kind, off, length, req, start)
	}
	fua := flags&protocol.FlagFUA != 0
	ahead := false
	if fua {
		n.ahead.flushed()
	} else {
		// Start the sync of a likely flush while the peer answers (not
		// with protocol A, which does not wait for the peer).
		ahead = n.ahead.wrote() && req != nil && proto != 'A'
	}
	if req != nil && (fua || ahead) {
		// The local write ends in fdatasync, or one follows it: the frame
		// leaves first (see handOff).
		req.s.handOff()
	} else if req != nil {
		// Let the other requests of the burst this one came in queue
		// their frames too, so that the stream's flusher sends them all
		// after this local write rather than after every one of them:
		// with one processor (--cpus 1, the default on two CPUs) the
		// peer would otherwise sit idle while this node writes the whole
		// burst. 4k random writes at queue depth 32 ran 6-18% faster.
		runtime.Gosched()
	}

	lerr := n.writeLocal(ctx, kind, off, length, local)
	unlock()
	if ahead && lerr == nil {
		n.ahead.start()
	}
	n.observe(kind, false, int(length), start)

	if req == nil {
		// Not replicating: the write exists here only.
		n.store().MarkOutOfSync(off, length)
		n.store().EndWrite(off, length)
		n.growMu.RUnlock()
		if lerr == nil && n.suspendOnLoss.Load() {
			return n.waitInSync(ctx, off, length)
		}
		if lerr == nil {
			return n.waitFenced(ctx)
		}
		return lerr
	}
	if lerr != nil {
		// The peer may have the data and we do not: the blocks differ.
		n.store().MarkOutOfSync(off, length)
		if n.detach(errorVerb(kind), off, length, lerr) {
			// The disk is out of service; the peer's copy answers.
			n.growMu.RUnlock()
			if n.writeDiskless(ctx, kind, off, length, req, start) != nil {
				return lerr
			}
			return nil
		}
	}
	n.growMu.RUnlock()
	peerOK := req.wait(ctx, proto)
	n.observe(kind, true, int(length), start)
	if !peerOK && lerr == nil && n.suspendOnLoss.Load() {
		return n.waitInSync(ctx, off, length)
	}
	if !peerOK && lerr == nil {
		return n.waitFenced(ctx)
	}
	return lerr
}

// writeLocal runs a write's local part, local, under disk-timeout
// (timedLocal), counted in the status (lo: while the disk has it, dw: for
// the bytes of a write, not a trim or zeroing).
func (n *Node) writeLocal(ctx context.Context, kind string, off, length int64, local func(context.Context) error) error {
	var err error
	if n.diskTimeout.Load() > 0 {
		err = n.timedLocal(ctx, requestNoun(kind), off, length, func(ctx context.Context) error {
			n.diskBegin()
			defer n.diskEnd()
			return local(ctx)
		})
	} else {
		n.diskBegin()
		err = local(ctx)
		n.diskEnd()
	}
	if kind != "trim" && kind != "zero" {
		n.stats.diskWrite.Add(uint64(length))
	}
	return err
}

// replicate sends a write to the peer if a session is replicating, and
// returns the request tracking the peer's answers (those protocol proto waits
// for), or nil when the write is not replicated: no session, or the node is
// Ahead of its peer, or goes Ahead (or drops the session) for this write
// (on-congestion, see congested). The request releases the activity-log
// extent when it completes.
func (n *Node) replicate(off, length int64, data []byte, sum checksum, flags uint32, proto byte) *request {
	s := n.session()
	if s == nil || n.pulledAhead.Load() {
		return nil
	}
	if proto == 'A' && n.congested(s, int64(len(data))) {
		return nil // Ahead, or the connection dropped: recorded in the bitmap
	}
	if !sum.ok {
		sum = checksum{sum: protocol.Checksum(data), ok: true}
	}
	return s.sendWrite(off, length, data, sum.sum, flags, proto)
}

// session returns the peer session, or nil when there is none.
func (n *Node) session() *session {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.sess
}

// sessionState returns the peer session (nil when there is none) and the
// state, as of one moment: one lock for a read that asks both.
func (n *Node) sessionState() (*session, State) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.sess, n.st
}

// Flush makes every completed write durable on both disks (protocol C and B;
// protocol A flushes the peer too but cannot promise it for queued writes).
// Concurrent flushes share fdatasync calls on each side (group commit). When
// the peer fails its flush, the writes it covered are marked out of sync
// before the peer's answer completes (session.complete), and Flush returns the
// local result: the data is durable here and the next resync copies it. With
// resource-and-stonith fencing it returns only once the peer is fenced
// (waitFenced), and waits while writes are frozen.
func (n *Node) Flush(ctx context.Context) error {
	start := n.clock.Now()
	n.ahead.flushed()
	if err := n.waitFenced(ctx); err != nil {
		return err
	}
	peerOK, err := n.flushBoth(ctx)
	n.observe("flush", false, 0, start)
	if err == nil && !peerOK {
		err = n.waitFenced(ctx)
	}
	return err
}

// flushBoth runs the local fdatasync and, when a session replicates, the
// peer's, at the same time. It returns the local result, and whether the
// peer flushed too: a peer that fails its flush has the writes it covered
// marked out of sync first.
func (n *Node) flushBoth(ctx context.Context) (peerOK bool, err error) {
	var peer *request
	if s := n.session(); s != nil {
		if peer = s.sendFlush(); peer != nil {
			s.handOff()
		}
	}
	if n.isDiskless() {
		// The peer's flush only: its disk holds the only copy.
		if peer == nil || !peer.wait(ctx, 'C') {
			return false, errNoDisk
		}
		return true, nil
	}
	err = n.timedLocal(ctx, "a flush", 0, 0, n.flushDisk)
	if peer != nil {
		peerOK = peer.wait(ctx, 'C')
	}
	if err != nil && peerOK && n.detach("flushing", 0, 0, err) {
		// The peer made every write durable; this disk is out of service.
		return true, nil
	}
	return peerOK, err
}

// flushDisk runs the application's fdatasync of this node's disk, counted
// in the status (lo: while it runs).
func (n *Node) flushDisk(ctx context.Context) error {
	n.diskBegin()
	defer n.diskEnd()
	return n.backend().Flush(ctx)
}

func (n *Node) observe(kind string, peer bool, bytes int, start time.Time) {
	if n.cfg.Observe != nil {
		n.cfg.Observe(kind, peer, bytes, n.clock.Now().Sub(start))
	}
}

// waitNotSuspended blocks a new write while writes are suspended.
func (n *Node) waitNotSuspended(ctx context.Context) error {
	if !n.suspendOnLoss.Load() && n.fencingPolicy() != FenceResourceAndStonith {
		return nil // the common case costs no lock
	}
	return n.waitUntil(ctx, func() bool { return !n.suspendedLocked() })
}

// waitFenced holds the answer to a write or flush the peer did not take
// (resource-and-stonith fencing) until the peer is fenced, back, or the
// operator resumes: until then the peer might be promoted without it. It
// first waits for the failed session to be accounted for (sessionEnded),
// so that the state it looks at is the one after the peer loss.
func (n *Node) waitFenced(ctx context.Context) error {
	if n.fencingPolicy() != FenceResourceAndStonith {
		return nil
	}
	return n.waitUntil(ctx, func() bool {
		return (n.sess == nil || !n.sess.isClosed()) && !n.fenceFrozenLocked()
	})
}

// waitUntil waits until cond, checked with n.mu held after every state
// change, holds.
func (n *Node) waitUntil(ctx context.Context, cond func() bool) error {
	for {
		n.mu.Lock()
		ok := cond()
		ch := n.changed
		n.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// suspendedLocked reports whether application writes are held: while a
// Primary's peer is being fenced (resource-and-stonith), and with
// on-peer-loss suspend while a Primary has no UpToDate, connected peer,
// unless the operator resumed.
func (n *Node) suspendedLocked() bool {
	if n.fenceFrozenLocked() {
		return true
	}
	if !n.suspendOnLoss.Load() || n.st.Role != Primary || n.resumed {
		return false
	}
	if n.st.Conn == SyncSource {
		return false
	}
	// Connected, or an online verify (VerifyS/VerifyT) with the peer.
	return !(n.st.Conn.Connected() && n.st.Conn != SyncTarget && n.st.PeerDisk == UpToDate)
}

// waitInSync holds the answer to a write that reached only the local disk
// until a resync copied it to the peer (on-peer-loss suspend): no
// acknowledged write then exists on one disk only. The operator releases it
// with resume-io, or by changing on-peer-loss to continue.
func (n *Node) waitInSync(ctx context.Context, off, length int64) error {
	for {
		n.mu.Lock()
		ch, resumed := n.changed, n.resumed
		n.mu.Unlock()
		if resumed || !n.suspendOnLoss.Load() {
			return nil
		}
		if !n.store().Bitmap().IsSet(off, length) {
			n.mu.Lock()
			ok := n.st.Conn.Connected()
			n.mu.Unlock()
			if ok {
				return nil
			}
		}
		select {
		case <-ch:
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
