package replica

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/urbd/urbd/nbd"
)

// detachRecord is what a Secondary remembers of the disk DetachDisk took
// out while its data was consistent (UpToDate or Outdated), so that
// ReattachDisk can take the same disk back and resync only the blocks the
// Primary wrote meanwhile. It lives in memory only: the metadata says
// Inconsistent from the detach on, so a restarted daemon fully resyncs
// whatever disk it finds.
type detachRecord struct {
	uuids UUIDs    // the data generation the disk holds
	print [32]byte // diskPrint of the disk, flushed, when it was detached
	// primary: the disk was a Primary's, which stayed Primary and Diskless,
	// its peer serving all I/O; the writes made since are marked in the
	// bitmap (markDiskless).
	primary bool
}

// ErrNotSameDisk refuses ReattachDisk: there is no detached disk to take
// back, or the disk offered is not it.
var ErrNotSameDisk = errors.New("replica: not the disk detach-disk took out")

// printSamples is how many blocks of printBlock bytes, spread evenly over
// the disk (the last block included), diskPrint hashes.
const (
	printSamples = 64
	printBlock   = 4096
)

// diskPrint is a SHA-256 over printSamples blocks spread over d. It tells
// apart a disk from a blank or another one in all but contrived cases; it
// cannot prove that nothing else changed, which the operator asserts by
// asking for ReattachDisk.
func diskPrint(ctx context.Context, d nbd.Backend) ([32]byte, error) {
	size := d.Size()
	last := max(size-printBlock, 0)
	h := sha256.New()
	buf := make([]byte, printBlock)
	for i := range int64(printSamples) {
		off := last / (printSamples - 1) * i / printBlock * printBlock
		if i == printSamples-1 {
			off = last
		}
		p := buf[:min(printBlock, size-off)]
		if err := d.ReadAt(ctx, p, off); err != nil {
			return [32]byte{}, err
		}
		h.Write(p)
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum, nil
}

// recordDetached remembers old, the disk DetachDisk just took out, if its
// data was consistent: it is flushed, so that what the metadata's
// generation counts is on it, and fingerprinted. A disk that fails either is
// not remembered (ReattachDisk then refuses it). On a Primary, every write
// from now on is marked in the bitmap (markDiskless): it reaches the peer
// only. growMu is held alone, so nothing writes old and no write is between
// its BeginWrite and its local part.
func (n *Node) recordDetached(old nbd.Backend, was DiskState, uuids UUIDs, primary bool) {
	if was != UpToDate && was != Outdated {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), n.timeout())
	defer cancel()
	if err := old.Flush(ctx); err != nil {
		n.log.Warn("flushing the detached disk failed; attach-disk will resync it in full", "err", err)
		return
	}
	print, err := diskPrint(ctx, old)
	if err != nil {
		n.log.Warn("reading the detached disk failed; attach-disk will resync it in full", "err", err)
		return
	}
	n.mu.Lock()
	n.detached = &detachRecord{uuids: uuids, print: print, primary: primary}
	n.mu.Unlock()
	n.markDiskless.Store(primary)
}

// ReattachDisk gives the node back the disk that DetachDisk took out,
// unchanged (`urbd attach-disk --same-disk`), and copies only the blocks
// written since:
//
//   - A Secondary takes the data generation the disk held, Outdated, and
//     connects; the Primary's bitmap of the writes it made alone then
//     drives a resync as after any reconnect (Decide).
//   - A Primary, still Diskless with the same peer, copies from the peer
//     the chunks its bitmap marks (the writes made while Diskless), as
//     AttachDisk copies a whole new disk.
//
// It returns the disk it replaced (the stand-in), which the caller closes.
// It refuses, with nothing changed, unless this daemon detached the disk
// with detach-disk while it was UpToDate or Outdated (not after an I/O
// error, not across a restart, and for a Primary not across a demotion),
// and unless d has the size and the sampled contents (diskPrint) the disk
// had then. The operator asserts that nothing wrote d meanwhile; the check
// catches a blank or another disk.
func (n *Node) ReattachDisk(d nbd.Backend) (old nbd.Backend, err error) {
	n.mu.Lock()
	rec := n.detached
	role, disk := n.st.Role, n.st.Disk
	n.mu.Unlock()
	switch {
	case rec == nil || rec.primary != (role == Primary) || disk.consistent():
		return nil, fmt.Errorf("%s: %w: --same-disk takes back a disk that urbd detach-disk took out of this node while it was UpToDate or Outdated, with no restart or demotion since (%s, %s); attach it without --same-disk for a full copy",
			n.cfg.Name, ErrNotSameDisk, role, disk)
	case d.Size() != n.backend().Size():
		return nil, fmt.Errorf("%s: %w: the disk is %d bytes, the resource %d", n.cfg.Name, ErrDiskSize, d.Size(), n.backend().Size())
	}
	ctx, cancel := context.WithTimeout(context.Background(), n.timeout())
	defer cancel()
	print, err := diskPrint(ctx, d)
	if err != nil {
		return nil, fmt.Errorf("%s: reading the disk failed: %w", n.cfg.Name, err)
	}
	if print != rec.print {
		return nil, fmt.Errorf("%s: %w: its contents differ from the detached disk's; attach it without --same-disk for a full copy", n.cfg.Name, ErrNotSameDisk)
	}
	if rec.primary {
		return n.attachPrimary(d, rec)
	}
	return n.attachSecondary(d, rec)
}
