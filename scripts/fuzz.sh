#!/usr/bin/env bash
# Runs every cargo-fuzz target of the iSCSI core for N seconds each (default 60).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly toolchain; without nightly it falls
# back to RUSTC_BOOTSTRAP=1 on stable. Corpora go to fuzz/corpus/, crashes to fuzz/artifacts/
# (both ignored by git): pin every crash as a regression test in src/iscsi/tests.rs.
# Not part of CI (scripts/test.sh).
set -euo pipefail

seconds="${1:-60}"
shift || true
cd "$(dirname "$0")/../fuzz"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

if rustup toolchain list | grep -q '^nightly'; then
    fuzz=(cargo +nightly fuzz)
else
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
fi

status=0
for target in "${targets[@]}"; do
    echo "== fuzzing $target for ${seconds}s"
    if ! "${fuzz[@]}" run "$target" -- -max_total_time="$seconds"; then
        echo "!! $target failed: see fuzz/artifacts/$target/" >&2
        status=1
    fi
done
exit "$status"
