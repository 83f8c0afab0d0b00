package replica

import "testing"

// TestFlushAheadPredicts walks flushAhead through the workloads it must tell
// apart: a write and a flush in turn (sync ahead), runs longer than aheadRun
// between flushes (never), flushes without writes (no change of mind).
func TestFlushAheadPredicts(t *testing.T) {
	f := newFlushAhead()
	step := func(what string, want ...bool) {
		t.Helper()
		for i, w := range want {
			if got := f.wrote(); got != w {
				t.Fatalf("%s: write %d predicted a flush: %v, want %v", what, i+1, got, w)
			}
		}
		f.flushed()
	}
	step("no flush seen yet", false)
	step("after a run of one write", true)
	step("runs of one go on", true)
	step("a run of aheadRun+1 writes", true, true, false)
	step("after a long run", false, false)
	step("after a run of two", true, true)
	f.flushed() // a flush with no write in between keeps the prediction
	step("after an empty run", true)
	step("writes beyond aheadRun in a short regime", true, true, false, false, false)
	step("after a long run again", false)
}
