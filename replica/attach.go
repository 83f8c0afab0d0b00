package replica

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/urbd/urbd/internal/units"
	"github.com/urbd/urbd/internal/zeroes"
	"github.com/urbd/urbd/nbd"
	"github.com/urbd/urbd/protocol"
	"github.com/urbd/urbd/resync"
)

// errAttachWrite ends an attach whose new disk failed an application write.
var errAttachWrite = errors.New("the new disk failed a write (see the log)")

// diskRef holds the node's disk behind one pointer, so that AttachDisk can
// replace it while requests read it.
type diskRef struct {
	nbd.Backend
	// copied is how far AttachDisk's copy has filled this disk from the
	// start without a gap: reads below it are served locally while the
	// node is still Diskless (see attachedRead).
	copied atomic.Int64
	// resumeAt, guarded by the node's mu, says where a copy that ended with
	// its session resumes (copyPlanLocked): below it this disk holds the
	// data of the node's generation, except where inFlight says.
	resumeAt int64
	// marked, guarded by the node's mu, says that the chunks the bitmap
	// marks differ from the peer's too: this is the disk DetachDisk took
	// out of the Primary, and the bitmap marks the writes made since.
	marked bool
	// inFlight holds the ranges of the writes whose peer part was in
	// flight when a session ended (session.close): they may have reached
	// this disk and not the peer.
	inFlightMu sync.Mutex
	inFlight   []tlEntry
}

// lostInFlight records that the write of [off, off+length) was in flight
// to the peer when its session ended.
func (r *diskRef) lostInFlight(off, length int64) {
	r.inFlightMu.Lock()
	r.inFlight = append(r.inFlight, tlEntry{off: off, length: length})
	r.inFlightMu.Unlock()
}

// copyPlan is what one run of AttachDisk's copy copies, in chunks of
// chunk bytes: every chunk from `from` on, and the chunks in redo below it.
type copyPlan struct {
	chunk, from int64
	redo        map[int64]bool // chunk offsets
	bytes       int64          // the total to copy
	compare     bool           // compare checksums first (csums-alg on either node)
}

// redoRange adds the chunks touching [off, off+length) below p.from to
// p.redo.
func (p *copyPlan) redoRange(off, length int64) {
	for c := off / p.chunk * p.chunk; c < min(off+max(length, 1), p.from); c += p.chunk {
		p.redo[c] = true
	}
}

// copyPlanLocked plans the next run of the copy to ref. A first run copies
// everything. A run after a lost session resumes where the last one's
// contiguous progress ended, if the peer still holds this node's data
// generation (it was not promoted and written meanwhile; Decide refuses
// such a peer already, and this keeps the copy safe anyway): the chunks below
// that are equal to the peer's, except where a write's peer part was in
// flight when a session ended, which may have reached this disk and not
// the peer. session.close records those (lostInFlight) before any later
// session starts, and their chunks are copied again. n.mu is held.
func (n *Node) copyPlanLocked(ref *diskRef) copyPlan {
	size := ref.Size()
	p := copyPlan{chunk: min(int64(syncChunk), int64(protocol.MaxData)), redo: map[int64]bool{}}
	if gen := n.peerUUIDs.Current; gen != 0 && gen == n.uuids.Current {
		p.from = ref.resumeAt
	}
	ref.resumeAt = 0
	ref.inFlightMu.Lock()
	for _, e := range ref.inFlight {
		p.redoRange(e.off, e.length)
	}
	ref.inFlight = nil
	ref.inFlightMu.Unlock()
	if ref.marked {
		// Only the marked runs, not every chunk: n.mu is held.
		bm := n.store().Bitmap()
		for off := int64(0); off < p.from; {
			o, l, ok := bm.NextDirty(off, p.from-off)
			if !ok {
				break
			}
			p.redoRange(o, l)
			off = o + l
		}
	}
	p.bytes = size - p.from
	for off := range p.redo {
		p.bytes += min(p.chunk, size-off)
	}
	return p
}

// attachedRead reads p at off from the disk being attached, if the copy
// has passed that range and the disk has failed no write; it reports
// whether it did. The peer serves the read otherwise, or if this one fails.
func (n *Node) attachedRead(ctx context.Context, p []byte, off int64) bool {
	ref := n.disk.Load()
	if !n.attachWrites.Load() || n.attachFailed.Load() || off+int64(len(p)) > ref.copied.Load() {
		return false
	}
	if err := n.readLocal(ctx, ref.Backend, p, off); err != nil {
		n.log.Warn("reading the disk being attached failed; the peer serves it", "offset", off, "length", len(p), "err", err)
		return false
	}
	return true
}

// copyMark advances a diskRef's copied over the chunks of a copy, which
// complete out of order: it moves over each run of completed chunks.
type copyMark struct {
	ref   *diskRef
	chunk int64
	size  int64

	mu   sync.Mutex
	next int64          // the first chunk not yet done
	done map[int64]bool // chunks done after next
}

func (m *copyMark) chunkDone(off int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.done[off/m.chunk] = true
	for m.done[m.next] {
		delete(m.done, m.next)
		m.next++
	}
	m.ref.copied.Store(min(m.next*m.chunk, m.size))
}

// backend is the node's disk. It changes only in AttachDisk, on a Diskless
// Primary, while no write is between its BeginWrite and its local write.
func (n *Node) backend() nbd.Backend { return n.disk.Load().Backend }

// attachWindow is how many chunks an attach copies at once: the peer reads
// one while this node writes another and a third crosses the link.
const attachWindow = 4

// Refusals of AttachDisk.
var (
	ErrNotDiskless = errors.New("replica: the disk is not detached")
	ErrAttaching   = errors.New("replica: a disk is being attached")
	ErrDiskSize    = errors.New("replica: the new disk's size differs")
)

// AttachDisk gives a node whose disk failed a working disk again without
// stopping it, as DRBD's attach does after the failed disk was replaced
// (`urbd attach-disk`). d must be exactly as large as the resource. It
// returns the disk it replaced (the failed one), which the caller closes,
// and whether d is filled by a resync (a Secondary's, see attachSecondary)
// rather than by the Primary's online copy. old is nil if d did not replace
// the disk; it may have, and d be in use, even when err is not nil.
//
// On a Diskless Primary it copies the peer's data to d in the background:
//
//   - Until the copy is done the node stays Diskless: flushes go to the
//     peer only, and a write is answered once the peer has it, as before.
//     Every write sent to the peer is also written to d, under the range
//     lock (one that cannot be sent fails, and stays off d). A read comes
//     from d if the copy has passed its range (attachedRead), else from the
//     peer.
//   - The copy reads each chunk from the peer (Read, behind every earlier
//     write on the data stream) while holding the chunk's range lock, and
//     writes it to d. A write to the chunk waits for the lock, so d ends up
//     with the peer's data, chunk after chunk.
//   - Then, with writes held, d is flushed, the metadata saved UpToDate
//     (with the peer's data generation) and the node leaves Diskless: reads
//     are local again and the peer is told.
//
// If the peer is lost during the copy, the node stays Diskless (its I/O
// fails until the peer is back, as before) and the copy goes on where it
// stopped once the nodes are connected again (resumeAttach, copyPlanLocked).
// If d fails a write, or the
// peer cannot serve a chunk, the node stays Diskless with d out of use and
// the reason says why: run it again. A daemon that stops meanwhile restarts
// as before, Secondary and Inconsistent, and gets a full resync, which
// compares checksums first (flagPartial, byChecksum): what the copy filled
// does not travel again.
func (n *Node) AttachDisk(d nbd.Backend) (old nbd.Backend, resync bool, err error) {
	n.mu.Lock()
	if n.st.Role == Secondary {
		n.mu.Unlock()
		old, err = n.attachSecondary(d, nil)
		return old, true, err
	}
	n.mu.Unlock()
	old, err = n.attachPrimary(d, nil)
	return old, false, err
}

// attachPrimary is AttachDisk on a Diskless Primary. With rec
// (ReattachDisk), d is the disk DetachDisk took out, which already holds
// the peer's data except where the bitmap marks the writes made since: the
// copy takes only those chunks (copyPlanLocked).
func (n *Node) attachPrimary(d nbd.Backend, rec *detachRecord) (old nbd.Backend, err error) {
	n.mu.Lock()
	s := n.sess
	switch {
	case rec != nil && n.detached != rec:
		err = fmt.Errorf("%s: %w: another attach-disk ran meanwhile", n.cfg.Name, ErrNotSameDisk)
	case n.st.Disk != Diskless:
		err = fmt.Errorf("%s: %w: the disk is %s, not Diskless; attach-disk replaces a disk that was detached (after an I/O error, or by urbd detach-disk)", n.cfg.Name, ErrNotDiskless, n.st.Disk)
	case n.attaching:
		err = fmt.Errorf("%s: %w: wait until it is UpToDate (urbd status)", n.cfg.Name, ErrAttaching)
	case n.st.Role != Primary || s == nil || n.st.Conn != Connected || n.st.PeerDisk != UpToDate:
		err = fmt.Errorf("%s: %w: a disk is attached from a connected peer that is UpToDate (%s, peer %s)", n.cfg.Name, ErrNotConnected, n.st.Conn, n.st.PeerDisk)
	case rec != nil && n.peerUUIDs.Current != rec.uuids.Current:
		// Decide refuses such a peer already (a Diskless Primary connects
		// to its own generation only); this keeps the copy safe anyway.
		err = fmt.Errorf("%s: %w: the peer's data is of another generation than at the detach (it was promoted meanwhile); attach the disk without --same-disk", n.cfg.Name, ErrNotSameDisk)
	case d.Size() != n.backend().Size():
		err = fmt.Errorf("%s: %w: the new disk is %d bytes, the resource %d", n.cfg.Name, ErrDiskSize, d.Size(), n.backend().Size())
	}
	if err != nil {
		n.mu.Unlock()
		return nil, err
	}
	n.attaching = true // no resumeAttach meanwhile
	n.detached = nil
	ref := &diskRef{Backend: d}
	if rec != nil {
		// Equal to the peer's generation below the end, but for the
		// chunks the bitmap marks.
		ref.resumeAt, ref.marked = d.Size(), true
	}
	n.mu.Unlock()

	// No write is between its BeginWrite and its local write while growMu
	// is held: each write from here on also writes d (and none is marked
	// for it any more, see markDiskless).
	n.growMu.Lock()
	old = n.backend()
	n.disk.Store(ref)
	n.attachFailed.Store(false)
	n.attachWrites.Store(true)
	n.markDiskless.Store(false)
	n.growMu.Unlock()

	n.log.Info("attaching a disk", "size", d.Size(), "same", rec != nil)
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.sess != s {
		// The session ended meanwhile: the next one starts the copy.
		n.attaching = false
		return old, nil
	}
	n.startCopyLocked(s, false)
	return old, nil
}

// attachSecondary is AttachDisk on a Secondary whose disk failed: Diskless
// (demoted after a detach) or Inconsistent (it failed a replicated write, a
// flush or a resync copy, and may stand alone since). d replaces the disk and
// gets all of the peer's data by a full resync, as after `urbd invalidate`:
//
//   - The session, if any, ends first, and none is adopted until d is in
//     place, so no replicated write or resync copy is between the two disks.
//   - The whole bitmap is set and the node is Inconsistent, both saved
//     before it connects again: a crash before the resync ends resumes it.
//   - The node then connects, even if it stood alone after the failure, and
//     becomes SyncTarget of an UpToDate peer for every block.
//
// A Secondary with a working disk (UpToDate or Outdated) is refused.
//
// With rec (ReattachDisk), d is the disk DetachDisk took out, unchanged:
// the bitmap stays as it was, and the node takes rec's data generation back,
// Outdated, so that the resync copies only what the peer's bitmap marked.
func (n *Node) attachSecondary(d nbd.Backend, rec *detachRecord) (old nbd.Backend, err error) {
	n.mu.Lock()
	switch {
	case rec != nil && n.detached != rec:
		err = fmt.Errorf("%s: %w: another attach-disk ran meanwhile", n.cfg.Name, ErrNotSameDisk)
	case n.st.Disk.consistent():
		err = fmt.Errorf("%s: %w: it is %s; attach-disk replaces a disk that failed (Diskless, or Inconsistent after an I/O error)", n.cfg.Name, ErrNotDiskless, n.st.Disk)
	case n.attaching:
		err = fmt.Errorf("%s: %w: wait until it is done (urbd status)", n.cfg.Name, ErrAttaching)
	case d.Size() != n.backend().Size():
		err = fmt.Errorf("%s: %w: the new disk is %d bytes, the resource %d", n.cfg.Name, ErrDiskSize, d.Size(), n.backend().Size())
	}
	if err != nil {
		n.mu.Unlock()
		return nil, err
	}
	const why = "attaching a new disk: disconnected from the peer until it is in place"
	n.attaching = true
	n.wantConn = false // no session until d is in place
	s := n.sess
	n.setStateLocked(why, func(st *State) { st.Conn = StandAlone })
	n.mu.Unlock()
	if s != nil {
		s.leave("the peer attaches a new disk", &localStop{reason: why})
	}

	n.growMu.Lock()
	old = n.backend()
	n.disk.Store(&diskRef{Backend: d})
	n.growMu.Unlock()

	var perr error
	if rec == nil {
		n.log.Info("attached a new disk: full resync from the peer", "size", d.Size())
		// The bitmap first: the metadata says Inconsistent already (the
		// disk failed), so a crash in between still resyncs every block.
		n.store().Bitmap().SetAll()
		perr = n.store().PersistBitmap()
	} else {
		n.log.Info("attached the detached disk again: resync of what the peer changed meanwhile", "size", d.Size())
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.attaching = false
	n.partial = false // a new disk, or the detached one with its bitmap
	n.diskless.Store(false)
	n.store().SetSyncData(n.syncData)
	n.st.Disk = Inconsistent // saved below; shown with the reason
	connected := "new disk attached: Inconsistent until a full resync from the peer"
	if rec != nil {
		n.uuids = rec.uuids
		n.st.Disk = Outdated
		connected = "detached disk attached again: Outdated until the peer resyncs what it changed meanwhile"
	}
	if perr != nil {
		n.setReasonLocked(fmt.Sprintf("attaching a new disk: saving the bitmap failed: %v; still StandAlone (run urbd attach-disk again)", perr))
		return old, perr
	}
	if err := n.saveMetaLocked(); err != nil {
		// Still Inconsistent on the metadata device: a retry, with or
		// without --same-disk (rec stays), starts over from there.
		n.st.Disk = Inconsistent
		n.setReasonLocked(fmt.Sprintf("attaching a new disk: saving the metadata failed: %v; still StandAlone (run urbd attach-disk again)", err))
		return old, err
	}
	n.detached = nil
	n.wantConn = true
	n.setStateLocked(connected, func(st *State) { st.Conn = WFConnection })
	n.kickConnect()
	return old, nil
}

// startCopyLocked runs AttachDisk's copy on session s in the background, as
// copyPlanLocked plans it; again says that an earlier run ended with its
// session. n.mu must be held and n.attaching set; n.sess is s, so Close,
// which ends the session before it waits for bgWG, waits for this copy.
func (n *Node) startCopyLocked(s *session, again bool) {
	plan := n.copyPlanLocked(n.disk.Load())
	reason := fmt.Sprintf("attaching a new disk: copying %s from the peer; Diskless until it is done", units.FormatSize(plan.bytes))
	switch {
	case again && plan.from > 0:
		reason = fmt.Sprintf("attaching a new disk: the peer is back, copying the %s not copied yet; Diskless until it is done", units.FormatSize(plan.bytes))
	case again:
		reason = fmt.Sprintf("attaching a new disk: the peer is back, copying %s again; Diskless until it is done", units.FormatSize(plan.bytes))
	}
	if plan.compare = n.copyComparesLocked(s); plan.compare {
		reason += " (csums-alg: only blocks whose checksums differ are copied)"
	}
	prog := resync.NewProgress(n.clock, plan.bytes)
	n.progress = prog
	n.setReasonLocked(reason)
	n.bgWG.Add(1)
	go func() {
		defer n.bgWG.Done()
		n.finishAttach(s, prog, plan)
	}()
}

// AttachCompares reports whether AttachDisk's copy, started now on a
// Primary, would compare checksums first (csums-alg on either node).
func (n *Node) AttachCompares() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.copyComparesLocked(n.sess)
}

// copyComparesLocked is AttachCompares for a copy on session s (nil: none).
// n.mu is held.
func (n *Node) copyComparesLocked(s *session) bool {
	return n.csums.Load() || (s != nil && s.peerCsums.Load())
}

// resumeAttach starts AttachDisk's copy over on session s when an earlier
// one ended with its session: the node, still a Diskless Primary with the
// new disk, is connected again to an UpToDate peer. followPeer calls it.
func (n *Node) resumeAttach(s *session) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.attachWrites.Load() || n.attaching || n.sess != s || n.st.Role != Primary || n.st.Disk != Diskless ||
		n.st.Conn != Connected || n.st.PeerDisk != UpToDate {
		return
	}
	n.attaching = true
	n.log.Info("the peer is back: copying to the new disk again")
	n.startCopyLocked(s, true)
}

// finishAttach runs AttachDisk's copy on session s and then leaves Diskless,
// or stays Diskless and says why. A copy that ended with its session is
// resumed by the next one (resumeAttach); any other failure takes the new
// disk out of use until AttachDisk runs again.
func (n *Node) finishAttach(s *session, prog *resync.Progress, plan copyPlan) {
	ref := n.disk.Load()
	err := n.copyFromPeer(s, prog, plan)
	if err == nil {
		err = n.leaveDiskless(s)
	}
	lost := err != nil && s.isClosed() && !errors.Is(err, errAttachWrite) && !n.attachFailed.Load()
	copied := ref.copied.Load()
	if err != nil {
		ref.copied.Store(0) // reads go to the peer again
	}
	if err != nil && !lost {
		n.growMu.Lock()
		n.attachWrites.Store(false)
		n.growMu.Unlock()
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.progress = nil
	n.attaching = false
	switch {
	case err == nil:
		return
	case lost:
		// The session's end set the reason; the next session resumes.
		ref.resumeAt = copied
		n.log.Warn("the copy to the new disk stopped with the peer connection; it resumes when the peer is back", "copied", copied, "err", err)
		return
	}
	reason := fmt.Sprintf("attaching the new disk failed: %v; still Diskless (run urbd attach-disk again)", err)
	n.log.Error(reason)
	if n.sess == s && n.st.Disk == Diskless {
		// Otherwise the reason says why the session ended.
		n.setReasonLocked(reason)
	}
}

// copyFromPeer copies what plan says from the peer to the node's (new)
// disk, attachWindow chunks at a time, at the resync rate. With csums-alg
// set on either node it compares checksums first (compareChunk), so that a
// disk that already holds most of the data (the failed one, repaired) gets
// only the blocks that differ.
func (n *Node) copyFromPeer(s *session, prog *resync.Progress, plan copyPlan) error {
	ref := n.disk.Load()
	size := ref.Size()
	chunk := plan.chunk
	start := plan.from // the first chunk not known to be equal
	for off := range plan.redo {
		start = min(start, off)
	}
	compare := plan.compare
	if compare {
		// Writes sent before the new disk took writes are not on it: the
		// peer must have applied them before its checksums are compared
		// with it. A flush follows them on the data stream.
		if r := s.sendFlush(); r == nil || !r.wait(s.ctx, 'C') {
			return fmt.Errorf("the peer did not apply the writes sent before the copy: %w", ErrPeerLost)
		}
	}
	mark := &copyMark{ref: ref, chunk: chunk, size: size, next: start / chunk, done: map[int64]bool{}}
	ref.copied.Store(start)
	var wg sync.WaitGroup
	var errs firstError
	fail := errs.set
	failed := func() bool {
		if n.attachFailed.Load() {
			fail(errAttachWrite)
		}
		return errs.get() != nil
	}
	slots := make(chan struct{}, attachWindow)
	for off := start; off < size && !failed(); off += chunk {
		if off < plan.from && !plan.redo[off] {
			mark.chunkDone(off) // equal to the peer's already
			continue
		}
		length := min(chunk, size-off)
		slots <- struct{}{}
		unlock, err := n.rl.lock(s.ctx, off, length)
		if err != nil {
			<-slots
			fail(err)
			break
		}
		var r *request
		if !compare {
			if r = s.sendRead(off, length); r == nil {
				unlock()
				<-slots
				fail(ErrPeerLost)
				break
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			var zero bool
			var err error
			if compare {
				err = n.compareChunk(s, ref, off, length, unlock)
			} else {
				zero, err = n.copyChunk(s, ref, r, unlock)
			}
			if err != nil {
				fail(err)
				return
			}
			prog.Done(length)
			mark.chunkDone(off)
			// The rate limit counts what crossed the link, or was read
			// on both nodes to compare: a chunk that reads as zeroes costs
			// it nothing. The slot is held meanwhile, so the copy keeps to
			// the rate.
			if !zero {
				if err := n.rate.Wait(s.ctx, length); err != nil {
					fail(err)
				}
			}
		}()
	}
	wg.Wait()
	return errs.get()
}

// copyChunk waits for the peer's answer to the copy's read r and writes it
// to ref (writeRead), then releases the chunk's range lock (unlock).
func (n *Node) copyChunk(s *session, ref *diskRef, r *request, unlock func()) (zero bool, err error) {
	defer unlock()
	return n.writeRead(s, ref, r)
}

// compareChunk fills [off, off+length) of ref, the disk being attached, by
// checksum, then releases the chunk's range lock (unlock): it reads the
// chunk from ref, asks the peer for the SHA-256 of each bitmap block of its
// copy, and reads from the peer only the runs of blocks whose sums differ,
// or that either disk cannot read. The peer's sums may predate a write to
// the chunk still on its way to it; such a write is on ref already (writes
// reach the new disk under the range lock), so its blocks differ and are
// read, behind the write, or are equal after it too. copyFromPeer's flush
// covers the writes sent before the new disk took writes.
func (n *Node) compareChunk(s *session, ref *diskRef, off, length int64, unlock func()) error {
	defer unlock()
	bs := n.store().Bitmap().BlockSize()
	bp := chunkPool.Get().(*[]byte)
	defer chunkPool.Put(bp)
	buf := (*bp)[:length]   // length <= syncChunk: copyPlan's chunk
	var ours []protocol.Sum // nil: unreadable here, every block differs
	if n.isHole(off, length) {
		ours = zeroSums(length, bs)
	} else if err := n.readLocal(s.ctx, ref.Backend, buf, off); err == nil {
		ours = blockSums(buf, bs)
	} else if s.ctx.Err() != nil {
		return err
	}
	theirs, err := s.peerSums(off, length, bs)
	if err != nil {
		return err
	}
	for i, j := range differingRuns(ours, theirs) {
		lo, hi := int64(i)*bs, min(int64(j)*bs, length)
		r := s.sendRead(off+lo, hi-lo)
		if r == nil {
			return ErrPeerLost
		}
		if _, err := n.writeRead(s, ref, r); err != nil {
			return err
		}
	}
	return nil
}

// writeRead waits for the peer's answer to the copy's read r and writes it
// to ref. A range the peer answered as zeroes is written with WriteZeroes,
// which punches a hole where the disk can, so a thin or sparse new disk
// stays thin; zero says so.
func (n *Node) writeRead(s *session, ref *diskRef, r *request) (zero bool, err error) {
	if !r.wait(s.ctx, 'C') {
		return false, fmt.Errorf("the peer did not serve %d bytes at %d", r.length, r.off)
	}
	if r.zero {
		err = ref.WriteZeroes(s.ctx, r.off, r.length, false, false)
	} else {
		err = writePieces(s.ctx, ref, r.dst, r.off)
	}
	if err != nil {
		return false, fmt.Errorf("writing the new disk at %d: %w", r.off, err)
	}
	n.stats.diskWrite.Add(uint64(r.length))
	return r.zero, nil
}

// writePieces writes data at off to d, a disk being filled from the peer,
// with its runs of zeroes of zeroes.Step steps or more as WriteZeroes without
// no-hole, as a resync's source sends them: so the zeroes of a chunk that
// also holds data (a file system's scattered metadata) leave a hole in a
// sparse file and nothing provisioned on a thin volume.
func writePieces(ctx context.Context, d nbd.Backend, data []byte, off int64) error {
	for _, p := range zeroes.Split(data, zeroes.Step) {
		var err error
		if p.Zero {
			err = d.WriteZeroes(ctx, off+p.Off, p.Length, false, false)
		} else {
			err = d.WriteAt(ctx, data[p.Off:p.Off+p.Length], off+p.Off, false)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// leaveDiskless ends an attach whose copy is done: the new disk is
// flushed, then, with every write held, flushed again, the bitmap cleared
// (the blocks marked while Diskless are equal now), the metadata saved
// UpToDate with the peer's data generation, and the node serves from its
// disk again.
func (n *Node) leaveDiskless(s *session) error {
	// The copy's bulk is made durable while writes go on; the flush below,
	// with writes held, then has only what they wrote since.
	if err := n.backend().Flush(s.ctx); err != nil {
		return fmt.Errorf("flushing the new disk: %w", err)
	}
	n.growMu.Lock()
	defer n.growMu.Unlock()
	if n.attachFailed.Load() {
		return errAttachWrite
	}
	if err := n.backend().Flush(s.ctx); err != nil {
		return fmt.Errorf("flushing the new disk: %w", err)
	}
	if s.isClosed() {
		return ErrPeerLost
	}
	// The new disk holds the peer's data: nothing differs. A write the
	// peer fails from here on is marked again when its session ends.
	n.store().Bitmap().ClearAll()
	if err := n.store().PersistBitmap(); err != nil {
		return fmt.Errorf("saving the bitmap: %w", err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.sess != s || n.st.Disk != Diskless {
		return ErrPeerLost
	}
	was := n.uuids
	if n.peerUUIDs.Current != 0 {
		n.uuids = n.uuids.SyncTargetDone(n.peerUUIDs)
	}
	n.st.Disk = UpToDate
	err := n.saveMetaLocked()
	n.st.Disk = Diskless
	if err != nil {
		n.uuids = was
		return err
	}
	n.diskless.Store(false)
	n.attachWrites.Store(false)
	n.store().SetSyncData(n.syncData)
	n.progress = nil // the status shows no copy once it says UpToDate
	n.setStateLocked("new disk attached: UpToDate, reads are local again", func(st *State) { st.Disk = UpToDate })
	s.sendState(n.localSideLocked())
	n.log.Info("new disk attached and in sync with the peer")
	return nil
}

// writeAttaching writes a Diskless node's write to the disk AttachDisk is
// filling, with the range lock held. The peer's copy answers the write; a
// failure here only ends the attach, whose copy then stops.
func (n *Node) writeAttaching(ctx context.Context, kind string, off, length int64, local func(context.Context) error) {
	if err := n.writeLocal(ctx, kind, off, length, local); err != nil {
		n.log.Error("the disk being attached failed a write", "offset", off, "length", length, "err", err)
		n.attachFailed.Store(true)
	}
}
