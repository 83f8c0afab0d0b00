package daemon

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/urbd/urbd/protocol"
	"github.com/urbd/urbd/replica"
)

// peerLink is the link to the peer that Options and the files they name
// give, with a digest of those files, so that `urbd adjust` also sees a
// secret or a certificate replaced under the same name.
type peerLink struct {
	replica.Link
	files [sha256.Size]byte // SHA-256 of the secret file and the TLS files, in order
}

// loadLink reads the secret file and the TLS files of o.
func loadLink(o Options) (peerLink, error) {
	l := peerLink{Link: replica.Link{ListenPeer: o.ListenPeer, Peer: o.Peer}}
	h := sha256.New()
	if o.SecretFile != "" {
		b, err := os.ReadFile(o.SecretFile)
		if err != nil {
			return l, fmt.Errorf("reading --secret-file: %w", err)
		}
		l.Secret = bytes.TrimSpace(b)
		if len(l.Secret) == 0 {
			return l, fmt.Errorf("--secret-file %s is empty", o.SecretFile)
		}
		h.Write(l.Secret)
	}
	switch {
	case o.TLSCert == "" && o.TLSKey == "" && o.TLSCA == "":
	case o.TLSCert == "" || o.TLSKey == "" || o.TLSCA == "":
		return l, errors.New("TLS needs all of --tls-cert, --tls-key and --tls-ca")
	default:
		var err error
		if l.TLS, err = protocol.LoadTLS(o.TLSCert, o.TLSKey, o.TLSCA); err != nil {
			return l, err
		}
		for _, f := range []string{o.TLSCert, o.TLSKey, o.TLSCA} {
			b, err := os.ReadFile(f)
			if err != nil {
				return l, err
			}
			h.Write(b)
		}
	}
	h.Sum(l.files[:0])
	return l, nil
}

// changes names what differs from cur to l, "" when nothing does.
func (l peerLink) changes(cur peerLink) string {
	var out []string
	if l.ListenPeer != cur.ListenPeer {
		out = append(out, "address set to "+orNone(l.ListenPeer))
	}
	if l.Peer != cur.Peer {
		out = append(out, "peer address set to "+orNone(l.Peer))
	}
	if l.files != cur.files {
		out = append(out, "secret and TLS files read again")
	}
	return strings.Join(out, ", ")
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
