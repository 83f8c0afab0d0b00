# Shared helpers of the guest scenarios, sourced by them inside the VM.
# Environment from init: OUT (the results share, also holding the urbd
# binary and these scripts) and URBD (the binary).
set -eu

T0=$(date +%s.%N)
# step NAME: log a step with the seconds since the scenario started.
step() { awk -v t0="$T0" -v now="$(date +%s.%N)" -v msg="$*" 'BEGIN { printf "[%6.1fs] %s\n", now - t0, msg }'; }
fail() { echo "FAIL: $*"; exit 1; }

# lvm runs LVM without udev and without writing to the read-only /etc.
LVMCONF='devices { obtain_device_list_from_udev = 0 use_devicesfile = 0 filter = [ "a|^/dev/nbd0$|", "r|.*|" ] } activation { udev_sync = 0 udev_rules = 0 verify_udev_operations = 1 monitoring = 0 } backup { backup = 0 archive = 0 }'
lvm_() { lvm "$@" --config "$LVMCONF"; }

load_modules() {
	modprobe nbd nbds_max=4
	modprobe dm-mod
	modprobe loop
	modprobe ext4
}

# wait_for COND_CMD...: retry a command for up to 30 s.
wait_for() {
	i=0
	until "$@" 2>/dev/null; do
		i=$((i + 1))
		[ $i -lt 300 ] || fail "timed out waiting for: $*"
		sleep 0.1
	done
}

# up_node NODE DISK PORT PEERPORT [FLAGS...]: start urbd up for node a or b
# of r0 on DISK, the peers on 127.0.0.1, with FLAGS; sets PID_<node>.
up_node() {
	node=$1 disk=$2 port=$3 peerport=$4
	shift 4
	"$URBD" --run-dir "/run/urbd-$node" up --disk "$disk" --meta "/tmp/meta-$node" \
		--nbd "unix:/run/$node.sock" --listen-peer "127.0.0.1:$port" --peer "127.0.0.1:$peerport" \
		--timeout 2s --assume-clean "$@" r0 >> "$OUT/node-$node.log" 2>&1 &
	eval "PID_$node=$!"
}

# status_has NODE PATTERN: the node's status of r0 matches PATTERN.
status_has() { "$URBD" --run-dir "/run/urbd-$1" status r0 | grep -q "$2"; }

# ext4_on_primary: promote node a, attach /dev/nbd0 to its export (with its
# run dir, where urbd resize looks for attach processes; ATTACH_PID) and
# mount a new ext4 on it at /tmp/m.
ext4_on_primary() {
	wait_for status_has b "ds:UpToDate/UpToDate"
	"$URBD" --run-dir /run/urbd-a primary r0
	wait_for status_has b "ro:Secondary/Primary"
	"$URBD" --run-dir /run/urbd-a attach --device /dev/nbd0 --nbd unix:/run/a.sock --timeout 30s >> "$OUT/attach.log" 2>&1 &
	ATTACH_PID=$!
	wait_for device_ready nbd0
	mkfs.ext4 -q -b 4096 /dev/nbd0
	mkdir -p /tmp/m
	mount -t ext4 /dev/nbd0 /tmp/m
}

device_ready() { [ "$(cat /sys/block/$1/size)" -gt 0 ]; }
device_gone() { [ "$(cat /sys/block/$1/size)" -eq 0 ]; }
proc_gone() { ! kill -0 "$1"; }

# start_serve DISK ADDR LOG: run urbd serve in the background on ADDR
# (unix:PATH or tcp:HOST:PORT) and wait until it answers; SERVE_PID.
start_serve() {
	"$URBD" serve --disk "$1" --listen "$2" >> "$3" 2>&1 &
	SERVE_PID=$!
	case "$2" in
	unix:*) wait_for nbdinfo --size "nbd+unix:///?socket=${2#unix:}" ;;
	tcp:*) wait_for nbdinfo --size "nbd://${2#tcp:}" ;;
	esac
}

# start_attach DEV LOG ARGS...: run urbd attach in the background; ATTACH_PID.
start_attach() {
	dev=$1 log=$2
	shift 2
	"$URBD" attach --device "/dev/$dev" "$@" >> "$log" 2>&1 &
	ATTACH_PID=$!
	wait_for device_ready "$dev"
}

# attach_refused DEV NODE PATTERN: urbd attach of DEV to NODE's export must
# fail with a message matching PATTERN.
attach_refused() {
	if out=$("$URBD" attach --device "/dev/$1" --nbd "unix:/run/$2.sock" --timeout 5s 2>&1); then
		fail "attach of /dev/$1 to node $2 succeeded"
	fi
	echo "$out" | grep -q "$3" || fail "refusal does not say \"$3\": $out"
	echo "refused as expected: $out"
}

# detach DEV: urbd detach, then check the attach process exited 0.
detach() {
	"$URBD" detach --device "/dev/$1" || fail "urbd detach failed"
	rc=0
	wait "$ATTACH_PID" || rc=$?
	[ "$rc" -eq 0 ] || fail "urbd attach exited $rc after detach"
	wait_for device_gone "$1"
}

# stop_attach DEV: SIGTERM the attach process: it must disconnect the
# device and exit 0.
stop_attach() {
	kill -TERM "$ATTACH_PID"
	rc=0
	wait "$ATTACH_PID" || rc=$?
	[ "$rc" -eq 0 ] || fail "urbd attach exited $rc on SIGTERM"
	wait_for device_gone "$1"
}

# no_io_errors: the kernel log has no block I/O error.
no_io_errors() {
	# "Connection timed out, retrying" is the kernel requeueing a request
	# that was in flight on a dead connection: expected, not an error.
	if dmesg | grep -Ei 'I/O error|blk_update_request|Buffer I/O|EXT4-fs (error|warning)'; then
		fail "kernel logged I/O errors"
	fi
}
