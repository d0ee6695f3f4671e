#!/usr/bin/env bash
# Installs iser-target as a systemd service:
#
#   sudo scripts/install.sh                 # build, install, tell systemd
#   sudo systemctl enable --now iser-target
#   sudo scripts/install.sh --uninstall     # stop and remove it; keeps the configuration and data
#
# Installs $PREFIX/sbin/iser-target, the unit $PREFIX/lib/systemd/system/iser-target.service
# (from packaging/systemd/), the docs in $PREFIX/share/doc/iser-target/ and, unless one is there
# already, $SYSCONFDIR/iser-target/config.yaml (from packaging/config.yaml: a 1 GiB file LUN
# served to this machine only; edit it to serve others). An existing configuration is never
# overwritten. PREFIX defaults to /usr/local, SYSCONFDIR to /etc; with other values nothing is
# handed to systemd (tests/operations.rs installs into a temporary directory that way).
# BINARY=PATH installs that build of iser-target instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-/usr/local}
SYSCONFDIR=${SYSCONFDIR:-/etc}
sbindir=$PREFIX/sbin
unitdir=$PREFIX/lib/systemd/system
docdir=$PREFIX/share/doc/iser-target
confdir=$SYSCONFDIR/iser-target
tell_systemd=0
if [[ $PREFIX == /usr/local && $SYSCONFDIR == /etc && -d /run/systemd/system ]]; then
    tell_systemd=1
fi

if [[ ${1:-} == --uninstall ]]; then
    if ((tell_systemd)); then
        systemctl disable --now iser-target 2>/dev/null || true
    fi
    rm -f "$sbindir/iser-target" "$unitdir/iser-target.service"
    rm -rf "$docdir"
    if ((tell_systemd)); then
        systemctl daemon-reload
    fi
    echo "removed iser-target; kept $confdir and /var/lib/iser-target (the configuration, file LUNs, reservations)"
    exit 0
elif [[ -n ${1:-} ]]; then
    echo "usage: $0 [--uninstall]" >&2
    exit 2
fi

binary=${BINARY:-}
if [[ -z $binary ]]; then
    # run.sh's prerequisites (Rust, a C compiler, librbd-dev) are the build's too.
    if ! command -v cargo >/dev/null && [[ -x $HOME/.cargo/bin/cargo ]]; then
        export PATH=$HOME/.cargo/bin:$PATH
    fi
    cargo build --release --bin iser-target
    binary=target/release/iser-target
fi
[[ -x $binary ]] || { echo "install.sh: $binary is not an executable" >&2; exit 1; }

install -D -m 0755 "$binary" "$sbindir/iser-target"
unit=$(mktemp)
trap 'rm -f "$unit"' EXIT
sed -e "s#@SBINDIR@#$sbindir#g" -e "s#@SYSCONFDIR@#$SYSCONFDIR#g" -e "s#@DOCDIR@#$docdir#g" \
    packaging/systemd/iser-target.service >"$unit"
install -D -m 0644 "$unit" "$unitdir/iser-target.service"
install -d "$docdir"
install -m 0644 README.md docs/*.md "$docdir/"
if [[ -e $confdir/config.yaml ]]; then
    echo "kept $confdir/config.yaml (check it against the new version: $sbindir/iser-target check-config $confdir/config.yaml)"
else
    install -D -m 0644 packaging/config.yaml "$confdir/config.yaml"
    echo "installed $confdir/config.yaml: one 1 GiB file LUN, served to this machine only"
fi
"$sbindir/iser-target" check-config "$confdir/config.yaml"

if ((tell_systemd)); then
    systemctl daemon-reload
    echo "start it with: systemctl enable --now iser-target   (reload: systemctl reload iser-target)"
else
    echo "installed under $PREFIX and $SYSCONFDIR; systemd was not told (not the default paths, or not running)"
fi
