package replica

import (
	"errors"
	"fmt"
	"io"
	"syscall"
	"testing"

	"github.com/urbd/urbd/protocol"
)

// TestLossErrNamesWhyTheConnectionEnded: whichever call noticed a dead
// connection (a loop, a send of a write, a state or a flush answer, a
// resync copy), the session reports why the connection ended, with the
// "replica: peer connection lost: " of every peer loss; errors that say
// more are kept as they are.
func TestLossErrNamesWhyTheConnectionEnded(t *testing.T) {
	deadSend := fmt.Errorf("sending to the peer: %w", fmt.Errorf("protocol: data stream send: %w", protocol.ErrClosed))
	operator := errors.New("disconnected by operator")
	stop := &localStop{reason: "the disk failed"}
	for _, tc := range []struct {
		name      string
		err       error
		transport error
		want      string
		same      error // when set, lossErr must return exactly this error
	}{
		{name: "a loop saw the end", err: ErrPeerLost, transport: io.EOF, want: "replica: peer connection lost: the peer closed the connection"},
		{name: "a send on a dead stream", err: deadSend, transport: syscall.ECONNRESET, want: "replica: peer connection lost: the connection was reset"},
		{name: "a state sent on a dead stream", err: fmt.Errorf("sending state: %w", protocol.ErrClosed), transport: io.EOF, want: "replica: peer connection lost: the peer closed the connection"},
		{name: "a read that hit the end", err: io.EOF, transport: io.EOF, want: "replica: peer connection lost: the peer closed the connection"},
		{name: "replaced by the peer's new connection", err: &peerLost{cause: "replaced by a new connection from the peer"}, transport: nil, want: "replica: peer connection lost: replaced by a new connection from the peer"},
		{name: "the operator", err: operator, transport: nil, want: operator.Error(), same: operator},
		{name: "a local stop", err: stop, transport: nil, want: stop.Error(), same: stop},
	} {
		got := lossErr(tc.err, tc.transport)
		if got.Error() != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
		if tc.same != nil && got != tc.same {
			t.Errorf("%s: %v replaced, want it kept", tc.name, tc.err)
		}
		if tc.same == nil && !errors.Is(got, ErrPeerLost) {
			t.Errorf("%s: %v is not ErrPeerLost", tc.name, got)
		}
	}
}
