package testnet

import (
	"net"
	"testing"
)

// A port from FreePort is below the ephemeral range and can be listened on.
func TestFreeAddr(t *testing.T) {
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
		if port < lowPort || port >= highPort {
			t.Fatalf("port %d outside [%d, %d)", port, lowPort, highPort)
		}
	}
}
