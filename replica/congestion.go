package replica

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// TCP congestion control of the peer connection.
//
// A node asks the kernel for one congestion control on the TCP connection
// to its peer (TCP_CONGESTION), cubic unless configured otherwise, instead
// of taking the system-wide default. Hosts tuned for the Internet often set
// that default to BBR, whose model suits a replication link badly: BBR
// paces every segment and bounds the bytes in flight by twice its estimate
// of the bandwidth-delay product, and on a link of a few microseconds that
// is about one megabyte. A synchronous replica sends bursts (eight 1 MiB
// writes at once) and needs them on the wire at once. On loopback, 1 MiB
// writes at queue depth 8 through a protocol C pair ran 9-22% faster with
// cubic, and 4k random writes at queue depth 32 7% faster; the paced
// segments, sent from a timer on either processor, arrived out of order
// often enough to make the sender retransmit (334 spurious retransmissions
// in 8 s, 5 with cubic). docs/OPERATIONS.md has the measurements.

const (
	// DefaultCongestion is the congestion control a node asks for when
	// none is configured.
	DefaultCongestion = "cubic"
	// SystemCongestion, as a configured name, keeps the kernel's default
	// (net.ipv4.tcp_congestion_control).
	SystemCongestion = "system"
)

// tcpCANameMax is the kernel's TCP_CA_NAME_MAX including the NUL.
const tcpCANameMax = 16

// ParseCongestion checks a configured congestion control name: SystemCongestion
// or a name the kernel could know (lower-case letters, digits, '_' and '-',
// at most 15 bytes). It returns the name to ask the kernel for, "" for
// SystemCongestion. Whether the kernel offers the name is checked when the
// node starts (CheckCongestion).
func ParseCongestion(s string) (string, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	if s == SystemCongestion {
		return "", nil
	}
	ok := s != "" && len(s) < tcpCANameMax
	for _, r := range s {
		ok = ok && (r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' || r == '-')
	}
	if !ok {
		return "", fmt.Errorf("tcp-congestion %q: use a congestion control the kernel offers (net.ipv4.tcp_available_congestion_control, e.g. cubic) or %s", s, SystemCongestion)
	}
	return s, nil
}

// CheckCongestion reports whether this process may use congestion control
// name on a TCP socket, by setting it on a socket that is never connected.
// The error says what the kernel offers and what an unprivileged process
// is allowed.
func CheckCongestion(name string) error {
	if name == "" {
		return nil
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	}
	if err != nil {
		return fmt.Errorf("tcp-congestion %s: %w", name, err)
	}
	defer unix.Close(fd)
	if err := setCongestion(fd, name); err != nil {
		why := "not available"
		if errors.Is(err, unix.EPERM) {
			why = "not allowed for this process (net.ipv4.tcp_allowed_congestion_control: " + sysctl("tcp_allowed_congestion_control") + ")"
		}
		return fmt.Errorf("tcp-congestion %s: %s; the kernel offers %s (%v)", name, why, sysctl("tcp_available_congestion_control"), err)
	}
	return nil
}

// setCongestion asks for congestion control name on TCP socket fd.
func setCongestion(fd int, name string) error {
	return unix.SetsockoptString(fd, unix.IPPROTO_TCP, unix.TCP_CONGESTION, name)
}

// SystemDefaultCongestion is the kernel's default congestion control, for
// messages.
func SystemDefaultCongestion() string { return sysctl("tcp_congestion_control") }

func sysctl(name string) string {
	b, err := os.ReadFile("/proc/sys/net/ipv4/" + name)
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

// setConnCongestion asks for congestion control name on an accepted
// connection ("" leaves the kernel's choice). A refusal is returned: the
// name was checked when it was configured.
func setConnCongestion(conn net.Conn, name string) error {
	tc, ok := conn.(*net.TCPConn)
	if name == "" || !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return err
	}
	return congestionControl(name)("tcp", "", rc)
}

// congestionControl returns a net.Dialer Control function that asks for
// congestion control name on each socket before it connects. A refusal is
// returned: the name was checked when it was configured.
func congestionControl(name string) func(network, address string, c syscall.RawConn) error {
	if name == "" {
		return nil
	}
	return func(network, _ string, c syscall.RawConn) error {
		if !strings.HasPrefix(network, "tcp") {
			return nil
		}
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = setCongestion(int(fd), name)
		}); err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("setting tcp-congestion %s: %w", name, serr)
		}
		return nil
	}
}
