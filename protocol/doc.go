// Package protocol is urbd's peer wire protocol: the frame format, the
// message types, the handshake (version and geometry check, HMAC-SHA256
// challenge-response over a shared secret, optional mutual TLS) and the
// session of three yamux streams that the replication engine talks over.
// SPEC.md in this directory defines every byte.
//
// # Using it
//
// Dial or accept a net.Conn, then call Handshake on it (dialer=true on the
// side that dialed). The returned Session carries three Streams:
//
//   - Control: State, Ping/PingAck, Refuse, SyncStart, Bitmap, SyncDone.
//   - Data: Write, Ack, Flush, FlushAck, in the order the primary issued them;
//     Read and ReadReply, a Read being answered only after every Write sent
//     before it on the stream was applied.
//   - Resync: ResyncData, ResyncZero, ResyncAck, ChecksumRequest, ChecksumReply.
//
// Keeping replicated writes and resync traffic on separate streams lets each
// be flow-controlled on its own (yamux windows of 16 MiB per stream), so a
// resync never sits in front of an application write.
//
// # Ordering rules
//
//   - Frames on one Stream arrive in the order they were sent; each frame
//     carries a per-stream sequence number and a gap closes the session. There
//     is no ordering between streams: a Flush on the data stream orders only
//     Writes on the data stream.
//   - Send of a small frame returns once the frame is queued in the stream's
//     coalescing buffer; the stream's flusher goroutine hands it to yamux
//     right away (in the same write as any frames queued meanwhile). A frame
//     with a payload over 64 KiB, and a Refuse, are handed to yamux before
//     Send returns. Flush waits for everything queued. None of this means the
//     peer received a frame; only an Ack, FlushAck or ResyncAck says that,
//     and frames still queued when a session dies are lost with it.
//   - Nothing the replication engine sends can pass the handshake: streams
//     exist only after both sides proved the secret and agreed on version,
//     resource name, disk size and bitmap block size.
//
// # Concurrency and buffers
//
// Stream.Send is safe for concurrent use; frames never interleave, and one
// goroutine's frames stay in its order. Small frames are coalesced without
// a timer: a per-stream flusher writes whatever accumulated while its
// previous write was in progress, so a lone frame leaves at once and a
// single goroutine sending Acks in a loop never waits for a syscall (only for
// buffer space). Each Session runs one flusher per stream and one watcher;
// Close waits for all of them. Stream.Recv must be called from one
// goroutine. Recv returns pointers. The high-rate kinds (*Write, *Ack,
// *Flush, *FlushAck, *ResyncData, *ResyncAck) are reused by the Stream, and
// Write.Data, ResyncData.Data and ReadReply.Data alias its receive buffer:
// they are valid only until the next Recv on that Stream (RecvOwned copies
// them). All other messages are freshly allocated and belong to the caller
// (apart from the Data of a ReadReply). Send does not retain the caller's
// messages or buffers after it returns.
//
// # Errors
//
// Every error wraps a sentinel (ErrChecksum, ErrTooLarge, ErrAuth,
// ErrSizeMismatch, ...) for errors.Is. Any malformed input from the peer, and
// any transport error, closes that session only (Session.Done fires,
// Session.Err tells why); after malformed input the peer is first told why
// with a best-effort Refuse (RefuseProtocol) on the control stream. Nothing
// in this package panics on peer input, and every length read from the wire
// is checked against a per-kind limit before a buffer is allocated.
package protocol
