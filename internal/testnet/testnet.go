// Package testnet gives tests loopback ports for servers they start later,
// and a TCP proxy that stands for the link between two nodes (Proxy).
package testnet

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Ports are chosen outside the kernel's ephemeral range
// (net.ipv4.ip_local_port_range, 32768-60999 by default). A port from that
// range can be handed, between the check and the server's bind, to the
// source of some outgoing connection, which a busy test run makes many of;
// and a client that dials such a port before its server listens may be
// given it as its own source port and connect to itself.
const (
	floorPort = 10000 // below are the well-known ports of services a machine may run
	defLow    = 20000 // the window used when the range cannot be read
	defHigh   = 32768
	minWindow = 1000 // a gap smaller than this is not worth the collisions
)

var window = sync.OnceValues(func() (int, int) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return defLow, defHigh
	}
	return windowOutside(string(b))
})

// windowOutside returns the larger run of ports [low, high) outside the
// ephemeral range given as "LOW HIGH", above floorPort. With no run of
// minWindow ports outside it, it returns the default window.
func windowOutside(portRange string) (low, high int) {
	f := strings.Fields(portRange)
	if len(f) != 2 {
		return defLow, defHigh
	}
	elo, err1 := strconv.Atoi(f[0])
	ehi, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil || elo > ehi {
		return defLow, defHigh
	}
	if elo >= defHigh {
		return defLow, defHigh
	}
	below := elo - floorPort
	above := 65536 - (ehi + 1)
	switch {
	case below >= above && below >= minWindow:
		return floorPort, elo
	case above > below && above >= minWindow:
		return ehi + 1, 65536
	}
	return defLow, defHigh
}

// recent holds the last ports FreePort handed out, which it does not hand
// out again: the two nodes of a pair, which ask one after the other before
// either listens, would otherwise get the same port about once in 22,000
// pairs (Linux's default window), and one node would then connect to
// itself.
var recent struct {
	sync.Mutex
	ports [64]int
	next  int
}

// FreePort returns a 127.0.0.1 TCP port outside the ephemeral range that
// was free a moment ago and is none of the last 64 it returned.
func FreePort() (int, error) {
	recent.Lock()
	defer recent.Unlock()
	low, high := window()
	lastErr := errors.New("every port tried was handed out just before")
	for range 100 {
		port := low + rand.IntN(high-low)
		if slices.Contains(recent.ports[:], port) {
			continue
		}
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			lastErr = err
			continue
		}
		ln.Close()
		recent.ports[recent.next] = port
		recent.next = (recent.next + 1) % len(recent.ports)
		return port, nil
	}
	return 0, fmt.Errorf("testnet: no free port found in [%d, %d): %w", low, high, lastErr)
}

// FreeAddr is FreePort as a "127.0.0.1:PORT" address.
func FreeAddr() (string, error) {
	port, err := FreePort()
	if err != nil {
		return "", err
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), nil
}
