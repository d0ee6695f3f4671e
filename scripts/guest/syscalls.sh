#!/bin/bash
# System calls per command of our target over iSER, iSCSI/TCP and NVMe/TCP, counted in the
# SoftRoCE guest.
#
#   cargo build --release --bin iser-target
#   flock /work/wt/vm.lock scripts/softroce-vm.sh scripts/guest/syscalls.sh [IOS]
#
# Our target serves one 256 MiB tmpfs file (`backing: {type: file}`, write cache on, as in
# bench.sh); the kernel initiator logs in over each fabric in turn (SOFTROCE_BENCH_FABRICS,
# default "iser tcp nvme") and fio (libaio, O_DIRECT) issues a fixed number of I/Os (IOS,
# default 2000; a sequential run stops at the end of the file) per workload while
# `strace -c -f` counts every system call of every thread of the target. Printed per fabric
# and workload: each system call's count ÷ I/Os (those of at least 0.05), and the total;
# written to $SOFTROCE_RESULTS/syscalls.txt. strace slows the target down a lot, so at QD > 1
# more commands complete per wake-up than without it: read the QD1 counts as the per-command
# cost, the others as what batching makes of it. Each workload then runs once more without
# strace, and the target's user and system CPU time per I/O (utime and stime of all its
# threads, /proc) is printed beside the counts: system time is where rxe does its work for
# our posts. SOFTROCE_BENCH_BUSY_POLL_US sets `limits.busy_poll_us` (default 0).
set -euo pipefail
# shellcheck source=scripts/guest/lib.sh
source "$(dirname "$(readlink -f "$0")")/lib.sh"

IOS="${1:-2000}"
[[ "$IOS" =~ ^[1-9][0-9]*$ ]] || sr_die "usage: syscalls.sh [IOS]"
ADDR="$SOFTROCE_ADDR"
REPO="$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd -P)"
BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/iser-target"
WORK=/run/syscalls
IQN=iqn.2026-11.io.iser-target:syscalls
NQN=nqn.2026-11.io.iser-target:syscalls
PORT=3261
NVME_PORT=4421
RESULTS="${SOFTROCE_RESULTS:-/tmp}"
read -r -a FABRICS <<<"${SOFTROCE_BENCH_FABRICS:-iser tcp nvme}"
[[ -x "$BIN" ]] || sr_die "$BIN missing: run 'cargo build --release --bin iser-target' first"
command -v strace >/dev/null || sr_die "strace missing (apt-get install strace on the host)"

softroce_setup
nvme_host_setup
mkdir -p "$WORK"
dd if=/dev/zero of="$WORK/lun.img" bs=1M count=256 status=none
cat >"$WORK/ours.yaml" <<EOF
portals:
  - { address: $ADDR, port: $PORT, transport: iser }
  - { address: $ADDR, port: $PORT, transport: tcp }
  - { address: $ADDR, port: $NVME_PORT, transport: nvme-tcp }
targets:
  - name: $IQN
    nqn: $NQN
    luns:
      - { id: 0, write_cache: true, backing: { type: file, path: $WORK/lun.img } }
limits: { busy_poll_us: ${SOFTROCE_BENCH_BUSY_POLL_US:-0} }
EOF
bg_start ours "$BIN" serve --config "$WORK/ours.yaml"
wait_rdma_listen "$ADDR:$PORT" || sr_die "our target does not listen for iSER (see ours.log)"
wait_tcp_listen "$ADDR:$NVME_PORT" || sr_die "our target does not listen on NVMe/TCP (see ours.log)"

# count FABRIC DEV NAME FIO-ARGS...: strace the target across one fio run of IOS I/Os.
count() {
    local fabric="$1" dev="$2" name="$3" out="$RESULTS/strace-$1-$3.txt" spid ios="$IOS" bs
    shift 3
    bs="$(sed -n 's/.*--bs=\([0-9]*\)k.*/\1/p' <<<"$*")"
    ((ios <= 256 * 1024 / bs)) || ios=$((256 * 1024 / bs))
    strace -c -f -p "$SR_BG_ours" -o "$out" 2>/dev/null &
    spid=$!
    sleep 2 # strace attaches to every thread
    fio --name="$name" --filename="$dev" --direct=1 --ioengine=libaio --size=256M \
        --norandommap --number_ios="$ios" --output-format=terse "$@" >/dev/null 2>&1 ||
        sr_die "fio $name over $fabric failed"
    kill -INT "$spid"
    wait "$spid" || true
    # strace -c: "% time seconds usecs/call calls [errors] syscall"; the fourth field is the
    # count, the last word the name; the "total" line closes the table.
    awk -v ios="$ios" -v name="$fabric $name" '
        $1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" { n[$NF] = $4; total += $4 }
        END {
            printf "%-24s %6.2f syscalls/IO:", name, total / ios
            for (s in n) if (n[s] / ios >= 0.05) printf " %s %.2f", s, n[s] / ios
            printf "\n"
        }' "$out"
}

# cpu_ticks: utime and stime (clock ticks) of our target, all threads.
cpu_ticks() {
    local st
    read -r -a st <"/proc/$SR_BG_ours/stat"
    echo "${st[13]} ${st[14]}"
}

# cpu FABRIC DEV NAME FIO-ARGS...: the target's user and system CPU per I/O across one fio
# run of IOS I/Os without strace.
cpu() {
    local fabric="$1" dev="$2" name="$3" ios="$IOS" bs u0 s0 u1 s1 hz
    shift 3
    bs="$(sed -n 's/.*--bs=\([0-9]*\)k.*/\1/p' <<<"$*")"
    ((ios <= 256 * 1024 / bs)) || ios=$((256 * 1024 / bs))
    hz="$(getconf CLK_TCK)"
    read -r u0 s0 < <(cpu_ticks)
    fio --name="$name" --filename="$dev" --direct=1 --ioengine=libaio --size=256M \
        --norandommap --number_ios="$ios" --output-format=terse "$@" >/dev/null 2>&1 ||
        sr_die "fio $name over $fabric failed"
    read -r u1 s1 < <(cpu_ticks)
    printf '%-24s cpu: user %d µs/IO, system %d µs/IO\n' "$fabric $name" \
        $(((u1 - u0) * 1000000 / hz / ios)) $(((s1 - s0) * 1000000 / hz / ios))
}

# fabric FABRIC: attach over FABRIC, count every workload, detach.
fabric() {
    local f="$1" dev
    if [[ $f == nvme ]]; then
        nvme connect -t tcp -a "$ADDR" -s "$NVME_PORT" -n "$NQN" >/dev/null || sr_die "nvme connect failed"
        dev="$(nvme_wait_ns "$NQN" 60)" || sr_die "no namespace over NVMe/TCP"
    else
        iscsi_login "$ADDR" "$IQN" "$f" "$PORT" >/dev/null || sr_die "login over $f failed"
        dev="$(find_new_disk 60)" || sr_die "no disk over $f"
    fi
    local w
    for w in "randread-4k-qd1 --rw=randread --bs=4k --iodepth=1" \
        "randwrite-4k-qd1 --rw=randwrite --bs=4k --iodepth=1" \
        "randread-4k-qd32 --rw=randread --bs=4k --iodepth=32" \
        "randwrite-4k-qd32 --rw=randwrite --bs=4k --iodepth=32" \
        "read-128k-qd8 --rw=read --bs=128k --iodepth=8" \
        "write-128k-qd8 --rw=write --bs=128k --iodepth=8"; do
        # shellcheck disable=SC2086  # name and fio arguments are words
        count "$f" "$dev" $w
        # shellcheck disable=SC2086
        cpu "$f" "$dev" $w
    done
    if [[ $f == nvme ]]; then
        nvme_disconnect "$NQN" || sr_die "nvme disconnect failed"
    else
        iscsi_logout "$IQN" "$ADDR" "$PORT" >/dev/null || sr_die "logout over $f failed"
    fi
}

{
    echo "# system calls of our target per I/O ($IOS I/Os per workload, busy_poll_us ${SOFTROCE_BENCH_BUSY_POLL_US:-0})"
    for f in "${FABRICS[@]}"; do fabric "$f"; done
} | tee "$RESULTS/syscalls.txt"
bg_stop ours
