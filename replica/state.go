package replica

import (
	"errors"
	"fmt"
)

// Role is what a node does with its NBD export: a Primary serves clients, a
// Secondary only applies what its peer replicates.
type Role uint8

const (
	Secondary Role = iota
	Primary
	RoleUnknown // the peer's role while disconnected
)

func (r Role) String() string {
	switch r {
	case Primary:
		return "Primary"
	case Secondary:
		return "Secondary"
	default:
		return "Unknown"
	}
}

// ConnState is the state of the link to the peer, named as in /proc/drbd.
type ConnState uint8

const (
	StandAlone   ConnState = iota // not trying to connect (disconnect, split brain, refused peer)
	WFConnection                  // listening and dialing, no session
	Connected                     // session up, disks in sync
	SyncSource                    // session up, copying to the peer
	SyncTarget                    // session up, receiving a resync
	VerifyS                       // online verify, this node compares
	VerifyT                       // online verify, the peer compares
	Ahead                         // session up, writes not replicated while the link is congested (on-congestion pull-ahead)
	Behind                        // session up, the peer is Ahead: this disk is Outdated until the resync
)

var connNames = [...]string{"StandAlone", "WFConnection", "Connected", "SyncSource", "SyncTarget", "VerifyS", "VerifyT", "Ahead", "Behind"}

func (c ConnState) String() string {
	if int(c) < len(connNames) {
		return connNames[c]
	}
	return fmt.Sprintf("ConnState(%d)", c)
}

// Connected reports whether a peer session is up in this state.
func (c ConnState) Connected() bool { return c >= Connected }

// DiskState says whether a disk holds the newest data.
type DiskState uint8

const (
	DUnknown     DiskState = iota // the peer's disk while disconnected
	Inconsistent                  // partly written by a resync or never initialised
	Outdated                      // consistent, but known to be older than the peer's
	UpToDate
	// Diskless: a Primary detached its disk after the disk failed a write
	// or a flush (as DRBD's on-io-error detach); all its I/O goes to the
	// peer until the daemon restarts. Saved as Inconsistent.
	Diskless
)

var diskNames = [...]string{"DUnknown", "Inconsistent", "Outdated", "UpToDate", "Diskless"}

func (d DiskState) String() string {
	if int(d) < len(diskNames) {
		return diskNames[d]
	}
	return fmt.Sprintf("DiskState(%d)", d)
}

// consistent reports whether the disk holds a consistent data generation
// (UpToDate or Outdated), and so may be a resync source.
func (d DiskState) consistent() bool { return d == UpToDate || d == Outdated }

// ParseDiskState is the inverse of DiskState.String; unknown text gives Inconsistent,
// the safe assumption.
func ParseDiskState(s string) DiskState {
	for i, n := range diskNames {
		if n == s {
			return DiskState(i)
		}
	}
	return Inconsistent
}

// Refusals of operator commands. Each is wrapped with the resource name.
var (
	ErrPeerPrimary    = errors.New("replica: peer is Primary")
	ErrNotUpToDate    = errors.New("replica: local disk is not UpToDate")
	ErrClientsAttach  = errors.New("replica: NBD clients are attached")
	ErrIsSecondary    = errors.New("replica: resource is Secondary")
	ErrSyncing        = errors.New("replica: a resync is running")
	ErrNotConnected   = errors.New("replica: peer is not connected")
	ErrPeerLost       = errors.New("replica: peer connection lost")
	ErrSplitBrain     = errors.New("replica: split brain")
	ErrRefused        = errors.New("replica: peers refuse to connect")
	ErrDiscardPrimary = errors.New("replica: a Primary cannot discard its data")
)

// State is everything the node's decisions depend on. It does no I/O: the
// methods below check and apply transitions, and the Node performs the
// sends, writes and fsyncs that go with them.
type State struct {
	Name       string
	Role       Role
	PeerRole   Role
	Conn       ConnState
	Disk       DiskState
	PeerDisk   DiskState
	SplitBrain bool
	Reason     string // why the last transition happened
}

// servesDisklessPrimary reports whether this node is the connected
// Secondary of a Diskless Primary: its disk holds that Primary's only data,
// and all of the Primary's I/O comes here.
func (s State) servesDisklessPrimary() bool {
	return s.Role == Secondary && s.Conn.Connected() && s.PeerRole == Primary && s.PeerDisk == Diskless
}

// CanPromote checks `urbd primary`: refused while the connected peer is
// Primary (even with force: two primaries would overwrite each other), or
// while the local disk is not UpToDate unless force, or during a resync in
// which this node is the target.
func (s State) CanPromote(force bool) error {
	if s.Role == Primary {
		return nil
	}
	if s.Conn.Connected() && s.PeerRole == Primary {
		return fmt.Errorf("%w: demote the peer first (urbd secondary %s on the other node)", ErrPeerPrimary, s.Name)
	}
	if s.Conn == SyncTarget {
		return fmt.Errorf("%w: this node is SyncTarget; wait for the resync to finish", ErrSyncing)
	}
	if s.Conn == Behind {
		return fmt.Errorf("%w: this node is Behind (its peer pulled ahead on a congested link); wait for the resync to finish, or disconnect first", ErrSyncing)
	}
	if s.Disk == Diskless {
		return fmt.Errorf("%w (Diskless): its disk was detached; replace or repair it, then run urbd attach-disk", ErrNotUpToDate)
	}
	if s.Disk != UpToDate && !force {
		return fmt.Errorf("%w (%s): use urbd primary --force %s if this node's data must win", ErrNotUpToDate, s.Disk, s.Name)
	}
	return nil
}

// CanDemote checks `urbd secondary`: refused while NBD clients are attached,
// unless force (the node then flushes and disconnects them).
func (s State) CanDemote(force bool, clients int) error {
	if s.Role == Secondary {
		return nil
	}
	if clients > 0 && !force {
		return fmt.Errorf("%w (%d): unmount and detach first, or use urbd secondary --force %s", ErrClientsAttach, clients, s.Name)
	}
	return nil
}

// CanServe checks whether NBD clients may attach: only a Primary serves.
func (s State) CanServe() error {
	if s.Role != Primary {
		return fmt.Errorf("%w: %s; promote it with urbd primary %s", ErrIsSecondary, s.Name, s.Name)
	}
	return nil
}

// CanDiscard checks `urbd connect --discard-my-data`: a Primary's data is in use
// and cannot be thrown away.
func (s State) CanDiscard() error {
	if s.Role == Primary {
		return fmt.Errorf("%w: demote it first (urbd secondary %s)", ErrDiscardPrimary, s.Name)
	}
	return nil
}
