# Scenario: ext4 mounted on /dev/nbd0 through a Primary grows online. Both
# nodes' disks grow, urbd resize grows the resource and tells urbd attach,
# which grows /dev/nbd0 live; resize2fs grows the mounted file system, a
# file larger than the old disk fits, the new part is resynced to the
# Secondary, e2fsck -fn is clean and both disks end identical.
. "$OUT/lib.sh"
load_modules

OLD=128M NEW=256M
sectors_are() { [ "$(cat /sys/block/$1/size)" -eq "$2" ]; }

truncate -s $OLD /tmp/a.img /tmp/b.img
up_node a /tmp/a.img 7788 7789
up_node b /tmp/b.img 7789 7788
ext4_on_primary
for i in 1 2; do
	dd if=/dev/urandom of=/tmp/m/f$i bs=1M count=8 status=none
done
sync
step "ext4 on /dev/nbd0 ($(cat /sys/block/nbd0/size) sectors) written through node a"

if out=$("$URBD" --run-dir /run/urbd-a resize r0 2>&1); then
	fail "urbd resize before the disks grew succeeded: $out"
fi
echo "refused as expected: $out"
truncate -s $NEW /tmp/a.img
truncate -s $NEW /tmp/b.img
out=$("$URBD" --run-dir /run/urbd-a resize r0 2>&1) || fail "urbd resize failed: $out"
echo "$out"
echo "$out" | grep -q "told 1 urbd attach" || fail "urbd resize did not tell urbd attach: $out"
wait_for sectors_are nbd0 $((256 * 2048))
step "/dev/nbd0 grew live to $(cat /sys/block/nbd0/size) sectors"

resize2fs /dev/nbd0 || fail "resize2fs of the mounted file system failed"
blocks=$(df -k /tmp/m | awk 'NR == 2 { print $2 }')
[ "$blocks" -gt 200000 ] || fail "the file system has $blocks KiB after resize2fs"
step "ext4 grown online to $blocks KiB"
dd if=/dev/urandom of=/tmp/m/big bs=1M count=144 status=none conv=fsync || fail "a file larger than the old disk did not fit"
(cd /tmp/m && md5sum f1 f2 big) > /tmp/sums
sync
"$URBD" --run-dir /run/urbd-a wait-sync --timeout 240s r0 || fail "the nodes did not get in sync"
step "in sync: $("$URBD" --run-dir /run/urbd-a status r0 | sed -n 2p)"
umount /tmp/m
detach nbd0
no_io_errors
cmp /tmp/a.img /tmp/b.img || fail "the two disks differ"
e2fsck -fn /tmp/b.img || fail "e2fsck found problems on the Secondary's disk"
mount -o loop,ro /tmp/b.img /tmp/m
(cd /tmp/m && md5sum -c /tmp/sums) || fail "files differ on the Secondary's disk"
umount /tmp/m
kill "$PID_a" "$PID_b"
wait "$PID_a" "$PID_b" || true
step "PASS"
