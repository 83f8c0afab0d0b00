package replica

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/urbd/urbd/bitmap"
	"github.com/urbd/urbd/internal/units"
	"github.com/urbd/urbd/nbd"
	"github.com/urbd/urbd/resync"
	"github.com/urbd/urbd/status"
)

// Config describes one replicated resource on this node.
type Config struct {
	Name       string
	Disk       nbd.Backend   // the local disk
	Store      *bitmap.Store // metadata, bitmap and activity log in --meta; New sets its SyncData to flush both disks
	Protocol   byte          // 'A', 'B' or 'C' (0: 'C'); SetProtocol changes it
	ListenPeer string        // HOST:PORT this node accepts its peer on ("" = do not listen)
	Peer       string        // HOST:PORT of the peer
	Secret     []byte        // shared secret; nil = no authentication
	TLS        *tls.Config   // nil = plain TCP
	Timeout    time.Duration // peer loss is declared after this long without an answer; SetTimeout changes it
	// KoCount is DRBD's ko-count: a peer that leaves a write, flush or read
	// unanswered for KoCount times the session's timeout, while answering
	// pings (its disk hung, say), is dropped as lost, so that the
	// application's I/O is not held for as long as the peer's disk hangs.
	// 0 never drops it. SetKoCount changes it.
	KoCount int
	// DiskTimeout is DRBD's disk-timeout: a Primary whose disk leaves an
	// application request unanswered this long detaches it, when the peer
	// holds the data, and serves the request from the peer (see
	// timedLocal); a Secondary whose disk leaves a request of its Primary
	// unanswered this long leaves the Primary (checkHungDisk). 0 waits for
	// the disk however long. SetDiskTimeout changes it.
	DiskTimeout time.Duration
	// TCPCongestion is the congestion control asked for on the peer
	// connection ("" = the kernel's default); see congestion.go. The caller
	// checks it with CheckCongestion. SetLink changes it (Link.Congestion).
	TCPCongestion string
	// SuspendOnPeerLoss holds writes while the peer is away instead of going
	// on alone (--on-peer-loss suspend).
	SuspendOnPeerLoss bool
	// Fencing is the fencing policy (FenceDontCare by default); SetFencing
	// changes it. With any other policy FencePeer runs the fence-peer
	// handler: it returns the handler's exit code (see the FenceExit
	// constants), or an error when it could not run or was killed.
	Fencing   Fencing
	FencePeer func(ctx context.Context) (exitCode int, err error)
	// OnIOError is what a Primary does when its disk fails a write or a
	// flush (IODetach by default; see detach); SetOnIOError changes it.
	OnIOError OnIOError
	// AfterSB is the automatic split-brain recovery policy (DRBD's
	// after-sb-0pri and after-sb-1pri); the zero value leaves every split
	// brain to the operator. The peer must have the same. SetAfterSB
	// changes it.
	AfterSB AfterSplitBrain
	// ReadBalancing is DRBD's read-balancing: which disk serves a
	// Primary's reads (ReadPreferLocal by default; see balance.go).
	// SetReadBalancing changes it.
	ReadBalancing ReadBalancing
	// Congestion is DRBD's on-congestion with congestion-fill and
	// congestion-extents: what a Primary replicating with protocol A does
	// when the link cannot keep up (CongestionBlock by default; see
	// pullahead.go). SetCongestion changes it.
	Congestion Congestion
	// AutoPromote is DRBD 9's auto-promote: a Secondary promotes itself
	// when an NBD client attaches, if it may (AttachClient), and demotes
	// itself when the last one leaves. SetAutoPromote changes it.
	AutoPromote bool
	ResyncRate  int64 // bytes/s; 0 = unlimited
	// ResyncChecksums makes every resync to a disk that holds data compare
	// SHA-256 checksums before it copies (DRBD's csums-alg sha256): on
	// either node, it applies to the resyncs between them.
	// SetResyncChecksums changes it.
	ResyncChecksums bool
	Logger          *slog.Logger
	Clock           resync.Clock // nil = real time
	// Event, if set, is called (from its own goroutine) on
	// initial-split-brain, split-brain, peer-lost, peer-back,
	// resync-started, resync-done, promoted, demoted, local-io-error.
	Event func(event string, extra map[string]string)
	// Observe, if set, is called after each application request with its
	// kind ("read", "write", "flush", "trim", "zero"), size and duration;
	// peer is true for the peer's share of a replicated write. It is also
	// called with "flush_ahead" after each sync started ahead of a likely
	// flush (see flushAhead).
	Observe func(kind string, peer bool, bytes int, d time.Duration)
}

// Node is one replicated resource on this host: it serves the NBD export
// (nbd.Backend) and talks to the peer. Its methods are safe for concurrent use.
type Node struct {
	cfg    Config
	log    *slog.Logger
	clock  resync.Clock
	disk   atomic.Pointer[diskRef]      // see backend; AttachDisk replaces it
	meta   atomic.Pointer[bitmap.Store] // see store; Resize replaces it
	rl     *rangeLock
	rate   *resync.Limiter
	nodeID uint64

	// promoteMu serializes Promote (operators, auto-promote's clients).
	promoteMu    sync.Mutex
	mu           sync.Mutex
	st           State      // guarded by mu
	asking       *promotion // guarded by mu: the question to the peer of a Promote waiting for its answer
	autoPromoted bool       // guarded by mu: Primary by auto-promote, not by the operator
	holders      int        // guarded by mu: NBD clients attached (AttachClient), not yet released
	uuids        UUIDs      // guarded by mu; persisted in the store's Meta
	wantConn     bool       // guarded by mu: false in StandAlone (disconnect, split brain)
	discard      bool       // guarded by mu: --discard-my-data for the next connection
	crashedPri   bool       // guarded by mu: stopped uncleanly while Primary
	recovered    bool       // guarded by mu: the bitmap holds activity-log extents recovered after a crash
	partial      bool       // guarded by mu: the daemon started on a disk saved Diskless (flagPartial), not resynced since
	readErrEvent time.Time  // guarded by mu: when a read error last ran the local-io-error handler
	fence        fenceState // guarded by mu: whether the peer was fenced since it was lost
	resumed      bool       // guarded by mu: urbd resume-io released held writes until the peer is back
	resizing     bool       // guarded by mu: Resize runs here, or the peer's commit is being applied
	attaching    bool       // guarded by mu: AttachDisk's copy runs
	// detached, guarded by mu, describes the disk DetachDisk took out of a
	// Secondary whose data was consistent, for ReattachDisk; nil otherwise.
	detached *detachRecord
	// markDiskless is set while a Primary whose disk DetachDisk took out
	// is Diskless and no disk is being attached: each write is marked in
	// the bitmap (it reaches the peer only), so that ReattachDisk copies
	// those chunks back. Written with growMu held alone.
	markDiskless atomic.Bool
	// growMu is held shared by every write from its BeginWrite until it
	// is done locally (see writeOp); Resize holds it alone while it
	// replaces the store.
	growMu sync.RWMutex
	// attachWrites is set while AttachDisk copies the peer's data to a new
	// disk: writes on the Diskless node go to that disk too. Written with
	// growMu held alone, read by writes that hold it shared.
	attachWrites atomic.Bool
	// attachFailed is set when the disk being attached fails a write.
	attachFailed atomic.Bool
	// bgWG counts the background work that runs on a session and ends with
	// it (AttachDisk's copy, an online verify), which Close waits for.
	bgWG sync.WaitGroup
	// suspendOnLoss is on-peer-loss suspend (Config.SuspendOnPeerLoss, then
	// SetOnPeerLoss); written with mu held, read without it on the write path.
	suspendOnLoss atomic.Bool
	// proto is the replication protocol, 'A', 'B' or 'C' (Config.Protocol,
	// then SetProtocol); written with mu held, read without it on the write
	// path.
	proto atomic.Uint32
	// peerTimeout is the peer timeout in nanoseconds (Config.Timeout, then
	// SetTimeout); written with mu held, read without it. A session keeps
	// the timeout it was made with (protocol.Session.Timeout).
	peerTimeout atomic.Int64
	// koCount is Config.KoCount, then SetKoCount; read by the keepalive.
	koCount atomic.Int64
	// diskTimeout is Config.DiskTimeout in nanoseconds, then
	// SetDiskTimeout; read on the I/O path (timedLocal, session.begin).
	diskTimeout atomic.Int64
	hungWarned  rateGate // the warning that a hung disk is waited for (timedLocal, checkHungDisk)
	// verifyCkptEvery is verifyCheckpointEvery in nanoseconds (tests
	// shorten it).
	verifyCkptEvery atomic.Int64
	// onIOError is the on-io-error policy (Config.OnIOError, then
	// SetOnIOError); written with mu held, read without it on the I/O path.
	onIOError atomic.Uint32
	// readBalancing is the read-balancing policy (Config.ReadBalancing,
	// then SetReadBalancing); written with mu held, read without it on the
	// read path. readTurn counts round-robin's reads.
	readBalancing atomic.Uint32
	readTurn      atomic.Uint64
	// congestion is Config.Congestion, then SetCongestion; written with
	// mu held, read without it on the write path. pulledAhead is set, with
	// mu held, while the node is Ahead: writes are not replicated.
	congestion  atomic.Pointer[Congestion]
	pulledAhead atomic.Bool
	// autoPromote is Config.AutoPromote, then SetAutoPromote; autoWait is
	// autoPromoteWait in nanoseconds.
	autoPromote atomic.Bool
	autoWait    atomic.Int64
	// aheadDrained is when an Ahead node found its writes all answered
	// (drainedAheadLocked); guarded by mu.
	aheadDrained time.Time
	afterSB      AfterSplitBrain // guarded by mu: Config.AfterSB, then SetAfterSB
	// csums is Config.ResyncChecksums, then SetResyncChecksums.
	csums atomic.Bool
	// fencing is the fencing policy (Config.Fencing, then SetFencing);
	// written with mu held, read without it on the write path.
	fencing atomic.Uint32
	link    Link       // guarded by mu: Config's ListenPeer, Peer, Secret and TLS, then SetLink
	linkMu  sync.Mutex // serializes SetLink
	// running is set once Run listens (guarded by linkMu); relisten hands
	// Run's listenLoop the listener of a new address (nil: none), until
	// runDone is closed.
	running  bool
	relisten chan relisten
	runDone  chan struct{}
	// stateSent, if set (tests only), runs in negotiate between sending the
	// local state and deciding, where a concurrent change may land.
	stateSent func()
	// sessionClosing, if set (tests only), runs in session.close between
	// marking the session closed and sessionEnded, the window in which the
	// state still shows the session.
	sessionClosing func()
	sess           *session
	// lastSess, guarded by mu, is the last session adopted: its goroutines
	// may outlive it by as long as a disk request of it hangs (see busy).
	lastSess    *session
	hasSession  atomic.Bool   // sess != nil, read without mu (WantSums)
	changed     chan struct{} // closed and replaced on every state change
	progress    *resync.Progress
	verify      *status.Sync
	verifyLeft  *VerifyRange         // what is left of the last verify that stopped early, or nil
	lastVerify  *status.VerifyResult // what the last verify found, or nil
	kick        chan struct{}        // wakes the dialer
	syncKick    chan struct{}        // wakes the resync check
	peerID      uint64               // guarded by mu: the peer's node id, once known
	peerUUIDs   UUIDs                // guarded by mu: the peer's UUIDs at the last state
	lastConnErr [2]string            // guarded by mu: the last connection failure, dialed and accepted (see noteConnError)
	syncWhy     string               // guarded by mu: the reason the next resync of a connected Primary shows, if not the default
	ahead       *flushAhead
	diskless    atomic.Bool // n.st.Disk == Diskless, read without n.mu (see detach)
	userPause   atomic.Bool // this node's operator paused resyncs (see pause.go)

	stats     counters
	diskStall stallWatch // the local disk's requests, for the status (localBlocked)
}

// counters are the status file's ns/nr/dw/dr/lo/pe/ua/ap, in bytes or requests.
type counters struct {
	netSend, netRecv, diskWrite, diskRead atomic.Uint64 // bytes
	localPending, peerPending, appPending atomic.Int64
	peerReads                             atomic.Int64  // application reads sent to the peer by read-balancing, unanswered
	readsForPeer                          atomic.Uint64 // the peer's Reads this node answered (answerRead)
	localDone                             atomic.Uint64 // requests to the local disk completed (diskEnd)
	localAbandoned                        atomic.Int64  // of localPending, requests timedLocal gave up on that have not returned
}

// New opens the resource described by cfg. It does not connect; call Run.
func New(cfg Config) (*Node, error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 6 * time.Second
	}
	if cfg.Protocol == 0 {
		cfg.Protocol = 'C'
	}
	if err := checkProtocol(cfg.Protocol); err != nil {
		return nil, err
	}
	if err := CheckCongestionLimits(cfg.Congestion); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Clock == nil {
		cfg.Clock = resync.RealClock()
	}
	m := cfg.Store.Meta()
	n := &Node{
		cfg:      cfg,
		log:      cfg.Logger,
		clock:    cfg.Clock,
		rl:       newRangeLock(),
		rate:     resync.NewLimiter(cfg.Clock, cfg.ResyncRate),
		nodeID:   m.NodeID,
		wantConn: true,
		changed:  make(chan struct{}),
		kick:     make(chan struct{}, 1),
		relisten: make(chan relisten),
		runDone:  make(chan struct{}),
		link:     Link{ListenPeer: cfg.ListenPeer, Peer: cfg.Peer, Secret: cfg.Secret, TLS: cfg.TLS, Congestion: cfg.TCPCongestion},
		syncKick: make(chan struct{}, 1),
		ahead:    newFlushAhead(),
	}
	n.uuids = uuidsFromMeta(m)
	n.meta.Store(cfg.Store)
	n.disk.Store(&diskRef{Backend: cfg.Disk})
	n.suspendOnLoss.Store(cfg.SuspendOnPeerLoss)
	n.proto.Store(uint32(cfg.Protocol))
	n.peerTimeout.Store(int64(cfg.Timeout))
	n.koCount.Store(int64(max(cfg.KoCount, 0)))
	n.diskTimeout.Store(int64(max(cfg.DiskTimeout, 0)))
	n.verifyCkptEvery.Store(int64(verifyCheckpointEvery))
	n.onIOError.Store(uint32(cfg.OnIOError))
	n.readBalancing.Store(uint32(cfg.ReadBalancing))
	cong := cfg.Congestion
	n.congestion.Store(&cong)
	n.autoPromote.Store(cfg.AutoPromote)
	n.autoWait.Store(int64(autoPromoteWait))
	n.afterSB = cfg.AfterSB
	n.csums.Store(cfg.ResyncChecksums)
	n.fencing.Store(uint32(cfg.Fencing))
	n.st = State{
		Name:     cfg.Name,
		Role:     Secondary,
		PeerRole: RoleUnknown,
		Conn:     WFConnection,
		Disk:     ParseDiskState(m.Disk),
		PeerDisk: DUnknown,
	}
	if m.Flags&flagPrimary != 0 {
		if m.Flags&flagClean != 0 {
			n.st.Role = Primary // a clean stop keeps the role
		} else {
			n.crashedPri = true // crashed while Primary: come back Secondary
		}
	}
	n.partial = m.Flags&flagPartial != 0
	n.loadVerifyNote()
	if n.partialLocked() {
		n.log.Info("the disk was detached, or being filled by attach-disk, when the daemon stopped: its full resync compares checksums first, and copies only the blocks that differ")
	}
	if from := cfg.Store.Recovery().GrownFrom; from > 0 {
		n.st.Reason = fmt.Sprintf("disk grew from %s to %s: the new part is out of sync until the peer, grown too, resyncs it",
			units.FormatSize(from), units.FormatSize(m.Size))
		n.log.Warn(n.st.Reason)
	}
	alExtents, corrupt := cfg.Store.Recovered()
	if corrupt {
		n.log.Warn("metadata was torn or corrupt: treating the whole disk as out of sync")
	} else if alExtents > 0 {
		n.recovered = true
		n.log.Warn("unclean shutdown: activity-log extents marked out of sync; they will be resynced by checksum", "extents", alExtents)
	}
	// From here on the metadata says "running": a crash leaves the clean flag off.
	if err := n.saveMetaLocked(); err != nil {
		return nil, err
	}
	// Extents leave the activity log only once both disks flushed.
	cfg.Store.SetSyncData(n.syncData)
	return n, nil
}

// Meta flags kept by the replica in bitmap.Meta.Flags.
const (
	flagPrimary = 1 << 0 // the role at the last save was Primary
	flagClean   = 1 << 1 // the daemon stopped cleanly after that save
	// flagPartial: the disk, saved as Inconsistent with no generation, was
	// Diskless at that save (detached, or being filled by attach-disk's
	// copy), or the daemon started on such a disk and has not resynced it
	// since: it probably holds much of the data. Only an optimisation rests
	// on it (byChecksum), never which blocks count as equal, so a stale flag
	// is harmless.
	flagPartial = 1 << 2
)

// InitialUUIDs sets up a freshly created resource. With assumeClean the disk
// is declared UpToDate with a current UUID derived from the resource name and
// size, so that two freshly created identical disks (both set up with
// assumeClean) need no initial sync.
func InitialUUIDs(store *bitmap.Store, name string, assumeClean bool) error {
	m := store.Meta()
	if !assumeClean {
		return nil
	}
	h := fnv.New64a()
	fmt.Fprintf(h, "urbd-assume-clean:%s:%d", name, m.Size)
	m.UUIDs.Current = h.Sum64() | 1
	m.Disk = UpToDate.String()
	return store.SaveMeta(m)
}

func uuidsFromMeta(m bitmap.Meta) UUIDs {
	return UUIDs{Current: m.UUIDs.Current, Bitmap: m.UUIDs.Bitmap, History: m.UUIDs.History}
}

// saveMetaLocked makes the role, disk state and UUIDs durable. n.mu must be
// held (or the node not yet shared).
func (n *Node) saveMetaLocked() error {
	return n.writeMetaLocked(false)
}

// writeMetaLocked saves the metadata; clean marks a clean stop, after which
// the role is restored on the next start. n.mu must be held.
func (n *Node) writeMetaLocked(clean bool) error {
	m := n.store().Meta()
	m.UUIDs.Current, m.UUIDs.Bitmap, m.UUIDs.History = n.uuids.Current, n.uuids.Bitmap, n.uuids.History
	m.Disk = n.st.Disk.String()
	if n.st.Disk == Diskless {
		// A detached disk holds no known generation: the next start
		// (as Secondary) fully resyncs it from the peer (Decide, rules
		// 4 and 6), and it is never a resync source.
		m.Disk = Inconsistent.String()
		m.UUIDs.Current, m.UUIDs.Bitmap, m.UUIDs.History = 0, 0, [2]uint64{}
	}
	m.Flags &^= flagPrimary | flagClean | flagPartial
	if n.partialLocked() {
		m.Flags |= flagPartial
	}
	if (n.st.Role == Primary && n.st.Disk != Diskless) || (n.crashedPri && !clean) {
		m.Flags |= flagPrimary
	}
	if clean {
		m.Flags |= flagClean
	}
	if err := n.store().SaveMeta(m); err != nil {
		return fmt.Errorf("replica: %s: saving metadata: %w", n.cfg.Name, err)
	}
	return nil
}

// partialLocked reports whether the disk names no data generation but
// probably holds much of the data (flagPartial, Side.partial): it is
// Diskless, or the daemon started on such a disk and has not made it
// consistent since. n.mu must be held (or the node not yet shared).
func (n *Node) partialLocked() bool {
	return n.st.Disk == Diskless || (n.partial && !n.st.Disk.consistent())
}

// Changed returns a channel closed at the next state change.
func (n *Node) Changed() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.changed
}

// notifyLocked wakes everyone waiting for a state change. n.mu must be held.
func (n *Node) notifyLocked() {
	close(n.changed)
	n.changed = make(chan struct{})
}

// setStateLocked applies a transition, logs it with its reason and wakes
// waiters. n.mu must be held.
func (n *Node) setStateLocked(reason string, f func(s *State)) {
	old := n.st
	f(&n.st)
	n.st.Reason = old.Reason
	if old != n.st {
		n.st.Reason = reason
		n.log.Info("state change", "cs", n.st.Conn.String(), "ro", n.st.Role.String()+"/"+n.st.PeerRole.String(),
			"ds", n.st.Disk.String()+"/"+n.st.PeerDisk.String(), "reason", reason)
		n.notifyLocked()
	}
}

// setReasonLocked records why the node is in its state when nothing else
// changed (the status file's reason line) and wakes waiters. n.mu must be
// held.
func (n *Node) setReasonLocked(reason string) {
	if n.st.Reason != reason {
		n.st.Reason = reason
		n.notifyLocked()
	}
}

func (n *Node) event(name string, extra map[string]string) {
	if n.cfg.Event != nil {
		go n.cfg.Event(name, extra)
	}
}

// State returns a copy of the current state.
func (n *Node) State() State {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.st
}

// Promote makes this node Primary (`urbd primary [--force]`). With a
// connected peer, the peer agrees first (askPeerToPromote: of two nodes
// promoted at once, one becomes Primary). Without a peer session and with
// fencing configured, the fence-peer handler runs first
// (fenceBeforePromote). Promotions on one node run one at a time.
func (n *Node) Promote(force bool) error { return n.promote(force, false) }

// promote is Promote, by the operator or, with auto, by auto-promote for
// an NBD client (AttachClient).
func (n *Node) promote(force, auto bool) error {
	n.promoteMu.Lock()
	defer n.promoteMu.Unlock()
	if err := n.fenceBeforePromote(force); err != nil {
		return err
	}
	asked, err := n.askPeerToPromote(force)
	if err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	defer n.endPromotionLocked(asked)
	if err := n.st.CanPromote(force); err != nil {
		return fmt.Errorf("%s: %w", n.cfg.Name, err)
	}
	if n.st.Role == Primary {
		if !auto {
			n.autoPromoted = false // the operator's now: no auto-demote
		}
		return nil
	}
	if !n.st.Conn.Connected() || n.uuids.Current == 0 {
		// A new data generation starts here: without a peer, or on a disk
		// that never had one (the first --force decides whose data wins).
		n.uuids = n.uuids.NewCurrent(randomID())
	}
	reason := "promoted by operator"
	if auto {
		reason = "promoted automatically: an NBD client attached (auto-promote)"
	}
	if force && n.st.Disk != UpToDate {
		reason = "promoted by operator with --force: local data wins"
		n.st.Disk = UpToDate
	}
	n.asking = nil // the state sent below answers the peer
	n.setStateLocked(reason, func(s *State) { s.Role = Primary })
	n.autoPromoted = auto
	n.crashedPri = false
	if err := n.saveMetaLocked(); err != nil {
		return err
	}
	if s := n.sess; s != nil {
		if n.st.Conn.Connected() && n.st.PeerDisk != UpToDate {
			// The data generation changed under a live session (a forced
			// promotion of a new resource): reconnect so the UUIDs decide
			// the resync afresh. close takes n.mu, so not from here.
			go s.close(errors.New("promoted with --force: reconnecting to resync the peer"))
		} else {
			s.sendState(n.localSideLocked())
		}
	}
	n.event("promoted", map[string]string{"URBD_ROLE": "Primary"})
	n.kickSync()
	return nil
}

// Demote makes this node Secondary (`urbd secondary [--force]`). The caller
// disconnects the NBD clients first when force is set.
func (n *Node) Demote(force bool) error {
	n.mu.Lock()
	err := n.st.CanDemote(force, n.holders)
	n.mu.Unlock()
	if err != nil {
		return fmt.Errorf("%s: %w", n.cfg.Name, err)
	}
	if n.isDiskless() {
		return n.demoteDiskless()
	}
	return n.demote(false)
}

// demote flushes and makes this node Secondary: for the operator (Demote),
// or with auto for auto-promote once the last NBD client left, if none
// attached meanwhile and nobody promoted it since.
func (n *Node) demote(auto bool) error {
	if err := n.backend().Flush(context.Background()); err != nil {
		return fmt.Errorf("replica: %s: flush before demotion: %w", n.cfg.Name, err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.st.Role == Secondary || auto && !n.autoDemotableLocked() {
		return nil
	}
	reason := "demoted by operator"
	if auto {
		reason = "demoted automatically: the last NBD client left (auto-promote)"
	}
	n.autoPromoted = false
	n.setStateLocked(reason, func(s *State) { s.Role = Secondary })
	if err := n.saveMetaLocked(); err != nil {
		return err
	}
	if s := n.sess; s != nil {
		s.sendState(n.localSideLocked())
	}
	n.event("demoted", map[string]string{"URBD_ROLE": "Secondary"})
	return nil
}

// Connect leaves StandAlone and starts connecting to the peer again. With
// discard, this node's changes since the split are thrown away: it becomes
// SyncTarget for the union of both bitmaps.
func (n *Node) Connect(discard bool) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.st.Disk == Diskless && n.st.Role != Primary {
		return fmt.Errorf("%s: %w (Diskless): its disk was detached; replace or repair it, then run urbd attach-disk", n.cfg.Name, ErrNotUpToDate)
	}
	if n.attaching && n.st.Role == Secondary {
		// attachSecondary connects once the new disk is in place.
		return fmt.Errorf("%s: %w: it connects once the disk is in place", n.cfg.Name, ErrAttaching)
	}
	if discard {
		if err := n.st.CanDiscard(); err != nil {
			return fmt.Errorf("%s: %w", n.cfg.Name, err)
		}
	}
	n.discard = discard
	n.wantConn = true
	n.lastConnErr = [2]string{} // the operator asked: say again why it fails
	if n.st.Conn == StandAlone {
		n.setStateLocked("connect requested by operator", func(s *State) { s.Conn = WFConnection; s.SplitBrain = false })
	}
	n.kickConnect()
	return nil
}

// Disconnect drops the peer session and stays StandAlone until Connect.
//
// Like DRBD, a clean disconnect between a Primary and an UpToDate Secondary
// leaves the Secondary's disk Outdated (persisted): it no longer receives
// the Primary's writes, so promoting it needs --force until a reconnect
// brings it up to date. A Primary that disconnects tells the peer and waits,
// at most the peer timeout, for it to confirm; a Secondary that disconnects
// from a Primary outdates itself.
func (n *Node) Disconnect(force bool) error {
	n.mu.Lock()
	if err := n.disconnectRefusalLocked(force); err != nil {
		n.mu.Unlock()
		return err
	}
	s := n.sess
	// A Diskless Primary never outdates the peer: the peer holds the only copy.
	outdatePeer := s != nil && n.st.Role == Primary && n.st.Conn.Connected() && n.st.PeerDisk == UpToDate && n.st.Disk != Diskless
	n.mu.Unlock()
	if outdatePeer {
		n.outdatePeer(s)
	}
	n.outdateBeforeLeaving("disconnected from the Primary by the operator")
	n.mu.Lock()
	n.wantConn = false
	s = n.sess
	n.setStateLocked("disconnect requested by operator", func(st *State) { st.Conn = StandAlone })
	n.mu.Unlock()
	if s != nil {
		s.goodbye("the peer disconnected (urbd disconnect)")
		s.close(errors.New("disconnected by operator"))
		<-s.finished
	}
	return nil
}

// outdateBeforeLeaving is for a Secondary that leaves its Primary on
// purpose (disconnect, down): it marks its disk Outdated, as DRBD does,
// since the Primary goes on writing without it, and tells the Primary,
// waiting (at most the peer timeout, barrier) until the Primary has read
// it: the Primary then knows the peer cannot be promoted, and its fencing
// has nothing to do. A Diskless Primary writes nothing without this node,
// whose disk holds its only data: that disk stays UpToDate, so that the
// two connect again when this node is back (Decide refuses an Outdated
// peer to a Diskless node).
func (n *Node) outdateBeforeLeaving(reason string) {
	n.mu.Lock()
	s := n.sess
	leaving := s != nil && n.st.Role == Secondary && n.st.Conn.Connected() && n.st.PeerRole == Primary && n.st.Disk == UpToDate &&
		!n.st.servesDisklessPrimary()
	if leaving {
		if err := n.outdateLocked(reason); err != nil {
			n.log.Error("outdating the disk failed", "err", err)
			leaving = false
		} else {
			s.sendState(n.localSideLocked())
		}
	}
	n.mu.Unlock()
	if leaving && !s.barrier(s.ps.Timeout()) {
		n.log.Warn("the Primary did not confirm that this node left Outdated: it may fence this node")
	}
}

// outdatePeer asks the peer to mark its disk Outdated and waits until its
// state says so, the session ends, or the peer timeout passes.
func (n *Node) outdatePeer(s *session) {
	n.mu.Lock()
	side := n.localSideLocked()
	n.mu.Unlock()
	s.sendState(side, flagOutdate)
	deadline := time.After(s.ps.Timeout())
	for {
		n.mu.Lock()
		done := n.st.PeerDisk == Outdated || n.sess != s || !n.st.Conn.Connected()
		changed := n.changed
		n.mu.Unlock()
		if done {
			return
		}
		select {
		case <-changed:
		case <-s.ctx.Done():
			return
		case <-deadline:
			n.log.Warn("the peer did not confirm that its disk is Outdated")
			return
		}
	}
}

// outdateLocked marks this node's disk Outdated and persists it. n.mu must
// be held.
func (n *Node) outdateLocked(reason string) error {
	n.setStateLocked(reason, func(st *State) { st.Disk = Outdated })
	return n.saveMetaLocked()
}

// endSession stops reconnecting and ends the live session, if any, telling
// the peer (goodbye), and waits until its goroutines have returned. It is
// the node stopping: a Secondary connected to a Primary leaves Outdated
// (outdateBeforeLeaving).
func (n *Node) endSession(why, goodbye string) {
	n.outdateBeforeLeaving("stopped while the Primary goes on")
	n.mu.Lock()
	n.wantConn = false
	s := n.sess
	n.mu.Unlock()
	if s != nil {
		s.goodbye(goodbye)
		s.close(errors.New(why))
		<-s.finished
	}
}

// Close stops the node after the daemon stopped serving: it drops the peer
// session, persists the bitmap and marks the metadata clean.
func (n *Node) Close() error {
	n.endSession("shutting down", peerStopping)
	n.bgWG.Wait() // the session's end stops an attach's copy and a verify
	var err error
	if !n.isDiskless() {
		err = n.backend().Flush(context.Background())
		// No peer is left to flush, and syncData would wait for n.mu,
		// held below: the store's last sync is this disk's alone.
		n.store().SetSyncData(func() error { return n.backend().Flush(context.Background()) })
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	// A failed flush is not a clean stop: the next start treats it as a crash.
	if serr := n.writeMetaLocked(err == nil); err == nil {
		err = serr
	}
	if cerr := n.store().Close(); err == nil {
		err = cerr
	}
	return err
}

// peerStopping is the goodbye of a node whose daemon stops.
const peerStopping = "the peer is shutting down (urbd down, or its daemon was stopped)"

func randomID() uint64 {
	for {
		if v := rand.Uint64(); v != 0 {
			return v
		}
	}
}

func (n *Node) kickConnect() {
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// disconnectRefusalLocked is why Disconnect may not run without force, or
// nil: a connected Diskless Primary reaches its data only over this
// connection, from either end (DRBD refuses such a disconnect too). n.mu is
// held.
func (n *Node) disconnectRefusalLocked(force bool) error {
	if force || !n.st.Conn.Connected() {
		return nil
	}
	switch {
	case n.st.Role == Primary && n.st.Disk == Diskless:
		return fmt.Errorf("%s: %w: this node is Diskless and all of its I/O goes to the peer over this connection; give it a disk first (urbd attach-disk), or stop its application and demote it, or disconnect --force (its I/O then fails)", n.cfg.Name, ErrNoDataAccess)
	case n.st.servesDisklessPrimary():
		return fmt.Errorf("%s: %w: the peer is Diskless and all of its I/O comes here over this connection; %s, or disconnect --force (its I/O then fails)", n.cfg.Name, ErrNoDataAccess, disklessPeerAdvice)
	}
	return nil
}
