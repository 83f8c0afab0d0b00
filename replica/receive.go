package replica

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"iter"
	"strings"
	"sync"
	"time"

	"github.com/urbd/urbd/internal/bufpool"
	"github.com/urbd/urbd/internal/zeroes"
	"github.com/urbd/urbd/nbd"
	"github.com/urbd/urbd/protocol"
)

// readLoop receives frames from st and hands each to handle until either
// fails. A message is valid only until handle returns (protocol.Stream.Recv
// reuses its buffers).
func (s *session) readLoop(st *protocol.Stream, handle func(protocol.Message) error) error {
	for {
		m, err := st.Recv()
		if err != nil {
			return err
		}
		s.touch()
		if err := handle(m); err != nil {
			return err
		}
	}
}

// controlLoop reads the control stream: peer states, pings, bitmaps, sync
// start and end, refusals.
func (s *session) controlLoop() error {
	st := s.ps.Control()
	return s.readLoop(st, func(m protocol.Message) error {
		switch m := m.(type) {
		case *protocol.State:
			s.wantRecv.Store(m.Flags&flagWantReceived != 0)
			s.peerCsums.Store(m.Flags&flagStateCsums != 0)
			s.peerLeftUpToDate.Store(m.Disk != protocol.DiskUpToDate)
			s.peerPauseChanged(m)
			if m.Flags&flagOutdate != 0 {
				if err := s.n.outdatedByPeer(s); err != nil {
					return err
				}
			}
			if m.Flags&flagAhead != 0 {
				if err := s.n.fallBehind(s); err != nil {
					return err
				}
			}
			s.peerPrimary.Store(m.Role == protocol.RolePrimary)
			switch {
			case m.Flags&flagPromoteAsk != 0:
				s.n.answerPromotion(s)
			case m.Flags&(flagPromoteYes|flagPromoteNo) != 0:
				s.n.promotionAnswered(s, m.Flags&flagPromoteYes != 0)
			}
			select {
			case s.peerStates <- *m:
			default:
				return errors.New("replica: peer sent too many states")
			}
		case *protocol.Ping:
			if err := st.Send(&protocol.PingAck{Seq: m.Seq}); err != nil {
				return err
			}
		case *protocol.PingAck:
			s.pingAnswered(m.Seq)
		case *protocol.Bitmap:
			if err := s.receiveBitmap(m); err != nil {
				return err
			}
		case *protocol.SyncStart:
			if m.Direction == protocol.VerifySource {
				total := int64(m.TotalBits) * int64(m.BitmapBlock)
				if total <= 0 || total > s.n.backend().Size() {
					total = s.n.backend().Size()
				}
				s.n.peerVerifying(true, total)
			}
			if m.Direction == protocol.SyncSource {
				if err := s.n.catchUp(s); err != nil {
					return err
				}
			}
		case *protocol.SyncDone:
			if m.Flags&protocol.SyncVerify != 0 {
				s.n.peerVerifying(false, 0)
				break
			}
			s.peerSyncDone()
		case *protocol.Resize:
			if err := s.peerResize(m); err != nil {
				return err
			}
		case *protocol.Refuse:
			if m.Code == refuseGoodbye {
				return &peerLost{cause: m.Reason}
			}
			return fmt.Errorf("peer refused: %w", m.Err())
		default:
			return fmt.Errorf("replica: unexpected %T on the control stream", m)
		}
		return nil
	})
}

// receiveBitmap merges a chunk of the peer's out-of-sync bitmap into ours.
func (s *session) receiveBitmap(m *protocol.Bitmap) error {
	bm := s.n.store().Bitmap()
	if int64(m.TotalBits) != int64(bm.NumWords())*64 && m.TotalBits > uint64(bm.NumWords())*64 {
		return fmt.Errorf("replica: peer bitmap has %d bits, ours %d words", m.TotalBits, bm.NumWords())
	}
	if m.FirstWord > uint64(bm.NumWords()) {
		return fmt.Errorf("replica: peer bitmap chunk at word %d beyond %d", m.FirstWord, bm.NumWords())
	}
	if err := bm.MergeWords(int(m.FirstWord), m.Words); err != nil {
		return err
	}
	if m.Last {
		s.mu.Lock()
		seen := s.bitmapSeen
		s.bitmapSeen = true
		s.mu.Unlock()
		if !seen {
			close(s.peerBitmap)
		}
	}
	return nil
}

// sendBitmap sends our whole out-of-sync bitmap in chunks.
func (s *session) sendBitmap() error {
	bm := s.n.store().Bitmap()
	total := bm.NumWords()
	for first := 0; ; first += protocol.MaxBitmapWords {
		cnt := min(protocol.MaxBitmapWords, total-first)
		words := bm.Words(first, cnt)
		last := first+cnt >= total
		nbits := uint64(total) * 64
		if err := s.ps.Control().Send(&protocol.Bitmap{FirstWord: uint64(first), TotalBits: nbits, Words: words, Last: last}); err != nil {
			return err
		}
		if last {
			return nil
		}
	}
}

// dataLoop reads the data stream. As the sending side it matches answers
// to pending requests; as the receiving side it queues the peer's writes and
// flushes, in stream order, for applyLoop.
//
// Small writes are copied out of the receive buffer into the queue, so the
// stream keeps being read while the disk is busy (a protocol B peer learns
// of receipt at once). A write larger than inlineApply is written by this
// loop straight from the receive buffer, after the queue has drained, which
// keeps the stream order without copying it.
func (s *session) dataLoop() error {
	return s.readLoop(s.ps.Data(), func(m protocol.Message) error {
		switch m := m.(type) {
		case *protocol.Ack:
			switch m.Type {
			case protocol.AckReceived:
				s.markReceived(m.Seq)
			default:
				s.complete(m.Seq, m.Err == protocol.CodeOK)
			}
		case *protocol.FlushAck:
			s.complete(m.Seq, m.Err == protocol.CodeOK)
		case *protocol.ReadReply:
			return s.completeRead(m)
		case *protocol.Read:
			if err := s.waitDecided(); err != nil {
				return err
			}
			s.unacked.Add(1)
			rd := *m
			return s.enqueue(applyItem{seq: m.Seq, read: &rd})
		case *protocol.Write:
			return s.receiveWrite(m)
		case *protocol.Flush:
			s.unacked.Add(1)
			return s.enqueue(applyItem{seq: m.Seq, flush: true})
		default:
			return fmt.Errorf("replica: unexpected %T on the data stream", m)
		}
		return nil
	})
}

// applyQueue bounds the replicated writes received and not yet applied on a
// secondary (at most applyQueue × inlineApply bytes).
const applyQueue = 64

// ackBatch is the most answers a secondary holds back while it applies a
// burst of writes. Answering a 32-deep burst in one piece makes the primary,
// the secondary and the client take turns (a convoy); answering it in pieces
// keeps them working at once: 4k random writes at queue depth 32 ran 3-5%
// faster on two CPUs with 8 than with the whole burst, 16 was no better.
const ackBatch = 8

// inlineApply is the largest write a secondary copies into its apply queue;
// larger ones are applied by the receive loop from the receive buffer.
const inlineApply = 64 << 10

// applyItem is one replicated write, or a flush, waiting in the apply queue.
type applyItem struct {
	seq     uint64
	flush   bool           // a Flush: fdatasync once every earlier write is applied
	barrier chan struct{}  // closed when reached: every earlier write is applied and answered (a Read may still be read: serveRead)
	read    *protocol.Read // a Read: answer it with this disk's data
	w       protocol.Write
	buf     *[]byte // w.Data's pooled buffer, or nil
}

// receiveWrite queues or applies one replicated write; w is valid only until
// it returns.
func (s *session) receiveWrite(w *protocol.Write) error {
	if err := s.waitDecided(); err != nil {
		return err
	}
	st := s.ps.Data()
	if s.wantRecv.Load() {
		if err := st.Send(&protocol.Ack{Seq: w.Seq, Type: protocol.AckReceived}); err != nil {
			return err
		}
	}
	s.unacked.Add(1)
	s.n.stats.netRecv.Add(uint64(len(w.Data)))
	if len(w.Data) <= inlineApply {
		it := applyItem{seq: w.Seq, w: *w}
		if len(w.Data) > 0 {
			it.buf = bufpool.Get(len(w.Data))
			copy(*it.buf, w.Data)
			it.w.Data = *it.buf
		}
		return s.enqueue(it)
	}
	done := make(chan struct{})
	if err := s.enqueue(applyItem{barrier: done}); err != nil {
		return err
	}
	select {
	case <-done:
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
	ack, async := s.applyWrite(w)
	if async {
		s.n.ahead.flushed()
		return nil
	}
	s.unacked.Add(-1)
	if err := st.Send(&ack); err != nil {
		return err
	}
	if s.n.ahead.wrote() && ack.Err == protocol.CodeOK {
		s.flushAhead()
	}
	return nil
}

// flushAhead starts the local sync of a likely flush (see flushAhead) once
// the answers sent so far have left: the sync may hold the only processor.
func (s *session) flushAhead() {
	s.handOff()
	s.n.ahead.start()
}

// waitDecided waits until this side has decided the connection (Decide):
// the peer's writes and reads are applied and answered only after that.
func (s *session) waitDecided() error {
	select {
	case <-s.ready:
		return nil
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
}

func (s *session) enqueue(it applyItem) error {
	select {
	case s.applyQ <- it:
		return nil
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
}

// applyLoop applies the queued writes one after another, in stream order:
// overlapping writes land as the primary sent them (ordering rule 3), and a
// Flush is a barrier for the writes before it. Answers are batched: they are
// sent when the queue is empty, so a burst of writes is answered by one
// write to the socket, but at least every ackBatch writes, and those leave
// before the next write is applied, so the primary answers its client while
// the rest of the burst is still being applied. A FUA write or a Flush is
// answered after an fdatasync run in its own goroutine (concurrent ones
// share one: group commit).
func (s *session) applyLoop() error {
	var acks []protocol.Ack
	ahead := false // a flush is likely to follow the writes just applied
	sendAcks := func() error {
		for i := range acks {
			if err := s.ps.Data().Send(&acks[i]); err != nil {
				return err
			}
		}
		s.unacked.Add(-int64(len(acks)))
		acks = acks[:0]
		return nil
	}
	for {
		var it applyItem
		select {
		case it = <-s.applyQ:
		case <-s.ctx.Done():
			return s.ctx.Err()
		}
		switch {
		case it.barrier != nil:
			if err := sendAcks(); err != nil {
				return err
			}
			close(it.barrier)
		case it.read != nil:
			if err := sendAcks(); err != nil {
				return err
			}
			if err := s.serveRead(it.read); err != nil {
				return err
			}
		case it.flush:
			if err := sendAcks(); err != nil {
				return err
			}
			s.n.ahead.flushed()
			ahead = false
			seq := it.seq
			s.flushThenAck(func(code uint32) protocol.Message {
				return &protocol.FlushAck{Seq: seq, Err: code}
			})
		default:
			ack, async := s.applyWrite(&it.w)
			if it.buf != nil {
				bufpool.Put(it.buf)
			}
			if !async {
				acks = append(acks, ack)
			}
			if it.w.Flags&protocol.FlagFUA != 0 {
				s.n.ahead.flushed()
			} else if s.n.ahead.wrote() && ack.Err == protocol.CodeOK {
				ahead = true
			}
		}
		if len(s.applyQ) == 0 && len(acks) > 0 {
			if err := sendAcks(); err != nil {
				return err
			}
		} else if len(acks) >= ackBatch {
			if err := sendAcks(); err != nil {
				return err
			}
			s.handOff()
		}
		if len(s.applyQ) == 0 && ahead {
			s.flushAhead()
			ahead = false
		}
	}
}

// The peer's Reads a node answers at once are bounded by their bytes: each
// takes peerReadBytes/peerReadSlots or its length, if larger, of
// peerReadBytes. Up to 32 small reads (a client's queue of random reads)
// are read side by side, which keeps this disk as busy as the Primary's
// own (a Diskless Primary's 4k random reads from an evicted page cache ran
// up to twice as fast as one at a time); reads of 1 MiB go one at a time, as a
// sequential reader's are best served (the disk's read-ahead keeps it busy,
// and one buffer stays in the processor's cache: eight at once ran a
// quarter slower).
const (
	peerReadBytes = 1 << 20
	peerReadSlots = 32
)

// peerReadWeight is what a Read of length bytes takes of peerReadBytes.
func peerReadWeight(length uint32) int64 {
	return min(max(int64(length), peerReadBytes/peerReadSlots), peerReadBytes)
}

// serveRead answers the peer's Read in a goroutine of its own (answerRead),
// once its share of peerReadBytes is free, so the apply loop goes on with
// the writes behind it. The apply loop calls it when every write received before
// the Read is applied; a write received after it may land while it reads:
// the Primary sent that write before the read was answered, so its client
// issued them concurrently, and either order is the client's to expect (the
// Primary's own reads that must not see such a write, the write-back of
// readFromPeer and attach-disk's copy, hold the range lock).
func (s *session) serveRead(rd *protocol.Read) error {
	w := peerReadWeight(rd.Length)
	if err := s.readSlots.Acquire(s.ctx, w); err != nil {
		return err
	}
	s.wg.Add(1) // called from a counted loop: never races with Wait
	go func() {
		defer s.wg.Done()
		defer s.readSlots.Release(w)
		if err := s.answerRead(rd); err != nil {
			s.close(err)
		}
	}()
	return nil
}

// answerRead reads a range for the peer, a Primary whose own disk failed to
// read it (or is Diskless, or is being attached, or balances its reads), and
// sends it back. Every write received before the Read is on the disk (see
// serveRead). Only a disk that holds the data the Primary wrote answers: this node
// UpToDate, not Primary, and none of the range out of sync; otherwise, or if
// the read fails, it answers CodeIO. A range that reads as zeroes goes back
// as a Zero reply without its bytes, and a hole of a sparse disk is not even
// read.
func (s *session) answerRead(rd *protocol.Read) error {
	n := s.n
	reply := protocol.ReadReply{Seq: rd.Seq, Err: protocol.CodeIO}
	off, length := int64(rd.Offset), int64(rd.Length)
	st := n.State()
	switch {
	case off < 0 || length <= 0 || off+length > n.backend().Size():
		reply.Err = protocol.CodeInvalid
	case st.Role == Primary || st.Disk != UpToDate || n.store().Bitmap().IsSet(off, length):
	case n.isHole(off, length):
		reply.Err, reply.Zero = protocol.CodeOK, true
	default:
		buf := bufpool.Get(int(length))
		defer bufpool.Put(buf)
		token := s.begin("a read for the peer", off, length)
		err := n.backend().ReadAt(s.ctx, *buf, off)
		s.end(token)
		if err != nil {
			n.log.Error("reading for the peer failed", "offset", off, "length", length, "err", err)
			break
		}
		n.stats.diskRead.Add(uint64(length))
		reply.Err = protocol.CodeOK
		if reply.Zero = zeroes.Is(*buf); !reply.Zero {
			reply.Data = *buf
			n.stats.netSend.Add(uint64(length))
		}
	}
	s.unacked.Add(-1)
	n.stats.readsForPeer.Add(1)
	return s.ps.Data().Send(&reply)
}

// flushThenAck runs an fdatasync in its own goroutine and then sends the
// answer that ack builds from its result.
func (s *session) flushThenAck(ack func(code uint32) protocol.Message) {
	s.wg.Add(1) // called from a counted loop: never races with Wait
	go func() {
		defer s.wg.Done()
		token := s.begin("a flush", 0, 0)
		err := s.flushLocal()
		s.end(token)
		if err != nil {
			s.diskFailed("flushing", err, true)
		}
		code := errCode(err)
		s.unacked.Add(-1)
		if err := s.ps.Data().Send(ack(code)); err != nil {
			s.close(err)
		}
	}()
}

// applyWrite applies one replicated write to the local disk and returns its
// answer. For a FUA write that succeeded it instead starts the fdatasync and
// reports async: the answer is sent after it.
func (s *session) applyWrite(w *protocol.Write) (ack protocol.Ack, async bool) {
	n := s.n
	ack = protocol.Ack{Seq: w.Seq, Type: protocol.AckDone}
	if n.State().Role == Primary {
		// Two primaries: never let the peer overwrite data we serve.
		ack.Err = protocol.CodeIO
		return ack, false
	}
	off, length := int64(w.Offset), int64(w.Length)
	if off < 0 || length < 0 || off+length > n.backend().Size() {
		ack.Err = protocol.CodeInvalid
		return ack, false
	}
	ack.Err = s.writeLocal(w, off, length)
	if ack.Err == protocol.CodeOK && w.Flags&protocol.FlagFUA != 0 {
		seq := w.Seq
		s.flushThenAck(func(code uint32) protocol.Message {
			return &protocol.Ack{Seq: seq, Type: protocol.AckDone, Err: code}
		})
		return ack, true
	}
	return ack, false
}

// writeLocal performs a replicated write, trim or zero on the local disk.
func (s *session) writeLocal(w *protocol.Write, off, length int64) uint32 {
	n := s.n
	var err error
	token := s.begin(replicatedNoun(w.Flags), off, length)
	switch {
	case w.Flags&protocol.FlagTrim != 0:
		err = n.backend().Trim(s.ctx, off, length, false)
	case w.Flags&protocol.FlagZero != 0:
		err = n.backend().WriteZeroes(s.ctx, off, length, false, w.Flags&protocol.FlagNoHole != 0)
	default:
		err = n.backend().WriteAt(s.ctx, w.Data, off, false)
		n.stats.diskWrite.Add(uint64(len(w.Data)))
	}
	s.end(token)
	if err != nil {
		s.forgetCopies(off, length)
		n.store().MarkOutOfSync(off, length)
		s.diskFailed("writing a replicated write", err, false)
	}
	return errCode(err)
}

// diskFailed handles an error of the local disk while applying the peer's
// data (not one that only says the session ended). This disk may now lack a
// write the Primary answered, so it becomes Inconsistent, on disk, and cannot
// be promoted without --force, as DRBD detaches a failed disk. The peer is
// told and the local-io-error handler runs. Then:
//
//   - a replicated write failed (the blocks are marked): the nodes reconnect
//     and the bitmap resync repairs the disk, once;
//   - a flush failed (nbd.File reports every later flush as failed, since
//     the kernel may have dropped the pages), or the resync's own copy
//     failed: the node goes StandAlone, instead of resyncing in a loop,
//     until the operator replaces or repairs the disk and runs attach-disk
//     (AttachDisk: a full resync), or, after a failed copy, repairs it in
//     place and runs connect.
func (s *session) diskFailed(what string, err error, standAlone bool) {
	if s.ctx.Err() != nil {
		return
	}
	n := s.n
	reason := fmt.Sprintf("local disk error %s: %v", what, err)
	n.mu.Lock()
	if n.st.Disk != UpToDate && n.st.Disk != Outdated && !standAlone {
		n.mu.Unlock()
		return // Inconsistent already: the resync under way repairs it
	}
	if standAlone {
		n.wantConn = false
		reason += "; replace or repair the disk, then run urbd attach-disk (a full resync)"
		if !strings.HasPrefix(what, "flushing") {
			// After a failed flush the open disk fails every later one
			// (nbd.File), so only attach-disk's fresh open helps; after a
			// failed copy a bitmap resync can finish a disk repaired in
			// place.
			reason += ", or repair it in place and run urbd connect"
		}
		s.stopped = reason
	}
	n.setStateLocked(reason, func(st *State) { st.Disk = Inconsistent })
	serr := n.saveMetaLocked()
	s.sendState(n.localSideLocked())
	n.mu.Unlock()
	n.log.Error(reason)
	if serr != nil {
		n.log.Error("saving metadata after a disk error failed", "err", serr)
	}
	if perr := n.store().PersistBitmap(); perr != nil {
		n.log.Error("persisting the bitmap after a disk error failed", "err", perr)
	}
	n.event("local-io-error", map[string]string{"URBD_REASON": reason})
	if standAlone {
		s.ps.Control().Flush() // the state above, before the hang-up
		s.close(&localStop{reason: reason})
		return
	}
	n.kickSync()
}

// localStop is why a node ended a session itself, because of its own disk:
// the status shows it as the reason, not as a lost peer.
type localStop struct{ reason string }

func (e *localStop) Error() string { return e.reason }

func errCode(err error) uint32 {
	if err == nil {
		return protocol.CodeOK
	}
	return protocol.CodeIO
}

// resyncLoop reads the resync stream: copies and checksum requests as the
// target, their answers as the source.
//
// Checksum requests are answered by up to syncWindow goroutines at once
// (each reads and hashes up to a MiB), so that a resync by checksum reads
// this disk as deep as the source reads its own, not one request at a
// time. The source holds a range's lock from its request to its copy, so
// no copy of the range is applied meanwhile; answers match requests by
// sequence number, in any order.
func (s *session) resyncLoop() error {
	st := s.ps.Resync()
	sums := make(chan struct{}, syncWindow) // checksum requests being answered
	return s.readLoop(st, func(m protocol.Message) error {
		switch m := m.(type) {
		case *protocol.ResyncData, *protocol.ResyncZero:
			if s.ctx.Err() != nil {
				return s.ctx.Err() // the session ended: frames still buffered are dropped
			}
			ack := s.applyCopy(m)
			if err := st.Send(&ack); err != nil {
				return err
			}
		case *protocol.ResyncAck:
			s.mu.Lock()
			ch := s.rsWait[m.Seq]
			delete(s.rsWait, m.Seq)
			s.mu.Unlock()
			if ch != nil {
				ch <- m.Err
			}
		case *protocol.ChecksumRequest:
			select {
			case sums <- struct{}{}:
			case <-s.ctx.Done():
				return s.ctx.Err()
			}
			req := *m
			s.wg.Add(1) // called from a counted loop: never races with Wait
			go func() {
				defer s.wg.Done()
				defer func() { <-sums }()
				reply, err := s.checksums(&req)
				if err == nil {
					s.n.verifyAnswered(int64(req.Length))
					err = st.Send(reply)
				}
				if err != nil {
					s.close(err)
				}
			}()
		case *protocol.ChecksumReply:
			s.mu.Lock()
			ch := s.sumWait[m.Seq]
			delete(s.sumWait, m.Seq)
			s.mu.Unlock()
			if ch != nil {
				ch <- m
			}
		default:
			return fmt.Errorf("replica: unexpected %T on the resync stream", m)
		}
		return nil
	})
}

// applyCopy applies a resync copy, a *protocol.ResyncData (written from
// the receive buffer, without a copy; the transport keeps buffering the
// next copies meanwhile) or a *protocol.ResyncZero, and returns its answer.
func (s *session) applyCopy(m protocol.Message) protocol.ResyncAck {
	switch m := m.(type) {
	case *protocol.ResyncData:
		off, length := int64(m.Offset), int64(len(m.Data))
		code := s.applyResync(off, length, length, func() error { return s.n.backend().WriteAt(s.ctx, m.Data, off, false) })
		return protocol.ResyncAck{Seq: m.Seq, Offset: m.Offset, Length: uint32(length), Err: code}
	case *protocol.ResyncZero:
		off, length := int64(m.Offset), int64(m.Length)
		code := s.applyResync(off, length, 0, func() error { return s.n.backend().WriteZeroes(s.ctx, off, length, false, false) })
		return protocol.ResyncAck{Seq: m.Seq, Offset: m.Offset, Length: m.Length, Err: code}
	}
	return protocol.ResyncAck{Err: protocol.CodeInvalid} // not a copy: resyncLoop passes none
}

// applyResync applies one resync copy of [off, off+length) on the sync
// target with write (the bytes of a ResyncData, or zeroes for a
// ResyncZero, of which received bytes came over the link); its blocks are
// marked in sync once a local fdatasync covers it (copyWritten).
func (s *session) applyResync(off, length, received int64, write func() error) uint32 {
	n := s.n
	if off < 0 || off+length > n.backend().Size() {
		return protocol.CodeInvalid
	}
	n.diskBegin()
	err := write()
	n.diskEnd()
	if err != nil {
		s.diskFailed("writing a resync copy", err, true)
		return protocol.CodeIO
	}
	s.copyWritten(off, length)
	n.stats.netRecv.Add(uint64(received))
	n.stats.diskWrite.Add(uint64(received))
	if p := n.syncProgress(); p != nil {
		p.Done(length)
	}
	return protocol.CodeOK
}

// checksums answers a checksum request from the local disk. A request
// covers at most syncChunk bytes, as a resync's or a verify's runs do:
// resyncLoop answers several at once.
//
// A block the disk cannot read is answered with unreadableSum, which no
// block's SHA-256 equals: a resync's source sends the block, and writing it
// may repair the disk, as a resync without checksums would have; a verify's
// source counts it as unreadable on its peer (runVerify). The error is
// logged and runs the local-io-error handler; the session goes on.
func (s *session) checksums(m *protocol.ChecksumRequest) (*protocol.ChecksumReply, error) {
	off, length, bs := int64(m.Offset), int64(m.Length), int64(m.BlockSize)
	if bs <= 0 || off < 0 || length > syncChunk || off+length > s.n.backend().Size() || (length+bs-1)/bs > protocol.MaxSums {
		return nil, fmt.Errorf("replica: bad checksum request at %d+%d/%d", off, length, bs)
	}
	reply := &protocol.ChecksumReply{Seq: m.Seq, Offset: m.Offset, BlockSize: m.BlockSize}
	if s.n.isHole(off, length) {
		reply.Sums = zeroSums(length, bs) // nothing to read, nothing to scrub
		return reply, nil
	}
	bp := chunkPool.Get().(*[]byte)
	defer chunkPool.Put(bp)
	buf := (*bp)[:length]
	err := s.n.readLocal(s.ctx, s.n.backend(), buf, off)
	if err == nil {
		reply.Sums = blockSums(buf, bs)
		return reply, nil
	}
	if s.ctx.Err() != nil {
		return nil, s.ctx.Err()
	}
	bad, berr := readBlocks(s.ctx, s.n.backend(), buf, off, bs)
	if s.ctx.Err() != nil {
		return nil, s.ctx.Err()
	}
	reply.Sums = blockSums(buf, bs)
	for _, i := range bad {
		reply.Sums[i] = unreadableSum
	}
	if len(bad) == 0 {
		s.n.log.Warn("a read for the peer's checksums failed, then read block by block", "offset", off, "length", length, "err", err)
		return reply, nil
	}
	s.n.localReadError(fmt.Sprintf("local disk error reading for the peer's checksums: %v; %d block(s) of %d bytes answered as unreadable, from %d on",
		berr, len(bad), bs, off+int64(bad[0])*bs))
	if s.n.State().Role == Primary {
		// The peer's copy is the good one: rewrite the blocks from it, as
		// a client's read of them would, once this answer is on its way.
		s.wg.Add(1) // called from a counted goroutine: never races with Wait
		go func() {
			defer s.wg.Done()
			for i, j := range blockRuns(bad) {
				roff := off + int64(i)*bs
				s.n.rewriteFromPeer(s, roff, min(int64(j-i)*bs, off+length-roff))
			}
		}()
	}
	return reply, nil
}

// unreadableSum is the checksum a node answers for a block its disk cannot
// read: 32 zero bytes, which no block's SHA-256 is.
var unreadableSum protocol.Sum

// zeroSums is blockSums of length bytes of zeroes, without hashing them:
// the sums of a hole of a sparse disk.
func zeroSums(length, bs int64) []protocol.Sum {
	sums := make([]protocol.Sum, 0, (length+bs-1)/bs)
	for i := int64(0); i < length; i += bs {
		if i+bs <= length {
			sums = append(sums, zeroBlockSum(bs))
		} else {
			sums = append(sums, sha256.Sum256(zeroChunk[:length-i]))
		}
	}
	return sums
}

// zeroBlockSums caches zeroBlockSum's answers by block size.
var zeroBlockSums sync.Map

// zeroBlockSum is the SHA-256 of bs zero bytes (bs at most syncChunk).
func zeroBlockSum(bs int64) protocol.Sum {
	if v, ok := zeroBlockSums.Load(bs); ok {
		return v.(protocol.Sum)
	}
	sum := protocol.Sum(sha256.Sum256(zeroChunk[:bs]))
	zeroBlockSums.Store(bs, sum)
	return sum
}

func blockSums(buf []byte, bs int64) []protocol.Sum {
	sums := make([]protocol.Sum, 0, (int64(len(buf))+bs-1)/bs)
	for i := int64(0); i < int64(len(buf)); i += bs {
		sums = append(sums, sha256.Sum256(buf[i:min(i+bs, int64(len(buf)))]))
	}
	return sums
}

// differingRuns yields the runs of consecutive blocks whose sums differ
// between ours and theirs, each as its first index and the one after its
// last; ours nil (this disk could not be read) differs everywhere. A block
// the peer answered as unreadable (unreadableSum) differs too: no block's
// SHA-256 is that.
func differingRuns(ours, theirs []protocol.Sum) iter.Seq2[int, int] {
	same := func(i int) bool { return ours != nil && ours[i] == theirs[i] }
	return func(yield func(int, int) bool) {
		for i := 0; i < len(theirs); {
			if same(i) {
				i++
				continue
			}
			j := i + 1
			for j < len(theirs) && !same(j) {
				j++
			}
			if !yield(i, j) {
				return
			}
			i = j
		}
	}
}

// blockRuns yields the runs of consecutive indexes of bad, which is sorted:
// each as its first index and the one after its last.
func blockRuns(bad []int) iter.Seq2[int, int] {
	return func(yield func(int, int) bool) {
		for len(bad) > 0 {
			n := 1
			for n < len(bad) && bad[n] == bad[0]+n {
				n++
			}
			if !yield(bad[0], bad[0]+n) {
				return
			}
			bad = bad[n:]
		}
	}
}

// readBlocks reads buf at off from disk one block of bs bytes at a time,
// after a read of the whole range failed. It returns the indexes of the
// blocks that failed again (zeroed in buf), none if the error has passed,
// and the first of their errors.
func readBlocks(ctx context.Context, disk nbd.Backend, buf []byte, off, bs int64) ([]int, error) {
	var bad []int
	var first error
	for i := int64(0); i < int64(len(buf)) && ctx.Err() == nil; i += bs {
		b := buf[i:min(i+bs, int64(len(buf)))]
		if err := disk.ReadAt(ctx, b, off+i); err != nil {
			clear(b)
			bad = append(bad, int(i/bs))
			if first == nil {
				first = err
			}
		}
	}
	return bad, first
}

// peerFlushInterval is how often a primary asks the peer to flush what it
// wrote, when the application did not.
const peerFlushInterval = 5 * time.Second

// keepalive pings the peer and declares it lost when nothing arrived within
// the timeout. It also checkpoints the bitmap during a resync so an
// interrupted resync resumes near where it stopped.
func (s *session) keepalive() error {
	timeout := s.ps.Timeout()
	tick := time.NewTicker(max(timeout/4, 50*time.Millisecond))
	defer tick.Stop()
	var seq uint64
	var peer stallWatch
	lastCkpt, lastFlush := time.Now(), time.Now()
	for {
		select {
		case <-s.ctx.Done():
			return s.ctx.Err()
		case now := <-tick.C:
			if now.Sub(time.Unix(0, s.lastRecv.Load())) > timeout {
				return &peerLost{cause: fmt.Sprintf("no answer from the peer for %s (--timeout)", timeout)}
			}
			if err := s.checkPeer(&peer, now, timeout); err != nil {
				return err
			}
			if err := s.checkHungDisk(now); err != nil {
				return err
			}
			seq++
			if err := s.ps.Control().Send(&protocol.Ping{Seq: seq}); err != nil {
				return err
			}
			if now.Sub(lastFlush) > peerFlushInterval {
				// Like a journal commit: bound how much a crash of the
				// peer's machine can take from its page cache.
				lastFlush = now
				s.flushPeer()
			}
			if now.Sub(lastCkpt) > 2*time.Second {
				lastCkpt = now
				switch s.n.State().Conn {
				case SyncSource:
					if err := s.n.store().PersistBitmap(); err != nil {
						s.n.log.Error("bitmap checkpoint failed", "err", err)
					}
				case SyncTarget:
					s.checkpointTarget()
				}
			}
		}
	}
}

// checkPeer looks, on each keepalive tick, at the requests sent to the peer:
// how long they have waited with none answered (w, stallWatch) is kept for
// the status (peerWait), and once that reaches ko-count times timeout (as
// seen by the ticks, so up to a tick more) the peer is dropped as lost. A
// peer that answers pings but no I/O has a hung disk or worse; dropping it
// ends the wait of the application's I/O, which completes here and is
// marked out of sync, as for any peer loss. Progress, not the age of the
// oldest request, is what counts (as in DRBD, whose ko-count counts
// timeouts without progress): on a slow link a deep queue of writes may
// wait long while answers keep coming. A Diskless node never drops its
// peer this way: the peer's disk holds its only copy, and waiting for it
// beats failing every request.
func (s *session) checkPeer(w *stallWatch, now time.Time, timeout time.Duration) error {
	waited := w.look(now, s.hasPending(), s.answered.Load())
	s.peerWait.Store(int64(waited))
	ko := s.n.koCount.Load()
	if ko <= 0 || s.n.isDiskless() || waited < time.Duration(ko)*timeout {
		return nil
	}
	return &peerLost{cause: fmt.Sprintf("the peer has completed no request for %s while a %s waited (--ko-count %d × --timeout %s): its disk may be hung",
		waited.Round(time.Second), s.oldestPending(), ko, timeout)}
}

// isClosedErr tells a normal end of a stream from a protocol failure.
func isClosedErr(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, protocol.ErrClosed) || errors.Is(err, context.Canceled)
}
