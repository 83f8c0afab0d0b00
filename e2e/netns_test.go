package e2e

import (
	"fmt"
	"net"
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

var netnsSeq int

// makeNetnsPair creates two network namespaces joined by a veth pair, made
// through netlink, and returns their names and addresses. They are deleted
// when the test ends.
func makeNetnsPair(t *testing.T) (nsA, nsB, ipA, ipB string) {
	t.Helper()
	netnsSeq++
	id := fmt.Sprintf("%d-%d", os.Getpid()%100000, netnsSeq)
	nsA, nsB = "urbd-a-"+id, "urbd-b-"+id
	subnet := 10 + netnsSeq%200
	ipA, ipB = fmt.Sprintf("10.213.%d.1", subnet), fmt.Sprintf("10.213.%d.2", subnet)

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	must(t, err)
	defer orig.Close()
	defer netns.Set(orig)

	handles := map[string]netns.NsHandle{}
	for _, name := range []string{nsA, nsB} {
		h, err := netns.NewNamed(name)
		if err != nil {
			t.Fatalf("creating network namespace %s: %v", name, err)
		}
		handles[name] = h
		name := name
		t.Cleanup(func() { netns.DeleteNamed(name) })
		must(t, netns.Set(orig))
	}
	vethA, vethB := "veth-a"+id, "veth-b"+id
	if len(vethA) > 15 {
		vethA, vethB = vethA[:15], vethB[:15]
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: vethA}, PeerName: vethB}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("creating veth pair: %v", err)
	}
	for _, p := range []struct{ link, ns, ip string }{{vethA, nsA, ipA}, {vethB, nsB, ipB}} {
		l, err := netlink.LinkByName(p.link)
		must(t, err)
		must(t, netlink.LinkSetNsFd(l, int(handles[p.ns])))
		nh, err := netlink.NewHandleAt(handles[p.ns])
		must(t, err)
		l, err = nh.LinkByName(p.link)
		must(t, err)
		must(t, nh.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP(p.ip), Mask: net.CIDRMask(24, 32)}}))
		must(t, nh.LinkSetUp(l))
		lo, err := nh.LinkByName("lo")
		must(t, err)
		must(t, nh.LinkSetUp(lo))
		nh.Close()
	}
	for _, h := range handles {
		h.Close()
	}
	return nsA, nsB, ipA, ipB
}

// setLink brings the veth end inside namespace ns down (cut) or up (restore),
// through netlink: the way a cable pull or a switch failure looks to urbd.
func setLink(t *testing.T, ns string, up bool) {
	t.Helper()
	eachVeth(t, ns, func(nh *netlink.Handle, l netlink.Link) {
		if up {
			must(t, nh.LinkSetUp(l))
		} else {
			must(t, nh.LinkSetDown(l))
		}
	})
}

// eachVeth calls f for each veth end inside namespace ns, with a netlink
// handle in that namespace.
func eachVeth(t *testing.T, ns string, f func(nh *netlink.Handle, l netlink.Link)) {
	t.Helper()
	h, err := netns.GetFromName(ns)
	must(t, err)
	defer h.Close()
	nh, err := netlink.NewHandleAt(h)
	must(t, err)
	defer nh.Delete()
	links, err := nh.LinkList()
	must(t, err)
	for _, l := range links {
		if _, ok := l.(*netlink.Veth); ok {
			f(nh, l)
		}
	}
}
