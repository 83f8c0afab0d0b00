package replica

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// lockOrFail takes a range lock with a deadline so a broken lock fails the
// test instead of hanging it.
func lockOrFail(t *testing.T, l *rangeLock, off, length int64) func() {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	unlock, err := l.lock(ctx, off, length)
	if err != nil {
		t.Fatalf("lock(%d, %d): %v", off, length, err)
	}
	return unlock
}

// lockAsync is lockOrFail for goroutines other than the test's: it reports
// a failure with t.Error and returns a no-op unlock.
func lockAsync(t *testing.T, l *rangeLock, off, length int64) func() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	unlock, err := l.lock(ctx, off, length)
	if err != nil {
		t.Errorf("lock(%d, %d): %v", off, length, err)
		return func() {}
	}
	return unlock
}

// tryLock reports whether [off, off+length) can be taken right now: it
// takes it with an already-cancelled context, which succeeds only when
// nothing overlaps. It releases the range again.
func tryLock(l *rangeLock, off, length int64) bool {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	unlock, err := l.lock(ctx, off, length)
	if err != nil {
		return false
	}
	unlock()
	return true
}

func TestRangeLockOverlapTable(t *testing.T) {
	held := [2]int64{100, 50} // [100, 150)
	tests := []struct {
		story       string
		off, length int64
		free        bool
	}{
		{"the same range", 100, 50, false},
		{"inside", 110, 10, false},
		{"covering", 0, 1000, false},
		{"overlapping the start", 90, 20, false},
		{"overlapping the end", 149, 10, false},
		{"one byte at the start", 100, 1, false},
		{"one byte at the end", 149, 1, false},
		{"ending where it starts", 50, 50, true},
		{"starting where it ends", 150, 50, true},
		{"far before", 0, 10, true},
		{"far after", 1 << 40, 4096, true},
	}
	for _, tt := range tests {
		t.Run(tt.story, func(t *testing.T) {
			l := newRangeLock()
			unlock := lockOrFail(t, l, held[0], held[1])
			if got := tryLock(l, tt.off, tt.length); got != tt.free {
				t.Fatalf("[%d,+%d) free while [%d,+%d) is held: %v, want %v", tt.off, tt.length, held[0], held[1], got, tt.free)
			}
			unlock()
			if !tryLock(l, tt.off, tt.length) {
				t.Fatal("range not free after unlock")
			}
		})
	}
}

// TestRangeLockOverlappingSerialise: a waiter on an overlapping range gets
// the lock only after the holder released it, and many goroutines on the
// same range never hold it together.
func TestRangeLockOverlappingSerialise(t *testing.T) {
	l := newRangeLock()
	unlock := lockOrFail(t, l, 0, 4096)
	got := make(chan func())
	go func() {
		u, err := l.lock(context.Background(), 2048, 4096)
		if err != nil {
			t.Error(err)
		}
		got <- u
	}()
	// The waiter cannot get it while we hold it: it is blocked in lock, and
	// the range stays held by us.
	if tryLock(l, 2048, 1) {
		t.Fatal("overlapping range free while held")
	}
	select {
	case <-got:
		t.Fatal("overlapping lock granted while held")
	default:
	}
	unlock()
	u2 := <-got
	if tryLock(l, 0, 4096) {
		t.Fatal("range free while the second holder has it")
	}
	u2()

	// Mutual exclusion under contention: holders count themselves in and
	// yield while inside, and write a plain variable that -race would flag
	// if two of them ever held the range together.
	const workers, rounds = 8, 200
	var inside, maxInside atomic.Int64
	var owner int
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				off := int64((w + r) % 3 * 1024) // all overlap [2048, 3072)
				u := lockAsync(t, l, off, 3072)
				cur := inside.Add(1)
				for m := maxInside.Load(); cur > m && !maxInside.CompareAndSwap(m, cur); m = maxInside.Load() {
				}
				owner = w
				runtime.Gosched()
				if owner != w {
					t.Errorf("worker %d's range taken by worker %d", w, owner)
				}
				inside.Add(-1)
				u()
			}
		}()
	}
	wg.Wait()
	if m := maxInside.Load(); m != 1 {
		t.Fatalf("%d overlapping holders at once, want 1", m)
	}
	if !tryLock(l, 0, 1<<20) {
		t.Fatal("lock leaked a range")
	}
}

// TestRangeLockDisjointParallel: disjoint ranges are all held at once.
func TestRangeLockDisjointParallel(t *testing.T) {
	l := newRangeLock()
	const n = 16
	unlocks := make(chan func(), n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			unlocks <- lockAsync(t, l, int64(i)*4096, 4096)
		}()
	}
	// Every goroutine gets its lock while the others still hold theirs: if
	// disjoint ranges serialised, this would time out in lockAsync.
	wg.Wait()
	close(unlocks)
	if tryLock(l, 0, n*4096) {
		t.Fatal("covering range free while the pieces are held")
	}
	if !tryLock(l, n*4096, 4096) {
		t.Fatal("range after the pieces not free")
	}
	for u := range unlocks {
		u()
	}
	if !tryLock(l, 0, n*4096) {
		t.Fatal("pieces not released")
	}
}

// TestRangeLockCancelWhileWaiting: a waiter whose ctx ends returns the ctx
// error, holds nothing, and does not disturb the holder.
func TestRangeLockCancelWhileWaiting(t *testing.T) {
	l := newRangeLock()
	unlock := lockOrFail(t, l, 0, 8192)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		u, err := l.lock(ctx, 4096, 8192)
		if err == nil {
			u()
		}
		errc <- err
	}()
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled waiter: %v, want context.Canceled", err)
	}
	if tryLock(l, 0, 1) {
		t.Fatal("holder lost its range when a waiter was cancelled")
	}
	if !tryLock(l, 8192, 4096) {
		t.Fatal("cancelled waiter left [8192, 12288) held")
	}
	unlock()
	if !tryLock(l, 0, 12288) {
		t.Fatal("range not free after unlock")
	}

	// A deadline behaves the same.
	unlock = lockOrFail(t, l, 0, 1)
	dctx, dcancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer dcancel()
	if _, err := l.lock(dctx, 0, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiter past its deadline: %v", err)
	}
	unlock()
}

// TestRangeLockWakesAllWaiters: several waiters on one held range all get
// it in turn after a single unlock.
func TestRangeLockWakesAllWaiters(t *testing.T) {
	l := newRangeLock()
	unlock := lockOrFail(t, l, 0, 4096)
	const n = 5
	done := make(chan struct{}, n)
	for range n {
		go func() {
			u := lockAsync(t, l, 0, 4096)
			u()
			done <- struct{}{}
		}()
	}
	unlock()
	for range n {
		<-done
	}
}

// FuzzRangeLockModel drives the lock with a script of lock and unlock steps
// and compares every attempt with a naive model: a list of held ranges, free
// when none overlaps. Each step is three bytes: op (even lock, odd unlock),
// offset and length in 512-byte units (length 1..16).
func FuzzRangeLockModel(f *testing.F) {
	f.Add([]byte{0, 0, 3, 0, 2, 3, 1, 0, 0, 0, 2, 3})
	f.Add([]byte{0, 10, 5, 0, 15, 5, 0, 14, 1, 1, 0, 0, 0, 14, 1})
	f.Add([]byte{0, 0, 15, 0, 16, 15, 0, 31, 15, 1, 1, 0, 0, 20, 2})
	f.Fuzz(func(t *testing.T, script []byte) {
		type rng struct {
			off, end int64
			unlock   func()
		}
		l := newRangeLock()
		var held []rng
		for i := 0; i+2 < len(script) && i < 3*200; i += 3 {
			op, off, length := script[i], int64(script[i+1])*512, int64(script[i+2]%16+1)*512
			if op%2 == 1 {
				if len(held) == 0 {
					continue
				}
				k := int(off/512) % len(held)
				held[k].unlock()
				held = append(held[:k], held[k+1:]...)
				continue
			}
			want := true
			for _, h := range held {
				if h.off < off+length && off < h.end {
					want = false
				}
			}
			ctx, cancel := context.WithCancel(context.Background())
			cancel() // never wait: take it only if free now
			unlock, err := l.lock(ctx, off, length)
			if got := err == nil; got != want {
				t.Fatalf("step %d: lock [%d,+%d) with %v held: got %v, model says %v", i/3, off, length, held, got, want)
			}
			if err == nil {
				held = append(held, rng{off, off + length, unlock})
			} else if !errors.Is(err, context.Canceled) {
				t.Fatalf("step %d: %v", i/3, err)
			}
		}
		for _, h := range held {
			h.unlock()
		}
		if !tryLock(l, 0, 1<<20) {
			t.Fatal("ranges left held after every unlock")
		}
	})
}
