package replica_test

import (
	"strings"
	"testing"

	"github.com/urbd/urbd/replica"
)

// TestScenarioConnectLogsNoFailure: two nodes started together dial each
// other, and the tie-break keeps one connection. The dialer of the other
// closes it, often while the acceptor is still setting up its streams; that
// is a knock, not a failure: on the way to Connected neither node warns of
// a failed connection (nor shows one as the reason in its status, which
// goes with the warning).
func TestScenarioConnectLogsNoFailure(t *testing.T) {
	for range 8 {
		o := nodeOpts{assumeClean: true}
		a, b := newPair(t, o, o)
		a.start()
		b.start()
		a.waitConn(replica.Connected)
		b.waitConn(replica.Connected)
		a.stop()
		b.stop()
		for _, x := range []*tnode{a, b} {
			for _, line := range strings.Split(x.logs.String(), "\n") {
				if strings.Contains(line, "level=WARN") && strings.Contains(line, "peer connection failed") {
					t.Fatalf("node %s connecting: %s", x.label, line)
				}
			}
		}
	}
}
