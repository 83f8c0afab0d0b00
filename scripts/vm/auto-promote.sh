# Scenario: two urbd nodes with --auto-promote yes on loopback, neither
# promoted by hand. /dev/nbd0 attached to node b (four connections)
# promotes b; /dev/nbd1 attached to node a meanwhile is refused with the
# reason; ext4 written through b, unmounted and detached demotes b; the
# same device attached to a at once promotes a once b has demoted, e2fsck
# -fn is clean and every file is intact; detached, a is Secondary again. No
# urbd primary or secondary.
. "$OUT/lib.sh"
load_modules

truncate -s 256M /tmp/a.img /tmp/b.img
up_node a /tmp/a.img 7788 7789 --auto-promote yes
up_node b /tmp/b.img 7789 7788 --auto-promote yes
wait_for status_has a "ro:Secondary/Secondary ds:UpToDate/UpToDate"
step "nodes connected, both Secondary: $("$URBD" --run-dir /run/urbd-a status r0 | sed -n 2p)"

start_attach nbd0 "$OUT/attach.log" --nbd unix:/run/b.sock --timeout 30s --connections 4
status_has b "ro:Primary/Secondary" || fail "b not Primary with /dev/nbd0 attached: $("$URBD" --run-dir /run/urbd-b status r0)"
wait_for status_has a "ro:Secondary/Primary"
step "attached to node b: promoted automatically: $("$URBD" --run-dir /run/urbd-b status r0 | sed -n 2p)"

attach_refused nbd1 a "auto-promote cannot promote it: peer is Primary"

mkfs.ext4 -q -b 4096 /dev/nbd0
mkdir -p /tmp/m
mount -t ext4 /dev/nbd0 /tmp/m
for i in 1 2 3; do
	dd if=/dev/urandom of=/tmp/m/f$i bs=1M count=8 status=none
done
echo "written through node b" > /tmp/m/hello
(cd /tmp/m && md5sum f1 f2 f3 hello) > /tmp/sums
umount /tmp/m
detach nbd0
# The switchover goes on at once: a's promotion waits for b's demotion.
start_attach nbd0 "$OUT/attach.log" --nbd unix:/run/a.sock --timeout 30s
status_has a "ro:Primary/Secondary" || fail "a not Primary with /dev/nbd0 attached"
grep -q "demoted automatically: the last NBD client left" "$OUT/node-b.log" ||
	fail "b's log does not say why it was demoted"
step "unmounted and detached from b, attached to a at once: b demoted automatically, a promoted"
e2fsck -fn /dev/nbd0 || fail "e2fsck found problems on node a"
mount -t ext4 /dev/nbd0 /tmp/m
(cd /tmp/m && md5sum -c /tmp/sums) || fail "files differ on node a"
umount /tmp/m
detach nbd0
wait_for status_has a "ro:Secondary/Secondary"
no_io_errors
step "detached from node a: a demoted automatically"
kill "$PID_a" "$PID_b"
wait "$PID_a" || true
wait "$PID_b" || true
step "PASS"
