package replica_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/urbd/urbd/nbd"
	"github.com/urbd/urbd/protocol"
	"github.com/urbd/urbd/replica"
	"github.com/urbd/urbd/status"
)

// detachedPair is a connected pair whose Primary a detached its failed disk
// (Diskless) after writing data; it returns what a's disk should hold. Both
// nodes have oa's peer timeout.
func detachedPair(t *testing.T, oa nodeOpts) (a, b *tnode, want []byte) {
	t.Helper()
	oa.viaProxy = true
	a, b = cleanPair(t, oa, nodeOpts{viaProxy: true, timeout: oa.timeout})
	want = make([]byte, hDiskSize)
	copy(want, pattern("before the failure", hDiskSize/2))
	a.write(0, want[:hDiskSize/2])
	a.disk.dead.Store(true)
	failed := pattern("the write the disk failed", 2*hBlock)
	copy(want[hDiskSize/2:], failed)
	a.write(hDiskSize/2, failed)
	a.waitState("Diskless", func(s replica.State) bool { return s.Disk == replica.Diskless })
	return a, b, want
}

// replaceDisk puts a new disk file of size bytes, full of garbage, at a's
// disk path (the old file stays open, as a failed disk does) and opens it.
func replaceDisk(t *testing.T, a *tnode, size int64) *nbd.File {
	t.Helper()
	return putDisk(t, a, bytes.Repeat([]byte("garbage on the replacement disk "), int(size)/32))
}

// putDisk puts a new disk file holding contents at a's disk path (the old
// file stays open, as a failed disk does) and opens it.
func putDisk(t *testing.T, a *tnode, contents []byte) *nbd.File {
	t.Helper()
	tmp := a.diskPath + ".new"
	if err := os.WriteFile(tmp, contents, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, a.diskPath); err != nil {
		t.Fatal(err)
	}
	f, err := nbd.OpenFile(a.diskPath, false)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// attach gives a the disk f (AttachDisk) and makes it the tnode's disk, so
// that stop, start and powerLoss use it. It checks that AttachDisk returned
// the failed disk, or DetachDisk's stand-in.
func attach(t *testing.T, a *tnode, f *nbd.File) *testDisk {
	t.Helper()
	d := &testDisk{Backend: f, volatile: a.opts.volatile}
	old, _, err := a.node.AttachDisk(d)
	if err != nil {
		f.Close()
		t.Fatalf("AttachDisk: %v", err)
	}
	// After DetachDisk the node holds a stand-in that fails every call.
	standIn := strings.Contains(fmt.Sprint(old.Flush(context.Background())), "detached by the operator")
	if old != nbd.Backend(a.disk) && !standIn {
		t.Errorf("AttachDisk returned %v, want the failed disk", old)
	}
	a.file.Close()
	a.file, a.disk = f, d
	return d
}

// attachedUpToDate waits until the attach on x made it UpToDate and checks
// that its disk holds want.
func attachedUpToDate(t *testing.T, x *tnode, want []byte) {
	t.Helper()
	x.waitState("UpToDate after the attach", func(s replica.State) bool { return s.Disk == replica.UpToDate })
	if i := firstDiff(x.image(), want); i >= 0 {
		t.Fatalf("the attached disk differs from what was written at %d (block %d)", i, i/hBlock)
	}
}

// attachResynced gives the Secondary x a new disk (attach) and waits until a
// full resync from its peer p made it UpToDate: both disks then hold want.
func attachResynced(t *testing.T, x, p *tnode, want []byte) {
	t.Helper()
	attach(t, x, replaceDisk(t, x, hDiskSize))
	x.waitState("UpToDate after the attach", func(s replica.State) bool { return s.Disk == replica.UpToDate && s.Conn == replica.Connected })
	inSyncAndEqual(t, p, x)
	if i := firstDiff(x.image(), want); i >= 0 {
		t.Fatalf("%s's attached disk differs from what was written at %d", x.label, i)
	}
}

// TestScenarioAttachDiskOnline: a Diskless Primary gets a new disk without
// stopping (urbd attach-disk). While the peer's data is copied to it,
// application writes go on, and are answered, as on a Diskless node; the
// node then is UpToDate with a disk byte-identical to the peer's, reads
// locally (the peer may go away), and its metadata says UpToDate and
// Primary: a restart comes back with no resync.
func TestScenarioAttachDiskOnline(t *testing.T) {
	ctx := context.Background()
	a, b, want := detachedPair(t, nodeOpts{rate: 4 << 20})

	small := replaceDisk(t, a, hDiskSize/2)
	if _, _, err := a.node.AttachDisk(&testDisk{Backend: small}); !errors.Is(err, replica.ErrDiskSize) {
		t.Fatalf("attaching a disk half the size: %v, want ErrDiskSize", err)
	}
	small.Close()

	d := attach(t, a, replaceDisk(t, a, hDiskSize))
	if _, _, err := a.node.AttachDisk(&testDisk{Backend: a.file}); !errors.Is(err, replica.ErrAttaching) {
		t.Errorf("a second attach during the copy: %v, want ErrAttaching", err)
	}
	st := a.node.Status()
	if st.DiskState != "Diskless" || st.Sync == nil || !strings.Contains(st.Reason, "attaching a new disk") {
		t.Errorf("during the copy: ds %s, progress %v, reason %q; want Diskless with progress and the reason", st.DiskState, st.Sync, st.Reason)
	}

	// Reads of what the copy has passed come from the new disk. Chunks
	// complete out of order (the peer reads several at once): the copy has
	// passed what lies below its first chunk not done.
	a.waitFor("1 MiB copied from the start", func() bool { return a.node.AttachCopied() >= 1<<20 })
	before := a.node.Status().DiskReadKiB
	if got, err := a.readAt(0, 1<<20); err != nil || !bytes.Equal(got, want[:1<<20]) {
		t.Fatalf("reading what the copy passed: %v (equal %v)", err, bytes.Equal(got, want[:1<<20]))
	}
	if read := a.node.Status().DiskReadKiB - before; read < 1024 {
		t.Errorf("reading what the copy passed read %d KiB from the new disk, want 1024", read)
	}

	// Writes during the copy, all over the disk, overlapping each other.
	var mu sync.Mutex
	done := make(chan struct{})
	var wg sync.WaitGroup
	writes := 0
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for i := 0; ; i++ {
				select {
				case <-done:
					return
				default:
				}
				off := rng.Int64N(hDiskSize/hBlock-4) * hBlock
				p := pattern(fmt.Sprintf("writer %d write %d", w, i), int(1+rng.Int64N(4))*hBlock)
				mu.Lock() // the model follows the order in which writes complete
				err := a.node.WriteAt(ctx, p, off, false)
				copy(want[off:], p)
				writes++
				mu.Unlock()
				if err != nil {
					t.Errorf("write during the attach: %v", err)
					return
				}
			}
		}()
	}
	a.waitState("UpToDate", func(s replica.State) bool { return s.Disk == replica.UpToDate })
	close(done)
	wg.Wait()
	if oos := a.node.Status().OutOfSyncKiB; oos != 0 || a.sawEvent("resync-started") {
		t.Errorf("attached with %d KiB out of sync (resync started: %v): the blocks marked while Diskless were left marked",
			oos, a.sawEvent("resync-started"))
	}
	if writes < 10 {
		t.Errorf("only %d writes overlapped the copy", writes)
	}
	b.waitState("peer UpToDate", func(s replica.State) bool { return s.PeerDisk == replica.UpToDate })
	if st := a.node.Status(); st.Sync != nil || !strings.Contains(st.Reason, "attached") {
		t.Errorf("after the copy: progress %v, reason %q", st.Sync, st.Reason)
	}
	if err := a.node.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if i := firstDiff(a.image(), want); i >= 0 {
		t.Fatalf("the attached disk differs from what was written at %d", i)
	}
	sameDisks(t, a, b)
	if d.writesDone.Load() == 0 {
		t.Fatal("nothing was written to the attached disk")
	}

	// Reads are local again: they work without the peer.
	a.proxy.Cut.Store(true)
	b.proxy.Cut.Store(true)
	a.waitState("peer lost", func(s replica.State) bool { return !s.Conn.Connected() })
	if got, err := a.readAt(0, hDiskSize); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("reading the attached disk without the peer: %v (equal %v)", err, bytes.Equal(got, want))
	}
	a.proxy.Cut.Store(false)
	b.proxy.Cut.Store(false)
	inSyncAndEqual(t, a, b)

	// The metadata says UpToDate and Primary.
	a.stop()
	a.start()
	if st := a.node.State(); st.Disk != replica.UpToDate || st.Role != replica.Primary {
		t.Fatalf("restarted after the attach: %+v, want an UpToDate Primary", st)
	}
	inSyncAndEqual(t, a, b)
}

// TestScenarioAttachDiskFails: an attach whose new disk fails a write
// stops for good: the node stays Diskless, serving from the peer as before,
// and the reason says why. One whose peer is lost during the copy starts
// over when the peer is back, without the operator, and completes.
func TestScenarioAttachDiskFails(t *testing.T) {
	ctx := context.Background()
	// Reads through the peer must not fail because a loaded machine missed
	// a keepalive: a timeout longer than the default 2 s, short enough to
	// notice the cut link below within hWait.
	a, b, want := detachedPair(t, nodeOpts{rate: 1 << 20, timeout: 4 * time.Second})

	if _, _, err := b.node.AttachDisk(&testDisk{Backend: b.file}); !errors.Is(err, replica.ErrNotDiskless) {
		t.Errorf("attach on an UpToDate node: %v, want ErrNotDiskless", err)
	}

	// The new disk fails a write during the copy.
	d := attach(t, a, replaceDisk(t, a, hDiskSize))
	d.failAt.Store(hBlock + 1)
	copy(want[hBlock:], pattern("written while attaching", hBlock))
	a.write(hBlock, want[hBlock:2*hBlock])
	st := a.waitState("attach failed", func(s replica.State) bool {
		return strings.Contains(s.Reason, "attaching the new disk failed")
	})
	if st.Disk != replica.Diskless || !strings.Contains(st.Reason, "failed a write") {
		t.Fatalf("after the new disk failed: %+v", st)
	}
	if err := a.node.WriteAt(ctx, want[hBlock:2*hBlock], hBlock, true); err != nil {
		t.Fatalf("a write after the failed attach: %v", err)
	}
	if got, err := a.readAt(0, hDiskSize); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("reading from the peer after the failed attach: %v", err)
	}

	// The peer is lost during the copy to a good disk.
	attach(t, a, replaceDisk(t, a, hDiskSize))
	a.proxy.Cut.Store(true)
	b.proxy.Cut.Store(true)
	a.waitState("peer lost", func(s replica.State) bool { return !s.Conn.Connected() })
	// The copy's first chunks go at once (the rate is charged as their
	// data arrives); at 1 MiB/s it cannot have reached the disk's end.
	if _, err := a.readAt(hDiskSize-hBlock, hBlock); err == nil {
		t.Fatal("a read without the peer succeeded before the copy was done")
	}
	if st := a.node.State(); st.Disk != replica.Diskless {
		t.Fatalf("without the peer during the copy: disk %v, want Diskless", st.Disk)
	}
	a.node.AdjustRate(64 << 20)
	a.proxy.Cut.Store(false)
	b.proxy.Cut.Store(false)
	a.waitConn(replica.Connected)
	copy(want[3*hBlock:], pattern("written after the reconnect", hBlock))
	a.write(3*hBlock, want[3*hBlock:4*hBlock])
	st = a.waitState("UpToDate", func(s replica.State) bool { return s.Disk == replica.UpToDate })
	if !strings.Contains(st.Reason, "new disk attached") {
		t.Errorf("reason %q after the resumed copy", st.Reason)
	}
	if i := firstDiff(a.image(), want); i >= 0 {
		t.Fatalf("the attached disk differs from what was written at %d", i)
	}
	inSyncAndEqual(t, a, b)
}

// attachHalfCopied is a detachedPair (a's options oa, plus a 2 MiB/s
// rate) whose Primary a attaches a new disk, returned once half of it is
// copied.
func attachHalfCopied(t *testing.T, oa nodeOpts) (a, b *tnode, want []byte) {
	t.Helper()
	oa.rate = 2 << 20
	a, b, want = detachedPair(t, oa)
	attach(t, a, replaceDisk(t, a, hDiskSize))
	a.waitStatus("half the disk copied", func(s status.Resource) bool {
		return s.Sync != nil && s.Sync.RemainingKiB+hDiskSize>>11 <= s.Sync.TotalKiB
	})
	return a, b, want
}

// attachCutMidCopy is attachHalfCopied with the link between the nodes
// then cut both ways.
func attachCutMidCopy(t *testing.T) (a, b *tnode, want []byte) {
	t.Helper()
	a, b, want = attachHalfCopied(t, nodeOpts{})
	a.proxy.Cut.Store(true)
	b.proxy.Cut.Store(true)
	return a, b, want
}

// TestScenarioAttachDiskResumes: a copy to a Primary's new disk that a lost
// peer cut short resumes where it stopped once the peer is back, instead of
// starting over, and copies again the chunk that a write in flight at the
// loss reached on the new disk but not on the peer (the application saw it
// fail): the disks end equal, without that write, and without one made
// while the peer was away (which failed too).
func TestScenarioAttachDiskResumes(t *testing.T) {
	a, b, want := attachCutMidCopy(t)
	lost := a.asyncWrite(0, pattern("in flight when the link went", hBlock)) // below the copy's progress
	if err := recvErr(t, "the write in flight at the loss", lost); err == nil {
		t.Fatal("a write the peer never got succeeded on a Diskless node")
	}
	st := a.waitState("peer lost", func(s replica.State) bool { return !s.Conn.Connected() })
	if st.Disk != replica.Diskless {
		t.Fatalf("after the loss: %v, want Diskless", st.Disk)
	}
	// Without the peer a write fails, and stays off the new disk too.
	if err := a.node.WriteAt(context.Background(), pattern("without the peer", hBlock), 1<<20, false); err == nil {
		t.Fatal("a write without disk and peer succeeded")
	}
	recv := a.node.Status().NetRecvKiB
	a.node.AdjustRate(64 << 20)
	a.proxy.Cut.Store(false)
	b.proxy.Cut.Store(false)
	st = a.waitState("UpToDate", func(s replica.State) bool { return s.Disk == replica.UpToDate })
	if got := a.node.Status().NetRecvKiB - recv; got > hDiskSize>>10*3/4 {
		t.Errorf("the resumed copy received %d KiB of the %d KiB disk, want at most the half not copied and the chunk written meanwhile", got, hDiskSize>>10)
	}
	if i := firstDiff(a.image(), want); i >= 0 {
		t.Fatalf("the attached disk differs from the peer's data at %d", i)
	}
	inSyncAndEqual(t, a, b)
}

// attachStoppedMidCopy is attachHalfCopied with a then crashed, or cut
// off by a power loss.
func attachStoppedMidCopy(t *testing.T, powerCut bool) (a, b *tnode, want []byte) {
	t.Helper()
	a, b, want = attachHalfCopied(t, nodeOpts{volatile: powerCut})
	a.crashAs(powerCut)
	return a, b, want
}

// restartResyncedByChecksum starts a, stopped while Diskless, and checks
// that it comes back Secondary and Inconsistent, that its full resync from b
// says it compares checksums, and that it ends UpToDate, in sync with b and
// holding want. It returns the KiB a received meanwhile.
func restartResyncedByChecksum(t *testing.T, a, b *tnode, want []byte) uint64 {
	t.Helper()
	a.start()
	if st := a.node.State(); st.Role != replica.Secondary || st.Disk != replica.Inconsistent {
		t.Fatalf("restarted while Diskless: %v %v, want Secondary and Inconsistent", st.Role, st.Disk)
	}
	a.waitState("UpToDate", func(s replica.State) bool { return s.Disk == replica.UpToDate && s.Conn == replica.Connected })
	inSyncAndEqual(t, a, b)
	if i := firstDiff(a.image(), want); i >= 0 {
		t.Fatalf("the resynced disk differs from the peer's data at %d", i)
	}
	if !strings.Contains(a.logs.String(), "the resync compares checksums") {
		t.Error("the target's log does not say that the resync compared checksums")
	}
	return a.node.Status().NetRecvKiB
}

// TestScenarioAttachDiskRestartComparesChecksums: a daemon that stops
// while attach-disk fills its new disk does not copy the filled part again.
// It comes back Secondary and Inconsistent, as before, and the full resync
// from its peer compares checksums first, so only the blocks the copy had
// not reached travel. After a power cut instead, which takes the copy's
// unflushed writes with it, the checksums find every block the new disk
// lost: the disks end equal all the same.
func TestScenarioAttachDiskRestartComparesChecksums(t *testing.T) {
	for _, powerCut := range []bool{false, true} {
		t.Run(fmt.Sprintf("powerCut=%v", powerCut), func(t *testing.T) {
			a, b, want := attachStoppedMidCopy(t, powerCut)
			if got := restartResyncedByChecksum(t, a, b, want); !powerCut && got > hDiskSize>>10*3/4 {
				t.Errorf("the resync after the restart received %d KiB of the %d KiB disk, want at most the half the copy had not reached", got, hDiskSize>>10)
			}
		})
	}
}

// TestScenarioDetachedDiskRestartComparesChecksums: a Primary whose disk
// failed a write (Diskless), and whose daemon then restarts on that disk,
// working again, comes back Secondary and Inconsistent as before. The full
// resync from its peer compares checksums, so only what the disk lacks
// travels (the write it failed), not the whole disk.
func TestScenarioDetachedDiskRestartComparesChecksums(t *testing.T) {
	a, b, want := detachedPair(t, nodeOpts{})
	a.crash()
	if got := restartResyncedByChecksum(t, a, b, want); got > hDiskSize>>10/8 {
		t.Errorf("the resync after the restart received %d KiB of the %d KiB disk, want about the 8 KiB write the disk failed", got, hDiskSize>>10)
	}
}

// TestScenarioChecksumResyncTargetReadError: a block that the sync target
// cannot read while the resync compares checksums counts as different. The
// source sends it and the write repairs it, as a disk remaps a bad sector
// when it is written, and a resync without checksums would have written it
// too. Ending the connection instead would make every reconnection fail on
// the same block.
func TestScenarioChecksumResyncTargetReadError(t *testing.T) {
	a, b, want := attachStoppedMidCopy(t, false)
	a.proxy.Cut.Store(true)
	b.proxy.Cut.Store(true)
	a.start()
	a.disk.setBad(hBlock, hBlock) // in the half the copy filled
	a.proxy.Cut.Store(false)
	b.proxy.Cut.Store(false)
	a.waitState("UpToDate", func(s replica.State) bool { return s.Disk == replica.UpToDate && s.Conn == replica.Connected })
	if a.disk.readErrors.Load() == 0 || a.disk.isBad() {
		t.Fatalf("the unreadable block: %d read errors, still bad %v; want it read, failed, and written", a.disk.readErrors.Load(), a.disk.isBad())
	}
	inSyncAndEqual(t, a, b)
	if i := firstDiff(a.image(), want); i >= 0 {
		t.Fatalf("the attached disk differs from the peer's data at %d", i)
	}
}

// TestScenarioChecksumResyncNeverOverwritesNewerWrite: a resync that
// compares checksums holds a block's range lock from its checksum request
// to its copy, as a plain one does, so an application write to the block
// while the copy is on its way waits, and the newer data wins on both
// disks. b's disk is detached and its daemon restarted on it: a full resync
// by checksum from the Primary a, in which block 5, written meanwhile, is
// the one that differs.
func TestScenarioChecksumResyncNeverOverwritesNewerWrite(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{viaProxy: true}, nodeOpts{viaProxy: true})
	if _, err := b.node.DetachDisk(); err != nil {
		t.Fatal(err)
	}
	a.waitConn(replica.WFConnection)
	a.write(5*hBlock, pattern("old", hBlock))
	b.crash()
	a.proxy.Cut.Store(true)
	b.proxy.Cut.Store(true)
	b.start()
	held := b.disk.holdWrites()
	a.proxy.Cut.Store(false)
	b.proxy.Cut.Store(false)
	<-held // the copy of block 5, the only one that differs, is being written on b
	if !strings.Contains(b.node.State().Reason, "the resync compares checksums") {
		t.Fatalf("b's resync: %q, want one that compares checksums", b.node.State().Reason)
	}
	newerWriteWaitsForCopy(t, a, b, 5*hBlock)
	if got := b.node.Status().NetRecvKiB; got > 64 {
		t.Errorf("b received %d KiB, want the block that differed and the newer write", got)
	}
}

// TestScenarioChecksumRequestBounds: a checksum request larger than a
// resync's run (1 MiB), or past the end of the disk, is refused before
// anything is read or allocated for it: the target answers up to 16 at once,
// and a peer could otherwise make it read gigabytes for each. One that fits
// gets a sum per block.
func TestScenarioChecksumRequestBounds(t *testing.T) {
	a, _ := cleanPair(t, nodeOpts{}, nodeOpts{})
	for _, m := range []protocol.ChecksumRequest{
		{Seq: 1, Offset: 0, Length: 4 << 20, BlockSize: 1 << 20},
		{Seq: 2, Offset: hDiskSize - hBlock, Length: 2 * hBlock, BlockSize: hBlock},
	} {
		if _, err := a.node.AnswerPeerChecksums(&m); err == nil {
			t.Errorf("checksums of %d bytes at %d: answered, want refused", m.Length, m.Offset)
		}
	}
	reply, err := a.node.AnswerPeerChecksums(&protocol.ChecksumRequest{Seq: 3, Offset: hBlock, Length: 1 << 20, BlockSize: hBlock})
	if err != nil || len(reply.Sums) != 1<<20/hBlock {
		t.Fatalf("checksums of 1 MiB: %v, %v; want %d sums", reply, err, 1<<20/hBlock)
	}
}

// TestScenarioAttachDiskRefusesPeerPromotedMeanwhile: a copy cut short
// does not go on from a peer that was promoted and written while apart (a
// new data generation): the Diskless Primary refuses to connect to it, as
// DRBD does, and says why; the node stays Diskless with its copy unfinished,
// where a resumed copy would have left the old block on the new disk and
// called it UpToDate.
func TestScenarioAttachDiskRefusesPeerPromotedMeanwhile(t *testing.T) {
	a, b, _ := attachCutMidCopy(t)
	writeWhileApart(t, a, b, 0, pattern("written on the peer while apart", hBlock))
	a.node.AdjustRate(64 << 20)
	a.proxy.Cut.Store(false)
	b.proxy.Cut.Store(false)
	st := a.waitState("the connection refused", func(s replica.State) bool {
		return s.Conn == replica.StandAlone || s.Disk != replica.Diskless
	})
	if st.Disk != replica.Diskless || !strings.Contains(st.Reason, "is a Diskless Primary on data generation") {
		t.Fatalf("after the peer's new generation: %+v, want StandAlone and Diskless, refused for the generation", st)
	}
}

// TestScenarioAttachDiskCopyOrder: a write to a chunk whose copy is on its
// way waits for it, so the copy never overwrites the newer write on the new
// disk. The peer is made slow to answer the copy's Read (its disk holds an
// earlier write, which the Read queues behind), and a write to the chunk
// comes meanwhile: without the chunk's range lock it would reach the new
// disk first and the peer's older data would land on top of it.
func TestScenarioAttachDiskCopyOrder(t *testing.T) {
	a, b, want := detachedPair(t, nodeOpts{})
	held := b.disk.holdWrites()
	early := pattern("queued ahead of the copy", hBlock)
	copy(want[hDiskSize-hBlock:], early)
	earlyDone := a.asyncWrite(hDiskSize-hBlock, early)
	<-held // the peer's apply loop waits in this write

	d := attach(t, a, replaceDisk(t, a, hDiskSize))
	// The copy sends a chunk's Read once it holds the chunk's range lock,
	// the first chunk first.
	a.waitFor("the copy's first Read", func() bool { return a.node.PendingPeerReads() > 0 })
	late := pattern("written during the chunk's copy", hBlock)
	copy(want[2*hBlock:], late)
	lateDone := a.asyncWrite(2*hBlock, late)
	// Give a write that did not wait for the chunk the time to reach the
	// new disk; one that waits (as it must) never does before the release.
	for i := 0; i < 20 && d.writesDone.Load() == 0; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if n := d.writesDone.Load(); n != 0 {
		t.Errorf("%d writes reached the new disk while its first chunk's copy was on the way", n)
	}
	b.disk.releaseWrites()
	if err := recvErr(t, "the write queued ahead", earlyDone); err != nil {
		t.Fatal(err)
	}
	if err := recvErr(t, "the write during the copy", lateDone); err != nil {
		t.Fatal(err)
	}
	attachedUpToDate(t, a, want)
	inSyncAndEqual(t, a, b)
}

// TestScenarioAttachDiskPowerCut: the attached disk is durable once the
// node says UpToDate. A power cut right after the attach (the page cache's
// unflushed writes lost) leaves the new disk holding everything, so the
// node comes back UpToDate with the data it served, and the activity log's
// resync after the crash copies nothing wrong to the peer.
func TestScenarioAttachDiskPowerCut(t *testing.T) {
	a, b, want := detachedPair(t, nodeOpts{volatile: true})
	attach(t, a, replaceDisk(t, a, hDiskSize))
	a.waitState("UpToDate", func(s replica.State) bool { return s.Disk == replica.UpToDate })

	a.powerLoss()
	if i := firstDiff(a.image(), want); i >= 0 {
		t.Fatalf("after a power cut the attached disk differs from what was written at %d (block %d)", i, i/hBlock)
	}
	a.start()
	if st := a.node.State(); st.Disk != replica.UpToDate {
		t.Fatalf("restarted after the power cut: disk %v, want UpToDate", st.Disk)
	}
	inSyncAndEqual(t, a, b)
	if i := firstDiff(b.image(), want); i >= 0 {
		t.Fatalf("the peer's disk differs from what was written at %d", i)
	}
}

// TestScenarioAttachDiskSecondary: a Secondary whose disk failed gets a new
// one without a restart (urbd attach-disk). The failed flush left it
// Inconsistent and StandAlone; the attach connects it again, a full resync
// copies the Primary's data while the application writes, and it ends
// UpToDate, also across a restart. Then a Primary that detached its disk
// and was demoted (failing over instead of attaching) stands alone
// Diskless; an attach brings it back as a resynced Secondary of the new
// Primary.
func TestScenarioAttachDiskSecondary(t *testing.T) {
	ctx := context.Background()
	a, b := cleanPair(t, nodeOpts{viaProxy: true}, nodeOpts{viaProxy: true})
	want := make([]byte, hDiskSize)
	copy(want, pattern("before the failure", hDiskSize/2))
	a.write(0, want[:hDiskSize/2])
	if _, _, err := b.node.AttachDisk(&testDisk{Backend: b.file}); !errors.Is(err, replica.ErrNotDiskless) {
		t.Errorf("attach on an UpToDate Secondary: %v, want ErrNotDiskless", err)
	}

	b.disk.failFlush.Store(true)
	if err := a.node.Flush(ctx); err != nil {
		t.Fatalf("a FLUSH durable on the Primary: %v", err)
	}
	st := b.waitState("b Inconsistent and StandAlone after its flush failed", func(s replica.State) bool {
		return s.Disk == replica.Inconsistent && s.Conn == replica.StandAlone
	})
	if !strings.Contains(st.Reason, "urbd attach-disk") {
		t.Errorf("b's reason %q does not name attach-disk", st.Reason)
	}
	alone := pattern("written while b stood alone", 8*hBlock)
	copy(want[hDiskSize/2:], alone)
	a.write(hDiskSize/2, alone)

	small := replaceDisk(t, b, hDiskSize/2)
	if _, _, err := b.node.AttachDisk(&testDisk{Backend: small}); !errors.Is(err, replica.ErrDiskSize) {
		t.Errorf("attaching a disk half the size: %v, want ErrDiskSize", err)
	}
	small.Close()
	recv := b.node.Status().NetRecvKiB
	d := attach(t, b, replaceDisk(t, b, hDiskSize))

	// The application writes during the resync, into the chunks that hold
	// data already: the last three chunks stay zeroes.
	for i := range 16 {
		off := int64(i) * (hDiskSize / 2 / 16)
		p := pattern(fmt.Sprintf("during the resync %d", i), hBlock)
		copy(want[off:], p)
		a.write(off, p)
	}
	b.waitState("b UpToDate", func(s replica.State) bool { return s.Disk == replica.UpToDate && s.Conn == replica.Connected })
	inSyncAndEqual(t, a, b)
	if i := firstDiff(b.image(), want); i >= 0 {
		t.Fatalf("the attached disk differs from what was written at %d", i)
	}
	if d.writesDone.Load() == 0 {
		t.Fatal("nothing was written to the attached disk")
	}
	// The whole disk was resynced (it equals want), its zeroes as ranges
	// without their bytes: the 5 chunks holding data crossed the link, and
	// the 16 writes.
	if got := b.node.Status().NetRecvKiB - recv; got > 5<<10+16*hBlock>>10 {
		t.Errorf("the resync after the attach received %d KiB of an %d KiB disk with 5 MiB of chunks holding data", got, hDiskSize>>10)
	}
	b.stop()
	b.start()
	b.waitConn(replica.Connected)
	if st := b.node.State(); st.Disk != replica.UpToDate || st.Role != replica.Secondary {
		t.Fatalf("b restarted after the attach: %+v, want an UpToDate Secondary", st)
	}
	inSyncAndEqual(t, a, b)

	// A detached Primary fails over instead: demoted, it stands alone
	// without a disk, and connect refuses it until it has one.
	a.disk.dead.Store(true)
	lost := pattern("the write a's disk failed", 2*hBlock)
	copy(want, lost)
	a.write(0, lost)
	a.waitState("a Diskless", func(s replica.State) bool { return s.Disk == replica.Diskless })
	if err := a.node.Demote(false); err != nil {
		t.Fatal(err)
	}
	a.waitState("a StandAlone", func(s replica.State) bool { return s.Conn == replica.StandAlone && s.Role == replica.Secondary })
	if err := a.node.Connect(false); err == nil || !strings.Contains(err.Error(), "urbd attach-disk") {
		t.Errorf("connect on a Diskless Secondary: %v, want a refusal naming attach-disk", err)
	}
	// b refuses promotion while it still sees a as its connected Primary.
	b.waitState("b sees a gone", func(s replica.State) bool { return !s.Conn.Connected() })
	if err := b.node.Promote(false); err != nil {
		t.Fatal(err)
	}
	after := pattern("written on the new Primary", 4*hBlock)
	copy(want[hDiskSize-4*hBlock:], after)
	b.write(hDiskSize-4*hBlock, after)
	attachResynced(t, a, b, want)
	if got := a.read(0, len(lost)); !bytes.Equal(got, lost) {
		t.Fatal("a's new disk lacks the write its old disk failed")
	}
}

// TestScenarioAttachDiskKeepsZeroesThin: zeroes the Diskless Primary reads
// from its peer, and zeroes the copy to a new disk takes from it, cross the
// link as a flag (ReadReply's Zero), not as bytes; the peer's holes are not
// even read, and the new disk gets holes where the peer's disk reads as
// zeroes, down to 64 KiB steps inside a chunk that holds data, so a thin
// disk stays thin. The new disk still ends up equal.
func TestScenarioAttachDiskKeepsZeroesThin(t *testing.T) {
	a, b, want := detachedPair(t, nodeOpts{})
	// b's file holds data in [0, 4 MiB + 8 KiB) and holes after it; a
	// run of written zeroes at 6 MiB makes one chunk that reads as zeroes
	// without being a hole.
	b.poke(6*mib, make([]byte, mib))

	recv := a.node.Status().NetRecvKiB
	if got, err := a.readAt(5*mib, 3*mib); err != nil || !bytes.Equal(got, want[5*mib:]) {
		t.Fatalf("the Diskless Primary reading zeroes from its peer: %v (equal %v)", err, bytes.Equal(got, want[5*mib:]))
	}
	if got := a.node.Status().NetRecvKiB - recv; got != 0 {
		t.Errorf("reading 3 MiB of zeroes from the peer received %d KiB, want none", got)
	}

	sent, read := b.node.Status().NetSendKiB, b.node.Status().DiskReadKiB

	attach(t, a, replaceDisk(t, a, hDiskSize))
	attachedUpToDate(t, a, want)
	sameDisks(t, a, b)
	// 5 MiB of chunks hold data; the 3 after them cross as flags.
	if got := b.node.Status().NetSendKiB - sent; got != 5<<10 {
		t.Errorf("the peer sent %d KiB for the copy, want the 5 chunks holding data (5120 KiB)", got)
	}
	if got := b.node.Status().DiskReadKiB - read; got != 6<<10 {
		t.Errorf("the peer read %d KiB for the copy, want the 5 chunks holding data and the chunk of written zeroes (6144 KiB), not its holes", got)
	}
	// The chunk at 4 MiB holds 8 KiB of data: its other 64 KiB steps
	// are left as holes too.
	if used := allocatedBytes(t, a.diskPath); used > 4*mib+64<<10 {
		t.Errorf("the new disk's file occupies %d bytes after the copy, want the garbage in the zero chunks and steps punched out (4 MiB and 64 KiB)", used)
	}
}

// TestScenarioAttachDiskComparesChecksums: with csums-alg, attach-disk of a
// disk that holds most of the data (the failed disk, repaired) compares
// checksums and takes from the peer only the blocks that differ. A write
// still on its way to the peer's disk when the attach starts is compared
// after it landed there: the repaired disk, which lacks it, gets it.
func TestScenarioAttachDiskComparesChecksums(t *testing.T) {
	a, b, want := detachedPair(t, nodeOpts{csums: true})
	img := b.image() // the repaired disk: the peer's data, but for 3 blocks
	for _, blk := range []int64{5, 700, 1900} {
		copy(img[blk*hBlock:], pattern("rot", hBlock))
	}

	// A write the peer's disk holds back while the attach starts.
	held := b.disk.hangWrites()
	late := pattern("on its way", hBlock)
	copy(want[1200*hBlock:], late)
	wrote := make(chan error, 1)
	go func() { wrote <- a.node.WriteAt(context.Background(), late, 1200*hBlock, false) }()
	<-held

	recv := a.node.Status().NetRecvKiB
	attach(t, a, putDisk(t, a, img))
	if r := a.node.Status().Reason; !strings.Contains(r, "csums-alg: only blocks whose checksums differ are copied") {
		t.Errorf("reason %q does not say the copy compares checksums", r)
	}
	time.Sleep(200 * time.Millisecond) // the copy would compare now
	b.disk.releaseWrites()
	if err := recvErr(t, "the write held by the peer's disk", wrote); err != nil {
		t.Fatal(err)
	}
	attachedUpToDate(t, a, want)
	sameDisks(t, a, b)
	// Blocks 5 and 700 and the late write cross as data; block 1900 is
	// zeroes on the peer, which cross as a flag.
	if got := a.node.Status().NetRecvKiB - recv; got != 3*hBlock>>10 {
		t.Errorf("the attach received %d KiB, want 2 rotten blocks and the late write (%d KiB)", got, 3*hBlock>>10)
	}
}
