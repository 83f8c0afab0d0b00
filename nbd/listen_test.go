package nbd

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
)

func TestParseAddr(t *testing.T) {
	for _, tc := range []struct {
		in, network, addr string
		ok                bool
	}{
		{"unix:/run/urbd/r0.sock", "unix", "/run/urbd/r0.sock", true},
		{"tcp:127.0.0.1:10809", "tcp", "127.0.0.1:10809", true},
		{"tcp:[::1]:10809", "tcp", "[::1]:10809", true},
		{"tcp::10809", "tcp", ":10809", true},
		{"tcp:localhost", "", "", false},
		{"tcp:host:", "", "", false},
		{"unix:", "", "", false},
		{"/run/x.sock", "", "", false},
		{"udp:1.2.3.4:5", "", "", false},
		{"", "", "", false},
	} {
		network, addr, err := ParseAddr(tc.in)
		if tc.ok != (err == nil) || network != tc.network || addr != tc.addr {
			t.Errorf("ParseAddr(%q) = %q %q %v", tc.in, network, addr, err)
		}
		if !tc.ok && !errors.Is(err, ErrBadAddress) {
			t.Errorf("ParseAddr(%q): %v does not wrap ErrBadAddress", tc.in, err)
		}
	}
}

func TestListenUnixStaleAndBusy(t *testing.T) {
	dir, err := os.MkdirTemp("", "nbdl")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "s.sock")
	addr := "unix:" + sock

	// A stale socket file: bound, then its listener gone without unlink.
	stale, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("stale socket not left behind: %v", err)
	}

	ln, err := Listen(addr)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	if _, err := Listen(addr); !errors.Is(err, ErrAddressInUse) {
		t.Fatalf("second Listen: %v, want ErrAddressInUse", err)
	}
	c, err := Dial(context.Background(), addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	ln.Close()
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file left after Close: %v", err)
	}

	if err := os.WriteFile(sock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(addr); err == nil {
		t.Error("Listen replaced a regular file")
	}
}

func TestListenTCPBusy(t *testing.T) {
	ln, err := Listen("tcp:127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := Listen("tcp:" + ln.Addr().String()); !errors.Is(err, ErrAddressInUse) {
		t.Fatalf("Listen on a busy port: %v, want ErrAddressInUse", err)
	}
}
