package e2e

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/urbd/urbd/status"
)

// TestResyncCopiesOnlyChanges: cut the connection, write 32 MiB at random
// 4 KiB offsets of a 1 GiB disk, reconnect: the bytes resynced are at most the
// bytes written plus one bitmap block per write, and both disks end identical.
func TestResyncCopiesOnlyChanges(t *testing.T) {
	c := newCluster(t, clusterOpts{size: 1 << 30})
	c.startBoth()
	c.a.ctl("disconnect", "r0")
	runFio(t, c.a.uri(), "--rw=randwrite", "--bs=4k", "--iodepth=16", "--io_size=32M", "--size=1G", "--norandommap")
	before := c.a.status()
	if before.OutOfSyncKiB == 0 || before.OutOfSyncKiB > 32<<10 {
		t.Fatalf("out of sync after 32 MiB of writes while disconnected: %d KiB", before.OutOfSyncKiB)
	}
	c.a.ctl("connect", "r0")
	after := c.a.waitInSync(60 * time.Second)
	sent := after.NetSendKiB - before.NetSendKiB
	written := uint64(32 << 10)
	writes := written / 4
	if sent > written+writes*4 {
		t.Fatalf("resync sent %d KiB for %d KiB written", sent, written)
	}
	t.Logf("resync sent %d KiB for %d KiB written at random offsets (%d KiB distinct)", sent, written, before.OutOfSyncKiB)
	cmpFiles(t, c.a.disk, c.b.disk)
}

// TestCsumsAlgResync: with --csums-alg sha256 on the Secondary, a resync
// after 32 MiB were written again with the data they held, and 1 MiB with
// new data, sends that 1 MiB and little more; the disks end identical.
func TestCsumsAlgResync(t *testing.T) {
	c := newCluster(t, clusterOpts{})
	c.a.start()
	c.b.start("--csums-alg", "sha256")
	c.a.waitInSync(30 * time.Second)
	c.a.ctl("primary", "r0")
	same := []string{"--rw=write", "--bs=1M", "--iodepth=4", "--size=32M", "--buffer_pattern=0x75726264"}
	runFio(t, c.a.uri(), same...)
	c.a.waitInSync(30 * time.Second)
	c.a.ctl("disconnect", "r0")
	runFio(t, c.a.uri(), same...)
	runFio(t, c.a.uri(), "--rw=write", "--bs=1M", "--offset=8M", "--size=1M", "--buffer_pattern=0x6e6577")
	before := c.a.status()
	if before.OutOfSyncKiB < 32<<10 {
		t.Fatalf("out of sync after 32 MiB written while disconnected: %d KiB", before.OutOfSyncKiB)
	}
	c.a.ctl("connect", "r0")
	after := c.a.waitInSync(60 * time.Second)
	if sent := after.NetSendKiB - before.NetSendKiB; sent > 1<<10+256 {
		t.Fatalf("the resync sent %d KiB for 1,024 KiB changed among %d KiB marked", sent, before.OutOfSyncKiB)
	} else {
		t.Logf("the resync sent %d KiB of data for %d KiB marked, 1,024 KiB changed", sent, before.OutOfSyncKiB)
	}
	if logs := c.a.waitLog("csums-alg sha256 is set, so the resync compares checksums", 10*time.Second); !strings.Contains(logs, "by_checksum=true") {
		t.Fatalf("the source's log does not show a resync by checksum:\n%s", logs)
	}
	cmpFiles(t, c.a.disk, c.b.disk)
}

// TestLinkCutDuringWrites: the veth link between two network namespaces is
// cut under fio load and restored; the primary goes on alone, then resyncs.
func TestLinkCutDuringWrites(t *testing.T) {
	c := newCluster(t, clusterOpts{netns: true, size: 256 << 20})
	c.startBoth()
	done := make(chan string, 1)
	go func() {
		out, err := runFioErr(c.a.uri(), "--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=256M", "--time_based", "--runtime=8", "--verify=crc32c", "--verify_fatal=1")
		if err != nil {
			out = "ERROR: " + out
		}
		done <- out
	}()
	time.Sleep(time.Second)
	setLink(t, c.a.netns, false)
	c.a.waitFor("peer loss detected", 15*time.Second, func(s statusT) bool { return s.ConnState == "WFConnection" })
	time.Sleep(time.Second)
	setLink(t, c.a.netns, true)
	if out := <-done; strings.HasPrefix(out, "ERROR") {
		t.Fatalf("fio failed across a link cut: %s", out)
	}
	c.a.waitInSync(60 * time.Second)
	cmpFiles(t, c.a.disk, c.b.disk)
}

// TestSplitBrain: both nodes promoted while disconnected and written to;
// on reconnect both stay StandAlone and nothing is copied. connect
// --discard-my-data on one resolves it and the disks end identical.
func TestSplitBrain(t *testing.T) {
	c := newCluster(t, clusterOpts{netns: true})
	c.startBoth()
	c.a.ctl("disconnect", "r0")
	c.b.waitFor("peer loss", 10*time.Second, func(s statusT) bool { return s.ConnState == "WFConnection" })
	c.b.ctl("disconnect", "r0")
	if st := c.b.status(); st.DiskState != "Outdated" {
		t.Fatalf("the secondary after the primary's clean disconnect: disk %s, want Outdated", st.DiskState)
	}
	// An Outdated node is promoted only with --force: the operator says
	// its data wins, which is what makes this a split brain.
	c.b.ctl("primary", "--force", "r0")
	runFio(t, c.a.uri(), "--rw=randwrite", "--bs=4k", "--iodepth=8", "--io_size=4M", "--size=64M", "--randseed=1", "--end_fsync=1")
	runFio(t, c.b.uri(), "--rw=randwrite", "--bs=4k", "--iodepth=8", "--io_size=4M", "--size=64M", "--randseed=2", "--end_fsync=1")
	imgA, imgB := fileBytes(t, c.a.disk), fileBytes(t, c.b.disk)
	c.a.ctl("connect", "r0")
	c.b.ctl("connect", "r0")
	for _, n := range []*node{c.a, c.b} {
		st := n.waitFor("split brain", 20*time.Second, func(s statusT) bool { return s.SplitBrain && s.ConnState == "StandAlone" })
		if !strings.Contains(strings.ToLower(st.Reason), "split brain") && !strings.Contains(st.Reason, "split") {
			t.Errorf("node %s reason does not say split brain: %q", n.name, st.Reason)
		}
		text := n.ctl("status", "r0")
		if !strings.Contains(strings.ToLower(text), "split brain") {
			t.Errorf("node %s status text does not say split brain:\n%s", n.name, text)
		}
	}
	time.Sleep(500 * time.Millisecond)
	if !bytes.Equal(imgA, fileBytes(t, c.a.disk)) || !bytes.Equal(imgB, fileBytes(t, c.b.disk)) {
		t.Fatal("a disk changed during a split brain")
	}
	// Resolve: b's changes are thrown away.
	c.b.ctl("secondary", "r0")
	c.b.ctl("connect", "--discard-my-data", "r0")
	c.a.ctl("connect", "r0")
	c.a.waitInSync(60 * time.Second)
	cmpFiles(t, c.a.disk, c.b.disk)
	if !bytes.Equal(imgA, fileBytes(t, c.a.disk)) {
		t.Fatal("the surviving node's data changed while resolving the split brain")
	}
}

// TestResyncResumesAfterKill: a resync interrupted by kill -9 of the source,
// and then of the target, resumes and ends byte-identical.
func TestResyncResumesAfterKill(t *testing.T) {
	for _, victim := range []string{"source", "target"} {
		t.Run(victim, func(t *testing.T) {
			c := newCluster(t, clusterOpts{netns: true, size: 256 << 20, flags: []string{"--resync-rate", "20MiB"}})
			c.startBoth()
			c.a.ctl("disconnect", "r0")
			runFio(t, c.a.uri(), "--rw=write", "--bs=1M", "--iodepth=4", "--size=128M", "--end_fsync=1")
			c.a.ctl("connect", "r0")
			c.a.waitFor("resync under way", 20*time.Second, func(s statusT) bool {
				return s.ConnState == "SyncSource" && s.Sync != nil && s.Sync.RemainingKiB < s.Sync.TotalKiB
			})
			time.Sleep(1500 * time.Millisecond)
			n := c.b
			if victim == "source" {
				n = c.a
			}
			n.kill9()
			if victim == "source" {
				st := c.b.status()
				if st.DiskState != "Inconsistent" {
					t.Fatalf("target disk after losing its source mid-resync: %s", st.DiskState)
				}
			}
			n.start()
			if victim == "source" {
				c.a.ctl("primary", "r0")
			}
			c.a.ctl("adjust", "--resync-rate", "0", "r0")
			c.a.waitInSync(60 * time.Second)
			cmpFiles(t, c.a.disk, c.b.disk)
		})
	}
}

// TestHotJoin: a new, empty secondary joins a primary under fio load and is
// fully synced in the background with no downtime.
func TestHotJoin(t *testing.T) {
	c := newCluster(t, clusterOpts{noClean: true, size: 128 << 20})
	c.a.start()
	c.a.ctl("primary", "--force", "r0")
	runFio(t, c.a.uri(), "--rw=write", "--bs=1M", "--iodepth=4", "--size=128M")
	done := make(chan string, 1)
	go func() {
		out, err := runFioErr(c.a.uri(), "--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=128M", "--time_based", "--runtime=6", "--verify=crc32c", "--verify_fatal=1")
		if err != nil {
			out = "ERROR: " + out
		}
		done <- out
	}()
	time.Sleep(500 * time.Millisecond)
	c.b.start()
	c.b.waitFor("SyncTarget", 20*time.Second, func(s statusT) bool { return s.ConnState == "SyncTarget" || s.DiskState == "UpToDate" })
	if out := <-done; strings.HasPrefix(out, "ERROR") {
		t.Fatalf("fio failed during the hot join: %s", out)
	}
	c.a.waitInSync(60 * time.Second)
	cmpFiles(t, c.a.disk, c.b.disk)
}

// TestVerifyFindsDifferences: a block changed behind urbd's back on the
// secondary is found by online verify and repaired.
func TestVerifyFindsDifferences(t *testing.T) {
	c := newCluster(t, clusterOpts{})
	c.startBoth()
	runFio(t, c.a.uri(), "--rw=write", "--bs=1M", "--iodepth=4", "--size=16M", "--end_fsync=1")
	rot(t, c.b.disk, 0, 5<<20, 40<<20)
	c.a.ctl("verify", "r0")
	if logs := c.a.waitLog("online verify finished", 60*time.Second); !strings.Contains(logs, "differing_blocks=3") {
		t.Fatalf("verify did not report 3 differing blocks:\n%s", logs)
	}
	c.a.waitInSync(30 * time.Second)
	cmpFiles(t, c.a.disk, c.b.disk)
}

// rot overwrites a 4 KiB block of the disk file at each offset with random
// bytes, behind urbd's back.
func rot(t *testing.T, disk string, offs ...int64) {
	t.Helper()
	f, err := os.OpenFile(disk, os.O_WRONLY, 0)
	must(t, err)
	defer f.Close()
	junk := make([]byte, 4096)
	for _, off := range offs {
		for i := range junk {
			junk[i] = byte(rand.IntN(256))
		}
		_, err := f.WriteAt(junk, off)
		must(t, err)
	}
}

// TestVerifyRange: `urbd verify --start --stop` compares that part of the
// disk only, and says so; --resume with no verify stopped early, or with a
// range, is refused with a message, and starts nothing.
func TestVerifyRange(t *testing.T) {
	c := newCluster(t, clusterOpts{})
	c.startBoth()
	rot(t, c.b.disk, 1<<20, 5<<20, 40<<20)
	if out, err := c.a.try("verify", "--resume", "--start", "1MiB", "r0"); err == nil || !strings.Contains(out, "takes no --start") {
		t.Errorf("verify --resume --start: %v %q, want a refusal", err, out)
	}
	if out, err := c.a.try("verify", "--resume", "r0"); err == nil || !strings.Contains(out, "nothing to resume") {
		t.Errorf("verify --resume with no verify stopped: %v %q, want a refusal", err, out)
	}
	if out, err := c.a.try("verify", "--start", "64MiB", "r0"); err == nil || !strings.Contains(out, "cannot verify from") {
		t.Errorf("verify --start past the end: %v %q, want a refusal", err, out)
	}
	c.a.ctl("verify", "--start", "4MiB", "--stop", "8MiB", "r0")
	c.a.waitLog(`reason="online verify finished (4MiB to 8MiB of 64MiB): 1 blocks differ"`, 60*time.Second)
	c.a.waitInSync(30 * time.Second)
	a, err := os.ReadFile(c.a.disk)
	must(t, err)
	b, err := os.ReadFile(c.b.disk)
	must(t, err)
	if !bytes.Equal(a[4<<20:8<<20], b[4<<20:8<<20]) || bytes.Equal(a[1<<20:2<<20], b[1<<20:2<<20]) || bytes.Equal(a[40<<20:41<<20], b[40<<20:41<<20]) {
		t.Fatal("the verify of 4-8 MiB repaired outside its range, or not inside it")
	}
}

// TestVerifyResumeAfterRestart: a verify cut by stopping the daemon (as a
// reboot for a kernel update would) goes on after `urbd up` with `urbd
// verify --resume`, from where it stopped, and finds the block rotted past
// that point; the status kept the stopped verify's result meanwhile.
func TestVerifyResumeAfterRestart(t *testing.T) {
	c := newCluster(t, clusterOpts{})
	c.startBoth()
	rot(t, c.b.disk, 60<<20)
	c.a.ctl("adjust", "--resync-rate", "8MiB", "r0")
	c.a.ctl("verify", "r0")
	c.a.waitFor("16 MiB verified", 30*time.Second, func(s statusT) bool { return s.Sync != nil && s.Sync.VerifiedKiB >= 16<<10 })
	c.a.stop()
	c.a.start()
	st := c.a.waitInSync(30 * time.Second)
	if v := st.LastVerify; v == nil || v.Complete || v.Differing != 0 {
		t.Fatalf("the stopped verify's result after the restart: %+v", v)
	}
	c.a.ctl("adjust", "--resync-rate", "0", "r0")
	c.a.ctl("verify", "--resume", "r0")
	logs := c.a.waitLog("to 64MiB of 64MiB): 1 blocks differ", 60*time.Second)
	if strings.Contains(logs, "online verify finished (0B to") {
		t.Fatalf("the resumed verify started from the beginning:\n%s", logs)
	}
	if v := c.a.waitInSync(30 * time.Second).LastVerify; v == nil || !v.Complete || v.FromKiB < 16<<10 || v.Differing != 1 {
		t.Fatalf("the resumed verify's result: %+v", v)
	}
	cmpFiles(t, c.a.disk, c.b.disk)
}

// TestVerifyUnit: the commands of scripts/urbd-verify@.service, run as
// systemd runs them (URBD_RUN_DIR from the unit, %i the resource): the
// condition passes on the Primary only, and the start command starts a
// verify there that finds a block rotted on the Secondary.
func TestVerifyUnit(t *testing.T) {
	unit, err := os.ReadFile(filepath.Join("..", "scripts", "urbd-verify@.service"))
	must(t, err)
	cmds := map[string]string{}
	for _, l := range strings.Split(string(unit), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok && (k == "ExecCondition" || k == "ExecStart") {
			cmds[k] = strings.NewReplacer("/usr/local/bin/urbd", urbdBin, "%i", "r0").Replace(v)
		}
	}
	if len(cmds) != 2 {
		t.Fatalf("the unit's ExecCondition and ExecStart: %v", cmds)
	}
	run := func(n *node, key string) error {
		cmd := exec.Command("/bin/sh", "-c", cmds[key])
		cmd.Env = append(os.Environ(), "URBD_RUN_DIR="+n.runDir)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}
	c := newCluster(t, clusterOpts{})
	c.startBoth()
	rot(t, c.b.disk, 3<<20)
	if err := run(c.b, "ExecCondition"); err == nil {
		t.Error("the condition passed on the Secondary")
	}
	if err := run(c.a, "ExecCondition"); err != nil {
		t.Fatalf("the condition failed on the Primary: %v", err)
	}
	if err := run(c.a, "ExecStart"); err != nil {
		t.Fatalf("the unit's verify: %v", err)
	}
	c.a.waitLog(`reason="online verify finished: 1 blocks differ"`, 60*time.Second)
	c.a.waitInSync(30 * time.Second)
	cmpFiles(t, c.a.disk, c.b.disk)
}

// TestInvalidate: `urbd invalidate` on the secondary fetches the whole disk
// again.
func TestInvalidate(t *testing.T) {
	c := filledCluster(t)
	wantFullResync(t, c, "invalidate", func() { c.b.ctl("invalidate", "r0") })
}

// filledCluster starts a connected pair whose Primary wrote its first
// 16 MiB, in sync.
func filledCluster(t *testing.T) *cluster {
	c := newCluster(t, clusterOpts{})
	c.startBoth()
	runFio(t, c.a.uri(), "--rw=write", "--bs=1M", "--iodepth=4", "--size=16M", "--end_fsync=1")
	c.a.waitInSync(30 * time.Second)
	return c
}

// wantFullResync runs start, waits until the pair is in sync again, and
// checks that a (the Primary) resynced the whole 64 MiB disk meanwhile,
// sending the 16 MiB of data filledCluster wrote and the rest, zeroes, as
// ranges without their bytes, and that both disks are identical.
func wantFullResync(t *testing.T, c *cluster, what string, start func()) {
	t.Helper()
	const whole = "direction=SyncSource bytes=67108864"
	logs, _ := os.ReadFile(c.a.logPath)
	fulls := strings.Count(string(logs), whole)
	before := c.a.status().NetSendKiB
	start()
	after := c.a.waitInSync(60 * time.Second)
	if sent := after.NetSendKiB - before; sent < 16<<10 || sent >= 64<<10 {
		t.Errorf("%s sent %d KiB of a 64 MiB disk holding 16 MiB of data, want the data and not the zeroes", what, sent)
	}
	if logs, _ = os.ReadFile(c.a.logPath); strings.Count(string(logs), whole) != fulls+1 {
		t.Errorf("%s: no resync of the whole disk in a's log (%q):\n%s", what, whole, logs)
	}
	cmpFiles(t, c.a.disk, c.b.disk)
}

// TestInvalidateRemote: the Secondary's disk file is damaged behind urbd's
// back; `urbd invalidate-remote` on the Primary copies the whole disk to it
// while fio writes and verifies through the Primary, and both disks end up
// identical. On the Secondary the command is refused with a one-line reason.
func TestInvalidateRemote(t *testing.T) {
	c := filledCluster(t)
	f, err := os.OpenFile(c.b.disk, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{1 << 20, 9<<20 + 512, 40 << 20} {
		if _, err := f.WriteAt([]byte("damaged behind urbd's back"), off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	if out, err := c.b.try("invalidate-remote", "r0"); err == nil || !strings.Contains(out, "runs on the Primary") || strings.Count(out, "\n") > 0 {
		t.Fatalf("invalidate-remote on the Secondary: %v, %q; want a one-line refusal", err, out)
	}
	wantFullResync(t, c, "invalidate-remote", func() {
		c.a.ctl("adjust", "--resync-rate", "16MiB", "r0")
		c.a.ctl("invalidate-remote", "r0")
		c.a.waitFor("SyncSource", 10*time.Second, func(s status.Resource) bool { return s.ConnState == "SyncSource" })
		runFio(t, c.a.uri(), "--rw=randwrite", "--bs=16k", "--iodepth=8", "--size=16M", "--offset=24M",
			"--verify=crc32c", "--verify_fatal=1")
		c.a.ctl("adjust", "--resync-rate", "0", "r0")
	})
}

// TestPauseSync: after a disconnect and 8 MiB of writes on the Primary, the
// Secondary's operator pauses resyncs and the nodes reconnect. The resync
// starts paused: the Primary's status file shows PausedSyncS with the peer's
// pause flag ('p'), the Secondary's PausedSyncT with its own ('u'), nothing
// is copied while writes through the Primary still replicate, and
// resume-sync on the Secondary lets the resync finish.
func TestPauseSync(t *testing.T) {
	c := newCluster(t, clusterOpts{})
	c.startBoth()
	c.a.ctl("disconnect", "r0")
	c.a.waitFor("StandAlone", 10*time.Second, func(s status.Resource) bool { return s.ConnState == "StandAlone" })
	runFio(t, c.a.uri(), "--rw=randwrite", "--bs=64k", "--size=8M", "--iodepth=8")
	if out := c.b.ctl("pause-sync", "r0"); !strings.Contains(out, "paused") {
		t.Fatalf("pause-sync said %q", out)
	}
	c.a.ctl("connect", "r0")
	c.a.waitFor("PausedSyncS", 10*time.Second, func(s status.Resource) bool { return s.ConnState == "PausedSyncS" && s.PeerPaused })
	c.b.waitFor("PausedSyncT", 10*time.Second, func(s status.Resource) bool { return s.ConnState == "PausedSyncT" && s.SyncPaused })
	for _, want := range []struct {
		n    *node
		line string
	}{{c.a, `cs:PausedSyncS ro:Primary/Secondary ds:UpToDate/Inconsistent C r-p---`},
		{c.b, `cs:PausedSyncT ro:Secondary/Primary ds:Inconsistent/UpToDate C r--u--`}} {
		re := regexp.MustCompile(regexp.QuoteMeta(want.line))
		deadline := time.Now().Add(5 * time.Second)
		for {
			text, _ := os.ReadFile(filepath.Join(want.n.runDir, "r0", "status"))
			if re.Match(text) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("status file does not show %q:\n%s", want.line, text)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	oos := c.a.status().OutOfSyncKiB
	runFio(t, c.a.uri(), "--rw=write", "--bs=1M", "--size=4M", "--offset=48M", "--iodepth=4")
	time.Sleep(time.Second)
	if got := c.a.status().OutOfSyncKiB; got != oos || oos < 1024 {
		t.Fatalf("paused resync: %d KiB out of sync, then %d KiB", oos, got)
	}
	c.b.ctl("resume-sync", "r0")
	c.a.waitInSync(60 * time.Second)
	cmpFiles(t, c.a.disk, c.b.disk)
}
