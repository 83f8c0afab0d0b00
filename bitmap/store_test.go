package bitmap

import (
	"errors"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	tMiB = int64(1) << 20
	tDir = "/meta/r0"
)

func openMem(t *testing.T, fsys *MemFS, opt Options) *Store {
	t.Helper()
	opt.FS = fsys
	s, err := Open(tDir, opt)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func TestOpenCreatesAndReopens(t *testing.T) {
	fsys := NewMemFS()
	s := openMem(t, fsys, Options{Size: 64 * tMiB})
	m := s.Meta()
	if m.NodeID == 0 || m.Disk != DiskInconsistent || m.Size != 64*tMiB ||
		m.BitmapBlock != DefaultBitmapBlock || m.ExtentSize != DefaultExtentSize {
		t.Fatalf("fresh meta = %+v", m)
	}
	if r := s.Recovery(); !r.Created || r.Corrupt || r.ALExtents != 0 {
		t.Fatalf("fresh recovery = %+v", r)
	}
	if s.Bitmap().DirtyBlocks() != 0 {
		t.Fatalf("fresh bitmap has %d dirty blocks", s.Bitmap().DirtyBlocks())
	}
	m.Role, m.Disk, m.UUIDs.Current, m.Flags = RolePrimary, DiskUpToDate, 42, 1
	if err := s.SaveMeta(m); err != nil {
		t.Fatal(err)
	}
	s.Bitmap().Set(5*tMiB, 4096)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := openMem(t, fsys.Reboot(), Options{Size: 64 * tMiB})
	if got := s2.Meta(); got != m {
		t.Fatalf("meta after reopen = %+v, want %+v", got, m)
	}
	if r := s2.Recovery(); r.Created || !r.Clean || r.Corrupt || r.ALExtents != 0 {
		t.Fatalf("recovery after clean close = %+v", r)
	}
	if !s2.Bitmap().IsSet(5*tMiB, 1) || s2.Bitmap().DirtyBlocks() != 1 {
		t.Fatalf("bitmap after reopen: %d dirty", s2.Bitmap().DirtyBlocks())
	}
}

func TestOpenGeometryMismatch(t *testing.T) {
	fsys := NewMemFS()
	s := openMem(t, fsys, Options{Size: 64 * tMiB})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for _, opt := range []Options{
		{Size: 128 * tMiB},
		{Size: 64 * tMiB, BitmapBlock: 8192},
		{Size: 64 * tMiB, ExtentSize: 8 * tMiB},
	} {
		opt.FS = fsys.Reboot()
		_, err := Open(tDir, opt)
		if !errors.Is(err, ErrGeometry) {
			t.Errorf("Open(%+v) = %v, want ErrGeometry", opt, err)
		}
	}
	// Zero takes the stored geometry.
	s2 := openMem(t, fsys.Reboot(), Options{})
	if s2.Meta().Size != 64*tMiB {
		t.Fatalf("size %d", s2.Meta().Size)
	}
}

func TestOpenInvalidOptions(t *testing.T) {
	for _, opt := range []Options{
		{},                                   // no size on creation
		{Size: 64 * tMiB, BitmapBlock: 3000}, // not a power of two
		{Size: 64 * tMiB, BitmapBlock: 256},  // too small
		{Size: 64 * tMiB, ExtentSize: 2048},  // smaller than the block
		{Size: 64 * tMiB, ALExtents: -1},     // negative
		{Size: -1},                           // negative
		{Size: 1 << 62, BitmapBlock: 512},    // bitmap too large
	} {
		opt.FS = NewMemFS()
		if _, err := Open(tDir, opt); err == nil {
			t.Errorf("Open(%+v) succeeded", opt)
		} else if !errors.Is(err, ErrGeometry) && !errors.Is(err, ErrInvalid) {
			t.Errorf("Open(%+v) = %v, want ErrGeometry or ErrInvalid", opt, err)
		}
	}
}

// TestHotExtentCostsOneALWrite: 10,000 writes to one extent cost exactly one
// AL write.
func TestHotExtentCostsOneALWrite(t *testing.T) {
	s := openMem(t, NewMemFS(), Options{Size: 64 * tMiB})
	al0, bm0 := s.Counters()
	for i := range 10000 {
		off := 8*tMiB + int64(i%1024)*4096
		if err := s.BeginWrite(off, 4096); err != nil {
			t.Fatal(err)
		}
		s.EndWrite(off, 4096)
	}
	al, bm := s.Counters()
	if al-al0 != 1 || bm != bm0 {
		t.Fatalf("10000 writes to one extent: %d AL writes, %d bitmap writes; want 1, 0", al-al0, bm-bm0)
	}
}

// TestBusyExtents: an extent counts as busy from its first BeginWrite to
// its last EndWrite, however many writes overlap there, and a write across
// two extents holds both; an idle extent stays hot but is not busy.
func TestBusyExtents(t *testing.T) {
	s := openMem(t, NewMemFS(), Options{Size: 64 * tMiB})
	busy := func(want int) {
		t.Helper()
		if got := s.BusyExtents(); got != want {
			t.Fatalf("%d busy extents, want %d", got, want)
		}
	}
	begin := func(off, n int64) {
		t.Helper()
		if err := s.BeginWrite(off, n); err != nil {
			t.Fatal(err)
		}
	}
	busy(0)
	begin(0, 4096)
	begin(8192, 4096) // the same extent again
	busy(1)
	begin(8*tMiB-4096, 8192) // extents 1 and 2
	busy(3)
	s.EndWrite(0, 4096)
	busy(3)
	s.EndWrite(8192, 4096)
	busy(2)
	s.EndWrite(8*tMiB-4096, 8192)
	busy(0)
	if s.HotExtents() != 3 {
		t.Fatalf("%d hot extents after the writes ended, want 3", s.HotExtents())
	}
	begin(0, 4096) // hot already: the fast path counts too
	busy(1)
	s.EndWrite(0, 4096)
	busy(0)
}

func TestBeginWriteErrors(t *testing.T) {
	s := openMem(t, NewMemFS(), Options{Size: 64 * tMiB, ALExtents: 2})
	for _, c := range []struct {
		off, n int64
		want   error
	}{
		{-1, 10, ErrRange},
		{64 * tMiB, 1, ErrRange},
		{64*tMiB - 1, 2, ErrRange},
		{0, -5, ErrRange},
		{1, 1 << 62, ErrRange},
		{0, 12 * tMiB, ErrTooLarge}, // 3 extents, the log holds 2
	} {
		if err := s.BeginWrite(c.off, c.n); !errors.Is(err, c.want) {
			t.Errorf("BeginWrite(%d, %d) = %v, want %v", c.off, c.n, err, c.want)
		}
	}
	if err := s.BeginWrite(5, 0); err != nil {
		t.Errorf("zero length: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.BeginWrite(0, 4096); !errors.Is(err, ErrClosed) {
		t.Errorf("after Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestEvictionPersistsBitmapFirst(t *testing.T) {
	fsys := NewMemFS()
	s := openMem(t, fsys, Options{Size: 64 * tMiB, ALExtents: 2})
	w := func(off int64, fail bool) {
		t.Helper()
		if err := s.BeginWrite(off, 4096); err != nil {
			t.Fatal(err)
		}
		if fail {
			s.MarkOutOfSync(off, 4096)
		}
		s.EndWrite(off, 4096)
	}
	w(0, true)       // extent 0, dirty
	w(4*tMiB, false) // extent 1
	_, bm0 := s.Counters()
	start := fsys.Ops()
	w(8*tMiB, false) // evicts extent 0 or 1
	w(12*tMiB, false)
	log := fsys.Log()[start:]
	_, bm := s.Counters()
	if bm-bm0 != 1 {
		t.Fatalf("bitmap writes %d, want 1 (extent 0 is dirty and evicted once); log %v", bm-bm0, log)
	}
	// The bitmap write comes before the AL write that drops dirty extent 0;
	// dropping clean extent 1 needs no bitmap write.
	if want := []string{"write bitmap.0", "write al", "write al"}; !slices.Equal(log, want) {
		t.Fatalf("log %v, want %v", log, want)
	}
	s2 := openMem(t, fsys.Reboot(), Options{})
	if !s2.Bitmap().IsSet(0, 4096) {
		t.Fatal("dirty block lost after crash")
	}
	if n, corrupt := s2.Recovered(); n != 2 || corrupt {
		t.Fatalf("Recovered = %d, %v; want 2 extents, not corrupt", n, corrupt)
	}
}

func TestSweepDropsIdleExtents(t *testing.T) {
	fsys := NewMemFS()
	s := openMem(t, fsys, Options{Size: 64 * tMiB})
	for e := range int64(4) {
		if err := s.BeginWrite(e*4*tMiB, 4096); err != nil {
			t.Fatal(err)
		}
	}
	s.MarkOutOfSync(0, 4096) // the peer failed the write to extent 0
	for e := range int64(3) {
		s.EndWrite(e*4*tMiB, 4096)
	}
	// Every extent was touched: the first Sweep drops nothing.
	al0, bm0 := s.Counters()
	if err := s.Sweep(); err != nil {
		t.Fatal(err)
	}
	if al, bm := s.Counters(); al != al0 || bm != bm0 || s.HotExtents() != 4 {
		t.Fatalf("first sweep: %d AL and %d bitmap writes, %d hot", al-al0, bm-bm0, s.HotExtents())
	}
	// Second Sweep: 0, 1 and 2 are idle (0 after persisting its bit); 3 is busy.
	if err := s.Sweep(); err != nil {
		t.Fatal(err)
	}
	if al, bm := s.Counters(); al != al0+1 || bm != bm0+1 || s.HotExtents() != 1 {
		t.Fatalf("second sweep: %d AL and %d bitmap writes, %d hot; want 1, 1, 1", al-al0, bm-bm0, s.HotExtents())
	}
	// A crash now: exactly the failed block and extent 3 are dirty.
	s2 := openMem(t, fsys.Reboot(), Options{})
	if got := s2.Bitmap().DirtyBytes(); got != 4096+4*tMiB || !s2.Bitmap().IsSet(0, 1) {
		t.Fatalf("after a crash %d bytes dirty, want 4 KiB + one extent", got)
	}
	// 3 is idle now, but its write ended after the last Sweep: it stays
	// until the next one, so the sync before that one covers the write.
	s.EndWrite(12*tMiB, 4096)
	for sweep, hot := range []int{1, 0} {
		if err := s.Sweep(); err != nil {
			t.Fatal(err)
		}
		if s.HotExtents() != hot {
			t.Fatalf("sweep %d after the last write ended left %d hot, want %d", sweep+1, s.HotExtents(), hot)
		}
	}
	if err := s.Sweep(); err != nil {
		t.Fatal(err)
	}
	if al, bm := s.Counters(); al != al0+2 || bm != bm0+1 {
		t.Fatalf("idle sweeps wrote: %d AL, %d bitmap writes in all", al-al0, bm-bm0)
	}
}

func TestConcurrentWritersShareALWrites(t *testing.T) {
	fsys := NewMemFS()
	s := openMem(t, fsys, Options{Size: 256 * tMiB, ALExtents: 8})
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				off := int64((g*7+i*13)%64) * 4 * tMiB
				off += int64(i%3) * 4096
				if err := s.BeginWrite(off, 8192); err != nil {
					errs <- err
					return
				}
				if i%17 == 0 {
					s.MarkOutOfSync(off, 8192)
				}
				s.EndWrite(off, 8192)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if h := s.HotExtents(); h > 8 {
		t.Fatalf("%d hot extents, capacity 8", h)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := openMem(t, fsys.Reboot(), Options{})
	if s2.Bitmap().DirtyBlocks() != s.Bitmap().DirtyBlocks() {
		t.Fatalf("dirty after clean reopen %d, before %d", s2.Bitmap().DirtyBlocks(), s.Bitmap().DirtyBlocks())
	}
}

func TestOSFSRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "meta", "r0")
	s, err := Open(dir, Options{Size: 16 * tMiB})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.BeginWrite(4*tMiB, 4096); err != nil {
		t.Fatal(err)
	}
	s.MarkOutOfSync(4*tMiB, 4096)
	s.EndWrite(4*tMiB, 4096)
	// No Close: a crash. Reopen marks the AL extent dirty.
	s2, err := Open(dir, Options{Size: 16 * tMiB})
	if err != nil {
		t.Fatal(err)
	}
	if n, corrupt := s2.Recovered(); n != 1 || corrupt {
		t.Fatalf("Recovered = %d, %v", n, corrupt)
	}
	if got := s2.Bitmap().DirtyBytes(); got != 4*tMiB {
		t.Fatalf("dirty %d bytes, want the whole extent", got)
	}
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	names, err := OSFS().ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 3 {
		t.Fatalf("files %v, want meta, bitmap, al", names)
	}
}

// BenchmarkBeginEndHot measures BeginWrite+EndWrite on an extent already in
// the activity log (the common case: no metadata I/O, no lock).
func BenchmarkBeginEndHot(b *testing.B) {
	s, err := Open(tDir, Options{Size: 1 << 30, FS: NewMemFS()})
	if err != nil {
		b.Fatal(err)
	}
	if err := s.BeginWrite(0, 4096); err != nil {
		b.Fatal(err)
	}
	s.EndWrite(0, 4096)
	b.Run("serial", func(b *testing.B) {
		for b.Loop() {
			if err := s.BeginWrite(4096, 4096); err != nil {
				b.Fatal(err)
			}
			s.EndWrite(4096, 4096)
		}
	})
	b.Run("parallel-same-extent", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := s.BeginWrite(8192, 4096); err != nil {
					b.Fatal(err)
				}
				s.EndWrite(8192, 4096)
			}
		})
	})
	// Each goroutine in its own extent (different cache lines mostly).
	for e := range int64(64) {
		if err := s.BeginWrite(e<<22, 1); err != nil {
			b.Fatal(err)
		}
		s.EndWrite(e<<22, 1)
	}
	var next atomic.Int64
	b.Run("parallel-own-extent", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			off := (next.Add(1) % 64) << 22
			for pb.Next() {
				if err := s.BeginWrite(off, 4096); err != nil {
					b.Fatal(err)
				}
				s.EndWrite(off, 4096)
			}
		})
	})
}

// BenchmarkBeginEndCold measures a write that makes a new extent hot, with
// eviction, over MemFS (the metadata write itself is not measured: on a real
// disk it is one fsync'ed file of a few KiB plus a directory fsync).
func BenchmarkBeginEndCold(b *testing.B) {
	benchBeginEndCold(b, tDir, Options{Size: 1 << 40, FS: NewMemFS()})
}

// BenchmarkBeginEndColdOSFS is BenchmarkBeginEndCold on the real file
// system: one AL write (temp file, fsync, rename, directory fsync) per op.
func BenchmarkBeginEndColdOSFS(b *testing.B) {
	benchBeginEndCold(b, b.TempDir(), Options{Size: 64 << 30})
}

// benchBeginEndCold writes 4 KiB into a new 4 MiB extent per op.
func benchBeginEndCold(b *testing.B, dir string, opts Options) {
	s, err := Open(dir, opts)
	if err != nil {
		b.Fatal(err)
	}
	var off int64
	for b.Loop() {
		if err := s.BeginWrite(off, 4096); err != nil {
			b.Fatal(err)
		}
		s.EndWrite(off, 4096)
		off = (off + 4<<20) % opts.Size
	}
}

func TestSaveMetaValidates(t *testing.T) {
	s := openMem(t, NewMemFS(), Options{Size: 64 * tMiB})
	good := s.Meta()
	for name, c := range map[string]struct {
		mod  func(*Meta)
		want error
	}{
		"size":        {func(m *Meta) { m.Size++ }, ErrGeometry},
		"block":       {func(m *Meta) { m.BitmapBlock *= 2 }, ErrGeometry},
		"extent":      {func(m *Meta) { m.ExtentSize *= 2 }, ErrGeometry},
		"long role":   {func(m *Meta) { m.Role = string(make([]byte, 33)) }, ErrInvalid},
		"binary disk": {func(m *Meta) { m.Disk = "Up\nToDate" }, ErrInvalid},
	} {
		m := good
		c.mod(&m)
		if err := s.SaveMeta(m); !errors.Is(err, c.want) {
			t.Errorf("%s: SaveMeta = %v, want %v", name, err, c.want)
		}
	}
	if s.Meta() != good {
		t.Fatal("a refused SaveMeta changed Meta")
	}
}

// TestCloseWithWriteInFlight: Close keeps the extent of a write still in
// flight in the log (not clean), so a crash afterwards still covers it.
func TestCloseWithWriteInFlight(t *testing.T) {
	fsys := NewMemFS()
	s := openMem(t, fsys, Options{Size: 64 * tMiB})
	for _, off := range []int64{0, 8 * tMiB} {
		if err := s.BeginWrite(off, 4096); err != nil {
			t.Fatal(err)
		}
	}
	s.EndWrite(0, 4096)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s.EndWrite(8*tMiB, 4096) // after Close: harmless
	s2 := openMem(t, fsys.Reboot(), Options{})
	r := s2.Recovery()
	if r.Clean || r.ALExtents != 1 || !s2.Bitmap().IsSet(8*tMiB, 1) || s2.Bitmap().IsSet(0, 1) {
		t.Fatalf("recovery %+v, dirty %d bytes; want extent 2 only", r, s2.Bitmap().DirtyBytes())
	}
}

// TestMarkOutsideWindowPersistedBySweep: a mark on an extent that is not in
// the log becomes durable with the next Sweep.
func TestMarkOutsideWindowPersistedBySweep(t *testing.T) {
	fsys := NewMemFS()
	s := openMem(t, fsys, Options{Size: 64 * tMiB})
	s.MarkOutOfSync(20*tMiB, 4096)
	_, bm0 := s.Counters()
	if err := s.Sweep(); err != nil {
		t.Fatal(err)
	}
	if _, bm := s.Counters(); bm != bm0+1 {
		t.Fatalf("Sweep made %d bitmap writes, want 1", bm-bm0)
	}
	if err := s.Sweep(); err != nil { // nothing new: no write
		t.Fatal(err)
	}
	if _, bm := s.Counters(); bm != bm0+1 {
		t.Fatalf("idle Sweep wrote the bitmap")
	}
	s2 := openMem(t, fsys.Reboot(), Options{})
	if !s2.Bitmap().IsSet(20*tMiB, 1) {
		t.Fatal("mark lost")
	}
}

// TestFailedALWriteIsReported: BeginWrite returns the metadata error and
// holds nothing; the next BeginWrite retries.
func TestFailedALWriteIsReported(t *testing.T) {
	fsys := NewMemFS()
	s := openMem(t, fsys, Options{Size: 64 * tMiB})
	eio := errors.New("EIO")
	fsys.FailAt(fsys.Ops()+1, eio, false)
	if err := s.BeginWrite(0, 4096); !errors.Is(err, eio) {
		t.Fatalf("BeginWrite = %v, want the injected error", err)
	}
	if s.HotExtents() != 0 {
		t.Fatalf("%d hot extents after a failed AL write", s.HotExtents())
	}
	if err := s.BeginWrite(0, 4096); err != nil {
		t.Fatalf("retry: %v", err)
	}
	s.EndWrite(0, 4096)
}

// TestEvictionWritesOneChunk: with the bitmap in chunks, persisting the bits
// of an evicted extent rewrites only that extent's chunk.
func TestEvictionWritesOneChunk(t *testing.T) {
	fsys := NewMemFS()
	// 64 MiB in 4 KiB blocks: 256 words, 16 chunks of 16 words = one 4 MiB
	// extent per chunk.
	s := openMem(t, fsys, Options{Size: 64 * tMiB, ALExtents: 1, chunkWords: 16})
	if err := s.BeginWrite(40*tMiB, 4096); err != nil {
		t.Fatal(err)
	}
	s.MarkOutOfSync(40*tMiB, 4096)
	s.EndWrite(40*tMiB, 4096)
	start := fsys.Ops()
	if err := s.BeginWrite(0, 4096); err != nil { // evicts extent 10
		t.Fatal(err)
	}
	s.EndWrite(0, 4096)
	if log, want := fsys.Log()[start:], []string{"write bitmap.10", "write al"}; !slices.Equal(log, want) {
		t.Fatalf("log %v, want %v", log, want)
	}
	s2 := openMem(t, fsys.Reboot(), Options{chunkWords: 16})
	if !s2.Bitmap().IsSet(40*tMiB, 1) || s2.Bitmap().DirtyBlocks() != 1+1024 { // + extent 0 from the log
		t.Fatalf("after reopen: %d dirty blocks", s2.Bitmap().DirtyBlocks())
	}
}

// BenchmarkBeginEndColdOSFSParallel: concurrent writes to new extents on the
// real file system share AL writes (reported as al-writes/op).
func BenchmarkBeginEndColdOSFSParallel(b *testing.B) {
	s, err := Open(b.TempDir(), Options{Size: 64 << 30})
	if err != nil {
		b.Fatal(err)
	}
	al0, _ := s.Counters()
	var next atomic.Int64
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			off := (next.Add(1) * 4 << 20) % (64 << 30)
			if err := s.BeginWrite(off, 4096); err != nil {
				b.Error(err)
				return
			}
			s.EndWrite(off, 4096)
		}
	})
	al, _ := s.Counters()
	b.ReportMetric(float64(al-al0)/float64(b.N), "al-writes/op")
}

// TestDataSyncedBeforeExtentsLeaveTheLog: an extent leaves the activity log
// (eviction, Sweep, Close) only after Options.SyncData made the data writes
// done so far durable, since afterwards nothing records them; adding an
// extent needs no sync. A failed SyncData keeps the extent in the log and
// fails the call that needed the room.
func TestDataSyncedBeforeExtentsLeaveTheLog(t *testing.T) {
	fsys := NewMemFS()
	var syncAt []int // fsys.Ops() at each SyncData call
	var syncErr error
	s := openMem(t, fsys, Options{Size: 64 * tMiB, ALExtents: 1, SyncData: func() error {
		syncAt = append(syncAt, fsys.Ops())
		return syncErr
	}})
	// ops runs f and returns the metadata operations it did, with "sync"
	// where SyncData ran.
	ops := func(f func()) []string {
		t.Helper()
		start, s0 := fsys.Ops(), len(syncAt)
		f()
		var out []string
		log := fsys.Log()[start:]
		next := s0
		for i := 0; i <= len(log); i++ {
			for next < len(syncAt) && syncAt[next] == start+i {
				out = append(out, "sync")
				next++
			}
			if i < len(log) {
				out = append(out, log[i])
			}
		}
		return out
	}
	write := func(off int64) error {
		if err := s.BeginWrite(off, 4096); err != nil {
			return err
		}
		s.EndWrite(off, 4096)
		return nil
	}
	check := func(what string, got []string, want ...string) {
		t.Helper()
		if !slices.Equal(got, want) {
			t.Fatalf("%s: %q, want %q", what, got, want)
		}
	}
	fails := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, syncErr) || s.HotExtents() != 1 {
			t.Fatalf("%s: %v with %d hot extents; want the sync's error, 1", what, err, s.HotExtents())
		}
	}
	eio := errors.New("EIO")
	var err error

	check("adding an extent", ops(func() { _ = write(0) }), "write al")
	check("a hot extent", ops(func() { _ = write(0) }))
	check("evicting an extent", ops(func() { _ = write(4 * tMiB) }), "sync", "write al")
	check("a sweep of a touched extent", ops(func() { _ = s.Sweep() }))

	syncErr = eio
	check("a sweep whose sync fails", ops(func() { err = s.Sweep() }), "sync")
	fails("Sweep", err)
	syncErr = nil
	check("a sweep dropping an idle extent", ops(func() { _ = s.Sweep() }), "sync", "write al")

	check("adding to an empty log", ops(func() { _ = write(0) }), "write al")
	syncErr = eio
	check("an eviction whose sync fails", ops(func() { err = write(4 * tMiB) }), "sync")
	fails("BeginWrite", err)
	syncErr = nil
	check("close", ops(func() { _ = s.Close() }), "sync", "write al")
}

// TestSweepSyncLetsWritesGoOn: the data sync of a Sweep runs before the sweep
// takes the store, so a write needing a new extent does not wait for it.
func TestSweepSyncLetsWritesGoOn(t *testing.T) {
	entered, release := make(chan struct{}, 1), make(chan struct{})
	s := openMem(t, NewMemFS(), Options{Size: 64 * tMiB, ALExtents: 2, SyncData: func() error {
		entered <- struct{}{}
		<-release
		return nil
	}})
	if err := s.BeginWrite(0, 4096); err != nil {
		t.Fatal(err)
	}
	s.EndWrite(0, 4096)
	if err := s.Sweep(); err != nil { // clears extent 0's touched bit
		t.Fatal(err)
	}
	swept := make(chan error, 1)
	go func() { swept <- s.Sweep() }()
	<-entered
	began := make(chan error, 1)
	go func() { began <- s.BeginWrite(4*tMiB, 4096) }()
	select {
	case err := <-began:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a write to a new extent waited for the sweep's data sync")
	}
	s.EndWrite(4*tMiB, 4096)
	close(release)
	if err := <-swept; err != nil {
		t.Fatal(err)
	}
	if s.HotExtents() != 1 {
		t.Fatalf("%d hot extents after the sweep, want 1 (the new one)", s.HotExtents())
	}
}

// TestEvictionSyncRunsWithoutTheStore: the data sync an eviction needs runs
// without holding the store, so it may use it, as a replica's sync does when
// its peer fails a flush (it marks the blocks and persists the bitmap); the
// write that needs the room waits for it, a write to a hot extent does not.
// The eviction then takes only an extent whose last write ended before the
// sync began: a write ending meanwhile may have missed it.
func TestEvictionSyncRunsWithoutTheStore(t *testing.T) {
	entered, release := make(chan struct{}, 4), make(chan struct{})
	var syncs atomic.Int32
	var s *Store
	s = openMem(t, NewMemFS(), Options{Size: 64 * tMiB, ALExtents: 2, SyncData: func() error {
		syncs.Add(1)
		entered <- struct{}{}
		<-release
		s.MarkOutOfSync(0, 4096)
		return s.PersistBitmap()
	}})
	within := func(what string, ch <-chan error) {
		t.Helper()
		select {
		case err := <-ch:
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: still waiting after 10 s", what)
		}
	}
	for _, off := range []int64{0, 4 * tMiB} { // extents 0 and 1, both in flight
		if err := s.BeginWrite(off, 4096); err != nil {
			t.Fatal(err)
		}
	}
	began := make(chan error, 1)
	go func() { began <- s.BeginWrite(8*tMiB, 4096) }() // extent 2: needs a victim
	s.EndWrite(0, 4096)                                 // extent 0 idle: its write is not yet synced
	select {
	case <-entered:
	case err := <-began:
		t.Fatalf("the write needing room returned (%v) without a data sync", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no data sync after 10 s")
	}
	// Extent 1's write ends after the sync began: the sync need not cover it.
	s.EndWrite(4*tMiB, 4096)
	hot := make(chan error, 1)
	go func() { hot <- s.BeginWrite(4*tMiB, 4096) }()
	within("a write to a hot extent during the sync", hot)
	s.EndWrite(4*tMiB, 4096)
	select {
	case err := <-began:
		t.Fatalf("the write needing room returned (%v) before the sync did", err)
	default:
	}
	close(release)
	within("the write needing room", began)
	s.EndWrite(8*tMiB, 4096)
	s.mu.Lock()
	_, hot0 := s.memberIdx[0]
	_, hot1 := s.memberIdx[1]
	s.mu.Unlock()
	if hot0 || !hot1 || syncs.Load() != 1 {
		t.Fatalf("extent 0 hot %v, extent 1 hot %v after %d syncs; want extent 0 evicted, not extent 1, after 1",
			hot0, hot1, syncs.Load())
	}
}

// TestGrow: a disk grown while the resource was down. Without Options.Grow a
// larger size is refused as before; with it the metadata takes the new size,
// keeps every bit and the activity log's extents, and marks everything from
// the block holding the old end on, durably. A smaller size is refused even
// with Grow.
func TestGrow(t *testing.T) {
	const block = 512
	oldSize, newSize := int64(63*1024+300), int64(80*1024+100) // both end inside a block
	geo := Options{Size: oldSize, BitmapBlock: block, ExtentSize: 4096, ALExtents: 4, chunkWords: 1}
	fsys := NewMemFS()
	s := openMem(t, fsys, geo)
	s.MarkOutOfSync(5*block, block)
	if err := s.PersistBitmap(); err != nil {
		t.Fatal(err)
	}
	if err := s.BeginWrite(40*block, block); err != nil {
		t.Fatal(err)
	}
	// Crash with the write in flight: its extent is in the log.
	fsys = fsys.Reboot()
	want := func(s *Store, what string) {
		t.Helper()
		bm := s.Bitmap()
		for b := int64(0); b*block < s.Meta().Size; b++ {
			set := bm.IsSet(b*block, 1)
			need := b == 5 || b/8 == 40/8 || b >= oldSize/block
			if need && !set {
				t.Fatalf("%s: block %d is not marked", what, b)
			}
			if !need && set && b < oldSize/block {
				t.Fatalf("%s: block %d is marked, only blocks 5, 40..47 and from %d on should be", what, b, oldSize/block)
			}
		}
	}

	bigger := geo
	bigger.Size = newSize
	bigger.FS = fsys
	var se *SizeError
	if _, err := Open(tDir, bigger); !errors.Is(err, ErrGeometry) || !errors.As(err, &se) || se.Disk != newSize || se.Stored != oldSize {
		t.Fatalf("a larger disk without Grow: %v, want a SizeError naming both sizes", err)
	}
	smaller := geo
	smaller.Size, smaller.Grow, smaller.FS = oldSize-block, true, fsys
	if _, err := Open(tDir, smaller); !errors.As(err, &se) || se.Disk != oldSize-block {
		t.Fatalf("a smaller disk with Grow: %v, want a SizeError", err)
	}
	bigger.Grow = true
	g, err := Open(tDir, bigger)
	if err != nil {
		t.Fatal(err)
	}
	if r := g.Recovery(); r.GrownFrom != oldSize || r.ALExtents != 1 || r.Corrupt {
		t.Fatalf("Recovery %+v; want GrownFrom %d, one AL extent, not corrupt", r, oldSize)
	}
	if g.Meta().Size != newSize {
		t.Fatalf("meta size %d, want %d", g.Meta().Size, newSize)
	}
	want(g, "grown")

	// Durable: a crash now, and the next start at the new size needs no Grow.
	again := geo
	again.Size, again.FS = newSize, fsys.Reboot()
	g2, err := Open(tDir, again)
	if err != nil {
		t.Fatal(err)
	}
	if r := g2.Recovery(); r.GrownFrom != 0 || r.Corrupt {
		t.Fatalf("Recovery after the grow %+v; want not grown, not corrupt", r)
	}
	want(g2, "reopened")
}

// TestGrowCrash: a crash at any durable operation of a growing Open loses
// nothing: growing again afterwards marks at least what the first grow would.
func TestGrowCrash(t *testing.T) {
	const block = 512
	geo := Options{Size: 63*1024 + 300, BitmapBlock: block, ExtentSize: 4096, ALExtents: 4, chunkWords: 1}
	base := NewMemFS()
	s := openMem(t, base, geo)
	s.MarkOutOfSync(7*block, block)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	grow := geo
	grow.Size, grow.Grow = 80*1024+100, true
	full := base.Reboot()
	grow.FS = full
	start := full.Ops()
	if _, err := Open(tDir, grow); err != nil {
		t.Fatal(err)
	}
	total := full.Ops() - start
	if total < 4 {
		t.Fatalf("growing took %d durable operations; want the chunks, the AL and meta", total)
	}
	for _, mode := range []CrashOptions{{}, {Apply: true}, {TornTemp: true}} {
		for k := range total {
			fsys := base.Reboot()
			fsys.CrashAfter(fsys.Ops()+k, mode)
			grow.FS = fsys
			if _, err := Open(tDir, grow); err == nil && fsys.Crashed() {
				t.Fatalf("crash after op %d %+v: Open succeeded through the crash", k, mode)
			}
			grow.FS = fsys.Reboot()
			g, err := Open(tDir, grow)
			if err != nil {
				t.Fatalf("crash after op %d %+v: growing again: %v", k, mode, err)
			}
			bm := g.Bitmap()
			if !bm.IsSet(7*block, 1) || !bm.IsSet(geo.Size/block*block, grow.Size-geo.Size/block*block) {
				t.Fatalf("crash after op %d %+v: a marked block was lost (meta size %d)", k, mode, g.Meta().Size)
			}
		}
	}
}

// TestGrowOnline: Store.Grow on a running store. With a write in flight it
// refuses and the store keeps working; once idle it returns a store at the
// new size that keeps every bit, marks the new part, carries SyncData over,
// and is durable (a crash right after needs no Grow to open at the new
// size). A size that does not grow is refused.
func TestGrowOnline(t *testing.T) {
	const block = 512
	oldSize, newSize := int64(63*1024+300), int64(80*1024+100)
	fsys := NewMemFS()
	var syncs atomic.Int64
	geo := Options{Size: oldSize, BitmapBlock: block, ExtentSize: 4096, ALExtents: 4, chunkWords: 1,
		SyncData: func() error { syncs.Add(1); return nil }}
	s := openMem(t, fsys, geo)
	s.MarkOutOfSync(5*block, block)
	if err := s.BeginWrite(40*block, block); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Grow(newSize, false); !errors.Is(err, ErrBusy) {
		t.Fatalf("Grow with a write in flight: %v, want ErrBusy", err)
	}
	s.EndWrite(40*block, block)
	if err := s.BeginWrite(0, block); err != nil {
		t.Fatalf("the store stopped working after a refused Grow: %v", err)
	}
	s.EndWrite(0, block)
	if _, err := s.Grow(oldSize, false); !errors.Is(err, ErrGeometry) {
		t.Fatalf("Grow to the same size: %v, want ErrGeometry", err)
	}

	g, err := s.Grow(newSize, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.BeginWrite(0, block); !errors.Is(err, ErrClosed) {
		t.Fatalf("the old store after Grow: BeginWrite %v, want ErrClosed", err)
	}
	if g.Meta().Size != newSize || g.Bitmap().Size() != newSize || g.Recovery().GrownFrom != oldSize {
		t.Fatalf("grown store: meta size %d, bitmap size %d, GrownFrom %d; want %d, %d, %d",
			g.Meta().Size, g.Bitmap().Size(), g.Recovery().GrownFrom, newSize, newSize, oldSize)
	}
	check := func(g *Store, what string) {
		t.Helper()
		bm := g.Bitmap()
		for b := int64(0); b*block < newSize; b++ {
			need := b == 5 || b >= oldSize/block
			if set := bm.IsSet(b*block, 1); set != need {
				t.Fatalf("%s: block %d marked %v, want %v", what, b, set, need)
			}
		}
	}
	check(g, "grown")
	before := syncs.Load()
	if err := g.BeginWrite(newSize-block, block); err != nil {
		t.Fatalf("a write into the new part: %v", err)
	}
	g.EndWrite(newSize-block, block)
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if syncs.Load() == before {
		t.Fatal("the grown store's Close did not call SyncData: it was not carried over")
	}

	again := geo
	again.Size, again.FS = newSize, fsys.Reboot()
	r, err := Open(tDir, again)
	if err != nil {
		t.Fatalf("opening at the new size after the grow, without Grow: %v", err)
	}
	check(r, "reopened")
}

// TestGrowOnlineClean: Store.Grow with clean marks nothing new, except the
// block holding the old end when it was marked before; a crash afterwards
// opens with the same marks.
func TestGrowOnlineClean(t *testing.T) {
	const block = 512
	oldSize, newSize := int64(63*1024+300), int64(80*1024+100) // the old end inside block 124
	for _, endMarked := range []bool{false, true} {
		fsys := NewMemFS()
		geo := Options{Size: oldSize, BitmapBlock: block, ExtentSize: 4096, ALExtents: 4, chunkWords: 1}
		s := openMem(t, fsys, geo)
		s.MarkOutOfSync(5*block, block)
		if endMarked {
			s.MarkOutOfSync(oldSize-1, 1)
		}
		g, err := s.Grow(newSize, true)
		if err != nil {
			t.Fatal(err)
		}
		check := func(g *Store, what string) {
			t.Helper()
			for b := int64(0); b*block < newSize; b++ {
				need := b == 5 || endMarked && b == oldSize/block
				if set := g.Bitmap().IsSet(b*block, 1); set != need {
					t.Fatalf("%s (old end marked %v): block %d marked %v, want %v", what, endMarked, b, set, need)
				}
			}
		}
		check(g, "grown clean")
		again := geo
		again.Size, again.FS = newSize, fsys.Reboot()
		r, err := Open(tDir, again)
		if err != nil {
			t.Fatal(err)
		}
		check(r, "after a crash")
	}
}

// TestNotes: a note saved survives a reboot of the metadata's file system,
// a missing one reads as nil, and names that are not lowercase words, or
// that are the store's own files, and notes over 4 KiB are refused.
func TestNotes(t *testing.T) {
	fsys := NewMemFS()
	s := openMem(t, fsys, Options{Size: 64 * tMiB})
	if data, err := s.LoadNote("verify"); data != nil || err != nil {
		t.Fatalf("a note never saved: %q, %v", data, err)
	}
	if err := s.SaveNote("verify", []byte(`{"last":1}`)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := openMem(t, fsys.Reboot(), Options{Size: 64 * tMiB})
	if data, err := s2.LoadNote("verify"); string(data) != `{"last":1}` || err != nil {
		t.Fatalf("the note after a reboot: %q, %v", data, err)
	}
	for _, name := range []string{"", "meta", "al", "bitmap", "bitmap.0", "../x", "Verify", "a.b"} {
		if err := s2.SaveNote(name, nil); !errors.Is(err, ErrInvalid) {
			t.Errorf("SaveNote(%q): %v, want ErrInvalid", name, err)
		}
	}
	if err := s2.SaveNote("verify", make([]byte, 4<<10+1)); !errors.Is(err, ErrInvalid) {
		t.Errorf("a note of 4 KiB + 1: %v, want ErrInvalid", err)
	}
	if m := s2.Meta(); m.Size != 64*tMiB {
		t.Fatalf("the metadata after saving notes: %+v", m)
	}
}
