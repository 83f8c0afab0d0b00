package e2e

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/urbd/urbd/internal/testnet"
	"github.com/urbd/urbd/internal/testpki"
)

// TestTLSReplication: two daemons given --tls-cert, --tls-key and --tls-ca
// from one CA connect and replicate, and what crosses the network is TLS:
// every peer connection starts with a TLS record, and a block written
// through the Primary never appears in clear on the wire, while both disks
// end up equal. A node whose certificate another CA signed is refused; each
// node says why from its side in its status and logs it once; a node without
// TLS is refused, and each of the two says which one has TLS.
func TestTLSReplication(t *testing.T) {
	c := newCluster(t, clusterOpts{})
	pki := newTestPKI(t, c.dir)
	// Each node dials the other through a relay that keeps what passed.
	toB := startRelay(t, c.b.listen)
	toA := startRelay(t, c.a.listen)
	c.a.peer, c.b.peer = toB.addr, toA.addr
	tlsFlags := func(name string) []string {
		return []string{"--tls-cert", pki.cert[name], "--tls-key", pki.key[name], "--tls-ca", pki.ca}
	}
	c.a.start(tlsFlags("a")...)
	c.b.start(tlsFlags("b")...)
	c.a.waitInSync(30 * time.Second)
	c.a.ctl("primary", "r0")

	canary := bytes.Repeat([]byte("urbd-tls-canary:"), 1<<16) // 1 MiB
	cl, err := c.a.client()
	must(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	must(t, cl.Write(ctx, canary, 8<<20, false))
	must(t, cl.Flush(ctx))
	cl.Close()
	c.a.ctl("secondary", "r0")
	cmpFiles(t, c.a.disk, c.b.disk)
	if got := fileBytes(t, c.b.disk)[8<<20 : 9<<20]; !bytes.Equal(got, canary) {
		t.Fatal("the canary block is not on the Secondary's disk")
	}
	conns, wire := toA.seen()
	conns2, wire2 := toB.seen()
	conns = append(conns, conns2...)
	if len(conns) == 0 {
		t.Fatal("no peer connection passed the relays")
	}
	for i, first := range conns {
		// A TLS handshake record: content type 22, version 3.x.
		if len(first) < 2 || first[0] != 0x16 || first[1] != 0x03 {
			t.Fatalf("peer connection %d began % x, not with a TLS record", i, first)
		}
	}
	if bytes.Contains(append(wire, wire2...), []byte("urbd-tls-canary:urbd-tls-canary:")) {
		t.Fatal("the written block crossed the network in clear")
	}

	// b comes back with a certificate from another CA; then without TLS.
	from := c.restartBRefused([]string{"--tls-cert", pki.cert["rogue"], "--tls-key", pki.key["rogue"], "--tls-ca", pki.ca},
		"protocol: TLS handshake failed: the peer's certificate does not chain to the CA of this node's --tls-ca: x509: certificate signed by unknown authority",
		"protocol: TLS handshake failed: the peer does not accept this node's certificate")
	c.logOneConnFailure(from)
	c.restartBRefused(nil,
		"protocol: TLS handshake failed: the peer has no TLS configured but this node requires it (give both nodes --tls-cert, --tls-key and --tls-ca, or neither)",
		"protocol: TLS handshake failed: the peer requires TLS but this node has none configured (give both nodes --tls-cert, --tls-key and --tls-ca, or neither)")
}

// testPKI is PEM files for a CA and certificates it signed for nodes "a"
// and "b", and one for "rogue" that another CA signed.
type testPKI struct {
	ca        string
	cert, key map[string]string
}

func newTestPKI(t *testing.T, dir string) *testPKI {
	t.Helper()
	p := &testPKI{ca: filepath.Join(dir, "ca.pem"), cert: map[string]string{}, key: map[string]string{}}
	ca, other := testpki.New(t, "urbd test CA"), testpki.New(t, "another CA")
	must(t, os.WriteFile(p.ca, ca.PEM, 0o600))
	for name, issuer := range map[string]*testpki.CA{"a": ca, "b": ca, "rogue": other} {
		_, certPEM, keyPEM := issuer.Leaf(t, "node-"+name)
		p.cert[name], p.key[name] = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
		must(t, os.WriteFile(p.cert[name], certPEM, 0o600))
		must(t, os.WriteFile(p.key[name], keyPEM, 0o600))
	}
	return p
}

// relay is a testnet.Proxy that keeps what it forwarded both ways (up to
// relayKeep bytes) and the first bytes the connecting side sent on each
// connection.
type relay struct {
	addr  string
	mu    sync.Mutex
	wire  []byte
	first [][]byte
}

const relayKeep = 64 << 20

func startRelay(t *testing.T, target string) *relay {
	t.Helper()
	r := &relay{}
	p, err := testnet.StartProxy(target, r.keep)
	must(t, err)
	t.Cleanup(p.Close)
	r.addr = p.Addr()
	return r
}

// keep is the proxy's Tap.
func (r *relay) keep(conn int, forward bool, p []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for len(r.first) <= conn {
		r.first = append(r.first, nil)
	}
	if forward && len(r.first[conn]) < 8 {
		r.first[conn] = append(r.first[conn], p[:min(len(p), 8-len(r.first[conn]))]...)
	}
	if len(r.wire) < relayKeep {
		r.wire = append(r.wire, p...)
	}
}

// seen returns the first bytes of each connection and what passed so far.
func (r *relay) seen() ([][]byte, []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	first := make([][]byte, len(r.first))
	for i, f := range r.first {
		first[i] = append([]byte(nil), f...)
	}
	return first, append([]byte(nil), r.wire...)
}
