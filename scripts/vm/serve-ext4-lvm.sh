# Scenario: urbd serve a sparse file, attach it as /dev/nbd0, put LVM and
# ext4 on it, write files, detach; attach again, activate, e2fsck, verify.
. "$OUT/lib.sh"
# expect_error PATTERN CMD...: CMD fails with a one-line message matching PATTERN.
expect_error() {
	pattern=$1
	shift
	if out=$("$@" 2>&1); then fail "$* succeeded"; fi
	echo "$out" | grep -q -- "$pattern" || fail "$*: message '$out' lacks '$pattern'"
	[ "$(echo "$out" | wc -l)" -eq 1 ] || fail "$*: message is not one line: $out"
	echo "refused as expected: $out"
}
expect_error "nbd kernel module not loaded: run modprobe nbd" "$URBD" attach --device /dev/nbd0 --nbd unix:/run/none.sock
load_modules
step "modules loaded"

truncate -s 512M /tmp/disk.img
start_serve /tmp/disk.img unix:/run/r0.sock "$OUT/serve.log"
start_attach nbd0 "$OUT/attach.log" --nbd unix:/run/r0.sock --timeout 30s
step "attached: $(cat /sys/block/nbd0/size) sectors"
expect_error "already attached" "$URBD" attach --device /dev/nbd0 --nbd unix:/run/r0.sock
expect_error "dial unix:/run/none.sock" "$URBD" attach --device /dev/nbd1 --nbd unix:/run/none.sock --timeout 2s
expect_error "not attached" "$URBD" detach --device /dev/nbd1
grep -q . /sys/block/nbd0/queue/write_cache && step "write cache: $(cat /sys/block/nbd0/queue/write_cache) fua: $(cat /sys/block/nbd0/queue/fua) discard_max: $(cat /sys/block/nbd0/queue/discard_max_bytes)"
[ "$(cat /sys/block/nbd0/queue/write_cache)" = "write back" ] || fail "kernel does not send FLUSH"
[ "$(cat /sys/block/nbd0/queue/fua)" = "1" ] || fail "kernel does not send FUA"
[ "$(cat /sys/block/nbd0/queue/discard_max_bytes)" -gt 0 ] || fail "kernel does not send TRIM"

lvm_ pvcreate -q /dev/nbd0
lvm_ vgcreate -q -An vg0 /dev/nbd0
lvm_ lvcreate -q -An -Zn -L 256M -n lv0 vg0
lvm_ vgmknodes -q vg0
step "LVM volume created"
mkfs.ext4 -q /dev/vg0/lv0
step "mkfs.ext4 done"
mkdir -p /tmp/m
mount -t ext4 /dev/vg0/lv0 /tmp/m
for i in 1 2 3 4; do
	dd if=/dev/urandom of=/tmp/m/f$i bs=1M count=8 status=none
done
mkdir /tmp/m/dir && echo "urbd kernel tier" > /tmp/m/dir/hello
(cd /tmp/m && md5sum f1 f2 f3 f4 dir/hello) > /tmp/sums
sync
fstrim -v /tmp/m || true
umount /tmp/m
lvm_ vgchange -q -an vg0
step "files written, volume deactivated"
detach nbd0
step "detached"

start_attach nbd0 "$OUT/attach.log" --nbd unix:/run/r0.sock --timeout 30s
lvm_ pvscan -q >/dev/null
lvm_ vgchange -q -ay vg0
lvm_ vgmknodes -q vg0
e2fsck -fn /dev/vg0/lv0 || fail "e2fsck found problems"
step "e2fsck clean"
mount -t ext4 -o ro /dev/vg0/lv0 /tmp/m
(cd /tmp/m && md5sum -c /tmp/sums) || fail "files differ after re-attach"
umount /tmp/m
lvm_ vgchange -q -an vg0
stop_attach nbd0
step "attach stopped by SIGTERM"
no_io_errors
kill "$SERVE_PID"
wait "$SERVE_PID" || fail "urbd serve exited $? on SIGTERM"
step "PASS"
