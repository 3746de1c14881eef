#!/usr/bin/env bash
# The Python package's test step (run by scripts/test.sh, so by CI):
#   1. a fresh virtual environment in the git-ignored python/.venv-ci (PYTHON picks the
#      interpreter, default python3);
#   2. maturin (pinned) builds the abi3 wheel into python/dist from cargo's own target/ (only
#      the extension crate and pyo3 differ from the workspace build, so the host crate and its
#      embedded kernels are reused);
#   3. pip installs that wheel with numpy, pytest and ml_dtypes (bf16 arrays) — no torch: the
#      package reads numpy arrays zero-copy, so CI does not pay for torch's download;
#   4. pytest runs python/tests from the repository root (so the installed wheel, not the
#      source tree, is imported: a broken wheel fails here). The CUDA tests are skipped with
#      their reason; python/tests/gpu_run.sh runs them on a GPU machine.
# Extra arguments go to pytest (e.g. `bash scripts/test-python.sh -k decode -x`).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

MATURIN_VERSION=1.16.0
venv="$root/python/.venv-ci"
dist="$root/python/dist"

start=$SECONDS
echo "test-python: fresh venv in python/.venv-ci (${PYTHON:-python3})"
"${PYTHON:-python3}" -m venv --clear "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "maturin==$MATURIN_VERSION"

echo "test-python: maturin build --release (wheel into python/dist)"
rm -rf "$dist"
"$venv/bin/maturin" build --release --quiet -m python/Cargo.toml -o "$dist"
wheel=("$dist"/ferrinfer-*.whl)
echo "test-python: built ${wheel[0]#"$root/"}"

"$venv/bin/pip" install --quiet --disable-pip-version-check "${wheel[0]}" pytest ml_dtypes
echo "test-python: pytest python/tests"
status=0
"$venv/bin/python" -m pytest -q -p no:cacheprovider -rs --rootdir python/tests python/tests "$@" || status=$?
echo "test-python: done in $((SECONDS - start)) s"
exit "$status"
