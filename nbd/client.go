package nbd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"
)

// Errors of the client side of the protocol.
var (
	// ErrRefused is wrapped when the server refuses the export during
	// negotiation (unknown export, a Secondary resource, shutting down ...).
	// The error text carries the server's own message.
	ErrRefused = errors.New("nbd: export refused")
	// ErrProtocol is wrapped when the server sends something the protocol
	// does not allow: bad magic, a reply to another option, an impossible
	// length.
	ErrProtocol = errors.New("nbd: protocol violation by server")
	// ErrRemote is wrapped by ClientConn when the server answers a request
	// with a non-zero error; errors.As with *RemoteError gives the errno.
	ErrRemote = errors.New("nbd: request failed on server")
)

// Bounds on what a client reads from the wire before allocating.
const (
	// maxOptReplyLen bounds the payload of one option reply. The spec
	// limits error strings and names to 4096 bytes; info replies are tiny.
	maxOptReplyLen = 64 << 10
	// maxOptReplies bounds the replies read for one option, so a server
	// cannot keep a client negotiating forever.
	maxOptReplies = 64
	// exportNameZeroes is the padding after the EXPORT_NAME reply when
	// the server did not agree to NO_ZEROES.
	exportNameZeroes = 124
)

// ExportInfo is what a server tells a client about an export during
// negotiation.
type ExportInfo struct {
	Name        string // the export name asked for
	Description string // NBD_INFO_DESCRIPTION, if sent
	Size        int64  // bytes
	// Flags are the transmission flags (FlagHasFlags, FlagSendFlush ...),
	// passed unchanged to the kernel on attach.
	Flags uint16
	// Block sizes from NBD_INFO_BLOCK_SIZE; zero when the server did not
	// send them (the old NBD_OPT_EXPORT_NAME path never does).
	MinBlock, PreferredBlock, MaxBlock uint32
}

// ReadOnly, CanFlush, CanFUA, CanTrim, CanWriteZeroes and CanMultiConn
// report the transmission flags.
func (e ExportInfo) ReadOnly() bool       { return e.Flags&FlagReadOnly != 0 }
func (e ExportInfo) CanFlush() bool       { return e.Flags&FlagSendFlush != 0 }
func (e ExportInfo) CanFUA() bool         { return e.Flags&FlagSendFUA != 0 }
func (e ExportInfo) CanTrim() bool        { return e.Flags&FlagSendTrim != 0 }
func (e ExportInfo) CanWriteZeroes() bool { return e.Flags&FlagSendWriteZeroes != 0 }
func (e ExportInfo) CanMultiConn() bool   { return e.Flags&FlagCanMultiConn != 0 }

// Negotiate runs the client side of the fixed-newstyle handshake on conn
// and leaves conn at the start of the transmission phase. It asks for the
// export with NBD_OPT_GO (requesting block sizes) and falls back to
// NBD_OPT_EXPORT_NAME when the server does not support NBD_OPT_GO.
//
// A refusal returns an error wrapping ErrRefused whose text includes the
// server's message. ctx bounds the whole handshake: its deadline becomes
// the connection's deadline and cancelling it interrupts blocked I/O; the
// deadline is cleared again before Negotiate returns. Negotiate does not
// close conn on error. Every length read from the server is bounded before
// allocation.
func Negotiate(ctx context.Context, conn net.Conn, export string) (ExportInfo, error) {
	if len(export) > MaxNameLen {
		return ExportInfo{}, fmt.Errorf("nbd: export name of %d bytes is longer than %d", len(export), MaxNameLen)
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	info, err := negotiate(conn, export)
	stop()
	if err != nil && ctx.Err() != nil {
		// The deadline was forced into the past; report why.
		err = fmt.Errorf("%w (%w)", err, ctx.Err())
	}
	conn.SetDeadline(time.Time{})
	return info, err
}

func negotiate(conn net.Conn, export string) (ExportInfo, error) {
	var hello [18]byte
	if _, err := io.ReadFull(conn, hello[:]); err != nil {
		return ExportInfo{}, fmt.Errorf("nbd: reading server greeting: %w", err)
	}
	if m := binary.BigEndian.Uint64(hello[0:]); m != MagicNBD {
		return ExportInfo{}, fmt.Errorf("%w: greeting magic %#x is not NBDMAGIC", ErrProtocol, m)
	}
	if m := binary.BigEndian.Uint64(hello[8:]); m != MagicOption {
		return ExportInfo{}, fmt.Errorf("%w: server speaks the oldstyle protocol (magic %#x), only fixed newstyle is supported", ErrProtocol, m)
	}
	hflags := binary.BigEndian.Uint16(hello[16:])
	if hflags&FlagFixedNewstyle == 0 {
		return ExportInfo{}, fmt.Errorf("%w: server does not offer fixed newstyle negotiation", ErrProtocol)
	}
	cflags := FlagCFixedNewstyle
	noZeroes := hflags&FlagNoZeroes != 0
	if noZeroes {
		cflags |= FlagCNoZeroes
	}
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], cflags)
	if _, err := conn.Write(b[:]); err != nil {
		return ExportInfo{}, fmt.Errorf("nbd: sending client flags: %w", err)
	}

	info, err := optGo(conn, export)
	if errors.Is(err, errGoUnsupported) {
		return optExportName(conn, export, noZeroes)
	}
	return info, err
}

// errGoUnsupported makes negotiate fall back to NBD_OPT_EXPORT_NAME.
var errGoUnsupported = errors.New("nbd: NBD_OPT_GO not supported")

// appendOption appends an option request header and its data.
func appendOption(dst []byte, opt uint32, data []byte) []byte {
	dst = binary.BigEndian.AppendUint64(dst, MagicOption)
	dst = binary.BigEndian.AppendUint32(dst, opt)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(data)))
	return append(dst, data...)
}

// optGo sends NBD_OPT_GO and reads replies up to the final ACK or error.
func optGo(conn net.Conn, export string) (ExportInfo, error) {
	data := binary.BigEndian.AppendUint32(nil, uint32(len(export)))
	data = append(data, export...)
	data = binary.BigEndian.AppendUint16(data, 1)
	data = binary.BigEndian.AppendUint16(data, InfoBlockSize)
	if _, err := conn.Write(appendOption(nil, OptGo, data)); err != nil {
		return ExportInfo{}, fmt.Errorf("nbd: sending NBD_OPT_GO: %w", err)
	}
	info := ExportInfo{Name: export}
	haveExport := false
	for range maxOptReplies {
		typ, payload, err := readOptReply(conn, OptGo)
		if err != nil {
			return ExportInfo{}, err
		}
		switch {
		case typ == RepAck:
			if !haveExport {
				return ExportInfo{}, fmt.Errorf("%w: NBD_OPT_GO acknowledged without NBD_INFO_EXPORT", ErrProtocol)
			}
			return info, nil
		case typ == RepInfo:
			if err := parseInfo(&info, payload, &haveExport); err != nil {
				return ExportInfo{}, err
			}
		case typ == RepErrUnsup:
			return ExportInfo{}, errGoUnsupported
		case typ&(1<<31) != 0:
			return ExportInfo{}, refusal(export, typ, payload)
		default:
			// Unknown non-error replies are ignored, as the spec asks.
		}
	}
	return ExportInfo{}, fmt.Errorf("%w: more than %d replies to NBD_OPT_GO", ErrProtocol, maxOptReplies)
}

// readOptReply reads one option reply header and its bounded payload.
func readOptReply(r io.Reader, opt uint32) (typ uint32, payload []byte, err error) {
	var h [20]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, fmt.Errorf("nbd: reading option reply: %w", err)
	}
	if m := binary.BigEndian.Uint64(h[0:]); m != MagicOptReply {
		return 0, nil, fmt.Errorf("%w: option reply magic %#x", ErrProtocol, m)
	}
	if o := binary.BigEndian.Uint32(h[8:]); o != opt {
		return 0, nil, fmt.Errorf("%w: reply to option %d while waiting for option %d", ErrProtocol, o, opt)
	}
	typ = binary.BigEndian.Uint32(h[12:])
	n := binary.BigEndian.Uint32(h[16:])
	if n > maxOptReplyLen {
		return 0, nil, fmt.Errorf("%w: option reply of %d bytes exceeds %d", ErrProtocol, n, maxOptReplyLen)
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return 0, nil, fmt.Errorf("nbd: reading option reply payload: %w", err)
	}
	return typ, payload, nil
}

// parseInfo decodes one NBD_REP_INFO payload into info.
func parseInfo(info *ExportInfo, p []byte, haveExport *bool) error {
	if len(p) < 2 {
		return fmt.Errorf("%w: NBD_REP_INFO of %d bytes", ErrProtocol, len(p))
	}
	switch binary.BigEndian.Uint16(p) {
	case InfoExport:
		if len(p) != 12 {
			return fmt.Errorf("%w: NBD_INFO_EXPORT of %d bytes, want 12", ErrProtocol, len(p))
		}
		size := binary.BigEndian.Uint64(p[2:])
		if size > 1<<62 {
			return fmt.Errorf("%w: export size %d is impossible", ErrProtocol, size)
		}
		info.Size = int64(size)
		info.Flags = binary.BigEndian.Uint16(p[10:])
		*haveExport = true
	case InfoBlockSize:
		if len(p) != 14 {
			return fmt.Errorf("%w: NBD_INFO_BLOCK_SIZE of %d bytes, want 14", ErrProtocol, len(p))
		}
		info.MinBlock = binary.BigEndian.Uint32(p[2:])
		info.PreferredBlock = binary.BigEndian.Uint32(p[6:])
		info.MaxBlock = binary.BigEndian.Uint32(p[10:])
	case InfoDescription:
		info.Description = string(p[2:])
	}
	return nil
}

// refusal turns an error reply into an error wrapping ErrRefused that
// carries the server's message.
func refusal(export string, typ uint32, payload []byte) error {
	msg := strings.TrimSpace(strings.ToValidUTF8(string(payload), "?"))
	if msg == "" {
		msg = repErrName(typ)
	}
	return fmt.Errorf("%w: export %q: %s", ErrRefused, export, msg)
}

func repErrName(typ uint32) string {
	switch typ {
	case RepErrPolicy:
		return "forbidden by server policy"
	case RepErrInvalid:
		return "invalid request"
	case RepErrPlatform:
		return "not supported on the server's platform"
	case RepErrTLSReqd:
		return "server requires TLS"
	case RepErrUnknown:
		return "unknown export"
	case RepErrShutdown:
		return "server is shutting down"
	case RepErrBlockSizeReqd:
		return "server requires block size negotiation"
	case RepErrTooBig:
		return "request too big"
	default:
		return fmt.Sprintf("error reply %#x", typ)
	}
}

// optExportName is the old way to select an export: the server answers
// with size and flags, or closes the connection to refuse.
func optExportName(conn net.Conn, export string, noZeroes bool) (ExportInfo, error) {
	if _, err := conn.Write(appendOption(nil, OptExportName, []byte(export))); err != nil {
		return ExportInfo{}, fmt.Errorf("nbd: sending NBD_OPT_EXPORT_NAME: %w", err)
	}
	n := 10
	if !noZeroes {
		n += exportNameZeroes
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(conn, buf); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return ExportInfo{}, fmt.Errorf("%w: export %q: server closed the connection (no such export?)", ErrRefused, export)
		}
		return ExportInfo{}, fmt.Errorf("nbd: reading NBD_OPT_EXPORT_NAME reply: %w", err)
	}
	size := binary.BigEndian.Uint64(buf)
	if size > 1<<62 {
		return ExportInfo{}, fmt.Errorf("%w: export size %d is impossible", ErrProtocol, size)
	}
	return ExportInfo{Name: export, Size: int64(size), Flags: binary.BigEndian.Uint16(buf[8:])}, nil
}

// RemoteError is a non-zero error a server sent in a simple reply.
type RemoteError struct {
	Cmd   uint16
	Errno uint32
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("nbd: server answered command %d with errno %d", e.Cmd, e.Errno)
}

// Unwrap makes errors.Is(err, ErrRemote) true.
func (e *RemoteError) Unwrap() error { return ErrRemote }

// ClientConn is a minimal synchronous transmission-phase client: one
// request at a time, simple replies only. It exists for tests and tools
// that need to send exact (also malformed or out-of-range) requests; the
// kernel is the real client. Methods may be called from several goroutines
// but are serialised by an internal mutex. ClientConn owns conn.
type ClientConn struct {
	mu     sync.Mutex
	conn   net.Conn
	info   ExportInfo
	handle uint64
}

// NewClientConn wraps a connection that has completed Negotiate.
func NewClientConn(conn net.Conn, info ExportInfo) *ClientConn {
	return &ClientConn{conn: conn, info: info}
}

// Info returns what negotiation reported.
func (c *ClientConn) Info() ExportInfo { return c.info }

// Close closes the connection without NBD_CMD_DISC.
func (c *ClientConn) Close() error { return c.conn.Close() }

// Read fills p from offset off.
func (c *ClientConn) Read(ctx context.Context, p []byte, off int64) error {
	return c.Do(ctx, CmdRead, 0, uint64(off), uint32(len(p)), nil, p)
}

// Write writes p at off, with FUA when fua is set.
func (c *ClientConn) Write(ctx context.Context, p []byte, off int64, fua bool) error {
	var flags uint16
	if fua {
		flags = CmdFlagFUA
	}
	return c.Do(ctx, CmdWrite, flags, uint64(off), uint32(len(p)), p, nil)
}

// Flush asks the server to make completed writes durable.
func (c *ClientConn) Flush(ctx context.Context) error {
	return c.Do(ctx, CmdFlush, 0, 0, 0, nil, nil)
}

// Trim discards length bytes at off.
func (c *ClientConn) Trim(ctx context.Context, off, length int64) error {
	return c.Do(ctx, CmdTrim, 0, uint64(off), uint32(length), nil, nil)
}

// Disconnect sends NBD_CMD_DISC and closes the connection.
func (c *ClientConn) Disconnect() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	hdr := appendRequest(nil, CmdDisc, 0, c.nextHandle(), 0, 0)
	_, err := c.conn.Write(hdr)
	if cerr := c.conn.Close(); err == nil {
		err = cerr
	}
	return err
}

func (c *ClientConn) nextHandle() uint64 {
	c.handle++
	return c.handle
}

func appendRequest(dst []byte, cmd, flags uint16, handle, off uint64, length uint32) []byte {
	dst = binary.BigEndian.AppendUint32(dst, MagicRequest)
	dst = binary.BigEndian.AppendUint16(dst, flags)
	dst = binary.BigEndian.AppendUint16(dst, cmd)
	dst = binary.BigEndian.AppendUint64(dst, handle)
	dst = binary.BigEndian.AppendUint64(dst, off)
	return binary.BigEndian.AppendUint32(dst, length)
}

// Do sends one request exactly as given — length need not match payload,
// so tests can send lies — and waits for its simple reply. payload, if
// non-nil, is sent after the header. On a successful reply, len(readInto)
// bytes of data are read into readInto (pass it only for reads). A server
// error returns a *RemoteError wrapping ErrRemote and leaves the connection
// usable; after an error reading data the connection is out of step and
// should be closed. ctx cancels blocked I/O; a connection whose request was
// cancelled mid-way is out of step too and should be closed.
func (c *ClientConn) Do(ctx context.Context, cmd, flags uint16, off uint64, length uint32, payload, readInto []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if dl, ok := ctx.Deadline(); ok {
		c.conn.SetDeadline(dl)
		defer c.conn.SetDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { c.conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	handle := c.nextHandle()
	msg := appendRequest(make([]byte, 0, RequestHeaderLen+len(payload)), cmd, flags, handle, off, length)
	msg = append(msg, payload...)
	if _, err := c.conn.Write(msg); err != nil {
		return fmt.Errorf("nbd: sending command %d: %w", cmd, err)
	}
	var rep [ReplyHeaderLen]byte
	if _, err := io.ReadFull(c.conn, rep[:]); err != nil {
		return fmt.Errorf("nbd: reading reply to command %d: %w", cmd, err)
	}
	if m := binary.BigEndian.Uint32(rep[0:]); m != MagicSimpleReply {
		return fmt.Errorf("%w: reply magic %#x", ErrProtocol, m)
	}
	if h := binary.BigEndian.Uint64(rep[8:]); h != handle {
		return fmt.Errorf("%w: reply handle %d, want %d", ErrProtocol, h, handle)
	}
	if errno := binary.BigEndian.Uint32(rep[4:]); errno != 0 {
		return &RemoteError{Cmd: cmd, Errno: errno}
	}
	if len(readInto) > 0 {
		if _, err := io.ReadFull(c.conn, readInto); err != nil {
			return fmt.Errorf("nbd: reading %d bytes of data: %w", len(readInto), err)
		}
	}
	return nil
}
