"""BatchPrefillWithPagedKVCacheWrapper and BatchPrefillWithRaggedKVCacheWrapper."""

import numpy as np
import pytest

import ferrinfer as flashinfer
from conftest import ALL_DTYPES, Paged, assert_close, assert_lse, kv_lens_for, randn
from reference import attention

HEADS = [(4, 4), (8, 2), (8, 1)]


def qo_lens_for(kv_lens, rng):
    """Per request 1 token (decode-like), the whole context (prefill) or a chunk (append)."""
    choices = []
    for i, n in enumerate(kv_lens):
        choices.append([1, n, max(1, n // 2)][i % 3])
    return choices


def run_reference(q, qo_indptr, kvs, **opts):
    outs, lses = [], []
    for b, (k, v) in enumerate(kvs):
        o, l = attention(q[qo_indptr[b]:qo_indptr[b + 1]], k, v, **opts)
        outs.append(o), lses.append(l)
    return np.concatenate(outs), np.concatenate(lses)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("heads", HEADS, ids=lambda h: f"g{h[0] // h[1]}")
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("causal", [False, True])
def test_paged_prefill(dtype, head_dim, heads, layout, page_size, causal):
    rng = np.random.default_rng(head_dim * 3 + page_size)
    hq, hkv = heads
    lens = kv_lens_for(page_size)
    qo_lens = qo_lens_for(lens, rng)
    qo_indptr = np.concatenate([[0], np.cumsum(qo_lens)]).astype(np.int32)
    paged = Paged(rng, lens, page_size, hkv, head_dim, layout, dtype, "single" if causal else "tuple")
    q = randn(rng, (int(qo_indptr[-1]), hq, head_dim), dtype)
    w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(None, kv_layout=layout)
    w.plan(qo_indptr, paged.indptr, paged.indices, paged.last, hq, hkv, head_dim, page_size,
           causal=causal, q_data_type=dtype)
    out, lse = w.run(q, paged.cache, return_lse=True)
    ref, ref_lse = run_reference(q, qo_indptr, [paged.kv(b) for b in range(len(lens))], causal=causal)
    assert_close(out, ref, dtype)
    assert_lse(lse, ref_lse)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("opts", [dict(logits_soft_cap=8.0), dict(window_left=3), dict(sm_scale=0.5, window_left=20)],
                         ids=["softcap", "window", "scale+window"])
@pytest.mark.parametrize("causal", [False, True])
def test_paged_prefill_options(dtype, opts, causal):
    rng = np.random.default_rng(7)
    lens = [5, 33, 64]
    qo_lens = [5, 10, 1]
    qo_indptr = np.concatenate([[0], np.cumsum(qo_lens)]).astype(np.int32)
    paged = Paged(rng, lens, 16, 2, 64, "NHD", dtype)
    q = randn(rng, (int(qo_indptr[-1]), 4, 64), dtype)
    w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(None)
    w.plan(qo_indptr, paged.indptr, paged.indices, paged.last, 4, 2, 64, 16, causal=causal, q_data_type=dtype, **opts)
    out = w.run(q, paged.cache)
    ref, _ = run_reference(q, qo_indptr, [paged.kv(b) for b in range(3)], causal=causal,
                           sm_scale=opts.get("sm_scale"), soft_cap=opts.get("logits_soft_cap"),
                           window_left=opts.get("window_left", -1))
    assert_close(out, ref, dtype)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("heads", HEADS, ids=lambda h: f"g{h[0] // h[1]}")
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("opts", [dict(), dict(logits_soft_cap=20.0, window_left=9)], ids=["plain", "softcap+window"])
def test_ragged_prefill(dtype, head_dim, heads, causal, opts):
    rng = np.random.default_rng(head_dim + 11)
    hq, hkv = heads
    kv_lens = [1, 15, 16, 17, 40]
    qo_lens = [1, 15, 3, 17, 1]
    qo_indptr = np.concatenate([[0], np.cumsum(qo_lens)]).astype(np.int32)
    kv_indptr = np.concatenate([[0], np.cumsum(kv_lens)]).astype(np.int32)
    q = randn(rng, (int(qo_indptr[-1]), hq, head_dim), dtype)
    k = randn(rng, (int(kv_indptr[-1]), hkv, head_dim), dtype)
    v = randn(rng, (int(kv_indptr[-1]), hkv, head_dim), dtype)
    w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(None)
    w.plan(qo_indptr, kv_indptr, hq, hkv, head_dim, causal=causal, q_data_type=dtype, **opts)
    out, lse = w.run(q, k, v, return_lse=True)
    kvs = [(k[kv_indptr[b]:kv_indptr[b + 1]], v[kv_indptr[b]:kv_indptr[b + 1]]) for b in range(len(kv_lens))]
    ref, ref_lse = run_reference(q, qo_indptr, kvs, causal=causal, soft_cap=opts.get("logits_soft_cap"),
                                 window_left=opts.get("window_left", -1))
    assert_close(out, ref, dtype)
    assert_lse(lse, ref_lse)
