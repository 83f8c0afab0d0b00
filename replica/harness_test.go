package replica_test

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/urbd/urbd/bitmap"
	"github.com/urbd/urbd/internal/testnet"
	"github.com/urbd/urbd/nbd"
	"github.com/urbd/urbd/replica"
	"github.com/urbd/urbd/resync"
	"github.com/urbd/urbd/status"
)

// The scenario harness runs two replica.Node in one process: temp files as
// disks (nbd.OpenFile), temp directories as metadata (bitmap.Open), peers on
// 127.0.0.1 ports, each Node's Run on its own context. Every wait polls the
// node's State or Status with a deadline, woken by Node.Changed; nothing
// sleeps for synchronisation.

const (
	hDiskSize = 8 << 20          // two 4 MiB activity-log extents
	hBlock    = 4096             // bitmap block
	hWait     = 10 * time.Second // generous: the machine is shared; a scenario takes about 1 s
)

// nodeOpts configure one side of a pair.
type nodeOpts struct {
	protocol    byte // 'A', 'B', 'C'; 0 = C
	suspend     bool // Config.SuspendOnPeerLoss
	rate        int64
	clock       resync.Clock
	assumeClean bool
	timeout     time.Duration // Config.Timeout; 0 = 2s
	viaProxy    bool          // dial the peer through a testnet.Proxy (x.proxy)
	size        int64         // disk size; 0 = hDiskSize
	secret      string        // Config.Secret; "" = none
	volatile    bool          // the disk keeps an undo log for powerLoss
	fencing     replica.Fencing
	fence       *fenceHandler // Config.FencePeer; nil = none configured
	afterSB     replica.AfterSplitBrain
	onIOError   replica.OnIOError
	alExtents   int                   // bitmap.Options.ALExtents; 0 = the default
	grow        bool                  // bitmap.Options.Grow: start on a disk grown since (urbd up --grow)
	csums       bool                  // Config.ResyncChecksums (csums-alg sha256)
	koCount     int                   // Config.KoCount; 0 = never
	diskTimeout time.Duration         // Config.DiskTimeout; 0 = off
	balance     replica.ReadBalancing // Config.ReadBalancing
	congestion  replica.Congestion    // Config.Congestion
}

// tnode is one in-process node with its files.
type tnode struct {
	t        *testing.T
	label    string // "a" or "b", for messages
	diskPath string
	metaDir  string
	addr     string // this node's peer listener
	peerAddr string
	opts     nodeOpts

	file   *nbd.File
	disk   *testDisk
	metaFS gatedFS // the metadata directory's file system, kept across restarts
	store  *bitmap.Store
	node   *replica.Node

	cancel context.CancelFunc
	runErr chan error
	up     bool

	proxy *testnet.Proxy // forwards this node's dials to the peer, if opts.viaProxy

	evMu   sync.Mutex
	events []string // Config.Event names, in arrival order, across restarts
	lost   []string // URBD_REASON of each peer-lost event, in arrival order

	aheads atomic.Int64 // "flush_ahead" reports to Config.Observe

	logs *testLog // the node's log, printed if the test fails
}

// testLog keeps the last logKeep bytes a node logged, for a failed test to
// print: a rare failure then shows what the nodes saw (a timeout, a
// replaced connection) without a rerun with URBD_TEST_LOG.
type testLog struct {
	mu  sync.Mutex
	buf []byte
}

const logKeep = 64 << 10

func (l *testLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	if over := len(l.buf) - logKeep; over > 0 {
		l.buf = append(l.buf[:0], l.buf[over:]...)
	}
	return len(p), nil
}

func (l *testLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.buf)
}

// sawEvent reports whether the node fired the event since it was created.
func (x *tnode) sawEvent(name string) bool {
	x.evMu.Lock()
	defer x.evMu.Unlock()
	return slices.Contains(x.events, name)
}

// eventCount returns how often the node fired the event.
func (x *tnode) eventCount(name string) int {
	x.evMu.Lock()
	defer x.evMu.Unlock()
	n := 0
	for _, e := range x.events {
		if e == name {
			n++
		}
	}
	return n
}

// nthLoss waits for the node's n-th peer-lost event (from 1) and returns
// its reason.
func (x *tnode) nthLoss(n int) string {
	x.t.Helper()
	x.waitFor(fmt.Sprintf("peer loss %d", n), func() bool { return x.eventCount("peer-lost") >= n })
	x.evMu.Lock()
	defer x.evMu.Unlock()
	return x.lost[n-1]
}

// waitEvent waits until the node fired the event (events come from their
// own goroutines, so they may trail the state change).
func (x *tnode) waitEvent(name string) {
	x.t.Helper()
	x.waitFor("event "+name, func() bool { return x.sawEvent(name) })
}

// freeAddr returns a 127.0.0.1 address whose port was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	addr, err := testnet.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// newPair creates two nodes wired to each other, not yet started. Their
// disks are zero-filled files of hDiskSize bytes.
func newPair(t *testing.T, oa, ob nodeOpts) (a, b *tnode) {
	t.Helper()
	dir := t.TempDir()
	addrA, addrB := freeAddr(t), freeAddr(t)
	a = &tnode{t: t, label: "a", diskPath: filepath.Join(dir, "a.img"), metaDir: filepath.Join(dir, "a.meta"), addr: addrA, peerAddr: addrB, opts: oa, logs: &testLog{}}
	b = &tnode{t: t, label: "b", diskPath: filepath.Join(dir, "b.img"), metaDir: filepath.Join(dir, "b.meta"), addr: addrB, peerAddr: addrA, opts: ob, logs: &testLog{}}
	// Registered first, so it runs last: after the nodes stopped.
	t.Cleanup(func() {
		if t.Failed() {
			for _, x := range []*tnode{a, b} {
				t.Logf("log of node %s (its last %d KiB):\n%s", x.label, logKeep>>10, x.logs)
			}
		}
	})
	for _, x := range []*tnode{a, b} {
		if x.opts.viaProxy {
			x.proxy = startProxy(t, map[*tnode]string{a: addrB, b: addrA}[x])
			x.peerAddr = x.proxy.Addr()
		}
		if err := os.WriteFile(x.diskPath, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(x.diskPath, cmp.Or(x.opts.size, hDiskSize)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(x.stop)
	}
	// Runs before the stops: a test that failed while holding disk writes or
	// flushes must not leave its nodes unable to stop.
	t.Cleanup(func() {
		for _, x := range []*tnode{a, b} {
			if x.disk != nil {
				x.disk.releaseWrites()
				x.disk.releaseFlushes()
			}
		}
	})
	return a, b
}

// connectedSecondaries starts two nodes created with assume-clean and waits
// until they are Connected, both Secondary and UpToDate.
func connectedSecondaries(t *testing.T, oa, ob nodeOpts) (a, b *tnode) {
	t.Helper()
	oa.assumeClean, ob.assumeClean = true, true
	a, b = newPair(t, oa, ob)
	a.start()
	b.start()
	a.waitConn(replica.Connected)
	b.waitConn(replica.Connected)
	return a, b
}

// cleanPair starts two nodes created with assume-clean and waits until they
// are Connected, both UpToDate, with a promoted Primary.
func cleanPair(t *testing.T, oa, ob nodeOpts) (a, b *tnode) {
	t.Helper()
	a, b = connectedSecondaries(t, oa, ob)
	if err := a.node.Promote(false); err != nil {
		t.Fatalf("promote a: %v", err)
	}
	b.waitState("peer Primary", func(s replica.State) bool { return s.PeerRole == replica.Primary })
	return a, b
}

// start opens the disk and metadata (creating them on first start) and runs
// the node until stop.
func (x *tnode) start() {
	t := x.t
	t.Helper()
	if x.up {
		t.Fatalf("%s: already started", x.label)
	}
	f, err := nbd.OpenFile(x.diskPath, false)
	if err != nil {
		t.Fatal(err)
	}
	_, statErr := os.Stat(filepath.Join(x.metaDir, bitmap.MetaFile))
	fresh := errors.Is(statErr, os.ErrNotExist)
	x.metaFS.FS = bitmap.OSFS()
	x.metaFS.dead.Store(false)
	disk := &testDisk{Backend: f, volatile: x.opts.volatile}
	store, err := bitmap.Open(x.metaDir, bitmap.Options{
		Size: f.Size(), BitmapBlock: hBlock, FS: &x.metaFS, ALExtents: x.opts.alExtents, Grow: x.opts.grow,
		SyncData: func() error { return disk.Flush(context.Background()) },
	})
	if err != nil {
		f.Close()
		t.Fatal(err)
	}
	if fresh {
		if err := replica.InitialUUIDs(store, "r0", x.opts.assumeClean); err != nil {
			t.Fatal(err)
		}
	}
	x.file = f
	x.disk = disk
	x.store = store
	node, err := replica.New(replica.Config{
		Name:              "r0",
		Disk:              x.disk,
		Store:             store,
		Protocol:          x.opts.protocol,
		ListenPeer:        x.addr,
		Peer:              x.peerAddr,
		Timeout:           cmp.Or(x.opts.timeout, 2*time.Second),
		KoCount:           x.opts.koCount,
		DiskTimeout:       x.opts.diskTimeout,
		Secret:            []byte(x.opts.secret),
		SuspendOnPeerLoss: x.opts.suspend,
		Fencing:           x.opts.fencing,
		FencePeer:         x.opts.fence.handler(),
		AfterSB:           x.opts.afterSB,
		OnIOError:         x.opts.onIOError,
		ReadBalancing:     x.opts.balance,
		Congestion:        x.opts.congestion,
		ResyncChecksums:   x.opts.csums,
		ResyncRate:        x.opts.rate,
		Clock:             x.opts.clock,
		Logger:            x.logger(),
		Event: func(event string, extra map[string]string) {
			x.evMu.Lock()
			x.events = append(x.events, event)
			if event == "peer-lost" {
				x.lost = append(x.lost, extra["URBD_REASON"])
			}
			x.evMu.Unlock()
		},
		Observe: func(kind string, _ bool, _ int, _ time.Duration) {
			if kind == "flush_ahead" {
				x.aheads.Add(1)
			}
		},
	})
	if err != nil {
		store.Close()
		f.Close()
		t.Fatal(err)
	}
	x.node = node
	ctx, cancel := context.WithCancel(context.Background())
	x.cancel = cancel
	x.runErr = make(chan error, 1)
	go func() { x.runErr <- node.Run(ctx) }()
	x.up = true
}

// logger keeps the node's log for the test to print if it fails, or with
// URBD_TEST_LOG=1 writes it to stderr prefixed with the node's label (for
// debugging a scenario that passes).
func (x *tnode) logger() *slog.Logger {
	var w io.Writer = x.logs
	if os.Getenv("URBD_TEST_LOG") != "" {
		w = os.Stderr
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", x.label)
}

// stop ends Run, closes the node (a clean shutdown: the session drops, the
// metadata is marked clean) and the disk. It is safe to call twice.
func (x *tnode) stop() { x.halt(true) }

// halt is stop; with check, errors from Run and Close fail the test.
func (x *tnode) halt(check bool) {
	if !x.up {
		return
	}
	x.up = false
	x.cancel()
	if err := <-x.runErr; err != nil && check {
		x.t.Errorf("%s: Run: %v", x.label, err)
	}
	if err := x.node.Close(); err != nil && check {
		x.t.Errorf("%s: Close: %v", x.label, err)
	}
	x.file.Close()
}

// waitState polls the node's State until cond holds, failing after hWait.
func (x *tnode) waitState(what string, cond func(replica.State) bool) replica.State {
	x.t.Helper()
	var st replica.State
	x.waitFor(what, func() bool {
		st = x.node.State()
		return cond(st)
	})
	return st
}

// waitStatus polls the node's Status until cond holds, failing after hWait.
func (x *tnode) waitStatus(what string, cond func(status.Resource) bool) status.Resource {
	x.t.Helper()
	var st status.Resource
	x.waitFor(what, func() bool {
		st = x.node.Status()
		return cond(st)
	})
	return st
}

// waitFor polls cond on every state change and at least every few
// milliseconds (the out-of-sync counters change without a state change).
func (x *tnode) waitFor(what string, cond func() bool) {
	x.t.Helper()
	deadline := time.NewTimer(hWait)
	defer deadline.Stop()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		ch := x.node.Changed()
		if cond() {
			return
		}
		select {
		case <-ch:
		case <-tick.C:
		case <-deadline.C:
			x.t.Fatalf("%s: waiting for %s: timed out in state %+v, status %+v", x.label, what, x.node.State(), x.node.Status())
		}
	}
}

// waitConn waits for a connection state.
func (x *tnode) waitConn(c replica.ConnState) replica.State {
	x.t.Helper()
	return x.waitState("cs "+c.String(), func(s replica.State) bool { return s.Conn == c })
}

// waitSplitBrain waits until either node is StandAlone with SplitBrain set
// and returns it (the side that decided first).
func waitSplitBrain(a, b *tnode) *tnode {
	a.t.Helper()
	var first *tnode
	a.waitFor("split brain on either side", func() bool {
		for _, x := range []*tnode{a, b} {
			if st := x.node.State(); st.SplitBrain && st.Conn == replica.StandAlone {
				first = x
				return true
			}
		}
		return false
	})
	return first
}

// waitInSync waits until the node is Connected, both disks UpToDate,
// nothing is out of sync and the peer answered every request the node sent
// it (under protocol A a write returns before the peer wrote it).
func (x *tnode) waitInSync() {
	x.t.Helper()
	x.waitStatus("in sync", func(s status.Resource) bool {
		return s.ConnState == "Connected" && s.DiskState == "UpToDate" && s.PeerDisk == "UpToDate" && s.OutOfSyncKiB == 0 && s.PeerPending == 0
	})
}

// write writes p at off through the node, failing the test on error.
func (x *tnode) write(off int64, p []byte) {
	x.t.Helper()
	if err := x.node.WriteAt(context.Background(), p, off, false); err != nil {
		x.t.Fatalf("%s: WriteAt(%d, %d): %v", x.label, off, len(p), err)
	}
}

// read returns the disk file's bytes at [off, off+n), read behind the engine.
func (x *tnode) read(off int64, n int) []byte {
	x.t.Helper()
	f, err := os.Open(x.diskPath)
	if err != nil {
		x.t.Fatal(err)
	}
	defer f.Close()
	p := make([]byte, n)
	if _, err := f.ReadAt(p, off); err != nil {
		x.t.Fatal(err)
	}
	return p
}

// poke writes p into the disk file behind the engine's back.
func (x *tnode) poke(off int64, p []byte) {
	x.t.Helper()
	f, err := os.OpenFile(x.diskPath, os.O_WRONLY, 0)
	if err != nil {
		x.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(p, off); err != nil {
		x.t.Fatal(err)
	}
}

// image returns the whole disk file.
func (x *tnode) image() []byte {
	x.t.Helper()
	b, err := os.ReadFile(x.diskPath)
	if err != nil {
		x.t.Fatal(err)
	}
	return b
}

// reconnect connects x again (urbd connect) after a Disconnect or StandAlone.
func reconnect(t *testing.T, x *tnode) {
	t.Helper()
	if err := x.node.Connect(false); err != nil {
		t.Fatal(err)
	}
}

// inSyncAndEqual waits until both nodes are connected and in sync, and fails
// the test unless their disks are byte-identical.
func inSyncAndEqual(t *testing.T, a, b *tnode) {
	t.Helper()
	a.waitInSync()
	b.waitInSync()
	sameDisks(t, a, b)
}

// sameDisks fails the test unless both disk files are byte-identical.
func sameDisks(t *testing.T, a, b *tnode) {
	t.Helper()
	if d := firstDiff(a.image(), b.image()); d >= 0 {
		t.Fatalf("disks differ from offset %d (block %d)", d, d/hBlock)
	}
}

// firstDiff returns the first offset at which x and y differ, or -1.
func firstDiff(x, y []byte) int64 {
	if len(x) != len(y) {
		return int64(min(len(x), len(y)))
	}
	for off := 0; off < len(x); off += hBlock {
		end := min(off+hBlock, len(x))
		if !bytes.Equal(x[off:end], y[off:end]) {
			for i := off; i < end; i++ {
				if x[i] != y[i] {
					return int64(i)
				}
			}
		}
	}
	return -1
}

// pattern returns n bytes that depend on tag, so every write is recognisable.
func pattern(tag string, n int) []byte {
	p := make([]byte, n)
	seed := []byte(tag)
	for i := range p {
		p[i] = seed[i%len(seed)] ^ byte(i/len(seed))
	}
	return p
}

// errDiskFailed is the error of a write made to fail with testDisk.failAt.
var errDiskFailed = errors.New("injected disk failure")

// gate holds callers while closed: hold closes it, release opens it again,
// allow lets a number of waiting callers through one at a time. Each caller
// that starts waiting sends on the channel hold returned.
type gate struct {
	mu     sync.Mutex
	open   chan struct{} // nil: callers pass; closed by release
	held   chan struct{}
	tokens chan struct{} // each lets one waiting caller through
	skip   int           // while closed, this many more callers pass first
	deaf   bool          // while closed, callers ignore their context (a hung disk)
}

func (g *gate) hold() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.open, g.held, g.tokens, g.skip, g.deaf = make(chan struct{}), make(chan struct{}, 1024), make(chan struct{}, 1024), 0, false
	return g.held
}

// hang is hold for callers that wait even once their context ends, as a
// system call to a hung disk does.
func (g *gate) hang() <-chan struct{} {
	held := g.hold()
	g.mu.Lock()
	g.deaf = true
	g.mu.Unlock()
	return held
}

// holdAfter is hold once the next n callers have passed.
func (g *gate) holdAfter(n int) <-chan struct{} {
	held := g.hold()
	g.mu.Lock()
	g.skip = n
	g.mu.Unlock()
	return held
}

func (g *gate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.open != nil {
		close(g.open)
		g.open = nil
	}
}

// allow lets n more waiting callers through, in the order they wait.
func (g *gate) allow(n int) {
	g.mu.Lock()
	tokens := g.tokens
	g.mu.Unlock()
	for range n {
		tokens <- struct{}{}
	}
}

// pass returns at once while the gate is open; otherwise it reports itself
// held and waits for release, a token, or the end of ctx.
func (g *gate) pass(ctx context.Context) error {
	g.mu.Lock()
	open, held, tokens := g.open, g.held, g.tokens
	if g.deaf {
		ctx = context.Background()
	}
	if open != nil && g.skip > 0 {
		g.skip--
		open = nil
	}
	g.mu.Unlock()
	if open == nil {
		return nil
	}
	held <- struct{}{}
	select {
	case <-open:
		return nil
	case <-tokens:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// gatedFS is the real file system for metadata; while its al gate is held,
// activity-log writes wait. Once dead (the machine crashed, crashAs), every
// change fails, as the disk's do: what the node writes after the crash
// instant never reaches the metadata the next start finds.
type gatedFS struct {
	bitmap.FS
	al   gate
	dead atomic.Bool
}

func (g *gatedFS) WriteFileAtomic(path string, data []byte) error {
	if filepath.Base(path) == bitmap.ALFile {
		_ = g.al.pass(context.Background())
	}
	if g.dead.Load() {
		return fmt.Errorf("writing %s after the crash: %w", filepath.Base(path), errDiskFailed)
	}
	return g.FS.WriteFileAtomic(path, data)
}

func (g *gatedFS) MkdirAll(dir string) error {
	if g.dead.Load() {
		return fmt.Errorf("creating %s after the crash: %w", dir, errDiskFailed)
	}
	return g.FS.MkdirAll(dir)
}

func (g *gatedFS) Remove(path string) error {
	if g.dead.Load() {
		return fmt.Errorf("removing %s after the crash: %w", filepath.Base(path), errDiskFailed)
	}
	return g.FS.Remove(path)
}

// testDisk wraps the file backend: it counts Flush calls and the most that
// ran at once, and can hold WriteAt calls until released (or until the
// caller's ctx ends, as a real disk write ends when its session dies).
type testDisk struct {
	nbd.Backend

	flushes    atomic.Int64
	inFlush    atomic.Int64
	maxInFlush atomic.Int64
	writesDone atomic.Int64 // WriteAt calls that returned
	writesIn   atomic.Int64 // WriteAt calls made
	failAt     atomic.Int64 // offset+1 of the next WriteAt to fail with errDiskFailed; 0 = none
	fuaWrites  atomic.Int64 // WriteAt and WriteZeroes calls with fua set
	failFlush  atomic.Bool  // the next Flush fails with errDiskFailed
	badMu      sync.Mutex
	badOff     int64        // guarded by badMu: reads touching [badOff, badOff+badLen) fail
	badLen     int64        // guarded by badMu; 0 = no bad range
	readErrors atomic.Int64 // ReadAt calls failed for the bad range
	doneAtSync atomic.Int64 // writesDone when the last Flush started
	writeGate  gate         // held: writes wait
	flushGate  gate         // held: flushes wait
	readGate   gate         // held: reads wait

	dead atomic.Bool // the machine crashed (crashAs): every later call fails

	// volatile: the disk remembers what each write overwrote until a
	// Flush that started after the write returned succeeds, so powerLoss
	// can take back what a power cut would (the page cache).
	volatile bool
	undoMu   sync.Mutex
	undo     []*undoEntry // oldest first
}

// undoEntry is what one write overwrote.
type undoEntry struct {
	off  int64
	old  []byte
	done bool // the write returned; guarded by undoMu
}

// remember records what [off, off+n) holds before a write to it, and
// returns the function to call when that write returned, saying whether it
// is durable already (a successful FUA write).
func (d *testDisk) remember(ctx context.Context, off int64, n int) (settle func(durable bool), err error) {
	if !d.volatile {
		return func(bool) {}, nil
	}
	e := &undoEntry{off: off, old: make([]byte, n)}
	if err := d.Backend.ReadAt(ctx, e.old, off); err != nil {
		return nil, fmt.Errorf("test disk: reading what a write at %d overwrites: %w", off, err)
	}
	d.undoMu.Lock()
	d.undo = append(d.undo, e)
	d.undoMu.Unlock()
	return func(durable bool) {
		d.undoMu.Lock()
		defer d.undoMu.Unlock()
		e.done = true
		if durable {
			d.undo = slices.DeleteFunc(d.undo, func(x *undoEntry) bool { return x == e })
		}
	}, nil
}

// durable returns the writes a Flush starting now covers; made forgets them
// once that Flush succeeded.
func (d *testDisk) durable() (made func()) {
	d.undoMu.Lock()
	covered := map[*undoEntry]bool{}
	for _, e := range d.undo {
		if e.done {
			covered[e] = true
		}
	}
	d.undoMu.Unlock()
	return func() {
		d.undoMu.Lock()
		d.undo = slices.DeleteFunc(d.undo, func(e *undoEntry) bool { return covered[e] })
		d.undoMu.Unlock()
	}
}

// revertUnflushed takes back from img, newest first, every write no
// successful Flush covered.
func (d *testDisk) revertUnflushed(img []byte) {
	d.undoMu.Lock()
	defer d.undoMu.Unlock()
	for i := len(d.undo) - 1; i >= 0; i-- {
		e := d.undo[i]
		copy(img[e.off:], e.old)
	}
}

// holdWrites makes later WriteAt calls wait (for allowWrites or
// releaseWrites); each waiting write sends on the returned channel.
func (d *testDisk) holdWrites() <-chan struct{} { return d.writeGate.hold() }

// hangWrites is holdWrites for writes that do not end with their context:
// the disk hangs until releaseWrites.
func (d *testDisk) hangWrites() <-chan struct{} { return d.writeGate.hang() }

// allowWrites lets n more held writes through, in the order they wait.
func (d *testDisk) allowWrites(n int) { d.writeGate.allow(n) }

// holdWritesAfter is holdWrites after the next n writes have passed.
func (d *testDisk) holdWritesAfter(n int) <-chan struct{} { return d.writeGate.holdAfter(n) }

// releaseWrites lets held and later writes through.
func (d *testDisk) releaseWrites() { d.writeGate.release() }

// holdFlushes makes later Flush calls wait; each waiting flush sends on the
// returned channel.
func (d *testDisk) holdFlushes() <-chan struct{} { return d.flushGate.hold() }

// hangFlushes is holdFlushes for flushes that do not end with their
// context (a hung disk).
func (d *testDisk) hangFlushes() <-chan struct{} { return d.flushGate.hang() }

// hangReads makes later ReadAt calls wait, whatever their context, until
// releaseReads; each waiting read sends on the returned channel.
func (d *testDisk) hangReads() <-chan struct{} { return d.readGate.hang() }

func (d *testDisk) releaseReads() { d.readGate.release() }

// releaseFlushes lets held and later flushes through.
func (d *testDisk) releaseFlushes() { d.flushGate.release() }

// setBad makes reads touching [off, off+length) fail with errDiskFailed, as
// from unreadable sectors, until a write covers the whole range (a disk
// remaps bad sectors when they are written).
func (d *testDisk) setBad(off, length int64) {
	d.badMu.Lock()
	d.badOff, d.badLen = off, length
	d.badMu.Unlock()
}

func (d *testDisk) isBad() bool {
	d.badMu.Lock()
	defer d.badMu.Unlock()
	return d.badLen > 0
}

func (d *testDisk) ReadAt(ctx context.Context, p []byte, off int64) error {
	d.badMu.Lock()
	bad := d.badLen > 0 && off < d.badOff+d.badLen && d.badOff < off+int64(len(p))
	d.badMu.Unlock()
	if bad {
		d.readErrors.Add(1)
		return fmt.Errorf("read at %d: %w", off, errDiskFailed)
	}
	if err := d.readGate.pass(ctx); err != nil {
		return err
	}
	return d.Backend.ReadAt(ctx, p, off)
}

func (d *testDisk) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	d.writesIn.Add(1)
	d.badMu.Lock()
	if d.badLen > 0 && off <= d.badOff && d.badOff+d.badLen <= off+int64(len(p)) {
		d.badLen = 0
	}
	d.badMu.Unlock()
	if f := d.failAt.Load(); f == off+1 && d.failAt.CompareAndSwap(f, 0) {
		return fmt.Errorf("write at %d: %w", off, errDiskFailed)
	}
	if err := d.writeGate.pass(ctx); err != nil {
		return fmt.Errorf("held write at %d: %w", off, err)
	}
	if d.dead.Load() {
		return fmt.Errorf("write at %d after the crash: %w", off, errDiskFailed)
	}
	defer d.writesDone.Add(1)
	if fua {
		d.fuaWrites.Add(1)
	}
	settle, err := d.remember(ctx, off, len(p))
	if err != nil {
		return err
	}
	err = d.Backend.WriteAt(ctx, p, off, fua)
	return d.settle(settle, fua, err, "write", off)
}

// settle ends a write: a write that returns after the crash instant never
// completed for the node, even if it reached the file (powerLoss takes it
// back).
func (d *testDisk) settle(settle func(bool), fua bool, err error, what string, off int64) error {
	if err == nil && d.dead.Load() {
		err = fmt.Errorf("%s at %d ended after the crash: %w", what, off, errDiskFailed)
	}
	settle(fua && err == nil)
	return err
}

// WriteZeroes is a write to the disk as WriteAt is: failAt, the write gate
// and the crash apply to it too.
func (d *testDisk) WriteZeroes(ctx context.Context, off, length int64, fua, noHole bool) error {
	if f := d.failAt.Load(); f == off+1 && d.failAt.CompareAndSwap(f, 0) {
		return fmt.Errorf("zeroing at %d: %w", off, errDiskFailed)
	}
	if err := d.writeGate.pass(ctx); err != nil {
		return fmt.Errorf("held zeroing at %d: %w", off, err)
	}
	if fua {
		d.fuaWrites.Add(1)
	}
	if d.dead.Load() {
		return fmt.Errorf("zeroing at %d after the crash: %w", off, errDiskFailed)
	}
	defer d.writesDone.Add(1)
	settle, err := d.remember(ctx, off, int(length))
	if err != nil {
		return err
	}
	err = d.Backend.WriteZeroes(ctx, off, length, fua, noHole)
	return d.settle(settle, fua, err, "zeroing", off)
}

func (d *testDisk) Trim(ctx context.Context, off, length int64, fua bool) error {
	if d.dead.Load() {
		return fmt.Errorf("trim at %d after the crash: %w", off, errDiskFailed)
	}
	settle, err := d.remember(ctx, off, int(length))
	if err != nil {
		return err
	}
	err = d.Backend.Trim(ctx, off, length, fua)
	return d.settle(settle, fua, err, "trim", off)
}

func (d *testDisk) Flush(ctx context.Context) error {
	d.doneAtSync.Store(d.writesDone.Load())
	made := d.durable()
	d.flushes.Add(1)
	cur := d.inFlush.Add(1)
	defer d.inFlush.Add(-1)
	for {
		m := d.maxInFlush.Load()
		if cur <= m || d.maxInFlush.CompareAndSwap(m, cur) {
			break
		}
	}
	if err := d.flushGate.pass(ctx); err != nil {
		return err
	}
	if d.failFlush.CompareAndSwap(true, false) {
		return fmt.Errorf("flush: %w", errDiskFailed)
	}
	if err := d.Backend.Flush(ctx); err != nil {
		return err
	}
	if d.dead.Load() {
		return fmt.Errorf("flush after the crash: %w", errDiskFailed)
	}
	made()
	return nil
}

// heldClock is a resync.Clock whose time stands still: a rate-limited
// resync on it waits until the rate is lifted (Node.AdjustRate(0)).
type heldClock struct{ now time.Time }

func (c heldClock) Now() time.Time                       { return c.now }
func (c heldClock) After(time.Duration) <-chan time.Time { return make(chan time.Time) }

// asyncWrite starts a WriteAt in the background; the channel receives its result.
func (x *tnode) asyncWrite(off int64, p []byte) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- x.node.WriteAt(context.Background(), p, off, false) }()
	return ch
}

// recvErr waits for an async result with the harness deadline.
func recvErr(t *testing.T, what string, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(hWait):
		t.Fatalf("%s did not return", what)
		return nil
	}
}

// crash simulates kill -9 of an idle node: it captures the disk and the
// metadata files as they are now (what a killed process leaves: completed
// writes are in the page cache, each metadata file is the last one renamed
// into place), stops the node, and puts the captured files back, so the
// clean shutdown never happened. Call it with no request in flight.
func (x *tnode) crash() {
	x.t.Helper()
	x.crashAs(false)
}

// powerLoss is crash for the whole machine: the disk also loses every write
// that no successful Flush covered, as the page cache is lost in a power
// cut. The node must run with nodeOpts.volatile.
func (x *tnode) powerLoss() {
	x.t.Helper()
	if !x.opts.volatile {
		x.t.Fatalf("%s: powerLoss needs nodeOpts.volatile", x.label)
	}
	x.crashAs(true)
}

func (x *tnode) crashAs(powerCut bool) {
	t := x.t
	t.Helper()
	x.disk.dead.Store(true)
	x.metaFS.dead.Store(true)
	disk := x.image()
	if powerCut {
		x.disk.revertUnflushed(disk)
	}
	entries, err := os.ReadDir(x.metaDir)
	if err != nil {
		t.Fatal(err)
	}
	meta := map[string][]byte{}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(x.metaDir, e.Name()))
		if errors.Is(err, os.ErrNotExist) {
			continue // a temp file renamed into place meanwhile: a crash may lose it
		}
		if err != nil {
			t.Fatal(err)
		}
		meta[e.Name()] = b
	}
	// Whatever the node does from here on is lost with the machine: let
	// held calls fail, and ignore how its shutdown ends.
	x.disk.releaseWrites()
	x.disk.releaseFlushes()
	x.halt(false)
	if err := os.WriteFile(x.diskPath, disk, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(x.metaDir); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(x.metaDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range meta {
		if err := os.WriteFile(filepath.Join(x.metaDir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// startProxy starts a link between this node and the peer at target that
// the test can cut or reset (testnet.Proxy), closed when the test ends.
func startProxy(t *testing.T, target string) *testnet.Proxy {
	t.Helper()
	p, err := testnet.StartProxy(target, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// StorageSize and Grow pass nbd.Grower through to the file, so the node
// can grow online (Node.Resize).
func (d *testDisk) StorageSize() (int64, error) { return d.Backend.(nbd.Grower).StorageSize() }

// HasData is the file's (nbd.File.HasData): the resync skips holes. A
// range made unreadable (setBad) holds data, which the disk fails to read.
func (d *testDisk) HasData(off, length int64) bool {
	d.badMu.Lock()
	bad := d.badLen > 0 && off < d.badOff+d.badLen && d.badOff < off+length
	d.badMu.Unlock()
	h, ok := d.Backend.(interface{ HasData(off, length int64) bool })
	return bad || !ok || h.HasData(off, length)
}
func (d *testDisk) Grow(size int64) error { return d.Backend.(nbd.Grower).Grow(size) }

// growFile extends x's disk file to size bytes behind the engine (lvextend).
func (x *tnode) growFile(size int64) {
	x.t.Helper()
	if err := os.Truncate(x.diskPath, size); err != nil {
		x.t.Fatal(err)
	}
}
