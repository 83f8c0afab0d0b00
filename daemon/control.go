package daemon

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/urbd/urbd/status"
)

// Request is one command sent to a running daemon over RUN/NAME/control.sock,
// as one JSON line. The daemon answers with one Response line.
type Request struct {
	Cmd     string `json:"cmd"` // primary, secondary, connect, disconnect, status, adjust, show, invalidate, invalidate-remote, resize, attach-disk, detach-disk, pause-sync, resume-sync, verify, down
	Force   bool   `json:"force,omitempty"`
	Discard bool   `json:"discard,omitempty"`
	// AssumeClean, for resize: the disks' new parts are equal, resync none.
	AssumeClean bool `json:"assume_clean,omitempty"`
	// SameDisk, for attach-disk: the disk is the one detach-disk took out,
	// unchanged; resync only what the peer changed since.
	SameDisk bool `json:"same_disk,omitempty"`
	// Settings, for adjust, are the settings to change, by their flag names
	// (resync-rate, on-peer-loss) with the values as typed; without any,
	// adjust reads the resource's settings again (Options.Reload).
	Settings map[string]string `json:"settings,omitempty"`
	// Start and Stop, for verify, are the bytes to compare (Stop 0: up to
	// the end); Resume goes on where the last verify stopped early.
	Start  int64 `json:"start,omitempty"`
	Stop   int64 `json:"stop,omitempty"`
	Resume bool  `json:"resume,omitempty"`
}

// Response is the daemon's answer. Error is one line that says what to do.
type Response struct {
	OK      bool             `json:"ok"`
	Error   string           `json:"error,omitempty"`
	Message string           `json:"message,omitempty"`
	Status  *status.Resource `json:"status,omitempty"`
	// Settings answers show: the settings in effect, in order; Message then
	// says what reading the resource file again would change, if anything.
	Settings []Setting `json:"settings,omitempty"`
}

// ErrNotRunning means no daemon answers for the resource.
var ErrNotRunning = errors.New("daemon: resource is not running")

// SocketPath is where the daemon of resource name listens for commands.
func SocketPath(runDir, name string) string {
	return filepath.Join(runDir, name, "control.sock")
}

// StatusPath is the resource's /proc/drbd-like status file.
func StatusPath(runDir, name string) string {
	return filepath.Join(runDir, name, "status")
}

// send connects to the daemon of resource name and sends req; the answer
// lines are read from the scanner. The connection's deadline is ctx's.
func send(ctx context.Context, runDir, name string, req Request) (net.Conn, *bufio.Scanner, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", SocketPath(runDir, name))
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s (no daemon at %s; start it with urbd up %s, or set --run-dir)", ErrNotRunning, name, SocketPath(runDir, name), name)
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("daemon: sending %s to %s: %w", req.Cmd, name, err)
	}
	sc := bufio.NewScanner(conn)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	return conn, sc, nil
}

// Call sends one request to the daemon of resource name and returns its
// answer. A refusal is returned as an error carrying the daemon's message.
func Call(ctx context.Context, runDir, name string, req Request) (*Response, error) {
	conn, sc, err := send(ctx, runDir, name, req)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	var resp Response
	if !sc.Scan() {
		return nil, fmt.Errorf("daemon: %s: no answer to %s", name, req.Cmd)
	}
	if err := json.Unmarshal(sc.Bytes(), &resp); err != nil {
		return nil, fmt.Errorf("daemon: %s: bad answer to %s: %w", name, req.Cmd, err)
	}
	if !resp.OK {
		return &resp, errors.New(resp.Error)
	}
	return &resp, nil
}

// streamTo runs events on conn until the daemon stops or the client goes
// away (its end of the socket reads EOF).
func streamTo(ctx context.Context, conn net.Conn, events streamer) {
	conn.SetDeadline(time.Time{})
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		io.Copy(io.Discard, conn)
		cancel()
	}()
	enc := json.NewEncoder(conn)
	events(ctx, func(r Response) error {
		conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
		return enc.Encode(r)
	})
}

// Events streams the status of resource name from its daemon: fn is called
// with the status now and again after each state change (a burst of changes
// may arrive as one), until ctx ends, fn fails or the daemon goes away,
// which returns nil.
func Events(ctx context.Context, runDir, name string, fn func(status.Resource) error) error {
	conn, sc, err := send(ctx, runDir, name, Request{Cmd: "events"})
	if err != nil {
		return err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	for sc.Scan() {
		var resp Response
		if err := json.Unmarshal(sc.Bytes(), &resp); err != nil {
			return fmt.Errorf("daemon: %s: bad event: %w", name, err)
		}
		if !resp.OK || resp.Status == nil {
			return fmt.Errorf("daemon: %s: %s", name, cmp.Or(resp.Error, "event without a status"))
		}
		if err := fn(*resp.Status); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return nil
}

// Resources lists the resources with a control socket under runDir.
func Resources(runDir string) ([]string, error) {
	entries, err := os.ReadDir(runDir)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if _, err := os.Stat(SocketPath(runDir, e.Name())); err == nil {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names, nil
}

// handler executes one control request.
type handler func(ctx context.Context, req Request) Response

// streamer answers the events request: it sends the resource's status now
// and after every state change until ctx ends or send fails.
type streamer func(ctx context.Context, send func(Response) error) error

// serveControl answers requests on ln until ctx is cancelled: one Response
// line per request, except for events (see Events).
func serveControl(ctx context.Context, ln net.Listener, h handler, events streamer) {
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(2 * time.Minute))
			sc := bufio.NewScanner(conn)
			sc.Buffer(make([]byte, 4096), 64<<10)
			if !sc.Scan() {
				return
			}
			var req Request
			var resp Response
			if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
				resp = Response{Error: "bad request: " + err.Error()}
			} else if req.Cmd == "events" {
				streamTo(ctx, conn, events)
				return
			} else {
				resp = h(ctx, req)
			}
			json.NewEncoder(conn).Encode(resp)
		}()
	}
}
