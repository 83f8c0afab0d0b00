package nbd

import (
	"context"
	"errors"
	"hash/crc32"
)

// Backend is the storage behind one NBD export. The file backend serves a plain
// disk; replica.Node implements it to mirror writes to a peer.
//
// Contract:
//   - Methods are called concurrently from many goroutines. The server never has
//     two overlapping writes (WriteAt, Trim, WriteZeroes) in flight at once: a
//     request that overlaps an earlier one still in flight waits for it, so
//     overlapping writes reach the backend in the order the client sent them.
//   - Buffers passed in are owned by the caller and valid only until the method
//     returns; a backend that keeps data (a send queue) copies it.
//   - Offsets and lengths are already checked against Size(): off >= 0 and
//     off+len <= Size().
//   - fua asks for the data to be durable before the method returns, as if a
//     Flush followed.
//   - Flush makes every write that completed before Flush was called durable.
//   - An error wrapping ErrInvalid is answered with EINVAL, ErrNoSpace with
//     ENOSPC, ErrReadOnly with EPERM, ErrShutdown with ESHUTDOWN; any other error
//     with EIO. The connection stays open in every case.
type Backend interface {
	Size() int64
	ReadAt(ctx context.Context, p []byte, off int64) error
	WriteAt(ctx context.Context, p []byte, off int64, fua bool) error
	// Trim discards the range; later reads may return old data or zeroes.
	Trim(ctx context.Context, off, length int64, fua bool) error
	// WriteZeroes makes the range read back as zeroes. noHole asks that the
	// blocks stay allocated.
	WriteZeroes(ctx context.Context, off, length int64, fua, noHole bool) error
	Flush(ctx context.Context) error
}

// SummedWriter is implemented by a Backend that needs the CRC-32C
// (Castagnoli) of write payloads, as replica.Node does for the frames it
// sends to its peer. Before reading each write's payload the server asks
// WantSums; if true, it computes the checksum piece by piece while the
// payload arrives from the client, while those bytes are still in the CPU's
// cache, and calls WriteAtSummed instead of WriteAt, with sum the checksum
// of exactly p (crc32.Checksum(p, crc32.MakeTable(crc32.Castagnoli))).
// Otherwise it calls WriteAt. The rest of Backend's contract applies
// unchanged.
type SummedWriter interface {
	WantSums() bool
	WriteAtSummed(ctx context.Context, p []byte, off int64, fua bool, sum uint32) error
}

// sumPiece is the most of a write payload the server reads before it adds
// those bytes to the checksum for a SummedWriter: small enough to still be
// in the processor's second-level cache, and larger than what one read of a
// unix or TCP socket usually returns, so that the pieces add no reads (64
// KiB pieces doubled the Primary's read system calls for 1 MiB writes).
const sumPiece = 256 << 10

// castagnoli is the CRC-32C table for SummedWriter checksums.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Errors a Backend may wrap to choose the NBD error code sent to the client.
var (
	ErrInvalid  = errors.New("nbd: invalid request")
	ErrNoSpace  = errors.New("nbd: no space left")
	ErrReadOnly = errors.New("nbd: export is read-only")
	ErrShutdown = errors.New("nbd: server is shutting down")
)
