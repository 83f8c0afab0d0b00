package threads

import (
	"context"
	"runtime"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/urbd/urbd/nbd"
)

// TestAdapterFollowsRequests feeds an Adapter intervals of requests and
// checks the count it sets: the larger one for writes averaging 256 KiB or
// for a quarter or more reads, the smaller one for small writes with under
// an eighth reads, unchanged in between or when too few requests arrived.
func TestAdapterFollowsRequests(t *testing.T) {
	var set []int
	a := NewAdapter(Range{Small: 1, Large: 2}, func(n int) int { set = append(set, n); return 0 })
	var tot nbd.Served
	for i, c := range []struct {
		reads, writes, size uint64
		want                int
	}{
		{0, 1000, 4 << 10, 1},    // small writes: stays small
		{0, 100, 1 << 20, 2},     // large writes: up
		{0, 100, 128 << 10, 2},   // between the sizes: stays
		{0, 10, 4 << 10, 2},      // a trickle: stays
		{0, 0, 0, 2},             // idle: stays
		{0, 100, 32 << 10, 1},    // small writes: down
		{0, 100, 128 << 10, 1},   // between: stays
		{0, 16, 256 << 10, 2},    // exactly the thresholds: large
		{10, 1000, 4 << 10, 1},   // small writes, a trickle of reads: down
		{300, 900, 4 << 10, 2},   // a quarter reads: up
		{150, 850, 4 << 10, 2},   // 15% reads: between, stays
		{100, 1000, 4 << 10, 1},  // under an eighth: down
		{1000, 0, 0, 2},          // reads only: up
		{0, 20, 4 << 10, 1},      // small writes only: down
		{100, 100, 1 << 20, 2},   // large writes and reads: up
		{100, 100, 128 << 10, 2}, // half reads: stays up
	} {
		tot.Reads += c.reads
		tot.Writes += c.writes
		tot.WriteBytes += c.writes * c.size
		if got := a.Update(tot); got != c.want {
			t.Fatalf("interval %d (%d reads, %d writes of %d bytes): %d threads, want %d", i, c.reads, c.writes, c.size, got, c.want)
		}
	}
	if want := []int{2, 1, 2, 1, 2, 1, 2, 1, 2}; !slices.Equal(set, want) {
		t.Errorf("set calls %v, want %v (only on a change)", set, want)
	}
}

func TestRangeAdapts(t *testing.T) {
	for _, c := range []struct {
		r    Range
		want bool
	}{{Range{1, 2}, true}, {Range{2, 2}, false}, {Range{2, 1}, false}, {Range{0, 2}, false}} {
		if got := c.r.Adapts(); got != c.want {
			t.Errorf("%+v.Adapts() = %v, want %v", c.r, got, c.want)
		}
	}
}

// TestRunSetsGOMAXPROCS runs the loop on a stream of large writes: the
// process goes to the large count, and back to the small one when ctx ends.
func TestRunSetsGOMAXPROCS(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	var writes atomic.Uint64
	totals := func() nbd.Served {
		n := writes.Add(100)
		return nbd.Served{Writes: n, WriteBytes: n << 20}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(ctx, Range{Small: 1, Large: 2}, time.Millisecond, totals)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.GOMAXPROCS(0) != 2 {
		if time.Now().After(deadline) {
			t.Fatal("GOMAXPROCS stayed 1 under 1 MiB writes")
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Errorf("GOMAXPROCS %d after Run ended, want the small count 1", got)
	}
}
