#!/usr/bin/env bash
# demo.sh: a guided tour of urbd with two nodes on this machine.
#
# Two `urbd up` daemons, alpha and beta, replicate resource r0 over loopback,
# each with a sparse 256 MiB disk file in a temporary directory. The tour puts
# ext4 on alpha's NBD export (nbdfuse + a loop device, so no kernel NBD client
# is needed), cuts the link, writes more, reconnects and shows the bitmap
# resync, fails over to beta, checks the filesystem there, finds and repairs
# a block rotted behind urbd's back (urbd verify), replaces alpha's disk
# online (detach-disk, attach-disk) and ends by comparing both disks byte for
# byte.
#
# Needs root (loop devices, mount, FUSE) and the packages of
# scripts/install-deps.sh. `make demo` installs them and builds bin/urbd first.
#
# Environment:
#   URBD                       the urbd binary (default: bin/urbd of this tree,
#                              else urbd on PATH)
#   URBD_DEMO_NONINTERACTIVE=1 no pauses between steps (also when stdin is not
#                              a terminal); the script checks its own end state
#                              and exits non-zero if anything is wrong
#   URBD_DEMO_SIZE             disk size (default 256M)
#
# The last line is "urbd demo: OK" on success, "urbd demo: FAILED: ..." on
# failure. Ctrl-C at any point unmounts, detaches and stops everything it
# started and removes the temporary directory.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${URBD:-}" ]; then
	if [ -x "$ROOT/bin/urbd" ]; then
		URBD=$ROOT/bin/urbd
	else
		URBD=$(command -v urbd || true)
	fi
fi
SIZE=${URBD_DEMO_SIZE:-256M}
RES=r0

INTERACTIVE=1
if [ "${URBD_DEMO_NONINTERACTIVE:-0}" = 1 ] || [ ! -t 0 ]; then
	INTERACTIVE=0
fi
if [ -t 1 ]; then
	BOLD=$'\e[1m' DIM=$'\e[2m' RED=$'\e[1;31m' GREEN=$'\e[1;32m' RESET=$'\e[0m'
else
	BOLD='' DIM='' RED='' GREEN='' RESET=''
fi

fail() {
	printf '%s\n' "${RED}urbd demo: FAILED: $*${RESET}" >&2
	exit 1
}

if [ "$(id -u)" -ne 0 ]; then
	fail "needs root (loop devices, mount and FUSE): run sudo make demo, or sudo $0"
fi
[ -n "$URBD" ] && [ -x "$URBD" ] || fail "no urbd binary: run make build, or set URBD=/path/to/urbd"
NEEDED=(nbdfuse losetup fusermount3 mkfs.ext4 e2fsck mount umount mountpoint cmp sha256sum numfmt)
for c in "${NEEDED[@]}"; do
	if ! command -v "$c" >/dev/null && [ -x "$ROOT/scripts/install-deps.sh" ]; then
		echo "urbd demo: $c is missing; running scripts/install-deps.sh"
		"$ROOT/scripts/install-deps.sh" || fail "installing the packages failed"
		break
	fi
done
for c in "${NEEDED[@]}"; do
	command -v "$c" >/dev/null || fail "$c is not installed: run scripts/install-deps.sh (or make demo)"
done

TMP=$(mktemp -d /tmp/urbd-demo.XXXXXX)
MNT=$TMP/mnt
DAEMON_PIDS=()
FUSE_PIDS=()
LOOPS=()
FUSE_DIRS=()
START=$SECONDS

# cleanup undoes everything in reverse order; it runs on every exit,
# including Ctrl-C, and never fails.
cleanup() {
	local rc=$? p l d
	trap - EXIT INT TERM ERR
	set +e
	if mountpoint -q "$MNT" 2>/dev/null; then
		umount "$MNT" 2>/dev/null || umount -l "$MNT"
	fi
	for l in "${LOOPS[@]}"; do
		losetup -d "$l" 2>/dev/null
	done
	for d in "${FUSE_DIRS[@]}"; do
		for _ in $(seq 30); do
			fusermount3 -u "$d" 2>/dev/null && break
			sleep 0.1
		done
		mountpoint -q "$d" 2>/dev/null && fusermount3 -uz "$d" 2>/dev/null
	done
	for p in "${FUSE_PIDS[@]}"; do
		kill "$p" 2>/dev/null
		wait "$p" 2>/dev/null
	done
	for p in "${DAEMON_PIDS[@]}"; do
		kill "$p" 2>/dev/null # SIGTERM: the daemon flushes and exits
	done
	for p in "${DAEMON_PIDS[@]}"; do
		for _ in $(seq 100); do
			kill -0 "$p" 2>/dev/null || break
			sleep 0.1
		done
		kill -9 "$p" 2>/dev/null
		wait "$p" 2>/dev/null
	done
	if [ "$rc" -ne 0 ] && [ "$rc" -ne 130 ]; then
		for n in alpha beta; do
			if [ -s "$TMP/$n/urbd.log" ]; then
				printf '%s\n' "--- last lines of $n's log ---" >&2
				tail -n 15 "$TMP/$n/urbd.log" >&2
			fi
		done
	fi
	rm -rf "$TMP"
	exit "$rc"
}
trap cleanup EXIT
trap 'echo; echo "urbd demo: interrupted, cleaning up" >&2; exit 130' INT TERM
trap 'fail "line $LINENO: $BASH_COMMAND"' ERR

# step TEXT: explain what comes next in one line; wait for Enter when
# interactive.
step() {
	printf '\n%s\n' "${BOLD}==> $*${RESET}"
	if [ "$INTERACTIVE" = 1 ]; then
		read -r -p "${DIM}    [Enter] to run${RESET}" _ || true
	fi
}

# show CMD...: print a command, then run it.
show() {
	printf '%s\n' "${DIM}\$ $*${RESET}"
	"$@"
}

# on NODE ARGS...: urbd with NODE's run directory (each node has its own, so
# two nodes live side by side on one machine).
on() {
	local n=$1
	shift
	"$URBD" --run-dir "$TMP/$n/run" "$@"
}

# u NODE ARGS...: print, then run, an urbd command on NODE.
u() {
	local n=$1
	shift
	printf '%s\n' "${DIM}[$n]\$ urbd $*${RESET}"
	on "$n" "$@"
}

# field NODE KEY: one field of `urbd status --json`, e.g. cstate, dstate, oos.
field() {
	{ on "$1" status --json "$RES" 2>/dev/null || true; } |
		sed -n "s/^ *\"$2\": \"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}\$/\1/p" | head -n 1 || true
}

# wait_for NODE SECONDS DESCRIPTION TEST...: poll until TEST succeeds.
wait_for() {
	local n=$1 secs=$2 what=$3 i
	shift 3
	for ((i = 0; i < secs * 10; i++)); do
		if "$@"; then
			return 0
		fi
		sleep 0.1
	done
	on "$n" status "$RES" >&2 || true
	fail "$n: no $what after ${secs}s"
}

connected() { [ "$(field "$1" cstate)" = Connected ]; }
in_sync() {
	[ "$(field "$1" cstate)" = Connected ] && [ "$(field "$1" dstate)" = UpToDate ] &&
		[ "$(field "$1" peer_dstate)" = UpToDate ] && [ "$(field "$1" oos)" = 0 ]
}
syncing() { [ "$(field "$1" cstate)" = SyncSource ]; }
peer_lost() { [ "$(field "$1" cstate)" = WFConnection ]; }
no_clients() { [ "$(field "$1" nbd_clients)" = 0 ]; }
verified() { [ -n "$(field "$1" ended)" ]; } # a verify ended (last_verify.ended)

# free_port: a TCP port on 127.0.0.1 nothing listens on now, below Linux's
# ephemeral range (32768-60999), which outgoing connections draw their source
# ports from: one of those could take the port before the daemon binds it.
free_port() {
	local p
	while :; do
		p=$((20000 + RANDOM % 12768))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return
		fi
	done
}

# start_node NAME LISTEN PEER: `urbd up` in the background, logging to
# TMP/NAME/urbd.log.
start_node() {
	local n=$1 listen=$2 peer=$3
	mkdir -p "$TMP/$n"
	truncate -s "$SIZE" "$TMP/$n/disk.img"
	printf '%s\n' "${DIM}[$n]\$ urbd --run-dir $TMP/$n/run up --disk $TMP/$n/disk.img --meta $TMP/$n/meta --nbd unix:$TMP/$n/nbd.sock --listen-peer $listen --peer $peer --timeout 2s --assume-clean $RES &${RESET}"
	"$URBD" --run-dir "$TMP/$n/run" up --disk "$TMP/$n/disk.img" --meta "$TMP/$n/meta" \
		--nbd "unix:$TMP/$n/nbd.sock" --listen-peer "$listen" --peer "$peer" \
		--timeout 2s --assume-clean "$RES" >"$TMP/$n/urbd.log" 2>&1 &
	DAEMON_PIDS+=($!)
}

# attach NODE: expose NODE's export as a block device (nbdfuse + losetup) and
# set LOOP to it.
attach() {
	local n=$1 dir=$TMP/$1/fuse size i
	mkdir -p "$dir"
	printf '%s\n' "${DIM}\$ nbdfuse $dir --unix $TMP/$n/nbd.sock &${RESET}"
	nbdfuse "$dir" --unix "$TMP/$n/nbd.sock" &
	FUSE_PIDS+=($!)
	FUSE_DIRS+=("$dir")
	size=$(numfmt --from=iec "$SIZE")
	for ((i = 0; i < 200; i++)); do
		[ "$(stat -c %s "$dir/nbd" 2>/dev/null || echo 0)" = "$size" ] && break
		sleep 0.1
	done
	[ "$(stat -c %s "$dir/nbd" 2>/dev/null || echo 0)" = "$size" ] || fail "nbdfuse did not expose $n's export"
	printf '%s\n' "${DIM}\$ losetup -f --show $dir/nbd${RESET}"
	LOOP=$(losetup -f --show "$dir/nbd")
	LOOPS+=("$LOOP")
	echo "$LOOP"
}

# detach: undo attach for the last attached node.
detach() {
	local dir=${FUSE_DIRS[-1]} pid=${FUSE_PIDS[-1]} i
	show losetup -d "$LOOP"
	LOOPS=("${LOOPS[@]/$LOOP/}")
	# The kernel lets go of a detached loop device's file a moment later:
	# until then the FUSE mount is busy.
	printf '%s\n' "${DIM}\$ fusermount3 -u $dir${RESET}"
	for ((i = 0; i < 100; i++)); do
		fusermount3 -u "$dir" 2>/dev/null && break
		sleep 0.1
	done
	[ "$i" -lt 100 ] || fusermount3 -u "$dir"
	wait "$pid" 2>/dev/null || true
	unset 'FUSE_DIRS[-1]' 'FUSE_PIDS[-1]'
}

# write_files DIR PREFIX COUNT MIB: COUNT files of MIB MiB of random data.
write_files() {
	local d=$1 prefix=$2 count=$3 mib=$4 i
	printf '%s\n' "${DIM}\$ for i in \$(seq $count); do head -c ${mib}M /dev/urandom > $d/$prefix-\$i.bin; done${RESET}"
	mkdir -p "$d"
	for ((i = 1; i <= count; i++)); do
		head -c "$((mib << 20))" /dev/urandom >"$d/$prefix-$i.bin"
	done
}

cat <<EOF
${BOLD}urbd demo${RESET}: two nodes, alpha and beta, replicate resource $RES on this machine.
Each has a sparse $SIZE disk file in $TMP and its own run directory (--run-dir),
and they talk over 127.0.0.1. Every write to alpha's export lands on both disks
before it is acknowledged (protocol C). Commands shown as "[alpha]$ urbd ..."
run with alpha's --run-dir, which is how they find alpha's daemon.
EOF

PA=$(free_port)
PB=$(free_port)
while [ "$PB" = "$PA" ]; do PB=$(free_port); done

step "Start both daemons. The disks are new and both all zeros, so --assume-clean skips the initial sync."
start_node alpha "127.0.0.1:$PA" "127.0.0.1:$PB"
start_node beta "127.0.0.1:$PB" "127.0.0.1:$PA"

step "Wait until they find each other: cs:Connected, ds:UpToDate/UpToDate, both Secondary."
wait_for alpha 30 "connection" in_sync alpha
u alpha status "$RES"

step "Promote alpha: only a Primary serves NBD clients."
u alpha primary "$RES"

step "Attach alpha's export as a block device (nbdfuse + a loop device) and put ext4 on it."
attach alpha
show mkfs.ext4 -q -F "$LOOP"
mkdir -p "$MNT"
show mount "$LOOP" "$MNT"

step "Write 20 files (1 MiB each) with checksums; each write is on both disks before it returns."
write_files "$MNT/before" file 20 1
(cd "$MNT" && find . -name '*.bin' -print0 | sort -z | xargs -0 sha256sum >"$TMP/before.sha256")
show sync
u alpha status "$RES"

step "Cut the link: urbd disconnect on alpha. Alpha goes StandAlone and keeps serving; beta waits (WFConnection), its disk Outdated: it misses what alpha writes now."
u alpha disconnect "$RES"
wait_for beta 20 "peer loss" peer_lost beta
u beta status "$RES"

step "Write 48 MiB more on alpha while beta is away; alpha records the changed regions in its bitmap (oos)."
write_files "$MNT/during" cut 12 4
(cd "$MNT" && find . -name '*.bin' -print0 | sort -z | xargs -0 sha256sum >"$TMP/all.sha256")
show sync
u alpha status "$RES"
oos=$(field alpha oos)
[ "${oos:-0}" -gt 0 ] || fail "no out-of-sync data recorded while disconnected"

step "Throttle the resync to 20 MiB/s (so the progress bar is visible) and reconnect: only the ${oos} KiB out of sync are copied."
u alpha adjust --resync-rate 20MiB "$RES"
u alpha connect "$RES"
wait_for alpha 20 "resync start" eval 'syncing alpha || in_sync alpha'
for ((i = 0; i < 4; i++)); do
	syncing alpha || break
	u alpha status "$RES"
	sleep 1
done

step "Lift the limit again (0 = unlimited) and wait until both disks are UpToDate."
u alpha adjust --resync-rate 0 "$RES"
wait_for alpha 60 "resync end" in_sync alpha
u alpha status "$RES"

step "Fail over, planned: unmount, detach the loop device and nbdfuse, demote alpha."
show umount "$MNT"
detach
wait_for alpha 20 "NBD client gone" no_clients alpha
u alpha secondary "$RES"

step "Promote beta; it was in sync, so no --force is needed."
u beta primary "$RES"

step "Attach beta's export, check the filesystem read-only (e2fsck -fn) and mount it."
attach beta
show e2fsck -fn "$LOOP"
show mount "$LOOP" "$MNT"

step "The files written before and during the outage are all there, checksums intact."
show ls "$MNT"
show du -sh "$MNT/before" "$MNT/during"
(cd "$MNT" && sha256sum --quiet -c "$TMP/all.sha256") || fail "checksums differ on beta"
echo "all $(wc -l <"$TMP/all.sha256") checksums match"

step "Write a file on beta: it is mirrored back to alpha, now the Secondary."
write_files "$MNT/after" back 1 1
show sync
u beta status "$RES"

step "Bit rot: overwrite the last 4 KiB of alpha's disk file behind urbd's back. urbd verify on beta compares every block with alpha's by SHA-256, in the background, and resyncs the blocks that differ (scripts/urbd-verify@.timer runs it monthly)."
blocks=$(($(stat -c %s "$TMP/alpha/disk.img") / 4096))
show dd if=/dev/urandom of="$TMP/alpha/disk.img" bs=4096 seek=$((blocks - 1)) count=1 conv=notrunc,fsync status=none
u beta verify "$RES"
wait_for beta 60 "verify end" verified beta
wait_for beta 30 "resync of the rotted block" in_sync beta
u beta status "$RES"
found=$(field beta differing_blocks)
echo "the verify found ${found:-no} differing block; the resync copied beta's back to alpha"
[ "$found" = 1 ] || fail "the verify found ${found:-no} differing blocks, want 1"

step "Replace alpha's disk while beta serves: detach-disk takes it out and closes it, an empty file takes its place, attach-disk resyncs all of it from beta."
u alpha detach-disk "$RES"
show rm "$TMP/alpha/disk.img"
show truncate -s "$SIZE" "$TMP/alpha/disk.img"
u alpha attach-disk "$RES"
wait_for alpha 120 "resync of the new disk" in_sync alpha
u alpha status "$RES"

step "Unmount, detach, and compare the two disk files byte for byte."
show umount "$MNT"
detach
wait_for beta 30 "in sync" in_sync beta
show cmp "$TMP/alpha/disk.img" "$TMP/beta/disk.img"
echo "the disks are identical"

# The end state this tour promises; non-zero exit if any of it is off.
[ "$(field beta role)" = Primary ] || fail "beta is $(field beta role), want Primary"
[ "$(field alpha role)" = Secondary ] || fail "alpha is $(field alpha role), want Secondary"
in_sync alpha || fail "alpha is not Connected with both disks UpToDate"
[ "$(field alpha split_brain)" = false ] || fail "split brain reported"

printf '\n%s\n' "Took $((SECONDS - START)) s. Cleaning up: daemons stopped, $TMP removed."
printf '%s\n' "${GREEN}urbd demo: OK${RESET}"
