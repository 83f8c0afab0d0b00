package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestSdNotifySendsState(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify.sock")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	t.Setenv("NOTIFY_SOCKET", path)
	if err := sdNotify("READY=1"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, err := ln.Read(buf)
	if err != nil || string(buf[:n]) != "READY=1" {
		t.Fatalf("got %q, %v", buf[:n], err)
	}
}

func TestSdNotifyWithoutSystemdIsANoOp(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if err := sdNotify("READY=1"); err != nil {
		t.Fatalf("sdNotify without NOTIFY_SOCKET: %v", err)
	}
}

func TestAttachPIDFileIsPerDevice(t *testing.T) {
	a, b := attachPIDFile("/run/urbd", 0), attachPIDFile("/run/urbd", 1)
	if a == b || filepath.Dir(a) != "/run/urbd/attach" {
		t.Fatalf("pid files %q and %q", a, b)
	}
}

// fakeRefresher returns its results in turn.
type fakeRefresher struct {
	results []refreshResult
}

type refreshResult struct {
	from, to int64
	err      error
}

func (f *fakeRefresher) Refresh(context.Context) (int64, int64, error) {
	r := f.results[0]
	f.results = f.results[1:]
	return r.from, r.to, r.err
}

// TestRefreshOnHangupLogsOneLinePerSignal: each SIGHUP runs Refresh once
// and logs its outcome in one line; the loop ends with its context.
func TestRefreshOnHangupLogsOneLinePerSignal(t *testing.T) {
	att := &fakeRefresher{results: []refreshResult{
		{1 << 30, 2 << 30, nil},
		{2 << 30, 2 << 30, nil},
		{0, 0, errors.New("nbd: export shrank from 2147483648 to 1073741824 bytes: /dev/nbd0 keeps its size")},
	}}
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	hup := make(chan os.Signal) // unbuffered: a send returns once the loop took it
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		refreshOnHangup(ctx, att, hup, log, "/dev/nbd0")
	}()
	for range 3 {
		hup <- syscall.SIGHUP
	}
	cancel()
	<-done

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	want := []string{
		`msg="grew /dev/nbd0 from 1073741824 to 2147483648 bytes"`,
		`msg="/dev/nbd0 already has the export's size, 2147483648 bytes"`,
		`msg="cannot grow /dev/nbd0" err="nbd: export shrank from 2147483648 to 1073741824 bytes: /dev/nbd0 keeps its size"`,
	}
	if len(lines) != len(want) {
		t.Fatalf("%d log lines, want %d:\n%s", len(lines), len(want), buf.String())
	}
	for i, w := range want {
		if !strings.Contains(lines[i], w) {
			t.Errorf("line %d = %s, want it to contain %s", i, lines[i], w)
		}
	}
}

// writeAttachPID writes pid into RUN/attach/name, where attach records its
// pid as nbdN.pid.
func writeAttachPID(t *testing.T, runDir, name string, pid int) {
	t.Helper()
	path := filepath.Join(filepath.Dir(attachPIDFile(runDir, 0)), name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestSignalAttachesSkipsProcessesThatAreNotUrbd: a pid file naming a
// process that is not urbd (a reused pid) or holding garbage is skipped.
func TestSignalAttachesSkipsProcessesThatAreNotUrbd(t *testing.T) {
	sleep := exec.Command("sleep", "30")
	if err := sleep.Start(); err != nil {
		t.Fatalf("starting sleep: %v", err)
	}
	dir := t.TempDir()
	writeAttachPID(t, dir, "nbd0.pid", sleep.Process.Pid)
	if err := os.WriteFile(attachPIDFile(dir, 1), []byte("not a pid\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	if n := signalAttaches(dir); n != 0 {
		t.Errorf("signalAttaches = %d, want 0", n)
	}
	// Had sleep been sent SIGHUP, that (not our SIGTERM) would have ended it.
	sleep.Process.Signal(syscall.SIGTERM)
	err := sleep.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("sleep: %v", err)
	}
	if ws := exit.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Errorf("sleep ended with %v, want SIGTERM only", exit)
	}
}

// TestSignalAttachesSignalsUrbdAttach: a pid file naming a process of this
// binary (a stand-in for urbd attach) gets one SIGHUP; a file whose name is
// not nbdN.pid is ignored.
func TestSignalAttachesSignalsUrbdAttach(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	helper := exec.Command(exe, "-test.run=^TestHangupHelperProcess$")
	helper.Env = append(os.Environ(), "URBD_TEST_HANGUP_HELPER=1")
	out, err := helper.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	defer helper.Process.Kill()
	r := bufio.NewReader(out)
	if line, err := r.ReadString('\n'); line != "ready\n" {
		t.Fatalf("helper said %q, %v", line, err)
	}
	dir := t.TempDir()
	writeAttachPID(t, dir, "nbd1.pid", helper.Process.Pid)
	writeAttachPID(t, dir, "nbdx.pid", helper.Process.Pid)

	if n := signalAttaches(dir); n != 1 {
		t.Errorf("signalAttaches = %d, want 1", n)
	}
	line, _ := r.ReadString('\n')
	if err := helper.Wait(); err != nil || line != "hup\n" {
		t.Fatalf("helper said %q and ended with %v; want hup and exit 0", line, err)
	}
}

// TestHangupHelperProcess is not a test: TestSignalAttachesSignalsUrbdAttach
// runs this binary with URBD_TEST_HANGUP_HELPER=1 to get a process that
// readAttachPID takes for urbd. It says "ready", waits for SIGHUP, says
// "hup" and exits 0; without SIGHUP within 10s it exits 1.
func TestHangupHelperProcess(t *testing.T) {
	if os.Getenv("URBD_TEST_HANGUP_HELPER") != "1" {
		return
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	os.Stdout.WriteString("ready\n")
	select {
	case <-hup:
		os.Stdout.WriteString("hup\n")
		os.Exit(0)
	case <-time.After(10 * time.Second):
		os.Exit(1)
	}
}
