#!/bin/bash
# rdma-ffi proof on real RDMA (SoftRoCE / rdma_rxe) in the QEMU guest.
#
# On the host (builds the example, then boots the guest through the harness):
#     scripts/guest/rdma-ffi-test.sh
#     SOFTROCE_VM=/path/to/scripts/softroce-vm.sh scripts/guest/rdma-ffi-test.sh
# Inside the guest (what the harness runs):
#     softroce-vm.sh scripts/guest/rdma-ffi-test.sh
#
# Runs target/debug/examples/pingpong three times on rxe0's address:
#   selftest   list devices; passive + active side; Send both ways; 1 MiB RDMA
#              READ and WRITE verified; private data check; disconnect, drain,
#              no leaked MRs/QPs/CQs/PDs/ids
#   drop-test  both sides drop their QP (receives outstanding) without
#              disconnect/drain: Drop disconnects, flushes, frees everything
#   kill-test  peer process SIGKILLed mid-transfer: the passive side sees an
#              error completion or DISCONNECTED and tears down without hanging
set -euo pipefail
# shellcheck source=scripts/guest/entry.sh
source "$(dirname "${BASH_SOURCE[0]}")/entry.sh" "cargo build -p rdma-ffi --examples"

# Guest side.
BIN="$TARGET_DIR/debug/examples/pingpong"
softroce_mounts
rxe_setup "$SOFTROCE_ADDR_CIDR"
[[ -x "$BIN" ]] || sr_die "$BIN missing: run 'cargo build -p rdma-ffi --examples' on the host first"

rc=0
sr_log "rdma-ffi selftest on $SOFTROCE_ADDR"
timeout 180 "$BIN" selftest "$SOFTROCE_ADDR" 18515 || rc=$?
if ((rc == 0)); then
    sr_log "rdma-ffi drop-test on $SOFTROCE_ADDR"
    timeout 180 "$BIN" drop-test "$SOFTROCE_ADDR" 18517 || rc=$?
fi
if ((rc == 0)); then
    sr_log "rdma-ffi kill-test on $SOFTROCE_ADDR"
    timeout 180 "$BIN" kill-test "$SOFTROCE_ADDR" 18516 || rc=$?
fi
if ((rc != 0)); then
    sr_log "FAILED (status $rc); dmesg tail:"
    dmesg | tail -30 >&2
fi
[[ -n "${SOFTROCE_RESULTS:-}" ]] && dmesg >"$SOFTROCE_RESULTS/rdma-ffi-dmesg.txt" 2>/dev/null || true
sr_log "rdma-ffi guest test finished with status $rc"
exit "$rc"
