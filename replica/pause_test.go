package replica_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/urbd/urbd/replica"
	"github.com/urbd/urbd/status"
)

// TestScenarioPauseSync: a resync paused on the source before it starts
// copies nothing, while both nodes show it paused (PausedSyncS with 'u',
// PausedSyncT with 'p') and application writes still replicate; the pause
// then moves to the target, which holds the source just the same; once both
// are lifted the resync finishes with identical disks.
func TestScenarioPauseSync(t *testing.T) {
	a, b := cleanPair(t, nodeOpts{}, nodeOpts{})
	if err := a.node.Disconnect(false); err != nil {
		t.Fatal(err)
	}
	a.waitConn(replica.StandAlone)
	for i := range 32 {
		a.write(int64(i)*7*hBlock, pattern(fmt.Sprintf("alone %d", i), hBlock))
	}
	dirty := a.node.Status().OutOfSyncKiB
	a.node.PauseSync()
	a.node.PauseSync() // idempotent
	if err := a.node.Connect(false); err != nil {
		t.Fatal(err)
	}
	a.waitConn(replica.SyncSource)
	sa := a.waitStatus("PausedSyncS, paused here", func(s status.Resource) bool {
		return s.ConnState == "PausedSyncS" && s.SyncPaused && !s.PeerPaused
	})
	b.waitStatus("PausedSyncT, paused by the peer", func(s status.Resource) bool {
		return s.ConnState == "PausedSyncT" && s.PeerPaused && !s.SyncPaused
	})
	if line := statusLine(sa); line != "PausedSyncS u" {
		t.Fatalf("status line of the paused source: %q", line)
	}
	a.write(3*hBlock, pattern("while paused", hBlock)) // replicated as usual
	time.Sleep(300 * time.Millisecond)
	if got := a.node.Status().OutOfSyncKiB; got != dirty {
		t.Fatalf("paused resync went on: %d KiB out of sync, was %d", got, dirty)
	}

	// Hand the pause to the target: the source stays held.
	b.node.PauseSync()
	a.waitStatus("paused by the peer too", func(s status.Resource) bool { return s.PeerPaused })
	a.node.ResumeSync()
	sa = a.waitStatus("paused by the peer only", func(s status.Resource) bool {
		return s.ConnState == "PausedSyncS" && !s.SyncPaused && s.PeerPaused
	})
	if line := statusLine(sa); line != "PausedSyncS p" {
		t.Fatalf("status line of the source paused by its peer: %q", line)
	}
	time.Sleep(300 * time.Millisecond)
	if got := a.node.Status().OutOfSyncKiB; got != dirty {
		t.Fatalf("resync paused by the peer went on: %d KiB out of sync, was %d", got, dirty)
	}
	b.node.ResumeSync()
	inSyncAndEqual(t, a, b)
	if s := a.node.Status(); s.SyncPaused || s.PeerPaused || s.ConnState != "Connected" {
		t.Fatalf("after resume-sync on both: %s, paused %v/%v", s.ConnState, s.SyncPaused, s.PeerPaused)
	}
}

// statusLine is the connection state and the pause flags ('u' paused here,
// 'p' by the peer) as the status file shows them.
func statusLine(r status.Resource) string {
	var text strings.Builder
	if err := status.WriteText(&text, "test", []status.Resource{r}); err != nil {
		return err.Error()
	}
	var cs, flags string
	for _, line := range strings.Split(text.String(), "\n") {
		if f := strings.Fields(line); strings.Contains(line, " cs:") && len(f) > 2 {
			cs = strings.TrimPrefix(f[2], "cs:")
			flags = strings.Trim(f[len(f)-1][1:], "-")
		}
	}
	return cs + " " + flags
}
