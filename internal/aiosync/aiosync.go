// Package aiosync runs fdatasync without occupying one of the Go runtime's
// processors while the disk works.
//
// A goroutine blocked in a system call keeps its processor (P) until the
// runtime's monitor notices, tens of microseconds or more later; with one
// processor (urbd's default on small machines) nothing else runs meanwhile,
// not even the goroutine a network answer would wake. A Syncer instead
// queues the sync to the kernel (Linux AIO, IOCB_CMD_FDSYNC, which runs it
// on a kernel worker) and waits for an eventfd through the runtime's network
// poller, so the processor stays free. The price is about 15 us more latency
// per sync (the worker hand-off and the wake-up), so it suits syncs that run
// while the caller would otherwise wait for something else.
package aiosync

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrUnsupported is returned by New when the kernel has no AIO (or no AIO
// contexts left), and by Fdatasync when it cannot sync that descriptor
// asynchronously; callers fall back to unix.Fdatasync.
var ErrUnsupported = errors.New("aiosync: asynchronous fdatasync not available")

// iocb is struct iocb of linux/aio_abi.h (64 bytes). The fields this
// package sets are layout-independent of the byte order.
type iocb struct {
	data      uint64
	key       uint32
	rwFlags   uint32
	opcode    uint16
	reqprio   int16
	fd        uint32
	buf       uint64
	nbytes    uint64
	offset    int64
	reserved2 uint64
	flags     uint32
	resfd     uint32
}

// ioEvent is struct io_event of linux/aio_abi.h.
type ioEvent struct {
	data, obj uint64
	res, res2 int64
}

const (
	cmdFdsync = 3 // IOCB_CMD_FDSYNC
	flagResfd = 1 // IOCB_FLAG_RESFD: signal completion on aio_resfd
)

// Syncer performs fdatasync calls one at a time through one AIO context.
// Its methods are safe for concurrent use.
type Syncer struct {
	mu     sync.Mutex
	ctx    uintptr  // aio_context_t
	ev     *os.File // the eventfd, non-blocking: read through the poller
	evfd   int
	closed bool
}

// New sets up an AIO context and its eventfd. It returns an error wrapping
// ErrUnsupported when the kernel cannot provide them.
func New() (*Syncer, error) {
	var ctx uintptr
	if _, _, e := unix.Syscall(unix.SYS_IO_SETUP, 1, uintptr(unsafe.Pointer(&ctx)), 0); e != 0 {
		return nil, fmt.Errorf("%w: io_setup: %w", ErrUnsupported, e)
	}
	fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Syscall(unix.SYS_IO_DESTROY, ctx, 0, 0)
		return nil, fmt.Errorf("%w: eventfd: %w", ErrUnsupported, err)
	}
	return &Syncer{ctx: ctx, ev: os.NewFile(uintptr(fd), "aiosync-eventfd"), evfd: fd}, nil
}

// Fdatasync makes fd's written data durable like unix.Fdatasync, but the
// calling goroutine waits in the runtime's poller instead of in a system
// call. It returns an error wrapping ErrUnsupported if the kernel refused to
// queue the sync (nothing was done; use unix.Fdatasync), the sync's own
// error otherwise.
func (s *Syncer) Fdatasync(fd int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("%w: syncer closed", ErrUnsupported)
	}
	cb := iocb{opcode: cmdFdsync, fd: uint32(fd), flags: flagResfd, resfd: uint32(s.evfd)}
	cbs := [1]*iocb{&cb}
	for {
		n, _, e := unix.Syscall(unix.SYS_IO_SUBMIT, s.ctx, 1, uintptr(unsafe.Pointer(&cbs[0])))
		if e == unix.EINTR {
			continue
		}
		if e != 0 || n != 1 {
			return fmt.Errorf("%w: io_submit: %w", ErrUnsupported, e)
		}
		break
	}
	// The eventfd counts completions; with one operation in flight a
	// successful read means it is done.
	var cnt [8]byte
	if _, err := s.ev.Read(cnt[:]); err != nil {
		// Cannot happen with an open eventfd; reap the event anyway so
		// the context stays usable.
		return s.reap(fmt.Errorf("aiosync: eventfd: %w", err))
	}
	return s.reap(nil)
}

// reap collects the completion of the one operation in flight and returns
// its result (or prior, if not nil). s.mu is held.
func (s *Syncer) reap(prior error) error {
	var ev ioEvent
	for {
		n, _, e := unix.Syscall6(unix.SYS_IO_GETEVENTS, s.ctx, 1, 1, uintptr(unsafe.Pointer(&ev)), 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 || n != 1 {
			return fmt.Errorf("aiosync: io_getevents: %w", e)
		}
		break
	}
	if prior != nil {
		return prior
	}
	if ev.res < 0 {
		return unix.Errno(-ev.res)
	}
	return nil
}

// Close releases the AIO context and the eventfd, after a sync in progress
// ended. Later Fdatasync calls fail with ErrUnsupported.
func (s *Syncer) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	unix.Syscall(unix.SYS_IO_DESTROY, s.ctx, 0, 0)
	return s.ev.Close()
}
