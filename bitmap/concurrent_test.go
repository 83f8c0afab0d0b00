package bitmap

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// watchdog fails the test with every goroutine's stack if done is not closed
// within d: it turns a deadlock into a readable failure instead of a 10-minute
// timeout. It does not synchronise anything.
func watchdog(t *testing.T, s *Store, done <-chan struct{}, d time.Duration) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(d):
		buf := make([]byte, 1<<20)
		t.Fatalf("deadlock: not done after %v\n%s\n%s", d, s.debugString(), buf[:runtime.Stack(buf, true)])
	}
}

// debugString describes the activity log's state for a failure message.
func (s *Store) debugString() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "busy=%v closed=%v waiters=%d hand=%d want=%v\nmembers:", s.busy, s.closed, s.waiters.Load(), s.hand, s.want)
	for _, e := range s.members {
		v := s.st[e].Load()
		fmt.Fprintf(&b, " %d(hot=%v ref=%v inflight=%d)", e, v&stHot != 0, v&stRef != 0, v&stInflight)
	}
	b.WriteString("\nqueue:")
	for _, r := range s.queue {
		fmt.Fprintf(&b, " [%d..%d granted=%v err=%v]", r.first, r.last, r.granted, r.err)
	}
	return b.String()
}

// TestConcurrentSmallLogNoDeadlock: many goroutines, writes spanning up to
// three extents, a log of three extents, Sweeps and PersistBitmap in between,
// and a data sync that now and then uses the store as a replica's does (it
// marks what a failing peer did not flush and persists the bitmap). Every
// BeginWrite must eventually succeed and the log never exceeds its capacity.
func TestConcurrentSmallLogNoDeadlock(t *testing.T) {
	const ext = 64 << 10
	var s *Store
	var syncs atomic.Int64
	s = openMem(t, NewMemFS(), Options{Size: 40 * ext, BitmapBlock: 4096, ExtentSize: ext, ALExtents: 3,
		SyncData: func() error {
			if syncs.Add(1)%3 == 0 {
				s.MarkOutOfSync(0, 4096)
				return s.PersistBitmap()
			}
			return nil
		}})
	done := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for range 400 {
				off := r.Int64N(38 * ext)
				n := 1 + r.Int64N(2*ext)
				if err := s.BeginWrite(off, n); err != nil {
					errs <- err
					return
				}
				if h := s.HotExtents(); h > 3 {
					errs <- fmt.Errorf("%d hot extents", h)
				}
				if r.IntN(5) == 0 {
					s.MarkOutOfSync(off, n)
				}
				if r.IntN(7) == 0 {
					s.MarkInSync(0, 40*ext)
				}
				s.EndWrite(off, n)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range 100 {
			var err error
			if i%2 == 0 {
				err = s.Sweep()
			} else {
				err = s.PersistBitmap()
			}
			if err != nil {
				errs <- err
				return
			}
		}
	}()
	go func() { wg.Wait(); close(done) }()
	watchdog(t, s, done, 20*time.Second)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if syncs.Load() < 10 {
		t.Fatalf("%d data syncs: the workload hardly evicted", syncs.Load())
	}
	s.SetSyncData(nil) // Close syncs holding the store: this sync would wait for it
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestConcurrentCrash: writers run concurrently until the FS crashes at
// operation k; each leaves its write in flight when it sees the crash. The
// rebooted metadata must cover every write still in flight and every write
// the "peer" failed.
func TestConcurrentCrash(t *testing.T) {
	const ext = 16 << 10
	geo := Options{Size: 32 * ext, BitmapBlock: 1024, ExtentSize: ext, ALExtents: 4}
	checked := int64(0) // blocks required to survive, over all crash points
	for k := creationOps; k < creationOps+60; k++ {
		fsys := NewMemFS()
		fsys.CrashAfter(k, CrashOptions{Apply: k%2 == 0})
		s := openMem(t, fsys, geo)
		need := New(geo.Size, geo.BitmapBlock) // failed writes and writes left in flight
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := rand.New(rand.NewPCG(uint64(k), uint64(g)))
				for i := 0; i < 300; i++ {
					off := r.Int64N(31 * ext)
					n := 1 + r.Int64N(ext)
					if err := s.BeginWrite(off, n); err != nil {
						return // the crash
					}
					if fsys.Crashed() {
						need.Set(off, n) // left in flight at the crash
						// The machine is dead: wake writers that wait for
						// a slot this write will never give back.
						_ = s.Close()
						return
					}
					if r.IntN(3) == 0 {
						need.Set(off, n) // the peer failed it
						s.MarkOutOfSync(off, n)
					}
					s.EndWrite(off, n)
					if i%50 == 0 {
						_ = s.Sweep()
					}
				}
			}()
		}
		wg.Wait()
		if !fsys.Crashed() {
			t.Fatalf("k %d: no crash after %d ops", k, fsys.Ops())
		}
		s2 := openMem(t, fsys.Reboot(), geo)
		checked += need.DirtyBlocks()
		w := need.Words(0, need.NumWords())
		have := s2.Bitmap().Words(0, need.NumWords())
		for i := range w {
			if lost := w[i] &^ have[i]; lost != 0 {
				t.Fatalf("k %d: word %d lost bits %#x after the crash", k, i, lost)
			}
		}
	}
	if checked == 0 {
		t.Fatal("no crash point left a block that had to survive: the test checks nothing")
	}
}

// gateFS holds the first AL write after it is armed until gate is closed.
type gateFS struct {
	*MemFS
	armed   atomic.Bool
	once    sync.Once
	entered chan struct{}
	gate    chan struct{}
}

func (g *gateFS) WriteFileAtomic(path string, data []byte) error {
	if g.armed.Load() && filepath.Base(path) == ALFile {
		g.once.Do(func() {
			close(g.entered)
			<-g.gate
		})
	}
	return g.MemFS.WriteFileAtomic(path, data)
}

// TestNewExtentsShareOneALWrite: while one AL write is in progress, ten
// BeginWrite calls for ten other new extents (and two for the same one) queue
// up; they are all served by a single second AL write.
func TestNewExtentsShareOneALWrite(t *testing.T) {
	g := &gateFS{MemFS: NewMemFS(), entered: make(chan struct{}), gate: make(chan struct{})}
	s, err := Open(tDir, Options{Size: 64 * tMiB, FS: g})
	if err != nil {
		t.Fatal(err)
	}
	g.armed.Store(true)
	al0, _ := s.Counters()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	begin := func(off int64) {
		defer wg.Done()
		if err := s.BeginWrite(off, 4096); err != nil {
			errs <- err
			return
		}
		s.EndWrite(off, 4096)
	}
	wg.Add(1)
	go begin(0)
	<-g.entered // the first AL write is in progress
	offs := []int64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10}
	for _, e := range offs {
		wg.Add(1)
		go begin(e * 4 * tMiB)
	}
	for { // until all of them queued behind the running write
		s.mu.Lock()
		n := len(s.queue)
		s.mu.Unlock()
		if n == 1+len(offs) {
			break
		}
		runtime.Gosched()
	}
	close(g.gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if al, _ := s.Counters(); al-al0 != 2 {
		t.Fatalf("%d AL writes, want 2 (the first, then one for all queued)", al-al0)
	}
	if s.HotExtents() != 11 {
		t.Fatalf("%d hot extents, want 11", s.HotExtents())
	}
}
