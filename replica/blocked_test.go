package replica

import (
	"testing"
	"time"
)

// TestStallWatch: look measures how long requests have waited with none
// completing, from the first look that saw a request in flight, and starts
// over on any completion or when none is in flight. A request that starts
// after a quiet spell is not charged with it.
func TestStallWatch(t *testing.T) {
	t0 := time.Unix(1000, 0)
	var w stallWatch
	for i, step := range []struct {
		at      time.Duration
		pending bool
		done    uint64
		want    time.Duration
	}{
		{0, false, 5, 0},
		{10 * time.Second, true, 5, 0},               // started after a quiet spell
		{12 * time.Second, true, 5, 2 * time.Second}, // in flight since the last look
		{15 * time.Second, true, 5, 5 * time.Second},
		{16 * time.Second, true, 6, 0},           // one completed
		{17 * time.Second, true, 6, time.Second}, // the others waited since then
		{18 * time.Second, false, 7, 0},          // none in flight
		{19 * time.Second, true, 7, 0},           // a new one
		{19500 * time.Millisecond, true, 7, 500 * time.Millisecond},
	} {
		if got := w.look(t0.Add(step.at), step.pending, step.done); got != step.want {
			t.Errorf("step %d (at %s, pending %v, done %d): %s, want %s", i, step.at, step.pending, step.done, got, step.want)
		}
	}
}
