#!/usr/bin/env bash
# e2e-summary.sh LOG: one summary line per e2e tier from `go test -v` output:
# the kernel tier (TestKernel*, a real kernel in QEMU) and the host tier
# (everything else: real clients, processes, network namespaces).
set -euo pipefail
log=${1:-e2e.log}
count() { grep -E "^--- $1: Test" "$log" | awk '{print $3}' | grep -c -E "$2" || true; }
hp=$(count PASS '^Test[^K]|^TestK[^e]') hf=$(count FAIL '^Test[^K]|^TestK[^e]')
kp=$(count PASS '^TestKernel') kf=$(count FAIL '^TestKernel')
echo "host: $hp passed, $hf failed"
echo "kernel: $kp passed, $kf failed"
