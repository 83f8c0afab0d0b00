package bitmap

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/bits"
	"unicode"
)

// On-disk formats. Every file is
//
//	magic [8]byte | version u32 | body ... | crc32c u32
//
// little endian, the CRC32C (Castagnoli) covering every byte before it. The
// exact length of each file follows from its header, and a file of any other
// length is corrupt. See doc.go for the layout of each body.
const (
	formatVersion = 1

	metaMagic = "URBDMETA"
	bmMagic   = "URBDBMAP"
	alMagic   = "URBDALOG"

	headerLen = 8 + 4
	crcLen    = 4

	maxStateString = 32 // Role and Disk are at most this many bytes

	// metaBodyLen is the fixed part of the meta body.
	metaBodyLen = 8*10 + 4
	maxMetaLen  = headerLen + metaBodyLen + 2*(1+maxStateString) + crcLen

	bmBodyLen   = 8 * 6 // size, block, nwords, chunk words, first, count
	alBodyLen   = 4 + 8 + 8 + 8 + 4
	alFlagClean = 1 << 0

	// defaultChunkWords is the bitmap chunk: 64 KiB, 2 GiB of disk at 4 KiB.
	defaultChunkWords = 8192

	// MaxBlocks bounds the bitmap: 2^33 blocks is a 1 GiB bitmap file,
	// 32 TiB of disk at 4 KiB per bit.
	MaxBlocks = int64(1) << 33

	minBitmapBlock = 512
	maxBitmapBlock = 1 << 26
	maxExtentSize  = 1 << 30
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func crc(data []byte) uint32 { return crc32.Checksum(data, castagnoli) }

// validGeometry checks a disk size, bitmap block and extent size: positive,
// both sizes powers of two, blocks of 512 B..64 MiB, extents a multiple of the
// block and at most 1 GiB, and at most MaxBlocks bits.
func validGeometry(size, block, extent int64) error {
	switch {
	case size <= 0:
		return fmt.Errorf("%w: disk size %d must be positive", ErrGeometry, size)
	case block < minBitmapBlock || block > maxBitmapBlock || bits.OnesCount64(uint64(block)) != 1:
		return fmt.Errorf("%w: bitmap block %d must be a power of two from %d to %d", ErrGeometry, block, minBitmapBlock, maxBitmapBlock)
	case extent < block || extent > maxExtentSize || bits.OnesCount64(uint64(extent)) != 1:
		return fmt.Errorf("%w: extent size %d must be a power of two from the bitmap block %d to %d", ErrGeometry, extent, block, maxExtentSize)
	case ceilDiv(size, block) > MaxBlocks:
		return fmt.Errorf("%w: disk size %d in blocks of %d needs more than %d bits", ErrGeometry, size, block, MaxBlocks)
	}
	return nil
}

func putHeader(b []byte, magic string) []byte {
	b = append(b, magic...)
	return binary.LittleEndian.AppendUint32(b, formatVersion)
}

// checkFrame verifies magic, version, exact length and CRC, and returns the body.
func checkFrame(data []byte, magic, what string, wantLen func(body []byte) (int, error)) ([]byte, error) {
	if len(data) < headerLen+crcLen {
		return nil, fmt.Errorf("%w: %s: %d bytes is shorter than a header", ErrCorrupt, what, len(data))
	}
	if string(data[:8]) != magic {
		return nil, fmt.Errorf("%w: %s: bad magic %q", ErrCorrupt, what, data[:8])
	}
	if v := binary.LittleEndian.Uint32(data[8:12]); v != formatVersion {
		return nil, fmt.Errorf("%w: %s: unknown version %d", ErrCorrupt, what, v)
	}
	body := data[headerLen : len(data)-crcLen]
	n, err := wantLen(body)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, what, err)
	}
	if len(data) != n {
		return nil, fmt.Errorf("%w: %s: %d bytes, header says %d (torn or truncated)", ErrCorrupt, what, len(data), n)
	}
	sum := binary.LittleEndian.Uint32(data[len(data)-crcLen:])
	if got := crc(data[:len(data)-crcLen]); got != sum {
		return nil, fmt.Errorf("%w: %s: checksum %08x, stored %08x", ErrCorrupt, what, got, sum)
	}
	return body, nil
}

func finish(b []byte) []byte {
	return binary.LittleEndian.AppendUint32(b, crc(b))
}

// ---- meta ----

func validStateString(s string) error {
	if len(s) > maxStateString {
		return fmt.Errorf("%q is longer than %d bytes", s, maxStateString)
	}
	for _, r := range s {
		if r > unicode.MaxASCII || !unicode.IsPrint(r) {
			return fmt.Errorf("%q has a non-printable or non-ASCII character", s)
		}
	}
	return nil
}

func encodeMeta(m Meta) []byte {
	b := make([]byte, 0, maxMetaLen)
	b = putHeader(b, metaMagic)
	le := binary.LittleEndian
	b = le.AppendUint64(b, m.NodeID)
	b = le.AppendUint64(b, uint64(m.Size))
	b = le.AppendUint64(b, uint64(m.BitmapBlock))
	b = le.AppendUint64(b, uint64(m.ExtentSize))
	b = le.AppendUint64(b, m.UUIDs.Current)
	b = le.AppendUint64(b, m.UUIDs.Bitmap)
	b = le.AppendUint64(b, m.UUIDs.History[0])
	b = le.AppendUint64(b, m.UUIDs.History[1])
	b = le.AppendUint64(b, m.PeerNodeID)
	b = le.AppendUint64(b, 0) // reserved
	b = le.AppendUint32(b, m.Flags)
	b = append(b, byte(len(m.Role)))
	b = append(b, m.Role...)
	b = append(b, byte(len(m.Disk)))
	b = append(b, m.Disk...)
	return finish(b)
}

// decodeMeta parses a meta file. Any defect gives an error wrapping ErrCorrupt.
func decodeMeta(data []byte) (Meta, error) {
	var m Meta
	if len(data) > maxMetaLen {
		return m, fmt.Errorf("%w: meta: %d bytes, at most %d", ErrCorrupt, len(data), maxMetaLen)
	}
	body, err := checkFrame(data, metaMagic, "meta", func(body []byte) (int, error) {
		if len(body) < metaBodyLen+1 {
			return 0, fmt.Errorf("body of %d bytes is too short", len(body))
		}
		rl := int(body[metaBodyLen])
		if rl > maxStateString || len(body) < metaBodyLen+1+rl+1 {
			return 0, fmt.Errorf("bad role length %d", rl)
		}
		dl := int(body[metaBodyLen+1+rl])
		if dl > maxStateString {
			return 0, fmt.Errorf("bad disk state length %d", dl)
		}
		return headerLen + metaBodyLen + 1 + rl + 1 + dl + crcLen, nil
	})
	if err != nil {
		return m, err
	}
	le := binary.LittleEndian
	u := func(i int) uint64 { return le.Uint64(body[8*i:]) }
	m.NodeID = u(0)
	m.Size = int64(u(1))
	m.BitmapBlock = int64(u(2))
	m.ExtentSize = int64(u(3))
	m.UUIDs.Current = u(4)
	m.UUIDs.Bitmap = u(5)
	m.UUIDs.History[0] = u(6)
	m.UUIDs.History[1] = u(7)
	m.PeerNodeID = u(8)
	// u(9) is reserved.
	m.Flags = le.Uint32(body[80:])
	rest := body[metaBodyLen:]
	rl := int(rest[0])
	m.Role = string(rest[1 : 1+rl])
	m.Disk = string(rest[2+rl:])
	if err := validGeometry(m.Size, m.BitmapBlock, m.ExtentSize); err != nil {
		return Meta{}, fmt.Errorf("%w: meta: %v", ErrCorrupt, err)
	}
	if err := validStateString(m.Role); err != nil {
		return Meta{}, fmt.Errorf("%w: meta: role %v", ErrCorrupt, err)
	}
	if err := validStateString(m.Disk); err != nil {
		return Meta{}, fmt.Errorf("%w: meta: disk state %v", ErrCorrupt, err)
	}
	return m, nil
}

// ---- bitmap ----

// The bitmap is stored in chunks of chunkWords words, chunk i in the file
// "bitmap.i", so that persisting the bits of one extent rewrites one small
// file, not the whole bitmap. Each chunk file repeats the geometry and its
// place, and is checked against what the store expects.

// bmChunk describes one chunk: words [first, first+count) of nwords.
type bmChunk struct {
	size, block int64 // disk geometry
	nwords      int64 // words of the whole bitmap
	chunkWords  int64 // words per chunk (the last chunk may be shorter)
	first       int64 // first word of this chunk
}

func (c bmChunk) count() int64 { return min(c.chunkWords, c.nwords-c.first) }

func bmFileLen(count int64) int64 { return headerLen + bmBodyLen + 8*count + crcLen }

// encodeBitmapChunk encodes words (len c.count()) as chunk c.
func encodeBitmapChunk(c bmChunk, words []uint64) []byte {
	b := make([]byte, 0, bmFileLen(int64(len(words))))
	b = putHeader(b, bmMagic)
	le := binary.LittleEndian
	for _, v := range []int64{c.size, c.block, c.nwords, c.chunkWords, c.first, int64(len(words))} {
		b = le.AppendUint64(b, uint64(v))
	}
	for _, w := range words {
		b = le.AppendUint64(b, w)
	}
	return finish(b)
}

// decodeBitmapChunk parses the file of chunk c into dst (len c.count()). dst
// is unchanged on error; any defect wraps ErrCorrupt.
func decodeBitmapChunk(data []byte, c bmChunk, dst []uint64) error {
	count := c.count()
	body, err := checkFrame(data, bmMagic, "bitmap", func(body []byte) (int, error) {
		if len(body) < bmBodyLen {
			return 0, fmt.Errorf("body of %d bytes is too short", len(body))
		}
		le := binary.LittleEndian
		var got [6]int64
		for i := range got {
			got[i] = int64(le.Uint64(body[8*i:]))
		}
		if want := [6]int64{c.size, c.block, c.nwords, c.chunkWords, c.first, count}; got != want {
			return 0, fmt.Errorf("header (size, block, words, chunk words, first, count) %v, expected %v", got, want)
		}
		return int(bmFileLen(count)), nil
	})
	if err != nil {
		return err
	}
	words := body[bmBodyLen:]
	if c.first+count == c.nwords { // the last chunk: no bits beyond the last block
		nbits := ceilDiv(c.size, c.block)
		var tail uint64
		if r := nbits & 63; r != 0 {
			tail = ^uint64(0) << uint(r)
		}
		if count > 0 && binary.LittleEndian.Uint64(words[8*(count-1):])&tail != 0 {
			return fmt.Errorf("%w: bitmap: bits set beyond the last block", ErrCorrupt)
		}
	}
	for i := range dst {
		dst[i] = binary.LittleEndian.Uint64(words[8*i:])
	}
	return nil
}

// ---- activity log ----

// alState is the content of the activity-log file.
type alState struct {
	seq     uint64   // incremented on every write
	clean   bool     // written by Close: nothing may differ beyond the bitmap
	extents []uint64 // extent numbers, each < number of extents of the disk
}

func alFileLen(n int64) int64 { return headerLen + alBodyLen + 8*n + crcLen }

func encodeAL(size, extent int64, st alState) []byte {
	b := make([]byte, 0, alFileLen(int64(len(st.extents))))
	b = putHeader(b, alMagic)
	le := binary.LittleEndian
	var flags uint32
	if st.clean {
		flags |= alFlagClean
	}
	b = le.AppendUint32(b, flags)
	b = le.AppendUint64(b, st.seq)
	b = le.AppendUint64(b, uint64(size))
	b = le.AppendUint64(b, uint64(extent))
	b = le.AppendUint32(b, uint32(len(st.extents)))
	for _, e := range st.extents {
		b = le.AppendUint64(b, e)
	}
	return finish(b)
}

// decodeAL parses an activity-log file of a disk of size bytes in extents of
// extent bytes. Every extent number is checked against the disk; any defect
// wraps ErrCorrupt.
func decodeAL(data []byte, size, extent int64) (alState, error) {
	var st alState
	nExt := ceilDiv(size, extent)
	body, err := checkFrame(data, alMagic, "activity log", func(body []byte) (int, error) {
		if len(body) < alBodyLen {
			return 0, fmt.Errorf("body of %d bytes is too short", len(body))
		}
		le := binary.LittleEndian
		if f := le.Uint32(body); f&^alFlagClean != 0 {
			return 0, fmt.Errorf("unknown flags %#x", f)
		}
		if s, e := int64(le.Uint64(body[12:])), int64(le.Uint64(body[20:])); s != size || e != extent {
			return 0, fmt.Errorf("written for size %d extent %d, expected size %d extent %d", s, e, size, extent)
		}
		n := int64(le.Uint32(body[28:]))
		if n > nExt {
			return 0, fmt.Errorf("%d extents on a disk of %d", n, nExt)
		}
		return int(alFileLen(n)), nil
	})
	if err != nil {
		return st, err
	}
	le := binary.LittleEndian
	st.clean = le.Uint32(body)&alFlagClean != 0
	st.seq = le.Uint64(body[4:])
	n := int(le.Uint32(body[28:]))
	st.extents = make([]uint64, n)
	for i := range n {
		e := le.Uint64(body[alBodyLen+8*i:])
		if e >= uint64(nExt) {
			return alState{}, fmt.Errorf("%w: activity log: extent %d beyond the disk's %d", ErrCorrupt, e, nExt)
		}
		st.extents[i] = e
	}
	if st.clean && n != 0 {
		return alState{}, fmt.Errorf("%w: activity log: marked clean with %d extents", ErrCorrupt, n)
	}
	return st, nil
}
