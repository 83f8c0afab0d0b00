package replica

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/urbd/urbd/protocol"
)

// session is one live connection to the peer. It tracks the writes sent and
// not yet answered (pending), the writes answered but not yet covered by a
// peer flush (the transfer log), and the resync copies in flight.
//
// Lock order: sendMu before mu. Neither is held across a disk write.
type session struct {
	n    *Node
	ps   *protocol.Session
	peer protocol.Hello

	ctx    context.Context // cancelled when the session dies
	cancel context.CancelFunc
	// stopped, guarded by n.mu, is why this node's disk failed so that
	// the session must end (diskFailed), or "": nothing may call the disk
	// UpToDate on this session afterwards (completeSync).
	stopped string

	sendMu sync.Mutex // data-stream sends: sequence order equals wire order
	seq    uint64     // changed with sendMu and mu held: read with either

	mu       sync.Mutex
	closed   bool                // guarded by mu
	live     bool                // guarded by mu: application writes are replicated
	pending  map[uint64]*request // guarded by mu
	tlog     *transferLog        // guarded by mu: done on the peer, not yet flushed there
	flushing atomic.Bool         // a background peer flush is in flight
	rsWait   map[uint64]chan uint32
	sumWait  map[uint64]chan *protocol.ChecksumReply
	rsSeq    atomic.Uint64
	lastRecv atomic.Int64  // unix nanos of the last frame from the peer
	answered atomic.Uint64 // requests the peer answered (complete, completeRead), for ko-count
	peerWait atomic.Int64  // how long requests have waited at the peer with none answered, at the keepalive's last tick (checkPeer)
	unacked  atomic.Int64  // secondary: writes and flushes received, not yet answered
	watch    diskWatch     // secondary: its disk requests for the peer, for disk-timeout
	// leaving is why this node ends the session, set before it says
	// goodbye: close reports it, whichever error closes the session (the
	// peer, told, may close the connection first).
	leaving atomic.Pointer[localStop]

	// Sync target: resync copies written but not yet covered by a local
	// fdatasync (see copyWritten); guarded by mu.
	copies  []targetCopy
	copySeq uint64      // number of the next copy
	ckpt    atomic.Bool // a target checkpoint is running

	wantRecv   atomic.Bool         // the peer runs protocol B
	peerCsums  atomic.Bool         // the peer has csums-alg set
	csumResync bool                // set before the resync starts: compare checksums first
	peerStates chan protocol.State // control-stream states, in order
	// peerLeftUpToDate: the last state the peer sent says its disk is not
	// UpToDate. Set as the state arrives, before the state machine applies
	// it, so that sessionEnded sees a Secondary that outdated itself just
	// before it left (outdateBeforeLeaving) even if the state is
	// still queued.
	peerLeftUpToDate atomic.Bool
	// peerPause: the last state the peer sent says its operator paused
	// resyncs (see pause.go).
	peerPause  atomic.Bool
	barriers   map[uint64]chan struct{} // guarded by mu: barrier's Pings awaiting their PingAck
	barrierN   atomic.Uint64
	peerBitmap chan struct{} // closed when the peer's bitmap arrived
	bitmapSeen bool          // guarded by mu
	ready      chan struct{} // closed once this side decided (Decide)

	// peerPrimary: the last state the peer sent says Primary (set as it
	// arrives, before followPeer applies it).
	peerPrimary atomic.Bool

	// syncDone is closed when the peer sent SyncDone for the resync this
	// node is the target of (syncClosed says it was); a resync that ends
	// Ahead makes a new one (newSyncDone). Guarded by mu.
	syncDone   chan struct{}
	syncClosed bool
	// inflight is the write payload sent to the peer and not yet answered
	// (on-congestion's congestion-fill compares it).
	inflight atomic.Int64
	// dropping: on-congestion disconnect is ending the session; writes
	// are no longer sent on it.
	dropping atomic.Bool
	// sendWaited is how long the last write that waited congestionWait or
	// more for room on the link waited, in nanoseconds, until congested
	// takes it (0: none since).
	sendWaited atomic.Int64
	// sending is when the write being handed to the link now began
	// (unix nanoseconds; 0: none), while on-congestion is not block.
	sending atomic.Int64
	// peerBehind, set and read by the goroutine that runs the resyncs of
	// a Primary (followPeer), says that the next resync ends Ahead: the
	// peer is Behind and learns of it from the SyncStart (runSyncSource).
	peerBehind bool

	applyQ    chan applyItem      // secondary: replicated writes in stream order
	readSlots *semaphore.Weighted // secondary: the peer's Reads being answered (serveRead)

	resized chan protocol.Resize // the peer's answers to this node's Resize (Node.Resize)

	wg       sync.WaitGroup // the session's goroutines
	finished chan struct{}  // closed after cleanup, when every goroutine returned
}

// request is one write, flush or read sent to the peer.
type request struct {
	s           *session
	seq         uint64
	off, length int64
	flush, fua  bool
	wire        int64         // a write's payload bytes (session.inflight)
	read        bool          // a Read: the peer's data lands in dst
	dst         []byte        // a read's own buffer; filled before done is closed
	zero        bool          // a read the peer answered as zeroes (dst is zeroes); set before done is closed
	sent        chan struct{} // handed to the socket; protocol A writes only, else nil
	received    chan struct{} // the peer has it; protocol B writes only, else nil
	done        chan struct{} // the peer wrote it (protocol C), or it failed
	ok          bool          // set before done is closed
	recvOnce    sync.Once
}

// isWrite reports whether r is a replicated write (not a flush or a read):
// only writes hold an activity-log reference, count as pending at the peer,
// and are marked out of sync when they fail.
func (r *request) isWrite() bool { return !r.flush && !r.read }

func newSession(n *Node, ps *protocol.Session) *session {
	ctx, cancel := context.WithCancel(context.Background())
	s := &session{
		n: n, ps: ps, peer: ps.Peer(),
		ctx: ctx, cancel: cancel,
		pending:    make(map[uint64]*request),
		rsWait:     make(map[uint64]chan uint32),
		sumWait:    make(map[uint64]chan *protocol.ChecksumReply),
		peerStates: make(chan protocol.State, 64),
		barriers:   make(map[uint64]chan struct{}),
		peerBitmap: make(chan struct{}),
		ready:      make(chan struct{}),
		syncDone:   make(chan struct{}),
		finished:   make(chan struct{}),
		tlog:       newTransferLog(n.store().ExtentSize()),
		applyQ:     make(chan applyItem, applyQueue),
		readSlots:  semaphore.NewWeighted(peerReadBytes),
		resized:    make(chan protocol.Resize, 1),
	}
	s.touch()
	return s
}

func (s *session) touch() { s.lastRecv.Store(time.Now().UnixNano()) }

// wait blocks until the peer's answer that protocol proto needs, and
// reports whether the peer took the write. proto is the protocol r was made
// for (writeOp reads it once for both), or C, which waits for the peer's
// write whatever r was made for (a Diskless node, whose peer holds the only
// copy). For protocols A and B the request stays pending after wait
// returns, until the peer's AckDone.
func (r *request) wait(ctx context.Context, proto byte) bool {
	var ch chan struct{}
	switch proto {
	case 'A':
		ch = r.sent
	case 'B':
		ch = r.received
	default:
		ch = r.done
	}
	// ch would be nil only for a protocol laxer than r was made for, which
	// no caller asks: then done decides.
	select {
	case <-ch:
		// done is closed before received (see finish), so a failed
		// request is never reported as taken.
		select {
		case <-r.done:
			return r.ok
		default:
			return true
		}
	case <-r.done:
		return r.ok
	case <-ctx.Done():
		return false
	}
}

// sendWrite sends a replicated write whose answer follows protocol proto, or
// returns nil when the session is not replicating (closed, or still
// deciding).
func (s *session) sendWrite(off, length int64, data []byte, sum, flags uint32, proto byte) *request {
	r := newRequest(s, proto)
	r.off, r.length, r.fua, r.wire = off, length, flags&protocol.FlagFUA != 0, int64(len(data))
	ok := s.send(r, sum, func(seq uint64) protocol.Message {
		return &protocol.Write{Seq: seq, Offset: uint64(off), Flags: flags, Length: uint32(length), Data: data}
	})
	if !ok {
		return nil
	}
	s.n.stats.netSend.Add(uint64(len(data)))
	return r
}

// sendFlush asks the peer to make everything it acknowledged durable, or
// returns nil when the session is not replicating.
func (s *session) sendFlush() *request {
	r := newRequest(s, 'C')
	r.flush = true
	if !s.send(r, 0, func(seq uint64) protocol.Message { return &protocol.Flush{Seq: seq} }) {
		return nil
	}
	return r
}

// sendRead asks the peer for length bytes at off, or returns nil when the
// session is not replicating. The answer lands in the request's own buffer
// (r.dst), never in the caller's, which a caller that stopped waiting may
// already reuse. The Read follows every write sent before it on the data
// stream, and the peer applies in stream order, so the answer holds every
// write this node sent before.
func (s *session) sendRead(off, length int64) *request {
	r := newRequest(s, 'C')
	r.read, r.off, r.length, r.dst = true, off, length, make([]byte, length)
	if !s.send(r, 0, func(seq uint64) protocol.Message {
		return &protocol.Read{Seq: seq, Offset: uint64(off), Length: uint32(length)}
	}) {
		return nil
	}
	return r
}

// completeRead finishes a pending read with the peer's answer: its data is
// copied into the read's destination, which must be exactly as long, or
// left as it is (zeroes) when the peer says the range reads as zeroes.
func (s *session) completeRead(m *protocol.ReadReply) error {
	s.mu.Lock()
	r := s.pending[m.Seq]
	if r == nil {
		s.mu.Unlock()
		return nil // failed already: the session is closing
	}
	if !r.read {
		s.mu.Unlock()
		return fmt.Errorf("replica: peer answered request %d, not a read, with a ReadReply", m.Seq)
	}
	delete(s.pending, m.Seq)
	s.mu.Unlock()
	s.answered.Add(1)
	ok := m.Err == protocol.CodeOK && (m.Zero || len(m.Data) == len(r.dst))
	switch {
	case ok && m.Zero:
		r.zero = true // dst, fresh from sendRead, holds zeroes already
	case ok:
		copy(r.dst, m.Data)
		s.n.stats.netRecv.Add(uint64(len(m.Data)))
	case m.Err == protocol.CodeOK:
		s.n.log.Error("the peer answered a read with the wrong length", "want", len(r.dst), "got", len(m.Data))
	}
	s.finish(r, ok)
	return nil
}

// handOff waits until every frame sent so far has been handed to the
// transport. A caller about to block in fdatasync calls it first, so that the
// peer's flush runs while the local one does: the frame's writer is another
// goroutine, which with a single processor (--cpus 1) would otherwise wait
// until the runtime takes the processor back from the blocked caller. A send
// error is the session's business (it closes it); the request then fails.
func (s *session) handOff() { _ = s.ps.Data().Flush() }

// newRequest makes a request whose wait will use protocol proto: only the
// channels that protocol waits for are made.
func newRequest(s *session, proto byte) *request {
	r := &request{s: s, done: make(chan struct{})}
	switch proto {
	case 'A':
		r.sent = make(chan struct{})
	case 'B':
		r.received = make(chan struct{})
	}
	return r
}

// closeReceived closes r.received once, if r has it.
func (r *request) closeReceived() {
	if r.received != nil {
		r.recvOnce.Do(func() { close(r.received) })
	}
}

// send gives r the next sequence number, registers it as pending and sends
// the message built for that number, all in sequence order (ordering rule
// 3). Under on-congestion pull-ahead or disconnect, a write that waited its
// turn for congestionWait or more, or finds the node Ahead once its turn
// comes, is not sent (false), as congested decides. sum is the CRC-32C of the message's payload (0 for none), known
// beforehand so that it is not computed while sendMu holds every other
// sender back. It returns false, with r untouched, when the session is not
// replicating. A send error closes the session, which fails r.
func (s *session) send(r *request, sum uint32, msg func(seq uint64) protocol.Message) bool {
	var sentAt time.Time // how long a write waits for the link, for on-congestion
	if r.isWrite() && s.n.congestion.Load().Policy != CongestionBlock {
		sentAt = time.Now()
	}
	s.sendMu.Lock()
	if !sentAt.IsZero() {
		// The writes in front of this one may have waited for the link:
		// on-congestion may keep this one from it too.
		if s.n.pulledAhead.Load() || s.dropping.Load() {
			s.sendMu.Unlock()
			return false
		}
		if waited := time.Since(sentAt); waited >= congestionWait {
			s.sendMu.Unlock()
			s.noteSendWait(waited)
			if s.n.congested(s, r.wire) {
				return false
			}
			s.sendMu.Lock()
		}
	}
	s.mu.Lock()
	if s.closed || !s.live {
		s.mu.Unlock()
		s.sendMu.Unlock()
		return false
	}
	s.seq++
	r.seq = s.seq
	s.pending[r.seq] = r
	s.mu.Unlock()
	if r.isWrite() {
		s.n.stats.peerPending.Add(1)
		s.inflight.Add(r.wire)
	}
	if !sentAt.IsZero() {
		s.sending.Store(time.Now().UnixNano())
	}
	err := s.ps.Data().SendSummed(msg(r.seq), sum)
	if !sentAt.IsZero() {
		s.sending.Store(0)
		s.noteSendWait(time.Since(sentAt))
	}
	s.sendMu.Unlock()
	if err != nil {
		s.close(fmt.Errorf("sending to the peer: %w", err))
		return true
	}
	if r.sent != nil {
		close(r.sent)
	}
	return true
}

// complete finishes a request with the peer's verdict. A write the peer
// failed is marked out of sync; one it wrote but has not flushed enters the
// transfer log. Either way its activity-log reference is released. A flush
// empties the transfer log up to it; if the peer failed it, what the log held
// may never reach the peer's disk, so it is marked out of sync (and the
// bitmap persisted) before the flush is answered.
func (s *session) complete(seq uint64, ok bool) {
	s.mu.Lock()
	r := s.pending[seq]
	if r == nil {
		s.mu.Unlock()
		return
	}
	delete(s.pending, seq)
	s.answered.Add(1)
	if r.read {
		ok = false // a read is answered by a ReadReply, never an Ack
	}
	var lost []tlEntry
	switch {
	case r.flush && ok:
		s.tlog.flushed(seq) // durable on the peer
	case r.flush:
		lost = s.tlog.flushFailed(seq)
	}
	if r.isWrite() && ok && !r.fua {
		s.tlog.add(r.seq, r.off, r.length)
	}
	s.mu.Unlock()
	if len(lost) > 0 {
		for _, e := range lost {
			s.n.store().MarkOutOfSync(e.off, e.length)
		}
		s.n.log.Error("the peer failed a flush: its unflushed writes are marked out of sync", "ranges", len(lost))
		if err := s.n.store().PersistBitmap(); err != nil {
			s.n.log.Error("persisting the bitmap after a failed peer flush failed", "err", err)
		}
	}
	s.finish(r, ok)
}

// hasPending reports whether a request sent to the peer awaits its answer.
func (s *session) hasPending() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pending) > 0
}

// oldestPending names the oldest request the peer has not answered: write,
// flush or read ("request" when none is). It scans the pending requests;
// ko-count calls it only to say why it drops the peer.
func (s *session) oldestPending() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var oldest *request
	for _, r := range s.pending {
		if oldest == nil || r.seq < oldest.seq {
			oldest = r
		}
	}
	switch {
	case oldest == nil:
		return "request"
	case oldest.flush:
		return "flush"
	case oldest.read:
		return "read"
	}
	return "write"
}

// flushPeer asks the peer, in the background, to make what it wrote durable,
// so the transfer log empties. At most one such flush is in flight.
func (s *session) flushPeer() {
	s.mu.Lock()
	idle := s.tlog.empty()
	s.mu.Unlock()
	if idle || !s.flushing.CompareAndSwap(false, true) {
		return
	}
	f := s.sendFlush()
	if f == nil {
		s.flushing.Store(false)
		return
	}
	go func() {
		f.wait(s.ctx, 'C')
		s.flushing.Store(false)
	}()
}

func (s *session) finish(r *request, ok bool) {
	if r.isWrite() {
		if !ok {
			s.n.store().MarkOutOfSync(r.off, r.length)
		}
		s.n.store().EndWrite(r.off, r.length)
		s.inflight.Add(-r.wire)
		if s.n.stats.peerPending.Add(-1) == 0 && s.n.pulledAhead.Load() {
			s.n.kickSync() // drained: the resync that ends Ahead may start
		}
	}
	r.ok = ok
	close(r.done)
	r.closeReceived()
}

func (s *session) markReceived(seq uint64) {
	s.mu.Lock()
	r := s.pending[seq]
	s.mu.Unlock()
	if r != nil {
		r.closeReceived()
	}
}

// close ends the session once: it fails every pending request (marking its
// blocks out of sync), marks the transfer log out of sync, persists the
// bitmap, and tells the node, with err as lossErr reports it.
func (s *session) close(err error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	pend := s.pending
	s.pending = map[uint64]*request{}
	tl := s.tlog.ranges()
	for seq, ch := range s.rsWait {
		delete(s.rsWait, seq)
		close(ch)
	}
	s.mu.Unlock()
	s.cancel()
	s.ps.Close()
	if stop := s.leaving.Load(); stop != nil {
		err = stop
	}
	// Now that the protocol session recorded why its transport ended.
	err = lossErr(err, s.ps.Err())
	for _, e := range tl {
		s.n.store().MarkOutOfSync(e.off, e.length)
	}
	attaching := s.n.attachWrites.Load()
	for _, r := range pend {
		if r.isWrite() {
			s.n.store().MarkOutOfSync(r.off, r.length)
			if attaching {
				s.n.disk.Load().lostInFlight(r.off, r.length)
			}
		}
	}
	if len(tl) > 0 || len(pend) > 0 {
		if perr := s.n.store().PersistBitmap(); perr != nil {
			s.n.log.Error("persisting the bitmap after peer loss failed", "err", perr)
		}
	}
	s.n.mu.Lock()
	hook := s.n.sessionClosing
	s.n.mu.Unlock()
	if hook != nil {
		hook()
	}
	s.n.sessionEnded(s, err)
	for _, r := range pend {
		s.finish(r, false)
	}
}

// isClosed reports whether close has begun. Once it has, the node's state
// may still show the session until sessionEnded runs.
func (s *session) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// sendState tells the peer this node's state, with extra replica flags.
func (s *session) sendState(side Side, flags ...uint32) {
	st := protocol.State{Role: protocol.RoleSecondary, Disk: diskToWire(ParseDiskState(side.Disk)),
		UUIDs: protocol.UUIDs(side.UUIDs), OutOfSync: side.Changed}
	if side.Primary {
		st.Role = protocol.RolePrimary
	}
	if side.DiscardMyData {
		st.Flags |= protocol.FlagDiscardMyData
	}
	if side.CrashedPrimary {
		st.Flags |= protocol.FlagWasPrimaryCrashed
	}
	st.Flags |= side.AfterSB.flags()
	if s.n.protocol() == 'B' {
		st.Flags |= flagWantReceived
	}
	if side.recoveredAL {
		st.Flags |= flagRecovered
	}
	if side.partial {
		st.Flags |= flagStatePartial
	}
	if side.csums {
		st.Flags |= flagStateCsums
	}
	if s.n.userPause.Load() {
		st.Flags |= protocol.FlagResyncPaused
	}
	for _, f := range flags {
		st.Flags |= f
	}
	if err := s.ps.Control().Send(&st); err != nil {
		go s.close(fmt.Errorf("sending state: %w", err)) // callers may hold n.mu
	}
}

// State flags of the replica, above the protocol's own bits (which the
// protocol carries unchanged).
// Bit 16 (the bitmap is dirty) is retired since version 3: State.OutOfSync
// says it.
const (
	// flagWantReceived: the sender runs protocol B and wants an AckReceived
	// before each AckDone.
	flagWantReceived uint32 = 1 << 17
	// flagRecovered: the sender's bitmap holds activity-log extents
	// recovered after a crash, which are probably in sync: resync them by
	// checksum.
	flagRecovered uint32 = 1 << 18
	// flagOutdate: the sender, a Primary, is disconnecting cleanly and will
	// go on without the receiver, whose disk is therefore Outdated. The
	// receiver confirms with its new state.
	flagOutdate uint32 = 1 << 19
	// Bits 20-23 carry the sender's split-brain policy (AfterSplitBrain.flags).

	// flagStatePartial: the sender's disk names no generation but probably
	// holds much of the data (Side.partial): a full resync to it compares
	// checksums.
	flagStatePartial uint32 = 1 << 24
	// flagStateCsums: the sender has ResyncChecksums set (csums-alg): a
	// resync between the nodes to a disk with data compares checksums.
	flagStateCsums uint32 = 1 << 25
	// flagAhead: the sender, a Primary, pulled ahead on a congested link
	// (on-congestion pull-ahead): it no longer replicates writes, so the
	// receiver's disk is Outdated (Behind) until the resync that follows.
	flagAhead uint32 = 1 << 26
	// flagPromoteAsk: the sender, a Secondary, asks to become Primary; the
	// receiver answers with its state and flagPromoteYes or flagPromoteNo
	// (promote.go).
	flagPromoteAsk uint32 = 1 << 27
	flagPromoteYes uint32 = 1 << 28
	flagPromoteNo  uint32 = 1 << 29
)

func diskToWire(d DiskState) uint8 {
	switch d {
	case UpToDate:
		return protocol.DiskUpToDate
	case Outdated:
		return protocol.DiskOutdated
	case Inconsistent:
		return protocol.DiskInconsistent
	case Diskless:
		return protocol.DiskDiskless
	default:
		return protocol.DiskUnknown
	}
}

func diskFromWire(d uint8) DiskState {
	switch d {
	case protocol.DiskUpToDate:
		return UpToDate
	case protocol.DiskOutdated:
		return Outdated
	case protocol.DiskInconsistent:
		return Inconsistent
	case protocol.DiskDiskless:
		return Diskless
	default:
		return DUnknown
	}
}

func sideFromWire(st protocol.State, nodeID uint64) Side {
	return Side{
		NodeID:         nodeID,
		UUIDs:          UUIDs(st.UUIDs),
		Disk:           diskFromWire(st.Disk).String(),
		Primary:        st.Role == protocol.RolePrimary,
		CrashedPrimary: st.Flags&protocol.FlagWasPrimaryCrashed != 0,
		DiscardMyData:  st.Flags&protocol.FlagDiscardMyData != 0,
		Changed:        st.OutOfSync,
		AfterSB:        afterSBFromFlags(st.Flags),
		recoveredAL:    st.Flags&flagRecovered != 0,
		partial:        st.Flags&flagStatePartial != 0,
		csums:          st.Flags&flagStateCsums != 0,
	}
}

// barrierSeq marks the Ping sequence numbers of barrier, apart from the
// keepalive's (which count up from 1).
const barrierSeq = 1 << 63

// barrier sends a Ping on the control stream and waits, at most d, for its
// PingAck. The peer answers pings in stream order, once it has handled
// every control frame before them, so once it arrives the peer has handled
// every control frame this node sent before it (a Secondary leaving its
// Primary; a resync that ends Ahead).
func (s *session) barrier(d time.Duration) bool {
	seq := barrierSeq | s.barrierN.Add(1)
	ack := make(chan struct{})
	s.mu.Lock()
	s.barriers[seq] = ack
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.barriers, seq)
		s.mu.Unlock()
	}()
	if s.ps.Control().Send(&protocol.Ping{Seq: seq}) != nil {
		return false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ack:
		return true
	case <-t.C:
	case <-s.ctx.Done():
	}
	return false
}

// pingAnswered completes a barrier when its PingAck arrives.
func (s *session) pingAnswered(seq uint64) {
	if seq&barrierSeq == 0 {
		return
	}
	s.mu.Lock()
	ack := s.barriers[seq]
	delete(s.barriers, seq)
	s.mu.Unlock()
	if ack != nil {
		close(ack)
	}
}

// newSyncDone replaces syncDone with a new one, for a resync that is about
// to start or for none, and returns it. It closes the one it replaces, so
// that a waiter still on it wakes and finds it replaced (isSyncDone).
func (s *session) newSyncDone() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.syncClosed {
		close(s.syncDone)
	}
	s.syncDone, s.syncClosed = make(chan struct{}), false
	return s.syncDone
}

// isSyncDone reports whether done, closed, is the current syncDone: the
// peer sent SyncDone, rather than a new resync replacing it.
func (s *session) isSyncDone(done <-chan struct{}) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return done == (<-chan struct{})(s.syncDone)
}

// syncDoneChan returns the syncDone of the current resync.
func (s *session) syncDoneChan() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.syncDone
}

// peerSyncDone closes syncDone, once: the peer sent SyncDone.
func (s *session) peerSyncDone() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.syncClosed {
		s.syncClosed = true
		close(s.syncDone)
	}
}

// refuseGoodbye is the Refuse code (the replication engine's own, above the
// protocol's 255) of a node that ends the session on purpose: the reason
// says why, from the receiver's point of view.
const refuseGoodbye uint32 = 256

// goodbye tells the peer why this node ends the session (best effort); the
// caller closes it next. The peer's status then says so instead of "the
// peer closed the connection".
func (s *session) goodbye(reason string) { s.ps.Goodbye(refuseGoodbye, reason) }

// leave ends the session after a state change the caller sent the peer: the
// state leaves first, then the goodbye (why), then the session is closed with
// cause and leave waits until it has finished.
func (s *session) leave(why string, cause error) {
	s.ps.Control().Flush()
	s.goodbye(why)
	s.close(cause)
	<-s.finished
}

// peerLost is ErrPeerLost with what ended the connection, in an
// operator's words.
type peerLost struct{ cause string }

// lossErr is the error a session closed with err reports (the status
// reason, the peer-lost event). An err that only says the connection is
// gone (ErrPeerLost, or one isClosedErr accepts, such as a send's on a dead
// stream) becomes a peerLost with the reason the protocol session recorded,
// transportErr (its Err): why the connection ended, not which call noticed.
// Any other err says more and is kept.
func lossErr(err, transportErr error) error {
	if err == ErrPeerLost || isClosedErr(err) {
		return &peerLost{cause: protocol.LossReason(transportErr)}
	}
	return err
}

func (e *peerLost) Error() string        { return ErrPeerLost.Error() + ": " + e.cause }
func (e *peerLost) Is(target error) bool { return target == ErrPeerLost }
