package replica_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/urbd/urbd/replica"
)

// TestScenarioRandomPowerCuts: writers write (some with FUA) and flush
// through the Primary while one node, chosen at random, loses power at a
// random moment, or both machines do, sometimes after the Primary swept
// idle extents out of its activity log, sometimes while a resync runs; its
// activity log holds 4 of the disk's 16 extents, so writes also evict. A
// Secondary comes back and resyncs; a Primary either comes
// back (as Secondary, then the resync source: it crashed as Primary) or its
// peer is promoted first (failover). After each cycle both disks must be
// byte-identical and hold every write that a FLUSH or FUA made durable; a
// write that was only answered may be lost, but on both disks alike.
//
// Every write goes to slots no earlier write touched, so each block holds
// either its one write or zeros. URBD_TEST_SEED reruns a failing sequence.
func TestScenarioRandomPowerCuts(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if v, err := strconv.ParseUint(os.Getenv("URBD_TEST_SEED"), 10, 64); err == nil {
		seed = v
	}
	t.Logf("seed %d (URBD_TEST_SEED)", seed)
	rng := rand.New(rand.NewPCG(seed, 1))

	const size, cycles = 64 << 20, 10
	o := nodeOpts{volatile: true, size: size, alExtents: 4} // of 16: extents also leave the log by eviction
	p, s := cleanPair(t, o, o)                              // Primary, Secondary: they swap on failover
	h := &powerCutHistory{slots: rng.Perm(size / powerCutSlot)}
	perCycle := len(h.slots) / cycles
	for cycle := range cycles {
		h.next.Store(int64(cycle * perCycle))
		h.end = int64((cycle + 1) * perCycle)
		h.from = h.answered()
		ctx, stop := context.WithCancel(context.Background())
		flushing := rng.IntN(3) != 0 // else nothing is durable: only consistency counts
		var wg sync.WaitGroup
		for w := range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				h.write(ctx, p.node, flushing, rand.New(rand.NewPCG(seed, uint64(cycle*10+w+2))))
			}()
		}
		time.Sleep(time.Duration(20+rng.IntN(100)) * time.Millisecond)
		if rng.IntN(2) == 0 {
			// Two sweeps a moment apart drop the extents no write
			// touched in between (the node sweeps every 5 s itself).
			for range 2 {
				if err := p.node.Sweep(); err != nil {
					t.Fatal(err)
				}
				time.Sleep(time.Duration(rng.IntN(5000)) * time.Microsecond)
			}
		}
		time.Sleep(time.Duration(rng.IntN(50)) * time.Millisecond)
		victim, failover, both := p, rng.IntN(2) == 0, false
		switch rng.IntN(5) {
		case 0, 1:
			victim = s
		case 2:
			both, failover = true, false
		}
		story := fmt.Sprintf("cycle %d: power cut of the %s %s", cycle, roleOf(victim, p), victim.label)
		if both {
			story = fmt.Sprintf("cycle %d: power cut of both machines, the Primary %s first", cycle, p.label)
		}
		if !flushing {
			story += " (no flushes)"
		}
		if st := s.node.State(); st.Conn != replica.Connected || st.Disk != replica.UpToDate {
			// As an operator would: fail over only to a Secondary that
			// was connected and UpToDate when the Primary died (not
			// one still resyncing or not yet back).
			failover = false
		}
		victim.powerLoss()
		if both {
			s.powerLoss()
		} else if victim == s {
			time.Sleep(30 * time.Millisecond) // the Primary goes on alone
		}
		stop()
		wg.Wait()
		switch {
		case both:
			s.start()
			p.start()
		case victim == s:
			s.start()
		case failover:
			story += ", failover to " + s.label
			s.waitConn(replica.WFConnection)
			if err := s.node.Promote(false); err != nil {
				t.Fatalf("%s: promote: %v", story, err)
			}
			p.start()
			p, s = s, p
		default:
			story += ", it restarts"
			p.start()
			s.waitState("peer back", func(st replica.State) bool { return st.Conn != replica.WFConnection })
		}
		if victim == s && !both && rng.IntN(3) == 0 {
			t.Logf("%s: the next cycle starts while the resync runs", story)
			continue // its power cut may hit the resync
		}
		inSyncAndEqual(t, p, s)
		if p.node.State().Role != replica.Primary {
			if err := p.node.Promote(false); err != nil {
				t.Fatalf("%s: promote %s again: %v", story, p.label, err)
			}
		}
		t.Logf("%s: %d writes answered, %d durable", story, h.answered(), h.durableCount())
		h.check(t, story, p, s)
	}
}

// powerCutSlot is the disk space each write of TestScenarioRandomPowerCuts
// may use: up to four bitmap blocks.
const powerCutSlot = 4 * hBlock

// powerCutHistory records the writes of TestScenarioRandomPowerCuts: which
// were answered and which a FLUSH or FUA made durable.
type powerCutHistory struct {
	slots []int        // slot numbers in the order writes take them
	next  atomic.Int64 // index into slots
	end   int64        // slots[next:end] are this cycle's; set between cycles
	from  int          // done[from:] are this cycle's; set between cycles

	mu      sync.Mutex
	done    []powerCutWrite // answered writes, in answer order
	durable []bool          // parallel to done
}

type powerCutWrite struct {
	off  int64
	data []byte
}

// write writes to fresh slots on node, one every half millisecond or so,
// until ctx ends, the cycle's slots run out or a request fails (the node
// lost power). When flushing, about one write in five is FUA and one in four
// is followed by a FLUSH.
func (h *powerCutHistory) write(ctx context.Context, node *replica.Node, flushing bool, rng *rand.Rand) {
	for ctx.Err() == nil {
		time.Sleep(time.Duration(rng.IntN(1000)) * time.Microsecond)
		i := h.next.Add(1) - 1
		if i >= h.end {
			return
		}
		off := int64(h.slots[i]) * powerCutSlot
		data := pattern(fmt.Sprintf("slot %d", h.slots[i]), (1+rng.IntN(4))*hBlock)
		fua := flushing && rng.IntN(5) == 0
		if err := node.WriteAt(ctx, data, off, fua); err != nil {
			return
		}
		h.mu.Lock()
		h.done = append(h.done, powerCutWrite{off: off, data: data})
		h.durable = append(h.durable, fua)
		n := len(h.done)
		h.mu.Unlock()
		if !flushing || rng.IntN(4) != 0 {
			continue
		}
		if err := node.Flush(ctx); err != nil {
			return
		}
		h.mu.Lock()
		// Answered before the FLUSH began, and this cycle: a write of
		// an earlier cycle that the power cut took stays lost.
		for j := h.from; j < n; j++ {
			h.durable[j] = true
		}
		h.mu.Unlock()
	}
}

func (h *powerCutHistory) answered() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.done)
}

func (h *powerCutHistory) durableCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, d := range h.durable {
		if d {
			n++
		}
	}
	return n
}

// check fails the test unless every durable write is on both disks and
// every answered one is there whole or not at all (zeros).
func (h *powerCutHistory) check(t *testing.T, story string, nodes ...*tnode) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, x := range nodes {
		img := x.image()
		for i, w := range h.done {
			got := img[w.off : w.off+int64(len(w.data))]
			switch {
			case bytes.Equal(got, w.data):
			case h.durable[i]:
				t.Fatalf("%s: %s lost a durable write of %d bytes at %d", story, x.label, len(w.data), w.off)
			case !bytes.Equal(got, make([]byte, len(got))):
				t.Fatalf("%s: %s holds neither the write of %d bytes at %d nor zeros", story, x.label, len(w.data), w.off)
			}
		}
	}
}

// roleOf names x's role in a pair whose Primary is p.
func roleOf(x, p *tnode) string {
	if x == p {
		return "Primary"
	}
	return "Secondary"
}
