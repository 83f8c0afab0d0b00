package protocol

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// magic opens every frame.
var magic = [4]byte{'U', 'R', 'B', 'D'}

// castagnoli is the CRC32C table; hash/crc32 uses SSE4.2/ARM CRC instructions for it.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

var be = binary.BigEndian

// Header is a decoded frame header (see SPEC.md, "Frame").
type Header struct {
	Version uint8
	Kind    Kind
	Flags   uint16 // reserved, zero in version 1
	Seq     uint32 // per-direction, per-stream frame counter
	Length  uint32 // payload bytes after the header
	CRC     uint32 // CRC32C over header bytes 0..15 and the payload
}

// Fixed payload sizes (bytes) of each kind, or of its fixed part when it has
// a variable tail.
const (
	helloFixed      = 26
	refuseFixed     = 6
	resizeFixed     = 16
	challengeLen    = 1 + NonceLen
	stateLen        = 48
	seqLen          = 8
	syncStartLen    = 16
	syncDoneLen     = 4
	bitmapFixed     = 24
	writeFixed      = 24
	ackLen          = 16
	flushAckLen     = 12
	rangeLen        = 24
	readReplyFixed  = 16
	resyncFixed     = 16
	resyncAckLen    = 24
	checksumReqLen  = 24
	checksumFixed   = 24
	streamOpenLen   = 1
	authResponseLen = MACLen
)

// maxPayloadFor is the largest payload a frame of kind k may announce; it is
// checked before the payload is read or any buffer allocated. ok is false for
// a kind this version does not define.
func maxPayloadFor(k Kind) (max uint32, ok bool) {
	switch k {
	case KindHello:
		return helloFixed + MaxResource, true
	case KindRefuse:
		return refuseFixed + MaxReason, true
	case KindAuthChallenge:
		return challengeLen, true
	case KindAuthResponse:
		return authResponseLen, true
	case KindAuthOK:
		return 0, true
	case KindStreamOpen:
		return streamOpenLen, true
	case KindState:
		return stateLen, true
	case KindPing, KindPingAck, KindFlush:
		return seqLen, true
	case KindSyncStart:
		return syncStartLen, true
	case KindSyncDone:
		return syncDoneLen, true
	case KindBitmap:
		return bitmapFixed + 8*MaxBitmapWords, true
	case KindResize:
		return resizeFixed + MaxReason, true
	case KindWrite:
		return writeFixed + MaxData, true
	case KindAck:
		return ackLen, true
	case KindFlushAck:
		return flushAckLen, true
	case KindRead:
		return rangeLen, true
	case KindReadReply:
		return readReplyFixed + MaxData, true
	case KindResyncData:
		return resyncFixed + MaxData, true
	case KindResyncAck:
		return resyncAckLen, true
	case KindChecksumRequest:
		return checksumReqLen, true
	case KindChecksumReply:
		return checksumFixed + 32*MaxSums, true
	case KindResyncZero:
		return rangeLen, true
	}
	return 0, false
}

// wire is implemented by the pointer form of every message type.
type wire interface {
	Message
	// layout validates the message and returns the size of its fixed part
	// (encoded by put) and its bulk tail (sent as is, never copied by put).
	layout() (fixed int, bulk []byte, err error)
	// put encodes the fixed part into b, len(b) == fixed from layout.
	put(b []byte)
}

// wireOf returns the encodable form of m, or nil for a foreign Message type.
// Pointer forms are used as they are; value forms are copied.
func wireOf(m Message) wire {
	if w, ok := m.(wire); ok {
		return w
	}
	switch v := m.(type) {
	case Hello:
		return &v
	case Refuse:
		return &v
	case AuthChallenge:
		return &v
	case AuthResponse:
		return &v
	case AuthOK:
		return &v
	case StreamOpen:
		return &v
	case State:
		return &v
	case Ping:
		return &v
	case PingAck:
		return &v
	case SyncStart:
		return &v
	case SyncDone:
		return &v
	case Bitmap:
		return &v
	case Resize:
		return &v
	case Write:
		return &v
	case Ack:
		return &v
	case Flush:
		return &v
	case FlushAck:
		return &v
	case Read:
		return &v
	case ReadReply:
		return &v
	case ResyncData:
		return &v
	case ResyncAck:
		return &v
	case ChecksumRequest:
		return &v
	case ChecksumReply:
		return &v
	case ResyncZero:
		return &v
	}
	return nil
}

// putHeader fills hdr (HeaderLen bytes) except the CRC and returns the CRC
// state over bytes 0..15.
func putHeader(hdr []byte, k Kind, seq, length uint32) uint32 {
	copy(hdr[0:4], magic[:])
	hdr[4] = Version
	hdr[5] = byte(k)
	be.PutUint16(hdr[6:8], 0)
	be.PutUint32(hdr[8:12], seq)
	be.PutUint32(hdr[12:16], length)
	return crc32.Update(0, castagnoli, hdr[:16])
}

// AppendFrame appends one whole frame carrying m, with frame sequence seq, to
// dst and returns the extended slice. It copies any bulk data; Stream.Send
// does not. It fails with ErrUnknownKind for a foreign Message type and
// ErrInvalid for a message that cannot be encoded.
func AppendFrame(dst []byte, seq uint32, m Message) ([]byte, error) {
	w := wireOf(m)
	if w == nil {
		return dst, fmt.Errorf("%w: %T", ErrUnknownKind, m)
	}
	fixed, bulk, err := w.layout()
	if err != nil {
		return dst, err
	}
	n := HeaderLen + fixed + len(bulk)
	start := len(dst)
	dst = grow(dst, n)
	f := dst[start : start+n]
	crc := putHeader(f, w.Kind(), seq, uint32(fixed+len(bulk)))
	w.put(f[HeaderLen : HeaderLen+fixed])
	copy(f[HeaderLen+fixed:], bulk)
	crc = crc32.Update(crc, castagnoli, f[HeaderLen:])
	be.PutUint32(f[16:20], crc)
	return dst, nil
}

// grow extends b by n bytes, reallocating if needed.
func grow(b []byte, n int) []byte {
	if cap(b)-len(b) >= n {
		return b[:len(b)+n]
	}
	nb := make([]byte, len(b)+n, 2*cap(b)+n)
	copy(nb, b)
	return nb
}

// parseHeader decodes and checks a frame header: magic, version, reserved
// flags, known kind and the length limit for that kind.
func parseHeader(b []byte) (Header, error) {
	var h Header
	if [4]byte(b[0:4]) != magic {
		return h, fmt.Errorf("%w: % x", ErrBadMagic, b[0:4])
	}
	h.Version = b[4]
	h.Kind = Kind(b[5])
	h.Flags = be.Uint16(b[6:8])
	h.Seq = be.Uint32(b[8:12])
	h.Length = be.Uint32(b[12:16])
	h.CRC = be.Uint32(b[16:20])
	if h.Version != Version {
		return h, fmt.Errorf("%w: frame version %d, local version %d", ErrVersion, h.Version, Version)
	}
	max, ok := maxPayloadFor(h.Kind)
	if !ok {
		return h, fmt.Errorf("%w: %d", ErrUnknownKind, uint8(h.Kind))
	}
	if h.Flags != 0 {
		return h, fmt.Errorf("%w: %v frame with reserved flags %#x", ErrMalformed, h.Kind, h.Flags)
	}
	if h.Length > max {
		return h, fmt.Errorf("%w: %v frame of %d payload bytes, limit %d", ErrTooLarge, h.Kind, h.Length, max)
	}
	return h, nil
}

// checkCRC verifies the frame checksum over header bytes 0..15 and payload.
func checkCRC(hdr []byte, h Header, payload []byte) error {
	crc := crc32.Update(0, castagnoli, hdr[:16])
	return matchCRC(h, crc32.Update(crc, castagnoli, payload))
}

// matchCRC compares crc, computed over a received frame, with its header's.
func matchCRC(h Header, crc uint32) error {
	if crc != h.CRC {
		return fmt.Errorf("%w: %v frame seq %d: got %#08x, header says %#08x", ErrChecksum, h.Kind, h.Seq, crc, h.CRC)
	}
	return nil
}

// DecodeFrame decodes the first frame in b. It returns the message, its
// header and the number of bytes consumed. Byte-slice fields of the message
// (Write.Data, ResyncData.Data, ReadReply.Data) alias b; everything else is
// copied. Errors: ErrTruncated if b holds less than one frame, ErrBadMagic,
// ErrVersion, ErrUnknownKind, ErrTooLarge, ErrChecksum, ErrMalformed. It
// never panics.
func DecodeFrame(b []byte) (Message, Header, int, error) {
	if len(b) < HeaderLen {
		return nil, Header{}, 0, fmt.Errorf("%w: %d of %d header bytes", ErrTruncated, len(b), HeaderLen)
	}
	h, err := parseHeader(b[:HeaderLen])
	if err != nil {
		return nil, h, 0, err
	}
	n := HeaderLen + int(h.Length)
	if len(b) < n {
		return nil, h, 0, fmt.Errorf("%w: %d of %d frame bytes", ErrTruncated, len(b), n)
	}
	payload := b[HeaderLen:n]
	if err := checkCRC(b[:HeaderLen], h, payload); err != nil {
		return nil, h, 0, err
	}
	m, err := decodePayload(h.Kind, payload, nil)
	if err != nil {
		return nil, h, 0, err
	}
	return m, h, n, nil
}

// dec reads big-endian fields from a payload; a read past the end sets short
// and yields zeroes, so decoders check once at the end.
type dec struct {
	b     []byte
	short bool
}

func (d *dec) take(n int) []byte {
	if n < 0 || len(d.b) < n {
		d.short = true
		d.b = nil
		return nil
	}
	p := d.b[:n:n]
	d.b = d.b[n:]
	return p
}

func (d *dec) u8() uint8 {
	if p := d.take(1); p != nil {
		return p[0]
	}
	return 0
}

func (d *dec) u16() uint16 {
	if p := d.take(2); p != nil {
		return be.Uint16(p)
	}
	return 0
}

func (d *dec) u32() uint32 {
	if p := d.take(4); p != nil {
		return be.Uint32(p)
	}
	return 0
}

func (d *dec) u64() uint64 {
	if p := d.take(8); p != nil {
		return be.Uint64(p)
	}
	return 0
}

// zero reads n reserved bytes and reports whether all are zero.
func (d *dec) zero(n int) bool {
	for _, c := range d.take(n) {
		if c != 0 {
			return false
		}
	}
	return true
}

// done reports an error if the payload was short or has trailing bytes.
func (d *dec) done(k Kind) error {
	if d.short {
		return fmt.Errorf("%w: %v payload too short", ErrMalformed, k)
	}
	if len(d.b) != 0 {
		return fmt.Errorf("%w: %v payload has %d trailing bytes", ErrMalformed, k, len(d.b))
	}
	return nil
}

func malformed(k Kind, format string, args ...any) error {
	return fmt.Errorf("%w: %v: %s", ErrMalformed, k, fmt.Sprintf(format, args...))
}

// recvMsgs holds one reusable message of each high-rate kind, so that a
// Stream's receive path allocates nothing per frame.
type recvMsgs struct {
	write      Write
	ack        Ack
	flush      Flush
	flushAck   FlushAck
	resyncData ResyncData
	resyncAck  ResyncAck
}

// decodePayload decodes the payload of a frame of kind k. Messages of the
// kinds in recvMsgs are decoded into reuse when it is not nil; all others
// are freshly allocated. Bulk data aliases p. The length of p is already
// bounded by maxPayloadFor(k).
func decodePayload(k Kind, p []byte, reuse *recvMsgs) (Message, error) {
	d := dec{b: p}
	var m Message
	switch k {
	case KindHello:
		v := &Hello{}
		v.Version = d.u32()
		v.Size = d.u64()
		v.NodeID = d.u64()
		v.BitmapBlock = d.u32()
		n := d.u16()
		if n > MaxResource {
			return nil, malformed(k, "resource name of %d bytes, limit %d", n, MaxResource)
		}
		v.Resource = string(d.take(int(n)))
		m = v
	case KindRefuse:
		v := &Refuse{}
		v.Code = d.u32()
		n := d.u16()
		if n > MaxReason {
			return nil, malformed(k, "reason of %d bytes, limit %d", n, MaxReason)
		}
		v.Reason = string(d.take(int(n)))
		m = v
	case KindResize:
		v := &Resize{}
		v.Op = d.u8()
		pad := d.zero(1)
		n := d.u16()
		v.Flags = d.u32()
		v.Size = d.u64()
		switch {
		case !pad:
			return nil, malformed(k, "nonzero padding")
		case v.Op > ResizeCommit:
			return nil, malformed(k, "op %d", v.Op)
		case v.Flags&^ResizeAssumeClean != 0:
			return nil, malformed(k, "flags %#x", v.Flags)
		case n > MaxReason:
			return nil, malformed(k, "reason of %d bytes, limit %d", n, MaxReason)
		}
		v.Reason = string(d.take(int(n)))
		m = v
	case KindAuthChallenge:
		v := &AuthChallenge{}
		v.Mode = d.u8()
		copy(v.Nonce[:], d.take(NonceLen))
		if v.Mode > AuthHMAC {
			return nil, malformed(k, "auth mode %d", v.Mode)
		}
		m = v
	case KindAuthResponse:
		v := &AuthResponse{}
		copy(v.MAC[:], d.take(MACLen))
		m = v
	case KindAuthOK:
		m = &AuthOK{}
	case KindStreamOpen:
		v := &StreamOpen{Stream: d.u8()}
		if v.Stream > StreamResync {
			return nil, malformed(k, "stream %d", v.Stream)
		}
		m = v
	case KindState:
		v := &State{}
		v.Role = d.u8()
		v.Disk = d.u8()
		pad := d.zero(2)
		v.Flags = d.u32()
		v.UUIDs.Current = d.u64()
		v.UUIDs.Bitmap = d.u64()
		v.UUIDs.History[0] = d.u64()
		v.UUIDs.History[1] = d.u64()
		v.OutOfSync = d.u64()
		if !pad {
			return nil, malformed(k, "reserved bytes not zero")
		}
		if v.Role > RolePrimary || v.Disk > DiskDiskless {
			return nil, malformed(k, "role %d disk %d", v.Role, v.Disk)
		}
		m = v
	case KindPing:
		m = &Ping{Seq: d.u64()}
	case KindPingAck:
		m = &PingAck{Seq: d.u64()}
	case KindFlush:
		var v *Flush
		if reuse != nil {
			v = &reuse.flush
		} else {
			v = new(Flush)
		}
		*v = Flush{Seq: d.u64()}
		m = v
	case KindSyncStart:
		v := &SyncStart{}
		v.Direction = d.u8()
		pad := d.zero(3)
		v.BitmapBlock = d.u32()
		v.TotalBits = d.u64()
		if !pad {
			return nil, malformed(k, "reserved bytes not zero")
		}
		if v.Direction > VerifyTarget {
			return nil, malformed(k, "direction %d", v.Direction)
		}
		m = v
	case KindSyncDone:
		m = &SyncDone{Flags: d.u32()}
	case KindBitmap:
		v := &Bitmap{}
		v.FirstWord = d.u64()
		v.TotalBits = d.u64()
		last := d.u8()
		pad := d.zero(3)
		n := d.u32()
		if d.short {
			break
		}
		if !pad || last > 1 {
			return nil, malformed(k, "reserved bytes not zero")
		}
		if err := checkBitmap(v.FirstWord, v.TotalBits, uint64(n)); err != nil {
			return nil, err
		}
		v.Last = last == 1
		raw := d.take(8 * int(n))
		if n > 0 && raw != nil {
			v.Words = make([]uint64, n)
			for i := range v.Words {
				v.Words[i] = be.Uint64(raw[8*i:])
			}
		}
		m = v
	case KindWrite:
		var v *Write
		if reuse != nil {
			v = &reuse.write
		} else {
			v = new(Write)
		}
		v.Seq = d.u64()
		v.Offset = d.u64()
		v.Flags = d.u32()
		v.Length = d.u32()
		v.Data = d.b
		d.b = nil
		if err := checkWrite(v.Flags, v.Length, len(v.Data)); err != nil {
			return nil, err
		}
		if len(v.Data) == 0 {
			v.Data = nil
		}
		m = v
	case KindAck:
		var v *Ack
		if reuse != nil {
			v = &reuse.ack
		} else {
			v = new(Ack)
		}
		v.Seq = d.u64()
		v.Type = d.u8()
		pad := d.zero(3)
		v.Err = d.u32()
		if !pad {
			return nil, malformed(k, "reserved bytes not zero")
		}
		if v.Type != AckReceived && v.Type != AckDone {
			return nil, malformed(k, "ack type %d", v.Type)
		}
		m = v
	case KindFlushAck:
		var v *FlushAck
		if reuse != nil {
			v = &reuse.flushAck
		} else {
			v = new(FlushAck)
		}
		*v = FlushAck{Seq: d.u64(), Err: d.u32()}
		m = v
	case KindRead:
		v := &Read{}
		if err := d.byteRange(k, &v.Seq, &v.Offset, &v.Length); err != nil {
			return nil, err
		}
		m = v
	case KindResyncZero:
		v := &ResyncZero{}
		if err := d.byteRange(k, &v.Seq, &v.Offset, &v.Length); err != nil {
			return nil, err
		}
		m = v
	case KindReadReply:
		v := &ReadReply{}
		v.Seq = d.u64()
		v.Err = d.u32()
		flags := d.u32()
		if d.short {
			break
		}
		if flags&^readReplyZero != 0 {
			return nil, malformed(k, "unknown flags %#x", flags&^readReplyZero)
		}
		v.Zero = flags&readReplyZero != 0
		v.Data = d.b
		d.b = nil
		if err := checkReadReply(v.Err, len(v.Data), v.Zero); err != nil {
			return nil, err
		}
		if len(v.Data) == 0 {
			v.Data = nil
		}
		m = v
	case KindResyncData:
		var v *ResyncData
		if reuse != nil {
			v = &reuse.resyncData
		} else {
			v = new(ResyncData)
		}
		v.Seq = d.u64()
		v.Offset = d.u64()
		v.Data = nil
		if len(d.b) > 0 {
			v.Data = d.b
		}
		d.b = nil
		m = v
	case KindResyncAck:
		var v *ResyncAck
		if reuse != nil {
			v = &reuse.resyncAck
		} else {
			v = new(ResyncAck)
		}
		v.Seq = d.u64()
		v.Offset = d.u64()
		v.Length = d.u32()
		v.Err = d.u32()
		m = v
	case KindChecksumRequest:
		v := &ChecksumRequest{}
		v.Seq = d.u64()
		v.Offset = d.u64()
		v.Length = d.u32()
		v.BlockSize = d.u32()
		if !d.short {
			if err := checkChecksumRequest(v.Length, v.BlockSize); err != nil {
				return nil, err
			}
		}
		m = v
	case KindChecksumReply:
		v := &ChecksumReply{}
		v.Seq = d.u64()
		v.Offset = d.u64()
		v.BlockSize = d.u32()
		n := d.u32()
		if d.short {
			break
		}
		if v.BlockSize == 0 || n > MaxSums {
			return nil, malformed(k, "%d sums of %d-byte blocks", n, v.BlockSize)
		}
		raw := d.take(32 * int(n))
		if n > 0 && raw != nil {
			v.Sums = make([]Sum, n)
			for i := range v.Sums {
				copy(v.Sums[i][:], raw[32*i:])
			}
		}
		m = v
	default:
		return nil, fmt.Errorf("%w: %d", ErrUnknownKind, uint8(k))
	}
	if err := d.done(k); err != nil {
		return nil, err
	}
	return m, nil
}

// checkWrite validates a Write's flags against its Length and data size.
func checkWrite(flags, length uint32, data int) error {
	if flags&^writeFlagsKnown != 0 {
		return malformed(KindWrite, "unknown flags %#x", flags&^writeFlagsKnown)
	}
	special := flags & (FlagTrim | FlagZero)
	switch {
	case special == FlagTrim|FlagZero:
		return malformed(KindWrite, "both trim and zero")
	case flags&FlagNoHole != 0 && special != FlagZero:
		return malformed(KindWrite, "no-hole without zero")
	case special != 0 && data != 0:
		return malformed(KindWrite, "trim/zero with %d data bytes", data)
	case special == 0 && int64(length) != int64(data):
		return malformed(KindWrite, "length %d with %d data bytes", length, data)
	case data > MaxData:
		return fmt.Errorf("%w: write of %d bytes, limit %d", ErrTooLarge, data, MaxData)
	}
	return nil
}

// checkRange validates the length of a Read or a ResyncZero (k):
// 1..MaxData.
func checkRange(k Kind, length uint32) error {
	if length == 0 || length > MaxData {
		return malformed(k, "length %d, want 1..%d", length, MaxData)
	}
	return nil
}

// byteRange decodes the layout Read and ResyncZero share: Seq, Offset,
// Length (1..MaxData) and four reserved zero bytes. A short payload is left
// to the caller's length check (d.short).
func (d *dec) byteRange(k Kind, seq, off *uint64, length *uint32) error {
	*seq = d.u64()
	*off = d.u64()
	*length = d.u32()
	pad := d.zero(4)
	if d.short {
		return nil
	}
	if !pad {
		return malformed(k, "reserved bytes not zero")
	}
	return checkRange(k, *length)
}

// putRange encodes the layout Read and ResyncZero share (see byteRange).
func putRange(b []byte, seq, off uint64, length uint32) {
	be.PutUint64(b[0:], seq)
	be.PutUint64(b[8:], off)
	be.PutUint32(b[16:], length)
	b[20], b[21], b[22], b[23] = 0, 0, 0, 0
}

// readReplyZero is ReadReply's flag bit for Zero.
const readReplyZero = 1

// checkReadReply validates a ReadReply: data only with CodeOK, at most
// MaxData bytes; Zero only with CodeOK and no data.
func checkReadReply(code uint32, data int, zero bool) error {
	switch {
	case code != CodeOK && data != 0:
		return malformed(KindReadReply, "error %d with %d data bytes", code, data)
	case zero && code != CodeOK:
		return malformed(KindReadReply, "zero flag with error %d", code)
	case zero && data != 0:
		return malformed(KindReadReply, "zero flag with %d data bytes", data)
	case data > MaxData:
		return malformed(KindReadReply, "%d data bytes, limit %d", data, MaxData)
	}
	return nil
}

// checkBitmap validates a Bitmap chunk: at most MaxBitmapWords words, none
// past TotalBits.
func checkBitmap(first, totalBits, n uint64) error {
	if n > MaxBitmapWords {
		return malformed(KindBitmap, "%d words, limit %d", n, MaxBitmapWords)
	}
	words := totalBits / 64
	if totalBits%64 != 0 {
		words++
	}
	if first > words || n > words-first {
		return malformed(KindBitmap, "words %d..%d past %d bits", first, first+n, totalBits)
	}
	return nil
}

// checkChecksumRequest validates a ChecksumRequest's block geometry.
func checkChecksumRequest(length, blockSize uint32) error {
	if blockSize == 0 {
		return malformed(KindChecksumRequest, "zero block size")
	}
	blocks := uint64(length) / uint64(blockSize)
	if uint64(length)%uint64(blockSize) != 0 {
		blocks++
	}
	if blocks > MaxSums {
		return malformed(KindChecksumRequest, "%d blocks, limit %d", blocks, MaxSums)
	}
	return nil
}

// invalid wraps ErrInvalid for an unencodable message.
func invalid(k Kind, err error) error {
	return fmt.Errorf("%w: %v: %v", ErrInvalid, k, err)
}

// Encoders: layout validates with the same rules as the decoder, so nothing
// is ever sent that the peer would reject as malformed.

func (m *Hello) layout() (int, []byte, error) {
	if len(m.Resource) > MaxResource {
		return 0, nil, fmt.Errorf("%w: Hello: resource name of %d bytes, limit %d", ErrInvalid, len(m.Resource), MaxResource)
	}
	return helloFixed + len(m.Resource), nil, nil
}

func (m *Hello) put(b []byte) {
	be.PutUint32(b[0:], m.Version)
	be.PutUint64(b[4:], m.Size)
	be.PutUint64(b[12:], m.NodeID)
	be.PutUint32(b[20:], m.BitmapBlock)
	be.PutUint16(b[24:], uint16(len(m.Resource)))
	copy(b[26:], m.Resource)
}

// reason returns the Reason cut to MaxReason bytes.
func (m *Refuse) reason() string {
	if len(m.Reason) > MaxReason {
		return m.Reason[:MaxReason]
	}
	return m.Reason
}

func (m *Refuse) layout() (int, []byte, error) { return refuseFixed + len(m.reason()), nil, nil }

func (m *Refuse) put(b []byte) {
	r := m.reason()
	be.PutUint32(b[0:], m.Code)
	be.PutUint16(b[4:], uint16(len(r)))
	copy(b[6:], r)
}

// reason returns the Reason cut to MaxReason bytes.
func (m *Resize) reason() string {
	if len(m.Reason) > MaxReason {
		return m.Reason[:MaxReason]
	}
	return m.Reason
}

func (m *Resize) layout() (int, []byte, error) {
	if m.Op > ResizeCommit {
		return 0, nil, fmt.Errorf("%w: Resize: op %d", ErrInvalid, m.Op)
	}
	if m.Flags&^ResizeAssumeClean != 0 {
		return 0, nil, fmt.Errorf("%w: Resize: flags %#x", ErrInvalid, m.Flags)
	}
	return resizeFixed + len(m.reason()), nil, nil
}

func (m *Resize) put(b []byte) {
	r := m.reason()
	b[0] = m.Op
	b[1] = 0
	be.PutUint16(b[2:], uint16(len(r)))
	be.PutUint32(b[4:], m.Flags)
	be.PutUint64(b[8:], m.Size)
	copy(b[16:], r)
}

func (m *AuthChallenge) layout() (int, []byte, error) {
	if m.Mode > AuthHMAC {
		return 0, nil, fmt.Errorf("%w: AuthChallenge: mode %d", ErrInvalid, m.Mode)
	}
	return challengeLen, nil, nil
}

func (m *AuthChallenge) put(b []byte) {
	b[0] = m.Mode
	copy(b[1:], m.Nonce[:])
}

func (m *AuthResponse) layout() (int, []byte, error) { return authResponseLen, nil, nil }
func (m *AuthResponse) put(b []byte)                 { copy(b, m.MAC[:]) }

func (m *AuthOK) layout() (int, []byte, error) { return 0, nil, nil }
func (m *AuthOK) put([]byte)                   {}

func (m *StreamOpen) layout() (int, []byte, error) {
	if m.Stream > StreamResync {
		return 0, nil, fmt.Errorf("%w: StreamOpen: stream %d", ErrInvalid, m.Stream)
	}
	return streamOpenLen, nil, nil
}
func (m *StreamOpen) put(b []byte) { b[0] = m.Stream }

func (m *State) layout() (int, []byte, error) {
	if m.Role > RolePrimary || m.Disk > DiskDiskless {
		return 0, nil, fmt.Errorf("%w: State: role %d disk %d", ErrInvalid, m.Role, m.Disk)
	}
	return stateLen, nil, nil
}

func (m *State) put(b []byte) {
	b[0] = m.Role
	b[1] = m.Disk
	b[2], b[3] = 0, 0
	be.PutUint32(b[4:], m.Flags)
	be.PutUint64(b[8:], m.UUIDs.Current)
	be.PutUint64(b[16:], m.UUIDs.Bitmap)
	be.PutUint64(b[24:], m.UUIDs.History[0])
	be.PutUint64(b[32:], m.UUIDs.History[1])
	be.PutUint64(b[40:], m.OutOfSync)
}

func (m *Ping) layout() (int, []byte, error)    { return seqLen, nil, nil }
func (m *Ping) put(b []byte)                    { be.PutUint64(b, m.Seq) }
func (m *PingAck) layout() (int, []byte, error) { return seqLen, nil, nil }
func (m *PingAck) put(b []byte)                 { be.PutUint64(b, m.Seq) }
func (m *Flush) layout() (int, []byte, error)   { return seqLen, nil, nil }
func (m *Flush) put(b []byte)                   { be.PutUint64(b, m.Seq) }

func (m *SyncStart) layout() (int, []byte, error) {
	if m.Direction > VerifyTarget {
		return 0, nil, fmt.Errorf("%w: SyncStart: direction %d", ErrInvalid, m.Direction)
	}
	return syncStartLen, nil, nil
}

func (m *SyncStart) put(b []byte) {
	b[0] = m.Direction
	b[1], b[2], b[3] = 0, 0, 0
	be.PutUint32(b[4:], m.BitmapBlock)
	be.PutUint64(b[8:], m.TotalBits)
}

func (m *SyncDone) layout() (int, []byte, error) { return syncDoneLen, nil, nil }
func (m *SyncDone) put(b []byte)                 { be.PutUint32(b, m.Flags) }

func (m *Bitmap) layout() (int, []byte, error) {
	if err := checkBitmap(m.FirstWord, m.TotalBits, uint64(len(m.Words))); err != nil {
		return 0, nil, invalid(KindBitmap, err)
	}
	return bitmapFixed + 8*len(m.Words), nil, nil
}

func (m *Bitmap) put(b []byte) {
	be.PutUint64(b[0:], m.FirstWord)
	be.PutUint64(b[8:], m.TotalBits)
	b[16] = 0
	if m.Last {
		b[16] = 1
	}
	b[17], b[18], b[19] = 0, 0, 0
	be.PutUint32(b[20:], uint32(len(m.Words)))
	for i, w := range m.Words {
		be.PutUint64(b[bitmapFixed+8*i:], w)
	}
}

func (m *Write) layout() (int, []byte, error) {
	if err := checkWrite(m.Flags, m.Length, len(m.Data)); err != nil {
		return 0, nil, invalid(KindWrite, err)
	}
	return writeFixed, m.Data, nil
}

func (m *Write) put(b []byte) {
	be.PutUint64(b[0:], m.Seq)
	be.PutUint64(b[8:], m.Offset)
	be.PutUint32(b[16:], m.Flags)
	be.PutUint32(b[20:], m.Length)
}

func (m *Ack) layout() (int, []byte, error) {
	if m.Type != AckReceived && m.Type != AckDone {
		return 0, nil, fmt.Errorf("%w: Ack: type %d", ErrInvalid, m.Type)
	}
	return ackLen, nil, nil
}

func (m *Ack) put(b []byte) {
	be.PutUint64(b[0:], m.Seq)
	b[8] = m.Type
	b[9], b[10], b[11] = 0, 0, 0
	be.PutUint32(b[12:], m.Err)
}

func (m *FlushAck) layout() (int, []byte, error) { return flushAckLen, nil, nil }

func (m *FlushAck) put(b []byte) {
	be.PutUint64(b[0:], m.Seq)
	be.PutUint32(b[8:], m.Err)
}

func (m *Read) layout() (int, []byte, error) {
	if err := checkRange(KindRead, m.Length); err != nil {
		return 0, nil, invalid(KindRead, err)
	}
	return rangeLen, nil, nil
}

func (m *Read) put(b []byte) { putRange(b, m.Seq, m.Offset, m.Length) }

func (m *ResyncZero) layout() (int, []byte, error) {
	if err := checkRange(KindResyncZero, m.Length); err != nil {
		return 0, nil, invalid(KindResyncZero, err)
	}
	return rangeLen, nil, nil
}

func (m *ResyncZero) put(b []byte) { putRange(b, m.Seq, m.Offset, m.Length) }

func (m *ReadReply) layout() (int, []byte, error) {
	if err := checkReadReply(m.Err, len(m.Data), m.Zero); err != nil {
		return 0, nil, invalid(KindReadReply, err)
	}
	return readReplyFixed, m.Data, nil
}

func (m *ReadReply) put(b []byte) {
	be.PutUint64(b[0:], m.Seq)
	be.PutUint32(b[8:], m.Err)
	var flags uint32
	if m.Zero {
		flags = readReplyZero
	}
	be.PutUint32(b[12:], flags)
}

func (m *ResyncData) layout() (int, []byte, error) {
	if len(m.Data) > MaxData {
		return 0, nil, fmt.Errorf("%w: ResyncData of %d bytes, limit %d", ErrInvalid, len(m.Data), MaxData)
	}
	return resyncFixed, m.Data, nil
}

func (m *ResyncData) put(b []byte) {
	be.PutUint64(b[0:], m.Seq)
	be.PutUint64(b[8:], m.Offset)
}

func (m *ResyncAck) layout() (int, []byte, error) { return resyncAckLen, nil, nil }

func (m *ResyncAck) put(b []byte) {
	be.PutUint64(b[0:], m.Seq)
	be.PutUint64(b[8:], m.Offset)
	be.PutUint32(b[16:], m.Length)
	be.PutUint32(b[20:], m.Err)
}

func (m *ChecksumRequest) layout() (int, []byte, error) {
	if err := checkChecksumRequest(m.Length, m.BlockSize); err != nil {
		return 0, nil, invalid(KindChecksumRequest, err)
	}
	return checksumReqLen, nil, nil
}

func (m *ChecksumRequest) put(b []byte) {
	be.PutUint64(b[0:], m.Seq)
	be.PutUint64(b[8:], m.Offset)
	be.PutUint32(b[16:], m.Length)
	be.PutUint32(b[20:], m.BlockSize)
}

func (m *ChecksumReply) layout() (int, []byte, error) {
	if m.BlockSize == 0 || len(m.Sums) > MaxSums {
		return 0, nil, fmt.Errorf("%w: ChecksumReply: %d sums of %d-byte blocks", ErrInvalid, len(m.Sums), m.BlockSize)
	}
	return checksumFixed + 32*len(m.Sums), nil, nil
}

func (m *ChecksumReply) put(b []byte) {
	be.PutUint64(b[0:], m.Seq)
	be.PutUint64(b[8:], m.Offset)
	be.PutUint32(b[16:], m.BlockSize)
	be.PutUint32(b[20:], uint32(len(m.Sums)))
	for i := range m.Sums {
		copy(b[checksumFixed+32*i:], m.Sums[i][:])
	}
}
