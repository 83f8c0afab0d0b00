package replica_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
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
	if !strings.Contains(st.Reason, "the peer has completed no request for") || !strings.Contains(st.Reason, "--ko-count 3") {
		t.Errorf("reason %q does not say the peer completed no request (ko-count)", st.Reason)
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
// applies to the write already waiting. Meanwhile both statuses say what
// is blocked: the Primary's the peer (flag n), the Secondary's its disk
// (flag b), and neither once the disk answers.
func TestScenarioKoCountOff(t *testing.T) {
	o := nodeOpts{timeout: 300 * time.Millisecond}
	a, b := cleanPair(t, o, o)
	held := b.disk.holdWrites()
	done := a.asyncWrite(0, pattern("waits for the peer", hBlock))
	<-held
	a.waitStatus("the peer shown blocked", func(r status.Resource) bool {
		return r.PeerBlockedSeconds >= 2 && r.DiskBlockedSeconds == 0 && len(r.Blocked) == 1 &&
			strings.HasPrefix(r.Blocked[0], "the peer has completed no request for ") && strings.HasSuffix(r.Blocked[0], " (--ko-count 0: waiting for it)")
	})
	b.waitStatus("the disk shown blocked", func(r status.Resource) bool {
		return r.DiskBlockedSeconds >= 2 && r.PeerBlockedSeconds == 0 && len(r.Blocked) == 1 &&
			strings.HasPrefix(r.Blocked[0], "the local disk has completed no request for ") && r.LocalPending == 1
	})
	select {
	case err := <-done:
		t.Fatalf("the write answered while the peer's disk held it: %v", err)
	default:
	}
	if st := a.node.State(); st.Conn != replica.Connected {
		t.Fatalf("with ko-count 0 the peer was dropped: %+v", st)
	}
	b.disk.releaseWrites()
	if err := recvErr(t, "the write once the peer's disk answered", done); err != nil {
		t.Fatal(err)
	}
	a.waitStatus("the peer no longer blocked", func(r status.Resource) bool { return r.PeerBlockedSeconds == 0 && r.Blocked == nil })
	b.waitStatus("the disk no longer blocked", func(r status.Resource) bool { return r.DiskBlockedSeconds == 0 && r.Blocked == nil })

	if err := a.node.SetKoCount(-1); err == nil {
		t.Error("ko-count -1 accepted")
	}
	// Hung, not only held: the write keeps b busy after the drop, so the
	// nodes do not reconnect (and change the reason) before it is read.
	held = b.disk.hangWrites()
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

// hungCase is a request that a hung disk holds: hang makes the disk hold
// the requests of its kind (the channel is closed once it holds one), free
// lets them go on, do makes x issue the request, and reason is what the
// node's reason says of it.
type hungCase struct {
	name   string
	hang   func(d *testDisk) <-chan struct{}
	free   func(d *testDisk)
	do     func(x *tnode) error
	reason string
}

// start hangs disk, runs the request on x in the background and returns,
// once disk holds it, when it started and where its result arrives.
func (tc hungCase) start(x *tnode, disk *testDisk) (time.Time, <-chan error) {
	held := tc.hang(disk)
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- tc.do(x) }()
	<-held
	return start, done
}

// TestScenarioHungPrimaryDiskDetached: with disk-timeout, a Primary whose
// disk leaves a write, a flush, a read or the flush an activity-log eviction
// needs unanswered detaches it once the timeout has passed, as after a disk
// error, and the request is served by
// the UpToDate peer: the application sees no error, only the wait. The
// reason and the local-io-error handler say what hung. When the disk answers
// at last, its late result changes nothing.
func TestScenarioHungPrimaryDiskDetached(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []hungCase{
		{"write", (*testDisk).hangWrites, (*testDisk).releaseWrites,
			func(x *tnode) error { return x.node.WriteAt(ctx, pattern("after", 2*hBlock), 8*hBlock, false) },
			fmt.Sprintf("local disk has not completed a write of %d bytes at %d in ", 2*hBlock, 8*hBlock)},
		{"flush", (*testDisk).hangFlushes, (*testDisk).releaseFlushes,
			func(x *tnode) error { return x.node.Flush(ctx) }, "local disk has not completed a flush in "},
		// A write to an extent the activity log must make room for: the
		// data sync before the eviction is the request that hangs.
		{"eviction", (*testDisk).hangFlushes, (*testDisk).releaseFlushes,
			func(x *tnode) error { return x.node.WriteAt(ctx, pattern("evicts", hBlock), hDiskSize/2, false) },
			"local disk has not completed a flush in "},
		{"read", (*testDisk).hangReads, (*testDisk).releaseReads,
			func(x *tnode) error {
				got, err := x.readAt(0, 4*hBlock)
				if err == nil && !bytes.Equal(got, pattern("before", 4*hBlock)) {
					return errors.New("the read served by the peer returned other data")
				}
				return err
			}, fmt.Sprintf("local disk has not completed a read of %d bytes at 0 in ", 4*hBlock)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := nodeOpts{diskTimeout: 300 * time.Millisecond, alExtents: 1}
			a, b := cleanPair(t, o, o)
			a.write(0, pattern("before", 4*hBlock))
			defer tc.free(a.disk)
			start, done := tc.start(a, a.disk)
			if err := recvErr(t, "the request the disk holds", done); err != nil {
				t.Fatalf("the %s the disk held: %v, want it served by the peer", tc.name, err)
			}
			if took := time.Since(start); took < 300*time.Millisecond {
				t.Errorf("detached after %s, before the disk-timeout", took)
			}
			st := a.node.State()
			if st.Disk != replica.Diskless || st.Role != replica.Primary || st.Conn != replica.Connected {
				t.Fatalf("after the hung %s: %+v, want a Connected Diskless Primary", tc.name, st)
			}
			if !strings.Contains(st.Reason, tc.reason) || !strings.Contains(st.Reason, "(--disk-timeout 300ms); disk detached") {
				t.Errorf("reason %q, want %q and the disk-timeout", st.Reason, tc.reason)
			}
			a.waitEvent("local-io-error")
			b.waitState("the peer shown Diskless", func(s replica.State) bool { return s.PeerDisk == replica.Diskless })
			if tc.name == "write" {
				// The write given up on is still at the detached disk,
				// out of service: neither in flight (lo:) nor blocked.
				a.node.Status()
				time.Sleep(blockedAfter + 100*time.Millisecond)
				if r := a.node.Status(); r.LocalPending != 0 || r.DiskBlockedSeconds != 0 || r.Blocked != nil {
					t.Errorf("status of the Diskless node, a write still at its old disk: lo %d, blocked %ds %q", r.LocalPending, r.DiskBlockedSeconds, r.Blocked)
				}
			}

			// The disk answers at last: the node stays Diskless, and the
			// peer still serves what was written.
			tc.free(a.disk)
			a.write(12*hBlock, pattern("later", hBlock))
			if err := a.node.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			want := append(append(pattern("before", 4*hBlock), make([]byte, 8*hBlock)...), pattern("later", hBlock)...)
			if tc.name == "write" {
				copy(want[8*hBlock:], pattern("after", 2*hBlock))
			}
			if got, err := a.readAt(0, len(want)); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("reading back while Diskless: %v (equal %v)", err, bytes.Equal(got, want))
			}
			if !bytes.Equal(b.read(0, len(want)), want) {
				t.Fatal("the peer's disk does not hold what the Primary wrote")
			}
			if st := a.node.State(); st.Disk != replica.Diskless {
				t.Errorf("after the disk answered: %+v, want still Diskless", st)
			}
		})
	}
}

// TestScenarioHungPrimaryDiskWithoutPeer: a Primary without its peer has no
// other copy to serve from: with disk-timeout it goes on waiting for its
// hung disk, as without it, keeps the disk, and says so in the log and in
// its status (blocked, flag b); the write completes when the disk answers.
// With the timeout off (the
// default), a hung disk is waited for with a peer too.
func TestScenarioHungPrimaryDiskWithoutPeer(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{diskTimeout: 200 * time.Millisecond}, nodeOpts{})
	b.stop()
	a.waitState("peer gone", func(s replica.State) bool { return !s.Conn.Connected() })
	held := a.disk.hangWrites()
	done := a.asyncWrite(0, pattern("waits for the disk", hBlock))
	<-held
	a.waitStatus("the disk shown blocked", func(r status.Resource) bool {
		return r.DiskBlockedSeconds >= 2 && len(r.Blocked) == 1 && strings.HasSuffix(r.Blocked[0], " (--disk-timeout 200ms)")
	})
	select {
	case err := <-done:
		t.Fatalf("the write answered while the disk held it: %v", err)
	default:
	}
	a.disk.releaseWrites()
	if err := recvErr(t, "the write once the disk answered", done); err != nil {
		t.Fatal(err)
	}
	if st := a.node.State(); st.Disk != replica.UpToDate {
		t.Fatalf("after the disk answered: %+v, want the disk kept", st)
	}
	if !strings.Contains(a.logs.String(), "the local disk does not answer and cannot be detached: waiting for it") {
		t.Error("the log does not say the node waits for its hung disk")
	}

	if err := a.node.SetDiskTimeout(0); err != nil {
		t.Fatal(err)
	}
	b.start()
	a.waitConn(replica.Connected)
	a.waitInSync()
	held = a.disk.hangWrites()
	done = a.asyncWrite(hBlock, pattern("waits with the timeout off", hBlock))
	<-held
	select {
	case err := <-done:
		t.Fatalf("with disk-timeout off the write answered while the disk held it: %v", err)
	case <-time.After(time.Second):
	}
	a.disk.releaseWrites()
	if err := recvErr(t, "the write once the disk answered", done); err != nil {
		t.Fatal(err)
	}
	if st := a.node.State(); st.Disk != replica.UpToDate {
		t.Fatalf("with disk-timeout off: %+v, want the disk kept", st)
	}
	if err := a.node.SetDiskTimeout(-time.Second); err == nil {
		t.Error("a negative disk-timeout was accepted")
	}
}

// TestScenarioSlowPeerDiskKept: ko-count drops a peer that completes
// nothing, not one that is slow: a peer whose disk takes one write every
// 50ms (its answers come in batches of replica.AckBatch (8), 400ms apart), with
// the last of a queue of 48 writes waiting about 2.4s, much longer than
// ko-count × timeout (900ms), stays connected and every write completes on
// both disks.
func TestScenarioSlowPeerDiskKept(t *testing.T) {
	o := nodeOpts{timeout: 300 * time.Millisecond, koCount: 3}
	a, b := cleanPair(t, o, o)
	held := b.disk.holdWrites()
	const writes = 48
	var done []<-chan error
	for i := range writes {
		done = append(done, a.asyncWrite(int64(i)*hBlock, pattern(fmt.Sprint("queued ", i), hBlock)))
	}
	<-held
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
				b.disk.allowWrites(1)
			}
		}
	}()
	for i, ch := range done {
		if err := recvErr(t, fmt.Sprint("write ", i), ch); err != nil {
			t.Fatal(err)
		}
	}
	if st, n := a.node.State(), a.eventCount("peer-lost"); st.Conn != replica.Connected || n != 0 {
		t.Fatalf("the slow peer was dropped: %+v, %d peer losses", st, n)
	}
	b.disk.releaseWrites()
	inSyncAndEqual(t, a, b)
}

// blockedAfter is replica's: how long the status waits before it calls the
// disk or the peer blocked.
const blockedAfter = 2 * time.Second

// TestScenarioHungSecondaryDiskLeaves: with disk-timeout on the Secondary,
// and ko-count off so that the Primary never drops it, a Secondary whose
// disk leaves a replicated write or a flush unanswered leaves its Primary
// itself once the timeout has passed: its disk Outdated, the reason and
// the local-io-error handler naming the request, and the Primary, told
// why, completes the held request alone, the write marked out of sync.
// While the disk hangs the nodes stay apart (busy), so the application does
// not wait again; once it answers they connect again by themselves and the
// resync makes both disks equal.
func TestScenarioHungSecondaryDiskLeaves(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []hungCase{
		{"write", (*testDisk).hangWrites, (*testDisk).releaseWrites,
			func(x *tnode) error { return x.node.WriteAt(ctx, pattern("held", 2*hBlock), 8*hBlock, false) },
			fmt.Sprintf("has not completed a replicated write of %d bytes at %d in ", 2*hBlock, 8*hBlock)},
		{"flush", (*testDisk).hangFlushes, (*testDisk).releaseFlushes,
			func(x *tnode) error { return x.node.Flush(ctx) }, "has not completed a flush in "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := cleanPair(t, nodeOpts{}, nodeOpts{diskTimeout: 300 * time.Millisecond})
			a.write(0, pattern("before", 4*hBlock))
			defer tc.free(b.disk)
			start, done := tc.start(a, b.disk)
			if err := recvErr(t, "the request the peer's disk holds", done); err != nil {
				t.Fatalf("the %s the peer's disk held: %v, want it completed by the Primary alone", tc.name, err)
			}
			if took := time.Since(start); took < 300*time.Millisecond {
				t.Errorf("the Secondary left after %s, before its disk-timeout", took)
			}
			st := b.waitState("the Secondary gone", func(s replica.State) bool { return !s.Conn.Connected() })
			if st.Disk != replica.Outdated || st.Role != replica.Secondary {
				t.Errorf("the Secondary after its disk hung: %+v, want an Outdated Secondary", st)
			}
			if !strings.Contains(st.Reason, "local disk "+tc.reason) || !strings.Contains(st.Reason, "(--disk-timeout 300ms); left the peer") {
				t.Errorf("the Secondary's reason %q, want %q and the disk-timeout", st.Reason, tc.reason)
			}
			b.waitEvent("local-io-error")
			if lost := a.nthLoss(1); !strings.Contains(lost, "the peer's disk "+tc.reason) {
				t.Errorf("the Primary's peer-lost reason %q does not name the peer's hung %s", lost, tc.name)
			}
			if st := a.node.State(); st.Role != replica.Primary || st.Disk != replica.UpToDate || st.Conn.Connected() {
				t.Errorf("the Primary after its peer left: %+v, want an UpToDate Primary alone", st)
			}
			if tc.name == "write" && a.node.Status().OutOfSyncKiB == 0 {
				t.Error("the write the peer never completed is not marked out of sync")
			}

			// Apart while the disk hangs: the writes that follow do not
			// wait for it again.
			b.waitStatus("refusing the peer as busy", func(r status.Resource) bool {
				return strings.Contains(r.Reason, "protocol: busy: this node's disk has not completed the I/O of the last connection")
			})
			for i := range 5 {
				start := time.Now()
				a.write(int64(12+i)*hBlock, pattern("written alone", hBlock))
				if took := time.Since(start); took > 200*time.Millisecond {
					t.Fatalf("write %d while the peer's disk hangs took %s", i, took)
				}
			}

			tc.free(b.disk)
			a.waitConn(replica.Connected)
			inSyncAndEqual(t, a, b)
			if st := b.node.State(); st.Disk != replica.UpToDate {
				t.Errorf("the Secondary after the resync: %+v, want UpToDate", st)
			}
		})
	}
}

// TestScenarioHungSecondaryDiskKeptForDisklessPrimary: a Secondary whose
// Primary is Diskless holds that Primary's only data, so with disk-timeout
// it does not leave when its disk hangs: the Primary's write waits for the
// disk, as without the timeout, the log says why, and the write completes
// once the disk answers.
func TestScenarioHungSecondaryDiskKeptForDisklessPrimary(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{diskTimeout: 200 * time.Millisecond})
	if _, err := a.node.DetachDisk(); err != nil {
		t.Fatal(err)
	}
	b.waitState("the peer shown Diskless", func(s replica.State) bool { return s.PeerDisk == replica.Diskless })
	held := b.disk.hangWrites()
	done := a.asyncWrite(0, pattern("waits for the only disk", hBlock))
	<-held
	select {
	case err := <-done:
		t.Fatalf("the write answered while the only disk held it: %v", err)
	case <-time.After(time.Second): // five disk-timeouts
	}
	if st := b.node.State(); !st.Conn.Connected() || st.Disk != replica.UpToDate {
		t.Fatalf("the Secondary of a Diskless Primary, its disk hung: %+v, want it connected and UpToDate", st)
	}
	if !strings.Contains(b.logs.String(), "this disk holds its only data: waiting for it") {
		t.Error("the log does not say the Secondary waits for its hung disk")
	}
	b.disk.releaseWrites()
	if err := recvErr(t, "the write once the disk answered", done); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b.read(0, hBlock), pattern("waits for the only disk", hBlock)) {
		t.Error("the Secondary's disk does not hold the write")
	}
}

// TestScenarioHungDiskDuringResyncShownBlocked: a SyncTarget whose disk
// stops taking the resync's copies shows its disk blocked (the copies count
// as requests to the disk, lo:), and the resync goes on once it answers.
func TestScenarioHungDiskDuringResyncShownBlocked(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	if err := b.node.Disconnect(false); err != nil {
		t.Fatal(err)
	}
	a.waitState("peer gone", func(s replica.State) bool { return !s.Conn.Connected() })
	a.write(0, pattern("to resync", 8*hBlock))
	held := b.disk.hangWrites()
	defer b.disk.releaseWrites()
	if err := b.node.Connect(false); err != nil {
		t.Fatal(err)
	}
	<-held
	b.waitStatus("the disk shown blocked during the resync", func(r status.Resource) bool {
		return r.ConnState == "SyncTarget" && r.DiskBlockedSeconds >= 2 && r.LocalPending >= 1 && len(r.Blocked) == 1
	})
	b.disk.releaseWrites()
	a.waitConn(replica.Connected)
	inSyncAndEqual(t, a, b)
	b.waitStatus("the disk no longer blocked", func(r status.Resource) bool { return r.DiskBlockedSeconds == 0 && r.LocalPending == 0 })
}
