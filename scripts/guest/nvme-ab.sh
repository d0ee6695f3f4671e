#!/bin/bash
# A/B of two builds of our target over NVMe/TCP, beside the kernel's nvmet-tcp, in one guest boot:
#
#   cp target/release/iser-target /tmp/before   # build, copy, change, build again
#   SOFTROCE_NVME_AB_A=/tmp/before SOFTROCE_NVME_AB_B=target/release/iser-target \
#       SOFTROCE_NVME_AB_ROUNDS=5 SOFTROCE_NVME_AB_SECONDS=4 \
#       scripts/softroce-vm.sh scripts/guest/nvme-ab.sh
#
# A (port 4421), B (port 4423) and nvmet-tcp (4420, file backend, buffered_io) export the same
# 256 MiB tmpfs file. Each round connects the kernel's nvme-tcp host to A, B and nvmet in turn and
# runs fio (libaio, O_DIRECT) on each workload of SOFTROCE_NVME_AB_WORKLOADS (default
# "w128k qd1"; of w128k and r128k, 128 KiB sequential write and read QD8, and qd1, 4 KiB random
# read QD1) for SECONDS each. One line per run: "RESULT round target workload MiB/s-or-µs
# cpu_us_per_io" (guest busy jiffies of all CPUs across the run ÷ I/Os), then the median run per
# target and workload. A path relative to the repository is taken from there.
set -euo pipefail
# shellcheck source=scripts/guest/lib.sh
source "$(dirname "$(readlink -f "$0")")/lib.sh"
REPO="$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd -P)"
ROUNDS="${SOFTROCE_NVME_AB_ROUNDS:-3}"
SECS="${SOFTROCE_NVME_AB_SECONDS:-4}"
read -r -a WORKLOADS <<<"${SOFTROCE_NVME_AB_WORKLOADS:-w128k qd1}"
bin() { [[ "$1" == /* ]] && echo "$1" || echo "$REPO/$1"; }
A="$(bin "${SOFTROCE_NVME_AB_A:?path of build A}")"
B="$(bin "${SOFTROCE_NVME_AB_B:?path of build B}")"
ADDR="$SOFTROCE_ADDR"
WORK=/run/nvme-ab
NQN=nqn.2026-11.io.iser-target:ab
declare -A PORT=([a]=4421 [b]=4423 [nvmet]=4420) NQNS=([a]=$NQN [b]=$NQN [nvmet]=$NQN-nvmet)
mkdir -p "$WORK"
dd if=/dev/zero of="$WORK/lun.img" bs=1M count=256 status=none
softroce_setup
for t in a b; do
    cat >"$WORK/$t.yaml" <<Y
portals:
  - { address: $ADDR, port: ${PORT[$t]}, transport: nvme-tcp }
targets:
  - name: iqn.2026-11.io.iser-target:ab
    nqn: $NQN
    luns:
      - { id: 0, write_cache: true, backing: { type: file, path: $WORK/lun.img } }
Y
done
bg_start a "$A" serve --config "$WORK/a.yaml"
bg_start b "$B" serve --config "$WORK/b.yaml"
wait_tcp_listen "$ADDR:${PORT[a]}" || sr_die "A does not listen"
wait_tcp_listen "$ADDR:${PORT[b]}" || sr_die "B does not listen"
nvme_host_setup
nvmet_setup "$ADDR" "${PORT[nvmet]}" "${NQNS[nvmet]}" "$WORK/lun.img" 1 || sr_die "nvmet did not start"

busy() {
    local _c u n s _i _w irq sirq st _r
    read -r _c u n s _i _w irq sirq st _r </proc/stat
    echo $((u + n + s + irq + sirq + st))
}
HZ="$(getconf CLK_TCK)"
# run DEV WORKLOAD: one fio run; prints "figure cpu_us_per_io".
run() {
    local dev="$1" args b0 b1 out
    case "$2" in
        w128k) args=(--rw=write --bs=128k --iodepth=8) ;;
        r128k) args=(--rw=read --bs=128k --iodepth=8) ;;
        qd1) args=(--rw=randread --bs=4k --iodepth=1) ;;
        *) sr_die "unknown workload $2" ;;
    esac
    b0="$(busy)"
    out="$(fio --name=ab --filename="$dev" --direct=1 --ioengine=libaio --runtime="$SECS" \
        --time_based --size=256M --norandommap "${args[@]}" --output-format=terse --terse-version=3)"
    b1="$(busy)"
    # terse v3: field 6 read KiB, 7 read KiB/s, 40 read mean latency (µs); 47/48 write.
    awk -F';' -v w="$2" -v busy=$((b1 - b0)) -v hz="$HZ" '{
        if (w == "w128k") { ios = $47 / 128; fig = $48 / 1024 }
        else if (w == "r128k") { ios = $6 / 128; fig = $7 / 1024 }
        else { ios = $6 / 4; fig = $40 }
        printf "%.1f %.0f\n", fig, busy * 1e6 / hz / ios }' <<<"$out"
}
RESULTS="$SOFTROCE_RESULTS/nvme-ab.txt"
: >"$RESULTS"
for r in $(seq "$ROUNDS"); do
    for t in a b nvmet; do
        nvme connect -t tcp -a "$ADDR" -s "${PORT[$t]}" -n "${NQNS[$t]}" >/dev/null || sr_die "$t: connect"
        dev="$(nvme_wait_ns "${NQNS[$t]}" 60)" || sr_die "$t: no namespace"
        for w in "${WORKLOADS[@]}"; do
            echo "RESULT $r $t $w $(run "$dev" "$w")" | tee -a "$RESULTS"
        done
        nvme_disconnect "${NQNS[$t]}" || sr_die "$t: disconnect"
    done
done
nvmet_teardown
bg_stop a || sr_die "A did not stop cleanly"
bg_stop b || sr_die "B did not stop cleanly"
echo "medians (MiB/s for w128k and r128k, mean µs for qd1; CPU µs per I/O of that run):"
for t in a b nvmet; do
    for w in "${WORKLOADS[@]}"; do
        awk -v t="$t" -v w="$w" '$3 == t && $4 == w { print $5, $6 }' "$RESULTS" |
            sort -n | awk -v t="$t" -v w="$w" '{ f[NR] = $1; c[NR] = $2 }
                END { m = int((NR + 1) / 2); printf "%-6s %-6s %8s %8s\n", t, w, f[m], c[m] }'
    done
done
