package nbd

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestNegotiationGoReportsExport(t *testing.T) {
	b := newMemBackend(1 << 20)
	srv := singleExport(b, false)
	srv.Lookup = func(name string) (*Export, error) {
		return &Export{Name: "disk", Description: "test disk", Backend: b, MultiConn: true}, nil
	}
	c := dialRaw(t, testServer(t, srv))
	c.handshake(FlagCFixedNewstyle)
	c.option(OptGo, infoRequest("", InfoName, InfoDescription, InfoBlockSize))
	got := map[uint16][]byte{}
	for {
		r := c.optReply()
		if r.id != OptGo {
			t.Fatalf("reply to option %d", r.id)
		}
		if r.typ == RepAck {
			break
		}
		if r.typ != RepInfo {
			t.Fatalf("reply type %#x", r.typ)
		}
		got[binary.BigEndian.Uint16(r.data)] = r.data[2:]
	}
	exp := got[InfoExport]
	if len(exp) != 10 || binary.BigEndian.Uint64(exp) != 1<<20 {
		t.Fatalf("NBD_INFO_EXPORT %x", exp)
	}
	wantFlags := FlagHasFlags | FlagSendFlush | FlagSendFUA | FlagSendTrim | FlagSendWriteZeroes | FlagCanMultiConn
	if f := binary.BigEndian.Uint16(exp[8:]); f != wantFlags {
		t.Errorf("flags %#x, want %#x", f, wantFlags)
	}
	if string(got[InfoName]) != "disk" || string(got[InfoDescription]) != "test disk" {
		t.Errorf("name %q description %q", got[InfoName], got[InfoDescription])
	}
	bs := got[InfoBlockSize]
	if len(bs) != 12 || binary.BigEndian.Uint32(bs) != MinBlockSize ||
		binary.BigEndian.Uint32(bs[4:]) != PreferredBlockSize || binary.BigEndian.Uint32(bs[8:]) != MaxBlockSize {
		t.Errorf("block size %x", bs)
	}
	// Transmission works right after the ACK.
	c.request(CmdRead, 0, 7, 0, 512, nil)
	c.expectReply(7, 0, 512)
	if srv.Clients() != 1 {
		t.Errorf("Clients() = %d, want 1", srv.Clients())
	}
}

func TestNegotiationInfoThenGo(t *testing.T) {
	c := dialRaw(t, testServer(t, singleExport(newMemBackend(4096), true)))
	c.handshake(FlagCFixedNewstyle | FlagCNoZeroes)
	c.option(OptInfo, infoRequest("disk"))
	var sawExport bool
	for r := c.optReply(); r.typ != RepAck; r = c.optReply() {
		if r.typ == RepInfo && binary.BigEndian.Uint16(r.data) == InfoExport {
			sawExport = true
			if f := binary.BigEndian.Uint16(r.data[10:]); f&FlagReadOnly == 0 || f&FlagSendTrim != 0 {
				t.Errorf("read-only export flags %#x", f)
			}
		}
	}
	if !sawExport {
		t.Fatal("no NBD_INFO_EXPORT")
	}
	// Still negotiating: GO now.
	c.option(OptGo, infoRequest("disk"))
	for r := c.optReply(); r.typ != RepAck; r = c.optReply() {
	}
	c.request(CmdWrite, 0, 1, 0, 3, []byte("abc"))
	c.expectReply(1, ErrnoPerm, 0)
	c.request(CmdRead, 0, 2, 0, 3, nil)
	c.expectReply(2, 0, 3)
}

func TestNegotiationExportName(t *testing.T) {
	for _, tc := range []struct {
		name     string
		cflags   uint32
		trailing int
	}{
		{"zeroes", FlagCFixedNewstyle, 124},
		{"no zeroes", FlagCFixedNewstyle | FlagCNoZeroes, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialRaw(t, testServer(t, singleExport(newMemBackend(8192), false)))
			c.handshake(tc.cflags)
			c.option(OptExportName, []byte("disk"))
			r := c.read(10 + tc.trailing)
			if binary.BigEndian.Uint64(r) != 8192 {
				t.Errorf("size %d", binary.BigEndian.Uint64(r))
			}
			if !bytes.Equal(r[10:], make([]byte, tc.trailing)) {
				t.Errorf("padding %x", r[10:])
			}
			c.request(CmdRead, 0, 9, 4096, 4096, nil)
			c.expectReply(9, 0, 4096)
		})
	}
}

func TestNegotiationExportNameUnknownCloses(t *testing.T) {
	c := dialRaw(t, testServer(t, singleExport(newMemBackend(8192), false)))
	c.handshake(FlagCFixedNewstyle)
	c.option(OptExportName, []byte("nope"))
	c.expectClosed()
}

func TestNegotiationList(t *testing.T) {
	c := dialRaw(t, testServer(t, singleExport(newMemBackend(8192), false)))
	c.handshake(FlagCFixedNewstyle)
	c.option(OptList, nil)
	r := c.optReply()
	if r.typ != RepServer || binary.BigEndian.Uint32(r.data) != 4 || string(r.data[4:]) != "disk" {
		t.Fatalf("list reply %#x %q", r.typ, r.data)
	}
	if r = c.optReply(); r.typ != RepAck {
		t.Fatalf("reply %#x, want ACK", r.typ)
	}
	c.option(OptList, []byte("x"))
	if r = c.optReply(); r.typ != RepErrInvalid {
		t.Fatalf("LIST with data: reply %#x, want ERR_INVALID", r.typ)
	}
}

func TestNegotiationAbort(t *testing.T) {
	c := dialRaw(t, testServer(t, singleExport(newMemBackend(8192), false)))
	c.handshake(FlagCFixedNewstyle)
	c.option(OptAbort, nil)
	if r := c.optReply(); r.typ != RepAck || r.id != OptAbort {
		t.Fatalf("abort reply %#x", r.typ)
	}
	c.expectClosed()
}

func TestNegotiationUnsupportedOptions(t *testing.T) {
	c := dialRaw(t, testServer(t, singleExport(newMemBackend(8192), false)))
	c.handshake(FlagCFixedNewstyle)
	for _, id := range []uint32{OptStructuredReply, OptStartTLS, 9, 10, 11, 12345} {
		c.option(id, []byte("payload"))
		if r := c.optReply(); r.typ != RepErrUnsup || r.id != id {
			t.Fatalf("option %d: reply %#x, want ERR_UNSUP", id, r.typ)
		}
	}
	size, _ := c.goExport2()
	if size != 8192 {
		t.Fatalf("size %d", size)
	}
}

// goExport2 sends NBD_OPT_GO for "" on a connection already past the
// handshake.
func (c *rawClient) goExport2() (size uint64, flags uint16) {
	c.t.Helper()
	c.option(OptGo, infoRequest(""))
	for r := c.optReply(); r.typ != RepAck; r = c.optReply() {
		if r.typ != RepInfo {
			c.t.Fatalf("GO reply %#x %s", r.typ, r.data)
		}
		if binary.BigEndian.Uint16(r.data) == InfoExport {
			size, flags = binary.BigEndian.Uint64(r.data[2:]), binary.BigEndian.Uint16(r.data[10:])
		}
	}
	return size, flags
}

func TestNegotiationRefusals(t *testing.T) {
	for _, tc := range []struct {
		name    string
		err     error
		wantTyp uint32
	}{
		{"unknown", fmt.Errorf("%w: r9", ErrUnknownExport), RepErrUnknown},
		{"secondary", Refuse(errors.New("resource r0 is Secondary: promote it with urbd primary r0")), RepErrPolicy},
		{"other error", errors.New("no such thing"), RepErrUnknown},
		{"shutdown", fmt.Errorf("stopping: %w", ErrShutdown), RepErrShutdown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := &Server{Lookup: func(string) (*Export, error) { return nil, tc.err }}
			c := dialRaw(t, testServer(t, srv))
			c.handshake(FlagCFixedNewstyle)
			for _, opt := range []uint32{OptInfo, OptGo} {
				c.option(opt, infoRequest("r0"))
				r := c.optReply()
				if r.typ != tc.wantTyp || string(r.data) != tc.err.Error() {
					t.Fatalf("option %d: reply %#x %q, want %#x %q", opt, r.typ, r.data, tc.wantTyp, tc.err)
				}
			}
			if srv.Clients() != 0 {
				t.Errorf("Clients() = %d", srv.Clients())
			}
		})
	}
}

func TestNegotiationBadInput(t *testing.T) {
	for _, tc := range []struct {
		name string
		send func(c *rawClient)
	}{
		{"bad client flags", func(c *rawClient) {
			c.write([]byte{0, 0, 0, 0x80})
		}},
		{"bad option magic", func(c *rawClient) {
			c.handshake(FlagCFixedNewstyle)
			c.write(bytes.Repeat([]byte{0xee}, 16))
		}},
		{"huge option", func(c *rawClient) {
			c.handshake(FlagCFixedNewstyle)
			b := binary.BigEndian.AppendUint64(nil, MagicOption)
			b = binary.BigEndian.AppendUint32(b, OptGo)
			b = binary.BigEndian.AppendUint32(b, 0xffffffff)
			c.write(b)
		}},
		{"huge export name", func(c *rawClient) {
			c.handshake(FlagCFixedNewstyle)
			b := binary.BigEndian.AppendUint64(nil, MagicOption)
			b = binary.BigEndian.AppendUint32(b, OptExportName)
			b = binary.BigEndian.AppendUint32(b, MaxOptionLen+1)
			c.write(b)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialRaw(t, testServer(t, singleExport(newMemBackend(4096), false)))
			if tc.name == "bad client flags" {
				c.read(18)
			}
			tc.send(c)
			c.expectClosed()
		})
	}
}

func TestNegotiationOversizedOptionIsSkipped(t *testing.T) {
	c := dialRaw(t, testServer(t, singleExport(newMemBackend(4096), false)))
	c.handshake(FlagCFixedNewstyle)
	c.option(OptGo, make([]byte, MaxOptionLen+1))
	if r := c.optReply(); r.typ != RepErrTooBig {
		t.Fatalf("reply %#x, want ERR_TOO_BIG", r.typ)
	}
	c.option(OptGo, []byte{1, 2, 3})
	if r := c.optReply(); r.typ != RepErrInvalid {
		t.Fatalf("short GO: reply %#x, want ERR_INVALID", r.typ)
	}
	if size, _ := c.goExport2(); size != 4096 {
		t.Fatalf("size %d", size)
	}
}

func TestParseInfoRequest(t *testing.T) {
	for _, tc := range []struct {
		name     string
		data     []byte
		wantName string
		wantN    int
		wantErr  bool
	}{
		{"empty name", infoRequest(""), "", 0, false},
		{"name and infos", infoRequest("r0", InfoName, InfoBlockSize), "r0", 2, false},
		{"short", []byte{0, 0, 0}, "", 0, true},
		{"name too long for data", append(binary.BigEndian.AppendUint32(nil, 100), 0, 0), "", 0, true},
		{"name length overflow", append(binary.BigEndian.AppendUint32(nil, 0xfffffffa), 0, 0, 0, 0), "", 0, true},
		{"count mismatch", append(infoRequest("a"), 0, 1), "", 0, true},
		{"odd trailing", append(infoRequest("a", 1), 0), "", 0, true},
		{"name over limit", infoRequest(strings.Repeat("x", MaxNameLen+1)), "", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name, infos, err := parseInfoRequest(tc.data)
			if tc.wantErr {
				if !errors.Is(err, ErrBadClient) {
					t.Fatalf("err = %v, want ErrBadClient", err)
				}
				return
			}
			if err != nil || name != tc.wantName || len(infos) != tc.wantN {
				t.Fatalf("got %q %v %v", name, infos, err)
			}
		})
	}
}

func TestNegotiationTimeout(t *testing.T) {
	srv := singleExport(newMemBackend(4096), false)
	srv.NegotiationTimeout = 50 * time.Millisecond
	addr := testServer(t, srv)
	c := dialRaw(t, addr)
	c.read(18) // the greeting, then silence
	c.expectClosed()
	// A client that completes negotiation is not bound by the timeout: it
	// is still served after a multiple of it.
	c2 := dialRaw(t, addr)
	c2.goExport("")
	time.Sleep(4 * srv.NegotiationTimeout) // the condition under test is elapsed time
	c2.request(CmdRead, 0, 1, 0, 512, nil)
	c2.expectReply(1, 0, 512)
}

// TestExportAttach: Attach runs when a client selects the export with
// NBD_OPT_GO or NBD_OPT_EXPORT_NAME, never for NBD_OPT_INFO; its error
// refuses the export with its text; its release runs once the client left,
// after the disconnect flush, when Clients no longer counts it.
func TestExportAttach(t *testing.T) {
	mem := newMemBackend(8192)
	var mu sync.Mutex
	attached, released := 0, 0
	var refuse error
	var clientsAtRelease int
	var srv *Server
	exp := &Export{Backend: mem, Attach: func() (func(), error) {
		mu.Lock()
		defer mu.Unlock()
		if refuse != nil {
			return nil, refuse
		}
		attached++
		return func() {
			mu.Lock()
			defer mu.Unlock()
			released++
			clientsAtRelease = srv.Clients()
		}, nil
	}}
	srv = &Server{Lookup: func(string) (*Export, error) { return exp, nil }}
	addr := testServer(t, srv)
	counts := func() (int, int) {
		mu.Lock()
		defer mu.Unlock()
		return attached, released
	}

	c := dialRaw(t, addr)
	c.handshake(FlagCFixedNewstyle)
	c.option(OptInfo, infoRequest(""))
	for r := c.optReply(); r.typ != RepAck; r = c.optReply() {
	}
	if a, _ := counts(); a != 0 {
		t.Fatalf("NBD_OPT_INFO attached %d times", a)
	}
	c.goExport2()
	if a, r := counts(); a != 1 || r != 0 {
		t.Fatalf("after NBD_OPT_GO: attached %d, released %d; want 1, 0", a, r)
	}
	c.request(CmdWrite, 0, 1, 0, 4, []byte("abcd"))
	c.expectReply(1, 0, 0)
	_, flushesBefore := mem.snapshot()
	c.request(CmdDisc, 0, 2, 0, 0, nil)
	deadline := time.Now().Add(5 * time.Second)
	for _, r := counts(); r != 1; _, r = counts() {
		if time.Now().After(deadline) {
			t.Fatal("release not called after the client disconnected")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, flushes := mem.snapshot(); flushes <= flushesBefore {
		t.Error("release ran before the disconnect flush")
	}
	if clientsAtRelease != 0 {
		t.Errorf("Clients() = %d when release ran, want 0", clientsAtRelease)
	}

	mu.Lock()
	refuse = Refuse(errors.New("resource r0 is Secondary; auto-promote refused: the peer is Primary"))
	mu.Unlock()
	c = dialRaw(t, addr)
	c.handshake(FlagCFixedNewstyle)
	c.option(OptGo, infoRequest(""))
	if r := c.optReply(); r.typ != RepErrPolicy || string(r.data) != refuse.Error() {
		t.Fatalf("refused attach: reply %#x %q, want ERR_POLICY %q", r.typ, r.data, refuse)
	}
	c = dialRaw(t, addr)
	c.handshake(FlagCFixedNewstyle)
	c.option(OptExportName, nil)
	c.expectClosed()
	if a, r := counts(); a != 1 || r != 1 {
		t.Fatalf("after refusals: attached %d, released %d; want 1, 1", a, r)
	}
}

// failWriter fails every write, as a connection the client closed.
type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("connection reset") }

// TestExportAttachReleasedWhenRepliesFail: a client that selected the export
// but never got the answer (the replies failed) releases what Attach took.
func TestExportAttachReleasedWhenRepliesFail(t *testing.T) {
	for _, opt := range []uint32{OptGo, OptExportName} {
		released := 0
		exp := &Export{Backend: newMemBackend(4096), Attach: func() (func(), error) {
			return func() { released++ }, nil
		}}
		n := negotiation{bw: bufio.NewWriterSize(failWriter{}, 16), lookup: func(string) (*Export, error) { return exp, nil }}
		data := infoRequest("")
		if opt == OptExportName {
			data = nil
		}
		if _, _, err := n.option(opt, data); err == nil {
			t.Fatalf("option %d: replies to a failed connection reported no error", opt)
		}
		if released != 1 {
			t.Errorf("option %d: released %d times after the replies failed, want 1", opt, released)
		}
	}
}
