// Package threads adapts how many threads run a daemon's Go code at once
// (GOMAXPROCS) to the size of the writes it serves.
//
// Small writes cost urbd a few microseconds of its own work each, and a
// second thread mostly adds hand-offs between threads (futex wake-ups,
// context switches); large writes carry real work (checksums, copies) that a
// second thread overlaps with the socket and disk writes. An Adapter switches
// between a count for each, with hysteresis, from the writes of the last
// interval.
package threads

import (
	"context"
	"runtime"
	"time"
)

const (
	// LargeAvg is the average write size from which an interval counts as
	// large writes.
	LargeAvg = 256 << 10
	// SmallAvg is the average write size below which an interval counts as
	// small writes. Between the two the count stays as it is.
	SmallAvg = 64 << 10
	// MinWrites is the fewest writes an interval needs to change anything:
	// a trickle of writes costs nothing either way.
	MinWrites = 16
)

// Range is the thread count for small writes and for large ones. Large <=
// Small means a fixed count: nothing adapts.
type Range struct{ Small, Large int }

// Adapts reports whether r has two different counts.
func (r Range) Adapts() bool { return r.Large > r.Small && r.Small > 0 }

// Adapter tracks write totals and sets the thread count. Not safe for
// concurrent use; Run drives it from one goroutine.
type Adapter struct {
	r   Range
	set func(int) int // runtime.GOMAXPROCS; replaced in tests
	cur int

	count, bytes uint64 // totals at the last Update
}

// NewAdapter returns an Adapter for r that starts at r.Small (which the
// caller has already set) and calls set to change the count.
func NewAdapter(r Range, set func(int) int) *Adapter {
	return &Adapter{r: r, set: set, cur: r.Small}
}

// Update takes the cumulative number of writes and of their bytes and
// returns the thread count in effect afterwards.
func (a *Adapter) Update(count, bytes uint64) int {
	n, b := count-a.count, bytes-a.bytes
	a.count, a.bytes = count, bytes
	if n < MinWrites {
		return a.cur
	}
	want := a.cur
	switch avg := b / n; {
	case avg >= LargeAvg:
		want = a.r.Large
	case avg < SmallAvg:
		want = a.r.Small
	}
	if want != a.cur {
		a.set(want)
		a.cur = want
	}
	return a.cur
}

// Run updates an Adapter for r from totals every interval until ctx ends,
// then goes back to r.Small. It does nothing unless r adapts.
func Run(ctx context.Context, r Range, interval time.Duration, totals func() (count, bytes uint64)) {
	if !r.Adapts() {
		return
	}
	a := NewAdapter(r, runtime.GOMAXPROCS)
	a.count, a.bytes = totals()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			if a.cur != r.Small {
				runtime.GOMAXPROCS(r.Small)
			}
			return
		case <-tick.C:
			a.Update(totals())
		}
	}
}
