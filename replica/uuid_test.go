package replica_test

import (
	"go/parser"
	"go/token"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/urbd/urbd/replica"
)

// Generation ids used in the tables: A is the oldest, then B, C, D, E.
const (
	uuA uint64 = 0xA0000000000000A1 + iota
	uuB
	uuC
	uuD
	uuE
	uuF
)

const (
	upToDate     = "UpToDate"
	inconsistent = "Inconsistent"
	outdated     = "Outdated"
	diskless     = "Diskless"
)

// uu builds UUIDs from Current, Bitmap and History.
func uu(cur, bm uint64, hist ...uint64) replica.UUIDs {
	u := replica.UUIDs{Current: cur, Bitmap: bm}
	copy(u.History[:], hist)
	return u
}

// uuSide builds a Side; the option letters set flags: P Primary, C crashed
// Primary, D DiscardMyData, B bitmap dirty.
func uuSide(u replica.UUIDs, disk, flags string) replica.Side {
	s := replica.Side{UUIDs: u, Disk: disk}
	for _, f := range flags {
		switch f {
		case 'P':
			s.Primary = true
		case 'C':
			s.CrashedPrimary = true
		case 'D':
			s.DiscardMyData = true
		case 'B':
			s.Changed = 1
		default:
			panic("unknown flag " + string(f))
		}
	}
	return s
}

type uuRow struct {
	story       string
	local, peer replica.Side
	want        replica.Decision
	full        bool
}

func uuTable() []uuRow {
	var (
		fresh = replica.UUIDs{}
		n1    = func(s replica.Side, id uint64) replica.Side { s.NodeID = id; return s }
	)
	return []uuRow{
		// --- New disks -------------------------------------------------
		{"new resource, both disks just created: wait for primary --force",
			uuSide(fresh, inconsistent, ""), uuSide(fresh, inconsistent, ""), replica.BothInconsistent, true},
		{"both created clean with no generation yet: nothing to copy",
			uuSide(fresh, upToDate, ""), uuSide(fresh, upToDate, ""), replica.NoSync, false},
		{"both created clean but this side has dirty bits and is Primary: bitmap copy, but no generation to trust: full",
			uuSide(fresh, upToDate, "PB"), uuSide(fresh, upToDate, ""), replica.BecomeSyncSource, true},
		{"both without generation, only this one UpToDate: full sync from it",
			uuSide(fresh, upToDate, ""), uuSide(fresh, inconsistent, ""), replica.BecomeSyncSource, true},
		{"initial sync: forced primary has a generation, the peer's disk is new",
			uuSide(uu(uuA, 0), upToDate, "P"), uuSide(fresh, inconsistent, ""), replica.BecomeSyncSource, true},
		{"hot-join: this new empty secondary joins a primary under load",
			uuSide(fresh, inconsistent, ""), uuSide(uu(uuB, uuA, uuE), upToDate, "PB"), replica.BecomeSyncTarget, true},
		{"a new disk meets a disk that is not consistent either: nothing to copy",
			uuSide(fresh, inconsistent, ""), uuSide(uu(uuA, 0), inconsistent, ""), replica.BothInconsistent, true},
		{"a new disk marked UpToDate by mistake meets a peer with data: the generation wins",
			uuSide(fresh, upToDate, ""), uuSide(uu(uuA, 0), upToDate, ""), replica.BecomeSyncTarget, true},

		// --- Same generation -------------------------------------------
		{"both clean, same generation (normal reconnect, or created clean)",
			uuSide(uu(uuA, 0), upToDate, "P"), uuSide(uu(uuA, 0), upToDate, ""), replica.NoSync, false},
		{"same generation, one Outdated, clean: nothing differs",
			uuSide(uu(uuA, 0), outdated, ""), uuSide(uu(uuA, 0), upToDate, ""), replica.NoSync, false},
		{"same generation after a power failure while connected: Primary's dirty regions win",
			uuSide(uu(uuA, 0), upToDate, "PB"), uuSide(uu(uuA, 0), upToDate, "B"), replica.BecomeSyncSource, false},
		{"same generation, only the secondary's bitmap dirty: still from the Primary",
			uuSide(uu(uuA, 0), upToDate, "P"), uuSide(uu(uuA, 0), upToDate, "B"), replica.BecomeSyncSource, false},
		{"both rebooted after a crash: the peer crashed as Primary, its activity log wins",
			uuSide(uu(uuA, 0), upToDate, "B"), uuSide(uu(uuA, 0), upToDate, "CB"), replica.BecomeSyncTarget, false},
		{"both secondaries, only this side's bitmap dirty: it is the source",
			uuSide(uu(uuA, 0), upToDate, "B"), uuSide(uu(uuA, 0), upToDate, ""), replica.BecomeSyncSource, false},
		{"both dirty, no role information: the higher node id is the source",
			n1(uuSide(uu(uuA, 0), upToDate, "B"), 7), n1(uuSide(uu(uuA, 0), upToDate, "B"), 3), replica.BecomeSyncSource, false},
		{"both dirty, no role information, equal node ids: refuse to guess",
			n1(uuSide(uu(uuA, 0), upToDate, "B"), 5), n1(uuSide(uu(uuA, 0), upToDate, "B"), 5), replica.Refused, false},
		{"both crashed as Primary (two-primary accident) and dirty: node id decides",
			n1(uuSide(uu(uuA, 0), upToDate, "CB"), 1), n1(uuSide(uu(uuA, 0), upToDate, "CB"), 2), replica.BecomeSyncTarget, false},
		{"source missed the resync-finished event (stale Bitmap UUID), clean: nothing to copy",
			uuSide(uu(uuB, uuA), upToDate, "P"), uuSide(uu(uuB, 0, uuA), upToDate, ""), replica.NoSync, false},
		{"assume-clean disks with the same derived generation: no initial sync",
			uuSide(uu(uuC, 0), upToDate, ""), uuSide(uu(uuC, 0), upToDate, ""), replica.NoSync, false},

		// --- One side moved on, bitmap covers it -------------------------
		{"primary lost its peer, wrote, reconnect: bitmap resync from it",
			uuSide(uu(uuB, uuA), upToDate, "PB"), uuSide(uu(uuA, 0), upToDate, ""), replica.BecomeSyncSource, false},
		{"secondary whose primary wrote while the link was down: bitmap resync to it",
			uuSide(uu(uuA, 0), upToDate, ""), uuSide(uu(uuB, uuA), upToDate, "PB"), replica.BecomeSyncTarget, false},
		{"failover: old primary comes back (crashed as Primary, dirty AL) to the promoted survivor",
			uuSide(uu(uuA, 0), upToDate, "CB"), uuSide(uu(uuB, uuA), upToDate, "PB"), replica.BecomeSyncTarget, false},
		{"primary lost the peer twice (second outage before the first resync ended): bitmap still covers it",
			uuSide(uu(uuC, uuA, uuB), upToDate, "PB"), uuSide(uu(uuA, 0), upToDate, ""), replica.BecomeSyncSource, false},
		{"the peer is Outdated (fenced) and behind: bitmap resync to it",
			uuSide(uu(uuB, uuA), upToDate, "P"), uuSide(uu(uuA, 0), outdated, ""), replica.BecomeSyncSource, false},
		{"the peer is Primary but behind (promoted while stale): it must not be overwritten",
			uuSide(uu(uuB, uuA), upToDate, "B"), uuSide(uu(uuA, 0), upToDate, "P"), replica.Refused, false},
		{"this node is Primary but behind: refuse, demote first",
			uuSide(uu(uuA, 0), upToDate, "P"), uuSide(uu(uuB, uuA), upToDate, "B"), replica.Refused, false},

		// --- One side moved on, only history relates them ----------------
		{"peer stopped at an intermediate generation now in our history: full sync from us",
			uuSide(uu(uuC, uuA, uuB), upToDate, "P"), uuSide(uu(uuB, 0), upToDate, ""), replica.BecomeSyncSource, true},
		{"we are at a generation the peer has since passed: full sync to us",
			uuSide(uu(uuB, 0), upToDate, ""), uuSide(uu(uuD, uuC, uuB, uuA), upToDate, "P"), replica.BecomeSyncTarget, true},
		{"history match in the second slot: full sync to us",
			uuSide(uu(uuA, 0), outdated, ""), uuSide(uu(uuD, uuC, uuB, uuA), upToDate, ""), replica.BecomeSyncTarget, true},

		// --- Split brain -------------------------------------------------
		{"split brain: both promoted while disconnected, both wrote since A",
			uuSide(uu(uuB, uuA), upToDate, "PB"), uuSide(uu(uuC, uuA), upToDate, "PB"), replica.SplitBrain, false},
		{"split brain, both demoted: still split brain until the operator decides",
			uuSide(uu(uuB, uuA), upToDate, "B"), uuSide(uu(uuC, uuA), upToDate, "B"), replica.SplitBrain, false},
		{"split brain resolved: connect --discard-my-data here makes us SyncTarget of the bitmap union",
			uuSide(uu(uuB, uuA), upToDate, "DB"), uuSide(uu(uuC, uuA), upToDate, "PB"), replica.BecomeSyncTarget, false},
		{"split brain resolved on the peer: we are SyncSource of the bitmap union",
			uuSide(uu(uuB, uuA), upToDate, "PB"), uuSide(uu(uuC, uuA), upToDate, "DB"), replica.BecomeSyncSource, false},
		{"split brain, both sides discard: refuse",
			uuSide(uu(uuB, uuA), upToDate, "DB"), uuSide(uu(uuC, uuA), upToDate, "DB"), replica.Refused, false},
		{"split brain, the Primary asks to discard its data: refuse",
			uuSide(uu(uuB, uuA), upToDate, "PDB"), uuSide(uu(uuC, uuA), upToDate, "B"), replica.Refused, false},
		{"split brain on an older common generation only (history): full once resolved",
			uuSide(uu(uuC, uuB, uuA), upToDate, "B"), uuSide(uu(uuE, uuD, uuA), upToDate, "B"), replica.SplitBrain, true},
		{"old split brain resolved by discarding here: full sync, no shared bitmap base",
			uuSide(uu(uuC, uuB, uuA), upToDate, "D"), uuSide(uu(uuE, uuD, uuA), upToDate, "P"), replica.BecomeSyncTarget, true},
		{"bitmap base of one is in the other's history: split brain, full",
			uuSide(uu(uuC, uuA), upToDate, "B"), uuSide(uu(uuD, 0, uuA), upToDate, "B"), replica.SplitBrain, true},
		{"each side's bitmap names the other's current (impossible history): split brain",
			uuSide(uu(uuB, uuA), upToDate, ""), uuSide(uu(uuA, uuB), upToDate, ""), replica.SplitBrain, true},
		{"each side's history holds the other's current (impossible history): split brain",
			uuSide(uu(uuB, 0, uuA), upToDate, ""), uuSide(uu(uuA, 0, uuB), upToDate, ""), replica.SplitBrain, true},
		{"split brain, but our disk is Inconsistent: nothing to keep here, full from the peer",
			uuSide(uu(uuB, uuA), inconsistent, ""), uuSide(uu(uuC, uuA), upToDate, "P"), replica.BecomeSyncTarget, true},

		// --- Unrelated ---------------------------------------------------
		{"two disks with nothing in common (wrong peer address or disk)",
			uuSide(uu(uuA, 0), upToDate, ""), uuSide(uu(uuB, 0), upToDate, ""), replica.Unrelated, true},
		{"unrelated, even if one side is Inconsistent: do not overwrite another data set",
			uuSide(uu(uuA, uuC, uuD), inconsistent, ""), uuSide(uu(uuB, uuE, uuF), upToDate, "P"), replica.Unrelated, true},
		{"unrelated and asked to discard: still unrelated",
			uuSide(uu(uuA, 0), upToDate, "D"), uuSide(uu(uuB, 0), upToDate, ""), replica.Unrelated, true},

		// --- Disk states override the UUIDs -------------------------------
		{"invalidate here (all bits set): bitmap resync of everything from the peer",
			uuSide(uu(uuA, 0), inconsistent, "B"), uuSide(uu(uuA, 0), upToDate, "P"), replica.BecomeSyncTarget, false},
		{"Inconsistent with a clean bitmap at the same generation: the bitmap cannot be trusted, full",
			uuSide(uu(uuA, 0), inconsistent, ""), uuSide(uu(uuA, 0), upToDate, ""), replica.BecomeSyncTarget, true},
		{"resync interrupted: target still Inconsistent, source's bitmap still covers it",
			uuSide(uu(uuA, 0), inconsistent, ""), uuSide(uu(uuC, uuA, uuB), upToDate, "PB"), replica.BecomeSyncTarget, false},
		{"UUIDs say we are newer but our disk is Inconsistent: full from the peer",
			uuSide(uu(uuB, uuA), inconsistent, "B"), uuSide(uu(uuA, 0), upToDate, ""), replica.BecomeSyncTarget, true},
		{"peer is Inconsistent and at an old generation in our history: full to it",
			uuSide(uu(uuC, uuB, uuA), upToDate, "P"), uuSide(uu(uuA, 0), inconsistent, ""), replica.BecomeSyncSource, true},
		{"unknown disk state counts as Inconsistent",
			uuSide(uu(uuA, 0), "DUnknown", ""), uuSide(uu(uuA, 0), upToDate, ""), replica.BecomeSyncTarget, true},
		{"empty disk state counts as Inconsistent",
			uuSide(uu(uuA, 0), upToDate, ""), uuSide(uu(uuA, 0), "", ""), replica.BecomeSyncSource, true},
		{"Inconsistent Primary would have to be the target: refuse",
			uuSide(uu(uuA, 0), inconsistent, "P"), uuSide(uu(uuA, 0), upToDate, ""), replica.Refused, true},

		// --- DiscardMyData outside a split brain ---------------------------
		{"discard asked but no split brain: the UUIDs decide",
			uuSide(uu(uuB, uuA), upToDate, "DB"), uuSide(uu(uuA, 0), upToDate, ""), replica.BecomeSyncSource, false},
		{"discard asked on a node that is behind anyway: SyncTarget as the UUIDs say",
			uuSide(uu(uuA, 0), upToDate, "D"), uuSide(uu(uuB, uuA), upToDate, "P"), replica.BecomeSyncTarget, false},
		{"a Primary asking to discard is refused even without split brain",
			uuSide(uu(uuB, uuA), upToDate, "PD"), uuSide(uu(uuA, 0), upToDate, ""), replica.Refused, false},
		{"both asking to discard is refused even when in sync",
			uuSide(uu(uuA, 0), upToDate, "D"), uuSide(uu(uuA, 0), upToDate, "D"), replica.Refused, false},

		// A Diskless side (a Primary that detached its failed disk).
		{"a Diskless Primary connects to its UpToDate Secondary without a resync",
			uuSide(uu(uuA, 0), diskless, "PB"), uuSide(uu(uuA, 0), upToDate, ""), replica.NoSync, false},
		{"a Diskless Primary refuses a peer that was promoted and written while apart",
			uuSide(uu(uuA, 0), diskless, "P"), uuSide(uu(uuB, uuA), upToDate, "B"), replica.Refused, false},
		{"a Diskless Primary refuses a peer whose generation it has in its history only",
			uuSide(uu(uuB, 0, uuA), diskless, "P"), uuSide(uu(uuA, 0), upToDate, ""), replica.Refused, false},
		{"a Diskless node and an Inconsistent peer: nobody holds the data",
			uuSide(uu(uuA, 0), diskless, "P"), uuSide(uu(uuA, 0), inconsistent, ""), replica.Refused, false},
		{"a Diskless node and an Outdated peer are refused",
			uuSide(uu(uuA, 0), diskless, "P"), uuSide(uu(uuA, 0), outdated, ""), replica.Refused, false},
		{"a Diskless node and a Primary peer are refused",
			uuSide(uu(uuA, 0), diskless, ""), uuSide(uu(uuA, 0), upToDate, "P"), replica.Refused, false},
		{"two Diskless nodes are refused",
			uuSide(uu(uuA, 0), diskless, "P"), uuSide(uu(uuA, 0), diskless, ""), replica.Refused, false},
		{"a Diskless node with unrelated data is Unrelated",
			uuSide(uu(uuA, 0), diskless, "P"), uuSide(uu(uuB, 0), upToDate, ""), replica.Unrelated, true},
	}
}

// TestDecideTable checks every row and its mirror image: Decide on the peer
// reaches the mirrored decision with the same Full.
func TestDecideTable(t *testing.T) {
	for _, row := range uuTable() {
		t.Run(row.story, func(t *testing.T) {
			got := replica.Decide(row.local, row.peer)
			if got.Decision != row.want || got.Full != row.full {
				t.Errorf("Decide = %v full=%v, want %v full=%v\n  reason: %s", got.Decision, got.Full, row.want, row.full, got.Reason)
			}
			if got.Reason == "" {
				t.Error("empty Reason")
			}
			mir := replica.Decide(row.peer, row.local)
			if mir.Decision != row.want.Mirror() || mir.Full != row.full {
				t.Errorf("mirror Decide = %v full=%v, want %v full=%v\n  reason: %s", mir.Decision, mir.Full, row.want.Mirror(), row.full, mir.Reason)
			}
		})
	}
}

// uuCheckInvariants checks the properties every decision must have.
func uuCheckInvariants(t *testing.T, local, peer replica.Side) {
	t.Helper()
	p := replica.Decide(local, peer)
	m := replica.Decide(peer, local)
	fail := func(msg string) {
		t.Helper()
		t.Fatalf("%s\nlocal %+v\npeer  %+v\nplan   %v\nmirror %v", msg, local, peer, p, m)
	}
	if m.Decision != p.Decision.Mirror() || m.Full != p.Full {
		fail("Decide(peer, local) is not the mirror image of Decide(local, peer)")
	}
	if p.Decision < replica.NoSync || p.Decision > replica.Refused {
		fail("decision out of range")
	}
	if p.Reason == "" || m.Reason == "" {
		fail("empty reason")
	}
	consistent := func(s replica.Side) bool { return s.Disk == upToDate || s.Disk == outdated }
	switch p.Decision {
	case replica.BecomeSyncSource:
		if !consistent(local) {
			fail("an inconsistent disk became the source")
		}
		if peer.Primary {
			fail("a Primary became the target")
		}
	case replica.BecomeSyncTarget:
		if !consistent(peer) {
			fail("an inconsistent disk became the source")
		}
		if local.Primary {
			fail("a Primary became the target")
		}
	case replica.NoSync:
		if local.Disk == diskless || peer.Disk == diskless {
			other := peer
			if peer.Disk == diskless {
				other = local
			}
			if other.Disk != upToDate || other.Primary {
				fail("a Diskless side connected to a peer that cannot serve its I/O")
			}
			if (local.Primary || peer.Primary) && local.UUIDs.Current != peer.UUIDs.Current {
				fail("a Diskless Primary connected to data of another generation")
			}
			break
		}
		if local.UUIDs.Current != peer.UUIDs.Current || local.Changed > 0 || peer.Changed > 0 ||
			!consistent(local) || !consistent(peer) {
			fail("NoSync although the data may differ")
		}
	}
	if (local.Disk == diskless || peer.Disk == diskless) && (p.Decision == replica.BecomeSyncSource || p.Decision == replica.BecomeSyncTarget) {
		fail("a resync with a Diskless side")
	}
	if local.DiscardMyData && peer.DiscardMyData && p.Decision != replica.Refused {
		fail("both sides discarding was not refused")
	}
	if (local.DiscardMyData && local.Primary) && p.Decision != replica.Refused {
		fail("a Primary discarding its data was not refused")
	}
	if local.AfterSB != peer.AfterSB && p.Decision != replica.Refused {
		fail("different split-brain policies were not refused")
	}
	if p.AutoResolved {
		target, source := peer, local
		if p.Decision == replica.BecomeSyncTarget {
			target, source = local, peer
		}
		if p.Full || local.DiscardMyData || peer.DiscardMyData {
			fail("automatic recovery of a full resync, or with --discard-my-data")
		}
		least := local.AfterSB.NoPrimary == replica.SB0DiscardLeastChanges && source.Changed > 0 &&
			(target.Changed < source.Changed || target.Changed == source.Changed && target.NodeID < source.NodeID)
		if target.Changed > 0 && !least && !(source.Primary && local.AfterSB.OnePrimary == replica.SB1DiscardSecondary) {
			fail("automatic recovery discarded changes that only discard-secondary or discard-least-changes may discard")
		}
	}
}

// uuRandomSide draws a side from a small pool of ids so that matches
// between the two sides are frequent.
func uuRandomSide(r *rand.Rand) replica.Side {
	ids := []uint64{0, 0, uuA, uuB, uuC, uuD}
	id := func() uint64 { return ids[r.IntN(len(ids))] }
	disks := []string{upToDate, upToDate, inconsistent, outdated, diskless, "DUnknown", ""}
	s := replica.Side{
		UUIDs:          replica.UUIDs{Current: id(), Bitmap: id(), History: [2]uint64{id(), id()}},
		Disk:           disks[r.IntN(len(disks))],
		Primary:        r.IntN(3) == 0,
		CrashedPrimary: r.IntN(4) == 0,
		DiscardMyData:  r.IntN(5) == 0,
		Changed:        uint64(r.IntN(2)) * (1 + uint64(r.IntN(3))), // dirty half the time
		NodeID:         uint64(r.IntN(3)),
	}
	return s
}

// TestDecideMirrorRandom checks the invariants on many random pairs, most
// with the same split-brain policy on both sides.
func TestDecideMirrorRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	policy := func() replica.AfterSplitBrain {
		return replica.AfterSplitBrain{NoPrimary: replica.AfterSB0(r.IntN(3)), OnePrimary: replica.AfterSB1(r.IntN(3))}
	}
	for range 30_000 {
		l, p := uuRandomSide(r), uuRandomSide(r)
		l.AfterSB = policy()
		p.AfterSB = l.AfterSB
		if r.IntN(8) == 0 {
			p.AfterSB = policy()
		}
		uuCheckInvariants(t, l, p)
	}
}

// TestDecideMirrorTableVariants perturbs every table row with every
// combination of role and bitmap flags, and checks the invariants.
func TestDecideMirrorTableVariants(t *testing.T) {
	for _, row := range uuTable() {
		for mask := range 1 << 8 {
			l, p := row.local, row.peer
			l.Primary, l.CrashedPrimary, l.DiscardMyData, l.Changed = mask&1 != 0, mask&2 != 0, mask&4 != 0, uint64(mask>>3&1)
			p.Primary, p.CrashedPrimary, p.DiscardMyData, p.Changed = mask&16 != 0, mask&32 != 0, mask&64 != 0, uint64(mask>>7&1)
			uuCheckInvariants(t, l, p)
		}
	}
}

// FuzzDecide checks the invariants on arbitrary sides.
func FuzzDecide(f *testing.F) {
	for _, row := range uuTable() {
		l, p := row.local, row.peer
		f.Add(l.UUIDs.Current, l.UUIDs.Bitmap, l.UUIDs.History[0], l.UUIDs.History[1], l.Disk, uuFlags(l),
			p.UUIDs.Current, p.UUIDs.Bitmap, p.UUIDs.History[0], p.UUIDs.History[1], p.Disk, uuFlags(p))
	}
	f.Fuzz(func(t *testing.T, lc, lb, lh0, lh1 uint64, ld string, lf uint8, pc, pb, ph0, ph1 uint64, pd string, pf uint8) {
		uuCheckInvariants(t, uuFromFlags(uu(lc, lb, lh0, lh1), ld, lf), uuFromFlags(uu(pc, pb, ph0, ph1), pd, pf))
	})
}

func uuFlags(s replica.Side) uint8 {
	var f uint8
	for i, b := range []bool{s.Primary, s.CrashedPrimary, s.DiscardMyData, s.Changed > 0} {
		if b {
			f |= 1 << i
		}
	}
	return f | uint8(s.NodeID&3)<<4
}

func uuFromFlags(u replica.UUIDs, disk string, f uint8) replica.Side {
	return replica.Side{UUIDs: u, Disk: disk, Primary: f&1 != 0, CrashedPrimary: f&2 != 0,
		DiscardMyData: f&4 != 0, Changed: uint64(f >> 3 & 1), NodeID: uint64(f>>4) & 3}
}

func TestUUIDTransitions(t *testing.T) {
	for _, tc := range []struct {
		story string
		got   replica.UUIDs
		want  replica.UUIDs
	}{
		{"new generation on a clean in-sync node: the bitmap tracks from the old one",
			uu(uuA, 0, uuE).NewCurrent(uuB), uu(uuB, uuA, uuE)},
		{"new generation while the bitmap already tracks: keep the base, old current to history",
			uu(uuB, uuA, uuE, uuF).NewCurrent(uuC), uu(uuC, uuA, uuB, uuE)},
		{"first generation of a new disk (primary --force): nothing to track from",
			uu(0, 0).NewCurrent(uuA), uu(uuA, 0)},
		{"zero id is refused: unchanged",
			uu(uuA, 0).NewCurrent(0), uu(uuA, 0)},
		{"the same id again: unchanged",
			uu(uuA, 0).NewCurrent(uuA), uu(uuA, 0)},
		{"source after resync: bitmap base into history",
			uu(uuB, uuA, uuE, uuF).SyncSourceDone(), uu(uuB, 0, uuA, uuE)},
		{"source after a full resync without bitmap base: unchanged",
			uu(uuB, 0, uuE).SyncSourceDone(), uu(uuB, 0, uuE)},
		{"target takes the source's generation and history",
			uu(uuA, 0, uuF).SyncTargetDone(uu(uuB, uuA, uuE)), uu(uuB, 0, uuA, uuE)},
		{"target of a source that already finished: same result",
			uu(uuA, 0, uuF).SyncTargetDone(uu(uuB, 0, uuA, uuE)), uu(uuB, 0, uuA, uuE)},
		{"a new disk adopts the source's generation",
			uu(0, 0).SyncTargetDone(uu(uuA, 0)), uu(uuA, 0)},
		{"connected in sync: leftover bitmap base into history",
			uu(uuB, uuA, uuE).ConnectedInSync(), uu(uuB, 0, uuA, uuE)},
		{"connected in sync, nothing left over: unchanged",
			uu(uuB, 0, uuA).ConnectedInSync(), uu(uuB, 0, uuA)},
	} {
		if tc.got != tc.want {
			t.Errorf("%s:\n got %v\nwant %v", tc.story, tc.got, tc.want)
		}
	}
}

func TestUUIDString(t *testing.T) {
	got := uu(0xABC, 1, 2, 3).String()
	if want := "0000000000000ABC:0000000000000001:0000000000000002:0000000000000003"; got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
}

func TestDecisionString(t *testing.T) {
	for d, want := range map[replica.Decision]string{
		replica.NoSync: "NoSync", replica.BecomeSyncSource: "SyncSource", replica.BecomeSyncTarget: "SyncTarget",
		replica.SplitBrain: "SplitBrain", replica.Unrelated: "Unrelated", replica.BothInconsistent: "BothInconsistent",
		replica.Refused: "Refused", 0: "Decision(0)", 99: "Decision(99)", -1: "Decision(-1)",
	} {
		if got := d.String(); got != want {
			t.Errorf("Decision(%d).String() = %q, want %q", int(d), got, want)
		}
	}
	for _, d := range []replica.Decision{replica.NoSync, replica.SplitBrain, replica.Unrelated, replica.BothInconsistent, replica.Refused} {
		if d.Mirror() != d {
			t.Errorf("%v.Mirror() = %v, want itself", d, d.Mirror())
		}
	}
	if replica.BecomeSyncSource.Mirror() != replica.BecomeSyncTarget || replica.BecomeSyncTarget.Mirror() != replica.BecomeSyncSource {
		t.Error("SyncSource and SyncTarget are not each other's mirror")
	}
	p := replica.Plan{Decision: replica.BecomeSyncSource, Full: true, Reason: "r"}
	if got := p.String(); got != "SyncSource (full): r" {
		t.Errorf("Plan.String = %q", got)
	}
	if got := (replica.Plan{Decision: replica.NoSync, Reason: "r"}).String(); got != "NoSync: r" {
		t.Errorf("Plan.String = %q", got)
	}
}

// uuNode is a node in a scenario: its persistent UUIDs plus what Decide sees.
type uuNode struct {
	name string
	side replica.Side
}

// uuConnect runs Decide on both nodes, checks they agree and that the
// outcome is the expected one, and returns the local plan.
func uuConnect(t *testing.T, step string, a, b *uuNode, want replica.Decision, full bool) replica.Plan {
	t.Helper()
	pa := replica.Decide(a.side, b.side)
	pb := replica.Decide(b.side, a.side)
	if pa.Decision != want || pa.Full != full {
		t.Fatalf("%s: %s decides %v full=%v, want %v full=%v (%s)", step, a.name, pa.Decision, pa.Full, want, full, pa.Reason)
	}
	if pb.Decision != want.Mirror() || pb.Full != full {
		t.Fatalf("%s: %s decides %v full=%v, not the mirror of %v (%s)", step, b.name, pb.Decision, pb.Full, want, pb.Reason)
	}
	t.Logf("%s: %s: %v", step, a.name, pa)
	return pa
}

// uuFinishSync applies the end-of-resync transitions, source first.
func uuFinishSync(src, dst *uuNode) {
	srcBefore := src.side.UUIDs
	src.side.UUIDs = src.side.UUIDs.SyncSourceDone()
	dst.side.UUIDs = dst.side.UUIDs.SyncTargetDone(srcBefore)
	dst.side.Disk = upToDate
	src.side.Changed, dst.side.Changed = 0, 0
	src.side.CrashedPrimary, dst.side.CrashedPrimary = false, false
}

// uuInSync applies the connected-in-sync transition on both and checks the
// UUIDs are then identical.
func uuInSync(t *testing.T, a, b *uuNode) {
	t.Helper()
	a.side.UUIDs = a.side.UUIDs.ConnectedInSync()
	b.side.UUIDs = b.side.UUIDs.ConnectedInSync()
	if a.side.UUIDs != b.side.UUIDs {
		t.Fatalf("in sync but UUIDs differ: %s %v, %s %v", a.name, a.side.UUIDs, b.name, b.side.UUIDs)
	}
}

// TestScenarioDisconnectReconnect: the link breaks under a primary, it goes
// on writing, the peer comes back and gets the dirty regions only.
func TestScenarioDisconnectReconnect(t *testing.T) {
	p := &uuNode{"alpha", replica.Side{Disk: inconsistent, NodeID: 1}}
	s := &uuNode{"beta", replica.Side{Disk: inconsistent, NodeID: 2}}
	uuConnect(t, "first start", p, s, replica.BothInconsistent, true)

	// urbd primary --force on alpha: its disk wins, first generation.
	p.side.Primary, p.side.Disk = true, upToDate
	p.side.UUIDs = p.side.UUIDs.NewCurrent(uuA)
	uuConnect(t, "after primary --force", p, s, replica.BecomeSyncSource, true)
	uuFinishSync(p, s)
	uuConnect(t, "initial sync done", p, s, replica.NoSync, false)
	uuInSync(t, p, s)

	for i, gen := range []uint64{uuB, uuC, uuD} {
		// The link breaks: the primary starts a new generation and
		// marks what it writes.
		p.side.UUIDs = p.side.UUIDs.NewCurrent(gen)
		p.side.Changed = 1
		uuConnect(t, "reconnect", p, s, replica.BecomeSyncSource, false)
		if i == 1 {
			// The resync is interrupted: the target is Inconsistent,
			// the link breaks again, the primary writes on.
			s.side.Disk = inconsistent
			p.side.UUIDs = p.side.UUIDs.NewCurrent(uuF)
			uuConnect(t, "reconnect after interrupted resync", p, s, replica.BecomeSyncSource, false)
		}
		uuFinishSync(p, s)
		uuConnect(t, "resync done", p, s, replica.NoSync, false)
		uuInSync(t, p, s)
	}
}

// TestScenarioSplitBrain: both sides promoted while disconnected; nothing is
// copied until the operator discards one side's changes.
func TestScenarioSplitBrain(t *testing.T) {
	a := &uuNode{"alpha", replica.Side{UUIDs: uu(uuA, 0), Disk: upToDate, Primary: true}}
	b := &uuNode{"beta", replica.Side{UUIDs: uu(uuA, 0), Disk: upToDate}}
	uuConnect(t, "in sync", a, b, replica.NoSync, false)

	// The link breaks. alpha goes on as Primary and writes.
	a.side.UUIDs = a.side.UUIDs.NewCurrent(uuB)
	a.side.Changed = 1
	// The operator, thinking alpha dead, promotes beta, which writes too.
	b.side.Primary = true
	b.side.UUIDs = b.side.UUIDs.NewCurrent(uuC)
	b.side.Changed = 1

	uuConnect(t, "link back, both Primary", a, b, replica.SplitBrain, false)
	b.side.Primary = false
	uuConnect(t, "beta demoted", a, b, replica.SplitBrain, false)

	// connect --discard-my-data on beta while still Primary: refused.
	b.side.Primary, b.side.DiscardMyData = true, true
	uuConnect(t, "beta discards while Primary", a, b, replica.Refused, false)
	b.side.Primary = false
	// Both discard: refused.
	a.side.DiscardMyData = true
	uuConnect(t, "both discard", a, b, replica.Refused, false)
	a.side.DiscardMyData = false

	uuConnect(t, "beta discards", a, b, replica.BecomeSyncSource, false)
	b.side.DiscardMyData = false
	uuFinishSync(a, b)
	uuConnect(t, "resolved", a, b, replica.NoSync, false)
	uuInSync(t, a, b)
}

// TestScenarioFailover: the primary dies, the secondary is promoted and
// writes; the old primary returns and is brought up to date from the bitmap;
// later the roles switch back.
func TestScenarioFailover(t *testing.T) {
	old := &uuNode{"alpha", replica.Side{UUIDs: uu(uuA, 0, uuE), Disk: upToDate, Primary: true}}
	sur := &uuNode{"beta", replica.Side{UUIDs: uu(uuA, 0, uuE), Disk: upToDate}}
	uuConnect(t, "in sync", old, sur, replica.NoSync, false)

	// alpha dies (kill -9): it restarts as Secondary, crashed as Primary,
	// with its hot activity-log extents marked dirty.
	old.side.Primary, old.side.CrashedPrimary, old.side.Changed = false, true, 1
	// beta is promoted without a peer and writes.
	sur.side.Primary = true
	sur.side.UUIDs = sur.side.UUIDs.NewCurrent(uuB)
	sur.side.Changed = 1

	uuConnect(t, "old primary returns", old, sur, replica.BecomeSyncTarget, false)
	uuFinishSync(sur, old)
	uuConnect(t, "resync done", old, sur, replica.NoSync, false)
	uuInSync(t, old, sur)

	// Planned switch back: beta demoted, alpha promoted while connected
	// (no new generation), then beta loses alpha and ... alpha writes alone.
	sur.side.Primary, old.side.Primary = false, true
	uuConnect(t, "switched back", old, sur, replica.NoSync, false)
	old.side.UUIDs = old.side.UUIDs.NewCurrent(uuC)
	old.side.Changed = 1
	uuConnect(t, "beta back after outage", old, sur, replica.BecomeSyncSource, false)
	uuFinishSync(old, sur)
	uuConnect(t, "done", old, sur, replica.NoSync, false)
}

// TestScenarioPowerFailure: both nodes lose power while connected; the one
// that was Primary wins the regions in its activity log.
func TestScenarioPowerFailure(t *testing.T) {
	a := &uuNode{"alpha", replica.Side{UUIDs: uu(uuA, 0), Disk: upToDate, CrashedPrimary: true, Changed: 1, NodeID: 1}}
	b := &uuNode{"beta", replica.Side{UUIDs: uu(uuA, 0), Disk: upToDate, Changed: 1, NodeID: 9}}
	uuConnect(t, "both back", a, b, replica.BecomeSyncSource, false)
	uuFinishSync(a, b)
	uuConnect(t, "done", a, b, replica.NoSync, false)
}

// TestScenarioHotJoin: a brand-new secondary joins a busy primary and gets a
// full sync; an invalidated node gets everything again.
func TestScenarioHotJoin(t *testing.T) {
	p := &uuNode{"alpha", replica.Side{UUIDs: uu(uuC, uuB, uuA), Disk: upToDate, Primary: true, Changed: 1}}
	n := &uuNode{"gamma", replica.Side{Disk: inconsistent}}
	uuConnect(t, "new node", p, n, replica.BecomeSyncSource, true)
	uuFinishSync(p, n)
	uuConnect(t, "joined", p, n, replica.NoSync, false)
	uuInSync(t, p, n)

	// urbd invalidate on gamma: Inconsistent, every bit set.
	n.side.Disk, n.side.Changed = inconsistent, 1
	uuConnect(t, "invalidated", p, n, replica.BecomeSyncSource, false)
}

// TestUUIDImports keeps uuid.go pure: it decides from plain values and must
// not depend on the wire protocol or the bitmap store.
func TestUUIDImports(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "uuid.go", nil, parser.ImportsOnly)
	if err != nil {
		t.Fatal(err)
	}
	for _, imp := range f.Imports {
		if p := strings.Trim(imp.Path.Value, `"`); strings.Contains(p, ".") || p == "os" || p == "net" || p == "time" {
			t.Errorf("uuid.go imports %s", p)
		}
	}
}

func BenchmarkDecide(b *testing.B) {
	l := uuSide(uu(uuC, uuA, uuB), upToDate, "PB")
	p := uuSide(uu(uuA, 0), upToDate, "")
	for b.Loop() {
		replica.Decide(l, p)
	}
}

// TestDecideAfterSplitBrain: the automatic split-brain recovery policies
// (DRBD's after-sb-0pri and after-sb-1pri) on a split brain whose bitmaps
// share their base (both nodes went on from generation A), and where they
// must not act.
// changed sets a Side's count of changed blocks.
func changed(s replica.Side, n uint64) replica.Side {
	s.Changed = n
	return s
}

func TestDecideAfterSplitBrain(t *testing.T) {
	const (
		disc  = replica.SB0Disconnect
		zero  = replica.SB0DiscardZeroChanges
		least = replica.SB0DiscardLeastChanges
		d1    = replica.SB1Disconnect
		cons  = replica.SB1Consensus
		sec   = replica.SB1DiscardSecondary
	)
	here, there := uu(uuB, uuA), uu(uuC, uuA)
	side := func(u replica.UUIDs, flags string, id uint64, p0 replica.AfterSB0, p1 replica.AfterSB1) replica.Side {
		s := uuSide(u, upToDate, flags)
		if s.Changed > 0 {
			s.Changed = 5
		}
		s.NodeID = id
		s.AfterSB = replica.AfterSplitBrain{NoPrimary: p0, OnePrimary: p1}
		return s
	}
	for _, tc := range []struct {
		story       string
		local, peer replica.Side
		want        replica.Decision
		full, auto  bool
		reason      string // a part of the reason (not mirrored: it speaks from local's side)
	}{
		{"default policy: the operator decides",
			side(here, "B", 1, disc, d1), side(there, "", 2, disc, d1), replica.SplitBrain, false, false, "--discard-my-data"},
		{"discard-zero-changes: only this node wrote, the peer is the target",
			side(here, "B", 1, zero, d1), side(there, "", 2, zero, d1), replica.BecomeSyncSource, false, true, "only this node wrote"},
		{"discard-zero-changes: both wrote, the operator decides",
			side(here, "B", 1, zero, d1), side(there, "B", 2, zero, d1), replica.SplitBrain, false, false, "both nodes wrote"},
		{"discard-zero-changes: neither wrote, the higher node id is the source",
			side(here, "", 1, zero, d1), side(there, "", 2, zero, d1), replica.BecomeSyncTarget, false, true, "neither node wrote"},
		{"discard-least-changes: the node that changed fewer blocks is the target",
			changed(side(here, "B", 1, least, d1), 9), side(there, "B", 2, least, d1), replica.BecomeSyncSource, false, true, "the peer changed fewer blocks since the split (this node 9 blocks, the peer 5)"},
		{"discard-least-changes: as many changes, the higher node id is the source",
			side(here, "B", 1, least, d1), side(there, "B", 2, least, d1), replica.BecomeSyncTarget, false, true, "the higher node id is the source"},
		{"discard-least-changes: as many changes and equal node ids, the operator decides",
			side(here, "B", 2, least, d1), side(there, "B", 2, least, d1), replica.SplitBrain, false, false, "equal node ids"},
		{"discard-least-changes: only one node wrote, the other is the target",
			side(here, "", 1, least, d1), side(there, "B", 2, least, d1), replica.BecomeSyncTarget, false, true, "only the peer wrote"},
		{"consensus with discard-least-changes: the Secondary changed fewer blocks",
			changed(side(here, "PB", 1, least, cons), 9), side(there, "B", 2, least, cons), replica.BecomeSyncSource, false, true, "consensus with after-sb-0pri discard-least-changes"},
		{"consensus with discard-least-changes: the Secondary changed more blocks, kept",
			side(here, "PB", 1, least, cons), changed(side(there, "B", 2, least, cons), 9), replica.SplitBrain, false, false, "the Secondary's changes are kept"},
		{"discard-zero-changes does not apply with a Primary",
			side(here, "PB", 1, zero, d1), side(there, "", 2, zero, d1), replica.SplitBrain, false, false, "split brain"},
		{"discard-secondary: the Secondary's changes go",
			side(here, "PB", 1, disc, sec), side(there, "B", 2, disc, sec), replica.BecomeSyncSource, false, true, "discard-secondary"},
		{"discard-secondary seen from the Secondary",
			side(here, "B", 1, disc, sec), side(there, "PB", 2, disc, sec), replica.BecomeSyncTarget, false, true, "this node becomes SyncTarget"},
		{"consensus: the Secondary wrote nothing, zero-changes agrees",
			side(here, "PB", 1, zero, cons), side(there, "", 2, zero, cons), replica.BecomeSyncSource, false, true, "consensus"},
		{"consensus: neither wrote, the Secondary is the target whatever the node ids",
			side(here, "P", 1, zero, cons), side(there, "", 2, zero, cons), replica.BecomeSyncSource, false, true, "consensus"},
		{"consensus: the Secondary wrote",
			side(here, "PB", 1, zero, cons), side(there, "B", 2, zero, cons), replica.SplitBrain, false, false, "the Secondary wrote"},
		{"consensus with after-sb-0pri disconnect never discards",
			side(here, "P", 1, disc, cons), side(there, "", 2, disc, cons), replica.SplitBrain, false, false, "with after-sb-0pri disconnect"},
		{"two Primaries: never automatic",
			side(here, "PB", 1, zero, sec), side(there, "P", 2, zero, sec), replica.SplitBrain, false, false, "both nodes are Primary"},
		{"bitmaps without a shared base: never automatic",
			side(uu(uuC, uuB, uuA), "", 1, zero, sec), side(uu(uuE, uuD, uuA), "B", 2, zero, sec), replica.SplitBrain, true, false, "do not share a base"},
		{"policies differ: refused, whatever the UUIDs",
			side(here, "", 1, zero, d1), side(here, "", 2, disc, d1), replica.Refused, false, false, "policies differ"},
		{"--discard-my-data wins over the policy",
			side(here, "D", 1, zero, sec), side(there, "B", 2, zero, sec), replica.BecomeSyncTarget, false, false, "--discard-my-data"},
	} {
		t.Run(tc.story, func(t *testing.T) {
			for _, mirror := range []bool{false, true} {
				l, p, want := tc.local, tc.peer, tc.want
				if mirror {
					l, p, want = p, l, want.Mirror()
				}
				got := replica.Decide(l, p)
				if got.Decision != want || got.Full != tc.full || got.AutoResolved != tc.auto || (!mirror && !strings.Contains(got.Reason, tc.reason)) {
					t.Errorf("mirror=%v: Decide = %v full=%v auto=%v (%s); want %v full=%v auto=%v, a reason with %q",
						mirror, got.Decision, got.Full, got.AutoResolved, got.Reason, want, tc.full, tc.auto, tc.reason)
				}
				uuCheckInvariants(t, l, p)
			}
		})
	}
}

// TestParseAfterSB: every DRBD name urbd supports round-trips; others are refused.
func TestParseAfterSB(t *testing.T) {
	for _, n := range []string{"disconnect", "discard-zero-changes", "discard-least-changes"} {
		if p, err := replica.ParseAfterSB0(n); err != nil || p.String() != n {
			t.Errorf("ParseAfterSB0(%q) = %v, %v", n, p, err)
		}
	}
	for _, n := range []string{"disconnect", "consensus", "discard-secondary"} {
		if p, err := replica.ParseAfterSB1(n); err != nil || p.String() != n {
			t.Errorf("ParseAfterSB1(%q) = %v, %v", n, p, err)
		}
	}
	if p, err := replica.ParseAfterSB0(""); err != nil || p != replica.SB0Disconnect {
		t.Errorf("ParseAfterSB0(\"\") = %v, %v; want the default", p, err)
	}
	for _, bad := range []string{"discard-younger-primary", "Disconnect", "x"} {
		if _, err := replica.ParseAfterSB0(bad); err == nil {
			t.Errorf("ParseAfterSB0(%q) accepted", bad)
		}
		if _, err := replica.ParseAfterSB1(bad); err == nil {
			t.Errorf("ParseAfterSB1(%q) accepted", bad)
		}
	}
	if _, err := replica.ParseAfterSB1("discard-least-changes"); err == nil {
		t.Error("ParseAfterSB1 accepted discard-least-changes, an after-sb-0pri policy")
	}
}
