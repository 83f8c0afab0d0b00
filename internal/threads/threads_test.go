package threads

import (
	"context"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// TestAdapterFollowsWriteSize feeds an Adapter intervals of small, large and
// middling writes and checks the count it sets: large from an average of
// 256 KiB, small below 64 KiB, unchanged in between or when too few writes
// arrived.
func TestAdapterFollowsWriteSize(t *testing.T) {
	var set []int
	a := NewAdapter(Range{Small: 1, Large: 2}, func(n int) int { set = append(set, n); return 0 })
	var count, bytes uint64
	step := func(n, size uint64) int {
		count += n
		bytes += n * size
		return a.Update(count, bytes)
	}
	for i, c := range []struct {
		n, size uint64
		want    int
	}{
		{1000, 4 << 10, 1},  // small writes: stays small
		{100, 1 << 20, 2},   // large: switches up
		{100, 128 << 10, 2}, // between the thresholds: stays
		{10, 4 << 10, 2},    // a trickle: stays
		{0, 0, 2},           // idle: stays
		{100, 32 << 10, 1},  // small: switches down
		{100, 128 << 10, 1}, // between: stays
		{16, 256 << 10, 2},  // exactly the thresholds: large
	} {
		if got := step(c.n, c.size); got != c.want {
			t.Fatalf("interval %d (%d writes of %d bytes): %d threads, want %d", i, c.n, c.size, got, c.want)
		}
	}
	if want := []int{2, 1, 2}; len(set) != len(want) || set[0] != 2 || set[1] != 1 || set[2] != 2 {
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
	var count, bytes atomic.Uint64
	totals := func() (uint64, uint64) {
		count.Add(100)
		return count.Load(), bytes.Add(100 << 20)
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
