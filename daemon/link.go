package daemon

import (
	"crypto/sha256"
	"errors"
	"fmt"
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
		var err error
		if l.Secret, err = protocol.LoadSecret(o.SecretFile); err != nil {
			return l, fmt.Errorf("--secret-file: %w", err)
		}
		h.Write(l.Secret)
	}
	switch {
	case o.TLSCert == "" && o.TLSKey == "" && o.TLSCA == "":
	case o.TLSCert == "" || o.TLSKey == "" || o.TLSCA == "":
		return l, errors.New("TLS needs all of --tls-cert, --tls-key and --tls-ca")
	default:
		var pems [3][]byte
		var err error
		if l.TLS, pems, err = protocol.LoadTLS(o.TLSCert, o.TLSKey, o.TLSCA); err != nil {
			return l, err
		}
		for _, b := range pems {
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
	if l.Congestion != cur.Congestion {
		out = append(out, "tcp-congestion set to "+shownCongestion(l.Congestion))
	}
	return strings.Join(out, ", ")
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
