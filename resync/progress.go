package resync

import (
	"sync"
	"time"
)

const (
	// SpeedWindow is the span the recent speed is measured over, like the
	// first number of /proc/drbd's "speed:".
	SpeedWindow = 3 * time.Second

	// maxETA caps the ETA so that the conversion never overflows.
	maxETA = time.Duration(1 << 62)

	speedBuckets = 30
	speedBucket  = SpeedWindow / speedBuckets
)

// Snapshot is a consistent view of a Progress at one instant.
type Snapshot struct {
	// Total is the number of bytes to copy, including growth added during
	// the resync; Remaining is Total minus the bytes done, never negative.
	Total, Remaining int64
	// Percent is done/Total in [0, 100]; 100 when Total is 0.
	Percent float64
	// Speed is the recent rate in bytes/s over the last SpeedWindow (or
	// since the start, if shorter); AvgSpeed is the rate since the start.
	Speed, AvgSpeed int64
	// ETA is Remaining/Speed. It is 0 when nothing remains, and also 0 with
	// Stalled set when something remains but Speed is 0 (nothing copied in
	// the last SpeedWindow, or no time has passed yet): the ETA is unknown.
	ETA time.Duration
	// Stalled reports Remaining > 0 with Speed 0, i.e. an unknown ETA.
	Stalled bool
	// Elapsed is the time since NewProgress, pauses included.
	Elapsed time.Duration
}

// Progress measures a resync or verify run: how much is left, how fast it
// goes and when it will finish. All methods are safe for concurrent use.
type Progress struct {
	clk   Clock
	start time.Time

	mu    sync.Mutex
	total int64
	done  int64
	// Bytes done in a ring of speedBuckets buckets, each speedBucket long,
	// numbered from start; buckets[i] counts bucket number idx[i].
	buckets [speedBuckets]int64
	idx     [speedBuckets]int64
}

// NewProgress starts measuring a run of totalBytes (negative counts as 0) at
// the clock's current time.
func NewProgress(clk Clock, totalBytes int64) *Progress {
	p := &Progress{clk: clk, start: clk.Now(), total: max(totalBytes, 0)}
	for i := range p.idx {
		p.idx[i] = -1
	}
	return p
}

// Add grows the total by n bytes: blocks that went out of sync during the
// resync. n <= 0 is ignored.
func (p *Progress) Add(n int64) {
	if n <= 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.total += n
}

// Done records n bytes copied (or verified). n <= 0 is ignored. Bytes done
// beyond Total count toward the speeds but Remaining stays at 0.
func (p *Progress) Done(n int64) {
	if n <= 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done += n
	cur := p.bucketIndex(p.clk.Now())
	slot := int(cur % speedBuckets)
	if p.idx[slot] != cur {
		p.idx[slot] = cur
		p.buckets[slot] = 0
	}
	p.buckets[slot] += n
}

func (p *Progress) bucketIndex(t time.Time) int64 { return bucketOf(p.start, t, speedBucket) }

// bucketOf numbers the bucket of length g that holds t, counting from
// origin: bucket i holds the half-open span (origin+(i-1)g, origin+ig], so
// that a window ending exactly at a bucket boundary counts what happened
// after its start and up to and including now. Times at or before origin
// fall in bucket 0.
func bucketOf(origin, t time.Time, g time.Duration) int64 {
	d := t.Sub(origin)
	if d <= 0 {
		return 0
	}
	return int64((d + g - 1) / g)
}

// bucketStart returns the exclusive start of bucket i, never before origin.
func bucketStart(origin time.Time, i int64, g time.Duration) time.Time {
	if i <= 1 {
		return origin
	}
	return origin.Add(time.Duration(i-1) * g)
}

// Snapshot returns the current state.
func (p *Progress) Snapshot() Snapshot {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.clk.Now()
	elapsed := max(now.Sub(p.start), 0)
	s := Snapshot{Total: p.total, Remaining: max(p.total-p.done, 0), Elapsed: elapsed}
	if p.total == 0 {
		s.Percent = 100
	} else {
		s.Percent = 100 * float64(p.total-s.Remaining) / float64(p.total)
	}
	if elapsed > 0 {
		s.AvgSpeed = int64(float64(p.done) / elapsed.Seconds())
	}

	// Recent speed: the buckets of the last SpeedWindow, divided by the
	// exact time they cover (from the start of the oldest one, or of the
	// run, to now).
	cur := p.bucketIndex(now)
	oldest := max(cur-(speedBuckets-1), 0)
	var sum int64
	for i, idx := range p.idx {
		if idx >= oldest && idx <= cur {
			sum += p.buckets[i]
		}
	}
	if covered := now.Sub(bucketStart(p.start, oldest, speedBucket)); covered > 0 {
		s.Speed = int64(float64(sum) / covered.Seconds())
	}

	switch {
	case s.Remaining == 0:
	case s.Speed > 0:
		eta := float64(s.Remaining) / float64(s.Speed) * float64(time.Second)
		s.ETA = time.Duration(min(eta, float64(maxETA)))
	default:
		s.Stalled = true
	}
	return s
}
