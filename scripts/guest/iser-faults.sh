#!/bin/bash
# `A && pass || fail` is fine in this file: pass never fails.
# shellcheck disable=SC2015
# Faults a real initiator and a hostile peer reach over iSER, in the SoftRoCE guest:
#   - ABORT TASK for a command stuck in the backend (a suspended device-mapper LUN, SCSI
#     timeout 2 s) while fio writes 1 MiB blocks to another LUN of the session: the TMF
#     Response must not stall behind the RDMA Reads of the writes that keep coming (Linux
#     aborts timed-out commands while other I/O goes on);
#   - LU reset and target reset (sg_reset) while fio writes 1 MiB blocks;
#   - a peer offering no RDMA Read resources is rejected with a log line;
#   - a peer that breaks its QP (RDMA Write with a bogus rkey) is disconnected at once,
#     not left as a zombie until the login timeout;
#   - 200 connections that never log in, from a second address: the per-source cap refuses all
#     but 64, those cost little memory, and a real login from the first address works.
# The hostile peers are rdma-ffi's `iser-peer` example.
#
# On the host (builds target/release/iser-target and the example, then boots the guest):
#     scripts/guest/iser-faults.sh
# Inside the guest:
#     scripts/softroce-vm.sh scripts/guest/iser-faults.sh
# Prints one PASS:/FAIL: line per check; exits 1 if any check failed.
set -uo pipefail
# shellcheck source=scripts/guest/entry.sh
source "$(dirname "${BASH_SOURCE[0]}")/entry.sh" \
    "cargo build --release --bin iser-target" "cargo build -p rdma-ffi --example iser-peer"

# Guest side.
# ISER_FAULTS_BIN runs another build instead (e.g. an older commit's, to see what fails there;
# pass it into the guest with SOFTROCE_VM_ENV=ISER_FAULTS_BIN).
BIN="${ISER_FAULTS_BIN:-$TARGET_DIR/release/iser-target}"
PEER="$TARGET_DIR/debug/examples/iser-peer"
ADDR="$SOFTROCE_ADDR"
PORT="$SOFTROCE_ISCSI_PORT"
T_RAM=iqn.2026-11.io.iser-target:ram
T_SLOW=iqn.2026-11.io.iser-target:slow
WORK=/run/iser-faults
RESULTS="${SOFTROCE_RESULTS:-/tmp}"
LOG="$RESULTS/iser-faults-target.log"
[[ -x "$BIN" ]] || sr_die "$BIN missing: run 'cargo build --release' on the host first"
[[ -x "$PEER" ]] || sr_die "$PEER missing: run 'cargo build -p rdma-ffi --example iser-peer' first"

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$TARGET_PID/status"; }
disk_of() {
    local end=$((SECONDS + 60)) d
    while ((SECONDS < end)); do
        d="$(session_disk "$1" | head -n1)"
        if [[ -n "$d" && -b "$d" ]] && (($(cat "/sys/block/${d#/dev/}/size") > 0)); then
            echo "$d"; return 0
        fi
        sleep 0.2
    done
    return 1
}
login_ram() {
    iser_login "$ADDR" "$T_RAM" >/dev/null && disk_of "$T_RAM" >/dev/null
}
connections_accepted() { grep -c "iSER connection from" "$LOG"; }
conn_errors() { dmesg | grep -c "detected conn error"; }

softroce_setup
mkdir -p "$WORK"
# LUN 1 of $T_SLOW: a device-mapper linear device over a loop device, which the test suspends
# to keep one command in the backend.
sr_modprobe loop dm_mod
truncate -s 64M "$WORK/slow.img"
LOOP="$(losetup --find --show "$WORK/slow.img")" || sr_die "losetup failed"
dmsetup create iser-slow --table "0 $((64 << 11)) linear $LOOP 0" || sr_die "dmsetup create failed"
# No udev in the guest: use the kernel's name (devtmpfs), not /dev/mapper.
SLOW_DEV="/dev/$(dmsetup info -c --noheadings -o blkdevname iser-slow)"
[[ -b "$SLOW_DEV" ]] || sr_die "no block device for iser-slow ($SLOW_DEV)"
# A long login timeout: a hostile peer's connection must end because its QP broke, not because
# it never logged in.
cat >"$WORK/config.yaml" <<EOF
portals:
  - address: $ADDR
    transport: iser
limits:
  login_timeout_secs: 600
targets:
  - name: $T_RAM
    luns:
      - backing: {type: ram, size: 512M}
  - name: $T_SLOW
    luns:
      - id: 0
        backing: {type: ram, size: 256M}
      - id: 1
        backing: {type: block, path: $SLOW_DEV}
        write_cache: false
EOF
: >"$LOG"
export RUST_LOG="${RUST_LOG:-info,iser_target::iscsi::iser=debug}"
"$BIN" serve --config "$WORK/config.yaml" >>"$LOG" 2>&1 &
TARGET_PID=$!
check "target starts" wait_rdma_listen "$ADDR:$PORT" 30

# ------------------------------------------------ responder_resources 0
out="$("$PEER" zero-resources "$ADDR" "$PORT" 2>&1)"
printf '%s\n' "$out" >&2
grep -q '^PASS' <<<"$out" && grep -q "no RDMA Read resources" "$LOG" \
    && pass "a connect request with responder_resources 0 is rejected, with a log line" \
    || fail "responder_resources 0"

# ------------------------------------------------------ QP put in error
out="$(timeout 60 "$PEER" bad-write "$ADDR" "$PORT" 2>&1)"
printf '%s\n' "$out" >&2
grep -q '^PASS' <<<"$out" \
    && pass "a peer whose RDMA Write breaks the QP is disconnected ($(grep -o 'disconnected [0-9.]* s' <<<"$out"))" \
    || fail "QP error: the target did not disconnect the broken connection"

# ------------------------------------- ABORT TASK while other writes go on
# disk_by_size IQN MiB: the session's disk of that size.
disk_by_size() {
    local d
    for d in $(session_disk "$1"); do
        (($(cat "/sys/block/${d#/dev/}/size") == $2 * 2048)) && { echo "$d"; return 0; }
    done
    return 1
}
abort_under_load() {
    iser_login "$ADDR" "$T_SLOW" >/dev/null || return 1
    sr_wait 60 disk_by_size "$T_SLOW" 256 && sr_wait 60 disk_by_size "$T_SLOW" 64 || return 1
    local fast slow held0 errors0 conns0 f d rc=0
    fast="$(disk_by_size "$T_SLOW" 256)"
    slow="$(disk_by_size "$T_SLOW" 64)"
    echo 2 >"/sys/block/${slow#/dev/}/device/timeout"
    held0="$(grep -c "Response held behind" "$LOG")"
    errors0="$(conn_errors)"
    conns0="$(connections_accepted)"
    fio --name=abort --filename="$fast" --direct=1 --ioengine=libaio --rw=randwrite --bs=1m \
        --iodepth=16 --size=256M --verify=crc32c --do_verify=1 --verify_fatal=1 \
        --output-format=terse >"$RESULTS/abort-fio.log" 2>&1 &
    f=$!
    sleep 4
    dmsetup suspend iser-slow
    # Stuck in the target's backend: times out at the initiator after 2 s -> ABORT TASK.
    dd if=/dev/urandom of="$slow" bs=4k count=1 oflag=direct status=none &
    d=$!
    sleep 8
    dmsetup resume iser-slow
    wait "$d" || { sr_log "dd to the stalled LUN failed"; rc=1; }
    wait "$f" || { sr_log "fio failed:"; tail -3 "$RESULTS/abort-fio.log" >&2; rc=1; }
    dmesg | grep -iE "abort|timing out|conn error" | tail -5 >&2
    sr_log "TMF/Logout Responses held behind RDMA Reads so far: $(grep -c "Response held behind" "$LOG") (before: $held0)"
    if [[ "$(conn_errors)" != "$errors0" || "$(connections_accepted)" != "$conns0" ]]; then
        sr_log "the connection failed and logged in again"
        rc=1
    fi
    iscsi_logout "$T_SLOW" "$ADDR" >/dev/null || rc=1
    return "$rc"
}
check "ABORT TASK of a stalled command while 1 MiB writes go on: fio verify passes, the connection survives" \
    abort_under_load

# ------------------------------------------------- TMF under write load
check "login over iSER" login_ram
DISK="$(disk_of "$T_RAM")"
before_conns="$(connections_accepted)"
before_errors="$(conn_errors)"
fio --name=tmf --filename="$DISK" --direct=1 --ioengine=libaio --rw=randwrite --bs=1m \
    --iodepth=16 --size=256M --verify=crc32c --do_verify=1 --verify_fatal=1 \
    --output-format=terse >"$RESULTS/tmf-fio.log" 2>&1 &
f=$!
sleep 4
check "sg_reset --device (LU reset) during 1 MiB writes" sg_reset --device "$DISK"
sleep 3
check "sg_reset --target during 1 MiB writes" sg_reset --target "$DISK"
rc=0
wait "$f" || rc=$?
[[ $rc == 0 ]] && pass "fio with crc32c verify finishes across both resets" \
    || { fail "fio across the resets (status $rc)"; tail -5 "$RESULTS/tmf-fio.log" >&2; }
[[ "$(conn_errors)" == "$before_errors" && "$(connections_accepted)" == "$before_conns" ]] \
    && pass "the connection survived the resets (no connection error, no re-login)" \
    || { fail "the connection failed during the resets"; dmesg | grep -E "conn error|iser" | tail -5 >&2; }
check "verify_disk after the resets" verify_disk "$DISK" 8
check "logout" iscsi_logout "$T_RAM" "$ADDR"

# ------------------------------------------ 200 connections that never log in
# From a second address of the guest, as a hostile host would be: the per-source cap
# (limits.max_connections_per_source, 64 by default) refuses what is beyond it, and the real
# initiator on $ADDR is not held back by them.
COUNT=200
CAP=64
HOSTILE=192.168.77.2
ip addr add "$HOSTILE/24" dev "$SOFTROCE_NETDEV" || sr_die "cannot add $HOSTILE to $SOFTROCE_NETDEV"
rss0="$(rss_kib)"
mkfifo "$WORK/hold.in"
"$PEER" hold "$ADDR" "$PORT" "$COUNT" "$HOSTILE" <"$WORK/hold.in" >"$RESULTS/hold.log" 2>&1 &
h=$!
exec 7>"$WORK/hold.in"
if sr_wait 300 grep -q "^HOLDING " "$RESULTS/hold.log"; then
    read -r _ held _ refused < <(grep "^HOLDING " "$RESULTS/hold.log")
    ((held == CAP && refused == COUNT - CAP)) \
        && pass "$COUNT connections that never log in from one host: $held accepted, $refused refused by the per-source cap" \
        || fail "$COUNT connections from one host: $held accepted, $refused refused (want $CAP and $((COUNT - CAP)))"
    sleep 2
    rss1="$(rss_kib)"
    per=$(((rss1 - rss0) / (held > 0 ? held : 1)))
    sr_log "target RSS $rss0 KiB -> $rss1 KiB with $held idle connections: ${per} KiB each"
    ((per < 512)) && pass "memory per connection that has not logged in: ${per} KiB (< 512 KiB)" \
        || fail "memory per connection that has not logged in: ${per} KiB"
    check "a real open-iscsi login works beside them" login_ram
    check "verify_disk beside them" verify_disk "$(disk_of "$T_RAM")" 8
    check "logout beside them" iscsi_logout "$T_RAM" "$ADDR"
else
    fail "$COUNT idle connections: $(tail -2 "$RESULTS/hold.log")"
fi
exec 7>&-
wait "$h"
grep -E '^(PASS|FAIL)|CM event' "$RESULTS/hold.log" >&2

# ---------------------------------------------------------------- finish
dmsetup remove iser-slow
losetup -d "$LOOP"
kill -0 "$TARGET_PID" 2>/dev/null && pass "target still running" || fail "target died"
kill -TERM "$TARGET_PID"
rc=0
wait "$TARGET_PID" || rc=$?
[[ $rc == 0 ]] && pass "target exits 0 on SIGTERM" || fail "target exit status $rc"
bad="$(dmesg | grep -E 'BUG:|WARNING:|Oops|general protection|Call Trace|wrong datalen|unexpected remote invalidation|RNR retry' || true)"
[[ -z "$bad" ]] && pass "no kernel BUG/WARNING/RNR/framing messages" \
    || { fail "kernel messages:"; printf '%s\n' "$bad"; }
grep -E 'ERROR|WARN' "$LOG" | tail -20 >&2
sr_checks_done iser-faults
