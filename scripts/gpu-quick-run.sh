#!/usr/bin/env bash
# The GPU-machine side of scripts/gpu-quick.sh (copied to gpu-quick/go.sh), made to fit one
# call of at most ~8 minutes, most important first:
#   1. candle's CUDA tests (ferrinfer-candle's `cuda` feature);
#   2. bin/benches/decode_step: eager and CUDA-graph decode steps, programmatic dependent launch
#      off and on, cuBLAS and few-row products, batches 1/4/16/64;
#   2b. bin/benches/planners: the decode and prefill planners' host time (issue #20 item 5),
#      with the staging ring (3 buffers) and the single buffer;
#   3. the Python host overhead per decode step (python/tests/bench_overhead.py, FlashInfer's
#      wrappers beside when .fi-bundle/ was carried) with the staging ring (3 buffers) and the
#      single buffer (FERRINFER_STAGING_SLOTS=1), alternated;
#   4. the decode-step tests with FERRINFER_PDL=1 (graph runners with PDL against eager ones,
#      bit for bit; the model kernels; batch decode; the span API) and the custom-mask tests
#      (masks staged with the plan's tables, graph-mode masked plans);
#   5. the Python package's CUDA tests with the time left.
# Logs: $OUT/summaries.txt, decode_step.log, planners.log, overhead-slots.txt, all.tgz (every log).
# QUICK_BUDGET_S (default 450) is the time after which no new step starts.
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
budget="${QUICK_BUDGET_S:-450}"
t0=$SECONDS
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
x="$here/x"
mkdir -p "$x"
if [[ ! -d "$x/bin" ]]; then
    tar -C "$x" -xJf "$here/combo.tar.xz" 2>/dev/null ||
        python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
            "$here/combo.tar.xz" "$x"
fi
cp "$here/run.sh" "$x/run.sh"
echo "unpacked in $((SECONDS - t0)) s"
# left <share of the budget, %>: seconds until that point of the budget.
# (At least 1: `timeout 0` would mean no limit.)
left() { local l=$((budget * $1 / 100 - (SECONDS - t0))); echo $((l > 1 ? l : 1)); }

has() { [[ -e "$x/bin/tests/$1" || -e "$x/bin/benches/$1" ]]; }
# QUICK_STEPS (comma-separated, default all) picks the steps: candle, step, planners, overhead,
# tests, python — e.g. the tests in one call and the benches in the next.
want() { [[ ",${QUICK_STEPS:-candle,step,planners,overhead,tests,python}," == *",$1,"* ]]; }
want candle && has candle-cuda && { OUT=$OUT/candle timeout "$(left 22)" bash "$x/run.sh" --only candle-cuda
    echo "candle rc=$? at $((SECONDS - t0)) s"; }
want step && has decode_step && { OUT=$OUT/step timeout "$(left 50)" bash "$x/run.sh" --only none --bench \
    --bench-only decode_step; echo "decode_step rc=$? at $((SECONDS - t0)) s"; }
# The planners' host time (no kernels: seconds), beside the staging ring's depth.
want planners && has planners && for s in 3 1; do
    FERRINFER_STAGING_SLOTS=$s OUT=$OUT/plan$s timeout 60 bash "$x/run.sh" --only none --bench \
        --bench-only planners; echo "planners (slots $s) rc=$? at $((SECONDS - t0)) s"
done

export PYTHONUNBUFFERED=1 PYTHONPATH="$x/site"
if [[ -f .fi-bundle/flashinfer-site.tar.xz ]]; then
    mkdir -p /tmp/fi && python3 -m tarfile --filter data -e .fi-bundle/flashinfer-site.tar.xz /tmp/fi
    export FLASHINFER_WORKSPACE_BASE=/tmp/fi-ws PYTHONPATH="$x/site:/tmp/fi/site"
fi
want overhead && for s in 3 1 3 1; do
    [[ $(left 67) -gt 30 ]] || break
    echo "== FERRINFER_STAGING_SLOTS=$s at $((SECONDS - t0)) s" | tee -a "$OUT/overhead-slots.txt"
    FERRINFER_STAGING_SLOTS=$s timeout 60 python3 python/tests/bench_overhead.py 2>&1 |
        tee -a "$OUT/overhead-slots.txt"
done

only=()
for n in graphs model_kernels batch_decode embed_spans custom_mask; do has "$n" && only+=(--only "$n"); done
if want tests && [[ ${#only[@]} -gt 0 && $(left 85) -gt 20 ]]; then
    FERRINFER_PDL=1 OUT=$OUT/pdl timeout "$(left 85)" bash "$x/run.sh" "${only[@]}"
    echo "pdl rc=$? at $((SECONDS - t0)) s"
fi

if want python && [[ $(left 100) -gt 20 ]]; then
    python3 -c "import pytest" 2>/dev/null ||
        for w in "$here"/wheelhouse/*.whl; do python3 -m zipfile -e "$w" "$x/site"; done
    mkdir -p "$OUT/py"
    timeout "$(left 100)" python3 -m pytest -p no:cacheprovider -rs -q --rootdir python/tests \
        python/tests -k cuda --junitxml "$OUT/py/junit.xml" >"$OUT/py/pytest.log" 2>&1
    echo "python rc=$? at $((SECONDS - t0)) s"
    tail -n 3 "$OUT/py/pytest.log"
fi

cat "$OUT"/*/summary.txt >"$OUT/summaries.txt" 2>/dev/null
cp "$OUT/step/bench-decode_step.log" "$OUT/decode_step.log" 2>/dev/null
cat "$OUT"/plan3/bench-planners.log "$OUT"/plan1/bench-planners.log >"$OUT/planners.log" 2>/dev/null
(cd "$OUT" && tar czf all.tgz candle step plan3 plan1 pdl py 2>/dev/null; rm -rf candle step plan3 plan1 pdl py)
cat "$OUT/summaries.txt"
echo "total $((SECONDS - t0)) s"
