# shellcheck shell=bash
# Sourced by bench.sh: the reads section. Uses bench.sh's helpers and
# bench-cluster.sh's cluster_up and cluster_down.

# bench_reads: reads through a protocol C pair's Primary with each
# read-balancing policy that does not depend on load (prefer-local, the
# default; round-robin; prefer-remote), switched with urbd adjust on the
# same pair and measured in turn within each round: 4k random reads at
# queue depths 32 and 1, 1 MiB sequential reads at queue depth 8. Both
# nodes and their disks share this machine, so it measures what a read
# from the peer costs (the Read and its answer on both daemons and the
# loopback link), not what a second disk adds.
bench_reads() {
	need fio nbdinfo numfmt python3
	# name|metric|unit|block size|fio args
	local tests=(
		"4k randread QD32|riops|IOPS|4096|--rw=randread --bs=4k --iodepth=32"
		"1M seqread QD8|rmibs|MiB/s|1048576|--rw=read --bs=1M --iodepth=8"
		"4k randread QD1|riops|IOPS|4096|--rw=randread --bs=4k --iodepth=1"
	)
	local modes=(prefer-local round-robin prefer-remote)
	declare -A res=() cpu=()
	local m t name metric unit bs args r pair
	log "reads: starting a protocol C pair"
	cluster_up C "$SIZE"
	pair="${CLUSTER_PIDS[-2]} ${CLUSTER_PIDS[-1]}"
	for t in "${tests[@]}"; do
		IFS='|' read -r name metric unit bs args <<<"$t"
		declare -A runs=() cpus=()
		for r in $(seq "$RUNS"); do
			for m in "${modes[@]}"; do
				"$URBD" --run-dir "$A_RUN" adjust --read-balancing "$m" r0 >/dev/null
				# shellcheck disable=SC2086
				measure "$m" "$pair" "$A_DISK $B_DISK" "$bs" "$A_SOCK" "$metric" $args
			done
		done
		keep_medians "$name" "${modes[@]}"
		unset runs cpus
	done
	cluster_down
	printf '\n%-20s %6s %13s %13s %13s %8s %8s   %s\n' "reads: test" unit prefer-local round-robin prefer-remote rr/local rem/local "pair CPU us/IO: local rr remote"
	for t in "${tests[@]}"; do
		IFS='|' read -r name metric unit bs args <<<"$t"
		printf '%-20s %6s %13s %13s %13s %8s %8s   %8s %6s %6s\n' "$name" "$unit" \
			"${res[prefer-local|$name]}" "${res[round-robin|$name]}" "${res[prefer-remote|$name]}" \
			"$(ratio "${res[round-robin|$name]}" "${res[prefer-local|$name]}")" \
			"$(ratio "${res[prefer-remote|$name]}" "${res[prefer-local|$name]}")" \
			"${cpu[prefer-local|$name]}" "${cpu[round-robin|$name]}" "${cpu[prefer-remote|$name]}"
	done
}
