package protocol

import (
	"bytes"
	"errors"
	"io"
	"sync"
	"testing"
	"time"
	"unsafe"
)

// recorder is a transport that keeps every Write call separately. A
// gated recorder (newGatedRecorder) reports each Write on entered, then
// waits on gate, until release.
type recorder struct {
	entered  chan struct{}
	gate     chan struct{}
	opened   chan struct{}
	openOnce sync.Once

	mu     sync.Mutex
	writes [][]byte
	ptrs   []*byte // first byte of each written slice, to detect copies
}

// newGatedRecorder returns a gated recorder released at the test's end.
func newGatedRecorder(t testing.TB) *recorder {
	r := &recorder{entered: make(chan struct{}), gate: make(chan struct{}), opened: make(chan struct{})}
	t.Cleanup(r.release)
	return r
}

// release lets every later (and the waiting) Write through at once.
func (r *recorder) release() { r.openOnce.Do(func() { close(r.opened) }) }

func (r *recorder) Write(p []byte) (int, error) {
	if r.entered != nil {
		select {
		case r.entered <- struct{}{}:
			select {
			case <-r.gate:
			case <-r.opened:
			}
		case <-r.opened:
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.writes = append(r.writes, bytes.Clone(p))
	if len(p) > 0 {
		r.ptrs = append(r.ptrs, &p[0])
	}
	return len(p), nil
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.writes)
}

// testStream returns a started Stream over rw, stopped at the test's end.
func testStream(t testing.TB, rw io.ReadWriter) *Stream {
	st := newStream(nil, StreamData, rw, 0)
	st.start()
	t.Cleanup(func() {
		if r, ok := rw.(*recorder); ok && r.opened != nil {
			r.release() // a test that failed may have left a write held
		}
		st.stop()
	})
	return st
}

func mustFlush(t testing.TB, st *Stream) {
	t.Helper()
	if err := st.Flush(); err != nil {
		t.Fatal(err)
	}
}

func (r *recorder) Read([]byte) (int, error) { return 0, io.EOF }

func (r *recorder) all() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Join(r.writes, nil)
}

// decodeAll decodes a byte stream of frames, checking the frame sequence.
func decodeAll(t *testing.T, b []byte) []Message {
	t.Helper()
	var out []Message
	for seq := uint32(0); len(b) > 0; seq++ {
		m, h, n, err := DecodeFrame(b)
		if err != nil {
			t.Fatalf("frame %d: %v", seq, err)
		}
		if h.Seq != seq {
			t.Fatalf("frame %d has seq %d", seq, h.Seq)
		}
		out = append(out, m)
		b = b[n:]
	}
	return out
}

// A lone frame leaves at once, written by the flusher without any Flush
// call; frames sent while that write is in progress leave together in the
// next write.
func TestSendCoalescesWhileWriting(t *testing.T) {
	rec := newGatedRecorder(t)
	st := testStream(t, rec)
	if err := st.Send(&Ping{Seq: 0}); err != nil {
		t.Fatal(err)
	}
	<-rec.entered // the flusher is writing the lone Ping
	const n = 20
	for i := 1; i <= n; i++ {
		// Send does not wait for the transport.
		if err := st.Send(&Write{Seq: uint64(i), Length: 512, Data: make([]byte, 512)}); err != nil {
			t.Fatal(err)
		}
	}
	rec.gate <- struct{}{} // finish the first write
	<-rec.entered          // the second write carries the 20 Writes
	rec.gate <- struct{}{}
	mustFlush(t, st)
	if rec.count() != 2 {
		t.Fatalf("%d transport writes, want 2", rec.count())
	}
	if len(rec.writes[0]) != HeaderLen+seqLen {
		t.Fatalf("first write of %d bytes", len(rec.writes[0]))
	}
	if got := decodeAll(t, rec.all()); len(got) != n+1 {
		t.Fatalf("decoded %d frames", len(got))
	}
}

// Send blocks when the coalescing buffer is full, until the flusher drains it.
func TestSendBackpressure(t *testing.T) {
	rec := newGatedRecorder(t)
	st := testStream(t, rec)
	data := make([]byte, 8<<10)
	send := func(seq uint64) error { return st.Send(&Write{Seq: seq, Length: uint32(len(data)), Data: data}) }
	if err := send(0); err != nil {
		t.Fatal(err)
	}
	<-rec.entered // first frame being written
	frame := HeaderLen + writeFixed + len(data)
	seq := uint64(1)
	for pending := frame; pending <= sendBufSize; pending += frame {
		if err := send(seq); err != nil {
			t.Fatal(err)
		}
		seq++
	}
	// The buffer holds seq-1 frames and has no room for one more.
	blocked := make(chan error)
	go func() { blocked <- send(seq) }()
	select {
	case err := <-blocked:
		t.Fatalf("Send into a full buffer returned %v", err)
	case <-rec.entered:
		t.Fatal("a second write started while the first was in progress")
	case <-time.After(50 * time.Millisecond): // blocked, as it should be
	}
	rec.gate <- struct{}{} // first write done; the flusher takes the full buffer
	<-rec.entered
	rec.release()
	if err := <-blocked; err != nil {
		t.Fatal(err)
	}
	mustFlush(t, st)
	if got := decodeAll(t, rec.all()); len(got) != int(seq)+1 {
		t.Fatalf("decoded %d frames, sent %d", len(got), seq+1)
	}
}

// A large payload goes to the transport as the caller's own slice (no copy);
// a small one is coalesced.
func TestSendLargePayloadNotCopied(t *testing.T) {
	rec := &recorder{}
	st := testStream(t, rec)
	data := make([]byte, 1<<20)
	data[0], data[len(data)-1] = 1, 2
	if err := st.Send(&Write{Length: uint32(len(data)), Data: data}); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range rec.ptrs {
		if p == &data[0] {
			found = true
		}
	}
	if !found {
		t.Fatal("the 1 MiB payload was copied before reaching the transport")
	}
	got := decodeAll(t, rec.all())
	if w := got[0].(*Write); !bytes.Equal(w.Data, data) {
		t.Fatal("payload changed")
	}
	// A big fixed part (a full Bitmap chunk) larger than the buffer.
	bm := &Bitmap{TotalBits: 64 * MaxBitmapWords, Words: make([]uint64, MaxBitmapWords), Last: true}
	bm.Words[MaxBitmapWords-1] = 42
	if err := st.Send(bm); err != nil {
		t.Fatal(err)
	}
	got = decodeAll(t, rec.all())
	if b := got[1].(*Bitmap); b.Words[MaxBitmapWords-1] != 42 || !b.Last {
		t.Fatal("bitmap changed")
	}
}

// Concurrent senders: every frame arrives whole, and each sender's frames
// arrive in its order.
func TestConcurrentSendOrder(t *testing.T) {
	rec := &recorder{}
	st := testStream(t, rec)
	const senders, each = 8, 200
	var wg sync.WaitGroup
	for s := 0; s < senders; s++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				size := (i % 5) * 30000 // 0 .. 120000: inline and direct payloads
				data := bytes.Repeat([]byte{byte(s)}, size)
				err := st.Send(&Write{Seq: uint64(s)<<32 | uint64(i), Length: uint32(size), Data: data})
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	mustFlush(t, st)
	next := make([]uint64, senders)
	for _, m := range decodeAll(t, rec.all()) {
		w := m.(*Write)
		s, i := w.Seq>>32, w.Seq&0xffffffff
		if i != next[s] {
			t.Fatalf("sender %d: frame %d after %d", s, i, next[s])
		}
		next[s]++
		if len(w.Data) != int(i%5)*30000 || (len(w.Data) > 0 && (w.Data[0] != byte(s) || w.Data[len(w.Data)-1] != byte(s))) {
			t.Fatalf("sender %d frame %d: bad data", s, i)
		}
	}
	for s, n := range next {
		if n != each {
			t.Fatalf("sender %d: %d frames arrived", s, n)
		}
	}
}

func TestSendInvalidKeepsStream(t *testing.T) {
	rec := &recorder{}
	st := testStream(t, rec)
	if err := st.Send(&Write{Length: 9}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("got %v", err)
	}
	if err := st.Send(foreign{}); !errors.Is(err, ErrUnknownKind) {
		t.Fatalf("got %v", err)
	}
	for _, m := range []Message{
		&Read{Seq: 1},
		Read{Seq: 1, Length: MaxData + 1},
		&ReadReply{Seq: 1, Err: CodeIO, Data: []byte{1}},
		&ReadReply{Seq: 1, Data: make([]byte, MaxData+1)},
	} {
		if err := st.Send(m); !errors.Is(err, ErrInvalid) {
			t.Fatalf("Send(%+v): got %v, want ErrInvalid", m.Kind(), err)
		}
	}
	if err := st.Send(Ack{Seq: 1, Type: AckDone}); err != nil {
		t.Fatal(err)
	}
	mustFlush(t, st)
	if got := decodeAll(t, rec.all()); len(got) != 1 {
		t.Fatalf("%d frames", len(got))
	}
}

// errWriter fails every write.
type errWriter struct{ n int }

func (e *errWriter) Write(p []byte) (int, error) { e.n++; return 0, io.ErrClosedPipe }
func (e *errWriter) Read([]byte) (int, error)    { return 0, io.EOF }

func TestSendErrorIsSticky(t *testing.T) {
	ew := &errWriter{}
	st := testStream(t, ew)
	if err := st.Send(&Ping{}); err != nil {
		t.Fatalf("queued Send: %v", err)
	}
	if err := st.Flush(); !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("Flush: %v", err)
	}
	if err := st.Send(&Ping{}); !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("second send: %v", err)
	}
	if err := st.Send(&Write{Length: 1 << 20, Data: make([]byte, 1<<20)}); !errors.Is(err, io.ErrClosedPipe) || ew.n != 1 {
		t.Fatalf("direct send: %v after %d writes", err, ew.n)
	}
}

// After stop (for a session: after it died) Send and Flush fail with
// ErrClosed instead of queueing forever.
func TestSendAfterStop(t *testing.T) {
	st := newStream(nil, StreamData, &recorder{}, 0)
	st.start()
	st.stop()
	if err := st.Send(&Ping{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Send: %v", err)
	}
	if err := st.Flush(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Flush: %v", err)
	}
}

// streamOver returns a Stream that reads the given bytes.
func streamOver(b []byte) *Stream {
	return newStream(nil, StreamData, struct {
		io.Reader
		io.Writer
	}{bytes.NewReader(b), io.Discard}, 0)
}

func framesOf(t testing.TB, ms ...Message) []byte {
	var b []byte
	for i, m := range ms {
		var err error
		if b, err = AppendFrame(b, uint32(i), m); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

func TestRecvReusesBuffers(t *testing.T) {
	st := streamOver(framesOf(t,
		&Write{Seq: 1, Length: 4, Data: []byte("aaaa")},
		&Write{Seq: 2, Length: 4, Data: []byte("bbbb")},
		&State{Role: RolePrimary}))
	m1, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	w1 := m1.(*Write)
	d1 := w1.Data
	m2, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if m2.(*Write) != w1 || unsafe.SliceData(m2.(*Write).Data) != unsafe.SliceData(d1) {
		t.Fatal("Write and its buffer were not reused")
	}
	if string(d1) != "bbbb" || w1.Seq != 2 {
		t.Fatal("the reused Write does not hold the second frame")
	}
	m3, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if m3.(*State).Role != RolePrimary {
		t.Fatalf("got %#v", m3)
	}
	if _, err := st.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("at end: %v", err)
	}
}

func TestRecvOwnedCopies(t *testing.T) {
	st := streamOver(framesOf(t,
		&Write{Seq: 1, Length: 4, Data: []byte("aaaa")},
		&Ack{Seq: 1, Type: AckDone},
		&ResyncData{Seq: 3, Data: []byte("cc")},
		&Write{Seq: 2, Length: 4, Data: []byte("bbbb")},
		&Ack{Seq: 2, Type: AckReceived},
		&ResyncData{Seq: 4, Data: []byte("dd")}))
	var kept []Message
	for i := 0; i < 6; i++ {
		m, err := st.RecvOwned()
		if err != nil {
			t.Fatal(err)
		}
		kept = append(kept, m)
	}
	if w := kept[0].(*Write); w.Seq != 1 || string(w.Data) != "aaaa" {
		t.Fatalf("first write changed: %+v", w)
	}
	if a := kept[1].(*Ack); a.Seq != 1 || a.Type != AckDone {
		t.Fatalf("first ack changed: %+v", a)
	}
	if r := kept[2].(*ResyncData); r.Seq != 3 || string(r.Data) != "cc" {
		t.Fatalf("first resync changed: %+v", r)
	}
}

// A Read is freshly allocated by Recv; a ReadReply too, but its Data
// aliases the receive buffer until RecvOwned copies it.
func TestRecvReadAndReadReply(t *testing.T) {
	frames := framesOf(t,
		&Read{Seq: 1, Offset: 512, Length: 4},
		&ReadReply{Seq: 1, Data: []byte("aaaa")},
		&ReadReply{Seq: 2, Data: []byte("bbbb")},
		&ReadReply{Seq: 3, Err: CodeIO},
		&Read{Seq: 4, Offset: 1024, Length: 8},
		&ReadReply{Seq: 5, Data: []byte("cccc")},
		&ReadReply{Seq: 6, Data: []byte("dddd")})
	st := streamOver(frames)
	r1, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	rr := m.(*ReadReply)
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}
	if rr.Seq != 1 || string(rr.Data) != "bbbb" {
		t.Fatalf("Recv: ReadReply %+v, want Seq 1 with Data aliasing the buffer", rr)
	}
	m, err = st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if e := m.(*ReadReply); e.Seq != 3 || e.Err != CodeIO || e.Data != nil {
		t.Fatalf("error reply %+v", e)
	}
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}
	if r := r1.(*Read); *r != (Read{Seq: 1, Offset: 512, Length: 4}) {
		t.Fatalf("Read changed by later Recvs: %+v", r)
	}
	m, err = st.RecvOwned()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.RecvOwned(); err != nil {
		t.Fatal(err)
	}
	if rr := m.(*ReadReply); rr.Seq != 5 || string(rr.Data) != "cccc" {
		t.Fatalf("RecvOwned: ReadReply %+v changed by the next Recv", rr)
	}
}

func TestRecvErrors(t *testing.T) {
	oversize := framesOf(t, &Write{Length: 1, Data: []byte{1}})
	be.PutUint32(oversize[12:], writeFixed+MaxData+1)
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"oversize", oversize, ErrTooLarge},
		{"sequence gap", append(framesOf(t, &Ping{}), mustFrame(t, 5, &Ping{})...), ErrMalformed},
		{"truncated payload", framesOf(t, &Write{Length: 8, Data: make([]byte, 8)})[:30], io.ErrUnexpectedEOF},
		{"truncated header", []byte("URBD\x01"), io.ErrUnexpectedEOF},
		{"announces 32 MiB, sends 1 KiB", func() []byte {
			b := framesOf(t, &Write{Length: 1024, Data: make([]byte, 1024)})
			be.PutUint32(b[12:], writeFixed+MaxData)
			be.PutUint32(b[HeaderLen+20:], MaxData)
			return b
		}(), io.ErrUnexpectedEOF},
		{"handshake kind", framesOf(t, &AuthOK{}), ErrUnexpected},
		{"unknown kind", func() []byte { b := framesOf(t, &Ping{}); b[5] = 99; return reseal(b) }(), ErrUnknownKind},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := streamOver(tc.in)
			var err error
			for err == nil {
				_, err = st.Recv()
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if cap(st.rbuf) > minPayloadBuf {
				t.Fatalf("allocated %d bytes for a rejected frame", cap(st.rbuf))
			}
			if _, again := st.Recv(); !errors.Is(again, tc.want) {
				t.Fatalf("error not sticky: %v", again)
			}
		})
	}
}

// A payload's checksum is computed piece by piece as it arrives: a frame
// spanning several pieces is accepted whole, and a flipped bit in any piece,
// at either edge of a piece or in the last byte, fails it.
func TestRecvChecksumsEveryPiece(t *testing.T) {
	data := make([]byte, 3*crcPiece+100)
	for i := range data {
		data[i] = byte(i * 7)
	}
	good := framesOf(t, &Write{Seq: 1, Length: uint32(len(data)), Data: data})
	m, err := streamOver(good).Recv()
	if err != nil {
		t.Fatal(err)
	}
	if w := m.(*Write); !bytes.Equal(w.Data, data) {
		t.Fatal("payload differs after the round trip")
	}
	for _, at := range []int{0, crcPiece - 1, crcPiece, 2*crcPiece + 5, len(data) - 1} {
		bad := bytes.Clone(good)
		bad[len(bad)-len(data)+at] ^= 0x10
		if _, err := streamOver(bad).Recv(); !errors.Is(err, ErrChecksum) {
			t.Fatalf("bit flipped at payload byte %d: got %v, want %v", at, err, ErrChecksum)
		}
	}
}

// SendSummed frames carry the caller's checksum: with the payload's own,
// small (coalesced) and large (direct) frames decode as Send's do; with a
// wrong one the receiver refuses the frame.
func TestSendSummed(t *testing.T) {
	for _, n := range []int{1, 100, inlineBulk + 1} {
		data := make([]byte, n)
		for i := range data {
			data[i] = byte(i * 3)
		}
		for _, sum := range []uint32{Checksum(data), Checksum(data) ^ 1} {
			rec := &recorder{}
			st := testStream(t, rec)
			if err := st.SendSummed(&Write{Seq: 9, Length: uint32(n), Data: data}, sum); err != nil {
				t.Fatal(err)
			}
			mustFlush(t, st)
			m, err := streamOver(rec.all()).Recv()
			if sum != Checksum(data) {
				if !errors.Is(err, ErrChecksum) {
					t.Fatalf("%d bytes with a wrong sum: got %v, want %v", n, err, ErrChecksum)
				}
				continue
			}
			if err != nil {
				t.Fatalf("%d bytes: %v", n, err)
			}
			if w := m.(*Write); w.Seq != 9 || !bytes.Equal(w.Data, data) {
				t.Fatalf("%d bytes: payload differs after the round trip", n)
			}
		}
	}
}

// The hot path allocates nothing per frame on either side.
func TestNoAllocationsPerFrame(t *testing.T) {
	data := make([]byte, 4096)
	w := &Write{Length: 4096, Data: data}
	ack := &Ack{Seq: 1, Type: AckDone}
	send := testStream(t, struct {
		io.Reader
		io.Writer
	}{bytes.NewReader(nil), io.Discard})
	if a := testing.AllocsPerRun(200, func() {
		if err := send.Send(w); err != nil {
			t.Fatal(err)
		}
		if err := send.Send(ack); err != nil {
			t.Fatal(err)
		}
		if err := send.Flush(); err != nil {
			t.Fatal(err)
		}
	}); a != 0 {
		t.Errorf("Send: %v allocations per Write+Ack", a)
	}

	const runs = 200
	var frames []Message
	for i := 0; i < runs+1; i++ {
		frames = append(frames, w, ack)
	}
	recv := streamOver(framesOf(t, frames...))
	if a := testing.AllocsPerRun(runs, func() {
		for range 2 {
			if _, err := recv.Recv(); err != nil {
				t.Fatal(err)
			}
		}
	}); a != 0 {
		t.Errorf("Recv: %v allocations per Write+Ack", a)
	}
}

// FuzzStreamRecv: a Stream reading arbitrary bytes never panics, never
// allocates past the kind's limit, and returns every well-formed frame
// before the first error.
func FuzzStreamRecv(f *testing.F) {
	f.Add(framesOf(f, sampleMessages()...))
	f.Add(framesOf(f, &Write{Seq: 1, Length: 3, Data: []byte("abc")}, &Ack{Seq: 1, Type: AckDone}))
	f.Add([]byte("URBD\x01\x20\x00\x00\x00\x00\x00\x00\xff\xff\xff\xff\x00\x00\x00\x00"))
	f.Add(framesOf(f, &Read{Seq: 1, Length: 3}, &ReadReply{Seq: 1, Data: []byte("abc")}, &ReadReply{Seq: 2, Err: CodeIO}, &ReadReply{Seq: 3, Zero: true}))
	f.Add([]byte("URBD\x01\x25\x00\x00\x00\x00\x00\x00\xff\xff\xff\xff\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		st := streamOver(b)
		for i := 0; ; i++ {
			m, err := st.Recv()
			if err != nil {
				if m != nil {
					t.Fatalf("message %v with error %v", m, err)
				}
				break
			}
			if i > len(b)/HeaderLen {
				t.Fatalf("%d frames from %d bytes", i, len(b))
			}
		}
		if cap(st.rbuf) > 2*len(b)+minPayloadBuf {
			t.Fatalf("buffer of %d bytes for %d input bytes", cap(st.rbuf), len(b))
		}
	})
}
