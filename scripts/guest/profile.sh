#!/bin/bash
# Where guest CPU goes at queue depth 1: ours against the kernel targets in the SoftRoCE guest,
# counted from /proc and optionally sampled with perf (software event cpu-clock only: TCG has no
# hardware counters).
#
#   cargo build --release --bin iser-target
#   SOFTROCE_VM_TIMEOUT=1500 flock /work/wt/vm.lock scripts/softroce-vm.sh scripts/guest/profile.sh
#
# 1. The environment: CPU model and flags the guest sees, its clock source, the kernel's
#    mitigations (/sys/devices/system/cpu/vulnerabilities), and what a system call
#    (`perf bench syscall basic`: getppid), a clock read (Python's time.monotonic, less the
#    same loop around os.getppid) and a round trip of two context switches with their
#    wake-ups (`perf bench sched pipe`: processes and threads, on one CPU and free) cost.
# 2. For each case of SOFTROCE_PROFILE_CASES (default "ours:nvme nvmet:nvme ours:tcp lio:tcp
#    ours:iser lio:iser"), TARGET:FABRIC, and each placement of SOFTROCE_PROFILE_PLACES (default
#    "free"; "same": fio and our target on CPU 0; "cross": fio on CPU 0, ours on CPU 1), in
#    SOFTROCE_PROFILE_ROUNDS rounds (default 1): attach the kernel initiator or host, one warm-up
#    fio second, then fio 4 KiB random read at SOFTROCE_PROFILE_QD (default 1) for
#    SOFTROCE_PROFILE_SECONDS (default 8). One "RESULT" line per run: mean latency, IOPS, guest
#    busy CPU, context switches and interrupts per I/O (/proc/stat), and our process's user and
#    system time per I/O (/proc). SOFTROCE_PROFILE_BIN names our binary.
# 3. With SOFTROCE_PROFILE_PERF=1, the same run again under `perf record -e cpu-clock -a -g`
#    (SOFTROCE_PROFILE_FREQ samples a second, default 499), reported as guest CPU µs per I/O by
#    task and for the kernel paths that matter (system-call entry, the scheduler, wake-ups,
#    TCP, io_uring, rxe, idle), inclusive. Off by default: under TCG on Linux 6.1 the samples
#    land in the idle task (docs/benchmarks.md, "where QD1 time goes in the guest").
#
# Every target exports the same 256 MiB tmpfs file with the write cache on, as in bench.sh.
# Results: $SOFTROCE_RESULTS/profile.txt; with perf, per case the perf.data and the guest's
# kallsyms (perf report -i CASE.data --kallsyms kallsyms on the host re-slices it).
set -euo pipefail
# shellcheck source=scripts/guest/lib.sh
source "$(dirname "$(readlink -f "$0")")/lib.sh"

ADDR="$SOFTROCE_ADDR"
REPO="$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd -P)"
BIN="${SOFTROCE_PROFILE_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release/iser-target}"
[[ "$BIN" == /* ]] || BIN="$REPO/$BIN"
SECS="${SOFTROCE_PROFILE_SECONDS:-8}"
QD="${SOFTROCE_PROFILE_QD:-1}"
FREQ="${SOFTROCE_PROFILE_FREQ:-499}"
read -r -a CASES <<<"${SOFTROCE_PROFILE_CASES:-ours:nvme nvmet:nvme ours:tcp lio:tcp ours:iser lio:iser}"
WORK=/run/profile
LUN="$WORK/lun.img"
RESULTS="${SOFTROCE_RESULTS:-/tmp}"
OUT="$RESULTS/profile.txt"
declare -A PORT=([ours]=3261 [lio]=3262 [ours,nvme]=4421 [nvmet,nvme]=4420)
IQN_OURS=iqn.2026-11.io.iser-target:profile
IQN_LIO=iqn.2003-01.org.linux-iscsi.softroce-vm:profile
NQN_OURS=nqn.2026-11.io.iser-target:profile
NQN_NVMET=nqn.2026-11.io.iser-target:profile-nvmet
[[ -x "$BIN" ]] || sr_die "$BIN missing: run 'cargo build --release --bin iser-target' first"
command -v perf >/dev/null || sr_die "perf missing (apt-get install linux-perf on the host)"
HZ="$(getconf CLK_TCK)"

say() { echo "$*" | tee -a "$OUT"; }
: >"$OUT"

# ------------------------------------------------------------------ the environment
environment() {
    say "## environment"
    say "cpu: $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), $(nproc) CPUs;" \
        "vendor $(sed -n 's/^vendor_id\s*: //p' /proc/cpuinfo | head -1)"
    say "flags of note: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' |
        grep -E -x 'pti|pcid|invpcid|md_clear|ibrs|ibpb|stibp|ssbd|spec_ctrl|arch_capabilities|constant_tsc|nonstop_tsc|rdtscp|tsc_known_freq|hypervisor' | tr '\n' ' ')"
    say "clocksource: $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)" \
        "(available: $(cat /sys/devices/system/clocksource/clocksource0/available_clocksource))"
    say "kernel: $(uname -r); cmdline: $(cat /proc/cmdline | tr ' ' '\n' | grep -E '^(tsc|mitigations|pti|nopti|spectre|retbleed)' | tr '\n' ' ')"
    local v
    for v in /sys/devices/system/cpu/vulnerabilities/*; do
        say "vulnerability ${v##*/}: $(cat "$v")"
    done
    say ""
    say "## prices under TCG"
    local loops=200000 t
    t="$(perf bench syscall basic -l "$loops" 2>&1 | sed -n 's/.*usecs\/op.*/&/p' | awk '{print $1}')"
    say "system call (getppid, perf bench syscall basic, $loops loops): ${t:-?} µs"
    say "clock read and system call, per call (Python loop of 200000; loop overhead cancels):"
    python3 - <<'PY' | tee -a "$OUT"
import os, time
N = 200000
def loop(f):
    t0 = time.perf_counter()
    for _ in range(N):
        f()
    return (time.perf_counter() - t0) / N * 1e6
base = loop(lambda: None)
clock = loop(time.monotonic) - base
ppid = loop(os.getppid) - base
print(f"  time.monotonic (clock_gettime) {clock:.2f} µs, os.getppid {ppid:.2f} µs, "
      f"empty loop {base:.2f} µs")
PY
    # Processes switch address spaces (a CR3 write: QEMU flushes its soft TLB), threads of one
    # process (-T) do not; pinned to one CPU the wake-ups are local, free they may cross CPUs.
    local pin kind
    for pin in "taskset -c 0" ""; do
        for kind in "" -T; do
            t="$($pin perf bench sched pipe ${kind:+"$kind"} -l 20000 2>&1 | sed -n 's/.*usecs\/op.*/&/p' | awk '{print $1}')"
            say "pipe round trip, two wake-ups and context switches between" \
                "$([[ -n $kind ]] && echo threads || echo processes)" \
                "(${pin:-free on $(nproc) CPUs}): ${t:-?} µs"
        done
    done
    say ""
}

# ------------------------------------------------------------------ the targets
setup_targets() {
    mkdir -p "$WORK"
    dd if=/dev/zero of="$LUN" bs=1M count=256 status=none
    cat >"$WORK/ours.yaml" <<EOF
portals:
  - { address: $ADDR, port: ${PORT[ours]}, transport: iser }
  - { address: $ADDR, port: ${PORT[ours]}, transport: tcp }
  - { address: $ADDR, port: ${PORT[ours,nvme]}, transport: nvme-tcp }
targets:
  - name: $IQN_OURS
    nqn: $NQN_OURS
    luns:
      - { id: 0, write_cache: true, backing: { type: file, path: $LUN } }
limits: { busy_poll_us: 0 }
EOF
    bg_start ours "$BIN" serve --config "$WORK/ours.yaml"
    wait_rdma_listen "$ADDR:${PORT[ours]}" || sr_die "our target does not listen for iSER"
    wait_tcp_listen "$ADDR:${PORT[ours,nvme]}" || sr_die "our target does not listen on NVMe/TCP"
    SOFTROCE_LIO_DIR="$WORK" lio_setup_isert "$ADDR" "$IQN_LIO" 256 fileio "${PORT[lio]}" lun
    [[ "$(SOFTROCE_LIO_DIR="$WORK" lio_backing_file lun)" == "$LUN" ]] || sr_die "LIO does not use $LUN"
    lio_write_cache lun 1
    nvme_host_setup
    nvmet_setup "$ADDR" "${PORT[nvmet,nvme]}" "$NQN_NVMET" "$LUN" 1 || sr_die "nvmet did not start"
}

attach() {
    local target="$1" fabric="$2" nqn iqn
    if [[ $fabric == nvme ]]; then
        if [[ $target == ours ]]; then nqn=$NQN_OURS; else nqn=$NQN_NVMET; fi
        nvme connect -t tcp -a "$ADDR" -s "${PORT[$target,nvme]}" -n "$nqn" >/dev/null || sr_die "$target: connect"
        nvme_wait_ns "$nqn" 60 || sr_die "$target: no namespace"
    else
        if [[ $target == ours ]]; then iqn=$IQN_OURS; else iqn=$IQN_LIO; fi
        iscsi_login "$ADDR" "$iqn" "$fabric" "${PORT[$target]}" >/dev/null || sr_die "$target: login over $fabric"
        find_new_disk 60 || sr_die "$target: no disk over $fabric"
    fi
}

detach() {
    if [[ $2 == nvme ]]; then
        if [[ $1 == ours ]]; then nvme_disconnect "$NQN_OURS"; else nvme_disconnect "$NQN_NVMET"; fi
    elif [[ $1 == ours ]]; then
        iscsi_logout "$IQN_OURS" "$ADDR" "${PORT[ours]}" >/dev/null
    else
        iscsi_logout "$IQN_LIO" "$ADDR" "${PORT[lio]}" >/dev/null
    fi
}

# stat_line: busy jiffies, context switches and interrupts of the whole guest.
stat_line() {
    awk '$1 == "cpu" { b = $2 + $3 + $4 + $7 + $8 + $9 } $1 == "ctxt" { c = $2 }
         $1 == "intr" { i = $2 } END { print b, c, i }' /proc/stat
}

# ours_ticks: utime and stime of our target, all threads.
ours_ticks() {
    local st
    read -r -a st <"/proc/$SR_BG_ours/stat"
    echo "${st[13]} ${st[14]}"
}

# The kernel paths reported inclusively (children), per I/O: "label symbol" pairs.
PATHS=(
    "syscall-entry entry_SYSCALL_64_after_hwframe"
    "syscall-exit-work syscall_exit_to_user_mode"
    "io_uring_enter __x64_sys_io_uring_enter"
    "recvfrom __x64_sys_recvfrom"
    "writev __x64_sys_writev"
    "sendmsg-kernel tcp_sendmsg"
    "pread __x64_sys_pread64"
    "clock_gettime __x64_sys_clock_gettime"
    "ibv-post-send(write) __x64_sys_write"
    "schedule schedule"
    "switch_mm switch_mm_irqs_off"
    "wake-up try_to_wake_up"
    "softirq-net net_rx_action"
    "tcp-rx tcp_v4_rcv"
    "rxe-requester rxe_requester"
    "rxe-responder rxe_responder"
    "irq-exit irq_exit_rcu"
    "idle do_idle"
)

# fio_run DEV JSON [command prefix...]: 4 KiB random reads at QD for SECS into JSON (on CPU 0
# only when FIO_CPUS is set).
fio_run() {
    local dev="$1" json="$2"
    shift 2
    "$@" fio ${FIO_CPUS:+--cpus_allowed="$FIO_CPUS"} --name=prof --filename="$dev" --direct=1 --ioengine=libaio --rw=randread --bs=4k \
        --iodepth="$QD" --runtime="$SECS" --time_based --size=256M --norandommap \
        --output-format=json --output="$json" >/dev/null 2>&1
}

# fio_figures JSON: "I/Os mean-latency-µs IOPS" of the run.
fio_figures() {
    python3 -c 'import json,sys; j=json.load(open(sys.argv[1]))["jobs"][0]["read"]; print(j["total_ios"], round(j["lat_ns"]["mean"]/1000), round(j["iops"]))' "$1"
}

# place TARGET PLACE: where fio and our target may run. free: anywhere; same: both on CPU 0;
# cross: fio on CPU 0, ours on CPU 1. The kernel targets' workers are not pinned (they run
# where the initiator's queue queues them).
place() {
    local cpus=0-$(($(nproc) - 1))
    FIO_CPUS=""
    case "$2" in
        same) FIO_CPUS=0 cpus=0 ;;
        cross) FIO_CPUS=0 cpus=1 ;;
    esac
    taskset -a -p -c "$cpus" "$SR_BG_ours" >/dev/null
}

# profile TARGET FABRIC [PLACE]: one plain run (figures, /proc/stat counts), then, with
# SOFTROCE_PROFILE_PERF=1, one under perf.
profile() {
    local target="$1" fabric="$2" where="${3:-free}" dev data s0 s1 o0 o1 json ios lat iops
    local b0 c0 i0 b1 c1 i1 ou0 os0 ou1 os1
    place "$target" "$where"
    dev="$(attach "$target" "$fabric")"
    fio --name=warm --filename="$dev" --direct=1 --ioengine=libaio --rw=randread --bs=4k \
        --iodepth="$QD" --runtime=1 --time_based --size=256M >/dev/null 2>&1 || sr_die "warm-up fio"
    json="$WORK/$target-$fabric.json"
    s0="$(stat_line)"
    o0="$(ours_ticks)"
    fio_run "$dev" "$json" || sr_die "fio"
    s1="$(stat_line)"
    o1="$(ours_ticks)"
    read -r ios lat iops <<<"$(fio_figures "$json")"
    read -r b0 c0 i0 <<<"$s0"
    read -r b1 c1 i1 <<<"$s1"
    read -r ou0 os0 <<<"$o0"
    read -r ou1 os1 <<<"$o1"
    say "## $target over $fabric, 4 KiB random read QD$QD, $SECS s, placement $where"
    say "RESULT $target $fabric $where lat_us $lat iops $iops busy_us_per_io" \
        "$(((b1 - b0) * 1000000 / HZ / ios)) ctxt_per_io" \
        "$(awk -v a="$c0" -v b="$c1" -v n="$ios" 'BEGIN{printf "%.2f", (b-a)/n}') intr_per_io" \
        "$(awk -v a="$i0" -v b="$i1" -v n="$ios" 'BEGIN{printf "%.2f", (b-a)/n}')" \
        "$([[ $target == ours ]] && echo "ours_user_us $(((ou1 - ou0) * 1000000 / HZ / ios))" \
            "ours_sys_us $(((os1 - os0) * 1000000 / HZ / ios))")"
    if [[ "${SOFTROCE_PROFILE_PERF:-0}" != 1 ]]; then
        detach "$target" "$fabric" || sr_die "$target: detach over $fabric"
        return
    fi
    # perf.data on tmpfs: writing it to the 9p results share from inside the run would cost
    # the guest more than the I/O being measured. fio runs two seconds longer than the
    # profile, which starts one second in: its start-up is not in the profile.
    data="$WORK/$target-$fabric.data"
    SECS=$((SECS + 2)) fio_run "$dev" "$json" &
    local fio_pid=$!
    sleep 1
    perf record -q -e cpu-clock -F "$FREQ" -a -g -o "$data" -- sleep "$SECS" 2>/dev/null ||
        sr_die "perf record"
    wait "$fio_pid" || sr_die "fio under perf"
    detach "$target" "$fabric" || sr_die "$target: detach over $fabric"
    read -r ios lat iops <<<"$(fio_figures "$json")"
    ios=$((iops * SECS))
    say "under perf record -F $FREQ -a -g: mean latency $lat µs, $iops IOPS, about $ios I/Os profiled"
    # Every sample is 1/FREQ s of one CPU: the profile's CPU per I/O, idle included, and each
    # share of it (absolute percentages of all samples).
    local total per_io rep_all rep_ours comms line label sym all oursp
    total="$(perf script -i "$data" -F comm 2>/dev/null | wc -l)"
    per_io="$(awk -v t="$total" -v f="$FREQ" -v n="$ios" 'BEGIN { printf "%.1f", t / f * 1e6 / n }')"
    say "samples: $total = $per_io µs of guest CPU per I/O, idle included"
    say "guest CPU per I/O by task, µs (swapper = idle):"
    perf report -i "$data" --kallsyms=/proc/kallsyms --no-children --sort comm --stdio -q -g none 2>/dev/null |
        awk -v u="$per_io" '$1 ~ /%$/ { p = $1; sub(/%/, "", p); printf "  %-24s %7.1f\n", $2, p * u / 100 }' |
        sed -n 1,14p | tee -a "$OUT"
    comms="$(perf report -i "$data" --no-children --sort comm --stdio -q -g none 2>/dev/null |
        awk '$1 ~ /%$/ { print $2 }' | grep -E '^(io-engine|listen-|nvme-|iser-target|conn-|bind-)' | paste -sd, || true)"
    rep_all="$(perf report -i "$data" --kallsyms=/proc/kallsyms --children --sort sym --stdio -q -g none 2>/dev/null)"
    rep_ours=""
    [[ -z "$comms" ]] || rep_ours="$(perf report -i "$data" --kallsyms=/proc/kallsyms --children --comms "$comms" --sort sym --stdio -q -g none 2>/dev/null)"
    say "kernel paths, inclusive, µs per I/O (all tasks | our target's tasks: $comms):"
    for line in "${PATHS[@]}"; do
        read -r label sym <<<"$line"
        all="$(awk -v s="$sym" -v u="$per_io" '$NF == s { p = $1; sub(/%/, "", p); printf "%.1f", p * u / 100; exit }' <<<"$rep_all")"
        oursp="$(awk -v s="$sym" -v u="$per_io" '$NF == s { p = $1; sub(/%/, "", p); printf "%.1f", p * u / 100; exit }' <<<"$rep_ours")"
        say "  $(printf '%-22s %-34s %8s | %8s' "$label" "$sym" "${all:--}" "${oursp:--}")"
    done
    say "top symbols, self, all tasks:"
    perf report -i "$data" --kallsyms=/proc/kallsyms --no-children --sort comm,dso,sym --stdio -q -g none 2>/dev/null |
        sed -n 1,25p | tee -a "$OUT"
    say ""
}

environment
softroce_setup
setup_targets
read -r -a PLACES <<<"${SOFTROCE_PROFILE_PLACES:-free}"
for round in $(seq "${SOFTROCE_PROFILE_ROUNDS:-1}"); do
    for where in "${PLACES[@]}"; do
        for c in "${CASES[@]}"; do
            [[ $where == cross && ${c%%:*} != ours ]] && continue # a kernel target: as in "same"
            profile "${c%%:*}" "${c#*:}" "$where"
        done
    done
    sr_log "round $round done"
done
if [[ "${SOFTROCE_PROFILE_PERF:-0}" == 1 ]]; then
    cp /proc/kallsyms "$RESULTS/kallsyms"
    cp "$WORK"/*.data "$RESULTS/"
fi
nvmet_teardown
lio_teardown
bg_stop ours || sr_die "our target did not stop cleanly"
# The run with the median latency of the rounds, per target, fabric and placement.
say "## the run with the median latency per target, fabric and placement: mean latency µs, guest CPU µs per I/O, interrupts per I/O"
awk '$1 == "RESULT" { print $2, $3, $4, $6, $10, $14 }' "$OUT" | sort -k1,3 -k4,4n |
    awk '{ k = $1 " " $2 " " $3; n[k]++; lat[k, n[k]] = $4; cpu[k, n[k]] = $5; irq[k, n[k]] = $6 }
         END { for (k in n) { m = int((n[k] + 1) / 2)
               printf "  %-22s %6s %6s %6s (%d rounds)\n", k, lat[k, m], cpu[k, m], irq[k, m], n[k] } }' |
    sort | tee -a "$OUT"
