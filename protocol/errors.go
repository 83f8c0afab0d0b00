package protocol

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors. Every error returned by this package that has one of these
// causes wraps it, so callers test with errors.Is, never by text.
var (
	// ErrBadMagic: a frame did not start with the magic bytes "URBD".
	ErrBadMagic = errors.New("protocol: bad frame magic")
	// ErrChecksum: a frame's CRC32C does not match its header and payload.
	ErrChecksum = errors.New("protocol: frame checksum mismatch")
	// ErrTooLarge: a frame's payload length exceeds the limit for its kind.
	ErrTooLarge = errors.New("protocol: frame too large")
	// ErrUnknownKind: a frame carries a kind this version does not define, or
	// Send was given a Message type this package cannot encode.
	ErrUnknownKind = errors.New("protocol: unknown message kind")
	// ErrMalformed: a frame's payload does not parse as its kind (wrong length,
	// out-of-range field, trailing bytes), or the frame sequence skipped.
	ErrMalformed = errors.New("protocol: malformed message")
	// ErrTruncated: DecodeFrame was given fewer bytes than one whole frame.
	ErrTruncated = errors.New("protocol: truncated frame")
	// ErrInvalid: a message given to Send or AppendFrame cannot be encoded
	// (a field out of range); nothing was sent and the stream stays usable.
	ErrInvalid = errors.New("protocol: invalid message")
	// ErrUnexpected: a well-formed message arrived where the protocol does not
	// allow it (a Write during the handshake, a Hello after it).
	ErrUnexpected = errors.New("protocol: unexpected message")

	// ErrAuth: the peer has the wrong shared secret, or only one side has one.
	ErrAuth = errors.New("protocol: authentication failed")
	// ErrSizeMismatch: the two disks differ in size.
	ErrSizeMismatch = errors.New("protocol: disk size mismatch")
	// ErrResourceMismatch: the two sides configure different resource names.
	ErrResourceMismatch = errors.New("protocol: resource name mismatch")
	// ErrBitmapBlockMismatch: the two sides use different bitmap block sizes.
	ErrBitmapBlockMismatch = errors.New("protocol: bitmap block size mismatch")
	// ErrVersion: the peer speaks another protocol version.
	ErrVersion = errors.New("protocol: version mismatch")
	// ErrRefused: the peer sent Refuse, or a TLS alert that ended the
	// handshake (then with ErrTLS); the error text carries its reason.
	// When the Refuse code names a cause (RefuseSize...) the error also wraps
	// the matching sentinel (ErrSizeMismatch...).
	ErrRefused = errors.New("protocol: refused by peer")
	// ErrClosed: the session was closed (locally, by the peer, or after an
	// error on any stream). Session.Err tells why.
	ErrClosed = errors.New("protocol: session closed")
	// ErrPeerLeft: the dialer closed the connection after authenticating,
	// while the acceptor set up the streams (SPEC.md, handshake step 5).
	// A node does so with a connection it dialed that the tie-break between
	// two connections drops, so this is most often no failure at all; the
	// dialer reports its own reason if it had one.
	ErrPeerLeft = errors.New("protocol: the peer closed the connection while the streams were set up")
)

// Refuse codes: why a peer refuses a connection. Codes up to 255 are reserved
// for this package; the replication engine may use its own codes above that.
const (
	RefuseOther       uint32 = 0  // see Reason
	RefuseVersion     uint32 = 1  // protocol version mismatch
	RefuseResource    uint32 = 2  // resource name mismatch
	RefuseSize        uint32 = 3  // disk size mismatch
	RefuseBitmapBlock uint32 = 4  // bitmap block size mismatch
	RefuseAuth        uint32 = 5  // wrong or missing shared secret
	RefuseSplitBrain  uint32 = 6  // both sides changed data independently
	RefuseBothPrimary uint32 = 7  // both sides are Primary
	RefuseBusy        uint32 = 8  // the acceptor cannot take a connection now (Config.Busy)
	RefuseProtocol    uint32 = 9  // the peer sent a malformed or unexpected frame
	RefuseSameNode    uint32 = 10 // both sides have the same node id
	RefuseTLS         uint32 = 11 // TLS is configured on one side only
)

// refuseSentinel maps a Refuse code to the sentinel a local check would have
// returned for the same cause, or nil.
func refuseSentinel(code uint32) error {
	switch code {
	case RefuseVersion:
		return ErrVersion
	case RefuseResource:
		return ErrResourceMismatch
	case RefuseSize:
		return ErrSizeMismatch
	case RefuseBitmapBlock:
		return ErrBitmapBlockMismatch
	case RefuseAuth:
		return ErrAuth
	case RefuseProtocol:
		return ErrMalformed
	case RefuseSameNode:
		return ErrSameNode
	case RefuseTLS:
		return ErrTLS
	case RefuseBusy:
		return ErrBusy
	}
	return nil
}

// RefusedError is the error a received Refuse stands for. It wraps
// ErrRefused and, when Code names a cause (RefuseSize...), the matching
// sentinel (ErrSizeMismatch...); its text is the peer's reason.
type RefusedError struct {
	Code   uint32
	Reason string
}

func (e *RefusedError) Error() string {
	if e.Reason == "" {
		return fmt.Sprintf("protocol: refused by peer (code %d)", e.Code)
	}
	if c := refuseSentinel(e.Code); c != nil && strings.HasPrefix(e.Reason, causeWords(c)+": ") {
		// A check both sides make (see refusal): the refused node says
		// what the refusing one says, not who found it first.
		return "protocol: " + e.Reason
	}
	return "protocol: refused by peer: " + e.Reason
}

// Unwrap returns ErrRefused and the sentinel matching Code, if any.
func (e *RefusedError) Unwrap() []error {
	if s := refuseSentinel(e.Code); s != nil {
		return []error{ErrRefused, s}
	}
	return []error{ErrRefused}
}

// Err returns the error r stands for, a *RefusedError.
func (r *Refuse) Err() error {
	return &RefusedError{Code: r.Code, Reason: r.Reason}
}

// causeWords is a sentinel's text without the package prefix: "disk size
// mismatch" for ErrSizeMismatch.
func causeWords(cause error) string {
	return strings.TrimPrefix(cause.Error(), "protocol: ")
}

// refusal builds the Refuse to send and the local error for a check both
// sides of a connection make (sizes, names, secrets...). local says what
// differs from this node's point of view, peer from the receiver's. The
// Refuse's reason is cause's words and peer, and a RefusedError built from it
// reads as the local error does on this side ("protocol: disk size mismatch:
// local ..., peer ..."), so a node logs one line for a mismatch whichever
// of the two found it first on each attempt.
func refusal(code uint32, cause error, local, peer string) (*Refuse, error) {
	return &Refuse{Code: code, Reason: causeWords(cause) + ": " + peer}, fmt.Errorf("%w: %s", cause, local)
}
