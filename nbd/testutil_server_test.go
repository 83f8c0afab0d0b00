package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// memBackend is an in-memory Backend for server tests. Hooks let a test
// block or fail individual calls and observe the order of calls.
type memBackend struct {
	mu      sync.Mutex
	data    []byte
	log     []string // "W off len", "R off len", "F", "T off len", "Z off len"
	flushes int
	active  int // calls in progress
	maxAct  int // highest active seen

	// hook, if set, runs at the start of every call (outside mu) with the
	// operation's name ("read", "write", "flush", "trim", "zero") and
	// offset; a non-nil return fails the call.
	hook func(op string, off int64) error
}

func newMemBackend(size int) *memBackend { return &memBackend{data: make([]byte, size)} }

func (m *memBackend) enter(op string, off int64, length int) error {
	m.mu.Lock()
	m.active++
	m.maxAct = max(m.maxAct, m.active)
	m.mu.Unlock()
	if m.hook != nil {
		if err := m.hook(op, off); err != nil {
			m.exit()
			return err
		}
	}
	return nil
}

func (m *memBackend) exit() {
	m.mu.Lock()
	m.active--
	m.mu.Unlock()
}

func (m *memBackend) maxActive() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.maxAct
}

func (m *memBackend) record(s string) { m.log = append(m.log, s) }

func (m *memBackend) Size() int64 { return int64(len(m.data)) }

func (m *memBackend) ReadAt(_ context.Context, p []byte, off int64) error {
	if err := m.enter("read", off, len(p)); err != nil {
		return err
	}
	defer m.exit()
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(p, m.data[off:])
	return nil
}

func (m *memBackend) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := m.enter("write", off, len(p)); err != nil {
		return err
	}
	defer m.exit()
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(m.data[off:], p)
	m.record("W")
	if fua {
		m.flushes++
	}
	return nil
}

func (m *memBackend) Trim(_ context.Context, off, length int64, _ bool) error {
	if err := m.enter("trim", off, int(length)); err != nil {
		return err
	}
	defer m.exit()
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.data[off : off+length])
	m.record("T")
	return nil
}

func (m *memBackend) WriteZeroes(_ context.Context, off, length int64, _, _ bool) error {
	if err := m.enter("zero", off, int(length)); err != nil {
		return err
	}
	defer m.exit()
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.data[off : off+length])
	m.record("Z")
	return nil
}

func (m *memBackend) Flush(context.Context) error {
	if err := m.enter("flush", 0, 0); err != nil {
		return err
	}
	defer m.exit()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.flushes++
	m.record("F")
	return nil
}

func (m *memBackend) snapshot() (data []byte, flushes int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]byte(nil), m.data...), m.flushes
}

// testServer runs srv on a fresh unix socket and returns its address; the
// server is shut down at the end of the test and Serve must return nil.
func testServer(t *testing.T, srv *Server) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "nbdt")
	if err != nil {
		t.Fatal(err)
	}
	addr := "unix:" + filepath.Join(dir, "s.sock")
	ln, err := Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	if srv.Logger == nil {
		srv.Logger = slog.New(slog.NewTextHandler(testLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
		os.RemoveAll(dir)
	})
	return addr
}

type testLogWriter struct{ t *testing.T }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// singleExport returns a Server exporting b under "" and "disk".
func singleExport(b Backend, ro bool) *Server {
	exp := &Export{Name: "disk", Description: "test disk", Backend: b, ReadOnly: ro}
	return &Server{
		Lookup: func(name string) (*Export, error) {
			if name == "" || name == "disk" {
				return exp, nil
			}
			return nil, nil
		},
		List: func() []string { return []string{"disk"} },
	}
}

// rawClient speaks the NBD wire protocol byte by byte, so tests can send
// anything, valid or not. Requests and replies are independent: a test may
// send several requests before reading replies.
type rawClient struct {
	t  *testing.T
	nc net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawClient {
	t.Helper()
	nc, err := Dial(context.Background(), addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	_ = nc.SetDeadline(time.Now().Add(20 * time.Second))
	return &rawClient{t: t, nc: nc, br: bufio.NewReader(nc)}
}

func (c *rawClient) write(p []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(p); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *rawClient) read(n int) []byte {
	c.t.Helper()
	p := make([]byte, n)
	if _, err := io.ReadFull(c.br, p); err != nil {
		c.t.Fatalf("read %d bytes: %v", n, err)
	}
	return p
}

// handshake reads the server greeting and sends the client flags.
func (c *rawClient) handshake(cflags uint32) {
	c.t.Helper()
	g := c.read(18)
	if binary.BigEndian.Uint64(g) != MagicNBD || binary.BigEndian.Uint64(g[8:]) != MagicOption {
		c.t.Fatalf("greeting %x", g)
	}
	if f := binary.BigEndian.Uint16(g[16:]); f != FlagFixedNewstyle|FlagNoZeroes {
		c.t.Fatalf("handshake flags %#x", f)
	}
	c.write(binary.BigEndian.AppendUint32(nil, cflags))
}

func (c *rawClient) option(id uint32, data []byte) {
	c.t.Helper()
	b := binary.BigEndian.AppendUint64(nil, MagicOption)
	b = binary.BigEndian.AppendUint32(b, id)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	c.write(append(b, data...))
}

type optReply struct {
	id, typ uint32
	data    []byte
}

func (c *rawClient) optReply() optReply {
	c.t.Helper()
	h := c.read(20)
	if m := binary.BigEndian.Uint64(h); m != MagicOptReply {
		c.t.Fatalf("option reply magic %#x", m)
	}
	n := binary.BigEndian.Uint32(h[16:])
	if n > 1<<16 {
		c.t.Fatalf("option reply of %d bytes", n)
	}
	return optReply{binary.BigEndian.Uint32(h[8:]), binary.BigEndian.Uint32(h[12:]), c.read(int(n))}
}

func infoRequest(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

// goExport negotiates name with NBD_OPT_GO and returns size and flags.
func (c *rawClient) goExport(name string) (size uint64, flags uint16) {
	c.t.Helper()
	c.handshake(FlagCFixedNewstyle | FlagCNoZeroes)
	c.option(OptGo, infoRequest(name))
	for {
		r := c.optReply()
		switch {
		case r.typ == RepAck:
			return size, flags
		case r.typ == RepInfo && binary.BigEndian.Uint16(r.data) == InfoExport:
			size, flags = binary.BigEndian.Uint64(r.data[2:]), binary.BigEndian.Uint16(r.data[10:])
		case r.typ == RepInfo:
		default:
			c.t.Fatalf("NBD_OPT_GO: reply type %#x: %s", r.typ, r.data)
		}
	}
}

func (c *rawClient) request(typ, flags uint16, cookie, off uint64, length uint32, payload []byte) {
	c.t.Helper()
	b := make([]byte, RequestHeaderLen, RequestHeaderLen+len(payload))
	binary.BigEndian.PutUint32(b[0:], MagicRequest)
	binary.BigEndian.PutUint16(b[4:], flags)
	binary.BigEndian.PutUint16(b[6:], typ)
	binary.BigEndian.PutUint64(b[8:], cookie)
	binary.BigEndian.PutUint64(b[16:], off)
	binary.BigEndian.PutUint32(b[24:], length)
	c.write(append(b, payload...))
}

// reply reads one simple reply header.
func (c *rawClient) reply() (cookie uint64, errno uint32) {
	c.t.Helper()
	h := c.read(ReplyHeaderLen)
	if m := binary.BigEndian.Uint32(h); m != MagicSimpleReply {
		c.t.Fatalf("reply magic %#x", m)
	}
	return binary.BigEndian.Uint64(h[8:]), binary.BigEndian.Uint32(h[4:])
}

// expectReply reads a reply and checks its cookie and errno; for a
// successful read it returns n bytes of data.
func (c *rawClient) expectReply(cookie uint64, errno uint32, n int) []byte {
	c.t.Helper()
	gc, ge := c.reply()
	if gc != cookie || ge != errno {
		c.t.Fatalf("reply cookie %d errno %d, want cookie %d errno %d", gc, ge, cookie, errno)
	}
	if errno == 0 && n > 0 {
		return c.read(n)
	}
	return nil
}

// expectClosed checks that the server closed the connection.
func (c *rawClient) expectClosed() {
	c.t.Helper()
	_ = c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	var b [1]byte
	_, err := c.br.Read(b[:])
	if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !isConnReset(err) {
		c.t.Fatalf("connection not closed: read returned %v", err)
	}
}

func isConnReset(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && !oe.Timeout()
}
