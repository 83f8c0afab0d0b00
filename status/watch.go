package status

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/urbd/urbd/internal/units"
)

// ANSI sequences used by RenderWatch.
const (
	ansiClear  = "\x1b[H\x1b[2J"
	ansiRed    = "\x1b[1;31m"
	ansiYellow = "\x1b[1;33m"
	ansiGreen  = "\x1b[32m"
	ansiBold   = "\x1b[1m"
	ansiReset  = "\x1b[0m"
)

// Watch view geometry.
const (
	defaultWidth = 80
	minWidth     = 40
	maxWidth     = 200
	labelWidth   = 15 // indent plus the longest label, "out of sync:", plus a space
)

// RenderWatch draws one frame of `urbd status --watch` for a terminal width
// columns wide (80 when width <= 0): it clears the screen, prints a header
// with now, then per resource the local/peer roles, the connection, both
// disks, a progress bar with percentage, ETA and rates while resyncing or
// verifying, the out-of-sync amount in binary units and warnings. Alarming
// states are coloured so they catch the eye: split brain and suspended
// writes in red, StandAlone, WFConnection, Inconsistent, Outdated and
// DUnknown in yellow; healthy states in green.
//
// Lines wider than the terminal are cut and end in "…".
//
// RenderWatch is a pure function of its arguments (it reads no clock), so a
// caller redraws by calling it again with a new snapshot. Write errors are
// ignored: a terminal that went away is noticed by the caller's next read of
// its input or by its signal handling.
func RenderWatch(w io.Writer, now time.Time, rs []Resource, width int) {
	if width <= 0 {
		width = defaultWidth
	}
	width = max(minWidth, min(width, maxWidth))
	var b bytes.Buffer
	b.WriteString(ansiClear)
	title := "urbd status"
	stamp := now.UTC().Format("2006-01-02 15:04:05 UTC")
	pad := max(1, width-len(title)-len(stamp))
	b.WriteString(ansiBold + title + ansiReset + strings.Repeat(" ", pad) + stamp + "\n")
	if len(rs) == 0 {
		b.WriteString("\nno resources are running\n")
	}
	for _, r := range sortedByMinor(rs) {
		b.WriteByte('\n')
		renderResource(&b, &r, width)
	}
	var out bytes.Buffer
	out.Grow(b.Len())
	for l := range strings.Lines(b.String()) {
		out.WriteString(fit(strings.TrimSuffix(l, "\n"), width))
		out.WriteByte('\n')
	}
	w.Write(out.Bytes())
}

// fit cuts line to width visible columns, not counting ANSI escape
// sequences, and marks a cut with "…". A cut line ends with a colour reset.
func fit(line string, width int) string {
	visible, cut, colour := 0, -1, false
	for i := 0; i < len(line); {
		if line[i] == 0x1b {
			colour = true
			j := i + 1
			for j < len(line) && !(line[j] >= 'A' && line[j] <= 'Z' || line[j] >= 'a' && line[j] <= 'z') {
				j++
			}
			i = j + 1
			continue
		}
		_, size := utf8.DecodeRuneInString(line[i:])
		visible++
		if visible == width && cut < 0 {
			cut = i
		}
		i += size
	}
	if visible <= width {
		return line
	}
	out := line[:cut] + "…"
	if colour {
		out += ansiReset
	}
	return out
}

func renderResource(b *bytes.Buffer, r *Resource, width int) {
	proto := r.Protocol
	if proto == "" {
		proto = "?"
	}
	fmt.Fprintf(b, "%s%s%s  minor %d, protocol %s, %s\n", ansiBold, token(r.Name, "?"), ansiReset,
		r.Minor, token(proto, "?"), plural(r.NBDClients, "NBD client"))
	line(b, "role", paint(r.Role, "Unknown")+" (local) / "+paint(r.PeerRole, "Unknown")+" (peer)")
	conn := paint(r.ConnState, "Unconfigured")
	switch {
	case r.SyncPaused && r.PeerPaused:
		conn += " (paused here and by the peer)"
	case r.SyncPaused:
		conn += " (paused here: urbd resume-sync)"
	case r.PeerPaused:
		conn += " (paused by the peer)"
	}
	line(b, "connection", conn)
	line(b, "disk", paint(r.DiskState, "DUnknown")+" (local) / "+paint(r.PeerDisk, "DUnknown")+" (peer)")
	if r.SplitBrain {
		line(b, "warning", ansiRed+"SPLIT BRAIN"+ansiReset+": both nodes changed the data; nothing is copied")
		line(b, "", "on the node whose changes are to be lost, run:")
		line(b, "", "urbd connect --discard-my-data "+token(r.Name, "NAME"))
	}
	if r.Suspended {
		line(b, "warning", ansiRed+"SUSPENDED"+ansiReset+": writes wait for the peer")
	}
	for _, l := range r.Blocked {
		line(b, "blocked", ansiRed+oneLine(l, max(10, width-labelWidth))+ansiReset)
	}
	if r.Reason != "" {
		line(b, "reason", oneLine(r.Reason, max(10, width-labelWidth)))
	}
	if s := r.Sync; s != nil {
		verb := "resync"
		if r.ConnState == "VerifyS" || r.ConnState == "VerifyT" {
			verb = "verify"
		}
		permil := perMille(s.TotalKiB, s.RemainingKiB)
		barWidth := max(10, min(50, width-labelWidth-30))
		line(b, verb, fmt.Sprintf("%s %3d.%d%%  ETA %s", bar(permil, barWidth), permil/10, permil%10, eta(s.ETA)))
		left := min(s.RemainingKiB, s.TotalKiB)
		line(b, "", fmt.Sprintf("%s left of %s", kib(left), kib(s.TotalKiB)))
		rates := fmt.Sprintf("%s/s now, %s/s average", kib(s.SpeedKiB), kib(s.AvgSpeedKiB))
		if s.WantKiB > 0 {
			rates += ", limit " + kib(s.WantKiB) + "/s"
		}
		line(b, "", rates)
		if verb == "verify" {
			found := fmt.Sprintf("%s verified, %s differing", kib(s.VerifiedKiB), plural(int(min(s.Differing, 1<<31)), "block"))
			if s.Unreadable > 0 {
				found += fmt.Sprintf(", %d unreadable", s.Unreadable)
			}
			line(b, "", found)
		}
	}
	oos := kib(r.OutOfSyncKiB)
	if r.OutOfSyncKiB > 0 {
		oos = ansiYellow + oos + ansiReset
	}
	line(b, "out of sync", oos)
	if v := r.LastVerify; v != nil {
		line(b, "last verify", lastVerify(v, r.SizeKiB))
	}
	line(b, "traffic", fmt.Sprintf("sent %s, received %s, written %s, read %s",
		kib(r.NetSendKiB), kib(r.NetRecvKiB), kib(r.DiskWriteKiB), kib(r.DiskReadKiB)))
	line(b, "in flight", fmt.Sprintf("app %d, local %d, peer %d, unacked %d",
		r.AppPending, r.LocalPending, r.PeerPending, r.Unacked))
}

// lastVerify says what the last online verify found, in yellow when it
// found anything or stopped early.
func lastVerify(v *VerifyResult, sizeKiB uint64) string {
	s := v.Ended.UTC().Format("2006-01-02 15:04 UTC")
	if v.FromKiB != 0 || v.ToKiB != sizeKiB {
		s += fmt.Sprintf(" %s-%s", kib(v.FromKiB), kib(v.ToKiB))
	}
	found := fmt.Sprintf("%d differ, %d unreadable", v.Differing, v.Unreadable)
	if !v.Complete {
		found += ", stopped"
	}
	if !v.Complete || v.Differing > 0 || v.Unreadable > 0 {
		found = ansiYellow + found + ansiReset
	}
	return s + ": " + found
}

// line prints one labelled row of the watch view.
func line(b *bytes.Buffer, label, text string) {
	if label != "" {
		label += ":"
	}
	fmt.Fprintf(b, "  %-*s%s\n", labelWidth-2, label, text)
}

// paint colours a state word by how alarming it is.
func paint(state, def string) string {
	s := token(state, def)
	switch s {
	case "StandAlone", "WFConnection", "Inconsistent", "Outdated", "DUnknown", "Diskless", "Unconfigured":
		return ansiYellow + s + ansiReset
	case "UpToDate", "Connected", "Primary":
		return ansiGreen + s + ansiReset
	}
	return s
}

// bar draws a progress bar of width cells for permil tenths of a percent.
func bar(permil uint64, width int) string {
	full := int(permil * uint64(width) / 1000)
	return "[" + strings.Repeat("#", full) + strings.Repeat("-", width-full) + "]"
}

// eta prints a remaining time as H:MM:SS, or "unknown" when not positive.
func eta(d time.Duration) string {
	if d <= 0 {
		return "unknown"
	}
	s := int64(d.Seconds())
	return fmt.Sprintf("%d:%02d:%02d", s/3600, (s%3600)/60, s%60)
}

// kib prints n KiB in binary units, e.g. 20480 -> "20MiB"; 0 prints "0B".
func kib(n uint64) string {
	if n == 0 {
		return "0B"
	}
	if n > 1<<52 {
		n = 1 << 52
	}
	return units.FormatSize(int64(n) << 10)
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}

// Watch draws a frame with RenderWatch at once and then on every tick until
// ctx is done or ticks is closed, then returns nil. fetch supplies each
// snapshot; when it fails the frame shows the error instead, and the next
// tick tries again (a daemon being restarted comes back into view). width
// is asked on every frame, so a resized terminal is followed; nil means 80
// columns. The caller owns the ticker (e.g. time.NewTicker(time.Second).C)
// and the clock: each frame is stamped with the tick's time.
func Watch(ctx context.Context, w io.Writer, start time.Time, ticks <-chan time.Time,
	width func() int, fetch func(context.Context) ([]Resource, error)) error {
	now := start
	for {
		cols := 0
		if width != nil {
			cols = width()
		}
		rs, err := fetch(ctx)
		if err != nil {
			renderError(w, now, err, cols)
		} else {
			RenderWatch(w, now, rs, cols)
		}
		select {
		case <-ctx.Done():
			return nil
		case t, ok := <-ticks:
			if !ok {
				return nil
			}
			now = t
		}
	}
}

// renderError draws a frame that says why there is no status to show.
func renderError(w io.Writer, now time.Time, err error, width int) {
	if width <= 0 {
		width = defaultWidth
	}
	width = max(minWidth, min(width, maxWidth))
	var b bytes.Buffer
	RenderWatch(&b, now, nil, width)
	frame := strings.Replace(b.String(), "no resources are running",
		fit(ansiRed+"no status"+ansiReset+": "+oneLine(err.Error(), maxReasonLen), width), 1)
	io.WriteString(w, frame)
}
