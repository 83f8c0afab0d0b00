package nbd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Attaching the kernel, and the order of things:
//
//  1. Every socket is dialled and negotiated in userspace (Negotiate) before
//     the kernel sees it; the kernel only speaks the transmission phase.
//  2. The sockets go to the kernel with NBD_CMD_CONNECT (Connect) together
//     with the server's transmission flags, so the kernel sends FLUSH, FUA
//     and TRIM exactly when the server offered them. The supervisor keeps
//     its own descriptors of the same sockets but never reads or writes
//     them: it only polls them for a hang-up.
//  3. When a connection dies (the server closed it, or the kernel shut it
//     down after a request timed out) the kernel marks it dead and sends
//     NBD_CMD_LINK_DEAD; requests then wait up to the dead-connection
//     timeout for a live one. Requests that were in flight on the dead
//     socket are resent after the per-request timeout.
//  4. The supervisor sees the hang-up (or the event), asks the kernel
//     whether the device is still configured (a detach ends supervision),
//     dials the addresses in order, negotiates, checks the export did not
//     shrink, and hands the new sockets over with NBD_CMD_RECONFIGURE, which
//     replaces dead connections only. Only then does it close its copies
//     of the dead sockets. If the export grew meanwhile it grows the device.
//  5. Refresh (urbd attach runs it on SIGHUP) dials one probe connection,
//     reads the export's size from the negotiation, closes it, and grows
//     the device with an NBD_CMD_RECONFIGURE that only sets the size. A
//     live device is never shrunk.
//  6. On shutdown it sends NBD_CMD_DISCONNECT: the kernel sends NBD_CMD_DISC
//     to the server and tears the device's configuration down.

// Kernel is the part of the kernel's nbd driver the attach supervisor
// uses. *Netlink implements it; tests use a fake.
type Kernel interface {
	Connect(p ConnectParams) error
	Reconfigure(index int, fds []int, timeout, deadConnTimeout time.Duration) error
	Disconnect(index int) error
	Connected(index int) (bool, error)
	// Resize sets a connected device's size in bytes.
	Resize(index int, size uint64) error
}

// AttachConfig describes one kernel attachment.
type AttachConfig struct {
	Index int // N of /dev/nbdN
	// Addrs are the servers' addresses ("unix:PATH", "tcp:HOST:PORT"),
	// tried in order on every (re)connect: the first that negotiates wins.
	Addrs  []string
	Export string
	// Connections is the number of sockets handed to the kernel (>= 1);
	// more than one needs a server that advertises CAN_MULTI_CONN.
	Connections int
	// Timeout is how long an outage may last without the filesystem seeing
	// an I/O error: the kernel's dead-connection timeout, during which new
	// requests wait for a reconnect.
	Timeout time.Duration
	// IOTimeout is the kernel's per-request timeout: a request unanswered
	// this long marks its connection dead and is requeued, to be sent again
	// once the supervisor reconnected. Requests in flight when a server
	// dies wait this long before they are resent; 0 means min(Timeout, 10s).
	IOTimeout time.Duration
	// Dial connects to an address; Negotiate runs on what it returns.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// Kernel is the nbd driver.
	Kernel Kernel
	// Events, if set, delivers the device indexes of LINK_DEAD events
	// (-1 = events may have been lost). Without it the supervisor relies
	// on watching its own copies of the sockets, which see the hang-up too.
	Events <-chan int
	// PollInterval is how often the supervisor checks its sockets for a
	// hang-up when no event woke it; 0 means 200ms.
	PollInterval time.Duration
	// RedialInterval is the pause between rounds of dialing every
	// address while the servers are away; 0 means 200ms.
	RedialInterval time.Duration
	Logger         *slog.Logger
}

// Attachment is a device connected by Attach. Supervise is called by the
// one goroutine that owns it; Info and Refresh may be called from any
// goroutine, also while Supervise runs.
type Attachment struct {
	cfg AttachConfig
	log *slog.Logger
	// mu guards info, whose Size is the device's size: Refresh and the
	// reconnect path both grow it.
	mu    sync.Mutex
	info  ExportInfo
	socks []*os.File // our copies of the sockets the kernel holds
	// deadEvents counts LINK_DEAD events for this device not yet matched
	// by a replaced socket.
	deadEvents int
}

// Info is the export as negotiated on the first connection, with Size the
// device's current size (larger than at first once the device was grown).
func (a *Attachment) Info() ExportInfo {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.info
}

// device is the path of the attached device, for messages.
func (a *Attachment) device() string { return fmt.Sprintf("/dev/nbd%d", a.cfg.Index) }

// grow sets the device's size to size bytes when that is larger than its
// size now, and returns the size it had before. A smaller size is an error
// and the device keeps its size: a live device is never shrunk. Checking
// and resizing happen under a.mu, so concurrent callers only ever grow it.
func (a *Attachment) grow(size int64) (old int64, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	old = a.info.Size
	if size < old {
		return old, fmt.Errorf("nbd: export shrank from %d to %d bytes: %s keeps its size", old, size, a.device())
	}
	if size == old {
		return old, nil
	}
	if err := a.cfg.Kernel.Resize(a.cfg.Index, uint64(size)); err != nil {
		return old, err
	}
	a.info.Size = size
	return old, nil
}

// Refresh reads the export's current size over one probe connection (the
// addresses tried in order, as on a reconnect) and grows the device to it.
// The probe is closed after negotiation and never reaches the kernel. It
// returns the device's size before and after: equal when the export did
// not grow. An export smaller than the device is an error and the device
// keeps its size. On any error both sizes are 0. Refresh may run
// concurrently with Supervise.
func (a *Attachment) Refresh(ctx context.Context) (from, to int64, err error) {
	probe, info, _, err := a.cfg.dialOne(ctx, a.log)
	if err != nil {
		return 0, 0, fmt.Errorf("nbd: reading the export's size: %w", err)
	}
	probe.Close()
	from, err = a.grow(info.Size)
	if err != nil {
		return 0, 0, err
	}
	return from, info.Size, nil
}

// growOnReconnect grows the device to size, the size of the export it just
// reconnected to, and logs it. A failure is only logged: the device goes on
// working at its old size, and Refresh can try again.
func (a *Attachment) growOnReconnect(size int64) {
	old, err := a.grow(size)
	switch {
	case err != nil:
		a.log.Warn("cannot grow the device to the export's size", "device", a.device(), "size", size, "err", err)
	case size > old:
		a.log.Info("grew the device to the export's new size", "device", a.device(), "from", old, "to", size)
	}
}

// blockSize picks the device's logical block size: the server's minimum if
// larger than 512, else 512, capped at 4096 (the kernel's page size).
func blockSize(info ExportInfo) uint32 {
	bs := uint32(512)
	for bs < info.MinBlock && bs < 4096 {
		bs <<= 1
	}
	return bs
}

// dialTimeout bounds one dial and negotiation: a healthy server answers in
// milliseconds, and a hung one must not use up the whole outage budget
// before the next address is tried.
func (c *AttachConfig) dialTimeout() time.Duration {
	return min(c.Timeout, 5*time.Second)
}

// dialOne tries each address in turn and returns the first socket that
// completed negotiation, as a blocking *os.File the kernel can use.
func (c *AttachConfig) dialOne(ctx context.Context, log *slog.Logger) (*os.File, ExportInfo, string, error) {
	var errs []error
	for _, addr := range c.Addrs {
		dctx, cancel := context.WithTimeout(ctx, c.dialTimeout())
		f, info, err := c.dialAddr(dctx, addr)
		cancel()
		if err == nil {
			return f, info, addr, nil
		}
		log.Debug("connect failed", "addr", addr, "err", err)
		errs = append(errs, fmt.Errorf("%s: %w", addr, err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, ExportInfo{}, "", errors.Join(errs...)
}

func (c *AttachConfig) dialAddr(ctx context.Context, addr string) (*os.File, ExportInfo, error) {
	conn, err := c.Dial(ctx, addr)
	if err != nil {
		return nil, ExportInfo{}, err
	}
	defer conn.Close()
	info, err := Negotiate(ctx, conn, c.Export)
	if err != nil {
		return nil, ExportInfo{}, err
	}
	fc, ok := conn.(interface{ File() (*os.File, error) })
	if !ok {
		return nil, ExportInfo{}, fmt.Errorf("nbd: %T is not a socket the kernel can use", conn)
	}
	f, err := fc.File()
	if err != nil {
		return nil, ExportInfo{}, fmt.Errorf("nbd: duplicating socket: %w", err)
	}
	// The kernel's receive thread expects a blocking socket.
	if err := unix.SetNonblock(int(f.Fd()), false); err != nil {
		f.Close()
		return nil, ExportInfo{}, fmt.Errorf("nbd: making socket blocking: %w", err)
	}
	return f, info, nil
}

// dialN opens n negotiated sockets on the same address, trying the
// addresses in turn for the first one.
func (c *AttachConfig) dialN(ctx context.Context, log *slog.Logger, n int) ([]*os.File, ExportInfo, error) {
	first, info, addr, err := c.dialOne(ctx, log)
	if err != nil {
		return nil, ExportInfo{}, err
	}
	socks := []*os.File{first}
	for len(socks) < n {
		dctx, cancel := context.WithTimeout(ctx, c.dialTimeout())
		f, more, err := c.dialAddr(dctx, addr)
		cancel()
		if err == nil && (more.Size != info.Size || more.Flags != info.Flags) {
			f.Close()
			err = fmt.Errorf("%w: %s: connections disagree on size or flags", ErrProtocol, addr)
		}
		if err != nil {
			closeAll(socks)
			return nil, ExportInfo{}, err
		}
		socks = append(socks, f)
	}
	return socks, info, nil
}

func closeAll(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

func fds(fs []*os.File) []int {
	out := make([]int, len(fs))
	for i, f := range fs {
		out[i] = int(f.Fd())
	}
	return out
}

func (c *AttachConfig) check() error {
	if len(c.Addrs) == 0 {
		return errors.New("nbd: attach needs at least one server address")
	}
	if c.Connections < 1 {
		c.Connections = 1
	}
	if c.Timeout <= 0 {
		c.Timeout = 30 * time.Second
	}
	if c.IOTimeout <= 0 {
		c.IOTimeout = min(c.Timeout, 10*time.Second)
	}
	if c.PollInterval <= 0 {
		c.PollInterval = 200 * time.Millisecond
	}
	if c.RedialInterval <= 0 {
		c.RedialInterval = 200 * time.Millisecond
	}
	if c.Dial == nil || c.Kernel == nil {
		return errors.New("nbd: attach needs Dial and Kernel")
	}
	return nil
}

// Attach dials cfg.Connections sockets (trying the addresses in order),
// negotiates each in userspace and hands them to the kernel. A refusal
// wraps ErrRefused with the server's message; a busy device ErrDeviceBusy.
// On success the device is live and the caller should run Supervise.
func Attach(ctx context.Context, cfg AttachConfig) (*Attachment, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	socks, info, err := cfg.dialN(ctx, log, cfg.Connections)
	if err != nil {
		return nil, err
	}
	if cfg.Connections > 1 && !info.CanMultiConn() {
		closeAll(socks)
		return nil, fmt.Errorf("nbd: the server does not allow several connections to one export (no CAN_MULTI_CONN): use --connections 1")
	}
	err = cfg.Kernel.Connect(ConnectParams{
		Index:           cfg.Index,
		Size:            info.Size,
		BlockSize:       blockSize(info),
		ServerFlags:     info.Flags,
		Timeout:         cfg.IOTimeout,
		DeadConnTimeout: cfg.Timeout,
		FDs:             fds(socks),
	})
	if err != nil {
		closeAll(socks)
		return nil, err
	}
	log.Info("attached", "device", fmt.Sprintf("/dev/nbd%d", cfg.Index), "size", info.Size,
		"flags", fmt.Sprintf("%#x", info.Flags), "connections", len(socks))
	return &Attachment{cfg: cfg, log: log, info: info, socks: socks}, nil
}

// hungUp reports which of our socket copies saw the peer or the kernel
// shut the connection down. It does not read from the sockets.
func hungUp(socks []*os.File) []int {
	pfds := make([]unix.PollFd, len(socks))
	for i, f := range socks {
		pfds[i] = unix.PollFd{Fd: int32(f.Fd()), Events: unix.POLLRDHUP}
	}
	for {
		_, err := unix.Poll(pfds, 0)
		if err != unix.EINTR {
			break
		}
	}
	var dead []int
	for i, p := range pfds {
		if p.Revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0 {
			dead = append(dead, i)
		}
	}
	return dead
}

// ErrDetached is returned by Supervise when the device was disconnected by
// someone else (urbd detach), not by ctx.
var ErrDetached = errors.New("nbd: device was detached")

// Supervise keeps the device connected until ctx is done or the device is
// detached. When a connection dies (server restart, failover) it redials,
// trying every address in turn, and hands the new sockets to the kernel
// with NBD_CMD_RECONFIGURE; the kernel holds I/O for up to Timeout
// meanwhile. When ctx is done it disconnects the device and returns nil.
// It returns ErrDetached when the kernel no longer has the device
// configured. Supervise must be called once, from the goroutine that owns
// the Attachment.
func (a *Attachment) Supervise(ctx context.Context) error {
	defer closeAll(a.socks)
	tick := time.NewTicker(a.cfg.PollInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			err := a.cfg.Kernel.Disconnect(a.cfg.Index)
			if errors.Is(err, ErrNotAttached) {
				err = nil
			}
			a.log.Info("detached", "device", fmt.Sprintf("/dev/nbd%d", a.cfg.Index))
			return err
		case idx := <-a.cfg.Events:
			if idx >= 0 && idx != a.cfg.Index {
				continue
			}
			if idx < 0 {
				// Events were lost: do not wait for any.
				a.deadEvents = len(a.socks)
			} else {
				a.deadEvents++
			}
			a.log.Warn("kernel reports a dead connection", "device", fmt.Sprintf("/dev/nbd%d", a.cfg.Index))
		case <-tick.C:
		}
		dead := hungUp(a.socks)
		if len(dead) == 0 {
			continue
		}
		if err := a.reconnect(ctx, dead); err != nil {
			return err
		}
	}
}

// reconnect replaces the dead sockets. It returns nil when they were
// replaced or ctx ended, ErrDetached when the device went away.
func (a *Attachment) reconnect(ctx context.Context, dead []int) error {
	a.log.Warn("connection lost, reconnecting", "device", fmt.Sprintf("/dev/nbd%d", a.cfg.Index), "dead", len(dead))
	start := time.Now()
	for attempt := 0; ; attempt++ {
		if ctx.Err() != nil {
			return nil
		}
		if ok, err := a.cfg.Kernel.Connected(a.cfg.Index); err == nil && !ok {
			return ErrDetached
		}
		socks, info, err := a.cfg.dialN(ctx, a.log, len(dead))
		if old := a.Info().Size; err == nil && info.Size < old {
			closeAll(socks)
			err = fmt.Errorf("nbd: export shrank from %d to %d bytes: not reconnecting", old, info.Size)
		}
		if err == nil {
			a.awaitDeadEvents(ctx, len(dead))
			err = a.cfg.Kernel.Reconfigure(a.cfg.Index, fds(socks), a.cfg.IOTimeout, a.cfg.Timeout)
			if err != nil {
				closeAll(socks)
			}
		}
		if err == nil {
			a.deadEvents = max(0, a.deadEvents-len(dead))
			for i, d := range dead {
				a.socks[d].Close()
				a.socks[d] = socks[i]
			}
			a.log.Info("reconnected", "device", fmt.Sprintf("/dev/nbd%d", a.cfg.Index), "after", time.Since(start).Round(time.Millisecond))
			a.growOnReconnect(info.Size)
			return nil
		}
		if attempt%25 == 0 {
			a.log.Warn("reconnect failed, retrying", "err", err)
		}
		t := time.NewTimer(a.cfg.RedialInterval)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
	}
}

// deadEventWait bounds how long awaitDeadEvents waits for events that may
// have been lost.
const deadEventWait = time.Second

// awaitDeadEvents waits, if the supervisor gets LINK_DEAD events, until the
// kernel has reported n dead connections of this device. Reconfigure only
// replaces connections the kernel has already marked dead and silently
// drops a socket when there is none, so handing over a socket for a
// connection the kernel has not yet seen die would lose it. The kernel
// marks a connection dead right when its receive fails, so the wait is
// short; after deadEventWait (events lost) it goes on.
func (a *Attachment) awaitDeadEvents(ctx context.Context, n int) {
	if a.cfg.Events == nil || a.deadEvents >= n {
		return
	}
	t := time.NewTimer(deadEventWait)
	defer t.Stop()
	for a.deadEvents < n {
		select {
		case idx := <-a.cfg.Events:
			if idx < 0 {
				return // events were lost: counting is pointless
			}
			if idx == a.cfg.Index {
				a.deadEvents++
			}
		case <-t.C:
			a.log.Debug("fewer dead-connection events than hung-up sockets", "events", a.deadEvents, "sockets", n)
			return
		case <-ctx.Done():
			return
		}
	}
}
