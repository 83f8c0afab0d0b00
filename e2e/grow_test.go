package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/urbd/urbd/status"
)

// TestGrowDisks: the operator grows both disks (lvextend) while the resource
// is down. `urbd up` refuses the larger disk with a message that names
// --grow; with --grow each node's metadata covers the new part and marks it
// out of sync, the Primary's copy of it is resynced to the Secondary (whose
// new part held other bytes), the data written before is intact, and the
// export has the new size. A node started on the old size meanwhile is
// refused by both for its other disk size, and nothing reaches its disk. A
// disk that shrank is refused.
func TestGrowDisks(t *testing.T) {
	const oldSize, newSize = 32 << 20, 48 << 20
	c := newCluster(t, clusterOpts{size: oldSize})
	c.startBoth()
	runFio(t, c.a.uri(), "--rw=randwrite", "--bs=64k", "--size=8M", "--iodepth=8",
		"--verify=crc32c", "--do_verify=1", "--randrepeat=0")
	c.a.waitInSync(30 * time.Second)
	c.b.stop() // the Secondary first, as OPERATIONS says (TestExt4Grow stops the Primary first)
	c.a.stop()
	before := fileBytes(t, c.a.disk)

	// Node a's disk grows with zeros; node b's, later, with other bytes.
	must(t, os.Truncate(c.a.disk, newSize))

	out, err := c.a.command(c.a.upArgs()...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "start with --grow") {
		t.Fatalf("urbd up on the grown disk without --grow: %v: %s", err, out)
	}
	if lines := strings.Split(strings.TrimSpace(string(out)), "\n"); !strings.HasPrefix(lines[len(lines)-1], "urbd: --disk ") {
		t.Fatalf("the refusal does not end in one urbd: line: %s", out)
	}

	c.a.start("--grow")
	st := c.a.waitFor("the new part out of sync", 20*time.Second, func(s status.Resource) bool {
		return s.Role == "Primary" && s.OutOfSyncKiB >= (newSize-oldSize)>>10
	})
	if want := "disk grew from 32MiB to 48MiB"; !strings.Contains(st.Reason, want) || st.SizeKiB != newSize>>10 {
		t.Fatalf("status reason %q does not say %q, or size %d KiB is not the new size", st.Reason, want, st.SizeKiB)
	}
	if st.OutOfSyncKiB > (newSize-oldSize)>>10+4 {
		t.Fatalf("%d KiB out of sync after the grow; want the new %d KiB", st.OutOfSyncKiB, (newSize-oldSize)>>10)
	}
	// b, started before its disk grew, is refused for its other size on
	// both sides, and its disk is left as it was.
	bBefore := fileBytes(t, c.b.disk)
	c.b.start()
	for _, n := range []*node{c.a, c.b} {
		n.waitFor("the size mismatch refused", 20*time.Second, func(s status.Resource) bool {
			return s.ConnState != "Connected" && strings.Contains(s.Reason, "disk size mismatch")
		})
	}
	c.b.stop()
	if !bytes.Equal(fileBytes(t, c.b.disk), bBefore) {
		t.Fatal("the refused peer's disk changed")
	}

	growWithJunk(t, c.b.disk, newSize-oldSize)
	c.b.start("--grow")
	c.a.waitInSync(60 * time.Second)
	cmpFiles(t, c.a.disk, c.b.disk)
	after := fileBytes(t, c.b.disk)
	if int64(len(after)) != newSize || !bytes.Equal(after[:oldSize], before) || bytes.Contains(after[oldSize:], []byte("not the primary's")) {
		t.Fatal("after the resync the Secondary's disk is not the Primary's old data followed by the Primary's new part")
	}
	size := strings.TrimSpace(runCmd(t, 30*time.Second, "nbdinfo", "--size", c.a.uri()))
	if size != strconv.Itoa(newSize) {
		t.Fatalf("the export is %s bytes, want %d", size, newSize)
	}
	// Restarting needs no --grow any more.
	c.b.stop()
	c.b.start()
	c.a.waitInSync(30 * time.Second)

	// A disk that shrank is refused, --grow or not, and keeps its data.
	c.b.stop()
	must(t, os.Truncate(c.b.disk, oldSize))
	out, err = c.b.command(c.b.upArgs("--grow")...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "cannot shrink") {
		t.Fatalf("urbd up on a smaller disk: %v: %s", err, out)
	}
}

// TestExt4Grow: the operator's whole procedure. ext4 on the Primary's
// export holds files; both disks grow while the resource is down; after
// `urbd up --grow` on both, e2fsck and resize2fs on the export give a larger
// file system that keeps the files and takes a file larger than the old
// disk, and both disks end identical.
func TestExt4Grow(t *testing.T) {
	requireCmds(t, "mkfs.ext4", "e2fsck", "resize2fs", "mount", "umount")
	const oldSize, newSize = 64 << 20, 192 << 20
	c := newCluster(t, clusterOpts{size: oldSize})
	c.startBoth()
	mnt := filepath.Join(c.dir, "mnt")

	loop, detach := fuseLoop(t, c.a.sock, c.a.dir, oldSize)
	runCmd(t, 120*time.Second, "mkfs.ext4", "-q", "-F", loop)
	umount := mountExt4(t, loop, mnt)
	want := writeTestFiles(t, mnt, 20)
	runCmd(t, 60*time.Second, "sync")
	umount()
	detach()
	c.a.waitInSync(30 * time.Second)
	c.a.stop()
	c.b.stop()

	must(t, os.Truncate(c.a.disk, newSize))
	must(t, os.Truncate(c.b.disk, newSize))
	c.a.start("--grow")
	c.b.start("--grow")
	c.a.waitInSync(60 * time.Second)

	loop, detach = fuseLoop(t, c.a.sock, c.a.dir, newSize)
	runCmd(t, 120*time.Second, "e2fsck", "-f", "-y", loop)
	runCmd(t, 120*time.Second, "resize2fs", loop)
	umount = mountExt4(t, loop, mnt)
	checkTestFiles(t, mnt, "after the grow", want)
	big := bytes.Repeat([]byte("after the grow\n"), (oldSize+(16<<20))/15) // larger than the old disk
	must(t, os.WriteFile(filepath.Join(mnt, "big"), big, 0o644))
	runCmd(t, 60*time.Second, "sync")
	umount()
	detach()
	c.a.waitInSync(60 * time.Second)
	cmpFiles(t, c.a.disk, c.b.disk)
}

// TestResizeOnline: the operator grows both disks while the resource runs
// and an application writes, then runs `urbd resize` on the Primary. Before
// the disks grow it is refused in one line and changes nothing; afterwards
// both nodes take the new size without a restart, the application's writes
// all verify, the Secondary's new part (other bytes there) is resynced from
// the Primary, new NBD connections see the new size and can write at its
// end, and a later restart needs no --grow. Grown again with zeroes on both,
// --assume-clean keeps the nodes connected and resyncs nothing.
func TestResizeOnline(t *testing.T) {
	const oldSize, newSize = 32 << 20, 48 << 20
	c := newCluster(t, clusterOpts{size: oldSize})
	c.startBoth()
	c.a.waitInSync(30 * time.Second)

	out, err := c.a.try("resize", "r0")
	if err == nil || !strings.Contains(out, "grow it on both nodes first") || strings.Count(out, "\n") > 0 {
		t.Fatalf("urbd resize before the disks grew: %v: %q; want one line refusing", err, out)
	}
	if st := c.a.status(); st.SizeKiB != oldSize>>10 {
		t.Fatalf("size %d KiB after a refused resize, want %d", st.SizeKiB, oldSize>>10)
	}

	must(t, os.Truncate(c.a.disk, newSize))
	growWithJunk(t, c.b.disk, newSize-oldSize)

	// The application writes (and then verifies) throughout the resize.
	fioDone := make(chan error, 1)
	go func() {
		out, err := runFioErr(c.a.uri(), "--rw=randwrite", "--bs=16k", "--size=16M", "--iodepth=4",
			"--rate=4m", "--verify=crc32c", "--do_verify=1", "--randrepeat=0")
		if err != nil {
			err = fmt.Errorf("%w\n%s", err, out)
		}
		fioDone <- err
	}()
	time.Sleep(time.Second)
	out = c.a.ctl("resize", "r0")
	if !strings.Contains(out, "grown from 32MiB to 48MiB on both nodes") {
		t.Fatalf("urbd resize: %q", out)
	}
	if err := <-fioDone; err != nil {
		t.Fatalf("fio writing through the resize: %v", err)
	}
	c.a.waitInSync(60 * time.Second)
	cmpFiles(t, c.a.disk, c.b.disk)
	if bytes.Contains(fileBytes(t, c.b.disk)[oldSize:], []byte("not the primary's")) {
		t.Fatal("the Secondary's new part was not resynced from the Primary")
	}
	for _, n := range []*node{c.a, c.b} {
		if st := n.status(); st.SizeKiB != newSize>>10 {
			t.Fatalf("node %s: size %d KiB after the resize, want %d", n.name, st.SizeKiB, newSize>>10)
		}
	}
	if size := strings.TrimSpace(runCmd(t, 30*time.Second, "nbdinfo", "--size", c.a.uri())); size != strconv.Itoa(newSize) {
		t.Fatalf("a new NBD connection sees %s bytes, want %d", size, newSize)
	}
	runFio(t, c.a.uri(), "--rw=write", "--bs=64k", "--offset=40M", "--size=8M",
		"--verify=crc32c", "--do_verify=1")
	c.a.waitInSync(30 * time.Second)
	cmpFiles(t, c.a.disk, c.b.disk)

	// The metadata has the new size: restarts need no --grow.
	c.b.stop()
	c.b.start()
	c.a.waitInSync(30 * time.Second)

	// Grown again with zeroes on both: --assume-clean resyncs nothing and
	// the nodes stay connected.
	const cleanSize = newSize + 16<<20
	must(t, os.Truncate(c.a.disk, cleanSize))
	must(t, os.Truncate(c.b.disk, cleanSize))
	if out := c.a.ctl("resize", "--assume-clean", "r0"); !strings.Contains(out, "grown from 48MiB to 64MiB on both nodes; the new 16MiB is taken as equal on both (assume-clean): nothing to resync") {
		t.Fatalf("urbd resize --assume-clean: %q", out)
	}
	if st := c.a.status(); st.ConnState != "Connected" || st.OutOfSyncKiB != 0 || st.SizeKiB != cleanSize>>10 {
		t.Fatalf("after urbd resize --assume-clean: %s, %d KiB out of sync, size %d KiB; want Connected, 0, %d",
			st.ConnState, st.OutOfSyncKiB, st.SizeKiB, cleanSize>>10)
	}
	runFio(t, c.a.uri(), "--rw=write", "--bs=64k", "--offset=56M", "--size=8M", "--verify=crc32c", "--do_verify=1")
	c.a.waitInSync(30 * time.Second)
	cmpFiles(t, c.a.disk, c.b.disk)
}

// growWithJunk grows the file at path by n bytes of text that is not the
// Primary's, as a disk grown with other bytes in its new part.
func growWithJunk(t *testing.T, path string, n int) {
	t.Helper()
	junk := bytes.Repeat([]byte("not the primary's data "), n/23+1)[:n]
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	must(t, err)
	_, err = f.Write(junk)
	must(t, err)
	must(t, f.Close())
}
