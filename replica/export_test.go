package replica

import (
	"time"

	"github.com/urbd/urbd/protocol"
)

// AckBatch exposes ackBatch to the scenario tests.
const AckBatch = ackBatch

// SetVerifyCheckpointEvery changes how often a running verify saves its
// resume point (verifyCheckpointEvery).
func (n *Node) SetVerifyCheckpointEvery(d time.Duration) { n.verifyCkptEvery.Store(int64(d)) }

// SetAutoPromoteWait changes how long an attaching client waits for a
// Primary peer to demote (autoPromoteWait).
func (n *Node) SetAutoPromoteWait(d time.Duration) { n.autoWait.Store(int64(d)) }

// TransferLogEmpty reports whether a replicating session's transfer log is
// empty (every write the peer answered is covered by a peer flush). It is
// false without a session.
func (n *Node) TransferLogEmpty() bool {
	s := n.session()
	if s == nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tlog.empty()
}

// ApplyPeerWrite applies w as if the peer had sent it on the data stream,
// and returns the answer the node would send back (CodeIO without a
// session).
func (n *Node) ApplyPeerWrite(w *protocol.Write) protocol.Ack {
	s := n.session()
	if s == nil {
		return protocol.Ack{Seq: w.Seq, Err: protocol.CodeIO}
	}
	ack, _ := s.applyWrite(w)
	return ack
}

// ApplyPeerCopy applies m, a *protocol.ResyncData or *protocol.ResyncZero,
// as if the peer had sent it on the resync stream, and returns the answer
// (CodeIO without a session).
func (n *Node) ApplyPeerCopy(m protocol.Message) protocol.ResyncAck {
	s := n.session()
	if s == nil {
		return protocol.ResyncAck{Err: protocol.CodeIO}
	}
	return s.applyCopy(m)
}

// AnswerPeerChecksums answers m as if the peer had sent it on the resync
// stream (an error without a session).
func (n *Node) AnswerPeerChecksums(m *protocol.ChecksumRequest) (*protocol.ChecksumReply, error) {
	s := n.session()
	if s == nil {
		return nil, ErrPeerLost
	}
	return s.checksums(m)
}

// PeerWantsReceipts reports whether the peer, a Primary running protocol
// B, asked this node to confirm each write's arrival (false without a
// session).
func (n *Node) PeerWantsReceipts() bool {
	s := n.session()
	return s != nil && s.wantRecv.Load()
}

// Sweep runs one activity-log sweep as the node's sweep loop does.
func (n *Node) Sweep() error { return n.sweep() }

// NodeID returns the node's id, which breaks ties in Decide.
func (n *Node) NodeID() uint64 { return n.nodeID }

// MarkOutOfSync marks a range out of sync as a write without the peer would.
func (n *Node) MarkOutOfSync(off, length int64) { n.store().MarkOutOfSync(off, length) }

// OnStateSent makes f run in each negotiation between sending the local
// state to the peer and deciding.
func (n *Node) OnStateSent(f func()) {
	n.mu.Lock()
	n.stateSent = f
	n.mu.Unlock()
}

// OnSessionClosing makes f run in each session close between marking the
// session closed and sessionEnded.
func (n *Node) OnSessionClosing(f func()) {
	n.mu.Lock()
	n.sessionClosing = f
	n.mu.Unlock()
}

// PendingPeerReads counts the reads sent to the peer and not answered yet
// (0 without a session).
func (n *Node) PendingPeerReads() int {
	s := n.session()
	if s == nil {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	reads := 0
	for _, r := range s.pending {
		if r.read {
			reads++
		}
	}
	return reads
}

// AttachCopied is how far from the start an attach-disk copy has copied
// every chunk (copyMark): reads below it come from the new disk.
func (n *Node) AttachCopied() int64 { return n.disk.Load().copied.Load() }
