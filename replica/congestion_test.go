package replica

import (
	"context"
	"net"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseCongestion(t *testing.T) {
	for in, want := range map[string]string{"cubic": "cubic", " BBR ": "bbr", "system": "", "System": "", "dctcp": "dctcp", "h-tcp_2": "h-tcp_2"} {
		if got, err := ParseCongestion(in); err != nil || got != want {
			t.Errorf("ParseCongestion(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "cu bic", "a/b", "sixteen-letters!", "abcdefghijklmnop"} {
		if _, err := ParseCongestion(in); err == nil || !strings.Contains(err.Error(), "tcp-congestion") {
			t.Errorf("ParseCongestion(%q): %v, want an error naming tcp-congestion", in, err)
		}
	}
}

func TestCheckCongestion(t *testing.T) {
	if err := CheckCongestion("reno"); err != nil {
		t.Fatalf("reno, which every kernel has and everyone may use: %v", err)
	}
	if err := CheckCongestion(""); err != nil {
		t.Fatalf("the kernel's default: %v", err)
	}
	err := CheckCongestion("nosuch")
	if err == nil || !strings.Contains(err.Error(), "not available") || !strings.Contains(err.Error(), "reno") {
		t.Fatalf("nosuch: %v, want an error listing what the kernel offers", err)
	}
}

// TestCongestionControlBothEnds: the control function set on a listener
// and on a dialer gives both ends of the connection the congestion control,
// the accepted socket by inheritance from the listener.
func TestCongestionControlBothEnds(t *testing.T) {
	def := SystemDefaultCongestion()
	want := "reno"
	if def == want {
		want = "cubic" // differ from the default, or the test proves nothing
		if err := CheckCongestion(want); err != nil {
			t.Fatalf("the default is reno, and %v", err)
		}
	}
	ctx := context.Background()
	lc := net.ListenConfig{Control: congestionControl(want)}
	ln, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	for _, dialer := range []struct {
		name string
		d    net.Dialer
		want string
	}{{"plain dialer", net.Dialer{}, def}, {"dialer with the control", net.Dialer{Control: congestionControl(want)}, want}} {
		c, err := dialer.d.DialContext(ctx, "tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got := connCongestion(t, c); got != dialer.want {
			t.Errorf("%s: %s, want %s", dialer.name, got, dialer.want)
		}
		a := <-accepted
		if a == nil {
			t.Fatal("accept failed")
		}
		defer a.Close()
		if got := connCongestion(t, a); got != want {
			t.Errorf("accepted from the listener with the control (peer: %s): %s, want %s", dialer.name, got, want)
		}
		go func() {
			c, _ := ln.Accept()
			accepted <- c
		}()
	}
}

// connCongestion returns the congestion control of a TCP connection.
func connCongestion(t *testing.T, conn net.Conn) string {
	t.Helper()
	rc, err := conn.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var name string
	var gerr error
	if err := rc.Control(func(fd uintptr) {
		name, gerr = unix.GetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION)
	}); err != nil || gerr != nil {
		t.Fatal(err, gerr)
	}
	return strings.TrimRight(name, "\x00")
}
