package testnet

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestProxy: bytes pass both ways and the tap sees them with their
// direction; while cut, nothing passes and the connection stays open; a
// target that refuses the connection makes the proxy reset it.
func TestProxy(t *testing.T) {
	ln := startEcho(t)
	var mu sync.Mutex
	seen := map[bool]string{}
	p, err := StartProxy(ln.Addr().String(), func(conn int, forward bool, b []byte) {
		mu.Lock()
		defer mu.Unlock()
		if conn != 0 {
			t.Errorf("tap: connection %d, want 0", conn)
		}
		seen[forward] += string(b)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	io.WriteString(c, "ping\n")
	if line, err := r.ReadString('\n'); err != nil || line != "ping\n" {
		t.Fatalf("echo through the proxy: %q, %v", line, err)
	}
	mu.Lock()
	if seen[true] != "ping\n" || seen[false] != "ping\n" {
		t.Errorf("tap saw forward %q, back %q; want the line each way", seen[true], seen[false])
	}
	mu.Unlock()

	p.Cut.Store(true)
	io.WriteString(c, "lost\n")
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := r.ReadString('\n'); !isTimeout(err) {
		t.Fatalf("read while cut: %v, want a timeout (nothing passes, nothing closes)", err)
	}

	ln.Close() // the target refuses from now on
	time.Sleep(10 * time.Millisecond)
	// The reset may come before the dial has returned, or on the first read.
	d, err := net.Dial("tcp", p.Addr())
	if err == nil {
		defer d.Close()
		d.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = d.Read(make([]byte, 1))
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("a proxied connection the target refused: %v, want a reset", err)
	}
}

// TestProxyResetAndForget: Reset ends the open connections and the proxy
// forwards new ones; a connection that ended is no longer kept for Reset and
// Close.
func TestProxyResetAndForget(t *testing.T) {
	ln := startEcho(t)
	p, err := StartProxy(ln.Addr().String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	echo := func() (net.Conn, error) {
		c, err := net.Dial("tcp", p.Addr())
		if err != nil {
			return nil, err
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "x")
		_, err = io.ReadFull(c, make([]byte, 1))
		return c, err
	}
	open := func() int {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.conns)
	}

	c, err := echo()
	if err != nil {
		t.Fatalf("echo through the proxy: %v", err)
	}
	defer c.Close()
	p.Reset()
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("a connection read data after Reset, want its end")
	}
	d, err := echo()
	if err != nil {
		t.Fatalf("echo through the proxy after Reset: %v", err)
	}
	if n := open(); n != 2 {
		t.Errorf("proxy keeps %d connection ends with one connection open, want 2", n)
	}
	d.Close()
	for deadline := time.Now().Add(5 * time.Second); open() != 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("proxy still keeps %d connection ends after the only connection ended", open())
		}
	}
}

// startEcho listens on a loopback port and echoes every connection's bytes
// back to it until the test ends or the listener is closed.
func startEcho(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	return ln
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestProxyDelay: with a Delay, lines through the proxy and back arrive no
// sooner than twice the delay, all of them and in order, and lines sent
// together are not held once each: the delay is latency, not a queue.
func TestProxyDelay(t *testing.T) {
	ln := startEcho(t)
	p, err := StartProxy(ln.Addr().String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	const delay = 30 * time.Millisecond
	p.Delay.Store(int64(delay))
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	start := time.Now()
	for i := range 20 {
		fmt.Fprintf(c, "line %d\n", i)
	}
	for i := range 20 {
		line, err := r.ReadString('\n')
		if err != nil || line != fmt.Sprintf("line %d\n", i) {
			t.Fatalf("line %d through the delayed proxy: %q, %v", i, line, err)
		}
		if i == 0 && time.Since(start) < 2*delay {
			t.Fatalf("the first line came back after %s, before twice the delay (%s)", time.Since(start), 2*delay)
		}
	}
	if took := time.Since(start); took > 20*delay {
		t.Errorf("20 lines sent together took %s: each was held in turn, not all at once", took)
	}
}
