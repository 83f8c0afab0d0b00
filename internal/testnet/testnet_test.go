package testnet

import (
	"net"
	"testing"
)

// A port from FreePort is outside the ephemeral range and can be listened on.
func TestFreeAddr(t *testing.T) {
	low, high := window()
	for range 20 {
		addr, err := FreeAddr()
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("listen on %s: %v", addr, err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if port < low || port >= high {
			t.Fatalf("port %d outside [%d, %d)", port, low, high)
		}
	}
}

// FreePort does not hand out a port it handed out among the last 64, even
// though the port is free again: two nodes asking one after the other must
// not share one. With a window of 200 ports, 64 random picks would repeat
// one almost surely (about 1 - 1e-4).
func TestFreePortNotRepeated(t *testing.T) {
	low, _ := window()
	saved := window
	window = func() (int, int) { return low, low + 200 }
	defer func() { window = saved }()
	seen := map[int]bool{}
	for range 64 {
		port, err := FreePort()
		if err != nil {
			t.Fatal(err)
		}
		if seen[port] {
			t.Fatalf("port %d handed out twice among 64", port)
		}
		seen[port] = true
	}
}

// The window lies outside the ephemeral range, whichever way it is set.
func TestWindowOutside(t *testing.T) {
	for _, c := range []struct {
		in        string
		low, high int
	}{
		{"32768\t60999\n", 20000, 32768}, // Linux's default
		{"1024 65535", 20000, 32768},     // no gap: the default window
		{"15000 65535", 10000, 15000},    // only below
		{"1024 50000", 50001, 65536},     // only above
		{"20000 40000", 40001, 65536},    // above is larger
		{"40000 60999", 20000, 32768},    // above the default window
		{"garbage", 20000, 32768},
	} {
		low, high := windowOutside(c.in)
		if low != c.low || high != c.high {
			t.Errorf("windowOutside(%q) = [%d, %d), want [%d, %d)", c.in, low, high, c.low, c.high)
		}
	}
}
