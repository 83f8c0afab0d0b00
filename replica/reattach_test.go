package replica_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/urbd/urbd/nbd"
	"github.com/urbd/urbd/replica"
)

// reattach gives the Secondary x back the disk file at its path
// (ReattachDisk) and makes it the tnode's disk; it returns ReattachDisk's
// error, with nothing changed on a refusal.
func reattach(t *testing.T, x *tnode) error {
	t.Helper()
	f, err := nbd.OpenFile(x.diskPath, false)
	if err != nil {
		t.Fatal(err)
	}
	d := &testDisk{Backend: f}
	if _, err := x.node.ReattachDisk(d); err != nil {
		f.Close()
		return err
	}
	x.file.Close()
	x.file, x.disk = f, d
	return nil
}

// reattachBlank offers x a blank disk of size bytes at its disk path
// (ReattachDisk), with the detached disk put aside meanwhile and back at
// the path afterwards, and returns ReattachDisk's error.
func reattachBlank(t *testing.T, x *tnode, size int64) error {
	t.Helper()
	if err := os.Rename(x.diskPath, x.diskPath+".old"); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := os.Rename(x.diskPath+".old", x.diskPath); err != nil {
			t.Fatal(err)
		}
	}()
	if err := os.WriteFile(x.diskPath, make([]byte, size), 0o600); err != nil {
		t.Fatal(err)
	}
	return reattach(t, x)
}

// TestScenarioReattachSameDisk: a Secondary whose disk urbd detach-disk took
// out gets the same disk back (attach-disk --same-disk) and the resync
// copies only what the Primary wrote meanwhile, as after a reconnect: both
// disks end byte-identical, also when the Primary wrote all through the
// detach. Refused with nothing changed: before any detach, for a disk whose
// contents differ (a blank or replaced one), for another size, and after
// the daemon restarted.
func TestScenarioReattachSameDisk(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	a.write(0, pattern("before the detach", hDiskSize))
	if err := a.node.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	inSyncAndEqual(t, a, b) // b holds the data (a loaded machine may have cut the link)
	if err := reattach(t, b); !errors.Is(err, replica.ErrNotSameDisk) {
		t.Fatalf("ReattachDisk on an UpToDate Secondary: %v, want ErrNotSameDisk", err)
	}

	// The Primary writes to the disk's first quarter all through the
	// detach (the writes the peer has not flushed are marked too).
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			off := int64(i*7919%(hDiskSize/hBlock/4)) * hBlock
			if err := a.node.WriteAt(context.Background(), pattern(fmt.Sprint("write ", i), hBlock), off, false); err != nil {
				t.Errorf("write %d: %v", i, err)
				return
			}
		}
	}()
	if _, err := b.node.DetachDisk(); err != nil {
		t.Fatalf("DetachDisk on the Secondary: %v", err)
	}
	a.waitState("a alone", func(s replica.State) bool { return !s.Conn.Connected() })
	close(stop)
	wg.Wait()
	a.write(hDiskSize/2, pattern("after the detach", 4*hBlock))

	// Another disk at the path, and a disk of another size, are refused.
	if err := reattachBlank(t, b, hDiskSize); !errors.Is(err, replica.ErrNotSameDisk) || !strings.Contains(err.Error(), "contents differ") {
		t.Errorf("ReattachDisk of a blank disk: %v, want ErrNotSameDisk", err)
	}
	if err := reattachBlank(t, b, hDiskSize/2); !errors.Is(err, replica.ErrDiskSize) {
		t.Errorf("ReattachDisk of a smaller disk: %v, want ErrDiskSize", err)
	}
	if st := b.node.State(); st.Disk != replica.Diskless || st.Conn != replica.StandAlone {
		t.Fatalf("b after the refusals: %+v, want Diskless and StandAlone", st)
	}

	// The same disk: only what changed is copied.
	recv := b.node.Status().NetRecvKiB
	if err := reattach(t, b); err != nil {
		t.Fatalf("ReattachDisk of the detached disk: %v", err)
	}
	b.waitState("b UpToDate", func(s replica.State) bool { return s.Disk == replica.UpToDate && s.Conn == replica.Connected })
	inSyncAndEqual(t, a, b)
	if got := b.node.Status().NetRecvKiB - recv; got >= hDiskSize>>10/2 {
		t.Errorf("the resync after --same-disk received %d KiB, want less than half the disk (%d KiB)", got, hDiskSize>>10)
	}

	// Detached again with nothing written meanwhile: nothing to copy.
	if _, err := b.node.DetachDisk(); err != nil {
		t.Fatal(err)
	}
	a.waitState("a alone", func(s replica.State) bool { return !s.Conn.Connected() })
	recv = b.node.Status().NetRecvKiB
	if err := reattach(t, b); err != nil {
		t.Fatalf("ReattachDisk with nothing written meanwhile: %v", err)
	}
	b.waitState("b UpToDate", func(s replica.State) bool { return s.Disk == replica.UpToDate && s.Conn == replica.Connected })
	inSyncAndEqual(t, a, b)
	if got := b.node.Status().NetRecvKiB - recv; got >= hDiskSize>>10/4 {
		t.Errorf("the resync with nothing written received %d KiB", got)
	}

	// Without --same-disk a detached disk is replaced and fully resynced
	// as before; and a restart ends what --same-disk may take back (the
	// metadata says Inconsistent from the detach on).
	if _, err := b.node.DetachDisk(); err != nil {
		t.Fatal(err)
	}
	a.waitState("a alone", func(s replica.State) bool { return !s.Conn.Connected() })
	attachResynced(t, b, a, a.image())
	if _, err := b.node.DetachDisk(); err != nil {
		t.Fatal(err)
	}
	b.crash()
	b.start()
	if err := reattach(t, b); !errors.Is(err, replica.ErrNotSameDisk) {
		t.Errorf("ReattachDisk after a restart: %v, want ErrNotSameDisk", err)
	}
	inSyncAndEqual(t, a, b)
}

// TestScenarioReattachSameDiskAfterFailover: the Primary that wrote while
// its peer's disk was detached starts a new data generation, so the disk
// taken back is the resync target even when no node is Primary any more and
// both bitmaps are dirty, where only the node ids would otherwise choose
// the source. The detached node is the one with the higher id, which that
// tie-break would pick.
func TestScenarioReattachSameDiskAfterFailover(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	if a.node.NodeID() > b.node.NodeID() { // make b the higher id's node
		if err := a.node.Demote(false); err != nil {
			t.Fatal(err)
		}
		b.waitState("a Secondary", func(s replica.State) bool { return s.PeerRole == replica.Secondary })
		a, b = b, a
		if err := a.node.Promote(false); err != nil {
			t.Fatal(err)
		}
	}
	a.write(0, pattern("before the detach", hDiskSize))
	if err := a.node.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	inSyncAndEqual(t, a, b)
	if _, err := b.node.DetachDisk(); err != nil {
		t.Fatal(err)
	}
	a.waitState("a alone", func(s replica.State) bool { return !s.Conn.Connected() })
	a.write(hDiskSize/4, pattern("written alone", 8*hBlock))
	if err := a.node.Demote(false); err != nil {
		t.Fatal(err)
	}
	b.node.MarkOutOfSync(hDiskSize/2, hBlock) // b's own dirty bit
	want := a.image()
	if err := reattach(t, b); err != nil {
		t.Fatalf("ReattachDisk: %v", err)
	}
	b.waitState("b UpToDate", func(s replica.State) bool { return s.Disk == replica.UpToDate && s.Conn == replica.Connected })
	inSyncAndEqual(t, a, b)
	if i := firstDiff(b.image(), want); i >= 0 {
		t.Fatalf("the disks hold the detached disk's old data at %d, not what a wrote", i)
	}
}

// TestScenarioReattachSameDiskPrimary: a Primary whose disk detach-disk
// took out stays Diskless and writes through its peer; the same disk taken
// back (attach-disk --same-disk) gets only the chunks written meanwhile,
// which the node marked, and the node is UpToDate with the peer's data. A
// blank disk is refused, and so is the old disk once the node was demoted:
// the peer, which got those writes as a Secondary, marked none of them.
func TestScenarioReattachSameDiskPrimary(t *testing.T) {
	a, b, want := disklessPair(t, nodeOpts{}, nodeOpts{})
	p := pattern("written while Diskless", 4*hBlock)
	copy(want[hDiskSize/2:], p)
	a.write(hDiskSize/2, p)
	if err := reattachBlank(t, a, hDiskSize); !errors.Is(err, replica.ErrNotSameDisk) {
		t.Errorf("ReattachDisk of a blank disk on the Primary: %v, want ErrNotSameDisk", err)
	}
	recv := a.node.Status().NetRecvKiB
	if err := reattach(t, a); err != nil {
		t.Fatalf("ReattachDisk on the Primary: %v", err)
	}
	a.waitState("a UpToDate", func(s replica.State) bool { return s.Disk == replica.UpToDate })
	if got := a.node.Status().NetRecvKiB - recv; got >= hDiskSize>>10/4 {
		t.Errorf("the copy after --same-disk received %d KiB, want the one chunk written meanwhile", got)
	}
	if i := firstDiff(a.image(), want); i >= 0 {
		t.Fatalf("the disk taken back differs from what was written at %d", i)
	}
	inSyncAndEqual(t, a, b)

	if _, err := a.node.DetachDisk(); err != nil {
		t.Fatal(err)
	}
	if err := a.node.Demote(false); err != nil {
		t.Fatal(err)
	}
	if err := reattach(t, a); !errors.Is(err, replica.ErrNotSameDisk) {
		t.Errorf("ReattachDisk after the demotion: %v, want ErrNotSameDisk", err)
	}
}
