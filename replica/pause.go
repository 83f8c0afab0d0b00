package replica

import (
	"time"

	"github.com/urbd/urbd/protocol"
)

// A resync can be paused by the operator of either node (`urbd pause-sync`,
// DRBD's user-initiated sync suspension). The pause is a flag of the node
// that set it, kept in memory until `urbd resume-sync` or a restart, and
// sent to the peer in every State (protocol.FlagResyncPaused). The
// SyncSource copies nothing while either flag is set; a resync that starts
// meanwhile starts paused. Both nodes then show PausedSyncS or PausedSyncT,
// with 'u' (paused here) or 'p' (paused by the peer) in the status flags.

// pausePoll is how often a paused SyncSource looks whether it may go on.
const pausePoll = 50 * time.Millisecond

// PauseSync pauses resyncs (`urbd pause-sync`): the running one, if any,
// and the ones that start until ResumeSync. Application writes go on and
// are replicated as before; only the copying of out-of-sync blocks stops.
// It is idempotent.
func (n *Node) PauseSync() {
	n.setUserPause(true, "resync paused by operator (urbd resume-sync goes on)")
}

// ResumeSync lifts this node's pause. A pause the peer's operator set stays.
func (n *Node) ResumeSync() {
	n.setUserPause(false, "resync resumed by operator")
}

func (n *Node) setUserPause(on bool, reason string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.userPause.Swap(on) == on {
		return
	}
	n.log.Info(reason)
	n.setReasonLocked(reason)
	if s := n.sess; s != nil {
		s.sendState(n.localSideLocked())
	}
}

// peerPauseChanged records the pause flag of a State from the peer, as it
// arrives (a SyncSource reads no states while it copies).
func (s *session) peerPauseChanged(st *protocol.State) {
	on := st.Flags&protocol.FlagResyncPaused != 0
	if s.peerPause.Swap(on) == on {
		return
	}
	n := s.n
	n.mu.Lock()
	defer n.mu.Unlock()
	if on {
		n.setReasonLocked("resync paused by the peer's operator")
	} else {
		n.setReasonLocked("resync resumed by the peer's operator")
	}
}

// syncPaused reports whether either node paused resyncs.
func (s *session) syncPaused() bool {
	return s.n.userPause.Load() || s.peerPause.Load()
}

// waitSyncResumed blocks while the resync is paused, or until the session
// ends.
func (s *session) waitSyncResumed() error {
	for s.syncPaused() {
		select {
		case <-s.ctx.Done():
			return s.ctx.Err()
		case <-time.After(pausePoll):
		}
	}
	return nil
}

// pausedConnName is the connection state the status shows for c: a resync
// that either node paused is PausedSyncS or PausedSyncT, as in DRBD.
func pausedConnName(c ConnState, paused bool) string {
	switch {
	case paused && c == SyncSource:
		return "PausedSyncS"
	case paused && c == SyncTarget:
		return "PausedSyncT"
	}
	return c.String()
}
