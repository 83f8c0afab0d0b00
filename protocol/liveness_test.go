package protocol

import (
	"errors"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/urbd/urbd/internal/testpki"
)

// blackhole forwards bytes between two TCP connections until cut, then
// silently drops everything, like a link whose route was deleted.
type blackhole struct {
	cut atomic.Bool
	wg  sync.WaitGroup
}

func (b *blackhole) pipe(dst, src net.Conn) {
	defer b.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			dst.Close()
			return
		}
		if b.cut.Load() {
			continue
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			src.Close()
			return
		}
	}
}

// blackholePair returns two sessions joined through a blackhole.
func blackholePair(t *testing.T, timeout time.Duration, edit ...func(d, a *Config)) (*Session, *Session, *blackhole) {
	t.Helper()
	d, p1 := tcpPair(t)
	p2, a := tcpPair(t)
	bh := &blackhole{}
	bh.wg.Add(2)
	go bh.pipe(p2, p1)
	go bh.pipe(p1, p2)
	t.Cleanup(func() {
		p1.Close()
		p2.Close()
		bh.wg.Wait()
	})
	dcfg, acfg := testConfig(), testConfig()
	dcfg.Timeout, acfg.Timeout = timeout, timeout
	for _, e := range edit {
		e(&dcfg, &acfg)
	}
	dr, ar := handshakePair(t, d, a, dcfg, acfg)
	if dr.err != nil || ar.err != nil {
		t.Fatalf("handshake: dialer %v, acceptor %v", dr.err, ar.err)
	}
	return dr.s, ar.s, bh
}

// A peer that vanishes without closing (link cut) is detected by both
// sides within the timeout, and blocked Recvs return.
func TestDeadLinkDetectedWithinTimeout(t *testing.T) {
	t.Run("tcp", func(t *testing.T) { testDeadLink(t) })
	t.Run("tls", func(t *testing.T) {
		ca := testpki.New(t, "CA")
		n1, _, _ := ca.Leaf(t, "n1")
		n2, _, _ := ca.Leaf(t, "n2")
		testDeadLink(t, func(d, a *Config) {
			d.TLS, a.TLS = NewTLSConfig(n1, ca.Pool), NewTLSConfig(n2, ca.Pool)
		})
	})
}

func testDeadLink(t *testing.T, edit ...func(d, a *Config)) {
	const timeout = 600 * time.Millisecond
	d, a, bh := blackholePair(t, timeout, edit...)
	exchange(t, d, a)
	recvErr := make(chan error, 1)
	go func() {
		_, err := a.Data().Recv()
		recvErr <- err
	}()
	start := time.Now()
	bh.cut.Store(true)
	for _, s := range []*Session{d, a} {
		select {
		case <-s.Done():
		case <-time.After(10 * timeout):
			t.Fatal("dead link not detected")
		}
	}
	// The detection bound is timeout/3 + timeout/2; allow for a loaded machine.
	if took := time.Since(start); took > 3*timeout {
		t.Errorf("detected after %v, timeout %v", took, timeout)
	}
	if err := <-recvErr; !errors.Is(err, ErrClosed) {
		t.Fatalf("blocked Recv returned %v", err)
	}
	if a.Err() == nil || d.Err() == nil {
		t.Fatal("no reason recorded")
	}
	// Close does not linger on the dead link (no TLS close_notify wait).
	start = time.Now()
	d.Close()
	a.Close()
	if took := time.Since(start); took > timeout {
		t.Errorf("Close took %v", took)
	}
}

// A peer that keeps the connection alive but stops reading a stream makes
// Send fail after the timeout instead of blocking forever.
func TestStalledPeerFailsSend(t *testing.T) {
	const timeout = 500 * time.Millisecond
	d, a, _ := blackholePair(t, timeout)
	_ = a // never reads its data stream
	data := make([]byte, 1<<20)
	var err error
	start := time.Now()
	for i := 0; err == nil; i++ {
		if i > 1000 {
			t.Fatal("1 GiB sent to a peer that reads nothing")
		}
		err = d.Data().Send(&Write{Seq: uint64(i), Length: uint32(len(data)), Data: data})
	}
	if took := time.Since(start); took > 20*timeout {
		t.Errorf("Send failed only after %v", took)
	}
	<-d.Done()
	if err := d.Control().Send(&Ping{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("control Send after the stall: %v", err)
	}
}

// Closing sessions ends every goroutine they started (flushers, watcher,
// yamux's loops).
func TestCloseLeavesNoGoroutines(t *testing.T) {
	base := runtime.NumGoroutine()
	for i := 0; i < 5; i++ {
		d, a := tcpPair(t)
		dr, ar := handshakePair(t, d, a, testConfig(), testConfig())
		if dr.err != nil || ar.err != nil {
			t.Fatalf("handshake: %v, %v", dr.err, ar.err)
		}
		exchange(t, dr.s, ar.s)
		if err := dr.s.Data().Send(&Ping{}); err != nil {
			t.Fatal(err)
		}
		dr.s.Close()
		ar.s.Close()
	}
	// yamux's keepalive goroutine is not waited for by its Close; give the
	// scheduler a bounded chance to run it to its end.
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base && time.Now().Before(deadline) {
		runtime.Gosched()
	}
	if n := runtime.NumGoroutine(); n > base {
		buf := make([]byte, 1<<16)
		t.Fatalf("%d goroutines left over, %d before:\n%s", n-base, base, buf[:runtime.Stack(buf, true)])
	}
}
