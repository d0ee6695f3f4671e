#!/usr/bin/env bash
# Measure the conformance baseline of Debian's tgt (the bar iser-target must
# meet): start a private tgtd on 127.0.0.1, export a tmpfs-backed LUN ("ram")
# and a disk-file LUN ("file"), run scripts/conformance.sh on each, stop tgtd.
#
# Usage: scripts/tgt-baseline.sh [OUTPUT_DIR]     (default build/tgt-baseline)
# Env:   TGT_PORT (3270), TGT_CONTROL_PORT (27), TGT_LUN_SIZE (1G),
#        TGT_FILE_DIR (/var/tmp), TGT_LUNS ("ram file")
#
# tgt has no real RAM backing store (bs "null" discards data, so the
# read-after-write tests would fail); "ram" is bs rdwr on a file in /dev/shm.
# Needs root (tgtd). Installs tgt and libiscsi-bin with apt-get if missing.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-build/tgt-baseline}
port=${TGT_PORT:-3270}
cport=${TGT_CONTROL_PORT:-27}
size=${TGT_LUN_SIZE:-1G}
file_dir=${TGT_FILE_DIR:-/var/tmp}
luns=${TGT_LUNS:-ram file}
iqn=iqn.2026-11.io.iser-target:tgt-baseline

if ! command -v tgtd >/dev/null || ! command -v iscsi-test-cu >/dev/null; then
    echo "tgt-baseline.sh: installing tgt and libiscsi-bin" >&2
    # Wait for the dpkg lock rather than fail if another install is running.
    apt-get -o DPkg::Lock::Timeout=300 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 \
        install -y -qq --no-install-recommends tgt libiscsi-bin >/dev/null
fi

mkdir -p "$out"
out=$(cd "$out" && pwd)
ram_img=/dev/shm/tgt-baseline-$$.img
file_img=$file_dir/tgt-baseline-$$.img
tgt_pid=

# shellcheck source=scripts/tgtd.sh
source "$here/tgtd.sh"

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    tgtd_stop "$tgt_pid" "$cport"
    rm -f "$ram_img" "$file_img"
}
trap cleanup EXIT

tgtadm_() { tgtadm -C "$cport" --lld iscsi "$@"; }

portal_up() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; }
if portal_up; then
    echo "tgt-baseline.sh: something already listens on 127.0.0.1:$port (set TGT_PORT)" >&2
    exit 1
fi
tgtd -f -C "$cport" --iscsi "portal=127.0.0.1:$port" > "$out/tgtd.log" 2>&1 &
tgt_pid=$!
for _ in $(seq 100); do
    if portal_up; then break; fi
    kill -0 "$tgt_pid" 2>/dev/null || { cat "$out/tgtd.log" >&2; exit 1; }
    sleep 0.1
done

tgtadm_ --mode target --op new --tid 1 --targetname "$iqn"
tgtadm_ --mode target --op bind --tid 1 --initiator-address ALL
# tgt's LUN 0 is its own controller LU, so data LUNs start at 1.
lun=0
declare -A lun_of
for kind in $luns; do
    lun=$((lun + 1))
    case $kind in
        ram) img=$ram_img ;;
        file) img=$file_img ;;
        *) echo "tgt-baseline.sh: unknown LUN kind $kind" >&2; exit 1 ;;
    esac
    truncate -s "$size" "$img"
    tgtadm_ --mode logicalunit --op new --tid 1 --lun "$lun" --backing-store "$img" --bstype rdwr
    lun_of[$kind]=$lun
done

rc=0
for kind in $luns; do
    url=iscsi://127.0.0.1:$port/$iqn/${lun_of[$kind]}
    "$here/conformance.sh" "$url" "$out/$kind" || rc=$?
    if ! kill -0 "$tgt_pid" 2>/dev/null; then
        echo "tgt-baseline.sh: tgtd died during the $kind run" >&2
        rc=3
        break
    fi
done

{
    echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "tgt=$(dpkg-query -W -f='${Version}' tgt 2>/dev/null || tgtd -V)"
    echo "libiscsi=$(dpkg-query -W -f='${Version}' libiscsi-bin 2>/dev/null || echo unknown)"
    for kind in $luns; do
        [[ -f $out/$kind/summary.txt ]] || continue
        grep -E '^(status|passed|failed|skipped|duration_s)=' "$out/$kind/summary.txt" | sed "s/^/$kind./"
    done
} > "$out/baseline.txt"
echo "== tgt baseline ($out/baseline.txt)"
cat "$out/baseline.txt"
exit "$rc"
