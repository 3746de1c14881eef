#!/usr/bin/env bash
# The GPU-machine side of scripts/gpu-bundle.sh (copied into gpu-bundle/run.sh). Needs no Rust:
# only bash, the driver (nvidia-smi, libcuda.so.1) and, for --sanitize, compute-sanitizer.
#
# Usage: bash gpu-bundle/run.sh [options]
#   (default)        `ferrinfer info`, every test executable with FERRINFER_REQUIRE_GPU=1 (a
#                    missing GPU fails instead of skipping) and --include-ignored (the GPU tests
#                    are `#[ignore = "needs a CUDA GPU"]`, so CPU machines count them as ignored),
#                    then `ferrinfer check`
#   --sanitize       also run the GPU test executables under compute-sanitizer memcheck and
#                    racecheck (SANITIZE=memcheck|racecheck|all picks the tools; all = both)
#   --bench          also run the bench executables; their rows also go to $OUT/bench.jsonl
#                    (FERRINFER_BENCH_JSON), which `roofline` (src/bin/roofline.rs) charts
#   --demo           also run `ferrinfer demo`
#   --only NAME      run only the test executable NAME (repeatable; also limits --sanitize)
#   --bench-only NAME  with --bench, run only the bench executable NAME (repeatable)
#   --pack           finally move the logs into $OUT/logs.tar.gz (for transports that return
#                    few files); summary.txt stays beside it
#   -h, --help       this text
#
# Environment:
#   OUT                    where logs go (default /tmp/out): tests-<name>.log, memcheck-<name>.log,
#                          racecheck-<name>.log, bench-<name>.log, cli-<cmd>.log, summary.txt
#   SANITIZE               memcheck | racecheck | all (implies --sanitize)
#   SANITIZE_TESTS         space-separated test executables to sanitize (default: every test
#                          executable except the CPU-only ones: cpu_*, ptx_check, ferrinfer_kernels)
#   SANITIZE_PROPTEST_CASES  PROPTEST_CASES under the sanitizer (default 8: it is ~10-100x slower)
#   SANITIZE_SWEEP_CASES   FERRINFER_SWEEP_CASES (cases per family of tests/gpu_sweep.rs) under
#                          the sanitizer (default 256; without it, 10 000)
#   CHECK_CASES            cases for `ferrinfer check` (default: the CLI's default)
#
# Exit status: 0 when every step passed, 1 otherwise.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${OUT:-/tmp/out}"
export OUT
mkdir -p "$OUT"

usage() { sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }

sanitize="${SANITIZE:-}"
bench=0
demo=0
pack=0
only=()
bench_only=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --sanitize) [[ -n "$sanitize" ]] || sanitize=all ;;
        --bench) bench=1 ;;
        --demo) demo=1 ;;
        --pack) pack=1 ;;
        --only) shift; only+=("${1:?--only needs a name}") ;;
        --bench-only) shift; bench_only+=("${1:?--bench-only needs a name}") ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$sanitize" in
    "") tools=() ;;
    all) tools=(memcheck racecheck) ;;
    memcheck|racecheck) tools=("$sanitize") ;;
    *) echo "run.sh: SANITIZE must be memcheck, racecheck or all" >&2; exit 2 ;;
esac

export FERRINFER_REQUIRE_GPU=1
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

summary="$OUT/summary.txt"
: >"$summary"
failed=0

# say <line>: print and append to the summary.
say() { printf '%s\n' "$*" | tee -a "$summary"; }

# counts <log>: "passed=N failed=M ignored=K" summed over libtest's `test result:` lines, or
# empty when there is none (the executable crashed or is not a libtest harness).
counts() {
    awk '/^test result: /{
            for (i = 1; i <= NF; i++) {
                if ($(i) ~ /^passed;?$/) p += $(i-1)
                if ($(i) ~ /^failed;?$/) f += $(i-1)
                if ($(i) ~ /^ignored;?$/) g += $(i-1)
            }
            n++
         }
         END { if (n) printf "passed=%d failed=%d ignored=%d", p, f, g }' "$1"
}

# step <label> <log> <cmd...>: run a command with its output in <log>, print one summary line.
step() {
    local label="$1" log="$2"
    shift 2
    local t0 rc c verdict
    t0=$(date +%s)
    "$@" >"$log" 2>&1
    rc=$?
    c="$(counts "$log")"
    if [[ $rc -eq 0 ]]; then verdict=ok; else verdict=FAILED; failed=1; fi
    say "$(printf '%-8s %-34s %-40s rc=%-3s %4ss  %s' "$verdict" "$label" "${c:--}" "$rc" \
        "$(($(date +%s) - t0))" "${log#"$OUT"/}")"
    if [[ $rc -ne 0 ]]; then
        # Name the failing tests, or show the end of the log when there are none to name.
        if grep -q '^test .* FAILED$' "$log"; then
            grep '^test .* FAILED$' "$log" | sed 's/^/           /' | tee -a "$summary"
        else
            tail -n 5 "$log" | sed 's/^/           | /' | tee -a "$summary"
        fi
    fi
    case "$label" in
        memcheck:*|racecheck:*)
            if grep -q 'terminated before first instrumented API call' "$log"; then
                say "           (no CUDA calls: nothing to check)"
            else
                grep -E -m1 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" |
                    sed 's/^=* */           /' | tee -a "$summary"
            fi ;;
    esac
    return 0
}

selected() {
    [[ ${#only[@]} -eq 0 ]] && return 0
    local n
    for n in "${only[@]}"; do [[ "$n" == "$1" ]] && return 0; done
    return 1
}

sanitized() {
    if [[ -n "${SANITIZE_TESTS:-}" ]]; then
        [[ " $SANITIZE_TESTS " == *" $1 "* ]]
        return
    fi
    case "$1" in
        cpu_*|ptx_check|ferrinfer_kernels) return 1 ;;
        *) return 0 ;;
    esac
}

# The executables: bin/ beside this script, else unpacked from bin.tar.xz into a temporary folder.
if [[ -d "$here/bin" ]]; then
    bindir="$here/bin"
elif [[ -f "$here/bin.tar.xz" ]]; then
    work="$(mktemp -d "${TMPDIR:-/tmp}/ferrinfer-bundle.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    if ! tar -C "$work" -xJf "$here/bin.tar.xz" 2>/dev/null; then
        # No xz binary: Python's tarfile reads .tar.xz too.
        python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
            "$here/bin.tar.xz" "$work" || { echo "run.sh: cannot unpack bin.tar.xz" >&2; exit 2; }
    fi
    bindir="$work/bin"
else
    echo "run.sh: no bin/ or bin.tar.xz beside $0 (build with scripts/gpu-bundle.sh)" >&2
    exit 2
fi

echo "== ferrinfer GPU run: $(date -u +%Y-%m-%dT%H:%M:%SZ), logs in $OUT"
[[ -f "$here/MANIFEST.txt" ]] && sed -n '2,4p' "$here/MANIFEST.txt"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader \
        2>&1 | sed 's/^/GPU: /' | tee -a "$summary"
else
    say "GPU: nvidia-smi not found"
fi

step "cli: ferrinfer info" "$OUT/cli-info.log" "$bindir/ferrinfer" info

# ferrinfer-candle's CUDA test is built on candle's CUDA backend, which links cuBLAS, cuBLASLt,
# cuRAND and NVRTC: the toolkit's libraries where one is installed, else those of PyPI's CUDA
# wheels (PyTorch's dependencies). Only that test gets them on its library path.
candle_libs() {
    local d dirs=()
    for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/*/lib; do
        [[ -e "$d/libcublas.so" || -n "$(compgen -G "$d/libcublas.so.*")" ]] && dirs+=("$d")
    done
    while read -r d; do dirs+=("$d"); done < <(python3 -c '
import glob, os, site
for p in site.getsitepackages():
    for d in sorted(glob.glob(os.path.join(p, "nvidia", "*", "lib"))):
        print(d)
' 2>/dev/null)
    local IFS=:
    echo "${dirs[*]}"
}

for exe in "$bindir"/tests/*; do
    name="$(basename "$exe")"
    selected "$name" || continue
    # --include-ignored: the GPU tests are #[ignore]d for CPU machines; here every one runs.
    # --show-output: the tests' printed figures (cases, worst errors) land in the log.
    if [[ "$name" == candle-cuda ]]; then
        step "test: $name" "$OUT/tests-$name.log" \
            env LD_LIBRARY_PATH="$(candle_libs)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
            "$exe" --include-ignored --show-output
        continue
    fi
    step "test: $name" "$OUT/tests-$name.log" "$exe" --include-ignored --show-output
done

if [[ ${#only[@]} -eq 0 ]]; then
    step "cli: ferrinfer check" "$OUT/cli-check.log" \
        "$bindir/ferrinfer" check ${CHECK_CASES:+--cases "$CHECK_CASES"}
fi

if [[ ${#tools[@]} -gt 0 ]]; then
    if ! command -v compute-sanitizer >/dev/null 2>&1; then
        say "FAILED   compute-sanitizer not found on PATH"
        failed=1
    else
        for tool in "${tools[@]}"; do
            for exe in "$bindir"/tests/*; do
                name="$(basename "$exe")"
                if ! selected "$name" || ! sanitized "$name"; then continue; fi
                extra=()
                [[ "$tool" == racecheck ]] && extra=(--racecheck-report all)
                PROPTEST_CASES="${SANITIZE_PROPTEST_CASES:-8}" \
                    FERRINFER_SWEEP_CASES="${SANITIZE_SWEEP_CASES:-256}" step "$tool: $name" \
                    "$OUT/$tool-$name.log" \
                    compute-sanitizer --tool "$tool" --error-exitcode 1 --require-cuda-init no \
                    "${extra[@]}" "$exe" --include-ignored
            done
        done
    fi
fi

if [[ $bench -eq 1 ]]; then
    export FERRINFER_BENCH_JSON="${FERRINFER_BENCH_JSON:-$OUT/bench.jsonl}"
    for exe in "$bindir"/benches/*; do
        [[ -e "$exe" ]] || continue
        name="$(basename "$exe")"
        if [[ ${#bench_only[@]} -gt 0 && " ${bench_only[*]} " != *" $name "* ]]; then continue; fi
        step "bench: $name" "$OUT/bench-$name.log" "$exe" --bench
    done
fi

if [[ $demo -eq 1 ]]; then
    step "cli: ferrinfer demo" "$OUT/cli-demo.log" "$bindir/ferrinfer" demo
fi

if [[ $failed -eq 0 ]]; then say "== all passed"; else say "== FAILED"; fi

if [[ $pack -eq 1 ]]; then
    (cd "$OUT" && tar -czf logs.tar.gz --remove-files -- *.log 2>/dev/null) &&
        echo "logs packed into $OUT/logs.tar.gz"
fi
exit "$failed"
