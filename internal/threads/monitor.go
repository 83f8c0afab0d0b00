package threads

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// MonitorSlack is the timer slack the daemons give the Go runtime's monitor
// thread (RelaxMonitor).
//
// The monitor (sysmon) sleeps deeply while every processor is idle. The first
// system call after such a pause wakes it, and it then polls every 20 us for
// at least a millisecond, each poll a timer interrupt and a context switch on
// a CPU the daemon and its peer share. A daemon that waits for the network
// between requests goes through that cycle all the time: on two CPUs the
// monitor took 8% of a Primary's CPU and 14% of a Secondary's at 4k random
// writes. With 250 us of slack the kernel lets each of those sleeps run up to
// 250 us longer; under that load the monitor then woke about half as often.
// Its other duties keep their pace (it preempts a goroutine after 10 ms and
// polls the network after 10 ms either way); what slows down is taking the
// processor away from a goroutine blocked in a system call, after about half
// a millisecond instead of about a tenth. Side by side this gave a pair 8-16%
// more writes (4k at queue depths 1 and 32, 1 MiB) and cut its CPU per 4k
// write by about a fifth (docs/OPERATIONS.md, "What replication costs").
// A longer slack was tried and not taken: 2 ms gave a pair on two CPUs 4-12%
// more (medians of 4 to 12 alternating rounds) and `urbd serve` 2-7% less,
// and would let a blocked system call hold the processor four times longer,
// which a Primary on its own machine, reading from its disk, pays for; 10 ms
// gave the pair no more than 2 ms.
const MonitorSlack = 250 * time.Microsecond

// procRoot is where RelaxMonitor reads threads and writes their slack;
// replaced in tests.
var procRoot = "/proc"

// defaultPidMax is the kernel's largest pid_max on 64-bit systems, used when
// /proc/sys/kernel/pid_max cannot be read.
const defaultPidMax = 1 << 22

// RelaxMonitor sets the timer slack of the Go runtime's monitor thread to
// slack, by writing /proc/TID/timerslack_ns. The monitor is the first thread
// the runtime creates, before any code of the program runs, so it is found
// by creation order: the thread whose id follows the main thread's most
// closely, counting as the kernel hands ids out (upwards, wrapping at
// pid_max). Call it while the program starts, before ids can have wrapped
// around. Writing another thread's slack needs CAP_SYS_NICE; without it the
// error says so and nothing changes, which costs only speed.
func RelaxMonitor(slack time.Duration) error {
	if slack <= 0 {
		return fmt.Errorf("threads: monitor slack %v: want a positive duration", slack)
	}
	tid, err := monitorTID()
	if err != nil {
		return err
	}
	path := fmt.Sprintf("%s/%d/timerslack_ns", procRoot, tid)
	if err := os.WriteFile(path, []byte(strconv.FormatInt(slack.Nanoseconds(), 10)), 0); err != nil {
		return fmt.Errorf("threads: setting the monitor's timer slack: %w", err)
	}
	return nil
}

// monitorTID finds the runtime's monitor thread (see RelaxMonitor).
func monitorTID() (int, error) {
	self, err := os.Readlink(procRoot + "/self")
	if err != nil {
		return 0, fmt.Errorf("threads: finding this process in %s: %w", procRoot, err)
	}
	pid, err := strconv.Atoi(self)
	if err != nil {
		return 0, fmt.Errorf("threads: %s/self points to %q, not a process id", procRoot, self)
	}
	entries, err := os.ReadDir(fmt.Sprintf("%s/%d/task", procRoot, pid))
	if err != nil {
		return 0, fmt.Errorf("threads: listing threads: %w", err)
	}
	var tids []int
	for _, e := range entries {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			tids = append(tids, tid)
		}
	}
	tid, ok := monitorThread(pid, tids, pidMax())
	if !ok {
		return 0, errors.New("threads: the runtime's monitor thread is not running")
	}
	return tid, nil
}

// monitorThread returns, of the threads tids of process pid, the one created
// first after the main thread (whose id is pid): ids are handed out upwards
// from the last one given and wrap around at pidMax.
func monitorThread(pid int, tids []int, pidMax int) (int, bool) {
	best, bestDist := 0, 0
	for _, tid := range tids {
		if tid == pid {
			continue
		}
		dist := ((tid-pid)%pidMax + pidMax) % pidMax
		if best == 0 || dist < bestDist {
			best, bestDist = tid, dist
		}
	}
	return best, best != 0
}

// pidMax is the kernel's pid_max: thread ids wrap around below it.
func pidMax() int {
	b, err := os.ReadFile(procRoot + "/sys/kernel/pid_max")
	if err != nil {
		return defaultPidMax
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n <= 0 {
		return defaultPidMax
	}
	return n
}
