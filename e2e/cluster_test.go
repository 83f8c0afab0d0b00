package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/urbd/urbd/internal/testnet"
	"github.com/urbd/urbd/nbd"
	"github.com/urbd/urbd/status"
)

// node is one `urbd up` daemon of a two-node test cluster. Each node has its
// own disk file, metadata directory, run directory and NBD socket; with
// netns set it runs inside that network namespace.
type node struct {
	t        *testing.T
	name     string // "a" or "b"
	dir      string
	disk     string
	meta     string
	runDir   string
	sock     string
	listen   string // HOST:PORT for --listen-peer
	peer     string // HOST:PORT of the other node
	netns    string
	extra    []string // extra `urbd up` flags
	cmd      *exec.Cmd
	logPath  string
	waitDone chan error
}

// cluster is two nodes replicating resource r0.
type cluster struct {
	t    *testing.T
	dir  string
	a, b *node
}

// clusterOpts shape a cluster.
type clusterOpts struct {
	size    int64    // disk size; default 64 MiB
	sizeB   int64    // if set, node b's disk size (to test a mismatch)
	flags   []string // extra `urbd up` flags for both nodes
	netns   bool     // run each node in its own network namespace joined by a veth pair
	noClean bool     // do not pass --assume-clean
}

// freePort returns a TCP port nothing listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	port, err := testnet.FreePort()
	must(t, err)
	return port
}

// newCluster creates the disks and starts both nodes. They are stopped and
// everything removed when the test ends; on failure their logs are printed.
func newCluster(t *testing.T, o clusterOpts) *cluster {
	t.Helper()
	requireRoot(t)
	if o.size == 0 {
		o.size = 64 << 20
	}
	if o.sizeB == 0 {
		o.sizeB = o.size
	}
	dir := t.TempDir()
	c := &cluster{t: t, dir: dir}
	hostA, hostB := "127.0.0.1", "127.0.0.1"
	var nsA, nsB string
	if o.netns {
		nsA, nsB, hostA, hostB = makeNetnsPair(t)
	}
	portA, portB := freePort(t), freePort(t)
	mk := func(name string, size int64, ns, listen, peer string) *node {
		n := &node{t: t, name: name, dir: filepath.Join(dir, name), netns: ns,
			listen: listen, peer: peer}
		n.disk = filepath.Join(n.dir, "disk.img")
		n.meta = filepath.Join(n.dir, "meta")
		n.runDir = filepath.Join(n.dir, "run")
		n.sock = filepath.Join(n.dir, "nbd.sock")
		n.logPath = filepath.Join(n.dir, "urbd.log")
		must(t, os.MkdirAll(n.dir, 0o755))
		must(t, os.WriteFile(n.disk, nil, 0o644))
		must(t, os.Truncate(n.disk, size))
		n.extra = append([]string{}, o.flags...)
		if !o.noClean {
			n.extra = append(n.extra, "--assume-clean")
		}
		return n
	}
	c.a = mk("a", o.size, nsA, fmt.Sprintf("%s:%d", hostA, portA), fmt.Sprintf("%s:%d", hostB, portB))
	c.b = mk("b", o.sizeB, nsB, fmt.Sprintf("%s:%d", hostB, portB), fmt.Sprintf("%s:%d", hostA, portA))
	t.Cleanup(func() {
		for _, n := range []*node{c.a, c.b} {
			n.kill()
			if t.Failed() {
				logs, _ := os.ReadFile(n.logPath)
				t.Logf("--- log of node %s ---\n%s", n.name, logs)
			}
		}
	})
	return c
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// start runs `urbd up` for the node in the background. extra flags are added
// for this start only.
func (n *node) start(extra ...string) {
	n.t.Helper()
	n.startArgs(n.upArgs(extra...)...)
}

// upArgs is the node's `urbd up` command line with extra flags added.
func (n *node) upArgs(extra ...string) []string {
	args := []string{"--run-dir", n.runDir, "up", "--disk", n.disk, "--meta", n.meta,
		"--nbd", "unix:" + n.sock, "--listen-peer", n.listen, "--peer", n.peer, "--timeout", "2s"}
	args = append(args, n.extra...)
	args = append(args, extra...)
	return append(args, "r0")
}

// startArgs runs urbd with exactly these arguments as the node's daemon.
func (n *node) startArgs(args ...string) {
	n.t.Helper()
	n.cmd = n.command(args...)
	logf, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	must(n.t, err)
	n.cmd.Stdout, n.cmd.Stderr = logf, logf
	must(n.t, n.cmd.Start())
	logf.Close()
	n.waitDone = make(chan error, 1)
	cmd := n.cmd
	go func() { n.waitDone <- cmd.Wait() }()
	n.waitSocket()
}

// command builds an urbd command line, inside the node's namespace if any.
func (n *node) command(args ...string) *exec.Cmd {
	if n.netns != "" {
		return exec.Command("ip", append([]string{"netns", "exec", n.netns, urbdBin}, args...)...)
	}
	return exec.Command(urbdBin, args...)
}

// waitSocket waits for the control socket to answer.
func (n *node) waitSocket() {
	n.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	path := filepath.Join(n.runDir, "r0", "control.sock")
	for time.Now().Before(deadline) {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return
		}
		select {
		case err := <-n.waitDone:
			n.cmd = nil
			logs, _ := os.ReadFile(n.logPath)
			n.t.Fatalf("node %s exited at start (%v):\n%s", n.name, err, logs)
		case <-time.After(50 * time.Millisecond):
		}
	}
	n.t.Fatalf("node %s: control socket did not appear", n.name)
}

// kill9 kills the daemon without warning, as a crash would.
func (n *node) kill9() {
	n.t.Helper()
	if n.cmd == nil {
		return
	}
	n.cmd.Process.Signal(syscall.SIGKILL)
	if n.netns != "" {
		// ip netns exec forks: kill the daemon itself too.
		exec.Command("pkill", "-9", "-f", "--", "--meta "+n.meta+" ").Run()
	}
	<-n.waitDone
	n.cmd = nil
}

// stop sends SIGTERM and waits for a clean exit.
func (n *node) stop() {
	n.t.Helper()
	if n.cmd == nil {
		return
	}
	n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-n.waitDone:
		if err != nil {
			n.t.Errorf("node %s: exit after SIGTERM: %v", n.name, err)
		}
	case <-time.After(30 * time.Second):
		n.t.Errorf("node %s did not stop within 30 s of SIGTERM", n.name)
		n.cmd.Process.Kill()
		<-n.waitDone
	}
	n.cmd = nil
}

func (n *node) kill() {
	if n.cmd != nil {
		n.cmd.Process.Kill()
		if n.netns != "" {
			exec.Command("pkill", "-9", "-f", "--", "--meta "+n.meta+" ").Run()
		}
		<-n.waitDone
		n.cmd = nil
	}
}

// ctl runs an urbd control command against this node and fails the test if
// it fails. It returns the command's output.
func (n *node) ctl(args ...string) string {
	n.t.Helper()
	out, err := n.try(args...)
	if err != nil {
		n.t.Fatalf("node %s: urbd %s: %v: %s", n.name, strings.Join(args, " "), err, out)
	}
	return out
}

// try runs an urbd control command and returns its output and error.
func (n *node) try(args ...string) (string, error) {
	cmd := exec.Command(urbdBin, append([]string{"--run-dir", n.runDir}, args...)...)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// waitLog waits until the node's log holds want, and returns the log.
func (n *node) waitLog(want string, timeout time.Duration) string {
	n.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		logs, _ := os.ReadFile(n.logPath)
		if strings.Contains(string(logs), want) {
			return string(logs)
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("node %s: no %q in its log within %s:\n%s", n.name, want, timeout, logs)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// status returns the node's status as `urbd status --json` reports it.
func (n *node) status() status.Resource {
	n.t.Helper()
	out := n.ctl("status", "--json", "r0")
	var rs []status.Resource
	if err := json.Unmarshal([]byte(out), &rs); err != nil || len(rs) != 1 {
		n.t.Fatalf("node %s: bad status JSON %q: %v", n.name, out, err)
	}
	return rs[0]
}

// waitFor polls the status until pred holds, or fails after timeout.
func (n *node) waitFor(what string, timeout time.Duration, pred func(status.Resource) bool) status.Resource {
	n.t.Helper()
	deadline := time.Now().Add(timeout)
	var st status.Resource
	for {
		st = n.status()
		if pred(st) {
			return st
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("node %s: timed out after %v waiting for %s; status: %+v", n.name, timeout, what, st)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitConnected waits until the node is Connected with both disks UpToDate.
func (n *node) waitInSync(timeout time.Duration) status.Resource {
	n.t.Helper()
	return n.waitFor("Connected and UpToDate/UpToDate", timeout, func(s status.Resource) bool {
		return s.ConnState == "Connected" && s.DiskState == "UpToDate" && s.PeerDisk == "UpToDate" && s.OutOfSyncKiB == 0
	})
}

// uri is the node's NBD export for libnbd clients and fio.
func (n *node) uri() string { return "nbd+unix:///r0?socket=" + n.sock }

// client opens a Go NBD client connection to the node's export.
func (n *node) client() (*nbd.ClientConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := nbd.Dial(ctx, "unix:"+n.sock)
	if err != nil {
		return nil, err
	}
	info, err := nbd.Negotiate(ctx, conn, "r0")
	if err != nil {
		conn.Close()
		return nil, err
	}
	return nbd.NewClientConn(conn, info), nil
}

// startBoth starts both nodes and waits until they are connected and in sync,
// then promotes a.
func (c *cluster) startBoth() {
	c.t.Helper()
	c.a.start()
	c.b.start()
	c.a.waitInSync(30 * time.Second)
	c.a.ctl("primary", "r0")
}

// runFio runs fio with the nbd engine against uri and fails the test on error.
func runFio(t *testing.T, uri string, args ...string) string {
	t.Helper()
	requireCmds(t, "fio")
	all := append([]string{"--name=job", "--ioengine=nbd", "--uri=" + uri, "--group_reporting", "--verify_state_save=0"}, args...)
	ctx, cancel := context.WithTimeout(context.Background(), fioLimit)
	defer cancel()
	cmd := exec.CommandContext(ctx, "fio", all...)
	// fio's jobs run in sessions of their own, which the kill does not
	// reach and which hold the output open; they end with the daemons.
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("fio %s did not finish within %s: a request is held\n%s", strings.Join(args, " "), fioLimit, out)
	}
	if err != nil {
		t.Fatalf("fio %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// fioLimit bounds a runFio: far above what any of the tests' runs takes, so
// that a request held for good fails the test instead of hanging the suite.
const fioLimit = 5 * time.Minute

// fileBytes reads a whole file, to check later that it did not change.
func fileBytes(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	must(t, err)
	return b
}

func writeFile(path, s string) error { return os.WriteFile(path, []byte(s), 0o600) }

// runFioErr runs fio like runFio but returns its error instead of failing.
func runFioErr(uri string, args ...string) (string, error) {
	all := append([]string{"--name=job", "--ioengine=nbd", "--uri=" + uri, "--group_reporting", "--verify_state_save=0"}, args...)
	out, err := exec.Command("fio", all...).CombinedOutput()
	return string(out), err
}

// startFio runs runFioErr in the background; the function it returns waits
// for fio and returns what runFioErr did.
func startFio(uri string, args ...string) (wait func() (string, error)) {
	var out string
	var err error
	done := make(chan struct{})
	go func() {
		out, err = runFioErr(uri, args...)
		close(done)
	}()
	return func() (string, error) {
		<-done
		return out, err
	}
}
