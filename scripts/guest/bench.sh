#!/bin/bash
# Benchmark: our target against LIO and tgt over iSER and iSCSI/TCP, and against the kernel's
# nvmet-tcp over NVMe/TCP, in one SoftRoCE guest run.
#
#   cargo build --release --bin iser-target
#   SOFTROCE_VM_TIMEOUT=2400 scripts/softroce-vm.sh scripts/guest/bench.sh [REPEATS] [SECONDS]
#   scripts/guest/bench-report.py target/softroce-vm/results/last --charts docs/bench \
#       --update docs/benchmarks.md                  # on the host: PNG charts, the docs' table
#
# SOFTROCE_BENCH_FABRICS picks the fabrics (default "iser tcp nvme"): iser and tcp measure ours,
# LIO and tgt; nvme measures ours (NVMe/TCP portal on 4421) and nvmet-tcp (file backend on the
# same file, buffered_io=1, port 4420).
#
# The targets run side by side in the guest and export the same 256 MiB file on tmpfs, write
# cache on: ours (`backing: {type: file}`, `write_cache: true`) on port 3261 (iSER, TCP) and
# 4421 (NVMe/TCP), LIO (fileio, ib_isert + iSCSI/TCP, emulate_write_cache=1) on 3262, tgt (bs
# rdwr, an iser and an iscsi target, WCE on by default) on 3260, nvmet-tcp on 4420. Each round
# attaches the kernel initiator/host to every target over every fabric in turn, the first
# target of each fabric rotating from round to round, and runs fio (libaio, O_DIRECT, SECONDS
# each, default 5) on the disk:
#   4 KiB random read QD1 (mean and p99 latency), 4 KiB random read and random write QD32
#   (IOPS), 128 KiB sequential read and write QD8 (MiB/s).
# Beside each figure: guest CPU per I/O = busy jiffies of all CPUs from /proc/stat across the
# fio run / I/Os. It counts the kernel targets' threads and softirq work, our target, and the
# initiator side (fio, iscsi_tcp/ib_iser/nvme_tcp, rxe) which is the same for every target of
# a fabric.
# SOFTROCE_BENCH_BUSY_POLL_US sets our `limits.busy_poll_us` (default 0: no busy-polling).
# REPEATS rounds (default 3); medians. Every run's fio JSON is kept in $SOFTROCE_RESULTS/fio/,
# the index in runs.tsv, every run's figures in bench.tsv (scripts/guest/bench-report.py). The
# table (also $SOFTROCE_RESULTS/bench.md) gives ours / the better reference of the fabric for
# throughput and better / ours for latency: > 1 means ours is better in both.
#
# The guest runs under TCG emulation on shared host cores and rxe is software RDMA: absolute
# figures mean little, ratios measured in the same run are what to read. A full run (3 rounds
# of 5 s: 120 fio runs, 24 logins/connects) takes 20-30 minutes plus boot, hence
# SOFTROCE_VM_TIMEOUT.
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
declare -A PORT=([ours]=3261 [lio]=3262 [tgt]=3260 [ours,nvme]=4421 [nvmet,nvme]=4420)
declare -A NQN=([ours]=nqn.2026-11.io.iser-target:bench [nvmet]=nqn.2026-11.io.iser-target:bench-nvmet)
declare -A IQN=(
    [ours,iser]=iqn.2026-11.io.iser-target:bench [ours,tcp]=iqn.2026-11.io.iser-target:bench
    [lio,iser]=iqn.2003-01.org.linux-iscsi.softroce-vm:bench
    [lio,tcp]=iqn.2003-01.org.linux-iscsi.softroce-vm:bench
    [tgt,iser]=iqn.2026-11.io.iser-target:bench-tgt-iser
    [tgt,tcp]=iqn.2026-11.io.iser-target:bench-tgt-tcp
)
read -r -a FABRICS <<<"${SOFTROCE_BENCH_FABRICS:-iser tcp nvme}"
for f in "${FABRICS[@]}"; do
    [[ $f == iser || $f == tcp || $f == nvme ]] || sr_die "SOFTROCE_BENCH_FABRICS: unknown fabric '$f' (iser tcp nvme)"
done
# has_fabric FABRIC: FABRIC is measured in this run.
has_fabric() { [[ " ${FABRICS[*]} " == *" $1 "* ]]; }
# targets_of FABRIC: the targets measured over FABRIC, ours first.
targets_of() { if [[ $1 == nvme ]]; then echo ours nvmet; else echo ours lio tgt; fi; }
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
RUNS="$WORK/runs.tsv"     # round, target, fabric, workload, busy jiffies, JSON file in fio/
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

# attach TARGET FABRIC: log in (iSCSI) or connect (NVMe/TCP); prints the disk.
attach() {
    local target="$1" fabric="$2" dev cache
    if [[ $fabric == nvme ]]; then
        nvme connect -t tcp -a "$ADDR" -s "${PORT[$target,nvme]}" -n "${NQN[$target]}" >/dev/null ||
            sr_die "$target: nvme connect failed"
        dev="$(nvme_wait_ns "${NQN[$target]}" 60)" || sr_die "$target: no namespace over NVMe/TCP"
        # What the host read from Identify Controller's VWC: every target must have it.
        cache="$(cat /sys/block/"${dev#/dev/}"/queue/write_cache)"
    else
        iscsi_login "$ADDR" "${IQN[$target,$fabric]}" "$fabric" "${PORT[$target]}" >/dev/null ||
            sr_die "$target: login over $fabric failed"
        dev="$(find_new_disk 60)" || sr_die "$target: no disk over $fabric"
        # What the kernel read from the caching mode page: every target must run with WCE=1.
        cache="$(cat /sys/block/"${dev#/dev/}"/device/scsi_disk/*/cache_type)"
    fi
    [[ "$(blockdev --getsize64 "$dev")" == $((LUN_MIB << 20)) ]] || sr_die "$target: $dev has the wrong size"
    [[ "$cache" == "write back" ]] || sr_die "$target over $fabric: write cache is '$cache', not 'write back'"
    echo "$dev"
}

# detach TARGET FABRIC: log out or disconnect.
detach() {
    if [[ $2 == nvme ]]; then
        nvme_disconnect "${NQN[$1]}" || sr_die "$1: nvme disconnect failed"
    else
        iscsi_logout "${IQN[$1,$2]}" "$ADDR" "${PORT[$1]}" >/dev/null || sr_die "$1: logout over $2 failed"
    fi
}

# measure ROUND TARGET FABRIC: attach, every workload once, detach.
measure() {
    local round="$1" target="$2" fabric="$3" dev w name json busy
    dev="$(attach "$target" "$fabric")"
    for w in "${WORKLOADS[@]}"; do
        name="${w%%|*}"
        json="$FIO_DIR/$round-$target-$fabric-$name.json"
        # shellcheck disable=SC2086  # the fio arguments are words
        busy="$(run_fio "$dev" "$json" ${w#*|})" || sr_die "$target over $fabric: $name failed"
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$target" "$fabric" "$name" "$busy" "${json##*/}" >>"$RUNS"
    done
    detach "$target" "$fabric"
    sr_log "round $round: $target over $fabric measured"
}

softroce_setup
mkdir -p "$WORK" "$FIO_DIR"
: >"$RUNS"
# The one LUN file, every page allocated (written once), as a LUN in use has it.
dd if=/dev/zero of="$LUN_FILE" bs=1M count="$LUN_MIB" status=none

ISCSI=0
if has_fabric iser || has_fabric tcp; then ISCSI=1; fi
{
    echo "portals:"
    if ((ISCSI)); then
        echo "  - { address: $ADDR, port: ${PORT[ours]}, transport: iser }"
        echo "  - { address: $ADDR, port: ${PORT[ours]}, transport: tcp }"
    fi
    if has_fabric nvme; then echo "  - { address: $ADDR, port: ${PORT[ours,nvme]}, transport: nvme-tcp }"; fi
    echo "targets:"
    echo "  - name: ${IQN[ours,tcp]}"
    if has_fabric nvme; then echo "    nqn: ${NQN[ours]}"; fi
    echo "    luns:"
    echo "      - { id: 0, write_cache: true, backing: { type: file, path: $LUN_FILE } }"
    echo "limits: { busy_poll_us: ${SOFTROCE_BENCH_BUSY_POLL_US:-0} }"
} >"$WORK/ours.yaml"
bg_start ours "$BIN" serve --config "$WORK/ours.yaml"
if ((ISCSI)); then
    wait_rdma_listen "$ADDR:${PORT[ours]}" || sr_die "our target does not listen for iSER (see ours.log)"
    wait_tcp_listen "$ADDR:${PORT[ours]}" || sr_die "our target does not listen on TCP (see ours.log)"

    # lio_setup_isert keeps its fileio file at $SOFTROCE_LIO_DIR/NAME.img: point it at the LUN
    # file (truncate to the same size leaves the data alone).
    SOFTROCE_LIO_DIR="$WORK" lio_setup_isert "$ADDR" "${IQN[lio,tcp]}" "$LUN_MIB" fileio "${PORT[lio]}" lun
    [[ "$(SOFTROCE_LIO_DIR="$WORK" lio_backing_file lun)" == "$LUN_FILE" ]] || sr_die "LIO does not use $LUN_FILE"
    lio_write_cache lun 1

    tgt_start "$ADDR" "$TGT_CONTROL_PORT" || sr_die "tgtd did not start (see tgtd.log)"
    tgt_add_target "$TGT_CONTROL_PORT" 1 iser "${IQN[tgt,iser]}" "$LUN_FILE" || sr_die "tgt iSER target"
    tgt_add_target "$TGT_CONTROL_PORT" 2 iscsi "${IQN[tgt,tcp]}" "$LUN_FILE" || sr_die "tgt iSCSI target"
fi
if has_fabric nvme; then
    wait_tcp_listen "$ADDR:${PORT[ours,nvme]}" || sr_die "our target does not listen on NVMe/TCP (see ours.log)"
    nvme_host_setup
    # The file backend on the LUN file itself (buffered_io: tmpfs refuses O_DIRECT); nvmet's
    # Identify Controller always reports a volatile write cache.
    nvmet_setup "$ADDR" "${PORT[nvmet,nvme]}" "${NQN[nvmet]}" "$LUN_FILE" 1 || sr_die "nvmet did not start"
fi

# What the guest burns with all targets up and no session: the floor under CPU/IO.
idle_before="$(busy_jiffies)"; sleep 3; idle_after="$(busy_jiffies)"
IDLE_PCT=$(( (idle_after - idle_before) * 100 / (3 * $(getconf CLK_TCK)) ))
sr_log "idle guest with the targets up: ${IDLE_PCT}% of one CPU busy"
sr_log "$REPEATS rounds x fabrics (${FABRICS[*]}) x their targets x ${#WORKLOADS[@]} workloads x ${RUNTIME} s"

# Interleaved: each round measures every fabric and target once, the first target of each
# fabric rotating from round to round.
for round in $(seq "$REPEATS"); do
    for fabric in "${FABRICS[@]}"; do
        read -r -a targets <<<"$(targets_of "$fabric")"
        first=$(( (round - 1) % ${#targets[@]} ))
        for target in "${targets[@]:first}" "${targets[@]:0:first}"; do
            measure "$round" "$target" "$fabric"
        done
    done
done

if ((ISCSI)); then
    tgt_stop "$TGT_CONTROL_PORT" || sr_log "tgtd did not stop cleanly"
    lio_teardown
fi
if has_fabric nvme; then nvmet_teardown; fi
bg_stop ours || sr_die "our target did not stop cleanly (see ours.log)"
# The figures are kept whatever the kernel log says below: a run that fails the check (an rxe
# error in one target's round, say) can still be read, knowing which round it touched.
cp -r "$FIO_DIR" "$RESULTS/"
cp "$RUNS" "$RESULTS/runs.tsv"

cat >"$RESULTS/meta.json" <<EOF
{"repeats": $REPEATS, "runtime": $RUNTIME, "hz": $(getconf CLK_TCK), "idle_pct": $IDLE_PCT,
 "cpus": $(nproc), "kernel": "$(uname -r)",
 "tgt": "$(dpkg-query -W -f='${Version}' tgt 2>/dev/null || echo unknown)",
 "nvme_cli": "$(dpkg-query -W -f='${Version}' nvme-cli 2>/dev/null || echo unknown)",
 "commit": "$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"}
EOF
python3 "$REPO/scripts/guest/bench-report.py" "$RESULTS" >"$RESULTS/bench.md"
cat "$RESULTS/bench.md"
dmesg_check || sr_die "kernel log shows errors during the benchmark (the figures are in $RESULTS)"
