package e2e

import (
	"strings"
	"testing"
	"time"
)

// TestSmallActivityLog: `urbd up --al-extents 67` on a disk of 128 extents.
// Random writes across the whole disk keep evicting extents from the log,
// each eviction after a flush of both disks; fio verifies every block it
// wrote, and afterwards the pair is in sync with identical disks. The
// activity-log write count shows the small log at work: with the default
// log each of the 128 extents would enter it once.
func TestSmallActivityLog(t *testing.T) {
	c := newCluster(t, clusterOpts{size: 512 << 20, flags: []string{"--al-extents", "67"}})
	c.startBoth()
	if out := c.a.ctl("show", "r0"); !strings.Contains(out, "al-extents") || !strings.Contains(out, "67") {
		t.Fatalf("urbd show does not list al-extents 67:\n%s", out)
	}
	al0 := c.a.status().ALWrites
	runFio(t, c.a.uri(), "--rw=randwrite", "--bs=4k", "--size=512M", "--io_size=8M", "--iodepth=4",
		"--verify=crc32c", "--do_verify=1", "--randrepeat=0")
	st := c.a.waitInSync(60 * time.Second)
	t.Logf("%d activity-log writes", st.ALWrites-al0)
	if n := st.ALWrites - al0; n < 300 {
		t.Fatalf("%d activity-log writes for 2048 random writes over 128 extents with 67 in the log; want evictions (at least 300)", n)
	}
	cmpFiles(t, c.a.disk, c.b.disk)
	out, err := c.a.command(c.a.upArgs("--al-extents", "66")...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--al-extents 66: use 67 to 65534") {
		t.Fatalf("urbd up --al-extents 66: %v: %s", err, out)
	}
}
