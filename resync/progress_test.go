package resync_test

import (
	"sync"
	"testing"
	"time"

	"github.com/urbd/urbd/resync"
	"github.com/urbd/urbd/resync/resynctest"
)

// copyAt simulates a copier doing bytesPerSec for d, in 100 ms steps.
func copyAt(clk *resynctest.Clock, p *resync.Progress, bytesPerSec int64, d time.Duration) {
	const step = 100 * time.Millisecond
	for t := time.Duration(0); t < d; t += step {
		clk.Advance(step)
		p.Done(bytesPerSec / 10)
	}
}

func TestProgressSteady(t *testing.T) {
	clk := resynctest.NewClock(false)
	p := resync.NewProgress(clk, 100*MiB)
	copyAt(clk, p, 10*MiB, 5*time.Second)
	s := p.Snapshot()
	want := resync.Snapshot{
		Total: 100 * MiB, Remaining: 50 * MiB, Percent: 50,
		Speed: 10 * MiB, AvgSpeed: 10 * MiB,
		ETA: 5 * time.Second, Elapsed: 5 * time.Second,
	}
	if s != want {
		t.Errorf("after 5 s at 10 MiB/s:\n got %+v\nwant %+v", s, want)
	}

	copyAt(clk, p, 10*MiB, 5*time.Second)
	s = p.Snapshot()
	if s.Remaining != 0 || s.Percent != 100 || s.ETA != 0 || s.Stalled {
		t.Errorf("finished: %+v, want Remaining 0, Percent 100, ETA 0, not stalled", s)
	}
}

// TestProgressSpeedWindow: the recent speed follows a change of pace within
// SpeedWindow, the average does not.
func TestProgressSpeedWindow(t *testing.T) {
	clk := resynctest.NewClock(false)
	p := resync.NewProgress(clk, 1<<40)
	copyAt(clk, p, 10*MiB, 5*time.Second)
	copyAt(clk, p, 40*MiB, time.Second)
	s := p.Snapshot()
	// Last 3 s: 2 s at 10 and 1 s at 40 = 60 MiB / 3 s.
	if s.Speed != 20*MiB {
		t.Errorf("mixed window: Speed %d, want %d", s.Speed, 20*MiB)
	}
	copyAt(clk, p, 40*MiB, 2*time.Second)
	s = p.Snapshot()
	if s.Speed != 40*MiB {
		t.Errorf("after a full window at 40 MiB/s: Speed %d, want %d", s.Speed, 40*MiB)
	}
	if want := (50*MiB + 120*MiB) / 8; s.AvgSpeed != want {
		t.Errorf("AvgSpeed %d, want %d", s.AvgSpeed, want)
	}
	if want := time.Duration(float64(s.Remaining) / float64(40*MiB) * float64(time.Second)); s.ETA != want {
		t.Errorf("ETA %v, want %v (from the recent speed)", s.ETA, want)
	}
}

// TestProgressPartialBucket: mid-bucket, the speed divides by the exact time
// the window covers.
func TestProgressPartialBucket(t *testing.T) {
	clk := resynctest.NewClock(false)
	p := resync.NewProgress(clk, 1<<40)
	copyAt(clk, p, 10*MiB, 10*time.Second)
	clk.Advance(50 * time.Millisecond)
	p.Done(512 * KiB) // 10 MiB/s over these 50 ms
	if s := p.Snapshot(); s.Speed != 10*MiB {
		t.Errorf("Speed mid-bucket = %d, want %d", s.Speed, 10*MiB)
	}
}

func TestProgressEdgeCases(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func(clk *resynctest.Clock) *resync.Progress
		want resync.Snapshot
	}{
		{
			// Nothing to copy: done at once.
			name: "total zero",
			run: func(clk *resynctest.Clock) *resync.Progress {
				p := resync.NewProgress(clk, 0)
				clk.Advance(time.Second)
				return p
			},
			want: resync.Snapshot{Percent: 100, Elapsed: time.Second},
		},
		{
			// Just started: no time has passed, the speed is unknown.
			name: "at start",
			run: func(clk *resynctest.Clock) *resync.Progress {
				return resync.NewProgress(clk, 10*MiB)
			},
			want: resync.Snapshot{Total: 10 * MiB, Remaining: 10 * MiB, Stalled: true},
		},
		{
			// Copied for 2 s, then nothing for 3 s (peer slow, paused):
			// the recent speed falls to 0, the ETA is unknown.
			name: "pause",
			run: func(clk *resynctest.Clock) *resync.Progress {
				p := resync.NewProgress(clk, 100*MiB)
				copyAt(clk, p, 10*MiB, 2*time.Second)
				clk.Advance(3 * time.Second)
				return p
			},
			want: resync.Snapshot{Total: 100 * MiB, Remaining: 80 * MiB, Percent: 20, AvgSpeed: 4 * MiB, Stalled: true, Elapsed: 5 * time.Second},
		},
		{
			// Copied for 3 s, then 1.5 s pause: half the window is idle.
			name: "partial pause",
			run: func(clk *resynctest.Clock) *resync.Progress {
				p := resync.NewProgress(clk, 100*MiB)
				copyAt(clk, p, 10*MiB, 3*time.Second)
				clk.Advance(1500 * time.Millisecond)
				return p
			},
			// Window: buckets from 1.5 s to 4.5 s hold 15 MiB.
			want: resync.Snapshot{Total: 100 * MiB, Remaining: 70 * MiB, Percent: 30, Speed: 5 * MiB, AvgSpeed: 30 * MiB * 2 / 9, ETA: 14 * time.Second, Elapsed: 4500 * time.Millisecond},
		},
		{
			// New out-of-sync blocks during the resync: total grows,
			// percentage and ETA follow.
			name: "growth",
			run: func(clk *resynctest.Clock) *resync.Progress {
				p := resync.NewProgress(clk, 100*MiB)
				copyAt(clk, p, 10*MiB, 5*time.Second)
				p.Add(50 * MiB)
				return p
			},
			want: resync.Snapshot{Total: 150 * MiB, Remaining: 100 * MiB, Percent: 100.0 / 3, Speed: 10 * MiB, AvgSpeed: 10 * MiB, ETA: 10 * time.Second, Elapsed: 5 * time.Second},
		},
		{
			// More done than the total (a block copied twice): clamp.
			name: "overshoot",
			run: func(clk *resynctest.Clock) *resync.Progress {
				p := resync.NewProgress(clk, 1*MiB)
				clk.Advance(time.Second)
				p.Done(2 * MiB)
				return p
			},
			want: resync.Snapshot{Total: 1 * MiB, Percent: 100, Speed: 2 * MiB, AvgSpeed: 2 * MiB, Elapsed: time.Second},
		},
		{
			// Negative and zero inputs are ignored.
			name: "non-positive input",
			run: func(clk *resynctest.Clock) *resync.Progress {
				p := resync.NewProgress(clk, -5)
				p.Add(-1)
				p.Add(0)
				p.Done(-7)
				p.Done(0)
				clk.Advance(time.Second)
				return p
			},
			want: resync.Snapshot{Percent: 100, Elapsed: time.Second},
		},
		{
			// The clock steps back before the start: no negative times.
			name: "clock step back",
			run: func(clk *resynctest.Clock) *resync.Progress {
				p := resync.NewProgress(clk, 10*MiB)
				clk.Set(resynctest.Epoch.Add(-time.Minute))
				p.Done(MiB)
				return p
			},
			want: resync.Snapshot{Total: 10 * MiB, Remaining: 9 * MiB, Percent: 10, Stalled: true},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := resynctest.NewClock(false)
			got := tc.run(clk).Snapshot()
			if got != tc.want {
				t.Errorf("\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// TestProgressETACap: a huge remainder at 1 B/s does not overflow the ETA.
func TestProgressETACap(t *testing.T) {
	clk := resynctest.NewClock(false)
	p := resync.NewProgress(clk, 1<<62)
	clk.Advance(time.Second)
	p.Done(3)
	clk.Advance(2 * time.Second)
	s := p.Snapshot()
	if s.Stalled || s.ETA <= 0 {
		t.Errorf("ETA %v stalled %v, want a large positive ETA", s.ETA, s.Stalled)
	}
}

// TestProgressConcurrent: Add, Done and Snapshot from many goroutines.
func TestProgressConcurrent(t *testing.T) {
	clk := resynctest.NewClock(false)
	p := resync.NewProgress(clk, 0)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 1000 {
				p.Add(4 * KiB)
				p.Done(4 * KiB)
				if g == 0 {
					clk.Advance(time.Millisecond)
				}
				s := p.Snapshot()
				if s.Remaining < 0 || s.Percent < 0 || s.Percent > 100 {
					t.Errorf("inconsistent snapshot %+v", s)
					return
				}
			}
		}()
	}
	wg.Wait()
	s := p.Snapshot()
	if s.Total != 8*1000*4*KiB || s.Remaining != 0 || s.Percent != 100 {
		t.Errorf("final %+v", s)
	}
}
