package replica

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"

	"github.com/urbd/urbd/internal/testnet"
	"github.com/urbd/urbd/protocol"
)

// TestConnErrorKeepsStandAloneReason: a connection error shows in the
// status while the node tries to connect, and does not replace the reason a
// StandAlone node stopped for (a late error from the teardown of the session
// a split brain refused used to overwrite "split brain: ...").
func TestConnErrorKeepsStandAloneReason(t *testing.T) {
	n := &Node{log: slog.New(slog.DiscardHandler), changed: make(chan struct{})}
	n.st = State{Conn: StandAlone, Reason: "split brain: both sides wrote"}
	n.noteConnError(errors.New("protocol: accept stream: session shutdown"), accepted)
	if n.st.Reason != "split brain: both sides wrote" {
		t.Errorf("StandAlone reason after a connection error: %q, want the split brain kept", n.st.Reason)
	}
	n.st.Conn = WFConnection
	n.noteConnError(errors.New("protocol: handshake: wrong secret"), dialed)
	if want := "peer connection failed: protocol: handshake: wrong secret"; n.st.Reason != want {
		t.Errorf("WFConnection reason: %q, want %q", n.st.Reason, want)
	}
}

// TestConnErrorKeepsConnectedReason: while a session runs, a second
// connection that fails (a stray dial, a handshake cut short; a dial the
// tie-break dropped never gets here, see ErrPeerLeft) neither replaces the
// reason of the node's state nor counts as the last failure, so the same
// error still shows once the session is gone and a new attempt fails so.
func TestConnErrorKeepsConnectedReason(t *testing.T) {
	n := &Node{log: slog.New(slog.DiscardHandler), changed: make(chan struct{})}
	n.sess = &session{}
	n.st = State{Conn: Connected, Reason: "disk detached after a write error"}
	cut := errors.New("protocol: handshake: receive: read: connection timed out")
	n.noteConnError(cut, accepted)
	if n.st.Reason != "disk detached after a write error" {
		t.Errorf("Connected reason after a second connection failed: %q, want the detach kept", n.st.Reason)
	}
	n.sess = nil
	n.st.Conn = WFConnection
	n.noteConnError(cut, accepted)
	if want := "peer connection failed: " + cut.Error(); n.st.Reason != want {
		t.Errorf("WFConnection reason: %q, want %q", n.st.Reason, want)
	}
}

// TestConnErrorLoggedOnce: a failure repeated at every attempt is logged,
// and put in the status, once, even when the attempts this node dials and
// those it accepts fail in different words and alternate. A new failure is
// logged; a known one comes back to the status when a promotion took it;
// after the operator's connect, or a new link, the same failure is logged
// again.
func TestConnErrorLoggedOnce(t *testing.T) {
	var logs bytes.Buffer
	n := &Node{log: slog.New(slog.NewTextHandler(&logs, nil)), changed: make(chan struct{})}
	n.st = State{Conn: WFConnection}
	// A fault met at different steps of the handshake each way.
	asDialer := errors.New("protocol: handshake: the peer closed the connection (EOF)")
	asAcceptor := errors.New("protocol: handshake: receive: connection reset by peer")
	warnings := func() int { return strings.Count(logs.String(), `level=WARN msg="peer connection failed"`) }
	for range 5 {
		n.noteConnError(asDialer, dialed)
		n.noteConnError(asAcceptor, accepted)
	}
	if got := warnings(); got != 2 {
		t.Fatalf("%d warnings for two failures repeated five times, want 2:\n%s", got, logs.String())
	}
	if want := "peer connection failed: " + asAcceptor.Error(); n.st.Reason != want {
		t.Errorf("reason %q, want %q", n.st.Reason, want)
	}
	n.noteConnError(asDialer, accepted) // the acceptor's side now fails as the dialer's did: nothing new
	if got := warnings(); got != 2 {
		t.Fatalf("%d warnings after a known failure came the other way, want 2", got)
	}
	other := errors.New("protocol: disk size mismatch: local 1 bytes, peer 2 bytes")
	n.noteConnError(other, dialed)
	if got := warnings(); got != 3 || n.st.Reason != "peer connection failed: "+other.Error() {
		t.Fatalf("a new failure: %d warnings (want 3), reason %q", got, n.st.Reason)
	}
	n.st.Reason = "promoted by operator"
	n.noteConnError(other, accepted)
	if got := warnings(); got != 3 || n.st.Reason != "peer connection failed: "+other.Error() {
		t.Fatalf("a known failure after a promotion: %d warnings (want 3), reason %q (want the failure back)", got, n.st.Reason)
	}
	n.st.Reason = "connect requested by operator"
	if err := n.Connect(false); err != nil {
		t.Fatal(err)
	}
	n.noteConnError(other, dialed)
	if got := warnings(); got != 4 || n.st.Reason != "peer connection failed: "+other.Error() {
		t.Fatalf("after the operator's connect: %d warnings (want 4), reason %q", got, n.st.Reason)
	}
	if err := n.SetLink(Link{Peer: "127.0.0.1:1"}); err != nil { // urbd adjust
		t.Fatal(err)
	}
	n.noteConnError(other, accepted)
	if got := warnings(); got != 5 {
		t.Fatalf("after a new link: %d warnings, want 5", got)
	}
}

// TestConnErrorPeerAlertShown: a peer that is not reached at all (refused,
// reset, even during the TLS handshake) is expected while it is down and
// only logged at debug level, but a TLS alert from the peer, a net.Error
// too, says it was reached and refused this node's certificate: a warning
// and the status reason. A node whose certificate the peer rejected used to
// show nothing of it.
func TestConnErrorPeerAlertShown(t *testing.T) {
	var logs bytes.Buffer
	n := &Node{log: slog.New(slog.NewTextHandler(&logs, nil)), changed: make(chan struct{})}
	n.st = State{Conn: WFConnection, Reason: "promoted by operator"}
	down := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connect: connection refused")}
	n.noteConnError(down, dialed)
	if strings.Contains(logs.String(), "WARN") || n.st.Reason != "promoted by operator" {
		t.Fatalf("a peer that is down: reason %q, log:\n%s", n.st.Reason, logs.String())
	}
	reset := fmt.Errorf("%w: %w", protocol.ErrTLS, &net.OpError{Op: "read", Net: "tcp", Err: errors.New("read: connection reset by peer")})
	n.noteConnError(reset, dialed)
	if strings.Contains(logs.String(), "WARN") || n.st.Reason != "promoted by operator" {
		t.Fatalf("a peer that went down during the TLS handshake: reason %q, log:\n%s", n.st.Reason, logs.String())
	}
	// As protocol.Handshake reports a TLS alert (protocol.TestTLS).
	alert := fmt.Errorf("%w: the peer does not accept this node's certificate: %w: %w", protocol.ErrTLS, protocol.ErrRefused,
		&net.OpError{Op: "remote error", Err: errors.New("tls: bad certificate")})
	n.noteConnError(alert, accepted)
	if !strings.Contains(logs.String(), `level=WARN msg="peer connection failed"`) || n.st.Reason != "peer connection failed: "+alert.Error() {
		t.Fatalf("a TLS alert from the peer: reason %q, log:\n%s", n.st.Reason, logs.String())
	}
}

// TestDialRefusesSelfConnect: a dial whose source port is the port it dials,
// with nothing listening there, connects TCP to itself on Linux. dialTCP
// must refuse that connection and free the port, so the peer's daemon can
// still listen on it. The source port is forced here; the kernel picks it
// by chance when the peer's port lies in the ephemeral range.
func TestDialRefusesSelfConnect(t *testing.T) {
	addr, err := testnet.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	laddr, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	d := net.Dialer{LocalAddr: laddr}
	conn, err := dialTCP(context.Background(), &d, addr)
	if err == nil {
		conn.Close()
		t.Fatalf("dial of %s from %s: connected, want %v", addr, addr, errSelfConnect)
	}
	if !errors.Is(err, errSelfConnect) {
		t.Fatalf("dial of %s from %s: %v, want %v", addr, addr, err, errSelfConnect)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listening on %s after the refused self-connection: %v", addr, err)
	}
	ln.Close()
}
