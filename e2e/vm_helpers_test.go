package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The kernel tier boots Debian's kernel in QEMU (TCG: KVM hangs on these
// machines) with a busybox initramfs from scripts/vm/build-initramfs.sh.
// The guest mounts the host's root read-only over 9p and chroots into it,
// so every host binary runs in the guest with the guest's nbd and dm
// modules. A second, writable 9p share (a per-test temp dir, /mnt in the
// guest) carries the urbd binary and the scenario scripts in and the
// results out: rc, scenario.log, dmesg.txt and the daemons' logs.

// kernelTests lists the kernel tier's tests in file order, for the summary
// line printed after the last selected one.
var kernelTests = []string{"TestKernelServeExt4LVM", "TestKernelAttachReconnect", "TestKernelAttachOutageBeyondTimeout", "TestKernelFailover", "TestKernelAttachDisk", "TestKernelResizeOnline", "TestKernelThinResync", "TestKernelAutoPromote"}

var kernelTier struct {
	sync.Mutex
	passed, failed []string
}

// kernelTierResult records the test's outcome when it ends and, after the
// last kernel test that -run selects, prints the tier's summary line.
func kernelTierResult(t *testing.T) {
	t.Cleanup(func() {
		kernelTier.Lock()
		defer kernelTier.Unlock()
		if t.Failed() {
			kernelTier.failed = append(kernelTier.failed, t.Name())
		} else {
			kernelTier.passed = append(kernelTier.passed, t.Name())
		}
		if t.Name() == lastSelected(kernelTests) {
			fmt.Printf("e2e: kernel tier: %d passed, %d failed %v\n",
				len(kernelTier.passed), len(kernelTier.failed), kernelTier.failed)
		}
	})
}

// lastSelected returns the last of names that the -run and -skip flags
// select (top-level part of the patterns only).
func lastSelected(names []string) string {
	pattern := func(name string) *regexp.Regexp {
		f := flag.Lookup(name)
		if f == nil || f.Value.String() == "" {
			return nil
		}
		re, err := regexp.Compile(strings.SplitN(f.Value.String(), "/", 2)[0])
		if err != nil {
			return nil
		}
		return re
	}
	run, skip := pattern("test.run"), pattern("test.skip")
	last := ""
	for _, n := range names {
		if (run == nil || run.MatchString(n)) && (skip == nil || !skip.MatchString(n)) {
			last = n
		}
	}
	return last
}

// vmKernel returns the newest installed kernel that has a module tree.
func vmKernel(t *testing.T) (version, vmlinuz string) {
	t.Helper()
	images, _ := filepath.Glob("/boot/vmlinuz-*")
	var versions []string
	for _, img := range images {
		v := strings.TrimPrefix(filepath.Base(img), "vmlinuz-")
		if _, err := os.Stat(filepath.Join("/lib/modules", v, "modules.dep")); err == nil {
			versions = append(versions, v)
		}
	}
	if len(versions) == 0 {
		t.Fatal("no kernel with modules in /boot and /lib/modules: install linux-image-amd64 (scripts/install-deps.sh)")
	}
	sort.Strings(versions)
	v := versions[len(versions)-1]
	return v, "/boot/vmlinuz-" + v
}

var initramfsMu sync.Mutex

// vmInitramfs builds the initramfs, cached in the temp dir by kernel
// version and by the content of the builder and the guest init, so a
// change to either rebuilds it. Building takes about a second.
func vmInitramfs(t *testing.T, kver string) string {
	t.Helper()
	initramfsMu.Lock()
	defer initramfsMu.Unlock()
	h := sha256.New()
	for _, f := range []string{"../scripts/vm/build-initramfs.sh", "../scripts/vm/init"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		h.Write(b)
	}
	path := filepath.Join(os.TempDir(), fmt.Sprintf("kernel-tier-%s-%s.cpio.gz", kver, hex.EncodeToString(h.Sum(nil))[:12]))
	if _, err := os.Stat(path); err == nil {
		return path
	}
	out, err := exec.Command("../scripts/vm/build-initramfs.sh", path, kver).CombinedOutput()
	if err != nil {
		t.Fatalf("building the initramfs: %v\n%s", err, out)
	}
	return path
}

// vmResult is what a guest scenario left in the results share.
type vmResult struct {
	dir     string // the share on the host
	rc      int    // the scenario's exit status; -1 if it never finished
	elapsed time.Duration
}

// file returns a file of the results share ("" if missing).
func (r vmResult) file(name string) string {
	b, _ := os.ReadFile(filepath.Join(r.dir, name))
	return string(b)
}

// runVMScenario boots the VM and runs scripts/vm/<scenario> as root in the
// chroot of the host's root, with $URBD the binary under test and $OUT the
// results share. It fails the test with the scenario's log, the other logs
// and the kernel log when the scenario fails or the VM does not power off
// within timeout.
func runVMScenario(t *testing.T, scenario string, timeout time.Duration) vmResult {
	t.Helper()
	requireRoot(t)
	requireCmds(t, "qemu-system-x86_64", "busybox", "cpio", "gzip", "lvm", "dmsetup", "mkfs.ext4", "e2fsck", "modprobe", "nbdinfo", "qemu-io")
	kver, vmlinuz := vmKernel(t)
	initrd := vmInitramfs(t, kver)

	out := t.TempDir()
	copyFile(t, urbdBin, filepath.Join(out, "urbd"), 0o755)
	for _, f := range []string{"lib.sh", scenario} {
		copyFile(t, filepath.Join("../scripts/vm", f), filepath.Join(out, f), 0o644)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64",
		"-accel", "tcg", "-m", "1536", "-smp", "2", "-nographic", "-no-reboot", "-nic", "none",
		"-kernel", vmlinuz, "-initrd", initrd,
		"-append", "console=ttyS0 quiet panic=-1 tier.scenario=/mnt/"+scenario,
		"-virtfs", "local,path=/,mount_tag=hostroot,readonly=on,security_model=none,multidevs=remap",
		"-virtfs", "local,path="+out+",mount_tag=out,security_model=none")
	var console bytes.Buffer
	cmd.Stdout, cmd.Stderr = &console, &console
	start := time.Now()
	err := cmd.Run()
	res := vmResult{dir: out, rc: -1, elapsed: time.Since(start)}
	if rc, perr := strconv.Atoi(strings.TrimSpace(res.file("rc"))); perr == nil {
		res.rc = rc
	}
	t.Logf("VM ran %s in %s (kernel %s)", scenario, res.elapsed.Round(100*time.Millisecond), kver)
	if res.rc != 0 || err != nil {
		t.Logf("--- scenario log ---\n%s", res.file("scenario.log"))
		for _, name := range logFiles(out) {
			t.Logf("--- %s ---\n%s", name, res.file(name))
		}
		t.Logf("--- kernel log (tail) ---\n%s", tail(res.file("dmesg.txt"), 60))
		t.Logf("--- console (tail) ---\n%s", tail(console.String(), 30))
		if ctx.Err() != nil {
			t.Fatalf("%s: the VM did not finish within %s", scenario, timeout)
		}
		t.Fatalf("%s: exit status %d (qemu: %v)", scenario, res.rc, err)
	}
	t.Logf("--- scenario log ---\n%s", res.file("scenario.log"))
	return res
}

// logFiles lists the daemons' logs the scenario wrote.
func logFiles(dir string) []string {
	m, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	var names []string
	for _, p := range m {
		if n := filepath.Base(p); n != "scenario.log" {
			names = append(names, n)
		}
	}
	return names
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, mode); err != nil {
		t.Fatal(err)
	}
}
