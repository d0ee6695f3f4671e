#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a fixed time each, starting from the seed corpus kept
# in the repository (fuzz/corpus/<target>/). scripts/test.sh runs it as its fuzz tier.
#
#   scripts/fuzz.sh [--merge] [SECONDS] [TARGET...]
#
# SECONDS per target (default 60); TARGETs default to all of `cargo fuzz list`, so a new target
# only needs its [[bin]] entry in fuzz/Cargo.toml and seeds in fuzz/corpus/<target>/.
# New inputs go to fuzz/target/corpus/<target>/ (ignored by git; kept between runs). --merge then
# adds those that reach new coverage to fuzz/corpus/<target>/ (libFuzzer -merge=1), to commit
# when they are few and small.
#
# A crash fails the run: the input is in fuzz/artifacts/<target>/ and printed as hex. Reproduce
# with `cargo +nightly fuzz run $FUZZ_FLAGS TARGET fuzz/artifacts/TARGET/crash-…` and pin it
# with a regression test beside the code it breaks.
#
# Installs what it needs: the nightly toolchain (rustup) and cargo-fuzz (pinned version below).
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.2
# No sanitizer: the crate forbids unsafe code, so AddressSanitizer finds nothing here that a
# panic does not, at half the speed. Debug assertions turn on overflow checks.
FUZZ_FLAGS=(--sanitizer none --debug-assertions)

merge=0
if [[ ${1:-} == --merge ]]; then
    merge=1
    shift
fi
seconds="${1:-60}"
shift || true
cd "$(dirname "$0")/../fuzz"

log() { printf '\n=== %s\n' "$*"; }

if ! rustup toolchain list | grep -q '^nightly'; then
    log "installing the nightly toolchain (cargo-fuzz needs it)"
    rustup toolchain install nightly --profile minimal
fi
if [[ $(cargo fuzz --version 2>/dev/null) != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
    log "installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
fuzz=(cargo +nightly fuzz)

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <("${fuzz[@]}" list)
fi

log "building fuzz targets: ${targets[*]}"
for target in "${targets[@]}"; do
    "${fuzz[@]}" build "${FUZZ_FLAGS[@]}" "$target"
done

status=0
summary=()
for target in "${targets[@]}"; do
    seeds="corpus/$target"
    work="target/corpus/$target"
    mkdir -p "$work" "artifacts/$target"
    if [[ ! -d $seeds ]] || [[ -z $(ls -A "$seeds") ]]; then
        echo "!! $target has no seed corpus in fuzz/$seeds" >&2
        status=1
        continue
    fi
    log "fuzzing $target for ${seconds}s (seeds: fuzz/$seeds)"
    out="target/fuzz-$target.log"
    # New inputs land in the first directory; the committed seeds are only read.
    if "${fuzz[@]}" run "${FUZZ_FLAGS[@]}" "$target" "$work" "$seeds" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$out" 2>&1; then
        done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$out" | tail -1 || true)
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out")
        rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$out")
        cov=$(sed -n 's/.*DONE *cov: \([0-9]*\) ft: \([0-9]*\) corp: \([0-9]*\).*/cov \1, features \2, corpus \3/p' <<<"$done_line")
        summary+=("$target: ${seconds}s, $runs runs, $rate exec/s, $cov")
        echo "ok: ${summary[-1]}"
    else
        status=1
        summary+=("$target: FAILED")
        tail -n 60 "$out" >&2
        # libFuzzer names the input it wrote ("Test unit written to PATH").
        for crash in $(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$out"); do
            [[ -f $crash ]] || continue
            echo "!! $target: crash input $crash ($(stat -c %s "$crash") bytes):" >&2
            # `head` may close the pipe early; under pipefail that must not end the script.
            od -An -tx1 -v "$crash" | head -n 64 >&2 || true
        done
        echo "!! $target failed (full log: fuzz/$out)" >&2
    fi
    if [[ $merge == 1 ]]; then
        before=$(ls "$seeds" | wc -l)
        "${fuzz[@]}" run "${FUZZ_FLAGS[@]}" "$target" "$seeds" "$work" -- -merge=1 >>"$out" 2>&1
        echo "merged into fuzz/$seeds: $before -> $(ls "$seeds" | wc -l) inputs, $(du -sh "$seeds" | cut -f1)"
    fi
done

log "fuzzing summary"
printf '%s\n' "${summary[@]}"
exit "$status"
