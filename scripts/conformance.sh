#!/usr/bin/env bash
# Run libiscsi's iscsi-test-cu conformance suite against one iSCSI LUN.
#
# Usage: scripts/conformance.sh [options] ISCSI_URL [OUTPUT_DIR]
#   ISCSI_URL   iscsi://HOST[:PORT]/TARGET-IQN/LUN
#   OUTPUT_DIR  where the raw log and summary go (default: build/conformance)
#
# Options (environment variables work too):
#   --timeout SECS      whole-run limit (CONFORMANCE_TIMEOUT, default 1800)
#   --stall SECS        fail if the suite prints nothing for this long
#                       (CONFORMANCE_STALL, default 300); this catches a hung
#                       target long before the whole-run limit
#   --tests PATTERN     iscsi-test-cu -t FAMILY[.SUITE[.TEST]] selection
#                       (CONFORMANCE_TESTS; default: none, i.e. the plain
#                       `iscsi-test-cu -d URL` run of every family: ALL, SCSI,
#                       iSCSI and LINUX, 615 tests in libiscsi 1.19.0, many of
#                       them run once per family)
#   --min-pass N        exit 4 if fewer than N tests pass (CONFORMANCE_MIN_PASS)
#
# Always runs with -d (dataloss) so the write tests run: only point it at a
# scratch LUN.
#
# Outputs in OUTPUT_DIR:
#   iscsi-test-cu.log   full suite output
#   summary.txt         key=value lines: status, passed, failed, skipped,
#                       cunit_passed, ran, duration_s, hung_test,
#                       then one "failing=FAMILY.Suite.Test" line per failed test
#   failing.txt         failing test names, one per line
#   skipped.txt         skipped test names, one per line
#
# Counting: CUnit has no "skipped" state; iscsi-test-cu skips a test by
# logging "[SKIPPED] ..." and calling CU_PASS, so CUnit counts it as passed.
# We count a test as skipped when its output contains "[SKIPPED]" and report
# passed = CUnit passed - skipped. (A few CU_PASS skips print nothing, e.g.
# "LUN is too big" for >2^31 blocks; those still count as passed.)
#
# Exit status: 0 suite completed (failures allowed) and target still reachable;
# 1 usage or tool error; 2 hang (stall or timeout) of a target that still
# accepts connections; 3 target not reachable after the run (status
# target-down: crashed?) or iscsi-test-cu died without a summary (status
# crashed); 4 fewer passes than --min-pass.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 1; }

timeout_s=${CONFORMANCE_TIMEOUT:-1800}
stall_s=${CONFORMANCE_STALL:-300}
tests=${CONFORMANCE_TESTS:-}
min_pass=${CONFORMANCE_MIN_PASS:-}
initiator=${CONFORMANCE_INITIATOR:-iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test}
initiator2=${CONFORMANCE_INITIATOR2:-iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test-2}

args=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --timeout) timeout_s=$2; shift 2 ;;
        --stall) stall_s=$2; shift 2 ;;
        --tests) tests=$2; shift 2 ;;
        --min-pass) min_pass=$2; shift 2 ;;
        -h|--help) usage ;;
        -*) echo "conformance.sh: unknown option $1" >&2; usage ;;
        *) args+=("$1"); shift ;;
    esac
done
[[ ${#args[@]} -ge 1 && ${#args[@]} -le 2 ]] || usage
url=${args[0]}
out=${args[1]:-build/conformance}

if ! command -v iscsi-test-cu >/dev/null; then
    echo "conformance.sh: iscsi-test-cu not found (apt-get install libiscsi-bin)" >&2
    exit 1
fi
if [[ ! $url =~ ^iscsi://([^/@]*@)?(\[[^]]+\]|[^/:]+)(:([0-9]+))?/[^/]+/[0-9]+$ ]]; then
    echo "conformance.sh: bad URL '$url' (want iscsi://HOST[:PORT]/IQN/LUN)" >&2
    exit 1
fi
host=${BASH_REMATCH[2]}
host=${host#[}; host=${host%]}
port=${BASH_REMATCH[4]:-3260}

mkdir -p "$out"
log=$out/iscsi-test-cu.log
summary=$out/summary.txt
: > "$log"

# True if something accepts TCP connections on the portal.
portal_up() { timeout 5 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null; }

if ! portal_up; then
    echo "conformance.sh: nothing listening on $host:$port" >&2
    printf 'status=unreachable\npassed=0\nfailed=0\nskipped=0\n' > "$summary"
    exit 3
fi

cmd=(iscsi-test-cu -d -i "$initiator" -I "$initiator2")
if [[ -n $tests ]]; then cmd+=(-t "$tests"); fi
cmd+=("$url")

# The log names suites without their family (ALL, SCSI, ...), and the same
# suite runs once per family. Suites run in `iscsi-test-cu -l` order, so the
# selected FAMILY.Suite entries of that list, in order, name them.
suites=$out/suites.txt
IFS=. read -r sel_family sel_suite _ <<<"$tests"
iscsi-test-cu -l | grep -E '^[^.]+\.[^.]+$' | while read -r entry; do
    if [[ -z $tests ]] || [[ -z $sel_suite && $entry == "$sel_family".* ]] \
        || [[ $entry == "$sel_family.$sel_suite" ]]; then
        echo "$entry"
    fi
done > "$suites"
echo "conformance.sh: ${cmd[*]} (timeout ${timeout_s}s, stall ${stall_s}s)" >&2
start=$(date +%s)
# setsid: the suite gets its own process group, so we can kill it whole.
setsid timeout --kill-after=10 "$timeout_s" "${cmd[@]}" > "$log" 2>&1 &
suite_pid=$!

# Watchdog: a hung target shows up as a log that stops growing.
status=completed
last_size=-1
last_change=$start
while kill -0 "$suite_pid" 2>/dev/null; do
    sleep 2
    size=$(stat -c %s "$log")
    now=$(date +%s)
    if [[ $size != "$last_size" ]]; then
        last_size=$size
        last_change=$now
    elif (( now - last_change >= stall_s )); then
        status=hung
        echo "conformance.sh: no output for ${stall_s}s; killing the suite" >&2
        kill -TERM -- "-$suite_pid" 2>/dev/null || true
        sleep 5
        kill -KILL -- "-$suite_pid" 2>/dev/null || true
        break
    fi
done
rc=0
wait "$suite_pid" || rc=$?
duration=$(( $(date +%s) - start ))
if [[ $status == completed ]]; then
    if [[ $rc == 124 || $rc == 137 ]]; then
        status=hung
        echo "conformance.sh: whole-run timeout (${timeout_s}s) hit" >&2
    elif ! grep -q '^Run Summary:' "$log"; then
        status=crashed
        echo "conformance.sh: iscsi-test-cu exited ($rc) without a run summary" >&2
    fi
fi

# Parse the CUnit basic-mode log: "Suite: S", "  Test: T ...", optional log
# lines (indented), then "passed" or "FAILED" at the start of a line or right
# after the " ...".
parse() {
    awk -v list="$suites" '
    # The FAMILY.Suite list in run order.
    BEGIN { while ((getline l < list) > 0) full[++n] = l }
    function finish(result) {
        if (cur == "") return
        if (result == "FAILED") print "failing=" cur
        else if (skip) print "skipped=" cur
        else print "passed=" cur
        last = cur
        cur = ""
    }
    /^Suite: / {
        finish("")
        suite = substr($0, 8)
        # Greedy match of the next listed suite with this name.
        while (pos < n && full[pos + 1] !~ ("\\." suite "$")) pos++
        if (pos < n) suite = full[++pos]
        next
    }
    /^  Test: / {
        finish("")
        line = $0; sub(/^  Test: /, "", line)
        i = index(line, " ...")
        cur = suite "." substr(line, 1, i - 1)
        rest = substr(line, i + 4)
        skip = 0
        # CUnit prints the result right after " ..." with no newline, so log
        # text of the next setup/teardown may follow it on the same line.
        if (rest ~ /^passed/) finish("passed")
        else if (rest ~ /^FAILED/) finish("FAILED")
        else skip = (rest ~ /\[SKIPPED\]/)
        next
    }
    cur != "" && /^passed/ { finish("passed"); next }
    cur != "" && /^FAILED/ { finish("FAILED"); next }
    cur != "" && /\[SKIPPED\]/ { skip = 1 }
    cur != "" && /^Run Summary:/ { cur = "" }
    END {
        if (cur != "") print "inprogress=" cur
        else if (last != "") print "inprogress=(between tests, after " last ")"
    }
    ' "$log"
}
results=$(parse)
count() { grep -c "^$1=" <<<"$results" || true; }
passed=$(count passed)
failed=$(count failing)
skipped=$(count skipped)
grep '^failing=' <<<"$results" | cut -d= -f2- > "$out/failing.txt" || true
grep '^skipped=' <<<"$results" | cut -d= -f2- > "$out/skipped.txt" || true
hung_test=$(grep '^inprogress=' <<<"$results" | cut -d= -f2- || true)
if [[ $status == hung && -z $hung_test ]]; then
    hung_test="(before the first test: connect/login)"
fi

# Cross-check against CUnit's own "tests" summary row:
#   tests  Total  Ran  Passed  Failed  Inactive
ran=$(( passed + failed + skipped ))
cunit_passed=$(( passed + skipped ))
if row=$(grep -E '^ +tests +[0-9]+' "$log"); then
    read -r _ _total c_ran c_passed c_failed _inactive <<<"$row"
    if [[ $c_ran != "$ran" || $c_failed != "$failed" ]]; then
        echo "conformance.sh: warning: parsed ran=$ran failed=$failed but CUnit says ran=$c_ran failed=$c_failed" >&2
    fi
    ran=$c_ran
    cunit_passed=$c_passed
    failed=$c_failed
    passed=$(( c_passed - skipped ))
fi

# A dead target often looks like a hang (libiscsi keeps reconnecting), so
# check the portal whatever happened.
if ! portal_up; then
    status=target-down
    echo "conformance.sh: target no longer accepts connections on $host:$port (crashed?)" >&2
fi
if [[ $status == completed ]]; then
    hung_test=
fi

{
    echo "status=$status"
    echo "url=$url"
    echo "passed=$passed"
    echo "failed=$failed"
    echo "skipped=$skipped"
    echo "cunit_passed=$cunit_passed"
    echo "ran=$ran"
    echo "duration_s=$duration"
    echo "hung_test=$hung_test"
    sed 's/^/failing=/' "$out/failing.txt"
} > "$summary"

echo "== iscsi-test-cu against $url: $status after ${duration}s"
echo "passed=$passed failed=$failed skipped=$skipped (ran $ran)"
if [[ -n $hung_test ]]; then
    echo "test in progress when the run stopped: $hung_test"
fi
if [[ -s $out/failing.txt ]]; then
    echo "failing tests:"
    sed 's/^/  /' "$out/failing.txt"
fi
echo "log: $log  summary: $summary"

case $status in
    completed) ;;
    hung) exit 2 ;;
    *) exit 3 ;;
esac
if [[ -n $min_pass ]] && (( passed < min_pass )); then
    echo "conformance.sh: $passed passed, below the bar of $min_pass" >&2
    exit 4
fi
exit 0
