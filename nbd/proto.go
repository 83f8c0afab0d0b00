package nbd

import "github.com/pojntfx/go-nbd/pkg/protocol"

// Wire constants of the NBD protocol (NetworkBlockDevice/nbd doc/proto.md).
// Where go-nbd's protocol package names a value it is used; the rest are
// defined here. All integers on the wire are big-endian.
const (
	// Handshake.
	MagicNBD      = protocol.NEGOTIATION_MAGIC_OLDSTYLE // "NBDMAGIC"
	MagicOption   = protocol.NEGOTIATION_MAGIC_OPTION   // "IHAVEOPT"
	MagicOptReply = protocol.NEGOTIATION_MAGIC_REPLY    // option reply magic

	FlagFixedNewstyle  = protocol.NEGOTIATION_HANDSHAKE_FLAG_FIXED_NEWSTYLE // server handshake flag
	FlagNoZeroes       = uint16(1 << 1)                                     // server handshake flag
	FlagCFixedNewstyle = uint32(1 << 0)                                     // client flag
	FlagCNoZeroes      = uint32(1 << 1)                                     // client flag

	// Options.
	OptExportName      = uint32(1)
	OptAbort           = protocol.NEGOTIATION_ID_OPTION_ABORT
	OptList            = protocol.NEGOTIATION_ID_OPTION_LIST
	OptStartTLS        = uint32(5)
	OptInfo            = protocol.NEGOTIATION_ID_OPTION_INFO
	OptGo              = protocol.NEGOTIATION_ID_OPTION_GO
	OptStructuredReply = uint32(8)

	// Option reply types.
	RepAck              = protocol.NEGOTIATION_TYPE_REPLY_ACK
	RepServer           = protocol.NEGOTIATION_TYPE_REPLY_SERVER
	RepInfo             = protocol.NEGOTIATION_TYPE_REPLY_INFO
	RepErrUnsup         = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNSUPPORTED
	RepErrPolicy        = uint32(2 | 1<<31)
	RepErrInvalid       = uint32(3 | 1<<31)
	RepErrPlatform      = uint32(4 | 1<<31)
	RepErrTLSReqd       = uint32(5 | 1<<31)
	RepErrUnknown       = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNKNOWN
	RepErrShutdown      = uint32(7 | 1<<31)
	RepErrBlockSizeReqd = uint32(8 | 1<<31)
	RepErrTooBig        = uint32(9 | 1<<31)

	// Info types in NBD_REP_INFO replies and NBD_OPT_INFO/GO requests.
	InfoExport      = protocol.NEGOTIATION_TYPE_INFO_EXPORT
	InfoName        = protocol.NEGOTIATION_TYPE_INFO_NAME
	InfoDescription = protocol.NEGOTIATION_TYPE_INFO_DESCRIPTION
	InfoBlockSize   = protocol.NEGOTIATION_TYPE_INFO_BLOCKSIZE

	// Transmission flags.
	FlagHasFlags        = protocol.NEGOTIATION_REPLY_FLAGS_HAS_FLAGS
	FlagReadOnly        = uint16(1 << 1)
	FlagSendFlush       = uint16(1 << 2)
	FlagSendFUA         = uint16(1 << 3)
	FlagRotational      = uint16(1 << 4)
	FlagSendTrim        = uint16(1 << 5)
	FlagSendWriteZeroes = uint16(1 << 6)
	FlagCanMultiConn    = protocol.NEGOTIATION_REPLY_FLAGS_CAN_MULTI_CONN

	// Transmission.
	MagicRequest     = protocol.TRANSMISSION_MAGIC_REQUEST
	MagicSimpleReply = protocol.TRANSMISSION_MAGIC_REPLY

	CmdRead        = protocol.TRANSMISSION_TYPE_REQUEST_READ
	CmdWrite       = protocol.TRANSMISSION_TYPE_REQUEST_WRITE
	CmdDisc        = protocol.TRANSMISSION_TYPE_REQUEST_DISC
	CmdFlush       = uint16(3)
	CmdTrim        = uint16(4)
	CmdCache       = uint16(5)
	CmdWriteZeroes = uint16(6)

	CmdFlagFUA    = uint16(1 << 0)
	CmdFlagNoHole = uint16(1 << 1)

	// Error values in simple replies.
	ErrnoPerm     = protocol.TRANSMISSION_ERROR_EPERM
	ErrnoIO       = uint32(5)
	ErrnoNoMem    = uint32(12)
	ErrnoInval    = protocol.TRANSMISSION_ERROR_EINVAL
	ErrnoNoSpc    = uint32(28)
	ErrnoOverflow = uint32(75)
	ErrnoNotSup   = uint32(95)
	ErrnoShutdown = uint32(108)

	// RequestHeaderLen and ReplyHeaderLen are the sizes of a transmission
	// request header and a simple reply header on the wire.
	RequestHeaderLen = 28
	ReplyHeaderLen   = 16
)

// Limits the server enforces and advertises.
const (
	// MinBlockSize, PreferredBlockSize and MaxBlockSize are advertised in
	// NBD_INFO_BLOCK_SIZE. MaxBlockSize is the largest READ or WRITE payload
	// the server accepts; larger requests get EINVAL.
	MinBlockSize       = 1
	PreferredBlockSize = 4096
	MaxBlockSize       = 32 << 20

	// MaxOptionLen bounds an option's data before it is allocated (room for
	// a MaxNameLen name and a few info requests). A longer option is skipped
	// without allocation and answered with NBD_REP_ERR_TOO_BIG if it is at
	// most MaxSkipOptionLen long; beyond that, or for NBD_OPT_EXPORT_NAME
	// (which has no error reply), the connection is closed.
	MaxOptionLen     = 8192
	MaxSkipOptionLen = 1 << 20

	// MaxDiscardLen is the largest WRITE payload the server reads and
	// discards when it refuses the write (out of range, too large,
	// read-only). A WRITE header announcing more than this closes the
	// connection: a length that absurd means the stream is not a sane NBD
	// client's, and skipping it could stall the connection for gigabytes.
	MaxDiscardLen = 64 << 20

	// MaxNameLen bounds export names and descriptions (the spec's limit).
	MaxNameLen = 4096
)
