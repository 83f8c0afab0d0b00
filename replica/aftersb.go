package replica

import "fmt"

// AfterSB0 is DRBD's after-sb-0pri: what two nodes that find a split brain
// do on their own when neither is Primary.
type AfterSB0 uint8

const (
	// SB0Disconnect: both stay StandAlone until the operator picks the
	// losing side (connect --discard-my-data). The default.
	SB0Disconnect AfterSB0 = iota
	// SB0DiscardZeroChanges: a node that wrote nothing since the split
	// becomes SyncTarget of the other; if both wrote, they disconnect.
	SB0DiscardZeroChanges
	// SB0DiscardLeastChanges: the node that changed fewer blocks since the
	// split becomes SyncTarget of the other (a node that wrote nothing
	// first); on a tie, the higher node id is the source.
	SB0DiscardLeastChanges
)

// AfterSB1 is DRBD's after-sb-1pri: the same when one of them is Primary.
type AfterSB1 uint8

const (
	// SB1Disconnect: both stay StandAlone (the default).
	SB1Disconnect AfterSB1 = iota
	// SB1Consensus: the Secondary's changes are discarded when
	// after-sb-0pri would discard them too; otherwise they disconnect.
	SB1Consensus
	// SB1DiscardSecondary: the Secondary's changes are discarded: it
	// becomes SyncTarget of the Primary.
	SB1DiscardSecondary
)

var (
	sb0Names = []string{"disconnect", "discard-zero-changes", "discard-least-changes"}
	sb1Names = []string{"disconnect", "consensus", "discard-secondary"}
)

func (p AfterSB0) String() string { return policyName(sb0Names, uint8(p)) }
func (p AfterSB1) String() string { return policyName(sb1Names, uint8(p)) }

// ParseAfterSB0 parses an after-sb-0pri policy name ("" is the default).
func ParseAfterSB0(s string) (AfterSB0, error) {
	v, err := parsePolicy("after-sb-0pri", sb0Names, s)
	return AfterSB0(v), err
}

// ParseAfterSB1 parses an after-sb-1pri policy name ("" is the default).
func ParseAfterSB1(s string) (AfterSB1, error) {
	v, err := parsePolicy("after-sb-1pri", sb1Names, s)
	return AfterSB1(v), err
}

// AfterSplitBrain is the automatic split-brain recovery policy. Both nodes
// must be configured alike: they decide independently, so a connection
// between nodes whose policies differ is refused (Decide).
type AfterSplitBrain struct {
	NoPrimary  AfterSB0 // after-sb-0pri
	OnePrimary AfterSB1 // after-sb-1pri
}

func (p AfterSplitBrain) String() string {
	return fmt.Sprintf("after-sb-0pri %s, after-sb-1pri %s", p.NoPrimary, p.OnePrimary)
}

// The policy travels in bits 20-23 of State.Flags: two bits each.
const (
	sbShift0 = 20
	sbShift1 = 22
)

func (p AfterSplitBrain) flags() uint32 {
	return uint32(p.NoPrimary&3)<<sbShift0 | uint32(p.OnePrimary&3)<<sbShift1
}

func afterSBFromFlags(f uint32) AfterSplitBrain {
	return AfterSplitBrain{NoPrimary: AfterSB0(f >> sbShift0 & 3), OnePrimary: AfterSB1(f >> sbShift1 & 3)}
}

// resolve applies the policy to a split brain whose bitmaps share their base
// (so each bitmap holds exactly what its node changed since the split). It
// returns 1 when local is the source, -1 when the peer is, or 0 when the
// policy leaves the split brain to the operator; how says which rule
// decided, or why none did.
func (p AfterSplitBrain) resolve(local, peer Side) (dir int, how string) {
	switch {
	case local.Primary && peer.Primary:
		return 0, "both nodes are Primary"
	case local.Primary || peer.Primary:
		primary := pick(local.Primary, peer.Primary)
		switch p.OnePrimary {
		case SB1DiscardSecondary:
			return primary, "after-sb-1pri discard-secondary"
		case SB1Consensus:
			bothWrote := local.dirty() && peer.dirty()
			switch d, how0 := p.noPrimary(local, peer, primary); {
			case d == primary && bothWrote:
				return primary, "after-sb-1pri consensus with " + how0
			case d == primary:
				return primary, "after-sb-1pri consensus: the Secondary wrote nothing since the split"
			case p.NoPrimary == SB0Disconnect:
				return 0, "after-sb-1pri consensus with after-sb-0pri disconnect: the Secondary's changes are kept"
			case p.NoPrimary == SB0DiscardLeastChanges && bothWrote:
				return 0, "after-sb-1pri consensus with " + how0 + ": the Secondary's changes are kept"
			}
			return 0, "after-sb-1pri consensus: the Secondary wrote since the split"
		}
		return 0, ""
	}
	return p.noPrimary(local, peer, pick(local.NodeID > peer.NodeID, peer.NodeID > local.NodeID))
}

// noPrimary is the after-sb-0pri rule; tie is the source when neither node
// wrote since the split (both directions then copy nothing that matters).
func (p AfterSplitBrain) noPrimary(local, peer Side, tie int) (dir int, how string) {
	if p.NoPrimary != SB0DiscardZeroChanges && p.NoPrimary != SB0DiscardLeastChanges {
		return 0, ""
	}
	name := "after-sb-0pri " + p.NoPrimary.String()
	if local.dirty() && peer.dirty() {
		if p.NoPrimary == SB0DiscardZeroChanges {
			return 0, name + ": both nodes wrote since the split"
		}
		return leastChanges(name, local, peer)
	}
	if dir := pick(local.dirty(), peer.dirty()); dir != 0 {
		return dir, name + ": only " + who(dir, "this node", "the peer") + " wrote since the split"
	}
	if tie != 0 {
		return tie, name + ": neither node wrote since the split"
	}
	return 0, name + ": neither node wrote, and equal node ids choose no direction"
}

// leastChanges is discard-least-changes when both nodes wrote: the one whose
// bitmap marks more blocks is the source; on a tie the higher node id is.
func leastChanges(name string, local, peer Side) (dir int, how string) {
	counts := fmt.Sprintf(" (this node %d blocks, the peer %d)", local.Changed, peer.Changed)
	if dir := pick(local.Changed > peer.Changed, peer.Changed > local.Changed); dir != 0 {
		return dir, name + ": " + who(-dir, "this node", "the peer") + " changed fewer blocks since the split" + counts
	}
	if dir := pick(local.NodeID > peer.NodeID, peer.NodeID > local.NodeID); dir != 0 {
		return dir, name + ": both changed as many blocks" + counts + "; the higher node id is the source"
	}
	return 0, name + ": both changed as many blocks" + counts + ", and equal node ids choose no direction"
}
