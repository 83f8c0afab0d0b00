// Package bulkread reads large payloads past a read-ahead buffer.
//
// A bufio.Reader reads straight into the caller's slice only when the slice
// is at least as large as its buffer and the buffer is empty; io.ReadFull
// over it therefore copies the tail of every large payload through the
// buffer, one extra copy of the data. ReadFull takes what the buffer holds
// and reads the rest from the reader below it.
package bulkread

import (
	"bufio"
	"io"
)

// ReadFull reads exactly len(p) bytes: first those br has buffered, then
// straight from src, the reader br reads from. The caller must not have
// read from src other than through br (so br's buffered bytes come first),
// and must read only through this function or br afterwards. Errors are
// io.ReadFull's.
func ReadFull(br *bufio.Reader, src io.Reader, p []byte) (int, error) {
	return ReadFullEach(br, src, p, len(p), nil)
}

// ReadFullEach is ReadFull in reads of at most piece bytes. If each is not
// nil it is called with the bytes of every read as soon as they are in p,
// in order, so that a caller can checksum a payload while its bytes are
// still in the CPU's cache. The pieces passed to each cover p[:n] exactly.
func ReadFullEach(br *bufio.Reader, src io.Reader, p []byte, piece int, each func([]byte)) (int, error) {
	piece = max(piece, 1)
	n := 0
	for n < len(p) && br.Buffered() > 0 {
		// From the buffer only: no read from src.
		k, _ := br.Read(p[n:min(len(p), n+piece, n+br.Buffered())])
		if each != nil {
			each(p[n : n+k])
		}
		n += k
	}
	for n < len(p) {
		k, err := src.Read(p[n:min(len(p), n+piece)])
		if each != nil && k > 0 {
			each(p[n : n+k])
		}
		n += k
		if err != nil && n < len(p) {
			if err == io.EOF && n > 0 {
				err = io.ErrUnexpectedEOF
			}
			return n, err
		}
	}
	return n, nil
}
