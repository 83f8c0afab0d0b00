package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/urbd/urbd/nbd"
)

func init() {
	commands = append(commands, attachCommand, detachCommand)
}

var attachCommand = &cli.Command{
	Name:      "attach",
	Usage:     "connect /dev/nbdN to an NBD export and keep it connected (foreground)",
	ArgsUsage: " ",
	Description: "Dials the export, negotiates in userspace and hands the sockets to the kernel's nbd driver. " +
		"Stays in the foreground: when the server goes away it redials (every --nbd address in turn) and " +
		"hands new sockets to the kernel, so I/O waits instead of failing while the outage is shorter than " +
		"--timeout. SIGTERM/SIGINT disconnect the device and exit 0; so does urbd detach. If attach is killed " +
		"with SIGKILL the device stays configured without a supervisor: run urbd detach. Under systemd use " +
		"Type=notify: attach reports READY=1 once the device is live. SIGHUP makes it re-read the export's " +
		"size and grow the device to it (urbd resize sends it after growing a resource); the device never " +
		"shrinks, and SIGHUP does not stop attach.",
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "device", Usage: "nbd device, e.g. /dev/nbd0", Required: true},
		&cli.StringSliceFlag{Name: "nbd", Usage: "export address unix:SOCK or tcp:HOST:PORT; repeat for failover", Required: true},
		&cli.IntFlag{Name: "connections", Usage: "sockets per device (needs a multi-conn export when > 1)", Value: 1},
		&cli.DurationFlag{Name: "timeout", Usage: "longest server outage the filesystem survives without I/O errors", Value: 30 * time.Second},
		&cli.DurationFlag{Name: "io-timeout", Usage: "a request unanswered this long makes attach reconnect and resend it (default: the smaller of --timeout and 10s)"},
		&cli.StringFlag{Name: "export", Usage: "export name to ask for", Value: ""},
	},
	Action: runAttach,
}

var detachCommand = &cli.Command{
	Name:      "detach",
	Usage:     "disconnect /dev/nbdN and stop its urbd attach process",
	ArgsUsage: " ",
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "device", Usage: "nbd device, e.g. /dev/nbd0", Required: true},
	},
	Action: runDetach,
}

// attachPIDFile is where a running attach records its pid for detach.
func attachPIDFile(runDir string, index int) string {
	return filepath.Join(runDir, "attach", fmt.Sprintf("nbd%d.pid", index))
}

func runAttach(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("attach takes no arguments, got %q: e.g. urbd attach --device /dev/nbd0 --nbd unix:/run/r0.sock", c.Args().First())
	}
	index, err := nbd.DeviceIndex(c.String("device"))
	if err != nil {
		return err
	}
	for _, f := range []string{"timeout", "io-timeout"} {
		if c.IsSet(f) && c.Duration(f) < time.Second {
			return fmt.Errorf("--%s %s is too short: the kernel counts whole seconds, use at least 1s", f, c.Duration(f))
		}
	}
	kern, err := nbd.OpenNetlink()
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// Caught from the start: SIGHUP's default action would kill attach.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	events := make(chan int, 1)
	if w, err := kern.WatchLinkDead(); err != nil {
		log.Warn("no link-dead events; watching sockets only", "err", err)
	} else {
		defer w.Close()
		go forwardLinkDead(w, events)
	}

	cfg := nbd.AttachConfig{
		Index:       index,
		Addrs:       c.StringSlice("nbd"),
		Export:      c.String("export"),
		Connections: c.Int("connections"),
		Timeout:     c.Duration("timeout"),
		IOTimeout:   c.Duration("io-timeout"),
		Dial:        nbd.Dial,
		Kernel:      kern,
		Events:      events,
		Logger:      log,
	}
	dctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	att, err := nbd.Attach(dctx, cfg)
	cancel()
	if err != nil {
		return err
	}
	// Type=notify units start their dependents (mounts) only now.
	if err := sdNotify("READY=1"); err != nil {
		log.Warn("cannot notify systemd", "err", err)
	}
	hctx, hcancel := context.WithCancel(ctx)
	hdone := make(chan struct{})
	go func() {
		defer close(hdone)
		refreshOnHangup(hctx, att, hup, log, c.String("device"))
	}()
	defer func() { hcancel(); <-hdone }()
	pidFile := attachPIDFile(runDir(c), index)
	if err := writePIDFile(pidFile); err != nil {
		log.Warn("urbd detach will not find this process", "err", err)
	} else {
		defer os.Remove(pidFile)
	}
	err = att.Supervise(ctx)
	sdNotify("STOPPING=1")
	if errors.Is(err, nbd.ErrDetached) {
		log.Info("device was detached", "device", c.String("device"))
		return nil
	}
	return err
}

// forwardLinkDead passes LINK_DEAD events on without blocking: one pending
// event is enough to wake the supervisor. It returns when w is closed.
func forwardLinkDead(w *nbd.LinkDeadWatcher, events chan<- int) {
	for {
		idx, err := w.Wait(time.Time{})
		if err != nil {
			return
		}
		select {
		case events <- idx:
		default:
		}
	}
}

// refresher is the part of *nbd.Attachment that refreshOnHangup uses.
type refresher interface {
	Refresh(ctx context.Context) (from, to int64, err error)
}

// refreshOnHangup grows the device to the export's size each time a signal
// arrives on hup, logging one line per signal, until ctx is done.
func refreshOnHangup(ctx context.Context, att refresher, hup <-chan os.Signal, log *slog.Logger, device string) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		from, to, err := att.Refresh(ctx)
		switch {
		case err != nil:
			log.Warn(fmt.Sprintf("cannot grow %s", device), "err", err)
		case to > from:
			log.Info(fmt.Sprintf("grew %s from %d to %d bytes", device, from, to))
		default:
			log.Info(fmt.Sprintf("%s already has the export's size, %d bytes", device, to))
		}
	}
}

// signalAttaches sends SIGHUP to every running urbd attach recorded in
// runDir (RUN/attach/nbdN.pid), so that each grows its device to its
// export's size, and returns how many it signalled. Pid files of processes
// that are gone or are not urbd are skipped, as are signals that fail.
func signalAttaches(runDir string) int {
	paths, err := filepath.Glob(filepath.Join(filepath.Dir(attachPIDFile(runDir, 0)), "nbd*.pid"))
	if err != nil {
		return 0
	}
	n := 0
	for _, p := range paths {
		index, err := nbd.DeviceIndex(strings.TrimSuffix(filepath.Base(p), ".pid"))
		if err != nil {
			continue
		}
		pid := readAttachPID(attachPIDFile(runDir, index))
		if pid == 0 {
			continue
		}
		if err := unix.Kill(pid, unix.SIGHUP); err == nil {
			n++
		}
	}
	return n
}

// sdNotify sends a state line to systemd's notification socket when the
// process runs under a Type=notify unit ($NOTIFY_SOCKET set); otherwise it
// does nothing.
func sdNotify(state string) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}

func writePIDFile(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644)
}

// readAttachPID returns the pid of the urbd attach process for the
// device, or 0 if none is running.
func readAttachPID(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	// Only signal a process that is urbd: the pid may have been reused.
	self, err1 := os.Executable()
	exe, err2 := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err1 != nil || err2 != nil || filepath.Base(exe) != filepath.Base(self) {
		return 0
	}
	return pid
}

func runDetach(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("detach takes no arguments, got %q: e.g. urbd detach --device /dev/nbd0", c.Args().First())
	}
	index, err := nbd.DeviceIndex(c.String("device"))
	if err != nil {
		return err
	}
	kern, err := nbd.OpenNetlink()
	if err != nil {
		return err
	}
	pid := readAttachPID(attachPIDFile(runDir(c), index))
	// The kernel accepts a disconnect of an idle device silently; ask first.
	connected, err := kern.Connected(index)
	if err != nil {
		return err
	}
	if !connected && pid == 0 {
		return fmt.Errorf("%s is not attached", c.String("device"))
	}
	derr := kern.Disconnect(index)
	if pid == 0 {
		if errors.Is(derr, nbd.ErrNotAttached) {
			return nil
		}
		return derr
	}
	// The attach process disconnects again on SIGTERM (harmless) and exits.
	if err := unix.Kill(pid, unix.SIGTERM); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("stopping urbd attach (pid %d): %w", pid, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("urbd attach (pid %d) for %s did not exit within 30s", pid, c.String("device"))
}
