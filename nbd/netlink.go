package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// The kernel's nbd generic netlink interface, from
// include/uapi/linux/nbd-netlink.h. Timeouts are seconds (u64), sizes bytes
// (u64), flags u64, indexes and fds u32.
const (
	genlNBDFamily     = "nbd"
	genlNBDVersion    = 1
	genlNBDMcastGroup = "nbd_mc_group"

	nlCmdConnect     = 1
	nlCmdDisconnect  = 2
	nlCmdReconfigure = 3
	nlCmdLinkDead    = 4
	nlCmdStatus      = 5

	nlAttrIndex           = 1
	nlAttrSizeBytes       = 2
	nlAttrBlockSizeBytes  = 3
	nlAttrTimeout         = 4
	nlAttrServerFlags     = 5
	nlAttrClientFlags     = 6
	nlAttrSockets         = 7
	nlAttrDeadConnTimeout = 8
	nlAttrDeviceList      = 9

	nlDeviceItem      = 1
	nlDeviceIndex     = 1
	nlDeviceConnected = 2

	nlSockItem = 1
	nlSockFD   = 1

	// nlClientFlagDestroyOnDisconnect removes the device when it is
	// disconnected; urbd leaves devices in place, as nbd-client does.
	nlClientFlagDestroyOnDisconnect = 1 << 0
)

// Errors of the kernel attach path.
var (
	// ErrNoModule: the kernel has no "nbd" generic netlink family.
	ErrNoModule = errors.New("nbd kernel module not loaded: run modprobe nbd")
	// ErrDeviceBusy: the device is already connected to a server.
	ErrDeviceBusy = errors.New("nbd: device is busy")
	// ErrBadDevice: the path does not name an nbd device (/dev/nbdN).
	ErrBadDevice = errors.New("nbd: not an nbd device")
	// ErrNotAttached: the device is not connected to any server.
	ErrNotAttached = errors.New("nbd: device is not attached")
)

// DeviceIndex parses "/dev/nbdN" (or "nbdN") into N.
func DeviceIndex(device string) (int, error) {
	base := device[strings.LastIndexByte(device, '/')+1:]
	num, ok := strings.CutPrefix(base, "nbd")
	if !ok || num == "" || strings.HasPrefix(num, "+") || strings.HasPrefix(num, "-") {
		return 0, fmt.Errorf("%w: %q: want /dev/nbdN", ErrBadDevice, device)
	}
	n, err := strconv.ParseUint(num, 10, 31)
	if err != nil {
		return 0, fmt.Errorf("%w: %q: want /dev/nbdN", ErrBadDevice, device)
	}
	return int(n), nil
}

// ConnectParams describe one NBD_CMD_CONNECT.
type ConnectParams struct {
	Index     int   // device number N of /dev/nbdN
	Size      int64 // export size in bytes
	BlockSize uint32
	// ServerFlags are the transmission flags the server sent; the kernel
	// sends FLUSH, FUA and TRIM only when they say so.
	ServerFlags uint16
	// Timeout is the per-request timeout; a request that takes longer
	// marks its connection dead and is requeued (0 = never).
	Timeout time.Duration
	// DeadConnTimeout is how long requests wait for a reconnect when every
	// connection is dead before failing with EIO (0 = fail at once).
	DeadConnTimeout time.Duration
	// FDs are connected sockets already in the transmission phase. The
	// kernel takes its own reference; the caller may close its copies.
	FDs []int
}

// seconds rounds d up to whole seconds, as the kernel counts them.
func seconds(d time.Duration) uint64 {
	if d <= 0 {
		return 0
	}
	return uint64((d + time.Second - 1) / time.Second)
}

// socketsAttr builds NBD_ATTR_SOCKETS with one NBD_SOCK_ITEM per fd.
func socketsAttr(fds []int) *nl.RtAttr {
	socks := nl.NewRtAttr(nlAttrSockets|unix.NLA_F_NESTED, nil)
	for _, fd := range fds {
		item := socks.AddRtAttr(nlSockItem|unix.NLA_F_NESTED, nil)
		item.AddRtAttr(nlSockFD, nl.Uint32Attr(uint32(fd)))
	}
	return socks
}

// connectAttrs returns the attributes of NBD_CMD_CONNECT.
func connectAttrs(p ConnectParams) []*nl.RtAttr {
	return []*nl.RtAttr{
		nl.NewRtAttr(nlAttrIndex, nl.Uint32Attr(uint32(p.Index))),
		nl.NewRtAttr(nlAttrSizeBytes, nl.Uint64Attr(uint64(p.Size))),
		nl.NewRtAttr(nlAttrBlockSizeBytes, nl.Uint64Attr(uint64(p.BlockSize))),
		nl.NewRtAttr(nlAttrServerFlags, nl.Uint64Attr(uint64(p.ServerFlags))),
		nl.NewRtAttr(nlAttrClientFlags, nl.Uint64Attr(0)),
		nl.NewRtAttr(nlAttrTimeout, nl.Uint64Attr(seconds(p.Timeout))),
		nl.NewRtAttr(nlAttrDeadConnTimeout, nl.Uint64Attr(seconds(p.DeadConnTimeout))),
		socketsAttr(p.FDs),
	}
}

// Netlink talks to the kernel's nbd driver over generic netlink. Its
// methods open a socket per request and may be called concurrently.
type Netlink struct {
	family uint16
	group  uint32 // nbd_mc_group id; 0 if the kernel has none
}

// OpenNetlink resolves the "nbd" generic netlink family. It wraps
// ErrNoModule when the nbd module is not loaded.
func OpenNetlink() (*Netlink, error) {
	fam, err := netlink.GenlFamilyGet(genlNBDFamily)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) {
			return nil, ErrNoModule
		}
		return nil, fmt.Errorf("nbd: looking up the nbd netlink family: %w", err)
	}
	n := &Netlink{family: fam.ID}
	for _, g := range fam.Groups {
		if g.Name == genlNBDMcastGroup {
			n.group = g.ID
		}
	}
	return n, nil
}

// execute sends one request and returns the attributes of its replies.
func (n *Netlink) execute(cmd uint8, attrs []*nl.RtAttr) ([][]byte, error) {
	req := nl.NewNetlinkRequest(int(n.family), unix.NLM_F_ACK)
	req.AddData(&nl.Genlmsg{Command: cmd, Version: genlNBDVersion})
	for _, a := range attrs {
		req.AddData(a)
	}
	msgs, err := req.Execute(unix.NETLINK_GENERIC, 0)
	if errors.Is(err, syscall.EPERM) {
		return nil, fmt.Errorf("%w (the nbd driver needs CAP_SYS_ADMIN: run as root)", err)
	}
	if err != nil {
		return nil, err
	}
	out := make([][]byte, 0, len(msgs))
	for _, m := range msgs {
		if len(m) < nl.SizeofGenlmsg {
			return nil, fmt.Errorf("nbd: short netlink reply of %d bytes", len(m))
		}
		out = append(out, m[nl.SizeofGenlmsg:])
	}
	return out, nil
}

// Connect configures device p.Index with the given sockets and starts it.
// It wraps ErrDeviceBusy when the device is already connected.
func (n *Netlink) Connect(p ConnectParams) error {
	if _, err := n.execute(nlCmdConnect, connectAttrs(p)); err != nil {
		if errors.Is(err, syscall.EBUSY) {
			return fmt.Errorf("%w: /dev/nbd%d is already attached: run urbd detach --device /dev/nbd%d first", ErrDeviceBusy, p.Index, p.Index)
		}
		return fmt.Errorf("nbd: connecting /dev/nbd%d: %w", p.Index, err)
	}
	return nil
}

// Reconfigure hands new sockets to a connected device; each replaces one
// connection the kernel marked dead. The kernel refuses a socket when no
// connection is dead (ENOSPC), which is reported as an error.
func (n *Netlink) Reconfigure(index int, fds []int, timeout, deadConnTimeout time.Duration) error {
	attrs := []*nl.RtAttr{
		nl.NewRtAttr(nlAttrIndex, nl.Uint32Attr(uint32(index))),
		nl.NewRtAttr(nlAttrTimeout, nl.Uint64Attr(seconds(timeout))),
		nl.NewRtAttr(nlAttrDeadConnTimeout, nl.Uint64Attr(seconds(deadConnTimeout))),
		socketsAttr(fds),
	}
	if _, err := n.execute(nlCmdReconfigure, attrs); err != nil {
		return fmt.Errorf("nbd: reconfiguring /dev/nbd%d: %w", index, err)
	}
	return nil
}

// resizeAttrs returns the attributes of an NBD_CMD_RECONFIGURE that only
// sets the device's size.
func resizeAttrs(index int, size uint64) []*nl.RtAttr {
	return []*nl.RtAttr{
		nl.NewRtAttr(nlAttrIndex, nl.Uint32Attr(uint32(index))),
		nl.NewRtAttr(nlAttrSizeBytes, nl.Uint64Attr(size)),
	}
}

// Resize sets the size of a connected device to size bytes with
// NBD_CMD_RECONFIGURE (Linux >= 5.3; a live device's capacity changes
// since 5.11). It hands no sockets over and leaves the timeouts as they
// are. The caller checks that the export is at least that large.
func (n *Netlink) Resize(index int, size uint64) error {
	if _, err := n.execute(nlCmdReconfigure, resizeAttrs(index, size)); err != nil {
		return fmt.Errorf("nbd: resizing /dev/nbd%d to %d bytes: %w", index, size, err)
	}
	return nil
}

// Disconnect sends NBD_CMD_DISCONNECT for the device: the kernel sends
// NBD_CMD_DISC to the server and shuts the sockets down.
func (n *Netlink) Disconnect(index int) error {
	attrs := []*nl.RtAttr{nl.NewRtAttr(nlAttrIndex, nl.Uint32Attr(uint32(index)))}
	if _, err := n.execute(nlCmdDisconnect, attrs); err != nil {
		if errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENODEV) {
			return fmt.Errorf("%w: /dev/nbd%d", ErrNotAttached, index)
		}
		return fmt.Errorf("nbd: disconnecting /dev/nbd%d: %w", index, err)
	}
	return nil
}

// Connected asks the kernel (NBD_CMD_STATUS) whether the device has a
// configuration. A device that was disconnected but is still open (a
// mounted filesystem) may report connected until it is closed.
func (n *Netlink) Connected(index int) (bool, error) {
	attrs := []*nl.RtAttr{nl.NewRtAttr(nlAttrIndex, nl.Uint32Attr(uint32(index)))}
	msgs, err := n.execute(nlCmdStatus, attrs)
	if err != nil {
		return false, fmt.Errorf("nbd: status of /dev/nbd%d: %w", index, err)
	}
	for _, m := range msgs {
		devs, err := parseStatus(m)
		if err != nil {
			return false, err
		}
		for _, d := range devs {
			if d.Index == index {
				return d.Connected, nil
			}
		}
	}
	return false, nil
}

// DeviceStatus is one entry of an NBD_CMD_STATUS reply.
type DeviceStatus struct {
	Index     int
	Connected bool
}

// parseStatus decodes the attributes of an NBD_CMD_STATUS reply. It never
// panics on malformed input.
func parseStatus(b []byte) ([]DeviceStatus, error) {
	attrs, err := parseAttrs(b)
	if err != nil {
		return nil, err
	}
	var out []DeviceStatus
	for _, a := range attrs {
		if a.typ != nlAttrDeviceList {
			continue
		}
		items, err := parseAttrs(a.val)
		if err != nil {
			return nil, err
		}
		for _, it := range items {
			if it.typ != nlDeviceItem {
				continue
			}
			fields, err := parseAttrs(it.val)
			if err != nil {
				return nil, err
			}
			d := DeviceStatus{Index: -1}
			for _, f := range fields {
				switch {
				case f.typ == nlDeviceIndex && len(f.val) >= 4:
					v := binary.NativeEndian.Uint32(f.val)
					if v <= math.MaxInt32 {
						d.Index = int(v)
					}
				case f.typ == nlDeviceConnected && len(f.val) >= 1:
					d.Connected = f.val[0] != 0
				}
			}
			out = append(out, d)
		}
	}
	return out, nil
}

// attr is one decoded netlink attribute; val aliases the input.
type attr struct {
	typ uint16
	val []byte
}

// parseAttrs splits a run of netlink attributes, checking every length
// against the input. NLA_F_NESTED and NLA_F_NET_BYTEORDER are masked off.
func parseAttrs(b []byte) ([]attr, error) {
	var out []attr
	for len(b) > 0 {
		if len(b) < unix.SizeofRtAttr {
			return nil, fmt.Errorf("nbd: truncated netlink attribute (%d bytes)", len(b))
		}
		l := int(binary.NativeEndian.Uint16(b))
		if l < unix.SizeofRtAttr || l > len(b) {
			return nil, fmt.Errorf("nbd: netlink attribute length %d out of range (%d left)", l, len(b))
		}
		typ := binary.NativeEndian.Uint16(b[2:]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		out = append(out, attr{typ: typ, val: b[unix.SizeofRtAttr:l]})
		adv := (l + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1)
		if adv > len(b) {
			adv = len(b)
		}
		b = b[adv:]
	}
	return out, nil
}

// parseLinkDead decodes a multicast genetlink message (genl header plus
// attributes) and reports the device index of an NBD_CMD_LINK_DEAD.
func parseLinkDead(b []byte) (index int, ok bool) {
	if len(b) < nl.SizeofGenlmsg || b[0] != nlCmdLinkDead {
		return 0, false
	}
	attrs, err := parseAttrs(b[nl.SizeofGenlmsg:])
	if err != nil {
		return 0, false
	}
	for _, a := range attrs {
		if a.typ == nlAttrIndex && len(a.val) >= 4 {
			v := binary.NativeEndian.Uint32(a.val)
			if v <= math.MaxInt32 {
				return int(v), true
			}
		}
	}
	return 0, false
}

// LinkDeadWatcher receives the kernel's NBD_CMD_LINK_DEAD multicast
// events. One goroutine may call Wait at a time; Close may be called from
// any goroutine and makes a blocked Wait return.
type LinkDeadWatcher struct {
	f *os.File
}

// WatchLinkDead subscribes to the nbd multicast group.
func (n *Netlink) WatchLinkDead() (*LinkDeadWatcher, error) {
	if n.group == 0 {
		return nil, fmt.Errorf("nbd: kernel has no %s multicast group", genlNBDMcastGroup)
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_GENERIC)
	if err != nil {
		return nil, fmt.Errorf("nbd: netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("nbd: binding netlink socket: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_ADD_MEMBERSHIP, int(n.group)); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("nbd: joining %s: %w", genlNBDMcastGroup, err)
	}
	return &LinkDeadWatcher{f: os.NewFile(uintptr(fd), "nbd-netlink-mc")}, nil
}

// Wait blocks until a LINK_DEAD event arrives and returns the device index
// it names, or returns an error after Close or when the deadline passes.
func (w *LinkDeadWatcher) Wait(deadline time.Time) (int, error) {
	rc, err := w.f.SyscallConn()
	if err != nil {
		return 0, err
	}
	if err := w.f.SetReadDeadline(deadline); err != nil {
		return 0, err
	}
	buf := make([]byte, 8192)
	for {
		var n int
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			n, _, rerr = unix.Recvfrom(int(fd), buf, 0)
			return rerr != unix.EAGAIN
		})
		if err != nil {
			return 0, err
		}
		if rerr != nil {
			if rerr == unix.ENOBUFS {
				// Events were lost; the caller re-checks its sockets anyway.
				return -1, nil
			}
			return 0, fmt.Errorf("nbd: reading netlink events: %w", rerr)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			continue
		}
		for _, m := range msgs {
			if idx, ok := parseLinkDead(m.Data); ok {
				return idx, nil
			}
		}
	}
}

// Close unsubscribes and unblocks Wait.
func (w *LinkDeadWatcher) Close() error { return w.f.Close() }
