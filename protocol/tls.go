package protocol

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
)

// ErrSecret: the secret file is empty, too large or unreadable.
var ErrSecret = errors.New("protocol: bad secret file")

// MaxSecret is the largest shared secret LoadSecret accepts.
const MaxSecret = 4096

// LoadTLS builds the mutual-TLS configuration used by both sides of a peer
// connection: this node presents certFile/keyFile, and the peer must present
// a certificate that chains to caFile, in both directions (the acceptor
// requires a client certificate). Peers are addressed by IP, so the peer's
// certificate is checked against the CA only, not against a host name: the
// CA is the trust anchor, and should sign only urbd node certificates.
// TLS 1.3 is required. It also returns the three files' contents as it read
// them (certificate, key, CA), so that a caller can tell whether they
// changed since: each file is read once.
func LoadTLS(certFile, keyFile, caFile string) (*tls.Config, [3][]byte, error) {
	var pems [3][]byte
	for i, f := range []string{certFile, keyFile, caFile} {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, pems, fmt.Errorf("protocol: read TLS file: %w", err)
		}
		pems[i] = b
	}
	cert, err := tls.X509KeyPair(pems[0], pems[1])
	if err != nil {
		return nil, pems, fmt.Errorf("protocol: load TLS key pair %s, %s: %w", certFile, keyFile, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pems[2]) {
		return nil, pems, fmt.Errorf("protocol: TLS CA %s: no PEM certificate found", caFile)
	}
	return NewTLSConfig(cert, pool), pems, nil
}

// NewTLSConfig is LoadTLS for a certificate and CA pool already in memory.
func NewTLSConfig(cert tls.Certificate, ca *x509.CertPool) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS13,
		// Verification is done by VerifyConnection on both sides, against
		// ca and without a host name; the standard checks are disabled only
		// because they insist on one.
		InsecureSkipVerify: true,
		ClientAuth:         tls.RequireAnyClientCert,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyPeer(cs, ca)
		},
	}
}

// verifyPeer checks the peer's certificate chain against ca.
func verifyPeer(cs tls.ConnectionState, ca *x509.CertPool) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("peer presented no certificate")
	}
	opts := x509.VerifyOptions{
		Roots:         ca,
		Intermediates: x509.NewCertPool(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}
	for _, c := range cs.PeerCertificates[1:] {
		opts.Intermediates.AddCert(c)
	}
	if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
		return fmt.Errorf("the peer's certificate does not chain to the CA of this node's --tls-ca: %w", err)
	}
	return nil
}

// LoadSecret reads a shared secret file (--secret-file). Leading and
// trailing white space is removed; the secret must be 1 to MaxSecret bytes.
func LoadSecret(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSecret, err)
	}
	defer f.Close()
	buf := make([]byte, MaxSecret+2)
	n, err := io.ReadFull(f, buf)
	if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
		return nil, fmt.Errorf("%w: %s: %w", ErrSecret, path, err)
	}
	s := bytes.TrimSpace(buf[:n])
	if n > MaxSecret+1 || len(s) > MaxSecret {
		return nil, fmt.Errorf("%w: %s is longer than %d bytes", ErrSecret, path, MaxSecret)
	}
	if len(s) == 0 {
		return nil, fmt.Errorf("%w: %s is empty", ErrSecret, path)
	}
	return s, nil
}
