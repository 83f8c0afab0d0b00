package bitmap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

// encodeBitmap and decodeBitmap handle a bitmap of at most defaultChunkWords
// words, which is one chunk file.
func encodeBitmap(size, block int64, words []uint64) []byte {
	return encodeBitmapChunk(bmChunk{size: size, block: block, nwords: int64(len(words)), chunkWords: defaultChunkWords}, words)
}

func decodeBitmap(data []byte, size, block int64, dst []uint64) error {
	return decodeBitmapChunk(data, bmChunk{size: size, block: block, nwords: int64(len(dst)), chunkWords: defaultChunkWords}, dst)
}

func sampleMeta() Meta {
	return Meta{
		NodeID: 0x1122334455667788, Size: 1 << 30, BitmapBlock: 4096, ExtentSize: 4 << 20,
		UUIDs:      UUIDs{Current: 7, Bitmap: 6, History: [2]uint64{5, 4}},
		Role:       RolePrimary,
		Disk:       DiskUpToDate,
		PeerNodeID: 99,
		Flags:      1<<0 | 1<<2,
	}
}

func TestMetaRoundTrip(t *testing.T) {
	for _, m := range []Meta{
		sampleMeta(),
		{NodeID: 1, Size: 513, BitmapBlock: 512, ExtentSize: 512},
		{NodeID: 1, Size: 1 << 40, BitmapBlock: 1 << 16, ExtentSize: 1 << 30, Role: strings.Repeat("x", 32), Disk: ""},
	} {
		data := encodeMeta(m)
		got, err := decodeMeta(data)
		if err != nil {
			t.Fatalf("decode(encode(%+v)): %v", m, err)
		}
		if got != m {
			t.Fatalf("round trip %+v -> %+v", m, got)
		}
	}
}

// corruptions returns damaged variants of a valid file, each with a name.
func corruptions(valid []byte) map[string][]byte {
	flip := func(i int) []byte {
		d := bytes.Clone(valid)
		d[i] ^= 0x40
		return d
	}
	reCRC := func(d []byte) []byte { // a wrong field with a matching checksum
		binary.LittleEndian.PutUint32(d[len(d)-4:], crc(d[:len(d)-4]))
		return d
	}
	badVersion := bytes.Clone(valid)
	badVersion[8] = 2
	return map[string][]byte{
		"empty":            {},
		"truncated header": valid[:6],
		"torn half":        valid[:len(valid)/2],
		"missing crc":      valid[:len(valid)-4],
		"extra byte":       append(bytes.Clone(valid), 0),
		"bad magic":        flip(0),
		"body bit flip":    flip(headerLen + 1),
		"crc bit flip":     flip(len(valid) - 1),
		"bad version":      reCRC(badVersion),
		"zeroes":           make([]byte, len(valid)),
	}
}

func TestDecodeMetaRejectsDamage(t *testing.T) {
	valid := encodeMeta(sampleMeta())
	for name, d := range corruptions(valid) {
		if _, err := decodeMeta(d); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: decodeMeta = %v, want ErrCorrupt", name, err)
		}
	}
	// Valid frame, invalid fields.
	for name, m := range map[string]Meta{
		"zero size":      {Size: 0, BitmapBlock: 4096, ExtentSize: 4096},
		"odd block":      {Size: 1 << 20, BitmapBlock: 4095, ExtentSize: 1 << 20},
		"extent < block": {Size: 1 << 20, BitmapBlock: 4096, ExtentSize: 2048},
		"bad role":       {Size: 1 << 20, BitmapBlock: 4096, ExtentSize: 4096, Role: "a\x00b"},
	} {
		if _, err := decodeMeta(encodeMeta(m)); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: decodeMeta = %v, want ErrCorrupt", name, err)
		}
	}
}

func TestDecodeBitmapRejectsDamage(t *testing.T) {
	size, block := int64(130*512+1), int64(512)
	words := make([]uint64, 3)
	words[0], words[2] = 0xf0f0, 0x3
	valid := encodeBitmap(size, block, words)
	got := make([]uint64, 3)
	if err := decodeBitmap(valid, size, block, got); err != nil || got[0] != 0xf0f0 || got[2] != 3 {
		t.Fatalf("valid: %v %v", err, got)
	}
	for name, d := range corruptions(valid) {
		if err := decodeBitmap(d, size, block, make([]uint64, 3)); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: decodeBitmap = %v, want ErrCorrupt", name, err)
		}
	}
	if err := decodeBitmap(valid, size+512, block, make([]uint64, 3)); !errors.Is(err, ErrCorrupt) {
		t.Errorf("other size: %v", err)
	}
	if err := decodeBitmap(valid, size, 1024, make([]uint64, 2)); !errors.Is(err, ErrCorrupt) {
		t.Errorf("other block: %v", err)
	}
	words[2] = 1 << 5 // past block 130
	if err := decodeBitmap(encodeBitmap(size, block, words), size, block, make([]uint64, 3)); !errors.Is(err, ErrCorrupt) {
		t.Errorf("tail bits: %v", err)
	}
}

func TestDecodeALRejectsDamage(t *testing.T) {
	size, ext := int64(64<<20), int64(4<<20)
	valid := encodeAL(size, ext, alState{seq: 9, extents: []uint64{3, 15, 0}})
	st, err := decodeAL(valid, size, ext)
	if err != nil || st.seq != 9 || len(st.extents) != 3 || st.extents[1] != 15 || st.clean {
		t.Fatalf("valid: %v %+v", err, st)
	}
	for name, d := range corruptions(valid) {
		if _, err := decodeAL(d, size, ext); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: decodeAL = %v, want ErrCorrupt", name, err)
		}
	}
	for name, d := range map[string][]byte{
		"extent beyond disk": encodeAL(size, ext, alState{extents: []uint64{16}}),
		"clean with extents": encodeAL(size, ext, alState{clean: true, extents: []uint64{1}}),
		"other extent size":  encodeAL(size, ext*2, alState{}),
		"count beyond disk":  encodeAL(size, ext, alState{extents: make([]uint64, 17)}),
	} {
		if _, err := decodeAL(d, size, ext); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: decodeAL = %v, want ErrCorrupt", name, err)
		}
	}
}

// TestCorruptFileMeansAllDirty: every kind of damage to any file makes Open
// mark the whole disk dirty and report it, never clean; the next Open still
// finds it all dirty.
func TestCorruptFileMeansAllDirty(t *testing.T) {
	geo := Options{Size: 64*tMiB + 512, ALExtents: 8}
	base := NewMemFS()
	s := openMem(t, base, geo)
	m := s.Meta()
	m.Disk = DiskUpToDate
	if err := s.SaveMeta(m); err != nil {
		t.Fatal(err)
	}
	if err := s.BeginWrite(0, 4096); err != nil {
		t.Fatal(err)
	}
	s.EndWrite(0, 4096)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for _, file := range []string{MetaFile, BitmapFile + ".0", ALFile} {
		valid, _ := base.File(filepath.Join(tDir, file))
		damages := corruptions(valid)
		damages["missing"] = nil
		for name, d := range damages {
			t.Run(file+"/"+name, func(t *testing.T) {
				fsys := base.Reboot()
				fsys.SetFile(filepath.Join(tDir, file), d)
				s := openMem(t, fsys, geo)
				_, corrupt := s.Recovered()
				all := s.Bitmap().Blocks()
				if !corrupt || s.Bitmap().DirtyBlocks() != all {
					t.Fatalf("corrupt=%v, %d of %d blocks dirty", corrupt, s.Bitmap().DirtyBlocks(), all)
				}
				if r := s.Recovery(); len(r.CorruptFiles) == 0 || !strings.HasPrefix(r.CorruptFiles[0], file) {
					t.Fatalf("CorruptFiles = %v", r.CorruptFiles)
				}
				if file == MetaFile && (s.Meta().Disk != DiskInconsistent || s.Meta().NodeID == m.NodeID) {
					t.Fatalf("lost meta gave %+v, want a fresh Inconsistent identity", s.Meta())
				}
				// The all-dirty state is durable: a crash now keeps it.
				s2 := openMem(t, fsys.Reboot(), geo)
				if s2.Bitmap().DirtyBlocks() != all {
					t.Fatalf("after reopen %d of %d dirty", s2.Bitmap().DirtyBlocks(), all)
				}
			})
		}
	}
}

func TestStaleTempFilesRemoved(t *testing.T) {
	fsys := NewMemFS()
	s := openMem(t, fsys, Options{Size: 16 * tMiB})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	fsys = fsys.Reboot()
	fsys.SetFile(filepath.Join(tDir, ".bitmap.012345"), []byte("half"))
	fsys.SetFile(filepath.Join(tDir, ".al-9"), []byte("half"))
	fsys.SetFile(filepath.Join(tDir, ".alx"), []byte("keep"))
	s2 := openMem(t, fsys, Options{})
	if _, c := s2.Recovered(); c {
		t.Fatal("temp files made Open report corruption")
	}
	for p, want := range map[string]bool{".bitmap.012345": false, ".al-9": false, ".alx": true} {
		if _, ok := fsys.File(filepath.Join(tDir, p)); ok != want {
			t.Errorf("%s present = %v, want %v", p, ok, want)
		}
	}
}

func FuzzDecodeMeta(f *testing.F) {
	valid := encodeMeta(sampleMeta())
	f.Add(valid)
	for _, d := range corruptions(valid) {
		f.Add(d)
	}
	f.Add(encodeMeta(Meta{Size: 1, BitmapBlock: 512, ExtentSize: 512}))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := decodeMeta(data)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		if validGeometry(m.Size, m.BitmapBlock, m.ExtentSize) != nil {
			t.Fatalf("accepted invalid geometry %+v", m)
		}
		if !bytes.Equal(encodeMeta(m), data) {
			t.Fatalf("accepted a non-canonical encoding")
		}
	})
}

func FuzzDecodeBitmap(f *testing.F) {
	valid := encodeBitmap(100*512+3, 512, []uint64{1, 0xff})
	f.Add(valid, int64(100*512+3), int64(512))
	for _, d := range corruptions(valid) {
		f.Add(d, int64(100*512+3), int64(512))
	}
	f.Add(encodeBitmap(1, 4096, []uint64{1}), int64(1), int64(4096))
	f.Fuzz(func(t *testing.T, data []byte, size, block int64) {
		if validGeometry(size, block, block) != nil || size > 1<<24 {
			return
		}
		words := make([]uint64, ceilDiv(ceilDiv(size, block), 64))
		if err := decodeBitmap(data, size, block, words); err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		if !bytes.Equal(encodeBitmap(size, block, words), data) {
			t.Fatalf("accepted a non-canonical encoding")
		}
	})
}

func FuzzDecodeAL(f *testing.F) {
	valid := encodeAL(64<<20, 4<<20, alState{seq: 3, extents: []uint64{1, 2, 15}})
	f.Add(valid, int64(64<<20), int64(4<<20))
	for _, d := range corruptions(valid) {
		f.Add(d, int64(64<<20), int64(4<<20))
	}
	f.Add(encodeAL(64<<20, 4<<20, alState{clean: true}), int64(64<<20), int64(4<<20))
	f.Fuzz(func(t *testing.T, data []byte, size, ext int64) {
		if validGeometry(size, 512, ext) != nil {
			return
		}
		st, err := decodeAL(data, size, ext)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		for _, e := range st.extents {
			if e >= uint64(ceilDiv(size, ext)) {
				t.Fatalf("accepted extent %d", e)
			}
		}
		if !bytes.Equal(encodeAL(size, ext, st), data) {
			t.Fatalf("accepted a non-canonical encoding")
		}
	})
}

// FuzzOpenGarbage plants arbitrary bytes as one metadata file of a store that
// had dirty state and checks Open never takes the disk for cleaner than it
// was: either the bytes are a valid file or the whole disk is dirty.
func FuzzOpenGarbage(f *testing.F) {
	geo := Options{Size: 8 << 20, BitmapBlock: 4096, ExtentSize: 1 << 20, ALExtents: 4}
	base := NewMemFS()
	s, err := Open(tDir, Options{Size: geo.Size, BitmapBlock: geo.BitmapBlock, ExtentSize: geo.ExtentSize, ALExtents: 4, FS: base})
	if err != nil {
		f.Fatal(err)
	}
	if err := s.BeginWrite(3<<20, 4096); err != nil {
		f.Fatal(err)
	}
	s.MarkOutOfSync(3<<20, 4096)
	s.EndWrite(3<<20, 4096)
	for i, name := range []string{MetaFile, BitmapFile + ".0", ALFile} {
		valid, _ := base.File(filepath.Join(tDir, name))
		f.Add(uint8(i), valid)
		for _, d := range corruptions(valid) {
			f.Add(uint8(i), d)
		}
	}
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		name := []string{MetaFile, BitmapFile + ".0", ALFile}[which%3]
		fsys := base.Reboot()
		fsys.SetFile(filepath.Join(tDir, name), data)
		opt := geo
		opt.FS = fsys
		s, err := Open(tDir, opt)
		if err != nil {
			if errors.Is(err, ErrGeometry) {
				return // a valid meta of another geometry: refused, nothing touched
			}
			t.Fatalf("Open: %v", err)
		}
		bm := s.Bitmap()
		_, corrupt := s.Recovered()
		var valid bool
		switch name {
		case MetaFile:
			_, err = decodeMeta(data)
		case BitmapFile + ".0":
			err = decodeBitmap(data, geo.Size, geo.BitmapBlock, make([]uint64, bm.NumWords()))
		case ALFile:
			_, err = decodeAL(data, geo.Size, geo.ExtentSize)
		}
		valid = err == nil
		if !valid && (!corrupt || bm.DirtyBlocks() != bm.Blocks()) {
			t.Fatalf("garbage %s: corrupt=%v, %d of %d dirty", name, corrupt, bm.DirtyBlocks(), bm.Blocks())
		}
		if valid && corrupt {
			t.Fatalf("valid %s reported corrupt", name)
		}
		orig, _ := base.File(filepath.Join(tDir, name))
		if bytes.Equal(data, orig) && !bm.IsSet(3<<20, 1) {
			t.Fatal("dirty block lost with the original files")
		}
	})
}
