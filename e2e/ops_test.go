package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/urbd/urbd/status"
)

// TestConfigHandlersMetrics: both nodes start from one resource file; the
// handlers fire on promotion, peer loss, peer return and resync; the metrics
// endpoint is scraped, and counts the syncs started ahead of fio --fsync=1.
func TestConfigHandlersMetrics(t *testing.T) {
	c := newCluster(t, clusterOpts{})
	events := filepath.Join(c.dir, "events")
	metricsPort := freePort(t)
	conf := fmt.Sprintf(`
[handlers]
promoted = "echo \"$URBD_EVENT $URBD_RESOURCE\" >> %[1]s"
peer-lost = "echo \"$URBD_EVENT $URBD_RESOURCE\" >> %[1]s"
peer-back = "echo \"$URBD_EVENT $URBD_RESOURCE\" >> %[1]s"
resync-done = "echo \"$URBD_EVENT $URBD_RESOURCE\" >> %[1]s"

[resource.r0]
protocol = "C"
resync-rate = "50MiB"
timeout = "2s"

  [resource.r0.node.alpha]
  disk = %[2]q
  meta = %[3]q
  nbd = "unix:%[4]s"
  address = %[5]q
  metrics-listen = "127.0.0.1:%[10]d"

  [resource.r0.node.beta]
  disk = %[6]q
  meta = %[7]q
  nbd = "unix:%[8]s"
  address = %[9]q
`, events, c.a.disk, c.a.meta, c.a.sock, c.a.listen, c.b.disk, c.b.meta, c.b.sock, c.b.listen, metricsPort)
	path := filepath.Join(c.dir, "urbd.toml")
	must(t, os.WriteFile(path, []byte(conf), 0o644))
	c.a.startArgs("--run-dir", c.a.runDir, "up", "--config", path, "--node", "alpha", "--assume-clean", "r0")
	c.b.startArgs("--run-dir", c.b.runDir, "up", "--config", path, "--node", "beta", "--assume-clean", "r0")
	c.a.waitInSync(30 * time.Second)
	c.a.ctl("primary", "r0")
	runFio(t, c.a.uri(), "--rw=randwrite", "--bs=4k", "--size=8M", "--iodepth=8")
	c.b.ctl("disconnect", "r0")
	c.a.waitFor("peer loss", 10*time.Second, func(s statusT) bool { return s.ConnState == "WFConnection" })
	runFio(t, c.a.uri(), "--rw=randwrite", "--bs=4k", "--size=8M", "--iodepth=8")
	c.b.ctl("connect", "r0")
	c.a.waitInSync(30 * time.Second)
	cmpFiles(t, c.a.disk, c.b.disk)

	waitForHandlers(t, events, "promoted r0", "peer-lost r0", "peer-back r0", "resync-done r0")

	// Writes each followed by an fsync: the nodes sync ahead of the flushes.
	runFio(t, c.a.uri(), "--rw=randwrite", "--bs=4k", "--size=1M", "--iodepth=1", "--fsync=1")

	scrape := func() []byte {
		t.Helper()
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort))
		must(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		must(t, err)
		return body
	}
	body := scrape()
	for _, w := range []string{
		`urbd_role{resource="r0",role="Primary"} 1`,
		`urbd_protocol{protocol="C",resource="r0"} 1`,
		`urbd_connection_state{resource="r0",state="Connected"} 1`,
		`urbd_io_bytes_total{kind="write",resource="r0",side="local"}`,
		`urbd_write_latency_seconds_bucket{resource="r0",side="peer"`,
		`urbd_out_of_sync_bytes{resource="r0"} 0`,
		`urbd_blocked_seconds{on="disk",resource="r0"} 0`,
		`urbd_blocked_seconds{on="peer",resource="r0"} 0`,
	} {
		if !strings.Contains(string(body), w) {
			t.Errorf("metrics lack %s", w)
		}
	}
	ahead := regexp.MustCompile(`urbd_io_requests_total\{kind="flush_ahead",resource="r0",side="local"\} (\d+)`).FindSubmatch(body)
	if ahead == nil || string(ahead[1]) == "0" {
		t.Errorf("no sync ahead counted after fio --fsync=1 (urbd_io_requests_total{kind=\"flush_ahead\"}: %q)", ahead)
	}
	if t.Failed() {
		t.Logf("metrics:\n%s", body)
	}

	// urbd adjust reads the file again: the new protocol, resync rate,
	// on-peer-loss and handlers apply at once (the new demoted handler runs
	// on the next demotion), the new timeout from the next connection on,
	// the new activity-log size only at the next start, and the reply says
	// so.
	conf = strings.Replace(conf, `resync-rate = "50MiB"`, `resync-rate = "20MiB"`, 1)
	conf = strings.Replace(conf, `timeout = "2s"`, "timeout = \"3s\"\nal-extents = 3389", 1)
	conf = strings.Replace(conf, `protocol = "C"`, "protocol = \"B\"\non-peer-loss = \"suspend\"", 1)
	demoted := fmt.Sprintf(`demoted = "echo \"$URBD_EVENT $URBD_RESOURCE\" >> %s"`, events)
	conf = strings.Replace(conf, "[resource.r0]", demoted+"\n\n[resource.r0]", 1) // into [handlers]
	must(t, os.WriteFile(path, []byte(conf), 0o644))
	show := func(wantRate, wantPending string) {
		t.Helper()
		out := c.a.ctl("show", "r0")
		if !regexp.MustCompile(`(?m)^  resync-rate +`+wantRate+`$`).MatchString(out) ||
			!strings.HasSuffix(out, "\nr0: "+wantPending) {
			t.Errorf("urbd show: want resync-rate %s and %q at the end:\n%s", wantRate, wantPending, out)
		}
	}
	show("50MiB/s", "changed in the resource file: urbd adjust applies protocol, resync-rate, timeout, on-peer-loss, handlers; the next start applies al-extents")
	want := "r0: protocol set to B; resync rate set to 20MiB/s; timeout set to 3s (from the next connection on); on-peer-loss set to suspend; " +
		"handlers replaced (demoted added); changed, and applied at the next start (urbd down, then urbd up): al-extents"
	if out := c.a.ctl("adjust", "r0"); out != want {
		t.Errorf("urbd adjust after editing the resource file:\n got %q\nwant %q", out, want)
	}
	if out := c.a.ctl("adjust", "r0"); !strings.HasPrefix(out, "r0: no live setting changed;") {
		t.Errorf("urbd adjust again: %q", out)
	}
	show("20MiB/s", "changed in the resource file: the next start applies al-extents")
	if out := c.a.ctl("show", "r0"); !regexp.MustCompile(`(?m)^  timeout +3s$`).MatchString(out) {
		t.Errorf("urbd show after adjusting the timeout:\n%s", out)
	}
	// The protocol changed without a reconnect: the status file says B, and
	// writes go on through the same connection.
	if st := c.a.status(); st.Protocol != "B" || st.ConnState != "Connected" {
		t.Errorf("after adjusting to protocol B: protocol %s, %s", st.Protocol, st.ConnState)
	}
	if out := c.a.ctl("adjust", "--protocol", "a", "r0"); out != "r0: protocol set to A" {
		t.Errorf("urbd adjust --protocol a: %q", out)
	}
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(string(scrape()), `urbd_protocol{protocol="A",resource="r0"} 1`); {
		if time.Now().After(deadline) {
			t.Errorf("metrics do not show protocol A 5 s after urbd adjust --protocol a:\n%s", scrape())
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if out, err := c.a.try("adjust", "--protocol", "D", "r0"); err == nil || out != `urbd: --protocol "D": use A, B or C` {
		t.Errorf("urbd adjust --protocol D: %v: %q", err, out)
	}
	runFio(t, c.a.uri(), "--rw=randwrite", "--bs=64k", "--size=8M", "--iodepth=8", "--verify=crc32c")
	c.a.waitFor("protocol A writes answered by the peer", 10*time.Second, func(s statusT) bool {
		return s.Protocol == "A" && s.PeerPending == 0 && s.ConnState == "Connected"
	})
	cmpFiles(t, c.a.disk, c.b.disk)
	// A flag sets one setting until the next adjust from the file.
	if out := c.a.ctl("adjust", "--on-peer-loss", "continue", "r0"); out != "r0: on-peer-loss set to continue" {
		t.Errorf("urbd adjust --on-peer-loss continue: %q", out)
	}
	if out, err := c.a.try("adjust", "--on-peer-loss", "sometimes", "r0"); err == nil || out != `urbd: --on-peer-loss "sometimes": use continue or suspend` {
		t.Errorf("urbd adjust --on-peer-loss sometimes: %v: %q", err, out)
	}
	if out, err := c.a.try("adjust", "--resync-rate", "fast", "--on-peer-loss", "suspend", "r0"); err == nil || !strings.HasPrefix(out, "urbd: --resync-rate: ") || strings.Contains(out, "\n") {
		t.Errorf("urbd adjust --resync-rate fast: %v: %q, want one line about --resync-rate", err, out)
	}
	// The policies that take flags: on-io-error at once, the after-sb
	// policies and the timeout from the next connection on; a bad value is
	// refused in one line.
	if out := c.a.ctl("adjust", "--on-io-error", "pass_on", "--timeout", "4s", "r0"); out != "r0: timeout set to 4s (from the next connection on); on-io-error set to pass_on" {
		t.Errorf("urbd adjust --on-io-error pass_on --timeout 4s: %q", out)
	}
	if out, err := c.a.try("adjust", "--after-sb-1pri", "violence", "r0"); err == nil ||
		out != `urbd: --after-sb-1pri: unknown after-sb-1pri policy "violence": use disconnect, consensus or discard-secondary` {
		t.Errorf("urbd adjust --after-sb-1pri violence: %v: %q", err, out)
	}
	if out := c.a.ctl("adjust", "--csums-alg", "sha256", "r0"); out != "r0: csums-alg set to sha256 (from the next resync on)" {
		t.Errorf("urbd adjust --csums-alg sha256: %q", out)
	}
	if out, err := c.a.try("adjust", "--csums-alg", "md5", "r0"); err == nil || out != `urbd: --csums-alg "md5": use sha256 or none` {
		t.Errorf("urbd adjust --csums-alg md5: %v: %q", err, out)
	}
	if out := c.a.ctl("adjust", "--csums-alg", "none", "r0"); out != "r0: csums-alg set to none (from the next resync on)" {
		t.Errorf("urbd adjust --csums-alg none: %q", out)
	}
	// ko-count applies at once; a bad one is refused in one line.
	if out := c.a.ctl("adjust", "--ko-count", "3", "r0"); out != "r0: ko-count set to 3" {
		t.Errorf("urbd adjust --ko-count 3: %q", out)
	}
	if out, err := c.a.try("adjust", "--ko-count", "-1", "r0"); err == nil || out != "urbd: --ko-count -1: use 0 (never drop a peer that answers pings) to 200; default 7" {
		t.Errorf("urbd adjust --ko-count -1: %v: %q", err, out)
	}
	if out := c.a.ctl("adjust", "--ko-count", "7", "r0"); out != "r0: ko-count set to 7" {
		t.Errorf("urbd adjust --ko-count 7: %q", out)
	}
	if out := c.a.ctl("adjust", "--disk-timeout", "30s", "r0"); out != "r0: disk-timeout set to 30s" {
		t.Errorf("urbd adjust --disk-timeout 30s: %q", out)
	}
	if out, err := c.a.try("adjust", "--disk-timeout", "-5s", "r0"); err == nil || out != `urbd: --disk-timeout -5s: use a duration such as 30s, or 0 for off` {
		t.Errorf("urbd adjust --disk-timeout -5s: %v: %q", err, out)
	}
	if out := c.a.ctl("adjust", "--disk-timeout", "0", "r0"); out != "r0: disk-timeout set to 0 (off)" {
		t.Errorf("urbd adjust --disk-timeout 0: %q", out)
	}
	if out, err := c.a.try("adjust", "--timeout", "0s", "r0"); err == nil || out != "urbd: --timeout 0s: use a positive duration, e.g. 6s" {
		t.Errorf("urbd adjust --timeout 0s: %v: %q", err, out)
	}
	if out, err := c.a.try("adjust", "--fencing", "resource-only", "r0"); err == nil ||
		out != "urbd: fencing resource-only needs a fence-peer handler: add one to the resource file (handlers) and run urbd adjust r0" {
		t.Errorf("urbd adjust --fencing resource-only without a handler: %v: %q", err, out)
	}
	show("20MiB/s", "changed in the resource file: urbd adjust applies protocol, timeout, on-peer-loss, on-io-error; the next start applies al-extents")

	// The export moves to another socket with the resource file: a client
	// attached through the old one stays and goes on writing, new clients
	// use the new one, the old path is gone.
	attached, err := c.a.client()
	must(t, err)
	newSock := filepath.Join(c.a.dir, "moved.sock")
	conf = strings.Replace(conf, "nbd = \"unix:"+c.a.sock+"\"", "nbd = \"unix:"+newSock+"\"", 1)
	must(t, os.WriteFile(path, []byte(conf), 0o644))
	if out := c.a.ctl("adjust", "r0"); !strings.HasPrefix(out, "r0: nbd set to unix:"+newSock+" (attached clients stay connected);") {
		t.Errorf("urbd adjust with a new nbd address: %q", out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := attached.Write(ctx, bytes.Repeat([]byte{5}, 4096), 1<<20, true); err != nil {
		t.Errorf("the client attached before the move: %v", err)
	}
	must(t, attached.Disconnect())
	if _, err := os.Stat(c.a.sock); err == nil {
		t.Errorf("the old NBD socket %s is still there", c.a.sock)
	}
	c.a.sock = newSock
	runFio(t, c.a.uri(), "--rw=randwrite", "--bs=4k", "--size=1M", "--iodepth=4", "--verify=crc32c")

	c.a.ctl("secondary", "r0")
	waitForHandlers(t, events, "demoted r0")

	// The metrics move to another port with the resource file: served there
	// at once, the old port closed.
	newPort := freePort(t)
	conf = strings.Replace(conf, fmt.Sprintf("127.0.0.1:%d", metricsPort), fmt.Sprintf("127.0.0.1:%d", newPort), 1)
	must(t, os.WriteFile(path, []byte(conf), 0o644))
	if out := c.a.ctl("adjust", "r0"); !strings.HasPrefix(out, fmt.Sprintf("r0: metrics-listen set to 127.0.0.1:%d;", newPort)) {
		t.Errorf("urbd adjust with a new metrics-listen: %q", out)
	}
	if _, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort)); err == nil {
		t.Errorf("the old metrics port %d still answers", metricsPort)
	}
	metricsPort = newPort
	if body := scrape(); !strings.Contains(string(body), `urbd_role{resource="r0",role="Secondary"} 1`) {
		t.Errorf("the new metrics port does not serve the resource's metrics:\n%s", body)
	}

	// With beta's daemon stopped, urbd outdate finds its metadata through
	// the resource file.
	c.b.kill9()
	if out := c.b.ctl("outdate", "--config", path, "--node", "beta", "r0"); out != "r0: Outdated (daemon stopped; metadata in "+c.b.meta+")" {
		t.Errorf("offline outdate through the resource file: %q", out)
	}
}

// waitForHandlers waits up to 10 s until the file the handlers append to
// holds each of want.
func waitForHandlers(t *testing.T, events string, want ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, _ := os.ReadFile(events)
		missing := ""
		for _, w := range want {
			if !strings.Contains(string(got), w) {
				missing = w
			}
		}
		if missing == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("handler for %q did not run; events file:\n%s", missing, got)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestSecondaryDiskErrorNotPromotable: the Secondary's disk is a 64 MiB
// sparse file on an 8 MiB tmpfs, so its writes fail with ENOSPC once the
// Primary wrote more than that. The Primary's client sees every write
// succeed; the Secondary turns Inconsistent, runs the local-io-error handler
// with the error, and when the repairing resync fails as well it waits
// StandAlone, with the error in its status, refusing promotion.
func TestSecondaryDiskErrorNotPromotable(t *testing.T) {
	c := newCluster(t, clusterOpts{})
	small := filepath.Join(c.dir, "small")
	must(t, os.MkdirAll(small, 0o755))
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", small).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", small).Run() })
	c.b.disk = filepath.Join(small, "disk.img")
	must(t, os.WriteFile(c.b.disk, nil, 0o644))
	must(t, os.Truncate(c.b.disk, 64<<20))
	events := filepath.Join(c.dir, "events")

	c.a.start()
	c.b.start("--handler", fmt.Sprintf(`local-io-error=echo "$URBD_EVENT $URBD_REASON" >> %s`, events))
	c.a.waitInSync(30 * time.Second)
	c.a.ctl("primary", "r0")
	runFio(t, c.a.uri(), "--rw=write", "--bs=1M", "--size=32M", "--iodepth=4")

	st := c.b.waitFor("StandAlone and Inconsistent", 30*time.Second, func(s statusT) bool {
		return s.ConnState == "StandAlone" && s.DiskState == "Inconsistent"
	})
	if !strings.Contains(st.Reason, "local disk error") || !strings.Contains(st.Reason, "no space left on device") {
		t.Errorf("the Secondary's reason does not name the disk error: %q", st.Reason)
	}
	if out, err := c.b.try("primary", "r0"); err == nil || !strings.Contains(out, "not UpToDate") {
		t.Errorf("urbd primary on the failed Secondary: %v: %s; want a refusal naming the disk state", err, out)
	}
	if a := c.a.status(); a.Role != "Primary" || a.OutOfSyncKiB == 0 {
		t.Errorf("the Primary after its peer's disk failed: role %s, %d KiB out of sync; want Primary with the failed writes marked", a.Role, a.OutOfSyncKiB)
	}
	got, _ := os.ReadFile(events)
	if !strings.Contains(string(got), "local-io-error local disk error") {
		t.Errorf("the local-io-error handler did not run with the reason; events file:\n%s", got)
	}
}

// TestQueriesAndWaits: the one-word queries print the states DRBD's print,
// wait-sync returns once the resync is over, wait-connect fails after its
// timeout on a node whose peer is away, and at once on a StandAlone node.
func TestQueriesAndWaits(t *testing.T) {
	c := newCluster(t, clusterOpts{noClean: true})
	c.a.start()
	c.b.start()
	c.a.ctl("wait-connect", "--timeout", "30s", "r0")
	c.a.ctl("primary", "--force", "r0") // a full initial sync of 64 MiB starts
	if out := c.b.ctl("wait-sync", "--timeout", "60s", "r0"); !strings.Contains(out, "cs:Connected ro:Secondary/Primary ds:UpToDate/UpToDate") {
		t.Errorf("wait-sync printed %q", out)
	}
	for _, q := range []struct {
		node      *node
		cmd, want string
	}{
		{c.a, "role", "Primary/Secondary"},
		{c.b, "role", "Secondary/Primary"},
		{c.a, "cstate", "Connected"},
		{c.b, "dstate", "UpToDate/UpToDate"},
	} {
		if out := q.node.ctl(q.cmd, "r0"); out != q.want {
			t.Errorf("node %s: urbd %s r0 printed %q, want %q", q.node.name, q.cmd, out, q.want)
		}
	}

	// Generation UUIDs: in sync, both hold the same current generation and
	// show-gi on a explains both; once b leaves, the Primary starts a new
	// generation and its bitmap UUID is the one both shared.
	giRE := regexp.MustCompile(`^[0-9A-F]{16}(:[0-9A-F]{16}){3}$`)
	giA, giB := c.a.ctl("get-gi", "r0"), c.b.ctl("get-gi", "r0")
	if !giRE.MatchString(giA) || !giRE.MatchString(giB) || giA[:16] != giB[:16] || giA[:16] == strings.Repeat("0", 16) {
		t.Errorf("get-gi in sync: a %q, b %q; want the same non-zero current generation", giA, giB)
	}
	if out := c.a.ctl("show-gi", "r0"); !strings.Contains(out, "this node: "+giA) || !strings.Contains(out, "the peer:  "+giB) ||
		!strings.Contains(out, "current  "+giA[:16]) {
		t.Errorf("show-gi in sync:\n%s", out)
	}

	c.b.ctl("disconnect", "r0")
	c.a.waitFor("peer gone", 10*time.Second, func(s statusT) bool { return s.ConnState == "WFConnection" })
	if gi := c.a.ctl("get-gi", "r0"); gi[:16] == giA[:16] || gi[17:33] != giA[:16] {
		t.Errorf("get-gi of the Primary after its peer left: %q; want a new current and bitmap %s", gi, giA[:16])
	}
	if out := c.a.ctl("show-gi", "r0"); !strings.Contains(out, "the peer:  unknown (not connected)") {
		t.Errorf("show-gi without the peer:\n%s", out)
	}
	start := time.Now()
	out, err := c.a.try("wait-connect", "--timeout", "1s", "r0")
	if err == nil || !strings.Contains(out, "not connected after 1s (cs:WFConnection") || time.Since(start) > 10*time.Second {
		t.Errorf("wait-connect with the peer away: %v %q after %v; want a failure after 1s naming WFConnection", err, out, time.Since(start))
	}
	out, err = c.b.try("wait-connect", "r0") // no timeout: it must not wait for ever
	if err == nil || !strings.Contains(out, "StandAlone") {
		t.Errorf("wait-connect on a StandAlone node: %v %q; want an immediate failure naming StandAlone", err, out)
	}
	if out := c.b.ctl("dstate", "r0"); out != "Outdated/DUnknown" {
		t.Errorf("dstate of a Secondary that disconnected from its Primary: %q, want Outdated/DUnknown", out)
	}
	c.b.ctl("connect", "r0")
	c.a.ctl("wait-connect", "--timeout", "30s", "r0")
}

// TestAdjustLink: both nodes run from one resource file with a secret
// file. A new secret, written to the same file, a new address for beta and
// a new tcp-congestion are taken by urbd adjust on both nodes without
// dropping the connection; the next connection uses them (beta's old port
// is closed, both ends run reno), and a node left with the old secret is
// refused until it reads the new one.
func TestAdjustLink(t *testing.T) {
	c := newCluster(t, clusterOpts{})
	secret := filepath.Join(c.dir, "r0.secret")
	must(t, os.WriteFile(secret, []byte("correct horse\n"), 0o600))
	newB := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	conf := func(addrB, congestion string) string {
		return fmt.Sprintf(`
[resource.r0]
secret-file = %q
timeout = "2s"
tcp-congestion = %q

  [resource.r0.node.alpha]
  disk = %q
  meta = %q
  nbd = "unix:%s"
  address = %q

  [resource.r0.node.beta]
  disk = %q
  meta = %q
  nbd = "unix:%s"
  address = %q
`, secret, congestion, c.a.disk, c.a.meta, c.a.sock, c.a.listen, c.b.disk, c.b.meta, c.b.sock, addrB)
	}
	path := filepath.Join(c.dir, "urbd.toml")
	must(t, os.WriteFile(path, []byte(conf(c.b.listen, "cubic")), 0o644))
	c.a.startArgs("--run-dir", c.a.runDir, "up", "--config", path, "--node", "alpha", "--assume-clean", "r0")
	c.b.startArgs("--run-dir", c.b.runDir, "up", "--config", path, "--node", "beta", "--assume-clean", "r0")
	c.a.waitInSync(30 * time.Second)
	c.a.ctl("primary", "r0")

	must(t, os.WriteFile(secret, []byte("battery staple\n"), 0o600))
	must(t, os.WriteFile(path, []byte(conf(newB, "reno")), 0o644))
	for n, want := range map[*node]string{
		c.a: "r0: peer address set to " + newB + ", secret and TLS files read again, tcp-congestion set to reno (from the next connection on)",
		c.b: "r0: address set to " + newB + ", secret and TLS files read again, tcp-congestion set to reno (from the next connection on)",
	} {
		if out := n.ctl("adjust", "r0"); out != want {
			t.Errorf("urbd adjust on %s:\n got %q\nwant %q", n.name, out, want)
		}
	}
	if st := c.a.status(); st.ConnState != "Connected" {
		t.Fatalf("the connection did not survive urbd adjust: %s", st.ConnState)
	}
	if conn, err := net.DialTimeout("tcp", c.b.listen, time.Second); err == nil {
		conn.Close()
		t.Errorf("beta's old address %s still accepts connections", c.b.listen)
	}
	c.a.ctl("disconnect", "r0")
	c.a.ctl("connect", "r0")
	c.a.waitInSync(30 * time.Second)
	runFio(t, c.a.uri(), "--rw=randwrite", "--bs=4k", "--size=4M", "--iodepth=8", "--verify=crc32c")
	if got := peerConnCongestion(t, c.a.listen, newB); len(got) != 2 || got[0] != "reno" || got[1] != "reno" {
		t.Errorf("congestion control of the new connection's two ends: %q, want reno on both", got)
	}

	// beta reads a secret alpha does not have: refused at the next connection.
	must(t, os.WriteFile(secret, []byte("tr0ub4dor\n"), 0o600))
	c.b.ctl("adjust", "r0")
	c.a.ctl("disconnect", "r0")
	c.a.ctl("connect", "r0")
	// Whichever end finds the mismatch, both say it in the same words.
	c.a.waitFor("refused for the secret", 20*time.Second, func(s status.Resource) bool {
		return strings.Contains(s.Reason, "authentication failed: the two nodes' shared secrets do not match")
	})
	c.a.ctl("adjust", "r0")
	c.a.waitInSync(30 * time.Second)
	c.a.ctl("secondary", "r0")
	cmpFiles(t, c.a.disk, c.b.disk)
}

// TestSecondDaemonRefused: `urbd up` started again for a running resource
// (the same --meta) is refused in one line that says why, before it
// touches the metadata, the control socket or the NBD socket; the running
// daemon goes on serving.
func TestSecondDaemonRefused(t *testing.T) {
	c := newCluster(t, clusterOpts{})
	c.startBoth()
	out, err := c.a.command(c.a.upArgs()...).CombinedOutput()
	line := strings.TrimSpace(string(out))
	if err == nil || !strings.HasPrefix(line, "urbd: --meta: ") || !strings.HasSuffix(line, "(is urbd up r0 already running?)") || strings.Contains(line, "\n") {
		t.Fatalf("a second urbd up: %v: %q, want one line naming the running daemon", err, line)
	}
	if st := c.a.status(); st.Role != "Primary" || st.ConnState != "Connected" {
		t.Fatalf("the running daemon after the refused start: %s %s", st.Role, st.ConnState)
	}
	runFio(t, c.a.uri(), "--rw=randwrite", "--bs=4k", "--size=4M", "--iodepth=8", "--verify=crc32c")
	c.a.ctl("secondary", "r0")
	cmpFiles(t, c.a.disk, c.b.disk)
}

// TestEvents: urbd events prints each resource as it is (exists lines, then
// "exists -"), then one change line per state change with the fields that
// changed, and "destroy" when the daemon stops, after which it exits 0.
// --now prints the listing only; a resource that is not running is refused
// in one line. Without a name it prints "exists -" with no daemon running,
// then create and destroy each time the daemon starts and stops, and exits
// 0 on SIGTERM.
func TestEvents(t *testing.T) {
	c := newCluster(t, clusterOpts{})
	c.a.start()
	c.b.start()
	c.a.waitInSync(30 * time.Second)
	out := c.a.ctl("events", "--now", "r0")
	if lines := strings.Split(out, "\n"); len(lines) != 2 || lines[1] != "exists -" ||
		!strings.HasPrefix(lines[0], "exists resource name:r0 role:Secondary peer-role:Secondary cstate:Connected disk:UpToDate peer-disk:UpToDate protocol:C suspended:no split-brain:no blocked:no reason:") {
		t.Errorf("events --now printed:\n%s", out)
	}
	if out, err := c.a.try("events", "r9"); err == nil || !strings.Contains(out, "no daemon") || strings.Count(out, "\n") > 0 {
		t.Errorf("events for a resource that is not running: %v, %q; want a one-line error", err, out)
	}

	ev := startDaemon(t, urbdBin, "--run-dir", c.a.runDir, "events", "--timestamps", "r0")
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(ev.output(), "exists -") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	c.a.ctl("primary", "r0")
	c.a.ctl("disconnect", "r0")
	c.a.ctl("connect", "r0")
	c.a.waitInSync(30 * time.Second)
	c.a.stop()
	if code := ev.wait(30 * time.Second); code != 0 {
		t.Errorf("urbd events exited %d after the daemon stopped:\n%s", code, ev.output())
	}
	got := ev.output()
	stamp := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[-+]\d\d:\d\d `)
	var kinds []string
	for _, l := range strings.Split(strings.TrimSpace(got), "\n") {
		if !stamp.MatchString(l) {
			t.Errorf("line without a timestamp: %q", l)
			continue
		}
		kinds = append(kinds, stamp.ReplaceAllString(l, ""))
	}
	// In order, each somewhere after the one before.
	want := []string{
		"exists resource name:r0 role:Secondary",
		"exists -",
		"change resource name:r0 role:Primary",
		"cstate:StandAlone",
		"cstate:Connected",
		"destroy resource name:r0",
	}
	i := 0
	for _, l := range kinds {
		if i < len(want) && strings.Contains(l, want[i]) {
			i++
		}
	}
	if i < len(want) {
		t.Errorf("urbd events did not print %q (in this order after the ones before):\n%s", want[i], got)
	}

	// Without a name it follows daemons that start later, and again.
	all := startDaemon(t, urbdBin, "--run-dir", c.a.runDir, "events")
	waitOutput := func(what string, n int) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for strings.Count(all.output(), what) < n {
			if time.Now().After(deadline) || all.exited() {
				t.Fatalf("urbd events did not print %q %d times:\n%s", what, n, all.output())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitOutput("exists -\n", 1)
	for round := 1; round <= 2; round++ {
		c.a.start()
		waitOutput("create resource name:r0 role:", round)
		c.a.stop()
		waitOutput("destroy resource name:r0", round)
	}
	all.stop(10 * time.Second)
	if code := all.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("urbd events exited %d on SIGTERM:\n%s", code, all.output())
	}
	if got := all.output(); strings.Contains(got, "exists resource") {
		t.Errorf("urbd events listed a resource whose daemon had stopped:\n%s", got)
	}
}
