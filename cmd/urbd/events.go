package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/urbd/urbd/daemon"
	"github.com/urbd/urbd/status"
)

var eventsCommand = &cli.Command{
	Name:      "events",
	Usage:     "print state changes as they happen, one line each (as drbdsetup events2)",
	ArgsUsage: "[NAME]",
	Description: `Prints one "exists resource name:NAME role:... cstate:... disk:... reason:..." line per
resource, then "exists -", then a "change resource name:NAME FIELD:VALUE ..." line with the fields
that changed each time the state of a resource changes (role, peer-role, cstate, disk, peer-disk,
protocol, suspended, split-brain, reason), and "destroy resource name:NAME" when its daemon stops.
Without NAME, every resource running when it starts. Changes that follow each other within
microseconds may be printed as one line. It runs until every daemon it follows has stopped, or
Ctrl-C; with --now it prints the exists lines and exits.
Examples: urbd events; urbd events --now r0; urbd events --timestamps r0 | logger -t urbd`,
	Flags: []cli.Flag{
		&cli.BoolFlag{Name: "now", Usage: "print the current state and exit"},
		&cli.BoolFlag{Name: "timestamps", Usage: "start each line with the time (RFC 3339, microseconds)"},
	},
	Action: runEvents,
}

func init() { commands = append(commands, eventsCommand) }

// eventMsg is one status from a resource's stream; st is nil when the
// stream ended (with err, if it failed).
type eventMsg struct {
	name string
	st   *status.Resource
	err  error
}

func runEvents(c *cli.Context) error {
	if c.NArg() > 1 {
		return fmt.Errorf("events takes at most one resource name")
	}
	name := c.Args().First()
	names := []string{name}
	if name == "" {
		var err error
		if names, err = daemon.Resources(runDir(c)); err != nil {
			return err
		}
		if len(names) == 0 {
			return fmt.Errorf("no resources are running (run dir %s)", runDir(c))
		}
	}
	ctx, cancel := context.WithCancel(c.Context)
	defer cancel()
	msgs := make(chan eventMsg)
	for _, n := range names {
		go followEvents(ctx, runDir(c), n, msgs)
	}
	p := &eventPrinter{w: os.Stdout, stamps: c.Bool("timestamps"), last: map[string]*status.Resource{}}
	err := p.run(ctx, len(names), msgs, c.Bool("now"))
	if name != "" && errors.Is(err, daemon.ErrNotRunning) {
		return err
	}
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// followEvents sends resource name's statuses to msgs, then its end.
func followEvents(ctx context.Context, runDir, name string, msgs chan<- eventMsg) {
	send := func(m eventMsg) error {
		select {
		case msgs <- m:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	err := daemon.Events(ctx, runDir, name, func(st status.Resource) error {
		return send(eventMsg{name: name, st: &st})
	})
	send(eventMsg{name: name, err: err})
}

// eventPrinter turns the streams' statuses into event lines.
type eventPrinter struct {
	w      io.Writer
	stamps bool
	last   map[string]*status.Resource // the last status printed, by resource
}

func (p *eventPrinter) line(s string) {
	if s == "" {
		return
	}
	if p.stamps {
		s = time.Now().Format("2006-01-02T15:04:05.000000-07:00") + " " + s
	}
	fmt.Fprintln(p.w, s)
}

// run prints the first status of each of the n streams as exists lines,
// then "exists -", then the changes, until every stream ended (or, with
// now, after "exists -"). When no stream sent anything, it prints nothing
// and returns the first stream's error.
func (p *eventPrinter) run(ctx context.Context, n int, msgs <-chan eventMsg, now bool) error {
	var firstErr error
	var later []eventMsg // changes that came before every stream had listed
	listed := map[string]bool{}
	for len(listed) < n {
		m := <-msgs
		switch {
		case listed[m.name]:
			later = append(later, m)
			continue
		case m.st == nil:
			if firstErr == nil && m.err != nil {
				firstErr = m.err
			}
			n-- // it never listed: nothing to follow
			continue
		}
		listed[m.name] = true
		p.line(status.EventLine(nil, m.st))
		p.last[m.name] = m.st
	}
	if len(listed) == 0 {
		return firstErr
	}
	p.line("exists -")
	if now {
		return nil
	}
	live := len(listed)
	for _, m := range later {
		live -= p.change(m)
	}
	for live > 0 {
		select {
		case m := <-msgs:
			live -= p.change(m)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// change prints m as a change or destroy line; it returns 1 when m ends a
// stream.
func (p *eventPrinter) change(m eventMsg) int {
	if m.st == nil {
		p.line(status.DestroyLine(m.name))
		return 1
	}
	p.line(status.EventLine(p.last[m.name], m.st))
	p.last[m.name] = m.st
	return 0
}
