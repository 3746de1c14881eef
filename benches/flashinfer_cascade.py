"""FlashInfer's side of benches/cascade.rs.

Times FlashInfer's `MultiLevelCascadeAttentionWrapper` (two levels: a 4096-token prefix shared
by 64 requests, then each request's 256 own tokens, causal on the last level) against its plain
wrappers over each request's full 4352-token context (`BatchPrefillWithPagedKVCacheWrapper`,
and for one query token `BatchDecodeWithPagedKVCacheWrapper` with tensor cores), with the prefix
pages shared by every request's page list or copied per request — the rows of
benches/cascade.rs, with its method: bf16, D = 128, 32 query / 8 KV heads, page size 16, NHD,
pages in random order; CUDA events around each call, L2 flushed (100 MiB zeroed) and a ~100 µs
spin queued before it, 5 warm-up calls, median of 50; query tokens per request 1 and 16.

Run on the GPU machine with FlashInfer importable (see ../shared/anchor/README.md), in the same
command as `gpu-bundle/run.sh --bench --bench-only cascade`:
    python3 benches/flashinfer_cascade.py
"""
import statistics

import torch
import flashinfer

BATCH, PREFIX, OWN, PAGE = 64, 4096, 256, 16
HQ, HKV, D = 32, 8, 128


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
    times.sort()
    return statistics.median(times), times[len(times) // 10], times[len(times) * 9 // 10]


def i32(x):
    return torch.tensor(x, dtype=torch.int32, device="cuda")


def main():
    pp, op = PREFIX // PAGE, OWN // PAGE
    num_pages = pp + BATCH * pp + BATCH * op
    gen = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randperm(num_pages, generator=gen).to(torch.int32)
    shared = ids[:pp]
    copies = ids[pp:pp + BATCH * pp].view(BATCH, pp)
    own = ids[pp + BATCH * pp:].view(BATCH, op)
    cache = torch.randn(num_pages, 2, PAGE, HKV, D, dtype=torch.bfloat16, device="cuda")
    full_shared = torch.cat([shared.expand(BATCH, pp), own], dim=1)
    full_copied = torch.cat([copies, own], dim=1)
    per_req = torch.arange(0, BATCH + 1, dtype=torch.int32)
    last = torch.full((BATCH,), PAGE, dtype=torch.int32)
    ws = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    kw = dict(q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16)
    print(f"device: {torch.cuda.get_device_name()}; FlashInfer {flashinfer.__version__}")
    print("| op | qo per request | median us | p10 | p90 | cascade speed-up over it |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for qo in (1, 16):
        n = BATCH * qo
        q = torch.randn(n, HQ, D, dtype=torch.bfloat16, device="cuda")
        rows = []
        w = flashinfer.MultiLevelCascadeAttentionWrapper(2, ws, "NHD")
        w.plan(
            [i32([0, n]), (per_req * qo).cuda()],
            [i32([0, pp]), (per_req * op).cuda()],
            [shared.cuda(), own.flatten().cuda()],
            [i32([PAGE]), last.cuda()],
            HQ, HKV, D, PAGE, causal=True, **kw,
        )
        tc = time_call(lambda: w.run(q, cache))
        rows.append(("cascade (2 levels)", tc, False))
        for what, full in (("shared", full_shared), ("copied", full_copied)):
            indptr = (per_req * full.shape[1]).cuda()
            pw = flashinfer.BatchPrefillWithPagedKVCacheWrapper(ws, "NHD")
            pw.plan((per_req * qo).cuda(), indptr, full.flatten().cuda(), last.cuda(),
                    HQ, HKV, D, PAGE, causal=True, **kw)
            rows.append((f"prefill, prefix pages {what}", time_call(lambda: pw.run(q, cache)), True))
            if qo == 1:
                dw = flashinfer.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD", use_tensor_cores=True)
                dw.plan(indptr, full.flatten().cuda(), last.cuda(), HQ, HKV, D, PAGE, **kw)
                rows.append((f"decode (tensor cores), prefix pages {what}",
                             time_call(lambda: dw.run(q, cache)), True))
        for what, (med, p10, p90), plain in rows:
            speedup = f"{med / tc[0]:.2f}×" if plain else ""
            print(f"| {what} | {qo} | {med:.1f} | {p10:.1f} | {p90:.1f} | {speedup} |")


if __name__ == "__main__":
    main()
