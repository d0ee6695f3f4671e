#!/usr/bin/env bash
# A throwaway one-node Ceph cluster for the RBD tests: one monitor, one manager and one
# BlueStore OSD on a sparse file, listening on 127.0.0.1 only, with a size-1 pool `rbd`.
#
#   scripts/ceph-cluster.sh start   install what is missing, bring the cluster up, wait until
#                                   the pool is usable (idempotent: a running cluster is kept)
#   scripts/ceph-cluster.sh stop    stop the daemons by the PIDs recorded at start, remove the
#                                   cluster's directory (idempotent)
#   scripts/ceph-cluster.sh osd-stop   stop the OSD (SIGTERM) and wait until the monitor has it
#                                   down: I/O to the pool then waits (fault tests)
#   scripts/ceph-cluster.sh osd-start  start the stopped OSD again, wait until the pool is usable
#   scripts/ceph-cluster.sh env     print the path of the cluster's ceph.conf
#   scripts/ceph-cluster.sh status  print `ceph -s`
#
# Environment:
#   CEPH_CLUSTER_DIR      where everything lives (default: target/ceph-cluster in this repo)
#   CEPH_OSD_SIZE         size of the OSD's sparse block file (default 20G)
#   CEPH_START_TIMEOUT    seconds to wait for the cluster to become usable (default 180)
#
# The cluster uses cephx; ceph.conf's [client] section names the client.admin keyring, so
# `ceph -c CONF`, `rbd -c CONF` and librbd find their credentials from the conf alone. The
# monitor binds the standard ports 3300 and 6789, so there can be one such cluster per machine.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${CEPH_CLUSTER_DIR:-$REPO/target/ceph-cluster}"
OSD_SIZE="${CEPH_OSD_SIZE:-20G}"
START_TIMEOUT="${CEPH_START_TIMEOUT:-180}"
CONF="$DIR/ceph.conf"
MON_ADDR="127.0.0.1"

die() {
    echo "ceph-cluster: error: $*" >&2
    exit 1
}
say() { echo "ceph-cluster: $*" >&2; }

# Every ceph CLI call is bounded: a cluster that does not answer is an error, not a hang.
ceph_cli() { timeout 60 ceph -c "$CONF" --connect-timeout 20 "$@"; }

install_packages() {
    local missing=()
    for tool in ceph-mon ceph-osd ceph-mgr ceph rbd ceph-authtool monmaptool uuidgen; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    [ -e /usr/include/rbd/librbd.h ] || missing+=("librbd.h")
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing Ceph packages (missing: ${missing[*]})"
    [ "$(id -u)" -eq 0 ] || die "need root to install ceph-mon ceph-osd ceph-mgr ceph-common librbd-dev uuid-runtime"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends \
        ceph-mon ceph-osd ceph-mgr ceph-common librbd-dev uuid-runtime >/dev/null ||
        die "apt-get install of the Ceph packages failed"
}

# True when every daemon recorded in $DIR/pids is alive.
daemons_alive() {
    [ -d "$DIR/pids" ] || return 1
    local n=0 f
    for f in "$DIR"/pids/*.pid; do
        [ -e "$f" ] || return 1
        kill -0 "$(cat "$f")" 2>/dev/null || return 1
        n=$((n + 1))
    done
    [ "$n" -eq 3 ]
}

# Runs a daemon in the foreground as a child of this script's subshell, logging to its own
# file, and records its PID (the PID `stop` kills).
spawn() {
    local name="$1"
    shift
    nohup "$@" -f -c "$CONF" >"$DIR/log/$name.out" 2>&1 </dev/null &
    echo $! >"$DIR/pids/$name.pid"
}

write_conf() {
    local fsid="$1"
    cat >"$CONF" <<EOF
[global]
fsid = $fsid
mon host = [v2:$MON_ADDR:3300,v1:$MON_ADDR:6789]
mon initial members = a
public network = 127.0.0.0/8
ms bind ipv4 = true
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
# One OSD: size-1 pools, placement across OSDs (not hosts), no redundancy warnings.
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
# The test directory shares a disk with everything else: do not warn about its free space.
mon data avail warn = 2
mon data avail crit = 1
run dir = $DIR/run
admin socket = $DIR/run/\$name.asok
log file = $DIR/log/\$name.log
mon data = $DIR/mon/\$cluster-\$id
mgr data = $DIR/mgr/\$cluster-\$id
osd data = $DIR/osd/\$cluster-\$id
crash dir = $DIR/crash

[mon]
mon cluster log file = $DIR/log/cluster.log

[osd]
osd objectstore = bluestore
# The block file lives outside the OSD data directory (inside it, mkfs loops on a symlink).
bluestore block path = $DIR/osd-block-\$id
# Small memory footprint: the machine is shared.
osd memory target = 939524096
bluestore cache autotune = false
bluestore cache size = 134217728
osd op num shards = 1
osd op num threads per shard = 2

[mgr]
mgr initial modules =

[client]
keyring = $DIR/client.admin.keyring
# One admin socket per client context, so a test can ask a running target's librbd for its
# settings (ceph --admin-daemon SOCKET config get rbd_cache).
admin socket = $DIR/run/\$name.\$pid.\$cctid.asok
EOF
}

# Waits until the cluster reports HEALTH_OK and `rbd` accepts I/O, or fails at the deadline.
wait_usable() {
    local deadline=$((SECONDS + START_TIMEOUT)) health=""
    while [ $SECONDS -lt $deadline ]; do
        daemons_alive || {
            tail -n 20 "$DIR"/log/*.out >&2 || true
            die "a Ceph daemon exited during start-up; logs in $DIR/log"
        }
        health="$(ceph_cli health 2>/dev/null || true)"
        if [ "$health" = "HEALTH_OK" ] &&
            timeout 30 rbd -c "$CONF" ls rbd >/dev/null 2>&1; then
            return 0
        fi
        sleep 2
    done
    ceph_cli -s >&2 || true
    die "cluster not usable after ${START_TIMEOUT}s (last health: ${health:-no answer}); logs in $DIR/log"
}

start() {
    install_packages
    if daemons_alive && [ -e "$DIR/ready" ]; then
        say "already running ($CONF)"
        return 0
    fi
    if [ -d "$DIR" ]; then
        say "removing the remains of an earlier cluster in $DIR"
        stop
    fi
    if ss -ltnH "( sport = :3300 or sport = :6789 )" 2>/dev/null | grep -q .; then
        die "ports 3300/6789 are taken: another Ceph monitor runs on this machine"
    fi
    local begin=$SECONDS
    mkdir -p "$DIR"/{run,log,pids,crash,mon/ceph-a,mgr/ceph-x}
    local fsid
    fsid="$(uuidgen)"
    write_conf "$fsid"

    # Monitor: keyrings for mon. and client.admin, a one-monitor map, then mkfs.
    ceph-authtool --create-keyring "$DIR/mon.keyring" --gen-key -n mon. \
        --cap mon 'allow *' >/dev/null
    ceph-authtool --create-keyring "$DIR/client.admin.keyring" --gen-key -n client.admin \
        --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
    ceph-authtool "$DIR/mon.keyring" --import-keyring "$DIR/client.admin.keyring" >/dev/null
    monmaptool --create --fsid "$fsid" \
        --addv a "[v2:$MON_ADDR:3300,v1:$MON_ADDR:6789]" "$DIR/monmap" >/dev/null
    ceph-mon -c "$CONF" --mkfs -i a --monmap "$DIR/monmap" --keyring "$DIR/mon.keyring" \
        >"$DIR/log/mon-mkfs.out" 2>&1 || die "ceph-mon --mkfs failed; see $DIR/log/mon-mkfs.out"
    spawn mon.a ceph-mon -i a
    ceph_cli mon enable-msgr2 >/dev/null 2>&1 || true
    ceph_cli -s >/dev/null || die "the monitor does not answer; logs in $DIR/log"

    # Manager.
    ceph_cli auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' \
        -o "$DIR/mgr/ceph-x/keyring" >/dev/null
    spawn mgr.x ceph-mgr -i x

    # One BlueStore OSD on a sparse file.
    local uuid secret id
    uuid="$(uuidgen)"
    secret="$(ceph-authtool --gen-print-key)"
    echo "{\"cephx_secret\": \"$secret\"}" >"$DIR/osd-secret.json"
    id="$(ceph_cli osd new "$uuid" -i "$DIR/osd-secret.json")"
    rm -f "$DIR/osd-secret.json"
    mkdir -p "$DIR/osd/ceph-$id"
    ceph-authtool --create-keyring "$DIR/osd/ceph-$id/keyring" --name "osd.$id" \
        --add-key "$secret" >/dev/null
    truncate -s "$OSD_SIZE" "$DIR/osd-block-$id"
    ceph-osd -c "$CONF" -i "$id" --mkfs --osd-uuid "$uuid" >"$DIR/log/osd-mkfs.out" 2>&1 ||
        die "ceph-osd --mkfs failed; see $DIR/log/osd-mkfs.out"
    spawn "osd.$id" ceph-osd -i "$id"

    # The pool the tests use: a few PGs, size 1, initialised for RBD.
    ceph_cli osd pool create rbd 8 8 replicated >/dev/null
    ceph_cli osd pool set rbd size 1 --yes-i-really-mean-it >/dev/null
    timeout 60 rbd -c "$CONF" pool init rbd || die "rbd pool init failed"
    wait_usable
    touch "$DIR/ready"
    say "up in $((SECONDS - begin))s: $CONF"
}

stop() {
    if [ ! -d "$DIR" ]; then
        say "no cluster in $DIR"
        return 0
    fi
    local f pid pids=()
    for f in "$DIR"/pids/*.pid; do
        [ -e "$f" ] || continue
        pid="$(cat "$f")"
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
    done
    local deadline=$((SECONDS + 20))
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then
            say "PID $pid ignored SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$DIR"
    say "stopped; removed $DIR"
}

# The id of the cluster's one OSD, from its PID file (osd.ID.pid).
osd_id() {
    local f
    for f in "$DIR"/pids/osd.*.pid; do
        [ -e "$f" ] || die "no OSD in $DIR (is the cluster started?)"
        f="${f##*/osd.}"
        echo "${f%.pid}"
        return 0
    done
}

osd_stop() {
    local id pid
    id="$(osd_id)"
    pid="$(cat "$DIR/pids/osd.$id.pid")"
    kill -0 "$pid" 2>/dev/null || die "osd.$id (PID $pid) is not running"
    kill -TERM "$pid"
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || die "osd.$id (PID $pid) ignored SIGTERM for 30s"
        sleep 0.2
    done
    # A cleanly stopped OSD tells the monitor; wait until the map says so.
    until ceph_cli osd dump 2>/dev/null | grep -q "^osd\.$id down"; do
        [ $SECONDS -lt $deadline ] || die "the monitor still has osd.$id up"
        sleep 0.5
    done
    rm -f "$DIR/ready"
    say "osd.$id stopped"
}

osd_start() {
    local id
    id="$(osd_id)"
    if kill -0 "$(cat "$DIR/pids/osd.$id.pid")" 2>/dev/null; then
        say "osd.$id already running"
    else
        spawn "osd.$id" ceph-osd -i "$id"
    fi
    wait_usable
    touch "$DIR/ready"
    say "osd.$id started"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
osd-stop) osd_stop ;;
osd-start) osd_start ;;
env) echo "$CONF" ;;
status)
    [ -e "$CONF" ] || die "no cluster in $DIR"
    ceph_cli -s
    ;;
*)
    echo "usage: $0 start|stop|osd-stop|osd-start|env|status" >&2
    exit 2
    ;;
esac
