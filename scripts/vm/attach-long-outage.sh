# Scenario: an outage longer than --timeout. Reads during it fail with an
# I/O error once --timeout has passed (the kernel gives up on the dead
# connection); urbd attach keeps redialling and, when the server is back,
# the same device works again without re-attaching.
. "$OUT/lib.sh"
load_modules
dd if=/dev/urandom of=/tmp/disk.img bs=1M count=64 status=none
start_serve /tmp/disk.img unix:/run/r0.sock "$OUT/serve.log"
start_attach nbd0 "$OUT/attach.log" --nbd unix:/run/r0.sock --timeout 2s --io-timeout 2s
step "attached with --timeout 2s"

kill -9 "$SERVE_PID"
wait "$SERVE_PID" 2>/dev/null || true
step "server killed"
if dd if=/dev/nbd0 of=/dev/null bs=4k count=1 skip=100 iflag=direct status=none; then
	fail "a read during an outage longer than --timeout succeeded"
fi
step "read during the outage failed as it must"
kill -0 "$ATTACH_PID" || fail "urbd attach exited during the outage"

start_serve /tmp/disk.img unix:/run/r0.sock "$OUT/serve.log"
step "server restarted"
wait_for dd if=/dev/nbd0 of=/dev/null bs=4k count=1 skip=200 iflag=direct status=none
cmp -n 67108864 /dev/nbd0 /tmp/disk.img || fail "device and disk differ after recovery"
step "device works again"
detach nbd0
step "PASS"
