package replica_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/urbd/urbd/replica"
	"github.com/urbd/urbd/status"
)

// TestRegressionSuspendAcksFailedInFlightWrite: with --on-peer-loss suspend and
// protocol C, writes in flight when the peer goes away are not acknowledged
// until a resync copied them: no acknowledged write exists on one disk only.
func TestRegressionSuspendAcksFailedInFlightWrite(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{suspend: true}, nodeOpts{})
	held := b.disk.holdWrites()
	const n = 8
	var res []<-chan error
	for i := range n {
		res = append(res, a.asyncWrite(int64(i)*32*hBlock, pattern(fmt.Sprintf("in flight %d", i), hBlock)))
	}
	<-held
	a.waitStatus("all sent", func(s status.Resource) bool { return s.PeerPending == n })
	if err := b.node.Disconnect(false); err != nil {
		t.Fatal(err)
	}
	b.disk.releaseWrites()
	a.waitConn(replica.WFConnection)
	// None of them may be acknowledged while the peer is away; with the bug
	// about half are acknowledged at once.
	select {
	case err := <-merge(res):
		t.Fatalf("a write was acknowledged (%v) while it exists on the primary only (cs %v)", err, a.node.State().Conn)
	case <-time.After(time.Second):
	}
}

// merge forwards the first result of any channel.
func merge(chs []<-chan error) <-chan error {
	out := make(chan error, len(chs))
	for _, ch := range chs {
		go func() { out <- <-ch }()
	}
	return out
}

// TestRegressionSplitBrainFlaggedOnOneSideOnly: at a split brain both nodes
// go StandAlone and say so, round after round, however the refusal and the
// hang-up race.
func TestRegressionSplitBrainFlaggedOnOneSideOnly(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	for _, x := range []*tnode{a, b} {
		if err := x.node.Disconnect(false); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.node.Promote(true); err != nil { // b is Outdated
		t.Fatal(err)
	}
	a.write(10*hBlock, pattern("a alone", hBlock))
	b.write(20*hBlock, pattern("b alone", hBlock))
	for round := range 10 {
		for _, x := range []*tnode{a, b} {
			if err := x.node.Connect(false); err != nil {
				t.Fatal(err)
			}
		}
		first := waitSplitBrain(a, b)
		other := map[*tnode]*tnode{a: b, b: a}[first]
		deadline := time.Now().Add(time.Second)
		for {
			st := other.node.State()
			if st.SplitBrain && st.Conn == replica.StandAlone {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d: %s flags the split brain, %s does not: %+v", round, first.label, other.label, st)
			}
			select {
			case <-other.node.Changed():
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
}

// TestRegressionVerifyRefusalReadsStateUnlocked: Verify refused without a
// peer, called in a loop while the state changes, is race-free (-race).
func TestRegressionVerifyRefusalReadsStateUnlocked(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	if err := b.node.Disconnect(false); err != nil {
		t.Fatal(err)
	}
	a.waitConn(replica.WFConnection)
	// Hammer Verify while a redials the refusing peer; each failed session
	// rewrites a's state under n.mu.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if err := a.node.Verify(replica.VerifyRange{}); !errors.Is(err, replica.ErrNotConnected) {
			t.Fatalf("Verify without a peer: %v", err)
		}
	}
}

// TestRegressionRunCancelLeavesSessionRunning: cancelling Run ends the peer
// session it started, so the peer notices at once.
func TestRegressionRunCancelLeavesSessionRunning(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	b.cancel()
	if err := <-b.runErr; err != nil {
		t.Fatal(err)
	}
	b.runErr <- nil                  // for the cleanup's stop
	a.waitConn(replica.WFConnection) // times out: the session lives on
	_ = b
}
