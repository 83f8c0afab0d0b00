package replica

import (
	"errors"
	"fmt"
	"time"
)

// Promotion while connected is agreed with the peer, as DRBD 9 agrees a
// role change with its peers before it makes it: two Secondaries promoted at
// the same moment (two operators, two cluster managers, two NBD clients with
// auto-promote) must not both become Primary, each refusing the other's
// writes.
//
// The node that wants to become Primary sends its state with flagPromoteAsk
// and waits for the answer: the peer's state with flagPromoteYes, or with
// flagPromoteNo when the peer is Primary, was told yes itself and has not
// finished, or asks at the same moment and wins (the higher node id wins,
// judged alike on both nodes). The asker's question stays open (n.asking)
// until it is Primary or gave up, so the peer's own question is answered no
// meanwhile. Without a connected peer there is nobody to ask, and fencing
// (fenceBeforePromote) guards the promotion.

// ErrPeerPromoting refuses a promotion because the peer is being promoted:
// it asked first, or at the same moment and won.
var ErrPeerPromoting = errors.New("replica: the peer is being promoted")

// promotion is this node's question to the peer, open from the ask until
// Promote finishes (endPromotionLocked).
type promotion struct {
	s       *session
	answer  chan bool // buffered: true when the peer said yes
	granted bool      // guarded by n.mu: the peer said yes
}

// askPeerToPromote asks the connected peer for leave to promote. It returns
// the open question the peer said yes to, or nil when there is no connected
// peer to ask (or the promotion is refused anyway: Promote checks again and
// says why). The caller holds promoteMu and, under n.mu, promotes or not and
// then calls endPromotionLocked.
func (n *Node) askPeerToPromote(force bool) (*promotion, error) {
	n.mu.Lock()
	s := n.sess
	if n.st.Role == Primary || s == nil || !n.st.Conn.Connected() || n.st.CanPromote(force) != nil {
		n.mu.Unlock()
		return nil, nil
	}
	p := &promotion{s: s, answer: make(chan bool, 1)}
	n.asking = p
	s.sendState(n.localSideLocked(), flagPromoteAsk)
	n.mu.Unlock()

	timer := time.NewTimer(n.timeout())
	defer timer.Stop()
	var yes, answered bool
	select {
	case yes = <-p.answer:
		answered = true
	case <-s.ctx.Done():
	case <-timer.C:
	}
	if yes {
		return p, nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.endPromotionLocked(p)
	switch {
	case !answered && s.ctx.Err() != nil:
		return nil, fmt.Errorf("%s: %w while asking the peer whether this node may be promoted; try again", n.cfg.Name, ErrPeerLost)
	case !answered:
		return nil, fmt.Errorf("%s: %w: it did not answer within %v whether this node may be promoted", n.cfg.Name, ErrPeerLost, n.timeout())
	case s.peerPrimary.Load():
		return nil, fmt.Errorf("%s: %w: demote the peer first (urbd secondary %s on the other node)", n.cfg.Name, ErrPeerPrimary, n.cfg.Name)
	}
	return nil, fmt.Errorf("%s: %w; demote it first (urbd secondary %s on the other node)", n.cfg.Name, ErrPeerPromoting, n.cfg.Name)
}

// endPromotionLocked closes the question p once Promote is done with it:
// the state this node sends now tells the peer the outcome (Primary, or
// still Secondary), which a peer that said yes may be waiting for. n.mu is
// held; a nil p is no question.
func (n *Node) endPromotionLocked(p *promotion) {
	if p == nil || n.asking != p {
		return
	}
	n.asking = nil
	if n.sess == p.s && !p.s.isClosed() {
		p.s.sendState(n.localSideLocked())
	}
}

// answerPromotion answers the peer's flagPromoteAsk on s: no while this
// node is Primary, was told yes itself, or asks too and has the higher node
// id; yes otherwise.
func (n *Node) answerPromotion(s *session) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.sess != s {
		return
	}
	p := n.asking
	yes := n.st.Role != Primary && (p == nil || p.s != s || !p.granted && n.nodeID < s.peer.NodeID)
	flag := flagPromoteNo
	if yes {
		flag = flagPromoteYes
	}
	s.sendState(n.localSideLocked(), flag)
}

// promotionAnswered hands the peer's answer on s to the open question.
func (n *Node) promotionAnswered(s *session, yes bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if p := n.asking; p != nil && p.s == s && !p.granted {
		p.granted = yes
		select {
		case p.answer <- yes:
		default:
		}
	}
}
