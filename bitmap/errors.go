package bitmap

import (
	"errors"
	"fmt"
)

// Sentinel errors. Returned errors wrap them with %w and add the file, range or
// geometry that matters; test them with errors.Is.
var (
	// ErrGeometry: the disk size, bitmap block or extent size differs from the
	// stored metadata or from another bitmap, or is invalid.
	ErrGeometry = errors.New("bitmap: geometry mismatch")
	// ErrRange: an offset, length or word range lies outside the disk/bitmap.
	ErrRange = errors.New("bitmap: range out of bounds")
	// ErrCorrupt: a metadata file has a bad magic, version, length, checksum or
	// field. Open never returns it: it treats the file as "all dirty" and
	// reports it through Recovered/Recovery.
	ErrCorrupt = errors.New("bitmap: corrupt metadata file")
	// ErrTooLarge: a write spans more extents than the activity log holds.
	ErrTooLarge = errors.New("bitmap: range spans more extents than the activity log holds")
	// ErrBusy: Store.Grow found writes in flight.
	ErrBusy = errors.New("bitmap: writes in flight")
	// ErrClosed: the Store was closed.
	ErrClosed = errors.New("bitmap: store closed")
	// ErrLocked: another process holds the metadata directory's lock
	// (LockDir): a running urbd up, or an offline command.
	ErrLocked = errors.New("bitmap: metadata directory in use")
	// ErrInvalid: an invalid argument (Options, Meta field).
	ErrInvalid = errors.New("bitmap: invalid argument")
)

// SizeError is Open's error for a disk whose size differs from the stored
// one (and that Options.Grow does not accept); errors.Is matches it with
// ErrGeometry.
type SizeError struct {
	Disk, Stored int64  // bytes
	Dir          string // the metadata directory
}

func (e *SizeError) Error() string {
	return fmt.Sprintf("bitmap: geometry mismatch: disk size %d (stored %d, metadata in %s)", e.Disk, e.Stored, e.Dir)
}

// Is makes errors.Is(err, ErrGeometry) hold.
func (e *SizeError) Is(target error) bool { return target == ErrGeometry }
