package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// failingDisk makes a disk file of size bytes whose operations named in
// fail ("pread", "pwrite", "flush", ...: nbdkit error filter names) fail
// with EIO while the file trigger exists; the others always work (see
// kitDisk). backing is the file nbdkit serves.
func failingDisk(t *testing.T, size int64, fail ...string) (disk, backing, trigger string) {
	d := newKitDisk(t, size, fail...)
	return d.path, d.backing, d.trigger
}

// kitDisk is a disk file served by nbdkit's file plugin behind its error
// filter, exposed as a file by nbdfuse: every write reaches nbdkit, and so
// does every read out of the page cache. Stopping nbdkit (SIGSTOP) hangs
// the disk.
type kitDisk struct {
	path    string  // the disk file, in the nbdfuse mount
	backing string  // the file nbdkit serves
	trigger string  // while it exists, the operations named in fail fail
	kit     *daemon // nbdkit
}

// hang stops nbdkit: every request to the disk waits, as on a hung disk,
// until answer (or the end of the test, before nbdfuse is unmounted).
func (d *kitDisk) hang(t *testing.T) {
	d.kit.signal(syscall.SIGSTOP)
	t.Cleanup(d.answer)
}

// answer lets nbdkit go on after hang.
func (d *kitDisk) answer() { d.kit.signal(syscall.SIGCONT) }

// newKitDisk makes a kitDisk of size bytes whose operations named in fail
// fail with EIO while its trigger exists. nbdkit and nbdfuse stop at the end
// of the test, after everything started later.
func newKitDisk(t *testing.T, size int64, fail ...string) *kitDisk {
	t.Helper()
	requireCmds(t, "nbdkit", "nbdfuse", "fusermount3")
	dir := shortTempDir(t)
	d := &kitDisk{backing: filepath.Join(dir, "backing.img"), trigger: filepath.Join(dir, "fail")}
	sock := filepath.Join(dir, "kit.sock")
	mnt := filepath.Join(dir, "fuse")
	must(t, os.MkdirAll(mnt, 0o755))
	makeSparseFile(t, d.backing, size)
	args := []string{"--foreground", "--unix", sock, "--filter=error", "file", "file=" + d.backing}
	for _, op := range fail {
		args = append(args, "error-"+op+"=EIO", "error-"+op+"-rate=100%", "error-"+op+"-file="+d.trigger)
	}
	d.kit = startDaemon(t, "nbdkit", args...)
	waitForSocket(t, sock, d.kit, 10*time.Second)
	fuse := startDaemon(t, "nbdfuse", mnt, "--unix", sock)
	t.Cleanup(func() { _, _ = tryCmd(20*time.Second, "fusermount3", "-u", mnt) })
	d.path = filepath.Join(mnt, "nbd")
	deadline := time.Now().Add(20 * time.Second)
	for {
		if fi, err := os.Stat(d.path); err == nil && fi.Size() == size {
			return d
		}
		if fuse.exited() || time.Now().After(deadline) {
			t.Fatalf("nbdfuse did not expose %s:\n%s", d.path, fuse.output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// failingPrimary starts a cluster whose node a runs on a failingDisk of 64
// MiB (the operations in fail fail while trigger exists), with a
// local-io-error handler that appends "EVENT REASON" lines to events, and
// makes a Primary once the nodes are in sync.
func failingPrimary(t *testing.T, fail ...string) (c *cluster, disk, backing, trigger, events string) {
	t.Helper()
	requireRoot(t)
	disk, backing, trigger = failingDisk(t, 64<<20, fail...)
	c = newCluster(t, clusterOpts{})
	c.a.disk = disk
	events = filepath.Join(c.dir, "events")
	c.a.start("--handler", fmt.Sprintf(`local-io-error=echo "$URBD_EVENT $URBD_REASON" >> %s`, events))
	c.b.start()
	c.a.waitInSync(30 * time.Second)
	c.a.ctl("primary", "r0")
	return c, disk, backing, trigger, events
}

// TestPrimaryReadErrorsServedFromPeer: a Primary whose disk fails every read
// goes on serving correct data, from its UpToDate peer, as a mirror serves a
// bad disk's sectors from the other half: fio writes through the Primary,
// the disk's reads start failing, and every block fio reads back to verify
// checks out; the
// local-io-error handler names the error once. The ranges written back on
// the Primary leave both disks the same. Without the peer, the same reads fail
// with EIO, as the disk's own error.
func TestPrimaryReadErrorsServedFromPeer(t *testing.T) {
	c, disk, backing, trigger, events := failingPrimary(t, "pread")

	job := []string{"--rw=randwrite", "--bs=16k", "--size=16M", "--iodepth=8", "--verify=crc32c", "--verify_fatal=1"}
	runFio(t, c.a.uri(), append(job, "--do_verify=0")...)
	// Out of the page cache, so that the reads reach the failing disk.
	runCmd(t, time.Minute, "sync", disk)
	runCmd(t, time.Minute, "dd", "if="+disk, "iflag=nocache", "count=0", "status=none")
	must(t, writeFile(trigger, ""))
	runFio(t, c.a.uri(), append(job, "--verify_only")...)
	st := c.a.status()
	if st.Role != "Primary" || st.ConnState != "Connected" || st.DiskState != "UpToDate" || st.OutOfSyncKiB != 0 {
		t.Errorf("the Primary after serving its reads from the peer: %+v", st)
	}
	got, _ := os.ReadFile(events)
	if n := strings.Count(string(got), "local-io-error"); n != 1 || !strings.Contains(string(got), "served from the peer") {
		t.Errorf("local-io-error handler ran %d times, want once naming the peer; events file:\n%s", n, got)
	}

	// The data read from the peer was written back on the Primary; with
	// reads working again, both disks are still the same.
	must(t, os.Remove(trigger))
	c.a.ctl("secondary", "r0")
	c.a.stop()
	c.b.stop()
	cmpFiles(t, backing, c.b.disk)

	c.a.start()
	c.b.start()
	c.a.waitInSync(30 * time.Second)
	c.a.ctl("primary", "r0")
	c.b.ctl("disconnect", "r0")
	c.a.waitFor("peer gone", 30*time.Second, func(s statusT) bool { return s.ConnState != "Connected" })
	must(t, writeFile(trigger, ""))
	out, err := runFioErr(c.a.uri(), "--rw=read", "--bs=16k", "--size=1M")
	if err == nil || !strings.Contains(out, "Input/output error") {
		t.Errorf("reads of a failing disk without a peer: %v, want EIO:\n%s", err, out)
	}
}

// TestVerifyRewritesUnreadableDisk: `urbd verify` on a Primary whose disk
// fails every read scrubs it as md's check does: every block is read from
// the peer and written back, the nodes stay Connected, the status reason
// counts the blocks, and the local-io-error handler names the verify. With
// reads working again, both disks hold the same data.
func TestVerifyRewritesUnreadableDisk(t *testing.T) {
	c, disk, backing, trigger, events := failingPrimary(t, "pread")
	runFio(t, c.a.uri(), "--rw=randwrite", "--bs=16k", "--size=16M", "--iodepth=8")
	// Out of the page cache, so that the reads reach the failing disk.
	runCmd(t, time.Minute, "sync", disk)
	runCmd(t, time.Minute, "dd", "if="+disk, "iflag=nocache", "count=0", "status=none")
	must(t, writeFile(trigger, ""))

	c.a.ctl("verify", "r0")
	blocks := (64 << 20) / 4096
	c.a.waitLog(fmt.Sprintf(`reason="online verify finished: 0 blocks differ, %d unreadable here (%d rewritten from the peer)"`, blocks, blocks), 2*time.Minute)
	if st := c.a.status(); st.ConnState != "Connected" || st.DiskState != "UpToDate" || st.OutOfSyncKiB != 0 {
		t.Errorf("the Primary after its verify: %+v", st)
	}
	got, _ := os.ReadFile(events)
	if !strings.Contains(string(got), "during the online verify") || !strings.Contains(string(got), "rewritten from the peer") {
		t.Errorf("the local-io-error handler did not name the verify; events file:\n%s", got)
	}

	must(t, os.Remove(trigger))
	c.a.ctl("secondary", "r0")
	c.a.stop()
	c.b.stop()
	cmpFiles(t, backing, c.b.disk)
}

// diskDiesUnderFio runs an fio job that writes, flushes and verifies 32
// MiB through node a of failingPrimary, and makes a's disk fail (trigger)
// once fio has written a few MiB; fio must see no error. It returns the job,
// for a later --verify_only.
func diskDiesUnderFio(t *testing.T, c *cluster, trigger string) []string {
	t.Helper()
	job := []string{"--rw=randwrite", "--bs=16k", "--size=32M", "--iodepth=8", "--fsync=8", "--verify=crc32c", "--verify_fatal=1"}
	fio := startFio(c.a.uri(), job...)
	c.a.waitFor("fio writing", time.Minute, func(s statusT) bool { return s.DiskWriteKiB >= 4<<10 })
	must(t, writeFile(trigger, ""))
	if out, err := fio(); err != nil {
		t.Fatalf("fio through a Primary whose disk died: %v\n%s", err, out)
	}
	return job
}

// TestPrimaryDiskFailureDetaches: the Primary's disk dies (every read,
// write, trim and zeroing fails) in the middle of an fio run that writes,
// flushes and then verifies. The Primary detaches the disk (Diskless, as DRBD's
// on-io-error detach) and serves everything through its peer: fio sees no
// error and every block verifies; the status shows ds:Diskless/UpToDate and
// the local-io-error handler says the disk was detached. Failover: the
// Diskless node is demoted (it leaves the peer), the peer is promoted and
// holds every block fio wrote. urbd attach-disk on the repaired disk brings
// the node back, without a restart, as a Secondary that is fully resynced:
// both disks end byte-identical.
func TestPrimaryDiskFailureDetaches(t *testing.T) {
	c, _, backing, trigger, events := failingPrimary(t, "pread", "pwrite", "trim", "zero")
	job := diskDiesUnderFio(t, c, trigger)
	st := c.a.status()
	if st.Role != "Primary" || st.ConnState != "Connected" || st.DiskState != "Diskless" || st.PeerDisk != "UpToDate" {
		t.Fatalf("the Primary after its disk died: %+v, want a Connected Diskless Primary", st)
	}
	if text := string(fileBytes(t, filepath.Join(c.a.runDir, "r0", "status"))); !strings.Contains(text, "ds:Diskless/UpToDate") {
		t.Errorf("status file does not show ds:Diskless/UpToDate:\n%s", text)
	}
	if got := c.b.status(); got.PeerDisk != "Diskless" {
		t.Errorf("the peer shows the Primary's disk as %q, want Diskless", got.PeerDisk)
	}
	if got, _ := os.ReadFile(events); !strings.Contains(string(got), "local-io-error") || !strings.Contains(string(got), "disk detached") {
		t.Errorf("local-io-error handler did not report the detach; events file:\n%s", got)
	}
	if out, err := c.a.try("primary", "r0"); err != nil {
		t.Errorf("primary on the Diskless Primary: %v: %s", err, out)
	}

	// Failover to the peer, which holds every block.
	c.a.ctl("secondary", "r0")
	c.a.waitFor("StandAlone", 30*time.Second, func(s statusT) bool { return s.ConnState == "StandAlone" })
	if out, err := c.a.try("connect", "r0"); err == nil || !strings.Contains(out, "Diskless") {
		t.Errorf("connect on a Diskless node: %v: %s, want a refusal naming Diskless", err, out)
	}
	c.b.waitFor("peer gone", 30*time.Second, func(s statusT) bool { return s.ConnState != "Connected" })
	c.b.ctl("primary", "r0")
	runFio(t, c.b.uri(), append(job, "--verify_only")...)

	// The disk repaired, attach-disk brings the node back, without a
	// restart, as a Secondary that is fully resynced.
	must(t, os.Remove(trigger))
	msg := c.a.ctl("attach-disk", "r0")
	if !strings.Contains(msg, "full resync of 64MiB from the peer") {
		t.Errorf("attach-disk on the Diskless Secondary said %q", msg)
	}
	st = c.a.waitInSync(60 * time.Second)
	if st.Role != "Secondary" || st.DiskState != "UpToDate" {
		t.Errorf("after attach-disk: %+v, want an UpToDate Secondary", st)
	}
	c.a.stop()
	c.a.start()
	if st := c.a.waitInSync(60 * time.Second); st.Role != "Secondary" || st.OutOfSyncKiB != 0 {
		t.Errorf("restarted after attach-disk: %+v", st)
	}
	c.b.ctl("secondary", "r0")
	c.a.stop()
	c.b.stop()
	cmpFiles(t, backing, c.b.disk)
}

// TestPrimaryDiskFailurePassOn: with --on-io-error pass_on the Primary
// keeps a disk that fails writes: the application gets EIO and the disk
// stays UpToDate. An unknown policy is refused in one line.
func TestPrimaryDiskFailurePassOn(t *testing.T) {
	requireRoot(t)
	disk, _, trigger := failingDisk(t, 64<<20, "pwrite")
	c := newCluster(t, clusterOpts{})
	c.a.disk = disk
	args := []string{"--run-dir", c.a.runDir, "up", "--disk", c.a.disk, "--meta", c.a.meta,
		"--nbd", "unix:" + c.a.sock, "--listen-peer", c.a.listen, "--peer", c.a.peer, "--on-io-error", "panic", "r0"}
	out, err := tryCmd(30*time.Second, urbdBin, args...)
	if want := `unknown on-io-error policy "panic": use detach or pass_on`; err == nil || !strings.Contains(out, want) || strings.Count(strings.TrimSpace(out), "\n") > 0 {
		t.Errorf("urbd up --on-io-error panic: %v, output %q; want one line containing %q", err, out, want)
	}
	c.a.start("--on-io-error", "pass_on")
	c.b.start()
	c.a.waitInSync(30 * time.Second)
	c.a.ctl("primary", "r0")
	must(t, writeFile(trigger, ""))
	out, err = runFioErr(c.a.uri(), "--rw=write", "--bs=64k", "--size=1M")
	if err == nil || !strings.Contains(out, "Input/output error") {
		t.Errorf("writes to a failing disk with pass_on: %v, want EIO:\n%s", err, out)
	}
	if st := c.a.status(); st.DiskState != "UpToDate" || st.ConnState == "StandAlone" {
		t.Errorf("the Primary after pass_on errors: %+v, want its disk UpToDate", st)
	}
}

// TestAttachDiskOnline: the Primary's disk dies under fio and is detached
// (Diskless); once it works again, urbd attach-disk gives it back while a
// second fio run writes and verifies through the Primary: the daemon copies
// the peer's data to the disk, the node becomes UpToDate again and fio sees
// no error. Refused, in one line, on the peer, whose disk is not detached.
// Both disks end byte-identical.
func TestAttachDiskOnline(t *testing.T) {
	c, _, backing, trigger, _ := failingPrimary(t, "pread", "pwrite", "trim", "zero")
	job := diskDiesUnderFio(t, c, trigger)
	c.a.waitFor("Diskless", time.Minute, func(s statusT) bool { return s.DiskState == "Diskless" })

	if out, err := c.b.try("attach-disk", "r0"); err == nil || !strings.Contains(out, "not detached: it is UpToDate") || strings.Count(strings.TrimSpace(out), "\n") > 0 {
		t.Errorf("attach-disk on the UpToDate peer: %v, %q; want a one-line refusal", err, out)
	}
	must(t, os.Remove(trigger)) // the disk works again
	sent := c.a.status().NetSendKiB
	job2 := append(slices.Clone(job), "--offset=32M") // the disk's other half
	fio2 := startFio(c.a.uri(), job2...)
	c.a.waitFor("fio writing again", time.Minute, func(s statusT) bool { return s.NetSendKiB >= sent+2<<10 })
	msg := c.a.ctl("attach-disk", "r0")
	if !strings.Contains(msg, "copying 64MiB from the peer") {
		t.Errorf("attach-disk said %q", msg)
	}
	st := c.a.waitFor("UpToDate", 2*time.Minute, func(s statusT) bool { return s.DiskState == "UpToDate" })
	if st.Role != "Primary" || st.PeerDisk != "UpToDate" || !strings.Contains(st.Reason, "attached") {
		t.Errorf("after attach-disk: %+v", st)
	}
	if out, err := fio2(); err != nil {
		t.Fatalf("fio during attach-disk: %v\n%s", err, out)
	}
	runFio(t, c.a.uri(), append(job, "--verify_only")...)
	c.a.ctl("secondary", "r0")
	c.a.stop()
	c.b.stop()
	cmpFiles(t, backing, c.b.disk)
}

// TestDetachDiskReplace: the operator replaces working disks without
// stopping anything, as with DRBD's detach and attach. On the Primary, urbd
// detach-disk takes the disk out (Diskless) and closes it; the file is
// removed and a new one put at its path; fio verifies every block through
// the peer meanwhile, and attach-disk copies the data back while a second
// fio run writes. On the Secondary, detach-disk leaves it Diskless and
// StandAlone while the Primary writes alone; its new disk is fully
// resynced by attach-disk. Both disks end byte-identical.
func TestDetachDiskReplace(t *testing.T) {
	c := newCluster(t, clusterOpts{})
	c.startBoth()
	job := []string{"--rw=randwrite", "--bs=16k", "--size=32M", "--iodepth=8", "--fsync=8", "--verify=crc32c", "--verify_fatal=1"}
	runFio(t, c.a.uri(), job...)

	if msg := c.a.ctl("detach-disk", "r0"); !strings.Contains(msg, "detached and closed "+c.a.disk+"; Diskless") {
		t.Errorf("detach-disk on the Primary said %q", msg)
	}
	if st := c.a.status(); st.DiskState != "Diskless" || st.ConnState != "Connected" {
		t.Fatalf("the Primary after detach-disk: %+v, want a connected Diskless Primary", st)
	}
	if out, err := c.a.try("detach-disk", "r0"); err == nil || !strings.Contains(out, "detached already") || strings.Count(strings.TrimSpace(out), "\n") > 0 {
		t.Errorf("a second detach-disk: %v, %q; want a one-line refusal", err, out)
	}
	if holdsFile(t, c.a.cmd.Process.Pid, c.a.disk) {
		t.Errorf("the daemon still holds %s open after detach-disk", c.a.disk)
	}
	if out, err := c.b.try("detach-disk", "r0"); err == nil || !strings.Contains(out, "would lose access to its data") || strings.Count(strings.TrimSpace(out), "\n") > 0 {
		t.Errorf("detach-disk on the Secondary of a Diskless Primary: %v, %q; want a one-line refusal", err, out)
	}
	if out, err := c.a.try("disconnect", "r0"); err == nil || !strings.Contains(out, "would lose access to its data") || strings.Count(strings.TrimSpace(out), "\n") > 0 {
		t.Errorf("disconnect of a Diskless Primary: %v, %q; want a one-line refusal", err, out)
	}
	c.a.ctl("disconnect", "--force", "r0")
	c.a.ctl("connect", "r0")
	c.a.waitFor("Connected again", 30*time.Second, func(s statusT) bool { return s.ConnState == "Connected" })
	// The Secondary's daemon restarted (an upgrade) comes back UpToDate, and
	// the Diskless Primary goes on through it.
	c.b.stop()
	c.b.start()
	c.a.waitFor("Connected to the restarted peer", 30*time.Second, func(s statusT) bool {
		return s.ConnState == "Connected" && s.PeerDisk == "UpToDate"
	})
	newDisk(t, c.a.disk, 64<<20)
	runFio(t, c.a.uri(), append(job, "--verify_only")...)
	job2 := append(slices.Clone(job), "--offset=32M") // the disk's other half
	fio2 := startFio(c.a.uri(), job2...)
	if msg := c.a.ctl("attach-disk", "r0"); !strings.Contains(msg, "copying 64MiB from the peer") {
		t.Errorf("attach-disk on the Primary said %q", msg)
	}
	c.a.waitFor("UpToDate", 2*time.Minute, func(s statusT) bool { return s.DiskState == "UpToDate" })
	if out, err := fio2(); err != nil {
		t.Fatalf("fio during attach-disk: %v\n%s", err, out)
	}
	runFio(t, c.a.uri(), append(job, "--verify_only")...)

	if msg := c.b.ctl("detach-disk", "r0"); !strings.Contains(msg, "Diskless and StandAlone") {
		t.Errorf("detach-disk on the Secondary said %q", msg)
	}
	c.a.waitFor("peer gone", 30*time.Second, func(s statusT) bool { return s.ConnState != "Connected" })
	runFio(t, c.a.uri(), job2...) // alone
	newDisk(t, c.b.disk, 64<<20)
	if msg := c.b.ctl("attach-disk", "r0"); !strings.Contains(msg, "full resync of 64MiB") {
		t.Errorf("attach-disk on the Secondary said %q", msg)
	}
	c.b.waitInSync(2 * time.Minute)

	// The same disk back (--same-disk): only what the Primary wrote
	// meanwhile is copied. Another disk at the path is refused.
	if msg := c.b.ctl("detach-disk", "r0"); !strings.Contains(msg, "--same-disk") {
		t.Errorf("detach-disk on the Secondary said %q", msg)
	}
	c.a.waitFor("peer gone", 30*time.Second, func(s statusT) bool { return s.ConnState != "Connected" })
	runFio(t, c.a.uri(), "--rw=randwrite", "--bs=4k", "--size=4M", "--offset=16M", "--iodepth=8")
	must(t, os.Rename(c.b.disk, c.b.disk+".old")) // the detached disk aside, a blank one in its place
	must(t, os.WriteFile(c.b.disk, nil, 0o644))
	must(t, os.Truncate(c.b.disk, 64<<20))
	if out, err := c.b.try("attach-disk", "--same-disk", "r0"); err == nil || !strings.Contains(out, "contents differ") || strings.Contains(out, "\n") {
		t.Errorf("attach-disk --same-disk of a blank disk: %v, %q; want a one-line refusal", err, out)
	}
	must(t, os.Rename(c.b.disk+".old", c.b.disk))
	recv := c.b.status().NetRecvKiB
	if msg := c.b.ctl("attach-disk", "--same-disk", "r0"); !strings.Contains(msg, "attached "+c.b.disk+" again") {
		t.Errorf("attach-disk --same-disk said %q", msg)
	}
	c.b.waitInSync(2 * time.Minute)
	if got := c.b.status().NetRecvKiB - recv; got > 16<<10 {
		t.Errorf("the resync after attach-disk --same-disk received %d KiB, want about the 4 MiB written meanwhile, not the 64 MiB disk", got)
	}

	// The Primary takes its own disk back: only what it wrote meanwhile,
	// through the peer, is copied.
	c.a.ctl("detach-disk", "r0")
	runFio(t, c.a.uri(), "--rw=randwrite", "--bs=4k", "--size=4M", "--offset=40M", "--iodepth=8")
	recv = c.a.status().NetRecvKiB
	if msg := c.a.ctl("attach-disk", "--same-disk", "r0"); !strings.Contains(msg, "copying what was written since detach-disk") {
		t.Errorf("attach-disk --same-disk on the Primary said %q", msg)
	}
	c.a.waitFor("UpToDate", 2*time.Minute, func(s statusT) bool { return s.DiskState == "UpToDate" })
	if got := c.a.status().NetRecvKiB - recv; got > 16<<10 {
		t.Errorf("the copy after attach-disk --same-disk on the Primary received %d KiB, want about the 4 MiB written meanwhile, not the 64 MiB disk", got)
	}
	c.a.ctl("secondary", "r0")
	c.a.stop()
	c.b.stop()
	cmpFiles(t, c.a.disk, c.b.disk)
}

// TestAttachDiskRestartComparesChecksums: a Primary's daemon killed while
// attach-disk copies its data to a new disk comes back Secondary and
// Inconsistent, and the full resync from the peer compares checksums, so
// that what the copy had filled before the kill does not travel again: the
// node receives about the half not copied yet, not the whole 64 MiB disk.
// Both disks end byte-identical.
func TestAttachDiskRestartComparesChecksums(t *testing.T) {
	c := newCluster(t, clusterOpts{})
	c.startBoth()
	runFio(t, c.a.uri(), "--rw=write", "--bs=1M", "--size=64M", "--iodepth=4")
	c.a.ctl("detach-disk", "r0")
	newDisk(t, c.a.disk, 64<<20)
	c.a.ctl("adjust", "--resync-rate", "8MiB", "r0")
	c.a.ctl("attach-disk", "r0")
	c.a.waitFor("half the disk copied", time.Minute, func(s statusT) bool {
		return s.Sync != nil && s.Sync.RemainingKiB <= s.Sync.TotalKiB/2
	})
	c.a.kill9()
	c.a.start()
	if st := c.a.waitInSync(2 * time.Minute); st.Role != "Secondary" {
		t.Errorf("restarted during attach-disk: %+v, want Secondary", st)
	}
	got := c.a.status().NetRecvKiB
	t.Logf("the resync after the restart received %d KiB of the 64 MiB disk", got)
	if got > 48<<10 {
		t.Errorf("the resync after the restart received %d KiB of the 64 MiB disk, want about the half attach-disk had not copied", got)
	}
	if log, _ := os.ReadFile(c.a.logPath); !strings.Contains(string(log), "the resync compares checksums") {
		t.Error("the restarted node's log does not say that the resync compared checksums")
	}
	c.a.stop()
	c.b.stop()
	cmpFiles(t, c.a.disk, c.b.disk)
}

// TestSameDiskRefusedAfterLostWrites: attach-disk --same-disk refuses a disk
// that lost a write while it was detached, which Linux reports as a
// write-back error to the next file opened on it. The Secondary's disk is a
// loop device over a sparse file on a small tmpfs; while detached, a
// buffered write to it fails its write-back (the tmpfs is full). The
// refusal is one line naming the lost writes, and a plain attach-disk (a full
// resync) then makes the disk equal to the Primary's.
func TestSameDiskRefusedAfterLostWrites(t *testing.T) {
	requireCmds(t, "losetup", "blockdev", "mount", "umount", "dd")
	c := newCluster(t, clusterOpts{})
	small := filepath.Join(c.dir, "small")
	must(t, os.MkdirAll(small, 0o755))
	runCmd(t, 30*time.Second, "mount", "-t", "tmpfs", "-o", "size=80m", "tmpfs", small)
	t.Cleanup(func() { _, _ = tryCmd(30*time.Second, "umount", "-l", small) })
	img := filepath.Join(small, "disk.img")
	must(t, os.WriteFile(img, nil, 0o644))
	must(t, os.Truncate(img, 64<<20))
	loop := strings.TrimSpace(runCmd(t, 30*time.Second, "losetup", "-f", "--show", img))
	t.Cleanup(func() { _, _ = tryCmd(30*time.Second, "losetup", "-d", loop) })
	c.b.disk = loop
	c.startBoth()
	runFio(t, c.a.uri(), "--rw=randwrite", "--bs=16k", "--size=4M", "--iodepth=8", "--fsync=8")
	c.a.waitInSync(30 * time.Second)

	if msg := c.b.ctl("detach-disk", "r0"); !strings.Contains(msg, "--same-disk") {
		t.Errorf("detach-disk on the Secondary said %q", msg)
	}
	// Fill the tmpfs, then write a block of the disk that the sparse file
	// holds no page for: its write-back fails, after dd has exited.
	filler := filepath.Join(small, "filler")
	_, _ = tryCmd(30*time.Second, "dd", "if=/dev/zero", "of="+filler, "bs=1M", "status=none")
	_, _ = tryCmd(30*time.Second, "dd", "if=/dev/urandom", "of="+loop, "bs=4k", "count=1", "seek=8192", "status=none")
	_, _ = tryCmd(30*time.Second, "blockdev", "--flushbufs", loop)
	must(t, os.Remove(filler))

	out, err := c.b.try("attach-disk", "--same-disk", "r0")
	if err == nil || !strings.Contains(out, "lost writes since it was detached") || strings.Contains(strings.TrimSpace(out), "\n") {
		t.Fatalf("attach-disk --same-disk of a disk that lost a write: %v, %q; want a one-line refusal naming the lost writes", err, out)
	}
	if st := c.b.status(); st.DiskState != "Diskless" || st.ConnState != "StandAlone" {
		t.Errorf("after the refusal: %s %s, want Diskless and StandAlone", st.DiskState, st.ConnState)
	}
	if msg := c.b.ctl("attach-disk", "r0"); !strings.Contains(msg, "full resync of 64MiB") {
		t.Errorf("attach-disk on the Secondary said %q", msg)
	}
	c.b.waitInSync(2 * time.Minute)
	c.a.ctl("secondary", "r0")
	c.a.stop()
	c.b.stop()
	cmpFiles(t, c.a.disk, loop)
}

// newDisk removes the file at path and puts an empty one of size bytes
// there, as lvremove and lvcreate replace a volume.
func newDisk(t *testing.T, path string, size int64) {
	t.Helper()
	must(t, os.Remove(path))
	must(t, os.WriteFile(path, nil, 0o644))
	must(t, os.Truncate(path, size))
}

// holdsFile reports whether process pid has path open.
func holdsFile(t *testing.T, pid int, path string) bool {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(dir)
	must(t, err)
	for _, fd := range fds {
		if target, err := os.Readlink(filepath.Join(dir, fd.Name())); err == nil && strings.TrimSuffix(target, " (deleted)") == path {
			return true
		}
	}
	return false
}

// TestAttachDiskRepairedByChecksum: with csums-alg sha256, urbd attach-disk
// of the Primary's own disk, taken out and back with 2 MiB of it lost in
// between (a repaired disk, not the one detach-disk remembers), receives
// about those 2 MiB, not the 64 MiB disk, while fio writes; what fio wrote
// verifies afterwards, and both disks end byte-identical.
func TestAttachDiskRepairedByChecksum(t *testing.T) {
	c := newCluster(t, clusterOpts{})
	c.startBoth()
	runFio(t, c.a.uri(), "--rw=write", "--bs=1M", "--size=64M", "--iodepth=4")
	c.a.ctl("adjust", "--csums-alg", "sha256", "r0")
	c.a.ctl("detach-disk", "r0")
	f, err := os.OpenFile(c.a.disk, os.O_WRONLY, 0)
	must(t, err)
	_, err = f.WriteAt(bytes.Repeat([]byte("lost"), 512<<10), 20<<20) // 2 MiB
	must(t, err)
	must(t, f.Close())
	recv := c.a.status().NetRecvKiB
	job := []string{"--rw=randwrite", "--bs=16k", "--size=8M", "--offset=48M", "--iodepth=4", "--verify=crc32c", "--verify_fatal=1", "--do_verify=0"}
	fio := startFio(c.a.uri(), job...)
	if msg := c.a.ctl("attach-disk", "r0"); !strings.Contains(msg, "comparing 64MiB with the peer by checksum (csums-alg)") {
		t.Errorf("attach-disk said %q", msg)
	}
	if st := c.a.status(); !strings.Contains(st.Reason, "only blocks whose checksums differ are copied") && st.DiskState != "UpToDate" {
		t.Errorf("the reason during the copy, %q, does not say that it compares checksums", st.Reason)
	}
	c.a.waitFor("UpToDate", 2*time.Minute, func(s statusT) bool { return s.DiskState == "UpToDate" })
	if out, err := fio(); err != nil {
		t.Fatalf("fio during attach-disk: %v\n%s", err, out)
	}
	got := c.a.status().NetRecvKiB - recv
	t.Logf("attach-disk of the repaired disk received %d KiB", got)
	if got < 2<<10 || got > 3<<10 {
		t.Errorf("attach-disk of the repaired disk received %d KiB, want the 2 MiB it lost, not the 64 MiB disk", got)
	}
	runFio(t, c.a.uri(), append(job[:len(job)-1], "--verify_only")...)
	c.a.ctl("secondary", "r0")
	c.a.stop()
	c.b.stop()
	cmpFiles(t, c.a.disk, c.b.disk)
}
