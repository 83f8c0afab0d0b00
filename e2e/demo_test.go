package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// demoOK is the last line of a successful demo.
const demoOK = "urbd demo: OK"

// TestDemo runs the guided tour the way `make demo` would, through `urbd
// demo` from the source tree, non-interactively: two nodes, ext4, a link cut,
// a resync, a failover, a disk replaced online and cmp of both disks. It must exit 0 and end with
// "urbd demo: OK", leaving no mount, loop device, process or temporary
// directory behind.
func TestDemo(t *testing.T) {
	requireRoot(t)
	requireCmds(t, "bash", "nbdfuse", "losetup", "fusermount3", "mkfs.ext4", "e2fsck", "mount", "cmp")
	before := demoLeftovers(t)
	start := time.Now()
	cmd := exec.Command(urbdBin, "demo", "--non-interactive")
	cmd.Dir = ".." // the source tree: urbd demo finds ./scripts/demo.sh
	cmd.Env = append(os.Environ(), "URBD_DEMO_NONINTERACTIVE=1")
	out, err := runWithTimeout(t, cmd, 3*time.Minute)
	took := time.Since(start)
	if err != nil {
		t.Fatalf("urbd demo failed after %v: %v\n%s", took, err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if last := lines[len(lines)-1]; last != demoOK {
		t.Fatalf("last line %q, want %q\n%s", last, demoOK, out)
	}
	for _, want := range []string{"cs:SyncSource", "sync'ed:", "the disks are identical", "checksums match", "full resync of 256MiB from the peer"} {
		if !strings.Contains(out, want) {
			t.Errorf("the tour never showed %q", want)
		}
	}
	if took > 2*time.Minute {
		t.Errorf("the demo took %v, more than two minutes", took)
	}
	if after := demoLeftovers(t); after != before {
		t.Errorf("the demo left things behind:\nbefore: %s\nafter:  %s", before, after)
	}
	t.Logf("demo took %v", took)
}

// TestDemoScriptNotFound: `urbd demo` away from the source tree and with a
// bad --script says where it looked and what to do, with a non-zero exit.
func TestDemoScriptNotFound(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{"demo"},
		{"demo", "--script", filepath.Join(dir, "missing.sh")},
	} {
		cmd := exec.Command(urbdBin, args...)
		cmd.Dir = dir // urbdBin lives in a temporary directory with no scripts beside it
		cmd.Env = append(os.Environ(), "URBD_DEMO_SCRIPT=")
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Fatalf("urbd %s succeeded without a script:\n%s", strings.Join(args, " "), out)
		}
		if !strings.Contains(string(out), "demo script not found") || !strings.Contains(string(out), "--script") {
			t.Errorf("urbd %s: unhelpful error %q", strings.Join(args, " "), out)
		}
	}
}

// TestDemoCommandRunsScript: `urbd demo` runs the script it is given with
// bash, passes its own path as URBD and --non-interactive as
// URBD_DEMO_NONINTERACTIVE=1, and exits with the script's exit code.
func TestDemoCommandRunsScript(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "demo.sh")
	must(t, os.WriteFile(script, []byte("echo \"urbd=$URBD nonint=$URBD_DEMO_NONINTERACTIVE\"\nexit 7\n"), 0o644))
	cmd := exec.Command(urbdBin, "demo", "--non-interactive", "--script", script)
	cmd.Env = append(os.Environ(), "URBD_DEMO_NONINTERACTIVE=")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 {
		t.Fatalf("exit: %v, want the script's code 7\n%s", err, out)
	}
	bin, err := filepath.EvalSymlinks(urbdBin)
	must(t, err)
	if want := "urbd=" + bin + " nonint=1"; strings.TrimSpace(string(out)) != want {
		t.Fatalf("script saw %q, want %q", strings.TrimSpace(string(out)), want)
	}
}

// runWithTimeout runs cmd and returns its combined output; the process is
// killed after timeout.
func runWithTimeout(t *testing.T, cmd *exec.Cmd, timeout time.Duration) (string, error) {
	t.Helper()
	buf := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = buf, buf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return buf.String(), err
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("timed out after %v:\n%s", timeout, buf.String())
		return "", nil
	}
}

// demoLeftovers describes what a demo could leave behind: its temporary
// directories, mounts and loop devices.
func demoLeftovers(t *testing.T) string {
	t.Helper()
	dirs, err := filepath.Glob("/tmp/urbd-demo.*")
	must(t, err)
	mounts, err := os.ReadFile("/proc/self/mounts")
	must(t, err)
	loops, _ := exec.Command("losetup", "-a").Output()
	var n int
	for _, l := range strings.Split(string(mounts), "\n") {
		if strings.Contains(l, "urbd-demo.") {
			n++
		}
	}
	var nl int
	for _, l := range strings.Split(string(loops), "\n") {
		if strings.Contains(l, "urbd-demo.") {
			nl++
		}
	}
	return fmt.Sprintf("dirs=%v mounts=%d loops=%d", dirs, n, nl)
}
