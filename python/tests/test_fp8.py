"""fp8 K/V caches (``float8_e4m3fn``, ``float8_e5m2``) in the decode functions on the CPU: K/V
read as code × ``k_scale`` / ``v_scale``, checked against the float64 reference fed the same
dequantised K/V (so the bound measures the kernel, not the format: the 16-bit output bound
scaled by ``v_scale``, the outputs' magnitude), and every refusal."""

import numpy as np
import pytest

import ferrinfer as flashinfer
from conftest import ALL_DTYPES, ATOL, Paged, assert_lse, kv_lens_for, randn, to_layout
from reference import attention, f64

ml_dtypes = pytest.importorskip("ml_dtypes")
FP8 = {"e4m3": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2}
SCALES = [(1.0, 1.0), (0.5, 2.0), (3.0, 0.25)]


def assert_close_scaled(ours, ref, dtype, v_scale):
    ours = np.asarray(ours).astype(np.float32).astype(np.float64)
    bound = ATOL[dtype] * max(1.0, v_scale)
    err = np.max(np.abs(ours - ref)) if ref.size else 0.0
    assert err <= bound, f"out: max |err| {err:.3g} > {bound}"


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("fmt", list(FP8))
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("heads", [(4, 4), (8, 2), (8, 1)], ids=lambda h: f"g{h[0] // h[1]}")
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("scales", SCALES, ids=lambda s: f"k{s[0]}v{s[1]}")
def test_single_decode_fp8(dtype, fmt, head_dim, heads, layout, scales):
    rng = np.random.default_rng(head_dim * 7 + heads[1])
    hq, hkv = heads
    kv_len = int(rng.integers(1, 300))
    q = randn(rng, (hq, head_dim), dtype)
    k = rng.standard_normal((kv_len, hkv, head_dim)).astype(np.float32).astype(FP8[fmt])
    v = rng.standard_normal((kv_len, hkv, head_dim)).astype(np.float32).astype(FP8[fmt])
    ks, vs = scales
    out, lse = flashinfer.single_decode_with_kv_cache(
        q, to_layout(k, layout), to_layout(v, layout), kv_layout=layout, k_scale=ks, v_scale=vs,
        return_lse=True)
    ref, ref_lse = attention(q[None], f64(k) * ks, f64(v) * vs)
    assert_close_scaled(out, ref[0], dtype, vs)
    assert_lse(lse, ref_lse[0])


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("fmt", list(FP8))
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("form", ["single", "tuple"])
def test_batch_decode_fp8(dtype, fmt, layout, page_size, form):
    rng = np.random.default_rng(page_size + len(fmt))
    hq, hkv, d = 8, 2, 128
    lens = kv_lens_for(page_size) + [0]
    paged = Paged(rng, lens, page_size, hkv, d, layout, dtype, form)
    # The same random pages stored as fp8 codes.
    c = paged.cache
    paged.cache = c.astype(FP8[fmt]) if isinstance(c, np.ndarray) else tuple(x.astype(FP8[fmt]) for x in c)
    q = randn(rng, (len(lens), hq, d), dtype)
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(None, kv_layout=layout)
    w.plan(paged.indptr, paged.indices, paged.last, hq, hkv, d, page_size, q_data_type=dtype,
           kv_data_type=np.dtype(FP8[fmt]).name, logits_soft_cap=20.0)
    ks, vs = 0.75, 1.5
    out, lse = w.run(q, paged.cache, k_scale=ks, v_scale=vs, return_lse=True)
    for b in range(len(lens)):
        k, v = paged.kv(b)  # [kv_len, Hkv, D] rows in either layout
        o, l = attention(q[b][None], f64(k) * ks, f64(v) * vs, soft_cap=20.0)
        assert_close_scaled(out[b][None], o, dtype, vs)
        assert_lse(lse[b][None], l)


def test_fp8_refusals():
    rng = np.random.default_rng(3)
    q = randn(rng, (4, 64), "float16")
    k = rng.standard_normal((9, 2, 64)).astype(np.float32).astype(FP8["e4m3"])
    v = k.copy()
    # Scales must be finite and > 0.
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="scale"):
            flashinfer.single_decode_with_kv_cache(q, k, v, k_scale=bad)
        with pytest.raises(ValueError, match="scale"):
            flashinfer.single_decode_with_kv_cache(q, k, v, v_scale=bad)
    # K and V of different types, fp8 queries, RoPE over fp8 keys, scales with 16-bit K/V.
    with pytest.raises(TypeError, match="v"):
        flashinfer.single_decode_with_kv_cache(q, k, v.astype(FP8["e5m2"]))
    with pytest.raises(TypeError, match="q"):
        flashinfer.single_decode_with_kv_cache(q.astype(FP8["e4m3"]), k, v)
    with pytest.raises(NotImplementedError, match="ROPE_LLAMA"):
        flashinfer.single_decode_with_kv_cache(q, k, v, pos_encoding_mode="ROPE_LLAMA")
    k16 = k.astype(np.float16)
    with pytest.raises(NotImplementedError, match="k_scale"):
        flashinfer.single_decode_with_kv_cache(q, k16, k16, k_scale=2.0)
    with pytest.raises(NotImplementedError, match="q_scale"):
        flashinfer.single_decode_with_kv_cache(q, k, v, q_scale=2.0)
    # Scales of 1 with a 16-bit cache are FlashInfer's defaults: accepted.
    flashinfer.single_decode_with_kv_cache(q, k16, k16, k_scale=1.0, v_scale=1.0)
    # A wrapper planned for 16-bit K/V refuses an fp8 cache at run (and the other way).
    paged = Paged(rng, [5, 17], 16, 2, 64, "NHD", "float16")
    qb = randn(rng, (2, 4, 64), "float16")
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(None)
    w.plan(paged.indptr, paged.indices, paged.last, 4, 2, 64, 16, q_data_type="float16")
    with pytest.raises(ValueError, match="paged_kv_cache"):
        w.run(qb, paged.cache.astype(FP8["e4m3"]))
    w.plan(paged.indptr, paged.indices, paged.last, 4, 2, 64, 16, q_data_type="float16",
           kv_data_type="float8_e5m2")
    with pytest.raises(ValueError, match="paged_kv_cache"):
        w.run(qb, paged.cache)
    with pytest.raises(ValueError, match="scale"):
        w.run(qb, paged.cache.astype(FP8["e5m2"]), k_scale=-2.0)
    # Prefill and append read 16-bit K/V only: a clear type error, never a different result.
    with pytest.raises(TypeError):
        flashinfer.single_prefill_with_kv_cache(randn(rng, (3, 4, 64), "float16"), k, v)
