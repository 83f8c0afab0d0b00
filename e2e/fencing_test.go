package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fencePeerScript is OPERATIONS.md's fence-peer handler with the ssh to the
// peer replaced by the peer's control socket (reachable from the Primary's
// namespace: both run on this machine). Before it outdates the peer it
// saves the Primary's own status, to show what the application saw while
// the handler ran.
const fencePeerScript = `#!/bin/sh
%[1]s --run-dir %[2]s status --json r0 > %[4]s
out=$(%[1]s --run-dir %[3]s outdate r0 2>&1)
case $? in
0) exit 4 ;;
*) case $out in *Primary*) exit 6 ;; esac ;;
esac
exit 5
`

// TestFencingHoldsWritesUntilPeerOutdated: a Primary with
// resource-and-stonith fencing whose link to the peer breaks (the veth is
// taken down; both daemons keep running) holds its writes while the
// fence-peer handler runs, and goes on once the handler outdated the peer:
// fio's writes through the Primary during the partition all complete and
// verify. The outdated peer then refuses promotion, and after the link is
// back the bitmap resync brings it up to date, with both disks equal.
func TestFencingHoldsWritesUntilPeerOutdated(t *testing.T) {
	c := newCluster(t, clusterOpts{netns: true})
	script := filepath.Join(c.dir, "fence-peer")
	during := filepath.Join(c.dir, "status-during-fence.json")
	must(t, os.WriteFile(script, []byte(fmt.Sprintf(fencePeerScript, urbdBin, c.a.runDir, c.b.runDir, during)), 0o755))
	c.a.start("--fencing", "resource-and-stonith", "--handler", "fence-peer="+script)
	c.b.start()
	c.a.waitInSync(30 * time.Second)
	c.a.ctl("primary", "r0")
	runFio(t, c.a.uri(), "--rw=randwrite", "--bs=4k", "--iodepth=8", "--size=32M", "--io_size=8M")

	setLink(t, c.a.netns, false)
	c.a.waitFor("the peer fenced", 30*time.Second, func(s statusT) bool { return s.PeerDisk == "Outdated" })
	var all []statusT
	raw, err := os.ReadFile(during)
	must(t, err)
	must(t, json.Unmarshal(raw, &all))
	if len(all) != 1 {
		t.Fatalf("status --json during the fence: %s", raw)
	}
	if st := all[0]; !st.Suspended || !strings.Contains(st.Reason, "fencing the peer") {
		t.Errorf("the Primary while its handler ran: suspended %v, reason %q; want writes suspended while fencing", st.Suspended, st.Reason)
	}
	runFio(t, c.a.uri(), "--rw=randwrite", "--bs=4k", "--iodepth=8", "--size=32M", "--offset=32M", "--io_size=4M", "--verify=crc32c", "--verify_fatal=1")
	if st := c.a.status(); st.Suspended || st.ConnState != "WFConnection" || st.OutOfSyncKiB == 0 {
		t.Errorf("the Primary after the fence: %+v; want writes going on alone, marked out of sync", st)
	}

	if st := c.b.status(); st.DiskState != "Outdated" {
		t.Errorf("the fenced peer's disk is %s, want Outdated", st.DiskState)
	}
	if out, err := c.b.try("primary", "r0"); err == nil || !strings.Contains(out, "Outdated") {
		t.Errorf("promoting the fenced peer: %v %q, want a refusal naming its Outdated disk", err, out)
	}

	setLink(t, c.a.netns, true)
	c.b.waitFor("the peer up to date again", 60*time.Second, func(s statusT) bool {
		return s.ConnState == "Connected" && s.DiskState == "UpToDate" && s.OutOfSyncKiB == 0
	})
	c.a.waitInSync(30 * time.Second)
	c.a.ctl("secondary", "r0")
	c.a.stop()
	c.b.stop()
	cmpFiles(t, c.a.disk, c.b.disk)
}

// TestFencingNeedsHandler: `urbd up` with a fencing policy but no fence-peer
// handler refuses to start, with a one-line error that says what to add,
// and so does an unknown policy.
func TestFencingNeedsHandler(t *testing.T) {
	c := newCluster(t, clusterOpts{})
	for flag, want := range map[string]string{
		"resource-and-stonith": "needs a fence-peer handler: add --handler 'fence-peer=COMMAND'",
		"stonith":              "unknown fencing policy \"stonith\"",
	} {
		args := []string{"--run-dir", c.a.runDir, "up", "--disk", c.a.disk, "--meta", c.a.meta,
			"--nbd", "unix:" + c.a.sock, "--listen-peer", c.a.listen, "--peer", c.a.peer, "--fencing", flag, "r0"}
		out, err := tryCmd(30*time.Second, urbdBin, args...)
		if err == nil || !strings.Contains(out, want) || strings.Count(strings.TrimSpace(out), "\n") > 0 {
			t.Errorf("urbd up --fencing %s without a handler: %v, output %q; want one line containing %q", flag, err, out, want)
		}
	}
}

// TestForcedDemotionEndsHeldWrites: `urbd secondary --force` on a Primary
// whose writes are held for a lost peer (here --on-peer-loss suspend)
// disconnects the client within its grace period instead of waiting for
// the peer forever, and demotes.
func TestForcedDemotionEndsHeldWrites(t *testing.T) {
	c := newCluster(t, clusterOpts{flags: []string{"--on-peer-loss", "suspend"}})
	c.startBoth()
	c.b.kill9()
	c.a.waitFor("writes suspended", 20*time.Second, func(s statusT) bool { return s.Suspended })
	fio := make(chan error, 1)
	go func() {
		_, err := runFioErr(c.a.uri(), "--rw=write", "--bs=4k", "--size=64k")
		fio <- err
	}()
	c.a.waitFor("a held write", 20*time.Second, func(s statusT) bool { return s.AppPending > 0 })
	start := time.Now()
	c.a.ctl("secondary", "--force", "r0")
	if took := time.Since(start); took > 30*time.Second {
		t.Errorf("secondary --force took %v", took)
	}
	if st := c.a.status(); st.Role != "Secondary" {
		t.Errorf("after secondary --force: %s", st.Role)
	}
	select {
	case err := <-fio:
		if err == nil {
			t.Error("fio reported success although its writes were held and its connection closed")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("fio still runs after the forced demotion")
	}
}

// TestOutdateStoppedNode: `urbd outdate` on a node whose daemon is not
// running (what a fence-peer handler meets when the peer's daemon crashed)
// changes its metadata: the crashed Secondary restarts Outdated and refuses
// promotion, then a reconnect brings it up to date. A Primary that stopped
// cleanly is refused, and so is a metadata directory a daemon uses, as is a
// second `urbd up` on it.
func TestOutdateStoppedNode(t *testing.T) {
	c := newCluster(t, clusterOpts{})
	c.startBoth()
	c.a.waitInSync(30 * time.Second)
	c.a.ctl("primary", "r0")
	c.b.kill9()
	runFio(t, c.a.uri(), "--rw=randwrite", "--bs=4k", "--iodepth=8", "--size=16M", "--io_size=4M")

	if out, err := c.b.try("outdate", "r0"); err == nil || !strings.Contains(out, "--meta") {
		t.Errorf("outdate with the daemon stopped and no metadata named: %v %q; want a refusal asking for --meta", err, out)
	}
	if out := c.b.ctl("outdate", "--meta", c.b.meta, "r0"); !strings.Contains(out, "Outdated (daemon stopped") {
		t.Errorf("offline outdate: %q", out)
	}

	c.a.stop() // cleanly, as Primary: it starts as Primary again
	if out, err := c.a.try("outdate", "--meta", c.a.meta, "r0"); err == nil || !strings.Contains(out, "Primary") {
		t.Errorf("offline outdate of a stopped Primary: %v %q; want a refusal naming Primary", err, out)
	}

	c.b.start()
	if st := c.b.status(); st.DiskState != "Outdated" {
		t.Errorf("the outdated node restarted with disk %s, want Outdated", st.DiskState)
	}
	if out, err := c.b.try("primary", "r0"); err == nil || !strings.Contains(out, "Outdated") {
		t.Errorf("promoting the outdated node: %v %q; want a refusal naming its Outdated disk", err, out)
	}
	if out, err := c.b.try("--run-dir", filepath.Join(c.dir, "elsewhere"), "outdate", "--meta", c.b.meta, "r0"); err == nil || !strings.Contains(out, "in use") {
		t.Errorf("offline outdate of metadata a daemon uses: %v %q; want a refusal saying it is in use", err, out)
	}
	second := c.b.command("--run-dir", filepath.Join(c.dir, "elsewhere"), "up", "--disk", c.b.disk, "--meta", c.b.meta,
		"--nbd", "unix:"+filepath.Join(c.dir, "second.sock"), "--peer", c.b.peer, "r0")
	if out, err := second.CombinedOutput(); err == nil || !strings.Contains(string(out), "in use") {
		t.Errorf("a second urbd up on the same metadata: %v %q; want a refusal saying it is in use", err, out)
	}

	c.a.start()
	c.b.waitFor("the outdated node up to date again", 60*time.Second, func(s statusT) bool {
		return s.ConnState == "Connected" && s.DiskState == "UpToDate" && s.OutOfSyncKiB == 0
	})
	c.a.ctl("secondary", "r0")
	c.a.stop()
	c.b.stop()
	cmpFiles(t, c.a.disk, c.b.disk)
}
