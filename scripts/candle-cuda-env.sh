#!/usr/bin/env bash
# Sets up, on a machine without CUDA, what building ferrinfer-candle with its `cuda` feature
# needs, all project-local under the git-ignored .tools/, and prints the environment to build
# with:
#
#   eval "$(bash scripts/candle-cuda-env.sh)"
#   cargo test --release -p ferrinfer-candle --features cuda --no-run
#
# 1. nvcc (PyPI `nvidia-cuda-nvcc`, the same install as ptxas: scripts/install-ptxas.sh):
#    candle-kernels' build script compiles candle's CUDA sources with it.
# 2. CCCL headers (PyPI `nvidia-cuda-cccl`): candle's `reduce.cu` includes `cuda/std/limits`,
#    which the nvcc wheel lacks.
# 3. Link stubs for the five libraries candle's cudarc links (`dynamic-linking`): libcuda,
#    libnvrtc, libcurand, libcublas, libcublasLt. Each defines every function cudarc's bindings
#    declare for it (names read from cudarc's own sources) and carries the real library's soname,
#    so the test binary links here and loads the real libraries of the GPU machine at run time
#    (the bundle's runner puts them on LD_LIBRARY_PATH). The stubs are never run. candle's
#    static MoE kernels also link the CUDA runtime: the nvcc wheel's own libcudart.so.13.
#
# Idempotent; takes a few seconds once the wheels are cached. Needs python3 with pip, gcc, and
# cargo's registry copy of cudarc (any `cargo fetch` of the workspace provides it).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools"
cuda="$tools/cuda/nvidia/cu13"
cccl="$tools/cccl"
stubs="$tools/cuda-stubs"
cccl_spec="${FERRINFER_CCCL_PIP:-nvidia-cuda-cccl==13.3.5.0.6}"

bash "$root/scripts/install-ptxas.sh" >&2
[[ -x "$cuda/bin/nvcc" ]] || { echo "error: no nvcc at $cuda/bin/nvcc" >&2; exit 1; }

if [[ ! -d "$cccl/nvidia/cu13/include/cccl" ]]; then
    rm -rf "$cccl.tmp"
    python3 -m pip install --quiet --no-deps --target "$cccl.tmp" "$cccl_spec" >&2
    mv "$cccl.tmp" "$cccl"
fi

cudarc_src="$(cd "$root" && cargo metadata --format-version 1 2>/dev/null | python3 -c '
import json, sys
m = json.load(sys.stdin)
print(next(p["manifest_path"] for p in m["packages"] if p["name"] == "cudarc").rsplit("/", 1)[0])
')"

# library soname  cudarc bindings
libs="cuda:libcuda.so.1:driver nvrtc:libnvrtc.so.13:nvrtc curand:libcurand.so.10:curand
cublas:libcublas.so.13:cublas cublasLt:libcublasLt.so.13:cublaslt"
mkdir -p "$stubs/lib64"
for spec in $libs; do
    IFS=: read -r name soname module <<<"$spec"
    out="$stubs/lib64/lib$name.so"
    [[ -f "$out" ]] && continue
    python3 - "$cudarc_src/src/$module/sys/mod.rs" >"$stubs/$name.c" <<'EOF'
import re, sys
src = open(sys.argv[1]).read()
names = set()
for block in re.finditer(r'extern "C" \{\s*((?:fn [^;]*;\s*)+)\}', src):
    names.update(re.findall(r"fn (\w+)\(", block.group(1)))
print("/* Link stub: never called (the real library is loaded at run time). */")
for n in sorted(names):
    print(f"void {n}(void) {{}}")
EOF
    gcc -shared -fPIC -o "$out" -Wl,-soname,"$soname" "$stubs/$name.c"
done

# candle-kernels' static MoE library needs the CUDA runtime: the nvcc wheel's real libcudart.
ln -sf "$cuda/lib/libcudart.so.13" "$stubs/lib64/libcudart.so"

echo "export NVCC='$cuda/bin/nvcc'"
echo "export PATH='$cuda/bin':\"\$PATH\""
echo "export CUDA_COMPUTE_CAP=90"
echo "export NVCC_APPEND_FLAGS='-I$cccl/nvidia/cu13/include -I$cccl/nvidia/cu13/include/cccl'"
echo "export CUDA_PATH='$stubs'"
