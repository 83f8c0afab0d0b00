package protocol

import (
	"bufio"
	"errors"
	"fmt"
	"github.com/urbd/urbd/internal/bulkread"
	"hash/crc32"
	"io"
	"net"
	"runtime"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

const (
	// sendBufSize is the coalescing buffer of a Stream's sender: frames sent
	// while a transport write is in progress leave together in the next
	// write, of up to this size.
	sendBufSize = 256 << 10
	// inlineBulk is the largest bulk payload copied into the coalescing
	// buffer; larger payloads are written to the transport without a copy.
	inlineBulk = 64 << 10
	// recvBufSize is the read-ahead of a Stream's receiver.
	recvBufSize = 64 << 10
	// minPayloadBuf is the smallest receive payload buffer allocated.
	minPayloadBuf = 64 << 10
	// crcPiece is how much of a payload the receiver reads before it adds
	// those bytes to the frame's checksum.
	crcPiece = 64 << 10
	// directRead is the size from which a payload read takes what the
	// read-ahead holds and then reads the rest straight from the transport
	// (readBulk), instead of copying it through the read-ahead buffer.
	directRead = 16 << 10
)

// Stream carries frames over one yamux stream (control, data or resync).
//
// Concurrency: Send and Flush may be called from any number of goroutines at
// once; each frame is written whole, never interleaved with another, and
// frames leave in the order their Sends took the stream's lock (so one
// goroutine's frames keep their order). Recv must be called from a single
// goroutine at a time. Send and Recv may run concurrently.
//
// Batching: each Stream has a flusher goroutine that owns transport writes.
// A small frame (fixed part plus payload up to 64 KiB) is encoded into a
// coalescing buffer and Send returns at once; the flusher writes the buffer
// as soon as the previous write is done, so a lone frame leaves immediately
// (no timer) and frames sent during a write leave together in the next one.
// A sender never waits for the transport unless the buffer is full
// (backpressure). A frame with a larger payload, and a Refuse, are written by
// the sending goroutine itself, in order, and Send returns after that write:
// the payload is never copied by this package and never retained.
//
// Errors: any transport or decoding error on a stream closes the whole
// Session (Session.Done fires) and is sticky: every later call fails. A
// frame accepted by Send is lost if the session dies before it is written;
// only the peer's answers (Ack, FlushAck, ResyncAck) prove delivery.
type Stream struct {
	id   uint8
	sess *Session
	w    io.Writer
	// setWriteDeadline bounds each transport write when timeout > 0 (nil if
	// the transport has no deadlines).
	setWriteDeadline func(time.Time) error
	timeout          time.Duration

	kick        chan struct{}   // capacity 1: wakes the flusher
	quit        chan struct{}   // closed by stop (streams without a session)
	dead        <-chan struct{} // the session's Done; nil without a session
	flusherDone chan struct{}   // closed when the flusher returns

	mu      sync.Mutex // guards the fields below
	changed sync.Cond  // on mu; broadcast when a write ends or werr is set
	pending []byte     // encoded frames not yet handed to the transport
	spare   []byte     // the other coalescing buffer, reused by turns
	writing bool       // a transport write is in progress (flusher or a sender)
	wseq    uint32     // sequence of the next frame sent
	werr    error      // first send error; sticky

	// Receive side: owned by the single Recv goroutine.
	src   io.Reader     // the transport below r
	r     *bufio.Reader // read-ahead over src
	hdr   [HeaderLen]byte
	rbuf  []byte   // payload buffer reused across Recv calls
	rseq  uint32   // sequence expected on the next frame
	rerr  error    // first receive error; sticky
	reuse recvMsgs // messages of the high-rate kinds, reused by Recv
}

func streamName(id uint8) string {
	switch id {
	case StreamControl:
		return "control"
	case StreamData:
		return "data"
	case StreamResync:
		return "resync"
	}
	return fmt.Sprintf("stream %d", id)
}

// newStream wraps rw; start launches its flusher. With a session, the
// flusher ends when the session dies (Session.Close waits for it); without
// one (tests), stop ends it, and errors close nothing.
func newStream(sess *Session, id uint8, rw io.ReadWriter, timeout time.Duration) *Stream {
	st := &Stream{
		id:          id,
		sess:        sess,
		w:           rw,
		timeout:     timeout,
		kick:        make(chan struct{}, 1),
		quit:        make(chan struct{}),
		flusherDone: make(chan struct{}),
		pending:     make([]byte, 0, sendBufSize),
		spare:       make([]byte, 0, sendBufSize),
		src:         rw,
		r:           bufio.NewReaderSize(rw, recvBufSize),
	}
	st.changed.L = &st.mu
	if sess != nil {
		st.dead = sess.ys.CloseChan()
	}
	if d, ok := rw.(interface{ SetWriteDeadline(time.Time) error }); ok && timeout > 0 {
		st.setWriteDeadline = d.SetWriteDeadline
	}
	return st
}

// start launches the flusher; Send needs it. Fields set before start are
// read by the flusher without locks.
func (st *Stream) start() { go st.flusher() }

// stop ends the flusher of a Stream without a session and waits for it.
func (st *Stream) stop() {
	close(st.quit)
	<-st.flusherDone
}

// Name returns "control", "data" or "resync".
func (st *Stream) Name() string { return streamName(st.id) }

// Send encodes m and queues it for sending (see the Stream comment for when
// it returns). It accepts every message type of this package, as value or
// pointer, and does not retain m or its payload after it returns. The
// payload of a Write or ResyncData is copied at most once by this package
// (up to 64 KiB into the coalescing buffer; larger payloads not at all).
//
// An invalid message (ErrInvalid, ErrUnknownKind) is refused before anything
// is queued and the stream stays usable. After a transport error, or once
// the session is closed, Send fails with an error wrapping ErrClosed or the
// transport's error.
func (st *Stream) Send(m Message) error { return st.send(m, false, 0) }

// SendSummed is Send for a message whose bulk payload (Write.Data,
// ResyncData.Data, ReadReply.Data) the caller has already checksummed, for
// example while the payload arrived: sum must be Checksum of exactly that
// payload (0 for a message without one). The sum is not checked here; a
// wrong one makes the peer drop the session with a checksum error.
func (st *Stream) SendSummed(m Message, sum uint32) error { return st.send(m, true, sum) }

// Checksum returns the CRC-32C (Castagnoli) of p, as SendSummed expects it.
func Checksum(p []byte) uint32 { return crc32.Update(0, castagnoli, p) }

// send is Send, with the bulk payload's checksum given if summed.
func (st *Stream) send(m Message, summed bool, bulkCRC uint32) error {
	w := wireOf(m)
	if w == nil {
		return fmt.Errorf("%w: cannot send %T", ErrUnknownKind, m)
	}
	fixed, bulk, err := w.layout()
	if err != nil {
		return err
	}
	need := HeaderLen + fixed + len(bulk)
	if !summed {
		// Computed before taking the lock, so that it overlaps the
		// transport write of the frames in front.
		bulkCRC = Checksum(bulk)
	}
	st.mu.Lock()
	if st.werr == nil && st.isDead() {
		st.werr = st.closedErr()
	}
	if len(bulk) > inlineBulk || need > sendBufSize || w.Kind() == KindRefuse {
		return st.sendDirectLocked(w, fixed, bulk, bulkCRC, st.timeout)
	}
	defer st.mu.Unlock()
	for st.werr == nil && len(st.pending) > 0 && len(st.pending)+need > sendBufSize {
		st.kickFlusher()
		st.changed.Wait()
	}
	if st.werr != nil {
		return st.werr
	}
	st.encodeLocked(w, fixed, bulk, bulkCRC)
	if !st.writing {
		st.kickFlusher()
	}
	return nil
}

// Flush waits until every frame queued before the call has been handed to
// the transport (yamux), and returns the stream's send error, if any.
func (st *Stream) Flush() error {
	st.mu.Lock()
	defer st.mu.Unlock()
	for st.werr == nil && (len(st.pending) > 0 || st.writing) {
		if !st.writing {
			st.kickFlusher()
		}
		st.changed.Wait()
	}
	return st.werr
}

func (st *Stream) kickFlusher() {
	select {
	case st.kick <- struct{}{}:
	default:
	}
}

// encodeLocked appends one whole frame (header, fixed part, bulk) to
// pending, which has room for it; bulkCRC is the CRC32C of bulk. st.mu is
// held.
func (st *Stream) encodeLocked(w wire, fixed int, bulk []byte, bulkCRC uint32) {
	start := len(st.pending)
	st.pending = st.pending[:start+HeaderLen+fixed]
	st.putHeadLocked(st.pending[start:], w, len(bulk), bulkCRC)
	st.pending = append(st.pending, bulk...)
}

// putHeadLocked writes the header and fixed part of w into head (HeaderLen
// plus the fixed length) with the next sequence number and the CRC32C over
// the header, fixed part and a bulk of bulkLen bytes whose own CRC32C is
// bulkCRC. st.mu is held.
func (st *Stream) putHeadLocked(head []byte, w wire, bulkLen int, bulkCRC uint32) {
	crc := putHeader(head, w.Kind(), st.wseq, uint32(len(head)-HeaderLen+bulkLen))
	st.wseq++
	w.put(head[HeaderLen:])
	crc = crc32.Update(crc, castagnoli, head[HeaderLen:])
	be.PutUint32(head[16:20], crcCombine(crc, bulkCRC, bulkLen))
}

// sendDirectLocked writes a frame from the calling goroutine: it waits for
// any write in progress, then writes what is pending, its own header and
// fixed part, and its bulk payload straight from the caller's slice. Called
// with st.mu held; returns with it released.
func (st *Stream) sendDirectLocked(w wire, fixed int, bulk []byte, bulkCRC uint32, timeout time.Duration) error {
	for st.werr == nil && st.writing {
		st.changed.Wait()
	}
	if st.werr != nil {
		err := st.werr
		st.mu.Unlock()
		return err
	}
	n := HeaderLen + fixed
	var head []byte
	separate := len(st.pending)+n > cap(st.pending)
	if separate {
		// A fixed part larger than the buffer (a big Bitmap or ChecksumReply).
		head = make([]byte, n)
	} else {
		start := len(st.pending)
		st.pending = st.pending[:start+n]
		head = st.pending[start:]
	}
	st.putHeadLocked(head, w, len(bulk), bulkCRC)
	batch := st.pending
	st.pending = st.spare[:0]
	st.writing = true
	st.mu.Unlock()

	err := st.write(batch, timeout)
	if err == nil && separate {
		err = st.write(head, timeout)
	}
	if err == nil && len(bulk) > 0 {
		err = st.write(bulk, timeout)
	}
	return st.endWrite(batch, err)
}

// endWrite finishes a transport write of batch: it returns the buffer for
// reuse, records err, wakes waiters and the flusher. Called without st.mu.
func (st *Stream) endWrite(batch []byte, err error) error {
	if err != nil {
		err = st.fail("send", err)
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	st.spare = batch[:0]
	st.writing = false
	if err != nil && st.werr == nil {
		st.werr = err
	}
	if len(st.pending) > 0 && st.werr == nil {
		st.kickFlusher()
	}
	st.changed.Broadcast()
	return err
}

// flusher writes pending frames to the transport, one batch per write,
// until the session dies or stop is called.
func (st *Stream) flusher() {
	defer close(st.flusherDone)
	for {
		select {
		case <-st.kick:
		case <-st.quit:
			st.shutdown()
			return
		case <-st.dead:
			st.shutdown()
			return
		}
		// Let goroutines made runnable with the sender (requests read in
		// the same burst) queue their frames too, so they share one write.
		runtime.Gosched()
		st.mu.Lock()
		for st.werr == nil && !st.writing && len(st.pending) > 0 {
			batch := st.pending
			st.pending = st.spare[:0]
			st.writing = true
			st.mu.Unlock()
			err := st.write(batch, st.timeout)
			st.endWrite(batch, err)
			st.mu.Lock()
		}
		st.mu.Unlock()
	}
}

// shutdown makes later and waiting Sends fail once the flusher is gone.
func (st *Stream) shutdown() {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.werr == nil {
		st.werr = st.closedErr()
	}
	st.changed.Broadcast()
}

// isDead reports whether the session has died (its flusher may not have
// noticed yet).
func (st *Stream) isDead() bool {
	select {
	case <-st.dead:
		return true
	default:
		return false
	}
}

// closedErr is the send error once the session or stream is closed.
func (st *Stream) closedErr() error {
	if st.sess != nil {
		return fmt.Errorf("protocol: %s stream send: %w (%v)", st.Name(), ErrClosed, st.sess.Err())
	}
	return fmt.Errorf("protocol: %s stream send: %w", st.Name(), ErrClosed)
}

// write hands b to the transport under the write deadline. Only the holder
// of st.writing calls it.
func (st *Stream) write(b []byte, timeout time.Duration) error {
	if len(b) == 0 {
		return nil
	}
	if st.setWriteDeadline != nil {
		if err := st.setWriteDeadline(time.Now().Add(timeout)); err != nil {
			return err
		}
	}
	_, err := st.w.Write(b)
	return err
}

// Recv returns the next message, always as a pointer (*Write, *Ack, ...).
//
// Ownership: so that the receive path allocates nothing per frame, the
// messages of the high-rate kinds - *Write, *Ack, *Flush, *FlushAck,
// *ResyncData, *ResyncAck - are owned by the Stream and, like the Data they
// carry, valid only until the next Recv on this Stream: read the fields you
// need (or copy the struct, or use RecvOwned or Clone) before calling Recv
// again. Write.Data, ResyncData.Data and ReadReply.Data alias the Stream's
// receive buffer and are likewise valid only until the next Recv. Messages of
// every other kind (State, Bitmap, ChecksumReply, Read, ReadReply, ...) are
// freshly allocated and belong to the caller, apart from ReadReply.Data.
//
// Any error (malformed frame, bad checksum, unknown kind, oversize length,
// transport failure, a handshake message after the handshake) closes the
// session and is returned by every later Recv. Errors wrap the matching
// sentinel (ErrChecksum, ErrBadMagic, ...), or ErrClosed when the session
// was closed. Recv never panics on input from the peer.
func (st *Stream) Recv() (Message, error) {
	if st.rerr != nil {
		return nil, st.rerr
	}
	m, err := st.recv()
	if err != nil {
		st.rerr = st.fail("receive", err)
		return nil, st.rerr
	}
	return m, nil
}

// RecvOwned is Recv returning a message that belongs entirely to the
// caller: the high-rate kinds are copied out of the Stream, and Write.Data,
// ResyncData.Data and ReadReply.Data are copied into fresh slices. It
// allocates per frame.
func (st *Stream) RecvOwned() (Message, error) {
	m, err := st.Recv()
	if err != nil {
		return nil, err
	}
	switch v := m.(type) {
	case *Write:
		return v.Clone(), nil
	case *ResyncData:
		return v.Clone(), nil
	case *ReadReply:
		return v.Clone(), nil
	case *Ack:
		c := *v
		return &c, nil
	case *Flush:
		c := *v
		return &c, nil
	case *FlushAck:
		c := *v
		return &c, nil
	case *ResyncAck:
		c := *v
		return &c, nil
	}
	return m, nil
}

func (st *Stream) recv() (Message, error) {
	if _, err := io.ReadFull(st.r, st.hdr[:]); err != nil {
		return nil, err
	}
	h, err := parseHeader(st.hdr[:])
	if err != nil {
		return nil, err
	}
	if h.Seq != st.rseq {
		return nil, fmt.Errorf("%w: %v frame sequence %d, expected %d", ErrMalformed, h.Kind, h.Seq, st.rseq)
	}
	st.rseq++
	switch h.Kind {
	case KindHello, KindAuthChallenge, KindAuthResponse, KindAuthOK, KindStreamOpen:
		return nil, fmt.Errorf("%w: %v after the handshake", ErrUnexpected, h.Kind)
	}
	crc := crc32.Update(0, castagnoli, st.hdr[:16])
	p, crc, err := st.readPayload(int(h.Length), crc)
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	if err := matchCRC(h, crc); err != nil {
		return nil, err
	}
	return decodePayload(h.Kind, p, &st.reuse)
}

// readPayload reads an n-byte payload into the reused receive buffer and
// returns it with crc updated over it. n is already bounded by
// maxPayloadFor. When the buffer must grow it grows with the bytes that
// actually arrive (doubling), so a peer announcing 32 MiB and sending 20
// bytes costs no more than the smallest buffer. The checksum is computed
// piece by piece as the bytes arrive, while they are still in the CPU's
// cache.
func (st *Stream) readPayload(n int, crc uint32) ([]byte, uint32, error) {
	buf := st.rbuf[:0]
	for len(buf) < n {
		if len(buf) == cap(buf) {
			c := min(max(2*cap(buf), minPayloadBuf), n)
			if n <= minPayloadBuf {
				c = minPayloadBuf
			}
			nb := make([]byte, len(buf), c)
			copy(nb, buf)
			buf = nb
			st.rbuf = nb
		}
		end := min(cap(buf), n, len(buf)+crcPiece)
		k, err := st.readBulk(buf[len(buf):end])
		crc = crc32.Update(crc, castagnoli, buf[len(buf):len(buf)+k])
		buf = buf[:len(buf)+k]
		if err != nil {
			return nil, crc, err
		}
	}
	return buf, crc, nil
}

// readBulk fills p. A read of at least directRead bytes takes what the
// read-ahead buffer holds and reads the rest straight from the transport
// (bulkread), so a large payload is copied once out of yamux, not a second
// time through the read-ahead buffer; smaller reads go through the buffer,
// which gathers many small frames per transport read.
func (st *Stream) readBulk(p []byte) (int, error) {
	if len(p) < directRead {
		return io.ReadFull(st.r, p)
	}
	return bulkread.ReadFull(st.r, st.src, p)
}

// fail records err as the reason the session dies, closes the session and
// returns the error to report from this Stream.
//
// Errors meaning the transport or session is gone (the peer closed, a local
// Close, a reset) wrap both ErrClosed and the underlying error (io.EOF...).
func (st *Stream) fail(op string, err error) error {
	closed := st.sess != nil && st.sess.closed()
	switch {
	case closed:
		err = &closedError{what: st.Name() + " stream " + op, why: st.sess.Err(), err: err}
	case isTransportGone(err):
		err = &closedError{what: st.Name() + " stream " + op, why: err, err: err}
	default:
		err = fmt.Errorf("protocol: %s stream %s: %w", st.Name(), op, err)
	}
	if st.sess == nil || closed {
		return err
	}
	if isPeerFault(err) {
		st.sess.refuse(err)
	}
	st.sess.fail(err)
	return err
}

// closedError reports an operation that failed because the session or
// its transport is gone.
type closedError struct {
	what string // "data stream receive"
	why  error  // the reason the session died, for the text
	err  error  // the operation's own error
}

func (e *closedError) Error() string {
	if e.why == nil || errors.Is(e.why, ErrClosed) && e.why.Error() == ErrClosed.Error() {
		return "protocol: " + e.what + ": session closed"
	}
	return "protocol: " + e.what + ": session closed: " + e.why.Error()
}

func (e *closedError) Unwrap() []error { return []error{ErrClosed, e.err} }

// isTransportGone reports whether err means the connection ended rather
// than that the peer misbehaved.
func isTransportGone(err error) bool {
	for _, s := range []error{io.EOF, io.ErrUnexpectedEOF, net.ErrClosed, yamux.ErrSessionShutdown,
		yamux.ErrStreamClosed, yamux.ErrConnectionReset, yamux.ErrKeepAliveTimeout} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

// isPeerFault reports whether err means the peer sent something invalid
// (as opposed to a transport failure).
func isPeerFault(err error) bool {
	for _, s := range []error{ErrBadMagic, ErrChecksum, ErrTooLarge, ErrUnknownKind, ErrMalformed, ErrUnexpected, ErrVersion} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

// trySendNow writes m at once, bounded by d, unless a transport write is
// in progress or another sender holds the stream: it never waits. It is for
// last words before the session is closed.
func (st *Stream) trySendNow(m Message, d time.Duration) {
	w := wireOf(m)
	fixed, bulk, err := w.layout()
	if err != nil || !st.mu.TryLock() {
		return
	}
	if st.writing || st.werr != nil {
		st.mu.Unlock()
		return
	}
	st.sendDirectLocked(w, fixed, bulk, crc32.Update(0, castagnoli, bulk), min(st.timeout, d))
}
