#!/bin/bash
# Guest self-test (scripts/softroce-vm.sh --selftest): proves that this guest
# gives a working RDMA device and the real Linux iSER initiator, using only
# in-kernel reference components:
#   1. rping (RDMA CM + RC QP + RDMA READ/WRITE) over rxe0, both ends in the guest
#   2. LIO ib_isert target <- open-iscsi/ib_iser: discovery + login over iSER,
#      16 MiB O_DIRECT write / read / compare, data checked in LIO's backing file,
#      8 MiB fio random writes at queue depth 8 with crc32c verify
#   3. the same LUN over iSCSI/TCP (exercises the tcp helpers)
#   4. logout, LIO teardown, no suspicious kernel messages
# When this passes and the project's target fails, the failure is ours.
set -euo pipefail
# shellcheck source=scripts/guest/lib.sh
source "$(dirname "$(readlink -f "$0")")/lib.sh"

IQN=iqn.2003-01.org.linux-iscsi.softroce-vm:selftest
ADDR="$SOFTROCE_ADDR"
MIB=16
step() { sr_log "=== $*"; }

step "setup: rxe0, iscsid"
softroce_setup
ibv_devinfo -d "$SOFTROCE_RXE" | grep -E 'hca_id|transport|state|active_mtu' >&2

step "1. rping over $SOFTROCE_RXE ($ADDR)"
# -S must match on both ends: the server RDMA-READs the client's advertised
# buffer into its own; a smaller server buffer fails with IBV_WC_LOC_PROT_ERR
# ("cq completion failed status 4").
rping -s -a "$ADDR" -p 7174 -C 10 -S 1024 >/tmp/rping-server.log 2>&1 &
srv=$!
wait_rdma_listen "$ADDR:7174" || sr_die "rping server did not start"
rping -c -a "$ADDR" -p 7174 -C 10 -S 1024 -v >/tmp/rping-client.log 2>&1 \
    || { cat /tmp/rping-client.log /tmp/rping-server.log >&2; sr_die "rping client failed"; }
wait "$srv" || { cat /tmp/rping-server.log >&2; sr_die "rping server failed"; }
n="$(grep -c '^ping data' /tmp/rping-client.log || true)"
[[ "$n" == 10 ]] || sr_die "rping: expected 10 verified pings, got $n"
sr_log "rping: $n pings with verified data OK"

step "2. LIO ib_isert target + open-iscsi over iSER"
lio_setup_isert "$ADDR" "$IQN" 64 fileio
wait_rdma_listen "$ADDR:$SOFTROCE_ISCSI_PORT" || sr_die "LIO isert is not listening"
wait_tcp_listen "$ADDR:$SOFTROCE_ISCSI_PORT" || sr_die "LIO iscsi/tcp is not listening"
disc="$(iscsi_discover "$ADDR" iser)" || sr_die "iSER discovery failed"
printf '%s\n' "$disc" >&2
grep -q " $IQN\$" <<<"$disc" || sr_die "discovery did not report $IQN"
iscsiadm -m node -o delete >/dev/null 2>&1 || true
iser_login "$ADDR" "$IQN" || sr_die "iSER login failed"
tr="$(session_transport "$IQN")"
[[ "$tr" == iser ]] || sr_die "session transport is '$tr', expected iser"
disk="$(find_new_disk 60)" || sr_die "no disk after iSER login"
[[ "$(session_disk "$IQN")" == "$disk" ]] || sr_die "session_disk disagrees with find_new_disk ($disk)"
sr_log "iSER session up, LUN is $disk ($(($(cat "/sys/block/${disk#/dev/}/size") / 2048)) MiB)"
verify_disk "$disk" "$MIB" || sr_die "iSER data verify failed"
# The data must really have gone through the target into its backing store.
cmp -n "$((MIB << 20))" <(dd if="$disk" bs=1M count="$MIB" iflag=direct status=none) "$(lio_backing_file)" \
    || sr_die "LIO backing file does not hold the data written over iSER"
sr_log "LIO backing file holds the data written over iSER"
# Queue depth > 1 (dd only ever has one command in flight).
fio_verify "$disk" 8M 64k 8 || sr_die "iSER fio verify failed"
iser_logout "$IQN" "$ADDR" || sr_die "iSER logout failed"
sr_wait 30 bash -c "[[ ! -e $disk ]]" || sr_die "$disk still present after logout"

step "3. same LUN over iSCSI/TCP"
tcp_login "$ADDR" "$IQN" || sr_die "TCP login failed"
[[ "$(session_transport "$IQN")" == tcp ]] || sr_die "session transport is not tcp"
disk="$(find_new_disk 60)" || sr_die "no disk after TCP login"
verify_disk "$disk" 4 || sr_die "TCP data verify failed"
iscsi_logout "$IQN" "$ADDR" || sr_die "TCP logout failed"

step "4. teardown"
lio_teardown
dmesg_check || sr_die "kernel log has errors"
sr_log "SELFTEST PASSED"
