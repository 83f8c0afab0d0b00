package main

import (
	"fmt"
	"log/slog"
	"os"
	"runtime"

	"github.com/urfave/cli/v2"

	"github.com/urbd/urbd/internal/threads"
)

// cpusFlag is --cpus of the daemons (up, serve): how many threads run urbd's
// own code at once (Go's GOMAXPROCS). setCPUs applies it.
func cpusFlag() cli.Flag {
	return &cli.IntFlag{
		Name:  "cpus",
		Usage: "threads running urbd's code at once (GOMAXPROCS); 0 = a quarter of the CPUs, at least 1, twice that while reads or large writes dominate",
	}
}

// cpusPerProc is how many CPUs the default gives each of urbd's threads:
// few threads, because a request costs urbd only microseconds of its own
// work and more threads mostly add hand-offs between them (package threads
// says why, and when the daemon takes twice as many; the measurements are in
// docs/OPERATIONS.md).
const cpusPerProc = 4

// autoThreads is the range setCPUs chose for the daemon to adapt within
// (package threads); zero when the count is fixed by --cpus or GOMAXPROCS.
var autoThreads threads.Range

// monitorErr is why setCPUs could not relax the Go runtime's monitor thread
// (threads.RelaxMonitor), or nil; the daemons log it at debug level.
var monitorErr error

// setCPUs applies --cpus, or the default when it is 0 and GOMAXPROCS is not
// set in the environment (an explicit GOMAXPROCS wins over the default, not
// over the flag), and sets autoThreads. It also relaxes the runtime's
// monitor thread (threads.MonitorSlack says why); a daemon without the
// privilege for that runs as before, only a little slower.
func setCPUs(c *cli.Context) error {
	monitorErr = threads.RelaxMonitor(threads.MonitorSlack)
	n := c.Int("cpus")
	autoThreads = threads.Range{}
	switch {
	case n < 0:
		return fmt.Errorf("--cpus %d: use a positive number, or 0 for the default", n)
	case n > 0:
		runtime.GOMAXPROCS(n)
	case os.Getenv("GOMAXPROCS") == "":
		avail := runtime.GOMAXPROCS(0)
		small := defaultCPUs(avail)
		runtime.GOMAXPROCS(small)
		autoThreads = threads.Range{Small: small, Large: min(avail, 2*small)}
	}
	return nil
}

// defaultCPUs is the default thread count when Go would use avail (the CPUs
// this process may use, as the runtime counts them).
func defaultCPUs(avail int) int {
	return max(1, avail/cpusPerProc)
}

// logMonitor logs at debug level why the runtime's monitor thread keeps its
// timer slack, if setCPUs could not change it.
func logMonitor(log *slog.Logger) {
	if monitorErr != nil {
		log.Debug("the Go runtime's monitor thread keeps its timer slack", "err", monitorErr)
	}
}
