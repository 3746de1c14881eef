#!/usr/bin/env bash
# Runs the Python package's tests on the GPU machine (Python 3.12 + torch 2.11 + FlashInfer 0.7.2
# in the system Python, no network), then the host-overhead timing; logs into $OUT.
#
# Exactly what to run:
#   1. here (the CPU machine), from the repository root:
#        bash scripts/test-python.sh
#      builds python/dist/ferrinfer-*.whl (abi3, ~10 MB; it embeds the kernels' cubin/PTX) and runs the
#      CPU suite; python/wheelhouse/ holds pytest's wheels in case the GPU machine's Python lacks
#      pytest (made by
#      `python3 -m pip download --only-binary=:all: --python-version 3.12 -d python/wheelhouse pytest`);
#   2. on the GPU machine, from the repository root, carrying both ignored folders (~12 MB):
#        run(command="bash python/tests/gpu_run.sh", carry=["python/dist", "python/wheelhouse"])
#      extra arguments go to pytest, e.g. `bash python/tests/gpu_run.sh -k cuda -x`;
#   3. $OUT/pytest.log has the full log, $OUT/junit.xml the per-test results, $OUT/summary.txt
#      the counts, $OUT/bench_overhead.txt the plan+run host time per decode step (batch
#      1/64/256, ferrinfer vs FlashInfer) and the cold start. Exit status is pytest's.
# The CUDA path's tests are python/tests/test_cuda.py (decode and prefill wrappers, single
# decode/prefill, append, merges, side stream, CUDA-graph replay, device errors); test_torch.py
# compares the CPU path with FlashInfer. The Rust side of the embedding API has its own GPU test,
# tests/embed_spans.rs (`cargo test --release --test embed_spans`, with the workspace's GPU tests).
# The wheel (and pytest with its dependencies from python/wheelhouse, when the machine's Python
# lacks it) is unzipped into a temporary folder put first on PYTHONPATH, and the machine's own
# `python3` runs the tests: torch and numpy are wherever that interpreter finds them (on the GPU
# image it is itself a venv, /opt/torch/.venv, whose packages a new --system-site-packages venv
# would not see). FlashInfer comes from PYTHONPATH when the caller unpacked its bundle there.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
out="${OUT:-$root/python/gpu-out}"
mkdir -p "$out"

wheel=(python/dist/ferrinfer-*.whl)
if [[ ! -f "${wheel[0]}" ]]; then
    echo "gpu_run: no python/dist/ferrinfer-*.whl: build it with scripts/test-python.sh and carry python/dist" >&2
    exit 2
fi

py="${PYTHON:-python3}"
site="$(mktemp -d)/site"
# A wheel is a zip of the files to put on sys.path: unzipping it is the offline install, and
# needs no pip in the machine's interpreter.
"$py" -m zipfile -e "${wheel[0]}" "$site"
if ! "$py" -c "import pytest" 2>/dev/null; then
    for w in python/wheelhouse/*.whl; do "$py" -m zipfile -e "$w" "$site"; done
fi
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"

{
    echo "gpu_run: $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    "$py" - <<'EOF'
import sys, numpy, ferrinfer
print("python", sys.version.split()[0], "numpy", numpy.__version__, "ferrinfer", ferrinfer.__version__)
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except Exception as e:
    print("torch: not importable:", e)
try:
    import flashinfer
    print("flashinfer", flashinfer.__version__)
except Exception as e:
    print("flashinfer: not importable:", type(e).__name__, e)
EOF
} 2>&1 | tee "$out/env.txt" || true  # pytest below reports an import failure in full

status=0
# From the repository root: python/ferrinfer (the source tree) is not on sys.path, so the
# installed wheel is what runs.
"$py" -m pytest -p no:cacheprovider -rs -q --rootdir python/tests python/tests \
    --junitxml "$out/junit.xml" "$@" 2>&1 | tee "$out/pytest.log" || status=$?
tail -n 1 "$out/pytest.log" > "$out/summary.txt"
# The timing never changes the exit status; a failure is logged in the file.
"$py" python/tests/bench_overhead.py > "$out/bench_overhead.txt" 2>&1 || true
cat "$out/bench_overhead.txt"
exit "$status"
