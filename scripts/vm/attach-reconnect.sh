# Scenario: restart urbd serve under a mounted ext4 (kill -9, start again
# within the attach timeout) while direct writes are in flight: they are
# resent after the kernel's request timeout, writes issued during the
# outage wait for the reconnect, nothing fails and no I/O error is logged.
# Two TCP connections: both die and both are replaced.
. "$OUT/lib.sh"
load_modules
truncate -s 256M /tmp/disk.img
start_serve /tmp/disk.img tcp:127.0.0.1:10809 "$OUT/serve.log"
start_attach nbd0 "$OUT/attach.log" --nbd tcp:127.0.0.1:10809 --timeout 30s --connections 2
mkfs.ext4 -q /dev/nbd0
mkdir -p /tmp/m
mount -t ext4 /dev/nbd0 /tmp/m
dd if=/dev/urandom of=/tmp/m/before bs=1M count=4 status=none
sync
step "mounted and written"

# Direct writes in flight when the server dies.
dd if=/dev/urandom of=/tmp/src bs=1M count=32 status=none
dd if=/tmp/src of=/tmp/m/inflight bs=1M oflag=direct status=none &
inflight=$!
sleep 0.3
kill -9 "$SERVE_PID"
wait "$SERVE_PID" 2>/dev/null || true
step "server killed"
# A write and sync while the server is away: it must wait, not fail.
(dd if=/dev/urandom of=/tmp/m/during bs=1M count=4 status=none conv=fsync && sync) &
writer=$!
sleep 3
start_serve /tmp/disk.img tcp:127.0.0.1:10809 "$OUT/serve.log"
step "server restarted"
rc=0
wait "$writer" || rc=$?
[ "$rc" -eq 0 ] || fail "write during the outage failed: $rc"
step "write during the outage completed"
rc=0
wait "$inflight" || rc=$?
[ "$rc" -eq 0 ] || fail "direct write in flight at the crash failed: $rc"
cmp /tmp/src /tmp/m/inflight || fail "data written across the restart differs"
step "direct writes in flight at the crash completed"
dd if=/dev/urandom of=/tmp/m/after bs=1M count=4 status=none conv=fsync || fail "write after restart failed"
sync
(cd /tmp/m && md5sum before during after inflight) > /tmp/sums
echo 3 > /proc/sys/vm/drop_caches
(cd /tmp/m && md5sum -c /tmp/sums) || fail "files differ"
umount /tmp/m
e2fsck -fn /dev/nbd0 || fail "e2fsck found problems"
grep -q "reconnected" "$OUT/attach.log" || fail "attach log does not show a reconnect"
detach nbd0
no_io_errors
step "PASS"
