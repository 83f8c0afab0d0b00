package main

import (
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/urbd/urbd/internal/threads"
)

func TestDefaultCPUs(t *testing.T) {
	for _, c := range []struct{ avail, want int }{{1, 1}, {2, 1}, {4, 1}, {7, 1}, {8, 2}, {64, 16}} {
		if got := defaultCPUs(c.avail); got != c.want {
			t.Errorf("defaultCPUs(%d) = %d, want %d", c.avail, got, c.want)
		}
	}
}

// TestCPUsFlag runs --cpus through a command the way up and serve use it:
// the flag wins over GOMAXPROCS, 0 gives the default (which adapts to the
// requests between it and twice it) unless GOMAXPROCS is set, and a
// negative count is refused with a message naming the flag.
func TestCPUsFlag(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	avail := runtime.GOMAXPROCS(0)
	procs := func(env string, args ...string) (int, error) {
		t.Setenv("GOMAXPROCS", env)
		runtime.GOMAXPROCS(avail)
		var got int
		app := &cli.App{Commands: []*cli.Command{{
			Name:   "daemon",
			Flags:  []cli.Flag{cpusFlag()},
			Before: setCPUs,
			Action: func(*cli.Context) error { got = runtime.GOMAXPROCS(0); return nil },
		}}}
		err := app.Run(append([]string{"urbd", "daemon"}, args...))
		return got, err
	}
	if got, err := procs("", "--cpus", "3"); err != nil || got != 3 {
		t.Errorf("--cpus 3: GOMAXPROCS %d, err %v; want 3", got, err)
	}
	if got, err := procs("5", "--cpus", "3"); err != nil || got != 3 {
		t.Errorf("--cpus 3 with GOMAXPROCS=5: GOMAXPROCS %d, err %v; want 3", got, err)
	}
	if autoThreads.Adapts() {
		t.Errorf("--cpus 3: thread range %+v, want a fixed count", autoThreads)
	}
	if got, err := procs(""); err != nil || got != defaultCPUs(avail) {
		t.Errorf("no --cpus: GOMAXPROCS %d, err %v; want %d", got, err, defaultCPUs(avail))
	}
	if want := (threads.Range{Small: defaultCPUs(avail), Large: min(avail, 2*defaultCPUs(avail))}); autoThreads != want {
		t.Errorf("no --cpus: thread range %+v, want %+v", autoThreads, want)
	}
	// As root (CI, and the daemons under systemd) the runtime's monitor
	// thread gets its slack; internal/threads checks which thread that is.
	if os.Geteuid() == 0 && monitorErr != nil {
		t.Errorf("a daemon's start did not relax the runtime's monitor: %v", monitorErr)
	}
	// The runtime read GOMAXPROCS=5 at start, not now: what matters is that
	// the default leaves the running value alone.
	if got, err := procs("5"); err != nil || got != avail {
		t.Errorf("no --cpus with GOMAXPROCS set: GOMAXPROCS %d, err %v; want it untouched (%d)", got, err, avail)
	}
	if autoThreads.Adapts() {
		t.Errorf("GOMAXPROCS set: thread range %+v, want a fixed count", autoThreads)
	}
	if _, err := procs("", "--cpus", "-1"); err == nil || !strings.Contains(err.Error(), "--cpus -1") {
		t.Errorf("--cpus -1: err %v, want a refusal naming --cpus", err)
	}
}
