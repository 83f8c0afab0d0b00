package daemon

import (
	"cmp"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/urbd/urbd/bitmap"
	"github.com/urbd/urbd/internal/units"
	"github.com/urbd/urbd/replica"
)

// adjuster applies `urbd adjust` to a running resource: settings given on
// its command line, or the settings read again from where the daemon got
// them (Options.Reload, the resource file). The live settings (settingsTable)
// change while it runs: the protocol, the resync rate, on-peer-loss,
// ko-count, disk-timeout, on-io-error, read-balancing, on-congestion,
// auto-promote and the handlers at once,
// csums-alg from the next resync on,
// the timeout and the after-sb
// policies, the addresses, the secret, TLS and the congestion control from
// the next connection on, fencing from the next peer loss on, the NBD and
// metrics addresses at once. What cannot change while the
// resource runs is named in the answer and applied at the next start.
type adjuster struct {
	setProtocol    func(p byte) error                // Node.SetProtocol
	setRate        func(bytesPerSec int64)           // Node.AdjustRate
	setOnPeerLoss  func(suspend bool)                // Node.SetOnPeerLoss
	setTimeout     func(d time.Duration) error       // Node.SetTimeout
	setKoCount     func(count int) error             // Node.SetKoCount
	setDiskTimeout func(d time.Duration) error       // Node.SetDiskTimeout
	setOnIOError   func(p replica.OnIOError)         // Node.SetOnIOError
	setAfterSB     func(p replica.AfterSplitBrain)   // Node.SetAfterSB
	setFencing     func(p replica.Fencing)           // Node.SetFencing
	setCsums       func(on bool)                     // Node.SetResyncChecksums
	setBalance     func(b replica.ReadBalancing)     // Node.SetReadBalancing
	setCongestion  func(c replica.Congestion) error  // Node.SetCongestion
	setAutoPromote func(on bool)                     // Node.SetAutoPromote
	setLink        func(l replica.Link) error        // Node.SetLink
	loadLink       func(o Options) (peerLink, error) // loadLink; tests replace it
	setHandlers    func(commands map[string]string)  // Runner.SetCommands
	// listenMetrics binds a new metrics address (nil, nil for none) and
	// useMetrics serves on it, closing the one before (metricsServer).
	listenMetrics func(addr string) (net.Listener, error)
	useMetrics    func(ln net.Listener)
	// listenNBD binds a new NBD address (nbd.Listen) and useNBD serves on
	// it, then stops accepting on the one before; attached clients stay.
	listenNBD func(addr string) (net.Listener, error)
	useNBD    func(ln net.Listener)
	reload    func() (Options, error) // nil: started without a resource file
	log       *slog.Logger
	// congestion is what the peer connection asks for, as show prints it:
	// the configured name, or the kernel's default where urbd's was refused.
	congestion string

	mu   sync.Mutex // serializes adjustments; guards cur and link
	cur  Options    // the settings in effect
	link peerLink   // the link to the peer in effect
}

// set applies settings given on the command line (the live ones of
// settingsTable, by name, as typed). They last until the next adjustment or
// start. A value that does not parse changes nothing.
func (a *adjuster) set(settings map[string]string) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	next := a.cur
	for _, k := range slices.Sorted(maps.Keys(settings)) {
		v := settings[k]
		switch k {
		case "protocol":
			p, err := ParseProtocol(v)
			if err != nil {
				return "", err
			}
			next.Protocol = p
		case "resync-rate":
			r, err := units.ParseRate(v)
			if err != nil {
				return "", fmt.Errorf("--resync-rate: %w", err)
			}
			next.ResyncRate = r
		case "on-peer-loss":
			if err := checkOnPeerLoss(v); err != nil {
				return "", err
			}
			next.OnPeerLoss = v
		case "timeout":
			d, err := time.ParseDuration(v)
			if err != nil {
				return "", fmt.Errorf("--timeout %q: use a duration such as 6s", v)
			}
			if err := checkTimeout(d); err != nil {
				return "", err
			}
			next.Timeout = d
		case "ko-count":
			n, err := strconv.Atoi(v)
			if err == nil {
				err = replica.CheckKoCount(n)
			} else {
				err = fmt.Errorf("ko-count %q: use a whole number such as 7", v)
			}
			if err != nil {
				return "", fmt.Errorf("--%w", err)
			}
			next.KoCount = n
		case "disk-timeout":
			d, err := replica.ParseDiskTimeout(v)
			if err != nil {
				return "", fmt.Errorf("--%w", err)
			}
			next.DiskTimeout = d
		case "on-io-error":
			next.OnIOError = v
		case "after-sb-0pri":
			next.AfterSB0Pri = v
		case "after-sb-1pri":
			next.AfterSB1Pri = v
		case "fencing":
			next.Fencing = v
		case "csums-alg":
			next.CsumsAlg = v
		case "read-balancing":
			next.ReadBalancing = v
		case "on-congestion":
			next.OnCongestion = v
		case "congestion-fill":
			n, err := units.ParseSize(v)
			if err != nil {
				return "", fmt.Errorf("--congestion-fill: %w", err)
			}
			next.CongestionFill = n
		case "auto-promote":
			next.AutoPromote = v
		case "congestion-extents":
			n, err := strconv.Atoi(v)
			if err != nil {
				return "", fmt.Errorf("--congestion-extents %q: use a whole number such as 1237, or 0 for off", v)
			}
			next.CongestionExtents = n
		default:
			return "", fmt.Errorf("%s cannot change while the resource runs", k)
		}
	}
	pol, err := parsePolicies(next)
	if err != nil {
		return "", err
	}
	if err := checkFenceHandler(pol.fencing, next.Handlers); err != nil {
		return "", fmt.Errorf("%w: add one to the resource file (handlers) and run urbd adjust %s", err, a.cur.Name)
	}
	return a.applyLocked(next), nil
}

// fromFile reads the settings again, and the secret and TLS files, and
// applies those that can change while the resource runs, naming the others
// that differ. It refuses, changing nothing, when the settings or the files
// do not read, when they would leave fencing without its fence-peer
// handler, or when a new listen address cannot be opened.
func (a *adjuster) fromFile() (string, error) {
	if a.reload == nil {
		return "", fmt.Errorf("started without a resource file (urbd up --config): give the setting to change, e.g. urbd adjust --resync-rate 200MiB %s", a.cur.Name)
	}
	next, err := a.reload()
	var pol policies
	if err == nil {
		pol, err = parsePolicies(next)
	}
	var link peerLink
	if err == nil {
		link, err = a.loadLink(next)
	}
	if err == nil {
		link.Congestion = a.link.Congestion
		if next.TCPCongestion != a.cur.TCPCongestion {
			link.Congestion, err = peerCongestion(next.TCPCongestion, a.log)
		}
	}
	if err != nil {
		return "", fmt.Errorf("nothing changed: %w", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := checkFenceHandler(pol.fencing, next.Handlers); err != nil {
		return "", fmt.Errorf("nothing changed: %w, and the new settings have none", err)
	}
	// The new NBD and metrics addresses are bound first and the link set
	// next: they are the changes that can fail here (an address in use).
	moves, err := a.bindAddresses(next)
	if err != nil {
		return "", fmt.Errorf("nothing changed: %w", err)
	}
	linkMsg := link.changes(a.link)
	if linkMsg != "" {
		if err := a.setLink(link.Link); err != nil {
			for _, m := range moves {
				m.close()
			}
			return "", fmt.Errorf("nothing changed: %w", err)
		}
		a.link = link
		a.congestion = shownCongestion(link.Congestion)
		linkMsg += " (from the next connection on)"
	}
	a.cur.ListenPeer, a.cur.Peer, a.cur.SecretFile, a.cur.TCPCongestion = next.ListenPeer, next.Peer, next.SecretFile, next.TCPCongestion
	a.cur.TLSCert, a.cur.TLSKey, a.cur.TLSCA = next.TLSCert, next.TLSKey, next.TLSCA
	for _, m := range moves {
		m.use(m.ln)
		*m.cur = m.addr
		if linkMsg != "" {
			linkMsg += "; "
		}
		linkMsg += m.done
	}
	msg := a.applyLocked(next)
	if linkMsg != "" {
		if strings.HasPrefix(msg, "no live setting changed") {
			msg = linkMsg
		} else {
			msg = linkMsg + "; " + msg
		}
	}
	if later := restartOnly(a.cur, next); len(later) > 0 {
		msg += "; changed, and applied at the next start (urbd down, then urbd up): " + strings.Join(later, ", ")
	}
	a.log.Info("settings read again", "result", msg)
	return msg, nil
}

// addressMove is a new NBD or metrics address that fromFile bound, to be
// served (use) once nothing else can fail.
type addressMove struct {
	addr string
	ln   net.Listener // nil: serve nowhere (metrics only)
	use  func(net.Listener)
	cur  *string // the setting in Options to record addr in
	done string  // what the reply says
}

func (m addressMove) close() {
	if m.ln != nil {
		m.ln.Close()
	}
}

// bindAddresses binds the NBD and metrics addresses of next that differ
// from the running ones. An address that cannot be bound is an error, and
// none stays bound. a.mu must be held.
func (a *adjuster) bindAddresses(next Options) ([]addressMove, error) {
	var moves []addressMove
	fail := func(err error) ([]addressMove, error) {
		for _, m := range moves {
			m.close()
		}
		return nil, err
	}
	if next.NBD != a.cur.NBD {
		ln, err := a.listenNBD(next.NBD)
		if err != nil {
			return fail(fmt.Errorf("nbd: %w", err))
		}
		moves = append(moves, addressMove{next.NBD, ln, a.useNBD, &a.cur.NBD,
			"nbd set to " + next.NBD + " (attached clients stay connected)"})
	}
	if next.MetricsListen != a.cur.MetricsListen {
		ln, err := a.listenMetrics(next.MetricsListen)
		if err != nil {
			return fail(fmt.Errorf("metrics-listen: %w", err))
		}
		moves = append(moves, addressMove{next.MetricsListen, ln, a.useMetrics, &a.cur.MetricsListen,
			"metrics-listen set to " + orNone(next.MetricsListen)})
	}
	return moves, nil
}

// applyLocked applies the settings of next that differ from the running
// ones and can change at once, records them, and says what it did. a.mu
// must be held; next's policies parse (parsePolicies).
func (a *adjuster) applyLocked(next Options) string {
	var done []string
	if next.Protocol != a.cur.Protocol {
		if err := a.setProtocol(next.Protocol); err != nil {
			// Options were checked when parsed: this is a bug, not input.
			a.log.Error("changing the protocol failed", "err", err)
		} else {
			a.cur.Protocol = next.Protocol
			done = append(done, "protocol set to "+string(next.Protocol))
		}
	}
	if next.ResyncRate != a.cur.ResyncRate {
		a.setRate(next.ResyncRate)
		a.cur.ResyncRate = next.ResyncRate
		done = append(done, "resync rate set to "+formatRate(next.ResyncRate))
	}
	if next.Timeout > 0 && next.Timeout != a.cur.Timeout {
		if err := a.setTimeout(next.Timeout); err != nil {
			a.log.Error("changing the timeout failed", "err", err)
		} else {
			a.cur.Timeout = next.Timeout
			done = append(done, "timeout set to "+next.Timeout.String()+" (from the next connection on)")
		}
	}
	if next.KoCount != a.cur.KoCount {
		if err := a.setKoCount(next.KoCount); err != nil {
			a.log.Error("changing ko-count failed", "err", err)
		} else {
			a.cur.KoCount = next.KoCount
			done = append(done, "ko-count set to "+strconv.Itoa(next.KoCount))
		}
	}
	if next.DiskTimeout != a.cur.DiskTimeout {
		if err := a.setDiskTimeout(next.DiskTimeout); err != nil {
			a.log.Error("changing disk-timeout failed", "err", err)
		} else {
			a.cur.DiskTimeout = next.DiskTimeout
			done = append(done, "disk-timeout set to "+formatDiskTimeout(next.DiskTimeout))
		}
	}
	if (next.OnPeerLoss == "suspend") != (a.cur.OnPeerLoss == "suspend") {
		a.setOnPeerLoss(next.OnPeerLoss == "suspend")
		done = append(done, "on-peer-loss set to "+next.OnPeerLoss)
	}
	a.cur.OnPeerLoss = next.OnPeerLoss
	cur, _ := parsePolicies(a.cur)
	want, _ := parsePolicies(next)
	if want.onIOError != cur.onIOError {
		a.setOnIOError(want.onIOError)
		done = append(done, "on-io-error set to "+want.onIOError.String())
	}
	a.cur.OnIOError = next.OnIOError
	if want.afterSB != cur.afterSB {
		a.setAfterSB(want.afterSB)
		var sb []string
		if want.afterSB.NoPrimary != cur.afterSB.NoPrimary {
			sb = append(sb, "after-sb-0pri set to "+want.afterSB.NoPrimary.String())
		}
		if want.afterSB.OnePrimary != cur.afterSB.OnePrimary {
			sb = append(sb, "after-sb-1pri set to "+want.afterSB.OnePrimary.String())
		}
		done = append(done, strings.Join(sb, ", ")+" (from the next connection on; the peer needs the same)")
	}
	a.cur.AfterSB0Pri, a.cur.AfterSB1Pri = next.AfterSB0Pri, next.AfterSB1Pri
	if want.fencing != cur.fencing {
		a.setFencing(want.fencing)
		done = append(done, "fencing set to "+want.fencing.String()+" (from the next peer loss on)")
	}
	a.cur.Fencing = next.Fencing
	if want.csums != cur.csums {
		a.setCsums(want.csums)
		done = append(done, "csums-alg set to "+cmp.Or(next.CsumsAlg, "none")+" (from the next resync on)")
	}
	a.cur.CsumsAlg = next.CsumsAlg
	if want.balance != cur.balance {
		a.setBalance(want.balance)
		done = append(done, "read-balancing set to "+want.balance.String())
	}
	a.cur.ReadBalancing = next.ReadBalancing
	if want.congest != cur.congest {
		if err := a.setCongestion(want.congest); err != nil {
			a.log.Error("changing on-congestion failed", "err", err)
		} else {
			done = append(done, "on-congestion set to "+formatCongestion(next))
		}
	}
	a.cur.OnCongestion, a.cur.CongestionFill, a.cur.CongestionExtents = next.OnCongestion, next.CongestionFill, next.CongestionExtents
	if want.autoPro != cur.autoPro {
		a.setAutoPromote(want.autoPro)
		done = append(done, "auto-promote set to "+yesNo(want.autoPro)+" (from the next NBD client on)")
	}
	a.cur.AutoPromote = next.AutoPromote
	if changed := changedHandlers(a.cur.Handlers, next.Handlers); len(changed) > 0 {
		a.setHandlers(next.Handlers)
		a.cur.Handlers = maps.Clone(next.Handlers)
		done = append(done, "handlers replaced ("+strings.Join(changed, ", ")+")")
	}
	if len(done) == 0 {
		return "no live setting changed"
	}
	return strings.Join(done, "; ")
}

// Setting is one setting of a running resource, as `urbd show` lists it.
type Setting struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// show lists the settings in effect, and says what reading the resource
// file again would change ("" when nothing, or when the daemon has no file).
func (a *adjuster) show() (settings []Setting, pending string) {
	var next Options
	var rerr error
	if a.reload != nil {
		next, rerr = a.reload()
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, s := range settingsTable {
		v := s.get(a.cur)
		if v == "" {
			v = s.unset
		}
		if s.name == "tcp-congestion" && a.congestion != "" {
			v = a.congestion
		}
		settings = append(settings, Setting{s.name, v})
	}
	for _, ev := range slices.Sorted(maps.Keys(a.cur.Handlers)) {
		settings = append(settings, Setting{"handler " + ev, a.cur.Handlers[ev]})
	}
	switch {
	case a.reload == nil:
		return settings, ""
	case rerr != nil:
		return settings, "the resource file does not read: " + rerr.Error()
	}
	var live []string
	for _, s := range settingsTable {
		if s.live && s.get(a.cur) != s.get(next) {
			live = append(live, s.name)
		}
	}
	if len(changedHandlers(a.cur.Handlers, next.Handlers)) > 0 {
		live = append(live, "handlers")
	}
	var parts []string
	if len(live) > 0 {
		parts = append(parts, "urbd adjust applies "+strings.Join(live, ", "))
	}
	if later := restartOnly(a.cur, next); len(later) > 0 {
		parts = append(parts, "the next start applies "+strings.Join(later, ", "))
	}
	if len(parts) == 0 {
		return settings, ""
	}
	return settings, "changed in the resource file: " + strings.Join(parts, "; ")
}

// restartOnly names the settings, in the terms of the resource file, that
// differ between cur and next and that the running resource keeps until it
// restarts.
func restartOnly(cur, next Options) []string {
	var out []string
	for _, s := range settingsTable {
		if !s.live && s.get(cur) != s.get(next) {
			out = append(out, s.name)
		}
	}
	return out
}

// settingsTable lists a resource's settings for `urbd show` and for
// comparing them, by their names in the resource file. The live ones change
// with `urbd adjust` (the addresses, the secret, TLS, the congestion
// control and the NBD and metrics addresses only when read from the
// resource file); a running resource keeps the others: its disk, its
// metadata and their shape.
var settingsTable = []struct {
	name  string
	get   func(Options) string
	unset string // shown when get returns ""
	live  bool
}{
	{"disk", func(o Options) string { return o.Disk }, "", false},
	{"meta", func(o Options) string { return o.Meta }, "", false},
	{"nbd", func(o Options) string { return o.NBD }, "", true},
	{"address", func(o Options) string { return o.ListenPeer }, "none", true},
	{"peer address", func(o Options) string { return o.Peer }, "none", true},
	{"protocol", func(o Options) string { return string(o.Protocol) }, "C", true},
	{"resync-rate", func(o Options) string { return formatRate(o.ResyncRate) }, "", true},
	{"timeout", func(o Options) string { return o.Timeout.String() }, "", true},
	{"ko-count", func(o Options) string { return strconv.Itoa(o.KoCount) }, "", true},
	{"disk-timeout", func(o Options) string { return formatDiskTimeout(o.DiskTimeout) }, "", true},
	{"on-peer-loss", func(o Options) string { return cmp.Or(o.OnPeerLoss, "continue") }, "", true},
	{"fencing", func(o Options) string { return o.Fencing }, replica.FenceDontCare.String(), true},
	{"after-sb-0pri", func(o Options) string { return o.AfterSB0Pri }, "disconnect", true},
	{"after-sb-1pri", func(o Options) string { return o.AfterSB1Pri }, "disconnect", true},
	{"on-io-error", func(o Options) string { return o.OnIOError }, "detach", true},
	{"csums-alg", func(o Options) string { return o.CsumsAlg }, "none", true},
	{"read-balancing", func(o Options) string { return readBalancingName(o.ReadBalancing) }, "", true},
	{"on-congestion", func(o Options) string { return cmp.Or(strings.ToLower(o.OnCongestion), "block") }, "", true},
	{"congestion-fill", func(o Options) string { return formatOff(o.CongestionFill, units.FormatSize(o.CongestionFill)) }, "", true},
	{"congestion-extents", func(o Options) string {
		return formatOff(int64(o.CongestionExtents), strconv.Itoa(o.CongestionExtents))
	}, "", true},
	{"auto-promote", func(o Options) string { return autoPromoteName(o.AutoPromote) }, "", true},
	{"tcp-congestion", func(o Options) string { return o.TCPCongestion }, replica.DefaultCongestion, true},
	{"bitmap-block", func(o Options) string { return units.FormatSize(o.BitmapBlock) }, "", false},
	{"al-extents", func(o Options) string { return strconv.Itoa(cmp.Or(o.ALExtents, bitmap.DefaultALExtents)) }, "", false},
	{"secret-file", func(o Options) string { return o.SecretFile }, "none", true},
	{"tls-cert", func(o Options) string { return o.TLSCert }, "none", true},
	{"tls-key", func(o Options) string { return o.TLSKey }, "none", true},
	{"tls-ca", func(o Options) string { return o.TLSCA }, "none", true},
	{"metrics-listen", func(o Options) string { return o.MetricsListen }, "none", true},
}

// formatCongestion is on-congestion with its thresholds, as adjust reports
// a change: "pull-ahead (congestion-fill 8MiB, congestion-extents 1237)".
func formatCongestion(o Options) string {
	return fmt.Sprintf("%s (congestion-fill %s, congestion-extents %s)", cmp.Or(strings.ToLower(o.OnCongestion), "block"),
		formatOff(o.CongestionFill, units.FormatSize(o.CongestionFill)), formatOff(int64(o.CongestionExtents), strconv.Itoa(o.CongestionExtents)))
}

// formatOff is shown, or "0 (off)" when v is 0: a threshold turned off.
func formatOff(v int64, shown string) string {
	if v == 0 {
		return "0 (off)"
	}
	return shown
}

// readBalancingName is a read-balancing setting as replica spells it
// (prefer-local for ""), or as given when it is no policy.
func readBalancingName(s string) string {
	b, err := replica.ParseReadBalancing(s)
	if err != nil {
		return s
	}
	return b.String()
}

// autoPromoteName is an auto-promote setting as shown: yes or no (for
// ""), or as given when it is neither.
func autoPromoteName(s string) string {
	on, err := replica.ParseAutoPromote(s)
	if err != nil {
		return s
	}
	return yesNo(on)
}

func yesNo(on bool) string {
	if on {
		return "yes"
	}
	return "no"
}

// formatDiskTimeout shows disk-timeout as urbd adjust takes it: a
// duration, "0 (off)" for none.
func formatDiskTimeout(d time.Duration) string { return formatOff(int64(max(d, 0)), d.String()) }

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
