package protocol

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// testConfig is a matching configuration for both sides.
func testConfig() Config {
	return Config{
		Resource:    "r0",
		Size:        1 << 30,
		BitmapBlock: 4096,
		Secret:      []byte("s3cret"),
		Timeout:     5 * time.Second,
	}
}

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t testing.TB) (dialed, accepted net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	errc := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			errc <- err
			return
		}
		ch <- c
	}()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	select {
	case a := <-ch:
		return d, a
	case err := <-errc:
		t.Fatal(err)
	}
	return nil, nil
}

type hsResult struct {
	s   *Session
	err error
}

// handshakePair runs Handshake on both ends concurrently and returns both
// results (dialer first).
func handshakePair(t testing.TB, d, a net.Conn, dcfg, acfg Config) (hsResult, hsResult) {
	t.Helper()
	ctx := context.Background()
	ach := make(chan hsResult, 1)
	go func() {
		s, err := Handshake(ctx, a, acfg, false)
		ach <- hsResult{s, err}
	}()
	s, err := Handshake(ctx, d, dcfg, true)
	dr := hsResult{s, err}
	ar := <-ach
	t.Cleanup(func() {
		for _, r := range []hsResult{dr, ar} {
			if r.s != nil {
				r.s.Close()
			}
		}
	})
	return dr, ar
}

// sessionPair returns two connected sessions over loopback TCP.
func sessionPair(t testing.TB) (dialer, acceptor *Session) {
	t.Helper()
	d, a := tcpPair(t)
	dr, ar := handshakePair(t, d, a, testConfig(), testConfig())
	if dr.err != nil || ar.err != nil {
		t.Fatalf("handshake: dialer %v, acceptor %v", dr.err, ar.err)
	}
	return dr.s, ar.s
}

func TestSessionEndToEnd(t *testing.T) {
	d, a := sessionPair(t)
	if got := a.Peer(); got.Resource != "r0" || got.Size != 1<<30 {
		t.Fatalf("acceptor sees peer %+v", got)
	}
	data := bytes.Repeat([]byte{0xab}, 4096)
	if err := d.Data().Send(&Write{Seq: 7, Offset: 8192, Length: 4096, Data: data}); err != nil {
		t.Fatal(err)
	}
	m, err := a.Data().Recv()
	if err != nil {
		t.Fatal(err)
	}
	w, ok := m.(*Write)
	if !ok || w.Seq != 7 || w.Offset != 8192 || !bytes.Equal(w.Data, data) {
		t.Fatalf("got %#v", m)
	}
	if err := a.Data().Send(Ack{Seq: 7, Type: AckDone}); err != nil {
		t.Fatal(err)
	}
	m, err = d.Data().Recv()
	if err != nil {
		t.Fatal(err)
	}
	if ack, ok := m.(*Ack); !ok || ack.Seq != 7 || ack.Type != AckDone {
		t.Fatalf("got %#v", m)
	}
	// Control and resync streams are separate.
	if err := a.Control().Send(&Ping{Seq: 1}); err != nil {
		t.Fatal(err)
	}
	if err := d.Resync().Send(&ResyncData{Seq: 1, Offset: 0, Data: data[:512]}); err != nil {
		t.Fatal(err)
	}
	if m, err := d.Control().Recv(); err != nil || m.(*Ping).Seq != 1 {
		t.Fatalf("control: %v %v", m, err)
	}
	if m, err := a.Resync().Recv(); err != nil || len(m.(*ResyncData).Data) != 512 {
		t.Fatalf("resync: %v %v", m, err)
	}
	if rtt, err := d.RTT(); err != nil || rtt <= 0 {
		t.Fatalf("RTT: %v, %v", rtt, err)
	}
	// Done fires on peer close.
	d.Close()
	select {
	case <-a.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("acceptor Done did not fire after the dialer closed")
	}
	// A clean close reads as ErrClosed and, underneath, io.EOF.
	if _, err := a.Data().Recv(); !errors.Is(err, ErrClosed) || !errors.Is(err, io.EOF) {
		t.Fatalf("Recv after peer close: %v", err)
	}
}

// TestLossReason: the transport errors a session dies of, in an operator's
// words.
func TestLossReason(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("%w: %w", ErrClosed, yamux.ErrKeepAliveTimeout), "no answer to keepalive pings within the timeout"},
		{fmt.Errorf("%w: %w", ErrClosed, io.EOF), "the peer closed the connection"},
		{fmt.Errorf("%w: %w", ErrClosed, &net.OpError{Op: "read", Err: os.NewSyscallError("read", syscall.ECONNRESET)}), "the connection was reset"},
		{fmt.Errorf("%w: %w", ErrClosed, yamux.ErrConnectionWriteTimeout), "a write to the peer timed out: it stopped reading"},
		{nil, "the connection closed"},
	} {
		if got := LossReason(c.err); got != c.want {
			t.Errorf("LossReason(%v) = %q, want %q", c.err, got, c.want)
		}
	}
}
