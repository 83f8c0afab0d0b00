// Package handlers runs the operator's commands on resource events (split
// brain, peer lost, resync done ...), the way drbd.conf's handlers section
// does.
//
// Contract: a handler never blocks, slows or fails the replication. Fire
// returns at once; the command runs in its own process group under /bin/sh
// -c with a timeout, and whatever it does (exit non-zero, hang, print
// megabytes) ends up in one log record. Handlers are notifications: they run
// after the state change they report has happened, and a node does not wait
// for them before acknowledging writes or changing state again.
package handlers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Events a handler can be configured for. The names are the keys of the
// [handlers] table of the resource file.
const (
	EventSplitBrain    = "split-brain"
	EventPeerLost      = "peer-lost"
	EventPeerBack      = "peer-back"
	EventResyncStarted = "resync-started"
	EventResyncDone    = "resync-done"
	EventPromoted      = "promoted"
	EventDemoted       = "demoted"
	EventLocalIOError  = "local-io-error"
)

// Events lists every event name, in the order the documentation gives them.
var Events = []string{
	EventSplitBrain, EventPeerLost, EventPeerBack, EventResyncStarted,
	EventResyncDone, EventPromoted, EventDemoted, EventLocalIOError,
}

// Known reports whether event is one of Events.
func Known(event string) bool { return slices.Contains(Events, event) }

// DefaultTimeout bounds a handler when Runner.Timeout is zero.
const DefaultTimeout = 30 * time.Second

// waitDelay is how long Fire waits for a killed handler's pipes to close
// (a grandchild may hold them open) before giving up on its output.
const waitDelay = 2 * time.Second

// maxTail is how much of a handler's standard error is kept, from its end.
const maxTail = 4096

// ErrTimeout is the cause logged for a handler killed at its timeout.
var ErrTimeout = errors.New("handlers: timed out")

// Runner runs the configured command for an event. Set the fields before
// the first Fire and do not change them afterwards; a Runner must not be
// copied after first use. Fire and Wait may be called from any goroutine.
type Runner struct {
	// Commands maps an event name to a shell command line. Events without
	// an entry are ignored.
	Commands map[string]string
	// Logger receives one record per handler run; nil means slog.Default().
	Logger *slog.Logger
	// Timeout bounds each run; zero means DefaultTimeout. At the timeout the
	// handler's whole process group is killed.
	Timeout time.Duration

	wg sync.WaitGroup
}

// Fire starts the command configured for event, if any, and returns without
// waiting for it. The command runs as `/bin/sh -c COMMAND` in a new process
// group, with the daemon's environment plus URBD_RESOURCE=resource,
// URBD_EVENT=event and the entries of extra (by convention URBD_ROLE,
// URBD_PEER, URBD_PEER_ROLE, URBD_DISK ...; keys that are not valid
// environment names are dropped with a warning). Its standard input is
// empty, its standard output is discarded, and the last line of its
// standard error is logged when it fails.
//
// The run ends at Timeout or when ctx is cancelled, whichever comes first;
// either kills the process group. Fire does not retain extra.
func (r *Runner) Fire(ctx context.Context, resource, event string, extra map[string]string) {
	log := r.logger().With("resource", resource, "event", event)
	command, ok := r.Commands[event]
	if !ok || strings.TrimSpace(command) == "" {
		log.Debug("no handler configured")
		return
	}
	env := append(os.Environ(), "URBD_RESOURCE="+resource, "URBD_EVENT="+event)
	keys := make([]string, 0, len(extra))
	for k := range extra {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		v := extra[k]
		if !validEnvName(k) || strings.ContainsRune(v, 0) {
			log.Warn("handler environment entry dropped", "key", k)
			continue
		}
		env = append(env, k+"="+v)
	}
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		run(ctx, log, command, env, timeout)
	}()
}

// Wait blocks until every handler started by Fire has finished or been
// killed. The daemon calls it on shutdown after cancelling the context it
// passed to Fire, so no handler outlives it unnoticed.
func (r *Runner) Wait() { r.wg.Wait() }

func (r *Runner) logger() *slog.Logger {
	if r.Logger != nil {
		return r.Logger
	}
	return slog.Default()
}

func run(ctx context.Context, log *slog.Logger, command string, env []string, timeout time.Duration) {
	ctx, cancel := context.WithTimeoutCause(ctx, timeout, ErrTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", command)
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		// Kill the whole group: sh's children would otherwise survive.
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	cmd.WaitDelay = waitDelay
	var stderr tailBuffer
	cmd.Stderr = &stderr
	start := time.Now()
	err := cmd.Run()
	elapsed := time.Since(start)
	log = log.With("command", command, "duration", elapsed.Round(time.Millisecond))
	switch {
	case err == nil:
		log.Info("handler done")
	case ctx.Err() != nil:
		cause := context.Cause(ctx)
		if errors.Is(cause, ErrTimeout) {
			log.Error("handler killed at its timeout", "timeout", timeout, "stderr", stderr.lastLine())
		} else {
			log.Warn("handler killed on shutdown", "cause", cause, "stderr", stderr.lastLine())
		}
	default:
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			log.Error("handler failed", "exit_status", exitStatus(exit), "stderr", stderr.lastLine())
		} else {
			log.Error("handler could not run", "err", err, "stderr", stderr.lastLine())
		}
	}
}

// exitStatus describes how a process ended: "exit 3" or "signal killed".
func exitStatus(e *exec.ExitError) string {
	if ws, ok := e.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return "signal " + ws.Signal().String()
	}
	return fmt.Sprintf("exit %d", e.ExitCode())
}

// validEnvName accepts names of the form [A-Za-z_][A-Za-z0-9_]*.
func validEnvName(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		switch {
		case c == '_', c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// tailBuffer keeps the last maxTail bytes written to it. It is written by
// exec's copying goroutine and read only after Run returned.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(p)
	if len(p) > maxTail {
		p = p[len(p)-maxTail:]
	}
	t.buf = append(t.buf, p...)
	if len(t.buf) > maxTail {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-maxTail:]...)
	}
	return n, nil
}

// lastLine is the last non-empty line written, trimmed.
func (t *tailBuffer) lastLine() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	lines := bytes.Split(bytes.TrimSpace(t.buf), []byte("\n"))
	return strings.TrimSpace(string(lines[len(lines)-1]))
}
