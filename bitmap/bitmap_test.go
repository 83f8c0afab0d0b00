package bitmap

import (
	"errors"
	"math/rand/v2"
	"slices"
	"testing"
)

// naive is the model: one bool per block.
type naive struct {
	size, block int64
	bits        []bool
}

func newNaive(size, block int64) *naive {
	return &naive{size: size, block: block, bits: make([]bool, (size+block-1)/block)}
}

func (n *naive) each(off, length int64, f func(i int)) {
	if length <= 0 || off >= n.size {
		return
	}
	end := min(off+length, n.size)
	off = max(off, 0)
	if end <= off {
		return
	}
	for i := off / n.block; i <= (end-1)/n.block; i++ {
		f(int(i))
	}
}

func (n *naive) set(off, length int64)   { n.each(off, length, func(i int) { n.bits[i] = true }) }
func (n *naive) clear(off, length int64) { n.each(off, length, func(i int) { n.bits[i] = false }) }
func (n *naive) isSet(off, length int64) bool {
	r := false
	n.each(off, length, func(i int) { r = r || n.bits[i] })
	return r
}
func (n *naive) dirtyBytes() int64 {
	var s int64
	for i, b := range n.bits {
		if b {
			s += min(int64(i+1)*n.block, n.size) - int64(i)*n.block
		}
	}
	return s
}

// runs lists the dirty runs as NextDirty with maxLen would return them.
func (n *naive) nextDirty(from, maxLen int64) (int64, int64, bool) {
	if from < 0 {
		from = 0
	}
	maxBlocks := max(maxLen/n.block, 1)
	for i := from / n.block; i < int64(len(n.bits)); i++ {
		if !n.bits[i] {
			continue
		}
		j := i
		for j < int64(len(n.bits)) && n.bits[j] && j-i < maxBlocks {
			j++
		}
		return i * n.block, min(j*n.block, n.size) - i*n.block, true
	}
	return 0, 0, false
}

func TestBitmapSetClearEdges(t *testing.T) {
	const bs = 4096
	size := int64(130*bs + 100) // 131 blocks, the last partial; 3 words
	cases := []struct {
		name        string
		set         [][2]int64
		clear       [][2]int64
		wantBlocks  int64
		wantBytes   int64
		probe       [2]int64
		probeResult bool
	}{
		{"first byte", [][2]int64{{0, 1}}, nil, 1, bs, [2]int64{0, 1}, true},
		{"first block exactly", [][2]int64{{0, bs}}, nil, 1, bs, [2]int64{bs, 1}, false},
		{"straddles two blocks", [][2]int64{{bs - 1, 2}}, nil, 2, 2 * bs, [2]int64{bs, 1}, true},
		{"last partial block", [][2]int64{{size - 1, 1}}, nil, 1, 100, [2]int64{130 * bs, 100}, true},
		{"past the end clipped", [][2]int64{{size - 10, 1 << 40}}, nil, 1, 100, [2]int64{size, 5}, false},
		{"negative offset clipped", [][2]int64{{-bs, 2 * bs}}, nil, 1, bs, [2]int64{0, 1}, true},
		{"word boundary 63-64", [][2]int64{{63 * bs, 2 * bs}}, nil, 2, 2 * bs, [2]int64{64 * bs, 1}, true},
		{"whole word", [][2]int64{{64 * bs, 64 * bs}}, nil, 64, 64 * bs, [2]int64{127 * bs, 1}, true},
		{"all then clear middle", [][2]int64{{0, size}}, [][2]int64{{bs, 129 * bs}}, 2, bs + 100, [2]int64{bs, 129 * bs}, false},
		{"zero length", [][2]int64{{5, 0}}, nil, 0, 0, [2]int64{0, size}, false},
		{"clear past end", [][2]int64{{0, size}}, [][2]int64{{0, 1 << 62}}, 0, 0, [2]int64{0, size}, false},
		{"beyond the disk", [][2]int64{{size, 10}, {1 << 62, 1 << 62}}, nil, 0, 0, [2]int64{0, size}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := New(size, bs)
			for _, r := range c.set {
				b.Set(r[0], r[1])
			}
			for _, r := range c.clear {
				b.Clear(r[0], r[1])
			}
			if got := b.DirtyBlocks(); got != c.wantBlocks {
				t.Errorf("DirtyBlocks = %d, want %d", got, c.wantBlocks)
			}
			if got := b.DirtyBytes(); got != c.wantBytes {
				t.Errorf("DirtyBytes = %d, want %d", got, c.wantBytes)
			}
			if got := b.IsSet(c.probe[0], c.probe[1]); got != c.probeResult {
				t.Errorf("IsSet(%d, %d) = %v, want %v", c.probe[0], c.probe[1], got, c.probeResult)
			}
		})
	}
}

func TestBitmapNextDirty(t *testing.T) {
	const bs = 512
	size := int64(200*bs + 7)
	b := New(size, bs)
	b.Set(0, bs)        // block 0
	b.Set(62*bs, 70*bs) // blocks 62..131 across word boundaries
	b.Set(200*bs, 1)    // last, partial block
	cases := []struct {
		from, max int64
		off, n    int64
		ok        bool
	}{
		{0, 1 << 20, 0, bs, true},
		{1, 1 << 20, 0, bs, true}, // from rounds down to its block
		{bs, 1 << 20, 62 * bs, 70 * bs, true},
		{bs, 10 * bs, 62 * bs, 10 * bs, true},
		{bs, 1, 62 * bs, bs, true}, // at least one block
		{100 * bs, 1 << 20, 100 * bs, 32 * bs, true},
		{132 * bs, 1 << 20, 200 * bs, 7, true},
		{size, 1 << 20, 0, 0, false},
		{-5, bs, 0, bs, true},
	}
	for _, c := range cases {
		off, n, ok := b.NextDirty(c.from, c.max)
		if off != c.off || n != c.n || ok != c.ok {
			t.Errorf("NextDirty(%d, %d) = %d, %d, %v; want %d, %d, %v", c.from, c.max, off, n, ok, c.off, c.n, c.ok)
		}
	}
	b.Clear(0, size)
	if _, _, ok := b.NextDirty(0, 1<<20); ok {
		t.Error("NextDirty on an empty bitmap found something")
	}
}

func TestBitmapMerge(t *testing.T) {
	a, b := New(100<<12, 4096), New(100<<12, 4096)
	a.Set(0, 4096)
	b.Set(70<<12, 4096)
	b.Set(0, 4096)
	if err := a.Merge(b); err != nil {
		t.Fatal(err)
	}
	if a.DirtyBlocks() != 2 || !a.IsSet(70<<12, 1) {
		t.Fatalf("after merge %d dirty", a.DirtyBlocks())
	}
	if err := a.Merge(a); err != nil || a.DirtyBlocks() != 2 {
		t.Fatalf("self merge: %v, %d", err, a.DirtyBlocks())
	}
	for _, o := range []*Bitmap{New(101<<12, 4096), New(100<<12, 8192)} {
		if err := a.Merge(o); !errors.Is(err, ErrGeometry) {
			t.Errorf("Merge of other geometry = %v", err)
		}
	}
}

func TestBitmapWordsAndMergeWords(t *testing.T) {
	b := New(130*4096, 4096) // 130 bits, 3 words, 2 valid bits in the last
	if b.NumWords() != 3 {
		t.Fatalf("NumWords %d", b.NumWords())
	}
	b.Set(64*4096, 4096)
	if w := b.Words(1, 5); !slices.Equal(w, []uint64{1, 0}) {
		t.Fatalf("Words(1,5) = %v", w)
	}
	for _, c := range []struct{ first, n int }{{-1, 1}, {3, 1}, {0, 0}} {
		if w := b.Words(c.first, c.n); w != nil {
			t.Errorf("Words(%d,%d) = %v, want nil", c.first, c.n, w)
		}
	}
	for _, c := range []struct {
		first int
		n     int
	}{{-1, 1}, {0, 4}, {3, 1}, {2, 2}, {4, 0}} {
		if err := b.MergeWords(c.first, make([]uint64, c.n)); !errors.Is(err, ErrRange) {
			t.Errorf("MergeWords(%d, %d words) = %v, want ErrRange", c.first, c.n, err)
		}
	}
	// Bits past the last block are ignored.
	if err := b.MergeWords(2, []uint64{^uint64(0)}); err != nil {
		t.Fatal(err)
	}
	if got := b.DirtyBlocks(); got != 3 {
		t.Fatalf("DirtyBlocks %d, want 3 (block 64, 128, 129)", got)
	}
	if err := b.MergeWords(3, nil); err != nil {
		t.Errorf("empty merge at the end: %v", err)
	}
	c := New(130*4096, 4096)
	if err := c.MergeWords(0, b.Words(0, b.NumWords())); err != nil || c.DirtyBlocks() != 3 {
		t.Fatalf("round trip: %v, %d", err, c.DirtyBlocks())
	}
}

func TestBitmapRandomAgainstModel(t *testing.T) {
	for _, geo := range [][2]int64{{4096 * 300, 4096}, {512*129 + 1, 512}, {1000, 4096}, {64 * 512, 512}} {
		size, bs := geo[0], geo[1]
		r := rand.New(rand.NewPCG(uint64(size), uint64(bs)))
		b, m := New(size, bs), newNaive(size, bs)
		for step := range 3000 {
			off := r.Int64N(size+2*bs) - bs
			length := r.Int64N(40*bs) - bs
			switch r.IntN(4) {
			case 0, 1:
				b.Set(off, length)
				m.set(off, length)
			case 2:
				b.Clear(off, length)
				m.clear(off, length)
			case 3:
				if got, want := b.IsSet(off, length), m.isSet(off, length); got != want {
					t.Fatalf("size %d step %d: IsSet(%d, %d) = %v, want %v", size, step, off, length, got, want)
				}
			}
			if got, want := b.DirtyBytes(), m.dirtyBytes(); got != want {
				t.Fatalf("size %d step %d: DirtyBytes = %d, want %d", size, step, got, want)
			}
			from, maxLen := r.Int64N(size+bs)-bs/2, r.Int64N(100*bs)
			o1, l1, ok1 := b.NextDirty(from, maxLen)
			o2, l2, ok2 := m.nextDirty(from, maxLen)
			if from >= size {
				ok2 = false
				o2, l2 = 0, 0
			}
			if o1 != o2 || l1 != l2 || ok1 != ok2 {
				t.Fatalf("size %d step %d: NextDirty(%d, %d) = %d,%d,%v; want %d,%d,%v", size, step, from, maxLen, o1, l1, ok1, o2, l2, ok2)
			}
		}
	}
}

func BenchmarkBitmapSet(b *testing.B) {
	bm := New(1<<40, 4096)
	b.RunParallel(func(pb *testing.PB) {
		var off int64
		for pb.Next() {
			bm.Set(off, 4096)
			off = (off + 1<<20) & (1<<40 - 1)
		}
	})
}
