package replica_test

import (
	"strings"
	"testing"
	"time"

	"github.com/urbd/urbd/replica"
	"github.com/urbd/urbd/status"
)

// TestScenarioHungPeerDiskDropped: a Secondary whose disk stops answering
// (every write hangs) still answers pings, so the timeout alone never
// notices it and the Primary's writes would wait as long as that disk
// hangs. With ko-count the Primary drops the peer once a write has waited
// ko-count times the timeout: the held write completes here, marked out of
// sync, the application goes on alone, and when the disk answers again the
// nodes reconnect and the resync makes both disks equal. ko-count 0 waits.
func TestScenarioHungPeerDiskDropped(t *testing.T) {
	o := nodeOpts{timeout: 300 * time.Millisecond, koCount: 3}
	a, b := cleanPair(t, o, o)
	held := b.disk.hangWrites()

	start := time.Now()
	w := pattern("held by the peer's hung disk", 2*hBlock)
	done := a.asyncWrite(4*hBlock, w)
	<-held
	if err := recvErr(t, "the write the peer's disk holds", done); err != nil {
		t.Fatalf("the write the peer held: %v, want it completed here", err)
	}
	if took := time.Since(start); took < 900*time.Millisecond {
		t.Errorf("the peer was dropped after %s, before ko-count × timeout (900ms)", took)
	}
	st := a.node.State()
	if st.Role != replica.Primary || st.Conn.Connected() {
		t.Fatalf("after the hung write: %+v, want a Primary without its peer", st)
	}
	if !strings.Contains(st.Reason, "the peer has left a write unanswered") || !strings.Contains(st.Reason, "--ko-count 3") {
		t.Errorf("reason %q does not say the peer left a write unanswered (ko-count)", st.Reason)
	}
	if lost := a.nthLoss(1); !strings.Contains(lost, "its disk may be hung") {
		t.Errorf("peer-lost handler reason %q does not name the hung disk", lost)
	}
	if a.node.Status().OutOfSyncKiB == 0 {
		t.Error("the write the peer never completed is not marked out of sync")
	}

	// While the disk hangs the peer refuses to connect, so writes go on
	// alone instead of hanging for ko-count × timeout after every reconnect.
	a.waitStatus("the peer refusing as busy", func(r status.Resource) bool {
		return strings.Contains(r.Reason, "protocol: busy: the peer's disk has not completed the I/O of the last connection")
	})
	b.waitStatus("refusing the peer as busy", func(r status.Resource) bool {
		return strings.Contains(r.Reason, "protocol: busy: this node's disk has not completed the I/O of the last connection")
	})
	for i := range 10 {
		start := time.Now()
		a.write(int64(8+i)*hBlock, pattern("written alone", hBlock))
		if took := time.Since(start); took > 500*time.Millisecond {
			t.Fatalf("write %d while the peer's disk hangs took %s", i, took)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if st := a.node.State(); st.Conn.Connected() {
		t.Fatalf("connected to the peer whose disk hangs: %+v", st)
	}

	b.disk.releaseWrites()
	a.waitConn(replica.Connected)
	inSyncAndEqual(t, a, b)
}

// TestScenarioKoCountOff: with ko-count 0 a write the peer's disk holds
// waits for it, however long, and completes once the disk answers; the
// connection stays up. Set at run time (urbd adjust --ko-count), ko-count
// applies to the write already waiting.
func TestScenarioKoCountOff(t *testing.T) {
	o := nodeOpts{timeout: 300 * time.Millisecond}
	a, b := cleanPair(t, o, o)
	held := b.disk.holdWrites()
	done := a.asyncWrite(0, pattern("waits for the peer", hBlock))
	<-held
	select {
	case err := <-done:
		t.Fatalf("the write answered while the peer's disk held it: %v", err)
	case <-time.After(2 * time.Second): // over six timeouts
	}
	if st := a.node.State(); st.Conn != replica.Connected {
		t.Fatalf("with ko-count 0 the peer was dropped: %+v", st)
	}
	b.disk.releaseWrites()
	if err := recvErr(t, "the write once the peer's disk answered", done); err != nil {
		t.Fatal(err)
	}

	if err := a.node.SetKoCount(-1); err == nil {
		t.Error("ko-count -1 accepted")
	}
	held = b.disk.holdWrites()
	done = a.asyncWrite(hBlock, pattern("waits, then ko-count is set", hBlock))
	<-held
	if err := a.node.SetKoCount(2); err != nil {
		t.Fatal(err)
	}
	if err := recvErr(t, "the write once ko-count was set", done); err != nil {
		t.Fatal(err)
	}
	if st := a.node.State(); !strings.Contains(st.Reason, "--ko-count 2") {
		t.Errorf("reason %q, want the ko-count drop", st.Reason)
	}
	b.disk.releaseWrites()
	a.waitConn(replica.Connected)
	inSyncAndEqual(t, a, b)
}
