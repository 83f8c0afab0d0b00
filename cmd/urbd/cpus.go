package main

import (
	"fmt"
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

// cpusPerProc is how many CPUs the default gives each of urbd's threads.
//
// A request costs urbd a few microseconds of its own work between system
// calls, and the threads it runs in parallel mostly hand requests to each
// other: each hand-off to an idle thread is a futex wake-up, a context switch
// and, when it finds nothing more to do, a sleep. On a 2-CPU machine running
// the application and both nodes, one thread instead of two cut the CPU per
// replicated 4k write by more than a third and raised 4k throughput by 40%
// (docs/OPERATIONS.md); large writes and reads from the disk, which do gain
// from a second thread, get it from package threads while they last. System calls
// (pwrite, fdatasync, socket I/O) do not count against the limit once they
// block: the runtime gives the processor to another thread.
const cpusPerProc = 4

// autoThreads is the range setCPUs chose for the daemon to adapt within
// (package threads); zero when the count is fixed by --cpus or GOMAXPROCS.
var autoThreads threads.Range

// setCPUs applies --cpus, or the default when it is 0 and GOMAXPROCS is not
// set in the environment (an explicit GOMAXPROCS wins over the default, not
// over the flag), and sets autoThreads.
func setCPUs(c *cli.Context) error {
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
