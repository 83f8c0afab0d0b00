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
	n := 0
	if b := br.Buffered(); b > 0 {
		n, _ = br.Read(p[:min(b, len(p))]) // from the buffer only: no read from src
	}
	if n == len(p) {
		return n, nil
	}
	k, err := io.ReadFull(src, p[n:])
	if err == io.EOF && n > 0 {
		err = io.ErrUnexpectedEOF
	}
	return n + k, err
}
