package replica

import "testing"

// TestTransferLogFlushDropsOlder: a peer flush covers exactly the writes
// sent before it, whether it succeeded (dropped) or failed (dropped and
// returned, to be marked out of sync).
func TestTransferLogFlushDropsOlder(t *testing.T) {
	for _, failed := range []bool{false, true} {
		l := newTransferLog(4 << 20)
		l.add(1, 0, 4096)
		l.add(2, 8192, 4096)
		l.add(5, 16384, 4096)
		if failed {
			gone := l.flushFailed(3)
			if len(gone) != 2 || gone[0].seq != 1 || gone[1].seq != 2 {
				t.Fatalf("failed flush 3 returned %+v, want seq 1 and 2", gone)
			}
		} else {
			l.flushed(3)
		}
		got := l.ranges()
		if len(got) != 1 || got[0].seq != 5 {
			t.Fatalf("after flush 3 (failed %v): %+v, want only seq 5", failed, got)
		}
		if !l.empty() {
			t.Fatal("ranges did not empty the log")
		}
	}
}

// TestTransferLogFoldsWhenFull: past maxFine entries the oldest fold into
// whole extents, which a later flush drops, and which peer loss reports.
func TestTransferLogFoldsWhenFull(t *testing.T) {
	const ext = 4 << 20
	l := newTransferLog(ext)
	for i := 0; i <= maxFine; i++ {
		l.add(uint64(i+1), int64(i%8)*ext+4096, 4096)
	}
	if len(l.fine) > maxFine || len(l.folded) != 8 {
		t.Fatalf("fine %d, folded %d; want at most %d fine and 8 folded extents", len(l.fine), len(l.folded), maxFine)
	}
	covered := map[int64]bool{}
	for _, e := range l.ranges() {
		for x := e.off / ext; x <= (e.off+e.length-1)/ext; x++ {
			covered[x] = true
		}
	}
	for x := int64(0); x < 8; x++ {
		if !covered[x] {
			t.Errorf("extent %d written and not flushed, but not reported", x)
		}
	}
	l2 := newTransferLog(ext)
	for i := 0; i <= maxFine; i++ {
		l2.add(uint64(i+1), 0, 4096)
	}
	gone := l2.flushFailed(uint64(maxFine + 2))
	folded := 0
	for _, e := range gone {
		if e.length == ext {
			folded++
		}
	}
	if len(gone) != maxFine/2+2 || folded != 1 {
		t.Fatalf("the failed flush dropped %d ranges (%d folded extents), want %d with the one folded extent", len(gone), folded, maxFine/2+2)
	}
	if !l2.empty() {
		t.Fatalf("a flush after every write left %d fine, %d folded", len(l2.fine), len(l2.folded))
	}
}
