// Package resynctest provides a manual clock that satisfies resync.Clock, so
// tests of rate limits, timeouts and ETAs drive time by hand and never sleep.
package resynctest

import (
	"sort"
	"sync"
	"time"
)

// Clock is a manual clock. Time moves only through Advance, Set, or, when
// AutoAdvance is on, through After itself. It is safe for concurrent use.
type Clock struct {
	mu      sync.Mutex
	now     time.Time
	auto    bool
	waiters []waiter
	added   chan struct{} // closed and replaced whenever a waiter is added
}

type waiter struct {
	at time.Time
	ch chan time.Time
}

// Epoch is the time a new Clock starts at.
var Epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// NewClock returns a clock at Epoch. With auto set, After(d) moves the clock
// forward by d itself and fires at once: a single goroutine that paces itself
// through After then runs in simulated time as fast as it can.
func NewClock(auto bool) *Clock {
	return &Clock{now: Epoch, auto: auto, added: make(chan struct{})}
}

// Now returns the clock's current time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// After returns a channel that receives the clock's time once it has
// advanced by d. The channel has a buffer of one, so an unread timer never
// blocks the clock.
func (c *Clock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if c.auto && d > 0 {
		c.now = c.now.Add(d)
		c.fireLocked()
		d = 0
	}
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.waiters = append(c.waiters, waiter{at: c.now.Add(d), ch: ch})
	close(c.added)
	c.added = make(chan struct{})
	return ch
}

// Advance moves the clock forward by d and fires every timer that is due.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	c.fireLocked()
}

// Set moves the clock to t (which may be earlier, to test clock steps) and
// fires every timer that is due.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
	c.fireLocked()
}

func (c *Clock) fireLocked() {
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if !w.at.After(c.now) {
			w.ch <- c.now
		} else {
			kept = append(kept, w)
		}
	}
	clear(c.waiters[len(kept):])
	c.waiters = kept
}

// Waiters returns the number of timers not yet fired.
func (c *Clock) Waiters() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.waiters)
}

// NextDeadline returns the earliest pending timer's deadline and true, or
// false when none is pending.
func (c *Clock) NextDeadline() (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.waiters) == 0 {
		return time.Time{}, false
	}
	at := make([]time.Time, len(c.waiters))
	for i, w := range c.waiters {
		at[i] = w.at
	}
	sort.Slice(at, func(i, j int) bool { return at[i].Before(at[j]) })
	return at[0], true
}

// LastDeadline returns the deadline of the most recently armed timer that
// is still pending, and true, or false when none is pending.
func (c *Clock) LastDeadline() (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.waiters) == 0 {
		return time.Time{}, false
	}
	return c.waiters[len(c.waiters)-1].at, true
}

// BlockUntil blocks until at least n timers are pending. It lets a test
// know, without sleeping, that the code under test is waiting on the clock.
func (c *Clock) BlockUntil(n int) {
	for {
		c.mu.Lock()
		if len(c.waiters) >= n {
			c.mu.Unlock()
			return
		}
		added := c.added
		c.mu.Unlock()
		<-added
	}
}
