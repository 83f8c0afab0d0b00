package replica

import (
	"context"
	"strings"
)

// ReadBalancing is DRBD's read-balancing: which disk serves an application
// read on a Primary whose peer holds the same data. Only a read the peer can
// serve goes there (peerCanServe: connected with no resync, the peer's disk
// UpToDate, none of the range out of sync); every other read, and every read
// the peer fails or leaves unanswered at the end of its session, is served
// by the local disk, as with ReadPreferLocal.
type ReadBalancing uint8

const (
	// ReadPreferLocal serves every read from the local disk (the default).
	ReadPreferLocal ReadBalancing = iota
	// ReadPreferRemote serves every read the peer can serve from the peer.
	ReadPreferRemote
	// ReadRoundRobin alternates between the two disks, read by read.
	ReadRoundRobin
	// ReadLeastPending sends a read to the peer when the local disk has more
	// requests in flight (lo:) than the peer has unanswered (pe: and the
	// reads already sent there).
	ReadLeastPending
	// ReadWhenCongestedRemote sends a read to the peer while the local disk
	// has congestedAt or more requests in flight (lo:).
	ReadWhenCongestedRemote
	// Read32KStriping to Read1MStriping split the disk into stripes of 32 KiB
	// to 1 MiB: the even ones are read locally, the odd ones from the peer,
	// by the stripe a read starts in (each disk caches its half).
	Read32KStriping
	Read64KStriping
	Read128KStriping
	Read256KStriping
	Read512KStriping
	Read1MStriping
)

// readBalancingNames are DRBD's names, in the constants' order.
var readBalancingNames = [...]string{
	"prefer-local", "prefer-remote", "round-robin", "least-pending", "when-congested-remote",
	"32K-striping", "64K-striping", "128K-striping", "256K-striping", "512K-striping", "1M-striping",
}

// congestedAt is how many requests in flight to the local disk make it
// congested for ReadWhenCongestedRemote: a queue as deep as a client's
// usual one (fio's and the kernel's nbd client's 32 and more) held at the
// disk at once.
const congestedAt = 32

func (b ReadBalancing) String() string { return policyName(readBalancingNames[:], uint8(b)) }

// ParseReadBalancing parses a read-balancing policy name
// (ReadBalancing.String), in any case (32k-striping is 32K-striping); "" is
// the default, prefer-local.
func ParseReadBalancing(s string) (ReadBalancing, error) {
	for i, name := range readBalancingNames {
		if strings.EqualFold(s, name) {
			return ReadBalancing(i), nil
		}
	}
	v, err := parsePolicy("read-balancing", readBalancingNames[:], s)
	return ReadBalancing(v), err
}

// SetReadBalancing changes the read-balancing policy (`urbd adjust
// --read-balancing`), from the next read on.
func (n *Node) SetReadBalancing(b ReadBalancing) {
	n.storePolicy(&n.readBalancing, uint32(b), "read-balancing", b.String())
}

// ReadsForPeer is how many of the peer's Reads this node has answered: the
// reads it serves besides its NBD clients' (the daemon counts both when it
// adapts its thread count to reads).
func (n *Node) ReadsForPeer() uint64 { return n.stats.readsForPeer.Load() }

// wantsPeerRead applies the read-balancing policy to a read at off: whether
// to ask the peer for it. It looks at counters only; whether
// the peer can serve it is peerCanServe's.
func (n *Node) wantsPeerRead(off int64) bool {
	switch b := ReadBalancing(n.readBalancing.Load()); b {
	case ReadPreferLocal:
		return false
	case ReadPreferRemote:
		return true
	case ReadRoundRobin:
		return n.readTurn.Add(1)&1 == 0
	case ReadLeastPending:
		return n.localPending() > n.stats.peerPending.Load()+n.stats.peerReads.Load()
	case ReadWhenCongestedRemote:
		return n.localPending() >= congestedAt
	default:
		shift := 15 + uint(b-Read32KStriping) // 32 KiB is 1<<15
		return (off>>shift)&1 == 1
	}
}

// balancedRead serves an application read from the peer when the
// read-balancing policy asks for it and the peer can serve it, and reports
// whether it did. A read the peer could not serve is the caller's to serve
// from the local disk: the application never sees the peer's failure.
//
// It takes no range lock: the Read follows on the data stream every write
// this node sent before it, and the peer applies them first, so the answer
// holds every write answered before the read began; a write still in flight
// is concurrent with the read, which may see it or not, as on one disk.
func (n *Node) balancedRead(ctx context.Context, p []byte, off int64) bool {
	if !n.wantsPeerRead(off) {
		return false
	}
	s, st := n.sessionState()
	if n.peerCanServe(s, st, off, int64(len(p))) != nil {
		return false
	}
	n.stats.peerReads.Add(1)
	err := n.readPeer(ctx, s, p, off, false)
	n.stats.peerReads.Add(-1)
	if err != nil && ctx.Err() == nil {
		n.log.Debug("a balanced read goes to the local disk", "offset", off, "length", len(p), "err", err)
	}
	return err == nil
}
