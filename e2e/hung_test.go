package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestHungSecondaryDisk: the Secondary's disk stops answering (nbdkit,
// which serves it, is stopped), while the Secondary's daemon still answers
// pings. The Primary's client does not hang with it: once a write has waited
// ko-count × timeout (3 × 1s) the Primary drops the peer and goes on alone,
// fio finishes without an error, the Secondary refuses to reconnect while
// its disk still holds the last connection's writes (so the writes that
// follow do not wait again), both nodes say so, and once the disk answers
// again the nodes reconnect and resync: both disks hold the same data.
func TestHungSecondaryDisk(t *testing.T) {
	c, disk := kitSecondary(t)
	if out, err := c.a.command(c.a.upArgs("--ko-count", "201")...).CombinedOutput(); err == nil || !strings.Contains(string(out), "--ko-count 201: use 0 (never drop a peer that answers pings) to 200") {
		t.Fatalf("urbd up --ko-count 201: %v: %s", err, out)
	}
	c.a.start("--timeout", "1s", "--ko-count", "3")
	c.b.start("--timeout", "1s", "--ko-count", "3")
	c.a.waitInSync(30 * time.Second)
	c.a.ctl("primary", "r0")
	runFio(t, c.a.uri(), "--rw=randwrite", "--bs=16k", "--size=4M", "--iodepth=8")

	disk.hang(t)
	start := time.Now()
	runFio(t, c.a.uri(), "--rw=randwrite", "--bs=16k", "--size=4M", "--offset=8M", "--iodepth=8", "--end_fsync=1")
	took := time.Since(start)
	t.Logf("fio with the Secondary's disk hung: %s", took)
	if took > 20*time.Second {
		t.Errorf("fio took %s with the Secondary's disk hung (ko-count × timeout is 3s)", took)
	}
	c.a.waitLog("the peer has completed no request for", 10*time.Second)
	st := c.a.waitFor("the Secondary refusing as busy", 20*time.Second, func(s statusT) bool {
		return strings.Contains(s.Reason, "protocol: busy: the peer's disk has not completed the I/O of the last connection")
	})
	if st.Role != "Primary" || st.DiskState != "UpToDate" || st.OutOfSyncKiB == 0 {
		t.Errorf("the Primary without its hung peer: %+v", st)
	}
	c.b.waitFor("refusing the Primary as busy", 20*time.Second, func(s statusT) bool {
		return strings.Contains(s.Reason, "this node's disk has not completed the I/O of the last connection (the disk may be hung)")
	})
	start = time.Now()
	runFio(t, c.a.uri(), "--rw=randwrite", "--bs=16k", "--size=4M", "--offset=16M", "--iodepth=8", "--end_fsync=1")
	took = time.Since(start)
	t.Logf("fio once the hung peer was dropped: %s", took)
	if took > 2*time.Second {
		t.Errorf("fio took %s once the hung peer was dropped", took)
	}

	disk.answer()
	c.a.waitInSync(60 * time.Second)
	c.a.ctl("secondary", "r0")
	c.a.stop()
	c.b.stop()
	cmpFiles(t, c.a.disk, disk.backing)
}

// TestHungPrimaryDisk: with --disk-timeout 2s, the Primary's disk stops
// answering (nbdkit, which serves it, is stopped) under fio: the Primary
// detaches it once a request has waited 2s and goes on Diskless, every read,
// write and flush served by the peer, and fio, which verifies what it wrote,
// sees no error. The local-io-error handler names the hung request. Once
// the disk answers again, urbd attach-disk takes it back and the resync
// makes both disks equal.
func TestHungPrimaryDisk(t *testing.T) {
	requireRoot(t)
	disk := newKitDisk(t, 64<<20)
	c := newCluster(t, clusterOpts{})
	c.a.disk = disk.path
	handler, events := ioErrorLog(c)
	c.a.start(append([]string{"--disk-timeout", "2s"}, handler...)...)
	c.b.start()
	c.a.waitInSync(30 * time.Second)
	c.a.ctl("primary", "r0")
	runFio(t, c.a.uri(), "--rw=randwrite", "--bs=16k", "--size=8M", "--iodepth=8")

	disk.hang(t)
	start := time.Now()
	runFio(t, c.a.uri(), "--rw=randwrite", "--bs=16k", "--size=8M", "--offset=16M", "--iodepth=8",
		"--verify=crc32c", "--verify_fatal=1", "--end_fsync=1")
	t.Logf("fio with the Primary's disk hung: %s", time.Since(start))
	st := c.a.status()
	if st.Role != "Primary" || st.DiskState != "Diskless" || st.ConnState != "Connected" || st.PeerDisk != "UpToDate" {
		t.Fatalf("the Primary after its disk hung: %+v, want a Connected Diskless Primary", st)
	}
	if !strings.Contains(st.Reason, "(--disk-timeout 2s); disk detached, all I/O goes to the peer") {
		t.Errorf("reason %q does not name the disk-timeout", st.Reason)
	}
	if got, _ := os.ReadFile(events); !strings.Contains(string(got), "local disk has not completed a ") {
		t.Errorf("local-io-error handler: %q, want the hung request", got)
	}

	disk.answer()
	if out := c.a.ctl("attach-disk", "r0"); !strings.Contains(out, "copying 64MiB from the peer") {
		t.Errorf("urbd attach-disk: %q", out)
	}
	c.a.waitInSync(60 * time.Second)
	runFio(t, c.a.uri(), "--rw=read", "--bs=16k", "--size=8M", "--offset=16M", "--verify=crc32c", "--verify_fatal=1", "--verify_only")
	c.a.ctl("secondary", "r0")
	c.a.stop()
	c.b.stop()
	cmpFiles(t, disk.backing, c.b.disk)
}

// TestHungSecondaryDiskTimeout: the same hung Secondary disk, noticed by the
// Secondary itself: with --disk-timeout 2s there, and ko-count off on the
// Primary, the Secondary leaves once a write has waited 2s, Outdated, and
// says why on both nodes; fio, which verifies what it wrote, finishes
// without an error; once the disk answers, the nodes reconnect by
// themselves and resync, and both disks hold the same data.
func TestHungSecondaryDiskTimeout(t *testing.T) {
	c, disk := kitSecondary(t)
	handler, events := ioErrorLog(c)
	c.a.start("--ko-count", "0")
	c.b.start(append([]string{"--disk-timeout", "2s"}, handler...)...)
	c.a.waitInSync(30 * time.Second)
	c.a.ctl("primary", "r0")
	runFio(t, c.a.uri(), "--rw=randwrite", "--bs=16k", "--size=4M", "--iodepth=8")

	disk.hang(t)
	start := time.Now()
	runFio(t, c.a.uri(), "--rw=randwrite", "--bs=16k", "--size=8M", "--offset=8M", "--iodepth=8",
		"--verify=crc32c", "--verify_fatal=1", "--end_fsync=1")
	took := time.Since(start)
	t.Logf("fio with the Secondary's disk hung: %s", took)
	if took > 20*time.Second {
		t.Errorf("fio took %s with the Secondary's disk hung (its disk-timeout is 2s)", took)
	}
	st := c.b.waitFor("the Secondary leaving", 20*time.Second, func(s statusT) bool {
		return strings.Contains(s.Reason, "(--disk-timeout 2s); left the peer") || strings.Contains(s.Reason, "protocol: busy")
	})
	if st.Role != "Secondary" || st.DiskState != "Outdated" || st.ConnState == "Connected" {
		t.Errorf("the Secondary after its disk hung: %+v, want it Outdated and apart", st)
	}
	if got, _ := os.ReadFile(events); !strings.Contains(string(got), "local disk has not completed a ") {
		t.Errorf("local-io-error handler: %q, want the hung request", got)
	}
	c.a.waitLog("the peer's disk has not completed a ", 10*time.Second)
	if st := c.a.status(); st.Role != "Primary" || st.DiskState != "UpToDate" || st.OutOfSyncKiB == 0 {
		t.Errorf("the Primary without its hung peer: %+v", st)
	}

	disk.answer()
	c.a.waitInSync(60 * time.Second)
	if st := c.b.status(); st.DiskState != "UpToDate" {
		t.Errorf("the Secondary after the resync: %+v", st)
	}
	c.a.ctl("secondary", "r0")
	c.a.stop()
	c.b.stop()
	cmpFiles(t, c.a.disk, disk.backing)
}

// TestHungDiskShownBlocked: with ko-count and disk-timeout off, a write the
// Secondary's disk holds waits as long as the disk hangs; meanwhile both
// status files say what is blocked, the Primary's flag n and a line that
// says it waits for the peer, the Secondary's flag b and a line about its
// disk, and once the disk answers the write completes and the lines go.
// urbd events says the same on each node: blocked:peer or blocked:disk,
// then blocked:no.
func TestHungDiskShownBlocked(t *testing.T) {
	c, disk := kitSecondary(t)
	c.a.start("--ko-count", "0")
	c.b.start()
	c.a.waitInSync(30 * time.Second)
	c.a.ctl("primary", "r0")
	events := map[*node]*daemon{}
	for _, n := range []*node{c.a, c.b} {
		events[n] = startDaemon(t, urbdBin, "--run-dir", n.runDir, "events", "r0")
	}

	disk.hang(t)
	wait := startFio(c.a.uri(), "--rw=randwrite", "--bs=16k", "--size=1M", "--iodepth=4", "--end_fsync=1")
	statusFile := func(n *node) string { return string(fileBytes(t, filepath.Join(n.runDir, "r0", "status"))) }
	c.a.waitFor("the peer shown blocked", 20*time.Second, func(s statusT) bool { return s.PeerBlockedSeconds >= 3 })
	c.b.waitFor("the disk shown blocked", 20*time.Second, func(s statusT) bool { return s.DiskBlockedSeconds >= 3 })
	time.Sleep(1100 * time.Millisecond) // a rewrite of the status files
	if text := statusFile(c.a); !strings.Contains(text, " C r---n-\n") || !strings.Contains(text, "    blocked: the peer has completed no request for ") ||
		!strings.Contains(text, "(--ko-count 0: waiting for it)") {
		t.Errorf("the Primary's status file while the peer's disk hangs:\n%s", text)
	}
	if text := statusFile(c.b); !strings.Contains(text, " C r---b-\n") || !strings.Contains(text, "    blocked: the local disk has completed no request for ") {
		t.Errorf("the Secondary's status file while its disk hangs:\n%s", text)
	}

	disk.answer()
	if out, err := wait(); err != nil {
		t.Fatalf("fio once the disk answered: %v\n%s", err, out)
	}
	c.a.waitFor("the peer no longer blocked", 10*time.Second, func(s statusT) bool { return s.PeerBlockedSeconds == 0 && s.ConnState == "Connected" })
	c.b.waitFor("the disk no longer blocked", 10*time.Second, func(s statusT) bool { return s.DiskBlockedSeconds == 0 && s.Blocked == nil })
	for n, want := range map[*node][]string{c.a: {"peer", "no"}, c.b: {"disk", "no"}} {
		// The stream looks once a second: it may come a second after the status.
		var blocked []string
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			blocked = blockedEvents(t, events[n].output())
			if slices.Equal(blocked, want) || time.Now().After(deadline) {
				break
			}
		}
		if !slices.Equal(blocked, want) {
			t.Errorf("urbd events on %s printed blocked %q after the listing, want %q:\n%s", n.name, blocked, want, events[n].output())
		}
	}
	c.a.ctl("secondary", "r0")
	c.a.stop()
	c.b.stop()
	cmpFiles(t, c.a.disk, disk.backing)
}

// blockedEvents returns the values of the blocked field in the change
// lines of out, the output of urbd events for one resource, after checking
// that its listing says blocked:no.
func blockedEvents(t *testing.T, out string) []string {
	t.Helper()
	lines := strings.Split(out, "\n")
	if len(lines) < 2 || !strings.Contains(lines[0], " blocked:no ") || lines[1] != "exists -" {
		t.Fatalf("urbd events began with:\n%s", out)
	}
	var blocked []string
	for _, l := range lines[2:] {
		if _, v, ok := strings.Cut(l, " blocked:"); ok {
			blocked = append(blocked, strings.Fields(v)[0])
		}
	}
	return blocked
}

// kitSecondary returns a cluster whose node b, not started yet, has a
// kitDisk of 64 MiB, which the test can hang.
func kitSecondary(t *testing.T) (*cluster, *kitDisk) {
	requireRoot(t)
	disk := newKitDisk(t, 64<<20)
	c := newCluster(t, clusterOpts{})
	c.b.disk = disk.path
	return c, disk
}

// ioErrorLog returns the flags that make a node append the reason of every
// local-io-error event to a file in c's directory, and that file.
func ioErrorLog(c *cluster) (flags []string, file string) {
	file = filepath.Join(c.dir, "events")
	return []string{"--handler", fmt.Sprintf(`local-io-error=echo "$URBD_REASON" >> %s`, file)}, file
}
