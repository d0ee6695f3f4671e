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
while (($#)); do
    case $1 in
        --rounds) rounds=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --size) size=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) echo "bench-tcp.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "bench-tcp.sh: --rounds must be a positive integer" >&2; exit 2; }
[[ $duration =~ ^[1-9][0-9]*$ ]] || { echo "bench-tcp.sh: --duration must be a positive integer" >&2; exit 2; }
[[ $size =~ ^[1-9][0-9]*[MG]$ ]] || { echo "bench-tcp.sh: --size must look like 256M or 1G" >&2; exit 2; }

ours_port=${OURS_PORT:-3281}
tgt_port=${TGT_PORT:-3282}
cport=${TGT_CONTROL_PORT:-29}
iqn_ours=iqn.2026-11.io.iser-target:bench-tcp
iqn_tgt=iqn.2026-11.io.iser-target:bench-tcp-tgt
out=${out:-$target_dir/bench-tcp/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
out=$(cd "$out" && pwd)

log() { printf 'bench-tcp: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) == 0 ]] || die "needs root (tgtd)"
need=()
command -v tgtd >/dev/null && command -v tgtadm >/dev/null || need+=(tgt)
[[ -f /usr/include/iscsi/iscsi.h ]] || need+=(libiscsi-dev)
command -v gcc >/dev/null || need+=(gcc libc6-dev)
if ((${#need[@]})); then
    log "installing ${need[*]}"
    apt=(apt-get -o DPkg::Lock::Timeout=300)
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
        { "${apt[@]}" update -qq && DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq --no-install-recommends "${need[@]}" >/dev/null; } ||
        die "apt-get install ${need[*]} failed"
fi

log "building the release binary"
(cd "$repo" && cargo build --release --quiet --bin iser-target) || die "cargo build failed"
bin=$target_dir/release/iser-target
load=$target_dir/bench-tcp/iscsi-load
mkdir -p "$(dirname "$load")"
if [[ ! -x $load || $here/bench/iscsi-load.c -nt $load ]]; then
    gcc -O2 -Wall -Wextra -std=gnu11 -o "$load" "$here/bench/iscsi-load.c" -liscsi || die "building iscsi-load failed"
fi

port_open() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
for p in "$ours_port" "$tgt_port"; do
    port_open "$p" && die "something already listens on 127.0.0.1:$p (set OURS_PORT / TGT_PORT)"
done

ours_img=/dev/shm/bench-tcp-ours-$$.img
tgt_img=/dev/shm/bench-tcp-tgt-$$.img
ours_pid=
tgt_pid=

# shellcheck source=scripts/tgtd.sh
source "$here/tgtd.sh"

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    if [[ -n $ours_pid ]] && kill -0 "$ours_pid" 2>/dev/null; then
        kill -TERM "$ours_pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$ours_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$ours_pid" 2>/dev/null || true
        wait "$ours_pid" 2>/dev/null || true
    fi
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
"$bin" serve --config "$out/ours.yaml" >"$out/ours.log" 2>&1 &
ours_pid=$!

tgtd -f -C "$cport" --iscsi "portal=127.0.0.1:$tgt_port" >"$out/tgtd.log" 2>&1 &
tgt_pid=$!

wait_port() {
    local port=$1 pid=$2 name=$3
    for _ in $(seq 100); do
        port_open "$port" && return 0
        kill -0 "$pid" 2>/dev/null || { cat "$out/$name.log" >&2; die "$name exited at start-up"; }
        sleep 0.1
    done
    die "$name does not listen on 127.0.0.1:$port"
}
wait_port "$ours_port" "$ours_pid" ours
wait_port "$tgt_port" "$tgt_pid" tgtd
tgtadm_() { tgtadm -C "$cport" --lld iscsi "$@"; }
tgtadm_ --mode target --op new --tid 1 --targetname "$iqn_tgt"
tgtadm_ --mode target --op bind --tid 1 --initiator-address ALL
# tgt's LUN 0 is its own controller LU, so the data LUN is 1.
tgtadm_ --mode logicalunit --op new --tid 1 --lun 1 --backing-store "$tgt_img" --bstype rdwr

url_ours=iscsi://127.0.0.1:$ours_port/$iqn_ours/0
url_tgt=iscsi://127.0.0.1:$tgt_port/$iqn_tgt/1

# cpu_ticks PID: utime + stime of PID (all its threads, live and exited) and of its
# descendants, in clock ticks.
cpu_ticks() {
    local pid total=0 f
    for pid in $1 $(pgrep -P "$1" || true); do
        [[ -r /proc/$pid/stat ]] || continue
        # Fields after the ")" that closes the command name: state is 1st, utime 12th, stime 13th.
        read -ra f <<<"$(sed 's/^.*) //' "/proc/$pid/stat")"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

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

# measure ROUND TARGET WORKLOAD ARGS: one run; appends a line to runs.tsv.
measure() {
    local round=$1 target=$2 name=$3 args=$4 pid url before after line ios seconds iops mib_s
    if [[ $target == ours ]]; then pid=$ours_pid url=$url_ours; else pid=$tgt_pid url=$url_tgt; fi
    before=$(cpu_ticks "$pid")
    # shellcheck disable=SC2086  # args are words
    line=$("$load" $args -t "$duration" "$url") || die "$target $name: iscsi-load failed"
    after=$(cpu_ticks "$pid")
    kill -0 "$pid" 2>/dev/null || die "$target died during $name"
    # line: ios=N seconds=S iops=X mib_s=Y
    IFS=' =' read -r _ ios _ seconds _ iops _ mib_s <<<"$line"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$target" "$name" "$ios" "$seconds" "$iops" \
        "$mib_s" "$((after - before))" >>"$results"
    log "round $round $target $name: $iops IOPS, $(awk -v t=$((after - before)) -v n="$ios" -v hz="$hz" \
        'BEGIN { printf "%.1f", t * 1e6 / hz / n }') µs CPU/IO"
}

log "$rounds rounds x ${#workloads[@]} workloads x 2 targets x ${duration}s; results in $out"
for round in $(seq "$rounds"); do
    if ((round % 2)); then order=(ours tgt); else order=(tgt ours); fi
    for w in "${workloads[@]}"; do
        for target in "${order[@]}"; do
            measure "$round" "$target" "${w%%|*}" "${w#*|}"
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
