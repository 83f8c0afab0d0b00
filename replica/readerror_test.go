package replica_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/urbd/urbd/protocol"
	"github.com/urbd/urbd/replica"
	"github.com/urbd/urbd/status"
)

// readAt reads through the node (as the NBD server does for a client).
func (x *tnode) readAt(off int64, n int) ([]byte, error) {
	p := make([]byte, n)
	err := x.node.ReadAt(context.Background(), p, off)
	return p, err
}

// TestScenarioReadErrorServedFromPeer: a block the Primary's disk cannot read
// is read from the connected, UpToDate peer, as a mirror serves a bad sector
// from its other half; the data is written back, so the next read is local
// again; the local-io-error handler is told. Reads around the bad block and
// one spanning it are served too.
func TestScenarioReadErrorServedFromPeer(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	data := pattern("on both disks", 8*hBlock)
	a.write(16*hBlock, data)
	a.disk.setBad(19*hBlock, hBlock)

	got, err := a.readAt(19*hBlock, hBlock)
	if err != nil {
		t.Fatalf("reading the bad block: %v", err)
	}
	if !bytes.Equal(got, data[3*hBlock:4*hBlock]) {
		t.Fatal("the bad block read from the peer holds the wrong data")
	}
	if a.disk.readErrors.Load() != 1 {
		t.Fatalf("%d local read errors, want 1", a.disk.readErrors.Load())
	}
	if a.disk.isBad() {
		t.Fatal("the block read from the peer was not written back")
	}
	a.waitEvent("local-io-error")

	// Written back: the whole range reads locally now.
	got, err = a.readAt(16*hBlock, 8*hBlock)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("reading the range after the repair: %v (equal %v)", err, bytes.Equal(got, data))
	}
	if a.disk.readErrors.Load() != 1 {
		t.Fatal("the repaired block failed again")
	}

	// A read spanning a bad block is served whole.
	a.disk.setBad(21*hBlock, hBlock)
	got, err = a.readAt(20*hBlock, 3*hBlock)
	if err != nil || !bytes.Equal(got, data[4*hBlock:7*hBlock]) {
		t.Fatalf("a read spanning a bad block: %v", err)
	}
	inSyncAndEqual(t, a, b)
}

// TestScenarioReadErrorNotServedWhenPeerDiffers: the peer serves a read only
// when its copy is the one the Primary's disk should hold. Without a
// connection, and when the peer's own bitmap marks the range (its data may
// be stale), the Primary's read error reaches the client.
func TestScenarioReadErrorNotServedWhenPeerDiffers(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	a.write(4*hBlock, pattern("x", hBlock))
	a.disk.setBad(4*hBlock, hBlock)

	b.node.MarkOutOfSync(4*hBlock, hBlock)
	if _, err := a.readAt(4*hBlock, hBlock); !errors.Is(err, errDiskFailed) {
		t.Fatalf("read of a block the peer has marked: %v, want the local error", err)
	}
	if !a.disk.isBad() {
		t.Fatal("the block was written back from a peer that refused it")
	}
	if c := a.node.State().Conn; c != replica.Connected {
		t.Fatalf("the refused read cost the connection: %v", c)
	}

	if err := b.node.Disconnect(false); err != nil {
		t.Fatal(err)
	}
	a.waitConn(replica.WFConnection)
	if _, err := a.readAt(4*hBlock, hBlock); !errors.Is(err, errDiskFailed) {
		t.Fatalf("read without a peer: %v, want the local error", err)
	}
}

// TestScenarioReadFromPeerSeesEarlierWrites: with protocol A a write is
// answered before the peer applied it; a read served from the peer right
// after must still return that write, not what the peer's disk held before
// (the Read follows the write on the data stream and in the peer's apply
// order).
func TestScenarioReadFromPeerSeesEarlierWrites(t *testing.T) {
	o := nodeOpts{protocol: 'A'}
	a, b := cleanPair(t, o, o)
	a.write(8*hBlock, pattern("old", hBlock))
	b.waitFor("the old data applied", func() bool { return bytes.Equal(b.read(8*hBlock, hBlock), pattern("old", hBlock)) })

	b.disk.holdWrites()
	newer := pattern("newer, answered before the peer wrote it", hBlock)
	a.write(8*hBlock, newer)
	a.disk.setBad(8*hBlock, hBlock)
	type result struct {
		p   []byte
		err error
	}
	res := make(chan result, 1)
	go func() {
		p, err := a.readAt(8*hBlock, hBlock)
		res <- result{p, err}
	}()
	select {
	case r := <-res:
		t.Fatalf("the read returned (%v) while the peer had not applied the write before it", r.err)
	case <-time.After(300 * time.Millisecond):
	}
	b.disk.releaseWrites()
	r := <-res
	if r.err != nil {
		t.Fatal(r.err)
	}
	if !bytes.Equal(r.p, newer) {
		t.Fatal("the read from the peer returned data older than a write answered before it")
	}
	inSyncAndEqual(t, a, b)
}

// TestStatusShowsProtocolVersion: the status file's first line names the
// peer protocol version the node speaks.
func TestStatusShowsProtocolVersion(t *testing.T) {
	if status.ProtoVersion != protocol.Version {
		t.Fatalf("status shows proto:%d, the peer protocol is version %d", status.ProtoVersion, protocol.Version)
	}
}

// TestScenarioResyncSourceReadErrorStops: a SyncSource whose disk cannot
// read a block it must copy stops the resync and goes StandAlone, naming the
// error, instead of reconnecting and failing at the same block forever:
// nothing else holds that block's data. The local-io-error handler runs.
// Once the disk reads again, connect finishes the resync.
func TestScenarioResyncSourceReadErrorStops(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	if err := b.node.Disconnect(false); err != nil {
		t.Fatal(err)
	}
	a.waitConn(replica.WFConnection)
	a.write(0, pattern("written while apart", 64*hBlock))
	a.disk.setBad(40*hBlock, hBlock)
	reconnect(t, b)

	st := a.waitState("a StandAlone after its resync read failed", func(s replica.State) bool { return s.Conn == replica.StandAlone })
	if !strings.Contains(st.Reason, "local disk error") || !strings.Contains(st.Reason, errDiskFailed.Error()) {
		t.Fatalf("the source's reason does not name the read error: %q", st.Reason)
	}
	if st.Disk != replica.UpToDate || st.Role != replica.Primary {
		t.Fatalf("the source after its read error: %+v, want an UpToDate Primary", st)
	}
	a.waitEvent("local-io-error")
	reads := a.disk.readErrors.Load()
	time.Sleep(500 * time.Millisecond) // room for a reconnect that should not come
	if c := a.node.State().Conn; c != replica.StandAlone {
		t.Fatalf("a is %v: it reconnected without the operator", c)
	}
	if a.disk.readErrors.Load() != reads {
		t.Fatal("the source read the bad block again without the operator")
	}
	if bs := b.node.State(); bs.Disk == replica.UpToDate {
		t.Fatalf("the target is UpToDate without the block the source could not read: %+v", bs)
	}

	a.disk.setBad(0, 0)
	reconnect(t, a)
	inSyncAndEqual(t, a, b)
}

// TestScenarioVerifyReadErrorIsReported: an online verify on a Primary whose
// disk cannot read a block that the peer cannot serve either (its copy is
// marked stale) stops, and the status says so with the error (not
// "finished"); the nodes stay Connected.
func TestScenarioVerifyReadErrorIsReported(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	a.disk.setBad(3*hBlock, hBlock)
	// The block goes stale on the peer once it verifies: a Connected
	// Secondary with blocks marked would reconnect to resync them first.
	held := a.disk.hangReads()
	if err := a.node.Verify(replica.VerifyRange{}); err != nil {
		t.Fatal(err)
	}
	<-held
	b.waitState("verifying", func(s replica.State) bool { return s.Conn == replica.VerifyT })
	b.node.MarkOutOfSync(3*hBlock, hBlock)
	a.disk.releaseReads()
	st := a.waitState("verify over", func(s replica.State) bool { return s.Conn == replica.Connected })
	if !strings.Contains(st.Reason, "online verify stopped") || !strings.Contains(st.Reason, errDiskFailed.Error()) {
		t.Fatalf("reason after a verify whose read failed: %q", st.Reason)
	}
}

// TestScenarioVerifyRewritesUnreadableBlocks: an online verify on the
// Primary scrubs both disks, as md's check does. A block its own disk
// cannot read is read from the peer and written back; a block the peer's
// disk cannot read is answered as unreadable, marked, and rewritten by the
// resync. Neither ends the session; both run the local-io-error handler,
// and the reason counts them.
func TestScenarioVerifyRewritesUnreadableBlocks(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	data := pattern("on both disks", 16*hBlock)
	a.write(0, data)
	a.disk.setBad(3*hBlock, hBlock)
	b.disk.setBad(9*hBlock, hBlock)
	a.verifyFinds(replica.VerifyRange{}, "online verify finished: 1 blocks differ, 1 unreadable here (1 rewritten from the peer), 1 unreadable on the peer")
	if v := a.node.Status().LastVerify; v == nil || !v.Complete || v.Differing != 1 || v.Unreadable != 2 {
		t.Errorf("status after the verify: last verify %+v, want 1 differing and 2 unreadable", v)
	}
	inSyncAndEqual(t, a, b)
	if a.disk.isBad() || b.disk.isBad() {
		t.Fatalf("unreadable blocks left: a %v, b %v", a.disk.isBad(), b.disk.isBad())
	}
	a.waitEvent("local-io-error")
	b.waitEvent("local-io-error")
	if !bytes.Equal(b.image()[:16*hBlock], data) {
		t.Fatal("the peer's disk does not hold the data after the verify")
	}
	if a.node.State().Conn != replica.Connected || b.node.State().Conn != replica.Connected {
		t.Fatal("the nodes are not Connected after the verify")
	}
}

// TestScenarioVerifyOnSecondaryRepairsBothDisks: a verify run on the
// Secondary scrubs both disks too. A block the Primary cannot read is
// counted, not marked (that would make the Primary's copy look newer than
// the Secondary's, the one good copy), and the Primary rewrites it from the
// Secondary as it answers. A block the Secondary cannot read is marked, so
// the resync copies it from the Primary.
func TestScenarioVerifyOnSecondaryRepairsBothDisks(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	data := pattern("on both disks", 16*hBlock)
	a.write(0, data)
	a.disk.setBad(5*hBlock, hBlock)
	b.verifyFinds(replica.VerifyRange{}, "online verify finished: 0 blocks differ, 1 unreadable on the peer")
	a.waitFor("the Primary rewriting its unreadable block", func() bool {
		return strings.Contains(a.logs.String(), "rewrote unreadable blocks from the peer")
	})
	if a.disk.isBad() {
		t.Fatal("the Primary says it rewrote its unreadable block, and the block is still bad")
	}
	if got, err := a.readAt(5*hBlock, hBlock); err != nil || !bytes.Equal(got, data[5*hBlock:6*hBlock]) {
		t.Fatalf("the Primary's read of its rewritten block: %v", err)
	}
	if a.disk.readErrors.Load() != 2 {
		t.Errorf("%d local read errors on the Primary, want 2 (the checksums' read of the chunk and of the block)", a.disk.readErrors.Load())
	}

	b.disk.setBad(12*hBlock, hBlock)
	b.verifyFinds(replica.VerifyRange{}, "online verify finished: 1 blocks differ, 1 unreadable here")
	b.waitFor("the resync rewriting b's unreadable block", func() bool { return !b.disk.isBad() })
	inSyncAndEqual(t, a, b)
}

// TestScenarioReadFromPeerNeverOverwritesNewerWrite: the data read from the
// peer is written back to the Primary's disk, and must never land over a
// write to the same blocks issued while the peer's answer was on its way
// (the read holds the range lock until the write-back is done). Otherwise
// the Primary's disk would keep the older data, the peer the newer, and
// nothing would mark the block.
func TestScenarioReadFromPeerNeverOverwritesNewerWrite(t *testing.T) {
	o := nodeOpts{protocol: 'A'}
	a, b := cleanPair(t, o, o)
	b.disk.holdWrites()
	a.write(8*hBlock, pattern("v1, still on its way to the peer", hBlock))
	a.disk.setBad(8*hBlock, hBlock)
	read := make(chan error, 1)
	go func() {
		_, err := a.readAt(8*hBlock, hBlock)
		read <- err
	}()
	a.waitFor("the read sent to the peer", func() bool { return a.disk.readErrors.Load() == 1 })
	time.Sleep(50 * time.Millisecond) // the Read leaves before the write below
	newer := pattern("v2, written while the read waited", hBlock)
	wrote := a.asyncWrite(8*hBlock, newer)
	time.Sleep(100 * time.Millisecond)
	b.disk.releaseWrites()
	if err := <-read; err != nil {
		t.Fatalf("the read: %v", err)
	}
	if err := recvErr(t, "the newer write", wrote); err != nil {
		t.Fatal(err)
	}
	inSyncAndEqual(t, a, b)
	if !bytes.Equal(a.read(8*hBlock, hBlock), newer) {
		t.Fatal("the Primary's disk lost the newer write to the write-back")
	}
}
