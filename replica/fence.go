package replica

import (
	"context"
	"errors"
	"fmt"
)

// Fencing is what a node does before it writes without a peer that may hold
// its data and be promoted (DRBD's fencing policy): the fence-peer handler
// makes sure the peer cannot become Primary with older data.
type Fencing uint8

const (
	// FenceDontCare: a Primary that loses its peer goes on without fencing
	// (or holds writes with on-peer-loss suspend).
	FenceDontCare Fencing = iota
	// FenceResourceOnly: the fence-peer handler runs when a Primary loses an
	// UpToDate peer, and before a disconnected Secondary is promoted; writes
	// go on while it runs.
	FenceResourceOnly
	// FenceResourceAndStonith: as FenceResourceOnly, and the Primary's writes
	// (and flushes) are frozen from the peer loss until the handler reports
	// the peer fenced, the peer is back, or `urbd resume-io`.
	FenceResourceAndStonith
)

var fencingNames = [...]string{"dont-care", "resource-only", "resource-and-stonith"}

func (f Fencing) String() string { return policyName(fencingNames[:], uint8(f)) }

// ParseFencing parses a fencing policy name (Fencing.String); "" is
// dont-care.
func ParseFencing(s string) (Fencing, error) {
	v, err := parsePolicy("fencing", fencingNames[:], s)
	return Fencing(v), err
}

// Exit codes of the fence-peer handler, as DRBD defines them.
const (
	FenceExitPeerInconsistent = 3 // the peer's disk is Inconsistent
	FenceExitPeerOutdated     = 4 // the peer's disk is now (or was) Outdated
	FenceExitPeerUnreachable  = 5 // the peer could not be reached
	FenceExitPeerPrimary      = 6 // the peer refused: it is Primary
	FenceExitPeerStonithed    = 7 // the peer machine was powered off (STONITH)
)

// fenceState tracks whether the peer has been fenced since it was lost.
type fenceState uint8

const (
	// fenceNeeded: the peer may hold this node's data and could be
	// promoted; a Primary without it must fence it (the state at start).
	fenceNeeded  fenceState = iota
	fenceRunning            // the fence-peer handler runs
	fenceFailed             // it failed: writes stay frozen with resource-and-stonith
	// fenceDone: the peer cannot be promoted without --force (fenced, or
	// Outdated or Inconsistent when it was lost), or the operator resumed.
	fenceDone
)

// fenceOutcome is what a fence-peer exit code means for this node.
type fenceOutcome struct {
	fenced      bool      // the peer cannot be promoted: writes may go on
	peerDisk    DiskState // the peer's disk state to show while apart
	outdateSelf bool      // the peer is Primary: this node's disk is the older one
	what        string    // for the log and the status reason
}

// decideFence interprets the fence-peer handler's result. Unreachable (5)
// counts as fenced only with resource-only fencing and an UpToDate local
// disk (DRBD's "peer is unreachable, assumed to be dead"): with
// resource-and-stonith the peer may be alive behind a broken link, so only
// 3, 4 and 7 release the writes.
func decideFence(code int, err error, policy Fencing, local DiskState) fenceOutcome {
	if err != nil {
		return fenceOutcome{what: "the fence-peer handler failed: " + err.Error()}
	}
	switch code {
	case FenceExitPeerInconsistent:
		return fenceOutcome{fenced: true, peerDisk: Inconsistent, what: "the peer's disk is Inconsistent (fence-peer exit 3)"}
	case FenceExitPeerOutdated:
		return fenceOutcome{fenced: true, peerDisk: Outdated, what: "the peer's disk is Outdated (fence-peer exit 4)"}
	case FenceExitPeerUnreachable:
		if policy == FenceResourceOnly && local == UpToDate {
			return fenceOutcome{fenced: true, peerDisk: Outdated, what: "the peer is unreachable and assumed dead (fence-peer exit 5)"}
		}
		return fenceOutcome{what: "the peer is unreachable, so it may still be running (fence-peer exit 5)"}
	case FenceExitPeerPrimary:
		return fenceOutcome{outdateSelf: true, what: "the peer is Primary (fence-peer exit 6): this node's disk is now Outdated"}
	case FenceExitPeerStonithed:
		return fenceOutcome{fenced: true, peerDisk: Outdated, what: "the peer was powered off (fence-peer exit 7)"}
	default:
		return fenceOutcome{what: fmt.Sprintf("the fence-peer handler exited %d, which is not one of 3, 4, 5, 6, 7", code)}
	}
}

// ErrNotFenced refuses a promotion whose fence-peer handler failed.
var ErrNotFenced = errors.New("replica: the peer could not be fenced")

// ErrNotFrozen refuses `urbd resume-io` when no write is held.
var ErrNotFrozen = errors.New("replica: writes are not suspended")

// ErrOutdateRefused refuses `urbd outdate`.
var ErrOutdateRefused = errors.New("replica: cannot outdate")

// fenceFrozenLocked reports whether writes wait for the peer to be fenced:
// a Primary with resource-and-stonith fencing, without a session, whose
// peer has not been fenced since it was lost. n.mu must be held.
func (n *Node) fenceFrozenLocked() bool {
	return n.fencingPolicy() == FenceResourceAndStonith && n.st.Role == Primary &&
		!n.st.Conn.Connected() && n.fence != fenceDone
}

// fenceLoop runs the fence-peer handler whenever fencing is on and a Primary
// is without a peer that may hold its data, and records the outcome. A Primary that
// starts (a restart after a clean stop) first gives its peer the peer
// timeout to connect, so that a restart does not fence a healthy peer.
func (n *Node) fenceLoop(ctx context.Context) error {
	grace, cancel := context.WithTimeout(ctx, n.timeout())
	err := n.waitUntil(grace, func() bool { return n.st.Conn.Connected() })
	cancel()
	if err != nil && ctx.Err() != nil {
		return nil
	}
	for {
		n.mu.Lock()
		need := n.fencingPolicy() != FenceDontCare && n.st.Role == Primary && !n.st.Conn.Connected() && n.fence == fenceNeeded
		if need {
			n.fence = fenceRunning
		}
		ch := n.changed
		n.mu.Unlock()
		if need {
			n.fencePeer(ctx, "fencing the peer: this Primary lost it")
			continue
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil
		}
	}
}

// fencePeer runs the fence-peer handler (n.fence is fenceRunning) and
// applies its outcome unless a session connected meanwhile. It reports
// whether the peer is fenced.
func (n *Node) fencePeer(ctx context.Context, why string) bool {
	n.mu.Lock()
	n.setReasonLocked(why)
	n.mu.Unlock()
	n.log.Warn(why + ": running the fence-peer handler")

	code, err := -1, errors.New("no fence-peer handler is configured")
	if n.cfg.FencePeer != nil {
		code, err = n.cfg.FencePeer(ctx)
	}

	n.mu.Lock()
	defer n.mu.Unlock()
	out := decideFence(code, err, n.fencingPolicy(), n.st.Disk)
	if n.st.Conn.Connected() || n.fence != fenceRunning {
		// The peer came back (or the operator resumed) while the handler
		// ran: its answer no longer matters.
		n.log.Info("fence-peer handler finished after the peer state changed", "result", out.what)
		if n.fence == fenceRunning {
			n.fence = fenceNeeded
		}
		return out.fenced
	}
	switch {
	case out.fenced:
		n.fence = fenceDone
		n.log.Info("peer fenced", "result", out.what)
		reason := "peer fenced: " + out.what
		n.setStateLocked(reason, func(st *State) { st.PeerDisk = out.peerDisk })
		n.setReasonLocked(reason)
	case out.outdateSelf:
		n.fence = fenceFailed
		n.log.Error("fencing the peer failed", "result", out.what)
		if err := n.outdateLocked("fencing the peer failed: " + out.what); err != nil {
			n.log.Error("outdating the disk failed", "err", err)
		}
	default:
		n.fence = fenceFailed
		reason := "fencing the peer failed: " + out.what
		if n.fencingPolicy() == FenceResourceAndStonith && n.st.Role == Primary {
			reason += fmt.Sprintf("; writes stay suspended until the peer is back or urbd resume-io %s", n.cfg.Name)
		}
		n.log.Error("fencing the peer failed", "result", out.what)
		n.setReasonLocked(reason)
	}
	return out.fenced
}

// fenceBeforePromote runs the fence-peer handler before a Secondary without
// a session becomes Primary, when fencing is configured and the peer has
// not been fenced. A failed fence refuses the promotion unless force.
func (n *Node) fenceBeforePromote(force bool) error {
	n.mu.Lock()
	need := n.fencingPolicy() != FenceDontCare && n.st.Role == Secondary && !n.st.Conn.Connected() &&
		n.fence != fenceDone && n.fence != fenceRunning && n.st.CanPromote(force) == nil
	if need {
		n.fence = fenceRunning
	}
	n.mu.Unlock()
	if !need {
		return nil
	}
	if n.fencePeer(context.Background(), "fencing the peer before promotion") {
		return nil
	}
	if !force {
		return fmt.Errorf("%s: %w: make sure it is not Primary and cannot become Primary, then urbd primary --force %s", n.cfg.Name, ErrNotFenced, n.cfg.Name)
	}
	n.mu.Lock()
	n.fence = fenceDone // the operator vouches for the peer
	n.mu.Unlock()
	n.log.Warn("promoted with --force although the peer could not be fenced")
	return nil
}

// ResumeIO releases writes held for the peer (`urbd resume-io`): those a
// failed fence-peer handler froze, and those on-peer-loss suspend holds,
// until the peer is back. The operator takes over the guarantee that the
// peer is not promoted meanwhile.
func (n *Node) ResumeIO() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.suspendedLocked() {
		return fmt.Errorf("%s: %w", n.cfg.Name, ErrNotFrozen)
	}
	n.fence = fenceDone
	n.resumed = true
	reason := "writes resumed by operator without the peer"
	n.log.Warn(reason)
	n.setReasonLocked(reason)
	return nil
}

// Outdate marks this node's disk Outdated (`urbd outdate`, what a
// fence-peer handler runs on the peer): it then refuses promotion without
// --force until a resync brings it up to date. Refused on a Primary and
// while connected, where the peer knows this node's state already.
func (n *Node) Outdate() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case n.st.Role == Primary:
		return fmt.Errorf("%s: %w: this node is Primary", n.cfg.Name, ErrOutdateRefused)
	case n.st.Conn.Connected():
		return fmt.Errorf("%s: %w: connected to the peer, which keeps this node's disk state itself", n.cfg.Name, ErrOutdateRefused)
	case n.st.Disk == Outdated || n.st.Disk == Inconsistent:
		return nil // already not promotable
	}
	return n.outdateLocked("outdated by operator (urbd outdate)")
}
