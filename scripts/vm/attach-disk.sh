# Scenario: ext4 mounted on /dev/nbd0 through a Primary whose disk is a
# device-mapper device. The disk dies (its table becomes dm's error target):
# the Primary detaches it (Diskless) and the file system goes on through the
# peer. The disk is replaced under the same name (a fresh, empty loop
# device behind the same dm device) and urbd attach-disk copies the peer's
# data to it while files are written; the node is UpToDate again, the file
# system unmounts clean, e2fsck -fn passes on the new disk, which is
# identical to the Secondary's, and no I/O error reached /dev/nbd0 or ext4.
. "$OUT/lib.sh"
load_modules

SIZE=128M
truncate -s $SIZE /tmp/a-old.img /tmp/a-new.img /tmp/b.img
LOOP_OLD=$(losetup -f --show /tmp/a-old.img)
SECTORS=$(blockdev --getsz "$LOOP_OLD")
dmsetup create --noudevsync adisk --table "0 $SECTORS linear $LOOP_OLD 0"
dmsetup mknodes adisk # no udev here
# retable TABLE: swap the dm device's table, as a disk failing or replaced.
retable() {
	dmsetup suspend adisk
	dmsetup load adisk --table "$1"
	dmsetup resume adisk
}
up_node a /dev/mapper/adisk 7788 7789
up_node b /tmp/b.img 7789 7788
ext4_on_primary
dd if=/dev/urandom of=/tmp/m/f1 bs=1M count=8 status=none conv=fsync
step "ext4 on /dev/nbd0 written through node a, on /dev/mapper/adisk"

retable "0 $SECTORS error"
dd if=/dev/urandom of=/tmp/m/f2 bs=1M count=8 status=none conv=fsync || fail "writing after the disk died failed"
wait_for status_has a "ds:Diskless/UpToDate"
step "the disk died: $("$URBD" --run-dir /run/urbd-a status r0 | sed -n 2p)"

if out=$("$URBD" --run-dir /run/urbd-b attach-disk r0 2>&1); then
	fail "attach-disk on the Secondary succeeded: $out"
fi
echo "refused as expected: $out"
LOOP_NEW=$(losetup -f --show /tmp/a-new.img)
retable "0 $SECTORS linear $LOOP_NEW 0"
dd if=/dev/urandom of=/tmp/m/f3 bs=1M count=24 status=none conv=fsync &
DD_PID=$!
out=$("$URBD" --run-dir /run/urbd-a attach-disk r0 2>&1) || fail "urbd attach-disk failed: $out"
echo "$out"
wait "$DD_PID" || fail "writing during attach-disk failed"
# The copy of 128 MiB takes seconds; a failed attach says so at once.
attach_over() {
	st=$("$URBD" --run-dir /run/urbd-a status r0)
	echo "$st" | grep -q "attaching the new disk failed" && fail "attach-disk failed: $st"
	echo "$st" | grep -q "ds:UpToDate/UpToDate"
}
wait_for attach_over
step "attached: $("$URBD" --run-dir /run/urbd-a status r0 | sed -n 2p)"
status_has a "reason: new disk attached" || fail "the reason does not say the disk was attached"
# The peer's chunks of zeroes came as zeroes, written as zeroes that may
# unmap through dm-linear to the loop device, which punches its file: the
# new disk's file stays sparse (a copy written as data fills all 128 MiB).
used_new=$(du -k /tmp/a-new.img | cut -f1)
used_b=$(du -k /tmp/b.img | cut -f1)
step "the new disk's file occupies ${used_new} KiB of 131072, the peer's ${used_b} KiB"
[ "$used_new" -lt $((96 * 1024)) ] || fail "the new disk's file occupies ${used_new} KiB: the copy wrote the peer's zeroes as data"

(cd /tmp/m && md5sum f1 f2 f3) > /tmp/sums
umount /tmp/m
detach nbd0
if dmesg | grep -Ei 'I/O error|blk_update_request|Buffer I/O|EXT4-fs (error|warning)' | grep -v 'dm-'; then
	fail "the kernel logged I/O errors on /dev/nbd0 or ext4"
fi
"$URBD" --run-dir /run/urbd-a secondary r0
kill "$PID_a" "$PID_b"
wait "$PID_a" "$PID_b" || true
dmsetup remove adisk
losetup -d "$LOOP_NEW" "$LOOP_OLD"
cmp /tmp/a-new.img /tmp/b.img || fail "the new disk differs from the Secondary's"
e2fsck -fn /tmp/a-new.img || fail "e2fsck found problems on the new disk"
mount -o loop,ro /tmp/a-new.img /tmp/m
(cd /tmp/m && md5sum -c /tmp/sums) || fail "files differ on the new disk"
umount /tmp/m
step "PASS"
