package handlers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// recorder is a slog.Handler that keeps every record for the test to read.
type recorder struct {
	mu      sync.Mutex
	records []record
}

type record struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) WithGroup(string) slog.Handler            { return r }
func (r *recorder) WithAttrs(as []slog.Attr) slog.Handler {
	return &withAttrs{r: r, attrs: as}
}

func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	return r.handle(rec, nil)
}

func (r *recorder) handle(rec slog.Record, pre []slog.Attr) error {
	attrs := map[string]string{}
	for _, a := range pre {
		attrs[a.Key] = a.Value.String()
	}
	rec.Attrs(func(a slog.Attr) bool {
		attrs[a.Key] = a.Value.String()
		return true
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	r.records = append(r.records, record{rec.Level, rec.Message, attrs})
	return nil
}

func (r *recorder) all() []record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]record(nil), r.records...)
}

type withAttrs struct {
	r     *recorder
	attrs []slog.Attr
}

func (w *withAttrs) Enabled(context.Context, slog.Level) bool { return true }
func (w *withAttrs) WithGroup(string) slog.Handler            { return w }
func (w *withAttrs) WithAttrs(as []slog.Attr) slog.Handler {
	return &withAttrs{r: w.r, attrs: append(append([]slog.Attr(nil), w.attrs...), as...)}
}
func (w *withAttrs) Handle(_ context.Context, rec slog.Record) error {
	return w.r.handle(rec, w.attrs)
}

func newRunner(cmds map[string]string, timeout time.Duration) (*Runner, *recorder) {
	rec := &recorder{}
	return &Runner{Commands: cmds, Logger: slog.New(rec), Timeout: timeout}, rec
}

// only returns the single record of the run, failing otherwise.
func only(t *testing.T, rec *recorder) record {
	t.Helper()
	rs := rec.all()
	if len(rs) != 1 {
		t.Fatalf("%d log records, want 1: %+v", len(rs), rs)
	}
	return rs[0]
}

func TestFireRunsCommandWithEnvironment(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out")
	r, rec := newRunner(map[string]string{
		EventPromoted: `printf '%s|%s|%s|%s|%s\n' "$URBD_RESOURCE" "$URBD_EVENT" "$URBD_ROLE" "$URBD_PEER" "$HOME" > ` + out,
	}, time.Minute)
	t.Setenv("HOME", "/home/test")
	r.Fire(context.Background(), "r0", EventPromoted, map[string]string{"URBD_ROLE": "Primary", "URBD_PEER": "10.0.0.2:7789"})
	r.Wait()
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if want := "r0|promoted|Primary|10.0.0.2:7789|/home/test\n"; string(got) != want {
		t.Errorf("handler saw %q, want %q", got, want)
	}
	l := only(t, rec)
	if l.level != slog.LevelInfo || l.attrs["resource"] != "r0" || l.attrs["event"] != EventPromoted {
		t.Errorf("log record %+v", l)
	}
}

func TestFireUnconfiguredEvent(t *testing.T) {
	r, rec := newRunner(map[string]string{EventPromoted: "exit 0", EventDemoted: "   "}, time.Minute)
	r.Fire(context.Background(), "r0", EventSplitBrain, nil)
	r.Fire(context.Background(), "r0", EventDemoted, nil)
	r.Wait()
	for _, l := range rec.all() {
		if l.level > slog.LevelDebug {
			t.Errorf("unconfigured event logged %+v", l)
		}
	}
	var nilRunner Runner
	nilRunner.Fire(context.Background(), "r0", EventPromoted, nil) // no commands, no logger: nothing to do
	nilRunner.Wait()
}

func TestFireFailingHandler(t *testing.T) {
	r, rec := newRunner(map[string]string{
		EventSplitBrain: `echo first line >&2; echo "last words" >&2; echo >&2; exit 3`,
	}, time.Minute)
	r.Fire(context.Background(), "r0", EventSplitBrain, nil)
	r.Wait()
	l := only(t, rec)
	if l.level != slog.LevelError || l.attrs["exit_status"] != "exit 3" || l.attrs["stderr"] != "last words" {
		t.Errorf("log record %+v, want an error with exit 3 and the last stderr line", l)
	}
}

func TestFireKilledBySignal(t *testing.T) {
	r, rec := newRunner(map[string]string{EventPeerLost: `kill -TERM $$`}, time.Minute)
	r.Fire(context.Background(), "r0", EventPeerLost, nil)
	r.Wait()
	if l := only(t, rec); l.level != slog.LevelError || l.attrs["exit_status"] != "signal terminated" {
		t.Errorf("log record %+v, want an error with signal terminated", l)
	}
}

func TestFireLongStderr(t *testing.T) {
	r, rec := newRunner(map[string]string{
		EventResyncDone: `i=0; while [ $i -lt 2000 ]; do echo "noise line $i of a chatty handler" >&2; i=$((i+1)); done; echo final >&2; exit 1`,
	}, time.Minute)
	r.Fire(context.Background(), "r0", EventResyncDone, nil)
	r.Wait()
	if l := only(t, rec); l.attrs["stderr"] != "final" {
		t.Errorf("stderr = %q, want final", l.attrs["stderr"])
	}
}

// TestFireHangingHandler checks that a handler that never ends is killed at
// its timeout together with the children it started, and that Wait returns.
func TestFireHangingHandler(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	r, rec := newRunner(map[string]string{
		EventPeerBack: `echo waiting >&2; sleep 300 & echo $! > ` + pidFile + `; wait`,
	}, 300*time.Millisecond)
	start := time.Now()
	r.Fire(context.Background(), "r0", EventPeerBack, nil)
	r.Wait()
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("Wait took %v for a handler with a 300ms timeout", d)
	}
	l := only(t, rec)
	if l.level != slog.LevelError || !strings.Contains(l.msg, "timeout") || l.attrs["stderr"] != "waiting" {
		t.Errorf("log record %+v, want a timeout error with the stderr line", l)
	}
	data, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatal(err)
	}
	// SIGKILL is delivered asynchronously: give the kernel a moment to
	// finish the child off before calling it a survivor.
	deadline := time.Now().Add(10 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("the handler's child %d survived the timeout", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// alive reports whether pid runs (a zombie waiting for its reaper does not).
func alive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	return len(f) > 0 && f[0] != "Z" && f[0] != "X"
}

func TestFireCancelledContext(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out")
	r, rec := newRunner(map[string]string{EventDemoted: "touch " + out}, time.Minute)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r.Fire(ctx, "r0", EventDemoted, nil)
	r.Wait()
	if _, err := os.Stat(out); err == nil {
		t.Errorf("handler ran with a cancelled context")
	}
	if l := only(t, rec); l.level != slog.LevelWarn {
		t.Errorf("log record %+v, want a warning", l)
	}
}

func TestFireDropsBadEnvironment(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out")
	r, rec := newRunner(map[string]string{EventPromoted: `env | grep '^URBD_' | sort > ` + out}, time.Minute)
	r.Fire(context.Background(), "r0", EventPromoted, map[string]string{
		"URBD_ROLE": "Primary", "BAD-KEY": "x", "URBD_NUL": "a\x00b", "": "empty", "URBD_EVENT_COUNT": "1",
	})
	r.Wait()
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	want := "URBD_EVENT=promoted\nURBD_EVENT_COUNT=1\nURBD_RESOURCE=r0\nURBD_ROLE=Primary\n"
	if string(got) != want {
		t.Errorf("environment\n%s\nwant\n%s", got, want)
	}
	warnings := 0
	for _, l := range rec.all() {
		if l.level == slog.LevelWarn {
			warnings++
		}
	}
	if warnings != 3 {
		t.Errorf("%d warnings for 3 dropped entries", warnings)
	}
}

func TestFireConcurrently(t *testing.T) {
	dir := t.TempDir()
	r, rec := newRunner(map[string]string{EventResyncStarted: `echo "$URBD_RESOURCE" > "$OUT_DIR/$URBD_RESOURCE"`}, time.Minute)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.Fire(context.Background(), fmt.Sprintf("r%d", i), EventResyncStarted, map[string]string{"OUT_DIR": dir})
		}()
	}
	wg.Wait()
	r.Wait()
	for i := range 8 {
		name := fmt.Sprintf("r%d", i)
		if got, err := os.ReadFile(filepath.Join(dir, name)); err != nil || string(got) != name+"\n" {
			t.Errorf("%s: %q, %v", name, got, err)
		}
	}
	if n := len(rec.all()); n != 8 {
		t.Errorf("%d log records, want 8", n)
	}
}

func TestTailBuffer(t *testing.T) {
	var tb tailBuffer
	if got := tb.lastLine(); got != "" {
		t.Errorf("empty buffer: %q", got)
	}
	tb.Write([]byte(strings.Repeat("x", 3*maxTail)))
	tb.Write([]byte("\nalmost\nlast line  \n\n"))
	if len(tb.buf) > maxTail {
		t.Errorf("buffer grew to %d bytes", len(tb.buf))
	}
	if got := tb.lastLine(); got != "last line" {
		t.Errorf("lastLine = %q", got)
	}
	n, err := tb.Write(make([]byte, 5*maxTail))
	if n != 5*maxTail || err != nil {
		t.Errorf("Write = %d, %v", n, err)
	}
}

func TestValidEnvName(t *testing.T) {
	for k, want := range map[string]bool{
		"URBD_ROLE": true, "_x": true, "a1": true, "": false, "1A": false, "A-B": false, "A=B": false, "Ä": false,
	} {
		if got := validEnvName(k); got != want {
			t.Errorf("validEnvName(%q) = %v", k, got)
		}
	}
}

func TestKnown(t *testing.T) {
	for _, e := range Events {
		if !Known(e) {
			t.Errorf("Known(%q) = false", e)
		}
	}
	if Known("split_brain") || Known("") {
		t.Error("Known accepts unknown events")
	}
}

// TestRunReturnsExitCode: Run waits for the handler and returns its exit
// code as the answer (fence-peer's 4 is a success, logged at Info), with the
// environment Fire gives; a handler killed at its timeout, or none
// configured, is an error.
func TestRunReturnsExitCode(t *testing.T) {
	out := filepath.Join(t.TempDir(), "env")
	r, rec := newRunner(map[string]string{
		EventFencePeer: `echo "$URBD_RESOURCE $URBD_EVENT $URBD_PEER" > ` + out + `; echo outdated >&2; exit 4`,
		EventPeerBack:  `sleep 300`,
	}, 300*time.Millisecond)
	code, err := r.Run(context.Background(), "r0", EventFencePeer, map[string]string{"URBD_PEER": "10.0.0.2:7789"})
	if err != nil || code != 4 {
		t.Fatalf("Run = %d, %v; want 4, nil", code, err)
	}
	if got, _ := os.ReadFile(out); strings.TrimSpace(string(got)) != "r0 fence-peer 10.0.0.2:7789" {
		t.Errorf("handler saw %q", got)
	}
	if l := only(t, rec); l.level != slog.LevelInfo || l.attrs["exit_status"] != "exit 4" || l.attrs["stderr"] != "outdated" {
		t.Errorf("log record %+v, want an Info record with exit 4 and the stderr line", l)
	}

	if code, err := r.Run(context.Background(), "r0", EventPeerBack, nil); err == nil || code != -1 || !strings.Contains(err.Error(), "timeout") {
		t.Errorf("a hanging handler: Run = %d, %v; want -1 and a timeout error", code, err)
	}
	if code, err := r.Run(context.Background(), "r0", EventSplitBrain, nil); !errors.Is(err, ErrNoHandler) || code != -1 {
		t.Errorf("no handler: Run = %d, %v; want -1, ErrNoHandler", code, err)
	}
}

// TestSetCommands: events fired after SetCommands run the new commands, an
// event whose command was removed runs nothing, and the caller's map is
// copied (changing it later changes nothing).
func TestSetCommands(t *testing.T) {
	dir := t.TempDir()
	r, _ := newRunner(map[string]string{EventPromoted: "touch " + filepath.Join(dir, "old")}, time.Minute)
	next := map[string]string{EventDemoted: "touch " + filepath.Join(dir, "new")}
	r.SetCommands(next)
	next[EventPromoted] = "touch " + filepath.Join(dir, "changed-later")
	r.Fire(context.Background(), "r0", EventPromoted, nil)
	r.Fire(context.Background(), "r0", EventDemoted, nil)
	r.Wait()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if len(names) != 1 || names[0] != "new" {
		t.Errorf("handlers run after SetCommands left %v, want [new]", names)
	}
}
