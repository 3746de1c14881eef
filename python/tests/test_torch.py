"""torch tensors, and FlashInfer itself as a second reference.

Skipped (with the reason) where torch is not installed — CI's CPU step installs numpy only.
On the GPU machine (python/tests/gpu_run.sh; torch 2.11, FlashInfer 0.7.2 in the system
Python) these run:

- torch CPU tensors (f16 and bf16, contiguous and strided views) through every wrapper,
  checked against the float64 reference;
- CUDA tensors in a wrapper built for the CPU raise ``NotImplementedError``, a CPU/CUDA mix
  raises ``ValueError`` naming the argument; never read as host memory (the CUDA path itself:
  test_cuda.py);
- with CUDA and ``import flashinfer``: the same inputs through FlashInfer's wrappers on the
  GPU, compared with ferrinfer's results on the CPU (outputs and base-2 lse).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (CI's CPU step runs numpy only)")

import ferrinfer  # noqa: E402
from reference import attention  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
try:
    import flashinfer  # noqa: E402

    FI_REASON = None
except Exception as e:  # ImportError, or a broken install
    flashinfer = None
    FI_REASON = f"flashinfer not importable: {type(e).__name__}: {e}"
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device visible to torch")
needs_fi = pytest.mark.skipif(not HAS_CUDA or flashinfer is None,
                              reason="no CUDA device" if not HAS_CUDA else (FI_REASON or ""))

DT = {"float16": torch.float16, "bfloat16": torch.bfloat16}
ATOL = {"float16": 4e-3, "bfloat16": 2.5e-2}


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


def paged_case(g, lens, page_size, hkv, d, layout, dtype):
    pages = [(n + page_size - 1) // page_size for n in lens]
    num_pages = sum(pages) + 2
    perm = torch.randperm(num_pages, generator=g).to(torch.int32)
    indptr = torch.tensor(np.concatenate([[0], np.cumsum(pages)]), dtype=torch.int32)
    indices = perm[: int(indptr[-1])].clone()
    last = torch.tensor([(n - 1) % page_size + 1 for n in lens], dtype=torch.int32)
    shape = (num_pages, 2, page_size, hkv, d) if layout == "NHD" else (num_pages, 2, hkv, page_size, d)
    return rand(g, shape, dtype), indptr, indices, last


def gather(cache, indptr, indices, lens, page_size, layout, b):
    rows_k, rows_v = [], []
    for i in range(lens[b]):
        p, s = int(indices[int(indptr[b]) + i // page_size]), i % page_size
        k = cache[p, 0, s] if layout == "NHD" else cache[p, 0, :, s]
        v = cache[p, 1, s] if layout == "NHD" else cache[p, 1, :, s]
        rows_k.append(k), rows_v.append(v)
    return torch.stack(rows_k), torch.stack(rows_v)


# --- torch CPU tensors against the float64 reference -------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_torch_cpu_single(dtype, layout):
    g = torch.Generator().manual_seed(0)
    q, k, v = rand(g, (8, 128), dtype), rand(g, (33, 2, 128), dtype), rand(g, (33, 2, 128), dtype)
    kl, vl = (k, v) if layout == "NHD" else (k.transpose(0, 1), v.transpose(0, 1))  # strided views
    out, lse = ferrinfer.single_decode_with_kv_cache(q, kl, vl, kv_layout=layout, return_lse=True,
                                                     logits_soft_cap=20.0)
    ref, ref_lse = attention(np64(q)[None], np64(k), np64(v), soft_cap=20.0)
    assert out.dtype == q.dtype and isinstance(out, torch.Tensor)
    close(out, ref[0], dtype)
    lse_close(lse, ref_lse[0])
    qp = rand(g, (9, 8, 128), dtype)
    out = ferrinfer.single_prefill_with_kv_cache(qp, kl, vl, kv_layout=layout, causal=True, window_left=5)
    ref, _ = attention(np64(qp), np64(k), np64(v), causal=True, window_left=5)
    close(out, ref, dtype)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_torch_cpu_paged(dtype, layout):
    g = torch.Generator().manual_seed(1)
    lens, ps = [1, 15, 16, 17, 40], 16
    cache, indptr, indices, last = paged_case(g, lens, ps, 2, 64, layout, dtype)
    q = rand(g, (len(lens), 8, 64), dtype)
    w = ferrinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(1, dtype=torch.uint8), kv_layout=layout)
    w.plan(indptr, indices, last, 8, 2, 64, ps, q_data_type=DT[dtype])
    out = w.run(q, cache)
    for b in range(len(lens)):
        k, v = gather(cache, indptr, indices, lens, ps, layout, b)
        ref, _ = attention(np64(q[b])[None], np64(k), np64(v))
        close(out[b], ref[0], dtype)


def test_cuda_tensors_in_a_cpu_wrapper_or_mixed_are_refused_by_name():
    if not HAS_CUDA:
        pytest.skip("no CUDA device visible to torch")
    q = torch.zeros(1, 4, 64, dtype=torch.float16, device="cuda")
    w = ferrinfer.BatchDecodeWithPagedKVCacheWrapper(None)
    w.plan(torch.tensor([0, 1]), torch.tensor([0]), torch.tensor([1]), 4, 4, 64, 16)
    cache = torch.zeros(1, 2, 16, 4, 64, dtype=torch.float16, device="cuda")
    with pytest.raises(NotImplementedError, match="wrapper built for the CPU"):
        w.run(q, cache)
    kv = torch.zeros(3, 4, 64, dtype=torch.float16, device="cuda")
    cpu = torch.zeros(3, 4, 64, dtype=torch.float16)
    with pytest.raises(ValueError, match="k: on device cuda:0 but this call runs on the CPU"):
        ferrinfer.single_decode_with_kv_cache(q[0].cpu(), kv, cpu)


# --- ferrinfer (CPU) against FlashInfer (GPU) on the same inputs --------------------------------


def workspace():
    return torch.empty(128 << 20, dtype=torch.uint8, device="cuda")


@needs_fi
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("heads", [(4, 4), (8, 2), (8, 1)], ids=lambda h: f"g{h[0] // h[1]}")
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("opts", [dict(), dict(logits_soft_cap=30.0), dict(window_left=20)],
                         ids=["plain", "softcap", "window"])
def test_vs_flashinfer_single(dtype, layout, heads, head_dim, opts):
    g = torch.Generator().manual_seed(head_dim)
    hq, hkv = heads
    q = rand(g, (hq, head_dim), dtype)
    k, v = rand(g, (77, hkv, head_dim), dtype), rand(g, (77, hkv, head_dim), dtype)
    if layout == "HND":
        k, v = k.transpose(0, 1).contiguous(), v.transpose(0, 1).contiguous()
    ours = ferrinfer.single_decode_with_kv_cache(q, k, v, kv_layout=layout, **opts)
    theirs = flashinfer.single_decode_with_kv_cache(q.cuda(), k.cuda(), v.cuda(), kv_layout=layout, **opts)
    close(ours, theirs, dtype)
    qp = rand(g, (31, hq, head_dim), dtype)
    ours, lse = ferrinfer.single_prefill_with_kv_cache(qp, k, v, kv_layout=layout, causal=True, return_lse=True, **opts)
    theirs, tlse = flashinfer.single_prefill_with_kv_cache(qp.cuda(), k.cuda(), v.cuda(), kv_layout=layout,
                                                           causal=True, return_lse=True, **opts)
    close(ours, theirs, dtype)
    lse_close(lse, tlse)


@needs_fi
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("heads", [(4, 4), (8, 2), (32, 4)], ids=lambda h: f"g{h[0] // h[1]}")
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_vs_flashinfer_paged(dtype, layout, page_size, heads, head_dim):
    g = torch.Generator().manual_seed(page_size * 1000 + head_dim)
    hq, hkv = heads
    lens = [1, page_size - 1 or 1, page_size, page_size + 1, 3 * page_size + 1, 100]
    cache, indptr, indices, last = paged_case(g, lens, page_size, hkv, head_dim, layout, dtype)
    q = rand(g, (len(lens), hq, head_dim), dtype)
    ours_w = ferrinfer.BatchDecodeWithPagedKVCacheWrapper(None, kv_layout=layout)
    ours_w.plan(indptr, indices, last, hq, hkv, head_dim, page_size, q_data_type=DT[dtype])
    ours, lse = ours_w.run(q, cache, return_lse=True)
    fi_w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace(), kv_layout=layout)
    fi_w.plan(indptr.cuda(), indices.cuda(), last.cuda(), hq, hkv, head_dim, page_size, q_data_type=DT[dtype])
    theirs, tlse = fi_w.run(q.cuda(), cache.cuda(), return_lse=True)
    close(ours, theirs, dtype)
    lse_close(lse, tlse)
    # Paged prefill: per request 1 token, its whole length, or half of it (append), causal.
    qo_lens = [[1, n, max(1, n // 2)][i % 3] for i, n in enumerate(lens)]
    qo_indptr = torch.tensor(np.concatenate([[0], np.cumsum(qo_lens)]), dtype=torch.int32)
    qp = rand(g, (int(qo_indptr[-1]), hq, head_dim), dtype)
    ours_p = ferrinfer.BatchPrefillWithPagedKVCacheWrapper(None, kv_layout=layout)
    ours_p.plan(qo_indptr, indptr, indices, last, hq, hkv, head_dim, page_size, causal=True, q_data_type=DT[dtype])
    ours = ours_p.run(qp, cache)
    fi_p = flashinfer.BatchPrefillWithPagedKVCacheWrapper(workspace(), kv_layout=layout)
    fi_p.plan(qo_indptr.cuda(), indptr.cuda(), indices.cuda(), last.cuda(), hq, hkv, head_dim, page_size,
              causal=True, q_data_type=DT[dtype])
    theirs = fi_p.run(qp.cuda(), cache.cuda())
    close(ours, theirs, dtype)


@needs_fi
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_vs_flashinfer_ragged_append_merge(dtype):
    g = torch.Generator().manual_seed(7)
    kv_lens, qo_lens = [1, 16, 17, 64], [1, 16, 5, 64]
    qo_indptr = torch.tensor(np.concatenate([[0], np.cumsum(qo_lens)]), dtype=torch.int32)
    kv_indptr = torch.tensor(np.concatenate([[0], np.cumsum(kv_lens)]), dtype=torch.int32)
    q = rand(g, (int(qo_indptr[-1]), 8, 128), dtype)
    k, v = rand(g, (int(kv_indptr[-1]), 2, 128), dtype), rand(g, (int(kv_indptr[-1]), 2, 128), dtype)
    ow = ferrinfer.BatchPrefillWithRaggedKVCacheWrapper(None)
    ow.plan(qo_indptr, kv_indptr, 8, 2, 128, causal=True, q_data_type=DT[dtype])
    fw = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(workspace())
    fw.plan(qo_indptr.cuda(), kv_indptr.cuda(), 8, 2, 128, causal=True, q_data_type=DT[dtype])
    ours, lse = ow.run(q, k, v, return_lse=True)
    theirs, tlse = fw.run(q.cuda(), k.cuda(), v.cuda(), return_lse=True)
    close(ours, theirs, dtype)
    lse_close(lse, tlse)
    # Append: the same rows into copies of one cache, by both libraries.
    lens, ps = [3, 20], 16
    cache, indptr, indices, last = paged_case(g, lens, ps, 2, 128, "NHD", dtype)
    new = [2, 4]
    append_indptr = torch.tensor([0, 2, 6], dtype=torch.int32)
    seq_lens = ferrinfer.get_seq_lens(indptr, last, ps)
    batch, pos = ferrinfer.get_batch_indices_positions(append_indptr, seq_lens, sum(new))
    ak, av = rand(g, (6, 2, 128), dtype), rand(g, (6, 2, 128), dtype)
    gpu_cache = cache.cuda()
    ferrinfer.append_paged_kv_cache(ak, av, batch, pos, cache, indices, indptr, last)
    flashinfer.append_paged_kv_cache(ak.cuda(), av.cuda(), batch.cuda(), pos.cuda(), gpu_cache, indices.cuda(),
                                     indptr.cuda(), last.cuda())
    assert torch.equal(cache, gpu_cache.cpu())
    # Merges.
    va, vb = rand(g, (9, 4, 128), dtype), rand(g, (9, 4, 128), dtype)
    sa, sb = torch.randn(9, 4, generator=g) * 3, torch.randn(9, 4, generator=g) * 3
    ov, os_ = ferrinfer.merge_state(va, sa, vb, sb)
    tv, ts = flashinfer.merge_state(va.cuda(), sa.cuda(), vb.cuda(), sb.cuda())
    close(ov, tv, dtype)
    lse_close(os_, ts)
    vs, ss = rand(g, (9, 5, 4, 128), dtype), torch.randn(9, 5, 4, generator=g) * 3
    ov, os_ = ferrinfer.merge_states(vs, ss)
    tv, ts = flashinfer.merge_states(vs.cuda(), ss.cuda())
    close(ov, tv, dtype)
    lse_close(os_, ts)
