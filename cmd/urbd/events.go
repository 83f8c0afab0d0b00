package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
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
protocol, suspended, split-brain, blocked, reason), and "destroy resource name:NAME" when its daemon stops.
blocked is no, or what requests have waited on for 2 s with none completing: disk (the local
disk), peer or both, as the status's fifth flag (b, n, a); it is looked at once a second.
Changes that follow each other within microseconds may be printed as one line.
With NAME it follows that resource until its daemon stops. Without NAME it follows every resource
until Ctrl-C, also those whose daemon starts later (or again): each is announced by a
"create resource name:NAME ..." line with every field. With --now it prints the exists lines and
exits.
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
	dir := runDir(c)
	name := c.Args().First()
	names := []string{name}
	if name == "" {
		var err error
		if names, err = daemon.Resources(dir); err != nil {
			return err
		}
	}
	// Ctrl-C or SIGTERM ends it with status 0.
	ctx, cancel := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	msgs := make(chan eventMsg)
	follow := func(n string) { go followEvents(ctx, dir, n, msgs) }
	for _, n := range names {
		follow(n)
	}
	p := &eventPrinter{w: os.Stdout, stamps: c.Bool("timestamps"), last: map[string]*status.Resource{}}
	var w *watcher
	if name == "" {
		w = &watcher{every: watchEvery, list: func() ([]string, error) { return daemon.Resources(dir) }, follow: follow}
	}
	err := p.run(ctx, names, msgs, c.Bool("now"), w)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// watchEvery is how often `urbd events` without a name looks for daemons
// started since.
const watchEvery = 500 * time.Millisecond

// watcher finds the resources running now, for `urbd events` without a
// name, which follows those started after its listing too.
type watcher struct {
	every  time.Duration
	list   func() ([]string, error)
	follow func(name string) // starts a stream that sends to run's msgs
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

// run prints the first status of each stream of names as exists lines,
// then "exists -", then the changes, until every stream ended (or, with
// now, after "exists -"). A stream that ends before its first status is
// left out. When streams were asked for and none sent anything, it prints
// nothing and returns the first one's error.
//
// With a watcher it lists even no resource, and goes on until ctx ends:
// every w.every it follows the resources running that it does not follow
// yet, whose first status is a create line, so a daemon that stops and
// starts again prints destroy, then create.
func (p *eventPrinter) run(ctx context.Context, names []string, msgs <-chan eventMsg, now bool, w *watcher) error {
	var firstErr error
	var later []eventMsg // changes that came before every stream had listed
	following := map[string]bool{}
	for _, n := range names {
		following[n] = true
	}
	for waiting := len(names); waiting > 0; {
		m := <-msgs
		switch {
		case p.last[m.name] != nil:
			later = append(later, m)
			continue
		case m.st == nil:
			if firstErr == nil && m.err != nil {
				firstErr = m.err
			}
			delete(following, m.name) // it never listed: nothing to follow
		default:
			p.line(status.EventLine(nil, m.st))
			p.last[m.name] = m.st
		}
		waiting--
	}
	if len(following) == 0 && w == nil {
		return firstErr
	}
	p.line("exists -")
	if now {
		return nil
	}
	var tick <-chan time.Time
	if w != nil {
		t := time.NewTicker(w.every)
		defer t.Stop()
		tick = t.C
	}
	for _, m := range later {
		p.change(m, following)
	}
	for len(following) > 0 || w != nil {
		select {
		case m := <-msgs:
			p.change(m, following)
		case <-tick:
			running, err := w.list()
			if err != nil {
				return err
			}
			for _, n := range running {
				if !following[n] {
					following[n] = true
					w.follow(n)
				}
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// change prints m as a create, change or destroy line. A stream that ends
// is no longer in following; one that ends before its first status, such
// as the stale socket of a daemon that was killed, prints nothing.
func (p *eventPrinter) change(m eventMsg, following map[string]bool) {
	prev := p.last[m.name]
	switch {
	case m.st == nil:
		delete(following, m.name)
		if prev != nil {
			p.line(status.DestroyLine(m.name))
			delete(p.last, m.name)
		}
		return
	case prev == nil:
		p.line(status.CreateLine(m.st))
	default:
		p.line(status.EventLine(prev, m.st))
	}
	p.last[m.name] = m.st
}
