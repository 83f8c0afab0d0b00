package resync

import (
	"context"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Clock is the source of time for the limiter and the progress meter. It is
// injected so that tests drive time by hand instead of sleeping.
//
// Implementations must be safe for concurrent use. After must deliver one
// value on the returned channel once d has elapsed on this clock; d <= 0 may
// fire at once.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// RealClock returns the wall clock, for production use.
func RealClock() Clock { return realClock{} }

const (
	// DefaultRate is the resync rate used when none is configured: 100 MiB/s,
	// DRBD's c-max-rate, instead of its 250 KiB/s static default that users
	// end up fighting.
	DefaultRate int64 = 100 << 20

	// DefaultMinRate is the floor the resync keeps while application I/O
	// competes: 4 MiB/s. DRBD's c-min-rate of 250 KiB/s needs 48 days to
	// resync 1 TiB under constant load; 4 MiB/s is about 3% of a single
	// spinning disk's sequential bandwidth and still copies 1 GiB in
	// about four minutes, so a busy primary always converges.
	DefaultMinRate int64 = 4 << 20

	// BurstWindow is how much time's worth of tokens the bucket holds. At
	// 100 ms the overshoot over any 10 s window is at most 1%.
	BurstWindow = 100 * time.Millisecond

	// MinBurst is the smallest bucket, so that low rates still pass
	// requests of a useful size in one piece.
	MinBurst int64 = 256 << 10

	// MaxBurst caps the bucket for very high rates.
	MaxBurst int64 = 1 << 30

	// AppWindow is how far back NoteAppIO's bytes count as competing
	// application I/O.
	AppWindow = time.Second

	appBuckets = 10
	appBucket  = AppWindow / appBuckets
)

// Limiter is a token bucket that paces resync traffic in bytes per second,
// yielding to application I/O down to a floor (see the package doc).
//
// All methods are safe for concurrent use. Wait may be called from several
// goroutines; they share the one budget.
type Limiter struct {
	clk Clock

	mu      sync.Mutex
	lim     *rate.Limiter // limit and burst are changed only with mu held
	rate    int64         // configured rate; 0 = unlimited
	minRate int64         // floor while application I/O competes
	eff     int64         // effective rate last applied to lim; 0 = unlimited
	changed chan struct{} // closed and replaced when the effective rate changes

	// Application bytes in a ring of appBuckets buckets, each appBucket
	// long; app[i] counts the bucket numbered appIdx[i].
	app    [appBuckets]int64
	appIdx [appBuckets]int64
	epoch  time.Time // origin of the bucket numbering
}

// NewLimiter returns a limiter at bytesPerSec (0 or less means unlimited)
// with the floor at DefaultMinRate. The bucket starts empty, so the bytes
// passed in any interval from the start never exceed rate × interval plus
// one request.
func NewLimiter(clk Clock, bytesPerSec int64) *Limiter {
	if bytesPerSec < 0 {
		bytesPerSec = 0
	}
	now := clk.Now()
	l := &Limiter{
		clk:     clk,
		rate:    bytesPerSec,
		minRate: DefaultMinRate,
		changed: make(chan struct{}),
		epoch:   now,
	}
	for i := range l.appIdx {
		l.appIdx[i] = -1
	}
	l.eff = l.effectiveLocked(now)
	l.lim = rate.NewLimiter(limitOf(l.eff), int(burstFor(l.eff)))
	// Drain the initial full bucket: start empty.
	l.lim.ReserveN(now, l.lim.Burst())
	return l
}

func limitOf(bps int64) rate.Limit {
	if bps <= 0 {
		return rate.Inf
	}
	return rate.Limit(bps)
}

// burstFor returns the bucket size for an effective rate.
func burstFor(bps int64) int64 {
	if bps <= 0 {
		return MaxBurst
	}
	b := int64(float64(bps) * BurstWindow.Seconds())
	return min(max(b, MinBurst), MaxBurst)
}

// Rate returns the configured rate in bytes/s; 0 means unlimited.
func (l *Limiter) Rate() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rate
}

// SetRate changes the configured rate (urbd adjust); 0 or less means
// unlimited. It takes effect at once: callers blocked in Wait recompute
// their delay at the new rate.
func (l *Limiter) SetRate(bytesPerSec int64) {
	if bytesPerSec < 0 {
		bytesPerSec = 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rate = bytesPerSec
	l.applyLocked(l.clk.Now(), true)
}

// MinRate returns the floor kept while application I/O competes.
func (l *Limiter) MinRate() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.minRate
}

// SetMinRate changes the floor kept while application I/O competes. Values
// below 1 KiB/s are raised to 1 KiB/s, so a resync always makes progress. A
// floor above the configured rate has no effect: the resync never runs
// faster than the configured rate. Blocked waiters recompute at once.
func (l *Limiter) SetMinRate(bytesPerSec int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.minRate = max(bytesPerSec, minFloor)
	l.applyLocked(l.clk.Now(), true)
}

// minFloor is the lowest effective rate ever applied while a rate is set.
const minFloor int64 = 1 << 10

// EffectiveRate returns the rate Wait paces at right now: the configured
// rate, lowered by recent application I/O down to the floor. 0 means
// unlimited.
func (l *Limiter) EffectiveRate() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.applyLocked(l.clk.Now(), false)
}

// AppRate returns the application I/O rate in bytes/s measured over the
// last AppWindow (at 100 ms granularity); any application byte in the
// window makes it at least 1.
func (l *Limiter) AppRate() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.appRateLocked(l.clk.Now())
}

// NoteAppIO records n bytes of application I/O (reads or writes served to
// the NBD client) at the current time. It is cheap (a lock and an add) and
// never blocks on Wait; n <= 0 is ignored. The new application rate is
// applied by Wait before its next piece, so a waiter already granted a
// piece finishes it at the old rate (at most BurstWindow of it).
func (l *Limiter) NoteAppIO(n int64) {
	if n <= 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clk.Now()
	if now.Before(l.epoch) {
		// The clock stepped backwards: restart the window from now.
		l.epoch = now
		for i := range l.appIdx {
			l.appIdx[i] = -1
		}
	}
	idx := l.bucketIndex(now)
	slot := int(idx % appBuckets)
	if l.appIdx[slot] != idx {
		l.appIdx[slot] = idx
		l.app[slot] = 0
	}
	l.app[slot] += n
}

func (l *Limiter) bucketIndex(t time.Time) int64 { return bucketOf(l.epoch, t, appBucket) }

// appRateLocked sums the buckets of the last AppWindow (the current bucket
// and the appBuckets-1 before it) and divides by the time they cover, from
// the start of the oldest to now (at least one bucket's length, so a burst
// right after the epoch does not read as a huge rate). l.mu must be held.
func (l *Limiter) appRateLocked(now time.Time) int64 {
	cur := l.bucketIndex(now)
	oldest := max(cur-(appBuckets-1), 0)
	var sum int64
	for i, idx := range l.appIdx {
		if idx >= oldest && idx <= cur {
			sum += l.app[i]
		}
	}
	if sum == 0 {
		return 0
	}
	covered := max(now.Sub(bucketStart(l.epoch, oldest, appBucket)), appBucket)
	return max(int64(float64(sum)/covered.Seconds()), 1)
}

// effectiveLocked computes the effective rate at now. l.mu must be held.
func (l *Limiter) effectiveLocked(now time.Time) int64 {
	if l.rate == 0 {
		return 0
	}
	app := l.appRateLocked(now)
	if app == 0 {
		return l.rate
	}
	floor := min(l.minRate, l.rate)
	return max(floor, l.rate-app)
}

// applyLocked recomputes the effective rate and, if it changed, installs it
// in the token bucket. With wake set it also wakes every blocked Wait so
// that it recomputes its delay. It returns the effective rate. l.mu must be
// held.
func (l *Limiter) applyLocked(now time.Time, wake bool) int64 {
	eff := l.effectiveLocked(now)
	if eff != l.eff {
		l.eff = eff
		l.lim.SetLimitAt(now, limitOf(eff))
		l.lim.SetBurstAt(now, int(burstFor(eff)))
	}
	if wake {
		close(l.changed)
		l.changed = make(chan struct{})
	}
	return eff
}

// Wait blocks until n more bytes may be sent at the effective rate, or ctx
// is done. n may exceed the bucket: it is paced in bucket-sized pieces. If
// the rate changes while Wait blocks, the remaining delay is recomputed at
// the new rate. On cancellation Wait returns ctx.Err() promptly and gives
// back the tokens of the piece it was waiting for; pieces already granted
// stay spent. n <= 0 returns at once (after checking ctx).
func (l *Limiter) Wait(ctx context.Context, n int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	for n > 0 {
		l.mu.Lock()
		now := l.clk.Now()
		eff := l.applyLocked(now, false)
		if eff == 0 {
			l.mu.Unlock()
			return nil
		}
		piece := min(n, int64(l.lim.Burst()))
		r := l.lim.ReserveN(now, int(piece))
		delay := r.DelayFrom(now)
		changed := l.changed
		l.mu.Unlock()

		if delay > 0 {
			select {
			case <-ctx.Done():
				r.CancelAt(l.clk.Now())
				return ctx.Err()
			case <-changed:
				r.CancelAt(l.clk.Now())
				continue // same piece again, at the new rate
			case <-l.clk.After(delay):
			}
		}
		n -= piece
	}
	return nil
}
