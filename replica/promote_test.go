package replica_test

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/urbd/urbd/replica"
)

// promoteBoth promotes a and b at the same moment and returns their errors.
func promoteBoth(a, b *tnode) (errA, errB error) {
	var wg sync.WaitGroup
	start := make(chan struct{})
	wg.Add(2)
	go func() { defer wg.Done(); <-start; errA = a.node.Promote(false) }()
	go func() { defer wg.Done(); <-start; errB = b.node.Promote(false) }()
	close(start)
	wg.Wait()
	return errA, errB
}

// TestScenarioPromoteBothAtOnce: two connected Secondaries promoted at the
// same moment, round after round, end with exactly one Primary, which the
// other node sees as its peer; the loser is told why (the peer is Primary,
// or was being promoted), and writes on the winner reach it.
func TestScenarioPromoteBothAtOnce(t *testing.T) {
	a, b := connectedSecondaries(t, nodeOpts{}, nodeOpts{})
	won := map[string]int{}
	for round := range 30 {
		errA, errB := promoteBoth(a, b)
		var winner, loser *tnode
		var lostErr error
		switch {
		case errA == nil && errB == nil:
			t.Fatalf("round %d: both nodes promoted (a %v, b %v)", round, a.node.State().Role, b.node.State().Role)
		case errA == nil:
			winner, loser, lostErr = a, b, errB
		case errB == nil:
			winner, loser, lostErr = b, a, errA
		default:
			t.Fatalf("round %d: neither node promoted: a: %v; b: %v", round, errA, errB)
		}
		if !errors.Is(lostErr, replica.ErrPeerPrimary) && !errors.Is(lostErr, replica.ErrPeerPromoting) {
			t.Fatalf("round %d: the loser's error %v, want ErrPeerPrimary or ErrPeerPromoting", round, lostErr)
		}
		won[winner.label]++
		if st := loser.node.State(); st.Role != replica.Secondary {
			t.Fatalf("round %d: the loser is %v", round, st.Role)
		}
		loser.waitState("peer Primary", func(s replica.State) bool { return s.PeerRole == replica.Primary })
		p := pattern("round", hBlock)
		p[0] = byte(round)
		winner.write(int64(round)*hBlock, p)
		if got := loser.read(int64(round)*hBlock, hBlock); string(got) != string(p) {
			t.Fatalf("round %d: the winner's write is not on the loser", round)
		}
		if err := winner.node.Demote(false); err != nil {
			t.Fatal(err)
		}
		loser.waitState("peer Secondary", func(s replica.State) bool { return s.PeerRole == replica.Secondary })
	}
	t.Logf("rounds won: %v", won)
}

// TestScenarioPromoteRightAfterPeer: a Secondary promoted right after its
// peer's promotion returned, before it may have applied the peer's new
// state, asks the peer, which is Primary and says no.
func TestScenarioPromoteRightAfterPeer(t *testing.T) {
	a, b := connectedSecondaries(t, nodeOpts{}, nodeOpts{})
	for round := range 10 {
		first, second := a, b
		if round%2 == 1 {
			first, second = b, a
		}
		if err := first.node.Promote(false); err != nil {
			t.Fatal(err)
		}
		err := second.node.Promote(false)
		if !errors.Is(err, replica.ErrPeerPrimary) {
			t.Fatalf("round %d: promoting the peer of a Primary: %v, want ErrPeerPrimary", round, err)
		}
		if st := second.node.State(); st.Role != replica.Secondary {
			t.Fatalf("round %d: %s is %v", round, second.label, st.Role)
		}
		if err := first.node.Demote(false); err != nil {
			t.Fatal(err)
		}
		second.waitState("peer Secondary", func(s replica.State) bool { return s.PeerRole == replica.Secondary })
	}
}

// TestScenarioAutoPromote: with auto-promote, a Secondary promotes itself
// when an NBD client attaches and demotes itself when the last one left;
// its peer then refuses clients, naming why; the node the operator promoted
// stays Primary after its clients leave; without auto-promote a Secondary
// refuses the client and stays Secondary.
func TestScenarioAutoPromote(t *testing.T) {
	a, b := connectedSecondaries(t, nodeOpts{}, nodeOpts{})
	if _, err := b.node.AttachClient(); !errors.Is(err, replica.ErrIsSecondary) {
		t.Fatalf("a client on a Secondary without auto-promote: %v, want ErrIsSecondary", err)
	}
	if st := b.node.State(); st.Role != replica.Secondary {
		t.Fatalf("b is %v without auto-promote", st.Role)
	}
	a.node.SetAutoPromote(true)
	b.node.SetAutoPromote(true)
	if err := b.node.CheckServe(); err != nil {
		t.Fatalf("an auto-promote Secondary that may be promoted refuses a client's question: %v", err)
	}

	// Four connections of one client attach at once: one promotion.
	var releases []func()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			release, err := b.node.AttachClient()
			if err != nil {
				t.Errorf("attach on b: %v", err)
				return
			}
			mu.Lock()
			releases = append(releases, release)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	st := b.node.State()
	if st.Role != replica.Primary || !strings.Contains(st.Reason, "auto-promote") {
		t.Fatalf("b after its clients attached: %v, %q; want Primary by auto-promote", st.Role, st.Reason)
	}
	b.waitEvent("promoted")
	if n := b.eventCount("promoted"); n != 1 {
		t.Errorf("b promoted %d times for one client's 4 connections", n)
	}
	a.waitState("peer Primary", func(s replica.State) bool { return s.PeerRole == replica.Primary })
	// The peer answers a question about the export (it may demote soon),
	// and refuses a client once it waited for that in vain.
	if err := a.node.CheckServe(); err != nil {
		t.Errorf("a question on the peer of an auto-promoted Primary: %v", err)
	}
	a.node.SetAutoPromoteWait(50 * time.Millisecond)
	_, err := a.node.AttachClient()
	if !errors.Is(err, replica.ErrIsSecondary) || !errors.Is(err, replica.ErrPeerPrimary) {
		t.Fatalf("a client on the peer of an auto-promoted Primary: %v, want ErrIsSecondary and ErrPeerPrimary", err)
	}
	if want := "replica: resource is Secondary: r0; auto-promote cannot promote it: peer is Primary: demote the peer first (urbd secondary r0 on the other node)"; err.Error() != want {
		t.Errorf("refusal %q, want %q", err, want)
	}
	p := pattern("auto", hBlock)
	b.write(3*hBlock, p)
	if got := a.read(3*hBlock, hBlock); string(got) != string(p) {
		t.Fatal("the auto-promoted Primary's write is not on its peer")
	}
	for i, release := range releases {
		release()
		want := replica.Primary
		if i == len(releases)-1 {
			want = replica.Secondary
		}
		if st := b.node.State(); st.Role != want {
			t.Fatalf("b after %d of %d clients left: %v, want %v", i+1, len(releases), st.Role, want)
		}
	}
	if st := b.node.State(); !strings.Contains(st.Reason, "last NBD client left") {
		t.Errorf("b's reason after its last client left: %q", st.Reason)
	}

	// Now a may: and once the operator promoted it too, it stays Primary.
	a.waitState("peer Secondary", func(s replica.State) bool { return s.PeerRole == replica.Secondary })
	release, err := a.node.AttachClient()
	if err != nil {
		t.Fatalf("attach on a once b demoted: %v", err)
	}
	if err := a.node.Promote(false); err != nil {
		t.Fatal(err)
	}
	release()
	if st := a.node.State(); st.Role != replica.Primary {
		t.Fatalf("a, promoted by the operator as well, after its client left: %v, want Primary", st.Role)
	}
}

// TestScenarioAutoPromoteBothAtOnce: clients attaching to both nodes at the
// same moment make one node Primary; the other refuses its client.
func TestScenarioAutoPromoteBothAtOnce(t *testing.T) {
	a, b := connectedSecondaries(t, nodeOpts{}, nodeOpts{})
	for _, x := range []*tnode{a, b} {
		x.node.SetAutoPromote(true)
		x.node.SetAutoPromoteWait(0) // the loser's client is refused at once
	}
	for round := range 10 {
		var wg sync.WaitGroup
		start := make(chan struct{})
		var relA, relB func()
		var errA, errB error
		wg.Add(2)
		go func() { defer wg.Done(); <-start; relA, errA = a.node.AttachClient() }()
		go func() { defer wg.Done(); <-start; relB, errB = b.node.AttachClient() }()
		close(start)
		wg.Wait()
		if (errA == nil) == (errB == nil) {
			t.Fatalf("round %d: a: %v; b: %v; want exactly one client attached", round, errA, errB)
		}
		release, winner, loser := relA, a, b
		if errA != nil {
			release, winner, loser = relB, b, a
		}
		if st := loser.node.State(); st.Role != replica.Secondary {
			t.Fatalf("round %d: the refused node is %v", round, st.Role)
		}
		release()
		if st := winner.node.State(); st.Role != replica.Secondary {
			t.Fatalf("round %d: %s after its client left: %v", round, winner.label, st.Role)
		}
		loser.waitState("peer Secondary", func(s replica.State) bool { return s.PeerRole == replica.Secondary })
	}
}

// TestScenarioAutoPromoteWaitsForPeerDemotion: in a switchover a client
// may attach to the Secondary before its peer, whose last client just
// left, has demoted itself: the attach waits for the demotion (up to
// DRBD's auto-promote-timeout, 2 s) and promotes; a client whose peer stays
// Primary is refused once the wait is over.
func TestScenarioAutoPromoteWaitsForPeerDemotion(t *testing.T) {
	a, b := connectedSecondaries(t, nodeOpts{}, nodeOpts{})
	a.node.SetAutoPromote(true)
	b.node.SetAutoPromote(true)
	releaseA, err := a.node.AttachClient()
	if err != nil {
		t.Fatal(err)
	}
	b.waitState("peer Primary", func(s replica.State) bool { return s.PeerRole == replica.Primary })
	type result struct {
		release func()
		err     error
	}
	done := make(chan result, 1)
	go func() {
		release, err := b.node.AttachClient()
		done <- result{release, err}
	}()
	time.Sleep(200 * time.Millisecond)
	select {
	case r := <-done:
		t.Fatalf("b's client did not wait for the Primary peer: %v", r.err)
	default:
	}
	releaseA()
	r := <-done
	if r.err != nil {
		t.Fatalf("b's client after a demoted itself: %v", r.err)
	}
	if st := b.node.State(); st.Role != replica.Primary {
		t.Fatalf("b is %v with its client attached", st.Role)
	}

	a.node.SetAutoPromoteWait(300 * time.Millisecond)
	a.waitState("peer Primary", func(s replica.State) bool { return s.PeerRole == replica.Primary })
	start := time.Now()
	if _, err := a.node.AttachClient(); !errors.Is(err, replica.ErrPeerPrimary) {
		t.Fatalf("a client on the peer of a Primary that keeps its client: %v, want ErrPeerPrimary", err)
	}
	if waited := time.Since(start); waited < 300*time.Millisecond {
		t.Errorf("refused after %v, before the wait of 300ms was over", waited)
	}
	r.release()
}
