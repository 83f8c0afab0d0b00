package replica_test

import (
	"bytes"
	"strings"
	"syscall"
	"testing"

	"github.com/urbd/urbd/replica"
)

// rewriteWhileApart disconnects b, has a write 64 blocks with what they
// already hold (an application rewriting a file unchanged), then 2 of them
// with new data, connects again and waits for the resync. It returns the
// KiB b received and a's state once in sync.
func rewriteWhileApart(t *testing.T, a, b *tnode) (int64, replica.State) {
	t.Helper()
	data := pattern("written before the split", 64*hBlock)
	a.write(0, data)
	a.waitInSync()
	if err := b.node.Disconnect(false); err != nil {
		t.Fatal(err)
	}
	a.waitConn(replica.WFConnection)
	a.write(0, data)
	a.write(10*hBlock, pattern("new while apart", 2*hBlock))
	recv := b.node.Status().NetRecvKiB
	reconnect(t, b)
	st := a.waitState("a SyncSource", func(s replica.State) bool { return strings.HasPrefix(s.Reason, "connected") })
	inSyncAndEqual(t, a, b)
	return int64(b.node.Status().NetRecvKiB - recv), st
}

// TestScenarioCsumsAlgSendsOnlyChangedBlocks: with csums-alg sha256 set
// on either node (DRBD's csums-alg), the bitmap resync after a disconnect
// compares checksums and sends only the blocks whose data changed, not the
// ones rewritten with what they held; the reason says why. Without it,
// every marked block is sent. Turned on live (urbd adjust), it applies
// from the next resync on.
func TestScenarioCsumsAlgSendsOnlyChangedBlocks(t *testing.T) {
	const changedKiB = 2 * hBlock >> 10
	for _, tc := range []struct {
		name   string
		oa, ob nodeOpts
		live   bool
	}{
		{name: "set on the source", oa: nodeOpts{csums: true}},
		{name: "set on the target", ob: nodeOpts{csums: true}},
		{name: "set live on the target", live: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := cleanPair(t, tc.oa, tc.ob)
			if tc.live {
				b.node.SetResyncChecksums(true)
			}
			got, st := rewriteWhileApart(t, a, b)
			if got > changedKiB+4 {
				t.Errorf("b received %d KiB in the resync, want the %d KiB that changed", got, changedKiB)
			}
			if !strings.Contains(st.Reason, "csums-alg sha256 is set, so the resync compares checksums") {
				t.Errorf("a's reason %q does not say the resync compares checksums", st.Reason)
			}
		})
	}
	t.Run("not set", func(t *testing.T) {
		a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
		if got, _ := rewriteWhileApart(t, a, b); got < 64*hBlock>>10 {
			t.Errorf("b received %d KiB, want every marked block (%d KiB) sent", got, 64*hBlock>>10)
		}
	})
}

// TestScenarioCsumsAlgRuntimeResync: the resync a connected Primary starts
// on its own (here after invalidate-remote marked the whole disk) follows
// csums-alg too, set on either node: of the Secondary's 8 MiB only the 3
// blocks damaged behind urbd's back are sent.
func TestScenarioCsumsAlgRuntimeResync(t *testing.T) {
	for _, tc := range []struct {
		name   string
		oa, ob nodeOpts
	}{
		{"set on the Primary", nodeOpts{csums: true}, nodeOpts{}},
		{"set on the Secondary", nodeOpts{}, nodeOpts{csums: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := cleanPair(t, tc.oa, tc.ob)
			a.write(0, pattern("primary data", 64*hBlock))
			a.waitInSync()
			for i := range 3 {
				b.poke(int64(i)*500*hBlock+17, []byte("damage"))
			}
			recv := b.node.Status().NetRecvKiB
			if err := a.node.InvalidateRemote(); err != nil {
				t.Fatal(err)
			}
			a.waitFor("the resync from invalidate-remote", func() bool { return strings.Contains(a.logs.String(), `msg="resync finished"`) })
			inSyncAndEqual(t, a, b)
			if got := b.node.Status().NetRecvKiB - recv; got > 3*hBlock>>10+4 {
				t.Errorf("b received %d KiB, want the 3 damaged blocks (%d KiB)", got, 3*hBlock>>10)
			}
		})
	}
}

// TestScenarioResyncSendsZeroesAsRanges: a resync sends a run of blocks that
// reads as zeroes on the source as a ResyncZero, without its bytes, and the
// target makes it read as zeroes by punching a hole: a full resync of a disk
// that is mostly empty moves little more than its data over the link, the
// target's junk in the empty regions is gone, and its file is sparse again.
// Where the source's file has holes, it does not even read them.
func TestScenarioResyncSendsZeroesAsRanges(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	data := pattern("the only data", 16*hBlock)
	a.write(3*mib, data)
	a.waitInSync()
	junk := bytes.Repeat([]byte("junk"), mib)
	b.poke(4*mib, junk) // 4 MiB that should read as zeroes
	if used := allocatedBytes(t, b.diskPath); used < 4*mib {
		t.Fatalf("the junk occupies %d bytes of b's file, want at least 4 MiB", used)
	}
	recv, read := b.node.Status().NetRecvKiB, a.node.Status().DiskReadKiB
	if err := b.node.Invalidate(); err != nil {
		t.Fatal(err)
	}
	inSyncAndEqual(t, a, b)
	// The data's 64 KiB cross the link, not the rest of the 1 MiB run
	// they are in.
	if got := b.node.Status().NetRecvKiB - recv; got != uint64(len(data))>>10 {
		t.Errorf("the full resync received %d KiB, want the %d KiB of data and no zeroes", got, len(data)>>10)
	}
	// a's disk is a sparse file: the holes were not even read.
	if got := a.node.Status().DiskReadKiB - read; got > 1<<10 {
		t.Errorf("the source read %d KiB, want only the 1 MiB chunk holding the data (its file's holes read as zeroes)", got)
	}
	if used := allocatedBytes(t, b.diskPath); used > int64(len(data)) {
		t.Errorf("b's file occupies %d bytes after the resync, want the zeroes punched out (the %d bytes of data)", used, len(data))
	}
}

// allocatedBytes is the disk space path's file occupies.
func allocatedBytes(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}
