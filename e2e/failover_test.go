package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSecondaryCrashUnderLoad: kill -9 of the secondary under fio load in
// network namespaces; the primary's writes go on without an error, and the
// secondary catches up when it returns.
func TestSecondaryCrashUnderLoad(t *testing.T) {
	c := newCluster(t, clusterOpts{netns: true, size: 128 << 20})
	c.startBoth()
	done := make(chan string, 1)
	go func() {
		out, err := runFioErr(c.a.uri(), "--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=128M",
			"--time_based", "--runtime=6", "--verify=crc32c", "--verify_fatal=1")
		if err != nil {
			out = "ERROR: " + out
		}
		done <- out
	}()
	time.Sleep(time.Second)
	c.b.kill9()
	c.a.waitFor("peer loss", 10*time.Second, func(s statusT) bool { return s.ConnState == "WFConnection" })
	time.Sleep(time.Second)
	c.b.start()
	if out := <-done; strings.HasPrefix(out, "ERROR") {
		t.Fatalf("fio on the primary failed while the secondary crashed: %s", out)
	}
	c.a.waitInSync(60 * time.Second)
	cmpFiles(t, c.a.disk, c.b.disk)
}

// TestFailoverAndFailback: the primary crashes, the secondary takes over and
// is written to; the old primary returns as SyncTarget, catches up, and
// takes the role back.
func TestFailoverAndFailback(t *testing.T) {
	c := newCluster(t, clusterOpts{netns: true, size: 128 << 20})
	c.startBoth()
	runFio(t, c.a.uri(), "--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=64M", "--io_size=16M")
	c.a.kill9()
	c.b.waitFor("peer loss", 10*time.Second, func(s statusT) bool { return s.ConnState == "WFConnection" })
	c.b.ctl("primary", "r0")
	runFio(t, c.b.uri(), "--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=64M", "--offset=64M", "--io_size=16M")
	c.a.start()
	st := c.a.waitFor("old primary back as Secondary", 20*time.Second, func(s statusT) bool { return s.ConnState != "WFConnection" })
	if st.Role != "Secondary" || st.ConnState == "StandAlone" {
		t.Fatalf("the crashed primary returned as %s/%s: %+v", st.Role, st.ConnState, st)
	}
	c.b.waitInSync(60 * time.Second)
	cmpFiles(t, c.a.disk, c.b.disk)

	// Failback.
	c.b.ctl("secondary", "r0")
	c.a.waitFor("peer demoted", 10*time.Second, func(s statusT) bool { return s.PeerRole == "Secondary" })
	c.a.ctl("primary", "r0")
	runFio(t, c.a.uri(), "--rw=randwrite", "--bs=4k", "--iodepth=8", "--size=128M", "--io_size=4M", "--verify=crc32c")
	c.a.waitInSync(30 * time.Second)
	cmpFiles(t, c.a.disk, c.b.disk)
}

// TestMalformedRequestsOnPrimary: out-of-range and oversized NBD requests to
// the replicated export get an error, the connection keeps working, and
// nothing reaches either disk.
func TestMalformedRequestsOnPrimary(t *testing.T) {
	c := newCluster(t, clusterOpts{})
	c.startBoth()
	cl, err := c.a.client()
	must(t, err)
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	buf := make([]byte, 4096)
	size := int64(64 << 20)
	if err := cl.Write(ctx, buf, size-1024, false); err == nil {
		t.Fatal("a write past the end succeeded")
	}
	if err := cl.Read(ctx, buf, size); err == nil {
		t.Fatal("a read past the end succeeded")
	}
	if err := cl.Write(ctx, []byte("still here"), 4096, true); err != nil {
		t.Fatalf("a good write after bad ones: %v", err)
	}
	got := make([]byte, 10)
	if err := cl.Read(ctx, got, 4096); err != nil || string(got) != "still here" {
		t.Fatalf("read back %q, %v", got, err)
	}
	must(t, cl.Flush(ctx))
	c.a.waitInSync(10 * time.Second)
	cmpFiles(t, c.a.disk, c.b.disk)
}

// TestSplitBrainPolicies: with --after-sb-1pri consensus on both nodes, a
// split brain whose Secondary wrote nothing (it was promoted by mistake
// while cut off, then demoted) resolves itself when the nodes reconnect:
// the Secondary resyncs from the Primary, the initial-split-brain handler
// runs and the split-brain handler does not. Nodes started with different
// policies refuse to connect and say why.
func TestSplitBrainPolicies(t *testing.T) {
	c := newCluster(t, clusterOpts{flags: []string{"--after-sb-0pri", "discard-zero-changes", "--after-sb-1pri", "consensus"}})
	ran := filepath.Join(c.dir, "handlers-ran")
	for _, ev := range []string{"initial-split-brain", "split-brain"} {
		c.a.extra = append(c.a.extra, "--handler", ev+"=echo "+ev+" >> "+ran)
	}
	c.startBoth()
	c.a.waitInSync(30 * time.Second)
	c.a.ctl("primary", "r0")
	c.a.ctl("disconnect", "r0")
	c.b.ctl("disconnect", "r0")
	c.b.ctl("primary", "--force", "r0")
	c.b.ctl("secondary", "r0")
	runFio(t, c.a.uri(), "--rw=randwrite", "--bs=4k", "--iodepth=8", "--size=16M", "--io_size=4M")

	c.a.ctl("connect", "r0")
	c.b.ctl("connect", "r0")
	c.b.waitFor("the split brain resolved", 60*time.Second, func(s statusT) bool {
		return s.ConnState == "Connected" && s.DiskState == "UpToDate" && s.OutOfSyncKiB == 0
	})
	if st := c.a.status(); st.SplitBrain {
		t.Errorf("the Primary flags a split brain after the policy resolved it: %+v", st)
	}
	var got []string
	for deadline := time.Now().Add(10 * time.Second); len(got) == 0 && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		out, _ := os.ReadFile(ran)
		got = strings.Fields(string(out))
	}
	if len(got) != 1 || got[0] != "initial-split-brain" {
		t.Errorf("handlers run: %q; want initial-split-brain only", got)
	}
	c.a.ctl("secondary", "r0")
	c.a.stop()
	c.b.stop()
	cmpFiles(t, c.a.disk, c.b.disk)

	for i, f := range c.b.extra {
		if f == "consensus" {
			c.b.extra[i] = "discard-secondary"
		}
	}
	c.a.start()
	c.b.start()
	c.a.waitFor("a refusal", 30*time.Second, func(s statusT) bool {
		return s.ConnState == "StandAlone" && strings.Contains(s.Reason, "split-brain policies differ")
	})
}
