# Scenario: the Secondary's disk is a thin volume (dm-thin), which reads as
# zeroes where nothing was written and cannot zero a range without
# provisioning it. The Primary's 128 MiB disk holds 16 MiB of data; urbd
# invalidate on the Secondary resyncs all of it. The peer's zeroes must not
# provision the thin volume: afterwards its pool holds about the 16 MiB of
# data, not 128 MiB. Nor does a client's WRITE_ZEROES of 16 MiB more, which
# the Secondary applies too. The two disks end identical.
. "$OUT/lib.sh"
load_modules
modprobe dm-thin-pool

# A pool of 256 MiB in 64 KiB blocks (128 sectors) over two loop devices,
# and a thin volume of 128 MiB in it, made with dmsetup alone.
truncate -s 8M /tmp/pool-meta.img
truncate -s 256M /tmp/pool-data.img
truncate -s 128M /tmp/a.img
META=$(losetup -f --show /tmp/pool-meta.img)
DATA=$(losetup -f --show /tmp/pool-data.img)
dmsetup create --noudevsync pool --table "0 $(blockdev --getsz "$DATA") thin-pool $META $DATA 128 0"
dmsetup mknodes pool # no udev here
dmsetup message pool 0 "create_thin 0"
dmsetup create --noudevsync bthin --table "0 262144 thin /dev/mapper/pool 0"
dmsetup mknodes bthin
# used_blocks: the pool's provisioned 64 KiB data blocks.
used_blocks() { dmsetup status pool | awk '{ split($6, u, "/"); print u[1] }'; }
step "a thin volume of 128 MiB, $(used_blocks) of its pool's 64 KiB blocks provisioned"

up_node a /tmp/a.img 7788 7789
up_node b /dev/mapper/bthin 7789 7788
wait_for status_has b "ds:UpToDate/UpToDate"
"$URBD" --run-dir /run/urbd-a primary r0
wait_for status_has b "ro:Secondary/Primary"
start_attach nbd0 "$OUT/attach.log" --nbd unix:/run/a.sock
dd if=/dev/urandom of=/dev/nbd0 bs=1M seek=40 count=16 oflag=direct conv=fsync status=none
step "16 MiB written through the Primary: $(used_blocks) blocks provisioned"

"$URBD" --run-dir /run/urbd-b invalidate r0 || fail "urbd invalidate failed"
# The daemon says when it is done (the status it writes may lag a moment).
"$URBD" --run-dir /run/urbd-b wait-sync --timeout 60s r0 || fail "the resync did not finish"
used=$(used_blocks)
step "after the full resync of 128 MiB: $used blocks provisioned"
# 16 MiB is 256 blocks; a resync that wrote its zeroes provisions all 2048.
[ "$used" -le 320 ] || fail "the resync provisioned $used of the thin volume's 2048 blocks: its zeroes were written"

# A client's WRITE_ZEROES that may unmap (qemu-io's write -z -u; the
# kernel's nbd client sends none) of 16 MiB that neither disk holds
# provisions nothing on the Secondary's thin volume either.
qemu-io -f raw -c "write -z -u $((80 << 20)) $((16 << 20))" "nbd+unix:///?socket=/run/a.sock" >/dev/null ||
	fail "qemu-io write -z -u failed"
used=$(used_blocks)
step "after a WRITE_ZEROES of 16 MiB through the Primary: $used blocks provisioned"
[ "$used" -le 320 ] || fail "a WRITE_ZEROES provisioned the Secondary's thin volume: $used blocks"

detach nbd0
"$URBD" --run-dir /run/urbd-a secondary r0
kill "$PID_a" "$PID_b"
wait "$PID_a" "$PID_b" || true
cmp /tmp/a.img /dev/mapper/bthin || fail "the thin volume differs from the Primary's disk"
dmsetup remove bthin
dmsetup remove pool
losetup -d "$META" "$DATA"
step "PASS"
