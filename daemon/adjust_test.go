package daemon

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/urbd/urbd/replica"
)

// fakeResource is what an adjuster drives, recorded.
type fakeResource struct {
	protos   []byte
	rates    []int64
	suspend  []bool
	timeouts []time.Duration
	koCounts []int
	diskTOs  []time.Duration
	onIOErr  []replica.OnIOError
	afterSB  []replica.AfterSplitBrain
	fencing  []replica.Fencing
	csums    []bool
	balance  []replica.ReadBalancing
	congest  []replica.Congestion
	autoPro  []bool
	links    []replica.Link
	handlers []map[string]string
	secret   string // the secret file's contents, as the fake loadLink reads them
	linkErr  error  // what setLink returns
	metrics  *metricsServer
	nbdErr   error          // what listenNBD returns
	nbds     []net.Listener // the NBD listeners used, in order
}

// fakeListener is an NBD listener that accepts nothing.
type fakeListener struct{ net.Listener }

func (fakeListener) Close() error { return nil }

// load is the fake loadLink: the secret file is read as f.secret, and
// "/missing" does not read.
func (f *fakeResource) load(o Options) (peerLink, error) {
	if o.SecretFile == "/missing" {
		return peerLink{}, errors.New("reading --secret-file: open /missing: no such file or directory")
	}
	return peerLink{Link: replica.Link{ListenPeer: o.ListenPeer, Peer: o.Peer}, files: sha256.Sum256([]byte(o.SecretFile + "\x00" + f.secret))}, nil
}

func newAdjuster(cur Options, reload func() (Options, error)) (*adjuster, *fakeResource) {
	f := &fakeResource{}
	f.metrics = &metricsServer{reg: prometheus.NewRegistry(), log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	link, _ := f.load(cur)
	return &adjuster{
		listenMetrics: func(addr string) (net.Listener, error) { return f.metrics.listen(context.Background(), addr) },
		useMetrics:    func(ln net.Listener) { f.metrics.use(context.Background(), ln) },
		listenNBD: func(string) (net.Listener, error) {
			if f.nbdErr != nil {
				return nil, f.nbdErr
			}
			return fakeListener{}, nil
		},
		useNBD: func(ln net.Listener) { f.nbds = append(f.nbds, ln) },
		setLink: func(l replica.Link) error {
			if f.linkErr != nil {
				return f.linkErr
			}
			f.links = append(f.links, l)
			return nil
		},
		loadLink:       f.load,
		link:           link,
		setProtocol:    func(p byte) error { f.protos = append(f.protos, p); return nil },
		setRate:        func(r int64) { f.rates = append(f.rates, r) },
		setOnPeerLoss:  func(s bool) { f.suspend = append(f.suspend, s) },
		setTimeout:     func(d time.Duration) error { f.timeouts = append(f.timeouts, d); return nil },
		setKoCount:     func(n int) error { f.koCounts = append(f.koCounts, n); return nil },
		setDiskTimeout: func(d time.Duration) error { f.diskTOs = append(f.diskTOs, d); return nil },
		setOnIOError:   func(p replica.OnIOError) { f.onIOErr = append(f.onIOErr, p) },
		setAfterSB:     func(p replica.AfterSplitBrain) { f.afterSB = append(f.afterSB, p) },
		setFencing:     func(p replica.Fencing) { f.fencing = append(f.fencing, p) },
		setCsums:       func(on bool) { f.csums = append(f.csums, on) },
		setBalance:     func(b replica.ReadBalancing) { f.balance = append(f.balance, b) },
		setCongestion:  func(c replica.Congestion) error { f.congest = append(f.congest, c); return nil },
		setAutoPromote: func(on bool) { f.autoPro = append(f.autoPro, on) },
		setHandlers:    func(h map[string]string) { f.handlers = append(f.handlers, maps.Clone(h)) },
		reload:         reload,
		log:            slog.New(slog.NewTextHandler(io.Discard, nil)),
		cur:            cur,
	}, f
}

func baseOptions() Options {
	return Options{
		Name: "r0", Disk: "/dev/vdb", Meta: "/var/lib/urbd/r0", NBD: "unix:/run/urbd/r0.nbd",
		ListenPeer: "10.0.0.1:7789", Peer: "10.0.0.2:7789", Protocol: 'C', ResyncRate: 100 << 20,
		Timeout: 6 * time.Second, KoCount: 7, OnPeerLoss: "continue", BitmapBlock: 4096,
		Handlers: map[string]string{"peer-lost": "logger lost"},
	}
}

// TestAdjustFromFile: a new protocol, resync rate, timeout, on-peer-loss,
// on-io-error, after-sb policy and new handlers apply; the settings a
// running resource keeps are named; a second adjust finds nothing left to
// apply.
func TestAdjustFromFile(t *testing.T) {
	next := baseOptions()
	next.ResyncRate = 20 << 20
	next.OnPeerLoss = "suspend"
	next.Handlers = map[string]string{"peer-lost": "logger gone", "demoted": "touch /tmp/d"}
	next.Protocol = 'B'
	next.Timeout = 3 * time.Second
	next.OnIOError = "pass-on"
	next.AfterSB0Pri = "discard-zero-changes"
	next.ALExtents = 3389
	a, f := newAdjuster(baseOptions(), func() (Options, error) { return next, nil })

	msg, err := a.fromFile()
	if err != nil {
		t.Fatal(err)
	}
	want := "protocol set to B; resync rate set to 20MiB/s; timeout set to 3s (from the next connection on); on-peer-loss set to suspend; " +
		"on-io-error set to pass_on; after-sb-0pri set to discard-zero-changes (from the next connection on; the peer needs the same); " +
		"handlers replaced (demoted added, peer-lost changed); " +
		"changed, and applied at the next start (urbd down, then urbd up): al-extents"
	if msg != want {
		t.Errorf("adjust:\n got %q\nwant %q", msg, want)
	}
	if string(f.protos) != "B" {
		t.Errorf("protocols set: %q, want B", f.protos)
	}
	if len(f.rates) != 1 || f.rates[0] != 20<<20 {
		t.Errorf("rates set: %v, want [20 MiB]", f.rates)
	}
	if len(f.suspend) != 1 || !f.suspend[0] {
		t.Errorf("on-peer-loss set: %v, want [suspend]", f.suspend)
	}
	if len(f.handlers) != 1 || !maps.Equal(f.handlers[0], next.Handlers) {
		t.Errorf("handlers set: %v, want %v", f.handlers, next.Handlers)
	}
	if len(f.timeouts) != 1 || f.timeouts[0] != 3*time.Second {
		t.Errorf("timeouts set: %v, want [3s]", f.timeouts)
	}
	if len(f.onIOErr) != 1 || f.onIOErr[0] != replica.IOPassOn {
		t.Errorf("on-io-error set: %v, want [pass_on]", f.onIOErr)
	}
	if want := (replica.AfterSplitBrain{NoPrimary: replica.SB0DiscardZeroChanges}); len(f.afterSB) != 1 || f.afterSB[0] != want {
		t.Errorf("after-sb set: %v, want [%v]", f.afterSB, want)
	}

	msg, err = a.fromFile()
	if err != nil {
		t.Fatal(err)
	}
	if want := "no live setting changed; " +
		"changed, and applied at the next start (urbd down, then urbd up): al-extents"; msg != want {
		t.Errorf("second adjust:\n got %q\nwant %q", msg, want)
	}
	if len(f.protos) != 1 || len(f.rates) != 1 || len(f.suspend) != 1 || len(f.handlers) != 1 ||
		len(f.timeouts) != 1 || len(f.onIOErr) != 1 || len(f.afterSB) != 1 {
		t.Errorf("second adjust applied again: protocols %q, rates %v, on-peer-loss %v, handlers %v, timeouts %v, on-io-error %v, after-sb %v",
			f.protos, f.rates, f.suspend, f.handlers, f.timeouts, f.onIOErr, f.afterSB)
	}
}

// TestAdjustFlagsThenFile: settings given as flags last until the next
// adjust from the file, which sets the file's values again; a bad value
// changes nothing.
func TestAdjustFlagsThenFile(t *testing.T) {
	a, f := newAdjuster(baseOptions(), func() (Options, error) { return baseOptions(), nil })
	msg, err := a.set(map[string]string{"resync-rate": "0", "on-peer-loss": "suspend", "protocol": "a"})
	if err != nil {
		t.Fatal(err)
	}
	if msg != "protocol set to A; resync rate set to unlimited; on-peer-loss set to suspend" {
		t.Errorf("adjust with flags: %q", msg)
	}
	msg, err = a.set(map[string]string{"timeout": "10s", "ko-count": "2", "disk-timeout": "30s", "on-io-error": "pass-on", "after-sb-1pri": "consensus"})
	if err != nil {
		t.Fatal(err)
	}
	if msg != "timeout set to 10s (from the next connection on); ko-count set to 2; disk-timeout set to 30s; on-io-error set to pass_on; "+
		"after-sb-1pri set to consensus (from the next connection on; the peer needs the same)" {
		t.Errorf("adjust with flags: %q", msg)
	}
	for _, c := range []struct {
		settings map[string]string
		want     string // in the error
	}{
		{map[string]string{"resync-rate": "fast"}, "--resync-rate: "},
		{map[string]string{"on-peer-loss": "panic"}, `--on-peer-loss "panic": use continue or suspend`},
		{map[string]string{"protocol": "D"}, `--protocol "D"`},
		{map[string]string{"timeout": "0s"}, "--timeout 0s: use a positive duration, e.g. 6s"},
		{map[string]string{"timeout": "soon"}, `--timeout "soon": use a duration such as 6s`},
		{map[string]string{"on-io-error": "panic"}, `--on-io-error: unknown on-io-error policy "panic"`},
		{map[string]string{"ko-count": "-1"}, "--ko-count -1: use 0 (never drop a peer that answers pings) to 200; default 7"},
		{map[string]string{"ko-count": "many"}, `--ko-count "many": use a whole number such as 7`},
		{map[string]string{"disk-timeout": "-1s"}, `--disk-timeout -1s: use a duration such as 30s, or 0 for off`},
		{map[string]string{"disk-timeout": "soon"}, `--disk-timeout "soon": use a duration such as 30s, or 0 for off`},
		{map[string]string{"after-sb-0pri": "x", "resync-rate": "1MiB"}, `--after-sb-0pri: unknown after-sb-0pri policy "x"`},
		{map[string]string{"bitmap-block": "8KiB"}, "bitmap-block cannot change while the resource runs"},
		{map[string]string{"fencing": "resource-only"}, "fencing resource-only needs a fence-peer handler: add one to the resource file (handlers) and run urbd adjust r0"},
		{map[string]string{"fencing": "sometimes"}, `--fencing: `},
		{map[string]string{"resync-rate": "1MiB", "on-peer-loss": "x"}, `--on-peer-loss "x"`},
		{map[string]string{"protocol": "B", "resync-rate": "x"}, "--resync-rate: "},
	} {
		if _, err := a.set(c.settings); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("adjust %v: %v, want an error with %q", c.settings, err, c.want)
		}
	}
	msg, err = a.fromFile()
	if err != nil {
		t.Fatal(err)
	}
	if msg != "protocol set to C; resync rate set to 100MiB/s; timeout set to 6s (from the next connection on); ko-count set to 7; disk-timeout set to 0 (off); on-peer-loss set to continue; "+
		"on-io-error set to detach; after-sb-1pri set to disconnect (from the next connection on; the peer needs the same)" {
		t.Errorf("adjust from the file after flags: %q", msg)
	}
	if len(f.timeouts) != 2 || f.timeouts[1] != 6*time.Second || len(f.onIOErr) != 2 || f.onIOErr[1] != replica.IODetach ||
		len(f.afterSB) != 2 || f.afterSB[1] != (replica.AfterSplitBrain{}) {
		t.Errorf("the file's values not set again: timeouts %v, on-io-error %v, after-sb %v", f.timeouts, f.onIOErr, f.afterSB)
	}
	if !slices.Equal(f.koCounts, []int{2, 7}) {
		t.Errorf("ko-counts set: %v, want [2 7]", f.koCounts)
	}
	if !slices.Equal(f.diskTOs, []time.Duration{30 * time.Second, 0}) {
		t.Errorf("disk-timeouts set: %v, want [30s 0]", f.diskTOs)
	}
	if string(f.protos) != "AC" {
		t.Errorf("protocols set: %q, want A then C", f.protos)
	}
	if len(f.rates) != 2 || f.rates[0] != 0 || f.rates[1] != 100<<20 {
		t.Errorf("rates set: %v, want [0 100 MiB]", f.rates)
	}
	if len(f.suspend) != 2 || !f.suspend[0] || f.suspend[1] {
		t.Errorf("on-peer-loss set: %v, want [suspend continue]", f.suspend)
	}
}

// TestAdjustFencing: fencing turned on with a fence-peer handler applies
// (from the next peer loss on), and off again; a flag turning it on while
// no handler is configured is refused and changes nothing.
func TestAdjustFencing(t *testing.T) {
	var next Options
	a, f := newAdjuster(baseOptions(), func() (Options, error) { return next, nil })
	if _, err := a.set(map[string]string{"fencing": "resource-and-stonith", "resync-rate": "1MiB"}); err == nil {
		t.Fatal("fencing without a fence-peer handler accepted")
	}
	next = baseOptions()
	next.Fencing = "resource-and-stonith"
	next.Handlers = map[string]string{"peer-lost": "logger lost", "fence-peer": "/usr/local/sbin/fence"}
	msg, err := a.fromFile()
	if err != nil {
		t.Fatal(err)
	}
	if msg != "fencing set to resource-and-stonith (from the next peer loss on); handlers replaced (fence-peer added)" {
		t.Errorf("fencing turned on: %q", msg)
	}
	if msg, err := a.set(map[string]string{"fencing": "resource-only"}); err != nil || msg != "fencing set to resource-only (from the next peer loss on)" {
		t.Errorf("fencing changed by a flag: %q, %v", msg, err)
	}
	next = baseOptions()
	if msg, err := a.fromFile(); err != nil || msg != "fencing set to dont-care (from the next peer loss on); handlers replaced (fence-peer removed)" {
		t.Errorf("fencing turned off: %q, %v", msg, err)
	}
	want := []replica.Fencing{replica.FenceResourceAndStonith, replica.FenceResourceOnly, replica.FenceDontCare}
	if !slices.Equal(f.fencing, want) || len(f.rates) != 0 {
		t.Errorf("fencing set: %v (rates %v), want %v and no rate", f.fencing, f.rates, want)
	}
}

// TestAdjustLink: new addresses, and a secret replaced under the same file
// name, are handed to the node (from the next connection on) before the
// other settings; a listen address the node cannot open, or a secret file
// that does not read, changes nothing.
func TestAdjustLink(t *testing.T) {
	next := baseOptions()
	a, f := newAdjuster(baseOptions(), func() (Options, error) { return next, nil })
	next.Peer = "10.0.0.3:7789"
	next.ResyncRate = 1 << 20
	msg, err := a.fromFile()
	if err != nil {
		t.Fatal(err)
	}
	if msg != "peer address set to 10.0.0.3:7789 (from the next connection on); resync rate set to 1MiB/s" {
		t.Errorf("new peer address: %q", msg)
	}
	if len(f.links) != 1 || f.links[0].Peer != "10.0.0.3:7789" || f.links[0].ListenPeer != "10.0.0.1:7789" {
		t.Errorf("links set: %+v", f.links)
	}

	f.secret = "a new secret"
	if msg, err := a.fromFile(); err != nil || msg != "secret and TLS files read again (from the next connection on)" {
		t.Errorf("secret replaced: %q, %v", msg, err)
	}
	if msg, err := a.fromFile(); err != nil || msg != "no live setting changed" {
		t.Errorf("nothing new: %q, %v", msg, err)
	}

	defer func(c func(string) error) { checkCongestion = c }(checkCongestion)
	checkCongestion = func(name string) error {
		if name != "reno" {
			return errors.New("tcp-congestion " + name + ": not allowed for this process")
		}
		return nil
	}
	next.TCPCongestion = "bbr"
	if _, err := a.fromFile(); err == nil || err.Error() != "nothing changed: --tcp-congestion bbr: not allowed for this process" {
		t.Errorf("a congestion control this process may not use: %v", err)
	}
	next.TCPCongestion = "reno"
	if msg, err := a.fromFile(); err != nil || msg != "tcp-congestion set to reno (from the next connection on)" {
		t.Errorf("new congestion control: %q, %v", msg, err)
	}
	if l := f.links[len(f.links)-1]; l.Congestion != "reno" || a.congestion != "reno" {
		t.Errorf("link set %+v, shown %q; want reno", l, a.congestion)
	}

	f.linkErr = errors.New("replica: listening for the peer on 10.0.0.1:7790: bind: address already in use")
	next.ListenPeer = "10.0.0.1:7790"
	next.ResyncRate = 2 << 20
	if _, err := a.fromFile(); err == nil || err.Error() != "nothing changed: "+f.linkErr.Error() {
		t.Errorf("listen address in use: %v", err)
	}
	next.SecretFile = "/missing"
	if _, err := a.fromFile(); err == nil || !strings.HasPrefix(err.Error(), "nothing changed: reading --secret-file") {
		t.Errorf("secret file missing: %v", err)
	}
	if len(f.links) != 3 || len(f.rates) != 1 || a.cur.ListenPeer != "10.0.0.1:7789" {
		t.Errorf("a refused adjust changed something: links %+v, rates %v, address %s", f.links, f.rates, a.cur.ListenPeer)
	}
}

// TestAdjustCsumsAlg: csums-alg changes live, from the flag and from the
// file; a value other than sha256 or none changes nothing.
func TestAdjustCsumsAlg(t *testing.T) {
	next := baseOptions()
	a, f := newAdjuster(baseOptions(), func() (Options, error) { return next, nil })
	if msg, err := a.set(map[string]string{"csums-alg": "sha256"}); err != nil || msg != "csums-alg set to sha256 (from the next resync on)" {
		t.Errorf("adjust --csums-alg sha256: %q, %v", msg, err)
	}
	if _, err := a.set(map[string]string{"csums-alg": "md5"}); err == nil || !strings.Contains(err.Error(), `csums-alg "md5": use sha256 or none`) {
		t.Errorf("adjust --csums-alg md5: %v, want a refusal", err)
	}
	if msg, err := a.fromFile(); err != nil || msg != "csums-alg set to none (from the next resync on)" {
		t.Errorf("adjust from a file without csums-alg: %q, %v", msg, err)
	}
	if !slices.Equal(f.csums, []bool{true, false}) {
		t.Errorf("the node was told %v, want [true false]", f.csums)
	}
	settings, _ := a.show()
	if !slices.Contains(settings, Setting{"csums-alg", "none"}) {
		t.Errorf("show after the adjustments: %v, want csums-alg none", settings)
	}
}

// TestAdjustReadBalancing: read-balancing changes live, from the flag (in
// any case) and from the file; a name that is no policy changes nothing;
// show spells the policy as DRBD does.
func TestAdjustReadBalancing(t *testing.T) {
	next := baseOptions()
	next.ReadBalancing = "least-pending"
	a, f := newAdjuster(baseOptions(), func() (Options, error) { return next, nil })
	if msg, err := a.set(map[string]string{"read-balancing": "64k-striping"}); err != nil || msg != "read-balancing set to 64K-striping" {
		t.Errorf("adjust --read-balancing 64k-striping: %q, %v", msg, err)
	}
	if settings, _ := a.show(); !slices.Contains(settings, Setting{"read-balancing", "64K-striping"}) {
		t.Errorf("show after the flag: %v, want read-balancing 64K-striping", settings)
	}
	if _, err := a.set(map[string]string{"read-balancing": "nearest"}); err == nil || !strings.Contains(err.Error(), `--read-balancing: unknown read-balancing policy "nearest": use prefer-local, prefer-remote,`) {
		t.Errorf("adjust --read-balancing nearest: %v, want a refusal", err)
	}
	if msg, err := a.fromFile(); err != nil || msg != "read-balancing set to least-pending" {
		t.Errorf("adjust from a file with least-pending: %q, %v", msg, err)
	}
	if want := []replica.ReadBalancing{replica.Read64KStriping, replica.ReadLeastPending}; !slices.Equal(f.balance, want) {
		t.Errorf("the node was told %v, want %v", f.balance, want)
	}
	b, _ := newAdjuster(baseOptions(), nil)
	if settings, _ := b.show(); !slices.Contains(settings, Setting{"read-balancing", "prefer-local"}) {
		t.Errorf("show without a setting: %v, want read-balancing prefer-local", settings)
	}
}

// TestAdjustOnCongestion: on-congestion and its thresholds change live, by
// flag (any case, sizes as urbd up takes them) and from the file; a bad
// policy or count is refused and changes nothing; show lists all three.
func TestAdjustOnCongestion(t *testing.T) {
	start := baseOptions()
	start.CongestionFill, start.CongestionExtents = 12<<20, 1237
	next := start
	next.OnCongestion, next.CongestionFill = "disconnect", 0
	a, f := newAdjuster(start, func() (Options, error) { return next, nil })
	if settings, _ := a.show(); !slices.Contains(settings, Setting{"on-congestion", "block"}) || !slices.Contains(settings, Setting{"congestion-fill", "12MiB"}) {
		t.Errorf("show at start: %v, want on-congestion block and congestion-fill 12MiB", settings)
	}
	msg, err := a.set(map[string]string{"on-congestion": "Pull-Ahead", "congestion-fill": "4MiB"})
	if err != nil || msg != "on-congestion set to pull-ahead (congestion-fill 4MiB, congestion-extents 1237)" {
		t.Errorf("adjust --on-congestion Pull-Ahead --congestion-fill 4MiB: %q, %v", msg, err)
	}
	for _, bad := range []map[string]string{{"on-congestion": "ahead"}, {"congestion-extents": "-1"}, {"congestion-extents": "many"}, {"congestion-fill": "lots"}} {
		if _, err := a.set(bad); err == nil {
			t.Errorf("adjust %v was accepted", bad)
		}
	}
	if msg, err := a.fromFile(); err != nil || msg != "on-congestion set to disconnect (congestion-fill 0 (off), congestion-extents 1237)" {
		t.Errorf("adjust from a file with disconnect: %q, %v", msg, err)
	}
	want := []replica.Congestion{
		{Policy: replica.CongestionPullAhead, Fill: 4 << 20, Extents: 1237},
		{Policy: replica.CongestionDisconnect, Fill: 0, Extents: 1237},
	}
	if !slices.Equal(f.congest, want) {
		t.Errorf("the node was told %+v, want %+v", f.congest, want)
	}
	if settings, _ := a.show(); !slices.Contains(settings, Setting{"congestion-fill", "0 (off)"}) || !slices.Contains(settings, Setting{"congestion-extents", "1237"}) {
		t.Errorf("show after the file: %v", settings)
	}
}

// TestAdjustAutoPromote: auto-promote changes live, from the command line
// or the file, shows as yes or no, and a bad value changes nothing.
func TestAdjustAutoPromote(t *testing.T) {
	start := baseOptions()
	next := start
	next.AutoPromote = "no"
	a, f := newAdjuster(start, func() (Options, error) { return next, nil })
	if settings, _ := a.show(); !slices.Contains(settings, Setting{"auto-promote", "no"}) {
		t.Errorf("show at start: %v, want auto-promote no", settings)
	}
	if msg, err := a.set(map[string]string{"auto-promote": "Yes"}); err != nil || msg != "auto-promote set to yes (from the next NBD client on)" {
		t.Errorf("adjust --auto-promote Yes: %q, %v", msg, err)
	}
	if settings, _ := a.show(); !slices.Contains(settings, Setting{"auto-promote", "yes"}) {
		t.Errorf("show after adjust: %v, want auto-promote yes", settings)
	}
	if _, err := a.set(map[string]string{"auto-promote": "maybe"}); err == nil || !strings.Contains(err.Error(), `auto-promote "maybe": use yes or no`) {
		t.Errorf("adjust --auto-promote maybe: %v", err)
	}
	if msg, err := a.fromFile(); err != nil || msg != "auto-promote set to no (from the next NBD client on)" {
		t.Errorf("adjust from a file with auto-promote no: %q, %v", msg, err)
	}
	if want := []bool{true, false}; !slices.Equal(f.autoPro, want) {
		t.Errorf("the node was told %v, want %v", f.autoPro, want)
	}
}

// TestAdjustRefusals: without a resource file, with one that does not read,
// and with one that drops the fence-peer handler fencing needs, adjust
// changes nothing and says why.
func TestAdjustRefusals(t *testing.T) {
	a, f := newAdjuster(baseOptions(), nil)
	if _, err := a.fromFile(); err == nil || !strings.Contains(err.Error(), "urbd adjust --resync-rate 200MiB r0") {
		t.Errorf("without a resource file: %v", err)
	}

	a, f = newAdjuster(baseOptions(), func() (Options, error) {
		return Options{}, errors.New("urbd.toml:3: unknown key \"protocl\"")
	})
	if _, err := a.fromFile(); err == nil || err.Error() != `nothing changed: urbd.toml:3: unknown key "protocl"` {
		t.Errorf("unreadable file: %v", err)
	}

	fenced := baseOptions()
	fenced.Fencing = "resource-only"
	fenced.Handlers = map[string]string{"fence-peer": "/usr/local/sbin/urbd-fence-peer"}
	next := fenced
	next.ResyncRate = 1 << 20
	next.Handlers = map[string]string{"peer-lost": "logger lost"}
	a, f = newAdjuster(fenced, func() (Options, error) { return next, nil })
	if _, err := a.fromFile(); err == nil || !strings.Contains(err.Error(), "fencing resource-only needs a fence-peer handler") {
		t.Errorf("fence-peer handler dropped: %v", err)
	}
	if len(f.rates) != 0 || len(f.handlers) != 0 {
		t.Errorf("a refused adjust applied something: rates %v, handlers %v", f.rates, f.handlers)
	}
}

// TestRestartOnlyNamesEachFixedSetting: each setting a running resource
// keeps is named, alone, when it alone changes; the live ones never are.
func TestRestartOnlyNamesEachFixedSetting(t *testing.T) {
	cur := baseOptions()
	changes := map[string]func(*Options){
		"disk": func(o *Options) { o.Disk = "/dev/vdc" }, "meta": func(o *Options) { o.Meta = "/srv/m" },
		"bitmap-block": func(o *Options) { o.BitmapBlock = 8192 },
		"al-extents":   func(o *Options) { o.ALExtents = 3389 },
	}
	fixed := 0
	for _, s := range settingsTable {
		if !s.live {
			fixed++
		}
	}
	if len(changes) != fixed {
		t.Errorf("%d fixed settings, %d changes tested", fixed, len(changes))
	}
	for name, change := range changes {
		next := baseOptions()
		change(&next)
		if got := restartOnly(cur, next); len(got) != 1 || got[0] != name {
			t.Errorf("changing %s: named %v", name, got)
		}
	}
	next := baseOptions()
	next.Protocol, next.ResyncRate, next.OnPeerLoss, next.Handlers = 'A', 1, "suspend", nil
	next.Timeout, next.OnIOError, next.AfterSB0Pri, next.AfterSB1Pri = time.Second, "pass_on", "discard-zero-changes", "consensus"
	next.Fencing = "resource-and-stonith"
	next.ListenPeer, next.Peer, next.SecretFile = "10.0.0.1:7790", "10.0.0.3:7789", "/etc/urbd/s"
	next.TLSCert, next.TLSKey, next.TLSCA = "c.pem", "k.pem", "ca.pem"
	next.TCPCongestion, next.MetricsListen, next.NBD = "reno", "127.0.0.1:9942", "tcp:127.0.0.1:10809"
	if got := restartOnly(cur, next); len(got) != 0 {
		t.Errorf("live settings named as needing a restart: %v", got)
	}
}

// TestShow: the settings in effect, with the defaults of those not set,
// and what the resource file changed: the live ones for urbd adjust, the
// others for the next start.
func TestShow(t *testing.T) {
	next := baseOptions()
	next.ResyncRate = 20 << 20
	next.Timeout = 3 * time.Second
	next.ALExtents = 3389
	next.Handlers = map[string]string{"peer-lost": "logger lost", "demoted": "touch /tmp/d"}
	a, _ := newAdjuster(baseOptions(), func() (Options, error) { return next, nil })
	settings, pending := a.show()
	got := map[string]string{}
	for _, s := range settings {
		got[s.Key] = s.Value
	}
	for k, v := range map[string]string{
		"disk": "/dev/vdb", "address": "10.0.0.1:7789", "peer address": "10.0.0.2:7789", "protocol": "C",
		"resync-rate": "100MiB/s", "timeout": "6s", "on-peer-loss": "continue", "fencing": "dont-care",
		"after-sb-0pri": "disconnect", "on-io-error": "detach", "tcp-congestion": "cubic",
		"bitmap-block": "4KiB", "al-extents": "1237", "secret-file": "none", "handler peer-lost": "logger lost",
	} {
		if got[k] != v {
			t.Errorf("show: %s = %q, want %q", k, got[k], v)
		}
	}
	if want := "changed in the resource file: urbd adjust applies resync-rate, timeout, handlers; the next start applies al-extents"; pending != want {
		t.Errorf("pending:\n got %q\nwant %q", pending, want)
	}
	if _, err := a.fromFile(); err != nil {
		t.Fatal(err)
	}
	if _, pending := a.show(); pending != "changed in the resource file: the next start applies al-extents" {
		t.Errorf("pending after adjust: %q", pending)
	}

	noFile, _ := newAdjuster(baseOptions(), nil)
	noFile.congestion = shownCongestion("")
	settings, pending = noFile.show()
	if pending != "" {
		t.Errorf("pending without a resource file: %q", pending)
	}
	for _, s := range settings {
		if s.Key == "tcp-congestion" && !strings.HasPrefix(s.Value, "system (") {
			t.Errorf("tcp-congestion with the kernel's default shown as %q", s.Value)
		}
	}
	bad, _ := newAdjuster(baseOptions(), func() (Options, error) { return Options{}, errors.New("urbd.toml:3: bad") })
	if _, pending := bad.show(); pending != "the resource file does not read: urbd.toml:3: bad" {
		t.Errorf("pending with an unreadable file: %q", pending)
	}
}

// TestAdjustMetricsListen: metrics-listen changes from the resource file at
// once: the metrics are served on the new address, the old one is closed
// after the new one is bound, an address in use is refused and changes
// nothing, and none stops serving (and recording).
func TestAdjustMetricsListen(t *testing.T) {
	next := baseOptions()
	a, f := newAdjuster(baseOptions(), func() (Options, error) { return next, nil })
	defer f.metrics.close()
	serves := func(addr string) bool {
		resp, err := (&http.Client{Timeout: 2 * time.Second}).Get("http://" + addr + "/metrics")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	first, second := freeLoopback(t), freeLoopback(t)

	next.MetricsListen = first
	if msg, err := a.fromFile(); err != nil || msg != "metrics-listen set to "+first {
		t.Fatalf("metrics on: %q, %v", msg, err)
	}
	if !serves(first) || !f.metrics.on.Load() {
		t.Fatalf("no metrics on %s after urbd adjust", first)
	}

	busy, err := net.Listen("tcp", second)
	if err != nil {
		t.Fatal(err)
	}
	next.MetricsListen = second
	next.ResyncRate = 1 << 20
	if _, err := a.fromFile(); err == nil || !strings.HasPrefix(err.Error(), "nothing changed: metrics-listen: metrics: cannot listen on "+second) {
		t.Errorf("an address in use: %v", err)
	}
	if !serves(first) || len(f.rates) != 0 || a.cur.MetricsListen != first {
		t.Errorf("a refused adjust changed something: serving on %s %v, rates %v, address %s", first, serves(first), f.rates, a.cur.MetricsListen)
	}
	busy.Close()

	if msg, err := a.fromFile(); err != nil || msg != "metrics-listen set to "+second+"; resync rate set to 1MiB/s" {
		t.Fatalf("metrics moved: %q, %v", msg, err)
	}
	if !serves(second) || serves(first) {
		t.Errorf("after the move: serving on %s %v, on %s %v; want only the new", second, serves(second), first, serves(first))
	}
	next.MetricsListen = ""
	if msg, err := a.fromFile(); err != nil || msg != "metrics-listen set to none" {
		t.Fatalf("metrics off: %q, %v", msg, err)
	}
	if serves(second) || f.metrics.on.Load() {
		t.Error("still serving, or recording, after metrics-listen was removed")
	}
}

// freeLoopback returns a 127.0.0.1 address with a port free a moment ago.
func freeLoopback(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return fmt.Sprintf("127.0.0.1:%d", ln.Addr().(*net.TCPAddr).Port)
}

// TestAdjustNBD: a new nbd address in the resource file is bound and served
// at once (the attached clients stay); one that cannot be bound is refused
// and changes nothing, also not what else the file changed.
func TestAdjustNBD(t *testing.T) {
	next := baseOptions()
	a, f := newAdjuster(baseOptions(), func() (Options, error) { return next, nil })
	next.NBD = "unix:/run/urbd/r0-new.nbd"
	next.ResyncRate = 1 << 20
	f.nbdErr = errors.New("listen unix /run/urbd/r0-new.nbd: bind: address already in use")
	if _, err := a.fromFile(); err == nil || err.Error() != "nothing changed: nbd: "+f.nbdErr.Error() {
		t.Errorf("an NBD address in use: %v", err)
	}
	if len(f.nbds) != 0 || len(f.rates) != 0 || a.cur.NBD != baseOptions().NBD {
		t.Errorf("a refused adjust changed something: listeners %d, rates %v, nbd %s", len(f.nbds), f.rates, a.cur.NBD)
	}
	f.nbdErr = nil
	msg, err := a.fromFile()
	if err != nil || msg != "nbd set to unix:/run/urbd/r0-new.nbd (attached clients stay connected); resync rate set to 1MiB/s" {
		t.Fatalf("new NBD address: %q, %v", msg, err)
	}
	if len(f.nbds) != 1 || a.cur.NBD != next.NBD {
		t.Errorf("listeners used %d, nbd in effect %s", len(f.nbds), a.cur.NBD)
	}
}
