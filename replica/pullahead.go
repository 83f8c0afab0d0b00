package replica

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/urbd/urbd/internal/units"
)

// On a congested link (DRBD's on-congestion).
//
// With protocol A a write is answered once it is handed to the network, so
// while the link is slower than the application the writes wait for room
// on it (the data stream's buffer, yamux's window, the socket's), as they
// wait for the peer under the other protocols. That is OnCongestion's
// CongestionBlock, the default. Over a slow or distant link an operator may
// prefer the application's speed to the peer's currency. The link counts
// as congested when a write waited congestionWait or more for room on it,
// when the write payload sent and not yet answered reaches Fill, or when
// the activity-log extents with writes in flight reach Extents; then:
//
//   - CongestionPullAhead: the Primary goes Ahead: it stops replicating
//     writes and records them in its bitmap instead, as while disconnected,
//     and tells the peer, which goes Behind with its disk Outdated
//     (persisted: it cannot be promoted without --force, and while
//     connected not at all; a disk that was a resync's target stays
//     Inconsistent). The connection stays up. Once every write sent before
//     has been answered, the Primary resyncs what it recorded (Ahead, then
//     SyncSource; the peer SyncTarget, Inconsistent) and both are Connected
//     and UpToDate again. A Primary that is SyncSource pulls ahead too: its
//     copies stop, and the resync that ends Ahead goes on with what is
//     still marked.
//   - CongestionDisconnect: the Primary drops the connection; it reconnects
//     and resyncs what changed, as after any peer loss.
//
// Only protocol A writes are looked at: under B and C a write waits for the
// peer anyway. The node does not pull ahead during a verify, nor with
// on-peer-loss suspend, which promises no acknowledged write on one disk
// only.

// OnCongestion is DRBD's on-congestion policy.
type OnCongestion uint8

const (
	// CongestionBlock lets writes wait for room to the peer (the default).
	CongestionBlock OnCongestion = iota
	// CongestionPullAhead goes Ahead of the peer (see above).
	CongestionPullAhead
	// CongestionDisconnect drops the connection, to reconnect and resync.
	CongestionDisconnect
)

var onCongestionNames = []string{"block", "pull-ahead", "disconnect"}

func (p OnCongestion) String() string { return policyName(onCongestionNames, uint8(p)) }

// ParseOnCongestion parses an on-congestion policy name (OnCongestion.String),
// in any case; "" is the default, block.
func ParseOnCongestion(s string) (OnCongestion, error) {
	v, err := parsePolicy("on-congestion", onCongestionNames, strings.ToLower(strings.TrimSpace(s)))
	return OnCongestion(v), err
}

// Congestion is the on-congestion policy with its thresholds.
type Congestion struct {
	Policy OnCongestion
	// Fill is DRBD's congestion-fill: the bytes of write payload sent to
	// the peer and not yet answered at which the link counts as congested;
	// 0 is off.
	Fill int64
	// Extents is DRBD's congestion-extents: the activity-log extents with
	// writes in flight (bitmap.Store.BusyExtents) at which the link counts
	// as congested; 0 is off.
	Extents int
}

// CheckCongestionLimits refuses thresholds below zero (on-congestion).
func CheckCongestionLimits(c Congestion) error {
	if c.Fill < 0 || c.Extents < 0 {
		return fmt.Errorf("replica: congestion-fill and congestion-extents must be 0 (off) or more")
	}
	return nil
}

// SetCongestion changes the on-congestion policy and its thresholds from the
// next write on (`urbd adjust --on-congestion`, `--congestion-fill`,
// `--congestion-extents`). A node that is Ahead stays so until the link
// drains, whatever the new policy.
func (n *Node) SetCongestion(c Congestion) error {
	if err := CheckCongestionLimits(c); err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if *n.congestion.Load() == c {
		return nil
	}
	n.congestion.Store(&c)
	n.log.Info("on-congestion changed", "on_congestion", c.Policy.String(), "congestion_fill", c.Fill, "congestion_extents", c.Extents)
	return nil
}

// congested decides, for a protocol A write of size bytes about to be sent
// on session s, whether the link is congested, and if so acts on the
// policy. It reports whether the write must not be sent (the node went
// Ahead, or dropped the connection).
func (n *Node) congested(s *session, size int64) bool {
	c := n.congestion.Load()
	if c.Policy == CongestionBlock {
		return false
	}
	if s.dropping.Load() {
		return true
	}
	why := ""
	if waited := time.Duration(s.sendWaited.Swap(0)); waited > 0 {
		why = fmt.Sprintf("a write waited %s for room on the link", waited.Round(time.Millisecond))
	} else if since := s.sending.Load(); since != 0 && time.Since(time.Unix(0, since)) >= congestionWait {
		why = fmt.Sprintf("a write has waited %s for room on the link", time.Since(time.Unix(0, since)).Round(time.Millisecond))
	} else if inflight := s.inflight.Load(); c.Fill > 0 && inflight+size > c.Fill {
		why = fmt.Sprintf("%s in flight to the peer reached congestion-fill %s", units.FormatSize(inflight+size), units.FormatSize(c.Fill))
	} else if busy := n.store().BusyExtents(); c.Extents > 0 && busy >= c.Extents {
		why = fmt.Sprintf("%d activity-log extents in use reached congestion-extents %d", busy, c.Extents)
	}
	if why == "" {
		return false
	}
	if c.Policy == CongestionDisconnect {
		return n.disconnectCongested(s, why)
	}
	return n.pullAhead(s, why)
}

// congestionWait is how long a write may wait for room on the link to the
// peer before the link counts as congested (besides Fill and Extents):
// long past what a healthy link needs to take a burst, and far less than
// what an application notices as a stall.
const congestionWait = 100 * time.Millisecond

// noteSendWait records how long a write waited to be handed to the link,
// when it waited congestionWait or more.
func (s *session) noteSendWait(d time.Duration) {
	if d >= congestionWait {
		s.sendWaited.Store(int64(d))
	}
}

// errPulledAhead ends a resync whose source pulled ahead (runSyncSource);
// errResyncReplaced ends the wait of its target (waitSyncTarget). Neither
// ends the session.
var (
	errPulledAhead    = errors.New("replica: pulled ahead: the resync waits until the link drains")
	errResyncReplaced = errors.New("replica: the source pulled ahead: the resync waits until the link drains")
)

// pullAhead makes a connected Primary Ahead of its peer (see above), and
// reports whether it is: false when it may not pull ahead, and the write
// is sent as under CongestionBlock. The peer's disk shows Outdated once the
// peer says so: until then its metadata still says UpToDate, and a lost
// connection must be fenced as with an UpToDate peer.
func (n *Node) pullAhead(s *session, why string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.pulledAhead.Load() {
		return true
	}
	st := n.st
	from := st.Conn == Connected && st.PeerDisk == UpToDate || st.Conn == SyncSource
	if n.sess != s || !from || st.Role != Primary || st.Disk != UpToDate || n.suspendOnLoss.Load() {
		return false
	}
	n.pulledAhead.Store(true)
	n.progress = nil // a resync stops here (runSyncSource), and goes on after
	n.setStateLocked("pulled ahead of the peer: "+why+"; writes are recorded in the bitmap and resynced once the link drains",
		func(st *State) { st.Conn = Ahead })
	s.sendState(n.localSideLocked(), flagAhead)
	n.log.Warn("the link to the peer is congested: pulled ahead", "why", why)
	return true
}

// disconnectCongested drops the session s as on-congestion disconnect
// says, in the background (the goodbye may wait for the congested link). It
// reports true: this write and every later one are not sent on s, but
// marked out of sync as written alone.
func (n *Node) disconnectCongested(s *session, why string) bool {
	if !s.dropping.CompareAndSwap(false, true) {
		return true
	}
	n.log.Warn("the link to the peer is congested: disconnecting", "why", why)
	stop := &localStop{reason: "disconnected on congestion: " + why}
	s.leaving.Store(stop) // the reason, whichever side closes first
	go func() {
		s.goodbye("the Primary disconnected on congestion: " + why)
		s.close(stop)
	}()
	return true
}

// fallBehind is the peer's side of pullAhead: a Secondary whose Primary
// pulled ahead marks its disk Outdated, persists it, goes Behind and says
// so.
func (n *Node) fallBehind(s *session) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.sess != s || n.st.Role != Secondary || (n.st.Conn != Connected && n.st.Conn != SyncTarget) {
		return nil
	}
	why := "the Primary pulled ahead on a congested link: this disk is Outdated until the resync that follows"
	if n.st.Conn == SyncTarget {
		// The resync stops where it is; its waiter gives up (the
		// resync that ends Ahead has one of its own), and the disk
		// stays Inconsistent.
		why = "the Primary pulled ahead on a congested link: the resync goes on once it drains"
		s.newSyncDone()
		n.progress = nil
	}
	n.setStateLocked(why, func(st *State) {
		st.Conn = Behind
		if st.Disk == UpToDate {
			st.Disk = Outdated
		}
	})
	if err := n.saveMetaLocked(); err != nil {
		return err
	}
	s.sendState(n.localSideLocked())
	return nil
}

// drainedAheadLocked reports, with n.mu held, whether an Ahead node may
// start the resync of what it recorded: every write it sent before has
// been answered (so no copy can overtake one of them on the way), for
// aheadSettle already (as DRBD waits, so that a burst that congested the
// link is likely over and the resync does not congest it again at once),
// and the peer is a Secondary (a peer promoted meanwhile is resolved by
// reconnecting).
func (n *Node) drainedAheadLocked() bool {
	if n.st.Conn != Ahead || n.stats.peerPending.Load() != 0 || n.st.PeerRole != Secondary {
		n.aheadDrained = time.Time{}
		return false
	}
	now := time.Now()
	if n.aheadDrained.IsZero() {
		n.aheadDrained = now
		time.AfterFunc(aheadSettle, n.kickSync)
		return false
	}
	if now.Sub(n.aheadDrained) < aheadSettle {
		return false
	}
	n.aheadDrained = time.Time{}
	return true
}

// aheadSettle is how long an Ahead node waits, once the link drained,
// before it resyncs (DRBD's one second).
const aheadSettle = time.Second

// catchUp is the peer's side of the resync that ends Ahead: a Behind node
// told that the resync starts (SyncStart; the source's bitmap arrived
// before it) becomes SyncTarget, its disk Inconsistent, and persists that
// and the bitmap before it answers anything after the SyncStart, so that
// no copy lands on a disk whose metadata still says Outdated (the source
// waits for a barrier). It then waits for SyncDone as a resync's target
// does. A node that is not Behind ignores the SyncStart (a resync decided
// when the nodes connected is under way already).
func (n *Node) catchUp(s *session) error {
	n.mu.Lock()
	if n.sess != s || n.st.Conn != Behind {
		n.mu.Unlock()
		return nil
	}
	n.setStateLocked("the link drained: the Primary resyncs what it wrote while Ahead",
		func(st *State) { st.Conn, st.Disk = SyncTarget, Inconsistent })
	err := n.saveMetaLocked()
	n.mu.Unlock()
	if err != nil {
		return err
	}
	if err := n.store().PersistBitmap(); err != nil {
		return err
	}
	done := s.newSyncDone()
	n.event("resync-started", map[string]string{"URBD_DIRECTION": SyncTarget.String()})
	s.wg.Add(1) // from the counted control loop: never races with Wait
	go func() {
		defer s.wg.Done()
		if err := n.waitSyncTarget(s, done); err != nil && !errors.Is(err, errResyncReplaced) {
			s.close(err)
		}
	}()
	return nil
}
