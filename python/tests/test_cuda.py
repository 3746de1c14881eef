"""The CUDA path: torch CUDA tensors read and written in place, on torch's current stream.

Skipped (with the reason) without torch or without a CUDA device; python/tests/gpu_run.sh runs
them on the GPU machine. Covered:

- the batch decode wrapper on CUDA (NHD/HND, the single ``(pages, 2, ...)`` tensor and the
  ``(k, v)`` tuple, page sizes 1/16, groups 1/4/8, head dims 64/128/256, f16/bf16, lse) against
  the float64 reference, and against FlashInfer 0.7.2 on the same inputs when it imports;
- merges on CUDA against the reference;
- a non-default torch stream: a producer kernel writes q on a side stream, ferrinfer runs on
  that stream, and the caller synchronises only through torch;
- CUDA-graph capture of a decode step, replayed after re-planning with other batch contents;
- paged and ragged batch prefill on CUDA against the reference (and FlashInfer when it imports);
- the KV append on CUDA bit for bit against the CPU path (host and CUDA tables);
- single decode and prefill on CUDA against the reference;
- custom masks (``custom_mask`` / ``packed_custom_mask``) in paged, ragged and single prefill
  on CUDA against the reference, and against FlashInfer's custom-mask prefill when it imports;
- the multi-level cascade wrapper on CUDA against the reference and FlashInfer's wrapper;
- wrong device, device mixes and CUDA tensors in a CPU-built wrapper raise by name.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (CI's CPU step runs numpy only)")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device visible to torch", allow_module_level=True)

import ferrinfer  # noqa: E402
from reference import attention, merge, rope_llama  # noqa: E402

try:
    import flashinfer  # noqa: E402

    FI_REASON = None
except Exception as e:  # ImportError, or a broken install
    flashinfer = None
    FI_REASON = f"flashinfer not importable: {type(e).__name__}: {e}"
needs_fi = pytest.mark.skipif(flashinfer is None, reason=FI_REASON or "")

DT = {"float16": torch.float16, "bfloat16": torch.bfloat16}
ATOL = {"float16": 4e-3, "bfloat16": 2.5e-2}


def ws():
    return torch.empty(128 << 20, dtype=torch.uint8, device="cuda")


def rand(g, shape, dtype):
    return torch.randn(shape, generator=g, dtype=torch.float32).to(DT[dtype])


def np64(t):
    return t.detach().cpu().to(torch.float64).numpy()


def close(a, b, dtype, what="out"):
    a = np64(a) if isinstance(a, torch.Tensor) else a
    b = np64(b) if isinstance(b, torch.Tensor) else b
    err = float(np.max(np.abs(a - b))) if a.size else 0.0
    assert err <= ATOL[dtype], f"{what}: max |err| {err:.3g} > {ATOL[dtype]}"


def lse_close(a, b, tol=2e-3):
    a, b = np64(a), (np64(b) if isinstance(b, torch.Tensor) else b)
    assert np.array_equal(np.isneginf(a), np.isneginf(b))
    fin = np.isfinite(b)
    assert not fin.any() or float(np.max(np.abs(a[fin] - b[fin]))) <= tol


def paged_case(g, lens, page_size, hkv, d, layout, dtype, spare=2):
    """Host page tables and a CPU cache of random pages (copy it to CUDA to use it)."""
    pages = [(n + page_size - 1) // page_size for n in lens]
    num_pages = sum(pages) + spare
    perm = torch.randperm(num_pages, generator=g).to(torch.int32)
    indptr = torch.tensor(np.concatenate([[0], np.cumsum(pages)]), dtype=torch.int32)
    indices = perm[: int(indptr[-1])].clone()
    last = torch.tensor([(n - 1) % page_size + 1 for n in lens], dtype=torch.int32)
    shape = (num_pages, 2, page_size, hkv, d) if layout == "NHD" else (num_pages, 2, hkv, page_size, d)
    return rand(g, shape, dtype), indptr, indices, last


def request_kv(cache, indptr, indices, b, n, layout):
    """Request ``b``'s ``n`` tokens of the CPU cache as ``[n, 2, H, D]``."""
    pids = indices[int(indptr[b]):int(indptr[b + 1])].long()
    pages = cache[pids]  # NHD [np, 2, ps, H, D] / HND [np, 2, H, ps, D]
    if layout == "HND":
        pages = pages.transpose(2, 3)
    pages = pages.permute(0, 2, 1, 3, 4)  # [np, ps, 2, H, D]
    return pages.reshape(-1, *pages.shape[2:])[:n]


def reference(q, cache, indptr, indices, lens, page_size, layout):
    """float64 decode of every request (cache on the CPU)."""
    outs, lses = [], []
    for b, n in enumerate(lens):
        kv = request_kv(cache, indptr, indices, b, n, layout)
        o, l = attention(np64(q[b])[None], np64(kv[:, 0]), np64(kv[:, 1]))
        outs.append(o[0]), lses.append(l[0])
    return np.stack(outs), np.stack(lses)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("heads", [(4, 4), (8, 2), (32, 4), (48, 2)], ids=lambda h: f"g{h[0] // h[1]}")
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_decode_cuda_vs_reference(dtype, layout, page_size, heads, head_dim):
    """Batch decode on CUDA against the reference; group 24 runs on the prefill op (groups above
    the decode kernels' 16)."""
    g = torch.Generator().manual_seed(7 * page_size + head_dim)
    hq, hkv = heads
    lens = [1, page_size - 1 or 1, page_size, page_size + 1, 3 * page_size + 1, 300]
    cache, indptr, indices, last = paged_case(g, lens, page_size, hkv, head_dim, layout, dtype)
    q = rand(g, (len(lens), hq, head_dim), dtype)
    w = ferrinfer.BatchDecodeWithPagedKVCacheWrapper(ws(), kv_layout=layout)
    w.plan(indptr, indices, last, hq, hkv, head_dim, page_size, q_data_type=DT[dtype])
    cc = cache.cuda()
    out, lse = w.run(q.cuda(), cc, return_lse=True)
    assert out.is_cuda and lse.is_cuda
    ref, ref_lse = reference(q, cache, indptr, indices, lens, page_size, layout)
    close(out, ref, dtype)
    lse_close(lse, ref_lse)
    # The (k, v) tuple form reads the same memory; out given by the caller is written in place.
    out2 = torch.empty_like(out)
    w.run(q.cuda(), (cc[:, 0], cc[:, 1]), out=out2)
    close(out2, ref, dtype, "out (tuple cache)")
    # Re-plan into the same workspace with another batch.
    w.plan(indptr[:3], indices[: int(indptr[2])], last[:2], hq, hkv, head_dim, page_size, q_data_type=DT[dtype])
    out3 = w.run(q[:2].cuda(), cc)
    close(out3, ref[:2], dtype, "out (re-planned)")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("rope", [dict(), dict(rope_scale=2.0, rope_theta=5e5)], ids=["default", "scaled"])
def test_decode_rope_cuda_vs_reference(dtype, layout, head_dim, rope):
    """``pos_encoding_mode="ROPE_LLAMA"`` on CUDA: the reference rotates q (at ``kv_len - 1``)
    and K (key ``t`` at ``t``) in float64 first; the cache stays unrotated."""
    g = torch.Generator().manual_seed(head_dim)
    hq, hkv, ps = 8, 2, 16
    lens = [1, 15, 16, 17, 300, 2049]
    cache, indptr, indices, last = paged_case(g, lens, ps, hkv, head_dim, layout, dtype)
    q = rand(g, (len(lens), hq, head_dim), dtype)
    w = ferrinfer.BatchDecodeWithPagedKVCacheWrapper(ws(), kv_layout=layout)
    w.plan(indptr, indices, last, hq, hkv, head_dim, ps, q_data_type=DT[dtype], pos_encoding_mode="ROPE_LLAMA",
           **rope)
    cc = cache.cuda()
    out, lse = w.run(q.cuda(), cc, return_lse=True)
    outs, lses = [], []
    for b, n in enumerate(lens):
        kv = request_kv(cache, indptr, indices, b, n, layout)
        qr = rope_llama(np64(q[b])[None], [n - 1], **rope)
        kr = rope_llama(np64(kv[:, 0]), np.arange(n), **rope)
        o, l = attention(qr, kr, np64(kv[:, 1]))
        outs.append(o[0]), lses.append(l[0])
    close(out, np.stack(outs), dtype)
    lse_close(lse, np.stack(lses))
    # Single decode takes the same path.
    k0 = request_kv(cache, indptr, indices, 5, lens[5], layout)
    o1 = ferrinfer.single_decode_with_kv_cache(q[5].cuda(), k0[:, 0].contiguous().cuda(), k0[:, 1].contiguous().cuda(),
                                               pos_encoding_mode="ROPE_LLAMA", **rope)
    close(o1, outs[5], dtype, "single decode")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("causal", [False, True])
def test_prefill_rope_cuda_vs_reference(dtype, head_dim, causal):
    """The paged prefill wrapper with ``ROPE_LLAMA`` on CUDA (the 64-row tile's ``_rope``
    kernels): query token ``i`` at ``kv_len - qo_len + i``, key ``t`` at ``t``. The kernels
    rotate q and K tiles in shared memory and round them to the 16-bit type (FlashInfer's
    scheme), so the reference rounds the rotated rows the same way (unrounded, bf16's lse drifts
    by ~4e-3, past ``lse_close``'s bound)."""
    g = torch.Generator().manual_seed(head_dim + causal)
    hq, hkv, ps = 8, 2, 16
    kv_lens, qo_lens = [1, 17, 130, 700], [1, 9, 130, 64]
    cache, indptr, indices, last = paged_case(g, kv_lens, ps, hkv, head_dim, "NHD", dtype)
    qo_indptr = torch.tensor(np.concatenate([[0], np.cumsum(qo_lens)]), dtype=torch.int32)
    q = rand(g, (int(qo_indptr[-1]), hq, head_dim), dtype)
    w = ferrinfer.BatchPrefillWithPagedKVCacheWrapper(ws())
    w.plan(qo_indptr, indptr, indices, last, hq, hkv, head_dim, ps, causal=causal, q_data_type=DT[dtype],
           pos_encoding_mode="ROPE_LLAMA", rope_theta=1e4)
    out, lse = w.run(q.cuda(), cache.cuda(), return_lse=True)
    for b, (n, m) in enumerate(zip(qo_lens, kv_lens)):
        kv = request_kv(cache, indptr, indices, b, m, "NHD")
        qb = q[int(qo_indptr[b]):int(qo_indptr[b + 1])]
        qr = rope_llama(np64(qb), np.arange(m - n, m), rope_theta=1e4)
        kr = rope_llama(np64(kv[:, 0]), np.arange(m), rope_theta=1e4)
        qr, kr = (np64(torch.from_numpy(x).to(torch.float32).to(DT[dtype])) for x in (qr, kr))
        ref, ref_lse = attention(qr, kr, np64(kv[:, 1]), causal=causal)
        close(out[int(qo_indptr[b]):int(qo_indptr[b + 1])], ref, dtype, f"request {b}")
        lse_close(lse[int(qo_indptr[b]):int(qo_indptr[b + 1])], ref_lse)
        # The same request through single_prefill_with_kv_cache (one page of K/V, in place).
        o1 = ferrinfer.single_prefill_with_kv_cache(qb.cuda(), kv[:, 0].contiguous().cuda(),
                                                    kv[:, 1].contiguous().cuda(), causal=causal,
                                                    pos_encoding_mode="ROPE_LLAMA", rope_theta=1e4)
        close(o1, ref, dtype, f"single prefill, request {b}")


@needs_fi
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("heads", [(8, 8), (32, 8)], ids=lambda h: f"g{h[0] // h[1]}")
def test_decode_cuda_vs_flashinfer(dtype, layout, heads):
    g = torch.Generator().manual_seed(11)
    hq, hkv, d, ps = heads[0], heads[1], 128, 16
    lens = [1, 15, 16, 17, 49, 1000, 4097]
    cache, indptr, indices, last = paged_case(g, lens, ps, hkv, d, layout, dtype)
    q, cc = rand(g, (len(lens), hq, d), dtype).cuda(), cache.cuda()
    ours_w = ferrinfer.BatchDecodeWithPagedKVCacheWrapper(ws(), kv_layout=layout)
    ours_w.plan(indptr, indices, last, hq, hkv, d, ps, q_data_type=DT[dtype])
    ours, lse = ours_w.run(q, cc, return_lse=True)
    fi_w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(ws(), kv_layout=layout)
    fi_w.plan(indptr.cuda(), indices.cuda(), last.cuda(), hq, hkv, d, ps, q_data_type=DT[dtype])
    theirs, tlse = fi_w.run(q, cc, return_lse=True)
    close(ours, theirs, dtype)
    lse_close(lse, tlse)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_merges_cuda_vs_reference(dtype):
    g = torch.Generator().manual_seed(3)
    seq, n, h, d = 37, 3, 8, 128
    v = rand(g, (seq, n, h, d), dtype)
    s = torch.randn((seq, n, h), generator=g) * 4
    s[0, 1] = float("-inf")
    vc, sc = v.cuda(), s.cuda()
    out, lse = ferrinfer.merge_state(vc[:, 0].contiguous(), sc[:, 0].contiguous(), vc[:, 1].contiguous(),
                                     sc[:, 1].contiguous())
    ref, ref_s = merge(np64(v[:, 0]), np64(s[:, 0]), np64(v[:, 1]), np64(s[:, 1]))
    close(out, ref, dtype, "merge_state")
    lse_close(lse, ref_s)
    a, sa = vc[:, 0].contiguous(), sc[:, 0].contiguous()
    ferrinfer.merge_state_in_place(a, sa, vc[:, 1].contiguous(), sc[:, 1].contiguous())
    close(a, ref, dtype, "merge_state_in_place")
    lse_close(sa, ref_s)
    out, lse = ferrinfer.merge_states(vc, sc)
    r, rs = np64(v[:, 0]), np64(s[:, 0])
    for j in range(1, n):
        r, rs = merge(r, rs, np64(v[:, j]), np64(s[:, j]))
    close(out, r, dtype, "merge_states")
    lse_close(lse, rs)


def test_side_stream_ordering():
    """A producer kernel fills q on a side stream and ferrinfer runs on that stream: without
    the stream, ferrinfer would read q before it is written. The caller synchronises only the
    way torch users do (the side stream, before reading the result on the host)."""
    g = torch.Generator().manual_seed(5)
    dtype, layout, hq, hkv, d, ps = "float16", "NHD", 32, 8, 128, 16
    lens = [4096] * 32
    cache, indptr, indices, last = paged_case(g, lens, ps, hkv, d, layout, dtype)
    cc = cache.cuda()
    q_host = rand(g, (len(lens), hq, d), dtype)
    q_src = q_host.cuda()
    w = ferrinfer.BatchDecodeWithPagedKVCacheWrapper(ws(), kv_layout=layout)
    side = torch.cuda.Stream()
    torch.cuda.synchronize()
    with torch.cuda.stream(side):
        w.plan(indptr, indices, last, hq, hkv, d, ps, q_data_type=DT[dtype])
        q = torch.zeros_like(q_src)
        big = torch.randn(4096, 4096, device="cuda")
        for _ in range(8):  # keep the side stream busy so a misordered read would see zeros
            big = big @ big
            big = big / big.norm()
        q.copy_(q_src)
        out = w.run(q, cc)
    side.synchronize()
    ref, _ = reference(q_host, cache, indptr, indices, lens, ps, layout)
    close(out, ref, dtype, "out (side stream)")


@pytest.mark.parametrize("heads", [(32, 8), (48, 2)], ids=["g4", "g24"])
def test_cuda_graph_decode_replay(heads):
    """Capture one decode step of the CUDA-graph wrapper, then re-plan other batch contents
    (same sizes, other pages and lengths; then a smaller batch) and replay; group 24 on the
    prefill op's graph form."""
    g = torch.Generator().manual_seed(9)
    dtype, layout, d, ps = "float16", "NHD", 128, 16
    hq, hkv = heads
    max_batch, max_pages = 8, 8 * 64
    indptr_buf = torch.empty(max_batch + 1, dtype=torch.int32, device="cuda")
    indices_buf = torch.empty(max_pages, dtype=torch.int32, device="cuda")
    last_buf = torch.empty(max_batch, dtype=torch.int32, device="cuda")
    w = ferrinfer.CUDAGraphBatchDecodeWithPagedKVCacheWrapper(ws(), indptr_buf, indices_buf, last_buf,
                                                                kv_layout=layout)
    num_pages = max_pages + 4
    cache = rand(g, (num_pages, 2, ps, hkv, d), dtype)
    cc = cache.cuda()
    q = torch.empty(max_batch, hq, d, dtype=DT[dtype], device="cuda")
    out = torch.empty_like(q)

    def step(lens):
        pages = [(n + ps - 1) // ps for n in lens]
        indptr = torch.tensor(np.concatenate([[0], np.cumsum(pages)]), dtype=torch.int32)
        indices = torch.randperm(num_pages, generator=g)[: int(indptr[-1])].to(torch.int32)
        last = torch.tensor([(n - 1) % ps + 1 for n in lens], dtype=torch.int32)
        w.plan(indptr, indices, last, hq, hkv, d, ps, q_data_type=DT[dtype])
        qh = rand(g, (len(lens), hq, d), dtype)
        q[: len(lens)].copy_(qh)
        return qh, indptr, indices

    lens0 = [1, 17, 100, 1000, 16, 33, 512, 1024]
    step(lens0)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        w.run(q, cc, out=out)  # warm-up outside capture, as torch recommends
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        w.run(q, cc, out=out)
    for lens in ([900, 3, 64, 65, 1, 2, 300, 1024], [5, 1024, 7]):
        qh, indptr, indices = step(lens)
        graph.replay()
        torch.cuda.synchronize()
        ref, _ = reference(qh, cache, indptr, indices, lens, ps, layout)
        close(out[: len(lens)], ref, dtype, f"out (replay, batch {len(lens)})")


@pytest.mark.parametrize("masked", [False, True], ids=["causal", "custom_mask"])
def test_cuda_graph_prefill_replay(masked):
    """Capture one step of the paged prefill wrapper in CUDA-graph mode (FlashInfer's fixed
    ``*_buf`` arguments), then re-plan other batch contents — fewer query rows, other requests,
    pages and (with ``masked``) masks, as speculative-decoding verification does — and replay:
    every step matches the reference, and the fixed buffers hold the planned tables."""
    g = torch.Generator().manual_seed(11 + masked)
    dtype, layout, hq, hkv, d, ps = "float16", "NHD", 8, 2, 64, 16
    max_batch, max_pages, rows = 4, 64, 48
    i32 = dict(dtype=torch.int32, device="cuda")
    bufs = dict(qo_indptr_buf=torch.zeros(max_batch + 1, **i32), paged_kv_indptr_buf=torch.zeros(max_batch + 1, **i32),
                paged_kv_indices_buf=torch.zeros(max_pages, **i32),
                paged_kv_last_page_len_buf=torch.zeros(max_batch, **i32))
    if masked:
        bufs.update(custom_mask_buf=torch.zeros(1 << 14, dtype=torch.uint8, device="cuda"),
                    mask_indptr_buf=torch.zeros(max_batch + 1, **i32))
    w = ferrinfer.BatchPrefillWithPagedKVCacheWrapper(ws(), kv_layout=layout, use_cuda_graph=True, **bufs)
    num_pages = max_pages + 4
    cache = rand(g, (num_pages, 2, ps, hkv, d), dtype)
    cc = cache.cuda()
    q = torch.zeros(rows, hq, d, dtype=DT[dtype], device="cuda")
    out = torch.empty_like(q)

    def step(lens, qo_lens):
        pages = [(n + ps - 1) // ps for n in lens]
        indptr = torch.tensor(np.concatenate([[0], np.cumsum(pages)]), dtype=torch.int32)
        indices = torch.randperm(num_pages, generator=g)[: int(indptr[-1])].to(torch.int32)
        last = torch.tensor([(n - 1) % ps + 1 for n in lens], dtype=torch.int32)
        qo_indptr = torch.tensor(np.concatenate([[0], np.cumsum(qo_lens)]), dtype=torch.int32)
        masks = [torch.rand((a, b), generator=g) < 0.5 for a, b in zip(qo_lens, lens)] if masked else None
        flat = torch.cat([m.reshape(-1) for m in masks]) if masked else None
        w.plan(qo_indptr, indptr, indices, last, hq, hkv, d, ps, causal=True, q_data_type=DT[dtype],
               custom_mask=flat)
        assert torch.equal(bufs["paged_kv_indices_buf"][: indices.numel()].cpu(), indices)
        assert torch.equal(bufs["qo_indptr_buf"][: qo_indptr.numel()].cpu(), qo_indptr)
        qh = rand(g, (int(qo_indptr[-1]), hq, d), dtype)
        q[: qh.shape[0]].copy_(qh)
        refs = []
        for b, n in enumerate(lens):
            kv = request_kv(cache, indptr, indices, b, n, layout)
            r = slice(int(qo_indptr[b]), int(qo_indptr[b + 1]))
            o, _ = attention(np64(qh[r]), np64(kv[:, 0]), np64(kv[:, 1]), causal=not masked,
                             mask=masks[b].numpy() if masked else None)
            refs.append(o)
        return np.concatenate(refs)

    ref = step([300, 20, 48], [20, 20, 8])  # the first plan: 48 query rows, the most of any step
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        w.run(q, cc, out=out)  # warm-up outside capture, as torch recommends
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    close(out[: ref.shape[0]], ref, dtype, "out (eager, first plan)")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        w.run(q, cc, out=out)
    for lens, qo_lens in (([100, 7, 33, 500], [5, 7, 3, 30]), ([1000], [48]), ([16, 17], [16, 1])):
        ref = step(lens, qo_lens)
        graph.replay()
        torch.cuda.synchronize()
        close(out[: ref.shape[0]], ref, dtype, f"out (replay, {len(lens)} requests)")
    # More query rows than the first plan's, or a mask where the first plan had none (or the
    # reverse), would not be what the captured run replays.
    with pytest.raises(ValueError, match="query rows"):
        step([100], [49])
    with pytest.raises(ValueError, match="custom mask"):
        masked = not masked
        step([100], [4])


def test_wrong_device_and_mixes_raise():
    hq, hkv, d, ps = 8, 2, 64, 16
    w = ferrinfer.BatchDecodeWithPagedKVCacheWrapper(ws(), kv_layout="NHD")
    indptr, indices, last = torch.tensor([0, 1], dtype=torch.int32), torch.tensor([0], dtype=torch.int32), \
        torch.tensor([3], dtype=torch.int32)
    w.plan(indptr, indices, last, hq, hkv, d, ps, q_data_type=torch.float16)
    cache = torch.zeros(2, 2, ps, hkv, d, dtype=torch.float16, device="cuda")
    q = torch.zeros(1, hq, d, dtype=torch.float16, device="cuda")
    with pytest.raises(ValueError, match="k_cache: on device cpu"):
        w.run(q, cache.cpu())
    with pytest.raises(ValueError, match="out: on device cpu"):
        w.run(q, cache, out=torch.empty(1, hq, d, dtype=torch.float16))
    with pytest.raises(ValueError, match="page ids below"):
        w.run(q, cache[:0])
    with pytest.raises((TypeError, ValueError)):
        w.run(q.to(torch.bfloat16), cache.to(torch.bfloat16))
    if torch.cuda.device_count() > 1:
        with pytest.raises(ValueError, match="cuda:1"):
            w.run(q.to("cuda:1"), cache)
    cpu_w = ferrinfer.BatchDecodeWithPagedKVCacheWrapper(None, kv_layout="NHD")
    cpu_w.plan(indptr, indices, last, hq, hkv, d, ps, q_data_type=torch.float16)
    with pytest.raises(NotImplementedError, match="wrapper built for the CPU"):
        cpu_w.run(q, cache)
    with pytest.raises(NotImplementedError, match="float32 values on CUDA"):
        v = torch.zeros(3, 4, 64, device="cuda")
        s = torch.zeros(3, 4, device="cuda")
        ferrinfer.merge_state(v, s, v, s)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("cuda_tables", [False, True], ids=["host-tables", "cuda-tables"])
def test_append_cuda_matches_cpu_bit_for_bit(dtype, layout, cuda_tables):
    """The append is a copy: the CUDA path must write exactly what the CPU path writes."""
    g = torch.Generator().manual_seed(13)
    hkv, d, ps = 4, 128, 16
    lens = [1, 16, 17, 40]
    new = [1, 3, 17, 5]  # the last `new[b]` positions of request b are appended
    cache, indptr, indices, last = paged_case(g, lens, ps, hkv, d, layout, dtype)
    bi = torch.tensor([b for b, n in enumerate(new) for _ in range(n)], dtype=torch.int32)
    pos = torch.tensor([lens[b] - n + i for b, n in enumerate(new) for i in range(n)], dtype=torch.int32)
    k = rand(g, (len(bi), hkv, d), dtype)
    v = rand(g, (len(bi), hkv, d), dtype)
    ref = cache.clone()
    ferrinfer.append_paged_kv_cache(k, v, bi, pos, ref, indices, indptr, last, kv_layout=layout)
    cc = cache.cuda()
    tabs = [t.cuda() if cuda_tables else t for t in (bi, pos, indices, indptr, last)]
    ferrinfer.append_paged_kv_cache(k.cuda(), v.cuda(), tabs[0], tabs[1], (cc[:, 0], cc[:, 1]), tabs[2], tabs[3],
                                    tabs[4], kv_layout=layout)
    assert torch.equal(cc.cpu(), ref)
    bad = pos.clone()
    bad[-1] = lens[-1] + ps  # beyond the reserved pages
    with pytest.raises(ValueError, match="positions"):
        ferrinfer.append_paged_kv_cache(k.cuda(), v.cuda(), bi, bad, cc, indices, indptr, last, kv_layout=layout)


def ref_prefill(q, k, v, qo_indptr, kv_lens, causal):
    """float64 prefill per request; k/v lists of [kv_len, H, D] CPU tensors."""
    outs, lses = [], []
    for b in range(len(kv_lens)):
        qb = q[int(qo_indptr[b]):int(qo_indptr[b + 1])]
        o, l = attention(np64(qb), np64(k[b]), np64(v[b]), causal=causal)
        outs.append(o), lses.append(l)
    return np.concatenate(outs), np.concatenate(lses)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("heads", [(8, 8), (32, 8)], ids=lambda h: f"g{h[0] // h[1]}")
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
def test_prefill_cuda_vs_reference(dtype, layout, heads, head_dim, causal):
    g = torch.Generator().manual_seed(head_dim + causal)
    hq, hkv = heads
    ps = 16
    lens = [1, 16, 17, 100, 700]
    qo_lens = [1, 16, 5, 100, 300]
    cache, indptr, indices, last = paged_case(g, lens, ps, hkv, head_dim, layout, dtype)
    qo_indptr = torch.tensor(np.concatenate([[0], np.cumsum(qo_lens)]), dtype=torch.int32)
    q = rand(g, (int(qo_indptr[-1]), hq, head_dim), dtype)
    w = ferrinfer.BatchPrefillWithPagedKVCacheWrapper(ws(), kv_layout=layout)
    w.plan(qo_indptr, indptr, indices, last, hq, hkv, head_dim, ps, causal=causal, q_data_type=DT[dtype])
    out, lse = w.run(q.cuda(), cache.cuda(), return_lse=True)
    ks, vs = [], []
    for b, n in enumerate(lens):
        kv = request_kv(cache, indptr, indices, b, n, layout)
        ks.append(kv[:, 0]), vs.append(kv[:, 1])
    ref, ref_lse = ref_prefill(q, ks, vs, qo_indptr, lens, causal)
    close(out, ref, dtype, "paged prefill")
    lse_close(lse, ref_lse)
    # Ragged: the same K/V packed.
    kv_indptr = torch.tensor(np.concatenate([[0], np.cumsum(lens)]), dtype=torch.int32)
    rk, rv = torch.cat(ks).cuda(), torch.cat(vs).cuda()
    r = ferrinfer.BatchPrefillWithRaggedKVCacheWrapper(ws())
    r.plan(qo_indptr, kv_indptr, hq, hkv, head_dim, causal=causal, q_data_type=DT[dtype])
    out_r = r.run(q.cuda(), rk, rv)
    close(out_r, ref, dtype, "ragged prefill")
    if flashinfer is not None:
        fi = flashinfer.BatchPrefillWithPagedKVCacheWrapper(ws(), kv_layout=layout)
        fi.plan(qo_indptr.cuda(), indptr.cuda(), indices.cuda(), last.cuda(), hq, hkv, head_dim, ps,
                causal=causal, q_data_type=DT[dtype])
        close(out, fi.run(q.cuda(), cache.cuda()), dtype, "paged prefill vs FlashInfer")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_prefill_wrapper_replans_in_place(dtype):
    """One paged prefill wrapper, one workspace, successive steps of other shapes — plain, under a
    custom mask, plain again, each run before the next plan on the same stream. Non-causal
    throughout, so every plan goes to the same native op (a mask replaces ``causal``, which is
    part of the op): its plan is remade in place each time, masked after unmasked and back (the
    tables and the mask in the workspace), and every step matches the reference."""
    g = torch.Generator().manual_seed(7)
    hq, hkv, d, ps, layout = 8, 2, 64, 16, "NHD"
    w = ferrinfer.BatchPrefillWithPagedKVCacheWrapper(ws(), kv_layout=layout)
    steps = [([40, 300], [40, 17], None), ([9, 64, 200], [9, 1, 50], 0.5), ([1000], [128], None),
             ([33, 33], [33, 2], 0.3)]
    for i, (lens, qo_lens, density) in enumerate(steps):
        cache, indptr, indices, last = paged_case(g, lens, ps, hkv, d, layout, dtype)
        qo_indptr = torch.tensor(np.concatenate([[0], np.cumsum(qo_lens)]), dtype=torch.int32)
        q = rand(g, (int(qo_indptr[-1]), hq, d), dtype)
        masks = None if density is None else [torch.rand((a, b), generator=g) < density
                                              for a, b in zip(qo_lens, lens)]
        flat = None if masks is None else torch.cat([m.reshape(-1) for m in masks])
        w.plan(qo_indptr, indptr, indices, last, hq, hkv, d, ps, causal=False, q_data_type=DT[dtype],
               custom_mask=flat)
        out = w.run(q.cuda(), cache.cuda())
        refs = []
        for b, n in enumerate(lens):
            kv = request_kv(cache, indptr, indices, b, n, layout)
            rows = slice(int(qo_indptr[b]), int(qo_indptr[b + 1]))
            mask = None if masks is None else masks[b].numpy()
            o, _ = attention(np64(q[rows]), np64(kv[:, 0]), np64(kv[:, 1]), mask=mask)
            refs.append(o)
        close(out, np.concatenate(refs), dtype, f"step {i}")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("kv_len", [1, 17, 2049])
def test_single_cuda_vs_reference(dtype, layout, kv_len):
    g = torch.Generator().manual_seed(kv_len)
    hq, hkv, d = 32, 8, 128
    shape = (kv_len, hkv, d) if layout == "NHD" else (hkv, kv_len, d)
    k, v = rand(g, shape, dtype), rand(g, shape, dtype)
    nhd = (lambda t: t) if layout == "NHD" else (lambda t: t.transpose(0, 1))
    q = rand(g, (hq, d), dtype)
    out, lse = ferrinfer.single_decode_with_kv_cache(q.cuda(), k.cuda(), v.cuda(), kv_layout=layout,
                                                     return_lse=True)
    ref, ref_lse = attention(np64(q)[None], np64(nhd(k)), np64(nhd(v)))
    close(out, ref[0], dtype, "single decode")
    lse_close(lse, ref_lse[0])
    qo = min(kv_len, 33)
    qp = rand(g, (qo, hq, d), dtype)
    out, lse = ferrinfer.single_prefill_with_kv_cache(qp.cuda(), k.cuda(), v.cuda(), kv_layout=layout, causal=True,
                                                      return_lse=True)
    ref, ref_lse = attention(np64(qp), np64(nhd(k)), np64(nhd(v)), causal=True)
    close(out, ref, dtype, "single prefill")
    lse_close(lse, ref_lse)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("window_left", [-1, 40])
def test_custom_mask_cuda_vs_reference(dtype, head_dim, window_left):
    g = torch.Generator().manual_seed(head_dim + window_left)
    hq, hkv, ps, layout = 16, 4, 16, "NHD"
    lens, qo_lens = [9, 130, 64, 300], [9, 70, 1, 33]
    cache, indptr, indices, last = paged_case(g, lens, ps, hkv, head_dim, layout, dtype)
    qo_indptr = torch.tensor(np.concatenate([[0], np.cumsum(qo_lens)]), dtype=torch.int32)
    q = rand(g, (int(qo_indptr[-1]), hq, head_dim), dtype)
    masks = [torch.rand((a, b), generator=g) < 0.4 for a, b in zip(qo_lens, lens)]
    masks[1][5] = False  # a query row that attends nothing
    masks[3][:, 100:260] = False  # a wide empty band: whole key tiles skipped
    flat = torch.cat([m.reshape(-1) for m in masks])
    w = ferrinfer.BatchPrefillWithPagedKVCacheWrapper(ws(), kv_layout=layout)
    w.plan(qo_indptr, indptr, indices, last, hq, hkv, head_dim, ps, causal=True, q_data_type=DT[dtype],
           window_left=window_left, custom_mask=flat)
    out, lse = w.run(q.cuda(), cache.cuda(), return_lse=True)
    ks, vs, refs, ref_lses = [], [], [], []
    for b, n in enumerate(lens):
        kv = request_kv(cache, indptr, indices, b, n, layout)
        ks.append(kv[:, 0]), vs.append(kv[:, 1])
        rows = slice(int(qo_indptr[b]), int(qo_indptr[b + 1]))
        o, l_ = attention(np64(q[rows]), np64(kv[:, 0]), np64(kv[:, 1]), window_left=window_left,
                          mask=masks[b].numpy())
        refs.append(o), ref_lses.append(l_)
    ref, ref_lse = np.concatenate(refs), np.concatenate(ref_lses)
    close(out, ref, dtype, "masked paged prefill")
    lse_close(lse, ref_lse)
    # Ragged, with the packed form.
    kv_indptr = torch.tensor(np.concatenate([[0], np.cumsum(lens)]), dtype=torch.int32)
    sizes = torch.tensor(np.concatenate([[0], np.cumsum([m.numel() for m in masks])]), dtype=torch.int32)
    packed, _ = ferrinfer.segment_packbits(flat, sizes, bitorder="little")
    r = ferrinfer.BatchPrefillWithRaggedKVCacheWrapper(ws())
    r.plan(qo_indptr, kv_indptr, hq, hkv, head_dim, q_data_type=DT[dtype], window_left=window_left,
           packed_custom_mask=packed)
    close(r.run(q.cuda(), torch.cat(ks).cuda(), torch.cat(vs).cuda()), ref, dtype, "masked ragged prefill")
    # Single: request 3 alone.
    rows = slice(int(qo_indptr[3]), int(qo_indptr[4]))
    o1 = ferrinfer.single_prefill_with_kv_cache(q[rows].cuda(), ks[3].cuda(), vs[3].cuda(), custom_mask=masks[3],
                                                window_left=window_left)
    close(o1, refs[3], dtype, "masked single prefill")
    if flashinfer is not None:
        fi = flashinfer.BatchPrefillWithPagedKVCacheWrapper(ws(), kv_layout=layout)
        fi.plan(qo_indptr.cuda(), indptr.cuda(), indices.cuda(), last.cuda(), hq, hkv, head_dim, ps,
                q_data_type=DT[dtype], window_left=window_left, custom_mask=flat.cuda())
        close(out, fi.run(q.cuda(), cache.cuda()), dtype, "masked paged prefill vs FlashInfer")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cascade_cuda_vs_reference(dtype):
    g = torch.Generator().manual_seed(99)
    hq, hkv, d, ps = 32, 8, 128, 16
    qo_lens, own_lens, prefix_len = [1, 1, 5, 1], [3, 40, 17, 100], 1000
    num_pages = 200
    cache = rand(g, (num_pages, 2, ps, hkv, d), dtype)
    free = torch.randperm(num_pages, generator=g).tolist()

    def take(n):
        ids = [free.pop() for _ in range((n + ps - 1) // ps)]
        rows = cache[ids].permute(0, 2, 1, 3, 4).reshape(-1, 2, hkv, d)[:n]
        return ids, (n - 1) % ps + 1, rows

    prefix, own = take(prefix_len), [take(n) for n in own_lens]

    def tables(entries):
        qo = torch.tensor(np.concatenate([[0], np.cumsum([e[0] for e in entries])]), dtype=torch.int32)
        ip = torch.tensor(np.concatenate([[0], np.cumsum([len(e[1][0]) for e in entries])]), dtype=torch.int32)
        ix = torch.tensor([i for e in entries for i in e[1][0]], dtype=torch.int32)
        la = torch.tensor([e[1][1] for e in entries], dtype=torch.int32)
        return qo, ip, ix, la

    levels = [tables([(sum(qo_lens), prefix)]), tables(list(zip(qo_lens, own)))]
    q = rand(g, (sum(qo_lens), hq, d), dtype)
    w = ferrinfer.MultiLevelCascadeAttentionWrapper(2, ws())
    w.plan(*[[lv[i] for lv in levels] for i in range(4)], hq, hkv, d, ps, causal=True, q_data_type=DT[dtype])
    out = w.run(q.cuda(), cache.cuda())
    start = 0
    for b, n in enumerate(qo_lens):
        kv = torch.cat([prefix[2], own[b][2]])
        ref, _ = attention(np64(q[start:start + n]), np64(kv[:, 0]), np64(kv[:, 1]), causal=True)
        close(out[start:start + n], ref, dtype, f"cascade request {b}")
        start += n
    if flashinfer is not None:
        fi = flashinfer.MultiLevelCascadeAttentionWrapper(2, ws())
        fi.plan(*[[lv[i].cuda() for lv in levels] for i in range(4)], hq, hkv, d, ps, causal=True,
                q_data_type=DT[dtype])
        close(out, fi.run(q.cuda(), cache.cuda()), dtype, "cascade vs FlashInfer")


@pytest.mark.parametrize("fmt", ["float8_e4m3fn", "float8_e5m2"])
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_batch_decode_fp8_cache_on_cuda(fmt, layout, dtype):
    """An fp8 paged cache on CUDA (the CUDA-core fp8 decode kernel) read as code × scale,
    against the float64 reference fed the same dequantised K/V and against the CPU path on the
    same codes; then single decode on CUDA over one request's fp8 rows against the same
    reference. (The batch part passed on an H100 on 2026-12-07, all eight cases; the single part
    was added on 2026-12-08, not yet run on a GPU.)"""
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(11)
    hq, hkv, d, ps = 8, 2, 128, 16
    lens = [1, 15, 16, 17, 100, 0]
    pages = [(n + ps - 1) // ps for n in lens]
    n_pages = sum(pages) + 3
    perm = torch.randperm(n_pages, generator=g).to(torch.int32)
    indptr = np.concatenate([[0], np.cumsum(pages)]).astype(np.int32)
    indices = perm[: indptr[-1]].numpy().copy()
    last = np.array([(n - 1) % ps + 1 if n else 0 for n in lens], np.int32)
    shape = (n_pages, 2, ps, hkv, d) if layout == "NHD" else (n_pages, 2, hkv, ps, d)
    ft = getattr(torch, fmt)
    cache = torch.randn(shape, generator=g).to(ft)
    q = torch.randn((len(lens), hq, d), generator=g).to(dtype)
    ks, vs = 0.5, 1.75
    ws = torch.empty(128 << 20, dtype=torch.uint8, device=dev)
    w = ferrinfer.BatchDecodeWithPagedKVCacheWrapper(ws, kv_layout=layout)
    w.plan(indptr, indices, last, hq, hkv, d, ps, q_data_type=dtype, kv_data_type=ft)
    out, lse = w.run(q.to(dev), cache.to(dev), k_scale=ks, v_scale=vs, return_lse=True)
    torch.cuda.synchronize()
    cpu = ferrinfer.BatchDecodeWithPagedKVCacheWrapper(None, kv_layout=layout)
    cpu.plan(indptr, indices, last, hq, hkv, d, ps, q_data_type=dtype, kv_data_type=ft)
    out_cpu = cpu.run(q, cache, k_scale=ks, v_scale=vs)
    kf = cache.to(torch.float64)
    atol = (4e-3 if dtype == torch.float16 else 2.5e-2) * vs
    for b, n in enumerate(lens):
        rows = [(int(indices[indptr[b] + i // ps]), i % ps) for i in range(n)]
        pick = (lambda t, p, s: t[p, :, s] if layout == "HND" else t[p, s])
        k = torch.stack([pick(kf[:, 0], p, s) for p, s in rows]) if n else torch.zeros(0, hkv, d, dtype=torch.float64)
        v = torch.stack([pick(kf[:, 1], p, s) for p, s in rows]) if n else torch.zeros(0, hkv, d, dtype=torch.float64)
        ref, ref_lse = attention(q[b][None].to(torch.float64).numpy(), (k * ks).numpy(), (v * vs).numpy())
        err = (out[b].cpu().to(torch.float64).numpy() - ref[0])
        assert np.abs(err).max() <= atol, f"request {b}: {np.abs(err).max()}"
        err_cpu = (out[b].cpu().to(torch.float64) - out_cpu[b].to(torch.float64)).abs().max().item()
        assert err_cpu <= atol, f"request {b}: CUDA vs CPU {err_cpu}"
        fin = np.isfinite(ref_lse[0])
        assert np.array_equal(np.isfinite(lse[b].cpu().numpy()), fin)
    # Single decode on CUDA: the first page's 16 fp8 rows as one request's K/V (NHD [16, H, D]
    # or HND [H, 16, D], strided views of the cache).
    sk, sv = cache[0, 0], cache[0, 1]
    out1, lse1 = ferrinfer.single_decode_with_kv_cache(q[0].to(dev), sk.to(dev), sv.to(dev), kv_layout=layout,
                                                       k_scale=ks, v_scale=vs, return_lse=True)
    nhd = (lambda t: t) if layout == "NHD" else (lambda t: t.transpose(0, 1))
    ref, ref_lse = attention(q[0][None].to(torch.float64).numpy(), (nhd(sk).to(torch.float64) * ks).numpy(),
                             (nhd(sv).to(torch.float64) * vs).numpy())
    assert np.abs(out1.cpu().to(torch.float64).numpy() - ref[0]).max() <= atol
    assert np.abs(lse1.cpu().to(torch.float64).numpy() - ref_lse[0]).max() <= 2e-3


@pytest.mark.parametrize("fmt", ["float8_e4m3fn", "float8_e5m2"])
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_batch_prefill_fp8_cache_on_cuda(fmt, layout, head_dim, dtype):
    """Paged and ragged batch prefill over fp8 K/V on CUDA (the 64-row tile reading the codes),
    read as code × scale, against the float64 reference fed the same dequantised K/V and
    against the CPU path on the same codes; head dim 256 with fp8 is refused by name."""
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(head_dim + len(fmt))
    hq, hkv, d, ps = 8, 2, head_dim, 16
    lens = [1, 15, 16, 17, 100, 300]
    qo_lens = [1, 15, 3, 17, 64, 1]
    qo_indptr = np.concatenate([[0], np.cumsum(qo_lens)]).astype(np.int32)
    pages = [(n + ps - 1) // ps for n in lens]
    n_pages = sum(pages) + 3
    perm = torch.randperm(n_pages, generator=g).to(torch.int32)
    indptr = np.concatenate([[0], np.cumsum(pages)]).astype(np.int32)
    indices = perm[: indptr[-1]].numpy().copy()
    last = np.array([(n - 1) % ps + 1 for n in lens], np.int32)
    shape = (n_pages, 2, ps, hkv, d) if layout == "NHD" else (n_pages, 2, hkv, ps, d)
    ft = getattr(torch, fmt)
    cache = torch.randn(shape, generator=g).to(ft)
    q = torch.randn((int(qo_indptr[-1]), hq, d), generator=g).to(dtype)
    ks, vs = 0.5, 1.75
    atol = (4e-3 if dtype == torch.float16 else 2.5e-2) * vs
    plan = (qo_indptr, indptr, indices, last, hq, hkv, d, ps)
    w = ferrinfer.BatchPrefillWithPagedKVCacheWrapper(ws(), kv_layout=layout)
    w.plan(*plan, causal=True, q_data_type=dtype, kv_data_type=ft)
    out = torch.full_like(q.to(dev), float("nan"))
    lse = torch.full((q.shape[0], hq), float("nan"), device=dev)
    w.run(q.to(dev), cache.to(dev), k_scale=ks, v_scale=vs, out=out, lse=lse)
    cpu = ferrinfer.BatchPrefillWithPagedKVCacheWrapper(None, kv_layout=layout)
    cpu.plan(*plan, causal=True, q_data_type=dtype, kv_data_type=ft)
    out_cpu = cpu.run(q, cache, k_scale=ks, v_scale=vs)
    torch.cuda.synchronize()
    assert torch.isfinite(out).all() and not torch.isnan(lse).any(), "an output element was not written"
    kf = cache.to(torch.float64)
    pick = (lambda t, p, s: t[p, :, s] if layout == "HND" else t[p, s])
    ks_rows, vs_rows = [], []
    for b, n in enumerate(lens):
        rows = [(int(indices[indptr[b] + i // ps]), i % ps) for i in range(n)]
        k = torch.stack([pick(kf[:, 0], p, s) for p, s in rows])
        v = torch.stack([pick(kf[:, 1], p, s) for p, s in rows])
        ks_rows.append(k), vs_rows.append(v)
        rq = slice(int(qo_indptr[b]), int(qo_indptr[b + 1]))
        ref, ref_lse = attention(q[rq].to(torch.float64).numpy(), (k * ks).numpy(), (v * vs).numpy(), causal=True)
        err = np.abs(out[rq].cpu().to(torch.float64).numpy() - ref).max()
        assert err <= atol, f"request {b}: max |err| {err}"
        err_cpu = (out[rq].cpu().to(torch.float64) - out_cpu[rq].to(torch.float64)).abs().max().item()
        assert err_cpu <= atol, f"request {b}: CUDA vs CPU {err_cpu}"
        lse_err = np.abs(lse[rq].cpu().numpy() - ref_lse).max()
        assert lse_err <= 1e-2, f"request {b}: lse {lse_err}"
    # Ragged over the same K/V rows, packed and stored as codes again (exact: they are codes).
    k_rag = torch.cat(ks_rows).to(ft).to(dev)
    v_rag = torch.cat(vs_rows).to(ft).to(dev)
    kv_indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    r = ferrinfer.BatchPrefillWithRaggedKVCacheWrapper(ws())
    r.plan(qo_indptr, kv_indptr, hq, hkv, d, causal=True, q_data_type=dtype, kv_data_type=ft)
    out_r = r.run(q.to(dev), k_rag, v_rag, k_scale=ks, v_scale=vs)
    torch.cuda.synchronize()
    err = (out_r - out).abs().max().item()
    assert err <= atol, f"ragged vs paged {err}"
    if head_dim == 128:
        big = ferrinfer.BatchPrefillWithPagedKVCacheWrapper(ws(), kv_layout=layout)
        with pytest.raises(NotImplementedError, match="256|head"):
            big.plan(qo_indptr, indptr, indices, last, 4, 4, 256, ps, q_data_type=dtype, kv_data_type=ft)
