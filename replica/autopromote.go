package replica

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Auto-promote is DRBD 9's auto-promote for NBD clients: a Secondary
// promotes itself when a client attaches, as a DRBD Secondary does when its
// device is opened for writing, if it may (its disk UpToDate, the peer not
// Primary and agreeing, as for `urbd primary` without --force), and
// demotes itself when the last client has left, unless the operator
// promoted it (or again) meanwhile. A client the promotion is refused to
// is refused with the reason, after up to autoPromoteWait if the peer is
// Primary. `urbd attach` keeps its client attached
// until `urbd detach`, so with it the node stays Primary as long as
// /dev/nbdN is set up, not while it is open.

// SetAutoPromote switches auto-promote (`urbd adjust --auto-promote`). It
// applies to the next client that attaches, and to the auto-demotion after
// the last one leaves: a node that was promoted automatically stays
// Primary when it is switched off.
func (n *Node) SetAutoPromote(on bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.autoPromote.Load() == on {
		return
	}
	n.autoPromote.Store(on)
	n.log.Info("auto-promote changed", "auto_promote", on)
}

// CheckServe is the NBD export's gate for a client asking about the export
// (NBD_OPT_INFO, and before AttachClient): nil when a client may attach,
// which for a Secondary with auto-promote means that it may be promoted,
// or that its peer is Primary (AttachClient waits for it to demote).
func (n *Node) CheckServe() error {
	st := n.State()
	if st.Role == Primary || !n.autoPromote.Load() {
		return st.CanServe()
	}
	if err := st.CanPromote(false); err != nil && !errors.Is(err, ErrPeerPrimary) {
		return n.autoRefused(err)
	}
	return nil
}

// autoRefused says why a Secondary with auto-promote refuses a client.
func (n *Node) autoRefused(err error) error { return &autoRefusal{name: n.cfg.Name, err: err} }

// autoRefusal is a client's refusal by a Secondary that auto-promote could
// not promote: it is ErrIsSecondary and the promotion's error.
type autoRefusal struct {
	name string
	err  error
}

func (e *autoRefusal) Error() string {
	why := strings.TrimPrefix(strings.TrimPrefix(e.err.Error(), e.name+": "), "replica: ")
	return fmt.Sprintf("%v: %s; auto-promote cannot promote it: %s", ErrIsSecondary, e.name, why)
}

func (e *autoRefusal) Unwrap() []error { return []error{ErrIsSecondary, e.err} }

// autoPromoteWait is how long a client waits for auto-promote while the
// peer is Primary or being promoted (DRBD's auto-promote-timeout, 2 s): in a
// switchover the peer demotes itself as its last client leaves, and the
// client attaching here may come first. Node.autoWait holds it (tests
// shorten it).
const autoPromoteWait = 2 * time.Second

// AttachClient is the export's gate for a client that selects it: a
// Primary takes it; a Secondary with auto-promote promotes itself first,
// waiting up to autoPromoteWait for a Primary peer to demote. release is
// called once the client has left.
func (n *Node) AttachClient() (release func(), err error) {
	deadline := time.Now().Add(time.Duration(n.autoWait.Load()))
	for {
		n.mu.Lock()
		if n.st.Role == Primary {
			n.holders++
			n.mu.Unlock()
			return n.releaseClient, nil
		}
		changed := n.changed
		n.mu.Unlock()
		if !n.autoPromote.Load() {
			return nil, n.State().CanServe()
		}
		err := n.promote(false, true)
		if err == nil {
			// Primary now, unless the last client's auto-demotion, which
			// could not see this one yet, came in between: look again.
			continue
		}
		wait := time.Until(deadline)
		if wait <= 0 || !errors.Is(err, ErrPeerPrimary) && !errors.Is(err, ErrPeerPromoting) {
			return nil, n.autoRefused(err)
		}
		timer := time.NewTimer(wait)
		select {
		case <-changed: // the peer's state, or this node's, changed
		case <-timer.C:
		}
		timer.Stop()
	}
}

// releaseClient ends an AttachClient; after the last client, a node that
// auto-promote promoted demotes itself.
func (n *Node) releaseClient() {
	n.mu.Lock()
	n.holders--
	demote := n.autoDemotableLocked()
	n.mu.Unlock()
	if !demote {
		return
	}
	if err := n.demote(true); err != nil {
		n.log.Warn("auto-promote: demotion after the last NBD client left failed", "err", err)
	}
}

// autoDemotableLocked reports whether auto-promote demotes this node now:
// it promoted the node, no client is attached, and the disk is attached (a
// Diskless Primary that demotes leaves its peer: the operator decides
// that). n.mu is held.
func (n *Node) autoDemotableLocked() bool {
	return n.holders == 0 && n.autoPromoted && n.autoPromote.Load() && n.st.Role == Primary && n.st.Disk != Diskless
}

// ParseAutoPromote parses an auto-promote setting: yes or no ("" is no).
func ParseAutoPromote(s string) (bool, error) {
	switch strings.ToLower(s) {
	case "yes":
		return true, nil
	case "", "no":
		return false, nil
	}
	return false, fmt.Errorf("auto-promote %q: use yes or no", s)
}
