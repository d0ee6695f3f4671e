#!/usr/bin/env bash
# Benchmark our target against tgt over iSCSI/TCP on 127.0.0.1, on this host (no VM):
# IOPS and target CPU per I/O, measured in the same run, interleaved.
#
# Usage: scripts/bench-tcp.sh [--rounds N] [--duration SECONDS] [--size SIZE] [--out DIR]
#   --rounds    rounds of every workload on both targets (default 3); medians are reported
#   --duration  seconds per measurement (default 8); 5 workloads x 2 targets x rounds x this
#               is the run time (about 4 minutes by default)
#   --size      LUN size, a dd-style size with M or G suffix (default 256M)
#   --out       where the per-run TSV, the table and the target logs go
#               (default target/bench-tcp/<UTC timestamp>)
# Env: OURS_PORT (3281), TGT_PORT (3282), TGT_CONTROL_PORT (29)
#
# Both targets export one file LUN on /dev/shm (tmpfs), filled before measuring, write cache on:
# ours `backing: {type: file}` with `write_cache: true`, tgt `--bstype rdwr` (its caching mode
# page has WCE set by default, tgt usr/sbc.c). The load comes from scripts/bench/iscsi-load.c
# (libiscsi, one session, a fixed number of commands in flight for a fixed time; built here),
# because libiscsi's iscsi-perf only reads. Workloads: 4 KiB random read QD32, 4 KiB random
# write QD32 and QD1, 128 KiB sequential read and write QD8. Each round runs every workload on
# both targets back to back, the first target alternating between rounds.
#
# Target CPU per I/O = (utime + stime of the target process and its children, from
# /proc/PID/stat, across the measurement) / I/Os completed. It counts every thread of the
# process. The load generator runs on the same cores: on a 2-core machine it competes with the
# target, so IOPS are bounded by both; CPU per I/O is the figure that does not depend on that.
#
# Needs root (tgtd). Installs tgt, libiscsi-dev, gcc with apt-get when missing. Builds
# target/release/iser-target (cargo build --release) if needed. Cleans up on exit.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$repo/target}
case $target_dir in /*) ;; *) target_dir=$repo/$target_dir ;; esac

rounds=3
duration=8
size=256M
out=
ours_port=${OURS_PORT:-3281}
tgt_port=${TGT_PORT:-3282}
cport=${TGT_CONTROL_PORT:-29}
iqn_ours=iqn.2026-11.io.iser-target:bench-tcp
iqn_tgt=iqn.2026-11.io.iser-target:bench-tcp-tgt
bench_name=bench-tcp
# shellcheck source=scripts/bench/lib.sh
source "$here/bench/lib.sh"
bench_args "$0" "$@"

[[ $(id -u) == 0 ]] || die "needs root (tgtd)"
bench_prepare

ours_img=/dev/shm/bench-tcp-ours-$$.img
tgt_img=/dev/shm/bench-tcp-tgt-$$.img
ours_pid=
tgt_pid=

# shellcheck source=scripts/tgtd.sh
source "$here/tgtd.sh"

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    ours_stop
    tgtd_stop "$tgt_pid" "$cport"
    rm -f "$ours_img" "$tgt_img"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Allocate every page of the backing files, as a used LUN has them.
size_mib=${size%[MG]}
[[ $size == *G ]] && size_mib=$((size_mib * 1024))
for img in "$ours_img" "$tgt_img"; do
    dd if=/dev/zero of="$img" bs=1M count="$size_mib" status=none ||
        die "cannot create $img (is /dev/shm big enough for 2 x $size?)"
done

cat >"$out/ours.yaml" <<EOF
portals:
  - { address: 127.0.0.1, port: $ours_port, transport: tcp }
targets:
  - name: $iqn_ours
    luns:
      - { id: 0, write_cache: true, backing: { type: file, path: $ours_img } }
EOF
bench_start 100
# tgt's LUN 0 is its own controller LU, so the data LUN is 1.
tgtadm_ --mode logicalunit --op new --tid 1 --lun 1 --backing-store "$tgt_img" --bstype rdwr

url_ours=iscsi://127.0.0.1:$ours_port/$iqn_ours/0
url_tgt=iscsi://127.0.0.1:$tgt_port/$iqn_tgt/1

# workload name, then iscsi-load arguments
workloads=(
    "randread-4k-qd32|-R -s 4096 -q 32"
    "randwrite-4k-qd32|-w -R -s 4096 -q 32"
    "randwrite-4k-qd1|-w -R -s 4096 -q 1"
    "seqread-128k-qd8|-s 131072 -q 8"
    "seqwrite-128k-qd8|-w -s 131072 -q 8"
)
results=$out/runs.tsv
printf 'round\ttarget\tworkload\tios\tseconds\tiops\tmib_s\tcpu_ticks\n' >"$results"
hz=$(getconf CLK_TCK)

log "$rounds rounds x ${#workloads[@]} workloads x 2 targets x ${duration}s; results in $out"
for round in $(seq "$rounds"); do
    if ((round % 2)); then order=(ours tgt); else order=(tgt ours); fi
    for w in "${workloads[@]}"; do
        for target in "${order[@]}"; do
            measure_load "$round" "$target" "${w%%|*}" "${w#*|}"
        done
    done
done

commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=
if git -C "$repo" status --porcelain --untracked-files=no 2>/dev/null | grep -q .; then dirty=+dirty; fi
tgt_version=$(dpkg-query -W -f='${Version}' tgt 2>/dev/null || echo unknown)
python3 - "$results" "$hz" "$rounds" "$duration" "$size" "$commit$dirty" "$tgt_version" \
    "$(nproc)" >"$out/table.md" <<'EOF'
import statistics, sys, datetime
path, hz, rounds, duration, size, commit, tgt_version, cpus = sys.argv[1:]
hz = float(hz)
runs = {}
order = []
for row in list(open(path))[1:]:
    rnd, target, workload, ios, seconds, iops, mib, ticks = row.rstrip("\n").split("\t")
    if workload not in order:
        order.append(workload)
    cpu_us = float(ticks) * 1e6 / hz / float(ios)
    runs.setdefault((target, workload), []).append((float(iops), float(mib), cpu_us))
med = lambda target, workload, i: statistics.median(r[i] for r in runs[(target, workload)])
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
print(f"iSCSI/TCP on 127.0.0.1, {now}, commit {commit}, tgt {tgt_version}, {cpus} CPUs; "
      f"{size} file LUN on /dev/shm, write cache on; medians of {rounds} rounds of {duration} s.")
print("IOPS: higher is better (ours/tgt > 1: ours ahead). CPU/IO: target CPU time per I/O, "
      "lower is better (ours/tgt < 1: ours cheaper).")
print()
print("| workload | ours IOPS | tgt IOPS | ours/tgt | ours MiB/s | tgt MiB/s "
      "| ours CPU/IO µs | tgt CPU/IO µs | ours/tgt |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for w in order:
    oi, ti = med("ours", w, 0), med("tgt", w, 0)
    om, tm = med("ours", w, 1), med("tgt", w, 1)
    oc, tc = med("ours", w, 2), med("tgt", w, 2)
    print(f"| {w} | {oi:.0f} | {ti:.0f} | {oi / ti:.2f} | {om:.1f} | {tm:.1f} "
          f"| {oc:.1f} | {tc:.1f} | {oc / tc:.2f} |")
EOF
echo
cat "$out/table.md"
log "per-run figures: $results"
