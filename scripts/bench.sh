#!/usr/bin/env bash
# bench.sh [serve|replication|resync|reads|congestion|all]
#
# Benchmarks urbd with fio's nbd engine over unix sockets. Each section is a
# function named bench_<section>; shared helpers (servers, cache control,
# medians, fio parsing) come first so later sections can reuse them.
#
#   serve: `urbd serve` vs `nbdkit file` vs `qemu-nbd` on one 1 GiB file:
#          4k randwrite QD32, 4k randread QD32, 1M seqwrite QD8,
#          4k randwrite QD1 fsync=1; median of RUNS runs, ratio urbd/nbdkit.
#   replication: standalone `urbd serve` vs two `urbd up` nodes on loopback
#          with protocol C, B and A: 4k randwrite QD32, 1M seqwrite QD8,
#          4k randwrite QD1 fsync=1; ratios of the medians to standalone,
#          and each round's ratio to the standalone run just before it.
#   resync: unthrottled resync of 256 MiB vs nbdcopy of the same bytes
#          between two exports; time to resync 32 MiB changed in a 1 GiB
#          disk; a full resync of 1 GiB to a Secondary that holds all but
#          32 MiB of it, by checksum (restarted on its detached disk) vs by
#          copy (urbd invalidate); throttled accuracy at 10, 50, 200 MiB/s
#          over 10 s.
#   reads: reads through a protocol C pair's Primary with read-balancing
#          prefer-local, round-robin and prefer-remote: 4k randread QD32,
#          1M seqread QD8, 4k randread QD1; ratios to prefer-local.
#   congestion: a protocol A pair in two network namespaces over a link
#          shaped to LINK (200mbit) with on-congestion block and pull-ahead:
#          1M seqwrite QD8, 4k randwrite QD32 over CONG_SIZE (128M); ratio
#          pull-ahead/block, and the seconds until in sync after fio.
#
# Environment: URBD (binary, default bin/urbd, built if missing), RUNS (3),
# RUNTIME (seconds per fio run, 5), SIZE (1G), WORK (scratch dir), KEEP=1
# (keep WORK with the server and fio logs), CACHE (cold or warm, see
# settle_cache). GOMAXPROCS, if set, replaces urbd's default thread count
# (--cpus) in every daemon.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
URBD=${URBD:-$ROOT/bin/urbd}
RUNS=${RUNS:-3}
RUNTIME=${RUNTIME:-5}
SIZE=${SIZE:-1G}
WORK=${WORK:-$(mktemp -d /tmp/urbd-bench.XXXXXX)}
CACHE=${CACHE:-cold}
PIDS=()

log() { printf '%s\n' "$*" >&2; }
die() { log "bench: $*"; exit 1; }

cleanup() {
	local p
	declare -F cluster_down >/dev/null && cluster_down
	declare -F netns_down >/dev/null && netns_down
	for p in "${PIDS[@]}"; do
		kill "$p" 2>/dev/null || true
	done
	for p in "${PIDS[@]}"; do
		wait "$p" 2>/dev/null || true
	done
	[ "${KEEP:-0}" = 1 ] && log "bench: kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT

need() {
	local c
	for c in "$@"; do
		command -v "$c" >/dev/null || die "$c is not installed: run scripts/install-deps.sh"
	done
}

# make_disk FILE SIZE: a fully written (not sparse) file, so that writes do
# not pay for block allocation. With CACHE=warm it is written 4 KiB at a
# time, which leaves it in the page cache in 4 KiB folios, as a disk that
# takes small writes is: a file written in large pieces gets large folios
# (ext4 on Linux 6.16 and later), into which a 4 KiB write costs several
# times more, for every server alike.
make_disk() {
	local bs=1048576
	[ "$CACHE" = warm ] && bs=4096
	dd if=/dev/zero of="$1" bs="$bs" count=$(($(numfmt --from=iec "$2") / bs)) conv=fsync status=none
}

# settle_cache FILE: the page cache state every run starts from.
#   cold (default): write FILE back and evict it (POSIX_FADV_DONTNEED
#     through dd's nocache flag), so every run allocates its cache afresh.
#     On a VM that returns freed memory to its host (free page reporting),
#     the first touch of each page then costs tens of microseconds, and a
#     pair, whose two disks need twice the fresh pages, measures mostly that.
#   warm: write FILE's dirty pages back and keep them, so every run starts
#     with the whole disk clean in the page cache.
settle_cache() {
	sync "$1"
	[ "$CACHE" = warm ] || dd if="$1" iflag=nocache count=0 status=none
}

# wait_sock SOCK PID: wait until something listens on SOCK.
wait_sock() {
	local i
	for i in $(seq 200); do
		if [ -S "$1" ] && nbdinfo --size "nbd+unix:///?socket=$1" >/dev/null 2>&1; then
			return 0
		fi
		kill -0 "$2" 2>/dev/null || die "server for $1 exited"
		sleep 0.05
	done
	die "nothing listens on $1"
}

# start_server KIND FILE SOCK: start urbd|nbdkit|qemu-nbd on FILE; prints
# nothing, records the pid in PIDS and SERVER_PID.
start_server() {
	local kind=$1 file=$2 sock=$3
	rm -f "$sock"
	case $kind in
	urbd) "$URBD" serve --disk "$file" --listen "unix:$sock" 2>>"$WORK/$kind.log" & ;;
	nbdkit) nbdkit --foreground --exit-with-parent -U "$sock" file "$file" 2>>"$WORK/$kind.log" & ;;
	qemu-nbd) qemu-nbd --persistent --shared=8 --format=raw --socket="$sock" "$file" 2>>"$WORK/$kind.log" & ;;
	*) die "unknown server $kind" ;;
	esac
	SERVER_PID=$!
	PIDS+=("$SERVER_PID")
	wait_sock "$sock" "$SERVER_PID"
}

# stop_server PID: SIGTERM and wait.
stop_server() {
	kill "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}

# median: the median of the numbers on stdin, one per line (empty lines
# skipped).
median() {
	sort -g | awk 'NF {v[++n]=$1} END {if (n==0) {print "nan"; exit} if (n%2) print v[(n+1)/2]; else print (v[n/2]+v[n/2+1])/2}'
}

# run_fio SOCK METRIC ARGS...: one fio run against SOCK; prints write or read
# IOPS (METRIC wiops|riops) or MiB/s (wmibs|rmibs) from the terse output,
# then the KiB transferred. A failed run prints nothing.
run_fio() {
	local sock=$1 metric=$2
	shift 2
	local out
	if ! out=$(fio --name=bench --ioengine=nbd --uri="nbd+unix:///?socket=$sock" \
		--time_based --runtime="$RUNTIME" --ramp_time=1 --size="$SIZE" \
		--output-format=terse --terse-version=3 "$@" 2>&1); then
		log "bench: fio $* on $sock failed (run dropped):"
		printf '%s\n' "$out" | grep -v '^3;' | tail -3 >&2
		return 0
	fi
	printf '%s\n' "$out" |
		awk -F';' -v m="$metric" '
			NF > 50 {
				if (m == "riops") v = $8
				else if (m == "wiops") v = $49
				else if (m == "rmibs") v = sprintf("%.0f", $7 / 1024)
				else if (m == "wmibs") v = sprintf("%.0f", $48 / 1024)
				print v, $6 + $47
			}'
}

# run_fio_cpu "PIDS" BS SOCK METRIC ARGS...: run_fio with I/Os of BS bytes;
# prints its rate and the CPU time in microseconds per I/O that the
# processes PIDS used during fio's measured time (from the end of its 1 s
# ramp to its exit). A failed run prints nothing.
run_fio_cpu() {
	local pids=$1 bs=$2
	shift 2
	local out=$WORK/fio-cpu.out before fio_pid val kib
	run_fio "$@" >"$out" &
	fio_pid=$!
	sleep 1 # --ramp_time
	# shellcheck disable=SC2086
	before=$(pids_ticks $pids)
	wait "$fio_pid"
	[ -s "$out" ] || return 0
	read -r val kib <"$out"
	# shellcheck disable=SC2086
	echo "$val $(cpu_per_io $(($(pids_ticks $pids) - before)) "$kib" "$bs")"
}

# measure KEY "PIDS" "DISKS" BS SOCK METRIC ARGS...: one measured run:
# settles the cache of DISKS, runs fio (run_fio_cpu) and appends its rate to
# runs[KEY] and its CPU time per I/O to cpus[KEY], associative arrays of the
# caller (bash's dynamic scope); RATE holds the rate, empty after a failed
# run.
measure() {
	local key=$1 pids=$2 disks=$3 bs=$4 d out us
	shift 4
	for d in $disks; do
		settle_cache "$d"
	done
	RATE=""
	out=$(run_fio_cpu "$pids" "$bs" "$@")
	[ -n "$out" ] || return 0
	read -r RATE us <<<"$out"
	runs[$key]+="$RATE"$'\n'
	cpus[$key]+="$us"$'\n'
}

# keep_medians NAME KEY...: res["KEY|NAME"] and cpu["KEY|NAME"], arrays of
# the caller, get the medians of each KEY's runs and cpus (see measure).
keep_medians() {
	local name=$1 k
	shift
	for k in "$@"; do
		res["$k|$name"]=$(printf '%s' "${runs[$k]}" | median)
		cpu["$k|$name"]=$(printf '%s' "${cpus[$k]}" | median)
	done
}

# pids_ticks PID...: user+system CPU time of the PIDs together, in clock
# ticks (a PID that is gone counts 0).
pids_ticks() {
	local p sum=0
	for p in "$@"; do
		sum=$((sum + $(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)))
	done
	echo "$sum"
}

# cpu_per_io TICKS KIB BS: CPU microseconds per I/O of BS bytes.
cpu_per_io() {
	awk -v t="$1" -v kib="$2" -v bs="$3" -v hz="$(getconf CLK_TCK)" \
		'BEGIN { ios = kib * 1024 / bs; if (ios > 0) printf "%.1f", t / hz * 1e6 / ios; else print "nan" }'
}

# ratio A B: A/B with two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

bench_serve() {
	need fio nbdkit qemu-nbd nbdinfo numfmt
	local disk=$WORK/disk.img
	log "serve: writing a $SIZE disk in $WORK"
	make_disk "$disk" "$SIZE"
	local servers=(urbd nbdkit qemu-nbd)
	declare -A sock pid
	local s
	for s in "${servers[@]}"; do
		sock[$s]=$WORK/$s.sock
		start_server "$s" "$disk" "${sock[$s]}"
		pid[$s]=$SERVER_PID
	done

	# name|metric|unit|block size|fio args
	local tests=(
		"4k randwrite QD32|wiops|IOPS|4096|--rw=randwrite --bs=4k --iodepth=32"
		"4k randread QD32|riops|IOPS|4096|--rw=randread --bs=4k --iodepth=32"
		"1M seqwrite QD8|wmibs|MiB/s|1048576|--rw=write --bs=1M --iodepth=8"
		"4k randwrite QD1 fsync=1|wiops|IOPS|4096|--rw=randwrite --bs=4k --iodepth=1 --fsync=1"
	)
	# Besides the median rate, the table shows each server's CPU time per
	# I/O (user+system, median over runs): on a shared machine the rate
	# swings with other load, the CPU cost much less.
	printf '\n%-26s %6s %9s %9s %9s %8s   %s\n' "serve: test" unit urbd nbdkit qemu-nbd "u/nbdkit" "CPU us/IO urbd nbdkit qemu-nbd"
	local t name metric unit bs args r
	declare -A res=() cpu=()
	for t in "${tests[@]}"; do
		IFS='|' read -r name metric unit bs args <<<"$t"
		declare -A runs=() cpus=()
		# Servers take turns within each round, so drift hits all alike.
		for r in $(seq "$RUNS"); do
			for s in "${servers[@]}"; do
				if ! kill -0 "${pid[$s]}" 2>/dev/null; then
					log "bench: $s died (see $WORK/$s.log); restarting it"
					start_server "$s" "$disk" "${sock[$s]}"
					pid[$s]=$SERVER_PID
				fi
				# shellcheck disable=SC2086
				measure "$s" "${pid[$s]}" "$disk" "$bs" "${sock[$s]}" "$metric" $args
			done
		done
		keep_medians "$name" "${servers[@]}"
		printf '%-26s %6s %9s %9s %9s %8s   %9s %6s %8s\n' "$name" "$unit" "${res[urbd|$name]}" "${res[nbdkit|$name]}" "${res[qemu-nbd|$name]}" \
			"$(ratio "${res[urbd|$name]}" "${res[nbdkit|$name]}")" "${cpu[urbd|$name]}" "${cpu[nbdkit|$name]}" "${cpu[qemu-nbd|$name]}"
		unset runs cpus
	done
	for s in "${!PIDS[@]}"; do stop_server "${PIDS[$s]}"; done
	PIDS=()
}

# The replication and resync sections (bench_replication, bench_resync).
# shellcheck source=scripts/bench-cluster.sh
. "$ROOT/scripts/bench-cluster.sh"
# The reads section (bench_reads).
# shellcheck source=scripts/bench-reads.sh
. "$ROOT/scripts/bench-reads.sh"
# The congestion section (bench_congestion).
# shellcheck source=scripts/bench-congestion.sh
. "$ROOT/scripts/bench-congestion.sh"

main() {
	local what=${1:-serve}
	case $CACHE in
	warm | cold) ;;
	*) die "CACHE must be warm or cold, not $CACHE" ;;
	esac
	[ -x "$URBD" ] || (cd "$ROOT" && go build -o "$URBD" ./cmd/urbd)
	case $what in
	serve | replication | resync | reads | congestion) "bench_$what" ;;
	all)
		bench_serve
		bench_replication
		bench_resync
		bench_reads
		bench_congestion
		;;
	*) die "usage: bench.sh [serve|replication|resync|reads|congestion|all]" ;;
	esac
}

main "$@"
