#!/usr/bin/env bash
# softroce-vm-watchdog-test.sh — checks softroce-vm.sh's boot watchdog with a
# simulated hang (SOFTROCE_VM_TEST_HANG_BOOTS: the guest's init stops before
# the guest script, as a hung boot would).
#
#   scripts/softroce-vm-watchdog-test.sh          the first boot hangs: it is
#       killed after SOFTROCE_VM_BOOT_TIMEOUT (default here 25 s) and its
#       console (kernel messages, QEMU's threads, sysrq task dump, vCPUs) is
#       kept; the next boot (given 50 s) runs a guest script that fails with
#       status 3, which must be the result, the script having run once (a
#       failing script is never retried).  ~45 s.
#   scripts/softroce-vm-watchdog-test.sh --all    also: every boot hangs, so
#       the run gives up with 124 after 1 + SOFTROCE_VM_BOOT_RETRIES boots
#       (retries set to 1 here).  ~90 s more.
#
# Exit status: 0 all checks passed, 1 a check failed, 77 the guest cannot run
# here (as softroce-vm.sh).  Uses SOFTROCE_VM_CACHE etc. like softroce-vm.sh.
set -uo pipefail

REPO_ROOT="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd -P)"
VM="$REPO_ROOT/scripts/softroce-vm.sh"
export SOFTROCE_VM_BOOT_TIMEOUT="${SOFTROCE_VM_BOOT_TIMEOUT:-25}"
failed=0
work="$(mktemp -d "${TMPDIR:-/tmp}/softroce-vm-watchdog.XXXXXX")"
trap 'rm -rf "$work"' EXIT

check() {  # check DESCRIPTION COMMAND...
    local what="$1"; shift
    if "$@"; then
        echo "PASS: $what"
    else
        echo "FAIL: $what"
        failed=$((failed + 1))
    fi
}

# One run of softroce-vm.sh: run NAME HANG_BOOTS GUEST_CMD [ENV=VALUE...]
# leaves $work/NAME.{out,err,rc} and the results dir $work/NAME.
run() {
    local name="$1" hang="$2" cmd="$3"; shift 3
    local rc=0
    env SOFTROCE_VM_TEST_HANG_BOOTS="$hang" SOFTROCE_VM_RESULTS="$work/$name" "$@" \
        "$VM" -c "$cmd" >"$work/$name.out" 2>"$work/$name.err" || rc=$?
    echo "$rc" >"$work/$name.rc"
    sed 's/^/  [stderr] /' "$work/$name.err"
    sed 's/^/  [stdout] /' "$work/$name.out"
    if [[ $rc == 77 ]]; then
        echo "SKIP: softroce-vm.sh cannot run the guest here"
        exit 77
    fi
}

count() { grep -c -- "$1" "$2" || true; }

echo "=== a hung first boot is retried; the guest script's failure is the result, not retried"
run retry 1 'echo watchdog-test-script-ran; exit 3'
check "status is the guest script's (3), got $(cat "$work/retry.rc")" test "$(cat "$work/retry.rc")" = 3
check "the guest script ran exactly once" test "$(count watchdog-test-script-ran "$work/retry.out")" = 1
check "stderr says boot 1 hung and was retried" \
    grep -q 'BOOT HUNG: boot 1 did not start' "$work/retry.err"
check "stderr says a retry happened" grep -q 'retrying: boot 2 of at most' "$work/retry.err"
check "the hung boot's console is kept, kernel messages included" \
    grep -q 'Linux version' "$work/retry/console.boot1-hung.log"
check "it shows where the boot stopped (the simulated hang's line)" \
    grep -q 'softroce_test_hang=1: init stops here' "$work/retry/console.boot1-hung.log"
check "it has the guest's task dump (sysrq t)" grep -q 'sysrq: Show State' "$work/retry/console.boot1-hung.log"
check "it has QEMU's view of the vCPUs" grep -q 'CPU #0' "$work/retry/console.boot1-hung.log"
check "it has QEMU's threads, named" grep -q ' CPU 0/TCG$' "$work/retry/console.boot1-hung.log"
check "the boot that ran the script keeps its raw console (console.log)" \
    grep -q 'Linux version' "$work/retry/console.log"
check "the filtered view hides the boot's kernel messages" \
    test "$(count 'Linux version' "$work/retry.out")" = 0

if [[ "${1:-}" == --all ]]; then
    echo "=== every boot hangs: give up with 124 after 1 + SOFTROCE_VM_BOOT_RETRIES boots"
    run allhang 9 'echo watchdog-test-script-ran' SOFTROCE_VM_BOOT_RETRIES=1
    check "status 124, got $(cat "$work/allhang.rc")" test "$(cat "$work/allhang.rc")" = 124
    check "two boots, both hung" test -s "$work/allhang/console.boot2-hung.log"
    check "no third boot" test ! -e "$work/allhang/console.boot3-hung.log"
    check "the guest script never ran" test "$(count watchdog-test-script-ran "$work/allhang.out")" = 0
    check "stderr says it gave up" grep -q 'boots in a row hung' "$work/allhang.err"
fi

echo "softroce-vm-watchdog-test: $failed failed check(s)"
[[ $failed == 0 ]]
