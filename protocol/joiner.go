package protocol

import (
	"bufio"
	"net"
	"sync"
)

// yamuxHeaderLen is the size of a yamux frame header (yamux spec.md).
const yamuxHeaderLen = 12

// joinCopyMax is the largest body the joiner copies to join it with its
// header on a transport without vectored writes (TLS). Larger bodies go as
// two writes; the extra 12-byte record is noise next to them.
const joinCopyMax = 64 << 10

// readAhead is the joiner's receive buffer. yamux (v0.1.2) reads through a
// 4 KiB bufio.Reader, which costs one or two read system calls per small
// frame; reading ahead up to this many bytes lets a burst of frames arrive
// in one system call. Large reads bypass it while it is empty (Read).
const readAhead = 256 << 10

// headerJoiner sits between yamux and the transport. yamux (v0.1.2, its
// sendLoop) writes each data frame as two transport writes, its 12-byte
// header and then the body; on TCP with Nagle off that is two syscalls and
// two packets per frame, and on TLS two records. The joiner holds back the
// header of a data frame announcing a body and sends it together with the
// next write (the body): one vectored write on TCP, one copied buffer of at
// most joinCopyMax bytes otherwise. Other writes pass through. Bytes always
// leave in the order written; a held header waits only for the body write
// that yamux issues right after it.
type headerJoiner struct {
	net.Conn
	raw      net.Conn // the connection below TLS (== Conn without TLS)
	vectored bool     // the transport is a *net.TCPConn (writev)

	mu      sync.Mutex // serializes Write; yamux writes from one goroutine anyway
	held    [yamuxHeaderLen]byte
	holding bool
	scratch []byte // join buffer for non-vectored transports

	r *bufio.Reader // read-ahead over Conn; only yamux's receive loop reads
}

// newHeaderJoiner wraps c, the transport yamux writes to; raw is the
// connection below it (c itself without TLS).
func newHeaderJoiner(c, raw net.Conn) *headerJoiner {
	_, tcp := c.(*net.TCPConn)
	return &headerJoiner{Conn: c, raw: raw, vectored: tcp, r: bufio.NewReaderSize(c, readAhead)}
}

// Read reads through the read-ahead buffer, except that a read of at least
// directRead bytes with nothing buffered goes straight to the transport.
// yamux copies each data frame's body into the stream's receive buffer with
// reads as large as the rest of the body; without the bypass every such
// body would be copied twice, into the read-ahead and out of it.
func (c *headerJoiner) Read(p []byte) (int, error) {
	if len(p) >= directRead && c.r.Buffered() == 0 {
		return c.Conn.Read(p)
	}
	return c.r.Read(p)
}

// Close closes the raw connection. With TLS this skips the close_notify
// alert, which tls.Conn.Close would try to send for up to 5 s on a dead
// link; frames carry their own lengths, so truncation is detected anyway.
func (c *headerJoiner) Close() error { return c.raw.Close() }

// isDataHeader reports whether p is a yamux data-frame header announcing a
// body: version 0, type 0 (data), length > 0.
func isDataHeader(p []byte) bool {
	return len(p) == yamuxHeaderLen && p[0] == 0 && p[1] == 0 && be.Uint32(p[8:12]) > 0
}

func (c *headerJoiner) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.holding {
		c.holding = false
		switch {
		case c.vectored:
			bufs := net.Buffers{c.held[:], p}
			n, err := bufs.WriteTo(c.Conn)
			return max(int(n)-yamuxHeaderLen, 0), err
		case len(p) <= joinCopyMax:
			c.scratch = append(append(c.scratch[:0], c.held[:]...), p...)
			n, err := c.Conn.Write(c.scratch)
			return max(n-yamuxHeaderLen, 0), err
		default:
			if _, err := c.Conn.Write(c.held[:]); err != nil {
				return 0, err
			}
		}
	}
	if isDataHeader(p) {
		copy(c.held[:], p)
		c.holding = true
		return len(p), nil
	}
	return c.Conn.Write(p)
}
