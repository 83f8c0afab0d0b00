package replica

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/urbd/urbd/bitmap"
	"github.com/urbd/urbd/protocol"
)

// Run accepts and dials the peer until ctx is cancelled. Both nodes listen
// and dial; when both connections succeed, the one dialed by the node with
// the larger node id is kept, which both sides compute alike. Once the ids
// are known, a dial by the smaller id is a knock: the peer drops it and, if
// it wants a connection, dials back at once instead of waiting out its
// retry backoff, so `urbd connect` on either node reconnects promptly.
func (n *Node) Run(ctx context.Context) error {
	defer close(n.runDone)
	n.linkMu.Lock() // a SetLink now waits until the first listener is up
	ln, err := n.listen(ctx, n.currentLink().ListenPeer)
	n.running = err == nil
	n.linkMu.Unlock()
	if err != nil {
		return err
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return n.listenLoop(ctx, ln) })
	g.Go(func() error { return n.dialLoop(ctx) })
	g.Go(func() error { return n.sweepLoop(ctx) })
	g.Go(func() error { return n.fenceLoop(ctx) })
	g.Go(func() error { return n.ahead.run(ctx, n.flushAheadOnce) })
	err = g.Wait()
	if errors.Is(err, context.Canceled) || errors.Is(err, net.ErrClosed) {
		err = nil
	}
	// Run owns the session it started: end it before returning.
	n.endSession("shutting down", peerStopping)
	return err
}

// sweepInterval is how long an activity-log extent must stay idle, with its
// blocks in sync, before it leaves the log (md's write-intent bitmap clears
// a bit after 5 s idle).
const sweepInterval = 5 * time.Second

// sweepLoop lazily clears idle activity-log extents: one metadata write for
// all extents that went cold, so a later crash marks less for resync.
func (n *Node) sweepLoop(ctx context.Context) error {
	tick := time.NewTicker(sweepInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			// A store that Resize closed meanwhile was swept by its Close.
			if err := n.sweep(); err != nil && !errors.Is(err, bitmap.ErrClosed) {
				n.log.Error("activity-log sweep failed", "err", err)
			}
		}
	}
}

// sweep drops idle extents from the activity log, after syncData.
func (n *Node) sweep() error { return n.store().Sweep() }

// store is the resource's metadata: its bitmap and activity log. Resize
// replaces it while it holds growMu with every write finished, so a write
// uses the store it began on for its whole life.
func (n *Node) store() *bitmap.Store { return n.meta.Load() }

// syncData is the activity log's data sync (bitmap.Options.SyncData), run
// before extents leave the log by eviction or sweep. Once out of the log a
// write is recorded nowhere, so it must be durable on both disks first:
// syncData flushes the peer as well as the local disk (flushBoth), so that
// even both machines losing power together cannot leave such a write on one
// disk only. A peer that fails the flush, or is lost, has the writes marked
// out of sync (the transfer log) before the flush returns, and the eviction
// or sweep persists those marks before it drops their extents.
func (n *Node) syncData() error {
	_, err := n.flushBoth(context.Background())
	return err
}

// protoConfig is the handshake's configuration, with the link in effect.
func (n *Node) protoConfig() protocol.Config {
	bm := n.store().Bitmap()
	link := n.currentLink()
	return protocol.Config{
		Resource:    n.cfg.Name,
		Size:        uint64(n.backend().Size()),
		NodeID:      n.nodeID,
		BitmapBlock: uint32(bm.BlockSize()),
		Secret:      link.Secret,
		TLS:         link.TLS,
		Timeout:     n.timeout(),
		Busy:        n.busy,
	}
}

// busy refuses a new connection (protocol.Config.Busy) while the goroutines
// of the last session have not returned, waiting a third of the timeout for
// them first: a session ends in milliseconds unless a request of it to this
// node's disk hangs. A node whose disk hung under a peer's write (which
// ko-count made the peer drop) so keeps the peer away until the disk
// answers, rather than taking new writes that hang in turn; the dialer
// skips its attempts meanwhile (lastSessRunningLocked).
func (n *Node) busy() (local, peer string) {
	n.mu.Lock()
	s := n.lastSess
	live := s == n.sess
	n.mu.Unlock()
	if s == nil || live {
		return "", ""
	}
	select {
	case <-s.finished:
		return "", ""
	case <-time.After(n.timeout() / 3):
	}
	return "this node's disk has not completed the I/O of the last connection (the disk may be hung); the peer is refused until it has",
		"the peer's disk has not completed the I/O of the last connection (it may be hung); the peer accepts this node once it has"
}

// lastSessRunningLocked reports whether the last session ended but its
// goroutines have not all returned (see busy). n.mu is held.
func (n *Node) lastSessRunningLocked() bool {
	s := n.lastSess
	if s == nil || s == n.sess {
		return false
	}
	select {
	case <-s.finished:
		return false
	default:
		return true
	}
}

// acceptLoop accepts the peer on ln until ctx is cancelled or ln retired.
func (n *Node) acceptLoop(ctx context.Context, ln *peerListener) error {
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || ln.retired.Load() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		go func() {
			hctx, cancel := context.WithTimeout(ctx, n.timeout())
			defer cancel()
			if err := setConnCongestion(conn, n.currentLink().Congestion); err != nil {
				conn.Close()
				n.noteConnError(err, accepted)
				return
			}
			ps, err := protocol.Handshake(hctx, conn, n.protoConfig(), false)
			if errors.Is(err, protocol.ErrPeerLeft) {
				// The peer's dial lost the tie-break and it closed it
				// before this side had finished: a knock, as in offer.
				conn.Close()
				n.log.Debug("the peer closed its connection during the handshake", "err", err)
				n.answerKnock()
				return
			}
			if err != nil {
				conn.Close()
				n.noteConnError(err, accepted)
				return
			}
			n.offer(ps, false)
		}()
	}
}

func (n *Node) dialLoop(ctx context.Context) error {
	const minBackoff, maxBackoff = 200 * time.Millisecond, 2 * time.Second
	backoff := minBackoff
	for {
		n.mu.Lock()
		peer := n.link.Peer
		want := n.wantConn && n.sess == nil && peer != "" && !n.lastSessRunningLocked()
		switch {
		case peer == "":
			backoff = maxBackoff // nothing to dial until SetLink gives an address (it kicks)
		case n.sess != nil:
			backoff = minBackoff
		}
		n.mu.Unlock()
		if want {
			adopted, err := n.dialOnce(ctx, peer)
			switch {
			case err != nil:
				n.noteConnError(err, dialed)
				backoff = min(backoff*2, maxBackoff)
			case adopted:
				backoff = minBackoff
			default:
				// Dropped by the tie-break (a knock) or refused: the
				// peer dials back if it wants to; knock less often.
				backoff = min(backoff*2, maxBackoff)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-n.kick:
		case <-time.After(backoff):
		}
	}
}

// dialOnce dials the peer at addr and offers the session; it reports
// whether the session was adopted.
func (n *Node) dialOnce(ctx context.Context, addr string) (bool, error) {
	dctx, cancel := context.WithTimeout(ctx, n.timeout())
	defer cancel()
	d := net.Dialer{Control: congestionControl(n.currentLink().Congestion)}
	conn, err := dialTCP(dctx, &d, addr)
	if err != nil {
		return false, err
	}
	ps, err := protocol.Handshake(dctx, conn, n.protoConfig(), true)
	if err != nil {
		conn.Close()
		return false, err
	}
	return n.offer(ps, true), nil
}

// errSelfConnect reports a dial that TCP connected to itself.
var errSelfConnect = errors.New("connected to itself: the peer's port was the dial's own source port, nothing listens there")

// dialTCP dials addr with d and refuses a connection to itself. When
// nothing listens on a local peer address, Linux may pick that very port as
// the dial's source port, and the simultaneous open then connects the socket
// to itself. Kept, such a socket would hold the peer's port, so the peer's
// daemon, started later, could not listen there until the handshake timed
// out (see TestDialRefusesSelfConnect).
func dialTCP(ctx context.Context, d *net.Dialer, addr string) (net.Conn, error) {
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if conn.LocalAddr().String() == conn.RemoteAddr().String() {
		if tc, ok := conn.(*net.TCPConn); ok {
			tc.SetLinger(0) // reset: a FIN would keep the port until TIME_WAIT ends
		}
		conn.Close()
		return nil, errSelfConnect
	}
	return conn, nil
}

// How a connection came about: this node dialed it, or accepted the peer's.
const (
	dialed   = 0
	accepted = 1
)

// noteConnError logs a failed connection attempt once per distinct reason
// and shows it in the status, so a wrong secret or size is visible at once.
// Both nodes dial, and the two ways a connection is made may fail in
// different words (they meet a fault at different steps of the handshake;
// protocol.Handshake words the refusals both sides check alike), so the last
// failure is remembered for each way (how is dialed or accepted): a reason
// either remembers is not logged again, where one memory would be rewritten
// by each attempt in turn and log every one. A failure not logged again
// still returns to the status if something else (a promotion) has taken the
// reason since. A successful connection, the operator's connect and a new
// link (urbd adjust) forget both.
//
// A StandAlone node keeps the reason it stopped connecting for (a split
// brain, the operator's disconnect): the teardown of the session it refused
// may still report an error, which must not hide why it stands alone. A node
// with a session keeps the reason of its current state (a detached disk, a
// promotion): a second connection failing meanwhile (a stray dial, a
// handshake cut short) says nothing about the live link.
func (n *Node) noteConnError(err error, how int) {
	msg := err.Error()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.st.Conn == StandAlone {
		n.log.Debug("peer connection failed while StandAlone", "err", msg)
		return
	}
	if n.sess != nil {
		n.log.Debug("a second peer connection failed while a session runs", "err", msg)
		return
	}
	seen := n.lastConnErr[dialed] == msg || n.lastConnErr[accepted] == msg
	n.lastConnErr[how] = msg
	if unreachable(err) {
		if !seen {
			n.log.Debug("peer connection failed", "err", msg)
		}
		return
	}
	if !seen {
		n.log.Warn("peer connection failed", "err", msg)
	} else if strings.HasPrefix(n.st.Reason, reasonConnFailed) {
		return
	}
	// A new failure, or a known one after something else (a promotion)
	// took the status: show why the node still does not connect.
	n.st.Reason = reasonConnFailed + msg
	n.notifyLocked()
}

// unreachable reports a failure to reach the peer at all (refused, reset,
// timed out, no route): expected while the peer is down, so logged at debug
// level and kept out of the status. A TLS alert from the peer is a net.Error
// too, but says that the peer was reached and refused this node
// (protocol.ErrRefused).
func unreachable(err error) bool {
	if errors.Is(err, protocol.ErrRefused) {
		return false
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, errConnRefused) || errors.Is(err, errSelfConnect)
}

// reasonConnFailed begins the status reason of a failed connection attempt.
const reasonConnFailed = "peer connection failed: "

var errConnRefused = errors.New("connection refused")

// offer adopts a freshly authenticated session, or closes it when it loses
// the tie-break, when the node is StandAlone, or when it duplicates the live
// session; it reports whether it adopted it. A new session from the same
// peer replaces a live one: the peer restarted and the old session is dead
// even if we have not noticed yet. A session the peer dialed that loses the
// tie-break is a knock: without a session, the dialer is woken to dial back.
func (n *Node) offer(ps *protocol.Session, dialer bool) bool {
	peerID := ps.Peer().NodeID
	if peerID == n.nodeID {
		how := accepted
		if dialer {
			how = dialed
		}
		n.noteConnError(fmt.Errorf("replica: peer has the same node id %016x: was the metadata copied? recreate one side's --meta", peerID), how)
		ps.Close()
		return false
	}
	n.mu.Lock()
	n.peerID = peerID
	keep := (dialer && n.nodeID > peerID) || (!dialer && peerID > n.nodeID)
	if !keep || !n.wantConn {
		n.mu.Unlock()
		ps.Close()
		if !dialer && !keep {
			n.answerKnock()
		}
		return false
	}
	old := n.sess
	n.mu.Unlock()
	if old != nil {
		old.close(&peerLost{cause: "replaced by a new connection from the peer"})
		<-old.finished
	}
	s := newSession(n, ps)
	n.mu.Lock()
	if n.sess != nil || !n.wantConn {
		n.mu.Unlock()
		ps.Close()
		return false
	}
	n.sess = s
	n.lastSess = s
	n.hasSession.Store(true)
	n.lastConnErr = [2]string{}
	n.mu.Unlock()
	go n.runSession(s)
	return true
}

// answerKnock dials the peer now, if this node wants a connection and has
// none: the peer dialed, and its connection lost the tie-break.
func (n *Node) answerKnock() {
	n.mu.Lock()
	knocked := n.wantConn && n.sess == nil
	n.mu.Unlock()
	if knocked {
		n.kickConnect()
	}
}

// runSession drives one session from the state exchange to its end. The
// first of its goroutines to stop closes the session, which stops the rest.
func (n *Node) runSession(s *session) {
	loops := []func() error{s.controlLoop, s.dataLoop, s.applyLoop, s.resyncLoop, s.keepalive, func() error { return n.negotiate(s) }}
	for _, loop := range loops {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			err := loop()
			if err == nil {
				err = ErrPeerLost // close says why the connection ended
			}
			s.close(err)
		}()
	}
	s.wg.Wait()
	close(s.finished)
	n.kickConnect() // the dialer skipped its attempts while s ran (busy)
}

// negotiate exchanges states with the peer, decides with Decide, and starts
// replication or a resync. It then follows the peer's state changes.
func (n *Node) negotiate(s *session) error {
	n.mu.Lock()
	local := n.localSideLocked()
	stateSent := n.stateSent
	n.mu.Unlock()
	s.sendState(local)
	if stateSent != nil {
		stateSent()
	}
	var peerSt protocol.State
	select {
	case peerSt = <-s.peerStates:
	case <-s.ctx.Done():
		// The peer may have sent its state and then hung up after
		// deciding (a split brain): decide from that state too.
		select {
		case peerSt = <-s.peerStates:
		default:
			return s.ctx.Err()
		}
	}
	peer := sideFromWire(peerSt, s.peer.NodeID)

	n.mu.Lock()
	// Decide from the state sent, not from a fresh one: the peer decides
	// from what it received, and both must reach the same plan. A bit set
	// here since is still in the bitmap the resync exchanges, or makes
	// followPeer resync afterwards.
	plan := Decide(local, peer)
	n.discard = false
	n.peerUUIDs = peer.UUIDs
	peerRole, peerDisk := peer.role(), ParseDiskState(peer.Disk)
	switch plan.Decision {
	case NoSync, BecomeSyncSource, BecomeSyncTarget, BothInconsistent:
	default:
		n.wantConn = false
		n.setStateLocked(plan.Reason, func(st *State) {
			st.Conn = StandAlone
			st.SplitBrain = plan.Decision == SplitBrain
		})
		n.mu.Unlock()
		n.log.Error("refusing to connect: "+plan.Decision.String(), "reason", plan.Reason)
		if plan.Decision == SplitBrain {
			n.event("initial-split-brain", map[string]string{"URBD_REASON": plan.Reason})
			n.event("split-brain", map[string]string{"URBD_REASON": plan.Reason})
		}
		s.ps.Control().Send(&protocol.Refuse{Code: 0, Reason: plan.Decision.String() + ": " + plan.Reason})
		s.ps.Control().Flush()
		select { // the peer decides too, and hangs up
		case <-s.ctx.Done():
		case <-time.After(s.ps.Timeout()):
		}
		if plan.Decision == SplitBrain {
			return fmt.Errorf("%w: %s", ErrSplitBrain, plan.Reason)
		}
		return fmt.Errorf("%w: %s: %s", ErrRefused, plan.Decision, plan.Reason)
	}
	if plan.AutoResolved {
		n.log.Warn("split brain resolved automatically", "reason", plan.Reason)
		n.event("initial-split-brain", map[string]string{"URBD_REASON": plan.Reason})
	}
	conn := Connected
	switch plan.Decision {
	case BecomeSyncSource:
		conn = SyncSource
	case BecomeSyncTarget:
		conn = SyncTarget
	case NoSync:
		if n.uuids.Bitmap != 0 && n.uuids.Current == peer.UUIDs.Current {
			n.uuids = n.uuids.ConnectedInSync()
		}
	}
	csum, why := byChecksum(plan, conn, local, peer)
	reason := "connected: " + plan.Reason
	if why != "" {
		reason += "; " + why + ", so the resync compares checksums and copies only the blocks that differ"
	}
	n.setStateLocked(reason, func(st *State) {
		st.Conn = conn
		st.PeerRole = peerRole
		st.PeerDisk = peerDisk
		st.SplitBrain = false
		if conn == SyncTarget {
			st.Disk = Inconsistent
		}
		if plan.Decision == NoSync && st.Disk == Outdated && peerDisk == UpToDate {
			// Nothing was written while apart: the same data as the peer's.
			st.Disk = UpToDate
		}
		if conn == SyncSource {
			st.PeerDisk = Inconsistent
		}
	})
	if err := n.saveMetaLocked(); err != nil {
		n.mu.Unlock()
		return err
	}
	s.mu.Lock()
	s.live = true
	s.mu.Unlock()
	n.resumed = false // held writes are the peer's again
	close(s.ready)
	n.mu.Unlock()
	n.event("peer-back", map[string]string{"URBD_PEER_ROLE": peerRole.String()})

	if conn != Connected {
		s.csumResync = csum
		if plan.Full {
			n.store().Bitmap().SetAll()
		}
		if err := s.sendBitmap(); err != nil {
			return err
		}
		select {
		case <-s.peerBitmap:
		case <-s.ctx.Done():
			return s.ctx.Err()
		}
		if err := n.store().PersistBitmap(); err != nil {
			return err
		}
		n.event("resync-started", map[string]string{"URBD_DIRECTION": conn.String()})
		if conn == SyncSource {
			if err := n.runSyncSource(s); err != nil && !errors.Is(err, errPulledAhead) {
				return err
			}
		} else if err := n.waitSyncTarget(s, s.syncDoneChan()); err != nil && !errors.Is(err, errResyncReplaced) {
			return err
		}
	}
	return n.followPeer(s)
}

// outdatedByPeer handles a Primary's clean disconnect: an UpToDate Secondary
// marks its disk Outdated, persists it and confirms with its state.
func (n *Node) outdatedByPeer(s *session) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.st.Role != Secondary || n.st.Disk != UpToDate {
		return nil
	}
	if err := n.outdateLocked("the Primary disconnected: it goes on without this node"); err != nil {
		return err
	}
	s.sendState(n.localSideLocked())
	return nil
}

// peerChange says, for the status file's reason, what the peer's new role
// and disk change in old: "the peer was promoted to Primary", "the peer's
// disk is now UpToDate", or both. It is empty when neither changed, and then
// unused: setStateLocked keeps the reason of a state that did not change.
func peerChange(old State, role Role, disk DiskState) string {
	var parts []string
	switch {
	case role == old.PeerRole:
	case role == Primary:
		parts = append(parts, "the peer was promoted to Primary")
	case old.PeerRole == Primary:
		parts = append(parts, "the peer was demoted to Secondary")
	default:
		parts = append(parts, "the peer is Secondary")
	}
	if disk != old.PeerDisk {
		parts = append(parts, "the peer's disk is now "+disk.String())
	}
	return strings.Join(parts, "; ")
}

// followPeer applies the peer's state changes for the rest of the session,
// starts a resync when this node is Primary and blocks went out of sync
// while connected, and resumes an attach whose copy an earlier session cut
// short.
func (n *Node) followPeer(s *session) error {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return s.ctx.Err()
		case st := <-s.peerStates:
			peer := sideFromWire(st, s.peer.NodeID)
			n.mu.Lock()
			if n.sess != s {
				// The session ended (sessionEnded ran) while the state
				// waited here: it describes a peer that is gone.
				n.mu.Unlock()
				return ErrPeerLost
			}
			n.peerUUIDs = peer.UUIDs
			if peer.Disk == UpToDate.String() && peer.UUIDs.Current == n.uuids.Current && n.uuids.Bitmap != 0 && (n.st.Conn == Connected || n.st.Conn == VerifyT) {
				// The target confirmed the finished resync.
				n.uuids = n.uuids.SyncSourceDone()
				if err := n.saveMetaLocked(); err != nil {
					n.mu.Unlock()
					return err
				}
			}
			role, disk := peer.role(), ParseDiskState(peer.Disk)
			why := peerChange(n.st, role, disk)
			if n.st.Conn == Ahead && disk == Outdated && n.st.PeerDisk != Outdated && role == n.st.PeerRole {
				// The peer confirms it is Behind: keep saying why.
				why = "the peer is Behind, its disk Outdated; " + n.st.Reason
			}
			n.setStateLocked(why, func(x *State) {
				x.PeerRole, x.PeerDisk = role, disk
			})
			n.mu.Unlock()
		case <-n.syncKick:
		case <-tick.C:
		}
		n.resumeAttach(s)
		n.mu.Lock()
		caughtUp := n.drainedAheadLocked()
		again := caughtUp || n.st.Conn == Connected && n.st.Role == Primary && n.st.Disk != Diskless && !n.resizing && n.store().Bitmap().DirtyBlocks() > 0
		if again {
			why := "blocks went out of sync while connected"
			if n.syncWhy != "" {
				why, n.syncWhy = n.syncWhy, ""
			}
			if caughtUp {
				// Writes are replicated again from here on; what was
				// written while Ahead is in the bitmap, and the resync
				// copies it (the copies hold the range lock, so no copy
				// overwrites a newer write on the peer).
				why = "the link drained: resyncing what was written while Ahead"
				n.pulledAhead.Store(false)
				s.peerBehind = true
			}
			n.setStateLocked(why, func(x *State) {
				x.Conn = SyncSource
				if caughtUp {
					x.PeerDisk = Inconsistent
				}
			})
			if caughtUp {
				n.event("resync-started", map[string]string{"URBD_DIRECTION": SyncSource.String()})
			}
			s.csumResync = n.csums.Load() || s.peerCsums.Load()
		}
		n.mu.Unlock()
		if again {
			if err := n.runSyncSource(s); err != nil && !errors.Is(err, errPulledAhead) {
				return err
			}
		}
		n.mu.Lock()
		renegotiate := n.st.Conn == Connected && n.st.Role == Secondary && !n.resizing && n.st.PeerDisk != Diskless &&
			(n.store().Bitmap().DirtyBlocks() > 0 || (n.st.Disk == Inconsistent && n.st.PeerDisk == UpToDate))
		n.mu.Unlock()
		if renegotiate {
			// Blocks marked here (a failed write, an online verify), or a
			// disk made Inconsistent by an I/O error, are repaired by the
			// resync the UUIDs and disk states choose: reconnect and
			// decide again. Not with a Diskless peer, which has nothing
			// to resync with until its disk is attached.
			return errors.New("replica: out-of-sync blocks or a failed disk on the secondary: reconnecting to resync")
		}
	}
}

// sessionEnded is called once when a session closes: the node goes back to
// WFConnection (or StandAlone) and, as a Primary that had an up-to-date peer,
// starts a new data generation.
func (n *Node) sessionEnded(s *session, err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.sess != s {
		return
	}
	n.sess = nil
	n.hasSession.Store(false)
	n.pulledAhead.Store(false) // what was written while Ahead is in the bitmap
	n.progress = nil
	n.syncWhy = ""
	n.resizing = false // a resize that grew both nodes ends with its session
	s.mu.Lock()
	wasConnected := s.live // the peer had our data until now
	s.mu.Unlock()
	if n.st.Role == Primary && wasConnected && (n.st.PeerDisk == UpToDate || n.st.PeerDisk == Outdated || n.st.PeerDisk == Diskless) && n.st.Disk != Diskless {
		// Only a peer that held our current data (UpToDate, or Outdated by
		// our clean disconnect, or Diskless after detach-disk, which may
		// take the same disk back) needs a new generation to tell it
		// apart; an Inconsistent target is fully resynced anyway. A
		// Diskless Primary writes nothing alone: its generation stays.
		n.uuids = n.uuids.NewCurrent(randomID())
	}
	if wasConnected {
		// A peer that held this node's data could be promoted in its
		// absence: it must be fenced before a Primary writes alone. Not
		// by a Diskless Primary, which writes nothing alone: the peer
		// holds the only copy of the data.
		n.resumed = false
		n.fence = fenceDone
		if n.st.PeerDisk == UpToDate && !s.peerLeftUpToDate.Load() && n.st.Disk != Diskless {
			n.fence = fenceNeeded
		}
	}
	reason := "peer connection lost: " + err.Error()
	var stop *localStop
	var lost *peerLost
	switch {
	case errors.As(err, &stop):
		reason = stop.reason
	case errors.As(err, &lost):
		reason = "peer connection lost: " + lost.cause
	}
	n.setStateLocked(reason, func(st *State) {
		if n.wantConn {
			st.Conn = WFConnection
		} else {
			st.Conn = StandAlone
		}
		if wasConnected {
			// (Without a live session they keep what the last one, or
			// the fence-peer handler, found.) A peer that said it left
			// Outdated stays so: only a resync from this node, over a
			// new connection, makes it UpToDate again.
			st.PeerRole = RoleUnknown
			if st.PeerDisk != Outdated {
				st.PeerDisk = DUnknown
			}
		}
	})
	// Wake waiters even when the state looks the same (a session that
	// never went live): waitFenced waits for n.sess to change.
	n.notifyLocked()
	if serr := n.saveMetaLocked(); serr != nil {
		n.log.Error("saving metadata after peer loss failed", "err", serr)
	}
	if wasConnected {
		n.event("peer-lost", map[string]string{"URBD_REASON": err.Error()})
	}
	n.kickConnect()
}

// localSideLocked describes this node for Decide. n.mu must be held.
func (n *Node) localSideLocked() Side {
	changed := uint64(n.store().Bitmap().DirtyBlocks())
	return Side{
		UUIDs:          n.uuids,
		Disk:           n.st.Disk.String(),
		Primary:        n.st.Role == Primary,
		CrashedPrimary: n.crashedPri,
		DiscardMyData:  n.discard,
		Changed:        changed,
		AfterSB:        n.afterSB,
		NodeID:         n.nodeID,
		recoveredAL:    n.recovered,
		partial:        n.partialLocked(),
		csums:          n.csums.Load(),
	}
}

// byChecksum says whether the resync that plan starts compares block
// checksums before it copies (copyRange), for blocks that are probably equal
// already, and, for a full resync, why. A bitmap resync compares the
// activity-log extents a crashed node recovered. A full resync compares when
// the target's disk holds data of this resource: a data generation (one the
// source has moved on from, or one that split off), or, with none, what it
// held when it was detached or what attach-disk's copy filled before the
// target's daemon stopped (Side.partial). A target with neither (a new disk,
// or one never synced) gets plain copies. With csums-alg set on either node
// (Side.csums), every bitmap resync compares too. conn is this node's side
// of the resync; with no resync (Connected) there is nothing to compare.
func byChecksum(plan Plan, conn ConnState, local, peer Side) (csum bool, why string) {
	switch {
	case conn != SyncSource && conn != SyncTarget:
		return false, ""
	case !plan.Full && (local.csums || peer.csums):
		return true, csumsWhy
	case !plan.Full:
		return local.recoveredAL || peer.recoveredAL, ""
	}
	target := peer
	if conn == SyncTarget {
		target = local
	}
	switch {
	case target.partial:
		return true, "the target's disk was detached, or being filled by attach-disk, when its daemon stopped"
	case target.UUIDs.Current != 0:
		return true, "the target's disk holds another version of this data"
	}
	return false, ""
}

// csumsWhy is byChecksum's reason when csums-alg asks for the comparison.
const csumsWhy = "csums-alg sha256 is set"

func (n *Node) kickSync() {
	select {
	case n.syncKick <- struct{}{}:
	default:
	}
}
