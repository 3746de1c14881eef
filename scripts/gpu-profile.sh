#!/usr/bin/env bash
# Profiles one launch of a kernel from the prefill bench on the GPU machine: stall reasons,
# per-instruction source counters (CSV) and, when gpu-bundle/k.cubin exists (copy a cubin
# assembled here, e.g. with .tools ptxas), its SASS. Logs under $OUT.
#   usage: bash scripts/gpu-profile.sh [KERNEL] [LAUNCH_SKIP]
set -u
K=${1:-prefill_ragged_bf16_d128_h}
SKIP=${2:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p /tmp/fb && tar -C /tmp/fb -xJf "$here/gpu-bundle/bin.tar.xz"
if [[ -f "$here/gpu-bundle/k.cubin" ]]; then
    cuobjdump -sass -fun "$K" "$here/gpu-bundle/k.cubin" > "$OUT/sass-$K.txt" 2>&1
fi
ncu --kernel-name regex:"^$K\$" --launch-skip "$SKIP" --launch-count 1 \
  --metrics regex:'smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio',sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active,gpu__time_duration.sum,sm__cycles_elapsed.avg.per_second,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,l1tex__data_pipe_lsu_wavefronts_mem_shared.avg.pct_of_peak_sustained_elapsed,smsp__issue_active.avg.pct_of_peak_sustained_active \
  /tmp/fb/bin/benches/prefill --bench > "$OUT/ncu-stall-$K.txt" 2>&1
ncu --kernel-name regex:"^$K\$" --launch-skip "$SKIP" --launch-count 1 \
  --section SourceCounters --page source --print-source sass --csv \
  /tmp/fb/bin/benches/prefill --bench > "$OUT/ncu-src-$K.csv" 2>&1
echo "gpu-profile: done ($K)"
