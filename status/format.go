package status

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// ErrWrite is wrapped by the errors of WriteText, WriteJSON and WriteAtomic
// when the destination refused the bytes.
var ErrWrite = errors.New("status: write failed")

// API and wire-protocol versions shown in the first line of the status file.
const (
	APIVersion   = 1
	ProtoVersion = 8 // protocol.Version (replica tests check they agree)
)

// mibThresholdKiB is the resync size above which the progress line counts in
// MiB instead of KiB, as DRBD does above 4 GiB.
const mibThresholdKiB = 4 << 20

// maxReasonLen bounds the reason printed in the status file, in bytes.
const maxReasonLen = 512

// WriteText writes rs in the shape of DRBD 8.4's /proc/drbd:
//
//	urbd 0.1 (api:1/proto:8)
//	 0: r0 cs:SyncSource ro:Primary/Secondary ds:UpToDate/Inconsistent C r-----
//	    ns:1048576 nr:0 dw:1048576 dr:4096 al:12 bm:3 lo:0 pe:2 ua:0 ap:1 oos:20480
//		[=====>..............] sync'ed: 30.1% (20480/29312)K
//		finish: 0:00:02 speed: 4,096 (4,000) want: 4,096 K/sec
//
// Resources are printed by ascending minor; as in DRBD, an empty line marks a
// gap in the minor numbers. The first two lines of each resource keep DRBD's
// exact shape, the resource name after the minor being urbd's only addition,
// so parsers written for /proc/drbd keep working. The six flag letters after
// the protocol are DRBD's: 's' (writes suspended) or 'r' (running), then
// 'a', 'p', 'u' (resync paused by dependency, peer or user; urbd never pauses
// that way, so they print '-'), the congestion reason and 's' for a suspended
// activity log (both always '-'). A protocol other than A, B or C prints as
// '-'.
//
// The two progress lines appear only when Sync is set; "verified:" replaces
// "sync'ed:" during an online verify, the percentage is truncated to
// per-mille like DRBD's, and sizes above 4 GiB are counted in MiB with an M
// suffix. "want:" is printed when a rate limit is configured. Two urbd lines
// may follow, indented by four spaces and never starting with a DRBD key:
// "split brain: ..." when SplitBrain is set and "reason: ..." when Reason is
// not empty.
//
// WriteText does not retain rs. The output is built in memory and written
// with a single Write, so a short write leaves no partial resource behind a
// successful return.
func WriteText(w io.Writer, version string, rs []Resource) error {
	var b bytes.Buffer
	fmt.Fprintf(&b, "urbd %s (api:%d/proto:%d)\n", token(version, "?"), APIVersion, ProtoVersion)
	prev := -1
	for _, r := range sortedByMinor(rs) {
		if r.Minor != prev+1 {
			b.WriteByte('\n')
		}
		prev = r.Minor
		writeResource(&b, &r)
	}
	if _, err := w.Write(b.Bytes()); err != nil {
		return fmt.Errorf("%w: %w", ErrWrite, err)
	}
	return nil
}

func sortedByMinor(rs []Resource) []Resource {
	out := slices.Clone(rs)
	slices.SortStableFunc(out, func(a, b Resource) int { return a.Minor - b.Minor })
	return out
}

func writeResource(b *bytes.Buffer, r *Resource) {
	name := ""
	if r.Name != "" {
		name = token(r.Name, "?") + " "
	}
	proto := byte('-') // DRBD prints ' ', which would shift the fields of whitespace-splitting parsers
	if len(r.Protocol) == 1 && r.Protocol[0] >= 'A' && r.Protocol[0] <= 'C' {
		proto = r.Protocol[0]
	}
	// DRBD's six state flags: I/O running or suspended, (resync-after,
	// unused), sync paused by the peer, sync paused here, I/O blocked on
	// the local disk (b), the peer (n) or both (a), then one unused.
	flags := []byte("r-----")
	if r.Suspended {
		flags[0] = 's'
	}
	if r.PeerPaused {
		flags[2] = 'p'
	}
	if r.SyncPaused {
		flags[3] = 'u'
	}
	switch r.BlockedOn() {
	case "both":
		flags[4] = 'a'
	case "disk":
		flags[4] = 'b'
	case "peer":
		flags[4] = 'n'
	}
	fmt.Fprintf(b, "%2d: %scs:%s ro:%s/%s ds:%s/%s %c %s\n",
		r.Minor, name,
		token(r.ConnState, "Unconfigured"),
		token(r.Role, "Unknown"), token(r.PeerRole, "Unknown"),
		token(r.DiskState, "DUnknown"), token(r.PeerDisk, "DUnknown"),
		proto, flags)
	fmt.Fprintf(b, "    ns:%d nr:%d dw:%d dr:%d al:%d bm:%d lo:%d pe:%d ua:%d ap:%d oos:%d\n",
		r.NetSendKiB, r.NetRecvKiB, r.DiskWriteKiB, r.DiskReadKiB, r.ALWrites, r.BMWrites,
		r.LocalPending, r.PeerPending, r.Unacked, r.AppPending, r.OutOfSyncKiB)
	if r.Sync != nil {
		writeProgress(b, r)
	}
	for _, line := range r.Blocked {
		fmt.Fprintf(b, "    blocked: %s\n", oneLine(line, maxReasonLen))
	}
	if r.SplitBrain {
		fmt.Fprintf(b, "    split brain: both nodes changed the data independently; nothing is copied until "+
			"'urbd connect --discard-my-data %s' runs on the node whose changes are to be lost\n", token(r.Name, "NAME"))
	}
	if r.Reason != "" {
		fmt.Fprintf(b, "    reason: %s\n", oneLine(r.Reason, maxReasonLen))
	}
}

func writeProgress(b *bytes.Buffer, r *Resource) {
	s := r.Sync
	permil := perMille(s.TotalKiB, s.RemainingKiB)
	// DRBD's bar: x = permil/50 cells, of which x-1 are '=' and one is '>',
	// then 20-x dots (21 characters while x is 0).
	x := int(permil / 50)
	b.WriteString("\t[")
	for i := 1; i < x; i++ {
		b.WriteByte('=')
	}
	b.WriteByte('>')
	for i := 0; i < 20-x; i++ {
		b.WriteByte('.')
	}
	b.WriteString("] ")
	if r.ConnState == "VerifyS" || r.ConnState == "VerifyT" {
		b.WriteString("verified:")
	} else {
		b.WriteString("sync'ed:")
	}
	fmt.Fprintf(b, "%3d.%d%% ", permil/10, permil%10)
	left := min(s.RemainingKiB, s.TotalKiB)
	if s.TotalKiB > mibThresholdKiB {
		fmt.Fprintf(b, "(%d/%d)M\n", left>>10, s.TotalKiB>>10)
	} else {
		fmt.Fprintf(b, "(%d/%d)K\n", left, s.TotalKiB)
	}
	secs := int64(0)
	if s.ETA > 0 {
		secs = int64(s.ETA.Seconds())
	}
	fmt.Fprintf(b, "\tfinish: %d:%02d:%02d speed: %s (%s)",
		secs/3600, (secs%3600)/60, secs%60, thousands(s.SpeedKiB), thousands(s.AvgSpeedKiB))
	if s.WantKiB > 0 {
		fmt.Fprintf(b, " want: %s", thousands(s.WantKiB))
	}
	b.WriteString(" K/sec\n")
}

// perMille is the part done of a resync of total KiB with left KiB remaining,
// in tenths of a percent, truncated. An empty resync is complete.
func perMille(total, left uint64) uint64 {
	if total == 0 {
		return 1000
	}
	done := total - min(left, total)
	hi, lo := bits.Mul64(done, 1000)
	q, _ := bits.Div64(hi, lo, total) // hi < total because done <= total
	return q
}

// thousands prints v with commas between groups of three digits, as DRBD
// prints rates: 4096 -> "4,096".
func thousands(v uint64) string {
	s := strconv.FormatUint(v, 10)
	if len(s) <= 3 {
		return s
	}
	var b strings.Builder
	head := len(s) % 3
	if head > 0 {
		b.WriteString(s[:head])
	}
	for i := head; i < len(s); i += 3 {
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(s[i : i+3])
	}
	return b.String()
}

// token makes s safe as one whitespace-separated field of the status file:
// whitespace and control characters become '_'. An empty s prints as def.
func token(s, def string) string {
	if s == "" {
		return def
	}
	if !strings.ContainsFunc(s, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) || r == utf8.RuneError }) {
		return s
	}
	return strings.Map(func(r rune) rune {
		if unicode.IsSpace(r) || unicode.IsControl(r) || r == utf8.RuneError {
			return '_'
		}
		return r
	}, s)
}

// oneLine folds s into one line of at most max bytes: control characters,
// newlines included, become spaces, and an overlong text ends in "...".
func oneLine(s string, max int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == utf8.RuneError {
			return ' '
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	if len(s) <= max {
		return s
	}
	cut := max - 3
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

// WriteJSON writes rs as a JSON array of objects with the stable field names
// of Resource and Sync (an empty array when rs is empty), followed by a
// newline. Like WriteText it sorts by minor and writes once.
func WriteJSON(w io.Writer, rs []Resource) error {
	out := sortedByMinor(rs)
	if out == nil {
		out = []Resource{}
	}
	data, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return fmt.Errorf("status: encode json: %w", err)
	}
	data = append(data, '\n')
	if _, err := w.Write(data); err != nil {
		return fmt.Errorf("%w: %w", ErrWrite, err)
	}
	return nil
}

// WriteAtomic replaces path with data: it writes a temporary file in the same
// directory, makes it world-readable (0644) and renames it over path, so a
// reader sees either the old or the new content, never a mix. It does not
// fsync: status files are rewritten every second and lost harmlessly in a
// crash, and an fsync per second per resource would cost the data disk's
// latency. Use it for nothing that must survive a power loss. Concurrent
// calls for the same path are safe; the last rename wins. On error the
// temporary file is removed and path is left as it was.
func WriteAtomic(path string, data []byte) error {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp*")
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrWrite, path, err)
	}
	tmp := f.Name()
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("%w: %s: %w", ErrWrite, path, err)
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if err := f.Chmod(0o644); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("%w: %s: %w", ErrWrite, path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("%w: %s: %w", ErrWrite, path, err)
	}
	return nil
}
