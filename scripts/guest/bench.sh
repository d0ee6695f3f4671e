#!/bin/bash
# Benchmark: our target against LIO, over iSER and over TCP, in one SoftRoCE guest run.
#
#   cargo build --release --bin iser-target
#   scripts/softroce-vm.sh scripts/guest/bench.sh [REPEATS]
#
# For each target (ours, LIO) and fabric (iser, tcp): a 256 MiB LUN on tmpfs-backed memory
# (our RAM backend; LIO fileio on tmpfs), logged in with the kernel initiator, then fio
# (libaio, O_DIRECT) runs 4 KiB random reads at queue depth 32 and 1 MiB sequential reads and
# writes at queue depth 8, REPEATS times each (default 3). Prints the median of each and the
# ratio ours/LIO per fabric. The guest runs under TCG emulation on a shared 2-core machine:
# absolute figures mean little, ratios measured in the same run are what to read.
set -euo pipefail
# shellcheck source=scripts/guest/lib.sh
source "$(dirname "$(readlink -f "$0")")/lib.sh"

REPEATS="${1:-3}"
ADDR="$SOFTROCE_ADDR"
PORT=3260
REPO="$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd -P)"
BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/iser-target"
IQN_OURS=iqn.2026-11.io.iser-target:bench
IQN_LIO=iqn.2003-01.org.linux-iscsi.softroce-vm:bench
WORK=/run/bench
RESULTS="${SOFTROCE_RESULTS:-/tmp}/bench.tsv"
[[ -x "$BIN" ]] || sr_die "$BIN missing: run 'cargo build --release --bin iser-target' first"

softroce_setup
mkdir -p "$WORK"
: >"$RESULTS"

# run_fio DEV NAME ARGS...: prints IOPS and MiB/s of one run (reads + writes).
run_fio() {
    local dev="$1" name="$2"; shift 2
    fio --name="$name" --filename="$dev" --direct=1 --ioengine=libaio --runtime=5 --time_based \
        --size=256M --output-format=json "$@" 2>/dev/null |
        python3 -c '
import json, sys
job = json.load(sys.stdin)["jobs"][0]
iops = job["read"]["iops"] + job["write"]["iops"]
mib = (job["read"]["bw_bytes"] + job["write"]["bw_bytes"]) / 2**20
print(f"{iops:.0f}\t{mib:.1f}")'
}

# measure TARGET FABRIC IQN: log in, run every workload REPEATS times, log out.
measure() {
    local target="$1" fabric="$2" iqn="$3" dev i
    iscsiadm -m node -o delete >/dev/null 2>&1 || true
    iscsi_login "$ADDR" "$iqn" "$fabric" "$PORT" >/dev/null || sr_die "$target: login over $fabric failed"
    dev="$(find_new_disk 60)" || sr_die "$target: no disk over $fabric"
    for i in $(seq "$REPEATS"); do
        printf '%s\t%s\trandread-4k-qd32\t%s\n' "$target" "$fabric" \
            "$(run_fio "$dev" rr --rw=randread --bs=4k --iodepth=32)" >>"$RESULTS"
        printf '%s\t%s\tseqread-1m-qd8\t%s\n' "$target" "$fabric" \
            "$(run_fio "$dev" sr --rw=read --bs=1m --iodepth=8)" >>"$RESULTS"
        printf '%s\t%s\tseqwrite-1m-qd8\t%s\n' "$target" "$fabric" \
            "$(run_fio "$dev" sw --rw=write --bs=1m --iodepth=8)" >>"$RESULTS"
    done
    iscsi_logout "$iqn" >/dev/null || true
    sr_log "$target over $fabric measured"
}

cat >"$WORK/config.yaml" <<EOF
portals:
  - { address: $ADDR, port: $PORT, transport: iser }
  - { address: $ADDR, port: $PORT, transport: tcp }
targets:
  - name: $IQN_OURS
    luns: [{ id: 0, backing: { type: ram, size: 256M } }]
EOF
bg_start ours "$BIN" serve --config "$WORK/config.yaml"
wait_rdma_listen "$ADDR:$PORT" && wait_tcp_listen "$ADDR:$PORT" || sr_die "our target did not listen"
# Fill the LUN once so reads touch allocated memory, as LIO's tmpfs file does after its fill.
fill() { dd if=/dev/zero of="$1" bs=1M count=256 oflag=direct status=none; }
iscsi_login "$ADDR" "$IQN_OURS" tcp "$PORT" >/dev/null && fill "$(find_new_disk 60)"
iscsi_logout "$IQN_OURS" >/dev/null
measure ours iser "$IQN_OURS"
measure ours tcp "$IQN_OURS"
bg_stop ours

lio_setup_isert "$ADDR" "$IQN_LIO" 256 fileio "$PORT" bench
iscsi_login "$ADDR" "$IQN_LIO" tcp "$PORT" >/dev/null && fill "$(find_new_disk 60)"
iscsi_logout "$IQN_LIO" >/dev/null
measure lio iser "$IQN_LIO"
measure lio tcp "$IQN_LIO"
lio_teardown

python3 - "$RESULTS" "$REPEATS" <<'EOF'
import statistics, sys
from collections import defaultdict
runs = defaultdict(list)
for line in open(sys.argv[1]):
    target, fabric, workload, iops, mib = line.split("\t")
    runs[(target, fabric, workload)].append((float(iops), float(mib)))
print(f"median of {sys.argv[2]} runs of 5 s each (TCG guest: read the ratios)")
print(f"{'workload':<18}{'fabric':<7}{'ours':>14}{'LIO':>14}{'ours/LIO':>10}")
for workload in ("randread-4k-qd32", "seqread-1m-qd8", "seqwrite-1m-qd8"):
    for fabric in ("iser", "tcp"):
        unit, col = ("IOPS", 0) if workload.startswith("rand") else ("MiB/s", 1)
        ours = statistics.median(r[col] for r in runs[("ours", fabric, workload)])
        lio = statistics.median(r[col] for r in runs[("lio", fabric, workload)])
        print(f"{workload:<18}{fabric:<7}{ours:>9.0f} {unit:<5}{lio:>8.0f} {unit:<5}{ours / lio:>9.2f}")
EOF
