package replica_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/urbd/urbd/replica"
	"github.com/urbd/urbd/status"
)

// congestedWrites writes n writes of 64 KiB from off on the Primary a in a
// goroutine, each a pattern of tag, and returns the channel its result
// arrives on.
func congestedWrites(a *tnode, tag string, off int64, n int) <-chan error {
	done := make(chan error, 1)
	go func() {
		p := pattern(tag, 64<<10)
		for i := range n {
			if err := a.node.WriteAt(context.Background(), p, off+int64(i)*int64(len(p)), false); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	return done
}

// releasedInSync lets the Secondary b's disk take writes again and waits
// until both nodes are in sync, with equal disks: the link drained and the
// resync that ends Ahead has run.
func releasedInSync(t *testing.T, a, b *tnode) {
	t.Helper()
	b.disk.releaseWrites()
	a.waitInSync()
	b.waitInSync()
	sameDisks(t, a, b)
}

// TestScenarioPullAhead: a protocol A Primary set to pull ahead whose peer
// stops answering (its disk holds every write) goes Ahead once 256 KiB are
// in flight: its writes go on at local speed, recorded in the bitmap, the
// connection stays up, and the peer is Behind with its disk Outdated (and
// not promoted, even with --force). Once the peer's disk answers again the Primary
// resyncs what it wrote meanwhile (SyncSource; the peer SyncTarget), both
// end Connected and UpToDate with equal disks, and a second round in the
// same session goes the same way.
func TestScenarioPullAhead(t *testing.T) {
	o := nodeOpts{protocol: 'A', timeout: 20 * time.Second,
		congestion: replica.Congestion{Policy: replica.CongestionPullAhead, Fill: 256 << 10}}
	a, b := cleanPair(t, o, o)
	for round, tag := range []string{"first", "second"} {
		b.disk.holdWrites()
		// 4 MiB, sixteen times the fill: with the peer's disk held they
		// return only if the Primary stops sending.
		if err := recvErr(t, tag+" writes past a stuck peer", congestedWrites(a, tag, int64(round)*(2<<20), 64)); err != nil {
			t.Fatal(err)
		}
		st := a.waitStatus("Ahead, the peer Outdated", func(s status.Resource) bool { return s.ConnState == "Ahead" && s.PeerDisk == "Outdated" })
		if st.OutOfSyncKiB == 0 || !strings.Contains(st.Reason, "congestion-fill 256KiB") {
			t.Fatalf("round %d: the Ahead Primary's status: %d KiB out of sync, reason %q", round, st.OutOfSyncKiB, st.Reason)
		}
		bs := b.waitState("Behind, Outdated", func(s replica.State) bool { return s.Conn == replica.Behind && s.Disk == replica.Outdated })
		if !strings.Contains(bs.Reason, "pulled ahead") {
			t.Fatalf("round %d: the Behind node's reason: %q", round, bs.Reason)
		}
		if m := b.store.Meta(); m.Disk != "Outdated" {
			t.Fatalf("round %d: the Behind node's metadata says its disk is %s, want Outdated (a restart would take it for current)", round, m.Disk)
		}
		if err := b.node.Promote(true); err == nil {
			t.Fatalf("round %d: the Behind node was promoted", round)
		}
		releasedInSync(t, a, b)
	}
	for _, x := range []*tnode{a, b} {
		if n := x.eventCount("peer-lost"); n != 0 {
			t.Fatalf("%s: %d peer-lost events: the connection should have stayed up", x.label, n)
		}
		if n := x.eventCount("resync-done"); n != 2 {
			t.Fatalf("%s: %d resync-done events, want one per round", x.label, n)
		}
	}
}

// TestScenarioCongestionDisconnect: with on-congestion disconnect the same
// congestion drops the connection instead (the peer-lost reason says why),
// the writes go on alone, and the nodes reconnect and resync what changed.
func TestScenarioCongestionDisconnect(t *testing.T) {
	o := nodeOpts{protocol: 'A', timeout: 20 * time.Second,
		congestion: replica.Congestion{Policy: replica.CongestionDisconnect, Fill: 256 << 10}}
	a, b := cleanPair(t, o, o)
	b.disk.holdWrites()
	if err := recvErr(t, "writes past a stuck peer", congestedWrites(a, "dropped", 0, 64)); err != nil {
		t.Fatal(err)
	}
	a.waitEvent("peer-lost")
	if why := a.nthLoss(1); !strings.Contains(why, "disconnected on congestion") || !strings.Contains(why, "congestion-fill 256KiB") {
		t.Fatalf("peer-lost reason %q", why)
	}
	b.disk.releaseWrites()
	b.waitEvent("peer-lost")
	if why := b.nthLoss(1); !strings.Contains(why, "the Primary disconnected on congestion") {
		t.Fatalf("the peer's peer-lost reason %q", why)
	}
	a.waitInSync()
	sameDisks(t, a, b)
}

// TestScenarioCongestionOnlyProtocolA: on-congestion never keeps a write
// from the peer where another setting promises it reaches the peer. Under
// protocol C a write waits for the peer whatever on-congestion says: a
// Primary set to pull ahead stays Connected while its peer's disk holds the
// writes, and answers them once the peer wrote them. Under protocol A with
// on-peer-loss suspend (no acknowledged write on one disk only) the
// Primary does not pull ahead either: every write is sent, none is marked
// out of sync.
func TestScenarioCongestionOnlyProtocolA(t *testing.T) {
	cong := replica.Congestion{Policy: replica.CongestionPullAhead, Fill: 4 << 10, Extents: 1}
	for _, tc := range []struct {
		name    string
		o       nodeOpts
		waitFor bool // the writes wait for the peer's disk
	}{
		{"protocol C", nodeOpts{congestion: cong}, true},
		{"protocol A with on-peer-loss suspend", nodeOpts{protocol: 'A', suspend: true, timeout: 20 * time.Second, congestion: cong}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := cleanPair(t, tc.o, tc.o)
			b.disk.holdWrites()
			done := congestedWrites(a, tc.name, 0, 8)
			if tc.waitFor {
				select {
				case err := <-done:
					t.Fatalf("writes returned (%v) while the peer's disk held them", err)
				case <-time.After(300 * time.Millisecond):
				}
			} else if err := recvErr(t, "the writes", done); err != nil {
				t.Fatal(err)
			}
			if st := a.node.Status(); st.ConnState != "Connected" || st.OutOfSyncKiB != 0 {
				t.Fatalf("a is %s with %d KiB out of sync, want Connected with none: every write goes to the peer", st.ConnState, st.OutOfSyncKiB)
			}
			b.disk.releaseWrites()
			if tc.waitFor {
				if err := recvErr(t, "the writes", done); err != nil {
					t.Fatal(err)
				}
			}
			a.waitInSync()
			sameDisks(t, a, b)
		})
	}
}

// TestParseOnCongestion: DRBD's names in any case; anything else is refused
// with the names to use.
func TestParseOnCongestion(t *testing.T) {
	for in, want := range map[string]replica.OnCongestion{
		"": replica.CongestionBlock, "block": replica.CongestionBlock,
		"Pull-Ahead": replica.CongestionPullAhead, " disconnect ": replica.CongestionDisconnect,
	} {
		if got, err := replica.ParseOnCongestion(in); err != nil || got != want {
			t.Errorf("ParseOnCongestion(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := replica.ParseOnCongestion("ahead"); err == nil || !strings.Contains(err.Error(), "block, pull-ahead or disconnect") {
		t.Errorf("ParseOnCongestion(ahead): %v", err)
	}
}

// TestScenarioPullAheadWhenWritesWait: with neither threshold set, a
// Primary set to pull ahead does so once a write has waited 100 ms or more
// for room on the link. The peer's disk takes one 1 MiB write every 150 ms
// (a slow link, as the Primary sees it: the peer stops reading while it
// writes); the writer's 48 MiB return, the Primary is Ahead saying that a
// write waited, and once the peer's disk is fast again both end in sync.
func TestScenarioPullAheadWhenWritesWait(t *testing.T) {
	o := nodeOpts{protocol: 'A', timeout: 20 * time.Second,
		congestion: replica.Congestion{Policy: replica.CongestionPullAhead}}
	a, b := cleanPair(t, o, o)
	b.disk.holdWrites()
	stop := make(chan struct{})
	slow := make(chan struct{})
	go func() { // the slow link
		defer close(slow)
		for {
			select {
			case <-stop:
				return
			case <-time.After(150 * time.Millisecond):
				b.disk.allowWrites(1)
			}
		}
	}()
	done := make(chan error, 1)
	go func() {
		p := pattern("slow link", 1<<20)
		for i := range 48 {
			if err := a.node.WriteAt(context.Background(), p, int64(i%8)<<20, false); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	if err := recvErr(t, "48 MiB of writes over a slow link", done); err != nil {
		t.Fatal(err)
	}
	st := a.waitStatus("Ahead", func(s status.Resource) bool { return s.ConnState == "Ahead" })
	if !strings.Contains(st.Reason, "for room on the link") {
		t.Fatalf("the Ahead Primary's reason: %q", st.Reason)
	}
	close(stop)
	<-slow
	releasedInSync(t, a, b)
	if n := a.eventCount("peer-lost"); n != 0 {
		t.Fatalf("%d peer-lost events: the connection should have stayed up", n)
	}
}

// TestScenarioPullAheadDuringResync: a Primary that is SyncSource pulls
// ahead too (DRBD goes from SyncSource to Ahead): its copies stop, the
// target goes Behind with its disk still Inconsistent (not promotable),
// and once the link drains one resync copies both what the first had left
// and what was written while Ahead.
func TestScenarioPullAheadDuringResync(t *testing.T) {
	cong := replica.Congestion{Policy: replica.CongestionPullAhead, Fill: 256 << 10}
	clk := heldClock{now: time.Unix(1_700_000_000, 0)} // holds a's resync until AdjustRate(0)
	a, b := cleanPair(t,
		nodeOpts{protocol: 'A', timeout: 20 * time.Second, rate: 1 << 20, clock: clk, congestion: cong},
		nodeOpts{protocol: 'A', timeout: 20 * time.Second, congestion: cong})
	b.stop()
	a.waitConn(replica.WFConnection)
	a.write(0, pattern("while b was away", 2<<20))
	b.start()
	a.waitConn(replica.SyncSource)
	b.waitConn(replica.SyncTarget)
	b.disk.holdWrites()
	if err := recvErr(t, "writes during the resync past a stuck peer", congestedWrites(a, "during the resync", 4<<20, 64)); err != nil {
		t.Fatal(err)
	}
	a.waitConn(replica.Ahead)
	b.waitState("Behind, still Inconsistent", func(s replica.State) bool { return s.Conn == replica.Behind && s.Disk == replica.Inconsistent })
	if err := b.node.Promote(true); err == nil {
		t.Fatal("the Behind node was promoted")
	}
	a.node.AdjustRate(0)
	releasedInSync(t, a, b)
	if n := a.eventCount("resync-done"); n != 1 {
		t.Fatalf("%d resync-done events on the source, want 1 (the resync cut by pulling ahead did not end)", n)
	}
}

// TestScenarioPullAheadResyncUnderWrites: the resync that ends Ahead runs
// while the application keeps rewriting the blocks it copies (held by a
// stopped clock until the writes are under way, then let go among them):
// no copy overwrites a newer write on the peer, and the disks end equal.
func TestScenarioPullAheadResyncUnderWrites(t *testing.T) {
	cong := replica.Congestion{Policy: replica.CongestionPullAhead, Fill: 256 << 10}
	clk := heldClock{now: time.Unix(1_700_000_000, 0)}
	a, b := cleanPair(t,
		nodeOpts{protocol: 'A', timeout: 20 * time.Second, rate: 1 << 20, clock: clk, congestion: cong},
		nodeOpts{protocol: 'A', timeout: 20 * time.Second, congestion: cong})
	b.disk.holdWrites()
	if err := recvErr(t, "writes past a stuck peer", congestedWrites(a, "ahead", 0, 64)); err != nil {
		t.Fatal(err)
	}
	a.waitConn(replica.Ahead)
	b.disk.releaseWrites()
	a.waitConn(replica.SyncSource) // its copies wait for the rate
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			p := pattern(fmt.Sprintf("rewrite %d", i), 3*hBlock)
			off := int64(i*7919%1000) * hBlock // within the 4 MiB written while Ahead
			if err := a.node.WriteAt(context.Background(), p, off, false); err != nil {
				done <- err
				return
			}
		}
	}()
	time.Sleep(100 * time.Millisecond)
	a.node.AdjustRate(0)
	time.Sleep(200 * time.Millisecond)
	close(stop)
	if err := recvErr(t, "the rewrites", done); err != nil {
		t.Fatal(err)
	}
	a.waitInSync()
	b.waitInSync()
	sameDisks(t, a, b)
}
