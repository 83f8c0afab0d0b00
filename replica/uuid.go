package replica

import (
	"fmt"
	"strings"
)

// UUIDs are a node's generation identifiers, in DRBD's model. Every change of
// "which data is newest" gets a fresh random Current; comparing two nodes'
// UUIDs tells whether they hold the same data, which one is newer and whether
// the newer one's bitmap covers the difference.
//
// 0 means "none" everywhere. Current is 0 only on a disk that never held a
// data generation. Bitmap is non-zero while the out-of-sync bitmap tracks the
// changes made since the generation Bitmap names; History keeps the two
// generations before that (History[0] is the newer).
//
// UUIDs is a plain value: the transitions return a new value and do no I/O.
// The caller persists the result before it acts on it (before the first
// write of a new generation, before reporting a resync as finished).
type UUIDs struct {
	Current, Bitmap uint64
	History         [2]uint64
}

// String formats the UUIDs like DRBD's uuid dump: C:B:H0:H1 in hex.
func (u UUIDs) String() string {
	return fmt.Sprintf("%016X:%016X:%016X:%016X", u.Current, u.Bitmap, u.History[0], u.History[1])
}

// pushHistory makes id the newest history entry, dropping the oldest. A zero
// id leaves u unchanged.
func (u UUIDs) pushHistory(id uint64) UUIDs {
	if id == 0 {
		return u
	}
	u.History[1] = u.History[0]
	u.History[0] = id
	return u
}

// NewCurrent starts a new data generation: a Primary lost its peer, or was
// promoted without one, and is about to write what the peer will not see.
// newID must be fresh, random and non-zero; 0, or the id already current,
// leaves u unchanged.
//
// If Bitmap is 0, the bitmap starts tracking from the old Current
// (Bitmap = Current), so a peer still at that generation can be brought up to
// date from the bitmap alone. If Bitmap is already set, the bitmap keeps
// tracking from that older generation (it covers every change since, a
// superset), and the old Current moves into History so that a peer at that
// generation is still recognised as an ancestor (it then gets a full sync).
// A disk with no generation (Current 0) simply takes newID.
func (u UUIDs) NewCurrent(newID uint64) UUIDs {
	if newID == 0 || newID == u.Current {
		return u
	}
	switch {
	case u.Current == 0:
	case u.Bitmap == 0:
		u.Bitmap = u.Current
	default:
		u = u.pushHistory(u.Current)
	}
	u.Current = newID
	return u
}

// SyncSourceDone is the source's step after a completed resync: the peer now
// holds Current, the bitmap is empty, so the generation the bitmap tracked
// from moves into History and Bitmap becomes 0.
func (u UUIDs) SyncSourceDone() UUIDs {
	if u.Bitmap == 0 {
		return u
	}
	u = u.pushHistory(u.Bitmap)
	u.Bitmap = 0
	return u
}

// SyncTargetDone is the target's step after a completed resync from src
// (the source's UUIDs as sent at the start of the resync, or later): the
// target now holds src.Current, with the same history the source has after
// its SyncSourceDone, and an empty bitmap. The target's old generations are
// dropped: its data no longer descends from them.
//
// The same step adopts a peer's generation without a resync when both disks
// are known identical (for instance created clean).
func (u UUIDs) SyncTargetDone(src UUIDs) UUIDs {
	s := src.SyncSourceDone()
	return UUIDs{Current: s.Current, History: s.History}
}

// ConnectedInSync is the step of both nodes when they connected and Decide
// found nothing to copy (same Current): a leftover Bitmap moves into History.
func (u UUIDs) ConnectedInSync() UUIDs { return u.SyncSourceDone() }

// ancestors returns the non-zero generations u descends from.
func (u UUIDs) ancestors() []uint64 {
	var a []uint64
	for _, id := range [...]uint64{u.Bitmap, u.History[0], u.History[1]} {
		if id != 0 {
			a = append(a, id)
		}
	}
	return a
}

func (u UUIDs) inHistory(id uint64) bool {
	return id != 0 && (u.History[0] == id || u.History[1] == id)
}

// Side is what Decide knows about one node at connection time.
type Side struct {
	UUIDs UUIDs
	// Disk is "UpToDate", "Inconsistent" or "Outdated" (DiskState.String).
	// Anything else, "DUnknown" included, counts as Inconsistent: such a
	// disk is never a resync source.
	Disk           string
	AfterSB        AfterSplitBrain // the node's split-brain policy; both must agree
	Primary        bool            // the node's role is Primary now
	CrashedPrimary bool            // it was Primary when it stopped uncleanly
	DiscardMyData  bool            // the operator ran connect --discard-my-data on it
	// Changed is how many blocks its out-of-sync bitmap marks (its
	// changes since a split brain): after-sb-0pri discard-least-changes
	// compares them; dirty says whether there are any.
	Changed uint64
	// NodeID is a stable, random, per-node id (kept in the metadata). It
	// breaks the one tie nothing else decides (same generation, both
	// bitmaps dirty, no Primary, no crashed Primary): the higher NodeID
	// becomes the source. 0 is allowed; equal ids cannot break the tie.
	NodeID uint64

	// recoveredAL: the bitmap holds activity-log extents recovered after a
	// crash. Decide ignores it; it makes the resync compare checksums first.
	recoveredAL bool
	// partial: the disk names no data generation but probably holds much
	// of the data: it was detached (Diskless), or attach-disk's copy was
	// filling it, when the daemon stopped. Decide ignores it; a full resync
	// to it compares checksums first (byChecksum).
	partial bool
	// csums: the node has ResyncChecksums set. Decide ignores it; every
	// resync between the nodes to a disk with data compares checksums.
	csums bool
}

// role is the side's role: Primary or Secondary.
func (s Side) role() Role {
	if s.Primary {
		return Primary
	}
	return Secondary
}

// dirty reports whether the side's bitmap marks any block.
func (s Side) dirty() bool { return s.Changed > 0 }

// consistent reports whether the disk holds a consistent data generation
// (UpToDate or Outdated) and may therefore be a resync source.
func (s Side) consistent() bool { return ParseDiskState(s.Disk).consistent() }

// Decision is what two connecting nodes do. Every decision except
// BecomeSyncSource and BecomeSyncTarget is its own mirror image: Decide on
// the peer reaches the same decision.
type Decision int

const (
	// NoSync: same data generation and nothing out of sync; go Connected.
	NoSync Decision = iota + 1
	// BecomeSyncSource: this node copies to the peer.
	BecomeSyncSource
	// BecomeSyncTarget: this node receives a copy from the peer.
	BecomeSyncTarget
	// SplitBrain: both changed independently since a common generation;
	// both stay StandAlone and copy nothing until the operator runs connect
	// --discard-my-data on the side whose changes are to be dropped.
	SplitBrain
	// Unrelated: the UUIDs share no generation; the peer holds another
	// data set (wrong peer or wrong disk). Nothing is copied.
	Unrelated
	// BothInconsistent: neither disk holds consistent data (a new resource);
	// nothing is copied until one node is promoted with primary --force,
	// which makes its disk UpToDate.
	BothInconsistent
	// Refused: the operator's flags or the roles forbid what the data would
	// need (both sides discarding, a Primary discarding or about to be
	// overwritten, no way to choose a direction). Reason says what to do.
	Refused
)

var decisionNames = [...]string{
	NoSync:           "NoSync",
	BecomeSyncSource: "SyncSource",
	BecomeSyncTarget: "SyncTarget",
	SplitBrain:       "SplitBrain",
	Unrelated:        "Unrelated",
	BothInconsistent: "BothInconsistent",
	Refused:          "Refused",
}

// String returns the decision's name; BecomeSyncSource and BecomeSyncTarget
// print as the connection states they lead to, "SyncSource" and "SyncTarget".
func (d Decision) String() string {
	if d > 0 && int(d) < len(decisionNames) {
		return decisionNames[d]
	}
	return fmt.Sprintf("Decision(%d)", int(d))
}

// Mirror returns the decision the peer reaches for the same pair of sides.
func (d Decision) Mirror() Decision {
	switch d {
	case BecomeSyncSource:
		return BecomeSyncTarget
	case BecomeSyncTarget:
		return BecomeSyncSource
	}
	return d
}

// Plan is Decide's answer.
type Plan struct {
	Decision Decision
	// Full: the whole disk is copied because no bitmap covers the
	// difference. Otherwise the resync copies the union of both nodes'
	// out-of-sync bitmaps (each side's bits mark blocks it changed, or may
	// have changed, without the other). For SplitBrain and Refused it says
	// what a resolution would need.
	Full bool
	// Reason is one line for logs and the status file, from this node's
	// point of view.
	Reason string
	// AutoResolved: a split brain that the AfterSB policy resolved; the
	// target's changes since the split are discarded.
	AutoResolved bool
}

func (p Plan) String() string {
	kind := "bitmap"
	if p.Full {
		kind = "full"
	}
	switch p.Decision {
	case BecomeSyncSource, BecomeSyncTarget, SplitBrain:
		return fmt.Sprintf("%s (%s): %s", p.Decision, kind, p.Reason)
	}
	return fmt.Sprintf("%s: %s", p.Decision, p.Reason)
}

// relKind classifies how two UUID sets relate, before disk states, roles and
// operator flags are considered.
type relKind int

const (
	relBothFresh relKind = iota // neither has a generation
	relEqual                    // same Current
	relBitmap                   // one side's Bitmap is the other's Current
	relHistory                  // one side's History holds the other's Current
	relFresh                    // one side has no generation
	relSplit                    // both moved on from a common ancestor
	relUnrelated                // nothing in common
)

// relation is the comparison of local against peer UUIDs. dir is +1 when the
// local data is newer, -1 when the peer's is, 0 otherwise.
type relation struct {
	kind   relKind
	dir    int
	full   bool
	why    string
	shared bool // relSplit: both bitmaps track from the same generation
}

// compareUUIDs relates l (this node) to p (the peer). It is antisymmetric:
// compareUUIDs(p, l) has the same kind and full, and the opposite dir.
func compareUUIDs(l, p UUIDs) relation {
	switch {
	case l.Current == 0 && p.Current == 0:
		return relation{kind: relBothFresh, full: true, why: "neither disk has a data generation yet"}
	case l.Current == 0:
		return relation{kind: relFresh, dir: -1, full: true, why: "this disk has no data generation yet (new disk)"}
	case p.Current == 0:
		return relation{kind: relFresh, dir: 1, full: true, why: "the peer's disk has no data generation yet (new disk)"}
	case l.Current == p.Current:
		return relation{kind: relEqual, why: "same data generation"}
	}

	src := l.Bitmap == p.Current // local moved on from the peer's generation
	tgt := p.Bitmap == l.Current // the peer moved on from ours
	switch {
	case src && tgt:
		return relation{kind: relSplit, full: true, why: "each side's bitmap UUID names the other's current generation"}
	case src:
		return relation{kind: relBitmap, dir: 1, why: "this node's bitmap tracks every change since the peer's generation"}
	case tgt:
		return relation{kind: relBitmap, dir: -1, why: "the peer's bitmap tracks every change since this node's generation"}
	}

	src = l.inHistory(p.Current)
	tgt = p.inHistory(l.Current)
	switch {
	case src && tgt:
		return relation{kind: relSplit, full: true, why: "each side's history holds the other's current generation"}
	case src:
		return relation{kind: relHistory, dir: 1, full: true, why: "the peer's generation is in this node's history, older than its bitmap"}
	case tgt:
		return relation{kind: relHistory, dir: -1, full: true, why: "this node's generation is in the peer's history, older than its bitmap"}
	}

	if l.Bitmap != 0 && l.Bitmap == p.Bitmap {
		return relation{kind: relSplit, shared: true, why: "both sides wrote since their common generation"}
	}
	for _, a := range l.ancestors() {
		for _, b := range p.ancestors() {
			if a == b {
				return relation{kind: relSplit, full: true, why: "both sides changed since a common older generation"}
			}
		}
	}
	return relation{kind: relUnrelated, full: true, why: "the UUIDs share no generation"}
}

// decideDiskless is the end of Decide's rule 2: a Diskless node connects to a peer
// that can serve all of its I/O, and nothing is copied either way. Its own
// data is rebuilt by a full resync when its daemon restarts with a repaired
// disk (saved as Inconsistent, with every block marked). A Diskless Primary
// connects only to the data generation its application has been using
// (rel, relEqual): a peer that was promoted and written while apart holds
// data that application never wrote nor read, and its writes would land on
// top of it (DRBD: "Can only connect to data with current UUID").
func decideDiskless(local, peer Side, rel relation) Plan {
	if local.Disk == "Diskless" && peer.Disk == "Diskless" {
		return Plan{Decision: Refused, Reason: "both nodes are Diskless: neither holds the data"}
	}
	d, o, dname, oname := local, peer, "this node", "the peer"
	if peer.Disk == "Diskless" {
		d, o, dname, oname = peer, local, "the peer", "this node"
	}
	switch {
	case o.Disk != "UpToDate":
		return Plan{Decision: Refused, Reason: fmt.Sprintf("%s is Diskless and %s's disk is %s: nobody can serve the data", dname, oname, orUnknown(o.Disk))}
	case o.Primary:
		return Plan{Decision: Refused, Reason: fmt.Sprintf("%s is Diskless and %s is Primary: demote one of them", dname, oname)}
	case d.Primary && rel.kind != relEqual:
		where := "here"
		if peer.Disk == "Diskless" {
			where = "there"
		}
		return Plan{Decision: Refused, Reason: fmt.Sprintf("%s is a Diskless Primary on data generation %016X but %s's data is of generation %016X (written without the other, e.g. promoted while apart): "+
			"its application would run on data it never wrote; demote %s (urbd secondary), run attach-disk %s (a full resync) and urbd connect on %s",
			dname, d.UUIDs.Current, oname, o.UUIDs.Current, dname, where, oname)}
	}
	return Plan{Decision: NoSync, Reason: dname + " is Diskless (its disk was detached): its I/O goes to " + oname + ", nothing is copied"}
}

// pick returns +1 if only a holds, -1 if only b holds, else 0.
func pick(a, b bool) int {
	switch {
	case a && !b:
		return 1
	case b && !a:
		return -1
	}
	return 0
}

// who names a side in a reason.
func who(dir int, self, peer string) string {
	if dir > 0 {
		return self
	}
	return peer
}

// Decide compares this node (local) with its peer when they connect and says
// who copies to whom, in full or from the bitmaps, or why nothing may be
// copied. It is pure and symmetric: Decide(peer, local) is the mirror image
// (same Full, Decision.Mirror) of Decide(local, peer), so both nodes reach
// the same conclusion independently.
//
// The rules, in order:
//
//  1. Operator conflicts: both sides DiscardMyData, a Primary with
//     DiscardMyData, or split-brain policies (AfterSB) that differ: Refused.
//  2. UUIDs that share no generation: Unrelated (whatever the disks). Then
//     a Diskless side (a Primary that detached its failed disk), which holds
//     no data to copy or to receive: NoSync, so that its I/O goes to the
//     peer, when the other side is UpToDate, not Primary and, if the
//     Diskless side is Primary, of the same generation; else Refused.
//  3. Neither disk consistent (UpToDate or Outdated): BothInconsistent.
//  4. Exactly one disk consistent: it is the source. Bitmap-based only when
//     the UUIDs already make it the source through its bitmap (an
//     interrupted resync), or the generations are equal and the
//     inconsistent side's bitmap marks what it lacks; otherwise Full.
//  5. Both consistent, same Current (or both without a generation): NoSync
//     if no bitmap is dirty; otherwise a bitmap resync from the Primary,
//     else from the side that crashed as Primary, else from the only dirty
//     side, else from the higher NodeID (Refused if the NodeIDs are equal).
//     Full if neither has a generation.
//  6. One side without a generation: the other is the source, Full.
//  7. One side's Bitmap equals the other's Current: it is the source,
//     bitmap-based.
//  8. One side's History holds the other's Current: it is the source, Full.
//  9. Equal non-zero Bitmap UUIDs, or any other common generation:
//     SplitBrain (Full unless the bitmaps share their base). DiscardMyData
//     on one side turns it into a resync towards that side, from the union
//     of both bitmaps when they share a base, else Full. Without it, the
//     AfterSB policy may pick the side whose changes are discarded
//     (AfterSplitBrain.resolve), but only when the bitmaps share a base:
//     then each bitmap holds exactly its node's changes since the split.
//     Rules 7 and 8 holding both ways round (impossible in a sane history)
//     also count as a split brain.
//  10. A Primary never becomes the target: its data is in use. Refused.
//
// Outside a split brain DiscardMyData changes nothing (as in DRBD): the
// UUIDs already say whose data is newer.
func Decide(local, peer Side) Plan {
	const self, other = "this node", "the peer"

	// 1. Operator conflicts.
	switch {
	case local.DiscardMyData && peer.DiscardMyData:
		return Plan{Decision: Refused, Reason: "both sides asked to discard their data; run connect --discard-my-data on the losing side only"}
	case local.DiscardMyData && local.Primary:
		return Plan{Decision: Refused, Reason: "this node is Primary and cannot discard its data; demote it first (urbd secondary)"}
	case peer.DiscardMyData && peer.Primary:
		return Plan{Decision: Refused, Reason: "the peer is Primary and cannot discard its data; demote it first (urbd secondary)"}
	case local.AfterSB != peer.AfterSB:
		return Plan{Decision: Refused, Reason: fmt.Sprintf("the nodes' split-brain policies differ (this node: %s; the peer: %s): configure both alike", local.AfterSB, peer.AfterSB)}
	}

	rel := compareUUIDs(local.UUIDs, peer.UUIDs)
	uuids := fmt.Sprintf(" [local %s, peer %s]", local.UUIDs, peer.UUIDs)

	// 2. Unrelated data.
	if rel.kind == relUnrelated {
		return Plan{Decision: Unrelated, Full: true, Reason: rel.why + ": the peer holds another data set; check the peer address and disk" + uuids}
	}

	// 2. A Diskless side.
	if local.Disk == "Diskless" || peer.Disk == "Diskless" {
		return decideDiskless(local, peer, rel)
	}

	lc, pc := local.consistent(), peer.consistent()
	var (
		dir  int
		full bool
		why  string
		auto bool // resolved by the AfterSB policy
	)
	switch {
	case !lc && !pc:
		// 3.
		return Plan{Decision: BothInconsistent, Full: true, Reason: "neither disk is consistent; promote the node whose data should win with urbd primary --force"}

	case lc != pc:
		// 4. Disk states override the UUIDs: an inconsistent disk is
		// never a source.
		dir = pick(lc, pc)
		inc := peer
		if dir < 0 {
			inc = local
		}
		bitmapOK := (rel.kind == relBitmap && rel.dir == dir) || (rel.kind == relEqual && inc.dirty())
		full = !bitmapOK
		why = fmt.Sprintf("%s's disk is %s, %s's is %s", who(dir, other, self), orUnknown(inc.Disk), who(dir, self, other), who(dir, local.Disk, peer.Disk))
		if bitmapOK {
			why += "; " + rel.why
		}

	case rel.kind == relEqual || rel.kind == relBothFresh:
		// 5. Same generation: only the dirty bitmaps differ.
		if !local.dirty() && !peer.dirty() {
			return Plan{Decision: NoSync, Reason: rel.why + ", no bitmap dirty"}
		}
		full = rel.kind == relBothFresh
		if dir = pick(local.Primary, peer.Primary); dir != 0 {
			why = rel.why + "; bitmaps dirty, " + who(dir, self, other) + " is Primary"
		} else if dir = pick(local.CrashedPrimary, peer.CrashedPrimary); dir != 0 {
			why = rel.why + "; bitmaps dirty, " + who(dir, self, other) + " crashed as Primary"
		} else if dir = pick(local.dirty(), peer.dirty()); dir != 0 {
			why = rel.why + "; only " + who(dir, self, other) + "'s bitmap is dirty"
		} else if dir = pick(local.NodeID > peer.NodeID, peer.NodeID > local.NodeID); dir != 0 {
			why = rel.why + "; both bitmaps dirty, no Primary: the higher node id is the source"
		} else {
			return Plan{Decision: Refused, Full: full, Reason: rel.why + " and both bitmaps dirty, but nothing chooses a direction (equal node ids); run invalidate on the node whose data should lose"}
		}

	case rel.kind == relSplit:
		full = !rel.shared
		switch {
		case local.DiscardMyData:
			dir = -1
		case peer.DiscardMyData:
			dir = 1
		}
		if dir != 0 {
			why = "split brain resolved by --discard-my-data on " + who(dir, other, self) + ": " + rel.why
			break
		}
		var how string
		switch {
		case rel.shared:
			dir, how = local.AfterSB.resolve(local, peer)
		case local.AfterSB != AfterSplitBrain{}:
			how = "no automatic recovery: the bitmaps do not share a base"
		}
		if dir == 0 {
			if how != "" {
				how = " (" + how + ")"
			}
			return Plan{Decision: SplitBrain, Full: full, Reason: "split brain: " + rel.why + how + "; run urbd connect --discard-my-data on the node whose changes should be dropped" + uuids}
		}
		auto = true
		why = "split brain resolved automatically (" + how + "): " + who(dir, other, self) + " becomes SyncTarget; " + rel.why

	default:
		// 6, 7, 8. Fresh, bitmap or history relation.
		dir, full, why = rel.dir, rel.full, rel.why
	}

	// 10. A Primary's data is in use; it is never overwritten.
	if dir < 0 && local.Primary {
		return Plan{Decision: Refused, Full: full, Reason: "this node is Primary but must become SyncTarget (" + why + "); demote it (urbd secondary) and connect again"}
	}
	if dir > 0 && peer.Primary {
		return Plan{Decision: Refused, Full: full, Reason: "the peer is Primary but must become SyncTarget (" + why + "); demote it (urbd secondary) and connect again"}
	}

	d := BecomeSyncSource
	if dir < 0 {
		d = BecomeSyncTarget
	}
	return Plan{Decision: d, Full: full, Reason: why, AutoResolved: auto}
}

func orUnknown(disk string) string {
	if strings.TrimSpace(disk) == "" {
		return "unknown"
	}
	return disk
}
