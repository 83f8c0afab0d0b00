package daemon

import (
	"errors"
	"io"
	"log/slog"
	"maps"
	"strings"
	"testing"
	"time"
)

// fakeResource is what an adjuster drives, recorded.
type fakeResource struct {
	protos   []byte
	rates    []int64
	suspend  []bool
	handlers []map[string]string
}

func newAdjuster(cur Options, reload func() (Options, error)) (*adjuster, *fakeResource) {
	f := &fakeResource{}
	return &adjuster{
		setProtocol:   func(p byte) error { f.protos = append(f.protos, p); return nil },
		setRate:       func(r int64) { f.rates = append(f.rates, r) },
		setOnPeerLoss: func(s bool) { f.suspend = append(f.suspend, s) },
		setHandlers:   func(h map[string]string) { f.handlers = append(f.handlers, maps.Clone(h)) },
		reload:        reload,
		log:           slog.New(slog.NewTextHandler(io.Discard, nil)),
		cur:           cur,
	}, f
}

func baseOptions() Options {
	return Options{
		Name: "r0", Disk: "/dev/vdb", Meta: "/var/lib/urbd/r0", NBD: "unix:/run/urbd/r0.nbd",
		ListenPeer: "10.0.0.1:7789", Peer: "10.0.0.2:7789", Protocol: 'C', ResyncRate: 100 << 20,
		Timeout: 6 * time.Second, OnPeerLoss: "continue", BitmapBlock: 4096,
		Handlers: map[string]string{"peer-lost": "logger lost"},
	}
}

// TestAdjustFromFile: a new protocol, resync rate, on-peer-loss and new
// handlers apply at once; the settings a running resource keeps are named; a second
// adjust finds nothing left to apply.
func TestAdjustFromFile(t *testing.T) {
	next := baseOptions()
	next.ResyncRate = 20 << 20
	next.OnPeerLoss = "suspend"
	next.Handlers = map[string]string{"peer-lost": "logger gone", "demoted": "touch /tmp/d"}
	next.Protocol = 'B'
	next.Timeout = 3 * time.Second
	a, f := newAdjuster(baseOptions(), func() (Options, error) { return next, nil })

	msg, err := a.fromFile()
	if err != nil {
		t.Fatal(err)
	}
	want := "protocol set to B; resync rate set to 20MiB/s; on-peer-loss set to suspend; handlers replaced (demoted added, peer-lost changed); " +
		"changed, and applied at the next start (urbd down, then urbd up): timeout"
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

	msg, err = a.fromFile()
	if err != nil {
		t.Fatal(err)
	}
	if want := "protocol, resync rate, on-peer-loss and handlers unchanged; changed, and applied at the next start (urbd down, then urbd up): timeout"; msg != want {
		t.Errorf("second adjust:\n got %q\nwant %q", msg, want)
	}
	if len(f.protos) != 1 || len(f.rates) != 1 || len(f.suspend) != 1 || len(f.handlers) != 1 {
		t.Errorf("second adjust applied again: protocols %q, rates %v, on-peer-loss %v, handlers %v", f.protos, f.rates, f.suspend, f.handlers)
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
	for _, bad := range []map[string]string{
		{"resync-rate": "fast"}, {"on-peer-loss": "panic"}, {"protocol": "D"}, {"timeout": "1s"},
		{"resync-rate": "1MiB", "on-peer-loss": "x"}, {"protocol": "B", "resync-rate": "x"},
	} {
		if _, err := a.set(bad); err == nil {
			t.Errorf("adjust %v: accepted", bad)
		}
	}
	msg, err = a.fromFile()
	if err != nil {
		t.Fatal(err)
	}
	if msg != "protocol set to C; resync rate set to 100MiB/s; on-peer-loss set to continue" {
		t.Errorf("adjust from the file after flags: %q", msg)
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
// keeps is named, alone, when it alone changes; the protocol, the resync
// rate, on-peer-loss and the handlers never are.
func TestRestartOnlyNamesEachFixedSetting(t *testing.T) {
	cur := baseOptions()
	changes := map[string]func(*Options){
		"disk": func(o *Options) { o.Disk = "/dev/vdc" }, "meta": func(o *Options) { o.Meta = "/srv/m" },
		"nbd": func(o *Options) { o.NBD = "tcp:127.0.0.1:10809" }, "address": func(o *Options) { o.ListenPeer = "10.0.0.1:7790" },
		"peer address": func(o *Options) { o.Peer = "10.0.0.3:7789" },
		"secret-file":  func(o *Options) { o.SecretFile = "/etc/urbd/s" }, "tls-cert": func(o *Options) { o.TLSCert = "c.pem" },
		"tls-key": func(o *Options) { o.TLSKey = "k.pem" }, "tls-ca": func(o *Options) { o.TLSCA = "ca.pem" },
		"timeout": func(o *Options) { o.Timeout = time.Second },
		"fencing": func(o *Options) { o.Fencing = "resource-only" }, "after-sb-0pri": func(o *Options) { o.AfterSB0Pri = "discard-zero-changes" },
		"after-sb-1pri": func(o *Options) { o.AfterSB1Pri = "consensus" }, "on-io-error": func(o *Options) { o.OnIOError = "pass_on" },
		"tcp-congestion": func(o *Options) { o.TCPCongestion = "reno" }, "bitmap-block": func(o *Options) { o.BitmapBlock = 8192 },
		"al-extents":     func(o *Options) { o.ALExtents = 3389 },
		"metrics-listen": func(o *Options) { o.MetricsListen = "127.0.0.1:9942" },
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
	if got := restartOnly(cur, next); len(got) != 0 {
		t.Errorf("protocol, resync rate, on-peer-loss and handlers named as needing a restart: %v", got)
	}
}

// TestShow: the settings in effect, with the defaults of those not set,
// and what the resource file changed: the live ones for urbd adjust, the
// others for the next start.
func TestShow(t *testing.T) {
	next := baseOptions()
	next.ResyncRate = 20 << 20
	next.Timeout = 3 * time.Second
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
	if want := "changed in the resource file: urbd adjust applies resync-rate, handlers; the next start applies timeout"; pending != want {
		t.Errorf("pending:\n got %q\nwant %q", pending, want)
	}
	if _, err := a.fromFile(); err != nil {
		t.Fatal(err)
	}
	if _, pending := a.show(); pending != "changed in the resource file: the next start applies timeout" {
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
