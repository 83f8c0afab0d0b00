package resynctest

import (
	"testing"
	"time"
)

func TestManualClock(t *testing.T) {
	c := NewClock(false)
	if !c.Now().Equal(Epoch) {
		t.Fatalf("Now = %v, want Epoch", c.Now())
	}
	a := c.After(time.Second)
	b := c.After(2 * time.Second)
	z := c.After(0)
	select {
	case <-z:
	default:
		t.Error("After(0) did not fire at once")
	}
	if n := c.Waiters(); n != 2 {
		t.Fatalf("Waiters = %d, want 2", n)
	}
	if dl, ok := c.NextDeadline(); !ok || !dl.Equal(Epoch.Add(time.Second)) {
		t.Errorf("NextDeadline = %v %v", dl, ok)
	}
	if dl, ok := c.LastDeadline(); !ok || !dl.Equal(Epoch.Add(2*time.Second)) {
		t.Errorf("LastDeadline = %v %v", dl, ok)
	}
	c.Advance(time.Second)
	select {
	case got := <-a:
		if !got.Equal(Epoch.Add(time.Second)) {
			t.Errorf("a fired with %v", got)
		}
	default:
		t.Error("a did not fire after 1 s")
	}
	select {
	case <-b:
		t.Error("b fired early")
	default:
	}
	c.Set(Epoch.Add(5 * time.Second))
	select {
	case <-b:
	default:
		t.Error("b did not fire after Set")
	}
	if _, ok := c.NextDeadline(); ok {
		t.Error("timers left")
	}
	if _, ok := c.LastDeadline(); ok {
		t.Error("timers left")
	}
}

func TestAutoClock(t *testing.T) {
	c := NewClock(true)
	<-c.After(time.Second)
	<-c.After(500 * time.Millisecond)
	if got := c.Now().Sub(Epoch); got != 1500*time.Millisecond {
		t.Errorf("auto clock at %v, want 1.5s", got)
	}
	if c.Waiters() != 0 {
		t.Error("auto clock kept timers")
	}
}

func TestBlockUntil(t *testing.T) {
	c := NewClock(false)
	done := make(chan struct{})
	go func() {
		c.BlockUntil(2)
		close(done)
	}()
	c.After(time.Second)
	c.After(time.Second)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("BlockUntil did not return after two timers")
	}
}
