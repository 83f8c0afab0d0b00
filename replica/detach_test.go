package replica_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/urbd/urbd/nbd"
	"github.com/urbd/urbd/replica"
)

// TestScenarioPrimaryDiskFailureDetaches: when the Primary's disk fails a
// write, the Primary detaches it (Diskless, as DRBD's on-io-error detach)
// and the application sees no error: that write, and every read, write and
// flush after it, is served by the UpToDate peer, which shows the node as
// Diskless. Without the peer the node's I/O fails (it has no copy) until the
// peer is back. Demoted, the node leaves the peer and refuses to reconnect;
// the peer is promoted; the node, restarted with a repaired disk, comes back
// Secondary and is fully resynced.
func TestScenarioPrimaryDiskFailureDetaches(t *testing.T) {
	o := nodeOpts{viaProxy: true}
	a, b := cleanPair(t, o, o)
	ctx := context.Background()
	before := pattern("written before the failure", 4*hBlock)
	a.write(0, before)

	a.disk.dead.Store(true) // the disk fails every call from now on
	after := pattern("written after the failure", 4*hBlock)
	if err := a.node.WriteAt(ctx, after, 8*hBlock, false); err != nil {
		t.Fatalf("the write the disk failed: %v, want it served by the peer", err)
	}
	st := a.node.State()
	if st.Disk != replica.Diskless || st.Role != replica.Primary || st.Conn != replica.Connected {
		t.Fatalf("after the disk error: %+v, want a Connected Diskless Primary", st)
	}
	if !strings.Contains(st.Reason, "disk detached") {
		t.Errorf("reason %q does not say the disk was detached", st.Reason)
	}
	a.waitEvent("local-io-error")
	b.waitState("the peer shown Diskless", func(s replica.State) bool { return s.PeerDisk == replica.Diskless })

	// Every request goes to the peer: writes (FUA too), flushes, reads.
	fua := pattern("fua", hBlock)
	if err := a.node.WriteAt(ctx, fua, 12*hBlock, true); err != nil {
		t.Fatalf("a FUA write while Diskless: %v", err)
	}
	if err := a.node.Flush(ctx); err != nil {
		t.Fatalf("a flush while Diskless: %v", err)
	}
	want := append(append(append(bytes.Clone(before), make([]byte, 4*hBlock)...), after...), fua...)
	got, err := a.readAt(0, len(want))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("reading back while Diskless: %v (equal %v)", err, bytes.Equal(got, want))
	}
	if !bytes.Equal(b.read(0, len(want)), want) {
		t.Fatal("the peer's disk does not hold what the Diskless Primary wrote")
	}
	if err := a.node.Verify(replica.VerifyRange{}); !errors.Is(err, replica.ErrNotUpToDate) {
		t.Errorf("verify on a Diskless node: %v, want ErrNotUpToDate", err)
	}
	if err := b.node.Promote(false); !errors.Is(err, replica.ErrPeerPrimary) {
		t.Errorf("promoting the peer of a Diskless Primary: %v, want ErrPeerPrimary", err)
	}

	// Without the peer nothing can serve the node's I/O.
	a.proxy.Cut.Store(true)
	b.proxy.Cut.Store(true)
	a.waitState("peer lost", func(s replica.State) bool { return !s.Conn.Connected() })
	if err := a.node.WriteAt(ctx, after, 16*hBlock, false); err == nil {
		t.Fatal("a write without disk and peer succeeded")
	}
	if _, err := a.readAt(0, hBlock); err == nil {
		t.Fatal("a read without disk and peer succeeded")
	}
	a.proxy.Cut.Store(false)
	b.proxy.Cut.Store(false)
	st = a.waitConn(replica.Connected)
	if st.Disk != replica.Diskless {
		t.Fatalf("reconnected as %v, want Diskless", st.Disk)
	}
	if got, err := a.readAt(8*hBlock, len(after)); err != nil || !bytes.Equal(got, after) {
		t.Fatalf("reading after the reconnect: %v", err)
	}
	a.write(16*hBlock, after)

	// Failover: the Diskless node steps down and leaves the peer.
	if err := a.node.Demote(false); err != nil {
		t.Fatalf("demote the Diskless Primary: %v", err)
	}
	if st := a.node.State(); st.Conn != replica.StandAlone || st.Role != replica.Secondary {
		t.Fatalf("after demotion: %+v, want a StandAlone Secondary", st)
	}
	if err := a.node.Connect(false); !errors.Is(err, replica.ErrNotUpToDate) {
		t.Fatalf("connect on a Diskless node: %v, want a refusal", err)
	}
	b.waitState("peer gone", func(s replica.State) bool { return !s.Conn.Connected() })
	if err := b.node.Promote(false); err != nil {
		t.Fatalf("promote the peer: %v", err)
	}
	b.write(20*hBlock, pattern("on the new Primary", hBlock))

	// Repaired, the node comes back Secondary and is fully resynced.
	a.stop()
	a.start()
	if st := a.node.State(); st.Role != replica.Secondary || st.Disk != replica.Inconsistent {
		t.Fatalf("restarted: %+v, want an Inconsistent Secondary", st)
	}
	inSyncAndEqual(t, b, a)
}

// TestScenarioPrimaryDiskFailureKeptWithoutPeer: a Primary detaches its disk
// only when an UpToDate peer holds the data and the metadata saying so is
// durable. StandAlone, or when the metadata cannot be written either (the
// whole machine failing), the disk's error reaches the application as
// before and the disk stays in service.
func TestScenarioPrimaryDiskFailureKeptWithoutPeer(t *testing.T) {
	ctx := context.Background()
	t.Run("StandAlone", func(t *testing.T) {
		a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
		if err := a.node.Disconnect(false); err != nil {
			t.Fatal(err)
		}
		b.waitState("disconnected", func(s replica.State) bool { return !s.Conn.Connected() })
		a.disk.failAt.Store(4*hBlock + 1)
		if err := a.node.WriteAt(ctx, pattern("x", hBlock), 4*hBlock, false); !errors.Is(err, errDiskFailed) {
			t.Fatalf("write: %v, want the disk's error", err)
		}
		if st := a.node.State(); st.Disk != replica.UpToDate {
			t.Fatalf("disk %v, want UpToDate", st.Disk)
		}
	})
	t.Run("metadata lost too", func(t *testing.T) {
		a, _ := cleanPair(t, nodeOpts{}, nodeOpts{})
		a.metaFS.dead.Store(true)
		a.disk.failAt.Store(4*hBlock + 1)
		if err := a.node.WriteAt(ctx, pattern("x", hBlock), 4*hBlock, false); !errors.Is(err, errDiskFailed) {
			t.Fatalf("write: %v, want the disk's error", err)
		}
		if st := a.node.State(); st.Disk != replica.UpToDate {
			t.Fatalf("disk %v, want UpToDate", st.Disk)
		}
		a.metaFS.dead.Store(false)
	})
}

// TestScenarioPrimaryDiskFailurePassOn: with on-io-error pass_on the
// Primary keeps its disk: the failed write gets the disk's error, the disk
// stays UpToDate, and the range is resynced so both disks end the same.
func TestScenarioPrimaryDiskFailurePassOn(t *testing.T) {
	o := nodeOpts{onIOError: replica.IOPassOn}
	a, b := cleanPair(t, o, o)
	a.disk.failAt.Store(4*hBlock + 1)
	if err := a.node.WriteAt(context.Background(), pattern("x", hBlock), 4*hBlock, false); !errors.Is(err, errDiskFailed) {
		t.Fatalf("write: %v, want the disk's error", err)
	}
	if st := a.node.State(); st.Disk != replica.UpToDate {
		t.Fatalf("disk %v, want UpToDate", st.Disk)
	}
	a.write(8*hBlock, pattern("after", hBlock))
	inSyncAndEqual(t, a, b)
}

func TestParseOnIOError(t *testing.T) {
	for in, want := range map[string]replica.OnIOError{"": replica.IODetach, "detach": replica.IODetach, "pass_on": replica.IOPassOn, "pass-on": replica.IOPassOn} {
		got, err := replica.ParseOnIOError(in)
		if err != nil || got != want {
			t.Errorf("ParseOnIOError(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := replica.ParseOnIOError("call-local-io-error"); err == nil || !strings.Contains(err.Error(), "use detach or pass_on") {
		t.Errorf("ParseOnIOError of an unknown name: %v", err)
	}
	if replica.IOPassOn.String() != "pass_on" {
		t.Errorf("IOPassOn.String() = %q", replica.IOPassOn.String())
	}
}

// TestScenarioPrimaryFlushFailureDetaches: a failed fdatasync on the Primary
// (the kernel may have dropped written pages) detaches the disk too, once
// the peer made the same writes durable: the FLUSH succeeds. A crash of the
// Diskless node then brings it back as a Secondary that the peer fully
// resyncs.
func TestScenarioPrimaryFlushFailureDetaches(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	data := pattern("flushed on the peer", 2*hBlock)
	a.write(0, data)
	a.disk.failFlush.Store(true)
	if err := a.node.Flush(context.Background()); err != nil {
		t.Fatalf("flush: %v, want it answered by the peer's", err)
	}
	if st := a.node.State(); st.Disk != replica.Diskless {
		t.Fatalf("disk %v after a failed flush, want Diskless", st.Disk)
	}
	if got, err := a.readAt(0, len(data)); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(b.read(0, len(data)), data) {
		t.Fatal("the peer lacks the data")
	}

	// A crash keeps what detach saved, not what a clean stop would: the
	// node comes back an Inconsistent Secondary without a generation and
	// is fully resynced from the peer, never the other way round.
	a.crash()
	a.start()
	if st := a.node.State(); st.Role != replica.Secondary || st.Disk != replica.Inconsistent {
		t.Fatalf("after a crash while Diskless: %+v, want an Inconsistent Secondary", st)
	}
	inSyncAndEqual(t, b, a)
	if !bytes.Equal(a.read(0, len(data)), data) {
		t.Fatal("the resync lost the data")
	}
}

// TestScenarioPrimaryDiskDiesUnderLoad: with protocols A, B and C, writers
// keep writing (some with FUA) while the Primary's disk dies: no write
// fails, and afterwards every block reads back right through the Diskless
// Primary and is on the peer's disk.
func TestScenarioPrimaryDiskDiesUnderLoad(t *testing.T) {
	for _, proto := range []byte{'A', 'B', 'C'} {
		t.Run(string(proto), func(t *testing.T) {
			o := nodeOpts{protocol: proto}
			a, b := cleanPair(t, o, o)
			ctx := context.Background()
			const writers, each = 4, 40
			var wg sync.WaitGroup
			var written atomic.Int64
			errs := make(chan error, writers)
			for w := range writers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range each {
						off := int64(w*each+i) * hBlock
						if err := a.node.WriteAt(ctx, pattern(fmt.Sprintf("%d/%d", w, i), hBlock), off, i%5 == 0); err != nil {
							errs <- fmt.Errorf("write %d/%d: %w", w, i, err)
							return
						}
						written.Add(1)
					}
				}()
			}
			a.waitFor("writes before the failure", func() bool { return written.Load() >= writers*each/4 })
			a.disk.dead.Store(true)
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			if err := a.node.Flush(ctx); err != nil {
				t.Fatalf("flush: %v", err)
			}
			if st := a.node.State(); st.Disk != replica.Diskless {
				t.Fatalf("disk %v, want Diskless", st.Disk)
			}
			for w := range writers {
				for i := range each {
					off := int64(w*each+i) * hBlock
					want := pattern(fmt.Sprintf("%d/%d", w, i), hBlock)
					if got, err := a.readAt(off, hBlock); err != nil || !bytes.Equal(got, want) {
						t.Fatalf("block %d/%d read through the Primary: %v (equal %v)", w, i, err, bytes.Equal(got, want))
					}
					if !bytes.Equal(b.read(off, hBlock), want) {
						t.Fatalf("block %d/%d is not on the peer's disk", w, i)
					}
				}
			}
		})
	}
}

// TestScenarioDisklessPrimaryDoesNotFence: a Diskless Primary that loses
// its peer does not run the fence-peer handler: the peer holds the only
// copy of the data, and this node cannot write without it, so there is
// nothing to protect and fencing (outdating or powering off the peer) would
// only lose the data. Its writes fail at once instead of being held.
func TestScenarioDisklessPrimaryDoesNotFence(t *testing.T) {
	fh := newFenceHandler()
	o := nodeOpts{viaProxy: true, fencing: replica.FenceResourceAndStonith, fence: fh}
	a, b := cleanPair(t, o, nodeOpts{viaProxy: true})
	a.disk.dead.Store(true)
	a.write(0, pattern("detaches", hBlock))
	if st := a.node.State(); st.Disk != replica.Diskless {
		t.Fatalf("disk %v, want Diskless", st.Disk)
	}
	a.proxy.Cut.Store(true)
	b.proxy.Cut.Store(true)
	a.waitState("peer lost", func(s replica.State) bool { return !s.Conn.Connected() })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := a.node.WriteAt(ctx, pattern("alone", hBlock), hBlock, false); err == nil || ctx.Err() != nil {
		t.Fatalf("a write of a Diskless Primary without its peer: %v (want a prompt error)", err)
	}
	select {
	case <-fh.calls:
		t.Fatal("the Diskless Primary ran the fence-peer handler")
	case <-time.After(500 * time.Millisecond):
	}
	a.proxy.Cut.Store(false)
	b.proxy.Cut.Store(false)
	a.waitConn(replica.Connected)
}

// TestScenarioDetachDisk: the operator takes a working disk out of service
// (urbd detach-disk) to replace it. The Primary goes Diskless: its I/O goes
// to the peer, the old disk is written no more, no local-io-error handler
// runs, the peer refuses to detach the disk that is now the only one, and
// attach-disk takes the new disk back. The Secondary goes Diskless
// and StandAlone while the Primary goes on alone: a blank disk its daemon
// restarts on after a crash is fully resynced (the metadata no longer
// claims the old data), and so is a new disk attached online.
func TestScenarioDetachDisk(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	want := make([]byte, hDiskSize)
	copy(want, pattern("before the detach", hDiskSize/2))
	a.write(0, want[:hDiskSize/2])

	old, err := a.node.DetachDisk()
	if err != nil {
		t.Fatalf("DetachDisk on the Primary: %v", err)
	}
	if old != nbd.Backend(a.disk) {
		t.Errorf("DetachDisk returned %v, want the node's disk", old)
	}
	st := a.node.State()
	if st.Disk != replica.Diskless || st.Conn != replica.Connected || !strings.Contains(st.Reason, "detached by operator") {
		t.Fatalf("the Primary after DetachDisk: %+v, want a connected Diskless Primary", st)
	}
	if _, err := a.node.DetachDisk(); !errors.Is(err, replica.ErrDiskless) {
		t.Errorf("a second DetachDisk: %v, want ErrDiskless", err)
	}
	b.waitState("b sees the Primary Diskless", func(s replica.State) bool { return s.PeerDisk == replica.Diskless })
	// The Secondary's disk is the Primary's only data now: not detached.
	if _, err := b.node.DetachDisk(); !errors.Is(err, replica.ErrNoDataAccess) {
		t.Errorf("DetachDisk on the Secondary of a Diskless Primary: %v, want ErrNoDataAccess", err)
	}
	if st := b.node.State(); st.Disk != replica.UpToDate || st.Conn != replica.Connected {
		t.Fatalf("the Secondary after the refused DetachDisk: %+v, want UpToDate and Connected", st)
	}
	written := a.disk.writesDone.Load()
	p := pattern("written while Diskless", 4*hBlock)
	copy(want[hDiskSize/2:], p)
	a.write(hDiskSize/2, p)
	if got, err := a.readAt(0, hDiskSize); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("reading through the peer: %v (equal %v)", err, bytes.Equal(got, want))
	}
	if n := a.disk.writesDone.Load() - written; n != 0 {
		t.Errorf("%d writes reached the detached disk", n)
	}
	if a.sawEvent("local-io-error") {
		t.Error("the local-io-error handler ran for a detach by the operator")
	}
	attach(t, a, replaceDisk(t, a, hDiskSize))
	a.waitState("a UpToDate", func(s replica.State) bool { return s.Disk == replica.UpToDate })
	inSyncAndEqual(t, a, b)

	// The Secondary, detached while StandAlone, its daemon killed and
	// restarted on a blank disk: a full resync, as the metadata says.
	if err := b.node.Disconnect(false); err != nil {
		t.Fatal(err)
	}
	if _, err := b.node.DetachDisk(); err != nil {
		t.Fatal(err)
	}
	b.crash()
	replaceDisk(t, b, hDiskSize).Close()
	b.start()
	b.waitState("b UpToDate", func(s replica.State) bool { return s.Disk == replica.UpToDate && s.Conn == replica.Connected })
	inSyncAndEqual(t, a, b)
	if i := firstDiff(b.image(), want); i >= 0 {
		t.Fatalf("b's blank disk after the restart differs from what was written at %d", i)
	}

	// Detached while connected: Diskless and StandAlone; the Primary goes
	// on alone, and a new disk attached online is fully resynced.
	if _, err := b.node.DetachDisk(); err != nil {
		t.Fatalf("DetachDisk on the Secondary: %v", err)
	}
	if st := b.node.State(); st.Disk != replica.Diskless || st.Conn != replica.StandAlone {
		t.Fatalf("the Secondary after DetachDisk: %+v, want Diskless and StandAlone", st)
	}
	a.waitState("a alone", func(s replica.State) bool { return !s.Conn.Connected() })
	p = pattern("written while the Secondary had no disk", 4*hBlock)
	copy(want[hDiskSize-4*hBlock:], p)
	a.write(hDiskSize-4*hBlock, p)
	attachResynced(t, b, a, want)
}

// TestScenarioDetachDiskKeepsEarlyAnsweredWrites: with protocol A a write
// is answered once this disk has it, before the peer does. Detaching the
// disk must not leave such a write on the detached disk only: DetachDisk
// waits until the peer made it durable, and then the peer serves it.
func TestScenarioDetachDiskKeepsEarlyAnsweredWrites(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{protocol: 'A'}, nodeOpts{protocol: 'A'})
	held := b.disk.holdWrites()
	p := pattern("answered before the peer wrote it", hBlock)
	a.write(0, p) // protocol A: answered while the peer's disk holds it
	<-held
	res := make(chan error, 1)
	go func() {
		_, err := a.node.DetachDisk()
		res <- err
	}()
	notReturned(t, "DetachDisk while the peer has not written an answered write", res)
	b.disk.releaseWrites()
	if err := recvErr(t, "DetachDisk", res); err != nil {
		t.Fatal(err)
	}
	if got, err := a.readAt(0, hBlock); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("reading the early-answered write through the peer: %v (equal %v)", err, bytes.Equal(got, p))
	}
}

// TestScenarioDisklessPrimaryRefusesPeerPromotedMeanwhile: a Diskless
// Primary (detach-disk) whose peer was promoted and written while the two
// were apart does not connect to it again, on either side, and both say
// why: its application never saw the peer's new data, and its writes would
// land on top of it (DRBD: "Can only connect to data with current UUID").
// --same-disk is refused too. Demoting it and attaching its disk there
// brings it the peer's data, the writes made while apart included.
func TestScenarioDisklessPrimaryRefusesPeerPromotedMeanwhile(t *testing.T) {
	a, b, want := disklessPair(t, nodeOpts{viaProxy: true}, nodeOpts{viaProxy: true})
	p := pattern("written on the peer while apart", hBlock)
	copy(want[hDiskSize/4:], p)
	writeWhileApart(t, a, b, hDiskSize/4, p)
	a.proxy.Cut.Store(false)
	b.proxy.Cut.Store(false)
	for _, x := range []*tnode{a, b} {
		st := x.waitState("the connection refused", func(s replica.State) bool { return s.Conn == replica.StandAlone })
		if !strings.Contains(st.Reason, "is a Diskless Primary on data generation") {
			t.Errorf("%s's reason: %q, want the Diskless Primary's generation named", x.label, st.Reason)
		}
	}
	if st := a.node.State(); st.Disk != replica.Diskless || st.Role != replica.Primary {
		t.Fatalf("after the refusal: %v %v, want a Diskless Primary", st.Role, st.Disk)
	}
	if err := reattach(t, a); !errors.Is(err, replica.ErrNotSameDisk) && !errors.Is(err, replica.ErrNotConnected) {
		t.Errorf("--same-disk after the refusal: %v, want a refusal", err)
	}

	if err := a.node.Demote(false); err != nil {
		t.Fatal(err)
	}
	attach(t, a, replaceDisk(t, a, hDiskSize))
	if err := b.node.Connect(false); err != nil {
		t.Fatal(err)
	}
	inSyncAndEqual(t, a, b)
	if i := firstDiff(b.image(), want); i >= 0 {
		t.Fatalf("the peer's data differs from what was written at %d", i)
	}
}

// TestScenarioDisklessPrimarySuspendedRefusedDemotes: with --on-peer-loss
// suspend, a Diskless Primary refused by its peer (promoted and written
// while apart) holds its writes, and `urbd secondary --force` ends them with
// an error instead of hanging: the application gets no data from a peer of
// another generation, and the operator gets the node back.
func TestScenarioDisklessPrimarySuspendedRefusedDemotes(t *testing.T) {
	a, b, _ := disklessPair(t, nodeOpts{viaProxy: true, suspend: true}, nodeOpts{viaProxy: true})
	writeWhileApart(t, a, b, 0, pattern("written on the peer while apart", hBlock))
	held := a.asyncWrite(hBlock, pattern("held while refused", hBlock))
	a.proxy.Cut.Store(false)
	b.proxy.Cut.Store(false)
	a.waitState("the connection refused", func(s replica.State) bool { return s.Conn == replica.StandAlone })
	select {
	case err := <-held:
		t.Fatalf("a write on the suspended Diskless Primary ended before the operator acted: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := a.node.Demote(true); err != nil {
		t.Fatalf("secondary --force: %v", err)
	}
	if err := recvErr(t, "the held write", held); err == nil {
		t.Fatal("the held write succeeded without a disk or a peer of its generation")
	}
	if st := a.node.State(); st.Role != replica.Secondary || st.Disk != replica.Diskless {
		t.Fatalf("after secondary --force: %v %v, want a Diskless Secondary", st.Role, st.Disk)
	}
}

// TestScenarioDisklessPrimaryPeerRestarts: the Secondary of a Diskless
// Primary leaves on purpose (urbd down for an upgrade, urbd disconnect
// --force: without it, a disconnect of either node is refused) and comes
// back. Its disk holds the Primary's only data, which the Primary
// cannot change without it, so it stays UpToDate instead of leaving
// Outdated as it does from a Primary with a disk: the two connect again and
// the Primary's I/O goes on through it, with every write kept.
func TestScenarioDisklessPrimaryPeerRestarts(t *testing.T) {
	a, b, want := disklessPair(t, nodeOpts{}, nodeOpts{})
	b.waitState("b sees the Primary Diskless", func(s replica.State) bool { return s.PeerDisk == replica.Diskless })
	p := pattern("written while Diskless", 2*hBlock)
	copy(want[hBlock:], p)
	a.write(hBlock, p)

	b.stop() // urbd down
	if st := b.node.State(); st.Disk != replica.UpToDate {
		t.Fatalf("the Secondary left its Diskless Primary %v, want UpToDate", st.Disk)
	}
	a.waitState("peer gone", func(s replica.State) bool { return !s.Conn.Connected() })
	b.start()
	a.waitConn(replica.Connected)
	p = pattern("written after the restart", hBlock)
	copy(want[3*hBlock:], p)
	a.write(3*hBlock, p)

	// A disconnect would cut the Primary off its data: refused without
	// --force, on either node.
	for _, x := range []*tnode{a, b} {
		if err := x.node.Disconnect(false); !errors.Is(err, replica.ErrNoDataAccess) {
			t.Errorf("%s: Disconnect with a Diskless Primary: %v, want ErrNoDataAccess", x.label, err)
		}
	}
	if st := b.node.State(); st.Conn != replica.Connected {
		t.Fatalf("after the refused disconnects: %v, want Connected", st.Conn)
	}
	if err := b.node.Disconnect(true); err != nil {
		t.Fatal(err)
	}
	if st := b.node.State(); st.Disk != replica.UpToDate {
		t.Fatalf("the Secondary disconnected from its Diskless Primary %v, want UpToDate", st.Disk)
	}
	a.waitState("peer gone", func(s replica.State) bool { return !s.Conn.Connected() })
	if err := b.node.Connect(false); err != nil {
		t.Fatal(err)
	}
	a.waitConn(replica.Connected)
	if got, err := a.readAt(0, hDiskSize); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("reading through the peer after it came back: %v (equal %v)", err, bytes.Equal(got, want))
	}
}

// disklessPair starts a pair with the options given, fills the Primary a's
// disk, waits until b holds the same data, and detaches a's disk (urbd
// detach-disk): a is a Diskless Primary whose I/O goes to b. want is the
// data written.
func disklessPair(t *testing.T, oa, ob nodeOpts) (a, b *tnode, want []byte) {
	t.Helper()
	a, b = cleanPair(t, oa, ob)
	want = pattern("before the detach", hDiskSize)
	a.write(0, want)
	inSyncAndEqual(t, a, b)
	if _, err := a.node.DetachDisk(); err != nil {
		t.Fatal(err)
	}
	return a, b, want
}

// writeWhileApart cuts the link between a and b (the pair runs viaProxy),
// waits until both saw it go, and has b promoted, write p at off and demoted
// again: b's data is then of a generation a never saw.
func writeWhileApart(t *testing.T, a, b *tnode, off int64, p []byte) {
	t.Helper()
	a.proxy.Cut.Store(true)
	b.proxy.Cut.Store(true)
	a.waitState("peer lost", func(s replica.State) bool { return !s.Conn.Connected() })
	b.waitState("peer lost", func(s replica.State) bool { return !s.Conn.Connected() })
	if err := b.node.Promote(false); err != nil {
		t.Fatal(err)
	}
	b.write(off, p)
	if err := b.node.Demote(false); err != nil {
		t.Fatal(err)
	}
}
