package nbd

import (
	"encoding/binary"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

func TestDeviceIndex(t *testing.T) {
	tests := []struct {
		in   string
		want int
		ok   bool
	}{
		{"/dev/nbd0", 0, true},
		{"/dev/nbd15", 15, true},
		{"nbd3", 3, true},
		{"/dev/nbd", 0, false},
		{"/dev/nbd-1", 0, false},
		{"/dev/nbd+1", 0, false},
		{"/dev/nbd0p1", 0, false},
		{"/dev/sda", 0, false},
		{"/dev/nbd99999999999", 0, false},
		{"", 0, false},
	}
	for _, tt := range tests {
		got, err := DeviceIndex(tt.in)
		if tt.ok != (err == nil) || got != tt.want {
			t.Errorf("DeviceIndex(%q) = %d, %v", tt.in, got, err)
		}
		if err != nil && !errors.Is(err, ErrBadDevice) {
			t.Errorf("DeviceIndex(%q) error %v does not wrap ErrBadDevice", tt.in, err)
		}
	}
}

func TestSecondsRoundsUp(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want uint64
	}{{0, 0}, {-time.Second, 0}, {time.Millisecond, 1}, {time.Second, 1}, {1500 * time.Millisecond, 2}, {30 * time.Second, 30}}
	for _, tt := range tests {
		if got := seconds(tt.d); got != tt.want {
			t.Errorf("seconds(%v) = %d, want %d", tt.d, got, tt.want)
		}
	}
}

// serialize concatenates attributes as they go on the wire.
func serialize(attrs []*nl.RtAttr) []byte {
	var b []byte
	for _, a := range attrs {
		b = append(b, a.Serialize()...)
	}
	return b
}

func u64(b []byte) uint64 { return binary.NativeEndian.Uint64(b) }
func u32(b []byte) uint32 { return binary.NativeEndian.Uint32(b) }

func TestConnectAttrsEncoding(t *testing.T) {
	p := ConnectParams{
		Index: 3, Size: 1 << 30, BlockSize: 4096,
		ServerFlags: FlagHasFlags | FlagSendFlush | FlagSendFUA | FlagSendTrim,
		Timeout:     10 * time.Second, DeadConnTimeout: 2500 * time.Millisecond,
		FDs: []int{7, 9},
	}
	attrs, err := parseAttrs(serialize(connectAttrs(p)))
	if err != nil {
		t.Fatal(err)
	}
	got := map[uint16][]byte{}
	for _, a := range attrs {
		got[a.typ] = a.val
	}
	if u32(got[nlAttrIndex]) != 3 || u64(got[nlAttrSizeBytes]) != 1<<30 || u64(got[nlAttrBlockSizeBytes]) != 4096 {
		t.Errorf("index/size/block size wrong: %x %x %x", got[nlAttrIndex], got[nlAttrSizeBytes], got[nlAttrBlockSizeBytes])
	}
	if u64(got[nlAttrServerFlags]) != uint64(p.ServerFlags) || u64(got[nlAttrClientFlags]) != 0 {
		t.Errorf("flags wrong: server %x client %x", got[nlAttrServerFlags], got[nlAttrClientFlags])
	}
	if u64(got[nlAttrTimeout]) != 10 || u64(got[nlAttrDeadConnTimeout]) != 3 {
		t.Errorf("timeouts wrong: %d %d", u64(got[nlAttrTimeout]), u64(got[nlAttrDeadConnTimeout]))
	}
	items, err := parseAttrs(got[nlAttrSockets])
	if err != nil || len(items) != 2 {
		t.Fatalf("sockets: %v, %d items", err, len(items))
	}
	for i, it := range items {
		fd, err := parseAttrs(it.val)
		if it.typ != nlSockItem || err != nil || len(fd) != 1 || fd[0].typ != nlSockFD || int(u32(fd[0].val)) != p.FDs[i] {
			t.Errorf("socket item %d: %+v %v", i, fd, err)
		}
	}
}

// TestResizeAttrsEncoding: a resize is NBD_ATTR_INDEX and
// NBD_ATTR_SIZE_BYTES only, so the kernel changes nothing else.
func TestResizeAttrsEncoding(t *testing.T) {
	attrs, err := parseAttrs(serialize(resizeAttrs(5, 3<<30)))
	if err != nil {
		t.Fatal(err)
	}
	if len(attrs) != 2 || attrs[0].typ != nlAttrIndex || attrs[1].typ != nlAttrSizeBytes {
		t.Fatalf("attributes %+v, want index and size", attrs)
	}
	if u32(attrs[0].val) != 5 || len(attrs[1].val) != 8 || u64(attrs[1].val) != 3<<30 {
		t.Errorf("index %x size %x, want 5 and %d", attrs[0].val, attrs[1].val, uint64(3<<30))
	}
}

// statusReply builds an NBD_CMD_STATUS reply body.
func statusReply(devs ...DeviceStatus) []byte {
	list := nl.NewRtAttr(nlAttrDeviceList|unix.NLA_F_NESTED, nil)
	for _, d := range devs {
		item := list.AddRtAttr(nlDeviceItem|unix.NLA_F_NESTED, nil)
		item.AddRtAttr(nlDeviceIndex, nl.Uint32Attr(uint32(d.Index)))
		var c uint8
		if d.Connected {
			c = 1
		}
		item.AddRtAttr(nlDeviceConnected, nl.Uint8Attr(c))
	}
	return list.Serialize()
}

func TestParseStatus(t *testing.T) {
	want := []DeviceStatus{{0, true}, {1, false}, {15, true}}
	got, err := parseStatus(statusReply(want...))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("device %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
	if got, err := parseStatus(nil); err != nil || len(got) != 0 {
		t.Errorf("empty reply: %v %v", got, err)
	}
}

func TestParseAttrsRejectsBadLengths(t *testing.T) {
	tests := map[string][]byte{
		"truncated header":   {8, 0},
		"length below 4":     {2, 0, 1, 0},
		"length beyond data": {16, 0, 1, 0, 0, 0, 0, 0},
	}
	for name, b := range tests {
		if _, err := parseAttrs(b); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	// An unpadded last attribute is accepted.
	if a, err := parseAttrs([]byte{5, 0, 2, 0, 9}); err != nil || len(a) != 1 || a[0].typ != 2 || len(a[0].val) != 1 {
		t.Errorf("unpadded attribute: %+v %v", a, err)
	}
}

func linkDeadMsg(cmd uint8, index uint32) []byte {
	b := (&nl.Genlmsg{Command: cmd, Version: genlNBDVersion}).Serialize()
	return append(b, nl.NewRtAttr(nlAttrIndex, nl.Uint32Attr(index)).Serialize()...)
}

func TestParseLinkDead(t *testing.T) {
	if idx, ok := parseLinkDead(linkDeadMsg(nlCmdLinkDead, 4)); !ok || idx != 4 {
		t.Errorf("link dead: %d %v", idx, ok)
	}
	if _, ok := parseLinkDead(linkDeadMsg(nlCmdStatus, 4)); ok {
		t.Error("status message taken for link dead")
	}
	if _, ok := parseLinkDead([]byte{nlCmdLinkDead}); ok {
		t.Error("short message accepted")
	}
}

// FuzzNetlinkParse: kernel replies and events are decoded without panics.
func FuzzNetlinkParse(f *testing.F) {
	f.Add(statusReply(DeviceStatus{1, true}))
	f.Add(linkDeadMsg(nlCmdLinkDead, 0))
	f.Add([]byte{4, 0, 9, 0})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		if devs, err := parseStatus(b); err == nil {
			for _, d := range devs {
				if d.Index < -1 {
					t.Fatalf("negative index %d", d.Index)
				}
			}
		}
		if idx, ok := parseLinkDead(b); ok && idx < 0 {
			t.Fatalf("negative index %d", idx)
		}
	})
}

// TestOpenNetlinkMatchesLoadedModule: OpenNetlink succeeds exactly when the
// nbd module is loaded (or built in) and otherwise says how to load it.
func TestOpenNetlinkMatchesLoadedModule(t *testing.T) {
	_, statErr := os.Stat("/sys/module/nbd")
	n, err := OpenNetlink()
	switch {
	case statErr == nil && err != nil:
		t.Fatalf("nbd is loaded but OpenNetlink failed: %v", err)
	case statErr == nil && n.group == 0:
		t.Fatalf("nbd is loaded but has no %s multicast group", genlNBDMcastGroup)
	case statErr != nil && !errors.Is(err, ErrNoModule):
		t.Fatalf("nbd is not loaded but OpenNetlink returned %v, %v", n, err)
	case statErr != nil && err.Error() != "nbd kernel module not loaded: run modprobe nbd":
		t.Fatalf("message %q", err)
	}
}
