#!/usr/bin/env bash
# Packs, from a full GPU bundle (scripts/gpu-bundle.sh) and the Python wheel, the one-call
# check of the changes still waiting for a GPU: the git-ignored gpu-quick/ holds
#
#   gpu-quick/combo.tar.xz   the chosen executables (bin/tests, bin/benches, bin/ferrinfer) and
#                            the wheel's files (site/), xz-packed together: they embed the same
#                            kernels, which xz stores once (~18 MB for the default set)
#   gpu-quick/run.sh         the bundle's runner (scripts/gpu-bundle-run.sh)
#   gpu-quick/go.sh          the GPU-side script (scripts/gpu-quick-run.sh)
#   gpu-quick/wheelhouse/    pytest's wheels, for a machine whose Python lacks it
#
# With FlashInfer's bundle (.fi-bundle/, ../shared/anchor/README.md) the whole payload is ~44 MB
# with the checkout, so it fits one 64 MiB transfer with room to spare:
#   run(command="bash gpu-quick/go.sh", carry=["gpu-quick", ".fi-bundle"])
#
# Usage: bash scripts/gpu-quick.sh [TEST_OR_BENCH_NAME...]   (default: the set below)
# Builds gpu-bundle/ first when it is missing or of another revision than HEAD
# (GPU_QUICK_ANY_BUNDLE=1 takes the existing one as it is: MANIFEST.txt names its revision),
# and the wheel when python/dist/ has none.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
names=("$@")
if [[ ${#names[@]} -eq 0 ]]; then
    names=(candle-cuda graphs model_kernels batch_decode embed_spans custom_mask decode_step planners)
fi

rev="$(git rev-parse --short HEAD)"
if [[ ! -f gpu-bundle/bin.tar.xz ]] || { [[ "${GPU_QUICK_ANY_BUNDLE:-0}" != 1 ]] &&
    ! grep -q "^git: $rev\$" gpu-bundle/MANIFEST.txt 2>/dev/null; }; then
    echo "gpu-quick: building the full bundle of $rev first (scripts/gpu-bundle.sh)"
    bash scripts/gpu-bundle.sh
fi
# The wheel is rebuilt unless python/dist/REV names HEAD (a wheel of an older revision would
# test old host code beside the new executables).
if ! compgen -G "python/dist/ferrinfer-*.whl" >/dev/null ||
    [[ "$(cat python/dist/REV 2>/dev/null)" != "$rev" ]]; then
    echo "gpu-quick: building the wheel of $rev (maturin, as scripts/test-python.sh does)"
    rm -f python/dist/ferrinfer-*.whl
    python3 -m venv --clear python/.venv-ci
    python/.venv-ci/bin/pip install --quiet "maturin==1.16.0"
    python/.venv-ci/bin/maturin build --release --quiet -m python/Cargo.toml -o python/dist
    echo "$rev" >python/dist/REV
fi
if [[ ! -d python/wheelhouse ]]; then
    python3 -m pip download --quiet --only-binary=:all: --python-version 3.12 \
        -d python/wheelhouse pytest
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
members=(bin/ferrinfer)
listing="$(tar -tJf gpu-bundle/bin.tar.xz)"
for n in "${names[@]}"; do
    found=0
    for p in "bin/tests/$n" "bin/benches/$n"; do
        if grep -qx "$p" <<<"$listing"; then members+=("$p"); found=1; fi
    done
    if [[ $found -eq 0 ]]; then
        echo "error: no test or bench executable '$n' in gpu-bundle/bin.tar.xz" >&2
        exit 1
    fi
done
tar -C "$work" -xJf gpu-bundle/bin.tar.xz "${members[@]}"
wheel=(python/dist/ferrinfer-*.whl)
python3 -m zipfile -e "${wheel[0]}" "$work/site"

out="$root/gpu-quick"
rm -rf "$out"
mkdir -p "$out"
tar -C "$work" -cf - bin site | xz -T1 --lzma2=preset=1,dict=192MiB >"$out/combo.tar.xz"
cp scripts/gpu-bundle-run.sh "$out/run.sh"
cp scripts/gpu-quick-run.sh "$out/go.sh"
cp -r python/wheelhouse "$out/wheelhouse"
{
    echo "ferrinfer quick GPU check"
    echo "git: $rev$(git diff --quiet HEAD || echo ' (+ uncommitted changes)')"
    echo "bundle: $(sed -n 2p gpu-bundle/MANIFEST.txt)"
    echo "wheel: $(basename "${wheel[0]}")"
    echo "members: ${members[*]}"
} >"$out/MANIFEST.txt"
echo "gpu-quick: $(du -sh "$out" | cut -f1) in gpu-quick/ (${members[*]}; wheel files)"
echo "gpu-quick: on the GPU machine: bash gpu-quick/go.sh (carry gpu-quick and .fi-bundle)"
