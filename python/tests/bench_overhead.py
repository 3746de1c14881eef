"""Host overhead of a decode step: wall time of ``plan`` + ``run`` per step (the median with the
GPU idle at each step's start, and back-to-back steps; see ``time_steps``), at batch 1/64/256, for
ferrinfer's CUDA path and, when it imports, FlashInfer's; plus the cold start of ``import
ferrinfer`` and the first decode call in a fresh process.

Run on the GPU machine (python/tests/gpu_run.sh runs it after pytest):
    python python/tests/bench_overhead.py
Not a pytest module (no ``test_`` prefix).
"""

import os
import subprocess
import sys
import time

COLD = r"""
import time
t0 = time.perf_counter()
import torch
torch.zeros(1, device="cuda"); torch.cuda.synchronize()
t1 = time.perf_counter()
import ferrinfer
t2 = time.perf_counter()
ws = torch.empty(128 << 20, dtype=torch.uint8, device="cuda")
w = ferrinfer.BatchDecodeWithPagedKVCacheWrapper(ws)
ip = torch.tensor([0, 1], dtype=torch.int32); ix = torch.tensor([0], dtype=torch.int32)
la = torch.tensor([1], dtype=torch.int32)
cache = torch.zeros(1, 2, 16, 8, 128, dtype=torch.float16, device="cuda")
q = torch.zeros(1, 32, 128, dtype=torch.float16, device="cuda")
w.plan(ip, ix, la, 32, 8, 128, 16, q_data_type=torch.float16)
w.run(q, cache); torch.cuda.synchronize()
t3 = time.perf_counter()
print(f"cold start: torch+CUDA init {1e3*(t1-t0):.1f} ms, import ferrinfer {1e3*(t2-t1):.1f} ms, "
      f"first plan+run (primary context, module load) {1e3*(t3-t2):.1f} ms")
"""


def tables(torch, batch, kv_len, ps):
    pages = (kv_len + ps - 1) // ps
    indptr = torch.arange(batch + 1, dtype=torch.int32) * pages
    indices = torch.arange(batch * pages, dtype=torch.int32)
    last = torch.full((batch,), (kv_len - 1) % ps + 1, dtype=torch.int32)
    return indptr, indices, last, batch * pages


def time_steps(torch, w, batch, plan_args, run_args, steps=200):
    """``(host, pipelined)`` µs per step. ``host``: the median wall time of ``plan`` + ``run``
    with the GPU idle when the step starts (a synchronisation between steps, outside the
    clock) — the host's own cost, which no queue depth or staging wait can hide or inflate.
    ``pipelined``: back-to-back steps with the clock stopped before the final
    synchronisation — the host's cost only while the host can run ahead of the GPU; where a
    step's kernels take longer than its host work, any library that bounds how far it runs
    ahead (ferrinfer's staging ring: a plan waits for the copy made three plans before) is
    paced by the GPU here, so this column is not an overhead figure at large batches."""
    def step():
        w.plan(*plan_args[0], *plan_args[1:], q_data_type=torch.float16)
        w.run(*run_args)

    for _ in range(10):
        step()
    torch.cuda.synchronize()
    host = []
    for _ in range(steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        host.append(time.perf_counter() - t0)
    host.sort()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return 1e6 * host[len(host) // 2], 1e6 * (t1 - t0) / steps


def main():
    import torch

    import ferrinfer

    try:
        import flashinfer
    except Exception as e:
        flashinfer = None
        print(f"flashinfer not importable ({type(e).__name__}: {e}): ferrinfer only")
    hq, hkv, d, ps, kv_len = 32, 8, 128, 16, 1024
    print(f"decode step host time (plan + run, µs; host: median with the GPU idle at each step's start, "
          f"pipelined: back-to-back steps, GPU-paced once the kernels outlast the host work), "
          f"Hq={hq} Hkv={hkv} D={d} page {ps} kv_len {kv_len}, {torch.cuda.get_device_name()}")
    for batch in (1, 64, 256):
        indptr, indices, last, n = tables(torch, batch, kv_len, ps)
        cache = torch.randn(n, 2, ps, hkv, d, device="cuda").half()
        q = torch.randn(batch, hq, d, device="cuda").half()
        out = torch.empty_like(q)
        plan_args = ((indptr, indices, last), hq, hkv, d, ps)
        ours = ferrinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(128 << 20, dtype=torch.uint8, device="cuda"))
        host, piped = time_steps(torch, ours, batch, plan_args, (q, cache))
        line = f"  batch {batch:4d}: ferrinfer host {host:8.1f} pipelined {piped:8.1f}"
        if flashinfer is not None:
            fi = flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(128 << 20, dtype=torch.uint8,
                                                                           device="cuda"))
            host, piped = time_steps(torch, fi, batch, plan_args, (q, cache))
            line += f"   flashinfer host {host:8.1f} pipelined {piped:8.1f}"
        print(line)
        del out
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-c", COLD], capture_output=True, text=True, env=env)
    print(r.stdout.strip() or r.stderr.strip())


if __name__ == "__main__":
    main()
