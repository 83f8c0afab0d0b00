package protocol

import (
	"bytes"
	"context"
	"net"
	"testing"
	"time"
)

// scriptConn is a net.Conn that reads a fixed script and discards writes.
type scriptConn struct {
	r *bytes.Reader
}

func (c *scriptConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *scriptConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *scriptConn) Close() error                     { return nil }
func (c *scriptConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *scriptConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *scriptConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil }

// FuzzHandshake: whatever an unauthenticated peer sends, Handshake (as
// acceptor or dialer) fails cleanly: no panic, no session, no hang.
func FuzzHandshake(f *testing.F) {
	cfg := testConfig()
	hello := &Hello{Version: Version, Resource: cfg.Resource, Size: cfg.Size, BitmapBlock: cfg.BitmapBlock}
	f.Add(framesOf(f, hello), false)
	f.Add(framesOf(f, hello, &AuthChallenge{Mode: AuthHMAC}, &AuthResponse{}, &AuthOK{}), false)
	f.Add(framesOf(f, hello, &AuthChallenge{Mode: AuthNone}, &AuthOK{}), true)
	f.Add(framesOf(f, &Refuse{Code: RefuseSize, Reason: "no"}), true)
	f.Add([]byte("URBD"), false)
	f.Fuzz(func(t *testing.T, script []byte, dialer bool) {
		s, err := Handshake(context.Background(), &scriptConn{r: bytes.NewReader(script)}, cfg, dialer)
		if err == nil {
			s.Close()
			t.Fatal("handshake succeeded without the secret")
		}
	})
}
