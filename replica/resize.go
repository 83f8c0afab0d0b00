package replica

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/urbd/urbd/internal/units"
	"github.com/urbd/urbd/nbd"
	"github.com/urbd/urbd/protocol"
)

// ErrNotGrown refuses `urbd resize` when a disk has not grown.
var ErrNotGrown = errors.New("replica: the disk has not grown")

// Resized is what Resize did.
type Resized struct {
	From, To int64 // the resource's size before and after, in bytes
}

// Resize grows a running resource to its grown disks (`urbd resize`, DRBD's
// `drbdadm resize`), online: the operator grew the disk on both nodes to
// the same size (lvextend by the same amount), as a start needs its disk
// and metadata of one size.
//
// It runs on a connected node with both disks UpToDate and no resync or
// verify running, on the Primary if there is one. It asks the peer how far
// its disk can grow, then holds this node's writes, waits for those in
// flight and flushes both disks, grows its metadata (bitmap.Store.Grow: the
// new part is marked out of sync) and the size it serves, and tells the
// peer, which does the same; then it reconnects, so that the resync of the
// new connection copies the new part from the Primary. Writes wait only while
// this node grows its metadata. NBD clients connected before see the old
// size until they connect again (urbd attach grows /dev/nbdN on SIGHUP).
//
// With clean (--assume-clean) the operator vouches that the new part holds
// the same bytes on both disks (zeroes, say): neither node marks it, the
// session goes on, and nothing is resynced.
//
// A refusal changes nothing. If the peer does not confirm, this node has
// grown and the peer has not: the error says so, and the handshake refuses
// the pair (its sizes differ) until the peer is started with --grow.
func (n *Node) Resize(ctx context.Context, clean bool) (Resized, error) {
	s, err := n.startResize()
	if err != nil {
		return Resized{}, err
	}
	grew := false // both nodes grew: resizing ends with the session
	defer func() {
		if !grew {
			n.endResize()
		}
	}()
	from, have, err := n.diskGrowth()
	if err != nil {
		return Resized{}, fmt.Errorf("%s: %w", n.cfg.Name, err)
	}
	if have <= from {
		return Resized{}, fmt.Errorf("%s: %w: it is still %s (%d bytes); grow it on both nodes first (lvextend), then run urbd resize",
			n.cfg.Name, ErrNotGrown, units.FormatSize(from), from)
	}
	var flags uint32
	if clean {
		flags = protocol.ResizeAssumeClean
	}
	wait := 2 * n.timeout()
	ans, err := s.askResize(ctx, protocol.ResizeQuery, flags, uint64(have), wait)
	if err != nil {
		return Resized{}, fmt.Errorf("%s: asking the peer how far it can grow: %w", n.cfg.Name, err)
	}
	if ans.Reason != "" {
		return Resized{}, fmt.Errorf("%s: %w: the peer cannot grow: %s", n.cfg.Name, ErrNotGrown, ans.Reason)
	}
	to := have
	if err := n.growLocal(ctx, to, wait, true, clean); err != nil {
		return Resized{}, err
	}
	res := Resized{From: from, To: to}
	// The peer may take up to wait for its own writes to end.
	ans, err = s.askResize(ctx, protocol.ResizeCommit, flags, uint64(to), 2*wait)
	if err == nil && ans.Reason != "" {
		err = errors.New(ans.Reason)
	}
	if err == nil && clean {
		return res, nil // nothing marked, nothing to resync: the session goes on
	}
	// This node grew, so the session ends whatever the answer: after a
	// refusal the handshake keeps the pair apart (the sizes differ);
	// after a confirmation both have the new part marked, and the resync
	// of the new connection copies it. Until the session ends neither
	// node starts a resync or reconnects on its own (resizing).
	grew = true
	if err != nil {
		go s.close(fmt.Errorf("the peer did not grow: %w", err))
		return res, fmt.Errorf("%s: grown here from %s to %s, but the peer did not confirm growing (%w): once it is up again, start it with urbd up --grow",
			n.cfg.Name, units.FormatSize(from), units.FormatSize(to), err)
	}
	go s.close(errors.New("grown online: reconnecting to resync the new part"))
	return res, nil
}

// startResize checks that Resize may run and marks it running.
func (n *Node) startResize() (*session, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	var err error
	switch {
	case n.resizing:
		err = fmt.Errorf("%s: %w: a resize is running", n.cfg.Name, ErrSyncing)
	case n.sess == nil || n.st.Conn != Connected:
		err = fmt.Errorf("%s: %w: resize needs a connected peer and no resync or verify running (state %s); a resource that is down grows with urbd up --grow on both nodes",
			n.cfg.Name, ErrNotConnected, n.st.Conn)
	case n.st.Disk != UpToDate || n.st.PeerDisk != UpToDate:
		err = fmt.Errorf("%s: %w: resize needs both disks UpToDate (%s/%s)", n.cfg.Name, ErrNotUpToDate, n.st.Disk, n.st.PeerDisk)
	case n.st.Role == Secondary && n.st.PeerRole == Primary:
		err = fmt.Errorf("%s: %w: the peer is Primary: run urbd resize there", n.cfg.Name, ErrPeerPrimary)
	}
	if err != nil {
		return nil, err
	}
	n.resizing = true
	return n.sess, nil
}

// diskGrowth returns the size the disk serves and the size it holds now,
// which Resize grows to.
func (n *Node) diskGrowth() (serves, holds int64, err error) {
	g, ok := n.backend().(nbd.Grower)
	if !ok {
		return 0, 0, errors.New("this disk cannot grow while the resource runs")
	}
	if holds, err = g.StorageSize(); err != nil {
		return 0, 0, fmt.Errorf("reading the disk's size: %w", err)
	}
	return n.backend().Size(), holds, nil
}

func (n *Node) isResizing() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.resizing
}

// endResize ends a resize that did not grow both nodes.
func (n *Node) endResize() {
	n.mu.Lock()
	n.resizing = false
	n.mu.Unlock()
	n.kickSync()
}

// askResize sends a Resize query or commit and waits up to wait for the
// peer's answer.
func (s *session) askResize(ctx context.Context, op uint8, flags uint32, size uint64, wait time.Duration) (protocol.Resize, error) {
	// An answer to an earlier question that timed out is stale.
	select {
	case <-s.resized:
	default:
	}
	if err := s.ps.Control().Send(&protocol.Resize{Op: op, Flags: flags, Size: size}); err != nil {
		return protocol.Resize{}, err
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case ans := <-s.resized:
		return ans, nil
	case <-s.ctx.Done():
		select {
		case ans := <-s.resized: // it came with the end
			return ans, nil
		default:
		}
		return protocol.Resize{}, ErrPeerLost
	case <-ctx.Done():
		return protocol.Resize{}, ctx.Err()
	case <-t.C:
		return protocol.Resize{}, fmt.Errorf("no answer within %s", wait)
	}
}

// growLocal grows this node's metadata and served size to size bytes:
// it holds new writes (growMu), waits up to wait for the ones in flight to
// end, with flush makes them durable on both disks (so that a peer lost
// meanwhile has nothing in the transfer log to mark), and replaces the
// store (bitmap.Store.Grow, with clean).
func (n *Node) growLocal(ctx context.Context, size int64, wait time.Duration, flush, clean bool) error {
	n.growMu.Lock()
	defer n.growMu.Unlock()
	st := n.store()
	deadline := time.Now().Add(wait)
	for !st.Idle() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s: writes in flight did not end within %s; nothing was grown", n.cfg.Name, wait)
		}
		time.Sleep(time.Millisecond)
	}
	if flush {
		if _, err := n.flushBoth(ctx); err != nil {
			return fmt.Errorf("%s: flushing before growing: %w; nothing was grown", n.cfg.Name, err)
		}
	}
	from := n.backend().Size()
	g, err := st.Grow(size, clean)
	if g != nil {
		n.meta.Store(g)
	}
	if err != nil {
		n.log.Error("growing the metadata failed", "err", err)
		return fmt.Errorf("%s: %w", n.cfg.Name, err)
	}
	if err := n.backend().(nbd.Grower).Grow(size); err != nil {
		// The metadata is grown and the disk holds size bytes (it was
		// checked): serving it fails only if the disk shrank since.
		return fmt.Errorf("%s: metadata grown to %d bytes, but the disk cannot serve them: %w", n.cfg.Name, size, err)
	}
	reason := fmt.Sprintf("grown online from %s to %s: the new part is out of sync until the resync copies it",
		units.FormatSize(from), units.FormatSize(size))
	if clean {
		reason = fmt.Sprintf("grown online from %s to %s; the new part is taken as equal on both nodes (assume-clean)",
			units.FormatSize(from), units.FormatSize(size))
	}
	n.log.Info(reason)
	n.mu.Lock()
	n.setStateLocked(reason, func(*State) {})
	n.mu.Unlock()
	return nil
}

// peerResize handles a Resize from the peer on the control stream.
func (s *session) peerResize(m *protocol.Resize) error {
	switch m.Op {
	case protocol.ResizeAnswer:
		select {
		case s.resized <- *m:
		default: // nobody asked any more
		}
		return nil
	case protocol.ResizeQuery:
		reason := s.n.resizeOffer(int64(m.Size))
		if s.n.isResizing() {
			reason = "a resize runs on that node too"
		}
		return s.ps.Control().Send(&protocol.Resize{Op: protocol.ResizeAnswer, Size: m.Size, Reason: reason})
	}
	// ResizeCommit: grow and answer.
	n := s.n
	n.mu.Lock()
	busy := n.resizing
	n.resizing = true
	n.mu.Unlock()
	if busy {
		// urbd resize runs here too: the other node's question ends it.
		return s.ps.Control().Send(&protocol.Resize{Op: protocol.ResizeAnswer, Size: m.Size, Reason: "a resize runs on that node too"})
	}
	size := int64(m.Size)
	clean := m.Flags&protocol.ResizeAssumeClean != 0
	reason := n.resizeOffer(size)
	if reason == "" {
		// The asking node flushed both disks before it committed.
		if err := n.growLocal(s.ctx, size, 2*n.timeout(), false, clean); err != nil {
			reason = err.Error()
		}
	}
	if reason != "" || clean {
		n.endResize()
	}
	// Grown with the new part marked: the asking node ends the session
	// once it has the answer, and resizing with it.
	return s.ps.Control().Send(&protocol.Resize{Op: protocol.ResizeAnswer, Size: uint64(size), Reason: reason})
}

// resizeOffer says why this node cannot grow to want bytes, or "" when it
// can: its disk must hold exactly want bytes now.
func (n *Node) resizeOffer(want int64) string {
	n.mu.Lock()
	conn, disk := n.st.Conn, n.st.Disk
	n.mu.Unlock()
	if conn != Connected || disk != UpToDate {
		return fmt.Sprintf("it is %s with its disk %s; resize needs Connected and UpToDate", conn, disk)
	}
	cur, have, err := n.diskGrowth()
	if err != nil {
		return err.Error()
	}
	switch {
	case have <= cur:
		return fmt.Sprintf("its disk is still %s (%d bytes): grow it too", units.FormatSize(cur), cur)
	case have != want:
		return fmt.Sprintf("its disk is %d bytes, the other's %d: grow both to the same size", have, want)
	}
	return ""
}
