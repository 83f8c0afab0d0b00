package daemon

import (
	"fmt"
	"sync"

	"github.com/urbd/urbd/internal/units"
	"github.com/urbd/urbd/nbd"
	"github.com/urbd/urbd/replica"
)

// diskSlot is the resource's disk: the one opened at start, or the one that
// `urbd attach-disk` opened at the same path to replace it after it failed,
// or none after `urbd detach-disk`.
type diskSlot struct {
	path string

	mu  sync.Mutex
	cur *nbd.File // nil once detached
}

// attach opens the disk path again and gives it to the node, whose disk
// must have failed (replica.Node.AttachDisk), or, with same, must be the
// one detach-disk took out (replica.Node.ReattachDisk); the disk it
// replaces is closed. It returns the command's answer.
func (d *diskSlot) attach(node *replica.Node, same bool) (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	f, err := nbd.OpenFile(d.path, false)
	if err != nil {
		return "", fmt.Errorf("opening the new disk: %w", err)
	}
	if want := node.Size(); f.Size() != want {
		f.Close()
		return "", fmt.Errorf("%w: %s is %d bytes, the resource %d: give the new disk exactly %d bytes",
			replica.ErrDiskSize, d.path, f.Size(), want, want)
	}
	if same {
		return d.reattach(node, f)
	}
	// An error the kernel kept for the failed disk's lost writes is not
	// the new disk's (the same device node, a dm table loaded again).
	if err := f.ClearStaleError(); err != nil {
		f.Close()
		return "", fmt.Errorf("the new disk at %s fails: %w", d.path, err)
	}
	old, resync, err := node.AttachDisk(f)
	if old == nil {
		f.Close()
	} else { // the node uses f now, even if it failed afterwards
		d.closeCur()
		d.cur = f
	}
	if err != nil {
		return "", err
	}
	if resync {
		return fmt.Sprintf("attached %s; full resync of %s from the peer, Inconsistent until it is done (watch urbd status)",
			d.path, units.FormatSize(f.Size())), nil
	}
	if node.AttachCompares() {
		return fmt.Sprintf("attached %s; comparing %s with the peer by checksum (csums-alg) and copying the blocks that differ, Diskless until UpToDate (watch urbd status)",
			d.path, units.FormatSize(f.Size())), nil
	}
	return fmt.Sprintf("attached %s; copying %s from the peer, Diskless until UpToDate (watch urbd status)",
		d.path, units.FormatSize(f.Size())), nil
}

// reattach gives the node f, the disk detach-disk took out, opened again
// (replica.Node.ReattachDisk). A write-back error since the detach, which
// the first fdatasync reports, means the disk lost writes: it is refused.
// d.mu is held.
func (d *diskSlot) reattach(node *replica.Node, f *nbd.File) (string, error) {
	if err := f.StaleError(); err != nil {
		f.Close()
		return "", fmt.Errorf("%w: %s lost writes since it was detached (%v); attach it without --same-disk for a full resync",
			replica.ErrNotSameDisk, d.path, err)
	}
	if _, err := node.ReattachDisk(f); err != nil {
		f.Close()
		return "", err
	}
	d.closeCur()
	d.cur = f
	if node.State().Role == replica.Primary {
		return fmt.Sprintf("attached %s again; copying what was written since detach-disk from the peer, Diskless until UpToDate (watch urbd status)", d.path), nil
	}
	return fmt.Sprintf("attached %s again; the peer resyncs what it changed since detach-disk, Outdated until then (watch urbd status)", d.path), nil
}

// detach takes the disk out of service (replica.Node.DetachDisk) and
// closes it, so that it can be replaced (lvremove refuses an open volume).
// It returns the command's answer.
func (d *diskSlot) detach(node *replica.Node) (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, err := node.DetachDisk(); err != nil {
		return "", err
	}
	d.closeCur()
	if node.State().Role == replica.Primary {
		return fmt.Sprintf("detached and closed %s; Diskless: all I/O goes to the peer until urbd attach-disk (a copy of a new disk, or --same-disk: of what is written meanwhile)", d.path), nil
	}
	return fmt.Sprintf("detached and closed %s; Diskless and StandAlone until urbd attach-disk (a full resync of a new disk, or --same-disk: of what changed meanwhile)", d.path), nil
}

// close closes the disk in use, once the node is closed.
func (d *diskSlot) close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closeCur()
}

// closeCur closes the disk in use, if any. d.mu is held.
func (d *diskSlot) closeCur() {
	if d.cur != nil {
		d.cur.Close()
		d.cur = nil
	}
}
