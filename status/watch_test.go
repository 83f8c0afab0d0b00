package status

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

var watchTime = time.Date(2026, 11, 23, 15, 54, 6, 0, time.UTC)

func TestRenderWatchGolden(t *testing.T) {
	for name, rs := range scenarios() {
		for _, width := range []int{80, 0, 132} {
			if width != 80 && name != "resync" {
				continue
			}
			suffix := ""
			if width != 80 {
				suffix = "-w" + map[int]string{0: "default", 132: "132"}[width]
			}
			t.Run(name+suffix, func(t *testing.T) {
				var b bytes.Buffer
				RenderWatch(&b, watchTime, rs, width)
				golden(t, "watch-"+name+suffix, b.Bytes())
			})
		}
	}
}

// TestRenderWatchWarnings checks that alarming states stand out in colour
// and that the frame starts by clearing the screen.
func TestRenderWatchWarnings(t *testing.T) {
	for _, tc := range []struct {
		name  string
		r     Resource
		want  []string
		avoid []string
	}{
		{"split brain", Resource{Name: "r0", ConnState: "StandAlone", SplitBrain: true},
			[]string{ansiRed + "SPLIT BRAIN" + ansiReset, ansiYellow + "StandAlone" + ansiReset, "urbd connect --discard-my-data r0\n"}, nil},
		{"suspended", Resource{Name: "r0", ConnState: "WFConnection", Suspended: true},
			[]string{ansiRed + "SUSPENDED" + ansiReset, ansiYellow + "WFConnection" + ansiReset}, []string{"SPLIT BRAIN"}},
		{"inconsistent", Resource{Name: "r0", DiskState: "Inconsistent", PeerDisk: "Outdated", OutOfSyncKiB: 4},
			[]string{ansiYellow + "Inconsistent" + ansiReset, ansiYellow + "Outdated" + ansiReset, ansiYellow + "4KiB" + ansiReset}, []string{"SUSPENDED"}},
		{"healthy", Resource{Name: "r0", ConnState: "Connected", DiskState: "UpToDate", PeerDisk: "UpToDate"},
			[]string{ansiGreen + "Connected" + ansiReset, ansiGreen + "UpToDate" + ansiReset}, []string{ansiRed, ansiYellow}},
	} {
		var b bytes.Buffer
		RenderWatch(&b, watchTime, []Resource{tc.r}, 80)
		out := b.String()
		if !strings.HasPrefix(out, ansiClear) {
			t.Errorf("%s: frame does not clear the screen", tc.name)
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: frame lacks %q:\n%s", tc.name, w, out)
			}
		}
		for _, a := range tc.avoid {
			if strings.Contains(out, a) {
				t.Errorf("%s: frame contains %q:\n%s", tc.name, a, out)
			}
		}
	}
}

// TestRenderWatchWidth checks that no line is wider than the terminal,
// whatever the width, once colour codes are removed.
func TestRenderWatchWidth(t *testing.T) {
	long := designExample()
	long.Reason = strings.Repeat("a very long reason ", 40)
	for _, width := range []int{-5, 1, 40, 60, 80, 100, 132, 400} {
		var b bytes.Buffer
		RenderWatch(&b, watchTime, []Resource{long}, width)
		limit := max(minWidth, min(width, maxWidth))
		if width <= 0 {
			limit = defaultWidth
		}
		for _, l := range strings.Split(stripANSI(b.String()), "\n") {
			if n := len([]rune(l)); n > limit {
				t.Errorf("width %d: line of %d columns: %q", width, n, l)
			}
		}
	}
}

func stripANSI(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == 0x1b {
			for i < len(s) && !(s[i] >= 'A' && s[i] <= 'Z' || s[i] >= 'a' && s[i] <= 'z') {
				i++
			}
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func TestFit(t *testing.T) {
	for _, tc := range []struct {
		in    string
		width int
		want  string
	}{
		{"short", 10, "short"},
		{"exactly10!", 10, "exactly10!"},
		{"eleven cols", 10, "eleven co…"},
		{ansiRed + "red" + ansiReset + " and more text", 6, ansiRed + "red" + ansiReset + " a…" + ansiReset},
		{"ééééééé", 4, "ééé…"},
	} {
		if got := fit(tc.in, tc.width); got != tc.want {
			t.Errorf("fit(%q, %d) = %q, want %q", tc.in, tc.width, got, tc.want)
		}
	}
}

func TestETA(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "unknown", -time.Second: "unknown", 59 * time.Second: "0:00:59",
		time.Hour + 2*time.Minute + 3*time.Second: "1:02:03",
	} {
		if got := eta(d); got != want {
			t.Errorf("eta(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestWatch(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ticks := make(chan time.Time)
	var mu sync.Mutex
	var out bytes.Buffer
	w := writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return out.Write(p)
	})
	calls := 0
	fetch := func(context.Context) ([]Resource, error) {
		calls++
		if calls == 2 {
			return nil, errors.New("dial unix /run/urbd/r0/control.sock: connection refused")
		}
		return []Resource{designExample()}, nil
	}
	done := make(chan error, 1)
	go func() { done <- Watch(ctx, w, watchTime, ticks, func() int { return 80 }, fetch) }()
	ticks <- watchTime.Add(time.Second)
	ticks <- watchTime.Add(2 * time.Second)
	close(ticks)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	frames := strings.Split(out.String(), ansiClear)[1:]
	if len(frames) != 3 {
		t.Fatalf("%d frames, want 3", len(frames))
	}
	for i, want := range []string{"15:54:06", "15:54:07", "15:54:08"} {
		if !strings.Contains(frames[i], want) {
			t.Errorf("frame %d lacks time %s", i, want)
		}
	}
	if !strings.Contains(frames[1], "connection refused") || strings.Contains(frames[1], "no resources") {
		t.Errorf("error frame:\n%s", frames[1])
	}
	if !strings.Contains(frames[2], "SyncSource") {
		t.Errorf("frame after the error does not show the resource again:\n%s", frames[2])
	}

	// Cancelling ctx ends the watch too.
	cancel()
	if err := Watch(ctx, w, watchTime, make(chan time.Time), nil, fetch); err != nil {
		t.Fatal(err)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
