package replica

import (
	"fmt"
	"strings"
	"sync/atomic"
	"time"
)

// The settings `urbd adjust` changes while the node runs. Each takes
// effect as its doc comment says: at once, for the next write, or from the
// next connection on.

// AdjustRate changes the resync rate live (`urbd adjust --resync-rate`).
func (n *Node) AdjustRate(bytesPerSec int64) {
	n.rate.SetRate(bytesPerSec)
	n.log.Info("resync rate changed", "bytes_per_sec", bytesPerSec)
}

// SetOnPeerLoss changes on-peer-loss while the node runs: with suspend a
// Primary holds writes while it has no connected, UpToDate peer; with
// continue it writes alone. Writes held when it becomes continue are
// released at once. A Primary that is already without its peer when it
// becomes suspend goes on writing, as after resume-io: the setting holds
// writes from the next peer loss on, rather than freezing the application
// the moment it is typed.
func (n *Node) SetOnPeerLoss(suspend bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.suspendOnLoss.Load() == suspend {
		return
	}
	n.suspendOnLoss.Store(suspend)
	if suspend && !n.fenceFrozenLocked() && n.suspendedLocked() {
		n.resumed = true
	}
	n.log.Info("on-peer-loss changed", "suspend", suspend)
	n.notifyLocked()
}

// checkProtocol refuses anything but the protocols A, B and C.
func checkProtocol(p byte) error {
	switch p {
	case 'A', 'B', 'C':
		return nil
	}
	return fmt.Errorf("replica: unknown protocol %q: use A, B or C", p)
}

// protocol is the replication protocol in effect: 'A', 'B' or 'C'.
func (n *Node) protocol() byte { return byte(n.proto.Load()) }

// SetProtocol changes the replication protocol of a running node, as
// `urbd adjust --protocol` does. Writes that start after it are answered as
// p says; a write already waiting for the peer keeps the protocol it started
// with. A connected peer is told at once, so that with protocol B it
// confirms each write's arrival; until it has heard, a write under B waits
// for the peer's write, as under C. The peer's own protocol, which governs
// the writes it sends as a Primary, does not change.
func (n *Node) SetProtocol(p byte) error {
	if err := checkProtocol(p); err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.protocol() == p {
		return nil
	}
	n.proto.Store(uint32(p))
	n.log.Info("protocol changed", "protocol", string(p))
	if s := n.sess; s != nil {
		s.sendState(n.localSideLocked())
	}
	n.setReasonLocked(fmt.Sprintf("protocol set to %c by operator", p))
	n.notifyLocked() // the status shows the protocol even if the reason stayed
	return nil
}

// ParseCsumsAlg parses a csums-alg value: "sha256" turns ResyncChecksums on,
// "none" (or "") off. SHA-256 is the one checksum urbd compares blocks by.
func ParseCsumsAlg(s string) (bool, error) {
	switch s {
	case "sha256":
		return true, nil
	case "", "none":
		return false, nil
	}
	return false, fmt.Errorf("csums-alg %q: use sha256 or none", s)
}

// SetResyncChecksums turns csums-alg on or off (`urbd adjust --csums-alg`):
// whether resyncs to a disk with data compare SHA-256 checksums before they
// copy. A connected peer is told at once; a resync already running keeps
// its mode, the next one follows the setting of either node.
func (n *Node) SetResyncChecksums(on bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.csums.Load() == on {
		return
	}
	n.csums.Store(on)
	n.log.Info("csums-alg changed", "resync_checksums", on)
	if s := n.sess; s != nil {
		s.sendState(n.localSideLocked())
	}
}

// timeout is the peer timeout in effect for new connections, dials and
// handshakes; a session keeps its own (protocol.Session.Timeout).
func (n *Node) timeout() time.Duration { return time.Duration(n.peerTimeout.Load()) }

// SetTimeout changes the peer timeout, as `urbd adjust --timeout` does.
// Dials, handshakes and the fencing grace use it at once; a connected
// session keeps the timeout it was made with, which yamux's keepalive also
// uses, so a connection goes on being judged by one timeout from its start
// to its end. The new one governs from the next connection on.
func (n *Node) SetTimeout(d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("replica: timeout %s: use a positive duration", d)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.timeout() == d {
		return nil
	}
	n.peerTimeout.Store(int64(d))
	n.log.Info("peer timeout changed, from the next connection on", "timeout", d)
	return nil
}

// DefaultKoCount is the ko-count of urbd up and of the resource file
// (DRBD's): with the default timeout of 6s, a peer that leaves a write
// unanswered for 42s is dropped. MaxKoCount is DRBD's upper bound.
const (
	DefaultKoCount = 7
	MaxKoCount     = 200
)

// CheckKoCount says what is wrong with count as ko-count, or nil.
func CheckKoCount(count int) error {
	if count < 0 || count > MaxKoCount {
		return fmt.Errorf("ko-count %d: use 0 (never drop a peer that answers pings) to %d; default %d", count, MaxKoCount, DefaultKoCount)
	}
	return nil
}

// SetKoCount changes ko-count (`urbd adjust --ko-count`), at once, for
// the connected session too: a peer is dropped once its oldest unanswered
// request is older than count times the session's timeout; 0 never drops
// it.
func (n *Node) SetKoCount(count int) error {
	if err := CheckKoCount(count); err != nil {
		return fmt.Errorf("replica: %w", err)
	}
	if n.koCount.Swap(int64(count)) != int64(count) {
		n.log.Info("ko-count changed", "ko_count", count)
	}
	return nil
}

// SetOnIOError changes what a Primary does when its disk fails a write or a
// flush (`urbd adjust --on-io-error`), from the next error on. A node
// already Diskless stays so.
func (n *Node) SetOnIOError(p OnIOError) {
	n.storePolicy(&n.onIOError, uint32(p), "on-io-error", p.String())
}

// storePolicy sets a policy read without n.mu on the I/O path (word) to v,
// with n.mu held, and logs "WHAT changed" with the new policy's name,
// unless it holds v already.
func (n *Node) storePolicy(word *atomic.Uint32, v uint32, what, name string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if word.Load() == v {
		return
	}
	word.Store(v)
	n.log.Info(what+" changed", strings.ReplaceAll(what, "-", "_"), name)
}

// SetAfterSB changes the automatic split-brain recovery policy
// (`urbd adjust --after-sb-0pri/--after-sb-1pri`). Split brains are found
// when the nodes connect, so it applies from the next connection on; the
// peer must be given the same policy before then, or that connection is
// refused (Decide).
func (n *Node) SetAfterSB(p AfterSplitBrain) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.afterSB == p {
		return
	}
	n.afterSB = p
	n.log.Info("split-brain recovery policy changed, from the next connection on", "policy", p.String())
}

// fencingPolicy is the fencing policy in effect.
func (n *Node) fencingPolicy() Fencing { return Fencing(n.fencing.Load()) }

// SetFencing changes the fencing policy (`urbd adjust --fencing`); the
// caller makes sure a fence-peer handler is configured for any policy but
// FenceDontCare. It governs from the next peer loss on, and the next
// promotion of a Secondary without its peer: a Primary already apart from
// its peer goes on as it was, neither fencing it now nor holding writes
// (as SetOnPeerLoss does not freeze the application the moment it is
// typed), and writes held for a fence are released. A fence-peer handler
// running then finishes, and its answer is ignored.
func (n *Node) SetFencing(p Fencing) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.fencingPolicy() == p {
		return
	}
	n.fencing.Store(uint32(p))
	if n.st.Role == Primary && !n.st.Conn.Connected() {
		n.fence = fenceDone
	}
	n.log.Info("fencing changed", "fencing", p.String())
	n.notifyLocked() // held writes look again
}
