package replica

// AckBatch exposes ackBatch to the scenario tests.
const AckBatch = ackBatch

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
