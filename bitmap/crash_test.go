package bitmap

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"
)

// The crash loop. A scripted workload drives a Store over a MemFS while a
// model tracks which blocks may differ between the nodes:
//
//	mayDiffer = blocks of writes in flight (BeginWrite returned, EndWrite not
//	            yet called) ∪ blocks of writes the peer did not confirm
//	            (MarkOutOfSync, until MarkInSync).
//
// After every step the files as they are on "disk" must cover mayDiffer
// (bitmap ∪ blocks of AL extents). Then, for k = 0, 1, 2, ... the workload
// is replayed with a crash at durable operation k+1; the rebooted files are
// opened and the loaded bitmap must cover mayDiffer at the crash. A second
// crash inside that Open must not lose anything either.

// Geometry: 127 blocks of 512 bytes (the last partial) in 16 extents of 4 KiB,
// an activity log of 4 extents, the bitmap in two chunk files of one word.
var crashGeo = Options{Size: 63*1024 + 300, BitmapBlock: 512, ExtentSize: 4096, ALExtents: 4, chunkWords: 1}

const crashSteps = 400

type crashModel struct {
	nblocks  int
	oos      []bool // peer did not confirm, durable by the rules
	pending  []bool // marked outside a write window, durable only after PersistBitmap
	inflight []crashWrite
}

type crashWrite struct{ off, n int64 }

func newCrashModel() *crashModel {
	n := int(ceilDiv(crashGeo.Size, crashGeo.BitmapBlock))
	return &crashModel{nblocks: n, oos: make([]bool, n), pending: make([]bool, n)}
}

func blocksOf(off, n int64, f func(int)) {
	for b := off / crashGeo.BitmapBlock; b <= (off+n-1)/crashGeo.BitmapBlock; b++ {
		f(int(b))
	}
}

func extentsOfW(off, n int64) (int64, int64) {
	return off / crashGeo.ExtentSize, (off + n - 1) / crashGeo.ExtentSize
}

// mayDiffer returns the model's set of blocks that may differ.
func (m *crashModel) mayDiffer() []bool {
	d := append([]bool(nil), m.oos...)
	for _, w := range m.inflight {
		blocksOf(w.off, w.n, func(b int) { d[b] = true })
	}
	return d
}

// pinnedExtents is the number of distinct extents held by writes in flight
// plus the range [off, off+n).
func (m *crashModel) pinnedExtents(off, n int64) int {
	set := map[int64]bool{}
	add := func(o, l int64) {
		a, b := extentsOfW(o, l)
		for e := a; e <= b; e++ {
			set[e] = true
		}
	}
	for _, w := range m.inflight {
		add(w.off, w.n)
	}
	add(off, n)
	return len(set)
}

// onDiskCover decodes the durable files and returns the blocks they cover.
func onDiskCover(fsys *MemFS) ([]bool, error) {
	n := int(ceilDiv(crashGeo.Size, crashGeo.BitmapBlock))
	cover := make([]bool, n)
	words := make([]uint64, ceilDiv(int64(n), 64))
	for i := range words { // one word per chunk
		data, ok := fsys.File(filepath.Join(tDir, chunkFile(i)))
		if !ok {
			return nil, fmt.Errorf("no bitmap chunk %d", i)
		}
		c := bmChunk{size: crashGeo.Size, block: crashGeo.BitmapBlock, nwords: int64(len(words)), chunkWords: 1, first: int64(i)}
		if err := decodeBitmapChunk(data, c, words[i:i+1]); err != nil {
			return nil, err
		}
	}
	for b := range n {
		cover[b] = words[b/64]&(1<<uint(b%64)) != 0
	}
	alData, ok := fsys.File(filepath.Join(tDir, ALFile))
	if !ok {
		return nil, errors.New("no AL file")
	}
	al, err := decodeAL(alData, crashGeo.Size, crashGeo.ExtentSize)
	if err != nil {
		return nil, err
	}
	per := crashGeo.ExtentSize / crashGeo.BitmapBlock
	for _, e := range al.extents {
		for b := int64(e) * per; b < min(int64(e+1)*per, int64(n)); b++ {
			cover[b] = true
		}
	}
	return cover, nil
}

func uncovered(need, have []bool) []int {
	var miss []int
	for b := range need {
		if need[b] && !have[b] {
			miss = append(miss, b)
		}
	}
	return miss
}

// crashRun replays the workload of seed on fsys until it ends or the FS
// crashes. It checks the on-disk invariant after every step and returns the
// model at the end (or at the crash) and the trace of steps.
func crashRun(t *testing.T, seed uint64, fsys *MemFS) (*crashModel, []string) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	m := newCrashModel()
	var trace []string
	opt := crashGeo
	opt.FS = fsys
	s, err := Open(tDir, opt)
	if err != nil {
		return m, append(trace, "open: "+err.Error())
	}
	disconnected := false
	promote := func() { // a bitmap write that included the pending marks succeeded
		for b := range m.pending {
			if m.pending[b] {
				m.oos[b], m.pending[b] = true, false
			}
		}
	}
	endWrite := func(i int, fail bool) {
		w := m.inflight[i]
		if fail {
			s.MarkOutOfSync(w.off, w.n)
			blocksOf(w.off, w.n, func(b int) { m.oos[b] = true })
		}
		s.EndWrite(w.off, w.n)
		m.inflight = append(m.inflight[:i], m.inflight[i+1:]...)
		trace = append(trace, fmt.Sprintf("end %d+%d fail=%v", w.off, w.n, fail))
	}
	for step := range crashSteps {
		if fsys.Crashed() {
			break
		}
		switch p := r.IntN(100); {
		case p < 40: // begin a write of up to 3 extents
			off := r.Int64N(crashGeo.Size)
			n := 1 + r.Int64N(min(2*crashGeo.ExtentSize, crashGeo.Size-off))
			if m.pinnedExtents(off, n) > crashGeo.ALExtents {
				trace = append(trace, "skip begin")
				break
			}
			err := s.BeginWrite(off, n)
			trace = append(trace, fmt.Sprintf("begin %d+%d: %v", off, n, err))
			if err == nil {
				m.inflight = append(m.inflight, crashWrite{off, n})
			}
		case p < 70: // complete a write; the peer fails some
			if len(m.inflight) > 0 {
				endWrite(r.IntN(len(m.inflight)), disconnected || r.IntN(4) == 0)
			}
		case p < 78: // resync copies a dirty run
			off, n, ok := s.Bitmap().NextDirty(r.Int64N(crashGeo.Size), 512*(1+r.Int64N(20)))
			if ok {
				s.MarkInSync(off, n)
				blocksOf(off, n, func(b int) { m.oos[b], m.pending[b] = false, false })
				trace = append(trace, fmt.Sprintf("insync %d+%d", off, n))
			}
		case p < 82:
			disconnected = !disconnected
			trace = append(trace, fmt.Sprintf("disconnected=%v", disconnected))
		case p < 87:
			err := s.PersistBitmap()
			trace = append(trace, fmt.Sprintf("persist: %v", err))
			if err == nil {
				promote()
			}
		case p < 91: // a difference found outside any write (e.g. verify)
			off := r.Int64N(crashGeo.Size)
			n := 1 + r.Int64N(min(3000, crashGeo.Size-off))
			s.MarkOutOfSync(off, n)
			blocksOf(off, n, func(b int) { m.pending[b] = true })
			trace = append(trace, fmt.Sprintf("mark outside %d+%d", off, n))
		case p < 98:
			err := s.Sweep()
			trace = append(trace, fmt.Sprintf("sweep: %v", err))
			if err == nil {
				promote()
			}
		default: // clean restart
			for len(m.inflight) > 0 {
				endWrite(0, disconnected)
			}
			err := s.Close()
			trace = append(trace, fmt.Sprintf("close: %v", err))
			if err == nil {
				promote()
			}
			if s, err = Open(tDir, opt); err != nil {
				return m, append(trace, "reopen: "+err.Error())
			}
			// Marks made outside a write window that no bitmap write
			// persisted died with the old Store (that is their contract).
			clear(m.pending)
		}
		if fsys.Crashed() {
			break
		}
		cover, err := onDiskCover(fsys)
		if err != nil {
			t.Fatalf("seed %d step %d: on-disk files: %v\n%v", seed, step, err, trace)
		}
		if miss := uncovered(m.mayDiffer(), cover); len(miss) > 0 {
			t.Fatalf("seed %d step %d: blocks %v may differ but are not covered on disk\ntrace %v", seed, step, miss, trace)
		}
	}
	return m, trace
}

// checkReopen opens the rebooted files and checks the loaded bitmap covers
// need. creation is true when the crash hit the first Open.
func checkReopen(t *testing.T, what string, fsys *MemFS, need []bool, creation bool) {
	t.Helper()
	opt := crashGeo
	opt.FS = fsys
	s, err := Open(tDir, opt)
	if err != nil {
		t.Fatalf("%s: reopen: %v", what, err)
	}
	bm := s.Bitmap()
	have := make([]bool, len(need))
	for b := range have {
		have[b] = bm.IsSet(int64(b)*crashGeo.BitmapBlock, 1)
	}
	if miss := uncovered(need, have); len(miss) > 0 {
		t.Fatalf("%s: blocks %v lost after the crash (files %v)", what, miss, fsys)
	}
	n, corrupt := s.Recovered()
	if corrupt && !creation {
		t.Fatalf("%s: atomic writes left a corrupt file: %v", what, s.Recovery().CorruptFiles)
	}
	if n > crashGeo.ALExtents {
		t.Fatalf("%s: %d AL extents, capacity %d", what, n, crashGeo.ALExtents)
	}
}

// creationOps is the number of durable operations of the first Open.
const creationOps = 5 // mkdir, bitmap.0, bitmap.1, al, meta

func TestCrashLoop(t *testing.T) {
	seeds := []uint64{1, 2, 3, 4, 5}
	if testing.Short() {
		seeds = seeds[:2]
	}
	for _, seed := range seeds {
		full := NewMemFS()
		crashRun(t, seed, full)
		total := full.Ops()
		if total < 50 {
			t.Fatalf("seed %d: only %d durable operations; the workload is too tame", seed, total)
		}
		nonEmpty := 0 // crash points where some block had to survive
		for _, mode := range []CrashOptions{{}, {Apply: true}, {TornTemp: true}} {
			for k := range total {
				fsys := NewMemFS()
				fsys.CrashAfter(k, mode)
				m, trace := crashRun(t, seed, fsys)
				if !fsys.Crashed() {
					t.Fatalf("seed %d k %d: no crash (%d ops)", seed, k, fsys.Ops())
				}
				what := fmt.Sprintf("seed %d crash after op %d %+v (last steps %v)", seed, k, mode, tail(trace, 4))
				need := m.mayDiffer()
				if slices.Contains(need, true) {
					nonEmpty++
				}
				checkReopen(t, what, fsys.Reboot(), need, k < creationOps)
				// A second crash inside the recovering Open.
				for j := range 3 {
					f2 := fsys.Reboot()
					f2.CrashAfter(j, mode)
					opt := crashGeo
					opt.FS = f2
					if _, err := Open(tDir, opt); err == nil && f2.Crashed() {
						t.Fatalf("%s: Open succeeded through a crash", what)
					}
					checkReopen(t, fmt.Sprintf("%s, then after op %d of Open", what, j), f2.Reboot(), need, k < creationOps)
				}
			}
			t.Logf("seed %d mode %+v: %d crash points", seed, mode, total)
		}
		if nonEmpty < total {
			t.Fatalf("seed %d: only %d of %d crash points had blocks that may differ", seed, nonEmpty, 3*total)
		}
	}
}

// TestFailedWritesKeepInvariant injects an I/O error (the write taking effect
// or not) at every durable operation and lets the workload go on: the Store
// must assume the worst about the file and the invariant must keep holding.
func TestFailedWritesKeepInvariant(t *testing.T) {
	for _, seed := range []uint64{7, 8} {
		full := NewMemFS()
		crashRun(t, seed, full)
		total := full.Ops()
		for _, apply := range []bool{false, true} {
			for k := creationOps + 1; k <= total; k++ {
				fsys := NewMemFS()
				fsys.FailAt(k, errors.New("injected EIO"), apply)
				m, _ := crashRun(t, seed, fsys) // checks after every step
				checkReopen(t, fmt.Sprintf("seed %d fail op %d apply %v", seed, k, apply), fsys.Reboot(), m.mayDiffer(), false)
			}
		}
	}
}

func tail(s []string, n int) []string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
