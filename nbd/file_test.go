package nbd

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/urbd/urbd/internal/zeroes"
)

func tempDisk(t *testing.T, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, size); err != nil {
		t.Fatal(err)
	}
	return p
}

func allocatedBytes(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func TestFileReadWriteTrimZero(t *testing.T) {
	const size = 4 << 20
	path := tempDisk(t, size)
	f, err := OpenFile(path, false)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Size() != size {
		t.Fatalf("Size() = %d", f.Size())
	}
	ctx := context.Background()
	ones := bytes.Repeat([]byte{0xff}, 1<<20)
	if err := f.WriteAt(ctx, ones, 0, true); err != nil {
		t.Fatal(err)
	}
	if err := f.WriteAt(ctx, ones, 2<<20, false); err != nil {
		t.Fatal(err)
	}
	before := allocatedBytes(t, path)

	// Trim punches a hole: reads give zeroes and blocks are freed.
	if err := f.Trim(ctx, 0, 512<<10, false); err != nil {
		t.Fatal(err)
	}
	// WriteZeroes without NO_HOLE punches too; with NO_HOLE keeps blocks.
	if err := f.WriteZeroes(ctx, 512<<10, 256<<10, false, false); err != nil {
		t.Fatal(err)
	}
	if err := f.WriteZeroes(ctx, 2<<20, 256<<10, true, true); err != nil {
		t.Fatal(err)
	}
	after := allocatedBytes(t, path)
	if after > before-512<<10 {
		t.Errorf("allocation %d -> %d: trim freed nothing", before, after)
	}

	got := make([]byte, size)
	if err := f.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, size)
	copy(want[768<<10:1<<20], ones)
	copy(want[(2<<20)+(256<<10):3<<20], ones)
	if !bytes.Equal(got, want) {
		t.Fatal("contents differ after trim and write-zeroes")
	}
	if err := f.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestFileWriteZeroesFallback(t *testing.T) {
	path := tempDisk(t, 1<<20)
	f, err := OpenFile(path, false)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx := context.Background()
	if err := f.WriteAt(ctx, bytes.Repeat([]byte{7}, 1<<20), 0, false); err != nil {
		t.Fatal(err)
	}
	if err := f.writeZeroes(1000, 3<<18); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 1<<20)
	if err := f.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	for i, v := range got {
		zero := i >= 1000 && i < 1000+3<<18
		if zero != (v == 0) {
			t.Fatalf("byte %d is %d", i, v)
		}
	}
}

func TestFileReadOnly(t *testing.T) {
	f, err := OpenFile(tempDisk(t, 8192), true)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx := context.Background()
	for name, err := range map[string]error{
		"write": f.WriteAt(ctx, []byte{1}, 0, false),
		"trim":  f.Trim(ctx, 0, 4096, false),
		"zero":  f.WriteZeroes(ctx, 0, 4096, false, false),
	} {
		if !errors.Is(err, ErrReadOnly) {
			t.Errorf("%s: %v, want ErrReadOnly", name, err)
		}
	}
	if err := f.ReadAt(ctx, make([]byte, 8192), 0); err != nil {
		t.Error(err)
	}
	if err := f.Flush(ctx); err != nil {
		t.Error(err)
	}
}

func TestOpenFileErrors(t *testing.T) {
	if _, err := OpenFile(filepath.Join(t.TempDir(), "missing"), false); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	if _, err := OpenFile(t.TempDir(), true); !errors.Is(err, ErrNotBlockStorage) {
		t.Errorf("directory: %v", err)
	}
	if _, err := OpenFile("/dev/null", true); !errors.Is(err, ErrNotBlockStorage) {
		t.Errorf("character device: %v", err)
	}
}

func TestFileShortReadIsError(t *testing.T) {
	path := tempDisk(t, 8192)
	f, err := OpenFile(path, false)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := os.Truncate(path, 4096); err != nil {
		t.Fatal(err)
	}
	if err := f.ReadAt(context.Background(), make([]byte, 8192), 0); err == nil {
		t.Fatal("read past a shrunk file succeeded")
	}
}

// TestFileGroupCommit holds the first fdatasync, writes, and starts the
// other callers, which must not count on the running sync: it started before
// that write. It checks they all shared one more sync.
func TestFileGroupCommit(t *testing.T) {
	f, err := OpenFile(tempDisk(t, 4096), false)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var mu sync.Mutex
	syncs := 0
	entered := make(chan struct{}, 100)
	release := make(chan struct{})
	f.sync = func() error {
		mu.Lock()
		syncs++
		mu.Unlock()
		entered <- struct{}{}
		<-release
		return nil
	}
	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	flush := func() {
		defer wg.Done()
		errs <- f.Flush(context.Background())
	}
	wg.Add(1)
	go flush()
	<-entered // the first sync is running
	if err := f.WriteAt(context.Background(), make([]byte, 512), 0, false); err != nil {
		t.Fatal(err)
	}
	wg.Add(n - 1)
	for i := 1; i < n; i++ {
		go flush()
	}
	// Wait (without sleeping) until the others block behind the running sync.
	f.mu.Lock()
	for f.waiting < n-1 {
		f.mu.Unlock()
		<-waitTick()
		f.mu.Lock()
	}
	f.mu.Unlock()
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if syncs != 2 {
		t.Fatalf("%d concurrent Flush calls did %d fdatasyncs, want 2", n, syncs)
	}
}

// openTestFile opens a fresh disk file of size bytes, closed at the end
// of the test.
func openTestFile(t *testing.T, size int64) *File {
	t.Helper()
	f, err := OpenFile(tempDisk(t, size), false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// countSyncs makes f's fdatasyncs counted and returns the counter.
func countSyncs(f *File) *atomic.Int64 {
	var n atomic.Int64
	sync := f.sync
	f.sync = func() error {
		n.Add(1)
		return sync()
	}
	return &n
}

// TestFileFlushSkipsCleanSync checks that a Flush with nothing written since
// the last successful sync started returns without another fdatasync, and
// that every kind of change (write, zeroes, trim) makes the next one sync.
// The first Flush after open always syncs: an earlier process may have left
// dirty pages.
func TestFileFlushSkipsCleanSync(t *testing.T) {
	f := openTestFile(t, 1<<20)
	syncs := countSyncs(f)
	ctx := context.Background()
	step := func(what string, change func() error, want int64) {
		t.Helper()
		if change != nil {
			if err := change(); err != nil {
				t.Fatalf("%s: %v", what, err)
			}
		}
		if err := f.Flush(ctx); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if got := syncs.Load(); got != want {
			t.Fatalf("after %s: %d fdatasyncs, want %d", what, got, want)
		}
	}
	step("the first flush", nil, 1)
	step("a flush with nothing written", nil, 1)
	step("a write", func() error { return f.WriteAt(ctx, make([]byte, 4096), 0, false) }, 2)
	step("another clean flush", nil, 2)
	step("zeroes", func() error { return f.WriteZeroes(ctx, 0, 4096, false, false) }, 3)
	step("a trim", func() error { return f.Trim(ctx, 4096, 4096, false) }, 4)
	step("a clean flush after the trim", nil, 4)
}

// TestFileFlushJoinsCoveringSync checks that a Flush arriving while a sync
// runs waits for that sync, and does not start another, when nothing
// changed since it started.
func TestFileFlushJoinsCoveringSync(t *testing.T) {
	f := openTestFile(t, 1<<20)
	ctx := context.Background()
	if err := f.WriteAt(ctx, make([]byte, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	var syncs atomic.Int64
	entered := make(chan struct{}, 4)
	release := make(chan error)
	f.sync = func() error {
		syncs.Add(1)
		entered <- struct{}{}
		return <-release
	}
	first := make(chan error, 1)
	go func() { first <- f.Flush(ctx) }()
	<-entered // the sync started after the write
	second := make(chan error, 1)
	go func() { second <- f.Flush(ctx) }()
	f.mu.Lock()
	for f.waiting < 1 {
		f.mu.Unlock()
		<-waitTick()
		f.mu.Lock()
	}
	f.mu.Unlock()
	release <- nil
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if err := <-second; err != nil {
		t.Fatal(err)
	}
	if n := syncs.Load(); n != 1 {
		t.Fatalf("a flush covered by the running sync did %d fdatasyncs in all, want 1", n)
	}
}

// waitTick yields to other goroutines while polling a condition.
func waitTick() <-chan struct{} {
	ch := make(chan struct{})
	go func() { close(ch) }()
	return ch
}

func TestFileFlushErrorIsSticky(t *testing.T) {
	f, err := OpenFile(tempDisk(t, 4096), false)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	calls := 0
	f.sync = func() error {
		calls++
		if calls == 1 {
			return unix.EIO
		}
		return nil
	}
	ctx := context.Background()
	if err := f.Flush(ctx); !errors.Is(err, unix.EIO) {
		t.Fatalf("first Flush: %v", err)
	}
	if err := f.WriteAt(ctx, []byte{1}, 0, true); !errors.Is(err, unix.EIO) {
		t.Fatalf("FUA write after a failed sync: %v, want the sync error", err)
	}
	if err := f.Flush(ctx); !errors.Is(err, unix.EIO) {
		t.Fatalf("Flush after a failed sync: %v", err)
	}
}

func TestFileServedOverNBD(t *testing.T) {
	f := openTestFile(t, 1<<20)
	c := dialRaw(t, testServer(t, singleExport(f, false)))
	c.goExport("")
	c.request(CmdWrite, CmdFlagFUA, 1, 512, 5, []byte("hello"))
	c.expectReply(1, 0, 0)
	c.request(CmdRead, 0, 2, 512, 5, nil)
	if got := c.expectReply(2, 0, 5); string(got) != "hello" {
		t.Fatalf("read %q", got)
	}
	c.request(CmdWriteZeroes, 0, 3, 0, 1<<20, nil)
	c.expectReply(3, 0, 0)
	c.request(CmdRead, 0, 4, 512, 5, nil)
	if got := c.expectReply(4, 0, 5); !bytes.Equal(got, make([]byte, 5)) {
		t.Fatalf("read %q after write-zeroes", got)
	}
}

// TestFileFlushBackground checks that FlushBackground syncs through AIO on
// this kernel, and that it takes part in the group commit: a Flush after it,
// with nothing written since, needs no fdatasync of its own.
func TestFileFlushBackground(t *testing.T) {
	f := openTestFile(t, 1<<20)
	syncs := countSyncs(f)
	ctx := context.Background()
	if err := f.WriteAt(ctx, make([]byte, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	if err := f.FlushBackground(ctx); err != nil {
		t.Fatal(err)
	}
	if f.bgSyncer == nil {
		t.Fatal("FlushBackground did not set up AIO (Linux AIO is needed here)")
	}
	if err := f.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if n := syncs.Load(); n != 0 {
		t.Fatalf("Flush after FlushBackground with nothing written: %d fdatasyncs, want 0", n)
	}
	if err := f.WriteAt(ctx, make([]byte, 4096), 4096, false); err != nil {
		t.Fatal(err)
	}
	if err := f.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if n := syncs.Load(); n != 1 {
		t.Fatalf("Flush after a write: %d fdatasyncs, want 1", n)
	}
}

// TestFileFUAMakesDurable checks that every change made with FUA is durable
// when it returns: one fdatasync each for a write, a zeroing and a trim.
func TestFileFUAMakesDurable(t *testing.T) {
	f := openTestFile(t, 1<<20)
	ctx := context.Background()
	if err := f.Flush(ctx); err != nil { // the first flush after open always syncs
		t.Fatal(err)
	}
	syncs := countSyncs(f)
	for i, op := range []struct {
		name string
		do   func() error
	}{
		{"write", func() error { return f.WriteAt(ctx, make([]byte, 4096), 0, true) }},
		{"zeroes", func() error { return f.WriteZeroes(ctx, 4096, 4096, true, false) }},
		{"trim", func() error { return f.Trim(ctx, 8192, 4096, true) }},
	} {
		if err := op.do(); err != nil {
			t.Fatalf("%s with FUA: %v", op.name, err)
		}
		if got, want := syncs.Load(), int64(i+1); got != want {
			t.Fatalf("after a %s with FUA: %d fdatasyncs, want %d", op.name, got, want)
		}
	}
}

// TestFileGrow: a File serves the size it was opened with until Grow, which
// accepts any size up to what the storage holds now, and never shrinks.
func TestFileGrow(t *testing.T) {
	f := openTestFile(t, 1<<20)
	path := f.f.Name()
	if err := os.Truncate(path, 2<<20); err != nil {
		t.Fatal(err)
	}
	if have, err := f.StorageSize(); err != nil || have != 2<<20 {
		t.Fatalf("StorageSize after the file grew: %d, %v; want %d", have, err, 2<<20)
	}
	if f.Size() != 1<<20 {
		t.Fatalf("Size %d before Grow, want the size at open, %d", f.Size(), 1<<20)
	}
	if err := f.Grow(3 << 20); err == nil || !strings.Contains(err.Error(), "cannot serve") {
		t.Fatalf("Grow beyond the storage: %v", err)
	}
	if err := f.Grow(2 << 20); err != nil || f.Size() != 2<<20 {
		t.Fatalf("Grow to the storage's size: %v, Size %d", err, f.Size())
	}
	if err := f.Grow(1 << 20); err == nil || f.Size() != 2<<20 {
		t.Fatalf("Grow to a smaller size: %v, Size %d; want an error and no change", err, f.Size())
	}
	buf := []byte("tail")
	if err := f.WriteAt(context.Background(), buf, 2<<20-4, false); err != nil {
		t.Fatalf("a write at the new end: %v", err)
	}
}

// TestFileHasData: on a sparse file only the ranges the file system says
// are holes have no data: data written a moment ago (still in the page
// cache) counts, and so does a range that touches it by one byte.
func TestFileHasData(t *testing.T) {
	const mib = 1 << 20
	f, err := OpenFile(tempDisk(t, 4*mib), false)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.WriteAt(context.Background(), bytes.Repeat([]byte{1}, 4096), mib, false); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		off, length int64
		want        bool
	}{
		{0, mib, false},
		{0, mib + 1, true},
		{mib, 4096, true},
		{mib + 4096 - 1, 1, true},
		{2 * mib, mib, false},
		{3 * mib, mib, false},
	} {
		if got := f.HasData(tc.off, tc.length); got != tc.want {
			t.Errorf("HasData(%d, %d) = %v, want %v", tc.off, tc.length, got, tc.want)
		}
	}
}

// TestFileWriteZeroesBlockDevice: on a block device (a loop device over a
// sparse file), WriteZeroes without noHole frees the blocks (the loop
// device punches its file), and with noHole keeps them allocated; both read
// back as zeroes.
// TestFileZeroWhereData: on a device that cannot zero by unmapping,
// WriteZeroes zeroes only the 64 KiB pieces that hold data, merging
// neighbours into one call, also across its 1 MiB reads; pieces that read
// as zeroes are not written, and a piece it cannot read is zeroed.
func TestFileZeroWhereData(t *testing.T) {
	const kib, mib = 1 << 10, 1 << 20
	path := tempDisk(t, 4*mib)
	f, err := OpenFile(path, false)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx := context.Background()
	for _, w := range []struct{ off, length int64 }{
		{64 * kib, 128 * kib},    // two whole pieces
		{mib + 10, 10},           // a few bytes of one piece
		{2*mib - 4*kib, 8 * kib}, // two pieces, one each side of a read's end
		{4*mib - 1, 1},           // the last byte
	} {
		if err := f.WriteAt(ctx, bytes.Repeat([]byte{0xa5}, int(w.length)), w.off, false); err != nil {
			t.Fatal(err)
		}
	}
	type call struct{ off, length int64 }
	var calls []call
	zero := func(off, length int64) error {
		calls = append(calls, call{off, length})
		return f.writeZeroes(off, length)
	}
	if err := f.zeroWhereData(0, 4*mib, zero); err != nil {
		t.Fatal(err)
	}
	want := []call{{64 * kib, 128 * kib}, {mib, 64 * kib}, {2*mib - 64*kib, 128 * kib}, {4*mib - 64*kib, 64 * kib}}
	if !slices.Equal(calls, want) {
		t.Errorf("zeroed %v, want %v", calls, want)
	}
	// The pieces read only to be looked at left the page cache; the ones
	// the test's zero wrote through it are there.
	page := int64(os.Getpagesize())
	for i, in := range residentPages(t, path, 4*mib) {
		off := int64(i) * page
		written := slices.ContainsFunc(calls, func(c call) bool { return off >= c.off && off < c.off+c.length })
		if in && !written {
			t.Errorf("the page at %d stays in the page cache after it was looked at", off)
			break
		}
	}
	got := make([]byte, 4*mib)
	if err := f.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !zeroes.Is(got) {
		t.Error("the range does not read as zeroes")
	}

	// A range that reads as zeroes is not touched; pieces are counted from
	// off; a read that fails (past the end) zeroes what it covered.
	calls = nil
	if err := f.zeroWhereData(4*kib, 2*mib, zero); err != nil || len(calls) != 0 {
		t.Errorf("zeroes: %v, calls %v; want none", err, calls)
	}
	if err := f.WriteAt(ctx, []byte{1}, 4*kib+64*kib, false); err != nil {
		t.Fatal(err)
	}
	if err := f.zeroWhereData(4*kib, 2*mib, zero); err != nil || !slices.Equal(calls, []call{{68 * kib, 64 * kib}}) {
		t.Errorf("a byte at 68 KiB: %v, calls %v; want the piece from 68 KiB", err, calls)
	}
	calls = nil
	_ = f.zeroWhereData(4*mib-64*kib, 128*kib, func(off, length int64) error {
		calls = append(calls, call{off, length})
		return nil
	})
	if !slices.Equal(calls, []call{{4*mib - 64*kib, 128 * kib}}) {
		t.Errorf("a range past the end: calls %v; want all of it", calls)
	}
}

// residentPages says which pages of path's first size bytes are in the
// page cache (mincore).
func residentPages(t *testing.T, path string, size int) []bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	vec := make([]byte, (size+os.Getpagesize()-1)/os.Getpagesize())
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(size), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatal(errno)
	}
	in := make([]bool, len(vec))
	for i, v := range vec {
		in[i] = v&1 != 0
	}
	return in
}

// TestSysfsDiscards: a device is taken as able to discard (so perhaps
// thin) when sysfs says so, for a partition in its disk's directory, or
// when sysfs cannot say.
func TestSysfsDiscards(t *testing.T) {
	root := t.TempDir()
	put := func(dir, value string) string {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(root, dir, "queue"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, dir, "queue", "discard_max_bytes"), []byte(value+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		return filepath.Join(root, dir)
	}
	for _, c := range []struct {
		dev  string
		want bool
	}{
		{put("thin", "65536"), true},
		{put("hdd", "0"), false},
		{filepath.Join(put("ssd", "0"), "ssd1"), false}, // a partition: its disk's queue
		{filepath.Join(root, "unknown"), true},          // no queue directory at all
	} {
		if err := os.MkdirAll(c.dev, 0o755); err != nil {
			t.Fatal(err)
		}
		if got := sysfsDiscards(c.dev); got != c.want {
			t.Errorf("%s: discards %v, want %v", c.dev, got, c.want)
		}
	}
}

func TestFileWriteZeroesBlockDevice(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root (a loop device)")
	}
	const mib = 1 << 20
	backing := tempDisk(t, 8*mib)
	out, err := exec.Command("losetup", "--find", "--show", backing).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = exec.Command("losetup", "-d", dev).Run() })
	f, err := OpenFile(dev, false)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if !f.blockDev || !f.discards {
		t.Fatalf("%s opened as a regular file, or as a block device that cannot discard (%v)", dev, f.discards)
	}
	ctx := context.Background()
	data := bytes.Repeat([]byte{0x5a}, 4*mib)
	if err := f.WriteAt(ctx, data, 0, true); err != nil {
		t.Fatal(err)
	}
	if used := allocatedBytes(t, backing); used < 4*mib {
		t.Fatalf("the loop device's file occupies %d bytes after 4 MiB were written", used)
	}
	if err := f.WriteZeroes(ctx, 0, 2*mib, true, false); err != nil {
		t.Fatal(err)
	}
	if err := f.WriteZeroes(ctx, 2*mib, mib, true, true); err != nil {
		t.Fatal(err)
	}
	if used := allocatedBytes(t, backing); used != 2*mib {
		t.Errorf("the loop device's file occupies %d bytes, want 2 MiB: the range zeroed without noHole freed, the one with it kept", used)
	}
	got := make([]byte, 4*mib)
	if err := f.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	want := append(make([]byte, 3*mib), data[:mib]...)
	if !bytes.Equal(got, want) {
		t.Fatal("the zeroed ranges do not read back as zeroes")
	}
}
