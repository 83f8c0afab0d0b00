package replica

import (
	"context"
	"errors"
	"fmt"
	"time"
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
	if OnIOError(n.onIOError.Load()) == IOPassOn {
		return false
	}
	n.mu.Lock()
	if n.st.Disk == Diskless {
		n.mu.Unlock()
		return true
	}
	s := n.sess
	if n.st.Role != Primary || n.st.Conn != Connected || n.st.PeerDisk != UpToDate || s == nil {
		n.mu.Unlock()
		return false
	}
	reason := fmt.Sprintf("local disk error %s: %v", what, cause)
	if length > 0 {
		reason = fmt.Sprintf("local disk error %s %d bytes at %d: %v", what, length, off, cause)
	}
	was := n.st.Disk
	n.st.Disk = Diskless
	if err := n.saveMetaLocked(); err != nil {
		n.st.Disk = was
		n.mu.Unlock()
		n.log.Error("cannot detach the failed disk: saving the metadata failed", "err", err, "cause", reason)
		return false
	}
	n.st.Disk = was
	reason += "; disk detached, all I/O goes to the peer (replace or repair the disk, then run urbd attach-disk)"
	n.diskless.Store(true)
	n.store().SetSyncData(nil) // the activity log no longer waits for this disk
	n.setStateLocked(reason, func(st *State) { st.Disk = Diskless })
	s.sendState(n.localSideLocked())
	n.mu.Unlock()
	n.log.Error(reason)
	n.event("local-io-error", map[string]string{"URBD_REASON": reason})
	return true
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
		s.ps.Control().Flush() // the Secondary role above, before the hang-up
		s.goodbye("the peer was demoted without a disk (Diskless)")
		s.close(errors.New("demoted while Diskless"))
		<-s.finished
	}
	n.event("demoted", map[string]string{"URBD_ROLE": "Secondary"})
	return err
}
