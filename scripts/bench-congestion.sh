# shellcheck shell=bash
# Sourced by bench.sh: the congestion section. Uses bench.sh's helpers and
# bench-cluster.sh's cluster_up, cluster_down, wait_state and in_sync.

# netns_pair: two network namespaces joined by a veth pair whose end in the
# first is shaped to LINK (tc's token bucket, e.g. 200mbit): a WAN link
# between two machines. Sets A_NS, B_NS, A_HOST, B_HOST and LINK_DEV.
netns_pair() {
	A_NS=urbd-bench-a-$$ B_NS=urbd-bench-b-$$
	A_HOST=10.214.$(($$ % 200)).1 B_HOST=10.214.$(($$ % 200)).2
	LINK_DEV=ubva$(($$ % 100000))
	local peer=ubvb$(($$ % 100000))
	ip netns add "$A_NS"
	ip netns add "$B_NS"
	ip link add "$LINK_DEV" type veth peer name "$peer"
	ip link set "$LINK_DEV" netns "$A_NS"
	ip link set "$peer" netns "$B_NS"
	ip -n "$A_NS" addr add "$A_HOST/24" dev "$LINK_DEV"
	ip -n "$B_NS" addr add "$B_HOST/24" dev "$peer"
	ip -n "$A_NS" link set "$LINK_DEV" up
	ip -n "$B_NS" link set "$peer" up
	ip -n "$A_NS" link set lo up
	ip -n "$B_NS" link set lo up
	ip netns exec "$A_NS" tc qdisc replace dev "$LINK_DEV" root tbf rate "$LINK" burst 256kbit latency 400ms
}

netns_down() {
	[ -z "${A_NS:-}" ] || ip netns del "$A_NS" 2>/dev/null || true
	[ -z "${B_NS:-}" ] || ip netns del "$B_NS" 2>/dev/null || true
}

# bench_congestion: a protocol A pair whose link carries LINK (default
# 200mbit, 25 MB/s), in two network namespaces; the Primary's
# on-congestion is switched with urbd adjust between block (the default:
# writes wait for the link) and pull-ahead (once a write waits 100 ms for
# the link the Primary goes Ahead and writes at local speed; CONG_FILL sets
# a congestion-fill too), and measured
# in turn within each round, each run starting in sync: 1 MiB sequential
# writes at queue depth 8 and 4k random writes at queue depth 32 over
# CONG_SIZE (128M), for RUNTIME seconds. For pull-ahead it also reports how
# long the pair took after fio to be Connected and in sync again (the
# resync of what was written while Ahead, over the same link).
bench_congestion() {
	need fio nbdinfo numfmt python3 ip tc
	LINK=${LINK:-200mbit}
	local size=${CONG_SIZE:-128M}
	# name|metric|unit|block size|fio args
	local tests=(
		"1M seqwrite QD8|wmibs|MiB/s|1048576|--rw=write --bs=1M --iodepth=8"
		"4k randwrite QD32|wiops|IOPS|4096|--rw=randwrite --bs=4k --iodepth=32"
	)
	local modes=(block pull-ahead)
	declare -A res=() cpu=() catchup=()
	local m t name metric unit bs args r pair start
	log "congestion: a protocol A pair over a $LINK link"
	netns_pair
	cluster_up A "$size"
	pair="${CLUSTER_PIDS[-2]} ${CLUSTER_PIDS[-1]}"
	for t in "${tests[@]}"; do
		IFS='|' read -r name metric unit bs args <<<"$t"
		declare -A runs=() cpus=() catch=()
		for r in $(seq "$RUNS"); do
			for m in "${modes[@]}"; do
				"$URBD" --run-dir "$A_RUN" adjust --on-congestion "$m" ${CONG_FILL:+--congestion-fill "$CONG_FILL"} r0 >/dev/null
				wait_in_sync "$A_RUN" 300
				# shellcheck disable=SC2086
				SIZE=$size measure "$m" "$pair" "$A_DISK $B_DISK" "$bs" "$A_SOCK" "$metric" $args
				start=$(date +%s.%N)
				wait_in_sync "$A_RUN" 300
				catch[$m]+="$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')"$'\n'
			done
		done
		keep_medians "$name" "${modes[@]}"
		for m in "${modes[@]}"; do
			catchup["$m|$name"]=$(printf '%s' "${catch[$m]}" | median)
		done
		unset runs cpus catch
	done
	cluster_down
	netns_down
	printf '\n%-20s %6s %10s %11s %8s   %s\n' "congestion: test" unit block pull-ahead "pa/block" "seconds to in sync after fio: block pull-ahead"
	for t in "${tests[@]}"; do
		IFS='|' read -r name metric unit bs args <<<"$t"
		printf '%-20s %6s %10s %11s %8s   %6s %6s\n' "$name" "$unit" \
			"${res[block|$name]}" "${res[pull-ahead|$name]}" \
			"$(ratio "${res[pull-ahead|$name]}" "${res[block|$name]}")" \
			"${catchup[block|$name]}" "${catchup[pull-ahead|$name]}"
	done
}

# wait_in_sync RUN SECONDS: wait until the node is Connected and in sync,
# as its daemon says now (the status file may be a second old).
wait_in_sync() {
	local i st
	for i in $(seq $(($2 * 20))); do
		st=$("$URBD" --run-dir "$1" status r0)
		grep -q 'cs:Connected.*ds:UpToDate/UpToDate' <<<"$st" && grep -q 'oos:0$' <<<"$st" && return 0
		sleep 0.05
	done
	die "not in sync within $2 s: $st"
}
