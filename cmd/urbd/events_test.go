package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

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
	if err := p.run(context.Background(), 3, msgs, false); err != nil {
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
	if err := p.run(context.Background(), 1, msgs, false); err == nil || out.Len() != 0 {
		t.Errorf("a resource that is not running: %v, printed %q", err, out.String())
	}
}
