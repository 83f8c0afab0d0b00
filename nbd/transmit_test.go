package nbd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestTransmissionCommands(t *testing.T) {
	b := newMemBackend(1 << 20)
	c := dialRaw(t, testServer(t, singleExport(b, false)))
	c.goExport("")
	pattern := bytes.Repeat([]byte{0xab}, 8192)

	c.request(CmdWrite, 0, 1, 4096, 8192, pattern)
	c.expectReply(1, 0, 0)
	c.request(CmdRead, 0, 2, 4096, 8192, nil)
	if got := c.expectReply(2, 0, 8192); !bytes.Equal(got, pattern) {
		t.Fatal("read back differs")
	}
	c.request(CmdWrite, CmdFlagFUA, 3, 0, 4, []byte("fua!"))
	c.expectReply(3, 0, 0)
	c.request(CmdFlush, 0, 4, 0, 0, nil)
	c.expectReply(4, 0, 0)
	c.request(CmdTrim, 0, 5, 4096, 4096, nil)
	c.expectReply(5, 0, 0)
	c.request(CmdWriteZeroes, CmdFlagNoHole|CmdFlagFUA, 6, 8192, 4096, nil)
	c.expectReply(6, 0, 0)
	c.request(CmdRead, 0, 7, 0, 12288+4096, nil)
	got := c.expectReply(7, 0, 16384)
	want := append([]byte("fua!"), make([]byte, 16384-4)...)
	if !bytes.Equal(got, want) {
		t.Fatal("contents after trim and write-zeroes differ")
	}
	c.request(CmdRead, 0, 8, 100, 0, nil)
	c.expectReply(8, 0, 0)
	c.request(CmdDisc, 0, 9, 0, 0, nil)
	c.expectClosed()

	data, flushes := b.snapshot()
	if !bytes.Equal(data[:16384], want) {
		t.Error("backend contents differ")
	}
	// FUA write, FLUSH, FUA write-zeroes, and the flush at disconnect.
	if flushes < 3 {
		t.Errorf("backend saw %d flushes, want at least 3", flushes)
	}
}

func TestTransmissionBadRequestsKeepConnection(t *testing.T) {
	const size = 1 << 20
	c := dialRaw(t, testServer(t, singleExport(newMemBackend(size), false)))
	c.goExport("")
	for _, tc := range []struct {
		name    string
		typ     uint16
		flags   uint16
		off     uint64
		length  uint32
		payload bool
		errno   uint32
	}{
		{"read past end", CmdRead, 0, size - 512, 1024, false, ErrnoInval},
		{"read offset past end", CmdRead, 0, size + 1, 0, false, ErrnoInval},
		{"read offset overflow", CmdRead, 0, ^uint64(0) - 10, 512, false, ErrnoInval},
		{"read too large", CmdRead, 0, 0, MaxBlockSize + 1, false, ErrnoInval},
		{"write past end", CmdWrite, 0, size - 4, 8, true, ErrnoInval},
		{"write too large", CmdWrite, 0, 0, MaxBlockSize + 1, true, ErrnoInval},
		{"trim past end", CmdTrim, 0, size, 1, false, ErrnoInval},
		{"zero past end", CmdWriteZeroes, 0, size - 1, 2, false, ErrnoInval},
		{"unknown command", 99, 0, 0, 0, false, ErrnoInval},
		{"cache not advertised", CmdCache, 0, 0, 512, false, ErrnoInval},
		{"unknown flag on read", CmdRead, 1 << 9, 0, 512, false, ErrnoInval},
		{"no-hole on write", CmdWrite, CmdFlagNoHole, 0, 16, true, ErrnoInval},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var p []byte
			if tc.payload {
				p = make([]byte, tc.length)
			}
			c.request(tc.typ, tc.flags, 100, tc.off, tc.length, p)
			c.expectReply(100, tc.errno, 0)
			// The next request on the same connection works.
			c.request(CmdRead, 0, 101, 0, 512, nil)
			c.expectReply(101, 0, 512)
		})
	}
}

// TestTransmissionTooLargeOnLargeExport checks the request size limit on its
// own: on an export larger than MaxBlockSize the range check would let an
// oversized read or write through, so only the size limit can refuse it.
func TestTransmissionTooLargeOnLargeExport(t *testing.T) {
	const size = 2 * MaxBlockSize
	b := newMemBackend(size)
	var calls atomic.Int64
	b.hook = func(op string, off int64) error {
		calls.Add(1)
		return nil
	}
	c := dialRaw(t, testServer(t, singleExport(b, false)))
	c.goExport("")
	c.request(CmdRead, 0, 1, 0, MaxBlockSize+1, nil)
	c.expectReply(1, ErrnoInval, 0)
	c.request(CmdWrite, 0, 2, 0, MaxBlockSize+1, make([]byte, MaxBlockSize+1))
	c.expectReply(2, ErrnoInval, 0)
	if n := calls.Load(); n != 0 {
		t.Fatalf("the backend saw %d oversized requests, want none", n)
	}
	// The connection still works, up to the limit itself.
	c.request(CmdRead, 0, 3, 0, MaxBlockSize, nil)
	c.expectReply(3, 0, MaxBlockSize)
}

func TestTransmissionAbsurdWriteCloses(t *testing.T) {
	c := dialRaw(t, testServer(t, singleExport(newMemBackend(1<<20), false)))
	c.goExport("")
	c.request(CmdWrite, 0, 1, 0, MaxDiscardLen+1, nil)
	c.expectClosed()
}

func TestTransmissionBadMagicCloses(t *testing.T) {
	c := dialRaw(t, testServer(t, singleExport(newMemBackend(1<<20), false)))
	c.goExport("")
	c.write(bytes.Repeat([]byte{0x55}, RequestHeaderLen))
	c.expectClosed()
}

func TestTransmissionBackendErrors(t *testing.T) {
	for _, tc := range []struct {
		err   error
		errno uint32
	}{
		{fmt.Errorf("x: %w", ErrInvalid), ErrnoInval},
		{fmt.Errorf("x: %w", ErrNoSpace), ErrnoNoSpc},
		{fmt.Errorf("x: %w", ErrReadOnly), ErrnoPerm},
		{fmt.Errorf("x: %w", ErrShutdown), ErrnoShutdown},
		{errors.New("disk on fire"), ErrnoIO},
	} {
		t.Run(tc.err.Error(), func(t *testing.T) {
			b := newMemBackend(1 << 20)
			b.hook = func(op string, off int64) error {
				if off == 4096 || op == "flush" {
					return tc.err
				}
				return nil
			}
			srv := singleExport(b, false)
			c := dialRaw(t, testServer(t, srv))
			c.goExport("")
			c.request(CmdRead, 0, 1, 4096, 512, nil)
			c.expectReply(1, tc.errno, 0)
			c.request(CmdWrite, 0, 2, 4096, 3, []byte("abc"))
			c.expectReply(2, tc.errno, 0)
			c.request(CmdFlush, 0, 3, 0, 0, nil)
			c.expectReply(3, tc.errno, 0)
			c.request(CmdRead, 0, 4, 0, 512, nil)
			c.expectReply(4, 0, 512)
		})
	}
}

// gate blocks backend calls selected by a test until released, and
// reports when each blocked call has started.
type gate struct {
	started chan string
	release map[string]chan struct{}
}

func newGate(keys ...string) *gate {
	g := &gate{started: make(chan string, 64), release: map[string]chan struct{}{}}
	for _, k := range keys {
		g.release[k] = make(chan struct{})
	}
	return g
}

func (g *gate) hook(op string, off int64) error {
	k := fmt.Sprintf("%s@%d", op, off)
	g.started <- k
	if ch, ok := g.release[k]; ok {
		<-ch
	}
	return nil
}

func (g *gate) waitStarted(t *testing.T, want string) {
	t.Helper()
	select {
	case k := <-g.started:
		if k != want {
			t.Fatalf("backend call %s started, want %s", k, want)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("backend call %s never started", want)
	}
}

// waitStartedSet waits for the given calls to start, in any order.
func (g *gate) waitStartedSet(t *testing.T, want ...string) {
	t.Helper()
	pending := map[string]bool{}
	for _, w := range want {
		pending[w] = true
	}
	for len(pending) > 0 {
		select {
		case k := <-g.started:
			if !pending[k] {
				t.Fatalf("backend call %s started, want one of %v", k, pending)
			}
			delete(pending, k)
		case <-time.After(20 * time.Second):
			t.Fatalf("backend calls %v never started", pending)
		}
	}
}

func TestTransmissionOverlappingWritesKeepOrder(t *testing.T) {
	b := newMemBackend(1 << 20)
	g := newGate("write@0")
	b.hook = g.hook
	c := dialRaw(t, testServer(t, singleExport(b, false)))
	c.goExport("")

	c.request(CmdWrite, 0, 1, 0, 8192, bytes.Repeat([]byte{1}, 8192)) // blocked in the backend
	g.waitStarted(t, "write@0")
	c.request(CmdWrite, 0, 2, 4096, 8192, bytes.Repeat([]byte{2}, 8192))  // overlaps 1: must wait
	c.request(CmdTrim, 0, 3, 8192, 4096, nil)                             // overlaps 2: must wait
	c.request(CmdWrite, 0, 4, 65536, 4096, bytes.Repeat([]byte{4}, 4096)) // independent
	c.request(CmdRead, 0, 5, 0, 4096, nil)                                // reads do not wait
	g.waitStartedSet(t, "write@65536", "read@0")
	for i := 0; i < 2; i++ {
		if cookie, errno := c.reply(); errno != 0 || cookie != 4 && cookie != 5 {
			t.Fatalf("reply cookie %d errno %d, want 4 or 5", cookie, errno)
		} else if cookie == 5 {
			c.read(4096)
		}
	}
	select {
	case k := <-g.started:
		t.Fatalf("%s started while an overlapping earlier write was in flight", k)
	default:
	}
	close(g.release["write@0"])
	// Each overlapping request reaches the backend only after the one
	// before it finished there. Their replies may come in any order:
	// write 1's worker may still be on its way to queue its reply when 2
	// and 3 are done.
	g.waitStarted(t, "write@4096")
	g.waitStarted(t, "trim@8192")
	replied := map[uint64]bool{}
	for range 3 {
		cookie, errno := c.reply()
		if errno != 0 || cookie < 1 || cookie > 3 || replied[cookie] {
			t.Fatalf("reply cookie %d errno %d, want each of 1, 2 and 3 once with errno 0", cookie, errno)
		}
		replied[cookie] = true
	}

	data, _ := b.snapshot()
	want := append(append(bytes.Repeat([]byte{1}, 4096), bytes.Repeat([]byte{2}, 4096)...), make([]byte, 4096)...)
	if !bytes.Equal(data[:12288], want) {
		t.Fatal("overlapping writes landed out of order")
	}
}

func TestTransmissionOverlappingWritesUnderConcurrency(t *testing.T) {
	// Many writers hammer a few overlapping ranges; the last write sent to
	// each block must be what the backend holds.
	b := newMemBackend(64 << 10)
	srv := singleExport(b, false)
	srv.MaxInFlight = 16
	c := dialRaw(t, testServer(t, srv))
	c.goExport("")
	const n = 400
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < n; i++ {
			c.reply()
		}
	}()
	last := make([]byte, 16)
	for i := 0; i < n; i++ {
		blk := (i * 7) % 15
		v := byte(i)
		c.request(CmdWrite, 0, uint64(i), uint64(blk)*4096, 8192, bytes.Repeat([]byte{v}, 8192))
		last[blk], last[blk+1] = v, v
	}
	<-done
	data, _ := b.snapshot()
	for blk := 0; blk < 16; blk++ {
		if data[blk*4096] != last[blk] || data[blk*4096+4095] != last[blk] {
			t.Fatalf("block %d holds %d, last write was %d", blk, data[blk*4096], last[blk])
		}
	}
	if b.maxActive() > 16 {
		t.Errorf("%d backend calls in flight, MaxInFlight is 16", b.maxActive())
	}
}

func TestTransmissionReplyAfterOperation(t *testing.T) {
	b := newMemBackend(1 << 20)
	g := newGate("write@0", "flush@0")
	b.hook = g.hook
	c := dialRaw(t, testServer(t, singleExport(b, false)))
	c.goExport("")
	c.request(CmdWrite, 0, 1, 0, 512, make([]byte, 512))
	g.waitStarted(t, "write@0")
	c.request(CmdFlush, 0, 2, 0, 0, nil)
	g.waitStarted(t, "flush@0")
	c.request(CmdRead, 0, 3, 8192, 512, nil)
	g.waitStarted(t, "read@8192")
	// Replies arrive in completion order: the read's comes first because
	// neither the write nor the flush has finished.
	c.expectReply(3, 0, 512)
	close(g.release["flush@0"])
	c.expectReply(2, 0, 0)
	close(g.release["write@0"])
	c.expectReply(1, 0, 0)
}

func TestTransmissionInFlightBound(t *testing.T) {
	b := newMemBackend(1 << 20)
	release := make(chan struct{})
	started := make(chan struct{}, 64)
	b.hook = func(string, int64) error {
		started <- struct{}{}
		<-release
		return nil
	}
	srv := singleExport(b, false)
	srv.MaxInFlight = 3
	srv.MaxInFlightBytes = 1 << 30
	c := dialRaw(t, testServer(t, srv))
	c.goExport("")
	for i := 0; i < 10; i++ {
		c.request(CmdRead, 0, uint64(i), uint64(i)*4096, 4096, nil)
	}
	for i := 0; i < 3; i++ {
		<-started
	}
	close(release)
	for i := 0; i < 10; i++ {
		c.reply()
		c.read(4096)
	}
	if m := b.maxActive(); m != 3 {
		t.Errorf("max concurrent backend calls %d, want 3", m)
	}
}

func TestTransmissionInFlightBytesBound(t *testing.T) {
	b := newMemBackend(4 << 20)
	srv := singleExport(b, false)
	srv.MaxInFlightBytes = 1 << 20
	c := dialRaw(t, testServer(t, srv))
	c.goExport("")
	go func() {
		for i := 0; i < 8; i++ {
			c.request(CmdWrite, 0, uint64(i), uint64(i)*(512<<10), 512<<10, make([]byte, 512<<10))
		}
		// Larger than the whole budget: served alone.
		c.request(CmdRead, 0, 100, 0, 2<<20, nil)
	}()
	for i := 0; i < 8; i++ {
		c.reply()
	}
	c.expectReply(100, 0, 2<<20)
	if m := b.maxActive(); m > 2 {
		t.Errorf("%d writes of 512 KiB in flight with a 1 MiB budget", m)
	}
}

func TestShutdownFinishesInFlight(t *testing.T) {
	b := newMemBackend(1 << 20)
	g := newGate("write@4096")
	b.hook = g.hook
	srv := singleExport(b, false)
	addr := testServer(t, srv)
	c := dialRaw(t, addr)
	c.goExport("")
	c.request(CmdWrite, 0, 1, 4096, 4, []byte("data"))
	g.waitStarted(t, "write@4096")
	if srv.Clients() != 1 {
		t.Fatalf("Clients() = %d", srv.Clients())
	}
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(context.Background()) }()
	close(g.release["write@4096"])
	c.expectReply(1, 0, 0)
	g.waitStarted(t, "flush@0")
	c.expectClosed()
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if _, flushes := b.snapshot(); flushes != 1 {
		t.Errorf("%d flushes, want 1", flushes)
	}
	if _, err := Dial(context.Background(), addr); err == nil {
		t.Error("still accepting after Shutdown")
	}
}

func TestShutdownDeadlineKillsStuckClients(t *testing.T) {
	b := newMemBackend(1 << 20)
	release := make(chan struct{})
	started := make(chan struct{})
	b.hook = func(op string, _ int64) error {
		if op == "write" {
			close(started)
			<-release // ignores ctx, like a hung disk
		}
		return nil
	}
	defer close(release)
	srv := singleExport(b, false)
	c := dialRaw(t, testServer(t, srv))
	c.goExport("")
	c.request(CmdWrite, 0, 1, 0, 1, []byte{1})
	<-started
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := srv.Shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Shutdown = %v, want context.Canceled", err)
	}
	c.expectClosed()
}

func TestCloseClientsKeepsListening(t *testing.T) {
	b := newMemBackend(1 << 20)
	srv := singleExport(b, false)
	addr := testServer(t, srv)
	c1 := dialRaw(t, addr)
	c1.goExport("")
	c1.request(CmdRead, 0, 1, 0, 512, nil)
	c1.expectReply(1, 0, 512)
	if err := srv.CloseClients(context.Background()); err != nil {
		t.Fatal(err)
	}
	c1.expectClosed()
	if srv.Clients() != 0 {
		t.Errorf("Clients() = %d after CloseClients", srv.Clients())
	}
	c2 := dialRaw(t, addr)
	c2.goExport("disk")
	c2.request(CmdRead, 0, 2, 0, 512, nil)
	c2.expectReply(2, 0, 512)
}

func TestFlushCoversRepliedWrites(t *testing.T) {
	// A FLUSH must reach Backend.Flush after every write already
	// answered; the log records the order the backend saw.
	b := newMemBackend(1 << 20)
	c := dialRaw(t, testServer(t, singleExport(b, false)))
	c.goExport("")
	for i := 0; i < 8; i++ {
		c.request(CmdWrite, 0, uint64(i), uint64(i)*4096, 4096, make([]byte, 4096))
	}
	for i := 0; i < 8; i++ {
		c.reply()
	}
	c.request(CmdFlush, 0, 99, 0, 0, nil)
	c.expectReply(99, 0, 0)
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.log) != 9 || b.log[8] != "F" {
		t.Fatalf("backend saw %v, want 8 writes then a flush", b.log)
	}
}

func TestTransmissionDiscFinishesInFlight(t *testing.T) {
	b := newMemBackend(1 << 20)
	g := newGate("write@0")
	b.hook = g.hook
	c := dialRaw(t, testServer(t, singleExport(b, false)))
	c.goExport("")
	c.request(CmdWrite, 0, 1, 0, 4, []byte("last"))
	g.waitStarted(t, "write@0")
	c.request(CmdDisc, 0, 2, 0, 0, nil)
	close(g.release["write@0"])
	c.expectReply(1, 0, 0)
	g.waitStarted(t, "flush@0")
	c.expectClosed()
	if data, _ := b.snapshot(); string(data[:4]) != "last" {
		t.Fatalf("data %q", data[:4])
	}
}

func TestServeContextCancelClosesEverything(t *testing.T) {
	dir := t.TempDir()
	ln, err := Listen("unix:" + dir + "/s.sock")
	if err != nil {
		t.Fatal(err)
	}
	srv := singleExport(newMemBackend(4096), false)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	c := dialRaw(t, "unix:"+dir+"/s.sock")
	c.goExport("")
	cancel()
	if err := <-served; !errors.Is(err, context.Canceled) {
		t.Fatalf("Serve = %v, want context.Canceled", err)
	}
	c.expectClosed()
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(context.Background(), ln); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve after Shutdown = %v, want ErrServerClosed", err)
	}
}

// TestServedCounts checks Server.Served over two connections: READs and
// WRITEs (with their bytes) are counted, other requests are not.
func TestServedCounts(t *testing.T) {
	srv := singleExport(newMemBackend(1<<20), false)
	addr := testServer(t, srv)
	for i := range 2 {
		c := dialRaw(t, addr)
		c.goExport("")
		c.request(CmdWrite, 0, 1, 0, 4096, make([]byte, 4096))
		c.expectReply(1, 0, 0)
		c.request(CmdWrite, CmdFlagFUA, 2, 8192, 512, make([]byte, 512))
		c.expectReply(2, 0, 0)
		c.request(CmdRead, 0, 3, 0, 512, nil)
		c.expectReply(3, 0, 512)
		c.request(CmdFlush, 0, 4, 0, 0, nil)
		c.expectReply(4, 0, 0)
		c.request(CmdTrim, 0, 5, 0, 4096, nil)
		c.expectReply(5, 0, 0)
		want := Served{Reads: uint64(i + 1), Writes: 2 * uint64(i+1), WriteBytes: 4608 * uint64(i+1)}
		if got := srv.Served(); got != want {
			t.Errorf("after connection %d: Served() = %+v, want %+v", i+1, got, want)
		}
	}
}

// summedBackend is a memBackend that is a SummedWriter: it records the sum
// the server computed for each write, next to the payload's own checksum.
// It wants sums unless off is set.
type summedBackend struct {
	*memBackend
	off        atomic.Bool
	mu         sync.Mutex
	got, want  []uint32
	plainCalls int
}

func (b *summedBackend) WantSums() bool { return !b.off.Load() }

func (b *summedBackend) WriteAtSummed(ctx context.Context, p []byte, off int64, fua bool, sum uint32) error {
	b.mu.Lock()
	b.got = append(b.got, sum)
	b.want = append(b.want, crc32.Checksum(p, crc32.MakeTable(crc32.Castagnoli)))
	b.mu.Unlock()
	return b.memBackend.WriteAt(ctx, p, off, fua)
}

func (b *summedBackend) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	b.mu.Lock()
	b.plainCalls++
	b.mu.Unlock()
	return b.memBackend.WriteAt(ctx, p, off, fua)
}

// A SummedWriter gets every write through WriteAtSummed, with the CRC-32C of
// exactly its payload: small writes gathered in one read of the read-ahead,
// and large ones read past it in pieces. While it wants no sums, it gets
// WriteAt.
func TestTransmissionSummedWriter(t *testing.T) {
	b := &summedBackend{memBackend: newMemBackend(8 << 20)}
	c := dialRaw(t, testServer(t, singleExport(b, false)))
	c.goExport("")
	sizes := []int{1, 4096, 4096, 65536, 65537, 1 << 20, 3<<20 + 5, 512}
	for i, n := range sizes {
		p := make([]byte, n)
		for j := range p {
			p[j] = byte(i*31 + j*7)
		}
		c.request(CmdWrite, 0, uint64(i), 0, uint32(n), p) // all queued before any reply
	}
	for range sizes {
		c.reply()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.plainCalls != 0 || len(b.got) != len(sizes) {
		t.Fatalf("%d WriteAtSummed and %d WriteAt calls, want %d and 0", len(b.got), b.plainCalls, len(sizes))
	}
	for i := range b.got {
		if b.got[i] != b.want[i] {
			t.Fatalf("write %d: sum %#08x, payload's checksum %#08x", i, b.got[i], b.want[i])
		}
	}
	b.mu.Unlock()

	b.off.Store(true)
	c.request(CmdWrite, 0, 100, 0, 4096, make([]byte, 4096))
	c.expectReply(100, 0, 0)
	b.mu.Lock()
	if b.plainCalls != 1 || len(b.got) != len(sizes) {
		t.Fatalf("without sums wanted: %d WriteAt calls and %d more WriteAtSummed, want 1 and 0", b.plainCalls, len(b.got)-len(sizes))
	}
}
