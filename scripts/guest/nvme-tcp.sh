#!/bin/bash
# The kernel's NVMe/TCP host (nvme-tcp + nvme-cli) against the kernel's NVMe/TCP target
# (nvmet-tcp, configfs) as the reference, and against ours: the same checks on both.
#
#   cargo build --release --bin iser-target      # for "ours"
#   scripts/softroce-vm.sh scripts/guest/nvme-tcp.sh [nvmet] [ours]     (default: both)
#
# Each target exports one 256 MiB namespace backed by a file on tmpfs (nvmet: through a loop
# device, its bdev backend; ours: `backing: {type: file}`), nvmet on port 4420, ours on 4421.
# The checks, run against each target in turn: discovery; connect; the namespace's size; nvme
# id-ctrl, id-ns, ns-descs, smart-log, list-subsys; fio 4 KiB random writes QD16 and 1 MiB
# writes with crc32c verify; blkdiscard and blkdiscard -z with read-back; mkfs.ext4 + files +
# fsck; disconnect, reconnect, the files intact; two I/O queues with header and data digests
# (nvme connect -g -G -i 2) under a verifying fio; the keep-alive timeout tearing down the
# controller of a host that vanished (an nftables rule drops all traffic of a host connected
# from a second address) while the target goes on serving others; nvme connect-all; the
# namespace grown by 64 MiB under a connected host (nvmet: the loop device's file extended and
# `revalidate_size`; ours: a larger `size` and SIGHUP), the host seeing the new size by itself
# and writing there; a persistent discovery controller (nvme discover --persistent) told by a
# Discovery Log Page Change notice when the host is let into a second subsystem (nvmet: the
# host linked into its allowed_hosts; ours: `allowed_hosts` edited and SIGHUP). One
# PASS/FAIL line per check, a "N/M passed" line per target (also in
# $SOFTROCE_RESULTS/nvme-tcp-summary.txt); exits non-zero when a check failed.
set -euo pipefail
# shellcheck source=scripts/guest/lib.sh
source "$(dirname "$(readlink -f "$0")")/lib.sh"

ADDR="$SOFTROCE_ADDR"
# The vanishing host of the keep-alive check connects from this second address of dummy0.
ADDR2=192.168.77.2
REPO="$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd -P)"
BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/iser-target"
WORK=/run/nvme-tcp-test
NS_MIB=256
GROWN_MIB=$((NS_MIB + 64))
KATO=5
declare -A PORT=([nvmet]=4420 [ours]=4421)
declare -A NQN=([nvmet]=nqn.2026-11.io.iser-target:nvmet-ref [ours]=nqn.2026-11.io.iser-target:guest)
# A second subsystem, closed to this host until the discovery change check lets it in.
GATED_NQN=nqn.2026-11.io.iser-target:gated
OTHER_HOSTNQN=nqn.2014-08.org.nvmexpress:uuid:5e1f0c0e-0000-4000-8000-0000000000ff
RESULTS="${SOFTROCE_RESULTS:-/tmp}"
TARGETS=("$@")
((${#TARGETS[@]})) || TARGETS=(nvmet ours)

# --- target setup ----------------------------------------------------------------------------
start_nvmet() {
    sr_modprobe loop
    truncate -s "${NS_MIB}M" "$WORK/nvmet.img"
    NVMET_LOOP="$(losetup -f --show "$WORK/nvmet.img")" || return 1
    nvmet_setup "$ADDR" "${PORT[nvmet]}" "${NQN[nvmet]}" "$NVMET_LOOP" 1
}
stop_nvmet() {
    # The discovery change check's host link and host, which nvmet_teardown does not know.
    find "$CONFIGFS_NVMET/subsystems" -path '*/allowed_hosts/*' -type l -delete 2>/dev/null || true
    rmdir "$CONFIGFS_NVMET/hosts/$SOFTROCE_HOSTNQN" 2>/dev/null || true
    nvmet_teardown
    losetup -d "$NVMET_LOOP"
}

start_ours() {
    [[ -x "$BIN" ]] || { sr_log "$BIN missing: run 'cargo build --release' on the host first"; return 1; }
    cat >"$WORK/ours.yaml" <<EOF
portals:
  - { address: $ADDR, port: ${PORT[ours]}, transport: nvme-tcp }
targets:
  - name: iqn.2026-11.io.iser-target:guest
    nqn: ${NQN[ours]}
    luns:
      - { id: 0, backing: { type: file, path: $WORK/ours.img, size: ${NS_MIB}M, create: true } }
  - name: iqn.2026-11.io.iser-target:gated
    nqn: $GATED_NQN
    allowed_hosts: [$OTHER_HOSTNQN]
    luns:
      - { id: 0, backing: { type: ram, size: 16M } }
EOF
    bg_start ours env RUST_LOG=info "$BIN" serve --config "$WORK/ours.yaml"
    wait_tcp_listen "$ADDR:${PORT[ours]}" || { sr_log "our target does not listen (see ours.log)"; return 1; }
}
stop_ours() { bg_stop ours; }

# --- checks (each takes the target's name; globals: T, P, N, DEV, CTRL) --------------------------
connect() { nvme connect -t tcp -a "$ADDR" -s "$P" -n "$N" "$@" >/dev/null; }
connect_and_find() {
    connect "$@" || return 1
    DEV="$(nvme_wait_ns "$N" 30)" || return 1
    CTRL="/dev/$(nvme_ctrls "$N" | head -n1)"
    sr_log "$T: $N connected: controller $CTRL, namespace $DEV"
}

discover_lists() {
    local out
    out="$(nvme discover -t tcp -a "$ADDR" -s "$P")" || return 1
    grep -q "subnqn: *$N *\$" <<<"$out" && grep -q "trsvcid: *$P *\$" <<<"$out" ||
        { printf '%s\n' "$out" >&2; return 1; }
}

id_ctrl_subnqn() {
    nvme id-ctrl "$CTRL" | grep -q "^subnqn *: *$N\$"
}

# id-ns: the namespace size (NSZE) times the LBA size of the format in use is the disk's size.
id_ns_size() {
    local out nsze lbads
    out="$(nvme id-ns "$DEV")" || return 1
    nsze="$(awk '$1 == "nsze" { print $3 }' <<<"$out")"
    lbads="$(awk '/in use/ { for (i = 1; i <= NF; i++) if ($i ~ /^lbads:/) { sub("lbads:", "", $i); print $i } }' <<<"$out")"
    [[ -n "$nsze" && -n "$lbads" ]] || { printf '%s\n' "$out" >&2; return 1; }
    (( nsze * (1 << lbads) == NS_MIB << 20 )) || { sr_log "nsze $nsze lbads $lbads"; return 1; }
}

# ns-descs: at least one namespace identifier (EUI-64, NGUID or UUID) that is not all zeros.
ns_descs_identify() {
    local out
    out="$(nvme ns-descs "$DEV")" || return 1
    grep -Eq '^(eui64|nguid|uuid) *: *[0-9a-f-]*[1-9a-f]' <<<"$out" || { printf '%s\n' "$out" >&2; return 1; }
}

smart_log() { nvme smart-log "$CTRL" | grep -q '^critical_warning'; }

list_subsys() {
    local out
    out="$(nvme list-subsys)" || return 1
    grep -q "NQN=$N" <<<"$out" && grep -q " tcp traddr=$ADDR,trsvcid=$P" <<<"$out" ||
        { printf '%s\n' "$out" >&2; return 1; }
}

# is_zero DEV OFFSET_MIB MIB: those MiB of DEV read (O_DIRECT) as zeros.
is_zero() {
    cmp -s -n "$(($3 << 20))" <(dd if="$1" bs=1M skip="$2" count="$3" iflag=direct status=none) /dev/zero
}
fill_random() { dd if=/dev/urandom of="$1" bs=1M seek="$2" count="$3" oflag=direct conv=fsync status=none; }

# blkdiscard (Dataset Management, deallocate) succeeds; the range reads back, as zeros when the
# namespace says deallocated blocks read as zeros (id-ns DLFEAT bits 2:0 = 001b).
discard_readback() {
    local dlfeat
    fill_random "$DEV" 0 8 && blkdiscard -o 0 -l $((8 << 20)) "$DEV" || return 1
    dlfeat="$(nvme id-ns "$DEV" | awk '$1 == "dlfeat" { print $3 }')"
    if (((dlfeat & 7) == 1)); then
        is_zero "$DEV" 0 8
    else
        dd if="$DEV" of=/dev/null bs=1M count=8 iflag=direct status=none
    fi
}

# blkdiscard -z (Write Zeroes, or zeros written by the host if the controller lacks it): zeros.
zeroout_readback() {
    fill_random "$DEV" 8 8 && blkdiscard -z -o $((8 << 20)) -l $((8 << 20)) "$DEV" && is_zero "$DEV" 8 8
}

FILES_SHA=""
mkfs_files_fsck() {
    mkdir -p /mnt/nvme
    mkfs.ext4 -q -F "$DEV" && mount "$DEV" /mnt/nvme || return 1
    head -c 8M /dev/urandom >/mnt/nvme/blob
    cp -r "$REPO/scripts" /mnt/nvme/
    FILES_SHA="$(cd /mnt/nvme && find . -type f ! -path './lost+found/*' -exec sha256sum {} + | sort | sha256sum)"
    sync
    umount /mnt/nvme
    fsck.ext4 -fn "$DEV"
}

files_intact() {
    local sha
    [[ -n "$FILES_SHA" ]] && mount "$DEV" /mnt/nvme || return 1
    sha="$(cd /mnt/nvme && find . -type f ! -path './lost+found/*' -exec sha256sum {} + | sort | sha256sum)"
    umount /mnt/nvme
    [[ "$sha" == "$FILES_SHA" ]]
}

# Two I/O queues and both digests: the controller has 3 queues (admin + 2 I/O).
digests_two_queues() {
    connect_and_find -g -G -i 2 || return 1
    [[ "$(cat "/sys/class/nvme/${CTRL#/dev/}/queue_count")" == 3 ]] ||
        { sr_log "queue_count $(cat "/sys/class/nvme/${CTRL#/dev/}/queue_count")"; return 1; }
}
# fio with two jobs (the scheduler spreads them over both CPUs, hence both queues).
fio_two_jobs() {
    fio --name=digests --filename="$DEV" --direct=1 --ioengine=libaio --rw=randwrite --bs=16k \
        --iodepth=8 --numjobs=2 --size=16M --offset_increment=16M --verify=crc32c --do_verify=1 \
        --verify_fatal=1 --output-format=terse >/dev/null
}

# Established TCP connections between the target's port and ADDR2 (the target's side).
conns_from_addr2() { ss -Htn state established "( sport = :$P )" dst "$ADDR2" | wc -l; }

# The host at ADDR2 connects (keep-alive KATO s, giving up after 5 s without the target), then
# vanishes: nftables drops every packet between it and the target, so no keep-alive and no FIN
# reach the target. The target must tear the controller down (close its connections) by itself.
keep_alive_teardown() {
    local n end
    ip addr add "$ADDR2/24" dev "$SOFTROCE_NETDEV" 2>/dev/null || true
    connect_and_find -w "$ADDR2" -k "$KATO" -l 5 -c 2 || return 1
    n="$(conns_from_addr2)"
    ((n >= 2)) || { sr_log "$n connections from $ADDR2 before the drop"; return 1; }
    nft -f - <<EOF || return 1
table inet nvme_ka {
    chain input {
        type filter hook input priority 0; policy accept;
        ip saddr $ADDR2 tcp dport $P drop
        ip daddr $ADDR2 tcp sport $P drop
    }
}
EOF
    end=$((SECONDS + 4 * KATO + 10))
    until (($(conns_from_addr2) == 0)); do
        if ((SECONDS > end)); then
            sr_log "the target still has $(conns_from_addr2) connection(s) from $ADDR2 after $((4 * KATO + 10)) s"
            nft delete table inet nvme_ka
            return 1
        fi
        sleep 1
    done
    sr_log "$T closed the vanished host's connections"
    # The host comes back: its reconnect attempts (if ctrl-loss-tmo has not ended them yet) get
    # through, and a disconnect cannot hang on a dropped SYN.
    nft delete table inet nvme_ka
    nvme disconnect -n "$N" >/dev/null 2>&1 || true
    sr_wait 30 test -z "$(nvme_ctrls "$N")"
}

# nvme connect-all: discovery, then a connection to every subsystem the log lists.
connect_all() {
    nvme connect-all -t tcp -a "$ADDR" -s "$P" >/dev/null || return 1
    DEV="$(nvme_wait_ns "$N" 30)" || return 1
    nvme_disconnect "$N"
}

still_serving() {
    connect_and_find && fio_verify "$DEV" 16M 64k 8 && nvme_disconnect "$N"
}

grow_nvmet() {
    truncate -s "${GROWN_MIB}M" "$WORK/nvmet.img" && losetup -c "$NVMET_LOOP" &&
        echo 1 >"$CONFIGFS_NVMET/subsystems/$N/namespaces/1/revalidate_size"
}
grow_ours() {
    sed -i "s/size: ${NS_MIB}M/size: ${GROWN_MIB}M/" "$WORK/ours.yaml" && kill -HUP "$SR_BG_ours"
}
# The namespace grown under a connected host: the target tells it (a Namespace Attribute
# Changed notice), the host scans the namespace again and the block device takes the new size
# with nothing done on the host; the new blocks take writes that read back.
grown_while_connected() {
    local written=0
    connect_and_find && "grow_$T" || return 1
    if ! sr_wait 30 disk_size_is "$DEV" $((GROWN_MIB << 20)); then
        sr_log "$T: the host still sees $(blockdev --getsize64 "$DEV") bytes"
        nvme_disconnect "$N"
        return 1
    fi
    head -c 8M /dev/urandom >"$WORK/tail"
    dd if="$WORK/tail" of="$DEV" bs=1M seek=$((GROWN_MIB - 8)) oflag=direct conv=fsync status=none &&
        cmp -s "$WORK/tail" <(dd if="$DEV" bs=1M skip=$((GROWN_MIB - 8)) count=8 iflag=direct status=none) &&
        written=1
    nvme_disconnect "$N" && ((written))
}

# --- discovery log change -----------------------------------------------------------------------
# The second subsystem, closed to this host: nvmet's made now (no namespace needed to be listed),
# ours configured at start.
add_gated_nvmet() {
    local s="$CONFIGFS_NVMET/subsystems/$GATED_NQN"
    mkdir "$s" && echo 0 >"$s/attr_allow_any_host" &&
        ln -s "$s" "$CONFIGFS_NVMET/ports/1/subsystems/$GATED_NQN"
}
add_gated_ours() { true; }
allow_gated_nvmet() {
    local h="$CONFIGFS_NVMET/hosts/$SOFTROCE_HOSTNQN"
    { [[ -d "$h" ]] || mkdir "$h"; } &&
        ln -s "$h" "$CONFIGFS_NVMET/subsystems/$GATED_NQN/allowed_hosts/$SOFTROCE_HOSTNQN"
}
allow_gated_ours() {
    sed -i "s/allowed_hosts: \[$OTHER_HOSTNQN\]/allowed_hosts: [$OTHER_HOSTNQN, $SOFTROCE_HOSTNQN]/" \
        "$WORK/ours.yaml" && kill -HUP "$SR_BG_ours"
}
# A persistent discovery controller, then the host let into the second subsystem: the target
# sends a Discovery Log Page Change notice, which the kernel passes on as a uevent of the
# discovery controller, NVME_AEN=0x70f002 (drivers/nvme/host/core.c nvme_aen_uevent; nvme-cli's
# autoconnect udev rule runs connect-all on it), and the log then lists the subsystem.
discovery_change() {
    local monitor="$WORK/uevents" ok=1 pid out
    "add_gated_$T" || return 1
    nvme discover -t tcp -a "$ADDR" -s "$P" --persistent >/dev/null || return 1
    udevadm monitor --kernel --property --subsystem-match=nvme >"$monitor" 2>&1 &
    pid=$!
    sleep 1
    if ! "allow_gated_$T"; then
        ok=0
    elif ! sr_wait 20 grep -qi '^NVME_AEN=0x70f002$' "$monitor"; then
        sr_log "$T: no discovery log change uevent; the monitor saw:"
        cat "$monitor" >&2
        ok=0
    fi
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
    out="$(nvme discover -t tcp -a "$ADDR" -s "$P")" || ok=0
    grep -q "subnqn: *$GATED_NQN *\$" <<<"$out" || { sr_log "$T: $GATED_NQN not listed"; ok=0; }
    nvme disconnect -n nqn.2014-08.org.nvmexpress.discovery >/dev/null || true
    ((ok))
}

# --- reservations (ours: Debian 12's 6.1 kernel has no nvmet reservations; they came with
# drivers/nvme/target/pr.c in 6.13) -----------------------------------------------------------
# A second host on this guest: its own NQN and Host Identifier, its own controller.
HOSTNQN2="nqn.2014-08.org.nvmexpress:uuid:5e1f0c0e-0000-4000-8000-000000000002"
HOSTID2="5e1f0c0e-0000-4000-8000-000000000002"

# pr_ioctl register OLD NEW | reserve KEY TYPE | release KEY TYPE: Linux's persistent
# reservation ioctls (include/uapi/linux/pr.h) on the namespace's block device, as cluster
# software uses them. The NVMe host returns a failed command's status as the ioctl's
# (positive) result, so the result must be 0.
pr_ioctl() {
    python3 - "$DEV" "$@" <<'PY'
import fcntl, os, struct, sys
dev, op, a, b = sys.argv[1], sys.argv[2], int(sys.argv[3], 0), int(sys.argv[4], 0)
def iow(nr, size):
    return 1 << 30 | size << 16 | ord("p") << 8 | nr
requests = {
    "register": (iow(200, 24), struct.pack("<QQII", a, b, 0, 0)),
    "reserve": (iow(201, 16), struct.pack("<QII", a, b, 0)),
    "release": (iow(202, 16), struct.pack("<QII", a, b, 0)),
}
request, arg = requests[op]
fd = os.open(dev, os.O_RDONLY)
result = fcntl.ioctl(fd, request, bytearray(arg), True)
sys.exit(f"{op} {a:#x} {b:#x}: status {result:#x}" if result else 0)
PY
}

# report_is TYPE [KEY:HOLDS:HOSTID ...]: `nvme resv-report --eds` says the reservation type is
# TYPE and lists exactly these registrants (key, 1 if it holds the reservation, Host ID).
report_is() {
    local report
    report="$(nvme resv-report "$DEV" --eds -o json)" || return 1
    python3 - "$report" "$@" <<'PY' || { printf '%s\n' "$report" >&2; return 1; }
import json, sys
report, rtype, wanted = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
got = sorted(f"{r['rkey']:#x}:{r['rcsts'] & 1}:{r['hostid'].replace('-', '')}"
             for r in report.get("regctlext", []))
expected = sorted(f"{int(k, 0):#x}:{h}:{i.replace('-', '')}"
                  for k, h, i in (w.split(":") for w in wanted))
sys.exit(0 if report["rtype"] == rtype and got == expected else f"got {got}, type {report['rtype']}")
PY
}

# Connects the second host through the kernel's fabrics interface itself (nvme-cli 2.3 refuses
# a second connection to a connected portal as "already connected", whatever the host NQN):
# prints its controller's name.
connect_second_host() {
    local reply=""
    exec 3<>/dev/nvme-fabrics || return 1
    printf 'transport=tcp,traddr=%s,trsvcid=%s,nqn=%s,hostnqn=%s,hostid=%s' \
        "$ADDR" "$P" "$N" "$HOSTNQN2" "$HOSTID2" >&3 && IFS= read -r reply <&3
    exec 3>&-
    [[ $reply =~ instance=([0-9]+) ]] || { sr_log "nvme-fabrics answered [$reply]"; return 1; }
    echo "nvme${BASH_REMATCH[1]}"
}

# notice_is CTRL TYPE: controller CTRL's Reservation Notification log page (80h) holds a
# notice of TYPE (1: registration preempted) for namespace 1.
notice_is() {
    local page bytes
    page="$(nvme get-log "$1" --log-id=0x80 --log-len=64 --raw-binary | od -An -tu1 -v | tr -s ' \n' ' ')" ||
        return 1
    read -ra bytes <<<"$page"
    ((${#bytes[@]} == 64 && bytes[8] == $2 && bytes[12] == 1)) || { sr_log "log page 80h: $page"; return 1; }
}

# Reservations through Linux's own host: registered and reserved with the block layer's
# ioctls; a second host registers with nvme-cli, and its writes through its own controller
# meet Reservation Conflict while its reads pass; resv-report lists both hosts by Host ID; the
# holder preempts the second host, whose controller's Reservation Notification log then says
# so; released, then unregistered the block layer's way (a new key of 0, which Linux's host
# sends as Replace with key 0); finally cleared.
reservations() {
    local ctrl2="" out="" ok=0
    connect_and_find || return 1
    head -c 512 /dev/urandom >"$WORK/block"
    if pr_ioctl register 0 0xA && pr_ioctl reserve 0xA 1 &&
        report_is 1 "0xA:1:$SOFTROCE_HOSTID" &&
        ctrl2="$(connect_second_host)" &&
        nvme resv-register "/dev/$ctrl2" -n 1 -k 0xB -r 0 >/dev/null &&
        report_is 1 "0xA:1:$SOFTROCE_HOSTID" "0xB:0:$HOSTID2"; then
        out="$(nvme io-passthru "/dev/$ctrl2" -o 1 -n 1 -l 512 -w -i "$WORK/block" 2>&1)" &&
            sr_log "the second host's write went through: $out"
        if ! grep -qi conflict <<<"$out" ||
            ! nvme io-passthru "/dev/$ctrl2" -o 2 -n 1 -l 512 -r >/dev/null 2>&1; then
            sr_log "second host: write [$out], or its read failed"
        # Through the first host's own controller: the namespace's block device may take
        # either host's path now.
        elif nvme resv-acquire "$CTRL" -n 1 -c 0xA -p 0xB -t 1 -a 1 >/dev/null &&
            notice_is "/dev/$ctrl2" 1 && report_is 1 "0xA:1:$SOFTROCE_HOSTID"; then
            ok=1
        fi
    fi
    [[ -n "$ctrl2" ]] && nvme disconnect -d "$ctrl2" >/dev/null
    ((ok)) && pr_ioctl release 0xA 1 && pr_ioctl register 0xA 0 && report_is 0 || ok=0
    # Leave the namespace as it was: register again and clear every registration.
    pr_ioctl register 0 0xC && nvme resv-release "$DEV" -c 0xC -a 1 >/dev/null && report_is 0 || ok=0
    nvme_disconnect "$N"
    ((ok))
}

# A block namespace grown under the target (ours only): a second target process serves a
# loop device; the device grows (truncate, losetup -c) with nothing said to the target; the
# host's next Keep Alive has the controller measure it again and send the Namespace Attribute
# Changed notice, and the block device takes the new size by itself.
grown_block_namespace() {
    local port=4422 nqn=nqn.2026-11.io.iser-target:guest-block loop dev ok=0
    sr_modprobe loop
    truncate -s 64M "$WORK/block.img"
    loop="$(losetup -f --show "$WORK/block.img")" || return 1
    cat >"$WORK/block.yaml" <<EOF
portals:
  - { address: $ADDR, port: $port, transport: nvme-tcp }
targets:
  - name: iqn.2026-11.io.iser-target:guest-block
    nqn: $nqn
    luns:
      - { id: 0, backing: { type: block, path: $loop }, write_cache: false }
EOF
    bg_start block env RUST_LOG=info "$BIN" serve --config "$WORK/block.yaml"
    if wait_tcp_listen "$ADDR:$port" &&
        nvme connect -t tcp -a "$ADDR" -s "$port" -n "$nqn" >/dev/null &&
        dev="$(nvme_wait_ns "$nqn" 30)" && disk_size_is "$dev" $((64 << 20)) &&
        truncate -s 96M "$WORK/block.img" && losetup -c "$loop"; then
        if sr_wait 30 disk_size_is "$dev" $((96 << 20)); then
            ok=1
        else
            sr_log "the host still sees $(blockdev --getsize64 "$dev") bytes"
        fi
    fi
    nvme_disconnect "$nqn" >/dev/null 2>&1 || true
    bg_stop block || ok=0
    losetup -d "$loop" || true
    ((ok))
}

run_checks() {
    T="$1" P="${PORT[$1]}" N="${NQN[$1]}" DEV="" CTRL=""
    local failed_before=$FAILED total=23
    [[ $T == ours ]] && total=25
    sr_log "=== $T: NVMe/TCP checks on $ADDR:$P ==="
    check "$T: nvme discover lists $N" discover_lists
    if ! check "$T: nvme connect" connect_and_find || [[ -z "$DEV" ]]; then
        fail "$T: no namespace: the remaining checks cannot run"
        FAILED=$((failed_before + total))
        return 0
    fi
    check "$T: namespace is $NS_MIB MiB" test "$(blockdev --getsize64 "$DEV")" = $((NS_MIB << 20))
    check "$T: nvme id-ctrl (subnqn)" id_ctrl_subnqn
    check "$T: nvme id-ns (nsze x LBA size)" id_ns_size
    check "$T: nvme ns-descs (a non-zero identifier)" ns_descs_identify
    check "$T: nvme smart-log" smart_log
    check "$T: nvme list-subsys" list_subsys
    check "$T: fio 4 KiB randwrite QD16 crc32c verify" fio_verify "$DEV" 16M 4k 16
    check "$T: fio 1 MiB writes crc32c verify" fio_verify "$DEV" 64M 1m 4
    check "$T: blkdiscard, read-back" discard_readback
    check "$T: blkdiscard -z, read-back zeros" zeroout_readback
    check "$T: mkfs.ext4, files, fsck" mkfs_files_fsck
    check "$T: nvme disconnect" nvme_disconnect "$N"
    if check "$T: reconnect" connect_and_find; then
        check "$T: files intact after reconnect" files_intact
        nvme_disconnect "$N" || true
    else
        fail "$T: files intact after reconnect (not connected)"
    fi
    if check "$T: two I/O queues, header and data digests" digests_two_queues; then
        check "$T: fio verify over the digest connection" fio_two_jobs
    else
        fail "$T: fio verify over the digest connection (not connected)"
    fi
    nvme_disconnect "$N" >/dev/null 2>&1 || true
    check "$T: keep-alive timeout tears down a vanished host's controller" keep_alive_teardown
    check "$T: still serving a new host afterwards" still_serving
    check "$T: nvme connect-all" connect_all
    check "$T: namespace grown by 64 MiB while connected: the host sees it and writes there" \
        grown_while_connected
    if [[ $T == ours ]]; then
        check "$T: reservations: Linux's PR ioctls and nvme-cli, a second host fenced and told" \
            reservations
        check "$T: a block namespace grown under the target: the host sees it, no SIGHUP" \
            grown_block_namespace
    fi
    check "$T: a persistent discovery controller is told of a subsystem the host is let into" \
        discovery_change
    echo "$T: $((total - (FAILED - failed_before)))/$total passed" | tee -a "$RESULTS/nvme-tcp-summary.txt"
}

softroce_mounts
rxe_setup "$SOFTROCE_ADDR_CIDR"
nvme_host_setup
command -v nft >/dev/null || sr_die "nft (nftables) is not installed (softroce-vm.sh installs it)"
mkdir -p "$WORK"
: >"$RESULTS/nvme-tcp-summary.txt"
for t in "${TARGETS[@]}"; do
    case "$t" in
        nvmet|ours) ;;
        *) sr_die "unknown target '$t' (nvmet|ours)" ;;
    esac
    if "start_$t"; then
        run_checks "$t"
        "stop_$t" || fail "$t: clean stop"
    else
        fail "$t: target did not start"
    fi
done
check "no suspicious kernel messages" dmesg_check
sr_checks_done nvme-tcp
