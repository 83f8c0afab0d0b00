package protocol

import (
	"bytes"
	"io"
	"net"
	"testing"
)

// yamuxHeader builds a yamux frame header.
func yamuxHeader(typ uint8, length uint32) []byte {
	h := make([]byte, yamuxHeaderLen)
	h[1] = typ
	be.PutUint32(h[4:], 1) // stream id
	be.PutUint32(h[8:], length)
	return h
}

// connRecorder is a net.Conn that records each Write call.
type connRecorder struct {
	net.Conn
	rec recorder
}

func (c *connRecorder) Write(p []byte) (int, error) { return c.rec.Write(p) }

func TestHeaderJoiner(t *testing.T) {
	body := []byte("body bytes")
	tests := []struct {
		name   string
		writes [][]byte
		calls  int // Write calls reaching the transport (net.Buffers falls back to one per buffer)
		held   bool
	}{
		{"data header is held", [][]byte{yamuxHeader(0, 10)}, 0, true},
		{"data header then body", [][]byte{yamuxHeader(0, 10), body}, 2, false},
		{"window update passes", [][]byte{yamuxHeader(1, 0)}, 1, false},
		{"ping passes", [][]byte{yamuxHeader(2, 7)}, 1, false},
		{"empty data header passes", [][]byte{yamuxHeader(0, 0)}, 1, false},
		{"body-sized write passes", [][]byte{body}, 1, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := &connRecorder{}
			j := newHeaderJoiner(c, c)
			j.vectored = true // as on TCP; net.Buffers falls back to one Write per buffer
			for _, w := range tc.writes {
				if n, err := j.Write(w); n != len(w) || err != nil {
					t.Fatalf("Write = %d, %v", n, err)
				}
			}
			if len(c.rec.writes) != tc.calls || j.holding != tc.held {
				t.Fatalf("%d transport writes, holding %v", len(c.rec.writes), j.holding)
			}
			if !tc.held && !bytes.Equal(c.rec.all(), bytes.Join(tc.writes, nil)) {
				t.Fatal("bytes changed or reordered")
			}
		})
	}
}

// Without vectored writes (TLS) a small body is joined into one write, a
// large one goes as two.
func TestHeaderJoinerCopy(t *testing.T) {
	c := &connRecorder{}
	j := newHeaderJoiner(c, c)
	small, large := make([]byte, joinCopyMax), make([]byte, joinCopyMax+1)
	for _, w := range [][]byte{yamuxHeader(0, uint32(len(small))), small, yamuxHeader(0, uint32(len(large))), large} {
		if n, err := j.Write(w); n != len(w) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	if len(c.rec.writes) != 3 || len(c.rec.writes[0]) != yamuxHeaderLen+joinCopyMax {
		t.Fatalf("%d transport writes", len(c.rec.writes))
	}
}

// Over TCP the joined header and body arrive intact and in order.
func TestHeaderJoinerTCP(t *testing.T) {
	d, a := tcpPair(t)
	defer d.Close()
	defer a.Close()
	j := newHeaderJoiner(d, d)
	if !j.vectored {
		t.Fatal("TCP transport not written vectored")
	}
	var want []byte
	for i := 0; i < 100; i++ {
		body := bytes.Repeat([]byte{byte(i)}, 1+i*100)
		for _, w := range [][]byte{yamuxHeader(0, uint32(len(body))), body, yamuxHeader(1, 0)} {
			if _, err := j.Write(w); err != nil {
				t.Fatal(err)
			}
			want = append(want, w...)
		}
	}
	got := make([]byte, len(want))
	if _, err := io.ReadFull(a, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("bytes changed or reordered")
	}
}

// readSizes is a net.Conn reading from r that records the size of each Read.
type readSizes struct {
	net.Conn
	r     io.Reader
	sizes []int
}

func (c *readSizes) Read(p []byte) (int, error) {
	c.sizes = append(c.sizes, len(p))
	return c.r.Read(p)
}

// Small reads gather through the read-ahead; a large read with nothing
// buffered goes straight to the transport, one with bytes buffered takes
// those first. The bytes come out in order either way.
func TestHeaderJoinerRead(t *testing.T) {
	data := make([]byte, 3*readAhead)
	for i := range data {
		data[i] = byte(i * 13)
	}
	c := &readSizes{r: bytes.NewReader(data)}
	j := newHeaderJoiner(c, c)
	var got []byte
	read := func(n, wantTransport int) {
		t.Helper()
		p := make([]byte, n)
		before := len(c.sizes)
		k, err := j.Read(p)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, p[:k]...)
		if len(c.sizes)-before != wantTransport {
			t.Fatalf("Read(%d): %d transport reads, want %d", n, len(c.sizes)-before, wantTransport)
		}
		if wantTransport == 1 && n >= directRead && c.sizes[before] != n {
			t.Fatalf("Read(%d) read %d from the transport, not straight into the caller's slice", n, c.sizes[before])
		}
	}
	read(12, 1)           // fills the read-ahead
	read(directRead, 0)   // large, but served from what is buffered
	read(readAhead, 0)    // the rest of the buffer, a short read
	read(directRead, 1)   // nothing buffered: straight to the transport
	read(directRead-1, 1) // small: refills the read-ahead
	read(4*directRead, 0) // buffered bytes first
	read(readAhead, 0)    // and the rest of them
	for len(got) < len(data) {
		read(min(directRead, len(data)-len(got)), 1)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("bytes changed or reordered")
	}
}
