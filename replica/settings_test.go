package replica_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/urbd/urbd/protocol"
	"github.com/urbd/urbd/replica"
	"github.com/urbd/urbd/status"
)

// TestScenarioSetTimeoutFromTheNextConnection: a timeout changed while the
// nodes are connected leaves the connection under the one it was made with
// (a silent link cut is noticed after about the old timeout, not the new
// one); the next connection uses the new one. A timeout of zero is refused.
func TestScenarioSetTimeoutFromTheNextConnection(t *testing.T) {
	const old, shorter = 3 * time.Second, 400 * time.Millisecond
	o := nodeOpts{timeout: old, viaProxy: true}
	a, b := cleanPair(t, o, o)
	if err := a.node.SetTimeout(0); err == nil {
		t.Error("SetTimeout(0) accepted")
	}
	for _, x := range []*tnode{a, b} {
		if err := x.node.SetTimeout(shorter); err != nil {
			t.Fatal(err)
		}
	}
	cut := func(on bool) {
		a.proxy.Cut.Store(on)
		b.proxy.Cut.Store(on)
	}

	start := time.Now()
	cut(true)
	a.waitConn(replica.WFConnection)
	// yamux's keepalive, made from the old timeout too, may notice after
	// half of it; the new one would have noticed within about 400 ms.
	if took := time.Since(start); took < old/2-200*time.Millisecond {
		t.Fatalf("the connection made under a %v timeout was declared dead after %v: the new %v applied to it", old, took, shorter)
	}
	cut(false)
	inSyncAndEqual(t, a, b)

	start = time.Now()
	cut(true)
	a.waitConn(replica.WFConnection)
	if took := time.Since(start); took > 4*shorter {
		t.Fatalf("the next connection was declared dead after %v, want about the new timeout %v", took, shorter)
	}
	cut(false)
	inSyncAndEqual(t, a, b)
}

// TestScenarioSetOnIOErrorAtOnce: on-io-error changed on a running Primary
// governs the next disk error: with pass_on the failed write gets the
// disk's error and the disk stays; set back to detach, the next failure
// detaches the disk and the peer serves the write.
func TestScenarioSetOnIOErrorAtOnce(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	ctx := context.Background()
	a.node.SetOnIOError(replica.IOPassOn)
	a.disk.failAt.Store(4*hBlock + 1)
	if err := a.node.WriteAt(ctx, pattern("x", hBlock), 4*hBlock, false); !errors.Is(err, errDiskFailed) {
		t.Fatalf("write under pass_on: %v, want the disk's error", err)
	}
	if st := a.node.State(); st.Disk != replica.UpToDate {
		t.Fatalf("disk %v after a failure under pass_on, want UpToDate", st.Disk)
	}
	inSyncAndEqual(t, a, b)

	a.node.SetOnIOError(replica.IODetach)
	a.disk.failAt.Store(8*hBlock + 1)
	p := pattern("served by the peer", hBlock)
	if err := a.node.WriteAt(ctx, p, 8*hBlock, false); err != nil {
		t.Fatalf("write under detach: %v, want it served by the peer", err)
	}
	if st := a.node.State(); st.Disk != replica.Diskless {
		t.Fatalf("disk %v after a failure under detach, want Diskless", st.Disk)
	}
	if got := b.read(8*hBlock, hBlock); string(got) != string(p) {
		t.Fatal("the write the disk failed is not on the peer")
	}
}

// TestScenarioSetAfterSBFromTheNextConnection: nodes whose split-brain
// policies differ refuse to connect; once the operator gives the second
// node the same policy, the next connection is accepted.
func TestScenarioSetAfterSBFromTheNextConnection(t *testing.T) {
	policy := replica.AfterSplitBrain{NoPrimary: replica.SB0DiscardZeroChanges, OnePrimary: replica.SB1Consensus}
	a, b := newPair(t, nodeOpts{afterSB: policy, assumeClean: true}, nodeOpts{assumeClean: true})
	a.start()
	b.start()
	b.waitState("refused", func(s replica.State) bool {
		return s.Conn == replica.StandAlone && strings.Contains(s.Reason, "split-brain policies differ")
	})
	a.waitConn(replica.StandAlone)
	b.node.SetAfterSB(policy)
	reconnect(t, a)
	reconnect(t, b)
	inSyncAndEqual(t, a, b)
}

// TestScenarioSetFencing: fencing turned on while connected governs the
// next peer loss (the handler runs and, with resource-and-stonith, writes
// are held); turned off, the held writes are released. Turned on while the
// Primary is already apart from its peer, it neither fences now nor holds
// writes.
func TestScenarioSetFencing(t *testing.T) {
	f := newFenceHandler()
	a, b := cleanPair(t, nodeOpts{fence: f, viaProxy: true, timeout: time.Second}, nodeOpts{viaProxy: true, timeout: time.Second})
	a.node.SetFencing(replica.FenceResourceAndStonith)

	cutLink(a, b, true)
	a.waitConn(replica.WFConnection)
	f.called(t)
	a.waitStatus("writes held for the fence", func(s status.Resource) bool { return s.Suspended })
	held := a.asyncWrite(0, pattern("held", hBlock))
	notReturned(t, "a write while the peer is fenced", held)
	a.node.SetFencing(replica.FenceDontCare)
	if err := recvErr(t, "the held write", held); err != nil {
		t.Fatal(err)
	}
	f.reply(t, replica.FenceExitPeerUnreachable) // the handler still running finishes
	cutLink(a, b, false)
	inSyncAndEqual(t, a, b)

	cutLink(a, b, true)
	a.waitConn(replica.WFConnection)
	f.notCalled(t, "the peer was lost with fencing off", 300*time.Millisecond)
	a.node.SetFencing(replica.FenceResourceAndStonith)
	f.notCalled(t, "fencing turned on while the Primary was already apart", 500*time.Millisecond)
	a.write(hBlock, pattern("alone", hBlock))
	cutLink(a, b, false)
	inSyncAndEqual(t, a, b)
}

// TestScenarioSetLink: a new secret and new addresses leave the connected
// session alone and govern the next connection: b moves to a new port,
// which a then dials; b's old port is closed. A node given another secret
// than its peer is refused at the next connection, and connects again once
// both agree. A listen address that cannot be opened changes nothing.
func TestScenarioSetLink(t *testing.T) {
	o := nodeOpts{secret: "correct horse"}
	a, b := cleanPair(t, o, o)
	newB := freeAddr(t)
	linkA := replica.Link{ListenPeer: a.addr, Peer: newB, Secret: []byte("battery staple")}
	linkB := replica.Link{ListenPeer: newB, Peer: a.addr, Secret: []byte("battery staple")}
	for x, l := range map[*tnode]replica.Link{a: linkA, b: linkB} {
		if err := x.node.SetLink(l); err != nil {
			t.Fatal(err)
		}
	}
	if st := a.node.State(); st.Conn != replica.Connected {
		t.Fatalf("the session did not survive the new link: %v", st.Conn)
	}
	if c, err := net.DialTimeout("tcp", b.addr, time.Second); err == nil {
		c.Close()
		t.Errorf("b's old address %s still accepts connections", b.addr)
	}
	if err := a.node.SetLink(replica.Link{ListenPeer: newB, Peer: newB, Secret: linkA.Secret}); err == nil {
		t.Error("a listen address already in use was accepted")
	}
	if got := a.node.PeerAddress(); got != newB {
		t.Errorf("a's peer address after a refused change: %s, want %s", got, newB)
	}

	reconnectBoth := func() {
		t.Helper()
		for _, x := range []*tnode{a, b} {
			if err := x.node.Disconnect(false); err != nil {
				t.Fatal(err)
			}
		}
		reconnect(t, a)
		reconnect(t, b)
	}
	reconnectBoth()
	a.write(0, pattern("after the move", hBlock))
	inSyncAndEqual(t, a, b)

	wrong := linkA
	wrong.Secret = []byte("tr0ub4dor")
	if err := a.node.SetLink(wrong); err != nil {
		t.Fatal(err)
	}
	reconnectBoth()
	a.waitStatus("refused for the secret", func(s status.Resource) bool { return strings.Contains(s.Reason, protocol.ErrAuth.Error()) })
	if err := a.node.SetLink(linkA); err != nil {
		t.Fatal(err)
	}
	inSyncAndEqual(t, a, b)
}
