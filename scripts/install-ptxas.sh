#!/usr/bin/env bash
# Installs NVIDIA's `ptxas` (PTX assembler) into the project-local, git-ignored `.tools/cuda`,
# from the PyPI package `nvidia-cuda-nvcc`. Nothing is installed system-wide; no GPU, driver or
# CUDA toolkit is needed.
#
# Used by host/build.rs (embeds a cubin next to each PTX when ptxas is present) and by the PTX
# check (tests/ptx_check.rs, scripts/ptx-check.sh: registers, spills, shared memory per kernel).
#
# Idempotent: when the binary already exists and runs, this does nothing (well under a second).
#
# Environment:
#   FERRINFER_TOOLS_DIR   where the tools live (default: <repo>/.tools); ptxas ends up at
#                         $FERRINFER_TOOLS_DIR/cuda/nvidia/cu13/bin/ptxas
#   FERRINFER_NVCC_PIP    pip requirement to install (default: nvidia-cuda-nvcc==13.5.37, the
#                         version verified here; the cu13 path above assumes a CUDA 13 wheel)
#   PYTHON                python interpreter with pip (default: python3)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="${FERRINFER_TOOLS_DIR:-$root/.tools}"
dest="$tools/cuda"
ptxas="$dest/nvidia/cu13/bin/ptxas"
spec="${FERRINFER_NVCC_PIP:-nvidia-cuda-nvcc==13.5.37}"
python="${PYTHON:-python3}"

runs() { [[ -x "$ptxas" ]] && "$ptxas" --version >/dev/null 2>&1; }

if runs; then
    echo "ptxas: present ($ptxas, $("$ptxas" --version | grep -o 'V[0-9][0-9.]*' | head -n1))"
    exit 0
fi

if ! "$python" -m pip --version >/dev/null 2>&1; then
    echo "error: '$python -m pip' is not available; install pip for $python first" >&2
    exit 1
fi

# Install into a staging directory next to the destination and move it into place only once
# ptxas runs, so an interrupted or failed install never leaves a half-filled .tools/cuda behind
# (pip --target refuses to overwrite an existing tree without --upgrade).
mkdir -p "$tools"
stage="$(mktemp -d "$tools/.cuda-install.XXXXXX")"
chmod 755 "$stage"
cleanup() { rm -rf "$stage"; }
trap cleanup EXIT

echo "ptxas: installing $spec into $dest (pip --target; ~320 MB, a few seconds)"
PIP_ROOT_USER_ACTION=ignore "$python" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --no-compile --target "$stage" "$spec"

staged_ptxas="$stage/nvidia/cu13/bin/ptxas"
if [[ ! -x "$staged_ptxas" ]] || ! "$staged_ptxas" --version >/dev/null 2>&1; then
    echo "error: $spec installed, but $staged_ptxas is missing or does not run" >&2
    echo "       (a wheel for another CUDA major version? set FERRINFER_NVCC_PIP)" >&2
    exit 1
fi

rm -rf "$dest"
mv "$stage" "$dest"
trap - EXIT

runs || { echo "error: $ptxas does not run after the install" >&2; exit 1; }
echo "ptxas: installed $ptxas ($("$ptxas" --version | grep -o 'V[0-9][0-9.]*' | head -n1))"
