#!/usr/bin/env bash
# Benchmark an RBD LUN of ours beside librbd's own rate (`rbd bench`) on the same image and
# beside tgt's RBD backend (Debian's tgt-rbd, `--bstype rbd`), over iSCSI/TCP on 127.0.0.1.
#
# Usage: scripts/bench-rbd.sh [--rounds N] [--duration SECONDS] [--size SIZE] [--out DIR]
#   --rounds    rounds of every workload on the three (default 2); medians are reported
#   --duration  seconds per measurement (default 8)
#   --size      image size, with M or G suffix (default 512M); filled before measuring
#   --out       where the per-run TSV, the table and the logs go
#               (default target/bench-rbd/<UTC timestamp>)
# Env: OURS_PORT (3283), TGT_PORT (3284), TGT_CONTROL_PORT (30)
#
# Needs the cluster of scripts/ceph-cluster.sh running (take /work/wt/ceph.lock-style locks
# around it on a shared machine): `scripts/ceph-cluster.sh start`, this, then `stop`.
#
# One image (features: layering only, so the three clients opening it in turn do not pass an
# exclusive lock back and forth; written in full first, so reads reach the OSD) is used by:
#   rbd bench   librbd in the `rbd` tool, --io-threads = queue depth; its run is sized from a
#               2-second calibration so it lasts about --duration seconds
#   ours        `backing: {type: rbd}`, write_cache: false (librbd's cache off)
#   tgt         tgtd with --bstype rbd, --bsopts conf=...;id=admin
# all with librbd's cache off (a copy of the cluster's ceph.conf with `rbd cache = false`).
# ours and tgt are driven by scripts/bench/iscsi-load.c (libiscsi, one session). Workloads:
# 4 KiB random read and write QD32, 128 KiB sequential read and write QD8, and 128 KiB
# sequential read QD32 (how far the QD8 figure is bound by latency). "Sequential" is one
# stream: iscsi-load keeps QD consecutive I/Os in flight, so `rbd bench` runs with
# --io-pattern full-seq (thread i at i x io-size, each advancing by io-threads x io-size),
# not its default `seq`, which gives each of its io-threads a stream of its own in a
# different part of the image (tools/rbd/action/Bench.cc, Ceph 16).
# CPU per I/O: of the target process as in bench-tcp.sh (utime + stime over the run / I/Os),
# of the `rbd bench` process (its whole run, start-up included), and of the OSD over each run.
#
# Needs root (tgtd). Installs tgt, tgt-rbd, libiscsi-dev, gcc when missing.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$repo/target}
case $target_dir in /*) ;; *) target_dir=$repo/$target_dir ;; esac

rounds=2
duration=8
size=512M
out=
ours_port=${OURS_PORT:-3283}
tgt_port=${TGT_PORT:-3284}
cport=${TGT_CONTROL_PORT:-30}
iqn_ours=iqn.2026-11.io.iser-target:bench-rbd
iqn_tgt=iqn.2026-11.io.iser-target:bench-rbd-tgt
bench_name=bench-rbd
# shellcheck source=scripts/bench/lib.sh
source "$here/bench/lib.sh"
bench_args "$0" "$@"

[[ $(id -u) == 0 ]] || die "needs root (tgtd)"
cluster_conf=$("$here/ceph-cluster.sh" env)
[[ -e $cluster_conf ]] || die "no Ceph cluster at $cluster_conf (run scripts/ceph-cluster.sh start)"
if [[ -e /usr/lib/tgt/backing-store/bs_rbd.so ]]; then bench_prepare; else bench_prepare tgt-rbd; fi

# librbd's cache off for every client: the cluster's conf with `rbd cache = false` in [client].
conf=$out/ceph.conf
sed 's/^\[client\]$/[client]\nrbd cache = false/' "$cluster_conf" >"$conf"
grep -q '^rbd cache = false$' "$conf" || die "no [client] section in $cluster_conf"
image=bench-rbd-$$
rbd_() { timeout 600 rbd -c "$conf" "$@"; }
ours_pid=
tgt_pid=

# shellcheck source=scripts/tgtd.sh
source "$here/tgtd.sh"

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    ours_stop
    tgtd_stop "$tgt_pid" "$cport"
    rbd_ rm --no-progress "rbd/$image" >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "creating and filling rbd/$image ($size)"
rbd_ create --size "$size" --image-feature layering "rbd/$image" || die "rbd create failed"
rbd_ bench --io-type write --io-size 4M --io-threads 8 --io-pattern seq --io-total "$size" \
    "rbd/$image" >"$out/fill.log" 2>&1 || die "filling the image failed; see $out/fill.log"

cat >"$out/ours.yaml" <<EOF
portals:
  - { address: 127.0.0.1, port: $ours_port, transport: tcp }
targets:
  - name: $iqn_ours
    luns:
      - id: 0
        write_cache: false
        backing: { type: rbd, pool: rbd, image: $image, conf: $conf, user: admin }
EOF
bench_start 300
# tgt's LUN 0 is its own controller LU, so the data LUN is 1.
tgtadm_ --mode logicalunit --op new --tid 1 --lun 1 --bstype rbd \
    --backing-store "rbd/$image" --bsopts "conf=$conf;id=admin"

url_ours=iscsi://127.0.0.1:$ours_port/$iqn_ours/0
url_tgt=iscsi://127.0.0.1:$tgt_port/$iqn_tgt/1

# workload name | iscsi-load arguments | rbd bench arguments
workloads=(
    "randread-4k-qd32|-R -s 4096 -q 32|--io-type read --io-pattern rand --io-size 4096 --io-threads 32"
    "randwrite-4k-qd32|-w -R -s 4096 -q 32|--io-type write --io-pattern rand --io-size 4096 --io-threads 32"
    "seqread-128k-qd8|-s 131072 -q 8|--io-type read --io-pattern full-seq --io-size 131072 --io-threads 8"
    "seqread-128k-qd32|-s 131072 -q 32|--io-type read --io-pattern full-seq --io-size 131072 --io-threads 32"
    "seqwrite-128k-qd8|-w -s 131072 -q 8|--io-type write --io-pattern full-seq --io-size 131072 --io-threads 8"
)
results=$out/runs.tsv
printf 'round\ttarget\tworkload\tios\tseconds\tiops\tmib_s\tcpu_ticks\n' >"$results"
osd_results=$out/osd.tsv
printf 'round\ttarget\tworkload\tosd_cpu_ticks\n' >"$osd_results"
hz=$(getconf CLK_TCK)
osd_pid=$(cat "$(dirname "$cluster_conf")"/pids/osd.*.pid) || die "no OSD PID file next to $cluster_conf"
declare -A bench_total

# rbd bench's progress lines are "SEC OPS OPS/SEC BYTES/SEC" with OPS cumulative; its summary
# is "elapsed: S ops: N ops/sec: X bytes/sec: Y". A run is sized by bytes, not time: the size
# for --duration seconds comes from a 2-second calibration run stopped by SIGINT.
bench_calibrate() {
    local name=$1 args=$2 io_size rate
    io_size=$(sed -n 's/.*--io-size \([0-9]*\).*/\1/p' <<<"$args")
    # shellcheck disable=SC2086  # args are words
    rate=$(timeout -s INT 3 rbd -c "$conf" bench $args --io-total 1T "rbd/$image" 2>/dev/null |
        awk '$1 ~ /^[0-9]+$/ && $2 ~ /^[0-9]+$/ { s = $1; n = $2 } END { if (s > 0) print int(n / s) }') || true
    [[ -n $rate && $rate -gt 0 ]] || die "rbd bench calibration of $name failed"
    bench_total[$name]=$((rate * duration * io_size))
    log "rbd bench $name: about $rate IOPS, runs of ${bench_total[$name]} bytes"
}

# measure ROUND TARGET WORKLOAD LOAD_ARGS BENCH_ARGS: one run; appends a line to runs.tsv and
# the OSD's CPU ticks over the run to osd.tsv.
measure() {
    local round=$1 target=$2 name=$3 args=$4 bargs=$5 line ios seconds iops mib_s
    local osd_before cpu
    [[ $target != rbd-bench || -n ${bench_total[$name]:-} ]] || bench_calibrate "$name" "$bargs"
    osd_before=$(cpu_ticks "$osd_pid")
    if [[ $target == rbd-bench ]]; then
        # bash's `time` gives the user and system seconds of the rbd process.
        # shellcheck disable=SC2086  # args are words
        cpu=$( { TIMEFORMAT='%3U %3S'; time rbd_ bench $bargs --io-total "${bench_total[$name]}" \
            "rbd/$image" >"$out/rbd-bench.log" 2>&1; } 2>&1) || die "rbd bench $name failed"
        line=$(grep '^elapsed:' "$out/rbd-bench.log") || die "rbd bench $name printed no summary"
        # elapsed: S ops: N ops/sec: X bytes/sec: Y ...
        read -r _ seconds _ ios _ iops _ <<<"$line"
        mib_s=$(awk -v i="$iops" -v a="$bargs" 'BEGIN { split(a, w, " "); for (k in w) if (w[k] == "--io-size") s = w[k + 1]; printf "%.1f", i * s / 1048576 }')
        cpu=$(awk -v c="$cpu" -v hz="$hz" 'BEGIN { split(c, t, " "); printf "%d", (t[1] + t[2]) * hz }')
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$target" "$name" "$ios" "$seconds" \
            "$iops" "$mib_s" "$cpu" >>"$results"
        log "round $round rbd-bench $name: $iops IOPS"
    else
        measure_load "$round" "$target" "$name" "$args"
    fi
    printf '%s\t%s\t%s\t%s\n' "$round" "$target" "$name" "$(($(cpu_ticks "$osd_pid") - osd_before))" >>"$osd_results"
}

log "$rounds rounds x ${#workloads[@]} workloads x 3 x ${duration}s; results in $out"
for round in $(seq "$rounds"); do
    if ((round % 2)); then order=(rbd-bench ours tgt); else order=(tgt ours rbd-bench); fi
    for w in "${workloads[@]}"; do
        IFS='|' read -r name args bargs <<<"$w"
        for target in "${order[@]}"; do
            measure "$round" "$target" "$name" "$args" "$bargs"
        done
    done
done

commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=
if git -C "$repo" status --porcelain --untracked-files=no 2>/dev/null | grep -q .; then dirty=+dirty; fi
versions="ceph $(dpkg-query -W -f='${Version}' librbd1 2>/dev/null || echo unknown), tgt $(dpkg-query -W -f='${Version}' tgt-rbd 2>/dev/null || echo unknown)"
python3 - "$results" "$osd_results" "$hz" "$rounds" "$duration" "$size" "$commit$dirty" \
    "$versions" "$(nproc)" >"$out/table.md" <<'EOF'
import statistics, sys, datetime
path, osd_path, hz, rounds, duration, size, commit, versions, cpus = sys.argv[1:]
hz = float(hz)
osd = {}
for row in list(open(osd_path))[1:]:
    rnd, target, workload, ticks = row.rstrip("\n").split("\t")
    osd[(rnd, target, workload)] = float(ticks)
runs, order, iops_of = {}, [], {}
for row in list(open(path))[1:]:
    rnd, target, workload, ios, seconds, iops, mib, ticks = row.rstrip("\n").split("\t")
    if workload not in order:
        order.append(workload)
    cpu_us = float(ticks) * 1e6 / hz / float(ios)
    osd_us = osd[(rnd, target, workload)] * 1e6 / hz / float(ios)
    runs.setdefault((target, workload), []).append((float(iops), float(mib), cpu_us, osd_us))
    iops_of[(rnd, target, workload)] = float(iops)
med = lambda target, workload, i: statistics.median(r[i] for r in runs[(target, workload)])
# The machine's load drifts between rounds more than between the three runs of one round:
# a ratio is the median of the rounds' ratios, each of two runs made back to back.
ratio = lambda workload, peer: statistics.median(
    iops_of[(r, "ours", w)] / iops_of[(r, peer, w)]
    for (r, t, w) in iops_of if t == "ours" and w == workload)
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
print(f"RBD over iSCSI/TCP on 127.0.0.1, {now}, commit {commit}, {versions}, {cpus} CPUs; "
      f"{size} image (layering), one-OSD cluster of scripts/ceph-cluster.sh, librbd cache off; "
      f"medians of {rounds} rounds of {duration} s (ratios: median of the rounds' ratios).")
print()
print("| workload | rbd bench IOPS | ours IOPS | tgt-rbd IOPS | ours/rbd bench | ours/tgt-rbd "
      "| ours MiB/s | CPU/IO µs rbd bench / ours / tgt | OSD CPU/IO µs rbd bench / ours / tgt |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for w in order:
    bi, oi, ti = med("rbd-bench", w, 0), med("ours", w, 0), med("tgt", w, 0)
    cpu = " / ".join(f"{med(t, w, 2):.0f}" for t in ("rbd-bench", "ours", "tgt"))
    osd_cpu = " / ".join(f"{med(t, w, 3):.0f}" for t in ("rbd-bench", "ours", "tgt"))
    print(f"| {w} | {bi:.0f} | {oi:.0f} | {ti:.0f} | {ratio(w, 'rbd-bench'):.2f} | {ratio(w, 'tgt'):.2f} "
          f"| {med('ours', w, 1):.1f} | {cpu} | {osd_cpu} |")
EOF
echo
cat "$out/table.md"
log "per-run figures: $results"
