# shellcheck shell=bash
# scripts/bench/lib.sh — sourced by the host benchmarks that drive our target and tgt with
# scripts/bench/iscsi-load.c over iSCSI/TCP on 127.0.0.1 (bench-tcp.sh, bench-rbd.sh), so both
# parse their arguments, start the targets and measure a run the same way.
# The caller sets bench_name (its name without .sh), here, repo, target_dir and the defaults of
# rounds, duration, size and out before calling bench_args.

log() { printf '%s: %s\n' "$bench_name" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# bench_args SCRIPT ARGS...: --rounds, --duration, --size, --out into rounds, duration, size and
# out; --help prints SCRIPT's header comment. Then makes out (default
# $target_dir/$bench_name/<UTC timestamp>) absolute and creates it.
bench_args() {
    local script=$1 example=$size
    shift
    while (($#)); do
        case $1 in
            --rounds) rounds=$2; shift 2 ;;
            --duration) duration=$2; shift 2 ;;
            --size) size=$2; shift 2 ;;
            --out) out=$2; shift 2 ;;
            -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$script"; exit 0 ;;
            *) echo "$bench_name.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
        esac
    done
    [[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "$bench_name.sh: --rounds must be a positive integer" >&2; exit 2; }
    [[ $duration =~ ^[1-9][0-9]*$ ]] || { echo "$bench_name.sh: --duration must be a positive integer" >&2; exit 2; }
    [[ $size =~ ^[1-9][0-9]*[MG]$ ]] || { echo "$bench_name.sh: --size must look like $example or 1G" >&2; exit 2; }
    out=${out:-$target_dir/$bench_name/$(date -u +%Y%m%dT%H%M%SZ)}
    mkdir -p "$out"
    out=$(cd "$out" && pwd)
}

# bench_prepare [PACKAGE...]: installs tgt, libiscsi-dev, gcc and the PACKAGEs given when
# missing, builds the release binary ($bin) and iscsi-load ($load), and checks that nothing
# listens on $ours_port or $tgt_port yet.
bench_prepare() {
    local need=("$@") apt p
    command -v tgtd >/dev/null && command -v tgtadm >/dev/null || need=(tgt "${need[@]}")
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

    for p in "$ours_port" "$tgt_port"; do
        if port_open "$p"; then die "something already listens on 127.0.0.1:$p (set OURS_PORT / TGT_PORT)"; fi
    done
}

port_open() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# ours_stop: stops our target ($ours_pid, if running): SIGTERM, SIGKILL after 5 s.
ours_stop() {
    if [[ -n $ours_pid ]] && kill -0 "$ours_pid" 2>/dev/null; then
        kill -TERM "$ours_pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$ours_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$ours_pid" 2>/dev/null || true
        wait "$ours_pid" 2>/dev/null || true
    fi
}

# bench_start TRIES: starts ours (config $out/ours.yaml) and tgtd, waits up to TRIES x 0.1 s for
# each to listen, and creates tgt's target 1 ($iqn_tgt) open to all; the caller adds its LUN 1.
bench_start() {
    local tries=$1
    "$bin" serve --config "$out/ours.yaml" >"$out/ours.log" 2>&1 &
    ours_pid=$!

    tgtd -f -C "$cport" --iscsi "portal=127.0.0.1:$tgt_port" >"$out/tgtd.log" 2>&1 &
    tgt_pid=$!

    wait_port "$ours_port" "$ours_pid" ours "$tries"
    wait_port "$tgt_port" "$tgt_pid" tgtd "$tries"
    tgtadm_ --mode target --op new --tid 1 --targetname "$iqn_tgt"
    tgtadm_ --mode target --op bind --tid 1 --initiator-address ALL
}

wait_port() {
    local port=$1 pid=$2 name=$3 tries=$4
    for _ in $(seq "$tries"); do
        port_open "$port" && return 0
        kill -0 "$pid" 2>/dev/null || { cat "$out/$name.log" >&2; die "$name exited at start-up"; }
        sleep 0.1
    done
    die "$name does not listen on 127.0.0.1:$port"
}

tgtadm_() { tgtadm -C "$cport" --lld iscsi "$@"; }

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

# measure_load ROUND TARGET WORKLOAD ARGS: one iscsi-load run against ours or tgt with ARGS;
# appends a line to $results with the target's CPU ticks over the run.
measure_load() {
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
