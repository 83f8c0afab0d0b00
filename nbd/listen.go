package nbd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
)

// Errors of address parsing and listening.
var (
	// ErrBadAddress is wrapped by Listen and Dial when the address is not
	// "unix:/path" or "tcp:host:port".
	ErrBadAddress = errors.New("nbd: bad address")
	// ErrAddressInUse is wrapped by Listen when another process listens on
	// the address already.
	ErrAddressInUse = errors.New("nbd: address in use")
)

// ParseAddr splits "unix:/path/sock" or "tcp:host:port" into a network
// ("unix" or "tcp") and an address for the net package.
func ParseAddr(addr string) (network, address string, err error) {
	network, address, ok := strings.Cut(addr, ":")
	if !ok || address == "" {
		return "", "", fmt.Errorf("%w %q: want unix:/path/to.sock or tcp:host:port", ErrBadAddress, addr)
	}
	switch network {
	case "unix":
		return network, address, nil
	case "tcp":
		if _, port, err := net.SplitHostPort(address); err != nil || port == "" {
			return "", "", fmt.Errorf("%w %q: want tcp:host:port", ErrBadAddress, addr)
		}
		return network, address, nil
	default:
		return "", "", fmt.Errorf("%w %q: unknown network %q, want unix:/path/to.sock or tcp:host:port", ErrBadAddress, addr, network)
	}
}

// Listen parses addr (see ParseAddr) and listens on it. A unix socket file
// left behind by a dead process (nobody accepts on it) is removed first; one
// that a live process listens on gives an error wrapping ErrAddressInUse, as
// does a busy TCP port. The returned listener removes its unix socket file on
// Close.
func Listen(addr string) (net.Listener, error) {
	network, address, err := ParseAddr(addr)
	if err != nil {
		return nil, err
	}
	if network == "unix" {
		if fi, err := os.Lstat(address); err == nil {
			if fi.Mode()&os.ModeSocket == 0 {
				return nil, fmt.Errorf("nbd: listen %s: %s exists and is not a socket: remove it or choose another path", addr, address)
			}
			c, derr := net.Dial("unix", address)
			if derr == nil {
				c.Close()
				return nil, fmt.Errorf("%w: %s: another process listens on it: stop it or choose another socket", ErrAddressInUse, addr)
			}
			if err := os.Remove(address); err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("nbd: listen %s: removing stale socket: %w", addr, err)
			}
		}
	}
	ln, err := net.Listen(network, address)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("%w: %s: another process listens on it: stop it or choose another address", ErrAddressInUse, addr)
		}
		return nil, fmt.Errorf("nbd: listen %s: %w", addr, err)
	}
	if ul, ok := ln.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(true)
	}
	return ln, nil
}

// Dial parses addr like Listen and connects to it.
func Dial(ctx context.Context, addr string) (net.Conn, error) {
	network, address, err := ParseAddr(addr)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, fmt.Errorf("nbd: dial %s: %w", addr, err)
	}
	return c, nil
}
