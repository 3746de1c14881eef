#!/usr/bin/env bash
# Proves that ferrinfer builds in one program with candle-core's CUDA backend (docs/decisions.md
# §6). candle-core 0.11 with `cuda` turns on cudarc's `dynamic-linking` (plus cuBLAS, cuBLASLt,
# cuRAND, NVRTC, f16, f8, `cuda-version-from-build-system`); cudarc 0.19's build script panics
# when `dynamic-loading` is on beside it, so ferrinfer asks for `fallback-dynamic-loading`.
#   1. the features cudarc resolves to, for the workspace (run-time loading: binaries start
#      without a driver) and for compat/candle-link with `candle-cuda` (candle's set);
#   2. `cargo check` of compat/candle-link with `candle-cuda`: cudarc's build script and
#      ferrinfer compiled against that cudarc (no link: no CUDA libraries here; candle-core itself
#      is not built, its kernels crate runs nvcc over its .cu files).
# Run by scripts/test.sh. Extra arguments go to `cargo check`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# features <cargo tree args...>: cudarc's resolved features, space-separated.
features() {
    cargo tree "$@" -e features -i cudarc --prefix none |
        sed -n 's/^cudarc feature "\([^"]*\)".*/\1/p' | sort -u | xargs
}
has() { [[ " $1 " == *" $2 "* ]]; }

status=0
ws="$(features --workspace)"
candle="$(features -p ferrinfer-candle-link --features candle-cuda)"
echo "check-candle-link: cudarc features, workspace:    $ws"
echo "check-candle-link: cudarc features, beside candle: $candle"
if ! has "$ws" fallback-dynamic-loading || has "$ws" dynamic-linking || has "$ws" dynamic-loading ||
    has "$ws" static-linking; then
    echo "error: the workspace must give cudarc fallback-dynamic-loading and no linking mode" >&2
    status=1
fi
if ! has "$candle" dynamic-linking || has "$candle" dynamic-loading; then
    echo "error: compat/candle-link --features candle-cuda must resolve to candle's" \
        "dynamic-linking without dynamic-loading" >&2
    status=1
fi

cargo check --release -p ferrinfer-candle-link --features candle-cuda "$@" || status=$?
exit "$status"
