// Package threads adapts how many threads run a daemon's Go code at once
// (GOMAXPROCS) to the requests it serves.
//
// Small writes cost urbd a few microseconds of its own work each, and a
// second thread mostly adds hand-offs between threads (futex wake-ups,
// context switches). Two kinds of load need more threads: large writes
// carry real work (checksums, copies) that a second thread overlaps with the
// socket and disk writes, and reads that miss the page cache block their
// thread in pread, which with a single thread holds up every other request
// until the runtime notices (tens of microseconds each). An Adapter switches
// between a count for each, with hysteresis, from the requests of the last
// interval.
package threads

import (
	"context"
	"runtime"
	"time"

	"github.com/urbd/urbd/nbd"
)

const (
	// LargeAvg is the average write size from which writes count as large.
	LargeAvg = 256 << 10
	// SmallAvg is the average write size below which writes count as
	// small. Between the two the count stays as it is.
	SmallAvg = 64 << 10
	// ReadShare is the share of reads (1/ReadShare of the requests) from
	// which an interval counts as reading; below half of it the reads no
	// longer keep the larger count.
	ReadShare = 4
	// MinRequests is the fewest requests of a kind an interval needs to
	// count: a trickle costs nothing either way.
	MinRequests = 16
	// Interval is how often the daemons look at their requests: short
	// enough that a burst of reads gets its threads within a fraction of a
	// second, long enough that the stop-the-world of a change is noise.
	Interval = 250 * time.Millisecond
)

// Range is the thread count for small writes and for the loads that need
// more. Large <= Small means a fixed count: nothing adapts.
type Range struct{ Small, Large int }

// Adapts reports whether r has two different counts.
func (r Range) Adapts() bool { return r.Large > r.Small && r.Small > 0 }

// Adapter tracks request totals and sets the thread count. Not safe for
// concurrent use; Run drives it from one goroutine.
type Adapter struct {
	r    Range
	set  func(int) int // runtime.GOMAXPROCS; replaced in tests
	cur  int
	last nbd.Served // totals at the last Update
}

// NewAdapter returns an Adapter for r that starts at r.Small (which the
// caller has already set) and calls set to change the count.
func NewAdapter(r Range, set func(int) int) *Adapter {
	return &Adapter{r: r, set: set, cur: r.Small}
}

// Update takes the server's cumulative totals and returns the thread count
// in effect afterwards.
func (a *Adapter) Update(t nbd.Served) int {
	reads, writes, bytes := t.Reads-a.last.Reads, t.Writes-a.last.Writes, t.WriteBytes-a.last.WriteBytes
	a.last = t
	if reads+writes < MinRequests {
		return a.cur
	}
	var avg uint64
	if writes > 0 {
		avg = bytes / writes
	}
	reading := reads >= MinRequests && reads*ReadShare >= reads+writes
	notReading := reads < MinRequests || reads*ReadShare*2 < reads+writes
	large := writes >= MinRequests && avg >= LargeAvg
	small := writes < MinRequests || avg < SmallAvg
	want := a.cur
	switch {
	case reading || large:
		want = a.r.Large
	case notReading && small:
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
func Run(ctx context.Context, r Range, interval time.Duration, totals func() nbd.Served) {
	if !r.Adapts() {
		return
	}
	a := NewAdapter(r, runtime.GOMAXPROCS)
	a.last = totals()
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
