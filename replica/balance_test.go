package replica_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/urbd/urbd/replica"
	"github.com/urbd/urbd/status"
)

// readsFrom reads through the Primary a block whose copies differ on the two
// disks (poked behind the engines' backs), and says which disk served it.
func readsFrom(t *testing.T, a *tnode, off int64, local, remote []byte) string {
	t.Helper()
	got, err := a.readAt(off, len(local))
	switch {
	case err != nil:
		t.Fatalf("read at %d: %v", off, err)
	case bytes.Equal(got, local):
		return "local"
	case bytes.Equal(got, remote):
		return "peer"
	}
	t.Fatalf("read at %d: neither disk's data", off)
	return ""
}

// TestScenarioReadBalancingPolicies: each read-balancing policy sends a
// Primary's reads where DRBD's does. Each block below holds different data
// on the two disks (written behind the engines' backs), so what a read
// returns says which disk served it.
func TestScenarioReadBalancingPolicies(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	const blocks = 64 // 256 KiB: eight 32 KiB stripes
	local, remote := pattern("the Primary's", blocks*hBlock), pattern("the peer's", blocks*hBlock)
	a.poke(0, local)
	b.poke(0, remote)
	at := func(i int64) string {
		return readsFrom(t, a, i*hBlock, local[i*hBlock:(i+1)*hBlock], remote[i*hBlock:(i+1)*hBlock])
	}

	if got := at(3); got != "local" {
		t.Errorf("prefer-local (the default): read from the %s disk", got)
	}
	a.node.SetReadBalancing(replica.ReadPreferRemote)
	for i := range int64(4) {
		if got := at(i); got != "peer" {
			t.Errorf("prefer-remote: block %d read from the %s disk", i, got)
		}
	}
	a.node.SetReadBalancing(replica.ReadRoundRobin)
	if first, second := at(5), at(5); first == second {
		t.Errorf("round-robin: two reads in a row both from the %s disk", first)
	}
	a.node.SetReadBalancing(replica.Read32KStriping)
	for i := int64(0); i < blocks; i += 3 {
		want := map[bool]string{false: "local", true: "peer"}[(i*hBlock/(32<<10))%2 == 1]
		if got := at(i); got != want {
			t.Errorf("32K-striping: block %d (stripe %d) read from the %s disk, want %s", i, i*hBlock/(32<<10), got, want)
		}
	}
	a.node.SetReadBalancing(replica.Read128KStriping)
	if got := at(31); got != "local" {
		t.Errorf("128K-striping: block 31 (first stripe) read from the %s disk", got)
	}
	if got := at(32); got != "peer" {
		t.Errorf("128K-striping: block 32 (second stripe) read from the %s disk", got)
	}

	// A disk with requests waiting and a peer with none: least-pending
	// sends the next read to the peer, when-congested-remote only once
	// the local disk holds 32 (hold's reads go to the local disk and wait
	// there, or hold waits for ever).
	a.node.SetReadBalancing(replica.ReadLeastPending)
	if got := at(7); got != "local" {
		t.Errorf("least-pending, both idle: read from the %s disk", got)
	}
	held := a.disk.readGate.hold()
	defer a.disk.readGate.release()
	var wg sync.WaitGroup
	hold := func(n int) {
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := a.readAt(60*hBlock, hBlock); err != nil {
					t.Errorf("a held read: %v", err)
				}
			}()
			<-held
		}
	}
	hold(1)
	if got := at(7); got != "peer" {
		t.Errorf("least-pending, a read waiting at the local disk: read from the %s disk", got)
	}
	a.node.SetReadBalancing(replica.ReadWhenCongestedRemote)
	hold(30) // 31 waiting: not congested, so the next read waits there too
	hold(1)
	if got := at(7); got != "peer" {
		t.Errorf("when-congested-remote, 32 waiting at the local disk: read from the %s disk", got)
	}
	a.disk.readGate.release()
	wg.Wait()
	if got := at(7); got != "local" {
		t.Errorf("when-congested-remote, none waiting: read from the %s disk", got)
	}
}

// TestScenarioReadBalancingSeesAcknowledgedWrites: with protocol A a write
// is answered before the peer has it, yet a read sent to the peer after the
// answer returns it: the Read follows the write on the data stream and the
// peer applies the write first. Then writers on four regions each read back
// what they just wrote, at random offsets and lengths, every read going to
// the peer; each must return the writer's last data.
func TestScenarioReadBalancingSeesAcknowledgedWrites(t *testing.T) {
	o := nodeOpts{protocol: 'A', balance: replica.ReadPreferRemote}
	a, b := cleanPair(t, o, nodeOpts{protocol: 'A'})

	data := pattern("answered before the peer wrote it", 4*hBlock)
	held := b.disk.holdWrites()
	a.write(8*hBlock, data) // protocol A: answered once sent
	<-held
	got := make(chan []byte, 1)
	go func() {
		p, err := a.readAt(8*hBlock, len(data))
		if err != nil {
			t.Errorf("read: %v", err)
		}
		got <- p
	}()
	select {
	case <-got:
		t.Fatal("the read was answered while the peer's write of the range was held")
	case <-time.After(200 * time.Millisecond):
	}
	b.disk.releaseWrites()
	if p := <-got; !bytes.Equal(p, data) {
		t.Fatal("the read sent to the peer after the write missed it")
	}

	before := a.node.Status().NetRecvKiB
	const region = hDiskSize / 4
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			base := int64(w) * region
			shadow := make([]byte, region)
			for i := range 150 {
				off := rng.Int64N(region/hBlock-16) * hBlock
				p := pattern(string(rune('a'+w))+string(rune(i)), (1+rng.IntN(16))*hBlock)
				if err := a.node.WriteAt(context.Background(), p, base+off, false); err != nil {
					t.Errorf("write: %v", err)
					return
				}
				copy(shadow[off:], p)
				roff := off + rng.Int64N(int64(len(p))/hBlock)*hBlock
				rlen := min(int64(1+rng.IntN(16))*hBlock, region-roff)
				q, err := a.readAt(base+roff, int(rlen))
				if err != nil {
					t.Errorf("read: %v", err)
					return
				}
				if !bytes.Equal(q, shadow[roff:roff+rlen]) {
					t.Errorf("writer %d, round %d: the read at %d did not return what was written", w, i, base+roff)
					return
				}
			}
		}()
	}
	wg.Wait()
	if st := a.node.Status(); st.NetRecvKiB == before {
		t.Errorf("prefer-remote: nothing was received from the peer (nr %d KiB)", st.NetRecvKiB)
	}
	inSyncAndEqual(t, a, b)
}

// TestScenarioReadBalancingFallsBackToLocal: a read sent to the peer that
// the peer does not answer before the connection ends is served by the
// local disk, without an error; while the nodes are apart every read is
// local; once they are back in sync reads go to the peer again.
func TestScenarioReadBalancingFallsBackToLocal(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{balance: replica.ReadPreferRemote}, nodeOpts{})
	local, remote := pattern("the Primary's", 2*hBlock), pattern("the peer's", 2*hBlock)
	a.poke(0, local)
	b.poke(0, remote)

	held := b.disk.readGate.hold()
	got := make(chan string, 1)
	go func() { got <- readsFrom(t, a, 0, local, remote) }()
	<-held // at the peer's disk
	if err := a.node.Disconnect(false); err != nil {
		t.Fatal(err)
	}
	if from := <-got; from != "local" {
		t.Errorf("the read the peer left unanswered at the disconnect came from the %s disk", from)
	}
	b.disk.readGate.release()
	a.waitConn(replica.StandAlone)
	if from := readsFrom(t, a, 0, local, remote); from != "local" {
		t.Errorf("StandAlone: read from the %s disk", from)
	}
	reconnect(t, a)
	a.waitInSync()
	if from := readsFrom(t, a, 0, local, remote); from != "peer" {
		t.Errorf("back in sync: read from the %s disk", from)
	}
}

// TestScenarioSecondaryAnswersReadsAtOnce: the peer reads the Primary's
// reads side by side (up to 32 at a time), not one after another, so a
// Primary that sends its reads there keeps the peer's disk busy; it counts
// them (ReadsForPeer).
func TestScenarioSecondaryAnswersReadsAtOnce(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{balance: replica.ReadPreferRemote}, nodeOpts{})
	const n = 8
	data := pattern("read at once", n*hBlock)
	a.write(0, data)
	held := b.disk.readGate.hold()
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := a.readAt(int64(i)*hBlock, hBlock)
			if err != nil || !bytes.Equal(p, data[i*hBlock:(i+1)*hBlock]) {
				t.Errorf("read %d: %v (right data %v)", i, err, err == nil && bytes.Equal(p, data[i*hBlock:(i+1)*hBlock]))
			}
		}()
	}
	for i := range n {
		select {
		case <-held:
		case <-time.After(hWait):
			t.Fatalf("%d of %d reads waited at the peer's disk at once", i, n)
		}
	}
	if st := b.waitStatus("the reads in flight", func(s status.Resource) bool { return s.LocalPending == n }); st.LocalPending != n {
		t.Fatalf("the peer's lo: %d, want %d", st.LocalPending, n)
	}
	b.disk.readGate.release()
	wg.Wait()
	// The daemon adapts its thread count to these reads as to its clients'.
	if got := b.node.ReadsForPeer(); got != n {
		t.Errorf("the peer counted %d Reads answered, want %d", got, n)
	}
}
