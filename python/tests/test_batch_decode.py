"""BatchDecodeWithPagedKVCacheWrapper and its CUDA-graph variant over paged caches."""

import numpy as np
import pytest

import ferrinfer as flashinfer
from conftest import ALL_DTYPES, Paged, assert_close, assert_lse, kv_lens_for, randn
from reference import attention

HEADS = [(4, 4), (8, 2), (8, 1)]


def reference(paged, q, **opts):
    outs, lses = [], []
    for b in range(len(paged.kv_lens)):
        k, v = paged.kv(b)  # [kv_len, Hkv, D] in either layout
        o, l = attention(q[b][None], k, v, **opts)
        outs.append(o[0]), lses.append(l[0])
    return np.stack(outs), np.stack(lses)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("heads", HEADS, ids=lambda h: f"g{h[0] // h[1]}")
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("form", ["single", "tuple"])
def test_batch_decode(dtype, head_dim, heads, layout, page_size, form):
    rng = np.random.default_rng(head_dim + page_size)
    hq, hkv = heads
    lens = kv_lens_for(page_size)
    paged = Paged(rng, lens, page_size, hkv, head_dim, layout, dtype, form)
    q = randn(rng, (len(lens), hq, head_dim), dtype)
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(np.empty(1 << 10, np.uint8), kv_layout=layout)
    w.plan(paged.indptr, paged.indices, paged.last, hq, hkv, head_dim, page_size, q_data_type=dtype)
    out, lse = w.run(q, paged.cache, return_lse=True)
    ref, ref_lse = reference(paged, q)
    assert_close(out, ref, dtype)
    assert_lse(lse, ref_lse)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("opts", [dict(logits_soft_cap=10.0), dict(window_left=5), dict(sm_scale=0.2, window_left=17)],
                         ids=["softcap", "window", "scale+window"])
@pytest.mark.parametrize("batch", [1, 5, 17])
def test_batch_decode_options(dtype, opts, batch):
    rng = np.random.default_rng(batch)
    lens = list(rng.integers(1, 70, size=batch))
    paged = Paged(rng, lens, 16, 2, 64, "NHD", dtype)
    q = randn(rng, (batch, 8, 64), dtype)
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(None)
    w.plan(paged.indptr, paged.indices, paged.last, 8, 2, 64, 16, q_data_type=dtype, **opts)
    out = np.zeros_like(q)
    res = w.run(q, paged.cache, out=out)
    assert res is out
    ref, _ = reference(paged, q, sm_scale=opts.get("sm_scale"), soft_cap=opts.get("logits_soft_cap"),
                       window_left=opts.get("window_left", -1))
    assert_close(out, ref, dtype)


def test_cuda_graph_wrapper_fills_its_buffers_and_replays():
    """The graph form keeps its tables in fixed buffers; re-planning a smaller batch into the
    same buffers and running again gives that batch's result."""
    rng = np.random.default_rng(5)
    bufs = (np.zeros(9, np.int32), np.zeros(64, np.int32), np.zeros(8, np.int32))
    w = flashinfer.CUDAGraphBatchDecodeWithPagedKVCacheWrapper(None, *bufs, kv_layout="HND")
    assert w.is_cuda_graph_enabled
    for lens in ([3, 40, 16], [17]):
        paged = Paged(rng, lens, 16, 1, 128, "HND", "float16")
        q = randn(rng, (len(lens), 4, 128), "float16")
        w.plan(paged.indptr, paged.indices, paged.last, 4, 1, 128, 16)
        assert np.array_equal(bufs[0][: len(lens) + 1], paged.indptr)
        assert np.array_equal(bufs[1][: paged.indices.size], paged.indices)
        out = w.run(q, paged.cache)
        ref, _ = reference(paged, q)
        assert_close(out, ref, "float16")
    with pytest.raises(ValueError, match="indptr"):
        paged = Paged(rng, [1] * 9, 16, 1, 128, "HND", "float16")
        w.plan(paged.indptr, paged.indices, paged.last, 4, 1, 128, 16)


def test_empty_request_gives_zero_and_minus_inf():
    rng = np.random.default_rng(6)
    paged = Paged(rng, [0, 5], 4, 1, 64, "NHD", "float16")
    q = randn(rng, (2, 2, 64), "float16")
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(None)
    w.plan(paged.indptr, paged.indices, paged.last, 2, 1, 64, 4)
    out, lse = w.run(q, paged.cache, return_lse=True)
    assert np.all(out[0] == 0) and np.all(np.isneginf(lse[0]))
