#!/bin/bash
# Benchmark: our target against LIO and tgt, over iSER and iSCSI/TCP, in one SoftRoCE guest run.
#
#   cargo build --release --bin iser-target
#   SOFTROCE_VM_TIMEOUT=2400 scripts/softroce-vm.sh scripts/guest/bench.sh [REPEATS] [SECONDS]
#
# The three targets run side by side in the guest and export the same 256 MiB file on tmpfs,
# write cache on: ours (`backing: {type: file}`, `write_cache: true`) on port 3261, LIO (fileio,
# ib_isert + iSCSI/TCP, emulate_write_cache=1) on 3262, tgt (bs rdwr, an iser and an iscsi
# target, WCE on by default) on 3260. Each round logs the kernel initiator in to every target
# over every fabric in turn, the first target rotating from round to round, and runs fio
# (libaio, O_DIRECT, SECONDS each, default 5) on the disk:
#   4 KiB random read QD1 (mean and p99 latency), 4 KiB random read and random write QD32
#   (IOPS), 128 KiB sequential read and write QD8 (MiB/s).
# Beside each figure: guest CPU per I/O = busy jiffies of all CPUs from /proc/stat across the
# fio run / I/Os. It counts the kernel targets' threads and softirq work, our target, and the
# initiator side (fio, iscsi_tcp/ib_iser, rxe) which is the same for every target.
# SOFTROCE_BENCH_BUSY_POLL_US sets our `limits.busy_poll_us` (default 0: no busy-polling).
# REPEATS rounds (default 3); medians. Every run's fio JSON is kept in $SOFTROCE_RESULTS/fio/,
# every run's figures in bench.tsv. The table (also $SOFTROCE_RESULTS/bench.md) gives
# ours / better-of-LIO-and-tgt for throughput and better / ours for latency: > 1 means ours
# is better in both.
#
# The guest runs under TCG emulation on shared host cores and rxe is software RDMA: absolute
# figures mean little, ratios measured in the same run are what to read. A full run (3 rounds
# of 5 s: 90 fio runs, 18 logins) takes 15-20 minutes plus boot, hence SOFTROCE_VM_TIMEOUT.
set -euo pipefail
# shellcheck source=scripts/guest/lib.sh
source "$(dirname "$(readlink -f "$0")")/lib.sh"

REPEATS="${1:-3}"
RUNTIME="${2:-5}"
[[ "$REPEATS" =~ ^[1-9][0-9]*$ && "$RUNTIME" =~ ^[1-9][0-9]*$ ]] ||
    sr_die "usage: bench.sh [REPEATS] [SECONDS] (positive integers)"
ADDR="$SOFTROCE_ADDR"
REPO="$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd -P)"
BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/iser-target"
WORK=/run/bench
LUN_FILE="$WORK/lun.img"
LUN_MIB=256
TGT_CONTROL_PORT=1
# tgt's iSER port is fixed at 3260 (see tgt_start in lib.sh).
declare -A PORT=([ours]=3261 [lio]=3262 [tgt]=3260)
declare -A IQN=(
    [ours,iser]=iqn.2026-11.io.iser-target:bench [ours,tcp]=iqn.2026-11.io.iser-target:bench
    [lio,iser]=iqn.2003-01.org.linux-iscsi.softroce-vm:bench
    [lio,tcp]=iqn.2003-01.org.linux-iscsi.softroce-vm:bench
    [tgt,iser]=iqn.2026-11.io.iser-target:bench-tgt-iser
    [tgt,tcp]=iqn.2026-11.io.iser-target:bench-tgt-tcp
)
TARGETS=(ours lio tgt)
FABRICS=(iser tcp)
# name|fio arguments
WORKLOADS=(
    "randread-4k-qd1|--rw=randread --bs=4k --iodepth=1"
    "randread-4k-qd32|--rw=randread --bs=4k --iodepth=32"
    "randwrite-4k-qd32|--rw=randwrite --bs=4k --iodepth=32"
    "read-128k-qd8|--rw=read --bs=128k --iodepth=8"
    "write-128k-qd8|--rw=write --bs=128k --iodepth=8"
)
RESULTS="${SOFTROCE_RESULTS:-/tmp}"
FIO_DIR="$WORK/fio"      # one fio JSON per run, on tmpfs; copied to $RESULTS/fio at the end
RUNS="$WORK/runs.tsv"     # round, target, fabric, workload, busy jiffies, JSON path
[[ -x "$BIN" ]] || sr_die "$BIN missing: run 'cargo build --release --bin iser-target' first"

# busy_jiffies: jiffies all CPUs spent not idle (user nice system irq softirq steal; guest
# time is already inside user).
busy_jiffies() {
    local _cpu user nice system _idle _iowait irq softirq steal _rest
    read -r _cpu user nice system _idle _iowait irq softirq steal _rest </proc/stat
    echo $((user + nice + system + irq + softirq + steal))
}

# run_fio DEV JSON ARGS...: one fio run, its JSON report to the file JSON; prints the busy
# jiffies of the guest across it.  Parsing waits until the end: python starts slowly under TCG
# and must not fall inside a CPU window or stretch the run.
run_fio() {
    local dev="$1" json="$2" before after; shift 2
    before="$(busy_jiffies)"
    fio --name=bench --filename="$dev" --direct=1 --ioengine=libaio --runtime="$RUNTIME" \
        --time_based --size="${LUN_MIB}M" --norandommap --lat_percentiles=1 \
        --output-format=json --output="$json" "$@" >/dev/null 2>&1 ||
        { sr_log "fio $* on $dev failed"; return 1; }
    after="$(busy_jiffies)"
    echo $((after - before))
}

# measure ROUND TARGET FABRIC: log in, every workload once, log out.
measure() {
    local round="$1" target="$2" fabric="$3" iqn="${IQN[$2,$3]}" dev cache w name json busy
    iscsi_login "$ADDR" "$iqn" "$fabric" "${PORT[$target]}" >/dev/null ||
        sr_die "$target: login over $fabric failed"
    dev="$(find_new_disk 60)" || sr_die "$target: no disk over $fabric"
    [[ "$(blockdev --getsize64 "$dev")" == $((LUN_MIB << 20)) ]] || sr_die "$target: $dev has the wrong size"
    # What the kernel read from the caching mode page: every target must run with WCE=1.
    cache="$(cat /sys/block/"${dev#/dev/}"/device/scsi_disk/*/cache_type)"
    [[ "$cache" == "write back" ]] || sr_die "$target over $fabric: cache_type is '$cache', not 'write back'"
    for w in "${WORKLOADS[@]}"; do
        name="${w%%|*}"
        json="$FIO_DIR/$round-$target-$fabric-$name.json"
        # shellcheck disable=SC2086  # the fio arguments are words
        busy="$(run_fio "$dev" "$json" ${w#*|})" || sr_die "$target over $fabric: $name failed"
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$target" "$fabric" "$name" "$busy" "$json" >>"$RUNS"
    done
    iscsi_logout "$iqn" "$ADDR" "${PORT[$target]}" >/dev/null || sr_die "$target: logout over $fabric failed"
    sr_log "round $round: $target over $fabric measured"
}

softroce_setup
mkdir -p "$WORK" "$FIO_DIR"
: >"$RUNS"
# The one LUN file, every page allocated (written once), as a LUN in use has it.
dd if=/dev/zero of="$LUN_FILE" bs=1M count="$LUN_MIB" status=none

cat >"$WORK/ours.yaml" <<EOF
portals:
  - { address: $ADDR, port: ${PORT[ours]}, transport: iser }
  - { address: $ADDR, port: ${PORT[ours]}, transport: tcp }
targets:
  - name: ${IQN[ours,tcp]}
    luns:
      - { id: 0, write_cache: true, backing: { type: file, path: $LUN_FILE } }
limits: { busy_poll_us: ${SOFTROCE_BENCH_BUSY_POLL_US:-0} }
EOF
bg_start ours "$BIN" serve --config "$WORK/ours.yaml"
wait_rdma_listen "$ADDR:${PORT[ours]}" || sr_die "our target does not listen for iSER (see ours.log)"
wait_tcp_listen "$ADDR:${PORT[ours]}" || sr_die "our target does not listen on TCP (see ours.log)"

# lio_setup_isert keeps its fileio file at $SOFTROCE_LIO_DIR/NAME.img: point it at the LUN file
# (truncate to the same size leaves the data alone).
SOFTROCE_LIO_DIR="$WORK" lio_setup_isert "$ADDR" "${IQN[lio,tcp]}" "$LUN_MIB" fileio "${PORT[lio]}" lun
[[ "$(SOFTROCE_LIO_DIR="$WORK" lio_backing_file lun)" == "$LUN_FILE" ]] || sr_die "LIO does not use $LUN_FILE"
lio_write_cache lun 1

tgt_start "$ADDR" "$TGT_CONTROL_PORT" || sr_die "tgtd did not start (see tgtd.log)"
tgt_add_target "$TGT_CONTROL_PORT" 1 iser "${IQN[tgt,iser]}" "$LUN_FILE" || sr_die "tgt iSER target"
tgt_add_target "$TGT_CONTROL_PORT" 2 iscsi "${IQN[tgt,tcp]}" "$LUN_FILE" || sr_die "tgt iSCSI target"

# What the guest burns with all three targets up and no session: the floor under CPU/IO.
idle_before="$(busy_jiffies)"; sleep 3; idle_after="$(busy_jiffies)"
IDLE_PCT=$(( (idle_after - idle_before) * 100 / (3 * $(getconf CLK_TCK)) ))
sr_log "idle guest with the three targets up: ${IDLE_PCT}% of one CPU busy"
sr_log "$REPEATS rounds x ${#TARGETS[@]} targets x ${#FABRICS[@]} fabrics x ${#WORKLOADS[@]} workloads x ${RUNTIME} s"

for round in $(seq "$REPEATS"); do
    first=$(( (round - 1) % ${#TARGETS[@]} ))
    order=("${TARGETS[@]:first}" "${TARGETS[@]:0:first}")
    for fabric in "${FABRICS[@]}"; do
        for target in "${order[@]}"; do
            measure "$round" "$target" "$fabric"
        done
    done
done

tgt_stop "$TGT_CONTROL_PORT" || sr_log "tgtd did not stop cleanly"
lio_teardown
bg_stop ours || sr_die "our target did not stop cleanly (see ours.log)"
dmesg_check || sr_die "kernel log shows errors during the benchmark"
cp -r "$FIO_DIR" "$RESULTS/"

python3 - "$RUNS" "$RESULTS/bench.tsv" "$REPEATS" "$RUNTIME" "$(getconf CLK_TCK)" "$IDLE_PCT" "$(nproc)" "$(uname -r)" \
    "$(dpkg-query -W -f='${Version}' tgt 2>/dev/null || echo unknown)" \
    "$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)" >"$RESULTS/bench.md" <<'EOF'
import statistics, sys
import json
index, tsv, repeats, runtime, hz, idle, cpus, kernel, tgt_version, commit = sys.argv[1:]
hz = float(hz)
runs = {}
busy_shares = []
with open(tsv, "w") as out:
    out.write("round\ttarget\tfabric\tworkload\tiops\tmib_s\tlat_mean_us\tlat_p99_us\tios\t"
              "busy_jiffies\tcpu_us_per_io\n")
    for row in open(index):
        rnd, target, fabric, workload, busy, path = row.rstrip("\n").split("\t")
        job = json.load(open(path))["jobs"][0]
        r, w = job["read"], job["write"]
        d = r if r["total_ios"] else w
        ios = r["total_ios"] + w["total_ios"]
        run = dict(iops=r["iops"] + w["iops"], mib=(r["bw_bytes"] + w["bw_bytes"]) / 2**20,
                   lat=d["lat_ns"]["mean"] / 1000,
                   p99=d["lat_ns"].get("percentile", {}).get("99.000000", 0) / 1000,
                   cpu=float(busy) * 1e6 / hz / ios)
        busy_shares.append(float(busy) / (float(runtime) * hz * int(cpus)))
        runs.setdefault((target, fabric, workload), []).append(run)
        out.write(f"{rnd}\t{target}\t{fabric}\t{workload}\t{run['iops']:.0f}\t{run['mib']:.1f}\t"
                  f"{run['lat']:.1f}\t{run['p99']:.0f}\t{ios}\t{busy}\t{run['cpu']:.0f}\n")
def med(t, f, w, key):
    return statistics.median(r[key] for r in runs[(t, f, w)])
# (row label, workload, figure, unit, lower is better)
rows = [
    ("4 KiB rand read QD1, mean latency", "randread-4k-qd1", "lat", "µs", True),
    ("4 KiB rand read QD1, p99 latency", "randread-4k-qd1", "p99", "µs", True),
    ("4 KiB rand read QD32", "randread-4k-qd32", "iops", "IOPS", False),
    ("4 KiB rand write QD32", "randwrite-4k-qd32", "iops", "IOPS", False),
    ("128 KiB seq read QD8", "read-128k-qd8", "mib", "MiB/s", False),
    ("128 KiB seq write QD8", "write-128k-qd8", "mib", "MiB/s", False),
]
print(f"SoftRoCE guest (TCG), kernel {kernel}, commit {commit}, tgt {tgt_version}; one 256 MiB "
      f"tmpfs file behind all three targets, write cache on; fio libaio O_DIRECT, medians of "
      f"{repeats} rounds of {runtime} s. Idle guest with the targets up: {idle}% of one CPU; "
      f"during the runs the guest's {cpus} CPUs were busy {statistics.median(busy_shares):.0%} "
      f"of the time (median): near 100 % the guest is saturated and CPU/IO only restates "
      f"the throughput.")
print()
print("**vs best**: ours ÷ the better of LIO and tgt for IOPS and MiB/s, the better (lower) "
      "latency ÷ ours for latency, so > 1 means ours is better. **CPU/IO**: guest CPU µs per "
      "I/O, all CPUs, initiator included.")
print()
print("| workload | fabric | ours | LIO | tgt | vs best | CPU/IO ours | CPU/IO LIO | CPU/IO tgt |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for label, w, key, unit, lower_better in rows:
    for f in ("iser", "tcp"):
        o, l, t = (med(x, f, w, key) for x in ("ours", "lio", "tgt"))
        ratio = min(l, t) / o if lower_better else o / max(l, t)
        co, cl, ct = (med(x, f, w, "cpu") for x in ("ours", "lio", "tgt"))
        fabric = "iSER" if f == "iser" else "TCP"
        print(f"| {label} | {fabric} | {o:.0f} {unit} | {l:.0f} {unit} | {t:.0f} {unit} | "
              f"{ratio:.2f} | {co:.0f} | {cl:.0f} | {ct:.0f} |")
EOF
cat "$RESULTS/bench.md"
