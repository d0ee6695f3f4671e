# shellcheck shell=bash
# scripts/guest/lib.sh — helpers for test scripts running inside the SoftRoCE
# guest (scripts/softroce-vm.sh).  Source it:
#
#     source "$SOFTROCE_GUEST_LIB"     # or "$(dirname "$0")/lib.sh"
#     softroce_setup                   # rxe0 on dummy0 (192.168.77.1/24), iscsid
#
# Everything here runs inside the guest only: it loads modules, creates
# netdevs and RDMA links; never source it on a host.
#
# Initiator helpers (iscsi_discover, iscsi_login/iser_login/tcp_login,
# find_new_disk, iscsi_logout) do not assume the target is LIO: point them at
# any target listening on the rxe address.  lio_* helpers configure the
# reference target (LIO + ib_isert) through configfs.

SOFTROCE_NETDEV="${SOFTROCE_NETDEV:-dummy0}"
SOFTROCE_RXE="${SOFTROCE_RXE:-rxe0}"
SOFTROCE_ADDR_CIDR="${SOFTROCE_ADDR_CIDR:-192.168.77.1/24}"
# shellcheck disable=SC2034  # used by the scripts that source this file
SOFTROCE_ADDR="${SOFTROCE_ADDR_CIDR%/*}"
SOFTROCE_INITIATOR_IQN="${SOFTROCE_INITIATOR_IQN:-iqn.2004-10.com.example:softroce-vm-initiator}"
SOFTROCE_ISCSI_PORT="${SOFTROCE_ISCSI_PORT:-3260}"
CONFIGFS_TARGET=/sys/kernel/config/target

sr_log() { printf '[guest %s] %s\n' "$(cut -d' ' -f1 /proc/uptime)" "$*" >&2; }
sr_die() { sr_log "FATAL: $*"; exit 1; }

# Check reporting shared by the test scripts: one "PASS: …" or "FAIL: …" line per check on
# stdout, failures counted in FAILED; `sr_checks_done NAME` prints the count and returns
# non-zero when a check failed (the script's exit status).
FAILED=0
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; FAILED=$((FAILED + 1)); }
# check NAME CMD...: run CMD and report it with its duration; never aborts the script.
check() {
    local name="$1" t0=$SECONDS
    shift
    if "$@"; then pass "$name ($((SECONDS - t0)) s)"; else fail "$name"; fi
}
sr_checks_done() {
    echo "$1: $FAILED failed check(s)"
    ((FAILED == 0))
}

# sr_wait SECONDS CMD...: poll CMD every 0.2 s until it succeeds.
sr_wait() {
    local t="$1"; shift
    local end=$((SECONDS + t))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < end)) || return 1
        sleep 0.2
    done
}

sr_modprobe() {
    local m
    for m in "$@"; do modprobe "$m" || sr_die "modprobe $m failed"; done
}

# ----------------------------------------------------------------- basics
softroce_mounts() {
    sr_modprobe configfs
    mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config
    # Registering memory pins pages: lift RLIMIT_MEMLOCK (default 8 MiB) for
    # this shell and its children (init.sh already did it for PID 1's tree).
    ulimit -l unlimited
}

# rxe_setup [ADDR/PREFIX] [NETDEV] [RXE]: a dummy netdev carrying ADDR with a
# SoftRoCE (RoCEv2) device on top.  The dummy netdev never transmits anything
# anywhere; rxe loops packets to local QPs itself, so both ends of a
# connection can live in this guest on the same address.
rxe_setup() {
    local cidr="${1:-$SOFTROCE_ADDR_CIDR}" dev="${2:-$SOFTROCE_NETDEV}" rxe="${3:-$SOFTROCE_RXE}"
    sr_modprobe dummy rdma_rxe ib_uverbs rdma_ucm
    ip link show "$dev" >/dev/null 2>&1 || ip link add "$dev" type dummy
    ip addr add "$cidr" dev "$dev" 2>/dev/null || true
    # SOFTROCE_NETDEV_MTU: the netdev's MTU, from which rxe derives its RoCE path MTU (1500, the
    # default, gives 1024; 4200 or more gives 4096, the largest RoCE MTU). Set before the rxe
    # link exists so every QP takes it.
    if [[ -n "${SOFTROCE_NETDEV_MTU:-}" ]]; then
        ip link set "$dev" mtu "$SOFTROCE_NETDEV_MTU" || sr_die "cannot set $dev mtu $SOFTROCE_NETDEV_MTU"
    fi
    ip link set "$dev" up
    if ! rdma link show "$rxe/1" >/dev/null 2>&1; then
        rdma link add "$rxe" type rxe netdev "$dev" || sr_die "rdma link add $rxe failed"
    fi
    sr_wait 30 rxe_port_active "$rxe" || sr_die "$rxe port did not become ACTIVE"
    sr_log "$rxe on $dev ($cidr) is ACTIVE, $(ibv_devinfo -d "$rxe" 2>/dev/null | grep -o 'active_mtu:.*' || echo 'active_mtu unknown')"
}

rxe_port_active() {
    rdma link show "$1/1" 2>/dev/null | grep -q 'state ACTIVE'
}

# iscsid_start: open-iscsi's daemon in the foreground mode, backgrounded.
# Writes a fresh initiator name and clears the node database in the overlay
# (the host's /etc/iscsi is the lower layer; nothing is written to the host).
iscsid_start() {
    sr_modprobe scsi_transport_iscsi iscsi_tcp ib_iser sd_mod
    mkdir -p /etc/iscsi /run/lock/iscsi
    printf 'InitiatorName=%s\n' "$SOFTROCE_INITIATOR_IQN" >/etc/iscsi/initiatorname.iscsi
    rm -rf /etc/iscsi/nodes /etc/iscsi/send_targets /var/lib/iscsi/nodes /var/lib/iscsi/send_targets
    if ! pgrep -x iscsid >/dev/null; then
        iscsid -f >/run/iscsid.log 2>&1 &
        # iscsiadm reaches iscsid over an abstract unix socket; until it is
        # listening every iscsiadm call fails with "can not connect" (rc 20).
        # `-m session` with no sessions returns 21 once iscsid answers.
        sr_wait 30 iscsid_ready || { cat /run/iscsid.log >&2; sr_die "iscsid did not come up"; }
    fi
    sr_log "iscsid running (initiator $SOFTROCE_INITIATOR_IQN)"
}

iscsid_ready() {
    local rc=0
    iscsiadm -m session >/dev/null 2>&1 || rc=$?
    [[ $rc == 0 || $rc == 21 ]]
}

# softroce_setup: everything a typical test needs.
softroce_setup() {
    softroce_mounts
    rxe_setup "$SOFTROCE_ADDR_CIDR"
    iscsid_start
}

# wait_rdma_listen ADDR:PORT [TIMEOUT]: wait until some RDMA CM id listens
# on ADDR:PORT (e.g. a target started in the background).  Uses the rdma
# tool's cm_id resource dump ("state LISTEN ... src-addr ADDR:PORT").
wait_rdma_listen() {
    sr_wait "${2:-30}" rdma_listening "$1" || { sr_log "nothing listens on RDMA CM $1"; return 1; }
}
rdma_listening() {
    rdma resource show cm_id 2>/dev/null | grep 'state LISTEN' | grep -q "src-addr $1 "
}

# wait_tcp_listen ADDR:PORT [TIMEOUT]: same for a TCP listener.
wait_tcp_listen() {
    sr_wait "${2:-30}" tcp_listening "$1" || { sr_log "nothing listens on TCP $1"; return 1; }
}
tcp_listening() {
    ss -Hltn "sport = :${1##*:}" 2>/dev/null | grep -q "${1%:*}:${1##*:}"
}

# ------------------------------------------------------- initiator helpers
# iSCSI iface names: open-iscsi has built-in ifaces "default" (tcp) and "iser".
sr_iface() {
    case "${1:-iser}" in
        iser) echo iser ;;
        tcp|default) echo default ;;
        *) sr_die "unknown transport '$1' (iser|tcp)" ;;
    esac
}

# iscsi_discover ADDR [iser|tcp] [PORT]: SendTargets discovery; prints
# "ADDR:PORT,TPGT IQN" lines (iscsiadm's format) and returns iscsiadm's status.
iscsi_discover() {
    local addr="$1" iface; iface="$(sr_iface "${2:-iser}")"
    local port="${3:-$SOFTROCE_ISCSI_PORT}"
    iscsiadm -m discovery -t st -p "$addr:$port" -I "$iface"
}

# disk_snapshot: remember the current set of SCSI disks for find_new_disk.
# (Called automatically by iscsi_login.)
disk_snapshot() {
    SR_DISKS_BEFORE="$(sr_list_disks)"
}

sr_list_disks() {
    local d
    for d in /sys/block/sd*; do [[ -e "$d" ]] && basename "$d"; done | sort
}

# iscsi_login ADDR IQN [iser|tcp] [PORT]: log in to one target portal.
# Creates the node record itself, so no prior discovery is needed.
iscsi_login() {
    local addr="$1" iqn="$2" iface; iface="$(sr_iface "${3:-iser}")"
    local port="${4:-$SOFTROCE_ISCSI_PORT}"
    disk_snapshot
    iscsiadm -m node -o new -T "$iqn" -p "$addr:$port" -I "$iface" >/dev/null \
        || { sr_log "iscsiadm -o new failed"; return 1; }
    sr_log "login $iqn at $addr:$port over ${3:-iser}"
    iscsiadm -m node -T "$iqn" -p "$addr:$port" -I "$iface" --login
}
iser_login() { iscsi_login "$1" "$2" iser "${3:-}"; }
tcp_login()  { iscsi_login "$1" "$2" tcp "${3:-}"; }

# find_new_disk [TIMEOUT]: wait for a SCSI disk that was not there at the
# last disk_snapshot/iscsi_login and print its /dev path.  The SCSI scan after
# login is asynchronous; devtmpfs creates the node (there is no udev here).
find_new_disk() {
    local t="${1:-60}" end d
    end=$((SECONDS + t))
    while ((SECONDS < end)); do
        d="$(comm -13 <(printf '%s\n' "${SR_DISKS_BEFORE:-}") <(sr_list_disks) | head -n1)"
        if [[ -n "$d" && -b "/dev/$d" ]] && (( $(cat "/sys/block/$d/size") > 0 )); then
            echo "/dev/$d"; return 0
        fi
        sleep 0.2
    done
    sr_log "no new SCSI disk appeared within ${t}s"
    return 1
}

# session_disk IQN: /dev path of the disk(s) of the session to IQN (sysfs,
# independent of snapshots).
session_disk() {
    local s b
    for s in /sys/class/iscsi_session/session*; do
        [[ "$(cat "$s/targetname" 2>/dev/null)" == "$1" ]] || continue
        for b in "$s"/device/target*/*/block/*; do
            [[ -e "$b" ]] && echo "/dev/$(basename "$b")"
        done
    done
}

# disk_size_is DEV BYTES: the block device DEV has BYTES now (for sr_wait: measured on each try).
disk_size_is() { [[ "$(blockdev --getsize64 "$1")" == "$2" ]]; }

# session_logged_in IQN: the kernel initiator's session to IQN is up again.
session_logged_in() {
    local s
    for s in /sys/class/iscsi_session/session*; do
        [[ "$(cat "$s/targetname" 2>/dev/null)" == "$1" ]] || continue
        [[ "$(cat "$s/state" 2>/dev/null)" == LOGGED_IN ]] && return 0
    done
    return 1
}

# session_transport IQN: "iser" or "tcp" for the logged-in session to IQN.
session_transport() {
    iscsiadm -m session 2>/dev/null | awk -v iqn="$1" '$4 == iqn { sub(":", "", $1); print $1; exit }'
}

# iscsi_logout [IQN [ADDR [PORT]]]: log out of one target, or of all sessions;
# deletes the node records too.
iscsi_logout() {
    local rc=0
    if [[ -n "${1:-}" ]]; then
        local args=(-T "$1")
        [[ -n "${2:-}" ]] && args+=(-p "$2:${3:-$SOFTROCE_ISCSI_PORT}")
        iscsiadm -m node "${args[@]}" --logout || rc=$?
        iscsiadm -m node "${args[@]}" -o delete >/dev/null 2>&1 || true
    else
        iscsiadm -m node --logoutall=all || rc=$?
        iscsiadm -m node -o delete >/dev/null 2>&1 || true
    fi
    return "$rc"
}
iser_logout() { iscsi_logout "$@"; }

# verify_disk DEV [MiB]: write MiB (16) of random data with O_DIRECT, read it
# back with O_DIRECT, compare.  Uses $SOFTROCE_WORK (default /tmp) for the
# pattern files.
verify_disk() {
    local dev="$1" mib="${2:-16}" work="${SOFTROCE_WORK:-/tmp}"
    local pat="$work/pattern.$$" got="$work/readback.$$"
    head -c "$((mib << 20))" /dev/urandom >"$pat"
    dd if="$pat" of="$dev" bs=1M count="$mib" oflag=direct conv=fsync status=none \
        || { sr_log "O_DIRECT write to $dev failed"; return 1; }
    dd if="$dev" of="$got" bs=1M count="$mib" iflag=direct status=none \
        || { sr_log "O_DIRECT read from $dev failed"; return 1; }
    if ! cmp "$pat" "$got"; then
        sr_log "data read back from $dev differs from what was written"
        return 1
    fi
    sr_log "verify_disk $dev: ${mib} MiB O_DIRECT write/read compare OK"
    rm -f "$pat" "$got"
}

# fio_verify DEV [SIZE] [BS] [IODEPTH]: random O_DIRECT writes with crc32c
# verification on read-back (libaio; exercises queue depth > 1, unlike dd).
fio_verify() {
    local dev="$1" size="${2:-16M}" bs="${3:-64k}" qd="${4:-8}"
    fio --name=softroce-verify --filename="$dev" --direct=1 --ioengine=libaio \
        --rw=randwrite --bs="$bs" --iodepth="$qd" --size="$size" \
        --verify=crc32c --do_verify=1 --verify_fatal=1 --output-format=terse >/dev/null \
        || { sr_log "fio verify on $dev failed"; return 1; }
    sr_log "fio_verify $dev: $size random writes bs=$bs qd=$qd verified OK"
}

# bg_start NAME CMD...: run CMD in the background, output to
# $SOFTROCE_RESULTS/NAME.log (comes back to the host), pid in SR_BG_NAME.
# bg_stop NAME: SIGTERM it, wait up to 10 s, then SIGKILL.  Returns its exit
# status, except that dying from our SIGTERM (143) counts as success.
bg_start() {
    local name="$1"; shift
    local log="${SOFTROCE_RESULTS:-/tmp}/$name.log"
    "$@" >"$log" 2>&1 &
    printf -v "SR_BG_$name" '%s' "$!"
    sr_log "started $name (pid $!): $* (log: $log)"
}
bg_stop() {
    local var="SR_BG_$1" rc=0
    local pid="${!var:-}"
    [[ -n "$pid" ]] || { sr_log "bg_stop: $1 was not started"; return 1; }
    kill -TERM "$pid" 2>/dev/null || true
    sr_wait 10 bash -c "! kill -0 $pid" || kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || rc=$?
    [[ $rc == 143 ]] && rc=0
    [[ $rc == 0 ]] || sr_log "$1 (pid $pid) ended with status $rc"
    return "$rc"
}

# ------------------------------------------------- LIO reference target
# lio_setup_isert ADDR IQN [SIZE_MIB] [fileio|ramdisk] [PORT] [NAME]
# A LIO target IQN with one LUN and a network portal on ADDR:PORT that
# accepts both iSCSI/TCP and iSER (np/<portal>/iser = 1).  No ACLs, no auth:
# demo mode with write access (generate_node_acls=1,
# demo_mode_write_protect=0).  fileio backs the LUN with a sparse file on
# tmpfs ($SOFTROCE_LIO_DIR, default /run/lio), which lets tests look at what
# the target actually stored.  targetcli is not used: it needs a D-Bus
# service (rtslib via targetd/dbus) that the guest does not run.
# NAME (default lun0) names the backstore and the fileio file, so calling this
# once per IQN with distinct NAMEs gives several targets on one portal.
lio_setup_isert() {
    local addr="$1" iqn="$2" mib="${3:-64}" kind="${4:-fileio}" port="${5:-$SOFTROCE_ISCSI_PORT}"
    local name="${6:-lun0}" dir="${SOFTROCE_LIO_DIR:-/run/lio}" so tpg np
    softroce_mounts
    sr_modprobe target_core_mod iscsi_target_mod ib_isert
    case "$kind" in
        fileio)
            sr_modprobe target_core_file
            mkdir -p "$dir"
            truncate -s "${mib}M" "$dir/$name.img"
            so="$CONFIGFS_TARGET/core/fileio_0/$name"
            mkdir -p "$so"
            echo "fd_dev_name=$dir/$name.img,fd_dev_size=$((mib << 20))" >"$so/control"
            ;;
        ramdisk)
            # rd_mcp lives in target_core_mod itself.
            so="$CONFIGFS_TARGET/core/rd_mcp_0/$name"
            mkdir -p "$so"
            echo "rd_pages=$((mib << 8))" >"$so/control"
            ;;
        *) sr_die "lio_setup_isert: unknown backstore '$kind'" ;;
    esac
    echo 1 >"$so/enable"
    # As targetcli does: LIO answers INQUIRY VPD pages other than 0x00 (serial,
    # device identification, block limits, ...) only once a unit serial is set,
    # and that is only possible before the LUN is exported.
    cat /proc/sys/kernel/random/uuid >"$so/wwn/vpd_unit_serial"
    tpg="$CONFIGFS_TARGET/iscsi/$iqn/tpgt_1"
    mkdir -p "$tpg/lun/lun_0"
    ln -s "$so" "$tpg/lun/lun_0/lio_lun0"
    np="$tpg/np/$addr:$port"
    mkdir "$np"                    # starts the iSCSI/TCP listener
    echo 1 >"$np/iser"             # adds the iSER (RDMA CM) listener
    echo 1 >"$tpg/attrib/generate_node_acls"
    echo 1 >"$tpg/attrib/cache_dynamic_acls"
    echo 0 >"$tpg/attrib/demo_mode_write_protect"
    echo 0 >"$tpg/attrib/authentication"
    echo 1 >"$tpg/enable"
    sr_log "LIO target $iqn: ${mib} MiB $kind LUN, portal $addr:$port (tcp+iser)"
}

# lio_backing_file [NAME]: path of the fileio LUN's backing file.
lio_backing_file() { echo "${SOFTROCE_LIO_DIR:-/run/lio}/${1:-lun0}.img"; }

# lio_teardown: remove every LIO iSCSI target and backstore (reverse order of
# creation; configfs refuses rmdir while something still links to an object).
lio_teardown() {
    local iqn tpg x
    [[ -d "$CONFIGFS_TARGET/iscsi" ]] || return 0
    for iqn in "$CONFIGFS_TARGET"/iscsi/iqn.* "$CONFIGFS_TARGET"/iscsi/eui.* "$CONFIGFS_TARGET"/iscsi/naa.*; do
        [[ -d "$iqn" ]] || continue
        for tpg in "$iqn"/tpgt_*; do
            [[ -d "$tpg" ]] || continue
            echo 0 >"$tpg/enable" 2>/dev/null || true
            for x in "$tpg"/np/*; do
                [[ -d "$x" ]] || continue
                echo 0 >"$x/iser" 2>/dev/null || true
                rmdir "$x"
            done
            for x in "$tpg"/lun/lun_*; do
                [[ -d "$x" ]] || continue
                find "$x" -maxdepth 1 -type l -delete
                rmdir "$x"
            done
            for x in "$tpg"/acls/*; do [[ -d "$x" ]] && rmdir "$x"; done
            rmdir "$tpg"
        done
        rmdir "$iqn"
    done
    for x in "$CONFIGFS_TARGET"/core/*_*/*; do
        [[ -d "$x" && -e "$x/enable" ]] && rmdir "$x"
    done
    for x in "$CONFIGFS_TARGET"/core/*_*; do
        [[ -d "$x" ]] && rmdir "$x" 2>/dev/null
    done
    rm -rf "${SOFTROCE_LIO_DIR:-/run/lio}"
    sr_log "LIO configuration removed"
}

# lio_write_cache NAME [0|1]: advertise (1, default) or withdraw the volatile write cache
# (WCE in the caching mode page) of the fileio backstore NAME.  lio_setup_isert's fileio
# backstores open their file O_DSYNC and report WCE=0; on tmpfs a sync costs nothing (shmem's
# fsync is a no-op), so WCE=1 there only changes what the initiator is told, which is what a
# benchmark comparing targets "with write cache on" needs.  emulate_write_cache may be changed
# while the LUN is exported (drivers/target/target_core_configfs.c).
lio_write_cache() {
    local attr="$CONFIGFS_TARGET/core/fileio_0/$1/attrib/emulate_write_cache"
    [[ -e "$attr" ]] || { sr_log "lio_write_cache: no fileio backstore $1"; return 1; }
    echo "${2:-1}" >"$attr"
}

# --------------------------------------------------- tgt reference target
# tgt_start ADDR [CONTROL_PORT]: a private tgtd (Debian's tgt, built with iSER) in the
# background, iSCSI/TCP on ADDR:3260 and iSER on port 3260 of every address (tgt's iser driver
# binds its RDMA CM listener to INADDR_ANY, usr/iscsi/iser.c iser_ib_init).  The iSER port is
# tgt's default because it cannot be chosen reliably: iser_param_parser (usr/iscsi/iser.c)
# checks errno after strtol without clearing it first, so tgtd 1.0.85 refuses "--iser
# port=N" with "invalid port supplied".  pool_sz_mb=128, tgt's minimum, caps the registered
# buffer pool, which would otherwise pin 1 GiB of the guest at the first iSER login.  Log in
# $SOFTROCE_RESULTS/tgtd.log.  tgt serves one transport per target: add an "iscsi" target for
# TCP and an "iser" target for iSER (tgt_add_target).
tgt_start() {
    local addr="$1" cport="${2:-1}" port=3260
    bg_start tgtd tgtd -f -C "$cport" --iscsi "portal=$addr:$port" --iser pool_sz_mb=128
    wait_tcp_listen "$addr:$port" || { sr_log "tgtd: no iSCSI/TCP listener"; return 1; }
    wait_rdma_listen "0.0.0.0:$port" || { sr_log "tgtd: no iSER listener"; return 1; }
    sr_log "tgtd up: iSCSI/TCP $addr:$port, iSER *:$port, control port $cport"
}

# tgt_add_target CONTROL_PORT TID iscsi|iser IQN FILE: target TID named IQN on the given
# transport, open to every initiator address, with FILE as LUN 1 (bs rdwr: pread/pwrite on the
# file; tgt's LUN 0 is its own controller LU).  tgt's caching mode page has WCE set by default
# (usr/sbc.c), so the write cache is on.  An iser target also gets $SOFTROCE_INITIATOR_IQN in
# its initiator-name ACL: tgt 1.0.85's iSER login (usr/iscsi/iser_text.c iser_login_start)
# demands that the address ACL *and* the name ACL pass, and an empty name ACL never passes, so
# every iSER login fails with "target not found" (tgt commit b73c64d fixed it in 2023).
tgt_add_target() {
    local cport="$1" tid="$2" lld="$3" iqn="$4" file="$5"
    local adm=(tgtadm -C "$cport" --lld "$lld") name_acl=()
    [[ "$lld" == iser ]] && name_acl=(--initiator-name "$SOFTROCE_INITIATOR_IQN")
    if ! "${adm[@]}" --mode target --op new --tid "$tid" --targetname "$iqn" ||
        ! "${adm[@]}" --mode target --op bind --tid "$tid" --initiator-address ALL ||
        { ((${#name_acl[@]})) && ! "${adm[@]}" --mode target --op bind --tid "$tid" "${name_acl[@]}"; } ||
        ! "${adm[@]}" --mode logicalunit --op new --tid "$tid" --lun 1 \
            --backing-store "$file" --bstype rdwr; then
        sr_log "tgt_add_target: tgtadm failed for $iqn ($lld)"
        return 1
    fi
    sr_log "tgt target $tid $iqn over $lld: LUN 1 = $file (bs rdwr)"
}

# tgt_stop [CONTROL_PORT]: delete every target of the tgtd started by tgt_start, then stop it
# (tgtd ignores SIGTERM; "system delete" ends it once no targets are left).  It first waits for
# the last I_T nexus to go and a little longer: tgtd 1.0.85 segfaults when a target is deleted
# while an iSER connection that just logged out is still flushing its receive queue.
tgt_stop() {
    local cport="${1:-1}" lld tid
    sr_wait 30 tgt_idle "$cport" || sr_log "tgt_stop: tgtd still has sessions; deleting anyway"
    sleep 2
    for lld in iscsi iser; do
        for tid in $(tgtadm -C "$cport" --lld "$lld" --mode target --op show 2>/dev/null |
                         awk '/^Target [0-9]+:/ { sub(":", "", $2); print $2 }'); do
            tgtadm -C "$cport" --lld "$lld" --mode target --op delete --force --tid "$tid" || true
        done
    done
    tgtadm -C "$cport" --mode system --op delete >/dev/null 2>&1 || true
    sr_wait 10 bash -c "! kill -0 ${SR_BG_tgtd:-0}" || true
    bg_stop tgtd
}

# tgt_idle CONTROL_PORT: true when no tgt target has an I_T nexus (a session) left.
tgt_idle() {
    local lld
    for lld in iscsi iser; do
        tgtadm -C "$1" --lld "$lld" --mode target --op show | grep -q 'I_T nexus: ' && return 1
    done
    return 0
}

# dmesg_check: fail if the kernel log shows iSER/RDMA/SCSI trouble that a
# passing data compare could hide (messages from ib_iser / ib_isert / rxe).
dmesg_check() {
    local bad
    # The kernel command line is logged too; keep it out of the match.
    bad="$(dmesg | grep -v 'ommand line:' \
        | grep -E -e 'BUG:|WARNING:|Oops|general protection|Call Trace' \
                  -e 'wrong datalen|unexpected remote invalidation|RNR retry|retry exceeded' \
                  -e '(iser|isert|rxe)[^ ]*: .*([Ee]rror|[Ff]ail)' || true)"
    if [[ -n "$bad" ]]; then
        sr_log "suspicious kernel messages:"
        printf '%s\n' "$bad" >&2
        return 1
    fi
}

# ------------------------------------------------------------ NVMe/TCP host and nvmet
# The kernel's NVMe/TCP host (nvme-tcp) driven by nvme-cli, and the kernel's NVMe/TCP target
# (nvmet-tcp, configured through configfs) as the reference. Like the iSCSI helpers these do not
# assume which target answers: point them at any NVMe/TCP portal on the rxe address.
SOFTROCE_HOSTNQN="${SOFTROCE_HOSTNQN:-nqn.2014-08.org.nvmexpress:uuid:5e1f0c0e-0000-4000-8000-000000000001}"
SOFTROCE_HOSTID="${SOFTROCE_HOSTID:-5e1f0c0e-0000-4000-8000-000000000001}"
CONFIGFS_NVMET=/sys/kernel/config/nvmet

# nvme_host_setup: the nvme-tcp host module and a fixed host NQN/ID in the guest's /etc (the
# overlay: nothing reaches the host). nvme-cli reads /etc/nvme/hostnqn and hostid.
nvme_host_setup() {
    command -v nvme >/dev/null || sr_die "nvme-cli is not installed (softroce-vm.sh installs it)"
    sr_modprobe nvme_core nvme_fabrics nvme_tcp
    mkdir -p /etc/nvme
    echo "$SOFTROCE_HOSTNQN" >/etc/nvme/hostnqn
    echo "$SOFTROCE_HOSTID" >/etc/nvme/hostid
}

# nvme_ctrls NQN: names (nvme0 ...) of the host's controllers connected to subsystem NQN.
nvme_ctrls() {
    local c
    for c in /sys/class/nvme/nvme*; do
        [[ -e "$c/subsysnqn" && "$(cat "$c/subsysnqn" 2>/dev/null)" == "$1" ]] && basename "$c"
    done
    return 0
}

# nvme_ns_dev NQN: /dev path of the first namespace block device of subsystem NQN. With native
# multipath (Debian's default) the disk hangs off the subsystem, without it off the controller.
nvme_ns_dev() {
    local s c b
    for s in /sys/class/nvme-subsystem/nvme-subsys*; do
        [[ "$(cat "$s/subsysnqn" 2>/dev/null)" == "$1" ]] || continue
        for b in "$s"/nvme*n*; do
            [[ -e "$b" && -b "/dev/$(basename "$b")" ]] && { echo "/dev/$(basename "$b")"; return 0; }
        done
    done
    for c in $(nvme_ctrls "$1"); do
        for b in /sys/class/nvme/"$c"/nvme*n*; do
            [[ -e "$b" && -b "/dev/$(basename "$b")" ]] && { echo "/dev/$(basename "$b")"; return 0; }
        done
    done
    return 1
}

# nvme_wait_ns NQN [TIMEOUT]: wait for nvme_ns_dev NQN to exist with a non-zero size; prints it.
nvme_wait_ns() {
    local end=$((SECONDS + ${2:-30})) d
    while ((SECONDS < end)); do
        d="$(nvme_ns_dev "$1" || true)"
        if [[ -n "$d" ]] && (($(cat "/sys/block/${d#/dev/}/size") > 0)); then echo "$d"; return 0; fi
        sleep 0.2
    done
    sr_log "no namespace of $1 appeared within ${2:-30}s"
    return 1
}

# nvme_disconnect NQN: disconnect every controller of NQN and wait until they are gone.
nvme_disconnect() {
    nvme disconnect -n "$1" >/dev/null || return 1
    sr_wait 30 test -z "$(nvme_ctrls "$1")"
}

# nvmet_setup ADDR PORT NQN DEVICE [PORT_ID]: a kernel NVMe/TCP target (nvmet-tcp) exporting
# DEVICE as namespace 1 of subsystem NQN, open to any host, listening on ADDR:PORT. A block
# device gets the bdev backend (its Write Zeroes works on any device); a regular file the file
# backend with buffered_io=1, as tmpfs refuses the O_DIRECT open it makes otherwise (its Write
# Zeroes is FALLOC_FL_ZERO_RANGE, which tmpfs refuses too: use a loop device to test that).
nvmet_setup() {
    local addr="$1" port="$2" nqn="$3" dev="$4" id="${5:-1}"
    local s="$CONFIGFS_NVMET/subsystems/$nqn" p="$CONFIGFS_NVMET/ports/$id"
    softroce_mounts
    sr_modprobe nvmet nvmet_tcp
    mkdir "$s" && echo 1 >"$s/attr_allow_any_host" &&
        mkdir "$s/namespaces/1" && echo -n "$dev" >"$s/namespaces/1/device_path" &&
        { [[ ! -f "$dev" ]] || echo 1 >"$s/namespaces/1/buffered_io"; } &&
        echo 1 >"$s/namespaces/1/enable" &&
        mkdir "$p" && echo "$addr" >"$p/addr_traddr" && echo tcp >"$p/addr_trtype" &&
        echo "$port" >"$p/addr_trsvcid" && echo ipv4 >"$p/addr_adrfam" &&
        ln -s "$s" "$p/subsystems/$nqn" || { sr_log "nvmet_setup: configfs refused"; return 1; }
    sr_log "nvmet-tcp: $nqn namespace 1 = $dev on $addr:$port"
}

# nvmet_teardown: remove every nvmet port and subsystem (links first, as configfs demands).
nvmet_teardown() {
    local p s n
    [[ -d "$CONFIGFS_NVMET" ]] || return 0
    for p in "$CONFIGFS_NVMET"/ports/*; do
        [[ -d "$p" ]] || continue
        find "$p/subsystems" -mindepth 1 -maxdepth 1 -type l -delete
        rmdir "$p"
    done
    for s in "$CONFIGFS_NVMET"/subsystems/*; do
        [[ -d "$s" ]] || continue
        for n in "$s"/namespaces/*; do
            [[ -d "$n" ]] || continue
            echo 0 >"$n/enable"
            rmdir "$n"
        done
        rmdir "$s"
    done
    sr_log "nvmet configuration removed"
}

# ------------------------------------------------------------- gateways
# Several iser-target processes serving one LUN (multipath.sh, nvme-multipath.sh). The script
# sets BIN (the binary), WORK (gateway NAME's configuration is $WORK/NAME.yaml), RESULTS
# (gateway NAME logs to $RESULTS/gateway-NAME.log) and PORT (the portal waited on).

# start_gateway NAME ADDR: run gateway NAME in the background (pid in GW_NAME) and wait until
# it listens on ADDR:PORT.
start_gateway() {
    "$BIN" serve --config "$WORK/$1.yaml" >>"$RESULTS/gateway-$1.log" 2>&1 &
    printf -v "GW_$1" '%s' "$!"
    sr_log "gateway $1 started (pid $!) on $2:$PORT"
    wait_tcp_listen "$2:$PORT" 30
}

# set_gateway_state NAME STATE: drain or restore gateway NAME while it runs: writes
# `alua_state: STATE` into its configuration and sends SIGHUP (docs/multipath.md), then waits
# until its log says the state changed.
set_gateway_state() {
    local conf="$WORK/$1.yaml" log="$RESULTS/gateway-$1.log" pid_var="GW_$1" seen
    if grep -q '^alua_state:' "$conf"; then
        sed -i "s/^alua_state:.*/alua_state: $2/" "$conf"
    else
        echo "alua_state: $2" >>"$conf"
    fi
    seen=$(grep -c 'ALUA state changed' "$log")
    kill -HUP "${!pid_var}" || return 1
    sr_wait 10 gateway_logged "$log" 'ALUA state changed' "$((seen + 1))" ||
        { sr_log "gateway $1 did not change its ALUA state to $2"; return 1; }
    sr_log "gateway $1 is $2 (SIGHUP)"
}
# gateway_logged LOG TEXT N: LOG has at least N lines with TEXT.
gateway_logged() { (($(grep -c "$2" "$1") >= $3)); }

# Gateway-failover fio: random 16 KiB writes at QD16 with crc32c verify, rate-capped so that the
# run outlasts a gateway's kill and restart on any host: 48 MiB at 1.5 MiB/s is at least 32 s (a
# quiet CI host otherwise writes 96 MiB in 6 s and fio ended before the failover was seen). A
# busy host slower than the cap only makes the run longer.
FIO_SIZE=48M
FIO_WRITE_RATE=1536k

# gateway_fio DEV OUTPUT [FIO_ARGS...]: fio's verified random writes on DEV (output in
# $RESULTS/OUTPUT); extra arguments (--size, --rate) are appended.
gateway_fio() {
    local dev="$1" out="$2"
    shift 2
    fio --name=gateways --filename="$dev" --direct=1 --ioengine=libaio --rw=randwrite --bs=16k \
        --iodepth=16 --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_backlog=512 \
        --verify_state_save=0 --eta=never --output="$RESULTS/$out" "$@"
}

# fio_result STATUS OUTPUT WHAT: PASS when fio exited 0 and reported no error, else FAIL.
fio_result() {
    cat "$RESULTS/$2" >&2
    if (($1 == 0)) && ! grep -q 'err=[^ 0]' "$RESULTS/$2"; then
        pass "fio with crc32c verify on $3: no I/O error, verify passed"
    else
        fail "fio on $3 failed (status $1)"
    fi
}

# fio_across_gateway_kill DEV OUTPUT ADDR: fio on DEV while gateway a (on ADDR) is SIGKILLed 8 s
# in and restarted 10 s later; checks that fio outlasted the kill and ended without error with
# its verify passed.
fio_across_gateway_kill() {
    local dev="$1" out="$2" addr="$3" fio_pid status
    gateway_fio "$dev" "$out" --size="$FIO_SIZE" --rate=,"$FIO_WRITE_RATE" &
    fio_pid=$!
    sleep 8
    if kill -0 "$fio_pid" 2>/dev/null; then
        kill -KILL "$GW_a"
        wait "$GW_a" 2>/dev/null
        sr_log "gateway a SIGKILLed under fio"
        sleep 10
        if kill -0 "$fio_pid" 2>/dev/null; then
            pass "fio still running 10 s after gateway a died"
        else
            fail "fio ended within 10 s of the kill (too short to show the failover?)"
        fi
        start_gateway a "$addr" || fail "gateway a did not start again"
    else
        fail "fio ended before gateway a was killed"
    fi
    wait "$fio_pid"
    status=$?
    fio_result "$status" "$out" "$dev across the failover"
}

# stop_gateways NAME...: SIGTERM each gateway and wait for it.
stop_gateways() {
    local g pid_var
    for g in "$@"; do
        pid_var="GW_$g"
        kill -TERM "${!pid_var}" 2>/dev/null
        wait "${!pid_var}" 2>/dev/null
    done
}
