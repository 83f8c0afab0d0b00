package replica

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math"
	"time"

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
		case *protocol.Bitmap:
			if err := s.receiveBitmap(m); err != nil {
				return err
			}
		case *protocol.SyncStart:
		case *protocol.SyncDone:
			s.doneOnce.Do(func() { close(s.syncDone) })
		case *protocol.Refuse:
			return fmt.Errorf("peer refused: %w", m.Err())
		default:
			return fmt.Errorf("replica: unexpected %T on the control stream", m)
		}
		return nil
	})
}

// receiveBitmap merges a chunk of the peer's out-of-sync bitmap into ours.
func (s *session) receiveBitmap(m *protocol.Bitmap) error {
	bm := s.n.store.Bitmap()
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
	bm := s.n.store.Bitmap()
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

// dataLoop reads the data stream. As the receiving side it applies the
// peer's writes in order and answers them; as the sending side it matches
// answers to pending requests.
func (s *session) dataLoop() error {
	st := s.ps.Data()
	return s.readLoop(st, func(m protocol.Message) error {
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
		case *protocol.Write:
			if err := s.applyWrite(m); err != nil {
				return err
			}
		case *protocol.Flush:
			// Barrier: every write received before the flush is applied
			// before the fdatasync starts.
			unlock, err := s.applying.lock(s.ctx, 0, math.MaxInt64)
			if err != nil {
				return err
			}
			unlock()
			s.n.stats.unacked.Add(1)
			seq := m.Seq
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				code := errCode(s.n.disk.Flush(s.ctx))
				s.n.stats.unacked.Add(-1)
				if err := st.Send(&protocol.FlushAck{Seq: seq, Err: code}); err != nil {
					s.close(err)
				}
			}()
		default:
			return fmt.Errorf("replica: unexpected %T on the data stream", m)
		}
		return nil
	})
}

// applyWorkers bounds the replicated writes applied at once on a secondary.
const applyWorkers = 64

// applyWrite starts applying one replicated write to the local disk and
// answers it when done. It is called in stream order (ordering rule 3): a
// write waits here for every earlier write it overlaps, so overlapping writes
// land in the order the primary sent them, while the others are written in
// parallel. A FUA write is answered after a shared fdatasync.
func (s *session) applyWrite(w *protocol.Write) error {
	select {
	case <-s.ready:
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
	n := s.n
	st := s.ps.Data()
	if s.wantRecv.Load() {
		if err := st.Send(&protocol.Ack{Seq: w.Seq, Type: protocol.AckReceived}); err != nil {
			return err
		}
	}
	if n.State().Role == Primary {
		// Two primaries: never let the peer overwrite data we serve.
		return st.Send(&protocol.Ack{Seq: w.Seq, Type: protocol.AckDone, Err: protocol.CodeIO})
	}
	off, length := int64(w.Offset), int64(w.Length)
	if off < 0 || length < 0 || off+length > n.disk.Size() {
		return st.Send(&protocol.Ack{Seq: w.Seq, Type: protocol.AckDone, Err: protocol.CodeInvalid})
	}
	select {
	case s.workers <- struct{}{}:
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
	unlock, err := s.applying.lock(s.ctx, off, length)
	if err != nil {
		<-s.workers
		return err
	}
	n.stats.unacked.Add(1)
	n.stats.netRecv.Add(uint64(len(w.Data)))
	apply := func(w *protocol.Write) {
		defer func() { <-s.workers }()
		code := s.writeLocal(w, off, length)
		unlock()
		if code == protocol.CodeOK && w.Flags&protocol.FlagFUA != 0 {
			code = errCode(n.disk.Flush(s.ctx))
		}
		n.stats.unacked.Add(-1)
		if err := st.Send(&protocol.Ack{Seq: w.Seq, Type: protocol.AckDone, Err: code}); err != nil {
			s.close(err)
		}
	}
	if len(w.Data) > inlineApply && w.Flags&protocol.FlagFUA == 0 {
		// Large writes are written from the receive buffer, without a copy:
		// one at a time, which is enough to keep the disk busy.
		apply(w)
		return nil
	}
	w = w.Clone() // Recv's buffer is reused by the next frame
	s.wg.Add(1)   // called from dataLoop, itself counted: never races with Wait
	go func() {
		defer s.wg.Done()
		apply(w)
	}()
	return nil
}

// inlineApply is the largest write a secondary copies to apply it in
// parallel with others; larger ones are applied in the receive loop.
const inlineApply = 64 << 10

// writeLocal performs a replicated write, trim or zero on the local disk.
func (s *session) writeLocal(w *protocol.Write, off, length int64) uint32 {
	n := s.n
	var err error
	switch {
	case w.Flags&protocol.FlagTrim != 0:
		err = n.disk.Trim(s.ctx, off, length, false)
	case w.Flags&protocol.FlagZero != 0:
		err = n.disk.WriteZeroes(s.ctx, off, length, false, w.Flags&protocol.FlagNoHole != 0)
	default:
		err = n.disk.WriteAt(s.ctx, w.Data, off, false)
		n.stats.diskWrite.Add(uint64(len(w.Data)))
	}
	if err != nil {
		n.store.MarkOutOfSync(off, length)
	}
	return errCode(err)
}

func errCode(err error) uint32 {
	if err == nil {
		return protocol.CodeOK
	}
	return protocol.CodeIO
}

// resyncLoop reads the resync stream: copies and checksum requests as the
// target, their answers as the source.
func (s *session) resyncLoop() error {
	st := s.ps.Resync()
	return s.readLoop(st, func(m protocol.Message) error {
		switch m := m.(type) {
		case *protocol.ResyncData:
			if s.ctx.Err() != nil {
				return s.ctx.Err() // the session ended: frames still buffered are dropped
			}
			// The source never has two copies of the same blocks in flight
			// (it holds their range lock until our answer), so copies are
			// written in parallel.
			m = m.Clone() // Recv's buffer is reused by the next frame
			select {
			case s.rsWorkers <- struct{}{}:
			case <-s.ctx.Done():
				return s.ctx.Err()
			}
			s.wg.Add(1) // called from resyncLoop, itself counted
			go func() {
				defer s.wg.Done()
				code := s.applyResync(m)
				<-s.rsWorkers
				if err := st.Send(&protocol.ResyncAck{Seq: m.Seq, Offset: m.Offset, Length: uint32(len(m.Data)), Err: code}); err != nil {
					s.close(err)
				}
			}()
		case *protocol.ResyncAck:
			s.mu.Lock()
			ch := s.rsWait[m.Seq]
			delete(s.rsWait, m.Seq)
			s.mu.Unlock()
			if ch != nil {
				ch <- m.Err
			}
		case *protocol.ChecksumRequest:
			reply, err := s.checksums(m)
			if err != nil {
				return err
			}
			if err := st.Send(reply); err != nil {
				return err
			}
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

// applyResync writes one resync copy on the sync target and marks its blocks
// in sync.
func (s *session) applyResync(m *protocol.ResyncData) uint32 {
	n := s.n
	off, length := int64(m.Offset), int64(len(m.Data))
	if off < 0 || off+length > n.disk.Size() {
		return protocol.CodeInvalid
	}
	if err := n.disk.WriteAt(s.ctx, m.Data, off, false); err != nil {
		return protocol.CodeIO
	}
	n.store.MarkInSync(off, length)
	n.stats.netRecv.Add(uint64(length))
	n.stats.diskWrite.Add(uint64(length))
	if p := n.syncProgress(); p != nil {
		p.Done(length)
	}
	return protocol.CodeOK
}

// checksums answers a checksum request from the local disk.
func (s *session) checksums(m *protocol.ChecksumRequest) (*protocol.ChecksumReply, error) {
	off, length, bs := int64(m.Offset), int64(m.Length), int64(m.BlockSize)
	if bs <= 0 || off < 0 || off+length > s.n.disk.Size() || (length+bs-1)/bs > protocol.MaxSums {
		return nil, fmt.Errorf("replica: bad checksum request at %d+%d/%d", off, length, bs)
	}
	buf := make([]byte, length)
	if err := s.n.disk.ReadAt(s.ctx, buf, off); err != nil {
		return nil, fmt.Errorf("replica: reading for checksums at %d: %w", off, err)
	}
	return &protocol.ChecksumReply{Seq: m.Seq, Offset: m.Offset, BlockSize: m.BlockSize, Sums: blockSums(buf, bs)}, nil
}

func blockSums(buf []byte, bs int64) []protocol.Sum {
	sums := make([]protocol.Sum, 0, (int64(len(buf))+bs-1)/bs)
	for i := int64(0); i < int64(len(buf)); i += bs {
		sums = append(sums, sha256.Sum256(buf[i:min(i+bs, int64(len(buf)))]))
	}
	return sums
}

// peerFlushInterval is how often a primary asks the peer to flush what it
// wrote, when the application did not.
const peerFlushInterval = 5 * time.Second

// keepalive pings the peer and declares it lost when nothing arrived within
// the timeout. It also checkpoints the bitmap during a resync so an
// interrupted resync resumes near where it stopped.
func (s *session) keepalive() error {
	timeout := s.n.cfg.Timeout
	tick := time.NewTicker(max(timeout/4, 50*time.Millisecond))
	defer tick.Stop()
	var seq uint64
	lastCkpt, lastFlush := time.Now(), time.Now()
	for {
		select {
		case <-s.ctx.Done():
			return s.ctx.Err()
		case now := <-tick.C:
			if now.Sub(time.Unix(0, s.lastRecv.Load())) > timeout {
				return errPeerTimeout
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
				if c := s.n.State().Conn; c == SyncSource || c == SyncTarget {
					if err := s.n.store.PersistBitmap(); err != nil {
						s.n.log.Error("bitmap checkpoint failed", "err", err)
					}
				}
			}
		}
	}
}

// isClosedErr tells a normal end of a stream from a protocol failure.
func isClosedErr(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, protocol.ErrClosed) || errors.Is(err, context.Canceled)
}
