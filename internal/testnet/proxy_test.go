package testnet

import (
	"bufio"
	"errors"
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
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }() // echo
		}
	}()
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

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
