package threads

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestMonitorThread(t *testing.T) {
	for _, tc := range []struct {
		name   string
		pid    int
		tids   []int
		pidMax int
		want   int
	}{
		{"the next id", 100, []int{100, 101, 102, 107}, 1000, 101},
		{"other processes took ids in between", 100, []int{107, 100, 104, 130}, 1000, 104},
		{"ids wrapped after the main thread", 998, []int{998, 3, 999, 5}, 1000, 999},
		{"ids wrapped before the monitor", 999, []int{999, 5, 3, 998}, 1000, 3},
		{"only the main thread", 100, []int{100}, 1000, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := monitorThread(tc.pid, tc.tids, tc.pidMax)
			if got != tc.want || ok != (tc.want != 0) {
				t.Errorf("monitorThread(%d, %v, %d) = %d, %v; want %d", tc.pid, tc.tids, tc.pidMax, got, ok, tc.want)
			}
		})
	}
}

func TestRelaxMonitorErrors(t *testing.T) {
	if err := RelaxMonitor(0); err == nil || !strings.Contains(err.Error(), "want a positive duration") {
		t.Errorf("RelaxMonitor(0) = %v, want a refusal", err)
	}
	old := procRoot
	procRoot = t.TempDir()
	defer func() { procRoot = old }()
	if err := RelaxMonitor(MonitorSlack); err == nil || !strings.Contains(err.Error(), "finding this process") {
		t.Errorf("RelaxMonitor without /proc = %v, want an error", err)
	}
}

// TestRelaxMonitor sets the slack of the thread RelaxMonitor takes for the
// runtime's monitor and checks that it is the monitor: under a load that
// wakes the monitor again and again, that thread is seen in nanosleep, the
// system call of the monitor's polling sleep and of no other thread of an
// idle-and-busy program with one processor.
func TestRelaxMonitor(t *testing.T) {
	err := RelaxMonitor(MonitorSlack)
	if os.Geteuid() != 0 {
		// Setting another thread's slack needs CAP_SYS_NICE.
		if !errors.Is(err, os.ErrPermission) {
			t.Fatalf("RelaxMonitor as an unprivileged user = %v, want a permission error", err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	tid, err := monitorTID()
	if err != nil {
		t.Fatal(err)
	}
	defer os.WriteFile(fmt.Sprintf("/proc/%d/timerslack_ns", tid), []byte("0"), 0)
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/timerslack_ns", tid))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(b)); got != strconv.FormatInt(MonitorSlack.Nanoseconds(), 10) {
		t.Fatalf("thread %d has timer slack %s ns, want %d", tid, got, MonitorSlack.Nanoseconds())
	}

	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		// System calls with idle pauses between them: each pause lets the
		// monitor sleep deeply, and the next call wakes it to poll.
		f, err := os.Open("/dev/null")
		if err != nil {
			panic(err)
		}
		defer f.Close()
		buf := make([]byte, 1)
		for {
			select {
			case <-stop:
				return
			default:
			}
			for range 50 {
				f.Read(buf)
			}
			time.Sleep(200 * time.Microsecond)
		}
	}()
	syscallFile := fmt.Sprintf("/proc/self/task/%d/syscall", tid)
	seen := map[string]int{}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(syscallFile)
		if err != nil {
			t.Fatal(err)
		}
		nr, _, _ := strings.Cut(strings.TrimSpace(string(b)), " ")
		if nr == strconv.Itoa(unix.SYS_NANOSLEEP) {
			return
		}
		seen[nr]++
		time.Sleep(100 * time.Microsecond)
	}
	t.Fatalf("thread %d was never seen in nanosleep (%d) in 10 s; its system calls: %v", tid, unix.SYS_NANOSLEEP, seen)
}
