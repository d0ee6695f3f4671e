#!/usr/bin/env bash
# Build and serve. Without arguments: the embedded default (one 1 GiB RAM LUN on TCP 0.0.0.0:3260).
#   scripts/run.sh                          # default RAM target
#   scripts/run.sh --config config/file-lun.yaml
# Logs go to stderr (RUST_LOG=debug for more). Stop with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
    [[ -x $HOME/.cargo/bin/cargo ]] && export PATH=$HOME/.cargo/bin:$PATH
fi
if ! command -v cargo >/dev/null; then
    echo "Rust is not installed. Installing it with rustup (https://rustup.rs) ..." >&2
    if ! command -v curl >/dev/null; then
        if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
        $SUDO apt-get update -qq && $SUDO apt-get install -y -qq curl ca-certificates
    fi
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH=$HOME/.cargo/bin:$PATH
fi
if ! command -v cc >/dev/null; then
    if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq gcc
fi
# rbd-ffi links librbd and librados (RBD LUNs); Debian ships them in librbd-dev.
if [[ ! -e /usr/include/rbd/librbd.h ]]; then
    if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends librbd-dev
fi
cargo build --release --bin iser-target
exec target/release/iser-target serve "$@"
