package replica

// transferLog remembers the writes the peer wrote but has not yet made
// durable (ordering rule 4): they sit in the peer's page cache, and a crash of
// the peer's machine would lose them. On peer loss every range in the log is
// marked out of sync; a peer flush answered for sequence S drops every entry
// sent before S.
//
// The log keeps exact ranges up to maxFine entries; beyond that the oldest
// are folded into whole extents, so memory stays bounded however long the
// application goes without a flush, at the price of a coarser resync after a
// peer crash. Not safe for concurrent use: the session's mu guards it.
type transferLog struct {
	extent int64     // fold granularity in bytes (the activity-log extent)
	fine   []tlEntry // exact ranges, in sequence order
	folded map[int64]uint64
}

type tlEntry struct {
	seq         uint64
	off, length int64
}

const maxFine = 1 << 16

func newTransferLog(extent int64) *transferLog {
	return &transferLog{extent: extent, folded: make(map[int64]uint64)}
}

// add records a write of [off, off+length) answered by the peer.
func (t *transferLog) add(seq uint64, off, length int64) {
	if len(t.fine) >= maxFine {
		half := t.fine[:maxFine/2]
		for _, e := range half {
			for x := e.off / t.extent; x <= (e.off+max(e.length, 1)-1)/t.extent; x++ {
				t.folded[x] = max(t.folded[x], e.seq)
			}
		}
		t.fine = append(t.fine[:0], t.fine[maxFine/2:]...)
	}
	t.fine = append(t.fine, tlEntry{seq: seq, off: off, length: length})
}

// flushed drops every entry sent before the flush with sequence seq: the
// peer made them durable.
func (t *transferLog) flushed(seq uint64) { t.drop(seq, nil) }

// flushFailed drops the same entries as flushed, and returns them (folded
// ones as whole extents): the peer failed that flush, so they must be
// marked out of sync instead.
func (t *transferLog) flushFailed(seq uint64) []tlEntry {
	var gone []tlEntry
	t.drop(seq, func(e tlEntry) { gone = append(gone, e) })
	return gone
}

// drop removes every entry sent before seq, passing each to gone if not nil.
func (t *transferLog) drop(seq uint64, gone func(tlEntry)) {
	keep := t.fine[:0]
	for _, e := range t.fine {
		switch {
		case e.seq > seq:
			keep = append(keep, e)
		case gone != nil:
			gone(e)
		}
	}
	t.fine = keep
	for x, s := range t.folded {
		if s < seq {
			delete(t.folded, x)
			if gone != nil {
				gone(tlEntry{seq: s, off: x * t.extent, length: t.extent})
			}
		}
	}
}

// empty reports whether nothing awaits a peer flush.
func (t *transferLog) empty() bool { return len(t.fine) == 0 && len(t.folded) == 0 }

// ranges returns every range in the log and empties it.
func (t *transferLog) ranges() []tlEntry {
	out := t.fine
	for x := range t.folded {
		out = append(out, tlEntry{off: x * t.extent, length: t.extent})
	}
	t.fine, t.folded = nil, make(map[int64]uint64)
	return out
}
