package replica

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/urbd/urbd/nbd"
	"github.com/urbd/urbd/protocol"
)

// readErrorEventEvery bounds how often a run of local read errors served by
// the peer runs the local-io-error handler: a failing disk can fail every
// read, and one handler run per read helps no one.
const readErrorEventEvery = time.Minute

// ReadAt reads from the local disk: a Primary is always UpToDate (or forced).
// The read-balancing policy may send it to the peer instead (balancedRead).
// When the local disk fails the read and the peer holds the same data, the
// read is served from the peer instead (readFromPeer), as a mirror serves a
// bad sector from the other disk; otherwise the local error is returned.
func (n *Node) ReadAt(ctx context.Context, p []byte, off int64) error {
	start := n.clock.Now()
	if n.isDiskless() {
		if n.attachedRead(ctx, p, off) {
			n.observe("read", false, len(p), start)
			return nil
		}
		if err := n.readFromPeer(ctx, p, off); err != nil {
			return fmt.Errorf("%w: %w", errNoDisk, err)
		}
		n.observe("read", true, len(p), start)
		return nil
	}
	if n.balancedRead(ctx, p, off) {
		n.observe("read", true, len(p), start)
		return nil
	}
	err := n.readTimed(ctx, p, off)
	n.observe("read", false, len(p), start)
	if err == nil || ctx.Err() != nil {
		return err
	}
	if errors.Is(err, errDiskTimeout) {
		// Detached (timedLocal said why): the peer serves this read as
		// every one after it.
		start = n.clock.Now()
		if perr := n.readFromPeer(ctx, p, off); perr != nil {
			return fmt.Errorf("%w: %w", errNoDisk, perr)
		}
		n.observe("read", true, len(p), start)
		return nil
	}
	start = n.clock.Now()
	if perr := n.readFromPeer(ctx, p, off); perr != nil {
		n.log.Error("local read failed and the peer cannot serve it", "offset", off, "length", len(p), "err", err, "peer", perr)
		return err
	}
	n.observe("read", true, len(p), start)
	n.readErrorServed(off, len(p), err)
	return nil
}

// readTimed reads p at off from the local disk under disk-timeout
// (timedLocal): with it set, into a buffer of its own, copied to p once the
// read returned, so that a read given up on cannot write into p after p went
// back to the NBD server.
func (n *Node) readTimed(ctx context.Context, p []byte, off int64) error {
	if n.diskTimeout.Load() <= 0 {
		return n.readLocal(ctx, n.backend(), p, off)
	}
	buf := make([]byte, len(p))
	disk := n.backend()
	err := n.timedLocal(ctx, "a read", off, int64(len(p)), func(ctx context.Context) error { return n.readLocal(ctx, disk, buf, off) })
	if err == nil {
		copy(p, buf)
	}
	return err
}

// readLocal reads p at off from disk, for the application, a resync or a
// verify, counted in the status (lo: while it runs, dr:).
func (n *Node) readLocal(ctx context.Context, disk nbd.Backend, p []byte, off int64) error {
	n.diskBegin()
	err := disk.ReadAt(ctx, p, off)
	n.diskEnd()
	n.stats.diskRead.Add(uint64(len(p)))
	return err
}

// errPeerCannotServe says why a read the local disk failed cannot come from
// the peer.
var errPeerCannotServe = errors.New("the peer cannot serve it")

// readFromPeer reads p at off from the peer, when the peer's copy of the
// range is the one this node's disk should hold (peerCanServe), for a read
// the local disk failed or cannot serve. It holds the range lock, so no
// write or resync copy of the range runs meanwhile, and writes the data back
// to the local disk, which makes a disk remap a bad sector; a failed
// write-back is only logged (the peer still has the data, and the next read
// of the range comes here again).
//
// On a Diskless node the peer's copy is the only one: the bitmap, which
// speaks of the detached disk, is not consulted and nothing is written back.
func (n *Node) readFromPeer(ctx context.Context, p []byte, off int64) error {
	length := int64(len(p))
	s, st := n.sessionState()
	diskless := st.Disk == Diskless
	if err := n.peerCanServe(s, st, off, length); err != nil {
		return err
	}
	unlock, err := n.rl.lock(ctx, off, length)
	if err != nil {
		return err
	}
	defer unlock()
	if err := n.readPeer(ctx, s, p, off, diskless); err != nil {
		return err
	}
	if diskless {
		return nil
	}
	if werr := n.backend().WriteAt(ctx, p, off, false); werr != nil {
		n.log.Error("writing back a range read from the peer failed", "offset", off, "length", length, "err", werr)
	}
	return nil
}

// peerCanServe returns nil when the peer's copy of [off, off+length) is the
// one this node's disk should hold, as of st, so a read of it may go to the
// peer on session s: the nodes are connected with no resync running (an
// online verify may), the peer's disk is UpToDate, the range fits one Read
// and, unless this node is Diskless, none of it is out of sync. Otherwise
// the error says why not.
func (n *Node) peerCanServe(s *session, st State, off, length int64) error {
	switch {
	case s == nil || !st.Conn.Connected() || st.Conn == SyncSource || st.Conn == SyncTarget || st.Conn == Ahead || st.Conn == Behind:
		return fmt.Errorf("%w: %s", errPeerCannotServe, st.Conn)
	case st.PeerDisk != UpToDate:
		return fmt.Errorf("%w: its disk is %s", errPeerCannotServe, st.PeerDisk)
	case st.Disk != Diskless && n.store().Bitmap().IsSet(off, length):
		return fmt.Errorf("%w: the range is out of sync", errPeerCannotServe)
	case length > protocol.MaxData:
		return fmt.Errorf("%w: %d bytes is more than one Read carries", errPeerCannotServe, length)
	}
	return nil
}

// readPeer reads p at off from the peer on session s. Unless diskless, the
// range must still be in sync once the answer is in: a write the peer failed
// while the Read was on its way is marked (its answer came first), and the
// peer's data for it is not this node's.
func (n *Node) readPeer(ctx context.Context, s *session, p []byte, off int64, diskless bool) error {
	length := int64(len(p))
	r := s.sendRead(off, length)
	if r == nil || !r.wait(ctx, 'C') {
		return fmt.Errorf("%w: it did not answer", errPeerCannotServe)
	}
	copy(p, r.dst)
	if !diskless && n.store().Bitmap().IsSet(off, length) {
		return fmt.Errorf("%w: the range went out of sync", errPeerCannotServe)
	}
	return nil
}

// readErrorServed reports a local read error the peer covered.
func (n *Node) readErrorServed(off int64, length int, cause error) {
	n.localReadError(fmt.Sprintf("local disk error reading %d bytes at %d: %v; served from the peer", length, off, cause))
}

// localReadError reports a local read error that the node worked around:
// always in the log, and through the local-io-error handler at most once a
// readErrorEventEvery.
func (n *Node) localReadError(reason string) {
	n.log.Error(reason)
	now := n.clock.Now()
	n.mu.Lock()
	due := n.readErrEvent.IsZero() || now.Sub(n.readErrEvent) >= readErrorEventEvery
	if due {
		n.readErrEvent = now
	}
	n.mu.Unlock()
	if due {
		n.event("local-io-error", map[string]string{"URBD_REASON": reason})
	}
}
