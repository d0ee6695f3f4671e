#!/bin/bash
# `A && pass || fail` is fine in this file: pass never fails.
# shellcheck disable=SC2015
# Two gateways, one LUN, over NVMe/TCP with the kernel's native NVMe multipath (docs/multipath.md,
# "Over NVMe/TCP: ANA"): two iser-target processes on two guest addresses serve one file LUN
# (opened write-through) as one subsystem, gateway A in target port group 1 (active-optimized)
# with a discovery-only portal on port 8009 too, gateway B in group 2 (active-non-optimized).
# Checks:
#   - `nvme discover -s 8009` on A lists the subsystem on A's I/O portal (4420), and a Connect to
#     the subsystem on 8009 is refused;
#   - connected to both gateways, the host has one subsystem with two controllers and one
#     namespace device (the paths merged by the namespace identifiers);
#   - `nvme list-subsys` names both paths; each path's ANA state (sysfs ana_state) is
#     optimized through A and non-optimized through B, and `nvme ana-log` shows ANA group 1
#     optimized on A's controller and group 2 non-optimized on B's;
#   - gateway A drained by SIGHUP (alua_state: standby): the host gets the ANA change notice,
#     the path through A turns inaccessible in sysfs and `nvme ana-log`, fio with verify goes
#     on through B; set back to active-optimized, the path through A is optimized again;
#   - fio (random writes capped at 1.5 MiB/s, crc32c verify, QD16) runs on the namespace while
#     gateway A is SIGKILLed and, 10 s later, restarted: fio ends without an I/O error and
#     verify passes (I/O moves to the non-optimized path while A is gone);
#   - the path through A comes back live and optimized.
#
# On the host (builds target/release/iser-target, then boots the guest):
#     scripts/guest/nvme-multipath.sh
# Inside the guest (what the harness runs):
#     scripts/softroce-vm.sh scripts/guest/nvme-multipath.sh
# Prints one PASS:/FAIL: line per check; exits 1 if any check failed.
set -uo pipefail
# shellcheck source=scripts/guest/entry.sh
source "$(dirname "${BASH_SOURCE[0]}")/entry.sh" "cargo build --release --bin iser-target"

# Guest side.
BIN="$TARGET_DIR/release/iser-target"
ADDR_A="$SOFTROCE_ADDR"
ADDR_B=192.168.77.2
PORT=4420
DISCOVERY_PORT=8009
NQN=nqn.2026-11.io.iser-target:shared
WORK=/run/nvme-multipath-test
RESULTS="${SOFTROCE_RESULTS:-/tmp}"

[[ -x "$BIN" ]] || sr_die "$BIN missing: run 'cargo build --release' on the host first"

# gateway_config NAME GROUP STATE ADDR [EXTRA_PORTAL]: the configuration of one gateway.
gateway_config() {
    cat >"$WORK/$1.yaml" <<EOF
target_port_group: $2
alua_state: $3
portals:
  - { address: $4, port: $PORT, transport: nvme-tcp }
${5:-}
targets:
  - name: iqn.2026-11.io.iser-target:shared
    nqn: $NQN
    luns:
      - id: 0
        backing: { type: file, path: $WORK/shared.img, size: 256M, create: true }
        write_cache: false
        serial: "nvmempath0"
        identifier: "5001405000000bb1"
EOF
}

# connect ADDR: a controller through that gateway; reconnect every second after a loss, for
# up to a minute.
connect() {
    nvme connect -t tcp -a "$1" -s "$PORT" -n "$NQN" --reconnect-delay=1 --ctrl-loss-tmo=60 >/dev/null
}

# path_state ADDR: "<controller state> <ANA state>" of the path through the gateway at ADDR.
path_state() {
    local c p
    for c in $(nvme_ctrls "$NQN"); do
        grep -q "traddr=$1," "/sys/class/nvme/$c/address" 2>/dev/null || continue
        for p in /sys/class/nvme/"$c"/nvme*c*n1; do
            [[ -e "$p/ana_state" ]] || continue
            echo "$(cat "/sys/class/nvme/$c/state") $(cat "$p/ana_state")"
            return 0
        done
    done
    return 1
}
path_is() { [[ "$(path_state "$1")" == "$2" ]]; }

# ctrl_of ADDR: the controller (nvmeN) connected through ADDR.
ctrl_of() {
    local c
    for c in $(nvme_ctrls "$NQN"); do
        grep -q "traddr=$1," "/sys/class/nvme/$c/address" 2>/dev/null && { echo "$c"; return 0; }
    done
    return 1
}

# ana_log_shows ADDR GROUP STATE: `nvme ana-log` on the controller through ADDR has one group,
# GROUP, in STATE, with namespace 1.
ana_log_shows() {
    local ctrl out
    ctrl="$(ctrl_of "$1")" || return 1
    out="$(nvme ana-log "/dev/$ctrl")" || return 1
    printf '%s\n' "$out" >"$RESULTS/ana-log-$ctrl.txt"
    grep -Eq "^ngrps[[:space:]]*:[[:space:]]*1\$" <<<"$out" &&
        grep -Eq "^grpid[[:space:]]*:[[:space:]]*$2\$" <<<"$out" &&
        grep -Eq "^state[[:space:]]*:[[:space:]]*$3\$" <<<"$out" &&
        grep -Eq "nsid[[:space:]]*:[[:space:]]*1\$" <<<"$out" ||
        { printf '%s\n' "$out" >&2; return 1; }
}

softroce_mounts
rxe_setup "$SOFTROCE_ADDR_CIDR"
ip addr add "$ADDR_B/24" dev "$SOFTROCE_NETDEV" 2>/dev/null || true
nvme_host_setup
[[ "$(cat /sys/module/nvme_core/parameters/multipath 2>/dev/null)" == Y ]] ||
    sr_die "the host's native NVMe multipath is off (nvme_core.multipath)"
mkdir -p "$WORK"
: >"$RESULTS/gateway-a.log"
: >"$RESULTS/gateway-b.log"
gateway_config a 1 active-optimized "$ADDR_A" \
    "  - { address: $ADDR_A, port: $DISCOVERY_PORT, transport: nvme-tcp-discovery }"
gateway_config b 2 active-non-optimized "$ADDR_B"
start_gateway a "$ADDR_A" || sr_die "gateway a did not listen"
start_gateway b "$ADDR_B" || sr_die "gateway b did not listen"
wait_tcp_listen "$ADDR_A:$DISCOVERY_PORT" 30 || sr_die "gateway a's discovery portal did not listen"

# Discovery on port 8009.
out="$(nvme discover -t tcp -a "$ADDR_A" -s "$DISCOVERY_PORT" 2>&1)"
printf '%s\n' "$out" >"$RESULTS/discover-8009.txt"
grep -q "subnqn: *$NQN *\$" <<<"$out" && grep -q "trsvcid: *$PORT *\$" <<<"$out" &&
    grep -q "traddr: *$ADDR_A *\$" <<<"$out" &&
    pass "nvme discover -s $DISCOVERY_PORT lists $NQN at $ADDR_A:$PORT" ||
    { fail "nvme discover -s $DISCOVERY_PORT does not list $NQN at $ADDR_A:$PORT"; printf '%s\n' "$out" >&2; }
nvme connect -t tcp -a "$ADDR_A" -s "$DISCOVERY_PORT" -n "$NQN" >/dev/null 2>&1 &&
    fail "a Connect to $NQN on the discovery port was accepted" ||
    pass "a Connect to $NQN on the discovery port is refused"
nvme disconnect -n "$NQN" >/dev/null 2>&1 || true

# Both paths.
connect "$ADDR_A" && connect "$ADDR_B" || sr_die "nvme connect to the gateways failed"
DEV="$(nvme_wait_ns "$NQN" 30)" || sr_die "no namespace device"
sr_log "namespace device $DEV"
mapfile -t ctrls < <(nvme_ctrls "$NQN")
subsystems=$(grep -lx "$NQN" /sys/class/nvme-subsystem/*/subsysnqn | wc -l)
# Namespace block devices: nvmeXnY are the multipath heads, nvmeXcZnY the hidden paths.
heads=$(find /sys/block/ -maxdepth 1 -regex '.*/nvme[0-9]+n1' | wc -l)
((${#ctrls[@]} == 2 && subsystems == 1 && heads == 1)) &&
    pass "one subsystem, two controllers (${ctrls[*]}), one namespace device $DEV" ||
    fail "controllers: ${ctrls[*]}; subsystems with $NQN: $subsystems; namespace heads: $heads"
nvme list-subsys "$DEV" >"$RESULTS/list-subsys.txt" 2>&1
cat "$RESULTS/list-subsys.txt" >&2
grep -q "traddr=$ADDR_A,trsvcid=$PORT" "$RESULTS/list-subsys.txt" &&
    grep -q "traddr=$ADDR_B,trsvcid=$PORT" "$RESULTS/list-subsys.txt" &&
    pass "nvme list-subsys shows both paths" || fail "nvme list-subsys does not show both paths"
sr_wait 10 path_is "$ADDR_A" "live optimized" && pass "path through A: live, ANA optimized" ||
    fail "path through A: '$(path_state "$ADDR_A")', want 'live optimized'"
sr_wait 10 path_is "$ADDR_B" "live non-optimized" && pass "path through B: live, ANA non-optimized" ||
    fail "path through B: '$(path_state "$ADDR_B")', want 'live non-optimized'"
ana_log_shows "$ADDR_A" 1 optimized && pass "nvme ana-log via A: group 1 optimized, nsid 1" ||
    fail "nvme ana-log via A"
ana_log_shows "$ADDR_B" 2 non-optimized && pass "nvme ana-log via B: group 2 non-optimized, nsid 1" ||
    fail "nvme ana-log via B"

# Draining gateway A for maintenance: standby by SIGHUP. The host gets the ANA change notice on
# its held Asynchronous Event Request, reads the ANA log and sends I/O to B (non-optimized is
# used when no optimized path is left).
set_gateway_state a standby || fail "gateway a did not take alua_state standby"
sr_wait 15 path_is "$ADDR_A" "live inaccessible" && pass "gateway a in standby: path through A live, ANA inaccessible" ||
    fail "path through A after draining: '$(path_state "$ADDR_A")', want 'live inaccessible'"
ana_log_shows "$ADDR_A" 1 inaccessible && pass "nvme ana-log via A: group 1 inaccessible" ||
    fail "nvme ana-log via A after draining"
gateway_fio "$DEV" fio-nvme-drained.txt --size=16M
fio_result $? fio-nvme-drained.txt "$DEV with gateway a in standby"
set_gateway_state a active-optimized || fail "gateway a did not take alua_state active-optimized"
sr_wait 15 path_is "$ADDR_A" "live optimized" && pass "gateway a restored: path through A live, optimized" ||
    fail "path through A after restoring: '$(path_state "$ADDR_A")', want 'live optimized'"

# fio on the namespace while gateway A dies and comes back.
fio_across_gateway_kill "$DEV" fio-nvme-failover.txt "$ADDR_A"
if sr_wait 90 path_is "$ADDR_A" "live optimized"; then
    pass "the path through gateway a came back: live, optimized"
else
    fail "the path through gateway a did not come back: '$(path_state "$ADDR_A")'"
fi
nvme list-subsys "$DEV" >&2

nvme disconnect -n "$NQN" >/dev/null 2>&1 || true
stop_gateways a b
dmesg_check || fail "suspicious kernel messages"
sr_checks_done nvme-multipath
