package protocol

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/urbd/urbd/internal/testpki"
)

// transports run a handshake test over an unbuffered pipe and over TCP.
var transports = []struct {
	name string
	pair func(testing.TB) (net.Conn, net.Conn)
}{
	{"pipe", func(testing.TB) (net.Conn, net.Conn) { return net.Pipe() }},
	{"tcp", tcpPair},
}

func TestHandshakeSuccess(t *testing.T) {
	for _, tr := range transports {
		for _, secret := range []string{"", "s3cret"} {
			t.Run(tr.name+"/secret="+secret, func(t *testing.T) {
				dcfg, acfg := testConfig(), testConfig()
				dcfg.Secret, acfg.Secret = []byte(secret), []byte(secret)
				dcfg.NodeID, acfg.NodeID = 1, 2
				d, a := tr.pair(t)
				dr, ar := handshakePair(t, d, a, dcfg, acfg)
				if dr.err != nil || ar.err != nil {
					t.Fatalf("dialer %v, acceptor %v", dr.err, ar.err)
				}
				if dr.s.Peer().NodeID != 2 || ar.s.Peer().NodeID != 1 {
					t.Fatalf("peers: dialer sees %+v, acceptor sees %+v", dr.s.Peer(), ar.s.Peer())
				}
				exchange(t, dr.s, ar.s)
			})
		}
	}
}

// exchange checks that each stream carries a frame both ways.
func exchange(t *testing.T, x, y *Session) {
	t.Helper()
	for _, pair := range [][2]*Session{{x, y}, {y, x}} {
		from, to := pair[0], pair[1]
		streams := []func(*Session) *Stream{(*Session).Control, (*Session).Data, (*Session).Resync}
		for i, st := range streams {
			if err := st(from).Send(&Ping{Seq: uint64(i)}); err != nil {
				t.Fatalf("send on %s: %v", st(from).Name(), err)
			}
			m, err := st(to).Recv()
			if err != nil {
				t.Fatalf("recv on %s: %v", st(to).Name(), err)
			}
			if p, ok := m.(*Ping); !ok || p.Seq != uint64(i) {
				t.Fatalf("recv on %s: %#v", st(to).Name(), m)
			}
		}
	}
}

// TestHandshakeMismatch: every check of the handshake refuses the peer
// before a session exists, over a pipe and over TCP, and reads the same on
// both sides, each from its own point of view, whichever side found the
// mismatch and refused the other: a node logs one line per cause, not two
// that alternate as each side dials in turn (a refused node once read
// "refused by peer: the peer has no shared secret but this node requires
// one" about itself).
func TestHandshakeMismatch(t *testing.T) {
	const (
		grow     = " (the smaller node, once its disk is grown too, starts with urbd up --grow)"
		differ   = "protocol: authentication failed: the two nodes' shared secrets do not match"
		requires = "protocol: authentication failed: the peer has no shared secret but this node requires one"
		lacks    = "protocol: authentication failed: the peer requires a shared secret but this node has none configured"
		sameNode = "protocol: peer has this node's id: both are node 5 (was the metadata copied? recreate one side's --meta)"
	)
	tests := []struct {
		name             string
		edit             func(d, a *Config)
		want             error
		dialer, acceptor string // each side's error text
	}{
		{"wrong secret", func(d, a *Config) { d.Secret = []byte("one") }, ErrAuth, differ, differ},
		{"wrong secret other way", func(d, a *Config) { a.Secret = []byte("two") }, ErrAuth, differ, differ},
		{"dialer without secret", func(d, a *Config) { d.Secret = nil }, ErrAuth, lacks, requires},
		{"acceptor without secret", func(d, a *Config) { a.Secret = nil }, ErrAuth, requires, lacks},
		{"size", func(d, a *Config) { d.Size, a.Size = 1073741824, 536870912 }, ErrSizeMismatch,
			"protocol: disk size mismatch: local 1073741824 bytes, peer 536870912 bytes" + grow,
			"protocol: disk size mismatch: local 536870912 bytes, peer 1073741824 bytes" + grow},
		{"resource", func(d, a *Config) { d.Resource, a.Resource = "r0", "r1" }, ErrResourceMismatch,
			`protocol: resource name mismatch: local "r0", peer "r1"`,
			`protocol: resource name mismatch: local "r1", peer "r0"`},
		{"bitmap block", func(d, a *Config) { d.BitmapBlock = 65536 }, ErrBitmapBlockMismatch,
			"protocol: bitmap block size mismatch: local 65536 bytes, peer 4096 bytes",
			"protocol: bitmap block size mismatch: local 4096 bytes, peer 65536 bytes"},
		{"same node id", func(d, a *Config) { d.NodeID, a.NodeID = 5, 5 }, ErrSameNode, sameNode, sameNode},
		// A busy acceptor refuses once the dialer is verified, with or
		// without a secret; one that cannot verify it says only that.
		{"busy", func(d, a *Config) { a.Busy = busy }, ErrBusy, "protocol: busy: the peer is busy", "protocol: busy: this node is busy"},
		{"busy with secret", func(d, a *Config) { d.Secret, a.Secret, a.Busy = []byte("s"), []byte("s"), busy }, ErrBusy,
			"protocol: busy: the peer is busy", "protocol: busy: this node is busy"},
		{"busy, wrong secret", func(d, a *Config) { d.Secret, a.Secret, a.Busy = []byte("one"), []byte("two"), busy }, ErrAuth, differ, differ},
		{"size mismatch, busy", func(d, a *Config) {
			d.Size, a.Size, a.Busy = 1, 2, busy
		}, ErrSizeMismatch, "protocol: disk size mismatch: local 1 bytes, peer 2 bytes" + grow, "protocol: disk size mismatch: local 2 bytes, peer 1 bytes" + grow},
	}
	for _, tr := range transports {
		for _, tc := range tests {
			t.Run(tr.name+"/"+tc.name, func(t *testing.T) {
				dcfg, acfg := testConfig(), testConfig()
				tc.edit(&dcfg, &acfg)
				d, a := tr.pair(t)
				dr, ar := handshakePair(t, d, a, dcfg, acfg)
				if dr.s != nil || ar.s != nil {
					t.Fatal("a session was established")
				}
				for _, side := range []struct {
					name      string
					err       error
					text      string
					isRefused bool
				}{{"dialer", dr.err, tc.dialer, true}, {"acceptor", ar.err, tc.acceptor, false}} {
					// The acceptor checks first and refuses the dialer.
					if !errors.Is(side.err, tc.want) || errors.Is(side.err, ErrRefused) != side.isRefused {
						t.Errorf("%s: got %v, want %v (refused by the peer: %v)", side.name, side.err, tc.want, side.isRefused)
					}
					if side.err == nil || side.err.Error() != side.text {
						t.Errorf("%s: %v, want %q", side.name, side.err, side.text)
					}
				}
			})
		}
	}
}

// busy is a Config.Busy that always refuses.
func busy() (local, peer string) { return "this node is busy", "the peer is busy" }

// A Refuse whose reason does not start with its cause's words (another
// implementation, or a cause only one side checks) still says the peer
// refused.
func TestRefusedErrorText(t *testing.T) {
	for _, tc := range []struct {
		r    Refuse
		want string
	}{
		{Refuse{Code: RefuseSize, Reason: "disk size mismatch: local 1 bytes, peer 2 bytes"}, "protocol: disk size mismatch: local 1 bytes, peer 2 bytes"},
		{Refuse{Code: RefuseSize, Reason: "sizes differ"}, "protocol: refused by peer: sizes differ"},
		{Refuse{Code: RefuseProtocol, Reason: "malformed message: expected Hello"}, "protocol: malformed message: expected Hello"},
		{Refuse{Code: RefuseProtocol, Reason: "expected Hello, got Ping"}, "protocol: refused by peer: expected Hello, got Ping"},
		{Refuse{Code: RefuseBusy, Reason: "busy: already connected"}, "protocol: busy: already connected"},
		{Refuse{Code: RefuseBusy, Reason: "come back later"}, "protocol: refused by peer: come back later"},
		{Refuse{Code: RefuseSize}, "protocol: refused by peer (code 3)"},
	} {
		if got := tc.r.Err().Error(); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.r, got, tc.want)
		}
	}
}

// fake drives one end of a connection by hand, frame by frame.
type fake struct {
	t    *testing.T
	c    net.Conn
	wseq uint32
}

func (f *fake) send(m Message) {
	f.t.Helper()
	b, err := AppendFrame(nil, f.wseq, m)
	if err != nil {
		f.t.Fatal(err)
	}
	f.wseq++
	if _, err := f.c.Write(b); err != nil {
		f.t.Fatalf("fake send %v: %v", m.Kind(), err)
	}
}

func (f *fake) recv() Message {
	f.t.Helper()
	var hdr [HeaderLen]byte
	if _, err := io.ReadFull(f.c, hdr[:]); err != nil {
		f.t.Fatalf("fake recv: %v", err)
	}
	n := be.Uint32(hdr[12:])
	b := make([]byte, HeaderLen+int(n))
	copy(b, hdr[:])
	if _, err := io.ReadFull(f.c, b[HeaderLen:]); err != nil {
		f.t.Fatalf("fake recv: %v", err)
	}
	m, _, _, err := DecodeFrame(b)
	if err != nil {
		f.t.Fatalf("fake recv: %v", err)
	}
	return m
}

// expectRefuseThenEOF reads the rest of the connection: exactly one
// Refuse with the given code, then end of stream (no yamux byte, so no
// stream was ever opened).
func (f *fake) expectRefuseThenEOF(code uint32) {
	f.t.Helper()
	m := f.recv()
	if r, ok := m.(*Refuse); !ok || r.Code != code {
		f.t.Fatalf("got %#v, want Refuse code %d", m, code)
	}
	rest, err := io.ReadAll(f.c)
	if len(rest) != 0 {
		f.t.Fatalf("%d bytes after Refuse (%v)", len(rest), err)
	}
}

func runAcceptor(cfg Config, c net.Conn) chan hsResult {
	ch := make(chan hsResult, 1)
	go func() {
		s, err := Handshake(context.Background(), c, cfg, false)
		if s != nil {
			s.Close()
		}
		ch <- hsResult{s, err}
	}()
	return ch
}

func runDialer(cfg Config, c net.Conn) chan hsResult {
	ch := make(chan hsResult, 1)
	go func() {
		s, err := Handshake(context.Background(), c, cfg, true)
		if s != nil {
			s.Close()
		}
		ch <- hsResult{s, err}
	}()
	return ch
}

// A dialer answering the challenge without the secret is refused before any
// stream exists.
func TestWrongResponseRefusedBeforeStreams(t *testing.T) {
	cfg := testConfig()
	mine, theirs := tcpPair(t)
	defer mine.Close()
	res := runAcceptor(cfg, theirs)
	f := &fake{t: t, c: mine}
	f.send(&Hello{Version: Version, Resource: cfg.Resource, Size: cfg.Size, BitmapBlock: cfg.BitmapBlock})
	if _, ok := f.recv().(*Hello); !ok {
		t.Fatal("no Hello")
	}
	f.send(&AuthChallenge{Mode: AuthHMAC, Nonce: [NonceLen]byte{1}})
	if _, ok := f.recv().(*AuthChallenge); !ok {
		t.Fatal("no AuthChallenge")
	}
	f.send(&AuthResponse{MAC: [MACLen]byte{1, 2, 3}})
	f.expectRefuseThenEOF(RefuseAuth)
	if r := <-res; !errors.Is(r.err, ErrAuth) {
		t.Fatalf("acceptor: %v", r.err)
	}
}

// TestAcceptorSeesDialerLeave: a dialer that closes the connection after
// AuthOK, before opening the streams (as a node does with a dial the
// tie-break drops), ends the acceptor's handshake with ErrPeerLeft, which
// the replication engine takes as no failure. A handshake that runs out of
// time in the same step is not that.
func TestAcceptorSeesDialerLeave(t *testing.T) {
	t.Run("closed", func(t *testing.T) {
		cfg := testConfig()
		cfg.Secret = nil
		mine, theirs := tcpPair(t)
		res := runAcceptor(cfg, theirs)
		fakeDialerUpToStreams(t, cfg, mine)
		mine.Close()
		if r := <-res; !errors.Is(r.err, ErrPeerLeft) {
			t.Fatalf("acceptor: %v, want ErrPeerLeft", r.err)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		cfg := testConfig()
		cfg.Secret = nil
		cfg.Timeout = 200 * time.Millisecond
		mine, theirs := tcpPair(t)
		defer mine.Close()
		res := runAcceptor(cfg, theirs)
		fakeDialerUpToStreams(t, cfg, mine)
		r := <-res // no stream is ever opened
		if r.err == nil || errors.Is(r.err, ErrPeerLeft) {
			t.Fatalf("acceptor whose dialer went silent: %v, want a timeout, not ErrPeerLeft", r.err)
		}
	})
}

// fakeDialerUpToStreams plays, on mine, a dialer without a secret through
// handshake steps 1 to 4 (up to AuthOK) against an acceptor configured
// with cfg.
func fakeDialerUpToStreams(t *testing.T, cfg Config, mine net.Conn) {
	t.Helper()
	f := &fake{t: t, c: mine}
	f.send(&Hello{Version: Version, Resource: cfg.Resource, Size: cfg.Size, BitmapBlock: cfg.BitmapBlock, NodeID: 1})
	if _, ok := f.recv().(*Hello); !ok {
		t.Fatal("no Hello")
	}
	f.send(&AuthChallenge{Mode: AuthNone})
	if _, ok := f.recv().(*AuthChallenge); !ok {
		t.Fatal("no AuthChallenge")
	}
	f.send(&AuthOK{})
}

// A replayed or reflected response (the acceptor's own MAC sent back) is
// refused, and an acceptor that answers wrongly is refused by the dialer.
func TestDialerRefusesWrongAcceptorResponse(t *testing.T) {
	cfg := testConfig()
	mine, theirs := net.Pipe()
	defer mine.Close()
	res := runDialer(cfg, theirs)
	f := &fake{t: t, c: mine}
	if _, ok := f.recv().(*Hello); !ok {
		t.Fatal("no Hello")
	}
	f.send(&Hello{Version: Version, Resource: cfg.Resource, Size: cfg.Size, BitmapBlock: cfg.BitmapBlock})
	ch, ok := f.recv().(*AuthChallenge)
	if !ok {
		t.Fatal("no AuthChallenge")
	}
	var nonce [NonceLen]byte
	f.send(&AuthChallenge{Mode: AuthHMAC, Nonce: nonce})
	resp, ok := f.recv().(*AuthResponse)
	if !ok {
		t.Fatal("no AuthResponse")
	}
	// Reflect the dialer's own proof back: the role byte makes it wrong.
	f.send(resp)
	f.expectRefuseThenEOF(RefuseAuth)
	if r := <-res; !errors.Is(r.err, ErrAuth) {
		t.Fatalf("dialer: %v", r.err)
	}
	// The dialer's proof was for our nonce and its own.
	if want := authMAC(cfg.Secret, true, &nonce, &ch.Nonce, nil); want != resp.MAC {
		t.Fatal("dialer MAC does not follow SPEC.md")
	}
}

func TestVersionMismatch(t *testing.T) {
	cfg := testConfig()
	t.Run("hello version", func(t *testing.T) {
		mine, theirs := net.Pipe()
		defer mine.Close()
		res := runAcceptor(cfg, theirs)
		f := &fake{t: t, c: mine}
		f.send(&Hello{Version: 1, Resource: cfg.Resource, Size: cfg.Size, BitmapBlock: cfg.BitmapBlock})
		m := f.recv()
		if r, ok := m.(*Refuse); !ok || r.Code != RefuseVersion || !strings.Contains(r.Reason, "local version 1, peer version 8") {
			t.Fatalf("got %#v", m)
		}
		r := <-res
		if !errors.Is(r.err, ErrVersion) || !strings.Contains(r.err.Error(), "local version 8, peer version 1") {
			t.Fatalf("acceptor: %v", r.err)
		}
	})
	t.Run("frame version", func(t *testing.T) {
		mine, theirs := net.Pipe()
		defer mine.Close()
		res := runAcceptor(cfg, theirs)
		b := mustFrame(t, 0, &Hello{Version: 1, Resource: cfg.Resource})
		b[4] = 1
		reseal(b)
		// The acceptor stops reading after the header; write from
		// elsewhere so the unbuffered pipe does not block us.
		go mine.Write(b)
		f := &fake{t: t, c: mine}
		// Both sides name the two versions as for a Hello's version.
		m := f.recv()
		if r, ok := m.(*Refuse); !ok || r.Code != RefuseVersion || r.Reason != "version mismatch: local version 1, peer version 8" {
			t.Fatalf("got %#v", m)
		}
		if r := <-res; !errors.Is(r.err, ErrVersion) || r.err.Error() != "protocol: version mismatch: local version 8, peer version 1" {
			t.Fatalf("acceptor: %v", r.err)
		}
		if got := m.(*Refuse).Err().Error(); got != "protocol: version mismatch: local version 1, peer version 8" {
			t.Fatalf("the refused side reads %q", got)
		}
	})
	t.Run("refused dialer", func(t *testing.T) {
		mine, theirs := net.Pipe()
		defer mine.Close()
		res := runDialer(cfg, theirs)
		f := &fake{t: t, c: mine}
		f.recv()
		f.send(&Refuse{Code: RefuseVersion, Reason: "version mismatch: local version 1, peer version 9"})
		r := <-res
		if !errors.Is(r.err, ErrVersion) || !errors.Is(r.err, ErrRefused) || !strings.Contains(r.err.Error(), "peer version 9") {
			t.Fatalf("dialer: %v", r.err)
		}
	})
}

// Hostile input during the handshake ends it without reading (or
// allocating for) the announced payload.
func TestHandshakeHostileFrames(t *testing.T) {
	cfg := testConfig()
	huge := mustFrame(t, 0, &Write{Length: 1, Data: []byte{1}})
	be.PutUint32(huge[12:], MaxPayload)
	tests := []struct {
		name  string
		bytes []byte
		want  error
	}{
		{"data frame announcing 32 MiB", huge, ErrUnexpected},
		{"garbage", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), ErrBadMagic},
		{"oversize hello", func() []byte {
			b := mustFrame(t, 0, &Hello{})
			be.PutUint32(b[12:], 1<<20)
			return b
		}(), ErrTooLarge},
		{"bad crc", func() []byte {
			b := mustFrame(t, 0, &Hello{Resource: "r0"})
			b[len(b)-1] ^= 1
			return b
		}(), ErrChecksum},
		{"stream frame first", mustFrame(t, 0, &AuthOK{}), ErrUnexpected},
		{"read frame", mustFrame(t, 0, &Read{Seq: 1, Length: 4096}), ErrUnexpected},
		{"read reply announcing 32 MiB", func() []byte {
			b := mustFrame(t, 0, &ReadReply{Data: []byte{1}})
			be.PutUint32(b[12:], readReplyFixed+MaxData)
			return b
		}(), ErrUnexpected},
		{"sequence gap", mustFrame(t, 5, &Hello{Version: Version, Resource: cfg.Resource}), ErrMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mine, theirs := tcpPair(t)
			defer mine.Close()
			res := runAcceptor(cfg, theirs)
			if _, err := mine.Write(tc.bytes); err != nil {
				t.Fatal(err)
			}
			if r := <-res; !errors.Is(r.err, tc.want) {
				t.Fatalf("got %v, want %v", r.err, tc.want)
			}
		})
	}
}

func TestHandshakeTimeoutAndCancel(t *testing.T) {
	t.Run("silent peer", func(t *testing.T) {
		cfg := testConfig()
		cfg.Timeout = 100 * time.Millisecond
		mine, theirs := net.Pipe()
		defer mine.Close()
		_, err := Handshake(context.Background(), theirs, cfg, false)
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		mine, theirs := net.Pipe()
		defer mine.Close()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			_, err := Handshake(ctx, theirs, testConfig(), true)
			done <- err
		}()
		// The dialer speaks first: once its Hello is read it waits for us.
		f := &fake{t: t, c: mine}
		f.recv()
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v", err)
		}
	})
}

// Garbage from the peer after the handshake kills that session only.
func TestGarbageKillsOnlyThatSession(t *testing.T) {
	d1, a1 := sessionPair(t)
	d2, a2 := sessionPair(t)
	// Bypass the framing: write raw bytes into the dialer's data stream.
	if _, err := d1.Data().w.Write([]byte("this is not a frame at all")); err != nil {
		t.Fatal(err)
	}
	_, err := a1.Data().Recv()
	if !errors.Is(err, ErrBadMagic) {
		t.Fatalf("acceptor data Recv: %v", err)
	}
	<-a1.Done()
	// The acceptor told the dialer why before closing.
	m, err := d1.Control().Recv()
	if r, ok := m.(*Refuse); !ok || r.Code != RefuseProtocol || !errors.Is(r.Err(), ErrMalformed) ||
		!strings.Contains(r.Reason, "bad frame magic") {
		t.Fatalf("dialer control Recv: %#v, %v", m, err)
	}
	<-d1.Done()
	if !errors.Is(a1.Err(), ErrBadMagic) {
		t.Fatalf("acceptor session Err: %v", a1.Err())
	}
	if _, err := a1.Control().Recv(); !errors.Is(err, ErrClosed) {
		t.Fatalf("control Recv on the dead session: %v", err)
	}
	if err := d1.Control().Send(&Ping{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Send on the dead session: %v", err)
	}
	select {
	case <-d2.Done():
		t.Fatal("the other session died")
	case <-a2.Done():
		t.Fatal("the other session died")
	default:
	}
	exchange(t, d2, a2)
}

func TestGarbageBelowYamux(t *testing.T) {
	d, a := sessionPair(t)
	if _, err := d.conn.Write([]byte("garbage garbage garbage")); err != nil {
		t.Fatal(err)
	}
	<-a.Done()
	if _, err := a.Data().Recv(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Recv: %v", err)
	}
}

func TestCorruptFrameKillsSession(t *testing.T) {
	d, a := sessionPair(t)
	b := mustFrame(t, 1, &Ack{Seq: 1, Type: AckDone}) // seq 0 was StreamOpen
	b[HeaderLen] ^= 0xff
	if _, err := d.Data().w.Write(b); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Data().Recv(); !errors.Is(err, ErrChecksum) {
		t.Fatalf("Recv: %v", err)
	}
	<-d.Done()
}

func TestHandshakeKindAfterHandshake(t *testing.T) {
	d, a := sessionPair(t)
	if err := d.Control().Send(&Hello{Version: Version}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Control().Recv(); !errors.Is(err, ErrUnexpected) {
		t.Fatalf("Recv: %v", err)
	}
}

func TestExtraStreamKillsSession(t *testing.T) {
	d, a := sessionPair(t)
	// OpenStream may report the session shut down: the acceptor can kill
	// it before yamux confirms the SYN was written.
	d.ys.OpenStream()
	<-a.Done()
	if !errors.Is(a.Err(), ErrUnexpected) {
		t.Fatalf("Err: %v", a.Err())
	}
}

func TestCloseIsIdempotentAndErrClosed(t *testing.T) {
	d, a := sessionPair(t)
	if d.Err() != nil {
		t.Fatalf("Err on a live session: %v", d.Err())
	}
	d.Close()
	d.Close()
	<-d.Done()
	if !errors.Is(d.Err(), ErrClosed) {
		t.Fatalf("Err: %v", d.Err())
	}
	<-a.Done()
	if _, err := d.Data().Recv(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Recv after Close: %v", err)
	}
}

func TestTLS(t *testing.T) {
	ca := testpki.New(t, "urbd test CA")
	other := testpki.New(t, "some other CA")
	nodeA, _, _ := ca.Leaf(t, "node-a")
	nodeB, _, _ := ca.Leaf(t, "node-b")
	rogue, _, _ := other.Leaf(t, "rogue")

	t.Run("success", func(t *testing.T) {
		dcfg, acfg := testConfig(), testConfig()
		dcfg.TLS = NewTLSConfig(nodeA, ca.Pool)
		acfg.TLS = NewTLSConfig(nodeB, ca.Pool)
		d, a := tcpPair(t)
		dr, ar := handshakePair(t, d, a, dcfg, acfg)
		if dr.err != nil || ar.err != nil {
			t.Fatalf("dialer %v, acceptor %v", dr.err, ar.err)
		}
		if _, ok := dr.s.conn.(*tls.Conn); !ok {
			t.Fatal("session transport is not TLS")
		}
		exchange(t, dr.s, ar.s)
	})
	for _, tc := range []struct {
		name       string
		dial, acpt tls.Certificate
		dpool      *x509.CertPool
	}{
		{"dialer cert from another CA", rogue, nodeB, ca.Pool},
		{"acceptor cert from another CA", nodeA, rogue, other.Pool},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dcfg, acfg := testConfig(), testConfig()
			dcfg.TLS = NewTLSConfig(tc.dial, tc.dpool)
			acfg.TLS = NewTLSConfig(tc.acpt, ca.Pool)
			if tc.name == "acceptor cert from another CA" {
				dcfg.TLS = NewTLSConfig(tc.dial, ca.Pool)
			}
			d, a := tcpPair(t)
			dr, ar := handshakePair(t, d, a, dcfg, acfg)
			if !errors.Is(dr.err, ErrTLS) || !errors.Is(ar.err, ErrTLS) {
				t.Fatalf("dialer %v, acceptor %v; want ErrTLS on both", dr.err, ar.err)
			}
			// The side that refused names the CA; the refused side says
			// its certificate was not accepted, as dialer or acceptor.
			refuser, refused := ar.err, dr.err
			if tc.name == "acceptor cert from another CA" {
				refuser, refused = dr.err, ar.err
			}
			if !strings.HasPrefix(refuser.Error(), "protocol: TLS handshake failed: the peer's certificate does not chain to the CA of this node's --tls-ca: ") {
				t.Errorf("refusing side: %v", refuser)
			}
			if !strings.HasPrefix(refused.Error(), "protocol: TLS handshake failed: the peer does not accept this node's certificate") || !errors.Is(refused, ErrRefused) {
				t.Errorf("refused side: %v (want it to wrap ErrRefused)", refused)
			}
			if errors.Is(refuser, ErrRefused) {
				t.Errorf("refusing side: %v wraps ErrRefused", refuser)
			}
		})
	}
	// TLS on one side only: each side says which has it, in the same
	// words whichever dialed (see TestHandshakeMismatch).
	const (
		requires = "protocol: TLS handshake failed: the peer has no TLS configured but this node requires it (give both nodes --tls-cert, --tls-key and --tls-ca, or neither)"
		lacks    = "protocol: TLS handshake failed: the peer requires TLS but this node has none configured (give both nodes --tls-cert, --tls-key and --tls-ca, or neither)"
	)
	for _, tc := range []struct {
		name             string
		dialTLS          bool
		dialer, acceptor string
	}{
		{"plain dialer", false, lacks, requires},
		{"plain acceptor", true, requires, lacks},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dcfg, acfg := testConfig(), testConfig()
			if tc.dialTLS {
				dcfg.TLS = NewTLSConfig(nodeA, ca.Pool)
			} else {
				acfg.TLS = NewTLSConfig(nodeB, ca.Pool)
			}
			dcfg.Timeout, acfg.Timeout = time.Second, time.Second
			d, a := tcpPair(t)
			dr, ar := handshakePair(t, d, a, dcfg, acfg)
			if dr.err == nil || dr.err.Error() != tc.dialer || !errors.Is(dr.err, ErrTLS) {
				t.Errorf("dialer: %v, want %q", dr.err, tc.dialer)
			}
			if ar.err == nil || ar.err.Error() != tc.acceptor || !errors.Is(ar.err, ErrTLS) {
				t.Errorf("acceptor: %v, want %q", ar.err, tc.acceptor)
			}
		})
	}
}

func TestLoadTLSAndSecret(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.New(t, "urbd test CA")
	_, certPEM, keyPEM := ca.Leaf(t, "node")
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cert, key, caf := write("cert.pem", certPEM), write("key.pem", keyPEM), write("ca.pem", ca.PEM)
	cfg, _, err := LoadTLS(cert, key, caf)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MinVersion != tls.VersionTLS13 || len(cfg.Certificates) != 1 || cfg.VerifyConnection == nil {
		t.Fatalf("config %+v", cfg)
	}
	if _, _, err := LoadTLS(cert, key, write("empty.pem", []byte("nothing"))); err == nil {
		t.Fatal("CA without certificates accepted")
	}
	if _, _, err := LoadTLS(cert, caf, caf); err == nil {
		t.Fatal("mismatched key accepted")
	}

	secretTests := []struct {
		content string
		want    string
		err     bool
	}{
		{"hunter2\n", "hunter2", false},
		{"  spaced secret \r\n\n", "spaced secret", false},
		{"\n", "", true},
		{"", "", true},
		{strings.Repeat("x", MaxSecret), strings.Repeat("x", MaxSecret), false},
		{strings.Repeat("x", MaxSecret) + "\n", strings.Repeat("x", MaxSecret), false},
		{strings.Repeat("x", MaxSecret+1), "", true},
	}
	for i, tc := range secretTests {
		got, err := LoadSecret(write("secret", []byte(tc.content)))
		if tc.err {
			if !errors.Is(err, ErrSecret) {
				t.Errorf("case %d: got %q, %v; want ErrSecret", i, got, err)
			}
			continue
		}
		if err != nil || string(got) != tc.want {
			t.Errorf("case %d: got %q, %v; want %q", i, got, err, tc.want)
		}
	}
	if _, err := LoadSecret(filepath.Join(dir, "missing")); !errors.Is(err, ErrSecret) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

// TestAuthBindsTheTLSChannel: each proof covers the TLS channel binding, so
// a relay between two TLS sessions (each node then sees another channel)
// cannot hand one node's proof on to the other, even though both nodes hold
// the same secret.
func TestAuthBindsTheTLSChannel(t *testing.T) {
	cfg := Config{Secret: []byte("shared secret")}
	for _, tc := range []struct {
		name             string
		dialer, acceptor string
		ok               bool
	}{
		{"one channel", "channel one", "channel one", true},
		{"relayed", "channel one", "channel two", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, a := net.Pipe()
			defer a.Close()
			aerr := make(chan error, 1)
			go func() { aerr <- authenticate(&rawConn{c: a}, &cfg, false, []byte(tc.acceptor)) }()
			derr := authenticate(&rawConn{c: d}, &cfg, true, []byte(tc.dialer))
			d.Close()
			for side, err := range map[string]error{"dialer": derr, "acceptor": <-aerr} {
				switch {
				case tc.ok && err != nil:
					t.Errorf("%s: %v", side, err)
				case !tc.ok && !errors.Is(err, ErrAuth):
					t.Errorf("%s: %v, want ErrAuth", side, err)
				}
			}
		})
	}
}
