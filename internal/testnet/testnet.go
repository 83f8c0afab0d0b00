// Package testnet gives tests loopback ports for servers they start later.
package testnet

import (
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
)

// Ports are chosen below Linux's default ephemeral range (32768-60999):
// a port taken from that range with ":0" can be handed again, between the
// check and the server's bind, to the source of some outgoing connection,
// which a busy test run makes many of.
const (
	lowPort  = 20000
	highPort = 32768
)

// FreePort returns a 127.0.0.1 TCP port below the ephemeral range that was
// free a moment ago.
func FreePort() (int, error) {
	var lastErr error
	for range 100 {
		port := lowPort + rand.IntN(highPort-lowPort)
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			lastErr = err
			continue
		}
		ln.Close()
		return port, nil
	}
	return 0, fmt.Errorf("testnet: no free port found below %d: %w", highPort, lastErr)
}

// FreeAddr is FreePort as a "127.0.0.1:PORT" address.
func FreeAddr() (string, error) {
	port, err := FreePort()
	if err != nil {
		return "", err
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), nil
}
