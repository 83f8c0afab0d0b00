// Package zeroes tells zeroes from data in buffers: whether a buffer holds
// only zeroes, and where the runs of zeroes in it are, in steps of a given
// size. Resyncs and attach-disk use it to send and write zeroes as ranges,
// and the file backend to leave a thin volume's zeroes unprovisioned.
package zeroes

import "bytes"

// block is what Is compares against, a piece at a time.
var block = make([]byte, 1<<20)

// Is reports whether p holds only zeroes.
func Is(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), len(block))
		if !bytes.Equal(p[:n], block[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}

// A Piece is a part of a buffer Split cut: Zero says it holds only zeroes.
// Off is relative to the buffer's start.
type Piece struct {
	Off, Length int64
	Zero        bool
}

// Split cuts b into pieces that alternate between data and runs of zeroes
// made of whole steps of step bytes, counted from b's start (a run of
// zeroes that covers no whole step stays in the data around it; the last
// step may be short). Together they cover b in order; a b of zeroes is one
// zero piece, an empty b none.
func Split(b []byte, step int64) []Piece {
	var ps []Piece
	for off := int64(0); off < int64(len(b)); off += step {
		end := min(off+step, int64(len(b)))
		zero := Is(b[off:end])
		if k := len(ps) - 1; k >= 0 && ps[k].Zero == zero {
			ps[k].Length += end - off
			continue
		}
		ps = append(ps, Piece{Off: off, Length: end - off, Zero: zero})
	}
	return ps
}
