package replica

import (
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/urbd/urbd/internal/units"
	"github.com/urbd/urbd/protocol"
	"github.com/urbd/urbd/resync"
	"github.com/urbd/urbd/status"
)

// VerifyRange is the part of the disk an online verify compares: the bytes
// from Start up to Stop (0: the end of the disk), widened to whole bitmap
// blocks. With Resume it is instead what is left of the last verify this
// node ran that stopped early (Node.verifyLeft).
type VerifyRange struct {
	Start  int64 `json:"start"`
	Stop   int64 `json:"stop"`
	Resume bool  `json:"-"`
}

// Verify compares every block of r with the peer by checksum (`urbd
// verify`), marks the differing blocks out of sync and lets the resync copy
// them (as Primary, or on the next connection). Blocks either disk cannot
// read are repaired or marked on the way (runVerify). It runs in the
// background; the status shows VerifyS and its progress, and the reason
// what it found (verifyCounts). A verify that stops early (the peer lost,
// an error) remembers where, for VerifyRange.Resume.
func (n *Node) Verify(r VerifyRange) error {
	n.mu.Lock()
	s := n.sess
	if conn := n.st.Conn; s == nil || conn != Connected {
		n.mu.Unlock()
		return fmt.Errorf("%s: %w: verify needs a connected, idle peer (state %s)", n.cfg.Name, ErrNotConnected, conn)
	}
	if n.st.Disk == Diskless || n.st.PeerDisk == Diskless {
		n.mu.Unlock()
		return fmt.Errorf("%s: %w (Diskless): verify needs a disk on both nodes", n.cfg.Name, ErrNotUpToDate)
	}
	start, stop, err := n.verifyBounds(r)
	if err != nil {
		n.mu.Unlock()
		return err
	}
	note := rangeNote(start, stop, n.backend().Size())
	prog := resync.NewProgress(n.clock, stop-start)
	n.progress = prog
	n.verify = &status.Sync{}
	n.verifyLeft = nil
	// Until it ends, a crash of the daemon leaves the whole range to resume.
	saved := verifyNote{Last: n.lastVerify, Left: &VerifyRange{Start: start, Stop: stop}}
	n.setStateLocked("online verify started by operator"+note, func(st *State) { st.Conn = VerifyS })
	n.bgWG.Add(1) // n.sess is s: Close ends it before it waits for bgWG
	n.mu.Unlock()
	n.saveVerifyNote(saved)
	go func() {
		defer n.bgWG.Done()
		// The peer shows VerifyT meanwhile; it answers the checksum
		// requests whatever it shows.
		ctl := s.ps.Control()
		bs := n.store().Bitmap().BlockSize()
		ctl.Send(&protocol.SyncStart{Direction: protocol.VerifySource, BitmapBlock: uint32(bs), TotalBits: uint64((stop - start + bs - 1) / bs)})
		found, next, err := n.runVerify(s, prog, start, stop)
		ctl.Send(&protocol.SyncDone{Flags: protocol.SyncVerify})
		reason := fmt.Sprintf("online verify finished%s: %v", note, found)
		if err != nil {
			reason = fmt.Sprintf("online verify stopped at %s (%v so far; urbd verify --resume goes on from there): %v", units.FormatSize(next), found, err)
		}
		n.mu.Lock()
		n.progress = nil
		n.verify = nil
		if err != nil {
			n.verifyLeft = &VerifyRange{Start: next, Stop: stop}
		}
		n.lastVerify = &status.VerifyResult{
			Ended: n.clock.Now().Round(0), Complete: err == nil, FromKiB: uint64(start) >> 10, ToKiB: uint64(stop) >> 10,
			Differing: uint64(found.differ), Unreadable: uint64(found.unreadable + found.peerUnreadable),
		}
		saved := verifyNote{Last: n.lastVerify, Left: n.verifyLeft}
		if n.sess == s && n.st.Conn == VerifyS {
			n.setStateLocked(reason, func(st *State) { st.Conn = Connected })
		}
		n.mu.Unlock()
		n.saveVerifyNote(saved)
		if err != nil {
			n.log.Error(reason, "offset", next)
		} else {
			n.log.Info("online verify finished", "start", start, "stop", stop, "differing_blocks", found.differ, "unreadable_blocks", found.unreadable,
				"rewritten_from_peer", found.repaired, "unreadable_on_peer", found.peerUnreadable)
		}
		n.kickSync() // the blocks it marked, even if it stopped early
	}()
	return nil
}

// verifyNote is what the node keeps of its last online verify across
// restarts, in a note of its metadata directory (bitmap.Store.SaveNote): what
// it found, and what is left of it if it stopped early.
type verifyNote struct {
	Last *status.VerifyResult `json:"last,omitempty"`
	Left *VerifyRange         `json:"left,omitempty"`
}

// saveVerifyNote saves note; a failure is logged, since the verify's
// results are also in the log.
func (n *Node) saveVerifyNote(note verifyNote) {
	data, err := json.Marshal(note)
	if err == nil {
		err = n.store().SaveNote("verify", data)
	}
	if err != nil {
		n.log.Warn("saving the online verify's results failed; they are in this log", "err", err)
	}
}

// loadVerifyNote restores the last verify's results and resume point, as
// saved before the daemon stopped. A note that does not read or parse is
// logged and ignored: it holds nothing the data depends on.
func (n *Node) loadVerifyNote() {
	data, err := n.store().LoadNote("verify")
	var note verifyNote
	if err == nil && data != nil {
		err = json.Unmarshal(data, &note)
	}
	if err != nil {
		n.log.Warn("the last online verify's results are unreadable; ignored", "err", err)
		return
	}
	n.lastVerify = note.Last
	if l := note.Left; l != nil && l.Start >= 0 && l.Start < l.Stop && l.Stop <= n.backend().Size() {
		n.verifyLeft = &VerifyRange{Start: l.Start, Stop: l.Stop}
	}
}

// verifyBounds turns r into the byte range [start, stop) to verify, whole
// bitmap blocks, or says why it cannot. Called with n.mu held.
func (n *Node) verifyBounds(r VerifyRange) (start, stop int64, err error) {
	size := n.backend().Size()
	if r.Resume {
		if n.verifyLeft == nil {
			return 0, 0, fmt.Errorf("%s: no online verify of this node stopped early: nothing to resume (urbd verify --start OFFSET starts anywhere)", n.cfg.Name)
		}
		r = *n.verifyLeft
	}
	start, stop = r.Start, r.Stop
	if stop == 0 {
		stop = size
	}
	if start < 0 || start >= stop || stop > size {
		return 0, 0, fmt.Errorf("%s: cannot verify from %d to %d: the disk has %d bytes (%s)", n.cfg.Name, start, stop, size, units.FormatSize(size))
	}
	bs := n.store().Bitmap().BlockSize()
	return start / bs * bs, min((stop+bs-1)/bs*bs, size), nil
}

// rangeNote names [start, stop) for a reason, or nothing for the whole disk.
func rangeNote(start, stop, size int64) string {
	if start == 0 && stop == size {
		return ""
	}
	return fmt.Sprintf(" (%s to %s of %s)", units.FormatSize(start), units.FormatSize(stop), units.FormatSize(size))
}

// peerVerifying shows that the peer started (VerifyT) or ended (back to
// Connected) an online verify against this node; total is the bytes the
// verify covers.
func (n *Node) peerVerifying(on bool, total int64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case on && n.st.Conn == Connected:
		// Progress counts the checksum requests answered (verifyAnswered).
		n.progress = resync.NewProgress(n.clock, total)
		n.setStateLocked("online verify started by the peer", func(st *State) { st.Conn = VerifyT })
	case !on && n.st.Conn == VerifyT:
		n.progress = nil
		n.setStateLocked("online verify by the peer finished", func(st *State) { st.Conn = Connected })
	}
}

// verifyAnswered counts length bytes of a peer's verify as compared here.
func (n *Node) verifyAnswered(length int64) {
	n.mu.Lock()
	p := n.progress
	verifying := n.st.Conn == VerifyT
	n.mu.Unlock()
	if verifying && p != nil {
		p.Done(length)
	}
}

// runVerify walks [start, stop) in chunks of up to syncChunk bytes,
// comparing the peer's checksums with this disk's, with up to syncWindow
// chunks in flight, so that neither the round trip nor one side's hashing
// sets the pace; it saves the bitmap if it marked blocks. It returns what
// it found and how far it got: stop, or the start of the first chunk it
// could not finish (chunks after it may be done already, and are compared
// again by a resumed verify). The blocks it marked stay marked when it
// stops early.
func (n *Node) runVerify(s *session, prog *resync.Progress, start, stop int64) (verifyCounts, int64, error) {
	w := &verifyWalk{n: n, s: s, prog: prog, unfinished: stop, inflight: make(map[int64]bool)}
	chunk := min(int64(syncChunk), n.store().Bitmap().BlockSize()*protocol.MaxSums)
	sem := make(chan struct{}, syncWindow)
	var wg sync.WaitGroup
	lastCkpt := n.clock.Now()
	for off := start; off < stop; off += chunk {
		length := min(chunk, stop-off)
		if now := n.clock.Now(); now.Sub(lastCkpt) >= time.Duration(n.verifyCkptEvery.Load()) {
			lastCkpt = now
			w.checkpoint(off, stop)
		}
		err := w.errs.get()
		if err == nil {
			err = n.rate.Wait(s.ctx, length)
		}
		if err == nil {
			select {
			case sem <- struct{}{}:
			case <-s.ctx.Done():
				err = s.ctx.Err()
			}
		}
		if err != nil {
			w.stopped(off, err)
			break
		}
		wg.Add(1)
		w.begin(off)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := w.chunk(off, length); err != nil {
				w.stopped(off, err)
			}
			w.end(off)
		}()
	}
	wg.Wait()
	c, next, err := w.result()
	if c.differ > 0 {
		if perr := n.store().PersistBitmap(); err == nil {
			err = perr
		}
	}
	return c, next, err
}

// verifyWalk is one online verify's walk over its chunks, which run
// concurrently.
type verifyWalk struct {
	n    *Node
	s    *session
	prog *resync.Progress
	errs firstError

	mu         sync.Mutex
	found      verifyCounts
	unfinished int64          // the first chunk not verified: the walk's end, until one fails
	inflight   map[int64]bool // the chunks being verified, by offset
}

// verifyCheckpointEvery is how often a running verify saves the point a
// crash of the daemon would resume it from (verifyWalk.checkpoint).
const verifyCheckpointEvery = 10 * time.Second

// begin and end bracket the verification of the chunk at off.
func (w *verifyWalk) begin(off int64) {
	w.mu.Lock()
	w.inflight[off] = true
	w.mu.Unlock()
}

func (w *verifyWalk) end(off int64) {
	w.mu.Lock()
	delete(w.inflight, off)
	w.mu.Unlock()
}

// checkpoint saves, in the verify note, that what is left of the walk
// starts at the first chunk not yet verified (next, the chunk about to
// start, or an earlier one in flight), so that a crash of the daemon loses
// at most verifyCheckpointEvery of the walk: --resume goes on from there.
// The blocks marked so far are persisted first, so that none found before
// that point is lost with the crash. A walk that stopped early saves
// nothing here (Verify saves where it stopped).
func (w *verifyWalk) checkpoint(next, stop int64) {
	if w.errs.get() != nil {
		return
	}
	w.mu.Lock()
	for off := range w.inflight {
		next = min(next, off)
	}
	w.mu.Unlock()
	n := w.n
	if err := n.store().PersistBitmap(); err != nil {
		n.log.Warn("a running verify's checkpoint failed: a crash would resume it from its start", "err", err)
		return
	}
	n.mu.Lock()
	note := verifyNote{Last: n.lastVerify, Left: &VerifyRange{Start: next, Stop: stop}}
	n.mu.Unlock()
	n.saveVerifyNote(note)
}

// stopped records that the chunk at off was not verified, for err.
func (w *verifyWalk) stopped(off int64, err error) {
	w.errs.set(err)
	w.mu.Lock()
	w.unfinished = min(w.unfinished, off)
	w.mu.Unlock()
}

// count adds c to what the walk found, and shows it in the status.
func (w *verifyWalk) count(c verifyCounts) {
	w.mu.Lock()
	w.found.differ += c.differ
	w.found.unreadable += c.unreadable
	w.found.repaired += c.repaired
	w.found.peerUnreadable += c.peerUnreadable
	f := w.found
	w.mu.Unlock()
	n := w.n
	n.mu.Lock()
	if n.verify != nil {
		n.verify.Differing = uint64(f.differ)
		n.verify.Unreadable = uint64(f.unreadable + f.peerUnreadable)
	}
	n.mu.Unlock()
}

// result is what the walk found, where it stopped and why.
func (w *verifyWalk) result() (verifyCounts, int64, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.found, w.unfinished, w.errs.get()
}

// chunk verifies [off, off+length): this disk's checksums against the
// peer's, read and asked for under the range lock, so that no write or
// resync copy of the range runs in between.
func (w *verifyWalk) chunk(off, length int64) error {
	n, s := w.n, w.s
	bs := n.store().Bitmap().BlockSize()
	size := n.backend().Size()
	unlock, err := n.rl.lock(s.ctx, off, length)
	if err != nil {
		return err
	}
	bp := chunkPool.Get().(*[]byte)
	defer chunkPool.Put(bp)
	buf := (*bp)[:length]
	var bad []int // blocks this disk cannot read
	var readErr error
	var local []protocol.Sum
	if n.isHole(off, length) {
		local = zeroSums(length, bs) // nothing to read, nothing to scrub
	} else {
		if err := n.readLocal(s.ctx, n.backend(), buf, off); err != nil && s.ctx.Err() == nil {
			bad, readErr = readBlocks(s.ctx, n.backend(), buf, off, bs)
		}
		local = blockSums(buf, bs)
	}
	if s.ctx.Err() != nil {
		unlock()
		return s.ctx.Err()
	}
	theirs, err := s.peerSums(off, length, bs)
	unlock()
	if err != nil {
		return err
	}
	var c verifyCounts
	defer func() { w.count(c) }()
	for i, j := range blockRuns(bad) {
		// A run of blocks this disk cannot read: handled together.
		roff := off + int64(i)*bs
		if err := n.verifyUnreadable(s, roff, min(int64(j-i)*bs, size-roff), int64(j-i), readErr, &c); err != nil {
			return err
		}
		copy(theirs[i:j], local[i:j]) // compared already
	}
	peerPrimary := n.State().PeerRole == Primary
	for i := range local {
		if local[i] == theirs[i] {
			continue
		}
		if theirs[i] == unreadableSum {
			c.peerUnreadable++
			if peerPrimary {
				continue // its reads of the block are served from here
			}
		}
		boff := off + int64(i)*bs
		c.differ++
		n.store().MarkOutOfSync(boff, min(bs, size-boff))
	}
	w.prog.Done(length)
	return nil
}

// verifyUnreadable handles blocks blocks at [off, off+length) that this
// node's disk could not read during its verify (cause: the first such error
// of their chunk). A Primary reads them from the peer and writes them back
// (readFromPeer), as it serves a client's read: the disk may remap the bad
// sectors, and the blocks are in sync again. Any other node marks them out
// of sync, so that the resync copies them from the Primary. The verify
// stops when a Primary cannot get the blocks from the peer.
func (n *Node) verifyUnreadable(s *session, off, length, blocks int64, cause error, c *verifyCounts) error {
	c.unreadable += blocks
	what := fmt.Sprintf("local disk error reading %d bytes at %d during the online verify: %v", length, off, cause)
	if n.State().Role != Primary {
		c.differ += blocks
		n.store().MarkOutOfSync(off, length)
		n.localReadError(what + "; marked out of sync, the resync copies them from the peer")
		return nil
	}
	if err := n.readFromPeer(s.ctx, make([]byte, length), off); err != nil {
		return fmt.Errorf("%s; %w", what, err)
	}
	c.repaired += blocks
	n.localReadError(what + "; rewritten from the peer")
	return nil
}

// rewriteFromPeer reads [off, off+length), blocks this Primary's disk could
// not read for a peer's checksum request, from the peer and writes it back
// (readFromPeer), so that a verify run on the Secondary repairs the
// Primary's disk too.
func (n *Node) rewriteFromPeer(s *session, off, length int64) {
	if err := n.readFromPeer(s.ctx, make([]byte, length), off); err != nil {
		n.log.Warn("rewriting unreadable blocks from the peer failed; a client's read of them will try again", "offset", off, "length", length, "err", err)
		return
	}
	n.log.Info("rewrote unreadable blocks from the peer", "offset", off, "length", length)
}

// verifyCounts is what an online verify found, in blocks.
type verifyCounts struct {
	differ         int64 // marked out of sync: the resync copies them
	unreadable     int64 // this disk could not read them
	repaired       int64 // of those, rewritten from the peer (on a Primary)
	peerUnreadable int64 // the peer's disk could not read them
}

// String says what the verify found, for the status reason.
func (c verifyCounts) String() string {
	s := fmt.Sprintf("%d blocks differ", c.differ)
	if c.unreadable > 0 {
		s += fmt.Sprintf(", %d unreadable here", c.unreadable)
		if c.repaired > 0 {
			s += fmt.Sprintf(" (%d rewritten from the peer)", c.repaired)
		}
	}
	if c.peerUnreadable > 0 {
		s += fmt.Sprintf(", %d unreadable on the peer", c.peerUnreadable)
	}
	return s
}
