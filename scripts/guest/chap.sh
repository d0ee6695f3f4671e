#!/bin/bash
# CHAP against the Linux kernel initiator (open-iscsi) in the SoftRoCE guest, over TCP and iSER.
#
#   scripts/softroce-vm.sh scripts/guest/chap.sh
#
# Builds nothing: run `cargo build --release` on the host first (scripts/test.sh does).
# Serves two targets from target/release/iser-target on $SOFTROCE_ADDR (a TCP and an iSER portal):
# one with one-way CHAP, one with mutual credentials, and discovery CHAP. Per transport, as the
# real initiator with node.session.auth.* set through `iscsiadm -o update`:
#   - discovery with and without the discovery credentials;
#   - one-way CHAP offering SHA3-256,SHA256,SHA1,MD5 (the target must pick SHA3-256) and a 4 MiB
#     O_DIRECT write/read compare;
#   - mutual CHAP with MD5 only (open-iscsi's default), and a compare;
#   - a wrong secret, a wrong user (the target answers 0x0201) and a wrong target secret (mutual:
#     the initiator refuses our response) refuse the login, and no disk appears;
#   - the secret rotated by editing the config and SIGHUP: the old one refused, the new one logs
#     in; the initiator taken out of allowed_initiators by SIGHUP: the target ends its live
#     session (its log says so) and the session leaves LOGGED_IN.
# Prints PASS/FAIL per check; exits non-zero on any failure.
set -euo pipefail
# shellcheck source=scripts/guest/lib.sh
source "$(dirname "$(readlink -f "$0")")/lib.sh"

ADDR="$SOFTROCE_ADDR"
PORT=3260
REPO="$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd -P)"
BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/iser-target"
IQN_ONE=iqn.2026-11.io.iser-target:chap-one-way
IQN_MUT=iqn.2026-11.io.iser-target:chap-mutual
USER=alice
SECRET=alice-secret-1234
TARGET_USER=tgt0
TARGET_SECRET=target-secret-5678
DISC_USER=disc
DISC_SECRET=discovery-secret-1
WORK=/run/iser-target-chap
TARGET_LOG="${SOFTROCE_RESULTS:-/tmp}/target.log"
INITIATOR_LOG="${SOFTROCE_RESULTS:-/tmp}/iscsiadm.log"


[[ -x "$BIN" ]] || sr_die "$BIN missing: run 'cargo build --release' on the host first"
softroce_setup
mkdir -p "$WORK"
printf '%s\n' "$TARGET_SECRET" >"$WORK/target-secret"

cat >"$WORK/config.yaml" <<EOF
portals:
  - { address: $ADDR, port: $PORT, transport: tcp }
  - { address: $ADDR, port: $PORT, transport: iser }
discovery_auth:
  chap: { username: $DISC_USER, secret: $DISC_SECRET }
targets:
  - name: $IQN_ONE
    auth:
      chap: { username: $USER, secret: $SECRET }
    luns:
      - { id: 0, backing: { type: ram, size: 32M } }
  - name: $IQN_MUT
    auth:
      chap: { username: $USER, secret: $SECRET }
      mutual_chap: { username: $TARGET_USER, secret_file: $WORK/target-secret }
    luns:
      - { id: 0, backing: { type: ram, size: 32M } }
EOF
bg_start target env RUST_LOG=info "$BIN" serve --config "$WORK/config.yaml"
wait_tcp_listen "$ADDR:$PORT" || sr_die "target did not listen on TCP (see target.log)"
wait_rdma_listen "$ADDR:$PORT" || sr_die "target did not listen on iSER (see target.log)"

# node_update IQN IFACE NAME=VALUE...: set node record settings.
node_update() {
    local iqn="$1" iface="$2" kv; shift 2
    for kv in "$@"; do
        iscsiadm -m node -T "$iqn" -p "$ADDR:$PORT" -I "$iface" -o update \
            -n "${kv%%=*}" -v "${kv#*=}" >/dev/null
    done
}

# chap_login IQN TRANSPORT NAME=VALUE...: a fresh node record with CHAP and these settings, then
# log in. Returns iscsiadm's status.
chap_login() {
    local iqn="$1" transport="$2" iface; shift 2
    iface="$(sr_iface "$transport")"
    disk_snapshot
    iscsiadm -m node -o new -T "$iqn" -p "$ADDR:$PORT" -I "$iface" >/dev/null
    # One login attempt per session: a refused login is final, and a session that hit the
    # initiator race (see initiator_races) never recovers by retrying anyway.
    node_update "$iqn" "$iface" node.session.initial_login_retry_max=0 \
        node.session.auth.authmethod=CHAP "$@"
    sr_log "CHAP login $iqn over $transport"
    iscsiadm -m node -T "$iqn" -p "$ADDR:$PORT" -I "$iface" --login
}

# forget: log out of everything and drop every node record.
forget() {
    iscsiadm -m node --logoutall=all >/dev/null 2>&1 || true
    iscsiadm -m node -o delete >/dev/null 2>&1 || true
}

# initiator_races: how often the kernel initiator has hit its own login-task race so far.
# Sometimes (about one CHAP login over iSER in eight under TCG) libiscsi's login task is still
# referenced when iscsid sends the next Login Request, the kernel refuses to send it ("Login/Text
# in progress. Cannot start new task", open-iscsi issue #424) and every retry on that connection
# fails the same way. The target never sees that request, so such an attempt says nothing about
# it: the checks below try again with a fresh session when, and only when, dmesg shows the race
# happened during the failed attempt. Two races in a row do happen (a CI run at 9ea2ea3 failed
# that way), so up to three attempts, each failure but the last excused only by a new race.
initiator_races() { dmesg | grep -c "Login/Text in progress. Cannot start new task" || true; }

# attempt CHECK ARGS...: run CHECK; while it fails and the initiator race happened during that
# run, say so and run it again, three runs at most.
attempt() {
    local races tries=1
    while true; do
        races="$(initiator_races)"
        "$@" && return 0
        (( $(initiator_races) > races && tries < 3 )) || return 1
        sr_log "the initiator hit its login-task race (open-iscsi issue #424); trying again"
        tries=$((tries + 1))
    done
}

# login_works IQN TRANSPORT NAME=VALUE...: login succeeds, the disk appears, 4 MiB compare, logout.
login_works() {
    local iqn="$1" transport="$2" disk; shift 2
    chap_login "$iqn" "$transport" "$@" >>"$INITIATOR_LOG" 2>&1 \
        || { sr_log "login refused"; forget; return 1; }
    local rc=0
    if [[ "$(session_transport "$iqn")" != "$transport" ]]; then
        sr_log "session to $iqn is not $transport"; rc=1
    elif ! disk="$(find_new_disk 60)"; then
        rc=1
    else
        verify_disk "$disk" 4 || rc=1
    fi
    iscsi_logout "$iqn" "$ADDR" "$PORT" >/dev/null || rc=1
    forget
    return "$rc"
}

# login_refused WHY IQN TRANSPORT NAME=VALUE...: iscsiadm fails, no session, no new disk, and
# the target's log gains a line matching WHY (so the refusal is the one meant, not some other).
login_refused() {
    local why="$1" iqn="$2" transport="$3" rc=0 before; shift 3
    before="$(grep -c -- "$why" "$TARGET_LOG" || true)"
    if chap_login "$iqn" "$transport" "$@" >>"$INITIATOR_LOG" 2>&1; then
        sr_log "login to $iqn was accepted"; rc=1
    fi
    if (( $(grep -c -- "$why" "$TARGET_LOG" || true) <= before )); then
        sr_log "the target's log has no new '$why'"; rc=1
    fi
    sleep 2
    if [[ -n "$(session_disk "$iqn")" ]] || [[ "$(sr_list_disks)" != "$SR_DISKS_BEFORE" ]]; then
        sr_log "a disk appeared: $(sr_list_disks)"; rc=1
    fi
    if iscsiadm -m session 2>/dev/null | grep -q "$iqn"; then
        sr_log "a session to $iqn exists"; rc=1
    fi
    forget
    return "$rc"
}

# discover TRANSPORT [USER SECRET]: SendTargets through a discoverydb record, with discovery CHAP
# when USER is given; prints the targets found.
discover() {
    local iface rc=0; iface="$(sr_iface "$1")"
    local db=(-m discoverydb -t st -p "$ADDR:$PORT" -I "$iface")
    iscsiadm "${db[@]}" -o new >/dev/null
    if [[ -n "${2:-}" ]]; then
        iscsiadm "${db[@]}" -o update -n discovery.sendtargets.auth.authmethod -v CHAP >/dev/null
        iscsiadm "${db[@]}" -o update -n discovery.sendtargets.auth.username -v "$2" >/dev/null
        iscsiadm "${db[@]}" -o update -n discovery.sendtargets.auth.password -v "$3" >/dev/null
    fi
    iscsiadm "${db[@]}" --discover 2>>"$INITIATOR_LOG" || rc=$?
    iscsiadm "${db[@]}" -o delete >/dev/null 2>&1 || true
    forget
    return "$rc"
}

# reload SED_SCRIPT: apply SED_SCRIPT to the original configuration, SIGHUP the target and wait
# until it has applied the new access control.
reload() {
    local before
    before="$(grep -c "SIGHUP: the access control" "$TARGET_LOG" || true)"
    sed -e "$1" "$WORK/config.orig" >"$WORK/config.yaml"
    # shellcheck disable=SC2154 # set by bg_start
    kill -HUP "$SR_BG_target"
    sr_wait 10 bash -c "(( \$(grep -c 'SIGHUP: the access control' '$TARGET_LOG') > $before ))"
}

# logged_in IQN: a session to IQN is in state LOGGED_IN.
logged_in() {
    iscsiadm -m session -P 1 2>/dev/null | awk -v iqn="$1" '
        /^Target: / { mine = ($2 == iqn) }
        mine && /iSCSI Session State: LOGGED_IN/ { found = 1 }
        END { exit !found }'
}

# revoked TRANSPORT: logged in with the rotated secret, the initiator is taken out of the
# target's allowed_initiators by SIGHUP: the target ends the session (its log says so), and
# within 30 s no session to the target is logged in (a reconnect would be refused: 0x0202).
revoked() {
    local transport="$1" rc=0 ended
    chap_login "$IQN_ONE" "$transport" "${ROTATED_ONE_WAY[@]}" >>"$INITIATOR_LOG" 2>&1 \
        || { sr_log "login refused"; forget; return 1; }
    find_new_disk 60 >/dev/null || rc=1
    ended="$(grep -c "ending the session of $SOFTROCE_INITIATOR_IQN on $IQN_ONE" "$TARGET_LOG" || true)"
    reload "s/secret: $SECRET }/secret: $ROTATED }/; /name: $IQN_ONE/a\\    allowed_initiators: [iqn.2026-12.org.example:someone-else]" \
        || { sr_log "no reload"; rc=1; }
    if (( $(grep -c "ending the session of $SOFTROCE_INITIATOR_IQN on $IQN_ONE" "$TARGET_LOG" || true) <= ended )); then
        sr_log "the target's log does not say it ended the session"; rc=1
    fi
    if ! sr_wait 30 bash -c "$(declare -f logged_in); ! logged_in $IQN_ONE"; then
        sr_log "still logged in: $(iscsiadm -m session -P 1 2>&1)"; rc=1
    fi
    forget
    reload "s/secret: $SECRET }/secret: $ROTATED }/" || rc=1
    return "$rc"
}

ROTATED=alice-rotated-4321
cp "$WORK/config.yaml" "$WORK/config.orig"
ROTATED_ONE_WAY=(node.session.auth.username="$USER" node.session.auth.password="$ROTATED")
ONE_WAY=(node.session.auth.username="$USER" node.session.auth.password="$SECRET")
MUTUAL=("${ONE_WAY[@]}" node.session.auth.username_in="$TARGET_USER"
        node.session.auth.password_in="$TARGET_SECRET")

for transport in tcp iser; do
    found="$(discover "$transport" "$DISC_USER" "$DISC_SECRET" || true)"
    if grep -q "$IQN_ONE" <<<"$found" && grep -q "$IQN_MUT" <<<"$found"; then
        pass "$transport: discovery with discovery CHAP lists both targets"
    else
        fail "$transport: discovery with discovery CHAP: got '$found'"
    fi
    found="$(discover "$transport" || true)"
    check "$transport: discovery without credentials finds nothing" test -z "$found"

    check "$transport: one-way CHAP offering SHA3-256,SHA256,SHA1,MD5, 4 MiB compare" \
        attempt login_works "$IQN_ONE" "$transport" "${ONE_WAY[@]}" \
        node.session.auth.chap_algs=SHA3-256,SHA256,SHA1,MD5
    check "$transport: mutual CHAP with MD5 (open-iscsi's default), 4 MiB compare" \
        attempt login_works "$IQN_MUT" "$transport" "${MUTUAL[@]}"
    check "$transport: one-way login to the target with mutual credentials" \
        attempt login_works "$IQN_MUT" "$transport" "${ONE_WAY[@]}"
    check "$transport: wrong secret is refused (0x0201), no disk" \
        attempt login_refused "CHAP_R is wrong" "$IQN_ONE" "$transport" \
        node.session.auth.username="$USER" node.session.auth.password=wrong-secret-123
    check "$transport: wrong user is refused (0x0201), no disk" \
        attempt login_refused "CHAP_N names a user we do not know" "$IQN_ONE" "$transport" \
        node.session.auth.username=mallory node.session.auth.password="$SECRET"
    check "$transport: wrong target secret (mutual) is refused by the initiator, no disk" \
        attempt login_refused "target authenticated back" "$IQN_MUT" "$transport" "${ONE_WAY[@]}" \
        node.session.auth.username_in="$TARGET_USER" node.session.auth.password_in=not-the-target-1

    # Access control changed while the target runs (SIGHUP), then put back.
    reload "s/secret: $SECRET }/secret: $ROTATED }/" || fail "$transport: SIGHUP not applied"
    check "$transport: after SIGHUP rotated the secret, the old one is refused, no disk" \
        attempt login_refused "CHAP_R is wrong" "$IQN_ONE" "$transport" "${ONE_WAY[@]}"
    check "$transport: after SIGHUP rotated the secret, the new one logs in, 4 MiB compare" \
        attempt login_works "$IQN_ONE" "$transport" "${ROTATED_ONE_WAY[@]}"
    check "$transport: taken out of allowed_initiators by SIGHUP, the target ends the session" \
        revoked "$transport"
    reload "" || fail "$transport: SIGHUP back to the original not applied"
done

check "SHA3-256 chosen from open-iscsi's full list" \
    grep -q "alice authenticated with Sha3_256" "$TARGET_LOG"
check "MD5 when the initiator offers only MD5, mutual" \
    grep -q "alice authenticated with Md5, target authenticated back (mutual)" "$TARGET_LOG"
check "no secret in the target's log" \
    bash -c "! grep -qF -e '$SECRET' -e '$TARGET_SECRET' -e '$DISC_SECRET' -e '$ROTATED' '$TARGET_LOG'"
check "SIGTERM: clean exit 0" bg_stop target
check "no suspicious kernel messages" dmesg_check

sr_checks_done chap || exit 1
sr_log "all CHAP checks passed over TCP and iSER"
