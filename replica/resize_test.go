package replica_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/urbd/urbd/replica"
)

// TestScenarioResizeOnline: urbd resize on a connected Primary. Refused,
// changing nothing, while a disk has not grown or the two grew apart; once
// both grew to the same size, both nodes serve it, the peer reconnects and
// the resync copies the new part (each disk held different bytes there),
// writes running meanwhile all land on both disks, and writes into the new
// part replicate. A restart needs no --grow. With each protocol: with A
// and B a write is answered before the peer wrote it, and the resize still
// waits for the peer's answers before it replaces the metadata.
func TestScenarioResizeOnline(t *testing.T) {
	for _, proto := range []byte{'A', 'B', 'C'} {
		t.Run("protocol "+string(proto), func(t *testing.T) { testResizeOnline(t, proto) })
	}
}

func testResizeOnline(t *testing.T, proto byte) {
	a, b := cleanPair(t, nodeOpts{protocol: proto}, nodeOpts{protocol: proto})
	const old, grown = int64(hDiskSize), int64(hDiskSize + 4<<20)
	ctx := context.Background()
	a.write(0, pattern("before", 64<<10))

	refused := func(what, want string) {
		t.Helper()
		_, err := a.node.Resize(ctx, false)
		if err == nil || !errors.Is(err, replica.ErrNotGrown) || !strings.Contains(err.Error(), want) {
			t.Fatalf("%s: Resize: %v; want ErrNotGrown saying %q", what, err, want)
		}
		if a.node.Size() != old || b.node.Size() != old {
			t.Fatalf("%s: sizes %d/%d after a refused resize, want %d", what, a.node.Size(), b.node.Size(), old)
		}
	}
	refused("no disk grown", "grow it on both nodes first")
	a.growFile(grown)
	refused("only the Primary's disk grown", "its disk is still 8MiB")
	b.growFile(grown + 1<<20)
	refused("disks grown apart", "grow both to the same size")
	b.growFile(grown)
	if _, err := b.node.Resize(ctx, false); !errors.Is(err, replica.ErrPeerPrimary) {
		t.Fatalf("Resize on the Secondary: %v, want ErrPeerPrimary", err)
	}

	// The new part holds different bytes on each disk, as after lvextend.
	a.poke(old, pattern("a's new part", 4<<20))
	b.poke(old, pattern("b's new part", 4<<20))

	// Writes keep coming while the resource grows.
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := int64(0); ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			off := (i * 4096) % (1 << 20)
			if err := a.node.WriteAt(ctx, pattern("during", 4096), 1<<20+off, false); err != nil {
				t.Errorf("a write during the resize: %v", err)
				return
			}
		}
	}()
	res, err := a.node.Resize(ctx, false)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatalf("Resize: %v", err)
	}
	if res.From != old || res.To != grown {
		t.Fatalf("Resize reported %d -> %d, want %d -> %d", res.From, res.To, old, grown)
	}
	if a.node.Size() != grown || b.node.Size() != grown {
		t.Fatalf("sizes after the resize: %d/%d, want %d", a.node.Size(), b.node.Size(), grown)
	}
	a.write(grown-8192, pattern("new part", 8192))
	inSyncAndEqual(t, a, b)
	if !bytes.Equal(b.read(old, 4096), pattern("a's new part", 4<<20)[:4096]) {
		t.Fatal("the Secondary's new part was not resynced from the Primary")
	}
	if !b.sawEvent("resync-done") {
		t.Fatal("no resync ran for the new part")
	}

	// The metadata took the new size: a restart needs no --grow.
	b.stop()
	b.start()
	inSyncAndEqual(t, a, b)
}

// TestScenarioResizePeerFails: the peer accepts the size but fails to grow
// its metadata. The Primary has grown and says so, naming the remedy; the
// pair then stays apart (the handshake refuses the two sizes) instead of
// replicating between disks of different sizes, and the peer started with
// --grow joins again and receives the new part.
func TestScenarioResizePeerFails(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	const old, grown = int64(hDiskSize), int64(hDiskSize + 4<<20)
	a.growFile(grown)
	b.growFile(grown)
	a.poke(old, pattern("a's new part", 4<<20))
	b.metaFS.dead.Store(true) // the peer's metadata device fails

	_, err := a.node.Resize(context.Background(), false)
	if err == nil || !strings.Contains(err.Error(), "did not confirm") || !strings.Contains(err.Error(), "urbd up --grow") {
		t.Fatalf("Resize with the peer's metadata failing: %v; want an error naming the remedy", err)
	}
	if a.node.Size() != grown || b.node.Size() != old {
		t.Fatalf("sizes %d/%d, want the Primary grown (%d) and the peer not (%d)", a.node.Size(), b.node.Size(), grown, old)
	}
	a.waitState("refusing the peer's size", func(s replica.State) bool {
		return s.Conn != replica.Connected && strings.Contains(s.Reason, "size mismatch")
	})
	a.write(old, pattern("new part, alone", 4096))

	b.halt(false)
	b.opts.grow = true
	b.start()
	inSyncAndEqual(t, a, b)
	if !bytes.Equal(b.read(old+4096, 4096), pattern("a's new part", 4<<20)[4096:8192]) {
		t.Fatal("the peer's new part was not resynced from the Primary")
	}
}

// TestScenarioResizeBothSecondary: with no Primary either node may run the
// resize; both grow, and the resync after the reconnection makes the new
// parts equal, copying the new part and nothing of the old disk (with no
// application writes, what the two nodes received is the resync).
func TestScenarioResizeBothSecondary(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	if err := a.node.Demote(false); err != nil {
		t.Fatal(err)
	}
	b.waitState("peer Secondary", func(s replica.State) bool { return s.PeerRole == replica.Secondary })
	const old, grown = int64(hDiskSize), int64(hDiskSize + 4<<20)
	a.growFile(grown)
	b.growFile(grown)
	a.poke(old, pattern("a's new part", 4<<20))
	b.poke(old, pattern("b's new part", 4<<20))
	before := received(a, b)
	res, err := b.node.Resize(context.Background(), false)
	if err != nil || res.To != grown {
		t.Fatalf("Resize on a Secondary with a Secondary peer: %+v, %v", res, err)
	}
	inSyncAndEqual(t, a, b)
	if copied := int64(received(a, b) - before); copied < (grown-old)>>10 || copied > (grown-old+hBlock)>>10 {
		t.Errorf("the resync after the resize copied %d KiB; want the new %d KiB and nothing more", copied, (grown-old)>>10)
	}
	if a.node.Size() != grown || b.node.Size() != grown {
		t.Fatalf("sizes %d/%d, want %d", a.node.Size(), b.node.Size(), grown)
	}
}

// TestScenarioResizeAssumeClean: with assume-clean the new parts (zeroes on
// both disks) are taken as equal: both nodes grow, the session goes on (no
// peer loss, no resync), nothing is out of sync, writes into the new part
// replicate, and the disks stay equal.
func TestScenarioResizeAssumeClean(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	const grown = int64(hDiskSize + 4<<20)
	a.growFile(grown)
	b.growFile(grown)
	res, err := a.node.Resize(context.Background(), true)
	if err != nil || res.To != grown {
		t.Fatalf("Resize --assume-clean: %+v, %v", res, err)
	}
	if a.node.Size() != grown || b.node.Size() != grown {
		t.Fatalf("sizes %d/%d, want %d", a.node.Size(), b.node.Size(), grown)
	}
	before := received(a, b)
	a.write(grown-4096, pattern("new end", 4096))
	inSyncAndEqual(t, a, b)
	if got := received(a, b) - before; got != 4 {
		t.Errorf("the nodes received %d KiB after the resize; want only the 4 KiB write", got)
	}
	for _, x := range []*tnode{a, b} {
		if x.sawEvent("peer-lost") || x.sawEvent("resync-started") {
			t.Errorf("%s: events %v; want no reconnection and no resync", x.label, x.events)
		}
	}
}

// received is the KiB both nodes received from their peer (nr), the
// replicated writes and the resync's copies.
func received(a, b *tnode) uint64 {
	return a.node.Status().NetRecvKiB + b.node.Status().NetRecvKiB
}
