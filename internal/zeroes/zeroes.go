// Package zeroes tells zeroes from data in buffers: whether a buffer holds
// only zeroes, and where the runs of zeroes in it are, in steps of a given
// size. Resyncs and attach-disk use it to send and write zeroes as ranges,
// and the file backend to leave a thin volume's zeroes unprovisioned.
package zeroes

import "bytes"

// Step is the granularity at which the project looks for zeroes inside
// data: a resync run's, a copied chunk's, or a range a thin volume is
// zeroed in. It is the default chunk of an LVM thin pool, so a step
// holding data provisions no more of a thin volume than writing that data
// does; a shorter run of zeroes travels and is written with the data
// around it, which costs less than a message and a write of its own.
const Step = 64 << 10

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
