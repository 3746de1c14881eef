#!/usr/bin/env bash
# The whole test suite (this is what CI runs, via .ci/run):
#   1. set-up: the pinned Rust toolchain and the project-local ptxas (scripts/setup.sh);
#   2. every test of every workspace member, doc tests included, release mode. GPU tests are
#      `#[ignore = "needs a CUDA GPU"]`, so libtest counts them as ignored, never as passed
#      (scripts/check-gpu-ignores.sh checks that the attribute marks exactly the GPU tests); the
#      GPU bundle's run.sh runs them with --include-ignored and FERRINFER_REQUIRE_GPU=1, and so
#      does this script when FERRINFER_REQUIRE_GPU=1 is set here;
#      The host crate and the harness build with overflow checks on even in release (root
#      Cargo.toml, issue #15), so the fuzzer (tests/fuzz.rs, FERRINFER_FUZZ_CASES) and every
#      other test fail on arithmetic that would otherwise wrap silently;
#   3. the candle link check (scripts/check-candle-link.sh): ferrinfer compiles against cudarc
#      with the features candle-core's CUDA backend turns on (compat/candle-link);
#   4. the PTX check's per-kernel report (scripts/ptx-check.sh; already part of step 2 as
#      tests/ptx_check.rs, re-run here with its table printed);
#   5. the Python package (scripts/test-python.sh): a fresh venv, the wheel built by maturin
#      from cargo's target/, pip-installed, and the CPU part of python/tests run against it;
#   6. the official `openai` Python client against `ferrinfer serve --cpu` on loopback
#      (scripts/openai-client-test.sh).
# Every step runs even when an earlier one fails; the exit status is non-zero if any failed.
# The last lines sum libtest's own `test result:` counts and say how many GPU tests did not run.
# Extra arguments go to `cargo test` (e.g. `bash scripts/test.sh -- --test-threads=1`).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash scripts/setup.sh

# ptxas was just installed: its checks must run, never skip.
export FERRINFER_REQUIRE_PTXAS=1

status=0
echo "test: GPU-test attributes"
bash scripts/check-gpu-ignores.sh || status=$?

# On a GPU machine with FERRINFER_REQUIRE_GPU=1 the ignored GPU tests run too.
args=("$@")
if [[ "${FERRINFER_REQUIRE_GPU:-}" == 1 ]]; then
    if [[ " ${args[*]} " == *" -- "* ]]; then args+=(--include-ignored); else args+=(-- --include-ignored); fi
fi

log="$(mktemp "${TMPDIR:-/tmp}/ferrinfer-test.XXXXXX")"
trap 'rm -f "$log"' EXIT
echo "test: cargo test --release --workspace --no-fail-fast ${args[*]}"
# The output is kept (tee) for the totals below; pipefail makes cargo's status the pipe's.
cargo test --release --workspace --no-fail-fast "${args[@]}" 2>&1 | tee "$log" || status=$?

echo "test: links beside candle (scripts/check-candle-link.sh)"
bash scripts/check-candle-link.sh || status=$?

echo "test: PTX check"
bash scripts/ptx-check.sh || status=$?

echo "test: Python package (scripts/test-python.sh)"
bash scripts/test-python.sh || status=$?

echo "test: the openai client against ferrinfer serve (scripts/openai-client-test.sh)"
bash scripts/openai-client-test.sh || status=$?

# Totals from libtest's own lines: `test result: ok. 12 passed; 0 failed; 43 ignored; ...` per
# test binary (doc tests included), and `test <name> ... ignored, needs a CUDA GPU` per GPU test
# that did not run.
awk '/^test result: /{
        for (i = 1; i <= NF; i++) {
            if ($(i) ~ /^passed;?$/) p += $(i-1)
            if ($(i) ~ /^failed;?$/) f += $(i-1)
            if ($(i) ~ /^ignored;?$/) g += $(i-1)
        }
        n++
     }
     /^test .* \.\.\. ignored, needs a CUDA GPU$/ { gpu++ }
     END {
        if (!n) { print "test: no libtest results (the build failed?)"; exit }
        printf "test: totals over %d test binaries: %d passed, %d failed, %d ignored\n", n, p, f, g
        if (!g) { print "test: nothing ignored: every GPU test ran"; exit }
        printf "test: %d GPU tests not run (ignored: no GPU here; run gpu-bundle/run.sh on a GPU machine)\n", gpu
        if (g != gpu) printf "test: %d of the %d ignored tests are not GPU tests\n", g - gpu, g
     }' "$log"

if [[ $status -ne 0 ]]; then
    echo "test: FAILED (see the failures above)" >&2
    exit "$status"
fi
echo "test: all passed"
