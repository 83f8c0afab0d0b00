// Package metrics exports urbd's Prometheus metrics for one or more
// resources and serves them over HTTP for --metrics-listen.
//
// Hot path: the write path records every request. Metrics.Resource resolves
// all label values once and returns a Resource whose IO and ObserveWrite
// methods are an array index plus an atomic add, with no map lookup, no
// lock and no allocation. State gauges (connection, roles, disks) change
// rarely and take a mutex.
//
// Metric names (all carry the label resource):
//
//	urbd_io_bytes_total{kind,side}             counter  bytes by kind and side
//	urbd_io_requests_total{kind,side}          counter  requests by kind and side
//	urbd_write_latency_seconds{side}           histogram local and peer write latency, 10µs..10s
//	urbd_out_of_sync_bytes                     gauge
//	urbd_resync_rate_bytes_per_second          gauge    0 when no resync runs
//	urbd_resync_remaining_bytes                gauge    0 when no resync runs
//	urbd_connection_state{state}               gauge    1 for the current state, 0 for the others
//	urbd_role{role}                            gauge    local role, same scheme
//	urbd_protocol{protocol}                    gauge    replication protocol (A, B, C), same scheme
//	urbd_peer_role{role}                       gauge
//	urbd_disk_state{disk="local"|"peer",state} gauge
//	urbd_writes_suspended                      gauge    0 or 1
//	urbd_split_brain                           gauge    0 or 1
//	urbd_nbd_clients                           gauge
//	urbd_pending_requests{queue}               gauge    the status file's lo, pe, ua, ap: local, peer, unacked, application
//
// kind is one of read, write, flush, trim, zero, flush_ahead (an fdatasync
// started ahead of a likely flush); side is local or peer.
package metrics

import (
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/urbd/urbd/status"
)

// Kind is the kind of an I/O request.
type Kind int

// Request kinds: NBD's commands, and the syncs a node starts ahead of a
// likely flush.
const (
	Read Kind = iota
	Write
	Flush
	Trim
	Zero
	FlushAhead
	numKinds
)

var kindNames = [numKinds]string{"read", "write", "flush", "trim", "zero", "flush_ahead"}

// String is the kind's label value.
func (k Kind) String() string {
	if k < 0 || k >= numKinds {
		return "unknown"
	}
	return kindNames[k]
}

// Side says where an I/O request was served: the local disk or the peer.
type Side int

// Sides.
const (
	Local Side = iota
	Peer
	numSides
)

var sideNames = [numSides]string{"local", "peer"}

// String is the side's label value.
func (s Side) String() string {
	if s < 0 || s >= numSides {
		return "unknown"
	}
	return sideNames[s]
}

// LatencyBuckets are the upper bounds, in seconds, of the write latency
// histograms: 10 µs to 10 s in 1-2.5-5 steps.
var LatencyBuckets = []float64{
	10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6,
	1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3,
	100e-3, 250e-3, 500e-3, 1, 2.5, 5, 10,
}

// Known values of the state gauges; each gets a series from the start, so a
// dashboard sees the 0s as well as the 1.
var (
	ConnStates = []string{"StandAlone", "WFConnection", "Connected", "SyncSource", "SyncTarget", "PausedSyncS", "PausedSyncT", "VerifyS", "VerifyT", "Ahead", "Behind"}
	Roles      = []string{"Primary", "Secondary", "Unknown"}
	DiskStates = []string{"UpToDate", "Inconsistent", "Outdated", "DUnknown", "Diskless"}
	Protocols  = []string{"A", "B", "C"}
)

// Metrics holds the collectors of every resource of a process. Its methods
// may be called concurrently.
type Metrics struct {
	bytes, requests *prometheus.CounterVec
	latency         *prometheus.HistogramVec
	outOfSync       *prometheus.GaugeVec
	resyncRate      *prometheus.GaugeVec
	resyncRemaining *prometheus.GaugeVec
	connState       *prometheus.GaugeVec
	role, peerRole  *prometheus.GaugeVec
	protocol        *prometheus.GaugeVec
	diskState       *prometheus.GaugeVec
	suspended       *prometheus.GaugeVec
	splitBrain      *prometheus.GaugeVec
	nbdClients      *prometheus.GaugeVec
	pending         *prometheus.GaugeVec
	blocked         *prometheus.GaugeVec
	verifyEnd       *prometheus.GaugeVec
	verifyBlocks    *prometheus.GaugeVec
	verifyComplete  *prometheus.GaugeVec
	mu              sync.Mutex
	resources       map[string]*Resource
}

// New creates the collectors and registers them with reg. A nil reg
// registers nothing (the metrics still count, for tests). New panics if reg
// already holds collectors of the same names: that is a wiring mistake, to
// be found by the first test that runs it.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "urbd_io_bytes_total", Help: "Bytes of I/O requests by kind (read, write, flush, trim, zero, flush_ahead) and side (local disk or peer).",
		}, []string{"resource", "kind", "side"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "urbd_io_requests_total", Help: "I/O requests by kind and side.",
		}, []string{"resource", "kind", "side"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "urbd_write_latency_seconds", Help: "Time from submitting a write to its completion, on the local disk or at the peer.",
			Buckets: LatencyBuckets,
		}, []string{"resource", "side"}),
		outOfSync: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "urbd_out_of_sync_bytes", Help: "Bytes marked out of sync with the peer.",
		}, []string{"resource"}),
		resyncRate: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "urbd_resync_rate_bytes_per_second", Help: "Recent resync speed; 0 when no resync runs.",
		}, []string{"resource"}),
		resyncRemaining: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "urbd_resync_remaining_bytes", Help: "Bytes the running resync still has to copy; 0 when no resync runs.",
		}, []string{"resource"}),
		connState: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "urbd_connection_state", Help: "1 for the current connection state, 0 for the others.",
		}, []string{"resource", "state"}),
		role: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "urbd_role", Help: "1 for the local node's current role, 0 for the others.",
		}, []string{"resource", "role"}),
		peerRole: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "urbd_peer_role", Help: "1 for the peer's current role as last known, 0 for the others.",
		}, []string{"resource", "role"}),
		protocol: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "urbd_protocol", Help: "1 for the replication protocol in effect (A, B or C), 0 for the others.",
		}, []string{"resource", "protocol"}),
		diskState: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "urbd_disk_state", Help: "1 for the current state of the local or peer disk, 0 for the others.",
		}, []string{"resource", "disk", "state"}),
		suspended: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "urbd_writes_suspended", Help: "1 while writes wait for the peer (on-peer-loss suspend).",
		}, []string{"resource"}),
		splitBrain: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "urbd_split_brain", Help: "1 while the resource is in split brain and copies nothing.",
		}, []string{"resource"}),
		nbdClients: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "urbd_nbd_clients", Help: "NBD client connections attached to the export.",
		}, []string{"resource"}),
		pending: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "urbd_pending_requests", Help: "Requests in flight, as the status file's lo, pe, ua and ap: to the local disk (local), sent to the peer and not answered (peer), received from the peer and not answered (unacked), from the application (application).",
		}, []string{"resource", "queue"}),
		blocked: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "urbd_blocked_seconds", Help: "How long requests have waited with none of them completing, on the local disk (disk) or at the peer (peer), as the status's blocked lines: from 2 s on, else 0.",
		}, []string{"resource", "on"}),
		verifyEnd: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "urbd_last_verify_end_timestamp_seconds", Help: "When the last online verify this node ran ended (Unix time); 0 when it never ran one.",
		}, []string{"resource"}),
		verifyBlocks: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "urbd_last_verify_blocks", Help: "Blocks the last online verify found: differing (marked and resynced) or unreadable (on either disk).",
		}, []string{"resource", "found"}),
		verifyComplete: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "urbd_last_verify_complete", Help: "1 when the last online verify covered its whole range, 0 when it stopped early (or none ran).",
		}, []string{"resource"}),
		resources: make(map[string]*Resource),
	}
	if reg != nil {
		reg.MustRegister(m.bytes, m.requests, m.latency, m.outOfSync, m.resyncRate, m.resyncRemaining,
			m.connState, m.role, m.peerRole, m.protocol, m.diskState, m.suspended, m.splitBrain, m.nbdClients,
			m.verifyEnd, m.verifyBlocks, m.verifyComplete, m.pending, m.blocked)
	}
	return m
}

// Resource returns the recorder of the named resource, creating its series
// on first use. Calling it again with the same name returns the same
// recorder. Keep the result: it is the cheap way to record.
func (m *Metrics) Resource(name string) *Resource {
	m.mu.Lock()
	defer m.mu.Unlock()
	if r, ok := m.resources[name]; ok {
		return r
	}
	r := &Resource{
		m: m, name: name,
		outOfSync:       m.outOfSync.WithLabelValues(name),
		resyncRate:      m.resyncRate.WithLabelValues(name),
		resyncRemaining: m.resyncRemaining.WithLabelValues(name),
		suspended:       m.suspended.WithLabelValues(name),
		splitBrain:      m.splitBrain.WithLabelValues(name),
		nbdClients:      m.nbdClients.WithLabelValues(name),
		pending: [numQueues]prometheus.Gauge{
			m.pending.WithLabelValues(name, "local"), m.pending.WithLabelValues(name, "peer"),
			m.pending.WithLabelValues(name, "unacked"), m.pending.WithLabelValues(name, "application"),
		},
		blockedDisk:     m.blocked.WithLabelValues(name, "disk"),
		blockedPeer:     m.blocked.WithLabelValues(name, "peer"),
		verifyEnd:       m.verifyEnd.WithLabelValues(name),
		verifyDiffering: m.verifyBlocks.WithLabelValues(name, "differing"),
		verifyBad:       m.verifyBlocks.WithLabelValues(name, "unreadable"),
		verifyComplete:  m.verifyComplete.WithLabelValues(name),
		connState:       newEnum(m.connState.MustCurryWith(prometheus.Labels{"resource": name}), ConnStates),
		role:            newEnum(m.role.MustCurryWith(prometheus.Labels{"resource": name}), Roles),
		peerRole:        newEnum(m.peerRole.MustCurryWith(prometheus.Labels{"resource": name}), Roles),
		protocol:        newEnum(m.protocol.MustCurryWith(prometheus.Labels{"resource": name}), Protocols),
		localDisk:       newEnum(m.diskState.MustCurryWith(prometheus.Labels{"resource": name, "disk": "local"}), DiskStates),
		peerDisk:        newEnum(m.diskState.MustCurryWith(prometheus.Labels{"resource": name, "disk": "peer"}), DiskStates),
	}
	for s := range numSides {
		for k := range numKinds {
			r.bytes[s][k] = m.bytes.WithLabelValues(name, kindNames[k], sideNames[s])
			r.requests[s][k] = m.requests.WithLabelValues(name, kindNames[k], sideNames[s])
		}
		r.latency[s] = m.latency.WithLabelValues(name, sideNames[s])
	}
	m.resources[name] = r
	return r
}

// Remove deletes every series of the named resource, for a resource that
// went down while the process keeps running. A Resource obtained before
// keeps working but no longer reaches the registry.
func (m *Metrics) Remove(name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.resources, name)
	match := prometheus.Labels{"resource": name}
	for _, v := range []*prometheus.MetricVec{
		m.bytes.MetricVec, m.requests.MetricVec, m.latency.MetricVec, m.outOfSync.MetricVec,
		m.resyncRate.MetricVec, m.resyncRemaining.MetricVec, m.connState.MetricVec, m.role.MetricVec,
		m.peerRole.MetricVec, m.protocol.MetricVec, m.diskState.MetricVec, m.suspended.MetricVec, m.splitBrain.MetricVec,
		m.nbdClients.MetricVec, m.verifyEnd.MetricVec, m.verifyBlocks.MetricVec, m.verifyComplete.MetricVec,
		m.pending.MetricVec, m.blocked.MetricVec,
	} {
		v.DeletePartialMatch(match)
	}
}

// Resource records the metrics of one resource. Its methods may be called
// concurrently; IO and ObserveWrite are lock-free and allocation-free.
type Resource struct {
	m    *Metrics
	name string

	bytes, requests [numSides][numKinds]prometheus.Counter
	latency         [numSides]prometheus.Observer

	outOfSync, resyncRate, resyncRemaining prometheus.Gauge
	suspended, splitBrain, nbdClients      prometheus.Gauge
	verifyEnd, verifyComplete              prometheus.Gauge
	verifyDiffering, verifyBad             prometheus.Gauge
	pending                                [numQueues]prometheus.Gauge // local, peer, unacked, application
	blockedDisk, blockedPeer               prometheus.Gauge

	mu                        sync.Mutex // serialises the enum gauges' transitions
	connState, role, peerRole *enum
	protocol                  *enum
	localDisk, peerDisk       *enum
}

// IO counts one request of kind on side carrying n bytes (the length of a
// read, write, trim or zero request; 0 for a flush). Out-of-range kinds and
// sides are ignored.
func (r *Resource) IO(side Side, kind Kind, n int64) {
	if side < 0 || side >= numSides || kind < 0 || kind >= numKinds {
		return
	}
	r.requests[side][kind].Inc()
	if n > 0 {
		r.bytes[side][kind].Add(float64(n))
	}
}

// ObserveWrite records the latency of one write on side.
func (r *Resource) ObserveWrite(side Side, d time.Duration) {
	if side < 0 || side >= numSides {
		return
	}
	r.latency[side].Observe(d.Seconds())
}

// SetOutOfSync sets the bytes out of sync with the peer.
func (r *Resource) SetOutOfSync(bytes int64) { r.outOfSync.Set(float64(bytes)) }

// SetResync sets the resync speed and the bytes still to copy; pass zeros
// when the resync ends.
func (r *Resource) SetResync(bytesPerSecond, remainingBytes int64) {
	r.resyncRate.Set(float64(bytesPerSecond))
	r.resyncRemaining.Set(float64(remainingBytes))
}

// SetConnState makes state the current connection state (ConnStates; other
// names get a series of their own on first use).
func (r *Resource) SetConnState(state string) { r.setEnum(r.connState, state) }

// SetRole sets the local node's role.
func (r *Resource) SetRole(role string) { r.setEnum(r.role, role) }

// SetPeerRole sets the peer's role as last known ("Unknown" when
// disconnected).
func (r *Resource) SetPeerRole(role string) { r.setEnum(r.peerRole, role) }

// SetProtocol sets the replication protocol in effect (Protocols).
func (r *Resource) SetProtocol(p string) { r.setEnum(r.protocol, p) }

// SetDiskStates sets the local and peer disk states.
func (r *Resource) SetDiskStates(local, peer string) {
	r.setEnum(r.localDisk, local)
	r.setEnum(r.peerDisk, peer)
}

// SetSuspended records whether writes are held waiting for the peer.
func (r *Resource) SetSuspended(v bool) { r.suspended.Set(b2f(v)) }

// SetSplitBrain records whether the resource is in split brain.
func (r *Resource) SetSplitBrain(v bool) { r.splitBrain.Set(b2f(v)) }

// numQueues is the number of urbd_pending_requests series per resource.
const numQueues = 4

// SetNBDClients sets the number of attached NBD clients.
func (r *Resource) SetNBDClients(n int) { r.nbdClients.Set(float64(n)) }

// Update sets every gauge from a status snapshot (counters are not touched:
// they count requests as they happen). The daemon can call it each time it
// rewrites the status file.
func (r *Resource) Update(s *status.Resource) {
	r.SetConnState(s.ConnState)
	r.SetRole(s.Role)
	r.SetPeerRole(s.PeerRole)
	r.SetProtocol(s.Protocol)
	r.SetDiskStates(s.DiskState, s.PeerDisk)
	r.SetSuspended(s.Suspended)
	r.SetSplitBrain(s.SplitBrain)
	r.SetNBDClients(s.NBDClients)
	for i, n := range [numQueues]uint64{s.LocalPending, s.PeerPending, s.Unacked, s.AppPending} {
		r.pending[i].Set(float64(n))
	}
	r.blockedDisk.Set(float64(s.DiskBlockedSeconds))
	r.blockedPeer.Set(float64(s.PeerBlockedSeconds))
	r.SetOutOfSync(kibToBytes(s.OutOfSyncKiB))
	if s.Sync != nil {
		r.SetResync(kibToBytes(s.Sync.SpeedKiB), kibToBytes(s.Sync.RemainingKiB))
	} else {
		r.SetResync(0, 0)
	}
	if v := s.LastVerify; v != nil {
		r.SetLastVerify(*v)
	}
}

// SetLastVerify records what the last online verify found.
func (r *Resource) SetLastVerify(v status.VerifyResult) {
	r.verifyEnd.Set(float64(v.Ended.UnixNano()) / 1e9)
	r.verifyDiffering.Set(float64(v.Differing))
	r.verifyBad.Set(float64(v.Unreadable))
	r.verifyComplete.Set(b2f(v.Complete))
}

func (r *Resource) setEnum(e *enum, value string) {
	if value == "" {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e.set(value)
}

func kibToBytes(k uint64) int64 {
	if k > 1<<52 {
		k = 1 << 52
	}
	return int64(k) << 10
}

func b2f(v bool) float64 {
	if v {
		return 1
	}
	return 0
}

// maxEnumValues bounds the series one enum gauge may grow to, so a
// misbehaving caller cannot blow up the registry.
const maxEnumValues = 32

// enum is a labelled gauge family where exactly one value is 1. Callers
// hold the owning Resource's mu.
type enum struct {
	vec     *prometheus.GaugeVec
	gauges  map[string]prometheus.Gauge
	current string
}

func newEnum(vec *prometheus.GaugeVec, known []string) *enum {
	e := &enum{vec: vec, gauges: make(map[string]prometheus.Gauge, len(known))}
	for _, v := range slices.Clone(known) {
		g := vec.WithLabelValues(v)
		g.Set(0)
		e.gauges[v] = g
	}
	return e
}

func (e *enum) set(value string) {
	if value == e.current {
		return
	}
	g, ok := e.gauges[value]
	if !ok {
		if len(e.gauges) >= maxEnumValues {
			return
		}
		g = e.vec.WithLabelValues(value)
		e.gauges[value] = g
	}
	if old, ok := e.gauges[e.current]; ok {
		old.Set(0)
	}
	g.Set(1)
	e.current = value
}
