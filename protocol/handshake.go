package protocol

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
)

// Additional handshake sentinels.
var (
	// ErrTLS: the TLS handshake failed (for example, the peer's certificate
	// is not signed by the configured CA, or it sent none).
	ErrTLS = errors.New("protocol: TLS handshake failed")
	// ErrSameNode: the peer announced this node's own NodeID (a node
	// connected to itself, or two nodes configured with one identity).
	ErrSameNode = errors.New("protocol: peer has this node's id")
	// ErrBusy: the acceptor cannot take a connection now (Config.Busy).
	ErrBusy = errors.New("protocol: busy")
)

// DefaultTimeout is used when Config.Timeout is zero (DRBD's default).
const DefaultTimeout = 6 * time.Second

// streamWindow is the yamux receive window of each stream: enough for a
// burst of 1 MiB writes in flight on a fast link.
const streamWindow = 16 << 20

// Config for the handshake.
type Config struct {
	Resource    string
	Size        uint64 // disk size in bytes; must match the peer's
	NodeID      uint64 // this node's id; 0 = unset (not compared)
	BitmapBlock uint32 // bytes per dirty-bitmap bit; must match the peer's
	// Secret is the shared secret (from --secret-file); nil or empty = no
	// authentication, and then the peer must have none either.
	Secret []byte
	// TLS enables mutual TLS; nil = plain TCP. Build it with LoadTLS.
	TLS *tls.Config
	// Timeout bounds the whole handshake; after it, it is the yamux keepalive
	// budget (a dead peer is detected within Timeout) and bounds each
	// transport write of a Stream. Zero means DefaultTimeout.
	Timeout time.Duration
	// LogOutput receives yamux's diagnostics; nil discards them.
	LogOutput io.Writer
	// Busy, if set, is asked by the acceptor once it has verified the
	// dialer, before its last handshake frame: a non-empty local refuses
	// the connection with Refuse code 8 (busy) whose reason is peer (the
	// same cause from the dialer's point of view), and the acceptor's
	// Handshake returns an error wrapping ErrBusy that says local.
	Busy func() (local, peer string)
}

func (c *Config) timeout() time.Duration {
	if c.Timeout <= 0 {
		return DefaultTimeout
	}
	return c.Timeout
}

func (c *Config) hello() Hello {
	return Hello{Version: Version, Resource: c.Resource, Size: c.Size, NodeID: c.NodeID, BitmapBlock: c.BitmapBlock}
}

func (c *Config) authMode() uint8 {
	if len(c.Secret) > 0 {
		return AuthHMAC
	}
	return AuthNone
}

// Handshake runs on a freshly dialed (dialer=true) or accepted (dialer=false)
// connection and returns the established Session. See SPEC.md "Handshake":
// optional TLS; Hello exchange (version, resource, size and bitmap block must
// match: a mismatch is told to the peer with Refuse and returned as an error
// naming both values); mutual HMAC-SHA256 challenge-response over the secret;
// then yamux and its three streams. The dialer is the yamux client and opens
// the streams.
//
// The whole handshake is bounded by cfg.Timeout and ctx. On failure conn is
// closed and the error wraps ErrVersion, ErrResourceMismatch, ErrSizeMismatch,
// ErrBitmapBlockMismatch, ErrSameNode, ErrAuth, ErrTLS, ErrRefused (with the
// peer's cause when it has one), a decoding sentinel, or ctx's error. On
// success the Session owns conn.
func Handshake(ctx context.Context, conn net.Conn, cfg Config, dialer bool) (*Session, error) {
	if len(cfg.Resource) > MaxResource {
		conn.Close()
		return nil, fmt.Errorf("%w: resource name of %d bytes, limit %d", ErrInvalid, len(cfg.Resource), MaxResource)
	}
	timeout := cfg.timeout()
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	if err := conn.SetDeadline(deadline); err != nil {
		conn.Close()
		return nil, fmt.Errorf("protocol: handshake: %w", err)
	}
	// Cancelling ctx interrupts blocked reads and writes.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	s, err := handshake(ctx, conn, cfg, dialer, deadline)
	if !stop() && err == nil {
		// ctx ended while finishing: the transport deadline may be in the past.
		s.fail(fmt.Errorf("protocol: handshake: %w", context.Cause(ctx)))
		s.wait()
		err = fmt.Errorf("protocol: handshake: %w", context.Cause(ctx))
	}
	if err != nil {
		conn.Close()
		if ctx.Err() != nil && errors.Is(err, os.ErrDeadlineExceeded) {
			err = fmt.Errorf("%w (%w)", err, context.Cause(ctx))
		}
		return nil, err
	}
	return s, nil
}

func handshake(ctx context.Context, conn net.Conn, cfg Config, dialer bool, deadline time.Time) (*Session, error) {
	var binding []byte
	raw := conn
	if cfg.TLS != nil {
		var tc *tls.Conn
		if dialer {
			tc = tls.Client(conn, cfg.TLS)
		} else {
			tc = tls.Server(conn, cfg.TLS)
		}
		if err := tc.HandshakeContext(ctx); err != nil {
			var rh tls.RecordHeaderError
			if errors.As(err, &rh) && bytes.HasPrefix(rh.RecordHeader[:], magic[:]) {
				// The peer sent a frame of ours in clear: a Hello, or
				// the Refuse below from a node without TLS.
				ref, lerr := tlsOneSide(true)
				if !dialer {
					(&rawConn{c: raw}).refuseUnread(ref)
				}
				return nil, lerr
			}
			return nil, tlsFailure(err)
		}
		cs := tc.ConnectionState()
		b, err := cs.ExportKeyingMaterial("urbd auth v1", nil, 32)
		if err != nil {
			return nil, fmt.Errorf("%w: keying material: %w", ErrTLS, err)
		}
		binding = b
		conn = tc
	}
	rc := &rawConn{c: conn}
	peer, err := exchangeHello(rc, &cfg, dialer)
	if err == nil {
		err = authenticate(rc, &cfg, dialer, binding)
	}
	if err != nil {
		// In TLS 1.3 the client finishes its handshake before the server
		// has checked the client's certificate; a rejection arrives as an
		// alert on the first read.
		if cfg.TLS != nil && tlsAlert(err) != nil {
			err = tlsFailure(err)
		}
		return nil, err
	}
	// The transport now belongs to yamux, which has its own timeouts.
	if err := conn.SetDeadline(time.Time{}); err != nil {
		return nil, fmt.Errorf("protocol: handshake: %w", err)
	}
	return startSession(ctx, conn, raw, &cfg, dialer, peer, deadline)
}

// checkHello compares the peer's Hello with the local configuration and
// returns the Refuse to send and the local error for the first mismatch.
// Both name the same two values, each from its own side (see refusal), so
// the two nodes report a mismatch in the same words whichever found it.
func checkHello(cfg *Config, p *Hello) (*Refuse, error) {
	// format names this node's value first, then the peer's; the Refuse
	// names them the other way round.
	var code uint32
	var cause error
	var format string
	var mine, theirs any
	switch {
	case p.Version != Version:
		return versionMismatch(p.Version)
	case p.Resource != cfg.Resource:
		code, cause, format, mine, theirs = RefuseResource, ErrResourceMismatch, "local %q, peer %q", cfg.Resource, p.Resource
	case p.Size != cfg.Size:
		code, cause, format, mine, theirs = RefuseSize, ErrSizeMismatch,
			"local %d bytes, peer %d bytes (the smaller node, once its disk is grown too, starts with urbd up --grow)", cfg.Size, p.Size
	case p.BitmapBlock != cfg.BitmapBlock:
		code, cause, format, mine, theirs = RefuseBitmapBlock, ErrBitmapBlockMismatch, "local %d bytes, peer %d bytes", cfg.BitmapBlock, p.BitmapBlock
	case p.NodeID != 0 && p.NodeID == cfg.NodeID:
		// The two values are equal; %[1]d names one of them.
		code, cause, format, mine, theirs = RefuseSameNode, ErrSameNode,
			"both are node %[1]d (was the metadata copied? recreate one side's --meta)", cfg.NodeID, p.NodeID
	default:
		return nil, nil
	}
	return refusal(code, cause, fmt.Sprintf(format, mine, theirs), fmt.Sprintf(format, theirs, mine))
}

// versionMismatch is checkHello's answer to a peer speaking protocol version
// peer, whether its Hello or the header of its first frame said so.
func versionMismatch(peer uint32) (*Refuse, error) {
	const format = "local version %d, peer version %d"
	return refusal(RefuseVersion, ErrVersion, fmt.Sprintf(format, Version, peer), fmt.Sprintf(format, peer, Version))
}

// exchangeHello: the dialer sends its Hello first, the acceptor answers with
// its own or a Refuse. Both sides check the other's.
func exchangeHello(rc *rawConn, cfg *Config, dialer bool) (Hello, error) {
	local := cfg.hello()
	if dialer {
		if err := rc.send(&local); err != nil {
			return Hello{}, err
		}
	}
	m, err := rc.recv()
	if err != nil {
		return Hello{}, err
	}
	peer, ok := m.(*Hello)
	if !ok {
		return Hello{}, rc.unexpected(m, "Hello")
	}
	if ref, err := checkHello(cfg, peer); err != nil {
		return Hello{}, rc.refuse(ref, err)
	}
	if !dialer {
		if err := rc.send(&local); err != nil {
			return Hello{}, err
		}
	}
	return *peer, nil
}

// authMAC is the proof a side sends: HMAC-SHA256 keyed by the secret over a
// label, the sender's role, the nonce it was challenged with, its own nonce,
// and the TLS channel binding (empty without TLS).
func authMAC(secret []byte, dialer bool, challenge, own *[NonceLen]byte, binding []byte) [MACLen]byte {
	h := hmac.New(sha256.New, secret)
	h.Write([]byte("urbd auth v1\x00"))
	if dialer {
		h.Write([]byte{'D'})
	} else {
		h.Write([]byte{'A'})
	}
	h.Write(challenge[:])
	h.Write(own[:])
	h.Write(binding)
	var mac [MACLen]byte
	h.Sum(mac[:0])
	return mac
}

// authenticate runs the challenge-response (see SPEC.md). The dialer
// speaks first at every step, so it also works over unbuffered pipes.
func authenticate(rc *rawConn, cfg *Config, dialer bool, binding []byte) error {
	local := AuthChallenge{Mode: cfg.authMode()}
	if local.Mode == AuthHMAC {
		if _, err := rand.Read(local.Nonce[:]); err != nil {
			return fmt.Errorf("protocol: nonce: %w", err)
		}
	}
	var peer *AuthChallenge
	for step := 0; step < 2; step++ {
		if dialer == (step == 0) {
			if !dialer && local.Mode != AuthHMAC {
				// Without a secret this is the acceptor's last frame.
				if err := rc.admit(cfg); err != nil {
					return err
				}
			}
			if err := rc.send(&local); err != nil {
				return err
			}
			continue
		}
		m, err := rc.recv()
		if err != nil {
			return err
		}
		var ok bool
		if peer, ok = m.(*AuthChallenge); !ok {
			return rc.unexpected(m, "AuthChallenge")
		}
		if peer.Mode != local.Mode {
			return rc.refuse(refusal(RefuseAuth, ErrAuth, modeMismatch(local.Mode), modeMismatch(peer.Mode)))
		}
	}
	if local.Mode == AuthHMAC {
		mine := AuthResponse{MAC: authMAC(cfg.Secret, dialer, &peer.Nonce, &local.Nonce, binding)}
		want := authMAC(cfg.Secret, !dialer, &local.Nonce, &peer.Nonce, binding)
		for step := 0; step < 2; step++ {
			if dialer == (step == 0) {
				if !dialer {
					if err := rc.admit(cfg); err != nil {
						return err
					}
				}
				if err := rc.send(&mine); err != nil {
					return err
				}
				continue
			}
			m, err := rc.recv()
			if err != nil {
				return err
			}
			resp, ok := m.(*AuthResponse)
			if !ok {
				return rc.unexpected(m, "AuthResponse")
			}
			if !hmac.Equal(resp.MAC[:], want[:]) {
				const differ = "the two nodes' shared secrets do not match"
				return rc.refuse(refusal(RefuseAuth, ErrAuth, differ, differ))
			}
		}
	}
	if dialer {
		return rc.send(&AuthOK{})
	}
	m, err := rc.recv()
	if err != nil {
		return err
	}
	if _, ok := m.(*AuthOK); !ok {
		return rc.unexpected(m, "AuthOK")
	}
	return nil
}

// admit is the acceptor's Config.Busy check, made once the dialer is
// verified: a busy acceptor refuses with code 8.
func (rc *rawConn) admit(cfg *Config) error {
	if cfg.Busy == nil {
		return nil
	}
	if local, peer := cfg.Busy(); local != "" {
		return rc.refuse(refusal(RefuseBusy, ErrBusy, local, peer))
	}
	return nil
}

func modeMismatch(local uint8) string {
	if local == AuthHMAC {
		return "the peer has no shared secret but this node requires one"
	}
	return "the peer requires a shared secret but this node has none configured"
}

// yamuxConfig derives yamux settings from the handshake timeout: keepalive
// every third of it, a ping unanswered for half of it kills the session, so
// a dead peer is noticed within Timeout.
func yamuxConfig(cfg *Config) *yamux.Config {
	t := cfg.timeout()
	yc := yamux.DefaultConfig()
	yc.MaxStreamWindowSize = streamWindow
	yc.EnableKeepAlive = true
	yc.KeepAliveInterval = max(t/3, time.Millisecond)
	yc.ConnectionWriteTimeout = max(t/2, time.Millisecond)
	yc.StreamOpenTimeout = t
	yc.StreamCloseTimeout = t
	yc.AcceptBacklog = 8
	yc.LogOutput = cfg.LogOutput
	if yc.LogOutput == nil {
		yc.LogOutput = io.Discard
	}
	return yc
}

// startSession starts yamux over conn and sets up the three streams: the
// dialer opens them and sends StreamOpen on each; the acceptor accepts them
// and assigns each by its StreamOpen.
func startSession(ctx context.Context, conn, raw net.Conn, cfg *Config, dialer bool, peer Hello, deadline time.Time) (*Session, error) {
	yc := yamuxConfig(cfg)
	var ys *yamux.Session
	var err error
	yconn := newHeaderJoiner(conn, raw)
	if dialer {
		ys, err = yamux.Client(yconn, yc)
	} else {
		ys, err = yamux.Server(yconn, yc)
	}
	if err != nil {
		return nil, fmt.Errorf("protocol: yamux: %w", err)
	}
	s := &Session{conn: conn, ys: ys, peer: peer, timeout: cfg.timeout()}
	if err := s.openStreams(ctx, cfg.timeout(), dialer, deadline); err != nil {
		ys.Close()
		s.wait()
		return nil, err
	}
	s.watchDone = make(chan struct{})
	go s.watch()
	return s, nil
}

// openStreams sets up the three streams. On error the caller closes the
// session and waits for the streams' flushers.
func (s *Session) openStreams(ctx context.Context, timeout time.Duration, dialer bool, deadline time.Time) error {
	if dialer {
		for id := uint8(0); id < 3; id++ {
			ymx, err := s.ys.OpenStream()
			if err != nil {
				return fmt.Errorf("protocol: open %s stream: %w", streamName(id), err)
			}
			st := newStream(s, id, ymx, timeout)
			st.start()
			s.streams[id] = st
			if err := st.Send(&StreamOpen{Stream: id}); err != nil {
				return err
			}
		}
		return nil
	}
	for range 3 {
		ymx, err := s.ys.AcceptStreamWithContext(ctx)
		if err != nil {
			return peerLeft(ctx, deadline, fmt.Errorf("protocol: accept stream: %w", err))
		}
		st := newStream(s, 0, ymx, timeout)
		id, err := acceptStream(st, ymx, deadline)
		if err == nil && s.streams[id] != nil {
			err = fmt.Errorf("%w: %s stream opened twice", ErrUnexpected, streamName(id))
		}
		if err != nil {
			return peerLeft(ctx, deadline, err)
		}
		st.id = id
		st.start()
		s.streams[id] = st
	}
	return nil
}

// peerLeft marks err, an acceptor's failure to set up the streams, with
// ErrPeerLeft when it says the dialer closed the connection while neither
// this side's context nor its deadline had ended: an end of file, a reset,
// or yamux's ErrSessionShutdown, which AcceptStream returns when the
// session ended under a stream it was about to hand over (its window update
// could not be sent). A dialer gone silent (a keepalive timeout) is no such
// thing.
func peerLeft(ctx context.Context, deadline time.Time, err error) error {
	closed := false
	for _, e := range []error{io.EOF, io.ErrUnexpectedEOF, syscall.ECONNRESET, yamux.ErrSessionShutdown} {
		closed = closed || errors.Is(err, e)
	}
	if closed && ctx.Err() == nil && time.Now().Before(deadline) {
		return fmt.Errorf("%w (%w)", ErrPeerLeft, err)
	}
	return err
}

// acceptStream reads the StreamOpen that starts an accepted stream st.
func acceptStream(st *Stream, ymx *yamux.Stream, deadline time.Time) (uint8, error) {
	if err := ymx.SetReadDeadline(deadline); err != nil {
		return 0, err
	}
	open, err := st.recvStreamOpen()
	if err != nil {
		return 0, err
	}
	if err := ymx.SetReadDeadline(time.Time{}); err != nil {
		return 0, err
	}
	return open.Stream, nil
}

// recvStreamOpen reads the first frame of an accepted stream, which must be
// a StreamOpen. Errors do not close the session (the caller does).
func (st *Stream) recvStreamOpen() (*StreamOpen, error) {
	if _, err := io.ReadFull(st.r, st.hdr[:]); err != nil {
		return nil, fmt.Errorf("protocol: accept stream: %w", err)
	}
	h, err := parseHeader(st.hdr[:])
	if err != nil {
		return nil, err
	}
	if h.Kind != KindStreamOpen || h.Seq != 0 {
		return nil, fmt.Errorf("%w: stream starts with %v seq %d", ErrUnexpected, h.Kind, h.Seq)
	}
	p := make([]byte, h.Length)
	if _, err := io.ReadFull(st.r, p); err != nil {
		return nil, fmt.Errorf("protocol: accept stream: %w", err)
	}
	if err := checkCRC(st.hdr[:], h, p); err != nil {
		return nil, err
	}
	m, err := decodePayload(h.Kind, p, nil)
	if err != nil {
		return nil, err
	}
	st.rseq = 1
	return m.(*StreamOpen), nil
}

// rawConn exchanges handshake frames directly on the transport, unbuffered
// so no byte meant for yamux is consumed.
type rawConn struct {
	c    net.Conn
	wseq uint32
	rseq uint32
	buf  []byte
	hdr  [HeaderLen]byte
}

func (rc *rawConn) send(m Message) error {
	b, err := AppendFrame(rc.buf[:0], rc.wseq, m)
	if err != nil {
		return err
	}
	rc.buf = b
	rc.wseq++
	if _, err := rc.c.Write(b); err != nil {
		return fmt.Errorf("protocol: handshake: send %v: %w", m.Kind(), err)
	}
	return nil
}

// recv reads one handshake frame. Only handshake kinds are accepted, so the
// payload read is small whatever length a hostile peer announces.
func (rc *rawConn) recv() (Message, error) {
	if _, err := io.ReadFull(rc.c, rc.hdr[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("protocol: handshake: the peer closed the connection (%w)", err)
		}
		return nil, fmt.Errorf("protocol: handshake: receive: %w", err)
	}
	h, err := parseHeader(rc.hdr[:])
	if err != nil {
		if rc.hdr[0] == 0x16 && rc.hdr[1] == 0x03 {
			// A TLS handshake record: the peer is configured for TLS and
			// this node is not. A Refuse in answer reaches a TLS client
			// as a record it cannot read, which it recognises (above).
			ref, lerr := tlsOneSide(false)
			rc.refuseUnread(ref)
			return nil, lerr
		}
		if errors.Is(err, ErrVersion) {
			// A node of another version frames its Hello in that
			// version: name the two as a Hello's mismatch does.
			return nil, rc.refuse(versionMismatch(uint32(h.Version)))
		}
		return nil, fmt.Errorf("protocol: handshake: %w", err)
	}
	switch h.Kind {
	case KindHello, KindRefuse, KindAuthChallenge, KindAuthResponse, KindAuthOK:
	default:
		return nil, fmt.Errorf("protocol: handshake: %w: %v frame", ErrUnexpected, h.Kind)
	}
	if h.Seq != rc.rseq {
		return nil, fmt.Errorf("protocol: handshake: %w: frame sequence %d, expected %d", ErrMalformed, h.Seq, rc.rseq)
	}
	rc.rseq++
	p := make([]byte, h.Length)
	if _, err := io.ReadFull(rc.c, p); err != nil {
		return nil, fmt.Errorf("protocol: handshake: receive: %w", err)
	}
	if err := checkCRC(rc.hdr[:], h, p); err != nil {
		return nil, fmt.Errorf("protocol: handshake: %w", err)
	}
	m, err := decodePayload(h.Kind, p, nil)
	if err != nil {
		return nil, fmt.Errorf("protocol: handshake: %w", err)
	}
	if r, ok := m.(*Refuse); ok {
		return nil, r.Err()
	}
	return m, nil
}

// unexpected reports a message out of order (and tells the peer).
func (rc *rawConn) unexpected(m Message, want string) error {
	err := fmt.Errorf("protocol: handshake: %w: %v, expected %s", ErrUnexpected, m.Kind(), want)
	rc.send(&Refuse{Code: RefuseProtocol, Reason: fmt.Sprintf("expected %s, got %v", want, m.Kind())})
	return err
}

// tlsAlert returns the TLS alert the peer sent that err carries, or nil.
func tlsAlert(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "remote error" {
		return op
	}
	return nil
}

// tlsFailure is the error for a failed TLS handshake. It does not say which
// side of the handshake this node was: the nodes dial each other in turn,
// and a fault reads the same both ways, whether this node found it (the
// peer's certificate) or the peer did and sent an alert, which reaches a
// TLS 1.3 client only on its first read after the handshake.
func tlsFailure(err error) error {
	if alert := tlsAlert(err); alert != nil {
		// The peer refused this node, in TLS's words: ErrRefused too.
		refused := &tlsRefusal{alert}
		if strings.Contains(alert.Error(), "certificate") {
			return fmt.Errorf("%w: the peer does not accept this node's certificate (is it signed by the CA of the peer's --tls-ca?): %w", ErrTLS, refused)
		}
		return fmt.Errorf("%w: %w", ErrTLS, refused)
	}
	return fmt.Errorf("%w: %w", ErrTLS, err)
}

// tlsRefusal is a TLS alert from the peer. It reads as the alert does and
// wraps it and ErrRefused.
type tlsRefusal struct{ alert error }

func (e *tlsRefusal) Error() string   { return e.alert.Error() }
func (e *tlsRefusal) Unwrap() []error { return []error{ErrRefused, e.alert} }

// refuseUnread sends ref on a connection with bytes from the peer still
// unread, then reads what the peer sends until it hangs up, for at most a
// second. Closed with unread bytes, the connection would be reset, and the
// reset may reach the peer before it has read ref.
func (rc *rawConn) refuseUnread(ref *Refuse) {
	if rc.send(ref) != nil {
		return
	}
	if rc.c.SetReadDeadline(time.Now().Add(time.Second)) == nil {
		io.Copy(io.Discard, io.LimitReader(rc.c, 1<<20))
	}
}

// tlsOneSide is the Refuse and the local error for a connection between a
// node with TLS configured and one without; withTLS says which this node is.
func tlsOneSide(withTLS bool) (*Refuse, error) {
	const hint = " (give both nodes --tls-cert, --tls-key and --tls-ca, or neither)"
	requires := "the peer has no TLS configured but this node requires it" + hint
	lacks := "the peer requires TLS but this node has none configured" + hint
	if withTLS {
		return refusal(RefuseTLS, ErrTLS, requires, lacks)
	}
	return refusal(RefuseTLS, ErrTLS, lacks, requires)
}

// refuse sends ref, best effort, and returns err: a check's Refuse and local
// error (see refusal), the handshake's end on this side.
func (rc *rawConn) refuse(ref *Refuse, err error) error {
	rc.send(ref)
	return err
}
