#!/usr/bin/env bash
# Builds, on this (CPU) machine, everything a GPU run needs, into the git-ignored gpu-bundle/:
#
#   gpu-bundle/run.sh              the runner (a copy of scripts/gpu-bundle-run.sh)
#   gpu-bundle/bin.tar.xz          the executables, xz-compressed (every binary embeds the same
#                                  kernels, which xz stores once: tens of times smaller):
#     bin/ferrinfer                the CLI
#     bin/tests/<name>             every release test executable (integration tests by file
#                                  name, unit tests by crate name; a binary's unit tests get a
#                                  `-bin` suffix), hash suffix dropped
#     bin/benches/<name>           every harness=false bench executable
#     bin/load                     the server's load generator (ferrinfer-server's `load` example)
#   gpu-bundle/MANIFEST.txt        git revision, build date, sizes and checksums
#
# All binaries are stripped; they need only libc, libgcc_s and, at run time, the driver's
# libcuda.so.1 (loaded dynamically). The GPU machine has no Rust: carry the folder there and run
# `bash gpu-bundle/run.sh` (see its --help and README.md); it unpacks bin.tar.xz into a temporary
# folder first. FERRINFER_BUNDLE_UNPACKED=1 leaves bin/ unpacked instead (local debugging).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bundle="$root/gpu-bundle"

bash scripts/setup.sh

# Prints `kind<TAB>name<TAB>path` for every executable artifact in cargo's JSON messages (stdin).
# $1 = "test": test-profile artifacts (unit and integration tests); "bench": bench targets only;
# "bin": plain binaries; "example": example binaries.
artifacts() {
    python3 -c '
import json, sys
want = sys.argv[1]
for line in sys.stdin:
    line = line.strip()
    if not line.startswith("{"):
        continue
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    kinds = m["target"]["kind"]
    is_test = m["profile"]["test"]
    if want == "test" and is_test and "bench" not in kinds:
        kind = "test" if "test" in kinds else ("bin" if "bin" in kinds else "lib")
    elif want == "bench" and "bench" in kinds:
        kind = "bench"
    elif want == "bin" and not is_test and "bin" in kinds:
        kind = "bin"
    elif want == "example" and not is_test and "example" in kinds:
        kind = "example"
    else:
        continue
    print("\t".join([kind, m["target"]["name"], m["executable"]]))
' "$1"
}

echo "gpu-bundle: building release test executables"
tests="$(cargo test --release --workspace --no-run --message-format=json | artifacts test)"
echo "gpu-bundle: building ferrinfer-candle's CUDA tests (candle's CUDA backend: scripts/candle-cuda-env.sh)"
candle_cuda="$( (eval "$(bash scripts/candle-cuda-env.sh)" &&
    cargo test --release -p ferrinfer-candle --features cuda --test cuda --no-run \
        --message-format=json) | artifacts test | awk -F'\t' '$2 == "cuda"')"
if [[ -z "$candle_cuda" ]]; then
    echo "error: cargo reported no ferrinfer-candle CUDA test executable" >&2
    exit 1
fi
echo "gpu-bundle: building bench executables"
benches="$(cargo bench --workspace --bench '*' --no-run --message-format=json | artifacts bench)"
echo "gpu-bundle: building the CLI"
cli="$(cargo build --release -p ferrinfer-cli --bin ferrinfer --message-format=json | artifacts bin)"
echo "gpu-bundle: building the load generator"
load="$(cargo build --release -p ferrinfer-server --example load --message-format=json | artifacts example)"

rm -rf "${bundle:?}"
mkdir -p "$bundle/bin/tests" "$bundle/bin/benches"

# copy <source> <dest>: copy, strip, keep executable.
copy() {
    cp "$1" "$2"
    strip "$2"
    chmod 755 "$2"
}

while IFS=$'\t' read -r kind name path; do
    [[ -n "$kind" ]] || continue
    dest="$name"
    [[ "$kind" == bin ]] && dest="$name-bin"
    if [[ -e "$bundle/bin/tests/$dest" ]]; then
        echo "error: two test executables map to the name '$dest'" >&2
        exit 1
    fi
    copy "$path" "$bundle/bin/tests/$dest"
done <<<"$tests"

# Built with candle's CUDA backend: links cuBLAS, cuRAND and NVRTC (run.sh finds them).
copy "$(printf '%s\n' "$candle_cuda" | cut -f3 | tail -n1)" "$bundle/bin/tests/candle-cuda"

while IFS=$'\t' read -r kind name path; do
    [[ -n "$kind" ]] || continue
    copy "$path" "$bundle/bin/benches/$name"
done <<<"$benches"

cli_path="$(printf '%s\n' "$cli" | awk -F'\t' '$2 == "ferrinfer" { print $3 }' | tail -n1)"
if [[ -z "$cli_path" ]]; then
    echo "error: cargo reported no ferrinfer CLI executable" >&2
    exit 1
fi
copy "$cli_path" "$bundle/bin/ferrinfer"
load_path="$(printf '%s\n' "$load" | awk -F'\t' '$2 == "load" { print $3 }' | tail -n1)"
if [[ -z "$load_path" ]]; then
    echo "error: cargo reported no load-generator executable" >&2
    exit 1
fi
copy "$load_path" "$bundle/bin/load"

echo
echo "gpu-bundle: $(find "$bundle/bin/tests" -type f | wc -l) test executables," \
    "$(find "$bundle/bin/benches" -type f | wc -l) bench executables, the CLI, the load generator" \
    "($(du -sh "$bundle/bin" | cut -f1) stripped)"
echo "  tests:   $(find "$bundle/bin/tests" -type f -printf '%f ' | tr ' ' '\n' | sort | xargs)"
echo "  benches: $(find "$bundle/bin/benches" -type f -printf '%f ' | tr ' ' '\n' | sort | xargs)"

{
    echo "ferrinfer GPU bundle"
    echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (+ uncommitted changes)')"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m), $(rustc --version)"
    echo "cubins embedded: $([[ -x .tools/cuda/nvidia/cu13/bin/ptxas || -n "${FERRINFER_PTXAS:-}" ]] && echo yes || echo 'no (PTX only)')"
    echo
    (cd "$bundle" && find bin -type f | sort | while read -r f; do
        printf '%10s  %s  %s\n' "$(stat -c %s "$f")" "$(sha256sum "$f" | cut -c1-16)" "$f"
    done)
} >"$bundle/MANIFEST.txt"

if [[ "${FERRINFER_BUNDLE_UNPACKED:-0}" != 1 ]]; then
    # A 192 MiB window spans several executables, so their shared kernel images are stored
    # once; the fast preset 1 is enough for that (1.3 GB → 14.8 MB in 20 s on 2 cores, against
    # minutes for -9). One thread: xz's multi-threaded mode splits the stream into blocks and
    # loses the cross-executable matches (84 MB). Unpacking needs ~200 MiB of memory.
    echo "gpu-bundle: compressing (xz, 192 MiB window, ~20 s)"
    tar -C "$bundle" -cf - bin | xz -T1 --lzma2=preset=1,dict=192MiB >"$bundle/bin.tar.xz"
    rm -rf "${bundle:?}/bin"
fi

cp scripts/gpu-bundle-run.sh "$bundle/run.sh"
chmod 755 "$bundle/run.sh"

echo "gpu-bundle: $(du -sh "$bundle" | cut -f1) in $bundle"
if [[ -d "$root/.fi-bundle" ]]; then
    echo "gpu-bundle: note: .fi-bundle/ exists ($(du -sh "$root/.fi-bundle" | cut -f1)), FlashInfer's" \
        "side of the comparison; it is not copied: carry it alongside gpu-bundle/ if the run needs it"
fi
echo "gpu-bundle: on the GPU machine: bash gpu-bundle/run.sh [--sanitize] [--bench] (see --help)"
