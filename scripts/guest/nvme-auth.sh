#!/bin/bash
# NVMe in-band authentication (DH-HMAC-CHAP, NVMe base 2.0 §8.13) between the
# kernel's NVMe/TCP host (nvme-tcp + nvme-cli) and the kernel's NVMe/TCP target (nvmet-tcp,
# configfs) as the reference, then ours: the same checks on both.
#
#   cargo build --release --bin iser-target      # for "ours"
#   SOFTROCE_VM_KERNEL_SUITE=bookworm-backports \
#       scripts/softroce-vm.sh scripts/guest/nvme-auth.sh [nvmet] [ours]     (default: both)
#
# The guest kernel must have CONFIG_NVME_AUTH (the host's side) and, for nvmet,
# CONFIG_NVME_TARGET_AUTH: Debian 12's 6.1 has neither, its bookworm-backports 6.12 both. On a
# kernel without them the script stops at once with an error (a failure, never a skip).
#
# Each target exports one 64 MiB namespace backed by a file on tmpfs (nvmet: through a loop
# device; ours: `backing: {type: file}`), nvmet on port 4420, ours on 4421, to these hosts only
# (nvmet: attr_allow_any_host 0 and hosts/ linked into allowed_hosts/; ours: `allowed_hosts`):
#   - the guest's host NQN ($SOFTROCE_HOSTNQN) with a host key and a controller key
#     (nvme gen-dhchap-key -m 1: SHA-256 key transforms);
#   - an "open" host listed without a key;
#   - three hosts with a key each, transformed with SHA-256, SHA-384 and SHA-512 (-m 1, 2, 3;
#     the exchange in that hash too: nvmet's dhchap_hash, our dhchap_hash);
#   - two hosts with a host key and a controller key whose entries name a Diffie-Hellman group,
#     ffdhe2048 and ffdhe8192 (nvmet's dhchap_dhgroup, our dhchap_dhgroup).
# The checks, run against each target in turn: connect with the host's secret (the kernel logs
# "qid 0: authenticated") and fio verify; with the controller's secret too (bidirectional: the
# kernel logs "qid 0: controller authenticated") and fio verify; two I/O queues (each queue
# authenticates both ways: the host's debug messages, turned on for drivers/nvme/host/auth.c,
# show each queue's Success2) and fio verify with two jobs; a wrong host secret, a wrong
# controller secret, no secret, and a host not listed are refused with no block device
# appearing, and the target still serves a right connect right after; the open host connects
# without a secret; each hash's key authenticates, in that hash; each DH group's host authenticates both ways
# on every queue; the host's key changed on the running target (nvmet: its configfs dhchap_key;
# ours: the configuration edited and SIGHUP) refuses the old key and takes the new. One PASS/FAIL line per check, a "N/M passed" line per target (also in
# $SOFTROCE_RESULTS/nvme-auth-summary.txt); exits non-zero when a check failed.
set -euo pipefail
# shellcheck source=scripts/guest/lib.sh
source "$(dirname "$(readlink -f "$0")")/lib.sh"

ADDR="$SOFTROCE_ADDR"
REPO="$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd -P)"
BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/iser-target"
WORK=/run/nvme-auth-test
NS_MIB=64
declare -A PORT=([nvmet]=4420 [ours]=4421)
declare -A NQN=([nvmet]=nqn.2026-11.io.iser-target:nvmet-auth [ours]=nqn.2026-11.io.iser-target:auth)
RESULTS="${SOFTROCE_RESULTS:-/tmp}"
TARGETS=("$@")
((${#TARGETS[@]})) || TARGETS=(nvmet ours)

# The other hosts of this guest: NQN and Host Identifier (one UUID for both: nvme-cli and the
# kernel keep a host NQN and its Host ID together).
host_nqn() { echo "nqn.2014-08.org.nvmexpress:uuid:$1"; }
OPEN_ID=5e1f0c0e-0000-4000-8000-0000000000a0
UNLISTED_ID=5e1f0c0e-0000-4000-8000-0000000000af
declare -A HASH_ID=([1]=5e1f0c0e-0000-4000-8000-0000000000a1 [2]=5e1f0c0e-0000-4000-8000-0000000000a2
                    [3]=5e1f0c0e-0000-4000-8000-0000000000a3)
declare -A HASH_NAME=([1]=SHA-256 [2]=SHA-384 [3]=SHA-512)
declare -A HASH_HMAC=([1]="hmac(sha256)" [2]="hmac(sha384)" [3]="hmac(sha512)")
declare -A HASH_KEY=()
# Two more hosts whose exchanges add a Diffie-Hellman exchange (RFC 7919 groups; the smallest and
# the largest), each with a host key and a controller key.
DH_GROUPS=(ffdhe2048 ffdhe8192)
declare -A DH_ID=([ffdhe2048]=5e1f0c0e-0000-4000-8000-0000000000b1 [ffdhe8192]=5e1f0c0e-0000-4000-8000-0000000000b2)
declare -A DH_KEY=() DH_CTRL_KEY=()

# gen_key HMAC NQN: a new DHHC-1 secret, its key transformed with HMAC (1-3: SHA-256/384/512).
gen_key() { nvme gen-dhchap-key --hmac="$1" --nqn="$2"; }

# The keys, made afresh in every run; the same for both targets (the kernel host transforms a
# controller key with the subsystem's NQN, so each target's key differs after all).
make_keys() {
    local m g
    HOST_KEY="$(gen_key 1 "$SOFTROCE_HOSTNQN")" && CTRL_KEY="$(gen_key 1 "${NQN[nvmet]}")" &&
        WRONG_HOST_KEY="$(gen_key 1 "$SOFTROCE_HOSTNQN")" && WRONG_CTRL_KEY="$(gen_key 1 "${NQN[nvmet]}")" &&
        ROTATED_KEY="$(gen_key 1 "$SOFTROCE_HOSTNQN")" || return 1
    for m in 1 2 3; do
        HASH_KEY[$m]="$(gen_key "$m" "$(host_nqn "${HASH_ID[$m]}")")" || return 1
    done
    for g in "${DH_GROUPS[@]}"; do
        DH_KEY[$g]="$(gen_key 1 "$(host_nqn "${DH_ID[$g]}")")" && DH_CTRL_KEY[$g]="$(gen_key 1 "${NQN[nvmet]}")" ||
            return 1
    done
    sr_log "host key $HOST_KEY, controller key $CTRL_KEY"
}

# --- target setup ----------------------------------------------------------------------------
# nvmet_host NQN [KEY [CTRL_KEY [HASH [DHGROUP]]]]: host NQN allowed into subsystem $N,
# authenticating with KEY (and proving the controller with CTRL_KEY) with HASH (default
# hmac(sha256)) and DHGROUP (default null).
nvmet_host() {
    local h="$CONFIGFS_NVMET/hosts/$1" s="$CONFIGFS_NVMET/subsystems/$N"
    mkdir "$h" || return 1
    if [[ -n "${2:-}" ]]; then
        echo -n "$2" >"$h/dhchap_key" && echo -n "${4:-hmac(sha256)}" >"$h/dhchap_hash" &&
            echo -n "${5:-null}" >"$h/dhchap_dhgroup" || return 1
    fi
    if [[ -n "${3:-}" ]]; then echo -n "$3" >"$h/dhchap_ctrl_key" || return 1; fi
    ln -s "$h" "$s/allowed_hosts/$1"
}

start_nvmet() {
    local m g
    sr_modprobe loop
    truncate -s "${NS_MIB}M" "$WORK/nvmet.img"
    NVMET_LOOP="$(losetup -f --show "$WORK/nvmet.img")" || return 1
    nvmet_setup "$ADDR" "${PORT[nvmet]}" "$N" "$NVMET_LOOP" 1 || return 1
    if [[ ! -d "$CONFIGFS_NVMET/hosts" ]] || ! mkdir "$CONFIGFS_NVMET/hosts/probe" ||
        [[ ! -e "$CONFIGFS_NVMET/hosts/probe/dhchap_key" ]]; then
        rmdir "$CONFIGFS_NVMET/hosts/probe" 2>/dev/null || true
        sr_log "nvmet has no dhchap_key: this kernel ($(uname -r)) lacks CONFIG_NVME_TARGET_AUTH"
        return 1
    fi
    rmdir "$CONFIGFS_NVMET/hosts/probe"
    echo 0 >"$CONFIGFS_NVMET/subsystems/$N/attr_allow_any_host" || return 1
    nvmet_host "$SOFTROCE_HOSTNQN" "$HOST_KEY" "$CTRL_KEY" &&
        nvmet_host "$(host_nqn "$OPEN_ID")" || return 1
    for m in 1 2 3; do
        nvmet_host "$(host_nqn "${HASH_ID[$m]}")" "${HASH_KEY[$m]}" "" "${HASH_HMAC[$m]}" || return 1
    done
    for g in "${DH_GROUPS[@]}"; do
        nvmet_host "$(host_nqn "${DH_ID[$g]}")" "${DH_KEY[$g]}" "${DH_CTRL_KEY[$g]}" "" "$g" || return 1
    done
    sr_log "nvmet-tcp: $N allows 7 hosts, 6 of them with DH-HMAC-CHAP keys"
}
stop_nvmet() {
    local h
    find "$CONFIGFS_NVMET/subsystems/$N/allowed_hosts" -mindepth 1 -maxdepth 1 -type l -delete
    nvmet_teardown
    for h in "$CONFIGFS_NVMET"/hosts/*; do [[ -d "$h" ]] && rmdir "$h"; done
    losetup -d "$NVMET_LOOP"
}

start_ours() {
    local m g
    [[ -x "$BIN" ]] || { sr_log "$BIN missing: run 'cargo build --release' on the host first"; return 1; }
    {
        cat <<EOF
portals:
  - { address: $ADDR, port: ${PORT[ours]}, transport: nvme-tcp }
targets:
  - name: iqn.2026-11.io.iser-target:auth
    nqn: $N
    allowed_hosts:
      - $(host_nqn "$OPEN_ID")
      - nqn: $SOFTROCE_HOSTNQN
        dhchap_secret: "$HOST_KEY"
        dhchap_ctrl_secret: "$CTRL_KEY"
EOF
        for m in 1 2 3; do
            printf '      - nqn: %s\n        dhchap_secret: "%s"\n        dhchap_hash: "%s"\n' \
                "$(host_nqn "${HASH_ID[$m]}")" "${HASH_KEY[$m]}" "${HASH_HMAC[$m]}"
        done
        for g in "${DH_GROUPS[@]}"; do
            printf '      - nqn: %s\n        dhchap_secret: "%s"\n        dhchap_ctrl_secret: "%s"\n        dhchap_dhgroup: %s\n' \
                "$(host_nqn "${DH_ID[$g]}")" "${DH_KEY[$g]}" "${DH_CTRL_KEY[$g]}" "$g"
        done
        cat <<EOF
    luns:
      - { id: 0, backing: { type: file, path: $WORK/ours.img, size: ${NS_MIB}M, create: true } }
EOF
    } >"$WORK/ours.yaml"
    cp "$WORK/ours.yaml" "$RESULTS/nvme-auth-ours.yaml"
    bg_start ours env RUST_LOG="${RUST_LOG:-info}" "$BIN" serve --config "$WORK/ours.yaml"
    wait_tcp_listen "$ADDR:${PORT[ours]}" || { sr_log "our target does not listen (see ours.log)"; return 1; }
}
stop_ours() { bg_stop ours; }

# --- checks (globals: T, P, N, DEV, CTRL) ------------------------------------------------------
connect() { nvme connect -t tcp -a "$ADDR" -s "$P" -n "$N" "$@" >/dev/null; }

# The kernel's messages since the last dmesg_mark.
dmesg_mark() { DMESG_MARK="$(dmesg | wc -l)"; }
dmesg_new() { dmesg | tail -n "+$((DMESG_MARK + 1))"; }
# dmesg_new_has PATTERN: one of those messages matches (not `dmesg_new | grep -q`: grep's early
# exit would fail the pipeline, under pipefail, whenever dmesg is still writing).
dmesg_new_has() { grep -q -e "$1" <<<"$(dmesg_new)"; }

# connect_logged TEXT [CONNECT OPTIONS...]: connect, wait for the namespace, and the kernel
# logged TEXT for the new controller ("nvme nvme0: qid 0: authenticated ...").
connect_logged() {
    local text="$1"
    shift
    dmesg_mark
    connect "$@" || return 1
    DEV="$(nvme_wait_ns "$N" 30)" || return 1
    CTRL="$(nvme_ctrls "$N" | head -n1)"
    if ! dmesg_new_has "nvme $CTRL: $text"; then
        sr_log "$T: the kernel did not log '$text' for $CTRL; its messages since the connect:"
        dmesg_new >&2
        return 1
    fi
    sr_log "$T: $(grep -o "nvme $CTRL: qid 0: authenticated with.*" <<<"$(dmesg_new)" || true)"
}

# authenticated_io: the host authenticates with its secret, the kernel says so, fio verifies
# 8 MiB, disconnect.
authenticated_io() {
    connect_logged "qid 0: authenticated" -S "$HOST_KEY" && fio_verify "$DEV" 8M 64k 8 &&
        nvme_disconnect "$N"
}

# still_serving: right after a refused connect, the right secret connects and reads.
still_serving() {
    connect_logged "qid 0: authenticated" -S "$HOST_KEY" &&
        dd if="$DEV" of=/dev/null bs=1M count=4 iflag=direct status=none && nvme_disconnect "$N"
}

# bidirectional_io: the controller proves itself back too (the kernel logs "controller
# authenticated" once it checked the controller's response), fio verifies, disconnect.
bidirectional_io() {
    connect_logged "qid 0: controller authenticated" -S "$HOST_KEY" -C "$CTRL_KEY" &&
        fio_verify "$DEV" 8M 64k 8 && nvme_disconnect "$N"
}

# Two I/O queues, each authenticated both ways: the controller has 3 queues (admin + 2 I/O), the
# host's debug messages (host_auth_debug) show each I/O queue's transaction through to its
# Success2 (sent once the controller's response checked out), and fio with two jobs (the
# scheduler spreads them over both CPUs, hence both queues) verifies.
two_queues_io() {
    connect_logged "qid 0: controller authenticated" -S "$HOST_KEY" -C "$CTRL_KEY" -i 2 || return 1
    local queues q; queues="$(cat "/sys/class/nvme/$CTRL/queue_count")"
    ((queues == 3)) || { sr_log "$T: queue_count $queues"; return 1; }
    for q in 1 2; do
        dmesg_new_has "nvme $CTRL: .*: qid $q send success2" ||
            { sr_log "$T: no Success2 on I/O queue $q"; dmesg_new | grep "qid $q" >&2; return 1; }
    done
    fio --name=auth-queues --filename="$DEV" --direct=1 --ioengine=libaio --rw=randwrite --bs=16k \
        --iodepth=8 --numjobs=2 --size=8M --offset_increment=8M --verify=crc32c --do_verify=1 \
        --verify_fatal=1 --output-format=terse >/dev/null || return 1
    nvme_disconnect "$N"
}

# refused [CONNECT OPTIONS...]: nvme connect fails, and neither a controller nor a namespace of
# the subsystem appears (for 3 s). The kernel's messages about it go to the log.
refused() {
    dmesg_mark
    if connect "$@"; then
        sr_log "$T: the connect succeeded"
        nvme_disconnect "$N" || true
        return 1
    fi
    if sr_wait 3 nvme_ns_dev "$N" || [[ -n "$(nvme_ctrls "$N")" ]]; then
        sr_log "$T: the connect failed, yet the subsystem has $(nvme_ctrls "$N") $(nvme_ns_dev "$N" || true)"
        return 1
    fi
    sr_log "$T: refused; the kernel said:"
    dmesg_new | grep -E 'nvme|auth' >&2 || true
}

# A host listed without a key connects without a secret, and nothing authenticates.
open_host_io() {
    local id="$OPEN_ID"
    dmesg_mark
    connect -q "$(host_nqn "$id")" -I "$id" || return 1
    DEV="$(nvme_wait_ns "$N" 30)" || return 1
    if dmesg_new_has 'authenticated'; then
        sr_log "$T: the open host authenticated?"; dmesg_new >&2
        return 1
    fi
    fio_verify "$DEV" 8M 64k 8 && nvme_disconnect "$N"
}

# hash_host_io M: the host whose key was transformed with hash M (gen-dhchap-key -m M), and
# whose entry names the same hash for the exchange (nvmet's dhchap_hash, our dhchap_hash),
# authenticates with that hash: the kernel logs it.
hash_host_io() {
    local id="${HASH_ID[$1]}"
    connect_logged "qid 0: authenticated with hash ${HASH_HMAC[$1]} " -q "$(host_nqn "$id")" \
        -I "$id" -S "${HASH_KEY[$1]}" &&
        dd if="$DEV" of=/dev/null bs=1M count=4 iflag=direct status=none && nvme_disconnect "$N"
}

# dh_host_io GROUP: the host whose entry names GROUP authenticates both ways with a
# Diffie-Hellman exchange in it on every queue (the kernel logs the group; each I/O queue
# reaches its Success2), and reads.
dh_host_io() {
    local id="${DH_ID[$1]}" q
    connect_logged "qid 0: authenticated with hash [^ ]* dhgroup $1\$" -q "$(host_nqn "$id")" -I "$id" \
        -S "${DH_KEY[$1]}" -C "${DH_CTRL_KEY[$1]}" || return 1
    for q in 0 1 2; do
        dmesg_new_has "nvme $CTRL: .*: qid $q send success2" ||
            { sr_log "$T: no Success2 on queue $q"; dmesg_new | grep "qid $q" >&2; return 1; }
    done
    dd if="$DEV" of=/dev/null bs=1M count=4 iflag=direct status=none && nvme_disconnect "$N"
}

# set_host_key OLD NEW: the guest host's key on the running target goes from OLD to NEW: nvmet's
# through its configfs attribute, ours by editing its configuration and SIGHUP (waiting until it
# says it applied it).
set_host_key() {
    case "$T" in
        nvmet) echo -n "$2" >"$CONFIGFS_NVMET/hosts/$SOFTROCE_HOSTNQN/dhchap_key" ;;
        ours)
            local log="$RESULTS/ours.log" before
            before="$(grep -c 'SIGHUP: the access control' "$log" || true)"
            sed -i "s|dhchap_secret: \"$1\"|dhchap_secret: \"$2\"|" "$WORK/ours.yaml"
            grep -qF "$2" "$WORK/ours.yaml" || return 1
            # shellcheck disable=SC2154 # set by bg_start
            kill -HUP "$SR_BG_ours"
            sr_wait 10 bash -c "(( \$(grep -c 'SIGHUP: the access control' '$log') > $before ))"
            ;;
    esac
}

# rotated_key_io: the host's key changed on the running target: a connect with the old key is
# refused, one with the new key authenticates and reads; then the old key is put back.
rotated_key_io() {
    local rc=0
    set_host_key "$HOST_KEY" "$ROTATED_KEY" || { sr_log "$T: the key did not change"; return 1; }
    refused -S "$HOST_KEY" || rc=1
    { connect_logged "qid 0: authenticated" -S "$ROTATED_KEY" &&
        dd if="$DEV" of=/dev/null bs=1M count=4 iflag=direct status=none && nvme_disconnect "$N"; } ||
        rc=1
    set_host_key "$ROTATED_KEY" "$HOST_KEY" || rc=1
    return "$rc"
}

# tcheck NAME CMD...: check, counted for the target's summary; leaves no controller behind.
tcheck() {
    CHECKS=$((CHECKS + 1))
    check "$T: $1" "${@:2}" || true
    if [[ -n "$(nvme_ctrls "$N")" ]]; then
        nvme disconnect -n "$N" >/dev/null 2>&1 || true
        sr_wait 30 test -z "$(nvme_ctrls "$N")" || true
    fi
}

run_checks() {
    T="$1" P="${PORT[$1]}" N="${NQN[$1]}" DEV="" CTRL="" CHECKS=0
    local failed_before=$FAILED m g
    sr_log "=== $T: DH-HMAC-CHAP checks on $ADDR:$P ==="
    tcheck "the host's secret (unidirectional): connect, 'authenticated' logged, fio verify, disconnect" \
        authenticated_io
    tcheck "host and controller secrets (bidirectional): 'controller authenticated' logged, fio verify" \
        bidirectional_io
    tcheck "two I/O queues (-i 2), each authenticated: 3 queues, fio 2 jobs verify" two_queues_io
    tcheck "a wrong host secret is refused, no block device" refused -S "$WRONG_HOST_KEY"
    tcheck "still serving: the right secret connects right after" still_serving
    tcheck "a wrong controller secret is refused, no block device" \
        refused -S "$HOST_KEY" -C "$WRONG_CTRL_KEY"
    tcheck "no secret, for a host configured with one, is refused" refused
    tcheck "a host not listed is refused" refused -q "$(host_nqn "$UNLISTED_ID")" -I "$UNLISTED_ID"
    tcheck "a host listed without a secret connects without one, fio verify" open_host_io
    for m in 1 2 3; do
        tcheck "a key transformed with ${HASH_NAME[$m]} (gen-dhchap-key -m $m) authenticates with ${HASH_NAME[$m]}" \
            hash_host_io "$m"
    done
    for g in "${DH_GROUPS[@]}"; do
        tcheck "DH group $g (both secrets): every queue authenticates with a DH exchange" dh_host_io "$g"
    done
    tcheck "the host's key changed on the running target: the old key refused, the new one reads" \
        rotated_key_io
    echo "$T: $((CHECKS - (FAILED - failed_before)))/$CHECKS passed" | tee -a "$RESULTS/nvme-auth-summary.txt"
}

# host_auth_debug: the host's per-step authentication messages (dev_dbg in
# drivers/nvme/host/auth.c: "qid 1 send negotiate", "receive challenge", "send reply",
# "receive success1", "send success2") into the kernel log, the only place the I/O queues'
# transactions show, and what tells at which step a refused connect stopped.
host_auth_debug() {
    local ctl=/proc/dynamic_debug/control
    if [[ ! -e "$ctl" ]]; then
        mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug || return 1
        ctl=/sys/kernel/debug/dynamic_debug/control
    fi
    echo 'file drivers/nvme/host/auth.c +p' >"$ctl"
}

softroce_mounts
rxe_setup "$SOFTROCE_ADDR_CIDR"
nvme_host_setup
modprobe nvme_auth 2>/dev/null ||
    sr_die "this kernel ($(uname -r)) has no nvme_auth (CONFIG_NVME_AUTH): boot it with SOFTROCE_VM_KERNEL_SUITE=bookworm-backports"
host_auth_debug || sr_die "cannot turn on the host's authentication debug messages (dynamic debug)"
mkdir -p "$WORK"
make_keys || sr_die "nvme gen-dhchap-key failed"
: >"$RESULTS/nvme-auth-summary.txt"
for t in "${TARGETS[@]}"; do
    case "$t" in
        nvmet|ours) ;;
        *) sr_die "unknown target '$t' (nvmet|ours)" ;;
    esac
    N="${NQN[$t]}"
    if "start_$t"; then
        run_checks "$t"
        "stop_$t" || fail "$t: clean stop"
    else
        fail "$t: target did not start"
        echo "$t: target did not start" >>"$RESULTS/nvme-auth-summary.txt"
    fi
done
check "no suspicious kernel messages" dmesg_check
sr_checks_done nvme-auth
