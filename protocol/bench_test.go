package protocol

import (
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/urbd/urbd/internal/testpki"
)

// drain receives frames on st until it has seen n Writes or an error, and
// reports the result on done.
func drain(st *Stream, n int, done chan<- error) {
	for i := 0; i < n; i++ {
		m, err := st.Recv()
		if err != nil {
			done <- err
			return
		}
		if _, ok := m.(*Write); !ok {
			done <- ErrUnexpected
			return
		}
	}
	done <- nil
}

func benchWrites(b *testing.B, size int, parallel bool) {
	d, a := sessionPair(b)
	benchWritesOn(b, d, a, size, parallel)
}

// tlsSessionPair returns two sessions over loopback TCP with mutual TLS.
func tlsSessionPair(b *testing.B) (*Session, *Session) {
	ca := testpki.New(b, "bench CA")
	n1, _, _ := ca.Leaf(b, "n1")
	n2, _, _ := ca.Leaf(b, "n2")
	dcfg, acfg := testConfig(), testConfig()
	dcfg.TLS, acfg.TLS = NewTLSConfig(n1, ca.Pool), NewTLSConfig(n2, ca.Pool)
	dc, ac := tcpPair(b)
	dr, ar := handshakePair(b, dc, ac, dcfg, acfg)
	if dr.err != nil || ar.err != nil {
		b.Fatalf("handshake: dialer %v, acceptor %v", dr.err, ar.err)
	}
	return dr.s, ar.s
}

// BenchmarkWrite4KTLS and BenchmarkWrite1MTLS: as without TLS, over mutual TLS 1.3.
func BenchmarkWrite4KTLS(b *testing.B) {
	d, a := tlsSessionPair(b)
	benchWritesOn(b, d, a, 4096, true)
}

func BenchmarkWrite1MTLS(b *testing.B) {
	d, a := tlsSessionPair(b)
	benchWritesOn(b, d, a, 1<<20, false)
}

func benchWritesOn(b *testing.B, d, a *Session, size int, parallel bool) {
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i)
	}
	done := make(chan error, 1)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	go drain(a.Data(), b.N, done)
	if parallel {
		b.SetParallelism(16)
		b.RunParallel(func(pb *testing.PB) {
			w := &Write{Length: uint32(size), Data: data}
			for pb.Next() {
				if err := d.Data().Send(w); err != nil {
					b.Error(err)
					return
				}
			}
		})
	} else {
		w := &Write{Length: uint32(size), Data: data}
		for i := 0; i < b.N; i++ {
			w.Seq = uint64(i)
			if err := d.Data().Send(w); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "frames/s")
}

// BenchmarkWrite4K: 4 KiB Writes from 16 goroutines per CPU at once, as
// the NBD server issues them, through a loopback TCP session.
func BenchmarkWrite4K(b *testing.B) { benchWrites(b, 4096, true) }

// BenchmarkWrite4KSerial: 4 KiB Writes from one goroutine (no batching
// from concurrency; each Send writes to the transport).
func BenchmarkWrite4KSerial(b *testing.B) { benchWrites(b, 4096, false) }

// BenchmarkWrite1M: 1 MiB Writes from one goroutine.
func BenchmarkWrite1M(b *testing.B) { benchWrites(b, 1<<20, false) }

// BenchmarkWrite4KRoundTrip: one 4 KiB Write at a time, each waiting for
// its Ack (queue depth 1 latency of the transport alone).
func BenchmarkWrite4KRoundTrip(b *testing.B) {
	d, a := sessionPair(b)
	data := make([]byte, 4096)
	errc := make(chan error, 1)
	go func() {
		for {
			m, err := a.Data().Recv()
			if err != nil {
				errc <- err
				return
			}
			w := m.(*Write)
			if err := a.Data().Send(&Ack{Seq: w.Seq, Type: AckDone}); err != nil {
				errc <- err
				return
			}
		}
	}()
	b.SetBytes(4096)
	b.ReportAllocs()
	b.ResetTimer()
	w := &Write{Length: 4096, Data: data}
	for i := 0; i < b.N; i++ {
		w.Seq = uint64(i)
		if err := d.Data().Send(w); err != nil {
			b.Fatal(err)
		}
		if _, err := d.Data().Recv(); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	select {
	case err := <-errc:
		b.Fatal(err)
	default:
	}
}

// BenchmarkWrite4KAcked: 32 writers, each sending a 4 KiB Write and waiting
// for its Ack before the next, as protocol C replication does at queue
// depth 32 (without the disks).
func BenchmarkWrite4KAcked(b *testing.B) {
	d, a := sessionPair(b)
	const writers = 32
	go func() {
		for {
			m, err := a.Data().Recv()
			if err != nil {
				return
			}
			if err := a.Data().Send(&Ack{Seq: m.(*Write).Seq, Type: AckDone}); err != nil {
				return
			}
		}
	}()
	acked := make([]chan struct{}, writers)
	for i := range acked {
		acked[i] = make(chan struct{}, 1)
	}
	go func() {
		for {
			m, err := d.Data().Recv()
			if err != nil {
				return
			}
			acked[m.(*Ack).Seq] <- struct{}{}
		}
	}()
	data := make([]byte, 4096)
	var next atomic.Int64
	b.SetBytes(4096)
	b.ReportAllocs()
	b.SetParallelism(writers / runtime.GOMAXPROCS(0))
	start := time.Now()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		id := next.Add(1) - 1
		w := &Write{Seq: uint64(id), Length: 4096, Data: data}
		for pb.Next() {
			if err := d.Data().Send(w); err != nil {
				b.Error(err)
				return
			}
			<-acked[id]
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "writes/s")
}
