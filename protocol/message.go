package protocol

import "strconv"

// Version is the protocol version this package speaks. It is carried in every
// frame header and in Hello; peers must speak the same version.
const Version = 8

// Kind is a frame's type byte. Each Message type has exactly one Kind.
type Kind uint8

// Frame kinds. Handshake kinds appear only on the raw connection (or as the
// first frame of a stream, StreamOpen); the others only on yamux streams.
const (
	KindHello         Kind = 1 // handshake: both directions, first frame
	KindRefuse        Kind = 2 // any time: why the sender closes
	KindAuthChallenge Kind = 3 // handshake: auth mode and nonce
	KindAuthResponse  Kind = 4 // handshake: HMAC over both nonces
	KindAuthOK        Kind = 5 // handshake: dialer accepted the acceptor
	KindStreamOpen    Kind = 6 // first frame on each yamux stream

	KindState     Kind = 16 // control
	KindPing      Kind = 17 // control
	KindPingAck   Kind = 18 // control
	KindSyncStart Kind = 19 // control
	KindSyncDone  Kind = 20 // control
	KindBitmap    Kind = 21 // control
	KindResize    Kind = 22 // control

	KindWrite     Kind = 32 // data
	KindAck       Kind = 33 // data
	KindFlush     Kind = 34 // data
	KindFlushAck  Kind = 35 // data
	KindRead      Kind = 36 // data
	KindReadReply Kind = 37 // data

	KindResyncData      Kind = 48 // resync
	KindResyncAck       Kind = 49 // resync
	KindChecksumRequest Kind = 50 // resync
	KindChecksumReply   Kind = 51 // resync
	KindResyncZero      Kind = 52 // resync
)

var kindNames = map[Kind]string{
	KindHello:           "Hello",
	KindRefuse:          "Refuse",
	KindAuthChallenge:   "AuthChallenge",
	KindAuthResponse:    "AuthResponse",
	KindAuthOK:          "AuthOK",
	KindStreamOpen:      "StreamOpen",
	KindState:           "State",
	KindPing:            "Ping",
	KindPingAck:         "PingAck",
	KindSyncStart:       "SyncStart",
	KindSyncDone:        "SyncDone",
	KindBitmap:          "Bitmap",
	KindResize:          "Resize",
	KindWrite:           "Write",
	KindAck:             "Ack",
	KindFlush:           "Flush",
	KindFlushAck:        "FlushAck",
	KindRead:            "Read",
	KindReadReply:       "ReadReply",
	KindResyncData:      "ResyncData",
	KindResyncAck:       "ResyncAck",
	KindChecksumRequest: "ChecksumRequest",
	KindChecksumReply:   "ChecksumReply",
	KindResyncZero:      "ResyncZero",
}

// String returns the message name, or "Kind(N)" for an undefined kind.
func (k Kind) String() string {
	if n, ok := kindNames[k]; ok {
		return n
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// Message is any frame payload. Each concrete type in this package is a
// Message both as a value and as a pointer (Kind has a value receiver), so
// Send accepts either; Recv always returns pointers (*Write, *Ack, ...).
// Messages hold no locks or channels and may be copied freely.
type Message interface{ Kind() Kind }

// UUIDs are DRBD-style generation identifiers (0 = none).
type UUIDs struct {
	Current uint64
	Bitmap  uint64
	History [2]uint64
}

// Limits, checked by the encoder and by the decoder before any allocation.
const (
	// HeaderLen is the size of the frame header.
	HeaderLen = 20
	// MaxData is the largest Write.Data, ResyncData.Data or ReadReply.Data,
	// and the largest Read.Length.
	MaxData = 32 << 20
	// MaxPayload is the largest frame payload of any kind: MaxData plus the
	// fixed fields of a Write.
	MaxPayload = MaxData + writeFixed
	// MaxResource is the longest resource name, in bytes.
	MaxResource = 255
	// MaxReason is the longest Refuse reason, in bytes; longer reasons are cut.
	MaxReason = 1024
	// MaxBitmapWords is the most words in one Bitmap message, keeping its
	// payload at or below 1 MiB.
	MaxBitmapWords = (1<<20 - bitmapFixed) / 8
	// MaxSums is the most checksums in one ChecksumReply, and the most blocks
	// one ChecksumRequest may cover.
	MaxSums = 1 << 16
	// NonceLen is the size of an authentication nonce; MACLen of an HMAC-SHA256.
	NonceLen = 32
	MACLen   = 32
)

// Hello is the first frame each way after the transport (TCP or TLS) is up.
// Version, Resource, Size and BitmapBlock must match the peer's.
type Hello struct {
	Version     uint32
	Resource    string
	Size        uint64 // disk size in bytes
	NodeID      uint64
	BitmapBlock uint32 // bytes of disk per dirty-bitmap bit
}

// Roles for State.Role.
const (
	RoleSecondary uint8 = 0
	RolePrimary   uint8 = 1
)

// Disk states for State.Disk. 0-3 are ordered from worst to best;
// DiskDiskless is apart: the sender has no disk and holds no data.
const (
	DiskUnknown      uint8 = 0 // DUnknown: no disk state known
	DiskInconsistent uint8 = 1 // a sync target that has not finished
	DiskOutdated     uint8 = 2 // consistent, but known to miss newer writes
	DiskUpToDate     uint8 = 3
	DiskDiskless     uint8 = 4 // detached (an I/O error, or urbd detach-disk): its I/O goes to the peer
)

// Flags for State.Flags. Bits 0-15 are defined here; bits 16-31 are free
// for the replication engine. Unknown bits are carried unchanged.
const (
	// FlagDiscardMyData: the sender gives up its changes after split brain and
	// asks to become sync target (connect --discard-my-data).
	FlagDiscardMyData uint32 = 1 << 0
	// FlagWasPrimaryCrashed: the sender was Primary when it last stopped
	// without a clean shutdown.
	FlagWasPrimaryCrashed uint32 = 1 << 1
	// FlagSuspended: the sender's application I/O is suspended waiting for a peer.
	FlagSuspended uint32 = 1 << 2
	// FlagResyncPaused: the sender's operator paused resyncs (urbd pause-sync).
	FlagResyncPaused uint32 = 1 << 3
)

// State is sent on the control stream on connect and on every local state change.
type State struct {
	Role  uint8 // RoleSecondary, RolePrimary
	Disk  uint8 // DiskUnknown ... DiskUpToDate
	UUIDs UUIDs
	Flags uint32 // FlagDiscardMyData, FlagWasPrimaryCrashed, ...
	// OutOfSync is the number of bitmap blocks the sender has marked out
	// of sync (its changes since a split brain).
	OutOfSync uint64
}

// Ping asks for a PingAck carrying the same Seq.
type Ping struct{ Seq uint64 }

// PingAck answers a Ping.
type PingAck struct{ Seq uint64 }

// Refuse tells the peer why the sender closes the connection; the sender
// closes right after sending it. Err turns it into an error.
type Refuse struct {
	Code   uint32 // RefuseSize, RefuseAuth, ...
	Reason string // at most MaxReason bytes
}

// Sync directions for SyncStart.Direction: the role the sender takes.
const (
	SyncSource   uint8 = 0 // sender copies its blocks to the receiver
	SyncTarget   uint8 = 1 // sender receives blocks from the receiver
	VerifySource uint8 = 2 // sender requests checksums (online verify)
	VerifyTarget uint8 = 3 // sender answers checksum requests
)

// SyncStart announces a resync or verify; the Bitmap messages that follow it
// (if any) describe the regions to copy.
type SyncStart struct {
	Direction   uint8 // SyncSource ... VerifyTarget, the sender's role
	BitmapBlock uint32
	TotalBits   uint64
}

// SyncDone ends a resync or verify.
type SyncDone struct{ Flags uint32 }

// SyncDone flags.
const (
	SyncAborted uint32 = 1 << 0 // the sync stopped before covering every bit
	SyncVerify  uint32 = 1 << 1 // ends an online verify (after SyncStart VerifySource), not a resync
)

// Bitmap carries a chunk of a dirty bitmap: Words[i] holds bits
// (FirstWord+i)*64 ... (FirstWord+i)*64+63 (bit j of a word is bit
// word*64+j). Last marks the final chunk. At most MaxBitmapWords words, and
// the chunk never reaches past TotalBits.
type Bitmap struct {
	FirstWord uint64
	TotalBits uint64
	Words     []uint64
	Last      bool
}

// Write flags.
const (
	FlagFUA    uint32 = 1 << 0 // durable before AckDone
	FlagTrim   uint32 = 1 << 1 // discard Length bytes; Data empty
	FlagZero   uint32 = 1 << 2 // write Length zero bytes; Data empty
	FlagNoHole uint32 = 1 << 3 // with FlagZero: keep the blocks allocated

	writeFlagsKnown = FlagFUA | FlagTrim | FlagZero | FlagNoHole
)

// Write is a replicated application write, sent on the data stream in the
// order the primary issued it.
//
// For a plain write Length == len(Data). With FlagTrim or FlagZero Data is
// empty and Length gives the range. A Write returned by Recv has Data aliasing
// the stream's receive buffer, and the *Write itself is reused by the stream:
// both are valid only until the next Recv on that stream (use RecvOwned or
// Clone to keep them).
type Write struct {
	Seq    uint64
	Offset uint64
	Flags  uint32
	Length uint32
	Data   []byte
}

// Clone returns a copy of w whose Data does not alias w.Data.
func (w *Write) Clone() *Write {
	c := *w
	if w.Data != nil {
		c.Data = append([]byte(nil), w.Data...)
	}
	return &c
}

// Ack types (Ack.Type).
const (
	AckReceived uint8 = 1 // protocol B: the Write arrived
	AckDone     uint8 = 2 // the Write is on disk (durable if it had FlagFUA)
)

// Error codes for Ack.Err, FlushAck.Err, ResyncAck.Err, ReadReply.Err: Linux
// errno values.
const (
	CodeOK      uint32 = 0
	CodeIO      uint32 = 5  // EIO
	CodeInvalid uint32 = 22 // EINVAL
	CodeNoSpace uint32 = 28 // ENOSPC
)

// Ack answers the Write with the same Seq.
//
// The brief's field name Kind would collide with the Message method Kind(),
// so the ack level is called Type.
type Ack struct {
	Seq  uint64
	Type uint8 // AckReceived or AckDone
	Err  uint32
}

// Flush asks the peer to make every Write acknowledged before it durable.
type Flush struct{ Seq uint64 }

// FlushAck answers the Flush with the same Seq.
type FlushAck struct {
	Seq uint64
	Err uint32
}

// Read asks the peer for Length bytes of its disk at Offset: a Primary whose
// own disk failed to read them serves them from the peer. It travels on the
// data stream, so the peer answers it (ReadReply, same Seq) only after every
// Write received before it was applied. Length is 1..MaxData.
type Read struct {
	Seq    uint64
	Offset uint64
	Length uint32
}

// ReadReply answers the Read with the same Seq: Err CodeOK and exactly the
// requested bytes in Data, or Err CodeOK, Zero and no Data when every
// requested byte is zero (the range crosses the link as a flag, as a
// ResyncZero does), or an error code (CodeIO, CodeInvalid, ...) and no Data.
// Data is at most MaxData bytes; the frame format cannot tell whether it is
// as long as the Read asked for, so the requester checks that.
//
// A ReadReply returned by Recv is freshly allocated, but its Data aliases the
// stream's receive buffer like Write.Data: it is valid only until the next
// Recv on that stream (use RecvOwned or Clone to keep it).
type ReadReply struct {
	Seq  uint64
	Err  uint32
	Zero bool // the range reads as zeroes; Data is empty
	Data []byte
}

// Clone returns a copy of r whose Data does not alias r.Data.
func (r *ReadReply) Clone() *ReadReply {
	c := *r
	if r.Data != nil {
		c.Data = append([]byte(nil), r.Data...)
	}
	return &c
}

// ResyncData carries a block range from sync source to sync target. A
// ResyncData returned by Recv aliases the receive buffer like Write.Data.
type ResyncData struct {
	Seq    uint64
	Offset uint64
	Data   []byte
}

// Clone returns a copy of r whose Data does not alias r.Data.
func (r *ResyncData) Clone() *ResyncData {
	c := *r
	if r.Data != nil {
		c.Data = append([]byte(nil), r.Data...)
	}
	return &c
}

// ResyncZero is a resync copy of Length bytes at Offset that read as zeroes
// on the source: the target makes the range read as zeroes (a hole where
// its disk can punch one) instead of receiving them. Length is 1..MaxData.
// The target answers it with a ResyncAck, as a ResyncData.
type ResyncZero struct {
	Seq    uint64
	Offset uint64
	Length uint32
}

// ResyncAck answers a ResyncData or a ResyncZero from target to source.
type ResyncAck struct {
	Seq    uint64
	Offset uint64
	Length uint32
	Err    uint32
}

// ChecksumRequest asks for SHA-256 sums of the Length bytes at Offset, one per
// BlockSize bytes (the last block may be shorter). BlockSize is not zero and
// the range covers at most MaxSums blocks.
type ChecksumRequest struct {
	Seq       uint64
	Offset    uint64
	Length    uint32
	BlockSize uint32
}

// Sum is a SHA-256 digest.
type Sum = [32]byte

// ChecksumReply answers a ChecksumRequest with one Sum per block.
type ChecksumReply struct {
	Seq       uint64
	Offset    uint64
	BlockSize uint32
	Sums      []Sum
}

// AuthChallenge is the sender's authentication mode and nonce.
type AuthChallenge struct {
	Mode  uint8 // AuthNone or AuthHMAC
	Nonce [NonceLen]byte
}

// Authentication modes.
const (
	AuthNone uint8 = 0 // no shared secret configured
	AuthHMAC uint8 = 1 // HMAC-SHA256 challenge-response over the shared secret
)

// AuthResponse proves knowledge of the shared secret (see SPEC.md).
type AuthResponse struct{ MAC [MACLen]byte }

// AuthOK: the dialer accepted the acceptor; yamux starts after it.
type AuthOK struct{}

// Resize operations (Resize.Op), in the order an online resize uses them.
const (
	// ResizeQuery asks the receiver whether it can grow to Size (its
	// disk must hold exactly Size bytes): it answers ResizeAnswer with
	// the same Size, and a Reason when it cannot, changing nothing.
	ResizeQuery uint8 = 0
	// ResizeAnswer answers a ResizeQuery or a ResizeCommit with its
	// Size; Reason says why the sender cannot grow (or did not) when not
	// empty.
	ResizeAnswer uint8 = 1
	// ResizeCommit tells the receiver to grow to Size, which it accepted
	// in an answer to a ResizeQuery; it answers with ResizeAnswer once
	// grown.
	ResizeCommit uint8 = 2
)

// Resize carries an online resize between the nodes (`urbd resize`): the
// node that runs it queries the peer, grows itself, then commits the peer.
type Resize struct {
	Op     uint8  // ResizeQuery, ResizeAnswer or ResizeCommit
	Flags  uint32 // ResizeAssumeClean
	Size   uint64 // disk size in bytes
	Reason string // ResizeAnswer only: why the receiver cannot grow; at most MaxReason bytes
}

// ResizeAssumeClean (Resize.Flags, on a query and its commit): the new part
// holds the same bytes on both disks (zeroes, say), so neither node marks
// it out of sync and nothing is resynced (`urbd resize --assume-clean`).
const ResizeAssumeClean uint32 = 1 << 0

// Stream identifiers carried by StreamOpen.
const (
	StreamControl uint8 = 0
	StreamData    uint8 = 1
	StreamResync  uint8 = 2
)

// StreamOpen is the first frame on each yamux stream and names its role.
type StreamOpen struct{ Stream uint8 }

// Kind implementations.
func (Hello) Kind() Kind           { return KindHello }
func (Refuse) Kind() Kind          { return KindRefuse }
func (AuthChallenge) Kind() Kind   { return KindAuthChallenge }
func (AuthResponse) Kind() Kind    { return KindAuthResponse }
func (AuthOK) Kind() Kind          { return KindAuthOK }
func (StreamOpen) Kind() Kind      { return KindStreamOpen }
func (State) Kind() Kind           { return KindState }
func (Ping) Kind() Kind            { return KindPing }
func (PingAck) Kind() Kind         { return KindPingAck }
func (SyncStart) Kind() Kind       { return KindSyncStart }
func (SyncDone) Kind() Kind        { return KindSyncDone }
func (Bitmap) Kind() Kind          { return KindBitmap }
func (Resize) Kind() Kind          { return KindResize }
func (Write) Kind() Kind           { return KindWrite }
func (Ack) Kind() Kind             { return KindAck }
func (Flush) Kind() Kind           { return KindFlush }
func (FlushAck) Kind() Kind        { return KindFlushAck }
func (Read) Kind() Kind            { return KindRead }
func (ReadReply) Kind() Kind       { return KindReadReply }
func (ResyncData) Kind() Kind      { return KindResyncData }
func (ResyncAck) Kind() Kind       { return KindResyncAck }
func (ChecksumRequest) Kind() Kind { return KindChecksumRequest }
func (ChecksumReply) Kind() Kind   { return KindChecksumReply }
func (ResyncZero) Kind() Kind      { return KindResyncZero }
