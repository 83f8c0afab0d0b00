package bitmap

import (
	"fmt"
	"slices"
	"sync/atomic"
)

// BeginWrite makes every extent touching [off, off+length) hot — present in
// the activity log on disk — and holds it there until the matching EndWrite.
// The caller issues the data write only after BeginWrite returned nil.
//
// When every extent is already hot this is a few atomic operations and no
// lock (the fast path). Otherwise the call waits for a metadata round: one AL
// write that adds the extents of every waiting call that fits (concurrent
// callers share it), first persisting the bitmap if an evicted extent has
// bits not yet on disk. When the log is full of extents with writes in
// flight, the call waits for an EndWrite. A zero length is a no-op.
//
// Errors: ErrRange (range outside the disk), ErrTooLarge (more extents than
// ALExtents), ErrClosed, or the metadata write error. On error nothing is
// held and EndWrite must not be called.
func (s *Store) BeginWrite(off, length int64) error {
	if length == 0 {
		return nil
	}
	if off < 0 || length < 0 || off >= s.size || length > s.size-off {
		return fmt.Errorf("%w: write [%d, +%d) on a disk of %d bytes", ErrRange, off, length, s.size)
	}
	first, last := off>>s.extShift, (off+length-1)>>s.extShift
	if s.tryPinRange(first, last, false) {
		return nil
	}
	if last-first+1 > int64(s.capacity) {
		return fmt.Errorf("%w: write [%d, +%d) spans %d extents, the log holds %d",
			ErrTooLarge, off, length, last-first+1, s.capacity)
	}
	return s.beginSlow(first, last)
}

// EndWrite releases what BeginWrite(off, length) took. Call it after the write
// completed locally and the peer confirmed it or MarkOutOfSync recorded that
// it did not. Never blocks on I/O.
func (s *Store) EndWrite(off, length int64) {
	if length <= 0 || off < 0 || off >= s.size || length > s.size-off {
		return
	}
	first, last := off>>s.extShift, (off+length-1)>>s.extShift
	ep := s.epoch.Load()
	for e := first; e <= last; e++ {
		// Before the unpin: an eviction that sees the extent idle also
		// sees that this write ended in epoch ep.
		raise(&s.ended[e], ep)
		s.unpin(e, false)
	}
}

// raise sets *p to v if v is larger.
func raise(p *atomic.Uint64, v uint64) {
	for {
		old := p.Load()
		if old >= v || p.CompareAndSwap(old, v) {
			return
		}
	}
}

// tryPin takes one in-flight reference on extent e if it is hot.
func (s *Store) tryPin(e int64) bool {
	p := &s.st[e]
	for {
		v := p.Load()
		if v&stHot == 0 || v&stInflight == stInflight {
			return false
		}
		if p.CompareAndSwap(v, (v+1)|stRef|stTouched) {
			if v&stInflight == 0 {
				s.inUse.Add(1)
			}
			return true
		}
	}
}

// tryPinRange pins every extent of [first, last], or none. locked tells
// whether the caller holds s.mu.
func (s *Store) tryPinRange(first, last int64, locked bool) bool {
	for e := first; e <= last; e++ {
		if !s.tryPin(e) {
			for x := first; x < e; x++ {
				s.unpin(x, locked)
			}
			return false
		}
	}
	return true
}

// unpin releases one in-flight reference on extent e. When the extent goes
// idle while BeginWrite calls wait, it wakes them: an idle extent may be the
// eviction victim they need. locked tells whether the caller holds s.mu.
func (s *Store) unpin(e int64, locked bool) {
	p := &s.st[e]
	for {
		v := p.Load()
		if v&stInflight == 0 {
			return // unbalanced EndWrite; nothing to release
		}
		// Touched again: a write that ended after a Sweep keeps its
		// extent until the next one (see Sweep).
		if p.CompareAndSwap(v, (v-1)|stTouched) {
			if v&stInflight == 1 {
				s.inUse.Add(-1)
			}
			if v&stInflight == 1 && s.waiters.Load() > 0 {
				if !locked {
					s.mu.Lock()
					defer s.mu.Unlock()
				}
				s.cv.Broadcast()
			}
			return
		}
	}
}

func (s *Store) beginSlow(first, last int64) error {
	// waiters goes up before any check, so an EndWrite that makes an extent
	// idle after our check sees it and wakes us.
	s.waiters.Add(1)
	defer s.waiters.Add(-1)
	s.mu.Lock()
	defer s.mu.Unlock()
	r := &request{first: first, last: last}
	registered := false
	defer func() {
		if r.granted {
			for e := first; e <= last; e++ {
				if s.want[uint64(e)]--; s.want[uint64(e)] == 0 {
					delete(s.want, uint64(e))
				}
			}
		}
		if registered {
			if i := slices.Index(s.queue, r); i >= 0 {
				s.queue = slices.Delete(s.queue, i, i+1)
			}
			// The queue head or the protected extents changed: let the
			// others plan again.
			s.cv.Broadcast()
		}
	}()
	for {
		if s.closed {
			return fmt.Errorf("%w: write to extents %d..%d", ErrClosed, first, last)
		}
		if s.tryPinRange(first, last, true) {
			return nil
		}
		if r.err != nil {
			return r.err
		}
		if !registered {
			s.queue = append(s.queue, r)
			registered = true
		}
		if !s.busy && s.roundLocked() {
			continue
		}
		if s.needSync && !s.syncing {
			s.syncForEvictionLocked()
			continue
		}
		s.cv.Wait()
	}
}

// syncForEvictionLocked runs the data sync a round needs before it can
// evict idle extents (rule 3): without the store, so that writes to hot
// extents and the sync's own use of the store (a replica marking what its
// peer failed to flush) go on meanwhile. A failed sync fails every waiting
// call that has no room yet. s.mu held, released during the sync.
func (s *Store) syncForEvictionLocked() {
	s.syncing, s.needSync = true, false
	s.mu.Unlock()
	err := s.syncCovering(s.syncDataFn())
	s.mu.Lock()
	s.syncing = false
	s.cv.Broadcast()
	if err != nil {
		for _, r := range s.queue {
			if !r.granted {
				r.err = err
			}
		}
	}
}

// syncCovering runs sync (nil: nothing to run) as a new epoch; on success
// every write that ended before it began may leave the log. Called without
// s.mu.
func (s *Store) syncCovering(sync func() error) error {
	ep := s.epoch.Add(1)
	if err := s.syncDataIO(sync); err != nil {
		return err
	}
	raise(&s.covered, ep)
	return nil
}

// pickVictimLocked claims one member extent for eviction with the clock
// algorithm: idle (no write in flight), not granted to a waiting BeginWrite,
// not in skip, and not referenced since the hand last passed (the hand clears
// the reference bit: a second chance). Its last write must have ended before
// a data sync that succeeded began; an extent that is otherwise a victim sets
// needSync. It clears the extent's hot bit by CAS, so no write can pin it any
// more: a write that ended since the check would have pinned it, setting the
// reference bit, and failed the CAS. s.mu held, s.busy set by the caller.
func (s *Store) pickVictimLocked(skip map[uint64]bool) (uint64, bool) {
	n := len(s.members)
	uncovered := -1 // where the hand found the first one waiting for a sync
	for step := 0; step < 2*n+1 && n > 0; step++ {
		if s.hand >= n {
			s.hand = 0
		}
		at := s.hand
		e := s.members[at]
		s.hand++
		if skip[e] || s.want[e] > 0 {
			continue
		}
		p := &s.st[e]
		v := p.Load()
		if v&stInflight != 0 || v&stHot == 0 {
			continue
		}
		if v&stRef != 0 {
			p.CompareAndSwap(v, v&^stRef) // a racing pin just keeps it referenced
			continue
		}
		if s.ended[e].Load() >= s.covered.Load() {
			s.needSync = true // not durable everywhere yet
			if uncovered < 0 {
				uncovered = at
			}
			continue
		}
		if p.CompareAndSwap(v, 0) {
			return e, true
		}
	}
	if uncovered >= 0 {
		s.hand = uncovered // after the sync, the clock goes on from there
	}
	return 0, false
}

// roundLocked runs one metadata round for the queued BeginWrite calls: it
// adds the missing extents of the waiting calls, in FIFO order while they fit,
// evicting idle extents as needed; persists the bitmap first if an evicted
// extent has bits not yet on disk; then writes the AL. s.mu is held on entry
// and exit but released during I/O. It returns false, having done nothing,
// when the first waiting call cannot fit: every slot has a write in flight,
// or the idle ones wait for a data sync (needSync).
func (s *Store) roundLocked() bool {
	s.needSync = false
	inAdd := make(map[uint64]bool)
	victims := make(map[uint64]bool)
	skip := make(map[uint64]bool) // victims, and extents of the calls served so far
	var add, victimList []uint64
	var included []*request
	free := s.capacity - len(s.members)
	for _, r := range s.queue {
		var missing []uint64
		for e := r.first; e <= r.last; e++ {
			ue := uint64(e)
			skip[ue] = true // never evict an extent of the call being served
			// A victim picked for an earlier call counts as missing: it is
			// added back in the same write.
			if _, ok := s.memberIdx[ue]; (!ok || victims[ue]) && !inAdd[ue] {
				missing = append(missing, ue)
			}
		}
		for len(missing) > free {
			v, ok := s.pickVictimLocked(skip)
			if !ok {
				break
			}
			victims[v] = true
			skip[v] = true
			victimList = append(victimList, v)
			free++
		}
		if len(missing) > free {
			break // FIFO: later calls wait behind this one
		}
		for _, e := range missing {
			inAdd[e] = true
		}
		add = append(add, missing...)
		free -= len(missing)
		included = append(included, r)
		if !r.granted {
			// Its extents are kept in the log until it pinned them.
			r.granted = true
			for e := r.first; e <= r.last; e++ {
				s.want[uint64(e)]++
			}
		}
	}
	// Victims picked for a call that did not fit are surplus: give them back.
	for free > 0 && len(victimList) > 0 {
		v := victimList[len(victimList)-1]
		victimList = victimList[:len(victimList)-1]
		delete(victims, v)
		delete(skip, v)
		s.st[v].Store(stHot) // not hot meanwhile, so nobody else changed it
		free--
	}
	if len(add) == 0 {
		for _, v := range victimList {
			s.st[v].Store(stHot)
		}
		return false
	}

	newMembers := make([]uint64, 0, len(s.members)-len(victimList)+len(add))
	for _, e := range s.members {
		if !victims[e] {
			newMembers = append(newMembers, e)
		}
	}
	newMembers = append(newMembers, add...)
	// The hot bit is cleared before the bits are read (pickVictim), so a
	// concurrent MarkOutOfSync either sees the extent not hot or has already
	// set its bits here.
	var snap []uint64
	var chunks []int
	for _, v := range victimList {
		if s.extentUnpersistedLocked(int64(v)) {
			snap = make([]uint64, len(s.disk))
			s.bm.snapshotInto(snap)
			chunks = s.changedChunksLocked(snap)
			break
		}
	}
	s.busy = true
	s.mu.Unlock()
	var bmErr, alErr error
	var written int
	wroteChunks := snap != nil
	if wroteChunks {
		written, bmErr = s.writeChunks(snap, chunks)
	}
	if bmErr == nil {
		alErr = s.writeAL(alState{seq: s.alSeq + 1, extents: newMembers})
	}
	s.mu.Lock()
	s.busy = false
	defer s.cv.Broadcast()
	if wroteChunks {
		s.applyChunksLocked(snap, chunks, written, bmErr)
	}
	switch {
	case bmErr != nil:
		// The AL was not written: the victims are still in it.
		for _, v := range victimList {
			s.st[v].Store(stHot)
		}
		for _, r := range included {
			r.err = bmErr
		}
	case alErr != nil:
		// The AL on disk is the old or the new one. Only extents in both
		// count as hot: the victims' bits are on disk, the added extents
		// may not be in the log.
		s.alSeq++
		s.setMembersLocked(newMembers[:len(newMembers)-len(add)])
		for _, r := range included {
			r.err = alErr
		}
	default:
		s.alSeq++
		s.setMembersLocked(newMembers)
		for _, e := range add {
			s.st[e].Store(stFresh)
		}
	}
	return true
}

func (s *Store) setMembersLocked(m []uint64) {
	s.members = m
	clear(s.memberIdx)
	for i, e := range m {
		s.memberIdx[e] = i
	}
	if s.hand >= len(m) {
		s.hand = 0
	}
}

// acquireLocked waits until no metadata round runs and claims the runner
// role; s.mu held. It fails once the store is closed.
func (s *Store) acquireLocked() error {
	for s.busy {
		s.cv.Wait()
	}
	if s.closed {
		return ErrClosed
	}
	s.busy = true
	return nil
}

func (s *Store) releaseLocked() {
	s.busy = false
	s.cv.Broadcast()
}

// sweepable reports whether a Sweep starting now may drop an extent: one in
// the log is idle and untouched (whether a BeginWrite waits for it does not
// count: that may change before the Sweep looks). Only Sweep clears the
// touched bit and an extent joins the log touched, so an extent that is not
// sweepable now cannot be dropped by that Sweep, and every write of one it
// drops ended before this call.
func (s *Store) sweepable() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.members {
		v := s.st[e].Load()
		if v&stHot != 0 && v&(stTouched|stInflight) == 0 {
			return true
		}
	}
	return false
}

// syncDataIO runs sync (Options.SyncData), before an activity-log write
// that drops extents. Called without s.mu.
func (s *Store) syncDataIO(sync func() error) error {
	if sync == nil {
		return nil
	}
	if err := sync(); err != nil {
		return fmt.Errorf("bitmap: making the data durable before extents leave the activity log: %w", err)
	}
	return nil
}

// syncDataLocked is syncDataIO for a runner holding s.mu: it releases s.mu
// during the I/O.
func (s *Store) syncDataLocked() error {
	s.mu.Unlock()
	defer s.mu.Lock()
	return s.syncDataIO(s.syncDataFn())
}

// PersistBitmap writes the in-memory bitmap now (resync start, disconnect,
// checkpoint) and returns when it is durable. It serialises with activity-log
// writes.
func (s *Store) PersistBitmap() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.acquireLocked(); err != nil {
		return err
	}
	defer s.releaseLocked()
	return s.persistBitmapLocked()
}

// persistBitmapLocked writes the bitmap, releasing s.mu during the I/O. The
// caller holds s.mu and the runner role.
func (s *Store) persistBitmapLocked() error {
	s.outside.Store(false) // before the snapshot: a later mark sets it again
	snap := make([]uint64, len(s.disk))
	s.bm.snapshotInto(snap)
	chunks := s.changedChunksLocked(snap)
	s.mu.Unlock()
	n, err := s.writeChunks(snap, chunks)
	s.mu.Lock()
	s.applyChunksLocked(snap, chunks, n, err)
	if err != nil {
		s.outside.Store(true)
	}
	return err
}

// Sweep drops from the activity log, with one AL write, every extent that is
// idle (no write in flight, no BeginWrite served and waiting for it) and
// untouched (no write began or ended in it) since the previous Sweep
// (DRBD-like lazy clearing; call it periodically). Extents whose blocks are
// all in sync go at no extra cost; for extents with out-of-sync bits (the peer
// failed or is gone), the bitmap chunks holding bits not yet on disk are
// written first, so after a crash only those blocks, not whole extents, are
// dirty. Marks made outside the log (see MarkOutOfSync) are persisted too. It
// writes nothing when nothing changed.
//
// When an extent can go, Options.SyncData runs first (rule 3), before the
// sweep takes the store: every write of such an extent ended before the
// previous Sweep, so the sync covers it, and writes needing new extents do not
// wait for it. The sync also lets an eviction take the extents it covers.
func (s *Store) Sweep() error {
	if s.sweepable() {
		if err := s.syncCovering(s.syncDataFn()); err != nil {
			return err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.acquireLocked(); err != nil {
		return err
	}
	defer s.releaseLocked()
	needBM := s.outside.Load()
	var keep, victims []uint64
	for _, e := range s.members {
		p := &s.st[e]
		dropped := false
		for {
			v := p.Load()
			if v&stTouched != 0 {
				if !p.CompareAndSwap(v, v&^stTouched) {
					continue
				}
				break
			}
			if v&stInflight != 0 || v&stHot == 0 || s.want[e] > 0 {
				break
			}
			if !p.CompareAndSwap(v, 0) {
				continue
			}
			// Not hot any more; now read the bits (see MarkOutOfSync).
			if s.extentUnpersistedLocked(int64(e)) {
				needBM = true
			}
			dropped = true
			break
		}
		if dropped {
			victims = append(victims, e)
		} else {
			keep = append(keep, e)
		}
	}
	if needBM {
		// Releases s.mu during the I/O; the victims are not hot, so no
		// write can start in them meanwhile.
		if err := s.persistBitmapLocked(); err != nil {
			for _, e := range victims {
				s.st[e].Store(stHot) // still in the log on disk
			}
			return err
		}
	}
	if len(victims) == 0 {
		return nil
	}
	seq := s.alSeq + 1
	s.mu.Unlock()
	err := s.writeAL(alState{seq: seq, extents: keep})
	s.mu.Lock()
	s.alSeq = seq
	// On failure the dropped extents may or may not be in the log: their
	// bits are on disk, so treating them as gone is safe either way.
	s.setMembersLocked(keep)
	return err
}

// Close shuts down cleanly: it persists the bitmap, then writes an empty
// activity log marked clean, so the next Open marks nothing beyond the
// bitmap. Writes still in flight keep their extents in the log (not clean).
// Afterwards BeginWrite, PersistBitmap and Sweep fail with ErrClosed; EndWrite
// and the in-memory methods keep working. Closing twice returns nil.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.acquireLocked(); err != nil {
		return nil // already closed
	}
	defer s.releaseLocked()
	s.closed = true
	var keep []uint64
	for _, e := range s.members {
		p := &s.st[e]
		for {
			v := p.Load()
			if p.CompareAndSwap(v, v&stInflight) {
				if v&stInflight != 0 {
					keep = append(keep, e)
				}
				break
			}
		}
	}
	if err := s.syncDataLocked(); err != nil {
		return err // the log on disk keeps its extents: the next Open marks them
	}
	if err := s.persistBitmapLocked(); err != nil {
		return err
	}
	seq := s.alSeq + 1
	s.mu.Unlock()
	err := s.writeAL(alState{seq: seq, clean: len(keep) == 0, extents: keep})
	s.mu.Lock()
	s.alSeq = seq
	if err == nil {
		s.setMembersLocked(keep)
	}
	return err
}
