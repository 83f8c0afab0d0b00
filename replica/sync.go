package replica

import (
	"errors"
	"fmt"
	"sync"

	"github.com/urbd/urbd/bitmap"
	"github.com/urbd/urbd/internal/zeroes"
	"github.com/urbd/urbd/protocol"
	"github.com/urbd/urbd/resync"
)

// Resync tuning: a copy is one run of dirty blocks of at most syncChunk
// bytes; syncWindow copies are in flight at once.
const (
	syncChunk  = 1 << 20
	syncWindow = 16
)

// chunkPool recycles resync read buffers of syncChunk bytes.
var chunkPool = sync.Pool{New: func() any { b := make([]byte, syncChunk); return &b }}

// runSyncSource copies every block set in the (merged) bitmap to the peer,
// then completes the resync on both sides. Application writes go on; a copy
// holds the range lock from its read to the target's answer (ordering rule 5).
// A Primary that pulls ahead meanwhile (on-congestion) stops copying and
// returns errPulledAhead once its copies in flight are answered: the resync
// that ends Ahead goes on with what is still marked.
func (n *Node) runSyncSource(s *session) error {
	bm := n.store().Bitmap()
	prog := n.startProgress(bm.DirtyBytes())
	if s.peerBehind {
		// The peer learns what it lacks (its bitmap then says so too, and
		// its progress counts it), then that the resync starts.
		if err := s.sendBitmap(); err != nil {
			return err
		}
	}
	// Under the node's lock, which pullAhead holds while it tells the
	// peer: a peer that learned this node is Ahead never takes this
	// SyncStart for the start of the resync that ends it (catchUp).
	n.mu.Lock()
	if n.pulledAhead.Load() {
		n.mu.Unlock()
		return errPulledAhead
	}
	err := s.ps.Control().Send(&protocol.SyncStart{Direction: protocol.SyncSource, BitmapBlock: uint32(bm.BlockSize()), TotalBits: uint64(bm.NumWords()) * 64})
	n.mu.Unlock()
	if err != nil {
		return err
	}
	if s.peerBehind {
		s.peerBehind = false
		// No copy before the peer has made itself Inconsistent (catchUp).
		if !s.barrier(s.ps.Timeout()) {
			return fmt.Errorf("replica: the peer did not confirm the start of the resync within %s", s.ps.Timeout())
		}
	}
	n.log.Info("resync started", "direction", "SyncSource", "bytes", bm.DirtyBytes(), "by_checksum", s.csumResync)
	// Copy only what this disk keeps. Data in its page cache only (writes
	// it applied as a Secondary, which its activity log never held) would
	// become durable on the target and be lost here by a power cut, with
	// the bits cleared on both sides and nothing left to mark the blocks.
	// Writes that arrive from now on are in the activity log, or there is
	// no Primary to write.
	if err := n.backend().Flush(s.ctx); err != nil {
		if s.ctx.Err() != nil {
			return err
		}
		err = fmt.Errorf("flushing before the copies: %w", err)
		s.sourceDiskFailed(err)
		return err
	}

	sem := make(chan struct{}, syncWindow)
	var wg sync.WaitGroup
	var errs firstError
	fail, failed := errs.set, errs.get
	for {
		pos := int64(0)
		copied := false
		ahead := n.newReadAhead(bm)
		for {
			if err := failed(); err != nil {
				wg.Wait()
				return err
			}
			if n.pulledAhead.Load() {
				// The link is congested: the copies wait, with the
				// blocks they have not copied marked, until it drains.
				wg.Wait()
				return errPulledAhead
			}
			off, length, ok := bm.NextDirty(pos, syncChunk)
			if !ok {
				break
			}
			pos = off + length
			copied = true
			ahead.advance(pos)
			if err := s.waitSyncResumed(); err != nil {
				wg.Wait()
				return err
			}
			// A hole costs neither a read nor the link: the rate
			// limit does not count it (copyRange looks again).
			if !n.isHole(off, length) {
				if err := n.rate.Wait(s.ctx, length); err != nil {
					wg.Wait()
					return err
				}
			}
			select {
			case sem <- struct{}{}:
			case <-s.ctx.Done():
				wg.Wait()
				return s.ctx.Err()
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				if err := n.copyRange(s, off, length); err != nil {
					fail(err)
					if errors.Is(err, errSourceRead) {
						s.sourceDiskFailed(err)
					} else {
						s.close(err)
					}
					return
				}
				prog.Done(length)
			}()
		}
		wg.Wait()
		if err := failed(); err != nil {
			return err
		}
		if !copied && bm.DirtyBlocks() == 0 {
			break
		}
		if !copied {
			// Bits set behind the scan position: go round again.
			continue
		}
	}
	return n.finishSyncSource(s)
}

// holeFinder is a disk that can tell ranges that hold no data (nbd.File
// on a sparse file).
type holeFinder interface {
	HasData(off, length int64) bool
}

// isHole reports whether the disk says [off, off+length) holds no data: it
// reads as zeroes, without a read.
func (n *Node) isHole(off, length int64) bool {
	h, ok := n.backend().(holeFinder)
	return ok && !h.HasData(off, length)
}

// prefetcher is a disk that can start reading a range in the background.
type prefetcher interface {
	Prefetch(off, length int64)
}

// readAhead keeps the disk reading the next syncWindow dirty runs ahead of
// the resync's copies, so a copy seldom waits for the disk: the runs come
// from the same bitmap scan the copies will make.
type readAhead struct {
	disk prefetcher // nil: the disk cannot prefetch
	bm   *bitmap.Bitmap
	pos  int64   // the scan position of the look-ahead
	ends []int64 // ends of prefetched runs not yet copied
}

func (n *Node) newReadAhead(bm *bitmap.Bitmap) *readAhead {
	p, _ := n.backend().(prefetcher)
	return &readAhead{disk: p, bm: bm}
}

// advance notes that the copies reached pos and prefetches further runs.
func (r *readAhead) advance(pos int64) {
	if r.disk == nil {
		return
	}
	for len(r.ends) > 0 && r.ends[0] <= pos {
		r.ends = r.ends[1:]
	}
	r.pos = max(r.pos, pos)
	for len(r.ends) < syncWindow {
		off, length, ok := r.bm.NextDirty(r.pos, syncChunk)
		if !ok {
			return
		}
		r.disk.Prefetch(off, length)
		r.pos = off + length
		r.ends = append(r.ends, r.pos)
	}
}

// errSourceRead marks a resync copy that failed because this node's own disk
// could not read the blocks, not because the session broke.
var errSourceRead = errors.New("reading")

// sourceDiskFailed stops a resync whose source cannot read (or flush) its
// own disk. Nothing else holds those blocks, so a new resync would fail at
// the same place, forever: the node goes StandAlone, with the error as its
// reason, until the operator has repaired the disk and connects again. Its
// disk stays UpToDate (it lacks nothing written to it); the peer stays
// Inconsistent, so it cannot be promoted. The local-io-error handler runs.
func (s *session) sourceDiskFailed(err error) {
	n := s.n
	reason := fmt.Sprintf("local disk error during the resync, %v; repair the disk (rewrite or restore those blocks), then run urbd connect", err)
	n.mu.Lock()
	n.wantConn = false
	n.mu.Unlock()
	n.log.Error(reason)
	n.event("local-io-error", map[string]string{"URBD_REASON": reason})
	s.close(&localStop{reason: reason})
}

// copyRange sends one run of blocks to the sync target and marks it in sync
// once the target wrote it. In checksum mode (after a crash, when most
// marked blocks are probably equal) it first asks the target for the
// blocks' checksums and sends only the blocks that differ.
func (n *Node) copyRange(s *session, off, length int64) error {
	unlock, err := n.rl.lock(s.ctx, off, length)
	if err != nil {
		return err
	}
	defer unlock()
	if n.isHole(off, length) {
		// Zeroes, without reading them (or comparing checksums).
		if err := n.sendCopy(s, off, length, nil); err != nil {
			return err
		}
		return s.copied(off, length)
	}
	bp := chunkPool.Get().(*[]byte)
	defer chunkPool.Put(bp)
	buf := (*bp)[:length] // length <= syncChunk: NextDirty's limit
	if err := n.readLocal(s.ctx, n.backend(), buf, off); err != nil {
		if s.ctx.Err() != nil {
			return err // the session is ending, not the disk
		}
		return fmt.Errorf("%w %d bytes at %d: %w", errSourceRead, length, off, err)
	}
	if !s.csumResync {
		if err := n.sendBlocks(s, off, buf); err != nil {
			return err
		}
		return s.copied(off, length)
	}
	bs := n.store().Bitmap().BlockSize()
	theirs, err := s.peerSums(off, length, bs)
	if err != nil {
		return err
	}
	for i, j := range differingRuns(blockSums(buf, bs), theirs) {
		lo, hi := int64(i)*bs, min(int64(j)*bs, length)
		if err := n.sendBlocks(s, off+lo, buf[lo:hi]); err != nil {
			return err
		}
	}
	return s.copied(off, length)
}

// copied marks [off, off+length) in sync once the sync target wrote it. The
// target has it in its page cache only, so the range also enters the
// transfer log, like an answered write: a peer loss before the next peer
// flush marks it out of sync again, and so does a failed peer flush. It
// fails, marking nothing in sync, when the session is already closed (its
// transfer log was marked without this range).
func (s *session) copied(off, length int64) error {
	s.mu.Lock() // not sendMu: a copy's answer never waits behind a send
	defer s.mu.Unlock()
	if s.closed {
		return ErrPeerLost
	}
	// A flush numbered after every request sent so far is sent after the
	// target's answer arrived, so the target's fdatasync covers the copy.
	s.tlog.add(s.seq+1, off, length)
	s.n.store().MarkInSync(off, length)
	return nil
}

// peerSums asks the peer for the checksums of [off, off+length), one per
// block of bs bytes; a reply with another count is an error.
func (s *session) peerSums(off, length, bs int64) ([]protocol.Sum, error) {
	seq := s.rsSeq.Add(1)
	ch := make(chan *protocol.ChecksumReply, 1)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrPeerLost
	}
	s.sumWait[seq] = ch
	s.mu.Unlock()
	if err := s.ps.Resync().Send(&protocol.ChecksumRequest{Seq: seq, Offset: uint64(off), Length: uint32(length), BlockSize: uint32(bs)}); err != nil {
		return nil, err
	}
	select {
	case reply := <-ch:
		if blocks := (length + bs - 1) / bs; int64(len(reply.Sums)) != blocks {
			return nil, fmt.Errorf("replica: peer sent %d checksums for %d blocks at %d", len(reply.Sums), blocks, off)
		}
		return reply.Sums, nil
	case <-s.ctx.Done():
		return nil, ErrPeerLost
	}
}

// sendBlocks sends data for [off, off+len(buf)) to the sync target and waits
// until the target wrote it. The steps of zeroes.Step bytes (from off) that hold
// only zeroes go as ResyncZeros, merged with their zero neighbours, without
// their bytes: the target punches a hole or writes zeroes itself, so an empty
// region costs the link nothing and leaves a thin target thin. The rest goes
// as ResyncData. Every piece is sent before the first answer is waited for.
func (n *Node) sendBlocks(s *session, off int64, buf []byte) error {
	var waits []func() error
	for _, p := range zeroes.Split(buf, zeroes.Step) {
		data := buf[p.Off : p.Off+p.Length]
		if p.Zero {
			data = nil
		}
		wait, err := n.startCopy(s, off+p.Off, p.Length, data)
		if err != nil {
			return err
		}
		waits = append(waits, wait)
	}
	for _, wait := range waits {
		if err := wait(); err != nil {
			return err
		}
	}
	return nil
}

// sendCopy sends the copy of [off, off+length) to the sync target, data as
// a ResyncData, or zeroes as a ResyncZero when data is nil, and waits until
// the target wrote it.
func (n *Node) sendCopy(s *session, off, length int64, data []byte) error {
	wait, err := n.startCopy(s, off, length, data)
	if err != nil {
		return err
	}
	return wait()
}

// startCopy sends the copy of [off, off+length) as sendCopy does, and
// returns a function that waits until the target wrote it.
func (n *Node) startCopy(s *session, off, length int64, data []byte) (wait func() error, err error) {
	seq := s.rsSeq.Add(1)
	ch := make(chan uint32, 1)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrPeerLost
	}
	s.rsWait[seq] = ch
	s.mu.Unlock()
	var msg protocol.Message = &protocol.ResyncData{Seq: seq, Offset: uint64(off), Data: data}
	if data == nil {
		msg = &protocol.ResyncZero{Seq: seq, Offset: uint64(off), Length: uint32(length)}
	}
	if err := s.ps.Resync().Send(msg); err != nil {
		return nil, err
	}
	if data != nil {
		n.stats.netSend.Add(uint64(length))
	}
	return func() error {
		select {
		case code, ok := <-ch:
			if !ok {
				return ErrPeerLost
			}
			if code != protocol.CodeOK {
				return fmt.Errorf("replica: peer failed resync write at %d+%d (errno %d)", off, length, code)
			}
		case <-s.ctx.Done():
			return s.ctx.Err()
		}
		return nil
	}, nil
}

// zeroChunk is syncChunk zero bytes, whose checksums stand for a hole's.
var zeroChunk = make([]byte, syncChunk)

// finishSyncSource completes a resync on this side and tells the target.
func (n *Node) finishSyncSource(s *session) error {
	// The Bitmap UUID is kept until the target confirms (followPeer): if
	// SyncDone is lost, the next connection is still a bitmap resync.
	return n.completeSync(s, SyncSource, func(u UUIDs) UUIDs { return u },
		func(st *State) {})
}

// startProgress starts the status's progress of a resync of total bytes.
func (n *Node) startProgress(total int64) *resync.Progress {
	prog := resync.NewProgress(n.clock, total)
	n.mu.Lock()
	n.progress = prog
	n.notifyLocked()
	n.mu.Unlock()
	return prog
}

// waitSyncTarget waits for the source's SyncDone (done) and makes this disk
// UpToDate. It returns errResyncReplaced, leaving the disk Inconsistent,
// when the source pulled ahead instead: the resync that ends Ahead has a
// waiter of its own (catchUp).
func (n *Node) waitSyncTarget(s *session, done <-chan struct{}) error {
	bm := n.store().Bitmap()
	n.startProgress(bm.DirtyBytes())
	select {
	case <-done:
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
	if !s.isSyncDone(done) {
		return errResyncReplaced // the source pulled ahead (fallBehind)
	}
	// The source walked the union of both bitmaps and made every marked
	// block equal (sending it, or finding its checksum equal), and blocks
	// that failed here since were marked on the source too: once the copies
	// are durable, nothing is out of sync any more.
	if err := s.flushLocal(); err != nil {
		s.diskFailed("flushing the resync's copies", err, true)
		return fmt.Errorf("replica: making the resync's copies durable: %w", err)
	}
	bm.ClearAll()
	return n.completeSync(s, SyncTarget, func(u UUIDs) UUIDs { return u.SyncTargetDone(n.peerUUIDs) },
		func(st *State) { st.Disk = UpToDate })
}

// targetCopy is a resync copy written on the sync target, numbered in the
// order written.
type targetCopy struct {
	seq         uint64
	off, length int64
}

// copyWritten notes a resync copy written to the local disk. Its blocks stay
// marked out of sync until a local fdatasync started after this call
// succeeds (flushLocal): until then a crash of this machine can take the copy
// from the page cache, and the bitmap, which a checkpoint may persist at any
// time, must still say so.
func (s *session) copyWritten(off, length int64) {
	s.mu.Lock()
	s.copies = append(s.copies, targetCopy{seq: s.copySeq, off: off, length: length})
	s.copySeq++
	s.mu.Unlock()
}

// forgetCopies drops the copies overlapping a range that a later write
// failed to write: that range must stay out of sync whatever a flush makes
// durable.
func (s *session) forgetCopies(off, length int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	keep := s.copies[:0:0]
	for _, c := range s.copies {
		if c.off < off+length && off < c.off+c.length {
			continue
		}
		keep = append(keep, c)
	}
	s.copies = keep
}

// flushLocal runs an fdatasync of the local disk and, when it succeeds,
// marks in sync the resync copies written before it started. Every flush of
// a sync target goes through it: the peer's flushes and FUA writes, the
// checkpoints and the end of the resync.
func (s *session) flushLocal() error {
	s.mu.Lock()
	upto := s.copySeq
	s.mu.Unlock()
	if err := s.n.backend().Flush(s.ctx); err != nil {
		return err
	}
	// Under mu, so a failed write's forgetCopies is either seen here or
	// finds the copy already cleared and marks after it.
	s.mu.Lock()
	defer s.mu.Unlock()
	i := 0
	for ; i < len(s.copies) && s.copies[i].seq < upto; i++ {
		s.n.store().MarkInSync(s.copies[i].off, s.copies[i].length)
	}
	s.copies = s.copies[i:]
	return nil
}

// checkpointTarget makes the copies written so far durable and then persists
// the bitmap, so an interrupted resync resumes near where it stopped. It runs
// in the background (an fdatasync may take longer than the peer timeout), at
// most one at a time.
func (s *session) checkpointTarget() {
	if !s.ckpt.CompareAndSwap(false, true) {
		return
	}
	s.wg.Add(1) // called from a counted loop: never races with Wait
	go func() {
		defer s.wg.Done()
		defer s.ckpt.Store(false)
		if err := s.flushLocal(); err != nil {
			s.diskFailed("flushing for a resync checkpoint", err, true)
			return
		}
		if err := s.n.store().PersistBitmap(); err != nil {
			s.n.log.Error("bitmap checkpoint failed", "err", err)
		}
	}()
}

// completeSync ends a resync on this side: the UUID transition, Connected,
// the metadata and bitmap made durable, and the new state sent to the peer
// (the source also sends SyncDone first).
func (n *Node) completeSync(s *session, role ConnState, uuids func(UUIDs) UUIDs, apply func(*State)) error {
	n.mu.Lock()
	if role == SyncSource && n.pulledAhead.Load() {
		// Pulled ahead after the last copy: what was written since is
		// marked, and the resync that ends Ahead completes instead.
		n.mu.Unlock()
		return errPulledAhead
	}
	if s.stopped != "" {
		// The disk failed a flush or a copy meanwhile: a later flush that
		// succeeded proves nothing about the copies (Linux reports a lost
		// write-back once), so the resync does not end here; the session
		// ends with the disk's error as the reason.
		stop := &localStop{reason: s.stopped}
		n.mu.Unlock()
		return stop
	}
	n.uuids = uuids(n.uuids)
	n.progress = nil
	n.recovered = false
	n.partial = false
	n.setStateLocked("resync finished", func(st *State) { st.Conn = Connected; apply(st) })
	err := n.saveMetaLocked()
	local := n.localSideLocked()
	n.mu.Unlock()
	if err != nil {
		return err
	}
	if err := n.store().PersistBitmap(); err != nil {
		return err
	}
	if role == SyncSource {
		if err := s.ps.Control().Send(&protocol.SyncDone{}); err != nil {
			return err
		}
		// The target's answer to this flush drops the copies from the
		// transfer log (see copied): without it they stay there until the
		// application flushes, and a peer loss before that marks the whole
		// resync out of sync again.
		s.sendFlush()
	}
	s.sendState(local)
	n.log.Info("resync finished", "direction", role.String())
	n.event("resync-done", map[string]string{"URBD_DIRECTION": role.String()})
	return nil
}

func (n *Node) syncProgress() *resync.Progress {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.progress
}

// Invalidate throws this node's data away and fetches all of it from the
// peer (`urbd invalidate`): the whole bitmap is set, the disk becomes
// Inconsistent, and the session is restarted so the peer becomes SyncSource.
func (n *Node) Invalidate() error {
	n.mu.Lock()
	if n.st.Role == Primary {
		n.mu.Unlock()
		return fmt.Errorf("%s: %w: invalidate a Secondary", n.cfg.Name, ErrDiscardPrimary)
	}
	if !n.st.Conn.Connected() || n.st.PeerDisk != UpToDate {
		n.mu.Unlock()
		return fmt.Errorf("%s: %w: invalidate needs a connected peer with an UpToDate disk", n.cfg.Name, ErrNotConnected)
	}
	n.store().Bitmap().SetAll()
	n.setStateLocked("invalidated by operator: full resync from the peer", func(st *State) { st.Disk = Inconsistent })
	err := n.saveMetaLocked()
	s := n.sess
	n.mu.Unlock()
	if err != nil {
		return err
	}
	if err := n.store().PersistBitmap(); err != nil {
		return err
	}
	if s != nil {
		s.close(fmt.Errorf("invalidated: reconnecting for a full resync"))
		<-s.finished
	}
	n.kickConnect()
	return nil
}

// InvalidateRemote throws the peer's data away and copies all of this node's
// to it (`urbd invalidate-remote`, DRBD's invalidate-remote): the whole
// bitmap is set and made durable, and the resync that a Primary runs for
// blocks gone out of sync while connected copies the whole disk, while the
// application keeps writing. It runs on a connected, idle Primary with an
// UpToDate disk; the peer stays Secondary and Connected meanwhile, as for the
// differences an online verify finds. A crash before the copy ends leaves the
// bits set here, so the restarted Primary resumes it.
func (n *Node) InvalidateRemote() error {
	n.mu.Lock()
	var err error
	switch {
	case n.st.Role != Primary:
		err = fmt.Errorf("%s: %w: invalidate-remote runs on the Primary (with two Secondaries, run urbd invalidate on the node whose data should lose)", n.cfg.Name, ErrIsSecondary)
	case n.st.Disk != UpToDate:
		err = fmt.Errorf("%s: %w (%s): only an UpToDate disk can be copied to the peer", n.cfg.Name, ErrNotUpToDate, n.st.Disk)
	case n.st.Conn != Connected || n.sess == nil:
		err = fmt.Errorf("%s: %w: invalidate-remote needs a connected peer and no resync or verify running (state %s)", n.cfg.Name, ErrNotConnected, n.st.Conn)
	case n.st.PeerDisk == Diskless:
		err = fmt.Errorf("%s: %w: the peer is Diskless and has no disk to copy to", n.cfg.Name, ErrNotConnected)
	}
	if err != nil {
		n.mu.Unlock()
		return err
	}
	n.store().Bitmap().SetAll()
	n.syncWhy = "peer invalidated by operator: full resync to the peer"
	n.mu.Unlock()
	if err := n.store().PersistBitmap(); err != nil {
		return err
	}
	n.log.Info("peer invalidated by operator: full resync to the peer")
	n.kickSync()
	return nil
}

// firstError keeps the first error that concurrent copies report; the
// copy loops (resync, attach) stop at it. The zero value holds none.
type firstError struct {
	mu  sync.Mutex
	err error
}

// set records err unless an error is recorded already.
func (f *firstError) set(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err == nil {
		f.err = err
	}
}

// get returns the recorded error, or nil.
func (f *firstError) get() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}
