#!/usr/bin/env bash
# bench.sh [serve|replication|resync|all]
#
# Benchmarks urbd with fio's nbd engine over unix sockets. Each section is a
# function named bench_<section>; shared helpers (servers, cache control,
# medians, fio parsing) come first so later sections can reuse them.
#
#   serve: `urbd serve` vs `nbdkit file` vs `qemu-nbd` on one 1 GiB file:
#          4k randwrite QD32, 4k randread QD32, 1M seqwrite QD8,
#          4k randwrite QD1 fsync=1; median of RUNS runs, ratio urbd/nbdkit.
#
# Environment: URBD (binary, default bin/urbd, built if missing), RUNS (3),
# RUNTIME (seconds per fio run, 5), SIZE (1G), WORK (scratch dir).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
URBD=${URBD:-$ROOT/bin/urbd}
RUNS=${RUNS:-3}
RUNTIME=${RUNTIME:-5}
SIZE=${SIZE:-1G}
WORK=${WORK:-$(mktemp -d /tmp/urbd-bench.XXXXXX)}
PIDS=()

log() { printf '%s\n' "$*" >&2; }
die() { log "bench: $*"; exit 1; }

cleanup() {
	local p
	for p in "${PIDS[@]}"; do
		kill "$p" 2>/dev/null || true
	done
	for p in "${PIDS[@]}"; do
		wait "$p" 2>/dev/null || true
	done
	rm -rf "$WORK"
}
trap cleanup EXIT

need() {
	local c
	for c in "$@"; do
		command -v "$c" >/dev/null || die "$c is not installed: run scripts/install-deps.sh"
	done
}

# make_disk FILE SIZE: a fully written (not sparse) file, so that writes do
# not pay for block allocation.
make_disk() {
	local mib
	mib=$(numfmt --from=iec "$2")
	mib=$((mib / 1048576))
	dd if=/dev/zero of="$1" bs=1M count="$mib" conv=fsync status=none
}

# drop_cache FILE: write back and evict FILE's pages (fsync, then
# POSIX_FADV_DONTNEED through dd's nocache flag), so every run starts cold.
drop_cache() {
	sync "$1"
	dd if="$1" iflag=nocache count=0 status=none
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

# median: the median of the numbers on stdin, one per line.
median() {
	sort -g | awk '{v[NR]=$1} END {if (NR==0) {print "nan"; exit} if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'
}

# run_fio SOCK METRIC ARGS...: one fio run against SOCK; prints write or read
# IOPS (METRIC wiops|riops) or MiB/s (wmibs|rmibs) from the terse output.
run_fio() {
	local sock=$1 metric=$2
	shift 2
	fio --name=bench --ioengine=nbd --uri="nbd+unix:///?socket=$sock" \
		--time_based --runtime="$RUNTIME" --ramp_time=1 --size="$SIZE" \
		--output-format=terse --terse-version=3 "$@" 2>>"$WORK/fio.log" |
		awk -F';' -v m="$metric" '
			NF > 50 {
				if (m == "riops") print $8
				else if (m == "wiops") print $49
				else if (m == "rmibs") printf "%.0f\n", $7 / 1024
				else if (m == "wmibs") printf "%.0f\n", $48 / 1024
			}'
}

# ratio A B: A/B with two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

bench_serve() {
	need fio nbdkit qemu-nbd nbdinfo numfmt
	[ -x "$URBD" ] || (cd "$ROOT" && go build -o "$URBD" ./cmd/urbd)
	local disk=$WORK/disk.img
	log "serve: writing a $SIZE disk in $WORK"
	make_disk "$disk" "$SIZE"
	local servers=(urbd nbdkit qemu-nbd)
	declare -A sock
	local s
	for s in "${servers[@]}"; do
		sock[$s]=$WORK/$s.sock
		start_server "$s" "$disk" "${sock[$s]}"
	done

	# name|metric|unit|fio args
	local tests=(
		"4k randwrite QD32|wiops|IOPS|--rw=randwrite --bs=4k --iodepth=32"
		"4k randread QD32|riops|IOPS|--rw=randread --bs=4k --iodepth=32"
		"1M seqwrite QD8|wmibs|MiB/s|--rw=write --bs=1M --iodepth=8"
		"4k randwrite QD1 fsync=1|wiops|IOPS|--rw=randwrite --bs=4k --iodepth=1 --fsync=1"
	)
	printf '\n%-26s %6s %10s %10s %10s %12s\n' "serve: test" unit urbd nbdkit qemu-nbd urbd/nbdkit
	local t name metric unit args r
	for t in "${tests[@]}"; do
		IFS='|' read -r name metric unit args <<<"$t"
		declare -A vals=()
		for s in "${servers[@]}"; do vals[$s]=""; done
		# Servers take turns within each round, so drift hits all alike.
		for r in $(seq "$RUNS"); do
			for s in "${servers[@]}"; do
				drop_cache "$disk"
				# shellcheck disable=SC2086
				vals[$s]+="$(run_fio "${sock[$s]}" "$metric" $args)"$'\n'
			done
		done
		declare -A med=()
		for s in "${servers[@]}"; do
			med[$s]=$(printf '%s' "${vals[$s]}" | grep -v '^$' | median)
		done
		printf '%-26s %6s %10s %10s %10s %12s\n' "$name" "$unit" "${med[urbd]}" "${med[nbdkit]}" "${med[qemu-nbd]}" \
			"$(ratio "${med[urbd]}" "${med[nbdkit]}")"
		unset vals med
	done
	for s in "${!PIDS[@]}"; do stop_server "${PIDS[$s]}"; done
	PIDS=()
}

bench_replication() { log "replication: not written yet"; }
bench_resync() { log "resync: not written yet"; }

main() {
	local what=${1:-serve}
	case $what in
	serve | replication | resync) "bench_$what" ;;
	all)
		bench_serve
		bench_replication
		bench_resync
		;;
	*) die "usage: bench.sh [serve|replication|resync|all]" ;;
	esac
}

main "$@"
