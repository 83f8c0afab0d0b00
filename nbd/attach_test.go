package nbd

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeKernel records what the supervisor asks of the nbd driver.
type fakeKernel struct {
	mu          sync.Mutex
	connects    []ConnectParams
	reconfigs   chan []int  // fds of each Reconfigure
	resizes     chan uint64 // size of each Resize
	disconnects int
	connected   bool
	connectErr  error
}

func newFakeKernel() *fakeKernel {
	return &fakeKernel{reconfigs: make(chan []int, 8), resizes: make(chan uint64, 8), connected: true}
}

func (k *fakeKernel) Connect(p ConnectParams) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.connectErr != nil {
		return k.connectErr
	}
	k.connects = append(k.connects, p)
	return nil
}

func (k *fakeKernel) Reconfigure(index int, fds []int, timeout, dead time.Duration) error {
	k.reconfigs <- fds
	return nil
}

func (k *fakeKernel) Resize(index int, size uint64) error {
	k.resizes <- size
	return nil
}

func (k *fakeKernel) Disconnect(index int) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.disconnects++
	k.connected = false
	return nil
}

func (k *fakeKernel) Connected(index int) (bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.connected, nil
}

func (k *fakeKernel) setConnected(v bool) {
	k.mu.Lock()
	k.connected = v
	k.mu.Unlock()
}

// fakeExportServer accepts on a unix socket, negotiates one export with
// NBD_OPT_GO (or refuses with refuse as the message) and then holds each
// connection open until closeAll. Every accepted, negotiated connection is
// announced on conns. setSize changes the size later connections are told.
type fakeExportServer struct {
	addr  string
	ln    net.Listener
	conns chan net.Conn
	wg    sync.WaitGroup
	size  atomic.Uint64
}

func (s *fakeExportServer) setSize(size uint64) { s.size.Store(size) }

func startFakeExport(t *testing.T, name string, size uint64, flags uint16, refuse string) *fakeExportServer {
	t.Helper()
	path := filepath.Join(t.TempDir(), name+".sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeExportServer{addr: "unix:" + path, ln: ln, conns: make(chan net.Conn, 16)}
	s.setSize(size)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			ss := &scriptServer{c: c}
			ss.greet(FlagFixedNewstyle | FlagNoZeroes)
			ss.readClientFlags()
			ss.readOption()
			if refuse != "" {
				ss.reply(OptGo, RepErrUnknown, []byte(refuse))
				c.Close()
				continue
			}
			ss.reply(OptGo, RepInfo, infoExport(s.size.Load(), flags))
			ss.reply(OptGo, RepAck, nil)
			select {
			case s.conns <- c:
			default:
				// Nobody reads this many (a failing test's redial loop):
				// drop it so that stop does not block.
				c.Close()
			}
		}
	}()
	t.Cleanup(s.stop)
	return s
}

func (s *fakeExportServer) stop() {
	s.ln.Close()
	s.wg.Wait()
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func testAttachConfig(k Kernel, addrs ...string) AttachConfig {
	return AttachConfig{
		Index: 2, Addrs: addrs, Connections: 1, Timeout: 5 * time.Second,
		Dial: Dial, Kernel: k, Logger: quietLogger(),
		PollInterval: 5 * time.Millisecond, RedialInterval: 5 * time.Millisecond,
	}
}

func TestAttachHandsNegotiatedSocketsToKernel(t *testing.T) {
	const flags = FlagHasFlags | FlagSendFlush | FlagSendFUA | FlagSendTrim | FlagCanMultiConn
	srv := startFakeExport(t, "a", 64<<20, flags, "")
	k := newFakeKernel()
	cfg := testAttachConfig(k, srv.addr)
	cfg.Connections = 2
	cfg.Timeout = 20 * time.Second
	att, err := Attach(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer closeAll(att.socks)
	if len(k.connects) != 1 {
		t.Fatalf("%d connects", len(k.connects))
	}
	p := k.connects[0]
	if p.Index != 2 || p.Size != 64<<20 || p.ServerFlags != flags || len(p.FDs) != 2 || p.BlockSize != 512 {
		t.Errorf("connect params %+v", p)
	}
	if p.DeadConnTimeout != 20*time.Second || p.Timeout != 10*time.Second {
		t.Errorf("timeouts: io %v dead %v", p.Timeout, p.DeadConnTimeout)
	}
}

func TestAttachRefusalCarriesServerMessage(t *testing.T) {
	const msg = "resource r0 is Secondary: promote it with urbd primary r0"
	srv := startFakeExport(t, "a", 1<<20, FlagHasFlags, msg)
	k := newFakeKernel()
	_, err := Attach(context.Background(), testAttachConfig(k, srv.addr))
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), msg) {
		t.Fatalf("err = %v, want ErrRefused with %q", err, msg)
	}
	if len(k.connects) != 0 {
		t.Error("kernel connected despite the refusal")
	}
}

func TestAttachMultiConnNeedsServerSupport(t *testing.T) {
	srv := startFakeExport(t, "a", 1<<20, FlagHasFlags, "")
	k := newFakeKernel()
	cfg := testAttachConfig(k, srv.addr)
	cfg.Connections = 2
	if _, err := Attach(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "CAN_MULTI_CONN") {
		t.Fatalf("err = %v, want a CAN_MULTI_CONN refusal", err)
	}
}

func TestAttachTriesAddressesInOrder(t *testing.T) {
	srv := startFakeExport(t, "b", 1<<20, FlagHasFlags, "")
	dead := "unix:" + filepath.Join(t.TempDir(), "nobody.sock")
	k := newFakeKernel()
	att, err := Attach(context.Background(), testAttachConfig(k, dead, srv.addr))
	if err != nil {
		t.Fatal(err)
	}
	closeAll(att.socks)
}

func TestAttachBusyDevice(t *testing.T) {
	srv := startFakeExport(t, "a", 1<<20, FlagHasFlags, "")
	k := newFakeKernel()
	k.connectErr = ErrDeviceBusy
	if _, err := Attach(context.Background(), testAttachConfig(k, srv.addr)); !errors.Is(err, ErrDeviceBusy) {
		t.Fatalf("err = %v, want ErrDeviceBusy", err)
	}
}

// TestSuperviseReconnectsToNextAddress: the first server dies; the
// supervisor redials, finds the second address and hands its socket to
// the kernel with Reconfigure; cancelling disconnects the device.
// supervise attaches with cfg and runs Supervise until the returned stop,
// which checks that Supervise then returns nil.
func supervise(t *testing.T, cfg AttachConfig) (stop func()) {
	t.Helper()
	att, err := Attach(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- att.Supervise(ctx) }()
	return func() {
		t.Helper()
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("Supervise: %v", err)
		}
	}
}

func TestSuperviseReconnectsToNextAddress(t *testing.T) {
	a := startFakeExport(t, "a", 1<<20, FlagHasFlags, "")
	b := startFakeExport(t, "b", 1<<20, FlagHasFlags, "")
	k := newFakeKernel()
	stop := supervise(t, testAttachConfig(k, a.addr, b.addr))

	// Node a fails: its listener goes and its connection drops.
	ca := <-a.conns
	a.stop()
	ca.Close()

	fds := <-k.reconfigs
	if len(fds) != 1 {
		t.Fatalf("reconfigure with %d sockets", len(fds))
	}
	cb := <-b.conns // the new socket is b's
	defer cb.Close()

	stop()
	if k.disconnects != 1 {
		t.Errorf("%d disconnects, want 1", k.disconnects)
	}
}

// TestSuperviseEventWakesAndDetachEnds: a LINK_DEAD event for another
// device is ignored; when the connection drops and the kernel no longer
// has the device, Supervise returns ErrDetached without disconnecting.
func TestSuperviseEventWakesAndDetachEnds(t *testing.T) {
	srv := startFakeExport(t, "a", 1<<20, FlagHasFlags, "")
	k := newFakeKernel()
	events := make(chan int, 2)
	cfg := testAttachConfig(k, srv.addr)
	cfg.Events = events
	cfg.PollInterval = time.Hour // only events wake the supervisor
	att, err := Attach(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- att.Supervise(context.Background()) }()
	c := <-srv.conns
	events <- 7 // another device
	k.setConnected(false)
	c.Close()
	events <- 2
	if err := <-done; !errors.Is(err, ErrDetached) {
		t.Fatalf("Supervise = %v, want ErrDetached", err)
	}
	if k.disconnects != 0 {
		t.Errorf("%d disconnects of a detached device", k.disconnects)
	}
}

func TestBlockSize(t *testing.T) {
	tests := []struct {
		min  uint32
		want uint32
	}{{0, 512}, {1, 512}, {512, 512}, {1024, 1024}, {3000, 4096}, {4096, 4096}, {1 << 20, 4096}}
	for _, tt := range tests {
		if got := blockSize(ExportInfo{MinBlock: tt.min}); got != tt.want {
			t.Errorf("blockSize(min %d) = %d, want %d", tt.min, got, tt.want)
		}
	}
}

// TestSuperviseReconnectsAfterServerDropsClients runs Attach and Supervise
// against this package's Server: when the server drops every client (as a
// restarting daemon does) the supervisor reconnects both connections.
func TestSuperviseReconnectsAfterServerDropsClients(t *testing.T) {
	srv, addr := startServer(t, &sliceBackend{data: make([]byte, 1<<20)})
	k := newFakeKernel()
	cfg := testAttachConfig(k, addr)
	cfg.Connections = 2
	stop := supervise(t, cfg)

	cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer ccancel()
	if err := srv.CloseClients(cctx); err != nil {
		t.Fatal(err)
	}
	n := 0
	for n < 2 {
		n += len(<-k.reconfigs)
	}
	stop()
}

// orderKernel is a fakeKernel whose Reconfigure records how many LINK_DEAD
// events the test had delivered when it was called.
type orderKernel struct {
	*fakeKernel
	delivered  atomic.Int32
	atReconfig chan int32
}

func (k *orderKernel) Reconfigure(index int, fds []int, timeout, dead time.Duration) error {
	k.atReconfig <- k.delivered.Load()
	return nil
}

// TestSuperviseWaitsForKernelToMarkEveryConnectionDead: the kernel only
// replaces connections it has marked dead (and drops other sockets
// silently), so with two hung-up sockets the supervisor reconfigures only
// after the second LINK_DEAD event.
func TestSuperviseWaitsForKernelToMarkEveryConnectionDead(t *testing.T) {
	srv := startFakeExport(t, "a", 1<<20, FlagHasFlags|FlagCanMultiConn, "")
	k := &orderKernel{fakeKernel: newFakeKernel(), atReconfig: make(chan int32, 1)}
	events := make(chan int) // unbuffered: a send returns once the supervisor took it
	cfg := testAttachConfig(k, srv.addr)
	cfg.Connections = 2
	cfg.Events = events
	stop := supervise(t, cfg)
	c1, c2 := <-srv.conns, <-srv.conns
	c1.Close()
	c2.Close()
	for i := int32(1); i <= 2; i++ {
		k.delivered.Store(i)
		events <- cfg.Index
	}
	if got := <-k.atReconfig; got != 2 {
		t.Fatalf("reconfigured after %d of 2 dead-connection events", got)
	}
	stop()
}

// attachForTest attaches with cfg; the test owns the sockets unless it runs
// Supervise, which closes them.
func attachForTest(t *testing.T, cfg AttachConfig) *Attachment {
	t.Helper()
	att, err := Attach(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return att
}

// runSupervise runs Supervise in a goroutine; stop cancels it and checks
// it returned nil. After stop, Supervise has finished everything it did.
func runSupervise(t *testing.T, att *Attachment) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel) // a failed test must not leave it redialing
	done := make(chan error, 1)
	go func() { done <- att.Supervise(ctx) }()
	return func() {
		t.Helper()
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("Supervise: %v", err)
		}
	}
}

// noResize fails the test if the kernel was asked to resize.
func noResize(t *testing.T, k *fakeKernel) {
	t.Helper()
	select {
	case size := <-k.resizes:
		t.Errorf("device resized to %d bytes", size)
	default:
	}
}

// recv returns the next value from ch, failing the test after 5s.
func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(5 * time.Second):
		t.Fatalf("no %s within 5s", what)
		var zero T
		return zero
	}
}

// TestRefreshGrowsDevice: the export grew; Refresh resizes the device to
// the new size through a probe connection that it closes and never hands
// to the kernel.
func TestRefreshGrowsDevice(t *testing.T) {
	srv := startFakeExport(t, "a", 1<<20, FlagHasFlags, "")
	k := newFakeKernel()
	att := attachForTest(t, testAttachConfig(k, srv.addr))
	defer closeAll(att.socks)
	<-srv.conns // the kernel's connection

	srv.setSize(3 << 20)
	from, to, err := att.Refresh(context.Background())
	if err != nil || from != 1<<20 || to != 3<<20 {
		t.Fatalf("Refresh = %d, %d, %v; want %d, %d, nil", from, to, err, 1<<20, 3<<20)
	}
	select {
	case size := <-k.resizes:
		if size != 3<<20 {
			t.Errorf("resized to %d bytes, want %d", size, 3<<20)
		}
	default:
		t.Fatal("Refresh did not resize the device")
	}
	if got := att.Info().Size; got != 3<<20 {
		t.Errorf("Info().Size = %d after growing, want %d", got, 3<<20)
	}

	probe := <-srv.conns
	probe.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := probe.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("probe connection read: %v, want EOF (closed by Refresh)", err)
	}
	if len(k.connects) != 1 || len(k.reconfigs) != 0 {
		t.Errorf("probe reached the kernel: %d connects, %d reconfigures", len(k.connects), len(k.reconfigs))
	}
}

func TestRefreshSameSizeLeavesDevice(t *testing.T) {
	srv := startFakeExport(t, "a", 1<<20, FlagHasFlags, "")
	k := newFakeKernel()
	att := attachForTest(t, testAttachConfig(k, srv.addr))
	defer closeAll(att.socks)

	from, to, err := att.Refresh(context.Background())
	if err != nil || from != 1<<20 || to != 1<<20 {
		t.Fatalf("Refresh = %d, %d, %v; want %d, %d, nil", from, to, err, 1<<20, 1<<20)
	}
	noResize(t, k)
}

// TestRefreshNeverShrinks: a smaller export is an error and the device
// keeps its size.
func TestRefreshNeverShrinks(t *testing.T) {
	srv := startFakeExport(t, "a", 1<<20, FlagHasFlags, "")
	k := newFakeKernel()
	att := attachForTest(t, testAttachConfig(k, srv.addr))
	defer closeAll(att.socks)

	srv.setSize(512 << 10)
	from, to, err := att.Refresh(context.Background())
	const want = "nbd: export shrank from 1048576 to 524288 bytes: /dev/nbd2 keeps its size"
	if err == nil || err.Error() != want || from != 0 || to != 0 {
		t.Fatalf("Refresh = %d, %d, %v; want 0, 0, %q", from, to, err, want)
	}
	noResize(t, k)
	if got := att.Info().Size; got != 1<<20 {
		t.Errorf("Info().Size = %d, want %d", got, 1<<20)
	}
}

func TestRefreshWithoutServerFails(t *testing.T) {
	srv := startFakeExport(t, "a", 1<<20, FlagHasFlags, "")
	k := newFakeKernel()
	att := attachForTest(t, testAttachConfig(k, srv.addr))
	defer closeAll(att.socks)

	srv.stop()
	if _, _, err := att.Refresh(context.Background()); err == nil || !strings.Contains(err.Error(), "reading the export's size") {
		t.Fatalf("Refresh without a server = %v", err)
	}
	noResize(t, k)
}

// TestSuperviseGrowsDeviceOnReconnect: the server went away and came back
// with a larger export; the supervisor reconnects and grows the device.
func TestSuperviseGrowsDeviceOnReconnect(t *testing.T) {
	srv := startFakeExport(t, "a", 1<<20, FlagHasFlags, "")
	k := newFakeKernel()
	att := attachForTest(t, testAttachConfig(k, srv.addr))
	stop := runSupervise(t, att)

	c := <-srv.conns
	srv.setSize(4 << 20)
	c.Close()
	recv(t, k.reconfigs, "reconfigure")
	if size := recv(t, k.resizes, "resize"); size != 4<<20 {
		t.Errorf("resized to %d bytes, want %d", size, 4<<20)
	}
	stop()
	if got := att.Info().Size; got != 4<<20 {
		t.Errorf("Info().Size = %d, want %d", got, 4<<20)
	}
}

// TestRefreshDuringSuperviseThenReconnect: Refresh grows the device while
// Supervise runs (the race detector checks the shared size); a later
// reconnect to the same export sees the new size and resizes nothing.
func TestRefreshDuringSuperviseThenReconnect(t *testing.T) {
	srv := startFakeExport(t, "a", 1<<20, FlagHasFlags, "")
	k := newFakeKernel()
	att := attachForTest(t, testAttachConfig(k, srv.addr))
	stop := runSupervise(t, att)
	c := <-srv.conns

	srv.setSize(2 << 20)
	if _, to, err := att.Refresh(context.Background()); err != nil || to != 2<<20 {
		t.Fatalf("Refresh = %d, %v", to, err)
	}
	if size := recv(t, k.resizes, "resize"); size != 2<<20 {
		t.Fatalf("resized to %d bytes, want %d", size, 2<<20)
	}
	recv(t, srv.conns, "probe connection")

	c.Close()
	recv(t, k.reconfigs, "reconfigure")
	stop() // Supervise finished the reconnect, growing included
	noResize(t, k)
}
