#!/bin/bash
# Our target against the Linux kernel initiator (open-iscsi) in the SoftRoCE guest.
#
#   scripts/softroce-vm.sh scripts/guest/linux-initiator.sh [tcp|iser]
#
# Builds nothing: run `cargo build --release` on the host first (scripts/test.sh does).
# Starts target/release/iser-target in the guest on $SOFTROCE_ADDR with a RAM LUN and a file
# LUN, then as the real kernel initiator: discovery, login, disk size, 16 MiB O_DIRECT compare,
# fio random writes with crc32c verify, mkfs.ext4 + files + fsck, logout and login again with
# the data still there, SCSI answers through sg3-utils (EXTENDED COPY between the two LUNs
# included), two sessions at once, a session dropped
# under fio load, and a clean SIGTERM shutdown. Prints PASS/FAIL per check; exits non-zero on
# any failure.
set -euo pipefail
# shellcheck source=scripts/guest/lib.sh
source "$(dirname "$(readlink -f "$0")")/lib.sh"

TRANSPORT="${1:-tcp}"
ADDR="$SOFTROCE_ADDR"
PORT=3260
REPO="$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd -P)"
BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/iser-target"
IQN_A=iqn.2026-11.io.iser-target:guest-a
IQN_B=iqn.2026-11.io.iser-target:guest-b
IQN_C=iqn.2026-11.io.iser-target:guest-block
WORK=/run/iser-target-test

# disk_of_size IQN BYTES: the disk of the session to IQN with that capacity (LUNs differ in size).
disk_of_size() {
    local d
    for d in $(session_disk "$1"); do
        if disk_size_is "$d" "$2"; then echo "$d"; fi
    done
}

[[ -x "$BIN" ]] || sr_die "$BIN missing: run 'cargo build --release' on the host first"
softroce_setup
mkdir -p "$WORK"
# A block LUN: a loop device over a 64 MiB file, grown under the target later.
sr_modprobe loop
truncate -s 64M "$WORK/block.img"
LOOP="$(losetup -f --show "$WORK/block.img")" || sr_die "no loop device"

cat >"$WORK/config.yaml" <<EOF
portals:
  - { address: $ADDR, port: $PORT, transport: $TRANSPORT }
targets:
  - name: $IQN_A
    luns:
      - { id: 0, backing: { type: ram, size: 256M } }
      - { id: 1, backing: { type: file, path: $WORK/lun1.img, size: 128M, create: true }, write_cache: false }
  - name: $IQN_B
    luns:
      - { id: 0, backing: { type: ram, size: 64M } }
  - name: $IQN_C
    luns:
      - { id: 0, backing: { type: block, path: $LOOP }, write_cache: false }
limits: { nop_interval_secs: 5, nop_timeout_secs: 10 }
state_dir: $WORK/state
EOF
# start_target NAME: serve the configuration as background job NAME; wait until it listens.
start_target() {
    bg_start "$1" env RUST_LOG=info "$BIN" serve --config "$WORK/config.yaml"
    if [[ $TRANSPORT == iser ]]; then
        wait_rdma_listen "$ADDR:$PORT"
    else
        wait_tcp_listen "$ADDR:$PORT"
    fi
}
start_target target || sr_die "target did not listen (see target.log)"

# --- discovery and login ------------------------------------------------------------------
found="$(iscsi_discover "$ADDR" "$TRANSPORT" "$PORT" || true)"
if grep -q "$IQN_A" <<<"$found" && grep -q "$IQN_B" <<<"$found"; then
    pass "discovery over $TRANSPORT lists both targets"
else
    fail "discovery over $TRANSPORT: got '$found'"
fi
# Discovery leaves node records; iscsi_login makes its own, and two records for one portal
# make iscsiadm log in twice ("session exists").
iscsiadm -m node -o delete >/dev/null 2>&1 || true

iscsi_login "$ADDR" "$IQN_A" "$TRANSPORT" "$PORT" >/dev/null || sr_die "login to $IQN_A failed"
sleep 1
mapfile -t disks < <(session_disk "$IQN_A" | sort)
[[ ${#disks[@]} -eq 2 ]] || sr_die "expected 2 disks for $IQN_A, got ${disks[*]:-none}"
ram_disk="$(disk_of_size "$IQN_A" 268435456)"
file_disk="$(disk_of_size "$IQN_A" 134217728)"
check "session is $TRANSPORT" test "$(session_transport "$IQN_A")" = "$TRANSPORT"

# status_lists_session: `iser-target status --json` lists the kernel's session to IQN_A, with
# this initiator's name and the transport it logged in over.
status_lists_session() {
    local json
    json="$("$BIN" status --config "$WORK/config.yaml" --json)" || return 1
    python3 - "$json" "$IQN_A" "$TRANSPORT" "$SOFTROCE_INITIATOR_IQN" <<'PY'
import json, sys
report = json.loads(sys.argv[1])
target, transport, initiator = sys.argv[2:]
sessions = [(s["target"], s["transport"], s["initiator"]) for s in report["iscsi_sessions"]]
sys.exit(0 if (target, transport, initiator) in sessions else f"not listed: {sessions}")
PY
}
check "iser-target status lists the session over $TRANSPORT" status_lists_session
check "RAM LUN is 256 MiB ($ram_disk)" test -n "$ram_disk"
check "file LUN is 128 MiB ($file_disk)" test -n "$file_disk"

# --- data ---------------------------------------------------------------------------------
check "16 MiB O_DIRECT write/read compare on the RAM LUN" verify_disk "$ram_disk" 16
check "fio 64 MiB randwrite crc32c verify (qd 16)" fio_verify "$ram_disk" 64M 64k 16
check "fio 1 MiB requests verify" fio_verify "$ram_disk" 32M 1m 4
check "fio 4 MiB requests verify" fio_verify "$ram_disk" 64M 4m 2

mkdir -p /mnt/lun1
if mkfs.ext4 -q -F "$file_disk" && mount "$file_disk" /mnt/lun1; then
    head -c 8M /dev/urandom >/mnt/lun1/blob
    sha="$(sha256sum </mnt/lun1/blob)"
    sync
    umount /mnt/lun1
    check "fsck -fn clean after mkfs + files + sync" fsck.ext4 -fn "$file_disk"
else
    fail "mkfs.ext4 / mount on the file LUN"
    sha=""
fi

# --- SCSI answers through the kernel's path (sg3-utils) -----------------------------------
check "sg_inq standard" sg_inq "$ram_disk"
for page in 0x00 0x80 0x83 0xb0 0xb1 0xb2; do
    check "sg_inq VPD $page" sg_inq --page="$page" "$ram_disk"
done
check "sg_readcap -l" sg_readcap -l "$ram_disk"
check "sg_luns" sg_luns "$ram_disk"
check "sg_sync" sg_sync "$ram_disk"
check "sg_unmap" sg_unmap --force --lba=0 --num=8 "$ram_disk"
check "sg_write_same --unmap" sg_write_same --unmap --lba=8 --num=8 "$ram_disk"
head -c 1024 /dev/zero >"$WORK/caw"   # compare 512 zero bytes (unmapped), write 512 zero bytes
check "sg_compare_and_write" sg_compare_and_write --in="$WORK/caw" --lba=0 --num=1 --xferlen=1024 "$ram_disk"
# sg_dev DISK: the disk's SCSI generic device, which sg_xcopy sends through (the sg driver
# loaded, and the node made when the guest has no udev to make it).
sg_dev() {
    local name dev
    modprobe sg || return 1
    sr_wait 10 test -d "/sys/block/${1#/dev/}/device/scsi_generic" || return 1
    name="$(ls "/sys/block/${1#/dev/}/device/scsi_generic")"
    if [[ ! -e "/dev/$name" ]]; then
        dev="$(cat "/sys/class/scsi_generic/$name/dev")"
        mknod "/dev/$name" c "${dev%:*}" "${dev#*:}" || return 1
    fi
    echo "/dev/$name"
}
# EXTENDED COPY of 4 MiB from the file LUN (its ext4) to the RAM LUN, two LUs of one target:
# the blocks move inside the target. Read back with O_DIRECT (the copy bypassed the page cache).
xcopy_file_to_ram() {
    local from to
    from="$(sg_dev "$file_disk")" && to="$(sg_dev "$ram_disk")" || return 1
    sg_xcopy if="$from" of="$to" bs=512 count=8192 seek=65536 || return 1
    cmp <(dd if="$file_disk" bs=512 count=8192 iflag=direct status=none) \
        <(dd if="$ram_disk" bs=512 skip=65536 count=8192 iflag=direct status=none)
}
check "sg_xcopy file LUN to RAM LUN, copy reads back equal" xcopy_file_to_ram

# --- logout, login again: the file LUN kept its data ----------------------------------------
check "logout" iscsi_logout "$IQN_A"
iscsi_login "$ADDR" "$IQN_A" "$TRANSPORT" "$PORT" >/dev/null || sr_die "second login failed"
sleep 1
file_disk="$(disk_of_size "$IQN_A" 134217728)"
if [[ -n "$sha" && -n "$file_disk" ]] && mount "$file_disk" /mnt/lun1; then
    check "file written before logout reads back identical" test "$(sha256sum </mnt/lun1/blob)" = "$sha"
    umount /mnt/lun1
else
    fail "remount the file LUN after logging in again"
fi

# --- two sessions at once -------------------------------------------------------------------
iscsi_login "$ADDR" "$IQN_B" "$TRANSPORT" "$PORT" >/dev/null || fail "login to $IQN_B"
sleep 1
disk_b="$(session_disk "$IQN_B" | head -n1)"
ram_disk="$(disk_of_size "$IQN_A" 268435456)"
fio_verify "$ram_disk" 32M 64k 8 & pa=$!
fio_verify "$disk_b" 32M 64k 8 & pb=$!
ra=0 rb=0
wait "$pa" || ra=$?
wait "$pb" || rb=$?
check "two sessions verify concurrently" test "$ra$rb" = 00

# --- faults ------------------------------------------------------------------------------------
fio --name=load --filename="$disk_b" --direct=1 --ioengine=libaio --rw=randwrite --bs=64k \
    --iodepth=16 --size=64M --time_based --runtime=30 >/dev/null 2>&1 & load=$!
sleep 2
check "logout while fio runs" iscsi_logout "$IQN_B"
wait "$load" 2>/dev/null || true
# --thread: fio otherwise runs each job in a child process, which SIGKILL to the parent leaves
# running (and writing) behind our backs.
fio --name=kill --thread --filename="$ram_disk" --direct=1 --ioengine=libaio --rw=randrw \
    --bs=64k --iodepth=16 --size=64M --time_based --runtime=30 >/dev/null 2>&1 & victim=$!
sleep 2
kill -KILL "$victim"; wait "$victim" 2>/dev/null || true
check "I/O after an initiator process was SIGKILLed mid-I/O" verify_disk "$ram_disk" 4
check "target still up after the faults" kill -0 "$SR_BG_target"
iscsi_login "$ADDR" "$IQN_B" "$TRANSPORT" "$PORT" >/dev/null && sleep 1
check "new login after the faults works" test -n "$(session_disk "$IQN_B")"

# --- persistent reservations from Linux's block layer, through a target SIGKILL ------------
# linux_pr DISK OP ARGS...: the IOC_PR_* ioctls of include/uapi/linux/pr.h on DISK. The
# kernel's sd_pr_register() (drivers/scsi/sd.c) sets APTPL on every REGISTER, so a target
# that refuses APTPL fails them all ("PR command failed", INVALID FIELD IN PARAMETER LIST).
# Linux 6.1 hands such a failure back as a positive SCSI result, which reaches user space as
# success: every step is checked with sg_persist.
linux_pr() {
    python3 - "$@" <<'PY'
import fcntl, os, struct, sys
dev, op, args = sys.argv[1], sys.argv[2], [int(a, 0) for a in sys.argv[3:]]
fd = os.open(dev, os.O_RDWR)
if op == "register":  # old key, new key (0: unregister)
    fcntl.ioctl(fd, 0x401870C8, struct.pack("=QQII", args[0], args[1], 0, 0))
else:  # reserve / release: key, pr_type (1: write exclusive)
    nr = {"reserve": 0xC9, "release": 0xCA}[op]
    fcntl.ioctl(fd, 0x40107000 | nr, struct.pack("=QII", args[0], args[1], 0))
PY
}
# reserved_by DISK KEY: READ RESERVATION shows a Write Exclusive reservation held with KEY.
reserved_by() {
    local out
    out="$(sg_persist --in --read-reservation "$1")" || return 1
    grep -q "Key=$2" <<<"$out" && grep -q "type: Write Exclusive" <<<"$out"
}
# register_and_reserve DISK KEY / release_and_unregister DISK KEY
register_and_reserve() {
    linux_pr "$1" register 0 "$2" && linux_pr "$1" reserve "$2" 1 && reserved_by "$1" "$2"
}
release_and_unregister() {
    linux_pr "$1" release "$2" 1 && linux_pr "$1" register "$2" 0 || return 1
    sg_persist --in --read-keys "$1" | grep -q "there are NO registered reservation keys"
}
# survives_sigkill: the target SIGKILLed and started again on its state_dir; once the kernel
# initiator has logged in again, the reservation is still there.
survives_sigkill() {
    kill -KILL "$SR_BG_target"
    wait "$SR_BG_target" 2>/dev/null || true
    start_target target2 || return 1
    sr_wait 120 session_logged_in "$IQN_A" || return 1
    reserved_by "$file_disk" 0x1dea
}
file_disk="$(disk_of_size "$IQN_A" 134217728)"
check "IOC_PR_REGISTER (with APTPL) and IOC_PR_RESERVE on the file LUN" \
    register_and_reserve "$file_disk" 0x1dea
check "sg_persist: PTPL_A, the reservation persists through power loss" \
    bash -c "sg_persist --in --report-capabilities '$file_disk' | grep -q 'PTPL_A): 1'"
check "the reservation survives a SIGKILLed and restarted target" survives_sigkill
check "IOC_PR_RELEASE and unregister after the restart" \
    release_and_unregister "$file_disk" 0x1dea

# --- the file LUN grown while served ----------------------------------------------------------
# A larger `size` and SIGHUP; the kernel initiator hears CAPACITY DATA HAS CHANGED on its next
# command, and a rescan (iscsiadm -R, as an administrator does after growing a LUN) gives the
# disk its new size; the new blocks take writes that read back.
grown_file_lun() {
    sed -i 's/size: 128M/size: 192M/' "$WORK/config.yaml" && kill -HUP "$SR_BG_target2" || return 1
    sr_wait 10 grep -q "grew to 201326592 bytes" "${SOFTROCE_RESULTS:-/tmp}/target2.log" || return 1
    dd if="$file_disk" of=/dev/null bs=4k count=1 iflag=direct status=none || true
    iscsiadm -m session -R >/dev/null || return 1
    sr_wait 30 disk_size_is "$file_disk" 201326592 || return 1
    head -c 4M /dev/urandom >"$WORK/tail"
    dd if="$WORK/tail" of="$file_disk" bs=1M seek=188 oflag=direct conv=fsync status=none &&
        cmp -s "$WORK/tail" <(dd if="$file_disk" bs=1M skip=188 count=4 iflag=direct status=none)
}
check "file LUN grown from 128 to 192 MiB by SIGHUP: the disk takes the new size" grown_file_lun

# --- a block LUN grown under the target -----------------------------------------------------
# The device grows (an LV extended; here the loop device's file, `losetup -c`) with nothing
# said to the target: a rescan's READ CAPACITY measures the device again, as LIO's iblock does,
# and the disk takes the new size; the new blocks take writes that read back.
grown_block_lun() {
    local disk ok=0
    iscsi_login "$ADDR" "$IQN_C" "$TRANSPORT" "$PORT" >/dev/null || return 1
    sr_wait 10 test -n "$(session_disk "$IQN_C")" || return 1
    disk="$(session_disk "$IQN_C" | head -n1)"
    if disk_size_is "$disk" $((64 << 20)) && truncate -s 96M "$WORK/block.img" &&
        losetup -c "$LOOP" && iscsiadm -m session -R >/dev/null &&
        sr_wait 30 disk_size_is "$disk" $((96 << 20)); then
        head -c 4M /dev/urandom >"$WORK/block-tail"
        dd if="$WORK/block-tail" of="$disk" bs=1M seek=92 oflag=direct conv=fsync status=none &&
            cmp -s "$WORK/block-tail" <(dd if="$disk" bs=1M skip=92 count=4 iflag=direct status=none) &&
            ok=1
    else
        sr_log "block LUN: the disk is $(blockdev --getsize64 "$disk") bytes"
    fi
    iscsi_logout "$IQN_C" || true
    ((ok))
}
check "block LUN grown from 64 to 96 MiB under the target: a rescan sees it, no SIGHUP" grown_block_lun

# --- shutdown -------------------------------------------------------------------------------
iscsi_logout || true
check "SIGTERM: clean exit 0" bg_stop target2
check "no suspicious kernel messages" dmesg_check
losetup -d "$LOOP" || true

sr_checks_done linux-initiator || exit 1
sr_log "all checks passed over $TRANSPORT"
