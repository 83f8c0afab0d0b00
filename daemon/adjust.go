package daemon

import (
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/urbd/urbd/handlers"
	"github.com/urbd/urbd/internal/units"
	"github.com/urbd/urbd/replica"
)

// adjuster applies `urbd adjust` to a running resource: an explicit resync
// rate, or the settings read again from where the daemon got them
// (Options.Reload, the resource file). What cannot change while the
// resource runs is named in the answer and applied at the next start.
type adjuster struct {
	setRate  func(bytesPerSec int64)          // the node's resync rate (Node.AdjustRate)
	handlers func(commands map[string]string) // the handlers (Runner.SetCommands)
	reload   func() (Options, error)          // nil: started without a resource file
	log      *slog.Logger

	mu  sync.Mutex // serializes adjustments; guards cur
	cur Options    // the settings in effect
}

// rate applies an explicit `urbd adjust --resync-rate`. It lasts until the
// next adjustment from the file or the next start.
func (a *adjuster) rate(bytesPerSec int64) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.setRate(bytesPerSec)
	a.cur.ResyncRate = bytesPerSec
	return "resync rate set to " + formatRate(bytesPerSec)
}

// fromFile reads the settings again and applies those that differ: the
// resync rate and the handlers at once; the others are only named. It
// refuses, changing nothing, when the settings do not read or when they
// would leave fencing without its fence-peer handler.
func (a *adjuster) fromFile() (string, error) {
	if a.reload == nil {
		return "", fmt.Errorf("started without a resource file (urbd up --config): give the setting to change, e.g. urbd adjust --resync-rate 200MiB %s", a.cur.Name)
	}
	next, err := a.reload()
	if err != nil {
		return "", fmt.Errorf("nothing changed: %w", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	fencing := a.cur.Fencing != "" && a.cur.Fencing != replica.FenceDontCare.String()
	if fencing && strings.TrimSpace(next.Handlers[handlers.EventFencePeer]) == "" {
		return "", fmt.Errorf("nothing changed: fencing %s needs a %s handler, and the new settings have none", a.cur.Fencing, handlers.EventFencePeer)
	}
	var done []string
	if next.ResyncRate != a.cur.ResyncRate {
		a.setRate(next.ResyncRate)
		a.cur.ResyncRate = next.ResyncRate
		done = append(done, "resync rate set to "+formatRate(next.ResyncRate))
	}
	if changed := changedHandlers(a.cur.Handlers, next.Handlers); len(changed) > 0 {
		a.handlers(next.Handlers)
		a.cur.Handlers = maps.Clone(next.Handlers)
		done = append(done, "handlers replaced ("+strings.Join(changed, ", ")+")")
	}
	msg := strings.Join(done, "; ")
	if msg == "" {
		msg = "resync rate and handlers unchanged"
	}
	if later := restartOnly(a.cur, next); len(later) > 0 {
		msg += "; changed, and applied at the next start (urbd down, then urbd up): " + strings.Join(later, ", ")
	}
	a.log.Info("settings read again", "result", msg)
	return msg, nil
}

// restartOnly names the settings, in the terms of the resource file, that
// differ between cur and next and that the running resource keeps until it
// restarts.
func restartOnly(cur, next Options) []string {
	var out []string
	for _, s := range fixedSettings {
		if s.get(cur) != s.get(next) {
			out = append(out, s.name)
		}
	}
	return out
}

// fixedSettings are the settings a running resource keeps: its disk, its
// addresses and the peer connection's terms are fixed while it runs.
var fixedSettings = []struct {
	name string
	get  func(Options) string
}{
	{"disk", func(o Options) string { return o.Disk }},
	{"meta", func(o Options) string { return o.Meta }},
	{"nbd", func(o Options) string { return o.NBD }},
	{"address", func(o Options) string { return o.ListenPeer }},
	{"peer address", func(o Options) string { return o.Peer }},
	{"protocol", func(o Options) string { return string(o.Protocol) }},
	{"secret-file", func(o Options) string { return o.SecretFile }},
	{"tls-cert", func(o Options) string { return o.TLSCert }},
	{"tls-key", func(o Options) string { return o.TLSKey }},
	{"tls-ca", func(o Options) string { return o.TLSCA }},
	{"timeout", func(o Options) string { return o.Timeout.String() }},
	{"on-peer-loss", func(o Options) string { return o.OnPeerLoss }},
	{"fencing", func(o Options) string { return o.Fencing }},
	{"after-sb-0pri", func(o Options) string { return o.AfterSB0Pri }},
	{"after-sb-1pri", func(o Options) string { return o.AfterSB1Pri }},
	{"on-io-error", func(o Options) string { return o.OnIOError }},
	{"tcp-congestion", func(o Options) string { return o.TCPCongestion }},
	{"bitmap-block", func(o Options) string { return fmt.Sprint(o.BitmapBlock) }},
	{"metrics-listen", func(o Options) string { return o.MetricsListen }},
}

// changedHandlers names the events whose command was added, changed or
// removed, in order.
func changedHandlers(cur, next map[string]string) []string {
	var out []string
	for _, ev := range slices.Sorted(maps.Keys(next)) {
		if old, ok := cur[ev]; !ok {
			out = append(out, ev+" added")
		} else if old != next[ev] {
			out = append(out, ev+" changed")
		}
	}
	for _, ev := range slices.Sorted(maps.Keys(cur)) {
		if _, ok := next[ev]; !ok {
			out = append(out, ev+" removed")
		}
	}
	return out
}

func formatRate(bytesPerSec int64) string {
	if bytesPerSec == 0 {
		return "unlimited"
	}
	return units.FormatSize(bytesPerSec) + "/s"
}
