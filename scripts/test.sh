#!/usr/bin/env bash
# The whole test suite (this is what CI runs, via .ci/run):
#   1. set-up: the pinned Rust toolchain and the project-local ptxas (scripts/setup.sh);
#   2. every test of every workspace member, doc tests included, release mode. GPU tests print
#      `skipped: no CUDA device` and pass on a machine without a GPU, unless
#      FERRINFER_REQUIRE_GPU=1 (the GPU bundle's run.sh sets it);
#      The host crate and the harness build with overflow checks on even in release (root
#      Cargo.toml, issue #15), so the fuzzer (tests/fuzz.rs, FERRINFER_FUZZ_CASES) and every
#      other test fail on arithmetic that would otherwise wrap silently;
#   3. the PTX check's per-kernel report (scripts/ptx-check.sh; already part of step 2 as
#      tests/ptx_check.rs, re-run here with its table printed).
# Every step runs even when an earlier one fails; the exit status is non-zero if any failed.
# Extra arguments go to `cargo test` (e.g. `bash scripts/test.sh -- --test-threads=1`).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash scripts/setup.sh

# ptxas was just installed: its checks must run, never skip.
export FERRINFER_REQUIRE_PTXAS=1

status=0
echo "test: cargo test --release --workspace --no-fail-fast"
cargo test --release --workspace --no-fail-fast "$@" || status=$?

echo "test: PTX check"
bash scripts/ptx-check.sh || status=$?

if [[ $status -ne 0 ]]; then
    echo "test: FAILED (see the failures above)" >&2
    exit "$status"
fi
echo "test: all passed"
