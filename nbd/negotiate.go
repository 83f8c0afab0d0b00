package nbd

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// negotiation is the server side of the fixed newstyle handshake, over a
// buffered reader and writer. It is a plain state holder so that tests and
// the fuzz target can drive it over any stream.
type negotiation struct {
	br       *bufio.Reader
	bw       *bufio.Writer
	lookup   func(string) (*Export, error)
	list     func() []string
	noZeroes bool // the client set NBD_FLAG_C_NO_ZEROES
}

// errAbort ends negotiation after NBD_OPT_ABORT: not an error of the client.
var errAbort = errors.New("nbd: client aborted negotiation")

// negotiated is the outcome of a successful negotiation.
type negotiated struct {
	exp     *Export
	name    string // the name the client asked for
	flags   uint16 // transmission flags sent
	release func() // from exp.Attach; nil if none
}

// attach runs exp.Attach, if any, for a client that selected exp.
func attach(exp *Export) (release func(), err error) {
	if exp.Attach == nil {
		return nil, nil
	}
	return exp.Attach()
}

// transmissionFlags returns the flags advertised for exp.
func transmissionFlags(exp *Export) uint16 {
	f := FlagHasFlags | FlagSendFlush
	if exp.ReadOnly {
		f |= FlagReadOnly
	} else {
		f |= FlagSendFUA | FlagSendTrim | FlagSendWriteZeroes
	}
	if exp.MultiConn {
		f |= FlagCanMultiConn
	}
	return f
}

// run performs the handshake and the option haggling. It returns the export
// the client chose (NBD_OPT_GO or NBD_OPT_EXPORT_NAME), errAbort, or an error
// that closes the connection (I/O or a protocol violation wrapping
// ErrBadClient). Every reply is flushed before the next read.
func (n *negotiation) run() (negotiated, error) {
	var hdr [18]byte
	binary.BigEndian.PutUint64(hdr[0:], MagicNBD)
	binary.BigEndian.PutUint64(hdr[8:], MagicOption)
	binary.BigEndian.PutUint16(hdr[16:], FlagFixedNewstyle|FlagNoZeroes)
	if _, err := n.bw.Write(hdr[:]); err != nil {
		return negotiated{}, err
	}
	if err := n.bw.Flush(); err != nil {
		return negotiated{}, err
	}
	var cf [4]byte
	if _, err := io.ReadFull(n.br, cf[:]); err != nil {
		return negotiated{}, err
	}
	cflags := binary.BigEndian.Uint32(cf[:])
	if cflags&^(FlagCFixedNewstyle|FlagCNoZeroes) != 0 {
		return negotiated{}, fmt.Errorf("%w: unknown client flags %#x", ErrBadClient, cflags)
	}
	n.noZeroes = cflags&FlagCNoZeroes != 0

	var opt [16]byte
	for {
		if _, err := io.ReadFull(n.br, opt[:]); err != nil {
			return negotiated{}, err
		}
		if m := binary.BigEndian.Uint64(opt[0:]); m != MagicOption {
			return negotiated{}, fmt.Errorf("%w: option magic %#x", ErrBadClient, m)
		}
		id := binary.BigEndian.Uint32(opt[8:])
		length := binary.BigEndian.Uint32(opt[12:])
		if length > MaxOptionLen {
			if id == OptExportName || length > MaxSkipOptionLen {
				return negotiated{}, fmt.Errorf("%w: option %d of %d bytes", ErrBadClient, id, length)
			}
			if _, err := io.CopyN(io.Discard, n.br, int64(length)); err != nil {
				return negotiated{}, err
			}
			if err := n.replyErr(id, RepErrTooBig, fmt.Sprintf("option of %d bytes is longer than %d", length, MaxOptionLen)); err != nil {
				return negotiated{}, err
			}
			if err := n.bw.Flush(); err != nil {
				return negotiated{}, err
			}
			continue
		}
		data := make([]byte, length)
		if _, err := io.ReadFull(n.br, data); err != nil {
			return negotiated{}, err
		}
		res, done, err := n.option(id, data)
		if err != nil || done {
			return res, err
		}
		if err := n.bw.Flush(); err != nil {
			return negotiated{}, err
		}
	}
}

// option handles one option. done reports that negotiation ended with res.
func (n *negotiation) option(id uint32, data []byte) (res negotiated, done bool, err error) {
	switch id {
	case OptExportName:
		name := string(data)
		exp, lerr := n.resolve(name)
		if lerr != nil {
			// NBD_OPT_EXPORT_NAME has no error reply: the spec says close.
			return negotiated{}, true, fmt.Errorf("nbd: export %q refused: %w", name, lerr)
		}
		release, aerr := attach(exp)
		if aerr != nil {
			return negotiated{}, true, fmt.Errorf("nbd: export %q refused: %w", name, aerr)
		}
		flags := transmissionFlags(exp)
		var b [10 + 124]byte
		binary.BigEndian.PutUint64(b[0:], uint64(exp.Backend.Size()))
		binary.BigEndian.PutUint16(b[8:], flags)
		out := b[:]
		if n.noZeroes {
			out = b[:10]
		}
		res := negotiated{exp: exp, name: name, flags: flags, release: release}
		if _, err := n.bw.Write(out); err != nil {
			res.detach()
			return negotiated{}, true, err
		}
		if err := n.bw.Flush(); err != nil {
			res.detach()
			return negotiated{}, true, err
		}
		return res, true, nil
	case OptAbort:
		// The client may close without reading the ACK; ignore errors.
		_ = n.reply(id, RepAck, nil)
		_ = n.bw.Flush()
		return negotiated{}, true, errAbort
	case OptList:
		if len(data) != 0 {
			return negotiated{}, false, n.replyErr(id, RepErrInvalid, "NBD_OPT_LIST takes no data")
		}
		if n.list != nil {
			for _, name := range n.list() {
				if len(name) > MaxNameLen {
					continue
				}
				p := make([]byte, 4+len(name))
				binary.BigEndian.PutUint32(p, uint32(len(name)))
				copy(p[4:], name)
				if err := n.reply(id, RepServer, p); err != nil {
					return negotiated{}, false, err
				}
			}
		}
		return negotiated{}, false, n.reply(id, RepAck, nil)
	case OptInfo, OptGo:
		return n.infoGo(id, data)
	case OptStartTLS:
		return negotiated{}, false, n.replyErr(id, RepErrUnsup, "TLS is not supported by this server")
	default:
		return negotiated{}, false, n.replyErr(id, RepErrUnsup, fmt.Sprintf("option %d is not supported", id))
	}
}

// parseInfoRequest decodes the data of NBD_OPT_INFO and NBD_OPT_GO: a
// 32-bit name length, the name, a 16-bit count and that many 16-bit info
// types.
func parseInfoRequest(data []byte) (name string, infos []uint16, err error) {
	if len(data) < 6 {
		return "", nil, fmt.Errorf("%w: info request of %d bytes", ErrBadClient, len(data))
	}
	nl := binary.BigEndian.Uint32(data)
	if uint64(nl) > uint64(len(data)-6) || nl > MaxNameLen {
		return "", nil, fmt.Errorf("%w: name length %d in %d bytes", ErrBadClient, nl, len(data))
	}
	name = string(data[4 : 4+nl])
	rest := data[4+nl:]
	count := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*count {
		return "", nil, fmt.Errorf("%w: %d info requests in %d bytes", ErrBadClient, count, len(rest))
	}
	infos = make([]uint16, count)
	for i := range infos {
		infos[i] = binary.BigEndian.Uint16(rest[2*i:])
	}
	return name, infos, nil
}

func (n *negotiation) infoGo(id uint32, data []byte) (negotiated, bool, error) {
	name, infos, err := parseInfoRequest(data)
	if err != nil {
		return negotiated{}, false, n.replyErr(id, RepErrInvalid, err.Error())
	}
	exp, lerr := n.resolve(name)
	var release func()
	if lerr == nil && id == OptGo {
		release, lerr = attach(exp)
	}
	if lerr != nil {
		typ := RepErrUnknown
		switch {
		case errors.Is(lerr, ErrShutdown):
			typ = RepErrShutdown
		case errors.Is(lerr, ErrNotServing):
			typ = RepErrPolicy
		}
		return negotiated{}, false, n.replyErr(id, typ, lerr.Error())
	}
	res := negotiated{exp: exp, name: name, flags: transmissionFlags(exp), release: release}
	out, done, err := n.goReplies(id, name, infos, res)
	if err != nil {
		res.detach() // the client never got to use the export
		return negotiated{}, done, err
	}
	return out, done, nil
}

// detach releases what Attach took: when the client leaves, or when it
// never got to use the export.
func (r negotiated) detach() {
	if r.release != nil {
		r.release()
	}
}

// goReplies sends the replies to NBD_OPT_INFO or NBD_OPT_GO for the export
// res names.
func (n *negotiation) goReplies(id uint32, name string, infos []uint16, res negotiated) (negotiated, bool, error) {
	exp, flags := res.exp, res.flags
	var p [18]byte
	binary.BigEndian.PutUint16(p[0:], InfoExport)
	binary.BigEndian.PutUint64(p[2:], uint64(exp.Backend.Size()))
	binary.BigEndian.PutUint16(p[10:], flags)
	if err := n.reply(id, RepInfo, p[:12]); err != nil {
		return negotiated{}, false, err
	}
	for _, t := range infos {
		var s string
		switch t {
		case InfoName:
			s = exp.Name
			if s == "" {
				s = name
			}
		case InfoDescription:
			s = exp.Description
			if s == "" {
				continue
			}
		default:
			continue
		}
		if len(s) > MaxNameLen {
			s = s[:MaxNameLen]
		}
		b := make([]byte, 2+len(s))
		binary.BigEndian.PutUint16(b, t)
		copy(b[2:], s)
		if err := n.reply(id, RepInfo, b); err != nil {
			return negotiated{}, false, err
		}
	}
	binary.BigEndian.PutUint16(p[0:], InfoBlockSize)
	binary.BigEndian.PutUint32(p[2:], MinBlockSize)
	binary.BigEndian.PutUint32(p[6:], PreferredBlockSize)
	binary.BigEndian.PutUint32(p[10:], MaxBlockSize)
	if err := n.reply(id, RepInfo, p[:14]); err != nil {
		return negotiated{}, false, err
	}
	if err := n.reply(id, RepAck, nil); err != nil {
		return negotiated{}, false, err
	}
	if id == OptInfo {
		return negotiated{}, false, nil
	}
	return res, true, n.bw.Flush()
}

// resolve calls lookup and turns a nil export into ErrUnknownExport.
func (n *negotiation) resolve(name string) (*Export, error) {
	if n.lookup == nil {
		return nil, fmt.Errorf("%w %q", ErrUnknownExport, name)
	}
	exp, err := n.lookup(name)
	if err != nil {
		return nil, err
	}
	if exp == nil || exp.Backend == nil {
		return nil, fmt.Errorf("%w %q", ErrUnknownExport, name)
	}
	return exp, nil
}

// reply writes one option reply (buffered).
func (n *negotiation) reply(id, typ uint32, data []byte) error {
	var h [20]byte
	binary.BigEndian.PutUint64(h[0:], MagicOptReply)
	binary.BigEndian.PutUint32(h[8:], id)
	binary.BigEndian.PutUint32(h[12:], typ)
	binary.BigEndian.PutUint32(h[16:], uint32(len(data)))
	if _, err := n.bw.Write(h[:]); err != nil {
		return err
	}
	_, err := n.bw.Write(data)
	return err
}

// replyErr writes an error reply carrying msg for a human, cut to
// MaxNameLen bytes.
func (n *negotiation) replyErr(id, typ uint32, msg string) error {
	if len(msg) > MaxNameLen {
		msg = msg[:MaxNameLen]
	}
	return n.reply(id, typ, []byte(msg))
}
