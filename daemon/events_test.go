package daemon

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/urbd/urbd/status"
)

// fakeSource is a statusSource whose state and blocked seconds the test
// sets; change closes the channel Changed returned, as replica.Node does.
type fakeSource struct {
	mu      sync.Mutex
	st      status.Resource
	changed chan struct{}
}

func (f *fakeSource) Changed() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}

func (f *fakeSource) Status() status.Resource {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.st
}

// set changes the status with fn; a state change also wakes the stream.
func (f *fakeSource) set(stateChange bool, fn func(*status.Resource)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(&f.st)
	if stateChange {
		close(f.changed)
		f.changed = make(chan struct{})
	}
}

// TestStreamStatus: urbd events' stream sends the status at once, after
// each state change, and on a tick only when what it is blocked on
// changed; a state change that comes with a tick is still sent.
func TestStreamStatus(t *testing.T) {
	src := &fakeSource{st: status.Resource{Name: "r0", Role: "Secondary"}, changed: make(chan struct{})}
	tick := make(chan time.Time)
	sent := make(chan status.Resource, 10)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- streamStatus(ctx, src, tick, func(r Response) error {
			sent <- *r.Status
			return nil
		})
	}()
	next := func(what string) status.Resource {
		t.Helper()
		select {
		case st := <-sent:
			return st
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: nothing sent", what)
			return status.Resource{}
		}
	}
	none := func(what string) {
		t.Helper()
		select {
		case st := <-sent:
			t.Fatalf("%s: sent %+v, want nothing", what, st)
		case <-time.After(50 * time.Millisecond):
		}
	}
	if st := next("the start"); st.Role != "Secondary" {
		t.Fatalf("first status: %+v", st)
	}

	src.set(true, func(r *status.Resource) { r.Role = "Primary" })
	if st := next("a state change"); st.Role != "Primary" {
		t.Fatalf("after a state change: %+v", st)
	}

	tick <- time.Now()
	none("a tick with nothing blocked")
	src.set(false, func(r *status.Resource) { r.PeerBlockedSeconds = 2 })
	tick <- time.Now()
	if st := next("the peer blocked"); st.BlockedOn() != "peer" {
		t.Fatalf("after the peer blocked: %+v", st)
	}
	src.set(false, func(r *status.Resource) { r.PeerBlockedSeconds = 3 })
	tick <- time.Now()
	none("the peer still blocked, a second later")
	src.set(false, func(r *status.Resource) { r.PeerBlockedSeconds = 0 })
	tick <- time.Now()
	if st := next("the peer no longer blocked"); st.BlockedOn() != "no" {
		t.Fatalf("after the peer answered: %+v", st)
	}

	// A state change the stream has not seen yet when the tick comes: the
	// tick's select may take either, and the change must not be lost.
	for i := 0; i < 20; i++ {
		role := []string{"Secondary", "Primary"}[i%2]
		src.set(true, func(r *status.Resource) { r.Role = role })
		tick <- time.Now()
		if st := next("a state change with a tick"); st.Role != role {
			t.Fatalf("round %d: sent role %s, want %s", i, st.Role, role)
		}
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("stream ended with %v, want nil", err)
	}
}
