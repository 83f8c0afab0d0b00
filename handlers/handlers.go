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
	"maps"
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
	EventSplitBrain = "split-brain" // found, and left to the operator
	// EventInitialSplitBrain: every split brain found, also those the
	// after-sb policies resolve (DRBD's initial-split-brain).
	EventInitialSplitBrain = "initial-split-brain"
	EventPeerLost          = "peer-lost"
	EventPeerBack          = "peer-back"
	EventResyncStarted     = "resync-started"
	EventResyncDone        = "resync-done"
	EventPromoted          = "promoted"
	EventDemoted           = "demoted"
	EventLocalIOError      = "local-io-error"
	// EventFencePeer is not a notification: the node waits for it (Run)
	// and reads its exit code (DRBD's fence-peer handler).
	EventFencePeer = "fence-peer"
)

// Events lists every event name, in the order the documentation gives them.
var Events = []string{
	EventInitialSplitBrain, EventSplitBrain, EventPeerLost, EventPeerBack, EventResyncStarted,
	EventResyncDone, EventPromoted, EventDemoted, EventLocalIOError, EventFencePeer,
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
// the first Fire and do not change them afterwards, except Commands through
// SetCommands; a Runner must not be copied after first use. Fire, Run,
// SetCommands and Wait may be called from any goroutine.
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
	mu sync.Mutex // guards Commands once the Runner is in use
}

// SetCommands replaces Commands with a copy of commands: events fired from
// now on run the new commands; handlers already running go on.
func (r *Runner) SetCommands(commands map[string]string) {
	c := maps.Clone(commands)
	r.mu.Lock()
	r.Commands = c
	r.mu.Unlock()
}

// command returns the command configured for event.
func (r *Runner) command(event string) (string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.Commands[event]
	return c, ok
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
	c, ok := r.prepare(resource, event, extra)
	if !ok {
		return
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		c.run(ctx)
	}()
}

// ErrNoHandler is Run's error for an event without a configured command.
var ErrNoHandler = errors.New("handlers: no handler configured")

// Run runs the command configured for event like Fire, but waits for it
// and returns its exit code. The error is ErrNoHandler when no command is
// configured, and non-nil when the command could not run, was killed (at
// its timeout, or when ctx ended) or died of a signal; the code is then -1.
// Used for handlers whose answer the node needs (fence-peer).
func (r *Runner) Run(ctx context.Context, resource, event string, extra map[string]string) (int, error) {
	c, ok := r.prepare(resource, event, extra)
	if !ok {
		return -1, ErrNoHandler
	}
	c.answers = true
	r.wg.Add(1)
	defer r.wg.Done()
	return c.run(ctx)
}

// prepared is one handler run, ready to start.
type prepared struct {
	log     *slog.Logger
	command string
	env     []string
	timeout time.Duration
	answers bool // the exit code is an answer (Run), not a failure
}

// prepare looks up event's command and builds its environment; false when
// no command is configured.
func (r *Runner) prepare(resource, event string, extra map[string]string) (prepared, bool) {
	log := r.logger().With("resource", resource, "event", event)
	command, ok := r.command(event)
	if !ok || strings.TrimSpace(command) == "" {
		log.Debug("no handler configured")
		return prepared{}, false
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
	return prepared{log: log, command: command, env: env, timeout: timeout}, true
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

// run runs the command, logs how it ended and returns its exit code (-1
// and an error when it did not exit by itself).
func (c prepared) run(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeoutCause(ctx, c.timeout, ErrTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", c.command)
	cmd.Env = c.env
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
	log := c.log.With("command", c.command, "duration", elapsed.Round(time.Millisecond))
	var exit *exec.ExitError
	switch {
	case err == nil:
		log.Info("handler done")
		return 0, nil
	case ctx.Err() != nil:
		cause := context.Cause(ctx)
		if errors.Is(cause, ErrTimeout) {
			log.Error("handler killed at its timeout", "timeout", c.timeout, "stderr", stderr.lastLine())
			return -1, fmt.Errorf("killed at its timeout of %s", c.timeout)
		}
		log.Warn("handler killed on shutdown", "cause", cause, "stderr", stderr.lastLine())
		return -1, fmt.Errorf("killed: %w", cause)
	case errors.As(err, &exit):
		code := exit.ExitCode()
		if c.answers && code >= 0 {
			log.Info("handler answered", "exit_status", exitStatus(exit), "stderr", stderr.lastLine())
			return code, nil
		}
		log.Error("handler failed", "exit_status", exitStatus(exit), "stderr", stderr.lastLine())
		if code >= 0 {
			return code, nil
		}
		return -1, fmt.Errorf("ended by %s", exitStatus(exit))
	default:
		log.Error("handler could not run", "err", err, "stderr", stderr.lastLine())
		return -1, err
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
