package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// scriptServer plays the server side of a negotiation from a script, so
// client tests control every byte. Its helpers report problems to errc.
type scriptServer struct {
	c    net.Conn
	errc chan error
}

func (s *scriptServer) greet(flags uint16) {
	b := binary.BigEndian.AppendUint64(nil, MagicNBD)
	b = binary.BigEndian.AppendUint64(b, MagicOption)
	b = binary.BigEndian.AppendUint16(b, flags)
	s.c.Write(b)
}

// readClientFlags reads the client's 4-byte flags.
func (s *scriptServer) readClientFlags() uint32 {
	var b [4]byte
	io.ReadFull(s.c, b[:])
	return binary.BigEndian.Uint32(b[:])
}

// readOption reads one option request.
func (s *scriptServer) readOption() (uint32, []byte) {
	var h [16]byte
	if _, err := io.ReadFull(s.c, h[:]); err != nil {
		return 0, nil
	}
	data := make([]byte, binary.BigEndian.Uint32(h[12:]))
	io.ReadFull(s.c, data)
	return binary.BigEndian.Uint32(h[8:]), data
}

func (s *scriptServer) reply(opt, typ uint32, payload []byte) {
	b := binary.BigEndian.AppendUint64(nil, MagicOptReply)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, typ)
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	s.c.Write(append(b, payload...))
}

func infoExport(size uint64, flags uint16) []byte {
	b := binary.BigEndian.AppendUint16(nil, InfoExport)
	b = binary.BigEndian.AppendUint64(b, size)
	return binary.BigEndian.AppendUint16(b, flags)
}

func infoBlockSize(min, pref, max uint32) []byte {
	b := binary.BigEndian.AppendUint16(nil, InfoBlockSize)
	b = binary.BigEndian.AppendUint32(b, min)
	b = binary.BigEndian.AppendUint32(b, pref)
	return binary.BigEndian.AppendUint32(b, max)
}

// runScript runs script as the server of a net.Pipe and Negotiate as its
// client.
func runScript(t *testing.T, export string, script func(s *scriptServer)) (ExportInfo, error) {
	t.Helper()
	cc, sc := net.Pipe()
	defer cc.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer sc.Close()
		script(&scriptServer{c: sc})
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	info, err := Negotiate(ctx, cc, export)
	cc.Close()
	<-done
	return info, err
}

func TestClientNegotiateGo(t *testing.T) {
	const flags = FlagHasFlags | FlagSendFlush | FlagSendFUA | FlagSendTrim
	var gotName string
	var gotInfos []byte
	var cflags uint32
	info, err := runScript(t, "r0", func(s *scriptServer) {
		s.greet(FlagFixedNewstyle | FlagNoZeroes)
		cflags = s.readClientFlags()
		opt, data := s.readOption()
		if opt != OptGo {
			return
		}
		n := binary.BigEndian.Uint32(data)
		gotName = string(data[4 : 4+n])
		gotInfos = data[4+n:]
		s.reply(OptGo, RepInfo, append(binary.BigEndian.AppendUint16(nil, InfoDescription), "disk"...))
		s.reply(OptGo, 42, []byte("unknown reply types are ignored"))
		s.reply(OptGo, RepInfo, infoBlockSize(512, 4096, 32<<20))
		s.reply(OptGo, RepInfo, infoExport(1<<30, flags))
		s.reply(OptGo, RepAck, nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	want := ExportInfo{Name: "r0", Description: "disk", Size: 1 << 30, Flags: flags, MinBlock: 512, PreferredBlock: 4096, MaxBlock: 32 << 20}
	if info != want {
		t.Errorf("info = %+v, want %+v", info, want)
	}
	if gotName != "r0" || !bytes.Equal(gotInfos, []byte{0, 1, 0, byte(InfoBlockSize)}) {
		t.Errorf("server saw name %q infos %x", gotName, gotInfos)
	}
	if cflags != FlagCFixedNewstyle|FlagCNoZeroes {
		t.Errorf("client flags %#x", cflags)
	}
	if !info.CanFlush() || !info.CanFUA() || !info.CanTrim() || info.ReadOnly() || info.CanMultiConn() || info.CanWriteZeroes() {
		t.Errorf("flag accessors disagree with %#x", info.Flags)
	}
}

func TestClientNegotiateFallsBackToExportName(t *testing.T) {
	for _, noZeroes := range []bool{false, true} {
		info, err := runScript(t, "", func(s *scriptServer) {
			hf := FlagFixedNewstyle
			if noZeroes {
				hf |= FlagNoZeroes
			}
			s.greet(hf)
			s.readClientFlags()
			opt, _ := s.readOption()
			s.reply(opt, RepErrUnsup, nil)
			if opt, _ = s.readOption(); opt != OptExportName {
				return
			}
			b := binary.BigEndian.AppendUint64(nil, 4096)
			b = binary.BigEndian.AppendUint16(b, FlagHasFlags|FlagReadOnly)
			if !noZeroes {
				b = append(b, make([]byte, 124)...)
			}
			s.c.Write(b)
		})
		if err != nil {
			t.Fatalf("noZeroes=%v: %v", noZeroes, err)
		}
		if info.Size != 4096 || !info.ReadOnly() {
			t.Errorf("noZeroes=%v: info %+v", noZeroes, info)
		}
	}
}

func TestClientNegotiateRefusalCarriesMessage(t *testing.T) {
	const msg = "resource r0 is Secondary: promote it with urbd primary r0"
	tests := []struct {
		name    string
		typ     uint32
		payload string
		want    string
	}{
		{"unknown with message", RepErrUnknown, msg, msg},
		{"policy without message", RepErrPolicy, "", "forbidden by server policy"},
		{"shutdown", RepErrShutdown, "", "shutting down"},
		{"unnamed error", 1<<31 | 99, "", "error reply"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := runScript(t, "r0", func(s *scriptServer) {
				s.greet(FlagFixedNewstyle)
				s.readClientFlags()
				s.readOption()
				s.reply(OptGo, tt.typ, []byte(tt.payload))
			})
			if !errors.Is(err, ErrRefused) {
				t.Fatalf("err = %v, want ErrRefused", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err %q does not carry %q", err, tt.want)
			}
		})
	}
}

func TestClientNegotiateExportNameClosedIsRefused(t *testing.T) {
	_, err := runScript(t, "nope", func(s *scriptServer) {
		s.greet(FlagFixedNewstyle)
		s.readClientFlags()
		s.readOption()
		s.reply(OptGo, RepErrUnsup, nil)
		s.readOption()
	})
	if !errors.Is(err, ErrRefused) {
		t.Fatalf("err = %v, want ErrRefused", err)
	}
}

func TestClientNegotiateProtocolViolations(t *testing.T) {
	tests := []struct {
		name   string
		script func(s *scriptServer)
	}{
		{"bad greeting magic", func(s *scriptServer) { s.c.Write(make([]byte, 18)) }},
		{"oldstyle server", func(s *scriptServer) {
			b := binary.BigEndian.AppendUint64(nil, MagicNBD)
			b = binary.BigEndian.AppendUint64(b, 0x00420281861253)
			s.c.Write(append(b, 0, 0))
		}},
		{"not fixed newstyle", func(s *scriptServer) { s.greet(0) }},
		{"bad reply magic", func(s *scriptServer) {
			s.greet(FlagFixedNewstyle)
			s.readClientFlags()
			s.readOption()
			s.c.Write(make([]byte, 20))
		}},
		{"reply to another option", func(s *scriptServer) {
			s.greet(FlagFixedNewstyle)
			s.readClientFlags()
			s.readOption()
			s.reply(OptList, RepAck, nil)
		}},
		{"oversized reply", func(s *scriptServer) {
			s.greet(FlagFixedNewstyle)
			s.readClientFlags()
			s.readOption()
			b := binary.BigEndian.AppendUint64(nil, MagicOptReply)
			b = binary.BigEndian.AppendUint32(b, OptGo)
			b = binary.BigEndian.AppendUint32(b, RepInfo)
			b = binary.BigEndian.AppendUint32(b, 0xffffffff)
			s.c.Write(b)
		}},
		{"ack without export info", func(s *scriptServer) {
			s.greet(FlagFixedNewstyle)
			s.readClientFlags()
			s.readOption()
			s.reply(OptGo, RepAck, nil)
		}},
		{"short export info", func(s *scriptServer) {
			s.greet(FlagFixedNewstyle)
			s.readClientFlags()
			s.readOption()
			s.reply(OptGo, RepInfo, infoExport(1, 1)[:8])
		}},
		{"impossible size", func(s *scriptServer) {
			s.greet(FlagFixedNewstyle)
			s.readClientFlags()
			s.readOption()
			s.reply(OptGo, RepInfo, infoExport(1<<63, 1))
		}},
		{"endless replies", func(s *scriptServer) {
			s.greet(FlagFixedNewstyle)
			s.readClientFlags()
			s.readOption()
			for range maxOptReplies + 1 {
				s.reply(OptGo, RepInfo, infoBlockSize(1, 1, 1))
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := runScript(t, "", tt.script)
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("err = %v, want ErrProtocol", err)
			}
		})
	}
}

func TestClientNegotiateContextCancel(t *testing.T) {
	cc, sc := net.Pipe()
	defer cc.Close()
	defer sc.Close()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := Negotiate(ctx, cc, "")
		errc <- err
	}()
	// The server never greets; cancelling must unblock the client.
	cancel()
	err := <-errc
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

// replyServer answers transmission requests on sc: reads succeed with a
// fixed pattern, writes at offset 1<<40 fail with EINVAL, everything else
// succeeds. It records the commands it saw.
func replyServer(sc net.Conn, seen chan<- uint16) {
	defer close(seen)
	for {
		var h [RequestHeaderLen]byte
		if _, err := io.ReadFull(sc, h[:]); err != nil {
			return
		}
		cmd := binary.BigEndian.Uint16(h[6:])
		handle := binary.BigEndian.Uint64(h[8:])
		off := binary.BigEndian.Uint64(h[16:])
		n := binary.BigEndian.Uint32(h[24:])
		seen <- cmd
		if cmd == CmdDisc {
			return
		}
		if cmd == CmdWrite {
			io.CopyN(io.Discard, sc, int64(n))
		}
		var errno uint32
		if off == 1<<40 {
			errno = ErrnoInval
		}
		rep := binary.BigEndian.AppendUint32(nil, MagicSimpleReply)
		rep = binary.BigEndian.AppendUint32(rep, errno)
		rep = binary.BigEndian.AppendUint64(rep, handle)
		if cmd == CmdRead && errno == 0 {
			rep = append(rep, bytes.Repeat([]byte{0xab}, int(n))...)
		}
		sc.Write(rep)
	}
}

func TestClientConnCommands(t *testing.T) {
	cc, sc := net.Pipe()
	seen := make(chan uint16, 16)
	go replyServer(sc, seen)
	c := NewClientConn(cc, ExportInfo{Size: 1 << 20})
	ctx := context.Background()
	buf := make([]byte, 512)
	if err := c.Read(ctx, buf, 0); err != nil || buf[0] != 0xab || buf[511] != 0xab {
		t.Fatalf("read: %v %x", err, buf[:4])
	}
	if err := c.Write(ctx, buf, 4096, true); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Trim(ctx, 0, 4096); err != nil {
		t.Fatal(err)
	}
	err := c.Write(ctx, buf, 1<<40, false)
	var re *RemoteError
	if !errors.Is(err, ErrRemote) || !errors.As(err, &re) || re.Errno != ErrnoInval || re.Cmd != CmdWrite {
		t.Fatalf("out of range write: %v", err)
	}
	// The connection keeps working after an error reply.
	if err := c.Read(ctx, buf, 0); err != nil {
		t.Fatal(err)
	}
	if err := c.Disconnect(); err != nil {
		t.Fatal(err)
	}
	var cmds []uint16
	for cmd := range seen {
		cmds = append(cmds, cmd)
	}
	want := []uint16{CmdRead, CmdWrite, CmdFlush, CmdTrim, CmdWrite, CmdRead, CmdDisc}
	if !slicesEqual(cmds, want) {
		t.Errorf("server saw %v, want %v", cmds, want)
	}
}

func slicesEqual(a, b []uint16) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestClientConnRejectsWrongHandle(t *testing.T) {
	cc, sc := net.Pipe()
	defer cc.Close()
	go func() {
		defer sc.Close()
		var h [RequestHeaderLen]byte
		io.ReadFull(sc, h[:])
		rep := binary.BigEndian.AppendUint32(nil, MagicSimpleReply)
		rep = binary.BigEndian.AppendUint32(rep, 0)
		rep = binary.BigEndian.AppendUint64(rep, 0xdead)
		sc.Write(rep)
	}()
	err := NewClientConn(cc, ExportInfo{}).Flush(context.Background())
	if !errors.Is(err, ErrProtocol) {
		t.Fatalf("err = %v, want ErrProtocol", err)
	}
}

// TestClientInteropNbdkit negotiates with a real server and runs each
// command through ClientConn.
func TestClientInteropNbdkit(t *testing.T) {
	if _, err := exec.LookPath("nbdkit"); err != nil {
		t.Fatal("nbdkit is not installed: run scripts/install-deps.sh")
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "nbd.sock")
	cmd := exec.Command("nbdkit", "--foreground", "--exit-with-parent", "--unix", sock, "memory", "1M")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var conn net.Conn
	var err error
	for ctx.Err() == nil {
		if conn, err = Dial(ctx, "unix:"+sock); err == nil {
			break
		}
		// nbdkit creates the socket asynchronously; poll for it.
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	info, err := Negotiate(ctx, conn, "")
	if err != nil {
		t.Fatal(err)
	}
	if info.Size != 1<<20 || !info.CanFlush() || !info.CanTrim() || info.ReadOnly() {
		t.Fatalf("info %+v", info)
	}
	c := NewClientConn(conn, info)
	data := bytes.Repeat([]byte("urbd"), 1024)
	if err := c.Write(ctx, data, 8192, true); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if err := c.Read(ctx, got, 8192); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back: %v", err)
	}
	if err := c.Read(ctx, got, 1<<20); !errors.Is(err, ErrRemote) {
		t.Fatalf("read past the end: %v, want ErrRemote", err)
	}
	if err := c.Trim(ctx, 0, 4096); err != nil {
		t.Fatal(err)
	}
	if err := c.Disconnect(); err != nil {
		t.Fatal(err)
	}
}

// FuzzNegotiate feeds arbitrary server bytes to the client: it must return
// (any result) without panicking or allocating unbounded memory.
func FuzzNegotiate(f *testing.F) {
	greet := binary.BigEndian.AppendUint64(nil, MagicNBD)
	greet = binary.BigEndian.AppendUint64(greet, MagicOption)
	greet = binary.BigEndian.AppendUint16(greet, FlagFixedNewstyle|FlagNoZeroes)
	rep := func(typ uint32, p []byte) []byte {
		b := binary.BigEndian.AppendUint64(nil, MagicOptReply)
		b = binary.BigEndian.AppendUint32(b, OptGo)
		b = binary.BigEndian.AppendUint32(b, typ)
		b = binary.BigEndian.AppendUint32(b, uint32(len(p)))
		return append(b, p...)
	}
	ok := append(append(append([]byte{}, greet...), rep(RepInfo, infoExport(1<<20, 1))...), rep(RepAck, nil)...)
	f.Add(ok)
	f.Add(append(append([]byte{}, greet...), rep(RepErrUnknown, []byte("no such export"))...))
	f.Add(append(append([]byte{}, greet...), rep(RepErrUnsup, nil)...))
	f.Add(append(append(append([]byte{}, greet...), rep(RepErrUnsup, nil)...), make([]byte, 10)...))
	f.Add(append(append([]byte{}, greet...), rep(RepInfo, infoBlockSize(1, 4096, 1<<25))...))
	f.Add(greet[:10])
	f.Fuzz(func(t *testing.T, data []byte) {
		conn := &fuzzConn{r: bytes.NewReader(data)}
		info, err := negotiate(conn, "x")
		if err == nil && (info.Size < 0 || info.Name != "x") {
			t.Fatalf("bad info %+v", info)
		}
	})
}

// fuzzConn is a net.Conn reading from a fixed script and discarding writes.
type fuzzConn struct {
	net.Conn
	r io.Reader
}

func (c *fuzzConn) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c *fuzzConn) Write(p []byte) (int, error) { return len(p), nil }

// sliceBackend is a minimal in-memory Backend for the client's interop
// tests against this package's Server.
type sliceBackend struct {
	mu   sync.Mutex
	data []byte
}

func (b *sliceBackend) Size() int64 { return int64(len(b.data)) }
func (b *sliceBackend) ReadAt(_ context.Context, p []byte, off int64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	copy(p, b.data[off:])
	return nil
}
func (b *sliceBackend) WriteAt(_ context.Context, p []byte, off int64, _ bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	copy(b.data[off:], p)
	return nil
}
func (b *sliceBackend) Trim(context.Context, int64, int64, bool) error { return nil }
func (b *sliceBackend) WriteZeroes(_ context.Context, off, n int64, _, _ bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	clear(b.data[off : off+n])
	return nil
}
func (b *sliceBackend) Flush(context.Context) error { return nil }

// startServer serves b as the default export on a unix socket; the name
// "secondary" is refused with the message a Secondary resource gives.
func startServer(t *testing.T, b Backend) (*Server, string) {
	t.Helper()
	srv := &Server{
		Lookup: func(name string) (*Export, error) {
			if name == "secondary" {
				return nil, errors.New("resource r0 is Secondary: promote it with urbd primary r0")
			}
			return &Export{Backend: b, MultiConn: true}, nil
		},
		Logger: quietLogger(),
	}
	addr := "unix:" + filepath.Join(t.TempDir(), "srv.sock")
	ln, err := Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
	})
	return srv, addr
}

// TestClientInteropServer negotiates with this package's Server, checks
// the flags the kernel will get, a refusal's message, and that an
// out-of-range request gets EINVAL on a connection that keeps working.
func TestClientInteropServer(t *testing.T) {
	_, addr := startServer(t, &sliceBackend{data: make([]byte, 1<<20)})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	conn, err := Dial(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Negotiate(ctx, conn, "secondary")
	conn.Close()
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "resource r0 is Secondary") {
		t.Fatalf("refusal: %v", err)
	}

	conn, err = Dial(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	info, err := Negotiate(ctx, conn, "")
	if err != nil {
		t.Fatal(err)
	}
	if info.Size != 1<<20 || !info.CanFlush() || !info.CanFUA() || !info.CanTrim() || !info.CanMultiConn() || info.MaxBlock == 0 {
		t.Fatalf("info %+v", info)
	}
	c := NewClientConn(conn, info)
	data := bytes.Repeat([]byte{7}, 4096)
	if err := c.Write(ctx, data, 4096, true); err != nil {
		t.Fatal(err)
	}
	var re *RemoteError
	if err := c.Write(ctx, data, 1<<20, false); !errors.As(err, &re) || re.Errno != ErrnoInval {
		t.Fatalf("write past the end: %v, want EINVAL", err)
	}
	got := make([]byte, 4096)
	if err := c.Read(ctx, got, 4096); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read after the error: %v", err)
	}
	if err := c.Disconnect(); err != nil {
		t.Fatal(err)
	}
}

// TestServerServesGrownExport: a connection negotiated before the export
// grew (File.Grow, as urbd resize does) may use the new end at once, as the
// kernel does after urbd attach grew /dev/nbdN; past the new end is still
// EINVAL.
func TestServerServesGrownExport(t *testing.T) {
	f := openTestFile(t, 1<<20)
	path := f.f.Name()
	_, addr := startServer(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := connectTest(ctx, t, addr)
	defer c.Disconnect()
	data := bytes.Repeat([]byte{9}, 4096)
	var re *RemoteError
	if err := c.Write(ctx, data, 1<<20, false); !errors.As(err, &re) || re.Errno != ErrnoInval {
		t.Fatalf("write past the end before the grow: %v, want EINVAL", err)
	}
	if err := os.Truncate(path, 2<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Grow(2 << 20); err != nil {
		t.Fatal(err)
	}
	if err := c.Write(ctx, data, 2<<20-4096, false); err != nil {
		t.Fatalf("write at the new end on the old connection: %v", err)
	}
	got := make([]byte, 4096)
	if err := c.Read(ctx, got, 2<<20-4096); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read at the new end: %v", err)
	}
	if err := c.Write(ctx, data, 2<<20, false); !errors.As(err, &re) || re.Errno != ErrnoInval {
		t.Fatalf("write past the new end: %v, want EINVAL", err)
	}
}

// TestServerCloseListener: a server moved to another listener (Serve on the
// new one, CloseListener on the old) keeps the clients it has: a client
// connected through the old listener goes on reading and writing, new
// clients connect through the new one, the old address refuses, and the
// old Serve returns nil.
func TestServerCloseListener(t *testing.T) {
	f := openTestFile(t, 1<<20)
	srv := &Server{
		Lookup: func(string) (*Export, error) { return &Export{Backend: f}, nil },
		Logger: quietLogger(),
	}
	dir := t.TempDir()
	oldAddr, newAddr := "unix:"+filepath.Join(dir, "old.sock"), "unix:"+filepath.Join(dir, "new.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	serve := func(addr string) (net.Listener, chan error) {
		ln, err := Listen(addr)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- srv.Serve(context.Background(), ln) }()
		return ln, done
	}
	oldLn, oldDone := serve(oldAddr)
	old := connectTest(ctx, t, oldAddr)
	_, newDone := serve(newAddr)
	srv.CloseListener(oldLn)
	select {
	case err := <-oldDone:
		if err != nil {
			t.Fatalf("Serve of the closed listener returned %v, want nil", err)
		}
	case <-ctx.Done():
		t.Fatal("Serve of the closed listener did not return")
	}
	data := bytes.Repeat([]byte{3}, 4096)
	if err := old.Write(ctx, data, 8192, false); err != nil {
		t.Fatalf("the client of the old listener: %v", err)
	}
	fresh := connectTest(ctx, t, newAddr)
	got := make([]byte, 4096)
	if err := fresh.Read(ctx, got, 8192); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("a client of the new listener: %v", err)
	}
	if _, err := Dial(ctx, oldAddr); err == nil {
		t.Error("the old address still accepts")
	}
	old.Disconnect()
	fresh.Disconnect()
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	if err := srv.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	if err := <-newDone; err != nil {
		t.Fatalf("Serve of the new listener after Shutdown: %v", err)
	}
}

// connectTest dials addr and negotiates the default export.
func connectTest(ctx context.Context, t *testing.T, addr string) *ClientConn {
	t.Helper()
	conn, err := Dial(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	info, err := Negotiate(ctx, conn, "")
	if err != nil {
		conn.Close()
		t.Fatal(err)
	}
	return NewClientConn(conn, info)
}
