package replica_test

import (
	"errors"
	"sync"
	"testing"

	"github.com/urbd/urbd/replica"
)

// connectedSecondaries starts two nodes created with assume-clean and waits
// until they are Connected, both Secondary and UpToDate.
func connectedSecondaries(t *testing.T, oa, ob nodeOpts) (a, b *tnode) {
	t.Helper()
	oa.assumeClean, ob.assumeClean = true, true
	a, b = newPair(t, oa, ob)
	a.start()
	b.start()
	a.waitConn(replica.Connected)
	b.waitConn(replica.Connected)
	return a, b
}

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
