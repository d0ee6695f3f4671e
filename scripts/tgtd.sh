# shellcheck shell=bash
# scripts/tgtd.sh — sourced by the host scripts that run a private tgtd as the reference target
# (tgt-baseline.sh, bench-tcp.sh).

# tgtd_stop PID CONTROL_PORT: stops the tgtd started with `-C CONTROL_PORT` as PID (a child of
# this shell), after deleting its target 1. tgtd ignores SIGTERM; it stops on "system delete"
# once it has no targets left, and is killed if it has not after 5 s.
tgtd_stop() {
    local pid="$1" cport="$2"
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    tgtadm -C "$cport" --lld iscsi --mode target --op delete --force --tid 1 >/dev/null 2>&1 || true
    tgtadm -C "$cport" --mode system --op delete >/dev/null 2>&1 || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
