package replica

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
)

// Link is how a node reaches its peer: the address it listens on, the
// peer's address, the shared secret, TLS and the TCP congestion control
// (Config's ListenPeer, Peer, Secret, TLS and TCPCongestion). SetLink
// changes it while the node runs.
type Link struct {
	ListenPeer string      // "" = do not listen
	Peer       string      // "" = do not dial
	Secret     []byte      // nil = no authentication
	TLS        *tls.Config // nil = plain TCP
	Congestion string      // "" = the kernel's default; checked (CheckCongestion) by the caller
}

// peerListener is one listener on the peer port. SetLink retires it when a
// new address replaces it, so that its accept loop ends quietly.
type peerListener struct {
	net.Listener
	retired atomic.Bool
}

func (l *peerListener) retire() {
	if l != nil {
		l.retired.Store(true)
		l.Close()
	}
}

// listen opens the peer port on addr; nil, nil for "". Accepted sockets
// take their congestion control from the link in effect (acceptLoop).
func (n *Node) listen(ctx context.Context, addr string) (*peerListener, error) {
	if addr == "" {
		return nil, nil
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("replica: listening for the peer on %s: %w", addr, err)
	}
	return &peerListener{Listener: ln}, nil
}

// relisten is a new listener for listenLoop (nil: listen nowhere); done is
// closed once the one before is retired.
type relisten struct {
	ln   *peerListener
	done chan struct{}
}

// listenLoop accepts the peer on l (nil: nowhere yet), then on each
// listener SetLink hands over, retiring the one before, until ctx is
// cancelled or an accept fails.
func (n *Node) listenLoop(ctx context.Context, l *peerListener) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	errc := make(chan error, 1)
	accept := func(l *peerListener) {
		if l == nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := n.acceptLoop(ctx, l); err != nil {
				select {
				case errc <- err:
				default:
				}
			}
		}()
	}
	accept(l)
	for {
		select {
		case <-ctx.Done():
			l.retire()
			return nil
		case err := <-errc:
			l.retire()
			return err
		case next := <-n.relisten:
			l.retire()
			close(next.done)
			l = next.ln
			accept(l)
		}
	}
}

// currentLink is the link in effect.
func (n *Node) currentLink() Link {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.link
}

// PeerAddress is the peer's address in effect ("" when this node does not
// dial).
func (n *Node) PeerAddress() string { return n.currentLink().Peer }

// SetLink changes how the node reaches its peer, as `urbd adjust` does after
// the addresses, the secret file or the TLS files changed. Dials, handshakes
// and accepts use the new link at once; a connected session goes on, so the
// new link governs from the next connection on. A new listen address is
// opened before the old one is closed: if it cannot be, nothing changes and
// the error says why.
func (n *Node) SetLink(l Link) error {
	n.linkMu.Lock()
	defer n.linkMu.Unlock()
	// Before Run, Run listens on the new address itself.
	moved := n.running && l.ListenPeer != n.currentLink().ListenPeer
	var ln *peerListener
	if moved {
		var err error
		if ln, err = n.listen(context.Background(), l.ListenPeer); err != nil {
			return err
		}
	}
	n.mu.Lock()
	n.link = l
	n.lastConnErr = [2]string{} // a failure the new link meets again is said again
	n.mu.Unlock()
	if moved {
		r := relisten{ln: ln, done: make(chan struct{})}
		select {
		case n.relisten <- r:
			<-r.done // the old address is closed when SetLink returns
		case <-n.runDone:
			ln.retire()
		}
	}
	n.log.Info("peer link changed, from the next connection on", "listen_peer", l.ListenPeer, "peer", l.Peer,
		"secret", l.Secret != nil, "tls", l.TLS != nil, "tcp_congestion", l.Congestion)
	n.kickConnect()
	return nil
}
