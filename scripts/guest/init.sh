#!/bin/bash
# softroce-vm stage 2: PID 1 inside the guest, after switch_root into the
# overlay of the host's / (see scripts/softroce-vm.sh).  Mounts the pseudo
# filesystems and the two writable 9p shares, runs the command the host wrote
# to ctl/cmd.sh, reports its exit status back through ctl/status and powers off.
#
# Deliberately no `set -e`: PID 1 must always reach the power-off; if it exits
# instead, the kernel panics (panic=-1 + qemu -no-reboot still ends the VM,
# but the host then only sees "no status").
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb LANG=C.UTF-8

arg() {
    local a
    for a in $(</proc/cmdline); do
        case "$a" in "$1="*) printf '%s\n' "${a#*=}" ;; esac
    done
}

poweroff_now() {
    sync
    # No systemd here, so `poweroff` would try to talk to it; sysrq "o" powers
    # off directly (CONFIG_MAGIC_SYSRQ=y in Debian; /proc/sysrq-trigger works
    # regardless of the kernel.sysrq mask).
    echo o >/proc/sysrq-trigger
    sleep 30
}

echo "softroce-vm stage2: $0 started; mounting /proc, /sys, /run and the ctl and results shares"
mount -t proc proc /proc
mount -t sysfs sysfs /sys
# /dev was moved over from the initramfs (devtmpfs: nodes appear without udev).
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
# /run would otherwise be the host's (read-only lower + tmpfs upper): stale
# pid files and locks (iscsid) must not leak in, so give the guest a clean one.
# /tmp stays the overlay of the host's /tmp on purpose, so that a guest script
# under the host's /tmp can be run; anything written there stays in the guest.
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/lock /run/softroce/ctl
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 softroce_ctl /run/softroce/ctl
RESULTS="$(arg softroce_results)"
if [[ -n "$RESULTS" ]]; then
    mkdir -p "$RESULTS"
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 softroce_results "$RESULTS"
fi
mount -t configfs configfs /sys/kernel/config 2>/dev/null || true  # configfs is a module; lib.sh retries
[[ -e /proc/self/fd ]] && ln -sfn /proc/self/fd /dev/fd
ip link set lo up
hostname softroce-vm
# rdma_rxe registers memory with the verbs (ibv_reg_mr pins pages): the
# default RLIMIT_MEMLOCK of 8 MiB is too small for rping/perftest/iser tools.
ulimit -l unlimited

[[ "$(arg softroce_debug)" == 1 || "${SOFTROCE_VM_DEBUG:-0}" == 1 ]] && set -x

if [[ "$(arg softroce_test_hang)" == 1 ]]; then
    # Only for tests of softroce-vm.sh's boot watchdog (SOFTROCE_VM_TEST_HANG_BOOTS).
    echo "softroce-vm: softroce_test_hang=1: init stops here, before the guest script, as a hung boot would"
    while :; do sleep 3600; done
fi
# The boot is over: the host's boot watchdog stops at ctl/started and shows
# the console from the next line on (lowered to errors-and-worse unless
# SOFTROCE_VM_DEBUG=1: the kernel logged everything up to here, loglevel=7).
[[ "$(arg softroce_quiet)" == 1 ]] && echo 3 >/proc/sys/kernel/printk
cut -d' ' -f1 /proc/uptime >/run/softroce/ctl/started
echo "softroce-vm: guest up after $(cut -d' ' -f1 /proc/uptime)s, running command"
if [[ "$(arg softroce_interactive)" == 1 ]]; then
    # Interactive (--shell): the console must be the controlling tty, or bash
    # has no job control and Ctrl-C would hit PID 1 (setsid -c = TIOCSCTTY).
    setsid -c bash /run/softroce/ctl/cmd.sh </dev/console >/dev/console 2>&1 &
else
    # setsid: a guest script using `kill 0` must not take PID 1 with it.
    setsid bash /run/softroce/ctl/cmd.sh </dev/null >/dev/console 2>&1 &
fi
wait $!
rc=$?
echo "softroce-vm: command exited with status $rc after $(cut -d' ' -f1 /proc/uptime)s"
[[ -n "$RESULTS" ]] && dmesg >"$RESULTS/dmesg.txt" 2>&1
echo "$rc" >/run/softroce/ctl/status
poweroff_now
