package replica

import (
	"errors"
	"log/slog"
	"testing"
)

// TestConnErrorKeepsStandAloneReason: a connection error shows in the
// status while the node tries to connect, and does not replace the reason a
// StandAlone node stopped for (a late error from the teardown of the session
// a split brain refused used to overwrite "split brain: ...").
func TestConnErrorKeepsStandAloneReason(t *testing.T) {
	n := &Node{log: slog.New(slog.DiscardHandler), changed: make(chan struct{})}
	n.st = State{Conn: StandAlone, Reason: "split brain: both sides wrote"}
	n.noteConnError(errors.New("protocol: accept stream: session shutdown"))
	if n.st.Reason != "split brain: both sides wrote" {
		t.Errorf("StandAlone reason after a connection error: %q, want the split brain kept", n.st.Reason)
	}
	n.st.Conn = WFConnection
	n.noteConnError(errors.New("protocol: handshake: wrong secret"))
	if want := "peer connection failed: protocol: handshake: wrong secret"; n.st.Reason != want {
		t.Errorf("WFConnection reason: %q, want %q", n.st.Reason, want)
	}
}
