"""single_decode_with_kv_cache and single_prefill_with_kv_cache against the float64 reference."""

import numpy as np
import pytest

import ferrinfer as flashinfer
from conftest import ALL_DTYPES, assert_close, assert_lse, randn, to_layout
from reference import attention

HEADS = [(4, 4), (8, 2), (8, 1)]  # GQA groups 1, 4, 8


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("heads", HEADS, ids=lambda h: f"g{h[0] // h[1]}")
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("kv_len", [1, 15, 16, 17, 100])
def test_single_decode(dtype, head_dim, heads, layout, kv_len):
    rng = np.random.default_rng(kv_len * 7 + head_dim)
    hq, hkv = heads
    q = randn(rng, (hq, head_dim), dtype)
    k, v = randn(rng, (kv_len, hkv, head_dim), dtype), randn(rng, (kv_len, hkv, head_dim), dtype)
    out, lse = flashinfer.single_decode_with_kv_cache(q, to_layout(k, layout), to_layout(v, layout),
                                                      kv_layout=layout, return_lse=True)
    ref, ref_lse = attention(q[None], k, v)
    assert out.dtype == q.dtype and out.shape == q.shape and lse.shape == (hq,)
    assert_close(out, ref[0], dtype)
    assert_lse(lse, ref_lse[0])


OPTIONS = [
    dict(),
    dict(sm_scale=0.3),
    dict(logits_soft_cap=5.0),
    dict(window_left=7),
    dict(window_left=0, logits_soft_cap=30.0, sm_scale=0.1),
]


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "plain")
def test_single_decode_options(dtype, opts):
    rng = np.random.default_rng(1)
    q, k, v = randn(rng, (8, 64), dtype), randn(rng, (40, 2, 64), dtype), randn(rng, (40, 2, 64), dtype)
    out = flashinfer.single_decode_with_kv_cache(q, k, v, **opts)
    ref, _ = attention(q[None], k, v, sm_scale=opts.get("sm_scale"), soft_cap=opts.get("logits_soft_cap"),
                       window_left=opts.get("window_left", -1))
    assert_close(out, ref[0], dtype)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("heads", HEADS, ids=lambda h: f"g{h[0] // h[1]}")
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lens", [(1, 1), (1, 17), (16, 16), (7, 33)], ids=lambda l: f"q{l[0]}kv{l[1]}")
def test_single_prefill(dtype, head_dim, heads, layout, causal, lens):
    rng = np.random.default_rng(lens[0] * 31 + lens[1] + head_dim)
    (hq, hkv), (lq, lk) = heads, lens
    q = randn(rng, (lq, hq, head_dim), dtype)
    k, v = randn(rng, (lk, hkv, head_dim), dtype), randn(rng, (lk, hkv, head_dim), dtype)
    out, lse = flashinfer.single_prefill_with_kv_cache(q, to_layout(k, layout), to_layout(v, layout),
                                                       causal=causal, kv_layout=layout, return_lse=True)
    ref, ref_lse = attention(q, k, v, causal=causal)
    assert out.shape == q.shape and lse.shape == (lq, hq)
    assert_close(out, ref, dtype)
    assert_lse(lse, ref_lse)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "plain")
@pytest.mark.parametrize("causal", [False, True])
def test_single_prefill_options(dtype, opts, causal):
    rng = np.random.default_rng(2)
    q, k, v = randn(rng, (9, 4, 64), dtype), randn(rng, (30, 2, 64), dtype), randn(rng, (30, 2, 64), dtype)
    out = flashinfer.single_prefill_with_kv_cache(q, k, v, causal=causal, **opts)
    ref, _ = attention(q, k, v, causal=causal, sm_scale=opts.get("sm_scale"),
                       soft_cap=opts.get("logits_soft_cap"), window_left=opts.get("window_left", -1))
    assert_close(out, ref, dtype)


def test_strided_kv_views_are_read_in_place():
    """K and V as views of one fused array (non-contiguous rows, contiguous heads)."""
    rng = np.random.default_rng(3)
    q = randn(rng, (4, 64), "float16")
    fused = randn(rng, (20, 2, 2, 64), "float16")  # [L, k|v, Hkv, D]
    k, v = fused[:, 0], fused[:, 1]
    out = flashinfer.single_decode_with_kv_cache(q, k, v)
    ref, _ = attention(q[None], np.ascontiguousarray(k), np.ascontiguousarray(v))
    assert_close(out, ref[0], "float16")
    pout = flashinfer.single_prefill_with_kv_cache(q[None], k, v)
    assert_close(pout, ref, "float16")
