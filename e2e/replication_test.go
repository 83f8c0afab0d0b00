package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/urbd/urbd/status"
)

// TestReplicationFioVerify: fio with verify through the primary for each
// protocol; after a FLUSH both disks are byte-identical, and every write
// reached the peer in the session it started in.
func TestReplicationFioVerify(t *testing.T) {
	for _, proto := range []string{"C", "B", "A"} {
		t.Run("protocol"+proto, func(t *testing.T) {
			c := newCluster(t, clusterOpts{flags: []string{"--protocol", proto}})
			c.startBoth()
			gi := c.a.ctl("get-gi", "r0")
			runFio(t, c.a.uri(), "--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=32M",
				"--verify=crc32c", "--verify_fatal=1")
			runFio(t, c.a.uri(), "--rw=write", "--bs=1M", "--iodepth=8", "--size=32M", "--offset=32M", "--end_fsync=1")
			c.a.waitInSync(30 * time.Second)
			cmpFiles(t, c.a.disk, c.b.disk)
			// Every write crossed in one session: a session lost on the
			// way (a frame refused, say for its checksum) would have
			// given the Primary a new generation and a resync would
			// have hidden it from cmp.
			if now := c.a.ctl("get-gi", "r0"); now != gi {
				t.Errorf("the Primary's generations changed during the writes (%s, now %s): the session to the peer was lost", gi, now)
			}
		})
	}
}

// TestReadBalancing: with --read-balancing round-robin (and protocol A,
// whose writes are answered before the peer has them) fio writes with
// verify through the Primary, and the verify's reads, half of which the
// Secondary serves, find every block as written; urbd adjust then sets
// prefer-local, and the Secondary reads nothing more for the Primary. A
// name that is no policy is refused by urbd up in one line.
func TestReadBalancing(t *testing.T) {
	c := newCluster(t, clusterOpts{flags: []string{"--protocol", "A"}})
	if out, err := c.a.command(c.a.upArgs("--read-balancing", "nearest")...).CombinedOutput(); err == nil ||
		!strings.Contains(string(out), `--read-balancing: unknown read-balancing policy "nearest": use prefer-local, prefer-remote, round-robin,`) {
		t.Fatalf("urbd up --read-balancing nearest: %v: %s", err, out)
	}
	c.a.start("--read-balancing", "round-robin")
	c.b.start()
	c.a.waitInSync(30 * time.Second)
	c.a.ctl("primary", "r0")
	if show := c.a.ctl("show", "r0"); !regexp.MustCompile(`(?m)^  read-balancing +round-robin$`).MatchString(show) {
		t.Errorf("urbd show: no read-balancing round-robin in\n%s", show)
	}
	before := c.b.status().DiskReadKiB
	runFio(t, c.a.uri(), "--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=32M",
		"--verify=crc32c", "--verify_fatal=1")
	served := c.b.status().DiskReadKiB - before
	t.Logf("the Secondary served %d KiB of the 32 MiB verified", served)
	if served < 8<<10 || served > 24<<10 {
		t.Errorf("round-robin: the Secondary served %d KiB of the 32 MiB the verify read, want about half", served)
	}

	if out := c.a.ctl("adjust", "--read-balancing", "prefer-local", "r0"); out != "r0: read-balancing set to prefer-local" {
		t.Errorf("urbd adjust --read-balancing prefer-local: %q", out)
	}
	before = c.b.status().DiskReadKiB
	runFio(t, c.a.uri(), "--rw=randread", "--bs=4k", "--iodepth=32", "--size=32M")
	if served := c.b.status().DiskReadKiB - before; served != 0 {
		t.Errorf("prefer-local: the Secondary served %d KiB", served)
	}
	c.a.waitInSync(30 * time.Second)
	cmpFiles(t, c.a.disk, c.b.disk)
}

// TestSecondaryRefusesClients: an NBD client on the secondary is refused with
// a message that says it is Secondary, as a policy refusal (not as an
// unknown export), which qemu prints with the message.
func TestSecondaryRefusesClients(t *testing.T) {
	c := newCluster(t, clusterOpts{})
	c.startBoth()
	_, err := c.b.client()
	if err == nil || !strings.Contains(err.Error(), "Secondary") {
		t.Fatalf("client on the secondary: got %v, want a refusal naming Secondary", err)
	}
	out, err := exec.Command("qemu-img", "info", c.b.uri()).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Denied by server") ||
		!strings.Contains(string(out), "Secondary: r0; promote it with urbd primary r0") {
		t.Fatalf("qemu-img info on the secondary: %v\n%s", err, out)
	}
	cl, err := c.a.client()
	if err != nil {
		t.Fatalf("client on the primary: %v", err)
	}
	cl.Close()
}

// TestPromoteDemoteRefusals: promotion refuses while the peer is Primary and
// while the disk is not UpToDate unless --force; demotion refuses while a
// client is attached unless --force.
func TestPromoteDemoteRefusals(t *testing.T) {
	c := newCluster(t, clusterOpts{})
	c.startBoth()
	if out, err := c.b.try("primary", "r0"); err == nil || !strings.Contains(out, "peer is Primary") {
		t.Fatalf("promote while peer Primary: %v %q", err, out)
	}
	if out, err := c.b.try("primary", "--force", "r0"); err == nil {
		t.Fatalf("forced promote while peer Primary succeeded: %q", out)
	}
	if out, err := c.b.try("primary", "r0", "--force"); err == nil || !strings.Contains(out, "put flags first") {
		t.Fatalf("flag after the name: %v %q", err, out)
	}
	cl, err := c.a.client()
	must(t, err)
	defer cl.Close()
	if out, err := c.a.try("secondary", "r0"); err == nil || !strings.Contains(out, "attached") {
		t.Fatalf("demote with a client attached: %v %q", err, out)
	}
	c.a.ctl("secondary", "--force", "r0")
	if st := c.a.status(); st.Role != "Secondary" || st.NBDClients != 0 {
		t.Fatalf("after forced demotion: %+v", st)
	}
	c.b.waitFor("peer demoted", 10*time.Second, func(s statusT) bool { return s.PeerRole == "Secondary" })
	c.b.ctl("primary", "r0")

	// A fresh pair without --assume-clean: both Inconsistent, promotion needs --force.
	f := newCluster(t, clusterOpts{noClean: true})
	f.a.start()
	f.b.start()
	f.a.waitFor("connected", 20*time.Second, func(s status.Resource) bool { return s.ConnState == "Connected" })
	if out, err := f.a.try("primary", "r0"); err == nil || !strings.Contains(out, "not UpToDate") {
		t.Fatalf("promote Inconsistent without --force: %v %q", err, out)
	}
	f.a.ctl("primary", "--force", "r0")
	f.a.waitInSync(60 * time.Second)
	cmpFiles(t, f.a.disk, f.b.disk)
}

// TestWrongSecretRefused: a peer without the shared secret is refused before
// any data moves.
func TestWrongSecretRefused(t *testing.T) {
	c := newCluster(t, clusterOpts{})
	secretA := c.dir + "/secret-a"
	secretB := c.dir + "/secret-b"
	must(t, writeFile(secretA, "correct horse"))
	must(t, writeFile(secretB, "battery staple"))
	c.a.start("--secret-file", secretA)
	c.b.start("--secret-file", secretB)
	c.a.ctl("primary", "r0")
	runFio(t, c.a.uri(), "--rw=randwrite", "--bs=4k", "--size=4M", "--iodepth=8")
	st := c.a.waitFor("a connection error", 20*time.Second, func(s status.Resource) bool {
		return strings.Contains(s.Reason, "auth") || strings.Contains(s.Reason, "secret")
	})
	if st.ConnState != "WFConnection" {
		t.Fatalf("with a wrong secret: cs %s", st.ConnState)
	}
	if b := c.b.status(); b.NetRecvKiB != 0 || b.DiskWriteKiB != 0 {
		t.Fatalf("data moved to a peer with the wrong secret: %+v", b)
	}
	want := "peer connection failed: protocol: authentication failed: the two nodes' shared secrets do not match"
	if st.Reason != want {
		t.Fatalf("reason %q, want %q", st.Reason, want)
	}
	c.logOneConnFailure([2]int{})

	// A peer with no secret at all: each side says which of the two has one.
	c.restartBRefused(nil,
		"protocol: authentication failed: the peer has no shared secret but this node requires one",
		"protocol: authentication failed: the peer requires a shared secret but this node has none configured")
}

// logSizes is how long each node's log is now, for logOneConnFailure.
func (c *cluster) logSizes() [2]int {
	var n [2]int
	for i, nd := range []*node{c.a, c.b} {
		b, err := os.ReadFile(nd.logPath)
		must(c.t, err)
		n[i] = len(b)
	}
	return n
}

// logOneConnFailure waits while the two nodes keep dialing each other in
// vain (the dial backoff grows to 2 s: each tries four times or more, and
// is dialed as often) and checks that each logged the failure once since
// from (logSizes), not at every attempt.
func (c *cluster) logOneConnFailure(from [2]int) {
	c.t.Helper()
	time.Sleep(5 * time.Second)
	for i, n := range []*node{c.a, c.b} {
		logs, err := os.ReadFile(n.logPath)
		must(c.t, err)
		logs = logs[from[i]:]
		if got := strings.Count(string(logs), `level=WARN msg="peer connection failed"`); got != 1 {
			c.t.Fatalf("%s: %d warnings of a failed connection in 5 s of the same failure, want 1:\n%s", n.name, got, logs)
		}
	}
}

// restartBRefused restarts b with extra flags and waits until the status
// reason of each node says that the connection failed, as reasonA and
// reasonB begin. It returns the nodes' log sizes from before b started
// again, for logOneConnFailure.
func (c *cluster) restartBRefused(extra []string, reasonA, reasonB string) [2]int {
	c.t.Helper()
	c.b.stop()
	from := c.logSizes()
	c.b.start(extra...)
	for _, w := range []struct {
		n      *node
		reason string
	}{{c.a, reasonA}, {c.b, reasonB}} {
		w.n.waitFor("reason "+w.reason, 20*time.Second, func(s status.Resource) bool {
			return s.ConnState == "WFConnection" && strings.HasPrefix(s.Reason, "peer connection failed: "+w.reason)
		})
	}
	return from
}

// TestSizeMismatchRefused: peers whose disks differ in size never connect,
// and the status names both sizes.
func TestSizeMismatchRefused(t *testing.T) {
	c := newCluster(t, clusterOpts{size: 64 << 20, sizeB: 32 << 20})
	c.a.start()
	c.b.start()
	st := c.a.waitFor("a size mismatch", 20*time.Second, func(s status.Resource) bool {
		return strings.Contains(s.Reason, "size")
	})
	if !strings.Contains(st.Reason, "67108864") || !strings.Contains(st.Reason, "33554432") {
		t.Fatalf("size mismatch reason does not name both sizes: %q", st.Reason)
	}
	if st.ConnState == "Connected" {
		t.Fatal("connected despite a size mismatch")
	}
	c.logOneConnFailure([2]int{})
}

// TestStatusFile: RUN/NAME/status has the /proc/drbd shape, follows a state
// change at once and is rewritten at least once a second.
func TestStatusFile(t *testing.T) {
	c := newCluster(t, clusterOpts{})
	c.startBoth()
	path := c.a.runDir + "/r0/status"
	read := func() string {
		b, err := os.ReadFile(path)
		must(t, err)
		return string(b)
	}
	waitText := func(what string, ok func(string) bool) string {
		deadline := time.Now().Add(1500 * time.Millisecond)
		for {
			s := read()
			if ok(s) {
				return s
			}
			if time.Now().After(deadline) {
				t.Fatalf("status file never showed %s:\n%s", what, s)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	s := waitText("Primary/Secondary", func(s string) bool { return strings.Contains(s, "ro:Primary/Secondary") })
	lines := strings.Split(s, "\n")
	if lines[0] != "urbd 0.1 (api:1/proto:8)" ||
		!strings.HasPrefix(lines[1], " 0: r0 cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate C r") ||
		!strings.HasPrefix(strings.TrimSpace(lines[2]), "ns:") || !strings.Contains(lines[2], " oos:0") {
		t.Fatalf("status file is not in the /proc/drbd shape:\n%s", s)
	}
	c.b.ctl("disconnect", "r0")
	waitText("the peer loss", func(s string) bool { return strings.Contains(s, "cs:WFConnection ro:Primary/Unknown") })
	fi, err := os.Stat(path)
	must(t, err)
	time.Sleep(1500 * time.Millisecond)
	fi2, err := os.Stat(path)
	must(t, err)
	if !fi2.ModTime().After(fi.ModTime()) {
		t.Fatalf("status file not rewritten within 1.5 s (mtime %v)", fi.ModTime())
	}
}

// TestPeerCongestionControl: both ends of the peer connection use cubic,
// whatever the system default (bbr on some hosts), or the congestion control
// --tcp-congestion names; a name the kernel does not offer stops urbd up
// with one line that says what it offers.
func TestPeerCongestionControl(t *testing.T) {
	for _, tc := range []struct {
		flags []string
		want  string
	}{
		{nil, "cubic"},
		{[]string{"--tcp-congestion", "reno"}, "reno"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			c := newCluster(t, clusterOpts{flags: tc.flags})
			c.startBoth()
			got := peerConnCongestion(t, c.a.listen, c.b.listen)
			if len(got) != 2 || got[0] != tc.want || got[1] != tc.want {
				t.Fatalf("congestion control of the peer connection's two ends: %q, want %s on both", got, tc.want)
			}
		})
	}
	t.Run("unknown", func(t *testing.T) {
		c := newCluster(t, clusterOpts{})
		args := []string{"--run-dir", c.a.runDir, "up", "--disk", c.a.disk, "--meta", c.a.meta,
			"--nbd", "unix:" + c.a.sock, "--listen-peer", c.a.listen, "--peer", c.a.peer,
			"--tcp-congestion", "nosuch", "r0"}
		out, err := tryCmd(20*time.Second, urbdBin, args...)
		msg := strings.TrimSpace(out)
		if err == nil || strings.Count(msg, "\n") != 0 || !strings.Contains(msg, "tcp-congestion nosuch: not available") ||
			!strings.Contains(msg, "the kernel offers") {
			t.Fatalf("urbd up --tcp-congestion nosuch: %v, output %q; want one line naming what the kernel offers", err, out)
		}
	})
}

// peerConnCongestion returns the congestion control of each established
// TCP socket on either node's peer port, as ss reports it.
func peerConnCongestion(t *testing.T, addrs ...string) []string {
	t.Helper()
	var filter []string
	for _, a := range addrs {
		_, port, _ := strings.Cut(a, ":")
		filter = append(filter, "sport = :"+port, "dport = :"+port)
	}
	out := runCmd(t, 10*time.Second, "ss", "-Htin", "state", "established", "( "+strings.Join(filter, " or ")+" )")
	avail, err := os.ReadFile("/proc/sys/net/ipv4/tcp_available_congestion_control")
	must(t, err)
	known := strings.Fields(string(avail))
	var names []string
	for _, line := range strings.Split(out, "\n") {
		if line == "" || line[0] != ' ' && line[0] != '\t' {
			continue // a socket's addresses; its details follow indented
		}
		for _, f := range strings.Fields(line) {
			if slices.Contains(known, f) {
				names = append(names, f)
			}
		}
	}
	return names
}

// TestAutoPromote: two daemons with --auto-promote yes and neither
// promoted: fio with verify through either node promotes it for as long as
// it runs and demotes it when it leaves; while a client holds one node, the
// other refuses clients, saying why (qemu prints it); a client that moves
// to the other node at once is attached there once the first has demoted
// itself; a daemon stopped with
// a client attached comes back Secondary; urbd adjust turns it off, after
// which a Secondary refuses clients as without it.
func TestAutoPromote(t *testing.T) {
	c := newCluster(t, clusterOpts{flags: []string{"--auto-promote", "yes"}})
	c.a.start()
	c.b.start()
	c.a.waitInSync(30 * time.Second)
	if show := c.b.ctl("show", "r0"); !regexp.MustCompile(`(?m)^  auto-promote +yes$`).MatchString(show) {
		t.Errorf("urbd show: no auto-promote yes in\n%s", show)
	}
	for i, x := range []*node{c.b, c.a} {
		off := fmt.Sprintf("--offset=%dM", 16*i)
		runFio(t, x.uri(), "--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=16M", off, "--verify=crc32c", "--verify_fatal=1")
		st := x.waitFor("demoted after fio left", 10*time.Second, func(s status.Resource) bool { return s.Role == "Secondary" })
		if !strings.Contains(st.Reason, "last NBD client left (auto-promote)") {
			t.Errorf("%s's reason after fio left: %q", x.name, st.Reason)
		}
		x.waitLog("promoted automatically: an NBD client attached (auto-promote)", 5*time.Second)
		c.a.waitInSync(30 * time.Second)
	}
	cmpFiles(t, c.a.disk, c.b.disk)

	cl, err := c.a.client()
	must(t, err)
	if st := c.a.status(); st.Role != "Primary" || st.NBDClients != 1 {
		t.Fatalf("a with a client attached: %+v", st)
	}
	c.b.waitFor("peer Primary", 10*time.Second, func(s status.Resource) bool { return s.PeerRole == "Primary" })
	out, err := exec.Command("qemu-img", "info", c.b.uri()).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Secondary: r0; auto-promote cannot promote it: peer is Primary") {
		t.Fatalf("qemu-img info on the peer of an auto-promoted Primary: %v\n%s", err, out)
	}
	cl.Close()
	// A switchover: the client goes to b at once, before a demoted itself
	// after it; b's promotion waits for that.
	cl, err = c.b.client()
	if err != nil {
		t.Fatalf("a client moved to b right after it left a: %v", err)
	}
	c.a.waitFor("demoted after its client left", 10*time.Second, func(s status.Resource) bool { return s.Role == "Secondary" })
	if st := c.b.status(); st.Role != "Primary" {
		t.Fatalf("b with the client attached: %s", st.Role)
	}

	// Stopped with a client attached, an auto-promoted Primary lets the
	// client go first, demotes itself, and comes back Secondary.
	c.b.stop()
	cl.Close()
	c.b.start()
	if st := c.b.waitInSync(30 * time.Second); st.Role != "Secondary" || st.PeerRole != "Secondary" {
		t.Fatalf("b restarted after a stop with a client attached: %s/%s, want Secondary/Secondary", st.Role, st.PeerRole)
	}

	if out := c.b.ctl("adjust", "--auto-promote", "no", "r0"); out != "r0: auto-promote set to no (from the next NBD client on)" {
		t.Errorf("urbd adjust --auto-promote no: %q", out)
	}
	if _, err := c.b.client(); err == nil || !strings.Contains(err.Error(), "Secondary: r0; promote it with urbd primary r0") {
		t.Fatalf("a client on a Secondary after auto-promote was turned off: %v", err)
	}
	if out, err := c.a.command(c.a.upArgs("--auto-promote", "maybe")...).CombinedOutput(); err == nil ||
		!strings.Contains(string(out), `--auto-promote "maybe": use yes or no`) {
		t.Fatalf("urbd up --auto-promote maybe: %v: %s", err, out)
	}
}
