package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/urbd/urbd/status"
)

// TestEventPrinter: two resources are listed (exists lines, then "exists
// -") before any change is printed, even one that arrived before the second
// resource's first status; each stream's end prints destroy, and run returns
// once every stream ended. A stream that fails before its first status is
// left out.
func TestEventPrinter(t *testing.T) {
	r0 := &status.Resource{Name: "r0", Role: "Secondary", ConnState: "Connected"}
	r0p := &status.Resource{Name: "r0", Role: "Primary", ConnState: "Connected"}
	r1 := &status.Resource{Name: "r1", Role: "Secondary", ConnState: "WFConnection"}
	msgs := make(chan eventMsg, 10)
	msgs <- eventMsg{name: "r0", st: r0}
	msgs <- eventMsg{name: "r0", st: r0p}
	msgs <- eventMsg{name: "r2", err: errors.New("no daemon")}
	msgs <- eventMsg{name: "r1", st: r1}
	msgs <- eventMsg{name: "r0"}
	msgs <- eventMsg{name: "r1"}
	var out bytes.Buffer
	p := &eventPrinter{w: &out, last: map[string]*status.Resource{}}
	if err := p.run(context.Background(), []string{"r0", "r1", "r2"}, msgs, false, nil); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		f := strings.Fields(l)
		got = append(got, strings.Join(f[:min(3, len(f))], " "))
	}
	want := []string{
		"exists resource name:r0",
		"exists resource name:r1",
		"exists -",
		"change resource name:r0",
		"destroy resource name:r0",
		"destroy resource name:r1",
	}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("printed:\n%s\nwant lines starting:\n%s", out.String(), strings.Join(want, "\n"))
	}
	if !strings.Contains(out.String(), "change resource name:r0 role:Primary\n") {
		t.Errorf("the change line does not give the new role:\n%s", out.String())
	}

	// Nothing running: no listing, the error.
	msgs <- eventMsg{name: "r9", err: errors.New("no daemon")}
	out.Reset()
	if err := p.run(context.Background(), []string{"r9"}, msgs, false, nil); err == nil || out.Len() != 0 {
		t.Errorf("a resource that is not running: %v, printed %q", err, out.String())
	}
}

// TestEventPrinterWatches: without a name, run lists no resource if none
// runs, then follows the ones the watcher finds: a daemon that starts
// prints create, its changes, destroy when it stops, and create again when
// it starts again. A stale socket (its stream ends at once) prints nothing.
func TestEventPrinterWatches(t *testing.T) {
	sec := &status.Resource{Name: "r0", Role: "Secondary", ConnState: "WFConnection"}
	pri := &status.Resource{Name: "r0", Role: "Primary", ConnState: "WFConnection"}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	msgs := make(chan eventMsg)
	send := func(m eventMsg) {
		select {
		case msgs <- m:
		case <-ctx.Done():
		}
	}
	starts := 0
	w := &watcher{
		every: time.Millisecond,
		list:  func() ([]string, error) { return []string{"r0", "r9"}, nil },
		follow: func(name string) {
			if name == "r9" {
				go send(eventMsg{name: name, err: errors.New("no daemon")})
				return
			}
			starts++
			if starts == 1 {
				go func() {
					send(eventMsg{name: name, st: sec})
					send(eventMsg{name: name, st: pri})
					send(eventMsg{name: name})
				}()
				return
			}
			go func() {
				send(eventMsg{name: name, st: sec})
				cancel()
			}()
		},
	}
	var out bytes.Buffer
	p := &eventPrinter{w: &out, last: map[string]*status.Resource{}}
	if err := p.run(ctx, nil, msgs, false, w); !errors.Is(err, context.Canceled) {
		t.Fatalf("run: %v, want it to go on until cancelled", err)
	}
	want := "exists -\n" +
		status.CreateLine(sec) + "\n" +
		"change resource name:r0 role:Primary\n" +
		"destroy resource name:r0\n" +
		status.CreateLine(sec) + "\n"
	if out.String() != want {
		t.Errorf("printed:\n%s\nwant:\n%s", out.String(), want)
	}
}
