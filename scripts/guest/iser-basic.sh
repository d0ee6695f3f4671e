#!/bin/bash
# `A && pass || fail` is fine in this file: pass never fails.
# shellcheck disable=SC2015
# iSER end-to-end test of our target against the Linux kernel initiator
# (open-iscsi + ib_iser) and libiscsi, in the SoftRoCE guest.
#
# On the host (builds target/release/iser-target, then boots the guest):
#     scripts/guest/iser-basic.sh
# Inside the guest (what the harness runs):
#     scripts/softroce-vm.sh scripts/guest/iser-basic.sh
#
# SOFTROCE_ISER_STAGES (default "all") may name a subset, space-separated:
#     login io fs multi large sg libiscsi faults (= kill devdel) cli
# SOFTROCE_ISER_TARGET=lio runs the same checks against LIO ib_isert (the
# reference, configured through configfs with the same two targets) instead of
# our binary (default "ours"); checks that only make sense for our binary
# print "SKIP: NAME (our binary only)".
# Prints one PASS:/FAIL:/SKIP: line per check; exits 1 if any check failed.
set -uo pipefail
# shellcheck source=scripts/guest/entry.sh
source "$(dirname "${BASH_SOURCE[0]}")/entry.sh" "cargo build --release --bin iser-target"

# Guest side.
BIN="$TARGET_DIR/release/iser-target"
ADDR="$SOFTROCE_ADDR"
PORT="$SOFTROCE_ISCSI_PORT"
T_RAM=iqn.2026-11.io.iser-target:ram
T_FILE=iqn.2026-11.io.iser-target:file
WORK=/run/iser-test
RESULTS="${SOFTROCE_RESULTS:-/tmp}"
STAGES=" ${SOFTROCE_ISER_STAGES:-all} "
TARGET_PID=
MODE="${SOFTROCE_ISER_TARGET:-ours}"
[[ "$MODE" == ours || "$MODE" == lio ]] || sr_die "SOFTROCE_ISER_TARGET must be ours or lio, not '$MODE'"

want() { [[ "$STAGES" == *" all "* || "$STAGES" == *" $1 "* ]]; }
skip_ours() { echo "SKIP: $* (our binary only)"; }
is_lio() { [[ "$MODE" == lio ]]; }

start_target() {
    if is_lio; then
        start_lio
    else
        start_ours
    fi
}
start_ours() {
    "$BIN" serve --config "$WORK/config.yaml" >>"$RESULTS/iser-target.log" 2>&1 &
    TARGET_PID=$!
    sr_log "iser-target started (pid $TARGET_PID, log $RESULTS/iser-target.log)"
    wait_rdma_listen "$ADDR:$PORT" 30 && wait_tcp_listen "$ADDR:$PORT" 30
}
# LIO: the same two targets on $ADDR:$PORT (TCP + iSER), demo mode. The RAM
# target is fileio on tmpfs with UNMAP/WRITE SAME(UNMAP) enabled (thin like our
# RAM LUN; rd_mcp cannot UNMAP); the file target is fileio, write cache off.
start_lio() {
    lio_teardown
    lio_setup_isert "$ADDR" "$T_RAM" 256 fileio "$PORT" ram \
        && lio_setup_isert "$ADDR" "$T_FILE" 128 fileio "$PORT" file || return 1
    local core="$CONFIGFS_TARGET/core/fileio_0"
    echo 1 >"$core/ram/attrib/emulate_tpu" || sr_log "LIO: cannot set emulate_tpu on ram"
    echo 1 >"$core/ram/attrib/emulate_tpws" || sr_log "LIO: cannot set emulate_tpws on ram"
    echo 0 >"$core/file/attrib/emulate_write_cache" || sr_log "LIO: cannot clear emulate_write_cache"
    sr_log "LIO file LUN emulate_write_cache=$(cat "$core/file/attrib/emulate_write_cache")"
    wait_rdma_listen "$ADDR:$PORT" 30 && wait_tcp_listen "$ADDR:$PORT" 30
}
# target_alive: our process is alive; for LIO, both targets are still
# configured and enabled and the portal still takes a (discovery) login.
target_alive() {
    if is_lio; then
        local t
        for t in "$T_RAM" "$T_FILE"; do
            [[ "$(cat "$CONFIGFS_TARGET/iscsi/$t/tpgt_1/enable" 2>/dev/null)" == 1 ]] || return 1
        done
        iscsi-ls -i iqn.2026-11.io.iser-target:alive-probe "iscsi://$ADDR:$PORT" 2>/dev/null | grep -q "$T_RAM"
    else
        kill -0 "$TARGET_PID" 2>/dev/null
    fi
}

# disk_of IQN: wait for the session's disk and print its /dev path.
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
size_mib() { echo $(($(cat "/sys/block/${1#/dev/}/size") / 2048)); }

login_iser() {
    iser_login "$ADDR" "$1" >/dev/null || { diagnose "iscsiadm login to $1 failed"; return 1; }
    [[ "$(session_transport "$1")" == iser ]] || { diagnose "session to $1 is not iser"; return 1; }
    disk_of "$1" >/dev/null || { diagnose "no disk for $1"; return 1; }
}
diagnose() {
    sr_log "$*; session state and kernel log:"
    iscsiadm -m session -P 3 2>&1 | grep -E 'Target:|State|Attached|Transport' >&2
    dmesg | tail -25 >&2
}
logout_one() { iscsi_logout "$1" "$ADDR" >/dev/null; }

fio_write_then_verify() {  # DEV SIZE BS QD
    local common=(--filename="$1" --direct=1 --ioengine=libaio --rw=randwrite --bs="$3"
        --iodepth="$4" --size="$2" --verify=crc32c --randseed=1234 --output-format=terse)
    fio --name=write "${common[@]}" --do_verify=0 >/dev/null \
        && fio --name=verify "${common[@]}" --verify_only=1 --verify_fatal=1 >/dev/null
}

# ------------------------------------------------------------------ setup
softroce_setup
mkdir -p "$WORK"
cat >"$WORK/config.yaml" <<EOF
portals:
  - address: $ADDR
    transport: iser
  - address: $ADDR
    transport: tcp
targets:
  - name: $T_RAM
    luns:
      - backing: {type: ram, size: 256M}
  - name: $T_FILE
    luns:
      - backing: {type: file, path: $WORK/file-lun.img, size: 128M, create: true}
        write_cache: false
EOF
: >"$RESULTS/iser-target.log"
sr_log "target under test: $MODE"
export RUST_LOG="${RUST_LOG:-info}"
check "target starts with an iser and a tcp portal on $ADDR:$PORT" start_target
target_alive || { fail "target died at start"; tail -20 "$RESULTS/iser-target.log"; exit 1; }

# ------------------------------------------------------------------ login
if want login; then
    disc="$(iscsi_discover "$ADDR" iser 2>&1)"
    printf '%s\n' "$disc" >&2
    if grep -q " $T_RAM\$" <<<"$disc" && grep -q " $T_FILE\$" <<<"$disc"; then
        pass "SendTargets discovery over iSER lists both targets"
    else
        fail "SendTargets discovery over iSER"
    fi
    iscsiadm -m node -o delete >/dev/null 2>&1 || true
    check "login over iSER to $T_RAM" login_iser "$T_RAM"
    RAM_DISK="$(disk_of "$T_RAM")"
    [[ -n "$RAM_DISK" && "$(size_mib "$RAM_DISK")" == 256 ]] \
        && pass "RAM LUN is $RAM_DISK, 256 MiB" || fail "RAM LUN size ($RAM_DISK)"
    check "verify_disk 16 MiB O_DIRECT over iSER" verify_disk "$RAM_DISK" 16
fi
RAM_DISK="$(session_disk "$T_RAM" | head -n1)"
if [[ -z "$RAM_DISK" ]]; then
    login_iser "$T_RAM" || fail "login to $T_RAM"
    RAM_DISK="$(disk_of "$T_RAM")"
fi

# --------------------------------------------------------------------- io
if want io; then
    check "fio randwrite 64 MiB bs=64k qd=16 + crc32c read-back verify" \
        fio_write_then_verify "$RAM_DISK" 64M 64k 16
    check "fio randwrite 16 MiB bs=4k qd=32 + verify" fio_write_then_verify "$RAM_DISK" 16M 4k 32
fi

# --------------------------------------------------------------------- fs
fs_round() {
    local disk
    disk="$(disk_of "$T_FILE")" || return 1
    mkfs.ext4 -q -F "$disk" || return 1
    mkdir -p "$WORK/mnt"
    mount "$disk" "$WORK/mnt" || return 1
    for i in 1 2 3 4; do head -c $((i * 3 << 20)) /dev/urandom >"$WORK/mnt/f$i"; done
    (cd "$WORK/mnt" && sha256sum f*) >"$WORK/sums"
    sync
    umount "$WORK/mnt" || return 1
    fsck.ext4 -fn "$disk" >/dev/null 2>&1
}
fs_check_again() {
    local disk
    disk="$(disk_of "$T_FILE")" || return 1
    mount "$disk" "$WORK/mnt" || return 1
    (cd "$WORK/mnt" && sha256sum -c --quiet "$WORK/sums")
    local rc=$?
    umount "$WORK/mnt"
    return $rc
}
if want fs; then
    check "login over iSER to $T_FILE" login_iser "$T_FILE"
    check "mkfs.ext4 + mount + write 30 MiB of files + sync + umount + fsck -fn" fs_round
    check "logout of $T_FILE" logout_one "$T_FILE"
    check "login again to $T_FILE" login_iser "$T_FILE"
    check "files still intact after logout/login (file LUN)" fs_check_again
fi

# ------------------------------------------------------------------ multi
if want multi; then
    session_disk "$T_FILE" | grep -q . || login_iser "$T_FILE" || fail "login to $T_FILE"
    n="$(iscsiadm -m session 2>/dev/null | grep -c '^iser:')"
    [[ "$n" == 2 ]] && pass "two iSER sessions at once" || fail "expected 2 iSER sessions, have $n"
    FILE_DISK="$(disk_of "$T_FILE")"
    fio_write_then_verify "$RAM_DISK" 32M 16k 16 &
    a=$!
    fio_write_then_verify "$FILE_DISK" 32M 16k 16 &
    b=$!
    wait $a && wait $b && pass "fio verify on both sessions concurrently" \
        || fail "fio verify on both sessions concurrently"
    logout_one "$T_FILE" || fail "logout of $T_FILE"
fi

# ------------------------------------------------------------------ large
if want large; then
    sr_log "max_sectors_kb of $RAM_DISK: $(cat "/sys/block/${RAM_DISK#/dev/}/queue/max_sectors_kb")"
    check "fio bs=1m direct randwrite 64 MiB + verify" fio_write_then_verify "$RAM_DISK" 64M 1m 4
    check "fio bs=4m direct randwrite 64 MiB + verify" fio_write_then_verify "$RAM_DISK" 64M 4m 4
    check "fio bs=4m sequential read 128 MiB" fio --name=seqread --filename="$RAM_DISK" \
        --direct=1 --ioengine=libaio --rw=read --bs=4m --iodepth=4 --size=128M --output-format=terse
fi

# --------------------------------------------------------------------- sg
cw_test() {  # COMPARE AND WRITE: match then miscompare
    local dev="$1" bs
    bs="$(cat "/sys/block/${dev#/dev/}/queue/logical_block_size")"
    dd if="$dev" of="$WORK/old.bin" bs="$bs" skip=100 count=1 iflag=direct status=none || return 1
    head -c "$bs" /dev/urandom >"$WORK/new.bin"
    cat "$WORK/old.bin" "$WORK/new.bin" >"$WORK/cw.bin"
    sg_compare_and_write --in="$WORK/cw.bin" --lba=100 --num=1 --xferlen=$((2 * bs)) "$dev" || return 1
    dd if="$dev" of="$WORK/now.bin" bs="$bs" skip=100 count=1 iflag=direct status=none || return 1
    cmp -s "$WORK/new.bin" "$WORK/now.bin" || { sr_log "COMPARE AND WRITE did not write"; return 1; }
    # Now the compare half is stale: must report MISCOMPARE (exit status 14).
    local rc=0
    sg_compare_and_write -q --in="$WORK/cw.bin" --lba=100 --num=1 --xferlen=$((2 * bs)) "$dev" || rc=$?
    [[ $rc == 14 ]] || { sr_log "expected MISCOMPARE (14), got $rc"; return 1; }
}
if want sg; then
    check "sg_inq standard" sg_inq "$RAM_DISK"
    for p in 0x00 0x80 0x83 0xb0 0xb1 0xb2; do
        check "sg_inq -p $p" sg_inq -p "$p" "$RAM_DISK"
    done
    check "sg_readcap -l" sg_readcap -l "$RAM_DISK"
    check "sg_luns" sg_luns "$RAM_DISK"
    check "sg_sync" sg_sync "$RAM_DISK"
    check "sg_unmap lba 0 num 8" sg_unmap --force --lba=0 --num=8 "$RAM_DISK"
    check "sg_write_same --unmap (16)" sg_write_same --16 --unmap --lba=16 --num=8 "$RAM_DISK"
    check "sg_compare_and_write (match writes, stale compare miscompares)" cw_test "$RAM_DISK"
    check "verify_disk after sg tests" verify_disk "$RAM_DISK" 4
fi >"$RESULTS/sg.log" 2>&1
want sg && grep -E '^(PASS|FAIL):' "$RESULTS/sg.log" && FAILED=$((FAILED + $(grep -c '^FAIL:' "$RESULTS/sg.log")))

# --------------------------------------------------------------- libiscsi
if want libiscsi; then
    LI=iqn.2026-11.io.iser-target:libiscsi-initiator
    check "libiscsi iscsi-inq iser://" iscsi-inq -i "$LI" "iser://$ADDR/$T_RAM/0"
    check "libiscsi iscsi-readcapacity16 iser://" iscsi-readcapacity16 -i "$LI" "iser://$ADDR/$T_RAM/0"
    # libiscsi 1.19's iscsi-ls only parses iscsi:// portal URLs (its portal parser knows no
    # iser://), so list over TCP.
    check "libiscsi iscsi-ls -s (iscsi://, 1.19 has no iser:// portal URLs)" \
        iscsi-ls -i "$LI" -s "iscsi://$ADDR"
fi

# --------------------------------------------------------- checkpoint dmesg
check "no suspicious kernel messages before the fault tests" dmesg_check

# ----------------------------------------------------------------- faults
if want faults || want kill; then
    # Logout while fio runs.
    fio --name=bg --thread --filename="$RAM_DISK" --direct=1 --ioengine=libaio --rw=randrw --bs=64k \
        --iodepth=16 --size=128M --time_based --runtime=30 >/dev/null 2>&1 &
    f=$!
    sleep 3
    check "logout while fio runs" logout_one "$T_RAM"
    wait $f 2>/dev/null
    check "target still up after logout under I/O" target_alive
    check "login again after logout under I/O" login_iser "$T_RAM"
    RAM_DISK="$(disk_of "$T_RAM")"

    # fio SIGKILLed mid-I/O.
    fio --name=bg --thread --filename="$RAM_DISK" --direct=1 --ioengine=libaio --rw=randrw --bs=128k \
        --iodepth=32 --size=128M --time_based --runtime=30 >/dev/null 2>&1 &
    f=$!
    sleep 3
    kill -KILL $f; wait $f 2>/dev/null
    check "verify_disk after fio was SIGKILLed mid-I/O" verify_disk "$RAM_DISK" 8
    check "logout after the SIGKILL test" logout_one "$T_RAM"
fi
if want faults || want devdel; then
    session_disk "$T_RAM" | grep -q . && logout_one "$T_RAM"

    # RDMA device deleted and re-added. librdmacm only notices a removed device while another
    # one remains (it gives up on an empty device list), and rxe has no context
    # disassociation, so `rdma link delete` would wait for the target to exit: keep a second
    # SoftRoCE device around, as a host with two RDMA NICs would have.
    ip link add dummy1 type dummy 2>/dev/null; ip addr add 192.168.78.1/24 dev dummy1
    ip link set dummy1 up
    rdma link add rxe1 type rxe netdev dummy1 || fail "rdma link add rxe1"
    t0=$SECONDS
    timeout 40 rdma link delete "$SOFTROCE_RXE" && pass "rdma link delete $SOFTROCE_RXE ($((SECONDS - t0)) s)" \
        || fail "rdma link delete $SOFTROCE_RXE"
    sleep 2
    check "target survives the device removal" target_alive
    rdma link add "$SOFTROCE_RXE" type rxe netdev "$SOFTROCE_NETDEV" \
        && sr_wait 30 rxe_port_active "$SOFTROCE_RXE" \
        && pass "$SOFTROCE_RXE re-added" || fail "re-adding $SOFTROCE_RXE"
    check "target listens again on the re-added device" wait_rdma_listen "$ADDR:$PORT" 30
    check "login over iSER after the device came back" login_iser "$T_RAM"
    RAM_DISK="$(disk_of "$T_RAM")"
    check "verify_disk after the device came back" verify_disk "$RAM_DISK" 8

    # Device removed under a live session.
    t0=$SECONDS
    timeout 60 rdma link delete "$SOFTROCE_RXE" \
        && pass "rdma link delete under a live session ($((SECONDS - t0)) s)" \
        || fail "rdma link delete under a live session"
    sleep 2
    check "target survives device removal under a live session" target_alive
    iscsi_logout >/dev/null 2>&1
    rdma link add "$SOFTROCE_RXE" type rxe netdev "$SOFTROCE_NETDEV" \
        && sr_wait 30 rxe_port_active "$SOFTROCE_RXE" || fail "re-adding $SOFTROCE_RXE (2)"
    check "target listens again (2)" wait_rdma_listen "$ADDR:$PORT" 30
    check "login over iSER again (2)" login_iser "$T_RAM"
    check "verify_disk (2)" verify_disk "$(disk_of "$T_RAM")" 8
    check "target accepts a new login to $T_FILE" login_iser "$T_FILE"
fi

# ----------------------------------------------------------------- finish
# Stop with SIGTERM while a session is logged in and I/O runs: exit status 0.
session_disk "$T_FILE" | grep -q . || login_iser "$T_FILE" >/dev/null 2>&1
FILE_DISK="$(session_disk "$T_FILE" | head -n1)"
if [[ -n "$FILE_DISK" ]]; then
    fio --name=bg --thread --filename="$FILE_DISK" --direct=1 --ioengine=libaio --rw=randwrite \
        --bs=64k --iodepth=8 --size=64M --time_based --runtime=20 >/dev/null 2>&1 &
    f=$!
    sleep 2
fi
if is_lio; then
    skip_ours "SIGTERM with a live session under I/O: target exited 0"
elif target_alive; then
    t0=$SECONDS
    kill -TERM "$TARGET_PID"
    rc=0
    wait "$TARGET_PID" || rc=$?
    [[ $rc == 0 ]] && pass "SIGTERM with a live session under I/O: target exited 0 ($((SECONDS - t0)) s)" \
        || fail "SIGTERM: target exited with $rc"
else
    fail "target was not running at the end"
fi
# Log out first: fio's outstanding I/O is held by the initiator (replacement_timeout) until then.
iscsi_logout >/dev/null 2>&1
[[ -n "${f:-}" ]] && { kill -KILL "$f" 2>/dev/null; wait "$f" 2>/dev/null; }

if want cli && is_lio; then
    skip_ours "iser-target devices lists $SOFTROCE_RXE and its active port"
    skip_ours "iSER portal on a non-RDMA netdev's address fails at startup with advice"
    skip_ours "default configuration listens on iSER and TCP 0.0.0.0:$PORT"
    skip_ours "default configuration: discovery over iSER"
    skip_ours "default configuration: login + verify_disk over iSER"
    skip_ours "default configuration: SIGTERM exit 0"
elif want cli; then
    devs="$("$BIN" devices 2>&1)"
    printf '%s\n' "$devs" >&2
    grep -q "^$SOFTROCE_RXE" <<<"$devs" && grep -q "ACTIVE\|Active" <<<"$devs" \
        && pass "iser-target devices lists $SOFTROCE_RXE and its active port" \
        || fail "iser-target devices"
    # An iSER portal on the address of a netdev without an RDMA device fails at startup,
    # saying why. (Loopback addresses would not do: rdma_cm binds them to some device.)
    ip link add dummy2 type dummy 2>/dev/null; ip addr add 192.168.79.1/24 dev dummy2
    ip link set dummy2 up
    cat >"$WORK/bad.yaml" <<EOF
portals: [{address: 192.168.79.1, transport: iser}]
targets: [{name: $T_RAM, luns: [{backing: {type: ram, size: 1M}}]}]
EOF
    out="$(timeout 20 "$BIN" serve --config "$WORK/bad.yaml" 2>&1)"
    rc=$?
    printf '%s\n' "$out" | tail -2 >&2
    [[ $rc != 0 && $rc != 124 ]] && grep -q "not an address of an RDMA device" <<<"$out" \
        && pass "iSER portal on a non-RDMA netdev's address fails at startup with advice" \
        || fail "iSER portal on a non-RDMA netdev's address (rc $rc)"
    # The default configuration serves iSER too when an RDMA port is active.
    "$BIN" serve >"$RESULTS/default.log" 2>&1 &
    d=$!
    if wait_rdma_listen "0.0.0.0:$PORT" 20 && wait_tcp_listen "0.0.0.0:$PORT" 20; then
        pass "default configuration listens on iSER and TCP 0.0.0.0:$PORT"
        disc="$(iscsi_discover "$ADDR" iser 2>&1)"
        grep -q "iqn.2026-11.io.iser-target:ram0" <<<"$disc" \
            && pass "default configuration: discovery over iSER" || fail "default discovery: $disc"
        iscsiadm -m node -o delete >/dev/null 2>&1
        if login_iser iqn.2026-11.io.iser-target:ram0; then
            check "default configuration: login + verify_disk over iSER" \
                verify_disk "$(disk_of iqn.2026-11.io.iser-target:ram0)" 4
        else
            fail "default configuration: login over iSER"
        fi
        iscsi_logout >/dev/null 2>&1
    else
        fail "default configuration does not listen on iSER 0.0.0.0:$PORT"
    fi
    kill -TERM "$d"; rc=0; wait "$d" || rc=$?
    [[ $rc == 0 ]] && pass "default configuration: SIGTERM exit 0" || fail "default target exit $rc"
fi

bad="$(dmesg | grep -E 'BUG:|WARNING:|Oops|general protection|Call Trace|wrong datalen|unexpected remote invalidation|RNR retry' || true)"
[[ -z "$bad" ]] && pass "no kernel BUG/WARNING/RNR/framing messages" \
    || { fail "kernel messages:"; printf '%s\n' "$bad"; }
if is_lio; then
    sr_log "isert/iscsi_target kernel messages (last 40):"
    dmesg | grep -iE 'isert|iscsi_target|iSCSI|target_core' | tail -40 >&2
    lio_teardown
else
    grep -E 'ERROR|WARN' "$RESULTS/iser-target.log" | tail -20 >&2
fi
sr_checks_done iser-basic
