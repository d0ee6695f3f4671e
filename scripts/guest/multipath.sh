#!/bin/bash
# `A && pass || fail` is fine in this file: pass never fails.
# shellcheck disable=SC2015
# Two gateways, one LUN, dm-multipath (docs/multipath.md): two iser-target processes on two
# guest addresses serve one file LUN (opened write-through, as a shared store would be) with the
# same serial and identifier, in target port groups 1 and 2. open-iscsi logs in to both over
# TCP and multipath-tools (multipathd, udev, scsi_dh_alua) assembles them. Checks:
#   - scsi_dh_alua sees implicit ALUA and each path's port group, active/optimized;
#   - `multipath -ll` shows one device with two active paths, ALUA priority 50 each;
#   - gateway A drained by SIGHUP (alua_state: standby): scsi_dh_alua re-reads its port group
#     (state S), `multipath -ll` shows its path as a standby ("ghost") path at priority 1, fio
#     with verify goes on through gateway B; set back to active-optimized, A's path is active
#     at priority 50 again;
#   - fio (random writes capped at 1.5 MiB/s, crc32c verify, QD16) runs on the multipath device
#     while gateway A is SIGKILLed and, 10 s later, restarted: fio ends without an I/O error and verify passes;
#   - the path through gateway A comes back (multipathd shows two active paths again).
#
# On the host (builds target/release/iser-target, then boots the guest):
#     scripts/guest/multipath.sh
# Inside the guest (what the harness runs):
#     scripts/softroce-vm.sh scripts/guest/multipath.sh
# Prints one PASS:/FAIL: line per check; exits 1 if any check failed.
set -uo pipefail
# shellcheck source=scripts/guest/entry.sh
source "$(dirname "${BASH_SOURCE[0]}")/entry.sh" "cargo build --release --bin iser-target"

# Guest side.
BIN="$TARGET_DIR/release/iser-target"
ADDR_A="$SOFTROCE_ADDR"
ADDR_B=192.168.77.2
PORT="$SOFTROCE_ISCSI_PORT"
IQN=iqn.2026-11.io.iser-target:shared
# NAA 5 designator; udev's scsi_id (and so multipath) names the disk "3" + its hex digits.
IDENTIFIER=5001405000000aa1
WWID="3$IDENTIFIER"
WORK=/run/multipath-test
RESULTS="${SOFTROCE_RESULTS:-/tmp}"

[[ -x "$BIN" ]] || sr_die "$BIN missing: run 'cargo build --release' on the host first"

# gateway_config NAME GROUP ADDR: the configuration of one gateway.
gateway_config() {
    cat >"$WORK/$1.yaml" <<EOF
target_port_group: $2
portals:
  - { address: $3, port: $PORT, transport: tcp }
targets:
  - name: $IQN
    luns:
      - id: 0
        backing: { type: file, path: $WORK/shared.img, size: 256M, create: true }
        write_cache: false
        serial: "mpath0"
        identifier: "$IDENTIFIER"
EOF
}

# login ADDR: a node record with short failure timeouts, then login. replacement_timeout 5 s:
# I/O on a dead session fails over to the other path after 5 s instead of open-iscsi's 120.
login() {
    local p=(-m node -T "$IQN" -p "$1:$PORT" -I default)
    iscsiadm "${p[@]}" -o new >/dev/null &&
        iscsiadm "${p[@]}" -o update -n node.session.timeo.replacement_timeout -v 5 &&
        iscsiadm "${p[@]}" -o update -n node.conn[0].timeo.noop_out_interval -v 2 &&
        iscsiadm "${p[@]}" -o update -n node.conn[0].timeo.noop_out_timeout -v 2 &&
        iscsiadm "${p[@]}" --login
}

# active_paths: how many paths of the map multipathd currently uses.
active_paths() {
    multipathd show paths format "%w %t %T" 2>/dev/null |
        awk -v w="$WWID" '$1 == w && $2 == "active" && $3 == "ready"' | wc -l
}
two_active_paths() { (($(active_paths) == 2)); }

# paths_are SUMMARY: the map's paths, as "CHECKER-STATE PRIORITY" pairs sorted, are SUMMARY.
paths_are() {
    [[ "$(multipathd show paths format "%w %T %p" 2>/dev/null |
        awk -v w="$WWID" '$1 == w {print $2, $3}' | sort | paste -sd' ')" == "$1" ]]
}

softroce_setup
ip addr add "$ADDR_B/24" dev "$SOFTROCE_NETDEV" 2>/dev/null || true
sr_modprobe dm_multipath dm_service_time scsi_dh_alua
mkdir -p "$WORK" /etc/multipath
: >"$RESULTS/gateway-a.log"
: >"$RESULTS/gateway-b.log"
gateway_config a 1 "$ADDR_A"
gateway_config b 2 "$ADDR_B"
start_gateway a "$ADDR_A" || sr_die "gateway a did not listen"
start_gateway b "$ADDR_B" || sr_die "gateway b did not listen"

# udev gives each path its ID_SERIAL (scsi_id) and handles device-mapper's cookies.
/lib/systemd/systemd-udevd --daemon || sr_die "systemd-udevd did not start"
cat >/etc/multipath.conf <<EOF
defaults {
    user_friendly_names no
    find_multipaths no
    polling_interval 2
}
blacklist {
    devnode "^(vd|sr|loop|ram)"
}
devices {
    device {
        vendor "ISERTGT"
        product "iser-target"
        path_grouping_policy group_by_prio
        prio alua
        hardware_handler "1 alua"
        path_checker tur
        failback immediate
        no_path_retry queue
    }
}
EOF
multipathd -d -s >"$RESULTS/multipathd.log" 2>&1 &
MULTIPATHD=$!

login "$ADDR_A" && login "$ADDR_B" || sr_die "login to the gateways failed"
udevadm settle --timeout=60
if sr_wait 60 two_active_paths; then
    pass "multipathd: one map $WWID with two active paths"
else
    fail "multipathd does not show two active paths"
    multipathd show paths >&2
fi
multipath -ll >"$RESULTS/multipath-ll.txt" 2>&1
cat "$RESULTS/multipath-ll.txt" >&2
maps="$(dmsetup ls --target multipath | awk '{print $1}')"
[[ "$maps" == "$WWID" ]] && pass "exactly one multipath device: $maps" ||
    fail "multipath devices: '${maps//$'\n'/ }', want $WWID"
grep -q "hwhandler='1 alua'" "$RESULTS/multipath-ll.txt" && pass "hardware handler: alua" ||
    fail "no alua hardware handler in multipath -ll"
# The group shows "enabled" until the first I/O selects it, "active" after.
grep -Eq 'prio=50 status=(active|enabled)' "$RESULTS/multipath-ll.txt" &&
    (($(grep -c 'active ready running' "$RESULTS/multipath-ll.txt") == 2)) &&
    pass "one path group, ALUA priority 50 (active/optimized), two paths active ready running" ||
    fail "multipath -ll does not show two active/optimized paths"
# From a file: `dmesg | grep -q` fails under pipefail when grep stops reading early.
dmesg >"$RESULTS/dmesg-after-login.txt"
for group in 01 02; do
    grep -q "alua: port group $group state A" "$RESULTS/dmesg-after-login.txt" &&
        pass "scsi_dh_alua: port group $group active/optimized" ||
        fail "scsi_dh_alua saw no port group $group in state A"
done
grep -q 'alua: supports implicit TPGS' "$RESULTS/dmesg-after-login.txt" && pass "scsi_dh_alua: implicit TPGS" ||
    fail "scsi_dh_alua did not see implicit TPGS"

DEV="/dev/mapper/$WWID"

# Draining gateway A for maintenance: standby by SIGHUP. Its LU raises ASYMMETRIC ACCESS STATE
# CHANGED on the path's next command (the tur checker's), scsi_dh_alua re-reads RTPG, the
# checker sees the standby path as a ghost and the alua prioritizer gives it priority 1.
set_gateway_state a standby || fail "gateway a did not take alua_state standby"
if sr_wait 30 paths_are "ghost 1 ready 50"; then
    pass "gateway a in standby: its path ghost at priority 1, gateway b's ready at 50"
else
    fail "paths after draining gateway a: '$(multipathd show paths format "%w %T %p" | paste -sd' ')'"
fi
multipath -ll >"$RESULTS/multipath-ll-drained.txt" 2>&1
cat "$RESULTS/multipath-ll-drained.txt" >&2
grep -q 'prio=1 status=enabled' "$RESULTS/multipath-ll-drained.txt" &&
    grep -q 'active ghost running' "$RESULTS/multipath-ll-drained.txt" &&
    pass "multipath -ll: gateway a's path in a priority 1 group, active ghost running" ||
    fail "multipath -ll does not show gateway a's path as a standby path"
dmesg >"$RESULTS/dmesg-drained.txt"
grep -q "alua: port group 01 state S" "$RESULTS/dmesg-drained.txt" &&
    pass "scsi_dh_alua: port group 01 in standby" ||
    fail "scsi_dh_alua did not see port group 01 in standby"
gateway_fio "$DEV" fio-drained.txt --size=16M
fio_result $? fio-drained.txt "$DEV with gateway a in standby"
set_gateway_state a active-optimized || fail "gateway a did not take alua_state active-optimized"
if sr_wait 30 paths_are "ready 50 ready 50"; then
    pass "gateway a back to active-optimized: both paths ready at priority 50"
else
    fail "paths after restoring gateway a: '$(multipathd show paths format "%w %T %p" | paste -sd' ')'"
fi
sr_wait 30 two_active_paths || fail "gateway a's path is not active again"

# fio on the multipath device while gateway A dies and comes back.
fio_across_gateway_kill "$DEV" fio-failover.txt "$ADDR_A"
if sr_wait 90 two_active_paths; then
    pass "the path through gateway a came back: two active paths"
else
    fail "the path through gateway a did not come back"
    multipathd show paths >&2
fi
multipath -ll >&2

multipathd disablequeueing maps >/dev/null 2>&1 || true
multipath -F >/dev/null 2>&1 || true
iscsi_logout "$IQN" >/dev/null || true
kill -TERM "$MULTIPATHD" 2>/dev/null
wait "$MULTIPATHD" 2>/dev/null
stop_gateways a b
dmesg_check || fail "suspicious kernel messages"
sr_checks_done multipath
