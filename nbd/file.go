package nbd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/urbd/urbd/internal/aiosync"
	"github.com/urbd/urbd/internal/bufpool"
	"github.com/urbd/urbd/internal/zeroes"
)

// ErrNotBlockStorage is wrapped by OpenFile for paths that are neither a
// regular file nor a block device.
var ErrNotBlockStorage = errors.New("nbd: not a regular file or block device")

// File is a Backend over a regular file or a block device. All methods may be
// called concurrently; reads and writes go straight to pread/pwrite on the
// descriptor, with no lock. Flush and fua writes share fdatasync calls (group
// commit, see Flush).
//
// A failed fdatasync is sticky: Linux may drop the dirty pages it could not
// write and report success on the next call, so once one fails every later
// Flush and fua write fails too (the export then answers EIO), and the
// operator must restart on a healthy disk.
type File struct {
	f        *os.File
	fd       int
	size     atomic.Int64 // the size served; Grow raises it
	readOnly bool
	blockDev bool
	discards bool // a block device that can discard (deviceDiscards)

	// sync performs one fdatasync; tests replace it to count calls.
	sync func() error
	// bgSync is sync for FlushBackground: through aio when the kernel
	// offers it (set up on first use), else sync.
	bgSync   func() error
	bgOnce   sync.Once
	bgSyncer *aiosync.Syncer

	// changes counts the modifying calls (write, trim, zeroes) that have
	// returned, plus one for whatever earlier processes left in the page
	// cache. A sync covers the changes counted before it started.
	changes atomic.Uint64

	mu      sync.Mutex
	cond    *sync.Cond // signalled when a sync completes; uses mu
	running bool       // a sync is in progress
	covers  uint64     // changes counted when the running sync started
	durable uint64     // changes counted when the last successful sync started
	waiting int        // callers blocked in Flush (for tests)
	syncErr error      // first failed sync; sticky
}

var _ Backend = (*File)(nil)

// fileZeroes is a shared read-only source for writing zeroes.
var fileZeroes = make([]byte, 1<<20)

// OpenFile opens a regular file or a block device as a Backend. The size is
// the file's size or, for a block device, BLKGETSIZE64. readOnly opens the
// path O_RDONLY and makes every write return ErrReadOnly. Close the File
// when no request uses it any more.
func OpenFile(path string, readOnly bool) (*File, error) {
	flags := os.O_RDWR
	if readOnly {
		flags = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flags|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("nbd: open disk: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("nbd: open disk: %w", err)
	}
	b := &File{f: f, fd: int(f.Fd()), readOnly: readOnly}
	switch {
	case fi.Mode().IsRegular():
	case fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0:
		b.blockDev = true
		b.discards = deviceDiscards(b.fd)
	default:
		f.Close()
		return nil, fmt.Errorf("%w: %s", ErrNotBlockStorage, path)
	}
	size, err := b.StorageSize()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("nbd: open disk %s: %w", path, err)
	}
	b.size.Store(size)
	b.sync = func() error { return unix.Fdatasync(b.fd) }
	b.cond = sync.NewCond(&b.mu)
	b.changes.Store(1)
	return b, nil
}

// Size returns the size in bytes served: the storage's size at open, or
// what Grow set since.
func (b *File) Size() int64 { return b.size.Load() }

// A Grower is a Backend whose storage may grow while it is open (a file
// extended, a logical volume grown with lvextend), and which can serve the
// larger size without being opened again.
type Grower interface {
	// StorageSize reads the size of the storage now, which may be more
	// than Size.
	StorageSize() (int64, error)
	// Grow makes the backend serve size bytes from now on: requests
	// up to size are accepted. size is at least Size and at most
	// StorageSize; Grow never shrinks.
	Grow(size int64) error
}

var _ Grower = (*File)(nil)

// StorageSize reads the file's size or, for a block device, BLKGETSIZE64.
func (b *File) StorageSize() (int64, error) {
	if !b.blockDev {
		var st unix.Stat_t
		if err := unix.Fstat(b.fd, &st); err != nil {
			return 0, fmt.Errorf("stat: %w", err)
		}
		return st.Size, nil
	}
	var sz uint64
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(b.fd), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&sz))); errno != 0 {
		return 0, fmt.Errorf("BLKGETSIZE64: %w", errno)
	}
	return int64(sz), nil
}

// Grow serves size bytes from now on; see Grower.
func (b *File) Grow(size int64) error {
	cur := b.size.Load()
	if size < cur {
		return fmt.Errorf("nbd: disk cannot shrink from %d to %d bytes", cur, size)
	}
	have, err := b.StorageSize()
	if err != nil {
		return fmt.Errorf("nbd: disk size: %w", err)
	}
	if size > have {
		return fmt.Errorf("nbd: disk holds %d bytes, cannot serve %d", have, size)
	}
	b.size.Store(size)
	return nil
}

// Close closes the descriptor. No method may be running or called after.
func (b *File) Close() error {
	if b.bgSyncer != nil {
		b.bgSyncer.Close()
	}
	return b.f.Close()
}

// ReadAt fills p from off with pread. Reading past the end of a file that
// shrank underneath returns an error wrapping io.ErrUnexpectedEOF.
func (b *File) ReadAt(_ context.Context, p []byte, off int64) error {
	for len(p) > 0 {
		n, err := unix.Pread(b.fd, p, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("nbd: read %d bytes at %d: %w", len(p), off, err)
		}
		if n == 0 {
			return fmt.Errorf("nbd: read %d bytes at %d: %w", len(p), off, io.ErrUnexpectedEOF)
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// Prefetch asks the kernel to start reading [off, off+length) into the page
// cache in the background (posix_fadvise WILLNEED), for a reader that knows
// what it will read next. It is only a hint: errors are ignored.
func (b *File) Prefetch(off, length int64) {
	_ = unix.Fadvise(b.fd, off, length, unix.FADV_WILLNEED)
}

// HasData reports whether [off, off+length) may hold data: false only when
// the file system says the whole range is a hole (lseek SEEK_DATA, which
// counts data still in the page cache), so that it reads as zeroes without
// being read. A block device, or a file system that cannot say, may hold
// data anywhere.
func (b *File) HasData(off, length int64) bool {
	if b.blockDev {
		return true
	}
	next, err := unix.Seek(b.fd, off, unix.SEEK_DATA)
	switch {
	case errors.Is(err, unix.ENXIO):
		return false // no data from off to the end of the file
	case err != nil:
		return true
	}
	return next < off+length
}

// WriteAt writes p at off with pwrite, then, if fua, flushes (group commit).
func (b *File) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if b.readOnly {
		return ErrReadOnly
	}
	if err := b.pwrite(p, off); err != nil {
		return err
	}
	if fua {
		return b.Flush(ctx)
	}
	return nil
}

func (b *File) pwrite(p []byte, off int64) error {
	defer b.changes.Add(1)
	for len(p) > 0 {
		n, err := unix.Pwrite(b.fd, p, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("nbd: write %d bytes at %d: %w", len(p), off, fileErrno(err))
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// fileErrno wraps ENOSPC, EDQUOT and EFBIG so the server answers ENOSPC.
func fileErrno(err error) error {
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) || errors.Is(err, unix.EFBIG) {
		return fmt.Errorf("%w: %w", ErrNoSpace, err)
	}
	return err
}

// rangeIoctl issues a block-device ioctl that takes a {start, length} pair
// (BLKDISCARD, BLKZEROOUT).
func (b *File) rangeIoctl(req uint, off, length int64) error {
	defer b.changes.Add(1)
	r := [2]uint64{uint64(off), uint64(length)}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(b.fd), uintptr(req), uintptr(unsafe.Pointer(&r))); errno != 0 {
		return errno
	}
	return nil
}

// Trim punches a hole (regular file) or issues BLKDISCARD (block device).
// Trim is advisory: a file system or device that cannot discard makes it a
// successful no-op.
func (b *File) Trim(ctx context.Context, off, length int64, fua bool) error {
	if b.readOnly {
		return ErrReadOnly
	}
	if length == 0 {
		return nil
	}
	var err error
	if b.blockDev {
		err = b.rangeIoctl(unix.BLKDISCARD, off, length)
	} else {
		err = b.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	}
	if err != nil && !fileUnsupported(err) {
		return fmt.Errorf("nbd: trim %d bytes at %d: %w", length, off, err)
	}
	if fua {
		return b.Flush(ctx)
	}
	return nil
}

// WriteZeroes makes the range read as zeroes: on a regular file with
// fallocate ZERO_RANGE when noHole (blocks stay allocated) or PUNCH_HOLE
// otherwise; on a block device with BLKZEROOUT, which keeps blocks
// allocated, or, without noHole, first with fallocate PUNCH_HOLE, which the
// kernel turns into a write of zeroes that may unmap (a loop device punches
// its file, a device that zeroes by unmapping frees its blocks) and refuses
// where the device cannot do that without writing zeroes. There, if the
// device can discard (so may be thin-provisioned, as a dm-thin volume), it
// zeroes only the parts that do not read as zeroes already
// (zeroWhereData), so that a thin volume's unprovisioned blocks stay
// unprovisioned; one that cannot discard (a plain disk) gets BLKZEROOUT
// at once. Where none of those is supported it writes zeroes.
func (b *File) WriteZeroes(ctx context.Context, off, length int64, fua, noHole bool) error {
	if b.readOnly {
		return ErrReadOnly
	}
	if length == 0 {
		return nil
	}
	var err error
	if b.blockDev && !noHole {
		err = b.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
		switch {
		case fileUnsupported(err) && b.discards:
			if err := b.zeroWhereData(off, length, b.zeroRange); err != nil {
				return err
			}
			err = nil
		case fileUnsupported(err):
			err = b.rangeIoctl(unix.BLKZEROOUT, off, length)
		}
	} else if b.blockDev {
		err = b.rangeIoctl(unix.BLKZEROOUT, off, length)
	} else if noHole {
		err = b.fallocate(unix.FALLOC_FL_ZERO_RANGE, off, length)
	} else {
		err = b.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
		if err != nil && fileUnsupported(err) {
			err = b.fallocate(unix.FALLOC_FL_ZERO_RANGE, off, length)
		}
	}
	if err := b.orWriteZeroes(err, off, length); err != nil {
		return err
	}
	if fua {
		return b.Flush(ctx)
	}
	return nil
}

// zeroWhereData makes [off, off+length) read as zeroes on a device that
// cannot zero by unmapping, such as a dm-thin volume, where writing zeroes
// would provision every block they cover: it reads the range and calls
// zero for each run of zeroes.Step pieces that holds data, leaving the
// pieces that read as zeroes already untouched. A piece that cannot be
// read is zeroed too (the write may repair it). The reads cost what
// writing the zeroes would, and save the writes where the range is zeroes
// already, as most of a new disk is when a resync or attach-disk fills it.
func (b *File) zeroWhereData(off, length int64, zero func(off, length int64) error) error {
	buf := bufpool.Get(int(min(length, int64(len(fileZeroes)))))
	defer bufpool.Put(buf)
	run := [2]int64{off, off} // pieces holding data, not zeroed yet
	for done := int64(0); done < length; {
		p := (*buf)[:min(length-done, int64(len(*buf)))]
		pieces := []zeroes.Piece{{Length: int64(len(p))}} // unreadable: data
		if b.ReadAt(context.Background(), p, off+done) == nil {
			pieces = zeroes.Split(p, zeroes.Step)
		}
		// What was read only to be looked at leaves the page cache, so
		// that the zeroes of a large volume do not push out what other
		// readers keep there.
		_ = unix.Fadvise(b.fd, off+done, int64(len(p)), unix.FADV_DONTNEED)
		for _, pc := range pieces {
			at := off + done + pc.Off
			if !pc.Zero {
				run[1] = at + pc.Length
				continue
			}
			if run[1] > run[0] {
				if err := zero(run[0], run[1]-run[0]); err != nil {
					return err
				}
			}
			run = [2]int64{at + pc.Length, at + pc.Length}
		}
		done += int64(len(p))
	}
	if run[1] > run[0] {
		return zero(run[0], run[1]-run[0])
	}
	return nil
}

// deviceDiscards reports whether the block device open as fd can discard,
// as sysfs says (queue/discard_max_bytes, which a partition finds in its
// disk's directory): only such a device can be thin-provisioned. When
// sysfs cannot say, it may.
func deviceDiscards(fd int) bool {
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil {
		return true
	}
	return sysfsDiscards(fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev)))
}

// sysfsDiscards is deviceDiscards for the device whose sysfs directory is
// dev.
func sysfsDiscards(dev string) bool {
	for _, p := range []string{dev + "/queue/discard_max_bytes", dev + "/../queue/discard_max_bytes"} {
		if v, err := os.ReadFile(p); err == nil {
			n, err := strconv.ParseUint(strings.TrimSpace(string(v)), 10, 64)
			return err != nil || n > 0
		}
	}
	return true
}

// zeroRange makes [off, off+length) of a block device read as zeroes with
// BLKZEROOUT, or by writing zeroes where the device refuses it.
func (b *File) zeroRange(off, length int64) error {
	return b.orWriteZeroes(b.rangeIoctl(unix.BLKZEROOUT, off, length), off, length)
}

// orWriteZeroes finishes a zeroing of [off, off+length) that returned err:
// where the file system or device does not support the call it writes the
// zeroes instead; another error is returned, saying what failed.
func (b *File) orWriteZeroes(err error, off, length int64) error {
	switch {
	case err == nil:
		return nil
	case fileUnsupported(err):
		return b.writeZeroes(off, length)
	}
	return fmt.Errorf("nbd: write zeroes %d bytes at %d: %w", length, off, fileErrno(err))
}

func (b *File) writeZeroes(off, length int64) error {
	for length > 0 {
		n := min(length, int64(len(fileZeroes)))
		if err := b.pwrite(fileZeroes[:n], off); err != nil {
			return err
		}
		off, length = off+n, length-n
	}
	return nil
}

func (b *File) fallocate(mode uint32, off, length int64) error {
	defer b.changes.Add(1)
	for {
		err := unix.Fallocate(b.fd, mode, off, length)
		if err != unix.EINTR {
			return err
		}
	}
}

func fileUnsupported(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS)
}

// Flush makes every write that completed before the call durable with
// fdatasync. Concurrent callers share syncs (group commit): a caller returns
// without a sync of its own when nothing changed since the last successful
// sync started, waits for the running sync when nothing changed since that
// one started, and otherwise waits for the next one, which starts when the
// running one ends and covers every caller that arrived meanwhile; so N
// concurrent Flush calls cost at most two fdatasyncs. ctx is not consulted:
// a sync in progress cannot be abandoned.
func (b *File) Flush(context.Context) error { return b.flush(b.sync) }

// ClearStaleError consumes a write-back error that belongs to an earlier
// user of the storage, on a File nothing was written through yet. Linux
// reports a write-back error to each open file that existed, or was opened,
// before anyone saw it, so a disk replaced under the same device node (a
// device-mapper table loaded again, a multipath device whose paths came
// back) can fail its new user's first fdatasync with its predecessor's lost
// writes. It runs fdatasync twice and returns the second one's error.
func (b *File) ClearStaleError() error {
	_ = b.StaleError()
	return b.StaleError()
}

// StaleError runs one fdatasync, on a File nothing was written through yet,
// and returns its error: a write-back error that Linux kept for the storage
// since before the File was opened (see ClearStaleError), which this call
// consumes.
func (b *File) StaleError() error {
	if err := unix.Fdatasync(b.fd); err != nil {
		return fmt.Errorf("nbd: fdatasync: %w", err)
	}
	return nil
}

// flush is Flush performing its fdatasyncs with doSync.
func (b *File) flush(doSync func() error) error {
	if b.readOnly {
		return nil
	}
	// Every change this caller must cover returned before this load.
	need := b.changes.Load()
	b.mu.Lock()
	defer b.mu.Unlock()
	for b.durable < need && b.syncErr == nil {
		if b.running {
			b.waiting++
			b.cond.Wait()
			b.waiting--
			continue
		}
		b.running = true
		b.covers = b.changes.Load()
		b.mu.Unlock()
		err := doSync()
		b.mu.Lock()
		b.running = false
		if err != nil && b.syncErr == nil {
			b.syncErr = fmt.Errorf("nbd: fdatasync: %w", err)
		}
		if err == nil {
			b.durable = max(b.durable, b.covers)
		}
		b.cond.Broadcast()
	}
	return b.syncErr
}

// FlushBackground is Flush for a sync started ahead of need, while the
// caller's goroutine would otherwise wait for something else: its fdatasync
// does not occupy a Go processor while the disk works (package aiosync), at
// the cost of a little more latency. Where the kernel has no AIO it is
// Flush.
func (b *File) FlushBackground(context.Context) error {
	b.bgOnce.Do(func() {
		if b.bgSync != nil {
			return // set by a test
		}
		b.bgSync = b.sync
		syncer, err := aiosync.New()
		if err != nil {
			return
		}
		b.bgSyncer = syncer
		// Syncs run one at a time (flush), so refused needs no lock.
		refused := false
		b.bgSync = func() error {
			if !refused {
				err := syncer.Fdatasync(b.fd)
				if !errors.Is(err, aiosync.ErrUnsupported) {
					return err
				}
				refused = true // this file's filesystem cannot: stop asking
			}
			return b.sync()
		}
	})
	return b.flush(b.bgSync)
}
