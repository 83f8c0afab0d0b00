package replica_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/urbd/urbd/nbd"
	"github.com/urbd/urbd/protocol"
	"github.com/urbd/urbd/replica"
	"github.com/urbd/urbd/status"
)

// TestScenarioAssumeCleanConnectPromoteWrite: two assume-clean nodes connect
// without a resync, one is promoted, and its writes land on both disks before
// WriteAt returns (protocol C).
func TestScenarioAssumeCleanConnectPromoteWrite(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	st := a.node.State()
	if st.Role != replica.Primary || st.PeerRole != replica.Secondary || st.Disk != replica.UpToDate || st.PeerDisk != replica.UpToDate {
		t.Fatalf("a after promote: %+v", st)
	}
	if st := b.node.State(); st.Role != replica.Secondary || st.Disk != replica.UpToDate {
		t.Fatalf("b after a's promote: %+v", st)
	}
	// The status says what changed on the peer.
	b.waitState("reason naming a's promotion", func(s replica.State) bool {
		return s.Reason == "the peer was promoted to Primary"
	})
	for i := range 8 {
		off := int64(i) * 3 * hBlock
		p := pattern(fmt.Sprintf("w%d", i), 2*hBlock)
		a.write(off, p)
		if got := b.read(off, len(p)); string(got) != string(p) {
			t.Fatalf("write %d at %d acknowledged but not on the secondary's disk", i, off)
		}
	}
	sameDisks(t, a, b)
	// The secondary serves no writes of its own.
	for _, err := range []error{
		b.node.WriteAt(context.Background(), pattern("x", hBlock), 0, false),
		b.node.Trim(context.Background(), 0, hBlock, false),
		b.node.WriteZeroes(context.Background(), 0, hBlock, false, false),
	} {
		if !errors.Is(err, nbd.ErrReadOnly) {
			t.Fatalf("write on the secondary: %v, want nbd.ErrReadOnly", err)
		}
	}
	if s := a.node.Status(); s.OutOfSyncKiB != 0 || s.NetSendKiB < 8*2*hBlock>>10 {
		t.Fatalf("a status after mirrored writes: oos %d ns %d", s.OutOfSyncKiB, s.NetSendKiB)
	}
	if s := b.node.Status(); s.NetRecvKiB < 8*2*hBlock>>10 || s.DiskWriteKiB < 8*2*hBlock>>10 {
		t.Fatalf("b status after mirrored writes: nr %d dw %d", s.NetRecvKiB, s.DiskWriteKiB)
	}
}

// TestScenarioFreshPairForcedPromoteSyncsPeer: two fresh nodes (no
// assume-clean) connect Inconsistent/Inconsistent without copying anything;
// promotion without --force is refused with ErrNotUpToDate and a hint. With
// --force the node's existing data wins: it becomes an UpToDate Primary and
// a full resync makes the peer UpToDate and identical.
func TestScenarioFreshPairForcedPromoteSyncsPeer(t *testing.T) {
	a, b := newPair(t, nodeOpts{}, nodeOpts{})
	// a's disk already holds data (say, a file system made before urbd).
	a.poke(0, pattern("preexisting", hDiskSize/2))
	a.start()
	b.start()
	st := a.waitConn(replica.Connected)
	if st.Disk != replica.Inconsistent || st.PeerDisk != replica.Inconsistent {
		t.Fatalf("fresh pair: %+v", st)
	}
	err := a.node.Promote(false)
	if !errors.Is(err, replica.ErrNotUpToDate) || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("promote Inconsistent without force: %v, want ErrNotUpToDate with a --force hint", err)
	}
	if st := a.node.State(); st.Role != replica.Secondary {
		t.Fatalf("refused promotion changed the role: %+v", st)
	}
	if err := a.node.Promote(true); err != nil {
		t.Fatalf("promote --force: %v", err)
	}
	if st := a.node.State(); st.Role != replica.Primary || st.Disk != replica.UpToDate {
		t.Fatalf("after promote --force: %+v", st)
	}
	inSyncAndEqual(t, a, b)
	if st := b.node.State(); st.PeerRole != replica.Primary || st.Role != replica.Secondary {
		t.Fatalf("peer after the forced promotion: %+v", st)
	}
	// The source's last word on the resync is the target's new disk state.
	a.waitState("reason naming the peer's UpToDate disk", func(s replica.State) bool {
		return s.Reason == "the peer's disk is now UpToDate"
	})
	if err := b.node.CheckServe(); !errors.Is(err, replica.ErrIsSecondary) {
		t.Fatalf("secondary CheckServe: %v, want ErrIsSecondary", err)
	}
	if err := a.node.CheckServe(); err != nil {
		t.Fatalf("primary CheckServe: %v", err)
	}
}

// TestScenarioProtocols: for protocol A, B and C the primary's writes (some
// with FUA, plus trims and zeroes) followed by a Flush leave both disks
// identical; with C each write is on the peer's disk when WriteAt returns.
func TestScenarioProtocols(t *testing.T) {
	for _, proto := range []byte{'A', 'B', 'C'} {
		t.Run(string(proto), func(t *testing.T) {
			a, b := cleanPair(t, nodeOpts{protocol: proto}, nodeOpts{protocol: proto})
			if got := a.node.Status().Protocol; got != string(proto) {
				t.Fatalf("status protocol %q, want %q", got, string(proto))
			}
			ctx := context.Background()
			for i := range 16 {
				off := int64(i%5) * hBlock
				p := pattern(fmt.Sprintf("%c-%d", proto, i), hBlock)
				if err := a.node.WriteAt(ctx, p, off, i%4 == 3); err != nil {
					t.Fatal(err)
				}
				if proto == 'C' {
					if got := b.read(off, len(p)); string(got) != string(p) {
						t.Fatalf("protocol C write %d acknowledged before it reached the peer", i)
					}
				}
			}
			if err := a.node.WriteZeroes(ctx, 64*hBlock, 4*hBlock, false, true); err != nil {
				t.Fatal(err)
			}
			if err := a.node.Trim(ctx, 128*hBlock, 4*hBlock, false); err != nil {
				t.Fatal(err)
			}
			a.write(hDiskSize-hBlock, pattern("last", hBlock))
			if err := a.node.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			// Flush waits for the peer's flush, which the peer runs after
			// every write sent before it: all of them are on b now.
			sameDisks(t, a, b)
			a.waitStatus("nothing pending", func(s status.Resource) bool { return s.PeerPending == 0 && s.OutOfSyncKiB == 0 })
		})
	}
}

// TestScenarioOverlappingWritesSameOrderBothDisks: many goroutines write the
// same few blocks at once, partly overlapping; each waits only for its own
// previous write, so overlapping writes from different goroutines are in
// flight together. The range lock and the in-order data stream must still
// apply them in the same order on both disks.
func TestScenarioOverlappingWritesSameOrderBothDisks(t *testing.T) {
	for _, proto := range []byte{'A', 'C'} {
		t.Run(string(proto), func(t *testing.T) {
			a, b := cleanPair(t, nodeOpts{protocol: proto}, nodeOpts{protocol: proto})
			const writers, rounds = 8, 40
			var wg sync.WaitGroup
			errs := make(chan error, writers)
			// All writers hit blocks 0..3 with writes of 1 to 3 blocks at
			// block-unaligned offsets, so they overlap partially.
			for w := range writers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for r := range rounds {
						off := int64((w+r)%3)*hBlock + int64(w*512)
						n := (1 + (w+r)%3) * hBlock
						p := pattern(fmt.Sprintf("w%d r%d ", w, r), n)
						if err := a.node.WriteAt(context.Background(), p, off, false); err != nil {
							errs <- err
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			if err := a.node.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
			sameDisks(t, a, b)
		})
	}
}

// TestScenarioSecondaryAnswersBurstsInPieces: a burst of writes waits in
// the secondary's apply queue; the secondary answers the first AckBatch as
// soon as they are on its disk, while the rest of the burst still waits, so
// the primary completes them without waiting for the whole burst.
func TestScenarioSecondaryAnswersBurstsInPieces(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	b.disk.holdWrites()
	const burst = 3 * replica.AckBatch
	results := make(chan error, burst)
	for i := range burst {
		go func() {
			results <- a.node.WriteAt(context.Background(), pattern(fmt.Sprintf("burst %d", i), hBlock), int64(i)*hBlock, false)
		}()
	}
	b.waitStatus("the whole burst received", func(s status.Resource) bool { return s.Unacked == burst })
	b.disk.allowWrites(replica.AckBatch)
	for i := range replica.AckBatch {
		if err := recvErr(t, fmt.Sprintf("write %d of the first piece", i), results); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case err := <-results:
		t.Fatalf("a write returned (%v) before the secondary wrote it", err)
	default:
	}
	b.disk.allowWrites(burst - replica.AckBatch)
	for i := replica.AckBatch; i < burst; i++ {
		if err := recvErr(t, fmt.Sprintf("write %d", i), results); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.node.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	sameDisks(t, a, b)
}

// TestScenarioPeerLossMidWriteThenResync: writes are in flight to the
// secondary (its disk holds them) when the secondary goes down. The writes
// complete locally, their blocks are marked out of sync and the primary
// waits for its peer (WFConnection); writes made alone are marked too. When
// the secondary comes back the primary is SyncSource and both disks end
// identical.
func TestScenarioPeerLossMidWriteThenResync(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	held := b.disk.holdWrites()
	const inflight = 4
	var results []<-chan error
	for i := range inflight {
		results = append(results, a.asyncWrite(int64(i)*64*hBlock, pattern(fmt.Sprintf("inflight %d", i), 2*hBlock)))
	}
	<-held // the secondary is inside its first write
	a.waitStatus("all writes sent", func(s status.Resource) bool { return s.PeerPending == inflight })
	for i, ch := range results {
		select {
		case err := <-ch:
			t.Fatalf("protocol C write %d returned (%v) while the peer had not written it", i, err)
		default:
		}
	}

	b.stop() // the secondary goes down with the writes in flight

	for i, ch := range results {
		if err := recvErr(t, fmt.Sprintf("write %d", i), ch); err != nil {
			t.Fatalf("write %d after peer loss: %v, want local success", i, err)
		}
	}
	st := a.waitConn(replica.WFConnection)
	// The secondary stopped on purpose: it left Outdated, and said so.
	if st.Role != replica.Primary || st.PeerRole != replica.RoleUnknown || st.PeerDisk != replica.Outdated {
		t.Fatalf("primary after peer loss: %+v, want PeerDisk Outdated", st)
	}
	s := a.node.Status()
	if want := uint64(inflight * 2 * hBlock >> 10); s.OutOfSyncKiB < want {
		t.Fatalf("out of sync after losing %d in-flight writes: %d KiB, want >= %d", inflight, s.OutOfSyncKiB, want)
	}
	a.waitEvent("peer-lost")

	// Alone, the primary goes on and marks what the peer misses.
	before := s.OutOfSyncKiB
	a.write(300*hBlock, pattern("alone", 3*hBlock))
	if got := a.node.Status().OutOfSyncKiB; got != before+3*hBlock>>10 {
		t.Fatalf("out of sync after a write alone: %d KiB, want %d", got, before+3*hBlock>>10)
	}

	b.start()
	inSyncAndEqual(t, a, b)
	a.waitEvent("resync-done")
	b.waitEvent("resync-done")
	if st := b.node.State(); st.Role != replica.Secondary || st.PeerRole != replica.Primary {
		t.Fatalf("secondary after resync: %+v", st)
	}
}

// TestScenarioDisconnectWriteReconnectBitmapResync: the operator
// disconnects the secondary, the primary writes, and after connect only the
// written blocks are copied (a bitmap resync, not a full one).
func TestScenarioDisconnectWriteReconnectBitmapResync(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	if !a.node.WantSums() {
		t.Fatal("a connected node wants no write checksums from the NBD server")
	}
	if err := b.node.Disconnect(false); err != nil {
		t.Fatal(err)
	}
	if st := b.node.State(); st.Conn != replica.StandAlone {
		t.Fatalf("after disconnect: %+v", st)
	}
	a.waitConn(replica.WFConnection)
	a.waitFor("no write checksums wanted without a peer session", func() bool { return !a.node.WantSums() })
	for i := range 5 {
		a.write(int64(i)*100*hBlock, pattern(fmt.Sprintf("alone %d", i), hBlock))
	}
	if got := a.node.Status().OutOfSyncKiB; got != 5*hBlock>>10 {
		t.Fatalf("out of sync: %d KiB, want %d", got, 5*hBlock>>10)
	}
	flushes := a.disk.flushes.Load()
	if err := a.node.Flush(context.Background()); err != nil {
		t.Fatalf("Flush alone: %v", err)
	}
	if a.disk.flushes.Load() != flushes+1 {
		t.Fatal("Flush alone did not flush the local disk")
	}
	recvBefore := b.node.Status().NetRecvKiB
	reconnect(t, b)
	inSyncAndEqual(t, a, b)
	if got := b.node.Status().NetRecvKiB - recvBefore; got != 5*hBlock>>10 {
		t.Fatalf("resync moved %d KiB, want only the %d KiB written while apart", got, 5*hBlock>>10)
	}
	// Connected again: a write whose checksum the NBD server computed
	// replicates in the same session (a lost one would give a new
	// generation).
	gi := a.node.Status().UUIDs
	p := pattern("summed", hBlock)
	if err := a.node.WriteAtSummed(context.Background(), p, 7*hBlock, false, protocol.Checksum(p)); err != nil {
		t.Fatal(err)
	}
	if err := a.node.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	inSyncAndEqual(t, a, b)
	if now := a.node.Status().UUIDs; now != gi || !a.node.WantSums() {
		t.Fatalf("the summed write did not replicate in the session: generations %s, then %s", gi, now)
	}
}

// TestScenarioFlushMakesPeerFsync: a Flush on the primary returns only after
// the secondary's disk was flushed; a FUA write flushes the peer too; many
// concurrent Flushes reach both disks concurrently (not one after the
// other), so the disk's group commit can cover them with shared fdatasyncs.
func TestScenarioFlushMakesPeerFsync(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	ctx := context.Background()
	a.write(0, pattern("data", hBlock))
	peer0, local0 := b.disk.flushes.Load(), a.disk.flushes.Load()
	if err := a.node.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := b.disk.flushes.Load() - peer0; got != 1 {
		t.Fatalf("one Flush on the primary: %d flushes on the secondary's disk, want 1", got)
	}
	if got := a.disk.flushes.Load() - local0; got != 1 {
		t.Fatalf("one Flush on the primary: %d flushes on its own disk, want 1", got)
	}

	peer0 = b.disk.flushes.Load()
	if err := a.node.WriteAt(ctx, pattern("fua", hBlock), hBlock, true); err != nil {
		t.Fatal(err)
	}
	if got := b.disk.flushes.Load() - peer0; got != 1 {
		t.Fatalf("a FUA write: %d flushes on the secondary's disk, want 1", got)
	}

	// Hold the secondary's flushes until all of them arrived: only possible
	// if the engine runs them concurrently.
	const n = 16
	waiting := b.disk.holdFlushes()
	peer0, local0 = b.disk.flushes.Load(), a.disk.flushes.Load()
	errs := make(chan error, n)
	for range n {
		go func() { errs <- a.node.Flush(ctx) }()
	}
	for i := range n {
		select {
		case <-waiting:
		case <-time.After(hWait):
			t.Fatalf("only %d of %d concurrent flushes reached the secondary's disk together", i, n)
		}
	}
	if got := b.disk.maxInFlush.Load(); got < n {
		t.Fatalf("at most %d flushes ran at once on the secondary, want %d", got, n)
	}
	select {
	case err := <-errs:
		t.Fatalf("a Flush returned (%v) before the secondary's flush completed", err)
	default:
	}
	b.disk.releaseFlushes()
	for range n {
		if err := recvErr(t, "Flush", errs); err != nil {
			t.Fatal(err)
		}
	}
	if got := b.disk.flushes.Load() - peer0; got != n {
		t.Fatalf("%d flushes on the primary: %d on the secondary's disk, want %d", n, got, n)
	}
	if got := a.disk.flushes.Load() - local0; got != n {
		t.Fatalf("%d flushes on the primary: %d on its own disk, want %d", n, got, n)
	}
}

// TestScenarioFUAWriteDurableOnBothSides: a write or a zeroing with FUA is
// written with FUA on the primary's disk, and answered only after the
// secondary's fdatasync completed.
func TestScenarioFUAWriteDurableOnBothSides(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		op   func() error
	}{
		{"write", func() error { return a.node.WriteAt(ctx, pattern("fua", hBlock), 4*hBlock, true) }},
		{"zeroes", func() error { return a.node.WriteZeroes(ctx, 8*hBlock, hBlock, true, false) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			waiting := b.disk.holdFlushes()
			defer b.disk.releaseFlushes()
			fua0 := a.disk.fuaWrites.Load()
			done := make(chan error, 1)
			go func() { done <- tc.op() }()
			select {
			case <-waiting:
			case err := <-done:
				t.Fatalf("the FUA %s returned (%v) without a flush on the secondary", tc.name, err)
			case <-time.After(hWait):
				t.Fatalf("the FUA %s never made the secondary flush", tc.name)
			}
			select {
			case err := <-done:
				t.Fatalf("the FUA %s returned (%v) before the secondary's flush completed", tc.name, err)
			case <-time.After(50 * time.Millisecond):
			}
			b.disk.releaseFlushes()
			if err := recvErr(t, "the FUA "+tc.name, done); err != nil {
				t.Fatal(err)
			}
			if got := a.disk.fuaWrites.Load() - fua0; got != 1 {
				t.Fatalf("the primary's disk saw %d FUA writes, want 1", got)
			}
		})
	}
}

// TestScenarioSuspendHoldsWriteUntilResyncCopiedIt: with --on-peer-loss
// suspend, a write that passed the suspend check but found the peer gone
// when it was about to be sent is written locally and then held: not while
// the peer is away, not while the resync has yet to copy it, only once it
// is on both disks.
func TestScenarioSuspendHoldsWriteUntilResyncCopiedIt(t *testing.T) {
	clk := heldClock{now: time.Unix(1_700_000_000, 0)}
	a, b := cleanPair(t, nodeOpts{suspend: true, rate: 1 << 20, clock: clk}, nodeOpts{})
	off := int64(hDiskSize - hBlock) // a fresh extent: the write waits for the activity log
	p := pattern("held until copied", hBlock)
	held := a.metaFS.al.hold()
	res := a.asyncWrite(off, p)
	<-held
	if err := b.node.Disconnect(false); err != nil {
		t.Fatal(err)
	}
	a.waitConn(replica.WFConnection)
	a.metaFS.al.release()
	notYet := func(when string) {
		t.Helper()
		select {
		case err := <-res:
			t.Fatalf("the write returned (%v) %s", err, when)
		case <-time.After(300 * time.Millisecond):
		}
	}
	notYet("while the peer was away")
	reconnect(t, b)
	a.waitConn(replica.SyncSource) // the resync is held by the rate on a stopped clock
	notYet("before the resync copied it")
	a.node.AdjustRate(0)
	if err := recvErr(t, "the held write", res); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b.read(off, hBlock), p) {
		t.Fatal("the write returned before it was on the peer's disk")
	}
}

// TestScenarioSuspendOnPeerLossWaitsForPeer: with --on-peer-loss suspend a
// write issued while the peer is away does not return until the peer is
// back; it then lands on both disks.
func TestScenarioSuspendOnPeerLossWaitsForPeer(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{suspend: true}, nodeOpts{})
	if a.node.Status().Suspended {
		t.Fatal("suspended while connected")
	}
	if err := b.node.Disconnect(false); err != nil {
		t.Fatal(err)
	}
	a.waitStatus("suspended", func(s status.Resource) bool { return s.ConnState == "WFConnection" && s.Suspended })
	p := pattern("suspended write", hBlock)
	res := a.asyncWrite(10*hBlock, p)
	a.waitStatus("write waiting", func(s status.Resource) bool { return s.AppPending == 1 })
	select {
	case err := <-res:
		t.Fatalf("write returned (%v) with the peer away", err)
	default:
	}
	if got := a.read(10*hBlock, hBlock); string(got) == string(p) {
		t.Fatal("suspended write reached the primary's disk before the peer was back")
	}
	reconnect(t, b)
	if err := recvErr(t, "suspended write", res); err != nil {
		t.Fatal(err)
	}
	if got := b.read(10*hBlock, hBlock); string(got) != string(p) {
		t.Fatal("suspended write acknowledged but not on the secondary")
	}
	a.waitInSync()
	sameDisks(t, a, b)
}

// TestScenarioSplitBrainBothStandAloneUntilDiscard: the nodes are cut
// apart, both are promoted and written. On reconnect both detect the split
// brain, stay StandAlone with SplitBrain set and copy nothing. The operator
// demotes b and connects it with --discard-my-data: b becomes SyncTarget of
// a and ends with a's data.
func TestScenarioSplitBrainBothStandAloneUntilDiscard(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	a.write(0, pattern("shared", hBlock))
	for _, x := range []*tnode{a, b} {
		if err := x.node.Disconnect(false); err != nil {
			t.Fatal(err)
		}
	}
	// b was Outdated by a's clean disconnect: only --force promotes it.
	if err := b.node.Promote(true); err != nil {
		t.Fatalf("promote the cut-off secondary: %v", err)
	}
	a.write(10*hBlock, pattern("a alone", hBlock))
	b.write(20*hBlock, pattern("b alone", hBlock))
	b.write(0, pattern("b overwrote", hBlock))
	imgA, imgB := a.image(), b.image()

	for _, x := range []*tnode{a, b} {
		reconnect(t, x)
	}
	// The side that decides first refuses; wait for it. (The other side
	// should flag the split brain too, but may miss the peer's state when
	// the refusal closes the session first, and stay WFConnection.)
	first := waitSplitBrain(a, b)
	if st := first.node.State(); st.Role != replica.Primary || st.Disk != replica.UpToDate {
		t.Fatalf("%s after split brain: %+v", first.label, st)
	}
	if s := first.node.Status(); !s.SplitBrain || s.ConnState != "StandAlone" {
		t.Fatalf("%s status after split brain: %+v", first.label, s)
	}
	first.waitEvent("split-brain")
	for _, x := range []*tnode{a, b} {
		if c := x.node.State().Conn; c.Connected() {
			t.Fatalf("%s is %v after a split brain", x.label, c)
		}
	}
	if firstDiff(a.image(), imgA) >= 0 || firstDiff(b.image(), imgB) >= 0 {
		t.Fatal("a disk changed after split brain was detected")
	}
	// It stays that way: no reconnect attempts in the background, however
	// long the operator takes (here 2.5 peer timeouts, past any retry).
	events := first.eventCount("split-brain")
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if st := first.node.State(); st.Conn != replica.StandAlone || !st.SplitBrain {
			t.Fatalf("%s left StandAlone on its own after a split brain: %+v", first.label, st)
		}
	}
	if n := first.eventCount("split-brain"); n != events {
		t.Fatalf("%s reported the split brain %d more times: it kept reconnecting", first.label, n-events)
	}

	// A Primary cannot discard its data.
	if err := b.node.Connect(true); !errors.Is(err, replica.ErrDiscardPrimary) {
		t.Fatalf("Connect(discard) as Primary: %v, want ErrDiscardPrimary", err)
	}
	if err := b.node.Demote(false); err != nil {
		t.Fatal(err)
	}
	if err := b.node.Connect(true); err != nil {
		t.Fatal(err)
	}
	reconnect(t, a)
	inSyncAndEqual(t, a, b)
	if firstDiff(b.image(), imgA) >= 0 {
		t.Fatal("b does not hold a's data after discarding its own")
	}
	for _, x := range []*tnode{a, b} {
		if st := x.node.State(); st.SplitBrain {
			t.Fatalf("%s still flags split brain after it was resolved: %+v", x.label, st)
		}
	}
	if st := b.node.State(); st.Role != replica.Secondary || st.PeerRole != replica.Primary {
		t.Fatalf("b after resolving: %+v", st)
	}
}

// TestScenarioSplitBrainResolvedByPolicy: with after-sb-1pri consensus
// (and after-sb-0pri discard-zero-changes), a split brain in which the
// promoted Secondary wrote nothing resolves itself on reconnect: it becomes
// SyncTarget of the Primary, with no split-brain event, and both disks end
// equal. Once the Secondary has written too, the same policy leaves the
// split brain to the operator. Nodes whose policies differ do not connect.
func TestScenarioSplitBrainResolvedByPolicy(t *testing.T) {
	policy := replica.AfterSplitBrain{NoPrimary: replica.SB0DiscardZeroChanges, OnePrimary: replica.SB1Consensus}
	o := nodeOpts{afterSB: policy}
	a, b := cleanPair(t, o, o)
	split := func() {
		t.Helper()
		for _, x := range []*tnode{a, b} {
			if err := x.node.Disconnect(false); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.node.Promote(true); err != nil {
			t.Fatal(err)
		}
		a.write(10*hBlock, pattern("a alone", hBlock))
	}

	// b was promoted by mistake, wrote nothing, and is demoted.
	split()
	if err := b.node.Demote(false); err != nil {
		t.Fatal(err)
	}
	for _, x := range []*tnode{a, b} {
		reconnect(t, x)
	}
	inSyncAndEqual(t, a, b)
	for _, x := range []*tnode{a, b} {
		x.waitEvent("initial-split-brain")
		if x.sawEvent("split-brain") {
			t.Errorf("%s ran the split-brain handler for a split brain resolved automatically", x.label)
		}
	}

	// This time b writes while promoted: its changes are not discarded.
	split()
	b.write(20*hBlock, pattern("b alone", hBlock))
	if err := b.node.Demote(false); err != nil {
		t.Fatal(err)
	}
	imgB := b.image()
	for _, x := range []*tnode{a, b} {
		reconnect(t, x)
	}
	first := waitSplitBrain(a, b)
	first.waitEvent("split-brain")
	if st := first.node.Status(); !strings.Contains(st.Reason, "the Secondary wrote since the split") {
		t.Errorf("%s's reason: %q; want the policy's reason for not acting", first.label, st.Reason)
	}
	if firstDiff(b.image(), imgB) >= 0 {
		t.Fatal("b's changes were overwritten")
	}
}

// TestScenarioDifferentSplitBrainPoliciesRefused: nodes configured with
// different after-sb policies refuse to connect and say why.
func TestScenarioDifferentSplitBrainPoliciesRefused(t *testing.T) {
	a, b := newPair(t, nodeOpts{afterSB: replica.AfterSplitBrain{OnePrimary: replica.SB1DiscardSecondary}}, nodeOpts{})
	a.start()
	b.start()
	a.waitState("refused", func(s replica.State) bool {
		return s.Conn == replica.StandAlone && strings.Contains(s.Reason, "split-brain policies differ")
	})
}

// TestScenarioPromoteRefusedWhilePeerPrimary: with a live Primary peer,
// promotion is refused, with --force too; after the peer is demoted the
// roles swap and the old primary refuses writes as a Secondary.
func TestScenarioPromoteRefusedWhilePeerPrimary(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	for _, force := range []bool{false, true} {
		err := b.node.Promote(force)
		if !errors.Is(err, replica.ErrPeerPrimary) || !strings.Contains(err.Error(), "urbd secondary") {
			t.Fatalf("Promote(force=%v) with a Primary peer: %v, want ErrPeerPrimary with a hint", force, err)
		}
	}
	if st := b.node.State(); st.Role != replica.Secondary {
		t.Fatalf("refused promotion changed the role: %+v", st)
	}
	if err := a.node.Demote(false); err != nil {
		t.Fatal(err)
	}
	b.waitState("peer Secondary", func(s replica.State) bool { return s.PeerRole == replica.Secondary })
	if err := b.node.Promote(false); err != nil {
		t.Fatal(err)
	}
	a.waitState("peer Primary", func(s replica.State) bool { return s.PeerRole == replica.Primary })
	err := a.node.WriteAt(context.Background(), pattern("x", hBlock), 0, false)
	if !errors.Is(err, nbd.ErrReadOnly) {
		t.Fatalf("write on the demoted node: %v, want nbd.ErrReadOnly", err)
	}
	p := pattern("new primary", hBlock)
	b.write(5*hBlock, p)
	if got := a.read(5*hBlock, hBlock); string(got) != string(p) {
		t.Fatal("the new primary's write is not on the old primary")
	}
}

// TestScenarioDemoteRefusedWithClients: demotion is refused while NBD
// clients are attached (AttachClient), unless forced; the status counts
// them.
func TestScenarioDemoteRefusedWithClients(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	for range 2 {
		if _, err := a.node.AttachClient(); err != nil {
			t.Fatal(err)
		}
	}
	if got := a.node.Status().NBDClients; got != 2 {
		t.Fatalf("status clients %d, want 2", got)
	}
	err := a.node.Demote(false)
	if !errors.Is(err, replica.ErrClientsAttach) || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("Demote with clients: %v, want ErrClientsAttach with a --force hint", err)
	}
	if st := a.node.State(); st.Role != replica.Primary {
		t.Fatalf("refused demotion changed the role: %+v", st)
	}
	flushes := a.disk.flushes.Load()
	if err := a.node.Demote(true); err != nil {
		t.Fatalf("Demote --force: %v", err)
	}
	if a.disk.flushes.Load() == flushes {
		t.Fatal("forced demotion did not flush the disk")
	}
	if st := a.node.State(); st.Role != replica.Secondary {
		t.Fatalf("after forced demotion: %+v", st)
	}
	b.waitState("peer Secondary", func(s replica.State) bool { return s.PeerRole == replica.Secondary })
	a.waitEvent("demoted")
}

// TestScenarioVerifyFindsBlockChangedBehindEngine: a block of the
// secondary's disk is changed behind the engine's back; online verify on the
// primary finds exactly that block, marks it out of sync, and the resync
// copies it back.
func TestScenarioVerifyFindsBlockChangedBehindEngine(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	for i := range 8 {
		a.write(int64(i)*hBlock, pattern(fmt.Sprintf("data %d", i), hBlock))
	}
	b.poke(7*hBlock+100, []byte("bit rot"))
	if firstDiff(a.image(), b.image()) < 0 {
		t.Fatal("poke did not change the secondary's disk")
	}
	// Hold the resync's write on b so the marked block can be counted.
	held := b.disk.holdWrites()
	if err := a.node.Verify(replica.VerifyRange{}); err != nil {
		t.Fatal(err)
	}
	<-held
	if got := a.node.Status().OutOfSyncKiB; got != hBlock>>10 {
		t.Fatalf("verify marked %d KiB, want the one changed block (%d KiB)", got, hBlock>>10)
	}
	b.disk.releaseWrites()
	a.waitInSync()
	sameDisks(t, a, b)
}

// TestScenarioVerifyNeedsConnectedPeer: verify alone is refused.
func TestScenarioVerifyNeedsConnectedPeer(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	b.stop()
	a.waitConn(replica.WFConnection)
	if err := a.node.Verify(replica.VerifyRange{}); !errors.Is(err, replica.ErrNotConnected) {
		t.Fatalf("Verify without a peer: %v, want ErrNotConnected", err)
	}
}

// TestScenarioInvalidateFetchesEverything: the secondary's disk is damaged
// behind the engine's back in many places; invalidate throws its data away
// and a full resync makes it identical to the primary again. Invalidate is
// refused on the Primary and without a connected peer.
func TestScenarioInvalidateFetchesEverything(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	a.write(0, pattern("primary data", 64*hBlock))
	for i := range 10 {
		b.poke(int64(i)*200*hBlock, []byte(fmt.Sprintf("damage %d", i)))
	}
	if err := a.node.Invalidate(); !errors.Is(err, replica.ErrDiscardPrimary) {
		t.Fatalf("Invalidate on the Primary: %v, want ErrDiscardPrimary", err)
	}
	recv := b.node.Status().NetRecvKiB
	if err := b.node.Invalidate(); err != nil {
		t.Fatal(err)
	}
	// Every block was copied: the damage, where the Primary's disk is
	// zeroes, is gone too. Those zeroes came as ranges, without their
	// bytes: only the data's chunk crossed the link.
	inSyncAndEqual(t, a, b)
	if got := b.node.Status().NetRecvKiB - recv; got > 1<<10 {
		t.Fatalf("invalidate received %d KiB, want only the 1 MiB chunk holding the Primary's data", got)
	}

	if err := b.node.Disconnect(false); err != nil {
		t.Fatal(err)
	}
	if err := b.node.Invalidate(); !errors.Is(err, replica.ErrNotConnected) {
		t.Fatalf("Invalidate while StandAlone: %v, want ErrNotConnected", err)
	}
}

// heldDamagedPair is a clean pair whose Primary a wrote its first 64 blocks
// and whose Secondary b then had 10 blocks changed behind the engine's back.
// a's resyncs are held by a stopped clock until a.node.AdjustRate(0).
func heldDamagedPair(t *testing.T) (a, b *tnode) {
	t.Helper()
	clk := heldClock{now: time.Unix(1_700_000_000, 0)}
	a, b = cleanPair(t, nodeOpts{rate: 1 << 20, clock: clk}, nodeOpts{})
	a.write(0, pattern("primary data", 64*hBlock))
	for i := range 10 {
		b.poke(int64(i)*200*hBlock+17, []byte(fmt.Sprintf("damage %d", i)))
	}
	return a, b
}

// TestScenarioInvalidateRemoteSendsEverything: the secondary's disk is
// damaged behind the engine's back; invalidate-remote on the Primary copies
// the whole disk to it (its zeroes as ranges) while the application writes, held at first by a
// stopped clock so the SyncSource and its progress can be seen. It is
// refused on the Secondary, while the resync runs, and without a peer.
func TestScenarioInvalidateRemoteSendsEverything(t *testing.T) {
	a, b := heldDamagedPair(t)
	if err := b.node.InvalidateRemote(); !errors.Is(err, replica.ErrIsSecondary) {
		t.Fatalf("InvalidateRemote on the Secondary: %v, want ErrIsSecondary", err)
	}
	sent := a.node.Status().NetSendKiB
	if err := a.node.InvalidateRemote(); err != nil {
		t.Fatal(err)
	}
	a.waitConn(replica.SyncSource)
	s := a.waitStatus("resync progress", func(s status.Resource) bool { return s.Sync != nil })
	if s.Sync.TotalKiB != hDiskSize>>10 || !strings.Contains(s.Reason, "peer invalidated by operator") {
		t.Fatalf("invalidate-remote resyncs %d KiB (want the whole disk, %d KiB), reason %q", s.Sync.TotalKiB, hDiskSize>>10, s.Reason)
	}
	if err := a.node.InvalidateRemote(); !errors.Is(err, replica.ErrNotConnected) {
		t.Fatalf("InvalidateRemote during the resync: %v, want ErrNotConnected", err)
	}
	for i := range 8 {
		a.write(int64(i)*150*hBlock, pattern(fmt.Sprintf("during %d", i), hBlock))
	}
	a.node.AdjustRate(0)
	inSyncAndEqual(t, a, b) // the damage, where a's disk is zeroes, is gone too
	if got := a.node.Status().NetSendKiB - sent; got >= hDiskSize>>10 {
		t.Fatalf("invalidate-remote sent %d KiB: the zeroes went with their bytes", got)
	}

	if err := a.node.Disconnect(false); err != nil {
		t.Fatal(err)
	}
	if err := a.node.InvalidateRemote(); !errors.Is(err, replica.ErrNotConnected) {
		t.Fatalf("InvalidateRemote while StandAlone: %v, want ErrNotConnected", err)
	}
}

// TestScenarioInvalidateRemoteSurvivesCrash: the Primary crashes while the
// copy that invalidate-remote started is held; the bits it made durable
// first bring the copy back after the restart, and the peer's damaged
// blocks are repaired.
func TestScenarioInvalidateRemoteSurvivesCrash(t *testing.T) {
	a, b := heldDamagedPair(t)
	if err := a.node.InvalidateRemote(); err != nil {
		t.Fatal(err)
	}
	a.waitConn(replica.SyncSource)
	a.crash()
	a.start()
	a.node.AdjustRate(0)
	inSyncAndEqual(t, a, b)
}

// TestScenarioPromoteRefusedDuringSyncTarget: b is invalidated while both
// nodes are Secondary; a's resync is held by a stopped clock, so b stays
// SyncTarget and refuses promotion, with --force too. Lifting the rate lets
// the resync finish, and b may then be promoted.
func TestScenarioPromoteRefusedDuringSyncTarget(t *testing.T) {
	clk := heldClock{now: time.Unix(1_700_000_000, 0)}
	a, b := cleanPair(t, nodeOpts{rate: 1 << 20, clock: clk}, nodeOpts{})
	if err := a.node.Demote(false); err != nil {
		t.Fatal(err)
	}
	b.waitState("peer Secondary", func(s replica.State) bool { return s.PeerRole == replica.Secondary })
	b.poke(3*hBlock, []byte("stale"))
	if err := b.node.Invalidate(); err != nil {
		t.Fatal(err)
	}
	b.waitConn(replica.SyncTarget)
	a.waitState("SyncSource", func(s replica.State) bool { return s.Conn == replica.SyncSource && s.PeerDisk == replica.Inconsistent })
	for _, force := range []bool{false, true} {
		err := b.node.Promote(force)
		if !errors.Is(err, replica.ErrSyncing) || !strings.Contains(err.Error(), "wait") {
			t.Fatalf("Promote(force=%v) as SyncTarget: %v, want ErrSyncing", force, err)
		}
	}
	s := a.waitStatus("resync progress", func(s status.Resource) bool { return s.Sync != nil })
	if s.Sync.TotalKiB != hDiskSize>>10 || s.Sync.RemainingKiB != s.Sync.TotalKiB || s.Sync.WantKiB != 1<<10 {
		t.Fatalf("held resync status: %+v", *s.Sync)
	}
	a.node.AdjustRate(0)
	b.waitInSync()
	a.waitInSync()
	sameDisks(t, a, b)
	if err := b.node.Promote(false); err != nil {
		t.Fatalf("promote after the resync: %v", err)
	}
}

// TestScenarioResyncNeverOverwritesNewerWrite: while a resync copy of a
// block is in flight (the target's write of it is held), an application
// write to the same block waits for the copy; the newer data wins on both
// disks.
func TestScenarioResyncNeverOverwritesNewerWrite(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	if err := b.node.Disconnect(false); err != nil {
		t.Fatal(err)
	}
	a.waitConn(replica.WFConnection)
	a.write(5*hBlock, pattern("old", hBlock))
	held := b.disk.holdWrites()
	reconnect(t, b)
	<-held // the resync copy of block 5 is being written on b
	newerWriteWaitsForCopy(t, a, b, 5*hBlock)
}

// TestScenarioResyncZeroNeverOverwritesNewerWrite: the same for a copy of
// zeroes (a block trimmed while the peer was away goes as a ResyncZero, and
// the target's zeroing of it is held): the newer write waits for it and
// wins on both disks.
func TestScenarioResyncZeroNeverOverwritesNewerWrite(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	a.write(5*hBlock, pattern("old", hBlock))
	if err := b.node.Disconnect(false); err != nil {
		t.Fatal(err)
	}
	a.waitConn(replica.WFConnection)
	if err := a.node.Trim(context.Background(), 5*hBlock, hBlock, false); err != nil {
		t.Fatal(err)
	}
	recv := b.node.Status().NetRecvKiB
	held := b.disk.holdWrites()
	reconnect(t, b)
	<-held // the resync's zeroing of block 5 is being done on b
	if got := b.node.Status().NetRecvKiB - recv; got != 0 {
		t.Fatalf("the copy of a trimmed block brought %d KiB, want a ResyncZero without data", got)
	}
	newerWriteWaitsForCopy(t, a, b, 5*hBlock)
}

// newerWriteWaitsForCopy writes the block at off on the Primary a while the
// resync's copy of it to b is held in b's disk (holdWrites), and checks that
// the write waits for the copy: it neither returns nor starts before b's
// writes are released. Then the nodes end in sync with the newer data on
// both disks.
func newerWriteWaitsForCopy(t *testing.T, a, b *tnode, off int64) {
	t.Helper()
	newer := pattern("newer", hBlock)
	written := a.disk.writesIn.Load() // a is the source: only the application writes its disk
	res := a.asyncWrite(off, newer)
	a.waitStatus("write waiting for the copy", func(s status.Resource) bool { return s.AppPending == 1 })
	select {
	case err := <-res:
		t.Fatalf("application write returned (%v) while the resync copy of its block was in flight", err)
	default:
	}
	if w, s := a.disk.writesIn.Load()-written, a.node.Status(); w != 0 || s.PeerPending != 0 {
		t.Fatalf("application write started (%d local writes, pe %d) before the copy of its block finished", w, s.PeerPending)
	}
	b.disk.releaseWrites()
	if err := recvErr(t, "application write", res); err != nil {
		t.Fatal(err)
	}
	a.waitInSync()
	sameDisks(t, a, b)
	if got := b.read(off, hBlock); !bytes.Equal(got, newer) {
		t.Fatal("resync data overwrote the newer application write on the target")
	}
}

// TestScenarioSilentLinkCutDetectedWithinTimeout: the link dies without a
// FIN or RST (every byte dropped). Each node declares the peer lost within
// about --timeout; a write issued after the cut completes locally once the
// loss is declared and is marked out of sync. When the link heals the nodes
// reconnect and the resync makes the disks identical.
func TestScenarioSilentLinkCutDetectedWithinTimeout(t *testing.T) {
	const timeout = 400 * time.Millisecond
	o := nodeOpts{timeout: timeout, viaProxy: true}
	a, b := cleanPair(t, o, o)
	a.write(0, pattern("before the cut", hBlock))
	start := time.Now()
	a.proxy.Cut.Store(true)
	b.proxy.Cut.Store(true)
	res := a.asyncWrite(40*hBlock, pattern("during the cut", hBlock))
	a.waitConn(replica.WFConnection)
	b.waitConn(replica.WFConnection)
	// The keepalive checks every timeout/4; allow generous scheduling slack
	// under -race on a shared machine.
	if took := time.Since(start); took > 4*timeout {
		t.Fatalf("a dead link was noticed after %v, want about %v", took, timeout)
	}
	if err := recvErr(t, "write during the cut", res); err != nil {
		t.Fatalf("write during the cut: %v, want local success", err)
	}
	if got := a.node.Status().OutOfSyncKiB; got < hBlock>>10 {
		t.Fatalf("write during the cut not marked out of sync (%d KiB)", got)
	}
	a.proxy.Cut.Store(false)
	b.proxy.Cut.Store(false)
	inSyncAndEqual(t, a, b)
}

// TestScenarioHotJoinUnderLoad: a primary runs alone (promoted with --force
// on a fresh resource) and keeps writing while a new, empty secondary joins.
// The full resync (held by a stopped clock until the load runs) copies
// everything in the background while the new writes are mirrored; at the
// end both disks are identical.
func TestScenarioHotJoinUnderLoad(t *testing.T) {
	clk := heldClock{now: time.Unix(1_700_000_000, 0)}
	a, b := newPair(t, nodeOpts{rate: 1 << 20, clock: clk}, nodeOpts{})
	a.start()
	if err := a.node.Promote(true); err != nil {
		t.Fatal(err)
	}
	for i := range 32 {
		a.write(int64(i)*61*hBlock, pattern(fmt.Sprintf("before join %d", i), 3*hBlock))
	}
	b.start()
	b.waitConn(replica.SyncTarget)
	a.waitConn(replica.SyncSource)

	// Load: writers over the whole disk during the resync.
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }() // also on a failed check below
	errs := make(chan error, 4)
	reached := make(chan struct{}, 4) // one per writer: 20 writes done, or it stopped
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			signalled := false
			defer func() {
				if !signalled {
					reached <- struct{}{}
				}
			}()
			for i := 0; ; i++ {
				off := int64((w*997+i*131)%(hDiskSize/hBlock-2)) * hBlock
				if err := a.node.WriteAt(ctx, pattern(fmt.Sprintf("load %d/%d", w, i), 2*hBlock), off, false); err != nil {
					if ctx.Err() == nil {
						errs <- err
					}
					return
				}
				if i == 20 {
					signalled = true
					reached <- struct{}{}
				}
				if ctx.Err() != nil {
					return
				}
			}
		}()
	}
	for range 4 { // every writer wrote during the held resync
		select {
		case <-reached:
		case <-time.After(hWait):
			t.Fatal("writers did not get through during the resync")
		}
	}
	if st := b.node.State(); st.Conn != replica.SyncTarget || st.Disk != replica.Inconsistent {
		t.Fatalf("joining secondary under load: %+v", st)
	}
	a.node.AdjustRate(0) // let the resync run, under the load
	b.waitInSync()
	stop()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := a.node.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	a.waitInSync()
	sameDisks(t, a, b)
}

// TestScenarioPrimaryCrashFailover: the primary crashes (kill -9) after
// acknowledged writes; the operator promotes the survivor, which finds every
// acknowledged write and keeps writing. The old primary comes back as
// Secondary (not Primary), becomes SyncTarget and ends identical.
func TestScenarioPrimaryCrashFailover(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	acked := pattern("acknowledged", 16*hBlock)
	a.write(8*hBlock, acked)
	a.crash()
	b.waitConn(replica.WFConnection)
	if got := b.read(8*hBlock, len(acked)); string(got) != string(acked) {
		t.Fatal("an acknowledged write is missing on the survivor")
	}
	if err := b.node.Promote(false); err != nil {
		t.Fatalf("promote the survivor: %v", err)
	}
	b.write(100*hBlock, pattern("after failover", 4*hBlock))

	a.start()
	if st := a.node.State(); st.Role != replica.Secondary {
		t.Fatalf("crashed primary came back as %v, want Secondary", st.Role)
	}
	inSyncAndEqual(t, a, b)
	if st := a.node.State(); st.Role != replica.Secondary || st.PeerRole != replica.Primary {
		t.Fatalf("old primary after resync: %+v", st)
	}
}

// TestScenarioProtocolAckPoints: with the secondary's disk write held, a
// protocol A write returns after the hand-over to the socket and a protocol
// B write after the peer's receipt, while a protocol C write waits for the
// peer's disk.
func TestScenarioProtocolAckPoints(t *testing.T) {
	for _, proto := range []byte{'A', 'B', 'C'} {
		t.Run(string(proto), func(t *testing.T) {
			o := nodeOpts{protocol: proto}
			a, b := cleanPair(t, o, o)
			checkAckPoint(t, a, b, proto, 9*hBlock)
		})
	}
}

// TestScenarioSetProtocol: the protocol of a connected Primary changes while
// it runs (urbd adjust --protocol). Each change shows in the status and
// takes effect from the next write, with the ack point of the new protocol;
// the Secondary learns whether to confirm receipts (protocol B) without a
// reconnect. An unknown protocol is refused and changes nothing.
func TestScenarioSetProtocol(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	if err := a.node.SetProtocol('D'); err == nil {
		t.Fatal("protocol D was accepted")
	}
	if got := a.node.Status().Protocol; got != "C" {
		t.Fatalf("protocol %s after a refused change, want C", got)
	}
	for i, proto := range []byte{'A', 'B', 'C', 'B'} {
		if err := a.node.SetProtocol(proto); err != nil {
			t.Fatal(err)
		}
		if st := a.node.Status(); st.Protocol != string(proto) || st.Reason != fmt.Sprintf("protocol set to %c by operator", proto) {
			t.Fatalf("status shows protocol %s (%s) after changing to %c", st.Protocol, st.Reason, proto)
		}
		b.waitFor("the secondary to learn the primary's protocol", func() bool {
			return b.node.PeerWantsReceipts() == (proto == 'B')
		})
		checkAckPoint(t, a, b, proto, int64(10+i)*hBlock)
	}
	if c := a.node.State().Conn; c != replica.Connected {
		t.Fatalf("a is %v after the protocol changes, want Connected", c)
	}
}

// checkAckPoint writes a block at off on the Primary a while the disk of
// its peer b holds writes, and checks that the write returns before the
// peer's disk write under protocols A and B and only after it under C.
// Afterwards both disks are equal.
func checkAckPoint(t *testing.T, a, b *tnode, proto byte, off int64) {
	t.Helper()
	beforeDisk := proto != 'C'
	held := b.disk.holdWrites()
	p := pattern(fmt.Sprintf("ack point %c", proto), hBlock)
	res := a.asyncWrite(off, p)
	<-held // the peer has the write and is writing it
	if beforeDisk {
		if err := recvErr(t, "write", res); err != nil {
			t.Fatal(err)
		}
		if got := b.read(off, hBlock); string(got) == string(p) {
			t.Fatal("the held write reached the peer's disk")
		}
	} else {
		select {
		case err := <-res:
			t.Fatalf("protocol C write returned (%v) before the peer's disk write", err)
		default:
		}
	}
	b.disk.releaseWrites()
	if !beforeDisk {
		if err := recvErr(t, "write", res); err != nil {
			t.Fatal(err)
		}
		if got := b.read(off, hBlock); string(got) != string(p) {
			t.Fatal("protocol C write returned before it was on the peer's disk")
		}
	}
	if err := a.node.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	a.waitStatus("peer done", func(s status.Resource) bool { return s.PeerPending == 0 })
	sameDisks(t, a, b)
}

// TestScenarioProtocolBWaitsForPeerReceipt: a protocol B write is answered
// once the peer received it, not once it was handed to the network: with
// every byte towards the peer dropped it is answered only when the peer is
// declared lost (then from the local disk, marked out of sync).
func TestScenarioProtocolBWaitsForPeerReceipt(t *testing.T) {
	o := nodeOpts{protocol: 'B', viaProxy: true}
	a, b := cleanPair(t, o, o)
	// Whichever node dialed, drop what a sends to b.
	a.proxy.CutForward.Store(true)
	b.proxy.CutBack.Store(true)
	res := a.asyncWrite(12*hBlock, pattern("never received", hBlock))
	select {
	case err := <-res:
		t.Fatalf("protocol B write returned (%v) although the peer never received it", err)
	case <-time.After(500 * time.Millisecond):
	}
	if err := recvErr(t, "write after peer loss", res); err != nil {
		t.Fatal(err)
	}
	if c := a.node.State().Conn; c.Connected() {
		t.Fatalf("the write returned while a was still %v", c)
	}
	if got := a.node.Status().OutOfSyncKiB; got < hBlock>>10 {
		t.Fatalf("%d KiB out of sync after the peer loss, want the write's %d", got, hBlock>>10)
	}
	a.proxy.CutForward.Store(false)
	b.proxy.CutBack.Store(false)
	a.waitInSync()
	sameDisks(t, a, b)
}

// TestScenarioProtocolASendQueueIsBounded: protocol A answers writes before
// the peer has them, but not without limit: with the peer's disk stuck, the
// writes in flight towards it stop at the stream window (16 MiB) plus what
// the sockets and the peer's apply queue hold (here at most 32 MiB in all),
// and the application's writes then wait.
func TestScenarioProtocolASendQueueIsBounded(t *testing.T) {
	const (
		wsize = 64 << 10
		total = 1024 // 64 MiB of writes, twice the bound
		bound = 32 << 20
	)
	// The peer answers nothing while its disk is stuck: a timeout well
	// above the test's stall keeps a loaded machine from declaring it lost.
	o := nodeOpts{protocol: 'A', timeout: 20 * time.Second}
	a, b := cleanPair(t, o, o)
	b.disk.holdWrites()
	var returned atomic.Int64
	done := make(chan error, 1)
	go func() {
		p := pattern("queued", wsize)
		for i := range total {
			if err := a.node.WriteAt(context.Background(), p, int64(i*wsize)%hDiskSize, false); err != nil {
				done <- err
				return
			}
			returned.Add(1)
		}
		done <- nil
	}()
	// Wait until the writer stops making progress (or finishes).
	for last := int64(-1); ; {
		select {
		case err := <-done:
			t.Fatalf("all %d MiB of protocol A writes returned (%v) while the peer's disk was stuck", total*wsize>>20, err)
		case <-time.After(500 * time.Millisecond):
		}
		n := returned.Load()
		if n == last {
			break
		}
		last = n
	}
	t.Logf("%d MiB answered ahead of the stuck peer", returned.Load()*wsize>>20)
	if n := returned.Load(); n*wsize > bound {
		t.Fatalf("%d MiB of writes answered ahead of a stuck peer, want at most %d", n*wsize>>20, bound>>20)
	}
	b.disk.releaseWrites()
	if err := recvErr(t, "the queued writes", done); err != nil {
		t.Fatal(err)
	}
	if err := a.node.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	a.waitInSync()
	sameDisks(t, a, b)
}

// TestScenarioVerifyOnSecondaryResyncsFromPrimary: verify run on the
// secondary marks the block it finds changed on its own disk; the nodes
// reconnect and the primary copies it back.
func TestScenarioVerifyOnSecondaryResyncsFromPrimary(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	a.write(30*hBlock, pattern("primary data", 2*hBlock))
	b.poke(31*hBlock, []byte("changed behind the engine"))
	if err := b.node.Verify(replica.VerifyRange{}); err != nil {
		t.Fatal(err)
	}
	a.waitFor("disks identical", func() bool { return firstDiff(a.image(), b.image()) < 0 })
	a.waitInSync()
	b.waitInSync()
	if st := a.node.State(); st.Role != replica.Primary {
		t.Fatalf("primary after a verify on the secondary: %+v", st)
	}
}

// TestScenarioFlappingLinkUnderLoad: the link is reset again and again while
// writers keep writing (overlapping blocks, FUA writes included); every write
// succeeds, each reconnect resyncs what the writes alone changed while the
// load goes on, and at the end both disks are identical.
func TestScenarioFlappingLinkUnderLoad(t *testing.T) {
	o := nodeOpts{viaProxy: true}
	a, b := cleanPair(t, o, o)
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	errs := make(chan error, 4)
	var writes atomic.Int64
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				off := int64((w*7+i*13)%64) * hBlock // 64 hot blocks, shared
				if err := a.node.WriteAt(ctx, pattern(fmt.Sprintf("flap %d/%d", w, i), hBlock+512*(i%3)), off, i%7 == 0); err != nil {
					if ctx.Err() == nil {
						errs <- err
					}
					return
				}
				writes.Add(1)
			}
		}()
	}
	for round := range 4 {
		n := writes.Load()
		a.waitFor("writes while connected", func() bool { return writes.Load() > n+20 })
		a.proxy.Reset()
		b.proxy.Reset()
		a.waitFor("the loss noticed", func() bool { return a.eventCount("peer-lost") > round })
		n = writes.Load()
		a.waitFor("writes after the reset", func() bool { return writes.Load() > n+20 })
		a.waitInSync()
		b.waitInSync()
		if st := b.node.State(); st.Role != replica.Secondary || st.PeerRole != replica.Primary {
			t.Fatalf("round %d: secondary %+v", round, st)
		}
	}
	stop()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	a.waitInSync()
	b.waitInSync()
	if err := a.node.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	sameDisks(t, a, b)
}

// TestScenarioCrashMidWriteResyncsInFlightBlocks: a node is killed (kill -9)
// while protocol C writes are in flight, and after its restart the pair
// resyncs every block that may differ, so both disks end identical.
//
// primary: the link is cut, so the secondary never sees the writes the
// primary already made locally; only the primary's activity log records
// them, and it must bring them back as out of sync after the restart (the
// restarted node comes back Secondary and is the resync source as the
// crashed primary). secondary: the secondary dies while writing them; the
// surviving primary completes them alone and marks them.
//
// Each runs twice: the process killed (the page cache survives), and the
// machine's power cut (the disk also loses what no flush covered, here even
// the settled write, which the other disk still has).
func TestScenarioCrashMidWriteResyncsInFlightBlocks(t *testing.T) {
	for _, c := range []struct{ victim, how string }{
		{"primary", "kill -9"}, {"secondary", "kill -9"},
		{"primary", "power cut"}, {"secondary", "power cut"},
	} {
		victim := c.victim
		t.Run(victim+", "+c.how, func(t *testing.T) {
			o := nodeOpts{viaProxy: true, volatile: true}
			a, b := cleanPair(t, o, o)
			a.write(0, pattern("settled", 8*hBlock))
			var held <-chan struct{}
			if victim == "primary" {
				a.proxy.Cut.Store(true)
				b.proxy.Cut.Store(true)
			} else {
				held = b.disk.holdWrites()
			}
			const inflight = 4
			var res []<-chan error
			for i := range inflight {
				// Spread over both activity-log extents.
				off := int64(i)*(hDiskSize/inflight) + 5*hBlock
				res = append(res, a.asyncWrite(off, pattern(fmt.Sprintf("in flight %d", i), 3*hBlock)))
			}
			if held != nil {
				<-held
			}
			a.waitStatus("local writes done, peer writes pending", func(s status.Resource) bool {
				return s.LocalPending == 0 && s.PeerPending == inflight
			})
			x, other := a, b
			if victim == "secondary" {
				x, other = b, a
			}
			if c.how == "power cut" {
				x.powerLoss()
				if bytes.Equal(x.read(0, 8*hBlock), pattern("settled", 8*hBlock)) {
					t.Fatal("the power cut took nothing from the disk")
				}
			} else {
				x.crash()
			}
			if victim == "secondary" {
				for i, ch := range res {
					if err := recvErr(t, fmt.Sprintf("write %d", i), ch); err != nil {
						t.Fatalf("write %d on the surviving primary: %v", i, err)
					}
				}
			}
			other.waitConn(replica.WFConnection)
			if victim == "primary" {
				if got := b.read(5*hBlock, 3*hBlock); string(got) == string(pattern("in flight 0", 3*hBlock)) {
					t.Fatal("the cut link delivered a write")
				}
				a.proxy.Cut.Store(false)
				b.proxy.Cut.Store(false)
			}
			x.start()
			if victim == "primary" {
				if st := a.node.State(); st.Role != replica.Secondary {
					t.Fatalf("crashed primary came back as %v, want Secondary", st.Role)
				}
				if got := a.node.Status().OutOfSyncKiB; got == 0 {
					t.Fatal("the restarted primary marks nothing out of sync")
				}
			}
			inSyncAndEqual(t, a, b)
			if victim == "primary" {
				if err := a.node.Promote(false); err != nil {
					t.Fatalf("promote the restarted node again: %v", err)
				}
			}
		})
	}
}

// TestScenarioPeerRefusedBeforeDataMoves: a peer with another disk size, or
// without the shared secret, is refused in the handshake: the nodes never
// connect, the status says why, and the primary's writes reach only its own
// disk (marked out of sync).
func TestScenarioPeerRefusedBeforeDataMoves(t *testing.T) {
	for _, tt := range []struct {
		story  string
		oa, ob nodeOpts
		want   error
	}{
		{"other disk size", nodeOpts{assumeClean: true}, nodeOpts{assumeClean: true, size: hDiskSize / 2}, protocol.ErrSizeMismatch},
		{"wrong secret", nodeOpts{assumeClean: true, secret: "correct horse"}, nodeOpts{assumeClean: true, secret: "battery staple"}, protocol.ErrAuth},
		{"secret on one side only", nodeOpts{assumeClean: true, secret: "correct horse"}, nodeOpts{assumeClean: true}, protocol.ErrAuth},
	} {
		t.Run(tt.story, func(t *testing.T) {
			a, b := newPair(t, tt.oa, tt.ob)
			a.start()
			b.start()
			for _, x := range []*tnode{a, b} {
				x.waitStatus("the refusal in the status", func(s status.Resource) bool {
					return strings.Contains(s.Reason, tt.want.Error())
				})
			}
			if err := a.node.Promote(false); err != nil {
				t.Fatal(err)
			}
			a.write(0, pattern("alone", hBlock))
			if got := a.node.Status().OutOfSyncKiB; got != hBlock>>10 {
				t.Fatalf("out of sync %d KiB, want %d", got, hBlock>>10)
			}
			if got := b.read(0, hBlock); string(got) == string(pattern("alone", hBlock)) {
				t.Fatal("a write reached the refused peer")
			}
			for _, x := range []*tnode{a, b} {
				if st := x.node.State(); st.Conn.Connected() || st.PeerDisk != replica.DUnknown {
					t.Fatalf("%s connected to a refused peer: %+v", x.label, st)
				}
			}
		})
	}
}

// TestScenarioTransferLogMarksUnflushedWritesOnPeerLoss: writes the peer
// wrote but has not flushed may vanish if the peer loses power, so on peer
// loss they are marked out of sync with the ones in flight; after a Flush
// (and for FUA writes) the peer's copy is durable and nothing is marked.
// Without any flush from the application, the primary asks the peer for one
// every 5 s (peerFlushInterval), and after it nothing is marked either.
func TestScenarioTransferLogMarksUnflushedWritesOnPeerLoss(t *testing.T) {
	for _, tt := range []struct {
		story   string
		cover   string // what makes the writes durable on the peer: "", "flush", "fua", "periodic"
		wantKiB uint64
	}{
		{"unflushed writes are marked", "", 5 * hBlock >> 10},
		{"flushed writes are not", "flush", 0},
		{"FUA writes are not", "fua", 0},
		{"writes covered by the periodic peer flush are not", "periodic", 0},
	} {
		t.Run(tt.story, func(t *testing.T) {
			a, b := cleanPair(t, nodeOpts{}, nodeOpts{volatile: true})
			for i := range 5 {
				if err := a.node.WriteAt(context.Background(), pattern(fmt.Sprintf("tl %d", i), hBlock), int64(i)*50*hBlock, tt.cover == "fua"); err != nil {
					t.Fatal(err)
				}
			}
			switch tt.cover {
			case "":
				if got := b.disk.flushes.Load(); got != 0 {
					t.Fatalf("the peer ran %d flushes that nobody asked for", got)
				}
			case "flush":
				if err := a.node.Flush(context.Background()); err != nil {
					t.Fatal(err)
				}
			case "periodic":
				if a.node.TransferLogEmpty() {
					t.Fatal("transfer log empty right after unflushed writes")
				}
				a.waitFor("the periodic peer flush", a.node.TransferLogEmpty)
				if b.disk.flushes.Load() == 0 {
					t.Fatal("transfer log emptied without a flush on the peer")
				}
			}
			if got := a.node.Status().OutOfSyncKiB; got != 0 {
				t.Fatalf("out of sync while connected: %d KiB", got)
			}
			bm0 := a.node.Status().BMWrites
			b.powerLoss() // takes from b's disk whatever no flush covered
			if lost := !bytes.Equal(b.read(0, hBlock), pattern("tl 0", hBlock)); lost != (tt.wantKiB > 0) {
				t.Fatalf("the power cut took the first write from the peer's disk: %v, want %v", lost, tt.wantKiB > 0)
			}
			a.waitConn(replica.WFConnection)
			st := a.node.Status()
			if st.OutOfSyncKiB != tt.wantKiB {
				t.Fatalf("out of sync after peer loss: %d KiB, want %d", st.OutOfSyncKiB, tt.wantKiB)
			}
			if tt.wantKiB > 0 && st.BMWrites == bm0 {
				t.Fatal("the marks of the peer loss were not persisted before the node went on alone")
			}
			b.start()
			a.waitInSync()
			sameDisks(t, a, b)
		})
	}
}

// TestScenarioWriteFailedOnPeerIsMarked: a write the peer's disk failed is
// answered (the local disk has it) and marked out of sync. The Secondary's
// disk becomes Inconsistent at once, as DRBD detaches a failed disk: it lacks
// an answered write, so when the Primary dies before the repair it refuses
// promotion; the local-io-error handler runs; the resync that follows copies
// the block.
func TestScenarioWriteFailedOnPeerIsMarked(t *testing.T) {
	for _, primaryDies := range []bool{false, true} {
		t.Run(map[bool]string{false: "the resync repairs it", true: "the Primary dies first"}[primaryDies], func(t *testing.T) {
			a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
			off := int64(30 * hBlock)
			b.disk.failAt.Store(off + 1)
			held := b.disk.holdWrites() // the repair's copy waits at b's disk
			p := pattern("failed on the peer", hBlock)
			a.write(off, p)
			if b.disk.failAt.Load() != 0 {
				t.Fatal("the write never reached the peer's disk")
			}
			if !a.store.Bitmap().IsSet(off, hBlock) {
				t.Fatal("the write the peer failed is not marked out of sync")
			}
			b.waitState("b Inconsistent after its disk failed", func(s replica.State) bool { return s.Disk == replica.Inconsistent })
			b.waitEvent("local-io-error")
			<-held
			if primaryDies {
				a.crash()
				b.waitConn(replica.WFConnection)
				if err := b.node.Promote(false); !errors.Is(err, replica.ErrNotUpToDate) {
					t.Fatalf("promoting the node whose disk lacks an answered write: %v, want ErrNotUpToDate", err)
				}
				a.start()
			}
			recv0 := b.node.Status().NetRecvKiB
			b.disk.releaseWrites()
			a.waitInSync()
			b.waitInSync()
			if !bytes.Equal(b.read(off, hBlock), p) {
				t.Fatal("the resync did not copy the write the peer failed")
			}
			sameDisks(t, a, b)
			if got := b.node.Status().NetRecvKiB - recv0; !primaryDies && got != hBlock>>10 {
				t.Fatalf("the repair copied %d KiB, want the one failed block (%d KiB)", got, hBlock>>10)
			}
		})
	}
}

// TestScenarioResyncCopyFailureStopsTarget: when the sync target's disk fails
// a resync copy, or the flush that makes the copies durable, the target does
// not start over in a loop: it goes StandAlone, Inconsistent, with the disk
// error as the reason and the local-io-error handler run, until the operator
// connects it again (after repairing the disk); that resync completes.
func TestScenarioResyncCopyFailureStopsTarget(t *testing.T) {
	for _, tt := range []struct {
		what   string
		inject func(b *tnode)
	}{
		{"a copy", func(b *tnode) { b.disk.failAt.Store(2<<20 + 1) }}, // the third MiB
		{"a flush", func(b *tnode) { b.disk.failFlush.Store(true) }},
	} {
		t.Run(tt.what, func(t *testing.T) {
			a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
			a.write(0, pattern("primary data", 256*hBlock))
			tt.inject(b)
			if err := b.node.Invalidate(); err != nil {
				t.Fatal(err)
			}
			st := b.waitState("b StandAlone after its disk failed", func(s replica.State) bool { return s.Conn == replica.StandAlone })
			if st.Disk != replica.Inconsistent || !strings.Contains(st.Reason, "local disk error") {
				t.Fatalf("after the disk failed: %+v", st)
			}
			b.waitEvent("local-io-error")
			a.waitConn(replica.WFConnection)
			time.Sleep(500 * time.Millisecond) // room for a reconnect that should not come
			if c := b.node.State().Conn; c != replica.StandAlone {
				t.Fatalf("b is %v: it reconnected without the operator", c)
			}
			reconnect(t, b)
			inSyncAndEqual(t, a, b)
		})
	}
}

// TestScenarioFailedPeerFlushMarksUnflushedWrites: when the peer's fdatasync
// fails, the writes that flush was to make durable there are marked out of
// sync, on disk, before the FLUSH is answered (the local disk has them, so
// the FLUSH succeeds). The peer's disk becomes Inconsistent (it cannot know
// what it lost) and StandAlone, since its later flushes would fail too; once
// the operator connects it again, a full resync repairs it.
func TestScenarioFailedPeerFlushMarksUnflushedWrites(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	ctx := context.Background()
	for i := range 5 {
		a.write(int64(i)*50*hBlock, pattern(fmt.Sprintf("unflushed %d", i), hBlock))
	}
	bm0 := a.node.Status().BMWrites
	b.disk.failFlush.Store(true)
	b.disk.holdWrites() // the repair's copies wait at b's disk
	if err := a.node.Flush(ctx); err != nil {
		t.Fatalf("a FLUSH durable on the local disk only: %v", err)
	}
	if b.disk.failFlush.Load() {
		t.Fatal("the FLUSH never reached the peer's disk")
	}
	for i := range 5 {
		if !a.store.Bitmap().IsSet(int64(i)*50*hBlock, hBlock) {
			t.Fatalf("unflushed write %d is not marked after the failed peer flush", i)
		}
	}
	if a.node.Status().BMWrites == bm0 {
		t.Fatal("the FLUSH was answered before the bitmap was persisted")
	}
	b.waitState("b Inconsistent and StandAlone after its flush failed", func(s replica.State) bool {
		return s.Disk == replica.Inconsistent && s.Conn == replica.StandAlone
	})
	b.waitEvent("local-io-error")
	b.disk.releaseWrites()
	reconnect(t, b)
	inSyncAndEqual(t, a, b)
}

// TestScenarioEarlyAckPeerLossMarksUnwrittenWrites: protocol A acknowledges
// a write once it is handed to the socket, B once the peer received it; when
// the peer dies before writing them, those acknowledged writes are marked
// out of sync and the resync delivers them.
func TestScenarioEarlyAckPeerLossMarksUnwrittenWrites(t *testing.T) {
	for _, proto := range []byte{'A', 'B'} {
		t.Run(string(proto), func(t *testing.T) {
			o := nodeOpts{protocol: proto}
			a, b := cleanPair(t, o, o)
			held := b.disk.holdWrites()
			const n = 6
			for i := range n {
				a.write(int64(i)*70*hBlock, pattern(fmt.Sprintf("queued %d", i), 2*hBlock))
			}
			<-held
			if got := a.node.Status().PeerPending; got != n {
				t.Fatalf("%d writes pending on the peer, want %d", got, n)
			}
			b.crash()
			b.disk.releaseWrites()
			if st := a.waitConn(replica.WFConnection); st.PeerDisk != replica.DUnknown {
				t.Fatalf("primary after its peer crashed: %+v, want PeerDisk DUnknown", st)
			}
			if got := a.node.Status().OutOfSyncKiB; got != n*2*hBlock>>10 {
				t.Fatalf("out of sync after losing %d acknowledged, unwritten writes: %d KiB, want %d", n, got, n*2*hBlock>>10)
			}
			b.start()
			inSyncAndEqual(t, a, b)
		})
	}
}

// startHeldResync fills a's disk with data, invalidates b and returns once b,
// now a resync target, wrote three 1 MiB chunks (copies run in parallel, so
// any three) and the next is held; b's writes stay held until
// b.disk.releaseWrites. It returns b's NetRecvKiB from before the resync.
func startHeldResync(t *testing.T, a, b *tnode) (recv0 uint64) {
	t.Helper()
	a.write(0, pattern("primary data", hDiskSize)) // data everywhere: every chunk crosses the link
	held := b.disk.holdWritesAfter(3)
	recv0 = b.node.Status().NetRecvKiB
	if err := b.node.Invalidate(); err != nil {
		t.Fatal(err)
	}
	<-held
	return recv0
}

// TestScenarioInterruptedResyncResumes: a full resync is cut off after the
// target wrote three of its 1 MiB chunks; after the reconnect only the rest
// is copied, not the whole disk again.
func TestScenarioInterruptedResyncResumes(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	recv0 := startHeldResync(t, a, b)
	// The source learns of the three chunks from the target's answers; a
	// resync resumes from what the source knows was copied.
	a.waitStatus("the source seeing three copies answered", func(s status.Resource) bool { return s.OutOfSyncKiB <= hDiskSize>>10-3<<10 })
	// A flush makes the copies durable on the target: they leave the
	// source's transfer log, which would mark them again on disconnect.
	if err := a.node.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := b.node.Disconnect(false); err != nil {
		t.Fatal(err)
	}
	b.disk.releaseWrites()
	a.waitConn(replica.WFConnection)
	first := b.node.Status().NetRecvKiB - recv0
	if first != 3<<10 {
		t.Fatalf("before the cut the target took %d KiB, want 3 MiB", first)
	}
	if st := b.node.State(); st.Disk != replica.Inconsistent {
		t.Fatalf("interrupted target: %+v", st)
	}
	reconnect(t, b)
	inSyncAndEqual(t, a, b)
	if second := b.node.Status().NetRecvKiB - recv0 - first; second != hDiskSize>>10-3<<10 {
		t.Fatalf("the resumed resync copied %d KiB, want the remaining %d KiB", second, hDiskSize>>10-3<<10)
	}
}

// TestScenarioResyncResumesAfterTargetCrash: during a resync both nodes
// checkpoint their bitmaps (every 2 s), so a resync target whose process dies
// resumes after a restart from its last checkpoint instead of starting over.
func TestScenarioResyncResumesAfterTargetCrash(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	startHeldResync(t, a, b)
	a.waitStatus("the source seeing three copies answered", func(s status.Resource) bool { return s.OutOfSyncKiB <= hDiskSize>>10-3<<10 })
	// A flush makes the copies durable on the target: they leave the
	// source's transfer log, which would mark them again on peer loss.
	if err := a.node.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	bm := b.node.Status().BMWrites
	b.waitFor("a bitmap checkpoint during the resync", func() bool { return b.node.Status().BMWrites > bm })
	b.crash()
	b.disk.releaseWrites()
	b.start()
	inSyncAndEqual(t, a, b)
	if got, want := b.node.Status().NetRecvKiB, int64(hDiskSize>>10-3<<10); int64(got) != want {
		t.Fatalf("after the restart the resync copied %d KiB, want the remaining %d KiB", got, want)
	}
}

// TestScenarioPeerLossMarksUnflushedResyncCopies: a sync target answers a
// copy once it is in its page cache. Until a peer flush covers the copy, the
// source keeps it in its transfer log, so when the target's machine loses
// power the copies are marked out of sync again and the next resync
// delivers them.
func TestScenarioPeerLossMarksUnflushedResyncCopies(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{volatile: true})
	b.disk.holdFlushes() // no flush makes the copies durable before the cut
	startHeldResync(t, a, b)
	all := uint64(hDiskSize >> 10)
	a.waitStatus("the source seeing three copies answered", func(s status.Resource) bool { return s.OutOfSyncKiB <= all-3<<10 })
	b.powerLoss()
	a.waitConn(replica.WFConnection)
	if got := a.node.Status().OutOfSyncKiB; got != all {
		t.Fatalf("after the target lost its page cache the source marks %d KiB out of sync, want all %d KiB again", got, all)
	}
	b.start()
	inSyncAndEqual(t, a, b)
}

// TestScenarioFinishedResyncForgetsItsCopies: the source of a finished
// resync has the target flush, so its transfer log forgets the copies
// without waiting for the application's next flush, and a peer loss after
// that marks nothing: the next reconnect copies only what changed since,
// not the whole last resync again. The log must be empty well before the
// Primary's periodic peer flush (5 s after the session started) or an
// activity-log sweep (5 s of idleness at least) would empty it anyway.
func TestScenarioFinishedResyncForgetsItsCopies(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	if err := b.node.Disconnect(false); err != nil {
		t.Fatal(err)
	}
	a.waitConn(replica.WFConnection)
	a.write(0, pattern("written alone", hDiskSize/2))
	reconnect(t, b)
	connected := time.Now()
	inSyncAndEqual(t, a, b)
	for !a.node.TransferLogEmpty() {
		if time.Since(connected) > 3*time.Second {
			t.Fatal("the source's transfer log still holds the resync's copies 3 s after the reconnect")
		}
		time.Sleep(2 * time.Millisecond)
	}
	if err := b.node.Disconnect(false); err != nil {
		t.Fatal(err)
	}
	a.waitConn(replica.WFConnection)
	if got := a.node.Status().OutOfSyncKiB; got != 0 {
		t.Fatalf("after the peer left, the source marks %d KiB of the finished resync out of sync again", got)
	}
}

// TestScenarioSyncTargetMarksWhatAPowerCutTakes: a sync target's bitmap never
// calls a copied block in sync before an fdatasync made the copy durable,
// neither in a checkpoint during the resync nor when the resync ends and the
// disk becomes UpToDate. After a power cut the target restarts alone (so the
// source's own marks cannot help) and every block it lacks must be marked;
// the next resync then makes both disks equal.
func TestScenarioSyncTargetMarksWhatAPowerCutTakes(t *testing.T) {
	cut := map[string]func(t *testing.T, a, b *tnode){
		"during the resync, after a checkpoint": func(t *testing.T, a, b *tnode) {
			held := b.disk.holdWritesAfter(3)
			b.disk.holdFlushes()
			reconnect(t, b)
			<-held
			// Written is not durable: no copy leaves the bitmap before
			// an fdatasync covers it.
			time.Sleep(100 * time.Millisecond) // room for a bitmap that would not wait
			if got := b.node.Status().OutOfSyncKiB; got != hDiskSize>>10 {
				t.Fatalf("with three copies written and no flush the target marks %d KiB out of sync, want all %d KiB", got, hDiskSize>>10)
			}
			b.disk.releaseFlushes()
			// The copies leave the bitmap once durable; one more copy
			// then changes it, so the next checkpoint writes it.
			b.waitStatus("three copies in sync", func(s status.Resource) bool { return s.OutOfSyncKiB <= hDiskSize>>10-3<<10 })
			bm := b.node.Status().BMWrites
			b.disk.allowWrites(1)
			b.waitFor("a bitmap checkpoint after a fourth copy", func() bool { return b.node.Status().BMWrites > bm })
		},
		"after the resync": func(t *testing.T, a, b *tnode) {
			reconnect(t, b)
			a.waitInSync()
			b.waitInSync()
		},
	}
	for name, before := range cut {
		t.Run(name, func(t *testing.T) {
			a, b := cleanPair(t, nodeOpts{}, nodeOpts{volatile: true})
			if err := b.node.Disconnect(false); err != nil {
				t.Fatal(err)
			}
			a.waitConn(replica.WFConnection)
			for off := int64(0); off < hDiskSize; off += 1 << 20 {
				a.write(off, pattern(fmt.Sprintf("written while apart %d", off), 1<<20))
			}
			before(t, a, b)
			if err := a.node.Disconnect(false); err != nil {
				t.Fatal(err)
			}
			b.powerLoss()
			b.start()
			want, got := a.image(), b.image()
			bm := b.store.Bitmap()
			lacking := 0
			for off := int64(0); off < hDiskSize; off += hBlock {
				if bytes.Equal(want[off:off+hBlock], got[off:off+hBlock]) {
					continue
				}
				lacking++
				if !bm.IsSet(off, hBlock) {
					t.Fatalf("after the power cut the target lacks the block at %d but its bitmap calls it in sync (state %+v)", off, b.node.State())
				}
			}
			t.Logf("the power cut took %d blocks; all are marked", lacking)
			reconnect(t, a)
			inSyncAndEqual(t, a, b)
		})
	}
}

// TestScenarioPowerCutAfterExtentLeftTheLog: a write the application never
// flushed sits in both page caches once answered. When its extent leaves the
// Primary's activity log, because it went cold (sweep) or because a write
// elsewhere needed its slot (eviction), nothing records it any more, so by
// then it must be durable on both disks: otherwise a power cut of the
// Primary takes it from there while the Secondary keeps it, or a power cut
// of both machines (the Primary first, so its transfer log dies with it)
// takes it from the Secondary only, and the disks differ with no mark that
// would resync them.
func TestScenarioPowerCutAfterExtentLeftTheLog(t *testing.T) {
	for _, how := range []string{"sweep", "eviction"} {
		for _, both := range []bool{false, true} {
			name := how + ", power cut of " + map[bool]string{false: "the Primary", true: "both machines"}[both]
			t.Run(name, func(t *testing.T) {
				o := nodeOpts{volatile: true}
				if how == "eviction" {
					o.alExtents = 1 // of the disk's two extents
				}
				a, b := cleanPair(t, o, o)
				off := int64(hDiskSize - 2*hBlock) // in the last extent
				a.write(off, pattern("never flushed", hBlock))
				fa, fb := a.disk.flushes.Load(), b.disk.flushes.Load()
				if how == "sweep" {
					for range 2 { // the first sweep sees the extent touched, the second drops it
						if err := a.node.Sweep(); err != nil {
							t.Fatal(err)
						}
					}
					if n := a.store.HotExtents(); n != 0 {
						t.Fatalf("%d extents still hot after two sweeps", n)
					}
				} else {
					// The first extent takes the last one's slot.
					a.write(0, pattern("in the first extent", hBlock))
				}
				if n := a.disk.flushes.Load() - fa; n != 1 {
					t.Fatalf("the %s flushed the Primary's disk %d times, want once", how, n)
				}
				if b.disk.flushes.Load() == fb {
					t.Fatalf("the %s dropped the extent without flushing the Secondary's disk", how)
				}
				a.powerLoss()
				if both {
					b.powerLoss()
					b.start()
				}
				b.waitConn(replica.WFConnection)
				a.start()
				a.waitConn(replica.Connected)
				b.waitInSync()
				sameDisks(t, a, b)
			})
		}
	}
}

// TestScenarioWriteWaitsForActivityLog: a write to an extent that is not in
// the activity log goes neither to the peer nor to the local disk before the
// activity log holding its extent is durable. Otherwise a crash in between
// could leave blocks that differ between the nodes with no record of them.
func TestScenarioWriteWaitsForActivityLog(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	off := int64(hDiskSize - hBlock) // in the last extent, which nothing wrote
	held := a.metaFS.al.hold()
	recv0 := b.node.Status().NetRecvKiB
	p := pattern("after the activity log", hBlock)
	done := a.asyncWrite(off, p)
	select {
	case <-held:
	case err := <-done:
		t.Fatalf("the write returned (%v) without writing the activity log", err)
	case <-time.After(hWait):
		t.Fatal("the write never wrote the activity log")
	}
	time.Sleep(100 * time.Millisecond) // room for a write that would not wait
	if n := b.node.Status().NetRecvKiB - recv0; n != 0 {
		t.Errorf("the peer received %d KiB before the activity log was durable", n)
	}
	zero := make([]byte, hBlock)
	for _, x := range []*tnode{a, b} {
		if !bytes.Equal(x.read(off, hBlock), zero) {
			t.Errorf("%s's disk was written before the activity log was durable", x.label)
		}
	}
	a.metaFS.al.release()
	if err := recvErr(t, "the write", done); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b.read(off, hBlock), p) {
		t.Fatal("the write is not on the peer's disk")
	}
}

// TestScenarioResyncGoesRoundForBitsBehindIt: a block that goes out of sync
// during a resync behind the resync's scan position (here a replicated write
// the target's disk failed) is copied by another pass before the target is
// declared UpToDate.
func TestScenarioResyncGoesRoundForBitsBehindIt(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	startHeldResync(t, a, b)
	const chunk = 1 << 20
	off := int64(-1)
	a.waitFor("the source to see a chunk answered", func() bool {
		for c := int64(0); c < hDiskSize/chunk; c++ {
			if !a.store.Bitmap().IsSet(c*chunk, chunk) {
				off = c * chunk
				return true
			}
		}
		return false
	})
	// A write into that chunk is behind the resync; the target fails it.
	b.disk.failAt.Store(off + 1)
	p := pattern("behind the scan", hBlock)
	a.write(off, p)
	if b.disk.failAt.Load() != 0 {
		t.Fatal("the replicated write never reached the target's disk")
	}
	b.disk.releaseWrites()
	b.waitState("disk UpToDate", func(s replica.State) bool { return s.Disk == replica.UpToDate })
	if oos := a.node.Status().OutOfSyncKiB; oos != 0 {
		t.Fatalf("the target was declared UpToDate with %d KiB still out of sync on the source", oos)
	}
	inSyncAndEqual(t, a, b)
	if !bytes.Equal(b.read(off, hBlock), p) {
		t.Fatal("the write the target failed was never copied to it")
	}
}

// TestScenarioOverlappingWriteWaitsForEarlierLocalWrite: a write that
// overlaps one still being written on the primary's disk is neither sent to
// the peer nor answered until that local write ended. If it overtook the
// earlier write on either side, the disks could end up holding different
// orders of the two.
func TestScenarioOverlappingWriteWaitsForEarlierLocalWrite(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	p1, p2 := pattern("first", 2*hBlock), pattern("second", 2*hBlock)
	held := a.disk.holdWrites()
	first := a.asyncWrite(0, p1)
	<-held // sent to the peer, held on the primary's disk
	b.waitFor("the first write on the peer", func() bool { return bytes.Equal(b.read(0, 2*hBlock), p1) })
	second := a.asyncWrite(hBlock, p2) // overlaps the first write's second block
	select {
	case err := <-second:
		t.Fatalf("the overlapping write returned (%v) while the earlier one was held", err)
	case <-held:
		t.Fatal("the overlapping write reached the primary's disk while the earlier one was held")
	case <-time.After(100 * time.Millisecond):
	}
	if !bytes.Equal(b.read(hBlock, hBlock), p1[hBlock:]) {
		t.Fatal("the overlapping write reached the peer while the earlier one was held on the primary")
	}
	a.disk.releaseWrites()
	for _, ch := range []<-chan error{first, second} {
		if err := recvErr(t, "write", ch); err != nil {
			t.Fatal(err)
		}
	}
	want := append(p1[:hBlock:hBlock], p2...)
	for _, x := range []*tnode{a, b} {
		if !bytes.Equal(x.read(0, 3*hBlock), want) {
			t.Fatalf("%s's disk does not hold the first write overwritten by the second", x.label)
		}
	}
}

// TestScenarioLargeWriteWaitsForQueuedWritesOnPeer: the secondary applies a
// large write (written straight from its receive buffer) only after every
// smaller write queued before it, so it cannot overtake an overlapping one.
func TestScenarioLargeWriteWaitsForQueuedWritesOnPeer(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	small, large := pattern("small", hBlock), pattern("large", 32*hBlock)
	held := b.disk.holdWrites()
	first := a.asyncWrite(8*hBlock, small)
	<-held                           // queued on the peer and held there
	second := a.asyncWrite(0, large) // 128 KiB over the small write
	select {
	case <-held:
		t.Fatal("the large write reached the peer's disk before the earlier small one")
	case <-time.After(100 * time.Millisecond):
	}
	b.disk.releaseWrites()
	for _, ch := range []<-chan error{first, second} {
		if err := recvErr(t, "write", ch); err != nil {
			t.Fatal(err)
		}
	}
	for _, x := range []*tnode{a, b} {
		if !bytes.Equal(x.read(0, 32*hBlock), large) {
			t.Fatalf("%s's disk does not end with the large write over the small one", x.label)
		}
	}
}

// TestScenarioCleanDisconnectOutdatesSecondary: when the Primary disconnects
// cleanly, the Secondary's disk becomes Outdated, survives a restart as
// Outdated and cannot be promoted without --force; the reconnect brings it
// back to UpToDate (by a resync when the Primary wrote meanwhile). A
// Secondary that disconnects itself from its Primary outdates itself too.
func TestScenarioCleanDisconnectOutdatesSecondary(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	if err := a.node.Disconnect(false); err != nil {
		t.Fatal(err)
	}
	if st := b.node.State(); st.Disk != replica.Outdated {
		t.Fatalf("secondary after the primary's disconnect: %+v, want disk Outdated", st)
	}
	if st := a.node.State(); st.PeerDisk != replica.Outdated {
		t.Fatalf("primary after its disconnect: %+v, want PeerDisk Outdated", st)
	}
	b.crash()
	b.start()
	if st := b.node.State(); st.Disk != replica.Outdated {
		t.Fatalf("secondary after a restart: %+v, want disk Outdated", st)
	}
	if err := b.node.Promote(false); !errors.Is(err, replica.ErrNotUpToDate) {
		t.Fatalf("promoting an Outdated secondary: %v, want ErrNotUpToDate", err)
	}
	a.write(0, pattern("written alone", 4*hBlock))
	reconnect(t, a)
	inSyncAndEqual(t, a, b)

	// Nothing written while apart: the reconnect finds the same data.
	if err := b.node.Disconnect(false); err != nil {
		t.Fatal(err)
	}
	if st := b.node.State(); st.Disk != replica.Outdated {
		t.Fatalf("secondary after its own disconnect: %+v, want disk Outdated", st)
	}
	reconnect(t, b)
	b.waitInSync()
	if err := b.node.Promote(false); !errors.Is(err, replica.ErrPeerPrimary) {
		t.Fatalf("promote while the peer is Primary: %v, want ErrPeerPrimary", err)
	}
}

// TestScenarioVerifyPeerShowsVerifyT: while a node verifies, its peer shows
// VerifyT, and Connected again when the verify ends. Writes go on during the
// verify, on either side of it, even with on-peer-loss suspend.
func TestScenarioVerifyPeerShowsVerifyT(t *testing.T) {
	for _, verifier := range []string{"primary", "secondary"} {
		t.Run(verifier, func(t *testing.T) {
			a, b := cleanPair(t, nodeOpts{suspend: true}, nodeOpts{})
			v, peer := a, b
			if verifier == "secondary" {
				v, peer = b, a
			}
			v.node.AdjustRate(2 << 20) // 8 MiB in about 4 s: slow enough to watch
			if err := v.node.Verify(replica.VerifyRange{}); err != nil {
				t.Fatal(err)
			}
			peer.waitConn(replica.VerifyT)
			if st := v.node.State(); st.Conn != replica.VerifyS {
				t.Fatalf("the verifying node: %+v, want VerifyS", st)
			}
			peer.waitStatus("verify progress on the peer", func(s status.Resource) bool {
				return s.Sync != nil && s.Sync.TotalKiB == hDiskSize>>10 && s.Sync.VerifiedKiB > 0
			})
			if a.node.Status().Suspended {
				t.Fatal("writes suspended during an online verify")
			}
			a.write(3*hBlock, pattern("during verify", hBlock))
			v.node.AdjustRate(0)
			a.waitConn(replica.Connected)
			b.waitConn(replica.Connected)
			a.waitInSync()
			sameDisks(t, a, b)
		})
	}
}

// TestScenarioFlushWaitsForEarlierWritesOnPeer: a Flush is a barrier on the
// secondary too: its fdatasync starts only after every write received before
// it was written, and the primary's Flush returns only then.
func TestScenarioFlushWaitsForEarlierWritesOnPeer(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	held := b.disk.holdWrites()
	wrote := a.asyncWrite(5*hBlock, pattern("before the flush", hBlock))
	<-held
	before := b.disk.writesDone.Load()
	flushed := make(chan error, 1)
	go func() { flushed <- a.node.Flush(context.Background()) }()
	b.waitStatus("the write and the flush received", func(s status.Resource) bool { return s.Unacked == 2 })
	select {
	case err := <-flushed:
		t.Fatalf("Flush returned (%v) while an earlier write was held on the peer", err)
	default:
	}
	b.disk.releaseWrites()
	if err := recvErr(t, "write", wrote); err != nil {
		t.Fatal(err)
	}
	if err := recvErr(t, "Flush", flushed); err != nil {
		t.Fatal(err)
	}
	if got := b.disk.doneAtSync.Load(); got <= before {
		t.Fatalf("the secondary's fdatasync started with %d writes done, before the held write (%d done before it)", got, before)
	}
	sameDisks(t, a, b)
}

// TestScenarioFlushAhead: once flushes follow writes closely (a write and a
// flush in turn, like a database commit or fio --fsync=1), both nodes start
// the fdatasync of the likely flush right after each write, covering that
// write, each reported to Observe as "flush_ahead", and the flush still
// succeeds; after runs of many writes between flushes the primary starts no
// sync of its own.
func TestScenarioFlushAhead(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	ctx := context.Background()
	for i := range 3 {
		a.write(int64(i)*hBlock, pattern(fmt.Sprintf("commit %d", i), hBlock))
		if err := a.node.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	a0, b0 := a.disk.flushes.Load(), b.disk.flushes.Load()
	a.write(8*hBlock, pattern("ahead", hBlock))
	aDone, bDone := a.disk.writesDone.Load(), b.disk.writesDone.Load()
	a.waitFor("the primary to sync ahead", func() bool {
		return a.disk.flushes.Load() > a0 && a.disk.doneAtSync.Load() >= aDone
	})
	b.waitFor("the secondary to sync ahead", func() bool {
		return b.disk.flushes.Load() > b0 && b.disk.doneAtSync.Load() >= bDone
	})
	a.waitFor("the primary to report its sync ahead", func() bool { return a.aheads.Load() > 0 })
	b.waitFor("the secondary to report its sync ahead", func() bool { return b.aheads.Load() > 0 })
	if err := a.node.Flush(ctx); err != nil {
		t.Fatal(err)
	}

	// Runs of five writes (longer than aheadRun) between flushes: after
	// the first, the primary's own disk sees only the flushes asked for.
	for r := range 3 {
		a0 = a.disk.flushes.Load()
		for i := range 5 {
			a.write(int64(16+i)*hBlock, pattern(fmt.Sprintf("run %d write %d", r, i), hBlock))
		}
		if err := a.node.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		if r > 0 {
			if got := a.disk.flushes.Load() - a0; got != 1 {
				t.Fatalf("run %d of %d writes and one flush: %d flushes on the primary's disk, want 1", r, 5, got)
			}
		}
	}
	sameDisks(t, a, b)
}

// TestScenarioSecondaryRefusesPeerWritesPastTheEnd: a replicated write, trim
// or zero, or a resync copy of data or zeroes, that does not fit the
// Secondary's disk (a peer bug, or a peer whose disk grew) is answered
// EINVAL and touches nothing; the file backing
// the disk does not grow, and the session goes on.
func TestScenarioSecondaryRefusesPeerWritesPastTheEnd(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	size := int64(hDiskSize)
	for _, tc := range []struct {
		name  string
		off   uint64
		n     uint32
		flags uint32
	}{
		{"write across the end", uint64(size - 512), 1024, 0},
		{"write past the end", uint64(size), 512, 0},
		{"write at a negative offset", 1 << 63, 512, 0},
		{"trim across the end", uint64(size - 512), 1024, protocol.FlagTrim},
		{"zero across the end", uint64(size - 512), 1024, protocol.FlagZero},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := &protocol.Write{Seq: 1, Offset: tc.off, Length: tc.n, Flags: tc.flags}
			if tc.flags == 0 {
				w.Data = pattern(tc.name, int(tc.n))
			}
			if ack := b.node.ApplyPeerWrite(w); ack.Err != protocol.CodeInvalid {
				t.Fatalf("answer %+v, want error %d (EINVAL)", ack, protocol.CodeInvalid)
			}
			fi, err := os.Stat(b.diskPath)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Size() != size {
				t.Fatalf("the disk file is %d bytes, want %d", fi.Size(), size)
			}
		})
	}
	// Resync copies of data and of zeroes alike.
	for _, m := range []protocol.Message{
		&protocol.ResyncData{Seq: 1, Offset: uint64(size - 512), Data: pattern("copy across the end", 1024)},
		&protocol.ResyncData{Seq: 2, Offset: 1 << 63, Data: pattern("copy at a negative offset", 512)},
		&protocol.ResyncZero{Seq: 3, Offset: uint64(size - 512), Length: 1024},
		&protocol.ResyncZero{Seq: 4, Offset: 1 << 63, Length: 512},
	} {
		if ack := b.node.ApplyPeerCopy(m); ack.Err != protocol.CodeInvalid {
			t.Fatalf("%T %+v: answer %+v, want error %d (EINVAL)", m, m, ack, protocol.CodeInvalid)
		}
	}
	if fi, err := os.Stat(b.diskPath); err != nil || fi.Size() != size {
		t.Fatalf("the disk file after the refused copies: %v, %v", fi.Size(), err)
	}
	// The node still applies writes that fit, and stays connected.
	p := pattern("fits", hBlock)
	if ack := b.node.ApplyPeerWrite(&protocol.Write{Seq: 2, Offset: uint64(size - hBlock), Length: hBlock, Data: p}); ack.Err != protocol.CodeOK {
		t.Fatalf("write at the end: answer %+v", ack)
	}
	if got := b.read(size-hBlock, hBlock); !bytes.Equal(got, p) {
		t.Fatal("the write at the end is not on the disk")
	}
	if st := b.node.State(); st.Conn != replica.Connected {
		t.Fatalf("b is %v after refusing the writes", st.Conn)
	}
	a.write(0, pattern("after", hBlock))
}

// TestScenarioBothNodesDecideFromTheStatesExchanged: each node decides the
// resync from the state it sent and the state it received, so both reach the
// same plan even when something changes in between. Two Secondaries of the
// same generation reconnect; only the one with the lower node id has a dirty
// bitmap, so it must be the source. The other has a bit set right after its
// state left: deciding from a fresh state it would see both bitmaps dirty
// and, with the higher node id, make itself source too, and nothing would
// be copied.
func TestScenarioBothNodesDecideFromTheStatesExchanged(t *testing.T) {
	a, b := newPair(t, nodeOpts{assumeClean: true}, nodeOpts{assumeClean: true})
	a.start()
	b.start()
	a.waitInSync()
	b.waitInSync()
	hi, lo := a, b
	if b.node.NodeID() > a.node.NodeID() {
		hi, lo = b, a
	}
	if err := lo.node.Disconnect(false); err != nil {
		t.Fatal(err)
	}
	hi.waitConn(replica.WFConnection)

	changed := pattern("changed on the lower id alone", hBlock)
	lo.poke(7*hBlock, changed)
	lo.node.MarkOutOfSync(7*hBlock, hBlock)
	var once sync.Once
	hi.node.OnStateSent(func() {
		once.Do(func() { hi.node.MarkOutOfSync(40*hBlock, hBlock) })
	})
	reconnect(t, lo)
	inSyncAndEqual(t, a, b)
	if got := hi.read(7*hBlock, hBlock); !bytes.Equal(got, changed) {
		t.Fatal("the block only the lower id changed did not reach the other node")
	}
}

// TestScenarioResyncSourceCopiesOnlyDurableData: a resync source must not
// hand the target data its own disk may still lose. Here the Secondary b has
// a write in its page cache only (nobody flushed); the Primary a loses power
// and with it that write; b is promoted and resyncs a from its page cache,
// and a makes the copy durable. If b's machine then lost power, b would lose
// the write a now keeps, and nothing would mark the block: b wrote it as a
// Secondary (its activity log never held it) and the resync cleared the
// bits. So the source syncs its disk before it copies or compares anything.
func TestScenarioResyncSourceCopiesOnlyDurableData(t *testing.T) {
	o := nodeOpts{volatile: true}
	a, b := cleanPair(t, o, o)
	a.write(5*hBlock, pattern("answered, never flushed", hBlock))
	a.powerLoss()
	b.waitConn(replica.WFConnection)
	if err := b.node.Promote(false); err != nil {
		t.Fatal(err)
	}
	a.start()
	inSyncAndEqual(t, a, b)

	b.powerLoss()
	a.waitConn(replica.WFConnection)
	b.start()
	inSyncAndEqual(t, a, b)
}

// TestScenarioPeerLossReasonSaysWhy: a peer loss says what ended the
// connection (the peer-lost handler's URBD_REASON; the status reason says
// the same until a reconnection attempt replaces it): a dead link is a peer
// that stopped answering, a connection closed under the nodes is closed or
// reset, and a peer that disconnects or stops says so before it goes.
func TestScenarioPeerLossReasonSaysWhy(t *testing.T) {
	// a notices a dead link first: b waits much longer.
	a, b := cleanPair(t, nodeOpts{viaProxy: true, timeout: time.Second}, nodeOpts{viaProxy: true, timeout: 20 * time.Second})
	const lost = "replica: peer connection lost: "
	cutLink(a, b, true)
	if r := a.nthLoss(1); !strings.HasPrefix(r, lost+"no answer") {
		t.Errorf("a dead link: %q, want the peer not answering", r)
	}
	cutLink(a, b, false)
	a.proxy.Reset()
	b.proxy.Reset()
	a.waitConn(replica.Connected)
	a.proxy.Reset()
	b.proxy.Reset()
	// The peer may notice first and be back before this node read the
	// end of the old connection: the new one replaces it, and says so.
	if r := a.nthLoss(2); r != lost+"the peer closed the connection" && r != lost+"the connection was reset" &&
		r != lost+"replaced by a new connection from the peer" {
		t.Errorf("a connection closed under the nodes: %q", r)
	}
	a.waitConn(replica.Connected)
	if err := b.node.Disconnect(false); err != nil {
		t.Fatal(err)
	}
	if r := a.nthLoss(3); r != lost+"the peer disconnected (urbd disconnect)" {
		t.Errorf("a peer disconnected by its operator: %q", r)
	}
	if err := b.node.Connect(false); err != nil {
		t.Fatal(err)
	}
	a.waitConn(replica.Connected)
	b.stop()
	if r := a.nthLoss(4); !strings.HasPrefix(r, lost+"the peer is shutting down") {
		t.Errorf("a stopped peer: %q", r)
	}
}

// TestScenarioSplitBrainDiscardLeastChanges: with after-sb-0pri
// discard-least-changes, two Secondaries that both wrote since the split
// resolve it on their own: the node that changed fewer blocks becomes
// SyncTarget and takes the other's data; its own changes are gone.
func TestScenarioSplitBrainDiscardLeastChanges(t *testing.T) {
	o := nodeOpts{afterSB: replica.AfterSplitBrain{NoPrimary: replica.SB0DiscardLeastChanges}}
	a, b := cleanPair(t, o, o)
	for _, x := range []*tnode{a, b} {
		if err := x.node.Disconnect(false); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.node.Promote(true); err != nil {
		t.Fatal(err)
	}
	a.write(10*hBlock, pattern("a alone", 3*hBlock)) // three blocks
	b.write(40*hBlock, pattern("b alone", hBlock))   // one block
	for _, x := range []*tnode{a, b} {
		if err := x.node.Demote(false); err != nil {
			t.Fatal(err)
		}
	}
	for _, x := range []*tnode{a, b} {
		reconnect(t, x)
	}
	inSyncAndEqual(t, a, b)
	if !bytes.Equal(b.read(10*hBlock, 3*hBlock), pattern("a alone", 3*hBlock)) {
		t.Fatal("the node with more changes did not win")
	}
	if bytes.Equal(b.read(40*hBlock, hBlock), pattern("b alone", hBlock)) {
		t.Fatal("the node with fewer changes kept its write")
	}
	for _, x := range []*tnode{a, b} {
		x.waitEvent("initial-split-brain")
		if x.sawEvent("split-brain") {
			t.Errorf("%s ran the split-brain handler for a split brain resolved automatically", x.label)
		}
	}
}
