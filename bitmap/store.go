package bitmap

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"math/bits"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// Defaults, from DRBD.
const (
	DefaultBitmapBlock = 4 << 10
	DefaultExtentSize  = 4 << 20
	DefaultALExtents   = 1237
)

// Names of the files in the metadata directory.
const (
	MetaFile   = "meta"
	BitmapFile = "bitmap" // chunk i is the file "bitmap.i"
	ALFile     = "al"
	LockFile   = "lock" // see LockDir
)

// Values of Meta.Role and Meta.Disk used by urbd.
const (
	RolePrimary   = "Primary"
	RoleSecondary = "Secondary"

	DiskUpToDate     = "UpToDate"
	DiskInconsistent = "Inconsistent"
	DiskOutdated     = "Outdated"
)

// UUIDs are the generation identifiers that decide the resync direction.
type UUIDs struct {
	Current uint64    // current data generation
	Bitmap  uint64    // generation at which the bitmap started recording, 0 if none
	History [2]uint64 // older generations, newest first
}

// Meta is the resource's identity and generation state, persisted in DIR/meta.
// Size, BitmapBlock and ExtentSize are the geometry; they never change for the
// life of the metadata.
type Meta struct {
	NodeID      uint64
	Size        int64
	BitmapBlock int64
	ExtentSize  int64
	UUIDs       UUIDs
	Role        string // RolePrimary/RoleSecondary as last set by the operator; at most 32 printable ASCII bytes
	Disk        string // DiskUpToDate, DiskInconsistent or DiskOutdated; at most 32 printable ASCII bytes
	PeerNodeID  uint64
	Flags       uint32 // the caller's bits (replica: was Primary, stopped cleanly); stored, never interpreted
}

// Options configure Open. Zero values take defaults: BitmapBlock and
// ExtentSize the stored values (or DefaultBitmapBlock/DefaultExtentSize on
// creation), ALExtents DefaultALExtents, FS OSFS(). Size 0 takes the stored
// size and is an error on creation.
type Options struct {
	Size, BitmapBlock, ExtentSize int64
	ALExtents                     int
	FS                            FS
	// SyncData makes every data write that completed so far durable (an
	// fdatasync of the data disk; a replica also flushes its peer's). The
	// store calls it before it writes an activity log that drops extents
	// (eviction, Sweep, Close): once out of the log, an extent's writes
	// are recorded nowhere, so a power cut must not be able to take them
	// from a page cache. Eviction and Sweep call it without holding the
	// store, so it may use the store (mark blocks, persist the bitmap);
	// Close calls it holding the store. nil: the caller keeps the data
	// durable itself.
	SyncData func() error
	// Grow accepts a Size larger than the stored one: the disk was grown
	// (lvextend on both nodes). The metadata grows to Size, every block from
	// the old end on is marked out of sync (its contents differ between the
	// nodes until a resync copies them), and Recovery.GrownFrom tells the old
	// size. A smaller Size is ErrGeometry, with or without Grow.
	Grow bool

	chunkWords int // bitmap words per chunk file; 0 is defaultChunkWords (tests use small chunks)
}

// Recovery is what Open found in the metadata directory.
type Recovery struct {
	Created      bool     // the directory had no metadata; it was created
	Clean        bool     // the previous run ended with Close (nothing beyond the bitmap may differ)
	ALExtents    int      // extents found in the activity log after an unclean shutdown, all marked dirty
	Corrupt      bool     // a file was torn, truncated, corrupt or missing: the whole disk was marked dirty
	CorruptFiles []string // which files, with the reason
	GrownFrom    int64    // the stored disk size before Options.Grow grew it; 0: not grown
}

// Extent state word, one per extent of the disk, changed only with atomic
// compare-and-swap:
//
//	bits 0..31  writes in flight (BeginWrite without EndWrite yet)
//	bit  32     hot: the extent is in the activity log on disk
//	bit  33     referenced since the clock hand last passed (eviction order)
//	bit  34     touched since the previous Sweep
//
// Only the hot bit gates the fast path: a pin (inflight+1) is taken only on a
// hot extent, and the hot bit is cleared (eviction, Sweep, Close) only when
// no write is in flight, by CAS, so a pin and an eviction never both succeed.
// A state that is not hot changes only with Store.mu held.
const (
	stInflight uint64 = 1<<32 - 1
	stHot      uint64 = 1 << 32
	stRef      uint64 = 1 << 33
	stTouched  uint64 = 1 << 34
	stFresh           = stHot | stRef | stTouched
)

// Store is the crash-safe metadata of one resource: Meta, the out-of-sync
// bitmap and the activity log, in one directory. All methods are safe for
// concurrent use; see doc.go for the ordering rules.
type Store struct {
	dir      string
	fs       FS
	size     int64
	block    int64
	extent   int64
	extShift uint  // log2(extent)
	bitShift uint  // log2(extent/block): bits per extent = 1<<bitShift
	nExt     int64 // extents of the disk
	capacity int   // ALExtents

	chunkWords int64 // bitmap words per chunk file
	nChunks    int

	bm       *Bitmap
	st       []atomic.Uint64              // per-extent state, see stHot
	syncData atomic.Pointer[func() error] // Options.SyncData; see SetSyncData

	// Data syncs and the extents they cover (ordering rule 3). A sync
	// starts by advancing epoch; EndWrite records in ended the epoch it
	// saw, so a write recorded below a sync's epoch ended before that sync
	// began, and once the sync succeeded covered rises to its epoch. An
	// extent may leave the log only when ended[e] < covered.
	ended   []atomic.Uint64 // per extent: the highest epoch an EndWrite saw
	epoch   atomic.Uint64
	covered atomic.Uint64

	waiters  atomic.Int64 // BeginWrite calls in the slow path; EndWrite wakes them
	inUse    atomic.Int64 // extents with writes in flight (BusyExtents)
	outside  atomic.Bool  // bits were set outside hot extents since the last bitmap write
	alWrites atomic.Uint64
	bmWrites atomic.Uint64

	metaMu sync.Mutex // serialises SaveMeta; guards meta
	meta   Meta

	mu        sync.Mutex
	cv        sync.Cond      // on mu; broadcast after every metadata round and when an extent goes idle while waiters > 0
	busy      bool           // a metadata write (AL or bitmap) is running; only its runner changes members/disk
	syncing   bool           // a BeginWrite runs the data sync that eviction needs (one at a time)
	needSync  bool           // the last round found idle extents that only a data sync lets go
	closed    bool           // Close has started
	members   []uint64       // extents in the activity log on disk, in clock order
	memberIdx map[uint64]int // extent -> index in members
	hand      int            // clock hand into members
	want      map[uint64]int // extent -> granted BeginWrite calls not yet pinned (never evicted while > 0)
	queue     []*request     // waiting BeginWrite calls, FIFO
	disk      []uint64       // bitmap words known durable (a subset of the file on disk)
	alSeq     uint64         // sequence number of the last activity log written
	rec       Recovery
	opt       Options // as opened, for Grow
}

// request is one BeginWrite waiting in the slow path; guarded by Store.mu.
type request struct {
	first, last int64 // extents
	granted     bool  // a round added its extents; they stay in the log (Store.want) until it pins them
	err         error // set when a metadata round that included it failed
}

// Open loads the metadata in dir, or creates it (new NodeID, Disk
// "Inconsistent", empty bitmap, empty activity log) when dir holds none. A
// geometry that differs from the stored one is an error wrapping ErrGeometry
// naming both (a *SizeError for the disk size), and nothing is written;
// only Options.Grow accepts a larger disk, and grows the metadata to it.
// After an unclean shutdown every block of every extent in the activity log
// is marked dirty; a torn, truncated, corrupt or missing file marks the
// whole disk dirty (and a lost meta gets a fresh identity with Disk
// "Inconsistent"). Either is reported by Recovered. Open then makes that
// state durable (bitmap, then an empty activity log) before returning, so a
// crash right after Open loses nothing.
func Open(dir string, opt Options) (*Store, error) {
	fsys := opt.FS
	if fsys == nil {
		fsys = OSFS()
	}
	if opt.ALExtents == 0 {
		opt.ALExtents = DefaultALExtents
	}
	if opt.ALExtents < 1 || opt.ALExtents > 1<<20 {
		return nil, fmt.Errorf("%w: al-extents %d must be from 1 to %d", ErrInvalid, opt.ALExtents, 1<<20)
	}
	if opt.Size < 0 || opt.BitmapBlock < 0 || opt.ExtentSize < 0 {
		return nil, fmt.Errorf("%w: negative size in %+v", ErrInvalid, opt)
	}
	if err := fsys.MkdirAll(dir); err != nil {
		return nil, fmt.Errorf("bitmap: create %s: %w", dir, err)
	}
	var rec Recovery
	corrupt := func(file string, err error) {
		rec.Corrupt = true
		rec.CorruptFiles = append(rec.CorruptFiles, fmt.Sprintf("%s: %v", file, err))
	}

	// Meta decides the geometry.
	var meta Meta
	haveMeta := false
	data, err := fsys.ReadFile(filepath.Join(dir, MetaFile), maxMetaLen)
	switch {
	case err == nil:
		meta, err = decodeMeta(data)
		if err != nil {
			corrupt(MetaFile, err)
		} else {
			haveMeta = true
		}
	case errors.Is(err, fs.ErrNotExist):
		// First creation, unless other files show metadata was here.
		for _, f := range []string{BitmapFile + ".0", ALFile} {
			if _, e := fsys.ReadFile(filepath.Join(dir, f), 0); !errors.Is(e, fs.ErrNotExist) {
				corrupt(MetaFile, errors.New("missing while "+f+" exists"))
				break
			}
		}
		rec.Created = !rec.Corrupt
	case errors.Is(err, ErrCorrupt):
		corrupt(MetaFile, err)
	default:
		return nil, fmt.Errorf("bitmap: read %s: %w", filepath.Join(dir, MetaFile), err)
	}
	grownFrom := int64(0)
	if haveMeta {
		check := opt
		check.Size = 0 // the size is checked below: it may grow
		if err := checkGeometry(meta, check); err != nil {
			return nil, fmt.Errorf("%w (metadata in %s)", err, dir)
		}
		switch {
		case opt.Size == 0 || opt.Size == meta.Size:
		case opt.Size > meta.Size && opt.Grow:
			if err := validGeometry(opt.Size, meta.BitmapBlock, meta.ExtentSize); err != nil {
				return nil, err
			}
			grownFrom = meta.Size // loaded at the stored size, then grown
		default:
			return nil, &SizeError{Disk: opt.Size, Stored: meta.Size, Dir: dir}
		}
	} else {
		meta = Meta{
			NodeID:      newNodeID(),
			Size:        opt.Size,
			BitmapBlock: orDefault(opt.BitmapBlock, DefaultBitmapBlock),
			ExtentSize:  orDefault(opt.ExtentSize, DefaultExtentSize),
			Disk:        DiskInconsistent,
		}
		if meta.Size == 0 {
			return nil, fmt.Errorf("%w: creating metadata in %s needs the disk size", ErrInvalid, dir)
		}
		if err := validGeometry(meta.Size, meta.BitmapBlock, meta.ExtentSize); err != nil {
			return nil, err
		}
	}

	s := newStore(dir, fsys, meta, opt.ALExtents, opt.chunkWords)
	s.SetSyncData(opt.SyncData)
	s.opt = opt
	removeTemps(fsys, dir)

	// The bitmap and the activity log.
	alDirty := false // the AL needs rewriting
	bmDirty := false // the bitmap needs rewriting
	if rec.Created {
		alDirty, bmDirty = true, true
		for i := range s.disk { // every chunk differs: all are written
			s.disk[i] = ^uint64(0)
		}
	} else {
		words := make([]uint64, s.bm.NumWords())
		for i := range s.nChunks {
			c := s.chunk(i)
			p := filepath.Join(dir, chunkFile(i))
			data, err := fsys.ReadFile(p, bmFileLen(c.count()))
			if err == nil {
				err = decodeBitmapChunk(data, c, words[c.first:c.first+c.count()])
			}
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, ErrCorrupt) {
				corrupt(chunkFile(i), err)
				break
			} else if err != nil {
				return nil, fmt.Errorf("bitmap: read %s: %w", p, err)
			}
		}
		if !rec.Corrupt {
			s.bm.loadWords(words)
			copy(s.disk, words)
		}

		data, err = fsys.ReadFile(filepath.Join(dir, ALFile), alFileLen(s.nExt))
		var al alState
		if err == nil {
			al, err = decodeAL(data, s.size, s.extent)
		}
		switch {
		case err == nil:
			s.alSeq = al.seq
			rec.Clean = al.clean
			rec.ALExtents = len(al.extents)
			for _, e := range al.extents {
				s.bm.Set(int64(e)<<s.extShift, s.extent)
			}
			bmDirty = len(al.extents) > 0
		case errors.Is(err, fs.ErrNotExist) || errors.Is(err, ErrCorrupt):
			corrupt(ALFile, err)
		default:
			return nil, fmt.Errorf("bitmap: read %s: %w", filepath.Join(dir, ALFile), err)
		}
		alDirty = true // a fresh, empty, not-clean AL: Clean is true next time only after Close
		if rec.Corrupt {
			s.bm.SetAll()
			bmDirty = true
			// Nothing on disk is trusted: rewrite every chunk.
			for i := range s.disk {
				s.disk[i] = ^s.bm.words[i]
			}
		}
	}

	if grownFrom > 0 {
		s = s.grown(opt.Size, opt)
		meta = s.meta
		rec.GrownFrom = grownFrom
		alDirty, bmDirty = true, true
	}

	// Make the recovered state durable: bitmap first, then the AL without the
	// extents it covers, then (on creation, after losing it, or grown) meta,
	// which marks the directory complete. A crash while growing leaves meta
	// at the old size and the other files at the new one: the next Open
	// finds them corrupt and marks the whole disk.
	if bmDirty {
		if err := s.persistBitmapOpen(); err != nil {
			return nil, err
		}
	}
	if alDirty {
		if err := s.writeAL(alState{seq: s.alSeq + 1}); err != nil {
			return nil, err
		}
		s.alSeq++
	}
	if !haveMeta || grownFrom > 0 {
		if err := s.writeMeta(meta); err != nil {
			return nil, err
		}
	}
	s.rec = rec
	return s, nil
}

// grown returns a store like s, just opened, for a disk grown to size: the
// same bits and activity-log sequence, and every block from the block
// holding s's end on marked. Every chunk of it counts as differing from the
// disk (each chunk file names the disk size), so all are written.
func (s *Store) grown(size int64, opt Options) *Store {
	m := s.meta
	m.Size = size
	g := newStore(s.dir, s.fs, m, opt.ALExtents, opt.chunkWords)
	g.SetSyncData(opt.SyncData)
	g.opt = opt
	g.alSeq = s.alSeq
	words := make([]uint64, g.bm.NumWords())
	s.bm.snapshotInto(words[:s.bm.NumWords()])
	g.bm.loadWords(words)
	from := s.size / s.block * s.block
	g.bm.Set(from, size-from)
	g.bm.snapshotInto(words)
	for i, w := range words {
		g.disk[i] = ^w
	}
	return g
}

func orDefault(v, d int64) int64 {
	if v == 0 {
		return d
	}
	return v
}

func checkGeometry(m Meta, opt Options) error {
	var diffs []string
	if opt.Size != 0 && opt.Size != m.Size {
		diffs = append(diffs, fmt.Sprintf("disk size %d (stored %d)", opt.Size, m.Size))
	}
	if opt.BitmapBlock != 0 && opt.BitmapBlock != m.BitmapBlock {
		diffs = append(diffs, fmt.Sprintf("bitmap block %d (stored %d)", opt.BitmapBlock, m.BitmapBlock))
	}
	if opt.ExtentSize != 0 && opt.ExtentSize != m.ExtentSize {
		diffs = append(diffs, fmt.Sprintf("extent size %d (stored %d)", opt.ExtentSize, m.ExtentSize))
	}
	if len(diffs) > 0 {
		return fmt.Errorf("%w: requested %s", ErrGeometry, strings.Join(diffs, ", "))
	}
	return nil
}

func newNodeID() uint64 {
	var b [8]byte
	for {
		_, _ = rand.Read(b[:]) // never fails on Linux (Go 1.24+ crashes instead)
		if id := binary.LittleEndian.Uint64(b[:]); id != 0 {
			return id
		}
	}
}

func newStore(dir string, fsys FS, meta Meta, capacity, chunkWords int) *Store {
	if chunkWords <= 0 {
		chunkWords = defaultChunkWords
	}
	s := &Store{
		dir:       dir,
		fs:        fsys,
		size:      meta.Size,
		block:     meta.BitmapBlock,
		extent:    meta.ExtentSize,
		extShift:  uint(bits.TrailingZeros64(uint64(meta.ExtentSize))),
		bitShift:  uint(bits.TrailingZeros64(uint64(meta.ExtentSize / meta.BitmapBlock))),
		nExt:      ceilDiv(meta.Size, meta.ExtentSize),
		capacity:  capacity,
		meta:      meta,
		memberIdx: make(map[uint64]int),
		want:      make(map[uint64]int),
	}
	s.cv.L = &s.mu
	s.bm = New(meta.Size, meta.BitmapBlock)
	s.st = make([]atomic.Uint64, s.nExt)
	s.ended = make([]atomic.Uint64, s.nExt)
	s.epoch.Store(1)
	s.covered.Store(1) // no write ended yet
	s.disk = make([]uint64, s.bm.NumWords())
	s.chunkWords = int64(chunkWords)
	s.nChunks = int(ceilDiv(int64(len(s.disk)), s.chunkWords))
	return s
}

// chunk describes bitmap chunk i.
func (s *Store) chunk(i int) bmChunk {
	return bmChunk{size: s.size, block: s.block, nwords: int64(len(s.disk)), chunkWords: s.chunkWords, first: int64(i) * s.chunkWords}
}

func chunkFile(i int) string { return BitmapFile + "." + strconv.Itoa(i) }

// removeTemps deletes temp files left by writes interrupted by a crash
// (renameio names them "." + name + digits). Best effort.
func removeTemps(fsys FS, dir string) {
	names, err := fsys.ReadDir(dir)
	if err != nil {
		return
	}
	for _, n := range names {
		for _, p := range []string{"." + MetaFile, "." + BitmapFile + ".", "." + ALFile} {
			if rest, ok := strings.CutPrefix(n, p); ok && rest != "" {
				if _, err := strconv.ParseUint(strings.TrimPrefix(rest, "-"), 10, 64); err == nil {
					_ = fsys.Remove(filepath.Join(dir, n))
				}
			}
		}
	}
}

// Meta returns the current metadata.
func (s *Store) Meta() Meta {
	s.metaMu.Lock()
	defer s.metaMu.Unlock()
	return s.meta
}

// SaveMeta replaces the metadata; it is durable on return. The geometry fields
// must equal the store's (ErrGeometry), Role and Disk must be at most 32
// printable ASCII bytes (ErrInvalid). Calls are serialised.
func (s *Store) SaveMeta(m Meta) error {
	if m.Size != s.size || m.BitmapBlock != s.block || m.ExtentSize != s.extent {
		return fmt.Errorf("%w: meta with size %d block %d extent %d for a store of size %d block %d extent %d",
			ErrGeometry, m.Size, m.BitmapBlock, m.ExtentSize, s.size, s.block, s.extent)
	}
	if err := validStates(m); err != nil {
		return err
	}
	return s.writeMeta(m)
}

// validStates checks the strings of m that the format bounds.
func validStates(m Meta) error {
	if err := validStateString(m.Role); err != nil {
		return fmt.Errorf("%w: role %v", ErrInvalid, err)
	}
	if err := validStateString(m.Disk); err != nil {
		return fmt.Errorf("%w: disk state %v", ErrInvalid, err)
	}
	return nil
}

func (s *Store) writeMeta(m Meta) error {
	s.metaMu.Lock()
	defer s.metaMu.Unlock()
	p := filepath.Join(s.dir, MetaFile)
	if err := s.fs.WriteFileAtomic(p, encodeMeta(m)); err != nil {
		return fmt.Errorf("bitmap: write %s: %w", p, err)
	}
	s.meta = m
	return nil
}

// A note is a small file the layers above keep in the metadata directory,
// next to the metadata it belongs with (the replica's online verify
// results): at most maxNoteLen bytes, named by a lowercase word that is not
// one of the store's own files.
const maxNoteLen = 4 << 10

// notePath checks name and returns its path.
func (s *Store) notePath(name string) (string, error) {
	if name == "" || name == MetaFile || name == ALFile || strings.HasPrefix(name, BitmapFile) ||
		strings.TrimLeft(name, "abcdefghijklmnopqrstuvwxyz") != "" {
		return "", fmt.Errorf("%w: note name %q", ErrInvalid, name)
	}
	return filepath.Join(s.dir, name+".note"), nil
}

// SaveNote replaces the note name with data (at most 4 KiB); it is durable
// on return.
func (s *Store) SaveNote(name string, data []byte) error {
	p, err := s.notePath(name)
	if err != nil {
		return err
	}
	if len(data) > maxNoteLen {
		return fmt.Errorf("%w: note %s of %d bytes, limit %d", ErrInvalid, name, len(data), maxNoteLen)
	}
	if err := s.fs.WriteFileAtomic(p, data); err != nil {
		return fmt.Errorf("bitmap: write %s: %w", p, err)
	}
	return nil
}

// LoadNote returns the note name as last saved, or nil when there is none.
func (s *Store) LoadNote(name string) ([]byte, error) {
	p, err := s.notePath(name)
	if err != nil {
		return nil, err
	}
	data, err := s.fs.ReadFile(p, maxNoteLen)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("bitmap: read %s: %w", p, err)
	}
	return data, nil
}

// SetSyncData replaces Options.SyncData from now on, for a data disk that
// changed: a replica whose disk was taken out of service after an I/O error
// (Diskless) passes nil, since its data lives on the peer and its restart
// resyncs the whole disk, so the activity log no longer waits for that disk.
func (s *Store) SetSyncData(f func() error) {
	s.syncData.Store(&f)
}

// syncDataFn returns the current SyncData (nil: none).
func (s *Store) syncDataFn() func() error {
	if p := s.syncData.Load(); p != nil {
		return *p
	}
	return nil
}

// Bitmap is the live out-of-sync bitmap. Reading it and Set/Clear on it are
// fine; to keep the crash guarantees, mark writes through MarkOutOfSync and
// MarkInSync rather than through the Bitmap directly.
func (s *Store) Bitmap() *Bitmap { return s.bm }

// Recovered reports what Open found: how many activity-log extents were
// marked dirty after an unclean shutdown, and whether a file was corrupt or
// missing (the whole disk was marked dirty).
func (s *Store) Recovered() (alExtents int, corrupt bool) {
	return s.rec.ALExtents, s.rec.Corrupt
}

// Recovery is the full report of what Open found.
func (s *Store) Recovery() Recovery {
	r := s.rec
	r.CorruptFiles = append([]string(nil), r.CorruptFiles...)
	return r
}

// Counters are the numbers of activity-log and bitmap writes since Open
// (including the ones Open made).
func (s *Store) Counters() (alWrites, bmWrites uint64) {
	return s.alWrites.Load(), s.bmWrites.Load()
}

// ExtentSize is the activity-log extent size in bytes.
func (s *Store) ExtentSize() int64 { return s.extent }

// ALExtents is the activity-log capacity in extents.
func (s *Store) ALExtents() int { return s.capacity }

// BusyExtents is the number of extents with writes in flight: pinned by a
// BeginWrite whose EndWrite has not come yet (DRBD's activity-log extents
// "in use", which its congestion-extents compares). A write holds its
// extents until the peer answered it, so a slow peer raises this count.
func (s *Store) BusyExtents() int { return int(s.inUse.Load()) }

// HotExtents is the number of extents currently in the activity log.
func (s *Store) HotExtents() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.members)
}

// writeAL writes the activity log. Called by the single runner (busy, or Open).
func (s *Store) writeAL(st alState) error {
	p := filepath.Join(s.dir, ALFile)
	if err := s.fs.WriteFileAtomic(p, encodeAL(s.size, s.extent, st)); err != nil {
		return fmt.Errorf("bitmap: write %s: %w", p, err)
	}
	s.alWrites.Add(1)
	return nil
}

// changedChunksLocked lists the chunks where snap differs from what is known
// to be on disk. s.mu held (s.disk).
func (s *Store) changedChunksLocked(snap []uint64) []int {
	var out []int
	for i := range s.nChunks {
		c := s.chunk(i)
		if !slices.Equal(snap[c.first:c.first+c.count()], s.disk[c.first:c.first+c.count()]) {
			out = append(out, i)
		}
	}
	return out
}

// writeChunks writes the chunks of snap, in order, each as its own atomic
// file, and returns how many were written before an error. Called by the
// single runner without s.mu.
func (s *Store) writeChunks(snap []uint64, chunks []int) (int, error) {
	for n, i := range chunks {
		c := s.chunk(i)
		p := filepath.Join(s.dir, chunkFile(i))
		if err := s.fs.WriteFileAtomic(p, encodeBitmapChunk(c, snap[c.first:c.first+c.count()])); err != nil {
			return n, fmt.Errorf("bitmap: write %s: %w", p, err)
		}
		s.bmWrites.Add(1)
	}
	return len(chunks), nil
}

// applyChunksLocked records the outcome of writeChunks in s.disk: written
// chunks hold snap; the chunk that failed holds the old or the new content,
// so only bits in both are known durable.
func (s *Store) applyChunksLocked(snap []uint64, chunks []int, written int, err error) {
	for _, i := range chunks[:written] {
		c := s.chunk(i)
		copy(s.disk[c.first:c.first+c.count()], snap[c.first:c.first+c.count()])
	}
	if err != nil && written < len(chunks) {
		c := s.chunk(chunks[written])
		for w := c.first; w < c.first+c.count(); w++ {
			s.disk[w] &= snap[w]
		}
	}
}

// persistBitmapOpen writes the changed chunks during Open (no concurrency yet).
func (s *Store) persistBitmapOpen() error {
	snap := make([]uint64, len(s.disk))
	s.bm.snapshotInto(snap)
	chunks := s.changedChunksLocked(snap)
	n, err := s.writeChunks(snap, chunks)
	s.applyChunksLocked(snap, chunks, n, err)
	return err
}

// ---- out-of-sync marking ----

// MarkOutOfSync records in memory that [off, off+length) may differ from the
// peer. Called for a write the peer did not confirm, or any write while
// disconnected, before EndWrite for that write: the range's extents are then
// hot, and the bits become durable by the activity-log rules (persisted before
// the extent leaves the log). A range marked outside a BeginWrite/EndWrite
// window is durable only after the next PersistBitmap, Sweep or Close.
func (s *Store) MarkOutOfSync(off, length int64) {
	first, last, ok := s.extentsOf(off, length)
	if !ok {
		return
	}
	// Set before reading the hot bits: an eviction clears hot before it
	// reads the bits, so one of the two sees the other.
	s.bm.Set(off, length)
	for e := first; e <= last; e++ {
		if s.st[e].Load()&stHot == 0 {
			s.outside.Store(true)
			return
		}
	}
}

// MarkInSync records that [off, off+length) (block aligned) was copied to the
// peer. In memory only: the on-disk bitmap may keep the bits until the next
// bitmap write, which is safe (a superset).
func (s *Store) MarkInSync(off, length int64) {
	s.bm.Clear(off, length)
}

// extentsOf clips [off, off+length) to the disk and returns its extents.
func (s *Store) extentsOf(off, length int64) (first, last int64, ok bool) {
	if length <= 0 || off >= s.size {
		return 0, 0, false
	}
	if off < 0 {
		length += off
		off = 0
	}
	if length <= 0 {
		return 0, 0, false
	}
	end := s.size
	if length < s.size-off {
		end = off + length
	}
	return off >> s.extShift, (end - 1) >> s.extShift, true
}

// extentBitsLocked returns the bitmap bit range of extent e.
func (s *Store) extentBits(e int64) (first, last int64) {
	first = e << s.bitShift
	last = min(first+(1<<s.bitShift), s.bm.nbits) - 1
	return first, last
}

// extentDirty reports whether extent e has any bit set in memory.
func (s *Store) extentDirty(e int64) bool {
	first, last := s.extentBits(e)
	s.bm.mu.Lock()
	defer s.bm.mu.Unlock()
	return s.bm.anyBitsLocked(first, last)
}

// extentUnpersistedLocked reports whether extent e has a bit set in memory
// that is not in s.disk. s.mu must be held (s.disk).
func (s *Store) extentUnpersistedLocked(e int64) bool {
	first, last := s.extentBits(e)
	s.bm.mu.Lock()
	defer s.bm.mu.Unlock()
	found := false
	wordMasks(first, last, func(w int64, mask uint64) bool {
		found = s.bm.words[w]&^s.disk[w]&mask != 0
		return !found
	})
	return found
}

// Idle reports whether no write is in flight: every BeginWrite has had its
// EndWrite. Grow needs it.
func (s *Store) Idle() bool {
	for i := range s.st {
		if s.st[i].Load()&stInflight != 0 {
			return false
		}
	}
	return true
}

// Grow grows the metadata of a running resource to a disk grown to size
// bytes: it closes s and opens its directory again with Options.Grow, the
// way a start with --grow does, so the new part is marked out of sync, the
// same crash rules hold (a crash in between marks the whole disk), and
// Recovery.GrownFrom of the returned store tells the old size. The store's
// SyncData carries over. With clean the new part is taken as equal on both
// nodes (urbd resize --assume-clean): it is marked in sync again at once,
// down to the block holding the old end unless that block was marked
// before; the bitmap on disk may keep the marks until its next write (a
// superset, which is safe).
//
// The caller holds every write back: with a write in flight (Idle is false)
// Grow fails with ErrBusy and changes nothing. On success s is closed and
// the caller uses the returned store from then on. When the new store
// cannot be opened, Grow opens the directory again at the old size and
// returns that store with the error (metadata torn by the failure then
// marks the whole disk out of sync); when even that fails it returns nil
// and the error, and the metadata is unusable until the next start.
func (s *Store) Grow(size int64, clean bool) (*Store, error) {
	if size <= s.size {
		return nil, fmt.Errorf("%w: cannot grow a disk of %d bytes to %d", ErrGeometry, s.size, size)
	}
	if err := validGeometry(size, s.block, s.extent); err != nil {
		return nil, err
	}
	if !s.Idle() {
		return nil, ErrBusy
	}
	opt := s.opt
	opt.SyncData = nil
	if f := s.syncData.Load(); f != nil {
		opt.SyncData = *f
	}
	if err := s.Close(); err != nil {
		return s.reopen(opt, fmt.Errorf("bitmap: growing %s: %w", s.dir, err))
	}
	grown := opt
	grown.Size, grown.Grow = size, true
	g, err := Open(s.dir, grown)
	if err != nil {
		return s.reopen(opt, fmt.Errorf("bitmap: growing %s: %w", s.dir, err))
	}
	if clean {
		from := s.size / s.block * s.block // Open marked from here on
		if from < s.size && s.bm.IsSet(from, s.size-from) {
			from += s.block // the old end's block was marked before: keep it
		}
		if from < size {
			g.MarkInSync(from, size-from)
			_ = g.PersistBitmap() // on a failure the file keeps the marks: a superset
		}
	}
	return g, nil
}

// reopen opens s's directory at its old size after a failed Grow and
// returns it with cause (nil and both errors when that fails too).
func (s *Store) reopen(opt Options, cause error) (*Store, error) {
	opt.Size, opt.Grow = s.size, false
	r, err := Open(s.dir, opt)
	if err != nil {
		return nil, fmt.Errorf("%w; reopening at the old size: %w", cause, err)
	}
	return r, cause
}
