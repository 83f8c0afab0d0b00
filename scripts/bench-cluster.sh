# shellcheck shell=bash
# Sourced by bench.sh: the replication and resync sections. Uses bench.sh's
# helpers (log, die, need, make_disk, settle_cache, start_server, stop_server,
# run_fio, median, ratio) and its variables (URBD, RUNS, RUNTIME, SIZE, WORK).

# cluster_up PROTO SIZE [extra up flags...]: two fresh nodes on loopback
# replicating r0 with --assume-clean; node a is Primary. Sets A_SOCK, B_SOCK,
# A_DISK, B_DISK, A_RUN, B_RUN, node b's command line B_UP, its log B_LOG and
# its process B_PID, and adds the daemons to CLUSTER_PIDS. Without
# CLUSTER it first stops every cluster; with CLUSTER=NAME it adds one more
# next to those running, in its own directory. With A_NS and B_NS (network
# namespaces) and A_HOST and B_HOST (their addresses) the nodes run there
# instead, linked by whatever joins the namespaces.
cluster_up() {
	local proto=$1 size=$2
	shift 2
	local ha=${A_HOST:-127.0.0.1} hb=${B_HOST:-127.0.0.1} ina=() inb=()
	[ -z "${A_NS:-}" ] || ina=(ip netns exec "$A_NS")
	[ -z "${B_NS:-}" ] || inb=(ip netns exec "$B_NS")
	local dir=$WORK/cluster${CLUSTER:+-$CLUSTER}
	[ -n "${CLUSTER:-}" ] || cluster_down
	rm -rf "$dir"
	mkdir -p "$dir"
	A_DISK=$dir/a.img B_DISK=$dir/b.img A_SOCK=$dir/a.sock B_SOCK=$dir/b.sock
	A_RUN=$dir/run-a B_RUN=$dir/run-b
	if [ "${SPARSE:-0}" = 1 ]; then
		truncate -s "$size" "$A_DISK" "$B_DISK"
	else
		make_disk "$A_DISK" "$size"
		make_disk "$B_DISK" "$size"
	fi
	local pa pb
	pa=$(free_port) pb=$(free_port)
	"${ina[@]}" "$URBD" --run-dir "$A_RUN" up --disk "$A_DISK" --meta "$dir/meta-a" --nbd "unix:$A_SOCK" \
		--listen-peer "$ha:$pa" --peer "$hb:$pb" --protocol "$proto" --assume-clean "$@" r0 2>>"$dir.a.log" &
	CLUSTER_PIDS+=($!)
	B_UP=("${inb[@]}" "$URBD" --run-dir "$B_RUN" up --disk "$B_DISK" --meta "$dir/meta-b" --nbd "unix:$B_SOCK"
		--listen-peer "$hb:$pb" --peer "$ha:$pa" --protocol "$proto" --assume-clean "$@" r0)
	B_LOG=$dir.b.log
	"${B_UP[@]}" 2>>"$B_LOG" &
	B_PID=$!
	CLUSTER_PIDS+=($!)
	wait_state "$A_RUN" "cs:Connected" 30
	"$URBD" --run-dir "$A_RUN" primary r0 >/dev/null
	wait_sock "$A_SOCK" "${CLUSTER_PIDS[-2]}"
}

cluster_down() {
	local p
	for p in "${CLUSTER_PIDS[@]:-}"; do
		[ -n "$p" ] && kill "$p" 2>/dev/null || true
	done
	for p in "${CLUSTER_PIDS[@]:-}"; do
		[ -n "$p" ] && wait "$p" 2>/dev/null || true
	done
	CLUSTER_PIDS=()
}

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_state RUN PATTERN SECONDS: wait until RUN/r0/status matches PATTERN.
wait_state() {
	local i
	for i in $(seq $(($3 * 20))); do
		grep -q -- "$2" "$1/r0/status" 2>/dev/null && return 0
		sleep 0.05
	done
	die "timed out waiting for $2 in $1/r0/status: $(cat "$1/r0/status" 2>/dev/null)"
}

# status_kib RUN FIELD: a KiB count of `urbd status --json` now (asked from
# the daemon, not read from the status file, which may be up to a second
# old): oos (out of sync), nr (received from the peer since the start), ...
status_kib() {
	"$URBD" --run-dir "$1" status --json r0 | python3 -c 'import json, sys; print(json.load(sys.stdin)[0][sys.argv[1]])' "$2"
}

# oos_kib RUN: the out-of-sync KiB now.
oos_kib() { status_kib "$1" oos; }

# in_sync RUN: true when Connected with no block out of sync.
in_sync() { grep -q 'cs:Connected.*ds:UpToDate/UpToDate' "$1/r0/status" && grep -q 'oos:0$' "$1/r0/status"; }

# now_ms: wall clock in milliseconds.
now_ms() { date +%s%3N; }

bench_replication() {
	need fio nbdinfo numfmt python3
	# name|metric|unit|block size|fio args
	local tests=(
		"4k randwrite QD32|wiops|IOPS|4096|--rw=randwrite --bs=4k --iodepth=32"
		"1M seqwrite QD8|wmibs|MiB/s|1048576|--rw=write --bs=1M --iodepth=8"
		"4k randwrite QD1 fsync=1|wiops|IOPS|4096|--rw=randwrite --bs=4k --iodepth=1 --fsync=1"
	)
	# All five setups run at once (idle ones cost nothing) and are measured
	# in turn within each round, so a machine that slows down over the run
	# slows all of them alike and the ratios stay fair. Cdt is protocol C
	# with --disk-timeout 30s: what watching the disk for a hang costs.
	local modes=(standalone C B A Cdt)
	declare -A res=() cpu=() sock=() disks=() pids=() rounds=()
	local m t name metric unit bs args r alone
	sock[standalone]=$WORK/standalone.sock
	disks[standalone]=$WORK/standalone.img
	make_disk "${disks[standalone]}" "$SIZE"
	start_server urbd "${disks[standalone]}" "${sock[standalone]}"
	local standalone_pid=$SERVER_PID
	pids[standalone]=$SERVER_PID
	cluster_down
	for m in C B A Cdt; do
		log "replication: starting the protocol $m pair"
		if [ "$m" = Cdt ]; then
			CLUSTER=$m cluster_up C "$SIZE" --disk-timeout 30s
		else
			CLUSTER=$m cluster_up "$m" "$SIZE"
		fi
		sock[$m]=$A_SOCK
		disks[$m]="$A_DISK $B_DISK"
		pids[$m]="${CLUSTER_PIDS[-2]} ${CLUSTER_PIDS[-1]}"
	done
	for t in "${tests[@]}"; do
		IFS='|' read -r name metric unit bs args <<<"$t"
		declare -A runs=() cpus=()
		for r in $(seq "$RUNS"); do
			alone=""
			for m in "${modes[@]}"; do
				# shellcheck disable=SC2086
				measure "$m" "${pids[$m]}" "${disks[$m]}" "$bs" "${sock[$m]}" "$metric" $args
				[ -n "$RATE" ] || continue
				if [ "$m" = standalone ]; then
					alone=$RATE
				elif [ -n "$alone" ]; then
					rounds["$m|$name"]+="$(ratio "$RATE" "$alone") "
				fi
			done
		done
		keep_medians "$name" "${modes[@]}"
		unset runs cpus
	done
	stop_server "$standalone_pid"
	cluster_down
	printf '\n%-26s %6s %10s %10s %10s %10s %10s %8s %8s %8s %8s\n' "replication: test" unit standalone "proto C" "proto B" "proto A" "C+dtmo" C/alone B/alone A/alone C+dtmo/C
	for t in "${tests[@]}"; do
		IFS='|' read -r name metric unit bs args <<<"$t"
		printf '%-26s %6s %10s %10s %10s %10s %10s %8s %8s %8s %8s\n' "$name" "$unit" "${res[standalone|$name]}" \
			"${res[C|$name]}" "${res[B|$name]}" "${res[A|$name]}" "${res[Cdt|$name]}" \
			"$(ratio "${res[C|$name]}" "${res[standalone|$name]}")" \
			"$(ratio "${res[B|$name]}" "${res[standalone|$name]}")" \
			"$(ratio "${res[A|$name]}" "${res[standalone|$name]}")" \
			"$(ratio "${res[Cdt|$name]}" "${res[C|$name]}")"
	done
	# The daemons' CPU time per I/O (user+system, both nodes of a pair
	# together, median over runs): what replication costs the machine,
	# which on a shared machine moves much less than the rates.
	printf '\n%-26s %6s %10s %10s %10s %10s %10s %8s %8s\n' "replication: daemon CPU" unit standalone "proto C" "proto B" "proto A" "C+dtmo" C/alone C+dtmo/C
	for t in "${tests[@]}"; do
		IFS='|' read -r name metric unit bs args <<<"$t"
		printf '%-26s %6s %10s %10s %10s %10s %10s %8s %8s\n' "$name" "us/IO" "${cpu[standalone|$name]}" \
			"${cpu[C|$name]}" "${cpu[B|$name]}" "${cpu[A|$name]}" "${cpu[Cdt|$name]}" \
			"$(ratio "${cpu[C|$name]}" "${cpu[standalone|$name]}")" \
			"$(ratio "${cpu[Cdt|$name]}" "${cpu[C|$name]}")"
	done
	# Each pair's rate over the standalone run just before it, round by
	# round: the reference itself moves between rounds on a shared machine
	# (minutes apart), and these ratios compare runs seconds apart.
	printf '\n%s\n' "replication: each pair over the standalone run of its round, round by round (median)"
	for t in "${tests[@]}"; do
		IFS='|' read -r name metric unit bs args <<<"$t"
		printf '%-26s' "$name"
		for m in C B A Cdt; do
			printf '   %s: %s(%s)' "$m" "${rounds[$m|$name]}" "$(printf '%s' "${rounds[$m|$name]}" | tr ' ' '\n' | median)"
		done
		printf '\n'
	done
}

# resync_run RATE DIRTY_ARGS...: disconnect, dirty the disk with fio, set the
# rate, reconnect; prints the seconds until in sync and the MiB resynced.
resync_run() {
	local rate=$1
	shift
	"$URBD" --run-dir "$A_RUN" disconnect r0 >/dev/null
	wait_state "$A_RUN" "cs:StandAlone" 10
	fio --name=dirty --ioengine=nbd --uri="nbd+unix:///?socket=$A_SOCK" --size="$SIZE" "$@" >/dev/null 2>>"$WORK/fio.log"
	local oos
	oos=$(oos_kib "$A_RUN")
	settle_cache "$A_DISK"
	settle_cache "$B_DISK"
	"$URBD" --run-dir "$A_RUN" adjust --resync-rate "$rate" r0 >/dev/null
	local t0 t1
	"$URBD" --run-dir "$A_RUN" connect r0 >/dev/null
	# Time the resync itself, from SyncSource to in sync (the reconnect
	# before it is not copying).
	until grep -q 'cs:SyncSource' "$A_RUN/r0/status" || in_sync "$A_RUN"; do sleep 0.002; done
	t0=$(now_ms)
	until in_sync "$A_RUN"; do sleep 0.005; done
	t1=$(now_ms)
	awk -v ms=$((t1 - t0)) -v kib="$oos" 'BEGIN { printf "%.2f %.0f\n", ms / 1000, kib / 1024 }'
}

# synced_since T0_MS NR0_KIB RUN: wait until node RUN is in sync, then print
# the seconds since T0_MS and the MiB it received since its counter said
# NR0_KIB.
synced_since() {
	until in_sync "$3"; do sleep 0.005; done
	local t1 nr1
	t1=$(now_ms)
	nr1=$(status_kib "$3" nr)
	awk -v ms=$((t1 - $1)) -v kib=$((nr1 - $2)) 'BEGIN { printf "%.2f %.1f\n", ms / 1000, kib / 1024 }'
}

# full_copy_run: a full resync of node b's disk by plain copies (urbd
# invalidate), though b holds all of the data; prints the seconds from the
# invalidate until b is in sync again (its reconnection included) and the
# MiB it received meanwhile. The daemon says when (wait-sync): the status
# file may still show the state before the invalidate for a moment.
full_copy_run() {
	settle_cache "$A_DISK"
	settle_cache "$B_DISK"
	local t0 nr0
	nr0=$(status_kib "$B_RUN" nr)
	t0=$(now_ms)
	"$URBD" --run-dir "$B_RUN" invalidate r0 >/dev/null
	"$URBD" --run-dir "$B_RUN" wait-sync --timeout 5m r0 >/dev/null || die "the resync after invalidate did not finish"
	synced_since "$t0" "$nr0" "$B_RUN"
}

# attach_run: node a's disk is taken out (urbd detach-disk) and replaced by a
# new sparse file, which urbd attach-disk fills from node b; prints the
# seconds until a is UpToDate again, the MiB it received meanwhile and the
# MiB its new disk occupies.
attach_run() {
	"$URBD" --run-dir "$A_RUN" detach-disk r0 >/dev/null
	wait_state "$A_RUN" "ds:Diskless" 10
	rm -f "$A_DISK"
	truncate -s "$SIZE" "$A_DISK"
	settle_cache "$B_DISK"
	local t0 nr0
	nr0=$(status_kib "$A_RUN" nr)
	t0=$(now_ms)
	"$URBD" --run-dir "$A_RUN" attach-disk r0 >/dev/null
	printf '%s %s\n' "$(synced_since "$t0" "$nr0" "$A_RUN")" "$(du -m "$A_DISK" | cut -f1)"
}

# attach_repaired_run ALG: node a's disk is taken out (urbd detach-disk),
# 8 MiB of its data are overwritten (a disk repaired after a passing fault
# that lost some writes), and urbd attach-disk takes it back with csums-alg
# ALG; prints the seconds until a is UpToDate again and the MiB it received.
attach_repaired_run() {
	"$URBD" --run-dir "$A_RUN" adjust --csums-alg "$1" r0 >/dev/null
	"$URBD" --run-dir "$A_RUN" detach-disk r0 >/dev/null
	wait_state "$A_RUN" "ds:Diskless" 10
	dd if=/dev/urandom of="$A_DISK" bs=1M count=8 seek=300 conv=notrunc status=none
	settle_cache "$A_DISK"
	settle_cache "$B_DISK"
	local t0 nr0
	nr0=$(status_kib "$A_RUN" nr)
	t0=$(now_ms)
	"$URBD" --run-dir "$A_RUN" attach-disk r0 >/dev/null
	synced_since "$t0" "$nr0" "$A_RUN"
	"$URBD" --run-dir "$A_RUN" adjust --csums-alg none r0 >/dev/null
}

# full_csum_run: node b's disk is detached (Diskless), 32 MiB are written
# at random offsets without it, and b's daemon is killed and restarted on
# the same disk: a full resync that compares checksums; prints seconds and
# MiB. Not in a subshell: it replaces B_PID.
full_csum_run() {
	"$URBD" --run-dir "$B_RUN" detach-disk r0 >/dev/null
	wait_state "$A_RUN" "cs:WFConnection" 10
	fio --name=dirty --ioengine=nbd --uri="nbd+unix:///?socket=$A_SOCK" --size="$SIZE" \
		--rw=randwrite --bs=64k --iodepth=8 --io_size=32M --norandommap >/dev/null 2>>"$WORK/fio.log"
	kill -9 "$B_PID"
	wait "$B_PID" 2>/dev/null || true
	settle_cache "$A_DISK"
	settle_cache "$B_DISK"
	"${B_UP[@]}" >/dev/null 2>>"$B_LOG" &
	B_PID=$!
	CLUSTER_PIDS+=($!)
	# From the resync's start; the restarted daemon has received nothing
	# before it.
	wait_state "$B_RUN" "cs:SyncTarget" 30
	synced_since "$(now_ms)" 0 "$B_RUN"
}

# csums_run ALG ROUND: with csums-alg ALG set on node a, disconnect, write
# the 64 MiB at offset 0 again with what they hold, and 1 MiB at 8 MiB with
# data new in ROUND, reconnect unthrottled; prints the seconds from
# SyncSource to in sync and the MiB node b received meanwhile.
csums_run() {
	"$URBD" --run-dir "$A_RUN" adjust --csums-alg "$1" r0 >/dev/null
	"$URBD" --run-dir "$A_RUN" disconnect r0 >/dev/null
	wait_state "$A_RUN" "cs:StandAlone" 10
	fio --name=same --ioengine=nbd --uri="nbd+unix:///?socket=$A_SOCK" --size=64M \
		--rw=write --bs=1M --iodepth=8 --buffer_pattern=0x75726264 >/dev/null 2>>"$WORK/fio.log"
	fio --name=new --ioengine=nbd --uri="nbd+unix:///?socket=$A_SOCK" --offset=8M --size=1M \
		--rw=write --bs=1M --buffer_pattern="$2" >/dev/null 2>>"$WORK/fio.log"
	settle_cache "$A_DISK"
	settle_cache "$B_DISK"
	local t0 nr0
	nr0=$(status_kib "$B_RUN" nr)
	"$URBD" --run-dir "$A_RUN" connect r0 >/dev/null
	until grep -q 'cs:SyncSource' "$A_RUN/r0/status" || in_sync "$A_RUN"; do sleep 0.002; done
	t0=$(now_ms)
	until in_sync "$A_RUN"; do sleep 0.005; done
	synced_since "$t0" "$nr0" "$B_RUN"
}

# verify_run: an online verify of node a's whole disk, unthrottled, from
# cold page caches; prints MiB/s.
verify_run() {
	settle_cache "$A_DISK"
	settle_cache "$B_DISK"
	local t0 t1
	t0=$(now_ms)
	"$URBD" --run-dir "$A_RUN" verify r0 >/dev/null
	while grep -q 'cs:VerifyS' "$A_RUN/r0/status"; do sleep 0.005; done
	t1=$(now_ms)
	local mib=$(($(stat -c %s "$A_DISK") >> 20))
	awk -v ms=$((t1 - t0)) -v mib="$mib" 'BEGIN { printf "%.0f\n", mib / (ms / 1000) }'
}

# rate_run RATE_MIB: measure the resync rate over 10 s at RATE_MIB MiB/s.
rate_run() {
	local want=$1
	local dirty=$((want * 13))
	"$URBD" --run-dir "$A_RUN" disconnect r0 >/dev/null
	wait_state "$A_RUN" "cs:StandAlone" 10
	fio --name=dirty --ioengine=nbd --uri="nbd+unix:///?socket=$A_SOCK" --size="${dirty}M" \
		--rw=write --bs=1M --iodepth=8 >/dev/null 2>>"$WORK/fio.log"
	"$URBD" --run-dir "$A_RUN" adjust --resync-rate "${want}MiB" r0 >/dev/null
	"$URBD" --run-dir "$A_RUN" connect r0 >/dev/null
	wait_state "$A_RUN" "cs:SyncSource" 10
	sleep 2
	local o0 o1
	o0=$(oos_kib "$A_RUN")
	sleep 10
	o1=$(oos_kib "$A_RUN")
	awk -v a="$o0" -v b="$o1" 'BEGIN { printf "%.1f\n", (a - b) / 1024 / 10 }'
	"$URBD" --run-dir "$A_RUN" adjust --resync-rate 0 r0 >/dev/null
	until in_sync "$A_RUN"; do sleep 0.05; done
}

bench_resync() {
	need fio nbdcopy nbdinfo numfmt python3
	local saved=$SIZE r
	SIZE=1G
	cluster_up C "$SIZE"

	# 1. Unthrottled resync of 256 MiB of dirty regions vs nbdcopy of the same bytes.
	local urbd_rates="" copy_rates="" out secs mib
	local src=$WORK/copy-src.img dst=$WORK/copy-dst.img src_pid="" dst_pid=""
	make_disk "$dst" 256M
	for r in $(seq "$RUNS"); do
		out=$(resync_run 0 --rw=write --bs=1M --iodepth=8 --io_size=256M --offset=0)
		read -r secs mib <<<"$out"
		urbd_rates+="$(awk -v s="$secs" -v m="$mib" 'BEGIN { printf "%.0f", m / s }')"$'\n'
		if [ -z "$src_pid" ]; then
			# nbdcopy copies the bytes the resync just copied (fio's data).
			# A source of zeros would be unfair: nbdcopy finds zero blocks
			# and sends them as zero requests instead of data.
			dd if="$A_DISK" of="$src" bs=1M count=256 conv=fsync status=none
			start_server urbd "$src" "$WORK/copy-src.sock"
			src_pid=$SERVER_PID
			start_server urbd "$dst" "$WORK/copy-dst.sock"
			dst_pid=$SERVER_PID
		fi
		settle_cache "$src"
		settle_cache "$dst"
		local t0 t1
		t0=$(now_ms)
		nbdcopy "nbd+unix:///?socket=$WORK/copy-src.sock" "nbd+unix:///?socket=$WORK/copy-dst.sock" 2>>"$WORK/nbdcopy.log"
		t1=$(now_ms)
		copy_rates+="$(awk -v ms=$((t1 - t0)) 'BEGIN { printf "%.0f", 256 / (ms / 1000) }')"$'\n'
	done
	stop_server "$src_pid"
	stop_server "$dst_pid"
	local ur cr
	ur=$(printf '%s' "$urbd_rates" | median)
	cr=$(printf '%s' "$copy_rates" | median)
	printf '\n%-44s %10s %10s %8s\n' "resync: test" urbd nbdcopy ratio
	printf '%-44s %10s %10s %8s\n' "unthrottled resync of 256 MiB dirty (MiB/s)" "$ur" "$cr" "$(ratio "$ur" "$cr")"

	# 2. 32 MiB changed at random 4 KiB offsets of a 1 GiB disk, default rate.
	local times=""
	for r in $(seq "$RUNS"); do
		out=$(resync_run 100MiB --rw=randwrite --bs=4k --iodepth=16 --io_size=32M --norandommap)
		read -r secs mib <<<"$out"
		times+="$secs"$'\n'
	done
	printf '%-44s %10s %10s %8s\n' "32 MiB changed in 1 GiB, default rate (s)" "$(printf '%s' "$times" | median)" "-" "-"

	# 3. A full resync of the 1 GiB disk to a Secondary that already holds
	# most of it, unthrottled: by checksum (its disk detached, 32 MiB
	# written without it, its daemon restarted on the same disk) against
	# by plain copies (urbd invalidate).
	"$URBD" --run-dir "$A_RUN" adjust --resync-rate 0 r0 >/dev/null
	local csum_s="" csum_mib="" copy_s="" copy_mib=""
	for r in $(seq "$RUNS"); do
		full_csum_run >"$WORK/full.out"
		read -r secs mib <"$WORK/full.out"
		csum_s+="$secs"$'\n' csum_mib+="$mib"$'\n'
		full_copy_run >"$WORK/full.out"
		read -r secs mib <"$WORK/full.out"
		copy_s+="$secs"$'\n' copy_mib+="$mib"$'\n'
	done
	local cs ps
	cs=$(printf '%s' "$csum_s" | median)
	ps=$(printf '%s' "$copy_s" | median)
	printf '%-44s %10s %10s %8s\n' "full resync to a disk holding most data" "checksum" "copy" "ratio"
	printf '%-44s %10s %10s %8s\n' "  1 GiB, 32 MiB differ, unthrottled (s)" "$cs" "$ps" "$(ratio "$cs" "$ps")"
	printf '%-44s %10s %10s %8s\n' "  MiB the target received" "$(printf '%s' "$csum_mib" | median)" "$(printf '%s' "$copy_mib" | median)" "-"

	# 4. A bitmap resync of 64 MiB written again unchanged while apart, of
	# which 1 MiB got new data, unthrottled: csums-alg sha256 against none.
	fio --name=same --ioengine=nbd --uri="nbd+unix:///?socket=$A_SOCK" --size=64M \
		--rw=write --bs=1M --iodepth=8 --buffer_pattern=0x75726264 >/dev/null 2>>"$WORK/fio.log"
	until in_sync "$A_RUN"; do sleep 0.05; done
	local sha_s="" sha_mib="" none_s="" none_mib=""
	for r in $(seq "$RUNS"); do
		read -r secs mib <<<"$(csums_run sha256 "0x5$r")"
		sha_s+="$secs"$'\n' sha_mib+="$mib"$'\n'
		read -r secs mib <<<"$(csums_run none "0x6$r")"
		none_s+="$secs"$'\n' none_mib+="$mib"$'\n'
	done
	"$URBD" --run-dir "$A_RUN" adjust --csums-alg none r0 >/dev/null
	cs=$(printf '%s' "$sha_s" | median)
	ps=$(printf '%s' "$none_s" | median)
	printf '%-44s %10s %10s %8s\n' "bitmap resync, 64 MiB rewritten, 1 MiB new" "sha256" "none" "ratio"
	printf '%-44s %10s %10s %8s\n' "  csums-alg, unthrottled (s)" "$cs" "$ps" "$(ratio "$cs" "$ps")"
	printf '%-44s %10s %10s %8s\n' "  MiB the target received" "$(printf '%s' "$sha_mib" | median)" "$(printf '%s' "$none_mib" | median)" "-"

	# 5. An online verify of the whole 1 GiB disk, unthrottled.
	local vrates=""
	for r in $(seq "$RUNS"); do
		vrates+="$(verify_run)"$'\n'
	done
	printf '%-44s %10s %10s %8s\n' "online verify of 1 GiB, unthrottled (MiB/s)" "$(printf '%s' "$vrates" | median)" "-" "-"

	# 6. A full resync of a sparse 1 GiB disk that holds 64 MiB of data
	# (a new or thin volume), unthrottled against nbdcopy of the same disk
	# to an empty one (nbdcopy, too, sends zero blocks as zero requests),
	# and at the default rate.
	SPARSE=1 cluster_up C "$SIZE"
	"$URBD" --run-dir "$A_RUN" adjust --resync-rate 0 r0 >/dev/null
	fio --name=data --ioengine=nbd --uri="nbd+unix:///?socket=$A_SOCK" --size=64M \
		--rw=write --bs=1M --iodepth=8 --offset=256M >/dev/null 2>>"$WORK/fio.log"
	until in_sync "$A_RUN"; do sleep 0.05; done
	local zero_s="" zero_mib="" zcopy_s="" zrate_s="" att_s="" att_mib="" att_used="" arate_s="" t0 t1
	src=$WORK/zero-src.img dst=$WORK/zero-dst.img
	cp --sparse=always "$A_DISK" "$src"
	rm -f "$dst"
	truncate -s "$SIZE" "$dst"
	start_server urbd "$src" "$WORK/zero-src.sock"
	src_pid=$SERVER_PID
	start_server urbd "$dst" "$WORK/zero-dst.sock"
	dst_pid=$SERVER_PID
	for r in $(seq "$RUNS"); do
		full_copy_run >"$WORK/full.out"
		read -r secs mib <"$WORK/full.out"
		zero_s+="$secs"$'\n' zero_mib+="$mib"$'\n'
		settle_cache "$src"
		settle_cache "$dst"
		t0=$(now_ms)
		nbdcopy "nbd+unix:///?socket=$WORK/zero-src.sock" "nbd+unix:///?socket=$WORK/zero-dst.sock" 2>>"$WORK/nbdcopy.log"
		t1=$(now_ms)
		zcopy_s+="$(awk -v ms=$((t1 - t0)) 'BEGIN { printf "%.2f", ms / 1000 }')"$'\n'
		"$URBD" --run-dir "$A_RUN" adjust --resync-rate 100MiB r0 >/dev/null
		full_copy_run >"$WORK/full.out"
		read -r secs mib <"$WORK/full.out"
		zrate_s+="$secs"$'\n'
		"$URBD" --run-dir "$A_RUN" adjust --resync-rate 0 r0 >/dev/null
	done
	# An online verify of the sparse disks: their holes are neither read
	# nor hashed.
	local svrates=""
	for r in $(seq "$RUNS"); do
		svrates+="$(verify_run)"$'\n'
	done
	# attach-disk of a new sparse disk on node a, after the rounds above
	# (it replaces a's disk file): unthrottled, then at the default rate.
	for r in $(seq "$RUNS"); do
		attach_run >"$WORK/attach.out"
		read -r secs mib used <"$WORK/attach.out"
		att_s+="$secs"$'\n' att_mib+="$mib"$'\n' att_used+="$used"$'\n'
		"$URBD" --run-dir "$A_RUN" adjust --resync-rate 100MiB r0 >/dev/null
		attach_run >"$WORK/attach.out"
		read -r secs mib used <"$WORK/attach.out"
		arate_s+="$secs"$'\n'
		"$URBD" --run-dir "$A_RUN" adjust --resync-rate 0 r0 >/dev/null
	done
	# attach-disk of the repaired disk, by checksum and by copy.
	local rsha_s="" rsha_mib="" rnone_s="" rnone_mib=""
	for r in $(seq "$RUNS"); do
		attach_repaired_run sha256 >"$WORK/repaired.out"
		read -r secs mib <"$WORK/repaired.out"
		rsha_s+="$secs"$'\n' rsha_mib+="$mib"$'\n'
		attach_repaired_run none >"$WORK/repaired.out"
		read -r secs mib <"$WORK/repaired.out"
		rnone_s+="$secs"$'\n' rnone_mib+="$mib"$'\n'
	done
	stop_server "$src_pid"
	stop_server "$dst_pid"
	cs=$(printf '%s' "$zero_s" | median)
	ps=$(printf '%s' "$zcopy_s" | median)
	printf '%-44s %10s %10s %8s\n' "full resync, sparse 1 GiB holding 64 MiB (s)" "$cs" "$ps" "$(ratio "$cs" "$ps")"
	printf '%-44s %10s %10s %8s\n' "  MiB the target received" "$(printf '%s' "$zero_mib" | median)" "-" "-"
	printf '%-44s %10s %10s %8s\n' "  at the default rate, 100 MiB/s (s)" "$(printf '%s' "$zrate_s" | median)" "-" "-"
	cs=$(printf '%s' "$att_s" | median)
	printf '%-44s %10s %10s %8s\n' "attach-disk of a new sparse disk, same data (s)" "$cs" "$ps" "$(ratio "$cs" "$ps")"
	printf '%-44s %10s %10s %8s\n' "  MiB the attaching node received" "$(printf '%s' "$att_mib" | median)" "-" "-"
	printf '%-44s %10s %10s %8s\n' "  MiB the new disk occupies" "$(printf '%s' "$att_used" | median)" "-" "-"
	printf '%-44s %10s %10s %8s\n' "  at the default rate, 100 MiB/s (s)" "$(printf '%s' "$arate_s" | median)" "-" "-"
	printf '%-44s %10s %10s %8s\n' "online verify, sparse 1 GiB holding 64 MiB (MiB/s)" "$(printf '%s' "$svrates" | median)" "-" "-"
	printf '%-44s %10s %10s %8s\n' "attach-disk of the repaired disk, 8 MiB differ" "sha256" "none" "ratio"
	cs=$(printf '%s' "$rsha_s" | median)
	ps=$(printf '%s' "$rnone_s" | median)
	printf '%-44s %10s %10s %8s\n' "  csums-alg, unthrottled (s)" "$cs" "$ps" "$(ratio "$cs" "$ps")"
	printf '%-44s %10s %10s %8s\n' "  MiB the attaching node received" "$(printf '%s' "$rsha_mib" | median)" "$(printf '%s' "$rnone_mib" | median)" "-"

	# 7. Throttled accuracy over 10 s, on sparse 4 GiB disks (enough dirty
	# data for 12 s at 200 MiB/s).
	SIZE=4G SPARSE=1 cluster_up C 4G
	local want got
	for want in 10 50 200; do
		got=$(rate_run "$want")
		printf '%-44s %10s %10s %8s\n' "throttled at $want MiB/s, measured over 10 s (MiB/s)" "$got" "-" "$(ratio "$got" "$want")"
	done
	cluster_down
	SIZE=$saved
}
