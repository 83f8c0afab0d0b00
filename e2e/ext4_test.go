package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fuseLoop exposes the NBD export at sock as a loop block device through
// nbdfuse, the way to put a filesystem on an export without a kernel NBD
// client. detach undoes it; it also runs at cleanup if not called.
func fuseLoop(t *testing.T, sock, dir string, size int64) (loop string, detach func()) {
	t.Helper()
	requireCmds(t, "nbdfuse", "losetup", "fusermount3")
	fuseDir := filepath.Join(dir, "fuse")
	must(t, os.MkdirAll(fuseDir, 0o755))
	fuse := startDaemon(t, "nbdfuse", fuseDir, "--unix", sock)
	nbdFile := filepath.Join(fuseDir, "nbd")
	deadline := time.Now().Add(20 * time.Second)
	for {
		if fi, err := os.Stat(nbdFile); err == nil && fi.Size() == size {
			break
		}
		if fuse.exited() || time.Now().After(deadline) {
			t.Fatalf("nbdfuse did not expose %s:\n%s", nbdFile, fuse.output())
		}
		time.Sleep(50 * time.Millisecond)
	}
	loop = strings.TrimSpace(runCmd(t, 30*time.Second, "losetup", "-f", "--show", nbdFile))
	done := false
	detach = func() {
		if done {
			return
		}
		done = true
		_, _ = tryCmd(20*time.Second, "losetup", "-d", loop)
		_, _ = tryCmd(20*time.Second, "fusermount3", "-u", fuseDir)
		fuse.wait(20 * time.Second)
	}
	t.Cleanup(detach)
	return loop, detach
}

// mountExt4 mounts dev at mnt; the returned function unmounts it (and runs at
// cleanup if not called).
func mountExt4(t *testing.T, dev, mnt string, opts ...string) (umount func()) {
	t.Helper()
	must(t, os.MkdirAll(mnt, 0o755))
	runCmd(t, 30*time.Second, "mount", append(opts, dev, mnt)...)
	mounted := true
	umount = func() {
		if mounted {
			mounted = false
			runCmd(t, 60*time.Second, "umount", mnt)
		}
	}
	t.Cleanup(func() {
		if mounted {
			_, _ = tryCmd(30*time.Second, "umount", "-l", mnt)
		}
	})
	return umount
}

// TestExt4Failover: ext4 on the primary's export; files written; unmount,
// demote, promote the other node, mount there: e2fsck clean and the files
// intact.
func TestExt4Failover(t *testing.T) {
	requireCmds(t, "mkfs.ext4", "e2fsck", "mount", "umount")
	const size = 256 << 20
	c := newCluster(t, clusterOpts{size: size})
	c.startBoth()

	loop, detach := fuseLoop(t, c.a.sock, c.a.dir, size)
	runCmd(t, 120*time.Second, "mkfs.ext4", "-q", "-F", loop)
	mnt := filepath.Join(c.dir, "mnt")
	umount := mountExt4(t, loop, mnt)
	want := writeTestFiles(t, mnt, 30)
	runCmd(t, 60*time.Second, "sync")
	umount()
	detach()

	c.a.ctl("secondary", "r0")
	c.b.waitFor("peer demoted", 10*time.Second, func(s statusT) bool { return s.PeerRole == "Secondary" })
	c.b.ctl("primary", "r0")
	loopB, _ := fuseLoop(t, c.b.sock, c.b.dir, size)
	runCmd(t, 120*time.Second, "e2fsck", "-fn", loopB)
	mountExt4(t, loopB, mnt, "-o", "ro")
	checkTestFiles(t, mnt, "after failover", want)
}

// writeTestFiles writes n files of different sizes in five directories
// under mnt and returns their contents by path relative to mnt.
func writeTestFiles(t *testing.T, mnt string, n int) map[string]string {
	t.Helper()
	want := map[string]string{}
	for i := range n {
		name := filepath.Join("dir"+string(rune('a'+i%5)), "file"+strings.Repeat("x", i))
		must(t, os.MkdirAll(filepath.Join(mnt, filepath.Dir(name)), 0o755))
		data := strings.Repeat(name+"\n", 500+i*300)
		must(t, os.WriteFile(filepath.Join(mnt, name), []byte(data), 0o644))
		want[name] = data
	}
	return want
}

// checkTestFiles fails the test unless every file of want is under mnt with
// its content.
func checkTestFiles(t *testing.T, mnt, when string, want map[string]string) {
	t.Helper()
	for name, data := range want {
		got, err := os.ReadFile(filepath.Join(mnt, name))
		if err != nil || string(got) != data {
			t.Fatalf("%s %s: %d bytes (%v), want %d", name, when, len(got), err, len(data))
		}
	}
}
