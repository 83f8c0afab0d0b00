package e2e

import (
	"strings"
	"testing"
	"time"
)

// The kernel tier: a real /dev/nbd0 from the real kernel nbd driver, with
// LVM and ext4 on it, in a QEMU guest (see vm_helpers_test.go). Each test
// is one guest scenario in scripts/vm/, which states its steps and checks;
// the guest's log is printed with -v and on failure.

// TestKernelServeExt4LVM: urbd serve a sparse file, urbd attach /dev/nbd0
// (the kernel must send FLUSH, FUA and TRIM), pvcreate/vgcreate/lvcreate,
// mkfs.ext4, mount, write files, fstrim, umount, deactivate, detach; attach
// again, activate, e2fsck -fn clean, files intact, no I/O error logged.
func TestKernelServeExt4LVM(t *testing.T) {
	kernelTierResult(t)
	res := runVMScenario(t, "serve-ext4-lvm.sh", 4*time.Minute)
	if !strings.Contains(res.file("scenario.log"), "PASS") {
		t.Fatal("scenario finished without PASS")
	}
}

// TestKernelAttachReconnect: kill -9 urbd serve under a mounted ext4 and
// start it again 3 s later; a write+fsync issued during the outage
// completes, writes after it succeed, every file reads back, e2fsck is
// clean and the kernel logged no I/O error. The attach log shows the
// reconnect.
func TestKernelAttachReconnect(t *testing.T) {
	kernelTierResult(t)
	res := runVMScenario(t, "attach-reconnect.sh", 4*time.Minute)
	t.Logf("--- attach.log ---\n%s", res.file("attach.log"))
	if !strings.Contains(res.file("attach.log"), "reconnected") {
		t.Fatal("attach did not reconnect")
	}
}

// TestKernelAttachOutageBeyondTimeout: an outage longer than --timeout
// (2 s) fails I/O with EIO, as it must, but urbd attach stays up,
// redials, and when the server is back the same /dev/nbd0 reads the disk
// again without re-attaching.
func TestKernelAttachOutageBeyondTimeout(t *testing.T) {
	kernelTierResult(t)
	res := runVMScenario(t, "attach-long-outage.sh", 4*time.Minute)
	if !strings.Contains(res.file("attach.log"), "reconnected") {
		t.Fatal("attach did not reconnect after the outage")
	}
}

// TestKernelFailover: two urbd up nodes on the guest's loopback, LVM and
// ext4 through /dev/nbd0 on the primary, kill -9 of the primary while
// mounted, urbd primary on the survivor; the attach supervisor (given both
// nodes' --nbd addresses) fails over, a write during the failover
// completes, and after detaching, re-attaching to the survivor,
// activating the VG, e2fsck -fn is clean and every file is intact.
func TestKernelFailover(t *testing.T) {
	kernelTierResult(t)
	res := runVMScenario(t, "failover.sh", 5*time.Minute)
	if !strings.Contains(res.file("attach.log"), "reconnected") {
		t.Fatal("attach did not fail over to the survivor")
	}
}

// TestKernelAttachDisk: ext4 mounted on /dev/nbd0 through a Primary whose
// disk is a dm device. The disk dies (dm's error target), the Primary goes
// Diskless and ext4 goes on; the disk is replaced under the same name and
// urbd attach-disk copies the peer's data to it while a file is written;
// the new disk ends UpToDate, identical to the Secondary's, e2fsck -fn is
// clean, and no I/O error reached /dev/nbd0 or ext4.
func TestKernelAttachDisk(t *testing.T) {
	kernelTierResult(t)
	res := runVMScenario(t, "attach-disk.sh", 6*time.Minute)
	if !strings.Contains(res.file("scenario.log"), "copying 128MiB from the peer") {
		t.Fatal("attach-disk did not say what it copies")
	}
}

// TestKernelResizeOnline: ext4 mounted on /dev/nbd0 through the Primary of
// two urbd up nodes; both disks grow, urbd resize grows the resource and
// tells urbd attach, which grows /dev/nbd0 live (NBD_CMD_RECONFIGURE with
// the size); resize2fs grows the mounted file system, a file larger than
// the old disk fits, the Secondary ends identical, and e2fsck -fn is clean.
func TestKernelResizeOnline(t *testing.T) {
	kernelTierResult(t)
	res := runVMScenario(t, "resize-online.sh", 6*time.Minute)
	if !strings.Contains(res.file("attach.log"), "grew /dev/nbd0 from 134217728 to 268435456 bytes") {
		t.Fatal("attach did not log growing the device")
	}
}

// TestKernelThinResync: the Secondary's disk is a dm-thin volume. A full
// resync (urbd invalidate) of a 128 MiB disk holding 16 MiB of data leaves
// its pool holding about those 16 MiB: the peer's zeroes, which the volume
// already reads, provision nothing; nor does a client's WRITE_ZEROES (may
// unmap) of 16 MiB more, replicated to it. The two disks end identical.
func TestKernelThinResync(t *testing.T) {
	kernelTierResult(t)
	res := runVMScenario(t, "thin-resync.sh", 5*time.Minute)
	if !strings.Contains(res.file("scenario.log"), "after the full resync of 128 MiB") {
		t.Fatal("the scenario did not report the pool after the resync")
	}
}

// TestKernelAutoPromote: two urbd up nodes with --auto-promote yes on the
// guest's loopback, neither promoted by hand. urbd attach of /dev/nbd0 (four
// connections) to one promotes it, an attach to the other is refused with
// the reason, ext4 is written, unmounted and detached, which demotes the
// first; attached at once to the other, which is promoted as soon as the
// first demoted, e2fsck -fn is clean and every file is intact; detached, it
// is Secondary again.
func TestKernelAutoPromote(t *testing.T) {
	kernelTierResult(t)
	res := runVMScenario(t, "auto-promote.sh", 5*time.Minute)
	if !strings.Contains(res.file("scenario.log"), "b demoted automatically, a promoted") {
		t.Fatal("the scenario did not report the automatic demotion")
	}
}
