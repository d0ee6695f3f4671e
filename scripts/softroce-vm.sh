#!/usr/bin/env bash
# softroce-vm.sh — run a test script inside a throw-away QEMU guest that has
# real RDMA (SoftRoCE / rdma_rxe), LIO (incl. ib_isert) and the Linux iSCSI
# initiator (open-iscsi + ib_iser), on a host whose kernel has none of them.
#
#   scripts/softroce-vm.sh GUEST_SCRIPT [ARGS...]   run GUEST_SCRIPT in the guest
#   scripts/softroce-vm.sh --selftest               prove the environment works
#   scripts/softroce-vm.sh -c 'CMDS'                run bash -c CMDS in the guest
#                                                   (scripts/guest/lib.sh sourced)
#   scripts/softroce-vm.sh --shell                  interactive bash on the guest console
#                                                   (lib.sh sourced; `exit` ends the VM)
#   scripts/softroce-vm.sh --check                  only detect whether the VM can run
#
# Exit status: the guest script's exit status; 124 if the hard timeout fired,
# or if every boot hung before the guest script started (boot watchdog below);
# 77 ("skip") only when this machine truly cannot run the guest (no QEMU and no
# way to install it, not x86_64 Linux, ...).  With SOFTROCE_VM_REQUIRE=1 the
# "cannot run" case is a failure (exit 1) instead of a skip.
#
# Boot watchdog (not with --shell): a boot that has not started the guest
# script within SOFTROCE_VM_BOOT_TIMEOUT seconds of QEMU starting is killed and
# the guest booted again, at most SOFTROCE_VM_BOOT_RETRIES more times, each
# retry given twice the time of the boot before it (a boot merely slowed by a
# loaded host gets through); stderr says so and shows the hung console's
# tail, and the results dir keeps that boot's whole console
# (console.boot<N>-hung.log, with QEMU's threads and view of the vCPUs and
# the guest's task stacks).  Only a boot is retried: once the guest script has started,
# its failure or its timeout is the result, as is.
# The raw console of the boot that ran the script is console.log in the
# results dir (every kernel message up to the guest script's start).
#
# Environment (all optional):
#   SOFTROCE_VM_TIMEOUT   hard timeout in seconds for each boot's whole guest run
#                         (600); a boot that hung before the guest script adds
#                         its boot timeout (+ ~10 s) to the run
#   SOFTROCE_VM_BOOT_TIMEOUT  seconds from QEMU's start until the guest script
#                         must have started, else the first boot counts as hung
#                         (120; boots take 8-20 s, 24-53 s on a loaded host)
#   SOFTROCE_VM_BOOT_RETRIES  boots tried again after a hung one (2)
#   SOFTROCE_VM_TEST_HANG_BOOTS  tests of the watchdog only: the first N boots
#                         hang in the guest's init before the guest script (0)
#   SOFTROCE_VM_MEM       guest RAM in MiB (2048)
#   SOFTROCE_VM_SMP       guest CPUs (2)
#   SOFTROCE_VM_DEBUG     1 = show the full kernel console, `set -x` in guest init
#   SOFTROCE_VM_RESULTS   host dir the guest may write results to (shared rw);
#                         default target/softroce-vm/results/<run>; visible in the
#                         guest at the same path and in $SOFTROCE_RESULTS
#   SOFTROCE_VM_CACHE     cache dir for kernel + initramfs (target/softroce-vm)
#   SOFTROCE_VM_KERNEL_PKG   Debian kernel package (default: what linux-image-amd64 depends on)
#   SOFTROCE_VM_KERNEL_SUITE  boot the kernel of another Debian suite, e.g. bookworm-backports
#                         (what that suite's linux-image-amd64 depends on, in that suite's
#                         version); as root, a suite apt has no lists of gets an apt source
#                         (/etc/apt/sources.list.d/softroce-vm-SUITE.sources, deb.debian.org)
#                         and `apt-get update`.  Each suite keeps its own cached build
#                         (default: none, the host's own suites' linux-image-amd64)
#   SOFTROCE_VM_QEMU      QEMU binary (qemu-system-x86_64)
#   SOFTROCE_VM_NO_INSTALL   1 = never run apt-get (skip if something is missing)
#   SOFTROCE_VM_REQUIRE   1 = "cannot run here" fails (exit 1) instead of skipping (77)
#   SOFTROCE_VM_ENV       space-separated extra variable names to pass into the guest
#   SOFTROCE_VM_APPEND    extra guest kernel parameters (experiments, e.g. idle=poll)
#                         (SOFTROCE_*, RUST_LOG, RUST_BACKTRACE are always passed)
#   CARGO_TARGET_DIR      honoured to locate the build tree
set -euo pipefail

SELF="$(readlink -f "${BASH_SOURCE[0]}")"
REPO_ROOT="$(cd "$(dirname "$SELF")/.." && pwd -P)"
GUEST_DIR="$REPO_ROOT/scripts/guest"

TIMEOUT="${SOFTROCE_VM_TIMEOUT:-600}"
BOOT_TIMEOUT="${SOFTROCE_VM_BOOT_TIMEOUT:-120}"
BOOT_RETRIES="${SOFTROCE_VM_BOOT_RETRIES:-2}"
HANG_BOOTS="${SOFTROCE_VM_TEST_HANG_BOOTS:-0}"
for v in BOOT_TIMEOUT BOOT_RETRIES TEST_HANG_BOOTS; do
    n="SOFTROCE_VM_$v"
    [[ "${!n:-0}" =~ ^[0-9]+$ ]] || { echo "softroce-vm: error: $n=${!n} is not a whole number" >&2; exit 1; }
done
MEM="${SOFTROCE_VM_MEM:-2048}"
SMP="${SOFTROCE_VM_SMP:-2}"
DEBUG="${SOFTROCE_VM_DEBUG:-0}"
INTERACTIVE=0
QEMU="${SOFTROCE_VM_QEMU:-qemu-system-x86_64}"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$REPO_ROOT/$TARGET_DIR" ;; esac
CACHE="${SOFTROCE_VM_CACHE:-$TARGET_DIR/softroce-vm}"
KERNEL_SUITE="${SOFTROCE_VM_KERNEL_SUITE:-}"
# The archive a SOFTROCE_VM_KERNEL_SUITE gets its apt source from, when apt has none.
KERNEL_MIRROR=http://deb.debian.org/debian

# Modules the busybox initramfs must insmod to mount the host's / over
# virtio-9p and put an overlay on it.  build_initramfs adds what they depend on,
# in dependency order, from the kernel package's own modules.dep: the set
# differs between kernels (6.1: virtio_ring virtio virtio_pci_legacy_dev
# virtio_pci_modern_dev virtio_pci 9pnet 9pnet_virtio netfs fscache 9p overlay,
# all modules; 6.12: virtio and virtio_pci built in, fscache part of netfs).
INITRAMFS_MODULES=(virtio_pci 9pnet_virtio 9p overlay)

# Host packages the guest uses (the guest runs the host's userspace over 9p).
PACKAGES=(qemu-system-x86 busybox-static rdma-core ibverbs-utils perftest rdmacm-utils
          open-iscsi libiscsi-bin fio sg3-utils e2fsprogs kmod iproute2 util-linux multipath-tools
          procps coreutils nvme-cli nftables)

log()  { printf 'softroce-vm: %s\n' "$*" >&2; }
die()  { log "error: $*"; exit 1; }
# "This machine cannot run the guest at all": skip (77) unless told it's required.
cannot_run() {
    log "SKIP: cannot run the SoftRoCE VM on this machine: $*"
    if [[ "${SOFTROCE_VM_REQUIRE:-0}" == 1 ]]; then
        log "SOFTROCE_VM_REQUIRE=1, so this is a failure"
        exit 1
    fi
    exit 77
}

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$SELF"; }

# ---------------------------------------------------------------- host checks
check_platform() {
    [[ "$(uname -s)" == Linux ]] || cannot_run "not Linux"
    [[ "$(uname -m)" == x86_64 ]] || cannot_run "not x86_64 (guest kernel is Debian amd64)"
    case "$REPO_ROOT$CACHE" in
        *[[:space:]]*) die "repo/cache path contains whitespace; the guest kernel command line cannot carry it" ;;
    esac
}

missing_packages() {
    local p st
    for p in "${PACKAGES[@]}"; do
        st="$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)"
        [[ "$st" == installed ]] || printf '%s\n' "$p"
    done
}

ensure_packages() {
    command -v dpkg-query >/dev/null || {
        command -v "$QEMU" >/dev/null || cannot_run "no dpkg and no $QEMU"
        log "warning: not a Debian-like host; assuming the guest tools are installed"
        return 0
    }
    local missing
    missing="$(missing_packages)"
    [[ -z "$missing" ]] && return 0
    # shellcheck disable=SC2086  # word-splitting the package list is intended
    if [[ "${SOFTROCE_VM_NO_INSTALL:-0}" == 1 ]]; then
        cannot_run "missing packages and SOFTROCE_VM_NO_INSTALL=1:" $missing
    fi
    if [[ "$(id -u)" != 0 ]]; then
        # shellcheck disable=SC2086
        cannot_run "missing packages and not root (install them: apt-get install" $missing")"
    fi
    # shellcheck disable=SC2086
    log "installing:" $missing
    # DPkg::Lock::Timeout: parallel runs (other worktrees) may hold the dpkg
    # lock; wait for it instead of failing.
    local apt=(apt-get -y -q --no-install-recommends -o DPkg::Lock::Timeout=300)
    # Try without `apt-get update` first (fast when lists are fresh); a stale
    # list fails with 404s, then update and retry once.
    # shellcheck disable=SC2086
    if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" install $missing >&2; then
        apt-get update -q >&2 || die "apt-get update failed"
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" install $missing >&2 \
            || die "apt-get install failed:" $missing
    fi
}

check_qemu() {
    command -v "$QEMU" >/dev/null || cannot_run "$QEMU not installed"
    # Fails e.g. when the binary cannot start at all (missing libs, seccomp).
    "$QEMU" -version >/dev/null 2>&1 || cannot_run "$QEMU -version fails"
}

# ------------------------------------------------------- kernel + initramfs
kernel_package() {
    if [[ -n "${SOFTROCE_VM_KERNEL_PKG:-}" ]]; then
        printf '%s\n' "$SOFTROCE_VM_KERNEL_PKG"; return
    fi
    # linux-image-amd64 is a metapackage: "Depends: linux-image-6.1.0-NN-amd64"; with a suite,
    # that suite's version of it ("linux-image-amd64/bookworm-backports": "Depends:
    # linux-image-6.12.43+deb12-amd64"), whatever the pins say.  Prints nothing when apt does
    # not know it (no lists: apt-cache fails with 100, which under pipefail and set -e would
    # end the script before ensure_kernel's apt-get update or cached-build fallbacks).
    apt-cache depends "linux-image-amd64${KERNEL_SUITE:+/$KERNEL_SUITE}" 2>/dev/null \
        | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }' || true
}

# kernel_version PKG: the version of PKG to fetch: apt's candidate, or with a suite the newest
# version that suite has (a backports package is pinned at 100, below the host's suites).
kernel_version() {
    if [[ -z "$KERNEL_SUITE" ]]; then
        apt-cache policy "$1" 2>/dev/null | awk '$1 == "Candidate:" { print $2 }' || true
        return
    fi
    # "PKG | VERSION | http://deb.debian.org/debian SUITE/main amd64 Packages", newest first.
    apt-cache madison "$1" 2>/dev/null \
        | awk -F ' [|] ' -v s=" $KERNEL_SUITE/" 'index($3, s) { print $2; exit }' || true
}

# suite_has_lists SUITE: apt has package lists of SUITE (a source names it and was fetched).
suite_has_lists() {
    apt-cache policy 2>/dev/null | awk -v s="$1/main" '$3 == s { found = 1 } END { exit !found }'
}

# With SOFTROCE_VM_KERNEL_SUITE: make sure apt has that suite's package lists.  A suite no
# source names gets one of its own (Debian's main archive, signed by Debian's archive keys);
# only that source is then fetched.  Needs root; without it (or with SOFTROCE_VM_NO_INSTALL=1)
# ensure_kernel falls back to a cached build of the suite, if any.
ensure_kernel_suite() {
    local suite="$KERNEL_SUITE" src update=(apt-get update -q)
    [[ -z "$suite" ]] && return 0
    [[ "$suite" =~ ^[a-z0-9][a-z0-9.-]*$ ]] || die "SOFTROCE_VM_KERNEL_SUITE=$suite is not a Debian suite name"
    suite_has_lists "$suite" && return 0
    if [[ "$(id -u)" != 0 || "${SOFTROCE_VM_NO_INSTALL:-0}" == 1 ]]; then
        log "warning: apt has no package lists of $suite and may not add them (not root, or SOFTROCE_VM_NO_INSTALL=1)"
        return 0
    fi
    src="/etc/apt/sources.list.d/softroce-vm-$suite.sources"
    if [[ ! -e "$src" ]] && ! grep -rqsE "^[^#]*[[:space:]]$suite([[:space:]]|\$)" \
            /etc/apt/sources.list /etc/apt/sources.list.d/; then
        log "adding apt source $src (Debian suite $suite, for the guest kernel)"
        cat >"$src" <<EOS
# Added by softroce-vm.sh (SOFTROCE_VM_KERNEL_SUITE=$suite): the guest kernel's suite.
Types: deb
URIs: $KERNEL_MIRROR
Suites: $suite
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOS
    fi
    if [[ -e "$src" ]]; then
        # Fetch only this source's lists; leave the others (and their age) as they are.
        update+=(-o "Dir::Etc::SourceList=$src" -o Dir::Etc::SourceParts=- -o APT::Get::List-Cleanup=0)
    fi
    "${update[@]}" >&2 || die "apt-get update for suite $suite failed"
    suite_has_lists "$suite" || die "apt has no package lists of suite $suite after apt-get update"
}

# Stage-1 init: runs from the initramfs as PID 1 under busybox.
# Kept here (not in the repo tree) because it is baked into the cached
# initramfs; its hash is part of the cache key so edits trigger a rebuild.
stage1_init() {
    cat <<'EOF'
#!/bin/busybox sh
# softroce-vm stage 1: mount host / (9p, ro) + tmpfs overlay, switch_root.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
arg() { for a in $(cat /proc/cmdline); do case "$a" in "$1="*) echo "${a#*=}";; esac; done; }
fail() { echo "softroce-vm stage1: $*" >/dev/console; dmesg | tail -30; echo o >/proc/sysrq-trigger; sleep 10; }
KVER="$(uname -r)"
for m in $(cat /modules.list); do
    insmod "/modules/$m.ko" || fail "insmod $m failed"
done
# Progress lines: the host shows them only with SOFTROCE_VM_DEBUG=1, but they
# are in console.log, where a hung boot's console says how far it got.
echo "softroce-vm stage1: modules loaded; mounting the host's / (9p) and the overlay"
mkdir -p /lower /upper /newroot
# msize: bigger is much faster (fewer 9p round trips); 512000 is the
# virtio transport's maximum in 6.1 (net/9p/trans_virtio.c:
# .maxsize = PAGE_SIZE * (VIRTQUEUE_NUM - 3)); larger values get clamped.
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /lower \
    || fail "mount 9p hostroot failed"
mount -t tmpfs -o mode=0755 tmpfs /upper
mkdir -p /upper/upper /upper/work
# index/redirect_dir/metacopy pinned off: none is needed for a throw-away
# upper, and it keeps behaviour independent of the overlay module's defaults.
mount -t overlay -o lowerdir=/lower,upperdir=/upper/upper,workdir=/upper/work,index=off,redirect_dir=off,metacopy=off overlay /newroot \
    || fail "mount overlay failed"
MODDIR="$(arg softroce_moddir)"
mkdir -p "/newroot/lib/modules/$KVER"
mount --bind "/newroot$MODDIR" "/newroot/lib/modules/$KVER" || fail "bind modules failed"
INIT="$(arg softroce_init)"
[ -x "/newroot$INIT" ] || fail "stage-2 init $INIT not found/executable in host root"
umount /proc /sys
mount --move /dev /newroot/dev
echo "softroce-vm stage1: switch_root to $INIT"
exec switch_root /newroot "$INIT"
EOF
}

build_kernel_cache() {
    local pkg="$1" ver="$2" kdir="$3"
    local tmp; tmp="$(mktemp -d "$CACHE/.build.XXXXXX")"
    log "fetching kernel $pkg $ver (cold cache)"
    # apt-get download as root into a dir _apt cannot write prints a harmless
    # "Download is performed unsandboxed as root" warning; make it quiet by
    # doing the download in the (root-owned) temp dir with the sandbox off.
    (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg=$ver" >&2) \
        || die "apt-get download $pkg=$ver failed"
    dpkg-deb -x "$tmp"/*.deb "$tmp/root"
    rm -f "$tmp"/*.deb
    local kver
    kver="$(basename "$(find "$tmp/root/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n1)")"
    [[ -n "$kver" ]] || die "no /lib/modules/<version> in $pkg"
    # The package ships no modules.dep (normally generated by its postinst).
    depmod -b "$tmp/root" "$kver"
    build_initramfs "$tmp" "$kver"
    # Which suite the build came from (none: the default), for ensure_kernel's clean-up.
    [[ -n "$KERNEL_SUITE" ]] && printf '%s\n' "$KERNEL_SUITE" >"$tmp/suite"
    printf '%s\n' "$kver" >"$tmp/kver"
    rm -rf "$kdir"
    mv "$tmp" "$kdir"
}

build_initramfs() {
    local kd="$1" kver="$2" m f deps kind
    local ir="$kd/initramfs"
    mkdir -p "$ir/bin" "$ir/modules" "$ir/proc" "$ir/sys" "$ir/dev"
    cp /bin/busybox "$ir/bin/busybox"
    : >"$ir/modules.list"
    # One "insmod PATH" line per module to load, its dependencies before it (a
    # module shared by several appears once for each), "builtin NAME" for one the
    # kernel has built in; fails when one is in neither.
    deps="$(modprobe -d "$kd/root" -S "$kver" --show-depends -a "${INITRAMFS_MODULES[@]}")" \
        || die "the kernel package lacks a module the initramfs needs (${INITRAMFS_MODULES[*]})"
    while read -r kind f; do
        [[ "$kind" == insmod ]] || continue
        m="$(basename "$f")"
        m="${m%%.ko*}"
        grep -qxF "$m" "$ir/modules.list" && continue
        # busybox insmod wants them plain (Debian 12's 6.1 ships .ko, its 6.12 backport .ko.xz).
        case "$f" in
            *.ko.xz) xz -dc "$f" >"$ir/modules/$m.ko" ;;
            *.ko.zst) zstd -qdc "$f" >"$ir/modules/$m.ko" ;;
            *.ko.gz) gzip -dc "$f" >"$ir/modules/$m.ko" ;;
            *.ko) cp "$f" "$ir/modules/$m.ko" ;;
            *) die "module $f: unknown compression" ;;
        esac || die "cannot unpack module $f"
        echo "$m" >>"$ir/modules.list"
    done <<<"$deps"
    stage1_init >"$ir/init"
    chmod 755 "$ir/init"
    (cd "$ir" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) >"$kd/initramfs.cpio.gz"
    rm -rf "$ir"
}

# cached_builds: the finished kernel builds in the cache that came from this run's suite (a
# build without a "suite" file came from the default one), oldest name first.
cached_builds() {
    local d
    for d in "$CACHE"/kernel-*; do
        if [[ -f "$d/kver" && "$(cat "$d/suite" 2>/dev/null)" == "$KERNEL_SUITE" ]]; then
            printf '%s\n' "$d"
        fi
    done | sort
}

# Sets KDIR and KVER.  Cache key = package name + version + stage-1 init hash,
# so a new kernel package (Debian point release / security update) or an edit
# of stage1_init rebuilds; otherwise the cache is reused.
ensure_kernel() {
    mkdir -p "$CACHE"
    local pkg ver="" key d
    ensure_kernel_suite
    pkg="$(kernel_package)"
    if [[ -z "$pkg" && "$(id -u)" == 0 && "${SOFTROCE_VM_NO_INSTALL:-0}" != 1 ]]; then
        # Fresh machine / cleaned apt lists (container images): no package
        # metadata to resolve linux-image-amd64 yet.
        apt-get update -q >&2 || true
        pkg="$(kernel_package)"
    fi
    [[ -n "$pkg" ]] && ver="$(kernel_version "$pkg")"
    if [[ -z "$ver" || "$ver" == "(none)" ]]; then
        # Offline with stale lists: reuse the newest cached build, if any.
        KDIR="$(cached_builds | tail -n1)"
        [[ -n "$KDIR" ]] || die "cannot resolve the guest kernel package (apt-cache depends linux-image-amd64${KERNEL_SUITE:+/$KERNEL_SUITE} / policy); run apt-get update or set SOFTROCE_VM_KERNEL_PKG"
        log "warning: cannot resolve the kernel package version; reusing $KDIR"
    else
        key="$(stage1_init | sha256sum | cut -c1-12)"
        KDIR="$CACHE/kernel-$pkg-$ver-$key"
        if [[ ! -f "$KDIR/kver" ]]; then
            # flock: parallel runs from the same tree must not build twice.
            exec 9>"$CACHE/.lock"
            flock 9
            if [[ ! -f "$KDIR/kver" ]]; then
                # Drop this suite's builds of other versions (each is ~400 MB
                # unpacked; another suite's build stays for its own runs) and
                # half-finished builds of runs killed mid-way.
                rm -rf "$CACHE"/.build.*
                for d in "$CACHE"/kernel-*; do
                    [[ -d "$d" && "$d" != "$KDIR" ]] || continue
                    if [[ ! -f "$d/kver" || "$(cat "$d/suite" 2>/dev/null)" == "$KERNEL_SUITE" ]]; then
                        rm -rf "$d"
                    fi
                done
                build_kernel_cache "$pkg" "$ver" "$KDIR"
            fi
            flock -u 9
            exec 9>&-
        fi
    fi
    KVER="$(cat "$KDIR/kver")"
}

# ------------------------------------------------------------------ the run
guest_env_names() {
    compgen -v | grep -E '^(SOFTROCE_|RUST_LOG$|RUST_BACKTRACE$)' | grep -v '^SOFTROCE_VM_' || true
    local v
    for v in ${SOFTROCE_VM_ENV:-}; do printf '%s\n' "$v"; done
    printf '%s\n' SOFTROCE_VM_DEBUG
}

write_cmd() {
    local ctl="$1" results="$2"; shift 2
    local v
    {
        echo "# generated by softroce-vm.sh"
        while read -r v; do
            [[ -n "$v" && -n "${!v+x}" ]] && printf 'export %s=%q\n' "$v" "${!v}"
        done < <(guest_env_names | sort -u)
        printf 'export PATH=%q\n' "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
        printf 'export SOFTROCE_REPO=%q\n' "$REPO_ROOT"
        printf 'export SOFTROCE_RESULTS=%q\n' "$results"
        printf 'export SOFTROCE_GUEST_LIB=%q\n' "$GUEST_DIR/lib.sh"
        if [[ -d "$PWD" ]]; then printf 'cd %q 2>/dev/null || cd /\n' "$PWD"; fi
        printf 'exec'
        printf ' %q' "$@"
        printf '\n'
    } >"$ctl/cmd.sh"
}

run_guest() {
    local ctl results rc=0 qrc=0 t0
    local runid; runid="$(date +%Y%m%d-%H%M%S)-$$"
    mkdir -p "$CACHE/runs"
    # Control dirs of runs that were SIGKILLed (normally removed at the end).
    find "$CACHE/runs" -mindepth 1 -maxdepth 1 -type d -mmin +1440 -exec rm -rf {} + 2>/dev/null || true
    ctl="$(mktemp -d "$CACHE/runs/$runid.XXXX")"
    if [[ -n "${SOFTROCE_VM_RESULTS:-}" ]]; then
        mkdir -p "$SOFTROCE_VM_RESULTS"
        results="$(cd "$SOFTROCE_VM_RESULTS" && pwd -P)"
    else
        results="$CACHE/results/$runid"
        mkdir -p "$results"
        ln -sfn "$runid" "$CACHE/results/last"
        # keep the 10 newest result dirs
        find "$CACHE/results" -mindepth 1 -maxdepth 1 -type d | sort | head -n -10 | xargs -r rm -rf
    fi
    case "$results" in *[[:space:]]*) die "results path contains whitespace" ;; esac
    write_cmd "$ctl" "$results" "$@"

    local append="console=ttyS0 panic=-1 oops=panic softroce_moddir=$KDIR/root/lib/modules/$KVER"
    append+=" softroce_init=$GUEST_DIR/init.sh softroce_results=$results softroce_interactive=$INTERACTIVE"
    if [[ "$DEBUG" == 1 ]]; then
        append+=" loglevel=7 softroce_debug=1"
    elif [[ "$INTERACTIVE" == 1 ]]; then
        append+=" quiet loglevel=3"
    else
        # Every kernel message reaches console.log until the guest script
        # starts (a hung boot's console says how far it got); the guest's
        # init then lowers the console to errors-and-worse, as `loglevel=3`
        # did, and only from there on is the console shown (boot_once).
        append+=" loglevel=7 softroce_quiet=1"
    fi
    # TCG's emulated TSC is not tied to real time (it runs at the speed of
    # the emulation, which varies with host load); mark it unstable up front
    # so the guest does not pick it as clocksource.
    append+=" tsc=unstable"
    # Experiments only (e.g. idle=poll): extra guest kernel parameters.
    if [[ -n "${SOFTROCE_VM_APPEND:-}" ]]; then
        append+=" $SOFTROCE_VM_APPEND"
    fi
    # For a hung boot's post-mortem (boot_diagnostics): sysrq from the
    # emulated keyboard may dump task stacks (Debian's default sysrq mask,
    # 0x1b6, forbids dumps).
    append+=" sysrq_always_enabled"

    # shellcheck disable=SC2054  # commas are QEMU option syntax, not array separators
    local qemu=("$QEMU"
        -nodefaults -no-user-config -no-reboot
        # debug-threads: QEMU's threads get names ("CPU 0/TCG"), which a hung
        # boot's post-mortem shows (boot_diagnostics).
        -name softroce-vm,debug-threads=on
        -accel tcg,thread=multi -cpu max -smp "$SMP" -m "$MEM"
        -display none
        # No network device at all: guest traffic (rxe on dummy0) cannot leave.
        -nic none
        -kernel "$KDIR/root/boot/vmlinuz-$KVER" -initrd "$KDIR/initramfs.cpio.gz"
        # Host / read-only; multidevs=remap because / spans several host
        # filesystems (inode numbers would collide otherwise, QEMU warns).
        -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
        -virtfs "local,path=$ctl,mount_tag=softroce_ctl,security_model=none,multidevs=remap"
        -virtfs "local,path=$results,mount_tag=softroce_results,security_model=none,multidevs=remap"
    )
    [[ "$DEBUG" == 1 ]] && log "qemu: ${qemu[*]} -append '$append'"
    log "booting guest (kernel $KVER, timeout ${TIMEOUT}s, results in $results)"
    t0=$SECONDS
    # `timeout` puts QEMU in its own process group, so a Ctrl-C on the
    # terminal never reaches QEMU; forward INT/TERM to timeout (which passes
    # it on to QEMU) so an interrupted run does not leave a guest behind.
    local interrupted=0 tpid="" hung=0 hung_lines=0 boot=1 boot_timeout
    trap 'interrupted=1; [[ -n "$tpid" ]] && kill -TERM "$tpid" 2>/dev/null' INT TERM
    if [[ "$INTERACTIVE" == 1 ]]; then
        # Interactive: the terminal talks to the guest console directly
        # (mon:stdio multiplexes the QEMU monitor: Ctrl-A x quits QEMU).
        timeout -k 10 "$TIMEOUT" "${qemu[@]}" -append "$append" -monitor none -serial mon:stdio &
        tpid=$!
        until wait "$tpid"; qrc=$?; ! kill -0 "$tpid" 2>/dev/null; do :; done
    else
        while [[ $interrupted == 0 ]]; do
            boot_once "$boot"
            [[ $interrupted == 1 || $hung == 0 ]] && break
            local hung_log="$results/console.boot$boot-hung.log"
            mv "$results/console.log" "$hung_log"
            log "BOOT HUNG: boot $boot did not start the guest script within ${boot_timeout}s (SOFTROCE_VM_BOOT_TIMEOUT); QEMU killed"
            log "its console, guest task stacks, QEMU's threads and vCPUs: $hung_log"
            log "its console's last lines before the watchdog, QEMU's threads, its vCPUs:"
            {
                head -n "$hung_lines" "$hung_log" | tail -n 30
                cat "$ctl/threads.txt" 2>/dev/null
                # One line per vCPU: where it is (RIP, CPL 0 = kernel), HLT=1 if idle.
                grep -a '^RIP=' "$ctl/monitor.txt" 2>/dev/null
            } | sed 's/^/  | /' >&2
            if (( boot > BOOT_RETRIES )); then
                log "FAIL: $boot boots in a row hung before the guest script started; giving up (SOFTROCE_VM_BOOT_RETRIES=$BOOT_RETRIES)"
                rm -rf "$ctl"
                exit 124
            fi
            boot=$((boot + 1))
            log "retrying: boot $boot of at most $((BOOT_RETRIES + 1)), given $(( BOOT_TIMEOUT << (boot - 1) ))s (a hung boot is retried; a failing guest script never is)"
        done
    fi
    trap - INT TERM
    if [[ $interrupted == 1 ]]; then
        log "interrupted; guest killed"
        rm -rf "$ctl"
        exit 130
    fi
    if [[ $qrc == 124 || $qrc == 137 ]]; then
        log "FAIL: guest did not finish within ${TIMEOUT}s (SOFTROCE_VM_TIMEOUT); killed"
        rm -rf "$ctl"
        exit 124
    fi
    if [[ -f "$ctl/status" ]]; then
        rc="$(cat "$ctl/status")"
    else
        log "FAIL: guest exited without reporting a status (qemu rc=$qrc; kernel panic or init failure?)"
        if [[ $INTERACTIVE == 0 && ! -e "$ctl/started" ]]; then
            # The console before the guest script is not shown; show its end.
            log "the guest script never started; the console's last lines ($results/console.log):"
            tail -n 40 "$results/console.log" | sed 's/^/  | /' >&2
        fi
        rc=1
    fi
    rm -rf "$ctl"
    log "guest finished in $((SECONDS - t0))s with status $rc"
    return "$rc"
}

# One non-interactive boot (number $1) of run_guest's guest: runs QEMU with
# the console on stdout, raw into $results/console.log and, unless
# SOFTROCE_VM_DEBUG=1, shown from the guest init's "guest up" line on.
# The watchdog: until the guest's init writes $ctl/started (just before it
# starts the guest script), at most BOOT_TIMEOUT seconds, doubled for each
# boot before this one; past that the boot is hung: its diagnostics are taken
# and QEMU is killed.  Sets (run_guest's) qrc, tpid, hung, hung_lines (the
# console's length when it hung) and boot_timeout.
boot_once() {
    local n="$1" boot_append="$append" console="$results/console.log"
    (( n <= HANG_BOOTS )) && boot_append+=" softroce_test_hang=1"
    boot_timeout=$(( BOOT_TIMEOUT << (n - 1) ))
    tpid=""
    rm -f "$ctl/started" "$ctl/status" "$ctl/timeout.pid" "$ctl/qemu.rc" "$ctl"/monitor.*
    : >"$console"
    # The QEMU monitor on a pair of FIFOs (QEMU opens both read-write, so
    # neither side blocks on open): boot_diagnostics talks to it.
    mkfifo "$ctl/monitor.in" "$ctl/monitor.out"
    # shellcheck disable=SC2016  # $p is sed's "to the last line", not a variable
    local view=(sed -u -n '/softroce-vm: guest up after/,$p')
    [[ "$DEBUG" == 1 ]] && view=(cat)
    # stdin from /dev/null: with a terminal on stdin QEMU would put it in
    # raw mode and forward keystrokes to the guest.  sed -u strips the CR
    # the guest tty's ONLCR adds and streams line by line.
    ( timeout -k 10 "$TIMEOUT" "${qemu[@]}" -append "$boot_append" -serial stdio \
          -chardev "pipe,id=mon0,path=$ctl/monitor" -mon chardev=mon0,mode=readline \
          </dev/null 2>&1 &
      echo $! >"$ctl/timeout.pid"
      wait $!; echo $? >"$ctl/qemu.rc" ) | sed -u 's/\r$//' | tee -a "$console" | "${view[@]}" &
    local ppid=$! b0=$SECONDS
    while [[ ! -s "$ctl/timeout.pid" ]] && kill -0 "$ppid" 2>/dev/null; do sleep 0.05; done
    tpid="$(cat "$ctl/timeout.pid" 2>/dev/null || true)"
    hung=0
    while [[ ! -e "$ctl/started" ]] && kill -0 "$ppid" 2>/dev/null; do
        # INT/TERM before tpid was known: the trap could not stop this QEMU.
        if [[ $interrupted == 1 ]]; then kill -TERM "$tpid" 2>/dev/null || true; break; fi
        if (( SECONDS - b0 >= boot_timeout )); then
            hung=1
            hung_lines="$(wc -l <"$console")"
            boot_diagnostics "$console"
            # timeout passes TERM on to QEMU; its process group (timeout
            # made it) is KILLed if QEMU is still there 15 s later.
            kill -TERM "$tpid" 2>/dev/null || true
            local k=0
            while kill -0 "$ppid" 2>/dev/null && (( k++ < 150 )); do sleep 0.1; done
            kill -KILL -- "-$tpid" 2>/dev/null || true
            break
        fi
        sleep 1
    done
    until wait "$ppid"; ! kill -0 "$ppid" 2>/dev/null; do :; done
    qrc="$(cat "$ctl/qemu.rc" 2>/dev/null || echo 1)"
}

# A hung boot's post-mortem, appended to its console log ($1): QEMU's
# threads, the guest kernel's sysrq dumps (t: every task's state and stack,
# l: backtraces of the CPUs not idle), which need a guest that still takes
# interrupts, then QEMU's view of the vCPUs (halted or running, registers).
# Debian's System.map is a stub, so RIP stays an address; the sysrq dumps
# carry symbols.
boot_diagnostics() {
    local console="$1" mon="$ctl/monitor" fd qpid
    echo "=== softroce-vm boot watchdog: no guest script after ${boot_timeout}s; QEMU's threads, sysrq t and l, QEMU's monitor" >>"$console"
    # Which QEMU threads burn CPU (a vCPU spinning) or all sleep (waiting for
    # an event), and on what: tells a guest hang from a QEMU one.
    qpid="$(pgrep -P "$tpid" | head -n1)"
    if [[ -n "$qpid" ]]; then
        qemu_threads "$qpid" >"$ctl/threads.0"
        sleep 1
        qemu_threads "$qpid" >"$ctl/threads.1"
        {
            echo "=== QEMU (pid $qpid) threads: tid, state, CPU ticks (1/100 s) used in 1 s, wchan, name"
            awk 'NR == FNR { t[$1] = $3; next } { $3 = $3 - t[$1]; print }' "$ctl/threads.0" "$ctl/threads.1"
        } >"$ctl/threads.txt"
        cat "$ctl/threads.txt" >>"$console"
    fi
    # Opened read-write: never blocks, even if QEMU has just exited.
    exec {fd}<>"$mon.in"
    printf 'sendkey alt-sysrq-t\n' >&"$fd"
    sleep 2
    printf 'sendkey alt-sysrq-l\n' >&"$fd"
    sleep 2
    printf 'info status\ninfo cpus\ninfo registers -a\n' >&"$fd"
    sleep 1
    exec {fd}>&-
    # The monitor's readline echoes each typed command with escape sequences.
    timeout 2 cat "$mon.out" | tr -d '\r' | grep -av $'\e' >"$ctl/monitor.txt" || true
    { echo "=== QEMU monitor"; cat "$ctl/monitor.txt"; } >>"$console"
}

# QEMU's (pid $1) threads, one a line: tid, state, CPU ticks (user+system),
# wchan, name.
qemu_threads() {
    local t st f
    for t in /proc/"$1"/task/*; do
        st="$(cat "$t/stat" 2>/dev/null)" || continue
        # The name (field 2) may hold spaces ("CPU 0/TCG"): split after its ')'.
        read -r -a f <<<"${st##*) }"
        printf '%s %s %s %s %s\n' "${t##*/}" "${f[0]}" $(( f[11] + f[12] )) \
            "$(cat "$t/wchan" 2>/dev/null)" "$(cat "$t/comm" 2>/dev/null)"
    done
}

main() {
    local mode=run
    case "${1:-}" in
        ""|-h|--help) usage; [[ -n "${1:-}" ]] && exit 0; exit 2 ;;
        --selftest) mode=selftest; shift ;;
        --check) mode=check; shift ;;
        -c) [[ $# -ge 2 ]] || die "-c needs a command string"; mode=cmd ;;
        --shell) mode=shell; INTERACTIVE=1 ;;
    esac
    check_platform
    ensure_packages
    check_qemu
    ensure_kernel
    if [[ $mode == check ]]; then log "ok: can run the guest (kernel $KVER, cache $KDIR)"; exit 0; fi
    local rc=0
    case "$mode" in
        selftest) run_guest "$GUEST_DIR/selftest.sh" "$@" || rc=$? ;;
        cmd) run_guest bash -c "source $GUEST_DIR/lib.sh; $2" || rc=$? ;;
        shell) run_guest bash --rcfile "$GUEST_DIR/lib.sh" -i || rc=$? ;;
        run)
            local script="$1"; shift
            if [[ -e "$script" ]]; then
                script="$(readlink -f "$script")"
            elif [[ "$script" == */* ]]; then
                die "guest script $script not found"
            fi   # else: a command name, looked up in the guest's PATH
            run_guest "$script" "$@" || rc=$? ;;
    esac
    exit "$rc"
}

main "$@"
