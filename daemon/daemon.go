// Package daemon runs one replicated resource: it opens the disk and its
// metadata, starts the replication node, serves the NBD export, answers the
// control socket and keeps the status file current. cmd/urbd's `up` command
// is a thin wrapper around Run.
package daemon

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	_ "net/http/pprof" // served only when URBD_PPROF is set
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/urbd/urbd/bitmap"
	"github.com/urbd/urbd/handlers"
	"github.com/urbd/urbd/internal/threads"
	"github.com/urbd/urbd/internal/units"
	"github.com/urbd/urbd/metrics"
	"github.com/urbd/urbd/nbd"
	"github.com/urbd/urbd/protocol"
	"github.com/urbd/urbd/replica"
	"github.com/urbd/urbd/status"
)

// Version is printed in the status file's first line.
const Version = "0.1"

// Options configure one resource on this node (the flags of `urbd up`).
type Options struct {
	Name       string
	Disk       string
	Meta       string
	NBD        string // unix:PATH or tcp:HOST:PORT
	ListenPeer string
	Peer       string
	Protocol   byte
	ResyncRate int64
	SecretFile string
	TLSCert    string
	TLSKey     string
	TLSCA      string
	Timeout    time.Duration
	// KoCount is ko-count: a peer that leaves a write, flush or read
	// unanswered for KoCount timeouts is dropped (its disk hung); 0 never
	// drops it. urbd up's default is replica.DefaultKoCount.
	KoCount int
	// DiskTimeout is disk-timeout: a Primary whose disk leaves a request
	// unanswered this long detaches it, when the peer holds the data; 0
	// waits for the disk however long.
	DiskTimeout time.Duration
	OnPeerLoss  string // continue or suspend
	// Fencing is dont-care (or ""), resource-only or resource-and-stonith;
	// the latter two need a fence-peer handler.
	Fencing string
	// AfterSB0Pri and AfterSB1Pri are the automatic split-brain recovery
	// policies ("" = disconnect); the peer must have the same.
	AfterSB0Pri, AfterSB1Pri string
	// OnIOError is what a Primary does when its disk fails a write or a
	// flush: detach (or "") or pass_on.
	OnIOError string
	// CsumsAlg is csums-alg: sha256 makes resyncs compare checksums
	// before they copy; none (or "") does not.
	CsumsAlg string
	// ReadBalancing is read-balancing: which disk serves the Primary's
	// reads (replica.ParseReadBalancing's names; "" is prefer-local).
	ReadBalancing string
	// TCPCongestion is the congestion control of the peer connection: a
	// name the kernel offers, or "system" for the kernel's default. ""
	// asks for replica.DefaultCongestion and, where this process may not
	// use it, keeps the kernel's default with a warning.
	TCPCongestion string
	// AutoPromote is auto-promote: yes makes a Secondary promote itself
	// when an NBD client attaches and demote itself when the last one
	// leaves; no (or "") leaves roles to the operator.
	AutoPromote string
	// OnCongestion is on-congestion: what a Primary replicating with
	// protocol A does when the link cannot keep up: block (or ""),
	// pull-ahead or disconnect, at CongestionFill bytes in flight to the
	// peer or CongestionExtents activity-log extents in use (0: that
	// threshold is off).
	OnCongestion      string
	CongestionFill    int64
	CongestionExtents int
	BitmapBlock       int64
	ALExtents         int // activity-log slots; 0 = bitmap.DefaultALExtents
	AssumeClean       bool
	// Grow accepts a disk larger than the metadata was made for: the
	// metadata grows to it and the new part is marked out of sync.
	Grow   bool
	RunDir string
	// Handlers maps events (initial-split-brain, split-brain, peer-lost, peer-back,
	// resync-started, resync-done, promoted, demoted, local-io-error) to
	// shell commands run with URBD_RESOURCE and URBD_EVENT in their
	// environment.
	Handlers map[string]string
	// MetricsListen is HOST:PORT for Prometheus metrics; "" serves none.
	MetricsListen string
	// Threads, when it adapts, switches GOMAXPROCS between its counts by
	// the requests the NBD server serves (package threads).
	Threads threads.Range
	// Reload, if set, reads these options again from where they came from
	// (the resource file, with the same command-line flags winning), for
	// `urbd adjust NAME`; nil when there is nothing to read again.
	Reload func() (Options, error)
	// Ready, if set, is called once the resource serves its control socket.
	Ready  func(*replica.Node)
	Logger *slog.Logger
}

// ParseProtocol reads a replication protocol as given to --protocol: A, B
// or C, in either case.
func ParseProtocol(s string) (byte, error) {
	switch p := strings.ToUpper(s); p {
	case "A", "B", "C":
		return p[0], nil
	}
	return 0, fmt.Errorf("--protocol %q: use A, B or C", s)
}

// checkOnPeerLoss accepts continue, suspend and "" (continue).
func checkOnPeerLoss(s string) error {
	switch s {
	case "", "continue", "suspend":
		return nil
	}
	return fmt.Errorf("--on-peer-loss %q: use continue or suspend", s)
}

// checkTimeout accepts a peer timeout for urbd adjust: a positive duration.
func checkTimeout(d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("--timeout %s: use a positive duration, e.g. 6s", d)
	}
	return nil
}

// checkFenceHandler refuses a fencing policy without a fence-peer handler
// among cmds to run.
func checkFenceHandler(f replica.Fencing, cmds map[string]string) error {
	if f != replica.FenceDontCare && strings.TrimSpace(cmds[handlers.EventFencePeer]) == "" {
		return fmt.Errorf("fencing %s needs a %s handler", f, handlers.EventFencePeer)
	}
	return nil
}

// policies are the replica's policies of Options, parsed.
type policies struct {
	fencing   replica.Fencing
	afterSB   replica.AfterSplitBrain
	onIOError replica.OnIOError
	csums     bool
	balance   replica.ReadBalancing
	congest   replica.Congestion
	autoPro   bool
}

// parsePolicies parses the policies of o, with the messages of urbd up for
// a bad value ("" is each policy's default).
func parsePolicies(o Options) (policies, error) {
	var p policies
	var err error
	if p.fencing, err = replica.ParseFencing(cmp.Or(o.Fencing, "dont-care")); err != nil {
		return p, fmt.Errorf("--fencing: %w", err)
	}
	if p.afterSB.NoPrimary, err = replica.ParseAfterSB0(o.AfterSB0Pri); err != nil {
		return p, fmt.Errorf("--after-sb-0pri: %w", err)
	}
	if p.afterSB.OnePrimary, err = replica.ParseAfterSB1(o.AfterSB1Pri); err != nil {
		return p, fmt.Errorf("--after-sb-1pri: %w", err)
	}
	if p.onIOError, err = replica.ParseOnIOError(o.OnIOError); err != nil {
		return p, fmt.Errorf("--on-io-error: %w", err)
	}
	if p.csums, err = replica.ParseCsumsAlg(o.CsumsAlg); err != nil {
		return p, fmt.Errorf("--%w", err)
	}
	if p.balance, err = replica.ParseReadBalancing(o.ReadBalancing); err != nil {
		return p, fmt.Errorf("--read-balancing: %w", err)
	}
	if p.congest.Policy, err = replica.ParseOnCongestion(o.OnCongestion); err != nil {
		return p, fmt.Errorf("--on-congestion: %w", err)
	}
	if p.autoPro, err = replica.ParseAutoPromote(o.AutoPromote); err != nil {
		return p, fmt.Errorf("--%w", err)
	}
	p.congest.Fill, p.congest.Extents = o.CongestionFill, o.CongestionExtents
	if err := replica.CheckCongestionLimits(p.congest); err != nil {
		return p, fmt.Errorf("--congestion-fill, --congestion-extents: %w", err)
	}
	return p, nil
}

// extentSize is the activity-log extent, DRBD's 4 MiB.
const extentSize = 4 << 20

// Run serves the resource until ctx is cancelled or `urbd down` is received,
// then stops cleanly: NBD clients finish and are flushed, the peer session
// closes and the metadata is marked clean.
func Run(ctx context.Context, o Options) error {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("resource", o.Name)
	pol, err := checkOptions(o)
	if err != nil {
		return err
	}
	congestion, err := peerCongestion(o.TCPCongestion, log)
	if err != nil {
		return err
	}
	link, err := loadLink(o)
	if err != nil {
		return err
	}
	link.Congestion = congestion

	disk, err := nbd.OpenFile(o.Disk, false)
	if err != nil {
		return fmt.Errorf("opening --disk: %w", err)
	}
	slot := &diskSlot{path: o.Disk, cur: disk}
	defer slot.close()
	store, lock, err := openMeta(o, disk, log)
	if err != nil {
		return err
	}
	defer lock.Unlock()

	runner := &handlers.Runner{Commands: o.Handlers, Logger: log}
	defer runner.Wait()
	reg := prometheus.NewRegistry()
	met := metrics.New(reg).Resource(o.Name)
	ms := &metricsServer{reg: reg, log: log}
	// The fence-peer handler is told the peer's address in effect (urbd
	// adjust may change it).
	var node *replica.Node
	node, err = replica.New(replica.Config{
		Name: o.Name, Disk: disk, Store: store, Protocol: o.Protocol,
		ListenPeer: link.ListenPeer, Peer: link.Peer, Secret: link.Secret, TLS: link.TLS,
		Timeout: o.Timeout, KoCount: o.KoCount, DiskTimeout: o.DiskTimeout, SuspendOnPeerLoss: o.OnPeerLoss == "suspend", TCPCongestion: congestion,
		ResyncRate: o.ResyncRate, Logger: log,
		Event: func(event string, extra map[string]string) {
			runner.Fire(ctx, o.Name, event, extra)
		},
		Fencing:         pol.fencing,
		OnIOError:       pol.onIOError,
		AfterSB:         pol.afterSB,
		ResyncChecksums: pol.csums,
		ReadBalancing:   pol.balance,
		Congestion:      pol.congest,
		AutoPromote:     pol.autoPro,
		FencePeer: func(fctx context.Context) (int, error) {
			return runner.Run(fctx, o.Name, handlers.EventFencePeer, map[string]string{"URBD_PEER": node.PeerAddress()})
		},
		Observe: observer(met, &ms.on),
	})
	if err != nil {
		store.Close()
		return err
	}

	srv := newNBDServer(o.Name, node, log)

	ctl, nbdLn, metricsLn, err := openListeners(ctx, o, ms)
	if err != nil {
		node.Close()
		return err
	}
	defer os.Remove(SocketPath(o.RunDir, o.Name))

	ctx, stop := context.WithCancel(ctx)
	defer stop()
	errc := make(chan error, 4)
	go func() { errc <- node.Run(ctx) }()
	export := &nbdExport{srv: srv, errc: errc}
	export.use(ctx, nbdLn)
	adj := &adjuster{
		setProtocol: node.SetProtocol, setRate: node.AdjustRate, setOnPeerLoss: node.SetOnPeerLoss, setHandlers: runner.SetCommands,
		setTimeout: node.SetTimeout, setKoCount: node.SetKoCount, setDiskTimeout: node.SetDiskTimeout, setOnIOError: node.SetOnIOError, setAfterSB: node.SetAfterSB, setFencing: node.SetFencing,
		setCsums: node.SetResyncChecksums, setBalance: node.SetReadBalancing, setCongestion: node.SetCongestion, setAutoPromote: node.SetAutoPromote,
		setLink: node.SetLink, loadLink: loadLink, link: link,
		listenMetrics: func(addr string) (net.Listener, error) { return ms.listen(ctx, addr) },
		useMetrics:    func(ln net.Listener) { ms.use(ctx, ln) },
		listenNBD:     nbd.Listen,
		useNBD:        func(ln net.Listener) { export.use(ctx, ln) },
		reload:        o.Reload, log: log, cur: o, congestion: shownCongestion(congestion),
	}
	go serveControl(ctx, ctl, func(cctx context.Context, req Request) Response {
		return execute(cctx, node, srv, adj, slot, req, stop)
	}, func(cctx context.Context, send func(Response) error) error {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		return streamStatus(cctx, node, tick.C, send)
	})
	ms.use(ctx, metricsLn)
	if addr := os.Getenv("URBD_PPROF"); addr != "" {
		// Profiling for benchmarks: net/http/pprof on a loopback address.
		go func() { log.Warn("pprof server stopped", "err", http.ListenAndServe(addr, nil)) }()
	}
	// The peer's Reads block in pread as the clients' reads do: both count.
	served := func() nbd.Served {
		s := srv.Served()
		s.Reads += node.ReadsForPeer()
		return s
	}
	go threads.Run(ctx, o.Threads, threads.Interval, served)
	statusDone := make(chan struct{})
	go func() {
		defer close(statusDone)
		writeStatusLoop(ctx, StatusPath(o.RunDir, o.Name), node, met, log)
	}()
	if o.Ready != nil {
		o.Ready(node)
	}
	log.Info("resource up", "nbd", o.NBD, "listen_peer", o.ListenPeer, "peer", o.Peer, "protocol", string(node.Status().Protocol))

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		if runErr != nil {
			log.Error("stopping after an error", "err", runErr)
		}
	}
	stop()
	ms.close()
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("NBD shutdown", "err", err)
	}
	if err := node.Close(); err != nil && runErr == nil {
		runErr = err
	}
	<-statusDone
	os.Remove(StatusPath(o.RunDir, o.Name))
	log.Info("resource down")
	return runErr
}

// openListeners binds the control socket, the NBD address and the metrics
// address (nil when none) of o; on an error none stays bound.
func openListeners(ctx context.Context, o Options, ms *metricsServer) (ctl, nbdLn, metricsLn net.Listener, err error) {
	if err := os.MkdirAll(filepath.Join(o.RunDir, o.Name), 0o755); err != nil {
		return nil, nil, nil, fmt.Errorf("creating run dir: %w", err)
	}
	if ctl, err = listenUnix(SocketPath(o.RunDir, o.Name)); err != nil {
		return nil, nil, nil, err
	}
	if nbdLn, err = nbd.Listen(o.NBD); err != nil {
		ctl.Close()
		return nil, nil, nil, fmt.Errorf("--nbd: %w", err)
	}
	if metricsLn, err = ms.listen(ctx, o.MetricsListen); err != nil {
		nbdLn.Close()
		ctl.Close()
		return nil, nil, nil, fmt.Errorf("--metrics-listen: %w", err)
	}
	return ctl, nbdLn, metricsLn, nil
}

// checkOptions checks what Run can check of o before it opens anything,
// and returns its policies parsed.
func checkOptions(o Options) (policies, error) {
	if err := validName(o.Name); err != nil {
		return policies{}, err
	}
	if err := checkOnPeerLoss(o.OnPeerLoss); err != nil {
		return policies{}, err
	}
	pol, err := parsePolicies(o)
	if err != nil {
		return policies{}, err
	}
	if err := checkFenceHandler(pol.fencing, o.Handlers); err != nil {
		return policies{}, fmt.Errorf("--%w: add --handler 'fence-peer=COMMAND' (see docs/OPERATIONS.md, Fencing)", err)
	}
	return pol, nil
}

// newNBDServer serves the resource's export, which node refuses while it
// is not Primary and cannot promote itself for the client (auto-promote).
func newNBDServer(name string, node *replica.Node, log *slog.Logger) *nbd.Server {
	return &nbd.Server{
		Logger: log,
		Lookup: func(string) (*nbd.Export, error) {
			if err := node.CheckServe(); err != nil {
				return nil, nbd.Refuse(err)
			}
			return &nbd.Export{Name: name, Description: "urbd resource " + name, Backend: node, MultiConn: true, Attach: func() (func(), error) {
				release, err := node.AttachClient()
				if err != nil {
					return nil, nbd.Refuse(err)
				}
				return release, nil
			}}, nil
		},
		List: func() []string { return []string{name} },
	}
}

// nbdExport serves the NBD server on the listener in effect; urbd adjust
// moves it to another (nbd). Its methods are called by one goroutine at a
// time (Run, then the adjuster under its mutex).
type nbdExport struct {
	srv  *nbd.Server
	errc chan<- error // a listener that fails stops the daemon, as at the start
	cur  net.Listener
}

// use serves on ln until the daemon stops, then stops accepting on the
// listener before (its Serve returns nil; its clients stay connected).
func (e *nbdExport) use(ctx context.Context, ln net.Listener) {
	go func() {
		if err := e.srv.Serve(ctx, ln); err != nil && ctx.Err() == nil {
			select {
			case e.errc <- fmt.Errorf("nbd: %w", err):
			default:
			}
		}
	}()
	if e.cur != nil {
		e.srv.CloseListener(e.cur)
	}
	e.cur = ln
}

// openMeta opens the metadata of o for disk, creating it on first start,
// and holds its directory's lock, which the caller releases after closing
// the store. A second daemon of the resource, or an offline urbd outdate,
// is refused here.
func openMeta(o Options, disk *nbd.File, log *slog.Logger) (*bitmap.Store, *bitmap.DirLock, error) {
	fresh := !metaExists(o.Meta)
	if err := os.MkdirAll(o.Meta, 0o700); err != nil {
		return nil, nil, fmt.Errorf("creating --meta: %w", err)
	}
	lock, err := bitmap.LockDir(o.Meta)
	if err != nil {
		return nil, nil, fmt.Errorf("--meta: %w (is urbd up %s already running?)", err, o.Name)
	}
	store, err := bitmap.Open(o.Meta, bitmap.Options{
		Size: disk.Size(), BitmapBlock: o.BitmapBlock, ExtentSize: extentSize, ALExtents: o.ALExtents,
		SyncData: func() error { return disk.Flush(context.Background()) },
		Grow:     o.Grow,
	})
	if se := (*bitmap.SizeError)(nil); errors.As(err, &se) {
		todo := "if the disk was grown on purpose, start with --grow, on both nodes (the new part is resynced)"
		if se.Disk < se.Stored {
			todo = fmt.Sprintf("urbd cannot shrink a resource; give it a disk of at least %d bytes", se.Stored)
		}
		err = fmt.Errorf("--disk %s is %d bytes, --meta %s was made for %d: %s", o.Disk, se.Disk, o.Meta, se.Stored, todo)
	} else if err != nil {
		err = fmt.Errorf("opening --meta %s: %w", o.Meta, err)
	}
	if err == nil && fresh {
		if err = replica.InitialUUIDs(store, o.Name, o.AssumeClean); err != nil {
			store.Close()
		} else {
			log.Info("created metadata", "dir", o.Meta, "assume_clean", o.AssumeClean)
		}
	}
	if err != nil {
		lock.Unlock()
		return nil, nil, err
	}
	return store, lock, nil
}

// closeGrace is how long `urbd secondary --force` lets the NBD clients'
// requests finish before it cancels them.
const closeGrace = 10 * time.Second

// execute runs one control request against the node.
func execute(ctx context.Context, node *replica.Node, srv *nbd.Server, adj *adjuster, disk *diskSlot, req Request, stop func()) Response {
	var err error
	msg := ""
	switch req.Cmd {
	case "status":
		st := node.Status()
		return Response{OK: true, Status: &st}
	case "primary":
		err = node.Promote(req.Force)
		msg = "Primary"
	case "secondary":
		if req.Force && srv.Clients() > 0 {
			// Requests held for the peer (suspended or fencing) would keep
			// the clients forever: after closeGrace they are cancelled.
			cctx, cancel := context.WithTimeout(ctx, closeGrace)
			cerr := srv.CloseClients(cctx)
			cancel()
			if cerr != nil && !errors.Is(cerr, context.DeadlineExceeded) {
				err = cerr
				break
			}
		}
		err = node.Demote(req.Force)
		msg = "Secondary"
	case "connect":
		err = node.Connect(req.Discard)
		msg = "connecting"
		if req.Discard {
			msg = "connecting; this node's changes will be discarded"
		}
	case "disconnect":
		err = node.Disconnect(req.Force)
		msg = "StandAlone"
	case "adjust":
		if len(req.Settings) == 0 {
			msg, err = adj.fromFile()
		} else {
			msg, err = adj.set(req.Settings)
		}
	case "show":
		settings, pending := adj.show()
		return Response{OK: true, Settings: settings, Message: pending}
	case "invalidate":
		err = node.Invalidate()
		msg = "invalidated: full resync from the peer"
	case "invalidate-remote":
		err = node.InvalidateRemote()
		msg = "peer invalidated: full resync to the peer"
	case "resize":
		var r replica.Resized
		r, err = node.Resize(ctx, req.AssumeClean)
		msg = fmt.Sprintf("grown from %s to %s on both nodes; they reconnect, and the resync copies the new %s",
			units.FormatSize(r.From), units.FormatSize(r.To), units.FormatSize(r.To-r.From))
		if req.AssumeClean {
			msg = fmt.Sprintf("grown from %s to %s on both nodes; the new %s is taken as equal on both (assume-clean): nothing to resync",
				units.FormatSize(r.From), units.FormatSize(r.To), units.FormatSize(r.To-r.From))
		}
	case "attach-disk":
		msg, err = disk.attach(node, req.SameDisk)
	case "detach-disk":
		msg, err = disk.detach(node)
	case "pause-sync":
		node.PauseSync()
		msg = "resync paused (urbd resume-sync goes on)"
	case "resume-sync":
		node.ResumeSync()
		msg = "resync resumed"
	case "verify":
		err = node.Verify(replica.VerifyRange{Start: req.Start, Stop: req.Stop, Resume: req.Resume})
		msg = "online verify started; watch urbd status"
	case "outdate":
		err = node.Outdate()
		msg = "Outdated"
	case "resume-io":
		err = node.ResumeIO()
		msg = "writes resumed without the peer"
	case "down":
		stop()
		msg = "stopping"
	default:
		return Response{Error: fmt.Sprintf("unknown command %q", req.Cmd)}
	}
	if err != nil {
		return Response{Error: err.Error()}
	}
	return Response{OK: true, Message: msg}
}

// statusSource is what streamStatus follows: a replica.Node.
type statusSource interface {
	Changed() <-chan struct{}
	Status() status.Resource
}

// streamStatus sends the node's status now, after every state change, and
// when what it is blocked on changes (looked at on every tick: once a
// second, as the status file is rewritten), until ctx ends or send fails
// (urbd events).
func streamStatus(ctx context.Context, node statusSource, tick <-chan time.Time, send func(Response) error) error {
	stateChanged := true // the first status is always sent
	var blocked string   // what the last status sent was blocked on
	for {
		changed := node.Changed()
		st := node.Status()
		if on := st.BlockedOn(); stateChanged || on != blocked {
			if err := send(Response{OK: true, Status: &st}); err != nil {
				return err
			}
			blocked = on
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
			stateChanged = true
		case <-tick:
			// A change at the same moment is still a change.
			select {
			case <-changed:
				stateChanged = true
			default:
				stateChanged = false
			}
		}
	}
}

// writeStatusLoop rewrites the status file at least once a second and on
// every state change, until ctx is cancelled.
func writeStatusLoop(ctx context.Context, path string, node *replica.Node, met *metrics.Resource, log *slog.Logger) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var lastErr string
	for {
		changed := node.Changed()
		st := node.Status()
		if met != nil {
			met.Update(&st)
		}
		var buf bytes.Buffer
		status.WriteText(&buf, Version, []status.Resource{st})
		if err := status.WriteAtomic(path, buf.Bytes()); err != nil && err.Error() != lastErr {
			lastErr = err.Error()
			log.Warn("writing the status file", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-changed:
		}
	}
}

// observer feeds application requests into the metrics while they are
// served (on).
func observer(met *metrics.Resource, on *atomic.Bool) func(kind string, peer bool, bytes int, d time.Duration) {
	kinds := map[string]metrics.Kind{"read": metrics.Read, "write": metrics.Write, "flush": metrics.Flush, "trim": metrics.Trim, "zero": metrics.Zero, "flush_ahead": metrics.FlushAhead}
	return func(kind string, peer bool, bytes int, d time.Duration) {
		if !on.Load() {
			return
		}
		side := metrics.Local
		if peer {
			side = metrics.Peer
		}
		k, ok := kinds[kind]
		if !ok {
			return
		}
		met.IO(side, k, int64(bytes))
		if k == metrics.Write {
			met.ObserveWrite(side, d)
		}
	}
}

func listenUnix(path string) (net.Listener, error) {
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("%s is in use: is urbd up already running for this resource?", path)
	}
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	return ln, nil
}

// metaExists reports whether dir holds metadata (a file besides its lock).
func metaExists(dir string) bool {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range entries {
		if e.Name() != bitmap.LockFile {
			return true
		}
	}
	return false
}

func validName(name string) error {
	if name == "" || strings.ContainsAny(name, "/\\ \t\n") || name == "." || name == ".." || len(name) > protocol.MaxResource {
		return fmt.Errorf("invalid resource name %q: use letters, digits, - and _", name)
	}
	return nil
}

// shownCongestion names the congestion control peerCongestion chose, ""
// meaning the kernel's default.
func shownCongestion(name string) string {
	if name == "" {
		return "system (" + replica.SystemDefaultCongestion() + ")"
	}
	return name
}

// checkCongestion is replica.CheckCongestion; tests replace it.
var checkCongestion = replica.CheckCongestion

// peerCongestion resolves --tcp-congestion to the name the peer connection
// asks for ("" = the kernel's default). A name the operator gave must be
// usable; the default falls back to the kernel's with a warning.
func peerCongestion(configured string, log *slog.Logger) (string, error) {
	if configured != "" {
		name, err := replica.ParseCongestion(configured)
		if err == nil {
			err = checkCongestion(name)
		}
		if err != nil {
			return "", fmt.Errorf("--%w", err)
		}
		return name, nil
	}
	if err := checkCongestion(replica.DefaultCongestion); err != nil {
		log.Warn("the peer connection uses the kernel's default congestion control",
			"default", replica.SystemDefaultCongestion(), "err", err)
		return "", nil
	}
	return replica.DefaultCongestion, nil
}
