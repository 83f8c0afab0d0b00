package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// shapeLink limits the veth end inside namespace ns to rate (tc's token
// bucket, e.g. "8mbit"): a slow WAN link as urbd sees it. An empty rate
// removes the limit.
func shapeLink(t *testing.T, ns, rate string) {
	t.Helper()
	requireCmds(t, "tc")
	eachVeth(t, ns, func(_ *netlink.Handle, l netlink.Link) {
		args := []string{"netns", "exec", ns, "tc", "qdisc", "del", "dev", l.Attrs().Name, "root"}
		if rate != "" {
			args = []string{"netns", "exec", ns, "tc", "qdisc", "replace", "dev", l.Attrs().Name, "root", "tbf", "rate", rate, "burst", "32kbit", "latency", "2s"}
		}
		runCmd(t, 10*time.Second, "ip", args...)
	})
}

// TestPullAhead: a protocol A pair over a link of 5 MB/s, the Primary set
// live with urbd adjust to pull ahead (at its defaults: once a write waited
// 100 ms for room on the link). fio writes 96 MiB through the Primary and
// finishes while the peer has received only a few of them: the Primary
// went Ahead, recording the rest in its bitmap, and
// the Secondary Behind, its disk Outdated; the connection stayed up. Once
// the link is fast again the Primary resyncs what it wrote meanwhile, both
// end Connected and UpToDate, and the disks are equal.
func TestPullAhead(t *testing.T) {
	c := newCluster(t, clusterOpts{netns: true, size: 128 << 20, flags: []string{"--timeout", "6s"}})
	c.startBoth()
	if out := c.a.ctl("adjust", "--protocol", "A", "--on-congestion", "pull-ahead", "r0"); !strings.Contains(out, "on-congestion set to pull-ahead (congestion-fill 0 (off), congestion-extents 1237)") {
		t.Fatalf("urbd adjust: %s", out)
	}
	if out := c.a.ctl("show", "r0"); !strings.Contains(out, "pull-ahead") {
		t.Fatalf("urbd show does not list the new on-congestion:\n%s", out)
	}
	shapeLink(t, c.a.netns, "40mbit")
	before := c.b.status().NetRecvKiB
	out := runFio(t, c.a.uri(), "--rw=write", "--bs=1M", "--iodepth=8", "--size=96M")
	if i := strings.Index(out, "WRITE: bw="); i >= 0 {
		t.Logf("fio through the Ahead Primary: %s", strings.SplitN(out[i:], "\n", 2)[0])
	}
	if got := c.b.status().NetRecvKiB - before; got > 32<<10 {
		t.Fatalf("the peer received %d KiB of 96 MiB by the time fio finished: the Primary did not pull ahead", got)
	}
	c.a.waitLog("cs=Ahead", 10*time.Second)
	t.Logf("status of the Primary after fio:\n%s", c.a.ctl("status", "r0"))
	c.b.waitLog("cs=Behind ro=Secondary/Primary ds=Outdated/UpToDate", 10*time.Second)
	if logs := c.a.waitLog("pulled ahead", time.Second); strings.Contains(logs, "peer connection lost") {
		t.Fatalf("the connection was dropped:\n%s", logs)
	}
	shapeLink(t, c.a.netns, "")
	c.a.waitLog("resyncing what was written while Ahead", 30*time.Second)
	c.a.waitInSync(60 * time.Second)
	c.b.waitInSync(60 * time.Second)
	cmpFiles(t, c.a.disk, c.b.disk)
}
