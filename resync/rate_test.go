package resync_test

import (
	"context"
	"errors"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/urbd/urbd/resync"
	"github.com/urbd/urbd/resync/resynctest"
)

const (
	KiB = int64(1) << 10
	MiB = int64(1) << 20
)

// guard bounds how long a test waits for a goroutine that should already be
// done; it is a failure deadline, never a synchronisation.
const guard = 10 * time.Second

// run drives l from a single goroutine on an auto-advancing clock: it asks
// for chunk bytes at a time until the clock reaches end, calling before(now)
// before each request, and returns the bytes granted at or before end.
func run(t *testing.T, clk *resynctest.Clock, l *resync.Limiter, chunk int64, end time.Time, before func(time.Time)) int64 {
	t.Helper()
	var granted int64
	for clk.Now().Before(end) {
		if before != nil {
			before(clk.Now())
		}
		if err := l.Wait(context.Background(), chunk); err != nil {
			t.Fatalf("Wait: %v", err)
		}
		if !clk.Now().After(end) {
			granted += chunk
		}
	}
	return granted
}

func within(t *testing.T, what string, got, want float64, tol float64) {
	t.Helper()
	if want == 0 {
		if got != 0 {
			t.Errorf("%s = %.0f, want 0", what, got)
		}
		return
	}
	if dev := math.Abs(got-want) / want; dev > tol {
		t.Errorf("%s = %.0f B/s, want %.0f B/s ±%.1f%% (off by %.2f%%)", what, got, want, tol*100, dev*100)
	}
}

// TestLimiterRate measures 10 simulated seconds at several rates and request
// sizes, including requests larger than the bucket.
func TestLimiterRate(t *testing.T) {
	for _, rate := range []int64{10 * MiB, 50 * MiB, 200 * MiB, 100 * MiB, 1 * MiB} {
		for _, chunk := range []int64{4 * KiB, 128 * KiB, 1 * MiB, 3 * MiB, 64 * MiB} {
			if rate*10/chunk > 100_000 {
				continue // keep the run short; smaller rates cover small requests
			}
			clk := resynctest.NewClock(true)
			l := resync.NewLimiter(clk, rate)
			end := clk.Now().Add(10 * time.Second)
			got := run(t, clk, l, chunk, end, nil)
			if chunk*10 > rate*10/50 {
				// A request coarser than 2% of the window cannot be
				// measured within 2%; it must still never exceed the rate.
				if got > rate*10 {
					t.Errorf("rate %d chunk %d: %d bytes in 10 s, more than %d", rate, chunk, got, rate*10)
				}
				continue
			}
			t.Logf("rate %3d MiB/s, requests of %5d KiB: %d bytes in 10 s, off by %+.3f%%",
				rate/MiB, chunk/KiB, got, 100*(float64(got)/float64(rate*10)-1))
			within(t, "measured rate", float64(got)/10, float64(rate), 0.02)
		}
	}
}

// TestLimiterBurstBound checks that after an idle period the bucket releases
// at most one burst at once, so that any 10 s window is within 1-2%.
func TestLimiterBurstBound(t *testing.T) {
	for _, rate := range []int64{10 * MiB, 50 * MiB, 200 * MiB} {
		clk := resynctest.NewClock(true)
		l := resync.NewLimiter(clk, rate)
		clk.Advance(time.Minute) // idle: the bucket fills up to its burst
		start := clk.Now()
		got := run(t, clk, l, 64*KiB, start.Add(10*time.Second), nil)
		if max := rate*10 + rate*10/50; got > max {
			t.Errorf("rate %d: %d bytes in a 10 s window after idle, over %d (2%%)", rate, got, max)
		}
		within(t, "rate after idle", float64(got)/10, float64(rate), 0.02)
	}
}

func TestLimiterDefaults(t *testing.T) {
	clk := resynctest.NewClock(false)
	l := resync.NewLimiter(clk, resync.DefaultRate)
	if got := l.Rate(); got != 100*MiB {
		t.Errorf("Rate() = %d, want 100 MiB/s", got)
	}
	if got := l.MinRate(); got != resync.DefaultMinRate {
		t.Errorf("MinRate() = %d, want %d", got, resync.DefaultMinRate)
	}
	if got := l.EffectiveRate(); got != 100*MiB {
		t.Errorf("EffectiveRate() = %d, want 100 MiB/s", got)
	}
	neg := resync.NewLimiter(clk, -5)
	if got := neg.Rate(); got != 0 {
		t.Errorf("NewLimiter(-5).Rate() = %d, want 0 (unlimited)", got)
	}
}

// TestLimiterSetRateMidRun changes the rate halfway through a run; the second
// half must be paced at the new rate from its first request.
func TestLimiterSetRateMidRun(t *testing.T) {
	for _, tc := range []struct{ from, to int64 }{
		{10 * MiB, 50 * MiB},
		{200 * MiB, 10 * MiB},
		{50 * MiB, 200 * MiB},
	} {
		clk := resynctest.NewClock(true)
		l := resync.NewLimiter(clk, tc.from)
		start := clk.Now()
		first := run(t, clk, l, 64*KiB, start.Add(5*time.Second), nil)
		within(t, "first half", float64(first)/5, float64(tc.from), 0.02)

		l.SetRate(tc.to)
		if got := l.Rate(); got != tc.to {
			t.Fatalf("Rate() after SetRate = %d, want %d", got, tc.to)
		}
		mid := clk.Now()
		second := run(t, clk, l, 64*KiB, mid.Add(5*time.Second), nil)
		within(t, "second half", float64(second)/5, float64(tc.to), 0.02)
	}
}

// TestLimiterUnlimited: rate 0 passes everything without touching the clock.
func TestLimiterUnlimited(t *testing.T) {
	clk := resynctest.NewClock(false)
	l := resync.NewLimiter(clk, 0)
	for range 1000 {
		if err := l.Wait(context.Background(), 1<<40); err != nil {
			t.Fatal(err)
		}
	}
	if clk.Waiters() != 0 || !clk.Now().Equal(resynctest.Epoch) {
		t.Errorf("unlimited Wait used the clock: %d timers, now %v", clk.Waiters(), clk.Now())
	}
	l.NoteAppIO(1 << 30)
	if got := l.EffectiveRate(); got != 0 {
		t.Errorf("unlimited with app I/O: EffectiveRate = %d, want 0 (unlimited)", got)
	}
}

// startWait runs l.Wait(ctx, n) in a goroutine and returns its result channel.
func startWait(ctx context.Context, l *resync.Limiter, n int64) <-chan error {
	done := make(chan error, 1)
	go func() { done <- l.Wait(ctx, n) }()
	return done
}

func await(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(guard):
		t.Fatal("Wait did not return")
		return nil
	}
}

// TestLimiterSetRateWakesWaiter: a caller blocked at a low rate is re-paced
// at once when the rate goes up, and released at once when it goes to
// unlimited, without the clock moving.
func TestLimiterSetRateWakesWaiter(t *testing.T) {
	clk := resynctest.NewClock(false)
	l := resync.NewLimiter(clk, 1*MiB) // bucket: MinBurst = 256 KiB = 250 ms
	done := startWait(context.Background(), l, 256*KiB)
	clk.BlockUntil(1)
	dl, _ := clk.NextDeadline()
	if d := dl.Sub(clk.Now()); d != 250*time.Millisecond {
		t.Fatalf("first delay %v, want 250ms", d)
	}

	l.SetRate(100 * MiB)
	clk.BlockUntil(2) // the waiter re-armed with a new timer
	// The new timer is the earliest one: 256 KiB at 100 MiB/s = 2.5 ms.
	dl, _ = clk.NextDeadline()
	if d := dl.Sub(clk.Now()); d > 3*time.Millisecond {
		t.Fatalf("delay after SetRate(100 MiB/s) = %v, want about 2.5ms", d)
	}
	clk.Advance(3 * time.Millisecond)
	if err := await(t, done); err != nil {
		t.Fatal(err)
	}

	// Blocked at a low rate, released by unlimited.
	l.SetRate(1 * MiB)
	n := clk.Waiters()
	done = startWait(context.Background(), l, 10*MiB)
	clk.BlockUntil(n + 1)
	l.SetRate(0)
	if err := await(t, done); err != nil {
		t.Fatal(err)
	}
}

// TestLimiterCancel: cancelling ctx returns promptly with ctx's error, and the
// tokens of the abandoned piece are given back.
func TestLimiterCancel(t *testing.T) {
	clk := resynctest.NewClock(false)
	l := resync.NewLimiter(clk, 1*MiB)
	ctx, cancel := context.WithCancel(context.Background())
	done := startWait(ctx, l, 100*MiB)
	clk.BlockUntil(1)
	cancel()
	if err := await(t, done); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait after cancel = %v, want context.Canceled", err)
	}
	if !clk.Now().Equal(resynctest.Epoch) {
		t.Errorf("clock moved: %v", clk.Now())
	}

	// The next request waits as long as the first would have: the
	// cancelled piece did not consume the budget.
	done = startWait(context.Background(), l, 256*KiB)
	clk.BlockUntil(2)
	dl, _ := latestDeadline(clk)
	if d := dl.Sub(clk.Now()); d != 250*time.Millisecond {
		t.Errorf("delay after a cancelled wait = %v, want 250ms (tokens given back)", d)
	}
	clk.Advance(250 * time.Millisecond)
	if err := await(t, done); err != nil {
		t.Fatal(err)
	}

	// An already cancelled context fails at once, even for n <= 0.
	if err := l.Wait(ctx, 0); !errors.Is(err, context.Canceled) {
		t.Errorf("Wait(cancelled, 0) = %v", err)
	}
	dctx, dcancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer dcancel()
	if err := l.Wait(dctx, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait(expired) = %v, want DeadlineExceeded", err)
	}
	if err := l.Wait(context.Background(), -1); err != nil {
		t.Errorf("Wait(-1) = %v, want nil", err)
	}
}

// latestDeadline returns the deadline of the most recently armed timer by
// advancing nothing: it reads the pending deadlines and returns the latest.
func latestDeadline(clk *resynctest.Clock) (time.Time, bool) {
	return clk.LastDeadline()
}

// TestLimiterEffectiveRate is the formula of the package doc, one row per case.
func TestLimiterEffectiveRate(t *testing.T) {
	for _, tc := range []struct {
		name          string
		rate, minRate int64
		appPerSec     int64 // application bytes noted evenly over the last second
		want          int64
	}{
		{"no app I/O: full rate", 100 * MiB, 4 * MiB, 0, 100 * MiB},
		{"light app I/O: resync yields what the app uses", 100 * MiB, 4 * MiB, 30 * MiB, 70 * MiB},
		{"app takes almost everything: floor", 100 * MiB, 4 * MiB, 97 * MiB, 4 * MiB},
		{"app exceeds the rate: floor", 100 * MiB, 4 * MiB, 500 * MiB, 4 * MiB},
		{"rate below the floor: never above the rate", 2 * MiB, 4 * MiB, 10 * MiB, 2 * MiB},
		{"higher floor", 100 * MiB, 20 * MiB, 90 * MiB, 20 * MiB},
		{"floor below 1 KiB/s is raised", 100 * MiB, 0, 500 * MiB, 1 * KiB},
		{"unlimited ignores app I/O", 0, 4 * MiB, 500 * MiB, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := resynctest.NewClock(false)
			l := resync.NewLimiter(clk, tc.rate)
			l.SetMinRate(tc.minRate)
			clk.Advance(5 * time.Second)
			for range 10 {
				clk.Advance(100 * time.Millisecond)
				l.NoteAppIO(tc.appPerSec / 10)
			}
			if tc.appPerSec > 0 {
				within(t, "AppRate", float64(l.AppRate()), float64(tc.appPerSec), 0.001)
			}
			within(t, "EffectiveRate", float64(l.EffectiveRate()), float64(tc.want), 0.001)
		})
	}
}

// TestLimiterYieldsToAppIO: a resync at 100 MiB/s drops to the floor under
// heavy application I/O, shares the rate under light application I/O, and
// recovers when application I/O stops.
func TestLimiterYieldsToAppIO(t *testing.T) {
	clk := resynctest.NewClock(true)
	l := resync.NewLimiter(clk, 100*MiB)
	var appRate int64 // bytes/s the simulated application writes
	last := clk.Now()
	app := func(now time.Time) {
		l.NoteAppIO(int64(float64(appRate) * now.Sub(last).Seconds()))
		last = now
	}
	phase := func(name string, rate int64, settle, measure time.Duration, want int64) {
		t.Helper()
		appRate = rate
		run(t, clk, l, 64*KiB, clk.Now().Add(settle), app)
		start := clk.Now()
		got := run(t, clk, l, 64*KiB, start.Add(measure), app)
		within(t, name, float64(got)/measure.Seconds(), float64(want), 0.02)
	}
	phase("idle application", 0, 0, 5*time.Second, 100*MiB)
	phase("heavy application I/O", 300*MiB, 2*time.Second, 5*time.Second, resync.DefaultMinRate)
	if got := l.EffectiveRate(); got != resync.DefaultMinRate {
		t.Errorf("EffectiveRate under heavy app I/O = %d, want the floor %d", got, resync.DefaultMinRate)
	}
	phase("application stopped", 0, 1200*time.Millisecond, 5*time.Second, 100*MiB)
	phase("light application I/O", 30*MiB, 2*time.Second, 5*time.Second, 70*MiB)
	phase("application stopped again", 0, 1200*time.Millisecond, 5*time.Second, 100*MiB)
}

// TestLimiterRecoveryTime: once application I/O stops, the full rate is back
// within AppWindow (plus one bucket of granularity).
func TestLimiterRecoveryTime(t *testing.T) {
	clk := resynctest.NewClock(false)
	l := resync.NewLimiter(clk, 100*MiB)
	for range 20 {
		l.NoteAppIO(50 * MiB)
		clk.Advance(100 * time.Millisecond)
	}
	if got := l.EffectiveRate(); got != resync.DefaultMinRate {
		t.Fatalf("under load: %d, want floor", got)
	}
	var recovered time.Duration
	for step := time.Duration(0); step <= 2*time.Second; step += 10 * time.Millisecond {
		if l.EffectiveRate() == 100*MiB {
			recovered = step
			break
		}
		clk.Advance(10 * time.Millisecond)
	}
	if recovered == 0 || recovered > resync.AppWindow+100*time.Millisecond {
		t.Errorf("full rate back after %v, want within %v", recovered, resync.AppWindow+100*time.Millisecond)
	}
	l.NoteAppIO(0)
	l.NoteAppIO(-5)
	if got := l.AppRate(); got != 0 {
		t.Errorf("NoteAppIO(<=0) counted: AppRate %d", got)
	}
}

// TestLimiterConcurrentWaiters: several goroutines share one budget; together
// they never pass more than the rate allows, and the race detector sees the
// limiter used from all sides at once.
func TestLimiterConcurrentWaiters(t *testing.T) {
	clk := resynctest.NewClock(true)
	const rate = 50 * MiB
	l := resync.NewLimiter(clk, rate)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		total int64
	)
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				if err := l.Wait(context.Background(), 64*KiB); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				total += 64 * KiB
				mu.Unlock()
				if i%50 == 0 {
					l.NoteAppIO(KiB)
					_ = l.EffectiveRate()
					if g == 0 {
						l.SetRate(rate)
					}
				}
			}
		}()
	}
	wg.Wait()
	elapsed := clk.Now().Sub(resynctest.Epoch).Seconds()
	if limit := float64(rate)*elapsed + float64(rate)/10 + float64(64*KiB); float64(total) > limit {
		t.Errorf("%d bytes in %.3f s exceeds %0.f at %d B/s", total, elapsed, limit, rate)
	}
}

// TestLimiterClockStep: a clock that steps backwards does not break pacing.
func TestLimiterClockStep(t *testing.T) {
	clk := resynctest.NewClock(true)
	l := resync.NewLimiter(clk, 10*MiB)
	run(t, clk, l, 64*KiB, clk.Now().Add(time.Second), nil)
	clk.Set(resynctest.Epoch.Add(-time.Hour))
	l.NoteAppIO(MiB)
	got := run(t, clk, l, 64*KiB, clk.Now().Add(5*time.Second), nil)
	if got > 10*MiB*5+10*MiB/10 {
		t.Errorf("after a backward step: %d bytes in 5 s at 10 MiB/s", got)
	}
	if got < 10*MiB*4 {
		t.Errorf("after a backward step: only %d bytes in 5 s at 10 MiB/s", got)
	}
}

// BenchmarkNoteAppIO measures the cost added to every application write.
func BenchmarkNoteAppIO(b *testing.B) {
	l := resync.NewLimiter(resync.RealClock(), 100*MiB)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			l.NoteAppIO(4 * KiB)
		}
	})
}

// BenchmarkWaitUnthrottled measures Wait when tokens are available.
func BenchmarkWaitUnthrottled(b *testing.B) {
	clk := resynctest.NewClock(true)
	l := resync.NewLimiter(clk, 1<<40)
	ctx := context.Background()
	for b.Loop() {
		if err := l.Wait(ctx, 64*KiB); err != nil {
			b.Fatal(err)
		}
	}
}
