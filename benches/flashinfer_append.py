"""FlashInfer's side of the paged-append prefill rows of benches/prefill.rs.

The FlashInfer anchor script (`.fi-bundle/flashinfer_bench.py`) times prefill only with
qo_len = kv_len; this script times `BatchPrefillWithPagedKVCacheWrapper` for the append shapes of
the prefill issue — (batch, qo_len, kv_len) = (8, 512, 4096), (64, 16, 2048) — with the same
method as both benchmarks: bf16, D = 128, 32 query / 8 KV heads, page size 16, NHD, pages in
random order, causal; CUDA events around each call, L2 flushed (100 MiB zeroed) and a ~100 µs
spin queued before it, 5 warm-up calls, median of 50. FLOPs = 4 · D · Hq · Σ pairs, pairs =
qo · (kv − qo) + qo (qo + 1) / 2 per request.

Run on the GPU machine with FlashInfer importable (see ../shared/anchor/README.md):
    python3 benches/flashinfer_append.py [--backends fa2,fa3]
"""
import argparse
import statistics

import torch
import flashinfer


def time_call(fn, warmup=5, iters=50):
    flush = torch.empty(100 << 20, dtype=torch.uint8, device="cuda")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        flush.zero_()
        torch.cuda._sleep(200_000)
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000.0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backends", default="fa2,fa3")
    args = ap.parse_args()
    hq, hkv, d, ps = 32, 8, 128, 16
    gen = torch.Generator(device="cpu").manual_seed(0)
    print("| backend | batch | qo_len | kv_len | TFLOP | median us | TFLOP/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for batch, qo, kv in [(8, 512, 4096), (64, 16, 2048)]:
        per = (kv + ps - 1) // ps
        pages = batch * per
        indices = torch.randperm(pages, generator=gen).to(torch.int32).cuda()
        indptr = torch.arange(0, batch + 1, dtype=torch.int32) * per
        last = torch.full((batch,), (kv - 1) % ps + 1, dtype=torch.int32)
        qo_indptr = torch.arange(0, batch + 1, dtype=torch.int32) * qo
        cache = torch.randn(pages, 2, ps, hkv, d, dtype=torch.bfloat16, device="cuda")
        q = torch.randn(batch * qo, hq, d, dtype=torch.bfloat16, device="cuda")
        pairs = (qo * (kv - qo) + qo * (qo + 1) // 2) * batch
        flops = 4.0 * d * hq * pairs
        for backend in args.backends.split(","):
            ws = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
            w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(ws, "NHD", backend=backend)
            w.plan(qo_indptr.cuda(), indptr.cuda(), indices, last.cuda(), hq, hkv, d, ps,
                   causal=True, q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16)
            us = time_call(lambda: w.run(q, cache))
            print(f"| {backend} | {batch} | {qo} | {kv} | {flops / 1e12:.3f} | {us:.1f} | "
                  f"{flops / us / 1e6:.1f} |")


if __name__ == "__main__":
    main()
