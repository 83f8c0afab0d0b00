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
	reconfigs   chan []int // fds of each Reconfigure
	disconnects int
	connected   bool
	connectErr  error
}

func newFakeKernel() *fakeKernel {
	return &fakeKernel{reconfigs: make(chan []int, 8), connected: true}
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
// announced on conns.
type fakeExportServer struct {
	addr  string
	ln    net.Listener
	conns chan net.Conn
	wg    sync.WaitGroup
}

func startFakeExport(t *testing.T, name string, size uint64, flags uint16, refuse string) *fakeExportServer {
	t.Helper()
	path := filepath.Join(t.TempDir(), name+".sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeExportServer{addr: "unix:" + path, ln: ln, conns: make(chan net.Conn, 16)}
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
			ss.reply(OptGo, RepInfo, infoExport(size, flags))
			ss.reply(OptGo, RepAck, nil)
			s.conns <- c
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
