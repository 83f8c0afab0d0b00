package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSecondaryDiskErrorNotPromotable: the Secondary's disk is a 64 MiB
// sparse file on an 8 MiB tmpfs, so its writes fail with ENOSPC once the
// Primary wrote more than that. The Primary's client sees every write
// succeed; the Secondary turns Inconsistent, runs the local-io-error handler
// with the error, and when the repairing resync fails as well it waits
// StandAlone, with the error in its status, refusing promotion.
func TestSecondaryDiskErrorNotPromotable(t *testing.T) {
	c := newCluster(t, clusterOpts{})
	small := filepath.Join(c.dir, "small")
	must(t, os.MkdirAll(small, 0o755))
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", small).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", small).Run() })
	c.b.disk = filepath.Join(small, "disk.img")
	must(t, os.WriteFile(c.b.disk, nil, 0o644))
	must(t, os.Truncate(c.b.disk, 64<<20))
	events := filepath.Join(c.dir, "events")

	c.a.start()
	c.b.start("--handler", fmt.Sprintf(`local-io-error=echo "$URBD_EVENT $URBD_REASON" >> %s`, events))
	c.a.waitInSync(30 * time.Second)
	c.a.ctl("primary", "r0")
	runFio(t, c.a.uri(), "--rw=write", "--bs=1M", "--size=32M", "--iodepth=4")

	st := c.b.waitFor("StandAlone and Inconsistent", 30*time.Second, func(s statusT) bool {
		return s.ConnState == "StandAlone" && s.DiskState == "Inconsistent"
	})
	if !strings.Contains(st.Reason, "local disk error") || !strings.Contains(st.Reason, "no space left on device") {
		t.Errorf("the Secondary's reason does not name the disk error: %q", st.Reason)
	}
	if out, err := c.b.try("primary", "r0"); err == nil || !strings.Contains(out, "not UpToDate") {
		t.Errorf("urbd primary on the failed Secondary: %v: %s; want a refusal naming the disk state", err, out)
	}
	if a := c.a.status(); a.Role != "Primary" || a.OutOfSyncKiB == 0 {
		t.Errorf("the Primary after its peer's disk failed: role %s, %d KiB out of sync; want Primary with the failed writes marked", a.Role, a.OutOfSyncKiB)
	}
	got, _ := os.ReadFile(events)
	if !strings.Contains(string(got), "local-io-error local disk error") {
		t.Errorf("the local-io-error handler did not run with the reason; events file:\n%s", got)
	}
}
