package replica_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/urbd/urbd/replica"
	"github.com/urbd/urbd/status"
)

// fenceHandler stands in for the fence-peer handler: each run is reported
// on calls and returns the exit code the test sends on answer.
type fenceHandler struct {
	calls  chan struct{}
	answer chan int
}

func newFenceHandler() *fenceHandler {
	return &fenceHandler{calls: make(chan struct{}, 16), answer: make(chan int)}
}

// handler is the Config.FencePeer of a node; nil without a fenceHandler.
func (f *fenceHandler) handler() func(context.Context) (int, error) {
	if f == nil {
		return nil
	}
	return func(ctx context.Context) (int, error) {
		f.calls <- struct{}{}
		select {
		case code := <-f.answer:
			return code, nil
		case <-ctx.Done():
			return -1, ctx.Err()
		}
	}
}

// called waits until the handler runs.
func (f *fenceHandler) called(t *testing.T) {
	t.Helper()
	select {
	case <-f.calls:
	case <-time.After(hWait):
		t.Fatal("the fence-peer handler did not run")
	}
}

// reply makes the running handler exit with code.
func (f *fenceHandler) reply(t *testing.T, code int) {
	t.Helper()
	select {
	case f.answer <- code:
	case <-time.After(hWait):
		t.Fatal("no fence-peer handler was waiting for its answer")
	}
}

// notCalled checks that the handler does not run within d.
func (f *fenceHandler) notCalled(t *testing.T, what string, d time.Duration) {
	t.Helper()
	select {
	case <-f.calls:
		t.Fatalf("the fence-peer handler ran: %s", what)
	case <-time.After(d):
	}
}

// notReturned checks that an async request is still held.
func notReturned(t *testing.T, what string, res <-chan error) {
	t.Helper()
	select {
	case err := <-res:
		t.Fatalf("%s returned (%v) while it should be held", what, err)
	case <-time.After(300 * time.Millisecond):
	}
}

// stonithPair is a clean pair whose Primary a fences with
// resource-and-stonith through f, linked through a proxy that can be cut.
func stonithPair(t *testing.T, policy replica.Fencing) (a, b *tnode, f *fenceHandler) {
	f = newFenceHandler()
	a, b = cleanPair(t, nodeOpts{fencing: policy, fence: f, viaProxy: true, timeout: time.Second}, nodeOpts{viaProxy: true, timeout: time.Second})
	return a, b, f
}

// cutLink makes the link between a and b dead (both directions, both
// dialers) or heals it.
func cutLink(a, b *tnode, dead bool) {
	a.proxy.Cut.Store(dead)
	b.proxy.Cut.Store(dead)
}

// loseAndFence cuts the link between a and b, and answers the fence-peer
// handler that the Primary a runs then with code.
func loseAndFence(t *testing.T, a, b *tnode, f *fenceHandler, code int) {
	t.Helper()
	cutLink(a, b, true)
	a.waitConn(replica.WFConnection)
	f.called(t)
	f.reply(t, code)
}

// TestScenarioStonithHoldsWritesUntilPeerFenced: with resource-and-stonith
// fencing, a write the peer never answered (the link died with it in
// flight) is not acknowledged while the peer could still be promoted
// without it, and neither is a write issued after the loss, nor a flush:
// they return once the fence-peer handler reports the peer Outdated (4).
func TestScenarioStonithHoldsWritesUntilPeerFenced(t *testing.T) {
	a, b, f := stonithPair(t, replica.FenceResourceAndStonith)
	a.write(0, pattern("before", hBlock))

	b.disk.holdWrites()
	inFlight := a.asyncWrite(hBlock, pattern("in flight", hBlock))
	a.waitStatus("the write pending at the peer", func(s status.Resource) bool { return s.PeerPending == 1 })
	cutLink(a, b, true)
	a.waitConn(replica.WFConnection)
	f.called(t)
	st := a.waitStatus("writes suspended", func(s status.Resource) bool { return s.Suspended })
	if !strings.Contains(st.Reason, "fencing the peer") {
		t.Errorf("reason %q does not say the peer is being fenced", st.Reason)
	}
	notReturned(t, "the write in flight at the peer loss", inFlight)
	after := a.asyncWrite(2*hBlock, pattern("after", hBlock))
	flush := make(chan error, 1)
	go func() { flush <- a.node.Flush(context.Background()) }()
	notReturned(t, "a write issued after the peer loss", after)
	notReturned(t, "a flush issued after the peer loss", flush)

	f.reply(t, replica.FenceExitPeerOutdated)
	for what, ch := range map[string]<-chan error{"the write in flight": inFlight, "the later write": after, "the flush": flush} {
		if err := recvErr(t, what, ch); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	st = a.waitStatus("peer fenced", func(s status.Resource) bool { return !s.Suspended })
	if st.PeerDisk != "Outdated" || !strings.Contains(st.Reason, "peer fenced") {
		t.Errorf("after the fence: peer disk %s, reason %q; want Outdated and the fence result", st.PeerDisk, st.Reason)
	}
	a.write(3*hBlock, pattern("alone", hBlock)) // writes go on alone now

	// The peer returns: the bitmap resync brings it up to date.
	b.disk.releaseWrites()
	cutLink(a, b, false)
	a.waitInSync()
	b.waitInSync()
	inSyncAndEqual(t, a, b)
}

// TestScenarioStonithFailedFenceHoldsUntilResume: when the handler cannot
// fence the peer (here it cannot reach it, exit 5, which resource-and-stonith
// does not accept), writes stay held and the status says how to go on;
// `urbd resume-io` releases them. The next peer loss fences again.
func TestScenarioStonithFailedFenceHoldsUntilResume(t *testing.T) {
	a, b, f := stonithPair(t, replica.FenceResourceAndStonith)
	loseAndFence(t, a, b, f, replica.FenceExitPeerUnreachable)
	st := a.waitStatus("fence failed", func(s status.Resource) bool { return strings.Contains(s.Reason, "fencing the peer failed") })
	if !st.Suspended || !strings.Contains(st.Reason, "urbd resume-io r0") {
		t.Errorf("suspended %v, reason %q: want writes suspended and the resume-io hint", st.Suspended, st.Reason)
	}
	held := a.asyncWrite(0, pattern("held", hBlock))
	notReturned(t, "a write after the failed fence", held)

	if err := a.node.ResumeIO(); err != nil {
		t.Fatalf("resume-io: %v", err)
	}
	if err := recvErr(t, "the held write", held); err != nil {
		t.Fatal(err)
	}
	if err := a.node.ResumeIO(); !errors.Is(err, replica.ErrNotFrozen) {
		t.Errorf("resume-io with nothing held: %v, want ErrNotFrozen", err)
	}

	cutLink(a, b, false)
	a.waitInSync()
	inSyncAndEqual(t, a, b)
	loseAndFence(t, a, b, f, replica.FenceExitPeerStonithed) // a second loss: fenced again, not resumed for good
	a.waitStatus("fenced", func(s status.Resource) bool { return !s.Suspended && s.PeerDisk == "Outdated" })
}

// TestScenarioFenceFindsPeerPrimary: a handler that finds the peer Primary
// (exit 6) means this node's data is the older: its disk becomes Outdated
// (persisted) and its writes stay held.
func TestScenarioFenceFindsPeerPrimary(t *testing.T) {
	a, b, f := stonithPair(t, replica.FenceResourceAndStonith)
	loseAndFence(t, a, b, f, replica.FenceExitPeerPrimary)
	st := a.waitStatus("outdated", func(s status.Resource) bool { return s.DiskState == "Outdated" })
	if !st.Suspended {
		t.Error("writes not held after the peer was found Primary")
	}
	if d := a.store.Meta().Disk; d != "Outdated" {
		t.Errorf("persisted disk state %q, want Outdated", d)
	}
}

// TestScenarioResourceOnlyFencesWithoutHolding: resource-only fencing runs
// the handler but never holds writes.
func TestScenarioResourceOnlyFencesWithoutHolding(t *testing.T) {
	a, b, f := stonithPair(t, replica.FenceResourceOnly)
	cutLink(a, b, true)
	a.waitConn(replica.WFConnection)
	f.called(t)
	a.write(0, pattern("while fencing", hBlock))
	if a.node.Status().Suspended {
		t.Error("resource-only fencing suspended writes")
	}
	f.reply(t, replica.FenceExitPeerUnreachable) // accepted: the peer is assumed dead
	a.waitStatus("fenced", func(s status.Resource) bool { return s.PeerDisk == "Outdated" })
}

// TestScenarioPromotionWithoutPeerFencesFirst: a Secondary that lost its
// Primary runs the fence-peer handler before it is promoted; a failed fence
// refuses the promotion unless --force.
func TestScenarioPromotionWithoutPeerFencesFirst(t *testing.T) {
	f := newFenceHandler()
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{fencing: replica.FenceResourceOnly, fence: f})
	a.write(0, pattern("x", hBlock))
	a.crash()
	b.waitConn(replica.WFConnection)

	res := make(chan error, 1)
	go func() { res <- b.node.Promote(false) }()
	f.called(t)
	f.reply(t, 1)
	if err := recvErr(t, "promotion", res); !errors.Is(err, replica.ErrNotFenced) || !strings.Contains(err.Error(), "urbd primary --force r0") {
		t.Fatalf("promotion after a failed fence: %v, want ErrNotFenced with the --force hint", err)
	}
	if b.node.State().Role != replica.Secondary {
		t.Fatal("promoted although the fence failed")
	}

	go func() { res <- b.node.Promote(false) }()
	f.called(t)
	f.reply(t, replica.FenceExitPeerOutdated)
	if err := recvErr(t, "promotion", res); err != nil {
		t.Fatalf("promotion after the peer was outdated: %v", err)
	}
	if st := b.node.State(); st.Role != replica.Primary || st.PeerDisk != replica.Outdated {
		t.Fatalf("after the fence: %s with peer disk %s, want Primary/Outdated", st.Role, st.PeerDisk)
	}
	f.notCalled(t, "the new Primary fenced its peer again", 300*time.Millisecond)
}

// TestScenarioPromotionForcedPastFailedFence: --force promotes although the
// fence failed (the operator vouches for the peer).
func TestScenarioPromotionForcedPastFailedFence(t *testing.T) {
	f := newFenceHandler()
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{fencing: replica.FenceResourceAndStonith, fence: f})
	a.crash()
	b.waitConn(replica.WFConnection)
	res := make(chan error, 1)
	go func() { res <- b.node.Promote(true) }()
	f.called(t)
	f.reply(t, replica.FenceExitPeerUnreachable)
	if err := recvErr(t, "forced promotion", res); err != nil {
		t.Fatal(err)
	}
	b.write(0, pattern("forced", hBlock)) // not held: the operator took over
	if b.node.Status().Suspended {
		t.Error("writes suspended after a forced promotion")
	}
}

// TestScenarioOutdateCommand: `urbd outdate` marks a disconnected
// Secondary Outdated, persistently, so that it refuses promotion without
// --force; it is refused on a Primary and while connected. A reconnect to
// the Primary brings the disk up to date again.
func TestScenarioOutdateCommand(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	if err := a.node.Outdate(); !errors.Is(err, replica.ErrOutdateRefused) {
		t.Errorf("outdate on the Primary: %v, want ErrOutdateRefused", err)
	}
	if err := b.node.Outdate(); !errors.Is(err, replica.ErrOutdateRefused) {
		t.Errorf("outdate while connected: %v, want ErrOutdateRefused", err)
	}
	a.stop()
	b.waitConn(replica.WFConnection)
	if err := b.node.Outdate(); err != nil {
		t.Fatal(err)
	}
	b.stop()
	b.start()
	if d := b.node.State().Disk; d != replica.Outdated {
		t.Fatalf("disk %s after a restart, want Outdated", d)
	}
	if err := b.node.Promote(false); !errors.Is(err, replica.ErrNotUpToDate) {
		t.Fatalf("promoting an Outdated disk: %v, want ErrNotUpToDate", err)
	}
	a.start()
	b.waitState("UpToDate again", func(s replica.State) bool { return s.Conn == replica.Connected && s.Disk == replica.UpToDate })
}

// TestScenarioResumeIOReleasesSuspendedWrites: with on-peer-loss suspend,
// `urbd resume-io` lets a Primary whose peer is gone for good go on alone,
// until the peer is back; the next loss suspends again.
func TestScenarioResumeIOReleasesSuspendedWrites(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{suspend: true}, nodeOpts{})
	if err := a.node.ResumeIO(); !errors.Is(err, replica.ErrNotFrozen) {
		t.Errorf("resume-io while connected: %v, want ErrNotFrozen", err)
	}
	b.stop()
	a.waitStatus("suspended", func(s status.Resource) bool { return s.Suspended })
	held := a.asyncWrite(0, pattern("held", hBlock))
	notReturned(t, "a suspended write", held)
	if err := a.node.ResumeIO(); err != nil {
		t.Fatal(err)
	}
	if err := recvErr(t, "the suspended write", held); err != nil {
		t.Fatal(err)
	}
	a.write(hBlock, pattern("alone", hBlock))
	b.start()
	a.waitInSync()
	inSyncAndEqual(t, a, b)
	b.stop()
	a.waitStatus("suspended again", func(s status.Resource) bool { return s.Suspended })
}

// TestScenarioSetOnPeerLoss: on-peer-loss changed while the node runs
// (urbd adjust). Becoming continue releases a write held for the absent
// peer; becoming suspend while the peer is away does not freeze the
// application, but holds writes from the next peer loss on.
func TestScenarioSetOnPeerLoss(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{suspend: true}, nodeOpts{})
	b.stop()
	a.waitStatus("suspended", func(s status.Resource) bool { return s.Suspended })
	held := a.asyncWrite(0, pattern("held", hBlock))
	notReturned(t, "a suspended write", held)
	a.node.SetOnPeerLoss(false)
	if err := recvErr(t, "the write held when on-peer-loss became continue", held); err != nil {
		t.Fatal(err)
	}
	a.write(hBlock, pattern("alone", hBlock))

	a.node.SetOnPeerLoss(true)
	if a.node.Status().Suspended {
		t.Fatal("writes suspended the moment on-peer-loss became suspend, with the peer already away")
	}
	a.write(2*hBlock, pattern("alone, suspend set", hBlock))
	b.start()
	a.waitInSync()
	inSyncAndEqual(t, a, b)
	b.stop()
	a.waitStatus("suspended at the next peer loss", func(s status.Resource) bool { return s.Suspended })
	held = a.asyncWrite(3*hBlock, pattern("held again", hBlock))
	notReturned(t, "a write after the next peer loss", held)
	b.start()
	if err := recvErr(t, "the write held until the peer was back", held); err != nil {
		t.Fatal(err)
	}
	a.waitInSync()
	inSyncAndEqual(t, a, b)
}

// TestScenarioRestartedPrimaryDoesNotFenceHealthyPeer: a Primary restarted
// after a clean stop gives its peer the peer timeout to connect before it
// fences it, so a restart does not fence (or power off) a healthy peer.
func TestScenarioRestartedPrimaryDoesNotFenceHealthyPeer(t *testing.T) {
	a, b, f := stonithPair(t, replica.FenceResourceAndStonith)
	a.stop()
	a.start()
	a.waitState("reconnected as Primary", func(s replica.State) bool { return s.Conn == replica.Connected && s.Role == replica.Primary })
	a.write(0, pattern("after the restart", hBlock))
	f.notCalled(t, "the restarted Primary fenced its healthy peer", 1500*time.Millisecond) // past the 1 s peer timeout
	inSyncAndEqual(t, a, b)
}

// TestScenarioSecondaryLeavingOnPurposeNeedsNoFence: a Secondary that
// stops (urbd down) or disconnects while connected to its Primary leaves
// Outdated, as in DRBD, and tells the Primary first: the Primary's
// resource-and-stonith fencing then has nothing to do, and its writes go
// on at once.
func TestScenarioSecondaryLeavingOnPurposeNeedsNoFence(t *testing.T) {
	a, b, f := stonithPair(t, replica.FenceResourceAndStonith)
	for _, leave := range []string{"stop", "disconnect"} {
		if leave == "stop" {
			b.stop()
			if d := b.store.Meta().Disk; d != "Outdated" {
				t.Fatalf("a Secondary stopped under its Primary persisted disk %q, want Outdated", d)
			}
		} else if err := b.node.Disconnect(false); err != nil {
			t.Fatal(err)
		}
		a.waitConn(replica.WFConnection)
		a.write(0, pattern(leave, hBlock))
		if a.node.Status().Suspended {
			t.Errorf("%s: the Primary's writes are suspended", leave)
		}
		f.notCalled(t, leave+": the Primary fenced a peer that left Outdated", 300*time.Millisecond)
		if leave == "stop" {
			b.start()
		} else if err := b.node.Connect(false); err != nil {
			t.Fatal(err)
		}
		a.waitInSync()
		b.waitState("UpToDate again", func(s replica.State) bool { return s.Disk == replica.UpToDate })
		inSyncAndEqual(t, a, b)
	}
}

// TestScenarioStonithHoldsWriteSentWhileSessionCloses: a write issued in
// the window where the session is already closed but the state still shows
// it Connected (before sessionEnded) is not replicated; with
// resource-and-stonith it is held like any write the peer did not take,
// not acknowledged on the strength of the stale state.
func TestScenarioStonithHoldsWriteSentWhileSessionCloses(t *testing.T) {
	a, b, f := stonithPair(t, replica.FenceResourceAndStonith)
	inWindow, release := make(chan struct{}), make(chan struct{})
	var once, released sync.Once
	releaseOnce := func() { released.Do(func() { close(release) }) }
	t.Cleanup(releaseOnce) // a failed check must not leave the close stuck
	a.node.OnSessionClosing(func() {
		once.Do(func() {
			close(inWindow)
			<-release
		})
	})
	cutLink(a, b, true)
	<-inWindow
	if st := a.node.State(); st.Conn != replica.Connected {
		t.Fatalf("in the window the state is %s, want it still Connected", st.Conn)
	}
	res := a.asyncWrite(0, pattern("in the window", hBlock))
	notReturned(t, "a write issued while the session closes", res)
	releaseOnce()
	f.called(t)
	notReturned(t, "a write issued while the session closed, before the fence", res)
	f.reply(t, replica.FenceExitPeerOutdated)
	if err := recvErr(t, "the held write", res); err != nil {
		t.Fatal(err)
	}
}

// TestScenarioDetachedSecondaryNotFenced: a Secondary whose operator takes
// its disk out (DetachDisk) tells the Primary it is Diskless before it
// hangs up: the Primary, with resource-and-stonith fencing, has nobody to
// fence (a disk without data cannot be promoted) and goes on writing.
func TestScenarioDetachedSecondaryNotFenced(t *testing.T) {
	a, b, f := stonithPair(t, replica.FenceResourceAndStonith)
	a.write(0, pattern("before", hBlock))
	if _, err := b.node.DetachDisk(); err != nil {
		t.Fatal(err)
	}
	a.waitConn(replica.WFConnection)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.node.WriteAt(ctx, pattern("alone", hBlock), hBlock, true); err != nil {
		t.Fatalf("a write after the Secondary detached its disk: %v", err)
	}
	f.notCalled(t, "the peer left Diskless", 300*time.Millisecond)
	if st := a.node.Status(); st.Suspended {
		t.Errorf("writes suspended after the Secondary detached its disk: %q", st.Reason)
	}
}
