package replica

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/urbd/urbd/nbd"
)

// OnIOError is DRBD's on-io-error for the Primary's own disk: what a write
// or flush that the disk fails does.
type OnIOError uint8

const (
	// IODetach takes the disk out of service when the peer holds the data
	// (Diskless): the application sees no error (see detach).
	IODetach OnIOError = iota
	// IOPassOn keeps the disk and passes the error to the application
	// (EIO); the range is marked out of sync, so the next resync rewrites
	// it from the peer.
	IOPassOn
)

var onIOErrorNames = [...]string{"detach", "pass_on"}

func (p OnIOError) String() string { return policyName(onIOErrorNames[:], uint8(p)) }

// ParseOnIOError parses an on-io-error policy name (OnIOError.String; DRBD
// 9's spelling pass-on is accepted too); "" is the default, detach.
func ParseOnIOError(s string) (OnIOError, error) {
	if s == "pass-on" {
		s = "pass_on"
	}
	v, err := parsePolicy("on-io-error", onIOErrorNames[:], s)
	return OnIOError(v), err
}

// errNoDisk is the error of an I/O request on a Diskless node that its peer
// cannot serve (no session, or the peer failed it): the node has no copy of
// the data. The NBD client sees EIO.
var errNoDisk = errors.New("replica: the local disk is detached (Diskless) and the peer cannot serve the request")

// isDiskless reports whether the node detached its disk. It is read on every
// I/O request, so it is an atomic mirror of n.st.Disk == Diskless.
func (n *Node) isDiskless() bool { return n.diskless.Load() }

// detach takes the Primary's disk out of service after it failed a write or
// a flush, as DRBD's on-io-error detach does (unless the policy is
// IOPassOn), when the peer holds everything the application wrote: the node
// is Primary, connected with no resync or verify running, and the peer's
// disk is UpToDate. It reports whether the node is (now) Diskless; if not,
// the caller returns the disk's error as before.
//
// From then on every read, write and flush goes to the peer only (see
// writeOp, flushBoth and ReadAt), so the application sees no error while the
// peer serves. The metadata is saved first, and the node detaches only if
// that worked: it then says Inconsistent, with no data generation, and no
// longer Primary, so a restarted daemon (the disk repaired or replaced) comes
// back Secondary and gets a full resync, and never offers the detached
// disk's stale data as a resync source. The peer is told and shows the node
// as Diskless; the local-io-error handler runs.
func (n *Node) detach(what string, off, length int64, cause error) bool {
	if n.isDiskless() {
		return true // detached already (by another request, or disk-timeout)
	}
	if OnIOError(n.onIOError.Load()) == IOPassOn {
		return false
	}
	reason := fmt.Sprintf("local disk error %s: %v", what, cause)
	if length > 0 {
		reason = fmt.Sprintf("local disk error %s %d bytes at %d: %v", what, length, off, cause)
	}
	err := n.detachFor(reason)
	if err != nil && !errors.Is(err, ErrNotConnected) {
		n.log.Error("cannot detach the failed disk", "err", err, "cause", reason)
	}
	return err == nil
}

// detachFor takes the disk out of service (goDisklessLocked) because of
// what reason says, which it completes with what to do next, logs, and
// hands the local-io-error handler. It returns nil once the node is
// Diskless, or why it is not.
func (n *Node) detachFor(reason string) error {
	reason += "; disk detached, all I/O goes to the peer (replace or repair the disk, then run urbd attach-disk)"
	n.mu.Lock()
	if n.st.Disk == Diskless {
		n.mu.Unlock()
		return nil
	}
	err := n.goDisklessLocked(reason)
	n.mu.Unlock()
	if err != nil {
		return err
	}
	n.log.Error(reason)
	n.event("local-io-error", map[string]string{"URBD_REASON": reason})
	return nil
}

// goDisklessLocked takes a Primary's disk out of service, with reason as
// the node's reason, if the peer holds everything the application wrote:
// the node is Primary, connected with no resync or verify running, and the
// peer's disk is UpToDate (ErrNotConnected otherwise). The metadata is saved
// first, as Inconsistent with no data generation and not Primary, and the
// node goes Diskless only if that worked; the peer is told. n.mu is held.
func (n *Node) goDisklessLocked(reason string) error {
	s := n.sess
	if n.st.Role != Primary || n.st.Conn != Connected || n.st.PeerDisk != UpToDate || s == nil {
		return fmt.Errorf("%s: %w: a Primary detaches its disk only while connected to an UpToDate peer, with no resync or verify running (%s, peer %s)",
			n.cfg.Name, ErrNotConnected, n.st.Conn, n.st.PeerDisk)
	}
	was := n.st.Disk
	n.st.Disk = Diskless
	err := n.saveMetaLocked()
	n.st.Disk = was
	if err != nil {
		return fmt.Errorf("saving the metadata failed: %w", err)
	}
	n.diskless.Store(true)
	n.store().SetSyncData(nil) // the activity log no longer waits for this disk
	n.setStateLocked(reason, func(st *State) { st.Disk = Diskless })
	s.sendState(n.localSideLocked())
	return nil
}

// ErrDiskless refuses DetachDisk on a node that has no disk in service.
var ErrDiskless = errors.New("replica: the disk is detached already")

// ErrNoDataAccess refuses what would leave a Diskless Primary without its
// data (DRBD: "Need access to UpToDate data"): DetachDisk on its Secondary,
// whose disk holds the only copy, and Disconnect without force on either
// node.
var ErrNoDataAccess = errors.New("replica: the Diskless Primary would lose access to its data")

// disklessPeerAdvice is what the refusals of ErrNoDataAccess on the
// Secondary tell the operator to do about its Diskless Primary.
const disklessPeerAdvice = "give it a disk first (urbd attach-disk there), or stop its application and demote it"

// DetachDisk takes a working disk out of service on purpose (`urbd
// detach-disk`, DRBD's detach), so that it can be replaced without stopping
// anything; attach-disk then takes the new one. It returns the disk, which
// the caller closes: the node keeps a stand-in of the same size that fails
// every call (detachedDisk).
//
//   - On a Primary connected to an UpToDate peer it goes Diskless as after
//     a write error (goDisklessLocked): every read, write and flush goes to
//     the peer, and the application sees nothing. With growMu held, no
//     write is in its local part when the disk is swapped, and first the
//     peer flushes, so that a write protocol A or B answered is not left on
//     the detached disk only (peerHasAnswered).
//   - On a Secondary it goes Diskless and StandAlone, as a Diskless
//     Primary that is demoted: its metadata says Inconsistent, so even a
//     daemon restarted on a blank disk is fully resynced, never taken for
//     the old one. The Primary goes on alone. A disk that was UpToDate or
//     Outdated is flushed and remembered (recordDetached), so that
//     ReattachDisk can take the same disk back with a resync of what
//     changed.
//
// It refuses a node whose disk is detached already, a Primary whose peer
// does not hold all of its data, and a Secondary whose peer is a Diskless
// Primary: all of that Primary's I/O goes to this disk.
func (n *Node) DetachDisk() (old nbd.Backend, err error) {
	if n.State().Role == Primary {
		return n.detachPrimary()
	}
	return n.detachSecondary()
}

// detachRefusal is why DetachDisk may not run on a node that is in role
// now, or nil. n.mu is held.
func (n *Node) detachRefusal(role Role) error {
	switch {
	case n.st.Disk == Diskless:
		return fmt.Errorf("%s: %w (Diskless); urbd attach-disk gives it a disk again", n.cfg.Name, ErrDiskless)
	case n.attaching:
		return fmt.Errorf("%s: %w: wait until it is done (urbd status)", n.cfg.Name, ErrAttaching)
	case n.st.Role != role:
		return fmt.Errorf("%s: the role changed to %s meanwhile; run it again", n.cfg.Name, n.st.Role)
	case role == Secondary && n.st.servesDisklessPrimary():
		return fmt.Errorf("%s: %w: this disk holds the only copy and all of its I/O comes here; %s", n.cfg.Name, ErrNoDataAccess, disklessPeerAdvice)
	}
	return nil
}

const detachedByOperator = "disk detached by operator"

func (n *Node) detachPrimary() (nbd.Backend, error) {
	n.growMu.Lock() // no write is in its local part, and new ones wait
	defer n.growMu.Unlock()
	if err := n.peerHasAnswered(); err != nil {
		return nil, err
	}
	n.mu.Lock()
	err := n.detachRefusal(Primary)
	if err == nil {
		err = n.goDisklessLocked(detachedByOperator + "; all I/O goes to the peer (replace the disk, then run urbd attach-disk)")
	}
	uuids := n.uuids
	n.mu.Unlock()
	if err != nil {
		return nil, err
	}
	n.log.Warn(detachedByOperator + ": all I/O goes to the peer")
	old := n.swapDetached()
	n.recordDetached(old, UpToDate, uuids, true)
	return old, nil
}

// peerHasAnswered makes every write answered so far durable on the peer,
// with a flush that follows them on the data stream: protocols A and B
// answer a write before the peer has written it, and the disk about to be
// detached may hold its only copy. Writes are held (growMu) meanwhile, so
// none is answered from this disk alone after it.
func (n *Node) peerHasAnswered() error {
	ctx, cancel := context.WithTimeout(context.Background(), n.timeout())
	defer cancel()
	if s := n.session(); s != nil {
		if r := s.sendFlush(); r != nil && r.wait(ctx, 'C') {
			return nil
		}
	}
	return fmt.Errorf("%s: %w: the peer did not make the writes answered so far durable; the disk stays", n.cfg.Name, ErrNotConnected)
}

func (n *Node) detachSecondary() (nbd.Backend, error) {
	n.mu.Lock()
	if err := n.detachRefusal(Secondary); err != nil {
		n.mu.Unlock()
		return nil, err
	}
	was, uuids := n.st.Disk, n.uuids
	n.st.Disk = Diskless
	err := n.saveMetaLocked()
	n.st.Disk = was
	if err != nil {
		n.mu.Unlock()
		return nil, fmt.Errorf("%s: saving the metadata failed: %w; the disk stays", n.cfg.Name, err)
	}
	reason := detachedByOperator + "; StandAlone until urbd attach-disk gives it a disk (a full resync from the peer, or of what changed with --same-disk)"
	n.wantConn = false
	s := n.sess
	n.diskless.Store(true)
	n.store().SetSyncData(nil)
	n.setStateLocked(reason, func(st *State) {
		st.Disk = Diskless
		st.Conn = StandAlone
	})
	if s != nil {
		s.sendState(n.localSideLocked())
	}
	n.mu.Unlock()
	if s != nil {
		// No replicated write or resync copy is applied after this.
		s.leave("the peer detached its disk (urbd detach-disk)", &localStop{reason: reason})
	}
	n.log.Warn(detachedByOperator + ": StandAlone until a disk is attached")
	n.growMu.Lock()
	defer n.growMu.Unlock()
	old := n.swapDetached()
	n.recordDetached(old, was, uuids, false)
	return old, nil
}

// swapDetached replaces the node's disk by a detachedDisk and returns the
// disk it replaced. growMu is held alone and the node is Diskless.
func (n *Node) swapDetached() nbd.Backend {
	old := n.backend()
	n.disk.Store(&diskRef{Backend: detachedDisk{size: old.Size()}})
	return old
}

// errDetached is the error of every call to a detachedDisk.
var errDetached = errors.New("replica: the disk was detached by the operator")

// detachedDisk stands in for a disk DetachDisk took out of service: it has
// the resource's size and fails every I/O call. A Diskless node uses none.
type detachedDisk struct{ size int64 }

func (d detachedDisk) Size() int64                                      { return d.size }
func (detachedDisk) ReadAt(context.Context, []byte, int64) error        { return errDetached }
func (detachedDisk) WriteAt(context.Context, []byte, int64, bool) error { return errDetached }
func (detachedDisk) Trim(context.Context, int64, int64, bool) error     { return errDetached }
func (detachedDisk) Flush(context.Context) error                        { return errDetached }
func (detachedDisk) WriteZeroes(context.Context, int64, int64, bool, bool) error {
	return errDetached
}

// requestNoun names a writeOp of kind, for timedLocal's reason.
func requestNoun(kind string) string {
	switch kind {
	case "trim":
		return "a trim"
	case "zero":
		return "a zeroing"
	}
	return "a write"
}

// errorVerb names what a writeOp of kind was doing, for detach's reason.
func errorVerb(kind string) string {
	switch kind {
	case "trim":
		return "trimming"
	case "zero":
		return "zeroing"
	}
	return "writing"
}

// writeDiskless finishes a write of kind on a Diskless node: the peer's
// copy is the only one, so the write succeeds once the peer wrote it,
// whatever the protocol. req is nil when no session replicates; the write
// then fails.
func (n *Node) writeDiskless(ctx context.Context, kind string, off, length int64, req *request, start time.Time) error {
	if req == nil {
		n.store().EndWrite(off, length)
		return errNoDisk
	}
	ok := req.wait(ctx, 'C')
	n.observe(kind, true, int(length), start)
	if !ok {
		return errNoDisk
	}
	return nil
}

// demoteDiskless is Demote on a Diskless Primary. A Secondary without a disk
// could apply nothing a new Primary sends, so the node also leaves the peer
// and stays StandAlone (connect refuses) until AttachDisk gives it a working
// disk, or its daemon restarts with one; the peer, which holds the data, can
// then be promoted.
func (n *Node) demoteDiskless() error {
	n.mu.Lock()
	if n.st.Role == Secondary {
		n.mu.Unlock()
		return nil
	}
	n.wantConn = false
	s := n.sess
	n.setStateLocked("demoted by operator; Diskless, so disconnected from the peer (replace or repair the disk, then run urbd attach-disk)", func(st *State) {
		st.Role = Secondary
		st.Conn = StandAlone
	})
	err := n.saveMetaLocked()
	if s != nil {
		s.sendState(n.localSideLocked())
	}
	n.mu.Unlock()
	if s != nil {
		s.leave("the peer was demoted without a disk (Diskless)", errors.New("demoted while Diskless"))
	}
	n.event("demoted", map[string]string{"URBD_ROLE": "Secondary"})
	return err
}
