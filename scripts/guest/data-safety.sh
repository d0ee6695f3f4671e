#!/bin/bash
# `A && pass || fail` is fine in this file: pass never fails.
# shellcheck disable=SC2015
# Nothing acknowledged is lost: our target is killed with SIGKILL in the middle of a
# logged write load over iSER from the Linux kernel initiator, restarted, and every
# write that was acknowledged (write cache off) or covered by a completed SYNCHRONIZE
# CACHE (write cache on) must read back intact after the initiator has reconnected.
#
# On the host (builds target/release/iser-target, then boots the guest):
#     scripts/guest/data-safety.sh
# Inside the guest (what the harness runs):
#     scripts/softroce-vm.sh scripts/guest/data-safety.sh
#
# The writer is scripts/guest/ack-writer.py: O_DIRECT 4 KiB writes at queue depth 1,
# each logged only after write() (and, with the cache on, fsync()) returned.
# Prints one PASS:/FAIL: line per check; exits 1 if any check failed.
set -uo pipefail
# shellcheck source=scripts/guest/entry.sh
source "$(dirname "${BASH_SOURCE[0]}")/entry.sh" "cargo build --release --bin iser-target"

# Guest side.
BIN="$TARGET_DIR/release/iser-target"
ADDR="$SOFTROCE_ADDR"
PORT="$SOFTROCE_ISCSI_PORT"
WORK=/run/data-safety
RESULTS="${SOFTROCE_RESULTS:-/tmp}"
WRITER="$HERE/ack-writer.py"
TARGET_PID=


start_target() {
    "$BIN" serve --config "$WORK/config.yaml" >>"$RESULTS/data-safety-target.log" 2>&1 &
    TARGET_PID=$!
    sr_log "iser-target started (pid $TARGET_PID)"
    wait_rdma_listen "$ADDR:$PORT" 30
}

writes_logged() { grep -c '^W ' "$1" 2>/dev/null || echo 0; }

# crash_test NAME IQN SYNC_EVERY: write, SIGKILL the target, restart it, let the
# initiator reconnect and the writer go on, stop the writer, verify.
crash_test() {
    local name="$1" iqn="$2" sync_every="$3" log="$WORK/$1.log" dev writer at_kill
    iser_login "$ADDR" "$iqn" >/dev/null || { fail "$name: login"; return; }
    dev="$(find_new_disk 60)" || { fail "$name: no disk"; return; }
    python3 "$WRITER" write "$dev" "$log" --sync-every "$sync_every" \
        2>>"$RESULTS/data-safety-writer.log" &
    writer=$!
    sr_wait 120 bash -c "(( \$(grep -c '^W ' '$log' 2>/dev/null || echo 0) >= 150 ))" \
        || { fail "$name: the writer made no progress"; kill "$writer"; return; }
    kill -KILL "$TARGET_PID"
    wait "$TARGET_PID" 2>/dev/null
    at_kill="$(writes_logged "$log")"
    sr_log "$name: target SIGKILLed after $at_kill acknowledged writes"
    sleep 2
    start_target || { fail "$name: the target did not start again"; kill "$writer"; return; }
    if sr_wait 120 session_logged_in "$iqn" \
        && sr_wait 120 bash -c "(( \$(grep -c '^W ' '$log') >= $at_kill + 100 ))"; then
        pass "$name: the initiator reconnected and writing went on ($(writes_logged "$log") acknowledged)"
    else
        fail "$name: no reconnect or no writes after the restart"
    fi
    kill -TERM "$writer"
    wait "$writer"
    if python3 "$WRITER" verify "$dev" "$log" >"$RESULTS/$name-verify.txt" 2>&1; then
        pass "$name: $(tail -n1 "$RESULTS/$name-verify.txt")"
    else
        fail "$name: acknowledged data lost:"
        head -n 20 "$RESULTS/$name-verify.txt"
    fi
    iscsi_logout "$iqn" >/dev/null || true
}

softroce_setup
mkdir -p "$WORK"
: >"$RESULTS/data-safety-target.log"
cat >"$WORK/config.yaml" <<EOF
portals:
  - { address: $ADDR, port: $PORT, transport: iser }
targets:
  - name: iqn.2026-11.io.iser-target:safe-wt
    luns:
      - id: 0
        backing: { type: file, path: $WORK/wt.img, size: 64M, create: true }
        write_cache: false
  - name: iqn.2026-11.io.iser-target:safe-wb
    luns:
      - id: 0
        backing: { type: file, path: $WORK/wb.img, size: 64M, create: true }
        write_cache: true
EOF
start_target || sr_die "our target did not listen on $ADDR:$PORT"

# Write cache off: every write that returned must survive.
crash_test write-through iqn.2026-11.io.iser-target:safe-wt 0
# Write cache on: every write covered by a SYNCHRONIZE CACHE that returned must survive.
crash_test write-back iqn.2026-11.io.iser-target:safe-wb 32

kill -TERM "$TARGET_PID"
wait "$TARGET_PID" 2>/dev/null
sr_checks_done data-safety
