package replica

import (
	"slices"
	"strings"
	"testing"
)

// TestByChecksum: which resyncs compare checksums first, from plans Decide
// makes. Both nodes must reach the same answer, each from its own side of
// the resync, since only the source acts on it but both report it.
func TestByChecksum(t *testing.T) {
	const g1, g2, g3 = 0x11, 0x22, 0x33
	upToDate := func(u UUIDs) Side { return Side{UUIDs: u, Disk: "UpToDate", NodeID: 2} }
	cases := []struct {
		name        string
		source, tgt Side
		full, csum  bool
		whyMentions string
	}{
		{
			name:   "bitmap resync after a crash recovered the activity log",
			source: Side{UUIDs: UUIDs{Current: g1}, Disk: "UpToDate", Changed: 8, CrashedPrimary: true, recoveredAL: true, NodeID: 1},
			tgt:    upToDate(UUIDs{Current: g1}),
			csum:   true,
		},
		{
			name:   "bitmap resync of writes made while apart",
			source: Side{UUIDs: UUIDs{Current: g2, Bitmap: g1}, Disk: "UpToDate", Primary: true, Changed: 8, NodeID: 2},
			tgt:    Side{UUIDs: UUIDs{Current: g1}, Disk: "UpToDate", NodeID: 1},
		},
		{
			name:        "bitmap resync with csums-alg set on the source",
			source:      Side{UUIDs: UUIDs{Current: g2, Bitmap: g1}, Disk: "UpToDate", Primary: true, Changed: 8, NodeID: 2, csums: true},
			tgt:         Side{UUIDs: UUIDs{Current: g1}, Disk: "UpToDate", NodeID: 1},
			csum:        true,
			whyMentions: "csums-alg",
		},
		{
			name:        "bitmap resync with csums-alg set on the target",
			source:      Side{UUIDs: UUIDs{Current: g2, Bitmap: g1}, Disk: "UpToDate", Primary: true, Changed: 8, NodeID: 2},
			tgt:         Side{UUIDs: UUIDs{Current: g1}, Disk: "UpToDate", NodeID: 1, csums: true},
			csum:        true,
			whyMentions: "csums-alg",
		},
		{
			name:   "full resync to a new disk",
			source: upToDate(UUIDs{Current: g1}),
			tgt:    Side{Disk: "Inconsistent", NodeID: 1},
			full:   true,
		},
		{
			name:   "full resync to a new disk with csums-alg set: nothing there to compare",
			source: Side{UUIDs: UUIDs{Current: g1}, Disk: "UpToDate", NodeID: 2, csums: true},
			tgt:    Side{Disk: "Inconsistent", NodeID: 1, csums: true},
			full:   true,
		},
		{
			name:        "full resync to a disk detached, or being filled by attach-disk, when its daemon stopped",
			source:      upToDate(UUIDs{Current: g1}),
			tgt:         Side{Disk: "Inconsistent", NodeID: 1, partial: true},
			full:        true,
			csum:        true,
			whyMentions: "attach-disk",
		},
		{
			name:        "full resync to an older generation",
			source:      upToDate(UUIDs{Current: g3, Bitmap: g2, History: [2]uint64{g1}}),
			tgt:         Side{UUIDs: UUIDs{Current: g1}, Disk: "Outdated", NodeID: 1},
			full:        true,
			csum:        true,
			whyMentions: "another version of this data",
		},
	}
	// Two Inconsistent disks connect without a resync: nothing to compare,
	// and no reason may say otherwise.
	both := Side{UUIDs: UUIDs{Current: g1}, Disk: "Inconsistent", partial: true}
	if plan := Decide(both, both); plan.Decision != BothInconsistent {
		t.Fatalf("two Inconsistent disks: Decide = %v", plan.Decision)
	} else if csum, why := byChecksum(plan, Connected, both, both); csum || why != "" {
		t.Errorf("no resync: byChecksum = %v, %q; want false and no reason", csum, why)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			plan := Decide(c.source, c.tgt)
			if plan.Decision != BecomeSyncSource || plan.Full != c.full {
				t.Fatalf("Decide = %v full=%v (%s); the case wants SyncSource full=%v", plan.Decision, plan.Full, plan.Reason, c.full)
			}
			src, srcWhy := byChecksum(plan, SyncSource, c.source, c.tgt)
			tgt, tgtWhy := byChecksum(Decide(c.tgt, c.source), SyncTarget, c.tgt, c.source)
			if src != c.csum || tgt != c.csum || srcWhy != tgtWhy {
				t.Fatalf("source %v (%q), target %v (%q); want both %v alike", src, srcWhy, tgt, tgtWhy, c.csum)
			}
			if (srcWhy != "") != (c.whyMentions != "") || !strings.Contains(srcWhy, c.whyMentions) {
				t.Errorf("why %q, want it to mention %q", srcWhy, c.whyMentions)
			}
		})
	}
}

// TestBlockRuns: runs of consecutive indexes, as first and one past last.
func TestBlockRuns(t *testing.T) {
	var got [][2]int
	for i, j := range blockRuns([]int{0, 1, 2, 5, 7, 8, 255}) {
		got = append(got, [2]int{i, j})
	}
	want := [][2]int{{0, 3}, {5, 6}, {7, 9}, {255, 256}}
	if !slices.Equal(got, want) {
		t.Fatalf("blockRuns = %v, want %v", got, want)
	}
	for range blockRuns(nil) {
		t.Fatal("a run of no blocks")
	}
}
