package protocol

import (
	"bufio"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// sendBufSize is the coalescing buffer of a Stream's sender: small frames
	// queued behind each other leave in one transport write of up to this size.
	sendBufSize = 64 << 10
	// inlineBulk is the largest bulk payload copied into the coalescing
	// buffer; larger payloads are written to the transport without a copy.
	inlineBulk = 16 << 10
	// recvBufSize is the read-ahead of a Stream's receiver.
	recvBufSize = 64 << 10
	// minPayloadBuf is the smallest receive payload buffer allocated.
	minPayloadBuf = 64 << 10
)

// Stream carries frames over one yamux stream (control, data or resync).
//
// Concurrency: Send may be called from any number of goroutines at once; each
// frame is written whole, never interleaved with another. Recv must be called
// from a single goroutine at a time. Send and Recv may run concurrently.
//
// Batching: a Send that finds other Sends queued behind it leaves its frame in
// a coalescing buffer for the last of them to write; the Send that empties the
// queue writes the buffer to the transport before returning. A lone Send
// therefore goes out immediately (no timer, no added latency), and a burst of
// small frames leaves in few large transport writes.
//
// Errors: any transport or decoding error on a stream closes the whole
// Session (Session.Done fires) and is sticky: every later call fails.
type Stream struct {
	id   uint8
	sess *Session
	w    io.Writer
	// setWriteDeadline bounds each transport write when timeout > 0 (nil if
	// the transport has no deadlines).
	setWriteDeadline func(time.Time) error
	timeout          time.Duration

	// queued counts Sends that have validated their message and wait for mu
	// or hold it. Read and written atomically.
	queued atomic.Int32

	mu   sync.Mutex // guards the fields below
	wbuf []byte     // encoded frames not yet written; cap sendBufSize
	wseq uint32     // sequence of the next frame sent
	werr error      // first send error; sticky

	// Receive side: owned by the single Recv goroutine.
	r     *bufio.Reader
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

// newStream wraps rw. sess may be nil in tests; then errors close nothing.
func newStream(sess *Session, id uint8, rw io.ReadWriter, timeout time.Duration) *Stream {
	st := &Stream{
		id:      id,
		sess:    sess,
		w:       rw,
		timeout: timeout,
		wbuf:    make([]byte, 0, sendBufSize),
		r:       bufio.NewReaderSize(rw, recvBufSize),
	}
	if d, ok := rw.(interface{ SetWriteDeadline(time.Time) error }); ok && timeout > 0 {
		st.setWriteDeadline = d.SetWriteDeadline
	}
	return st
}

// Name returns "control", "data" or "resync".
func (st *Stream) Name() string { return streamName(st.id) }

// Send encodes m and sends it. It accepts every message type of this
// package, as value or pointer. The payload of a Write or ResyncData is
// copied at most once by Send (small payloads into the coalescing buffer;
// payloads above 16 KiB not at all) and is not retained after Send returns.
//
// An invalid message (ErrInvalid, ErrUnknownKind) is refused before anything
// is written and the stream stays usable. A transport error closes the
// session; the error wraps ErrClosed if the session was already closed.
func (st *Stream) Send(m Message) error {
	w := wireOf(m)
	if w == nil {
		return fmt.Errorf("%w: cannot send %T", ErrUnknownKind, m)
	}
	fixed, bulk, err := w.layout()
	if err != nil {
		return err
	}
	st.queued.Add(1)
	st.mu.Lock()
	defer st.mu.Unlock()
	last := st.queued.Add(-1) == 0
	if st.werr != nil {
		return st.werr
	}
	err = st.appendLocked(w, fixed, bulk)
	if err == nil && last {
		err = st.flushLocked()
	}
	if err != nil {
		st.werr = st.fail("send", err)
		return st.werr
	}
	return nil
}

// appendLocked adds one frame to the coalescing buffer, writing the buffer
// (and a large bulk payload) to the transport as needed. st.mu is held.
func (st *Stream) appendLocked(w wire, fixed int, bulk []byte) error {
	n := HeaderLen + fixed
	inline := len(bulk) <= inlineBulk
	need := n
	if inline {
		need += len(bulk)
	}
	if len(st.wbuf)+need > cap(st.wbuf) {
		if err := st.flushLocked(); err != nil {
			return err
		}
	}
	var f []byte
	if need <= cap(st.wbuf) {
		start := len(st.wbuf)
		st.wbuf = st.wbuf[:start+n]
		f = st.wbuf[start:]
	} else {
		// A fixed part larger than the buffer (a big Bitmap or
		// ChecksumReply): encode it on its own and write it directly.
		f = make([]byte, n)
	}
	crc := putHeader(f, w.Kind(), st.wseq, uint32(fixed+len(bulk)))
	st.wseq++
	w.put(f[HeaderLen:n])
	crc = crc32.Update(crc, castagnoli, f[HeaderLen:n])
	crc = crc32.Update(crc, castagnoli, bulk)
	be.PutUint32(f[16:20], crc)
	if need > cap(st.wbuf) {
		if err := st.writeLocked(f); err != nil {
			return err
		}
	} else if inline {
		st.wbuf = append(st.wbuf, bulk...)
		return nil
	}
	if len(bulk) == 0 {
		return nil
	}
	if err := st.flushLocked(); err != nil {
		return err
	}
	return st.writeLocked(bulk)
}

// flushLocked writes the coalescing buffer to the transport. st.mu is held.
func (st *Stream) flushLocked() error {
	if len(st.wbuf) == 0 {
		return nil
	}
	err := st.writeLocked(st.wbuf)
	st.wbuf = st.wbuf[:0]
	return err
}

// writeLocked writes b to the transport under the write deadline. st.mu is held.
func (st *Stream) writeLocked(b []byte) error {
	if st.setWriteDeadline != nil {
		if err := st.setWriteDeadline(time.Now().Add(st.timeout)); err != nil {
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
// again. Write.Data and ResyncData.Data alias the Stream's receive buffer.
// Messages of every other kind (State, Bitmap, ChecksumReply, ...) are
// freshly allocated and belong to the caller.
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
// caller: the high-rate kinds are copied out of the Stream, with Write.Data
// and ResyncData.Data in fresh slices. It allocates per frame.
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
	p, err := st.readPayload(int(h.Length))
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	if err := checkCRC(st.hdr[:], h, p); err != nil {
		return nil, err
	}
	return decodePayload(h.Kind, p, &st.reuse)
}

// readPayload reads an n-byte payload into the reused receive buffer. n is
// already bounded by maxPayloadFor. When the buffer must grow it grows with
// the bytes that actually arrive (doubling), so a peer announcing 32 MiB and
// sending 20 bytes costs no more than the smallest buffer.
func (st *Stream) readPayload(n int) ([]byte, error) {
	if cap(st.rbuf) >= n {
		p := st.rbuf[:n]
		_, err := io.ReadFull(st.r, p)
		return p, err
	}
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
		end := min(cap(buf), n)
		k, err := io.ReadFull(st.r, buf[len(buf):end])
		buf = buf[:len(buf)+k]
		if err != nil {
			return nil, err
		}
	}
	return buf, nil
}

// fail records err as the reason the session dies, closes the session and
// returns the error to report from this Stream.
func (st *Stream) fail(op string, err error) error {
	if st.sess == nil {
		return fmt.Errorf("protocol: %s stream %s: %w", st.Name(), op, err)
	}
	if st.sess.closed() {
		return fmt.Errorf("protocol: %s stream %s: %w (%v)", st.Name(), op, ErrClosed, st.sess.Err())
	}
	err = fmt.Errorf("protocol: %s stream %s: %w", st.Name(), op, err)
	if isPeerFault(err) {
		st.sess.refuse(err)
	}
	st.sess.fail(err)
	return err
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

// trySendNow sends m at once if no other Send holds the stream, bounded by
// d, and reports whether it was written to the transport. It never waits
// for another sender; for last words before closing.
func (st *Stream) trySendNow(m Message, d time.Duration) bool {
	w := wireOf(m)
	fixed, bulk, err := w.layout()
	if err != nil || !st.mu.TryLock() {
		return false
	}
	defer st.mu.Unlock()
	if st.werr != nil {
		return false
	}
	timeout := st.timeout
	st.timeout = min(timeout, d)
	defer func() { st.timeout = timeout }()
	if st.appendLocked(w, fixed, bulk) != nil || st.flushLocked() != nil {
		st.werr = fmt.Errorf("protocol: %s stream send: %w", st.Name(), ErrClosed)
		return false
	}
	return true
}
