package bitmap

import (
	"fmt"
	"math/bits"
	"sync"
)

// Bitmap is an out-of-sync bitmap: one bit per block of BlockSize bytes of a
// disk of Size bytes. A set bit means "this block may differ from the peer".
// The last block may be partial (Size need not be a multiple of BlockSize).
//
// A Bitmap is safe for concurrent use; every method takes its internal mutex
// for a bounded amount of work (no I/O). Ranges passed in are clipped to
// [0, Size); a range outside the disk touches nothing.
type Bitmap struct {
	size      int64
	blockSize int64
	shift     uint  // log2(blockSize) when blockSize is a power of two
	pow2      bool  // blockSize is a power of two
	nbits     int64 // number of blocks, ceil(size/blockSize)

	mu    sync.Mutex
	words []uint64 // guarded by mu; bits at and beyond nbits are always zero
	dirty int64    // guarded by mu; number of set bits
}

// New returns an empty bitmap for a disk of size bytes in blocks of blockSize
// bytes. size must be >= 0 and blockSize > 0; other values give an empty,
// zero-sized bitmap (callers validate geometry before, see Open).
func New(size, blockSize int64) *Bitmap {
	if size < 0 || blockSize <= 0 {
		size, blockSize = 0, 4096
	}
	b := &Bitmap{size: size, blockSize: blockSize}
	if blockSize&(blockSize-1) == 0 {
		b.pow2 = true
		b.shift = uint(bits.TrailingZeros64(uint64(blockSize)))
	}
	b.nbits = ceilDiv(size, blockSize)
	b.words = make([]uint64, ceilDiv(b.nbits, 64))
	return b
}

func ceilDiv(a, b int64) int64 { return (a + b - 1) / b }

// BlockSize is the number of bytes one bit stands for.
func (b *Bitmap) BlockSize() int64 { return b.blockSize }

// Size is the size of the disk in bytes.
func (b *Bitmap) Size() int64 { return b.size }

// Blocks is the number of bits (blocks) in the bitmap.
func (b *Bitmap) Blocks() int64 { return b.nbits }

// NumWords is the number of 64-bit words of the bitmap (see Words).
func (b *Bitmap) NumWords() int { return len(b.words) }

func (b *Bitmap) block(off int64) int64 {
	if b.pow2 {
		return off >> b.shift
	}
	return off / b.blockSize
}

// blockRange returns the blocks [first, last] touching [off, off+length),
// clipped to the disk; ok is false when nothing is touched.
func (b *Bitmap) blockRange(off, length int64) (first, last int64, ok bool) {
	if length <= 0 || off >= b.size || b.nbits == 0 {
		return 0, 0, false
	}
	end := off + length
	if end < off || end > b.size { // overflow or past the end: clip
		end = b.size
	}
	if off < 0 {
		off = 0
	}
	if end <= off {
		return 0, 0, false
	}
	return b.block(off), b.block(end - 1), true
}

// wordMasks calls f for each word that bits [first, last] touch, with the
// mask of those bits in that word, until f returns false.
func wordMasks(first, last int64, f func(w int64, mask uint64) bool) {
	for i := first; i <= last; {
		w := i >> 6
		hi := uint(63)
		if (last >> 6) == w {
			hi = uint(last & 63)
		}
		if !f(w, maskRange(uint(i&63), hi)) {
			return
		}
		i = (w + 1) << 6
	}
}

// setBitsLocked sets bits [first, last] and returns how many were newly set.
func (b *Bitmap) setBitsLocked(first, last int64) int64 {
	var added int64
	wordMasks(first, last, func(w int64, mask uint64) bool {
		old := b.words[w]
		b.words[w] = old | mask
		added += int64(bits.OnesCount64(mask &^ old))
		return true
	})
	b.dirty += added
	return added
}

// clearBitsLocked clears bits [first, last] and returns how many were cleared.
func (b *Bitmap) clearBitsLocked(first, last int64) int64 {
	var removed int64
	wordMasks(first, last, func(w int64, mask uint64) bool {
		old := b.words[w]
		b.words[w] = old &^ mask
		removed += int64(bits.OnesCount64(mask & old))
		return true
	})
	b.dirty -= removed
	return removed
}

// anyBitsLocked reports whether any bit in [first, last] is set.
func (b *Bitmap) anyBitsLocked(first, last int64) bool {
	found := false
	wordMasks(first, last, func(w int64, mask uint64) bool {
		found = b.words[w]&mask != 0
		return !found
	})
	return found
}

// maskRange returns a word with bits lo..hi (inclusive, lo <= hi <= 63) set.
func maskRange(lo, hi uint) uint64 {
	m := ^uint64(0) << lo
	if hi < 63 {
		m &= (uint64(1) << (hi + 1)) - 1
	}
	return m
}

// Set marks every block touching [off, off+length) out of sync.
func (b *Bitmap) Set(off, length int64) {
	first, last, ok := b.blockRange(off, length)
	if !ok {
		return
	}
	b.mu.Lock()
	b.setBitsLocked(first, last)
	b.mu.Unlock()
}

// Clear marks every block touching [off, off+length) in sync. Callers pass
// block-aligned ranges: a block only partly covered is cleared as a whole.
func (b *Bitmap) Clear(off, length int64) {
	first, last, ok := b.blockRange(off, length)
	if !ok {
		return
	}
	b.mu.Lock()
	b.clearBitsLocked(first, last)
	b.mu.Unlock()
}

// SetAll marks the whole disk out of sync.
func (b *Bitmap) SetAll() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.nbits > 0 {
		b.setBitsLocked(0, b.nbits-1)
	}
}

// ClearAll marks the whole disk in sync.
func (b *Bitmap) ClearAll() {
	b.mu.Lock()
	defer b.mu.Unlock()
	clear(b.words)
	b.dirty = 0
}

// IsSet reports whether any block touching [off, off+length) is set.
func (b *Bitmap) IsSet(off, length int64) bool {
	first, last, ok := b.blockRange(off, length)
	if !ok {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.anyBitsLocked(first, last)
}

// DirtyBlocks is the number of set bits.
func (b *Bitmap) DirtyBlocks() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.dirty
}

// DirtyBytes is the number of bytes out of sync; a set last block that is
// partial counts by its real size.
func (b *Bitmap) DirtyBytes() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.dirtyBytesLocked()
}

func (b *Bitmap) dirtyBytesLocked() int64 {
	n := b.dirty * b.blockSize
	if b.nbits > 0 {
		last := b.nbits - 1
		if b.words[last>>6]&(1<<uint(last&63)) != 0 {
			n -= b.nbits*b.blockSize - b.size
		}
	}
	return n
}

// NextDirty finds the first run of set blocks at or after byte offset from
// (rounded down to its block) and returns it as a byte range of at most maxLen
// bytes (rounded down to whole blocks, but at least one block), clipped to
// Size. ok is false when no block at or after from is set. The run may end
// early because of maxLen; the next call with from = off+length continues it.
func (b *Bitmap) NextDirty(from, maxLen int64) (off, length int64, ok bool) {
	if from < 0 {
		from = 0
	}
	if from >= b.size {
		return 0, 0, false
	}
	maxBlocks := maxLen / b.blockSize
	if maxBlocks < 1 {
		maxBlocks = 1
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	start := b.nextSetLocked(b.block(from))
	if start < 0 {
		return 0, 0, false
	}
	end := start + 1 // exclusive
	for end < b.nbits && end-start < maxBlocks && b.words[end>>6]&(1<<uint(end&63)) != 0 {
		if end&63 == 0 && end+64 <= b.nbits && end-start+64 <= maxBlocks && b.words[end>>6] == ^uint64(0) {
			end += 64
			continue
		}
		end++
	}
	off = start * b.blockSize
	length = min(end*b.blockSize, b.size) - off
	return off, length, true
}

// nextSetLocked returns the first set bit at or after i, or -1.
func (b *Bitmap) nextSetLocked(i int64) int64 {
	if i >= b.nbits {
		return -1
	}
	w := i >> 6
	cur := b.words[w] & (^uint64(0) << uint(i&63))
	for {
		if cur != 0 {
			r := w<<6 + int64(bits.TrailingZeros64(cur))
			if r >= b.nbits {
				return -1
			}
			return r
		}
		w++
		if w >= int64(len(b.words)) {
			return -1
		}
		cur = b.words[w]
	}
}

// sameGeometry reports whether o describes the same disk and block size.
func (b *Bitmap) sameGeometry(o *Bitmap) bool {
	return b.size == o.size && b.blockSize == o.blockSize
}

// Merge sets every bit that is set in o (union). The two bitmaps must have the
// same Size and BlockSize, else the error wraps ErrGeometry and b is unchanged.
// Merging a bitmap into itself is a no-op.
func (b *Bitmap) Merge(o *Bitmap) error {
	if !b.sameGeometry(o) {
		return fmt.Errorf("%w: merge of size %d block %d into size %d block %d",
			ErrGeometry, o.size, o.blockSize, b.size, b.blockSize)
	}
	if b == o {
		return nil
	}
	w := o.Words(0, o.NumWords())
	return b.MergeWords(0, w)
}

// Words returns a copy of n words starting at word first, clipped to the
// bitmap (nil when first is out of range). Bit i of word k stands for block
// 64*k+i. The caller owns the returned slice.
func (b *Bitmap) Words(first, n int) []uint64 {
	if first < 0 || n <= 0 || first >= len(b.words) {
		return nil
	}
	n = min(n, len(b.words)-first)
	out := make([]uint64, n)
	b.mu.Lock()
	copy(out, b.words[first:first+n])
	b.mu.Unlock()
	return out
}

// MergeWords sets every bit set in w, read as words first, first+1, ... of a
// bitmap of the same geometry (union, as received from the peer). The range
// must lie inside the bitmap, else the error wraps ErrRange and b is
// unchanged. Bits beyond the last block are ignored. w is not retained.
func (b *Bitmap) MergeWords(first int, w []uint64) error {
	if first < 0 || first > len(b.words) || len(w) > len(b.words)-first {
		return fmt.Errorf("%w: words [%d, +%d) of a bitmap of %d words",
			ErrRange, first, len(w), len(b.words))
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	lastWord := len(b.words) - 1
	for i, v := range w {
		k := first + i
		if k == lastWord {
			v &= b.tailMask()
		}
		old := b.words[k]
		b.words[k] = old | v
		b.dirty += int64(bits.OnesCount64(v &^ old))
	}
	return nil
}

// tailMask is the mask of valid bits in the last word.
func (b *Bitmap) tailMask() uint64 {
	r := uint(b.nbits & 63)
	if r == 0 {
		return ^uint64(0)
	}
	return (uint64(1) << r) - 1
}

// snapshotInto copies all words into dst (len NumWords) under the lock.
func (b *Bitmap) snapshotInto(dst []uint64) {
	b.mu.Lock()
	copy(dst, b.words)
	b.mu.Unlock()
}

// loadWords replaces the content with w (len NumWords; tail bits must be
// clear). Used by Open only, before the bitmap is shared.
func (b *Bitmap) loadWords(w []uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	copy(b.words, w)
	var n int64
	for _, v := range b.words {
		n += int64(bits.OnesCount64(v))
	}
	b.dirty = n
}
