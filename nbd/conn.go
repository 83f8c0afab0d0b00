package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/urbd/urbd/internal/bufpool"
	"github.com/urbd/urbd/internal/bulkread"
)

// Socket buffer sizes: large enough to batch a queue depth of 4 KiB
// requests into one read and their replies into one write.
const (
	connReadBuf  = 256 << 10
	connWriteBuf = 256 << 10
)

// srvConn is one client connection. Its goroutines:
//   - serve (the caller's) negotiates, then reads requests in order,
//     validates them, reserves in-flight budget, reads write payloads,
//     registers writes for overlap ordering, and hands each request to a
//     worker;
//   - workers run the backend call, queue the request on replies, and wait
//     for the next request. A worker is started when none is idle, up to
//     the in-flight bound, and lives until the connection ends, so a
//     request costs neither a goroutine start nor stack growth;
//   - writeReplies is the only writer of the socket in transmission; it
//     releases each request's buffer and budget after its reply is written.
//
// serve returns after every request it started has been answered (or the
// socket has failed), the writer has exited, and the backend was flushed.
type srvConn struct {
	s   *Server
	nc  net.Conn
	log *slog.Logger

	cancel   context.CancelFunc // set in serve; cancels backend calls on kill
	done     chan struct{}      // closed when serve returns
	stopping atomic.Bool        // stop was called: read no more requests

	// Fixed after negotiation.
	exp      *Export
	backend  Backend
	summed   SummedWriter // backend as a SummedWriter, or nil
	readOnly bool

	br      *bufio.Reader
	replies chan *srvRequest
	work    chan *srvRequest // unbuffered: a send succeeds only to an idle worker
	workers sync.WaitGroup
	nwork   int // workers started; used by the reader only

	mu       sync.Mutex
	cond     sync.Cond     // signalled when budget is released; uses mu
	inflight int           // requests started and not yet released
	bytes    int64         // payload bytes of those requests
	writes   []*srvRequest // writes (WRITE, TRIM, WRITE_ZEROES) whose backend call has not finished
}

// srvRequest is one transmission request from header to reply. Pooled.
type srvRequest struct {
	c       *srvConn
	typ     uint16
	flags   uint16
	cookie  uint64
	off     uint64
	length  uint32
	errno   uint32
	cost    int64           // bytes charged to the in-flight budget
	bufp    *[]byte         // payload buffer from bufpool.Get, nil if none
	sum     uint32          // CRC-32C of a write's payload, if summed
	summed  bool            // sum is set: the backend is a SummedWriter that wanted it
	tracked bool            // in c.writes
	done    chan struct{}   // created by a later overlapping write; closed when this write's backend call ends
	waitOn  []chan struct{} // done channels of earlier overlapping writes
}

var reqPool = sync.Pool{New: func() any { return new(srvRequest) }}

func newSrvConn(s *Server, nc net.Conn) *srvConn {
	c := &srvConn{s: s, nc: nc, done: make(chan struct{}), log: s.logger()}
	c.cond.L = &c.mu
	return c
}

// stop asks the connection to finish: no further request is read, the ones
// received are served and answered, then the backend is flushed and the
// socket closed. Safe to call from any goroutine, any number of times.
func (c *srvConn) stop() {
	c.stopping.Store(true)
	// Unblock a pending read; a request half read is dropped unanswered.
	_ = c.nc.SetReadDeadline(time.Unix(1, 0))
	c.mu.Lock()
	c.cond.Broadcast()
	c.mu.Unlock()
}

// kill closes the connection at once and cancels its backend calls.
func (c *srvConn) kill() {
	c.stop()
	c.mu.Lock()
	if c.cancel != nil {
		c.cancel()
	}
	c.mu.Unlock()
	c.nc.Close()
}

func (c *srvConn) serve(ctx context.Context) {
	defer close(c.done)
	defer c.nc.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c.mu.Lock()
	c.cancel = cancel
	c.mu.Unlock()
	// A connection killed before serve started has no cancel to call.
	if c.stopping.Load() {
		return
	}
	context.AfterFunc(ctx, func() { c.nc.Close() })

	c.br = bufio.NewReaderSize(c.nc, connReadBuf)
	bw := bufio.NewWriterSize(c.nc, connWriteBuf)
	n := negotiation{br: c.br, bw: bw, lookup: c.s.Lookup, list: c.s.List}
	_ = c.nc.SetDeadline(time.Now().Add(c.s.negotiationTimeout()))
	if c.stopping.Load() {
		// stop ran before the deadline above replaced its own.
		_ = c.nc.SetReadDeadline(time.Unix(1, 0))
	}
	res, err := n.run()
	if err == nil {
		_ = c.nc.SetWriteDeadline(time.Time{})
		// Clear the read deadline unless stop set it meanwhile; stop
		// stores the flag before it sets its deadline, so checking after
		// clearing cannot miss it.
		_ = c.nc.SetReadDeadline(time.Time{})
		if c.stopping.Load() {
			_ = c.nc.SetReadDeadline(time.Unix(1, 0))
		}
	}
	if err != nil {
		switch {
		case errors.Is(err, errAbort), errors.Is(err, io.EOF), c.stopping.Load():
			c.log.Debug("nbd: negotiation ended", "remote", c.nc.RemoteAddr(), "err", err)
		default:
			c.log.Info("nbd: negotiation failed", "remote", c.nc.RemoteAddr(), "err", err)
		}
		return
	}
	c.exp, c.backend = res.exp, res.exp.Backend
	c.summed, _ = c.backend.(SummedWriter)
	c.readOnly = res.exp.ReadOnly
	c.s.clients.Add(1)
	defer func() {
		c.s.clients.Add(-1)
		res.detach()
	}()
	c.log.Debug("nbd: client attached", "remote", c.nc.RemoteAddr(), "export", res.name, "size", c.backend.Size())

	c.replies = make(chan *srvRequest, c.s.maxInFlight())
	c.work = make(chan *srvRequest)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		c.writeReplies(bw)
	}()

	err = c.readRequests(ctx)
	// Wait until every started request has been answered and released.
	c.mu.Lock()
	for c.inflight > 0 {
		c.cond.Wait()
	}
	c.mu.Unlock()
	close(c.work)
	c.workers.Wait()
	close(c.replies)
	<-writerDone
	if ferr := c.backend.Flush(ctx); ferr != nil {
		c.log.Warn("nbd: flush at disconnect", "remote", c.nc.RemoteAddr(), "err", ferr)
	}
	switch {
	case err == nil, c.stopping.Load(), errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
		c.log.Debug("nbd: client detached", "remote", c.nc.RemoteAddr(), "err", err)
	default:
		c.log.Info("nbd: connection closed", "remote", c.nc.RemoteAddr(), "err", err)
	}
}

// readRequests reads and dispatches requests until NBD_CMD_DISC (nil), stop,
// or an error that ends the connection.
func (c *srvConn) readRequests(ctx context.Context) error {
	var hdr [RequestHeaderLen]byte
	maxInFlight := c.s.maxInFlight()
	maxBytes := c.s.maxInFlightBytes()
	for {
		if c.stopping.Load() {
			return nil
		}
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			return err
		}
		if m := binary.BigEndian.Uint32(hdr[0:]); m != MagicRequest {
			return fmt.Errorf("%w: request magic %#x", ErrBadClient, m)
		}
		r := reqPool.Get().(*srvRequest)
		r.c = c
		r.flags = binary.BigEndian.Uint16(hdr[4:])
		r.typ = binary.BigEndian.Uint16(hdr[6:])
		r.cookie = binary.BigEndian.Uint64(hdr[8:])
		r.off = binary.BigEndian.Uint64(hdr[16:])
		r.length = binary.BigEndian.Uint32(hdr[24:])
		if r.typ == CmdDisc {
			reqPool.Put(r)
			return nil
		}
		r.errno = c.check(r)
		if r.typ == CmdWrite && r.errno != 0 {
			// Skip the payload of a refused write so the stream stays in
			// step; see MaxDiscardLen for why huge ones close instead.
			if r.length > MaxDiscardLen {
				reqPool.Put(r)
				return fmt.Errorf("%w: write of %d bytes", ErrBadClient, r.length)
			}
			if _, err := io.CopyN(io.Discard, c.br, int64(r.length)); err != nil {
				reqPool.Put(r)
				return err
			}
		}
		if r.errno == 0 && (r.typ == CmdRead || r.typ == CmdWrite) {
			r.cost = int64(r.length)
		}

		// Reserve budget. A request larger than the byte bound runs alone.
		c.mu.Lock()
		for !c.stopping.Load() && (c.inflight >= maxInFlight || (c.inflight > 0 && c.bytes+r.cost > maxBytes)) {
			c.cond.Wait()
		}
		if c.stopping.Load() {
			// Stopped while waiting for budget: the request is dropped
			// unanswered, like one still unread.
			c.mu.Unlock()
			reqPool.Put(r)
			return nil
		}
		c.inflight++
		c.bytes += r.cost
		c.mu.Unlock()

		if r.errno != 0 {
			c.replies <- r
			continue
		}
		if r.cost > 0 {
			r.bufp = bufpool.Get(int(r.length))
			if r.typ == CmdWrite {
				if err := c.readPayload(r); err != nil {
					c.release(r)
					return err
				}
			}
		}
		if r.typ == CmdWrite || r.typ == CmdTrim || r.typ == CmdWriteZeroes {
			c.track(r)
		}
		c.dispatch(ctx, r, maxInFlight)
	}
}

// readPayload reads the payload of write r into its buffer, past the
// read-ahead (one copy of the payload, not two). For a SummedWriter that
// wants it, it checksums the payload as it arrives.
func (c *srvConn) readPayload(r *srvRequest) error {
	r.summed = c.summed != nil && c.summed.WantSums()
	if !r.summed {
		_, err := bulkread.ReadFull(c.br, c.nc, *r.bufp)
		return err
	}
	r.sum = 0
	_, err := bulkread.ReadFullEach(c.br, c.nc, *r.bufp, sumPiece, func(b []byte) {
		r.sum = crc32.Update(r.sum, castagnoli, b)
	})
	return err
}

// dispatch hands r to an idle worker, or starts one if none is idle and
// fewer than max are running (otherwise it waits for one to be free).
func (c *srvConn) dispatch(ctx context.Context, r *srvRequest, max int) {
	select {
	case c.work <- r:
		return
	default:
	}
	if c.nwork >= max {
		c.work <- r
		return
	}
	c.nwork++
	c.workers.Add(1)
	go func() {
		defer c.workers.Done()
		for ; r != nil; r = <-c.work {
			c.run(ctx, r)
		}
	}()
}

// check validates a request against the export and returns the errno to
// answer without calling the backend, or 0.
func (c *srvConn) check(r *srvRequest) uint32 {
	var allowed uint16
	switch r.typ {
	case CmdRead, CmdFlush:
	case CmdWrite, CmdTrim:
		allowed = CmdFlagFUA
	case CmdWriteZeroes:
		allowed = CmdFlagFUA | CmdFlagNoHole
	default:
		return ErrnoInval
	}
	if r.flags&^allowed != 0 {
		return ErrnoInval
	}
	if r.typ == CmdFlush {
		return 0
	}
	if c.readOnly && r.typ != CmdRead {
		return ErrnoPerm
	}
	if (r.typ == CmdRead || r.typ == CmdWrite) && r.length > MaxBlockSize {
		return ErrnoInval
	}
	// The export's size now, not the one negotiated: a resource grown
	// online (urbd resize) serves its new end to a client that learned
	// the new size without connecting again (urbd attach, on SIGHUP).
	if size := uint64(c.backend.Size()); r.off > size || uint64(r.length) > size-r.off {
		return ErrnoInval
	}
	return 0
}

// track registers a write for overlap ordering: it will wait for every
// earlier write still in flight whose range overlaps its own. Called by the
// reader goroutine in arrival order.
func (c *srvConn) track(r *srvRequest) {
	start, end := r.off, r.off+uint64(r.length)
	c.mu.Lock()
	for _, w := range c.writes {
		if w.off < end && start < w.off+uint64(w.length) {
			if w.done == nil {
				w.done = make(chan struct{})
			}
			r.waitOn = append(r.waitOn, w.done)
		}
	}
	r.tracked = true
	c.writes = append(c.writes, r)
	c.mu.Unlock()
}

// untrack removes a finished write and wakes the writes waiting for it.
func (c *srvConn) untrack(r *srvRequest) {
	c.mu.Lock()
	for i, w := range c.writes {
		if w == r {
			last := len(c.writes) - 1
			c.writes[i] = c.writes[last]
			c.writes[last] = nil
			c.writes = c.writes[:last]
			break
		}
	}
	if r.done != nil {
		close(r.done)
		r.done = nil
	}
	r.tracked = false
	c.mu.Unlock()
}

// run performs one request on the backend and queues its reply.
func (c *srvConn) run(ctx context.Context, r *srvRequest) {
	for _, ch := range r.waitOn {
		<-ch
	}
	clear(r.waitOn)
	r.waitOn = r.waitOn[:0]
	fua := r.flags&CmdFlagFUA != 0
	var err error
	switch r.typ {
	case CmdRead:
		c.s.served.reads.Add(1)
		if r.length > 0 {
			err = c.backend.ReadAt(ctx, *r.bufp, int64(r.off))
		}
	case CmdWrite:
		c.s.served.writes.Add(1)
		c.s.served.writeBytes.Add(uint64(r.length))
		if r.length > 0 {
			if r.summed {
				err = c.summed.WriteAtSummed(ctx, *r.bufp, int64(r.off), fua, r.sum)
			} else {
				err = c.backend.WriteAt(ctx, *r.bufp, int64(r.off), fua)
			}
		} else if fua {
			err = c.backend.Flush(ctx)
		}
	case CmdFlush:
		err = c.backend.Flush(ctx)
	case CmdTrim:
		err = c.backend.Trim(ctx, int64(r.off), int64(r.length), fua)
	case CmdWriteZeroes:
		err = c.backend.WriteZeroes(ctx, int64(r.off), int64(r.length), fua, r.flags&CmdFlagNoHole != 0)
	}
	if r.tracked {
		c.untrack(r)
	}
	if err != nil {
		r.errno = errnoOf(err)
		lvl := slog.LevelWarn
		if r.errno != ErrnoIO {
			lvl = slog.LevelDebug
		}
		c.log.Log(ctx, lvl, "nbd: request failed", "remote", c.nc.RemoteAddr(), "cmd", r.typ,
			"offset", r.off, "length", r.length, "errno", r.errno, "err", err)
	}
	c.replies <- r
}

// errnoOf maps a backend error to the NBD error value (see Backend).
func errnoOf(err error) uint32 {
	switch {
	case errors.Is(err, ErrInvalid):
		return ErrnoInval
	case errors.Is(err, ErrNoSpace):
		return ErrnoNoSpc
	case errors.Is(err, ErrReadOnly):
		return ErrnoPerm
	case errors.Is(err, ErrShutdown):
		return ErrnoShutdown
	default:
		return ErrnoIO
	}
}

// release returns a request's buffer and budget and recycles it.
func (c *srvConn) release(r *srvRequest) {
	if r.bufp != nil {
		bufpool.Put(r.bufp)
		r.bufp = nil
	}
	c.mu.Lock()
	c.inflight--
	c.bytes -= r.cost
	c.cond.Broadcast()
	c.mu.Unlock()
	r.c, r.errno, r.cost = nil, 0, 0
	reqPool.Put(r)
}

// writeReplies writes the replies queued on c.replies until it is closed.
// Replies are buffered and the buffer is flushed whenever the queue is
// empty, so a burst of completions costs one write system call. A READ reply
// is written as header and data together. After a write error the socket is
// closed and the remaining replies are only released.
func (c *srvConn) writeReplies(bw *bufio.Writer) {
	var werr error
	var hdr [ReplyHeaderLen]byte
	binary.BigEndian.PutUint32(hdr[0:], MagicSimpleReply)
	var vec [2][]byte // WriteTo consumes its net.Buffers; rebuild it from vec
	for r := range c.replies {
		if werr == nil {
			binary.BigEndian.PutUint32(hdr[4:], r.errno)
			binary.BigEndian.PutUint64(hdr[8:], r.cookie)
			var data []byte
			if r.typ == CmdRead && r.errno == 0 && r.bufp != nil {
				data = *r.bufp
			}
			if len(hdr)+len(data) <= bw.Available() {
				bw.Write(hdr[:])
				bw.Write(data)
			} else {
				werr = bw.Flush()
				if werr == nil {
					vec[0], vec[1] = hdr[:], data
					bufs := net.Buffers(vec[:])
					_, werr = bufs.WriteTo(c.nc)
					vec[1] = nil
				}
			}
			if werr == nil && len(c.replies) == 0 && bw.Buffered() > 0 {
				// Give requests finishing right now a chance to join
				// this write before paying for a system call.
				runtime.Gosched()
				if len(c.replies) == 0 {
					werr = bw.Flush()
				}
			}
			if werr != nil {
				c.log.Debug("nbd: writing reply", "remote", c.nc.RemoteAddr(), "err", werr)
				c.nc.Close()
			}
		}
		c.release(r)
	}
	if werr == nil {
		_ = bw.Flush()
	}
}
