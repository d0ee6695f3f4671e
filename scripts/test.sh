#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this). Installs what it needs.
#
#   1. style gates: cargo fmt --check, cargo clippy -D warnings, cargo doc -D warnings
#   2. unit tests of every layer (debug build: overflow checks on)
#   2f. fuzzing: every cargo-fuzz target in fuzz/ for FUZZ_SECONDS (default 20) each from the
#      seed corpus in fuzz/corpus/ (scripts/fuzz.sh; installs nightly and cargo-fuzz); a crash fails
#   3. whole-binary tests against libiscsi's initiators over 127.0.0.1, including
#      iscsi-test-cu on a RAM LUN and a file LUN (release build)
#   3r. RBD: a one-node Ceph cluster (scripts/ceph-cluster.sh; installs the Ceph packages),
#      rbd-ffi's tests and RBD LUNs over iSCSI against it, then the cluster is stopped
#   4. the SoftRoCE VM tier (scripts/softroce-vm.sh): real RDMA and the Linux
#      initiator in a QEMU guest: the harness self-test against LIO, its boot watchdog
#      (scripts/softroce-vm-watchdog-test.sh: a simulated hung boot), rdma-ffi on rxe,
#      and our target against the kernel initiator over TCP and over iSER, with and without CHAP,
#      and against the kernel's NVMe/TCP host beside nvmet-tcp (scripts/guest/nvme-tcp.sh), with
#      DH-HMAC-CHAP on Debian's bookworm-backports kernel (scripts/guest/nvme-auth.sh),
#      two gateways under dm-multipath and under native NVMe multipath with ANA
#
# Environment: SKIP_VM=1 skips tier 4, SKIP_FUZZ=1 the fuzz tier (both say so loudly); everything
# else always runs. Tests that need a tool fail when it is missing (REQUIRE_TOOLS=1 below).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n=== %s\n' "$*"; }

# --- packages -------------------------------------------------------------------
need_pkgs=()
# libibverbs-dev, librdmacm-dev and libclang-dev build rdma-ffi (bindgen over rdma-core);
# librbd-dev (with librados-dev) links rbd-ffi. systemd's systemd-analyze checks the installed unit.
for pkg in libiscsi-bin pkg-config libibverbs-dev librdmacm-dev libclang-dev librbd-dev systemd; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$pkg")
done
if ((${#need_pkgs[@]})); then
    log "installing ${need_pkgs[*]}"
    if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq
    # Another apt may hold the lock on shared machines; wait for it rather than fail.
    $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq "${need_pkgs[@]}"
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
# Whole-binary tests fail instead of skipping when a tool they need is missing.
export REQUIRE_TOOLS=1

# --- tier 1: style --------------------------------------------------------------
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
# Broken and private intra-doc links fail here, not only on someone's next `cargo doc`. After
# clippy the dependencies' metadata is built: this costs ~3 s on a 2-core machine.
log "cargo doc -D warnings"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

# --- tier 2: unit tests ---------------------------------------------------------
log "unit tests"
cargo test --workspace --lib --bins
# rdma-ffi's host tests: what this host's (absent) RDMA must make the verbs/CM calls do.
cargo test -p rdma-ffi --test host

# --- tier 2f: fuzzing --------------------------------------------------------------
# A crash fails the run, but only at the end: the later tiers still report.
fuzz_status=0
if [[ ${SKIP_FUZZ:-0} == 1 ]]; then
    echo "SKIPPED: fuzz tier (SKIP_FUZZ=1): no fuzz target ran" >&2
else
    log "fuzzing: every target for ${FUZZ_SECONDS:-20}s from fuzz/corpus/ (scripts/fuzz.sh)"
    scripts/fuzz.sh "${FUZZ_SECONDS:-20}" || fuzz_status=$?
fi

# --- tier 3: whole-binary tests against real initiators -------------------------
log "whole-binary tests (libiscsi over TCP on 127.0.0.1)"
cargo test --release --test libiscsi -- --test-threads=2
log "CHAP with libiscsi (one-way, mutual, wrong and missing credentials, discovery)"
cargo test --release --test chap -- --test-threads=2
log "whole-binary tests (hostile clients: connection caps, login deadline, discovery sessions)"
cargo test --release --test limits -- --test-threads=2
log "whole-binary tests (connections on the engine threads: a stalled initiator, shutdown, reinstatement)"
cargo test --release --test engine_threads -- --test-threads=2
log "whole-binary tests (NVMe/TCP: queues, I/O in-capsule and by R2T, discovery, bad input, allowed_hosts)"
cargo test --release --test nvme_tcp -- --test-threads=2
log "two gateways on one LUN (ALUA: VPD 0x83, REPORT TARGET PORT GROUPS, standby, libiscsi MultipathIO)"
cargo test --release --test gateways -- --test-threads=2
log "operating a running target: reservations kept through a killed target (APTPL, state_dir), LUNs grown by SIGHUP"
cargo test --release --test operations -- --test-threads=2

# --- tier 3r: Ceph RBD ----------------------------------------------------------------
# The cluster must come up: a machine that cannot install or start Ceph fails here.
log "RBD: one-node Ceph cluster, rbd-ffi against it, RBD LUNs over iSCSI (round trip, SBC suites)"
scripts/ceph-cluster.sh start
trap 'scripts/ceph-cluster.sh stop' EXIT
cargo test --release -p rbd-ffi --test cluster -- --test-threads=2
cargo test --release --test rbd -- --test-threads=2
trap - EXIT
scripts/ceph-cluster.sh stop

# --- tier 4: SoftRoCE VM ----------------------------------------------------------
# Each guest run may take up to 20 minutes before it counts as hung (the harness's default is 10;
# iser-basic.sh alone takes 3 minutes on an idle 2-core machine and twice that under load).
# A boot that hangs before the guest script starts is cut short and retried by the harness
# (SOFTROCE_VM_BOOT_TIMEOUT, SOFTROCE_VM_BOOT_RETRIES): that costs minutes, not these 20.
export SOFTROCE_VM_TIMEOUT="${SOFTROCE_VM_TIMEOUT:-1200}"
if [[ ${SKIP_VM:-0} == 1 ]]; then
    echo "SKIPPED: SoftRoCE VM tier (SKIP_VM=1)" >&2
else
    log "SoftRoCE VM self-test (LIO ib_isert + open-iscsi iser in a QEMU guest)"
    set +e
    scripts/softroce-vm.sh --selftest
    status=$?
    set -e
    if [[ $status -eq 77 ]]; then
        echo "SKIPPED: this machine cannot run the QEMU guest (see the SKIP line above)" >&2
    elif [[ $status -ne 0 ]]; then
        echo "SoftRoCE VM self-test failed with status $status" >&2
        exit "$status"
    else
        log "the harness's boot watchdog: a hung boot is retried, a failing guest script is not (~45 s)"
        scripts/softroce-vm-watchdog-test.sh
        log "rdma-ffi on rxe: connect, Send, 1 MiB RDMA READ/WRITE, drop and kill teardown"
        scripts/guest/rdma-ffi-test.sh
        cargo build --release --bin iser-target
        log "the Linux kernel initiator (open-iscsi) against our target over TCP"
        scripts/softroce-vm.sh scripts/guest/linux-initiator.sh tcp
        log "open-iscsi (ib_iser) and libiscsi against our target over iSER on rxe"
        scripts/softroce-vm.sh scripts/guest/iser-basic.sh
        log "nothing acknowledged is lost: our target SIGKILLed under a logged iSER write load"
        scripts/softroce-vm.sh scripts/guest/data-safety.sh
        log "CHAP and mutual CHAP with open-iscsi over TCP and iSER"
        scripts/softroce-vm.sh scripts/guest/chap.sh
        log "NVMe/TCP: the kernel's nvme-tcp host and nvme-cli against nvmet-tcp and against ours"
        scripts/softroce-vm.sh scripts/guest/nvme-tcp.sh
        # Debian 12's 6.1 kernel has no NVMe authentication; its bookworm-backports 6.12 has it
        # (the harness adds that suite's apt source and caches its kernel beside the 6.1 one).
        log "NVMe DH-HMAC-CHAP: the kernel's host against nvmet-tcp and against ours (bookworm-backports kernel)"
        SOFTROCE_VM_KERNEL_SUITE=bookworm-backports scripts/softroce-vm.sh scripts/guest/nvme-auth.sh
        log "two gateways, one LUN: dm-multipath with ALUA, fio verify across a gateway SIGKILL"
        scripts/softroce-vm.sh scripts/guest/multipath.sh
        log "two gateways over NVMe/TCP: native NVMe multipath with ANA, port 8009, fio verify across a SIGKILL"
        scripts/softroce-vm.sh scripts/guest/nvme-multipath.sh
        log "iSER faults: resets under write load, broken QPs, 200 connections that never log in"
        scripts/guest/iser-faults.sh
    fi
fi

if [[ $fuzz_status -ne 0 ]]; then
    echo "FAILED: the fuzz tier (see its log above: crash input and stack)" >&2
    exit "$fuzz_status"
fi
log "all tests passed"
