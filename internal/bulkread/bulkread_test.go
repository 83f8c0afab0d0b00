package bulkread

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

// primedLen is how many bytes primed reads through the buffer.
const primedLen = 10

// primed returns n bytes of data, a source of them that returns at most
// half of each read, and a 4 KiB bufio.Reader over it that has read the
// first primedLen bytes and so holds the next bytes buffered.
func primed(t *testing.T, n int) ([]byte, io.Reader, *bufio.Reader) {
	t.Helper()
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(i * 7)
	}
	src := iotest.HalfReader(bytes.NewReader(data))
	br := bufio.NewReaderSize(src, 4096)
	if _, err := io.ReadFull(br, make([]byte, primedLen)); err != nil { // fills the buffer
		t.Fatal(err)
	}
	return data, src, br
}

// TestReadFullKeepsOrder: bytes come out in stream order whether they were
// buffered or not, across reads of every size, with a source that returns
// at most half of each read.
func TestReadFullKeepsOrder(t *testing.T) {
	data, src, br := primed(t, 100_000)
	got := bytes.Clone(data[:primedLen])
	head := make([]byte, primedLen)
	for _, n := range []int{1, 5000, 3, 4096, 30000, 17} {
		p := make([]byte, n)
		if k, err := ReadFull(br, src, p); err != nil || k != n {
			t.Fatalf("ReadFull(%d) = %d, %v", n, k, err)
		}
		got = append(got, p...)
		if _, err := io.ReadFull(br, head); err != nil { // small reads through br in between
			t.Fatal(err)
		}
		got = append(got, head...)
	}
	if !bytes.Equal(got, data[:len(got)]) {
		t.Fatal("bytes out of order")
	}
}

// TestReadFullShort: a source that ends early gives io.ErrUnexpectedEOF
// once some bytes were read, io.EOF when none were.
func TestReadFullShort(t *testing.T) {
	src := bytes.NewReader([]byte("abcdef"))
	br := bufio.NewReaderSize(src, 16)
	b := make([]byte, 2)
	if _, err := io.ReadFull(br, b); err != nil {
		t.Fatal(err)
	}
	if k, err := ReadFull(br, src, make([]byte, 10)); k != 4 || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("ReadFull past the end = %d, %v; want 4, ErrUnexpectedEOF", k, err)
	}
	if k, err := ReadFull(br, src, make([]byte, 10)); k != 0 || err != io.EOF {
		t.Fatalf("ReadFull at the end = %d, %v; want 0, EOF", k, err)
	}
}

// TestReadFullEach: each sees every byte once, in order, in pieces no larger
// than asked, both from the buffer and from the source; the result is
// ReadFull's.
func TestReadFullEach(t *testing.T) {
	data, src, br := primed(t, 50_000)
	seen := bytes.Clone(data[:primedLen])
	for _, piece := range []int{1000, 3, 7000, 0} {
		p := make([]byte, 9000)
		var pieces [][]byte
		k, err := ReadFullEach(br, src, p, piece, func(b []byte) { pieces = append(pieces, b) })
		if err != nil || k != len(p) {
			t.Fatalf("ReadFullEach(piece %d) = %d, %v", piece, k, err)
		}
		joined := bytes.Join(pieces, nil)
		if !bytes.Equal(joined, p) {
			t.Fatalf("piece %d: the pieces passed to each are not the bytes read", piece)
		}
		for _, b := range pieces {
			if len(b) > max(piece, 1) || len(b) == 0 {
				t.Fatalf("piece %d: each got %d bytes", piece, len(b))
			}
		}
		seen = append(seen, p...)
	}
	if !bytes.Equal(seen, data[:len(seen)]) {
		t.Fatal("bytes out of order")
	}
	rest := make([]byte, len(data)) // more than is left
	var total int
	k, err := ReadFullEach(br, src, rest, 4096, func(b []byte) { total += len(b) })
	if want := len(data) - len(seen); k != want || total != want || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("past the end = %d (each saw %d), %v; want %d, ErrUnexpectedEOF", k, total, err, want)
	}
}
