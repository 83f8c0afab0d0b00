# Scenario: two urbd nodes on loopback, LVM and ext4 on the primary's export
# through /dev/nbd0; the primary is killed with -9 while mounted, the
# secondary is promoted and the attach supervisor fails over to it (second
# --nbd) with all four of its connections; writes during the outage
# complete; afterwards the volume is
# checked with e2fsck and every file is intact.
. "$OUT/lib.sh"
load_modules

truncate -s 512M /tmp/a.img /tmp/b.img
up_node a /tmp/a.img 7788 7789
up_node b /tmp/b.img 7789 7788
wait_for status_has a "cs:Connected"
wait_for status_has b "ds:UpToDate/UpToDate"
step "nodes connected: $("$URBD" --run-dir /run/urbd-a status r0 | sed -n 2p)"
# A Secondary refuses the attach with its own message.
attach_refused nbd0 b "Secondary"
"$URBD" --run-dir /run/urbd-a primary r0
wait_for status_has b "ro:Secondary/Primary"
start_attach nbd0 "$OUT/attach.log" --nbd unix:/run/a.sock --nbd unix:/run/b.sock --timeout 60s --connections 4
step "attached to node a"

lvm_ pvcreate -q /dev/nbd0
lvm_ vgcreate -q -An vg0 /dev/nbd0
lvm_ lvcreate -q -An -Zn -L 256M -n lv0 vg0
lvm_ vgmknodes -q vg0
mkfs.ext4 -q /dev/vg0/lv0
mkdir -p /tmp/m
mount -t ext4 /dev/vg0/lv0 /tmp/m
for i in 1 2 3; do
	dd if=/dev/urandom of=/tmp/m/f$i bs=1M count=8 status=none
done
echo "written on node a" > /tmp/m/hello
sync
step "LVM + ext4 written and synced through node a"

kill -9 "$PID_a"
step "node a killed (-9)"
(dd if=/dev/urandom of=/tmp/m/during bs=1M count=4 status=none conv=fsync && sync) &
writer=$!
wait_for status_has b "cs:\(WFConnection\|StandAlone\)"
# The survivor's disk is UpToDate and its peer is gone: no --force needed.
"$URBD" --run-dir /run/urbd-b primary r0 || fail "promotion of the UpToDate survivor refused"

step "node b promoted: $("$URBD" --run-dir /run/urbd-b status r0 | sed -n 2p)"
rc=0
wait "$writer" || rc=$?
[ "$rc" -eq 0 ] || fail "write during the failover failed: $rc"
step "write during the failover completed"
grep -q reconnected "$OUT/attach.log" || fail "attach did not fail over"
(cd /tmp/m && md5sum f1 f2 f3 hello during) > /tmp/sums
umount /tmp/m
lvm_ vgchange -q -an vg0
detach nbd0
no_io_errors
step "detached from node b"

start_attach nbd0 "$OUT/attach.log" --nbd unix:/run/b.sock --timeout 30s
lvm_ pvscan -q >/dev/null
lvm_ vgchange -q -ay vg0
lvm_ vgmknodes -q vg0
e2fsck -fn /dev/vg0/lv0 || fail "e2fsck found problems after failover"
mount -t ext4 /dev/vg0/lv0 /tmp/m
(cd /tmp/m && md5sum -c /tmp/sums) || fail "files differ after failover"
umount /tmp/m
lvm_ vgchange -q -an vg0
detach nbd0
kill "$PID_b"
wait "$PID_b" || true
step "PASS"
