package replica_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

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
	for i := range 8 {
		off := int64(i) * 3 * hBlock
		p := pattern(fmt.Sprintf("w%d", i), 2*hBlock)
		a.write(off, p)
		if got := b.read(off, len(p)); string(got) != string(p) {
			t.Fatalf("write %d at %d acknowledged but not on the secondary's disk", i, off)
		}
	}
	sameDisks(t, a, b)
	if s := a.node.Status(); s.OutOfSyncKiB != 0 || s.NetSendKiB < 8*2*hBlock>>10 {
		t.Fatalf("a status after mirrored writes: oos %d ns %d", s.OutOfSyncKiB, s.NetSendKiB)
	}
	if s := b.node.Status(); s.NetRecvKiB < 8*2*hBlock>>10 || s.DiskWriteKiB < 8*2*hBlock>>10 {
		t.Fatalf("b status after mirrored writes: nr %d dw %d", s.NetRecvKiB, s.DiskWriteKiB)
	}
}

// TestScenarioFreshPairPromoteNeedsForce: two fresh nodes (no assume-clean)
// connect Inconsistent/Inconsistent without copying anything; promotion
// without --force is refused with ErrNotUpToDate and a hint, with --force
// the node becomes an UpToDate Primary and the peer sees it.
func TestScenarioFreshPairPromoteNeedsForce(t *testing.T) {
	a, b := newPair(t, nodeOpts{}, nodeOpts{})
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
	b.waitState("peer Primary", func(s replica.State) bool { return s.PeerRole == replica.Primary })
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
