package e2e

import (
	"context"
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
