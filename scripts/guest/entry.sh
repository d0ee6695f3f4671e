# shellcheck shell=bash
# scripts/guest/entry.sh — the first lines of a guest test that can also be started on the
# host. Source it with the host-side build commands, one per argument:
#
#     source "$(dirname "${BASH_SOURCE[0]}")/entry.sh" "cargo build --release --bin iser-target"
#
# On the host it runs each build command in the repository and then re-runs the calling
# script inside the SoftRoCE guest ($SOFTROCE_VM, default scripts/softroce-vm.sh); it never
# returns there (exit 77 when the harness is missing). In the guest it sources lib.sh and
# returns. Both sides get HERE (the script's directory), REPO and TARGET_DIR.
HERE="$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd -P)"
REPO="$(cd "$HERE/../.." && pwd -P)"
# shellcheck disable=SC2034  # used by the scripts that source this file
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"

if [[ -z "${SOFTROCE_GUEST_LIB:-}" ]]; then
    for build in "$@"; do
        # Each argument is one command line written in the calling script.
        (cd "$REPO" && eval "$build") || exit 1
    done
    VM="${SOFTROCE_VM:-$REPO/scripts/softroce-vm.sh}"
    [[ -x "$VM" ]] || { echo "SKIP: no SoftRoCE harness at $VM (set SOFTROCE_VM)" >&2; exit 77; }
    exec "$VM" "$HERE/$(basename "${BASH_SOURCE[1]}")"
fi

# shellcheck source=scripts/guest/lib.sh
source "$SOFTROCE_GUEST_LIB"
