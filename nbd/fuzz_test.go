package nbd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"
)

// FuzzNegotiation feeds arbitrary client bytes (after the greeting) to the
// server's option haggling: it must end with a result or an error, never
// panic, and never allocate beyond the option bound.
func FuzzNegotiation(f *testing.F) {
	opt := func(id uint32, data []byte) []byte {
		b := binary.BigEndian.AppendUint64(nil, MagicOption)
		b = binary.BigEndian.AppendUint32(b, id)
		b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
		return append(b, data...)
	}
	flags := binary.BigEndian.AppendUint32(nil, FlagCFixedNewstyle|FlagCNoZeroes)
	f.Add(append(append([]byte{}, flags...), opt(OptGo, infoRequest("", InfoName, InfoBlockSize))...))
	f.Add(append(append([]byte{}, flags...), opt(OptExportName, []byte("disk"))...))
	f.Add(append(append(append([]byte{}, flags...), opt(OptList, nil)...), opt(OptAbort, nil)...))
	f.Add(append(append(append([]byte{}, flags...), opt(OptInfo, infoRequest("nope"))...), opt(OptStructuredReply, nil)...))
	f.Add(append(append([]byte{}, flags...), opt(OptGo, []byte{0xff, 0xff, 0xff, 0xff, 0, 0})...))
	f.Add(append(append([]byte{}, flags...), opt(OptGo, nil)[:16]...))
	f.Add([]byte{0, 0, 0, 9})
	b := newMemBackend(4096)
	exp := &Export{Name: "disk", Backend: b}
	lookup := func(name string) (*Export, error) {
		if name == "" || name == "disk" {
			return exp, nil
		}
		return nil, ErrUnknownExport
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		n := negotiation{
			br:     bufio.NewReader(bytes.NewReader(in)),
			bw:     bufio.NewWriter(io.Discard),
			lookup: lookup,
			list:   func() []string { return []string{"disk"} },
		}
		res, err := n.run()
		if err == nil && res.exp != exp {
			t.Fatalf("negotiation succeeded without the export: %+v", res)
		}
	})
}

// pipeConn is a net.Conn reading from a fixed input and discarding output.
type pipeConn struct {
	r io.Reader
	w io.Writer
}

func (c *pipeConn) Read(p []byte) (int, error)         { return c.r.Read(p) }
func (c *pipeConn) Write(p []byte) (int, error)        { return c.w.Write(p) }
func (c *pipeConn) Close() error                       { return nil }
func (c *pipeConn) LocalAddr() net.Addr                { return &net.UnixAddr{Name: "fuzz", Net: "unix"} }
func (c *pipeConn) RemoteAddr() net.Addr               { return &net.UnixAddr{Name: "fuzz", Net: "unix"} }
func (c *pipeConn) SetDeadline(t time.Time) error      { return nil }
func (c *pipeConn) SetReadDeadline(t time.Time) error  { return nil }
func (c *pipeConn) SetWriteDeadline(t time.Time) error { return nil }

// FuzzRequest feeds arbitrary bytes to the transmission phase of a
// connection that negotiated a 64 KiB export. The memory backend slices its
// data by the offsets it is given, so any range check the server misses
// panics; every reply written must carry the simple reply magic.
func FuzzRequest(f *testing.F) {
	req := func(typ, flags uint16, cookie, off uint64, length uint32, payload []byte) []byte {
		b := binary.BigEndian.AppendUint32(nil, MagicRequest)
		b = binary.BigEndian.AppendUint16(b, flags)
		b = binary.BigEndian.AppendUint16(b, typ)
		b = binary.BigEndian.AppendUint64(b, cookie)
		b = binary.BigEndian.AppendUint64(b, off)
		b = binary.BigEndian.AppendUint32(b, length)
		return append(b, payload...)
	}
	f.Add(req(CmdRead, 0, 1, 0, 4096, nil))
	f.Add(append(req(CmdWrite, CmdFlagFUA, 2, 512, 4, []byte("abcd")), req(CmdFlush, 0, 3, 0, 0, nil)...))
	f.Add(req(CmdWriteZeroes, CmdFlagNoHole, 4, 60000, 5536, nil))
	f.Add(req(CmdTrim, 0, 5, 65535, 2, nil))
	f.Add(req(CmdWrite, 0, 6, 65530, 10, make([]byte, 10)))
	f.Add(req(CmdRead, 0, 7, ^uint64(0), 1, nil))
	f.Add(append(req(CmdDisc, 0, 8, 0, 0, nil), req(CmdRead, 0, 9, 0, 1, nil)...))
	f.Add(req(77, 0xffff, 10, 0, 0, nil))

	prefix := binary.BigEndian.AppendUint32(nil, FlagCFixedNewstyle|FlagCNoZeroes)
	prefix = binary.BigEndian.AppendUint64(prefix, MagicOption)
	prefix = binary.BigEndian.AppendUint32(prefix, OptExportName)
	prefix = binary.BigEndian.AppendUint32(prefix, 0)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	f.Fuzz(func(t *testing.T, in []byte) {
		b := newMemBackend(64 << 10)
		srv := &Server{
			Logger:           log,
			MaxInFlightBytes: 1 << 20,
			Lookup:           func(string) (*Export, error) { return &Export{Backend: b}, nil },
		}
		var out bytes.Buffer
		c := newSrvConn(srv, &pipeConn{r: io.MultiReader(bytes.NewReader(prefix), bytes.NewReader(in)), w: &out})
		c.serve(context.Background())
		// Greeting (18) and export reply (10), then simple replies.
		p := out.Bytes()
		if len(p) < 28 {
			t.Fatalf("only %d bytes written", len(p))
		}
		p = p[28:]
		if len(p) > 0 && (len(p) < ReplyHeaderLen || binary.BigEndian.Uint32(p) != MagicSimpleReply) {
			t.Fatalf("first reply %x", p[:min(len(p), 16)])
		}
	})
}
