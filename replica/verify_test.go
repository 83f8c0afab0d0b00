package replica_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/urbd/urbd/replica"
	"github.com/urbd/urbd/status"
)

const mib = 1 << 20

// verifyFinds runs an online verify of r from x and checks what it found
// (verifyFound).
func (x *tnode) verifyFinds(r replica.VerifyRange, want string) {
	x.t.Helper()
	if err := x.node.Verify(r); err != nil {
		x.t.Fatal(err)
	}
	x.verifyFound(want)
}

// verifyFound waits until x's log shows a state change to the reason want,
// which the end of its online verify gives.
func (x *tnode) verifyFound(want string) {
	x.t.Helper()
	x.waitFor("a state change to "+strconv.Quote(want), func() bool { return strings.Contains(x.logs.String(), `reason="`+want+`"`) })
}

// TestScenarioVerifyRange: a verify of part of the disk compares only that
// part: of two blocks rotted on the Secondary, it finds the one inside the
// range, and the reason names the range. The peer's progress counts the
// range, not the disk. A range outside the disk is refused.
func TestScenarioVerifyRange(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	b.poke(1*mib+100, []byte("rot outside the range"))
	b.poke(4*mib+5*hBlock+100, []byte("rot inside the range"))

	if err := a.node.Verify(replica.VerifyRange{Start: 4*mib + 10, Stop: 5*mib - 10}); err != nil {
		t.Fatal(err)
	}
	sawTotal := make(chan uint64, 1)
	b.waitStatus("b's verify progress", func(s status.Resource) bool {
		if s.ConnState == "VerifyT" && s.Sync != nil {
			select {
			case sawTotal <- s.Sync.TotalKiB:
			default:
			}
		}
		return len(sawTotal) > 0 || strings.Contains(a.logs.String(), "online verify finished")
	})
	a.verifyFound("online verify finished (4MiB to 5MiB of 8MiB): 1 blocks differ")
	select {
	case total := <-sawTotal:
		if total != 1024 {
			t.Errorf("the peer's verify progress counts %d KiB, want the range's 1024", total)
		}
	default:
		t.Log("the verify ended before the peer's progress could be seen")
	}
	a.waitInSync()
	if d := firstDiff(a.image(), b.image()); d != 1*mib+100 {
		t.Fatalf("the disks first differ at %d, want only the rot outside the range (at %d)", d, 1*mib+100)
	}

	for _, r := range []replica.VerifyRange{{Start: 8 * mib}, {Start: 2 * mib, Stop: 1 * mib}, {Stop: 9 * mib}, {Start: -1}} {
		if err := a.node.Verify(r); err == nil || !strings.Contains(err.Error(), "cannot verify from") {
			t.Errorf("Verify(%+v): %v, want a refusal naming the disk's size", r, err)
		}
	}
}

// TestScenarioVerifyResumes: a verify that stops early (here the peer
// disconnects) says where, and Resume goes on from there to the end, also
// after the node restarted: blocks before that point are not compared
// again, blocks after it are. Without a stopped verify there is nothing to
// resume.
func TestScenarioVerifyResumes(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{rate: 2 * mib}, nodeOpts{})
	if err := a.node.Verify(replica.VerifyRange{Resume: true}); err == nil || !strings.Contains(err.Error(), "nothing to resume") {
		t.Fatalf("resume with no verify stopped: %v", err)
	}
	b.poke(1*mib+100, []byte("rot early"))
	b.poke(7*mib+100, []byte("rot late"))

	if err := a.node.Verify(replica.VerifyRange{}); err != nil {
		t.Fatal(err)
	}
	a.waitStatus("3 MiB verified", func(s status.Resource) bool { return s.Sync != nil && s.Sync.VerifiedKiB >= 3<<10 })
	if err := b.node.Disconnect(false); err != nil {
		t.Fatal(err)
	}
	a.waitFor("the verify's stop in the log", func() bool { return strings.Contains(a.logs.String(), "online verify stopped at") })
	if !strings.Contains(a.logs.String(), "1 blocks differ") || !strings.Contains(a.logs.String(), "urbd verify --resume") {
		t.Fatalf("the stopped verify's log does not count the early block or name --resume:\n%s", a.logs.String())
	}
	if v := a.node.Status().LastVerify; v == nil || v.Complete || v.Differing != 1 || v.FromKiB != 0 || v.ToKiB != 8<<10 {
		t.Fatalf("status after the stopped verify: last verify %+v, want one stopped early that found 1 block", v)
	}
	// Both the result and the point to resume from survive a restart.
	before := *a.node.Status().LastVerify
	a.stop()
	a.start()
	if v := a.node.Status().LastVerify; v == nil || !v.Ended.Equal(before.Ended) || v.Complete || v.Differing != 1 || v.ToKiB != 8<<10 {
		t.Fatalf("last verify after a restart: %+v, want %+v", v, before)
	}
	resumeFindsLateRot(t, a, b, 3<<10)
	if err := a.node.Verify(replica.VerifyRange{Resume: true}); err == nil {
		t.Fatal("a second resume after the verify finished was accepted")
	}
}

// TestScenarioVerifyCheckpointSurvivesCrash: a running verify saves, every
// checkpoint interval, the point it would resume from, after persisting the
// blocks it marked: killed in the middle (kill -9), the node restarts with
// the early block it found still marked, the resync copies it, and --resume
// goes on from the last checkpoint, not from the start, and finds the
// late block.
func TestScenarioVerifyCheckpointSurvivesCrash(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{rate: 2 * mib}, nodeOpts{})
	a.node.SetVerifyCheckpointEvery(200 * time.Millisecond)
	b.poke(1*mib+100, []byte("rot early"))
	b.poke(7*mib+100, []byte("rot late"))
	if err := a.node.Verify(replica.VerifyRange{}); err != nil {
		t.Fatal(err)
	}
	a.waitStatus("4 MiB verified", func(s status.Resource) bool { return s.Sync != nil && s.Sync.VerifiedKiB >= 4<<10 })
	time.Sleep(300 * time.Millisecond) // a checkpoint past the early block
	a.crash()
	a.start()
	resumeFindsLateRot(t, a, b, 2<<10)
}

// resumeFindsLateRot follows a verify by a that stopped (or crashed) past
// the early rot at 1 MiB of b and before the late one at 7 MiB: b
// reconnects, the resync copies the early block the verify marked (the
// disks then differ only at the late one), and --resume goes on from at
// least fromKiB to the end of the 8 MiB disk, alone, finds the late block,
// and the resync makes both disks equal.
func resumeFindsLateRot(t *testing.T, a, b *tnode, fromKiB uint64) {
	t.Helper()
	reconnect(t, b)
	a.waitInSync()
	if d := firstDiff(a.image(), b.image()); d != 7*mib+100 {
		t.Fatalf("after the reconnection the disks first differ at %d, want only the late rot (%d): the early block's mark was lost", d, 7*mib+100)
	}
	if err := a.node.Verify(replica.VerifyRange{Resume: true}); err != nil {
		t.Fatal(err)
	}
	a.waitFor("the resumed verify's end in the log", func() bool { return strings.Contains(a.logs.String(), "online verify finished") })
	logs := a.logs.String()
	i := strings.Index(logs, "online verify finished (")
	if i < 0 || !strings.Contains(logs[i:], "to 8MiB of 8MiB): 1 blocks differ") || strings.HasPrefix(logs[i:], "online verify finished (0B") {
		t.Fatalf("the resumed verify did not cover the rest of the disk alone, finding the late block:\n%s", logs)
	}
	if v := a.node.Status().LastVerify; v == nil || !v.Complete || v.Differing != 1 || v.FromKiB < fromKiB || v.ToKiB != 8<<10 {
		t.Fatalf("status after the resumed verify: last verify %+v, want a complete one from at least %d KiB", v, fromKiB)
	}
	a.waitInSync()
	sameDisks(t, a, b)
}

// TestScenarioVerifyOverLongLink: over a link that holds every byte 5 ms
// each way, a verify of a 64 MiB disk (64 chunks, several in flight) finds
// the one rotted block and the resync repairs it.
func TestScenarioVerifyOverLongLink(t *testing.T) {
	o := nodeOpts{viaProxy: true, size: 64 * mib, assumeClean: true}
	a, b := newPair(t, o, o)
	for _, x := range []*tnode{a, b} {
		x.proxy.Delay.Store(int64(5 * time.Millisecond))
	}
	a.start()
	b.start()
	a.waitConn(replica.Connected)
	if err := a.node.Promote(false); err != nil {
		t.Fatal(err)
	}
	b.poke(50*mib+100, []byte("rot far out"))
	a.verifyFinds(replica.VerifyRange{}, "online verify finished: 1 blocks differ")
	inSyncAndEqual(t, a, b)
}

// TestScenarioVerifyNoteUnreadable: a verify note that does not parse (a
// disk error, an edit) is logged and ignored: the node starts, with no last
// verify and nothing to resume.
func TestScenarioVerifyNoteUnreadable(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	b.poke(2*mib, []byte("rot"))
	a.verifyFinds(replica.VerifyRange{}, "online verify finished: 1 blocks differ")
	a.stop()
	if err := os.WriteFile(filepath.Join(a.metaDir, "verify.note"), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	a.start()
	a.waitConn(replica.Connected)
	if v := a.node.Status().LastVerify; v != nil {
		t.Errorf("last verify from an unreadable note: %+v", v)
	}
	if !strings.Contains(a.logs.String(), "the last online verify's results are unreadable; ignored") {
		t.Error("the unreadable note was not logged")
	}
	if err := a.node.Verify(replica.VerifyRange{Resume: true}); err == nil || !strings.Contains(err.Error(), "nothing to resume") {
		t.Errorf("resume after an unreadable note: %v", err)
	}
}

// TestScenarioVerifySkipsHoles: on sparse disks a verify reads only the
// chunks that hold data, on either node (the sums of a hole are known
// without reading it), and still finds blocks that differ where one
// node's disk has a hole and the other's data.
func TestScenarioVerifySkipsHoles(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	a.write(2*mib, pattern("data", mib))
	a.waitInSync()
	b.poke(6*mib+3*hBlock, []byte("rot in a hole of a's disk"))
	readA, readB := a.node.Status().DiskReadKiB, b.node.Status().DiskReadKiB
	a.verifyFinds(replica.VerifyRange{}, "online verify finished: 1 blocks differ")
	if got := a.node.Status().DiskReadKiB - readA; got != 1024 {
		t.Errorf("a's verify read %d KiB of a's disk, want the one chunk with data (1024)", got)
	}
	if got := b.node.Status().DiskReadKiB - readB; got != 2048 {
		t.Errorf("a's verify read %d KiB of b's disk, want the chunk with data and the one with the rot (2048)", got)
	}
	a.waitInSync()
	sameDisks(t, a, b)
}
