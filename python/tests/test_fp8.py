"""fp8 K/V caches (``float8_e4m3fn``, ``float8_e5m2``) in decode and batch prefill on the CPU: K/V
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
    # Single prefill and append read 16-bit K/V only: a clear type error, never a different result.
    with pytest.raises(TypeError):
        flashinfer.single_prefill_with_kv_cache(randn(rng, (3, 4, 64), "float16"), k, v)


def fp8_paged(rng, lens, page_size, hkv, d, layout, dtype, form, fmt):
    """A paged cache (conftest.Paged) whose pages are stored as fp8 codes."""
    paged = Paged(rng, lens, page_size, hkv, d, layout, dtype, form)
    c = paged.cache
    paged.cache = c.astype(FP8[fmt]) if isinstance(c, np.ndarray) else tuple(x.astype(FP8[fmt]) for x in c)
    return paged


def prefill_reference(q, qo_indptr, kvs, ks, vs, **opts):
    """The float64 reference per request over K/V dequantised with the scales."""
    outs, lses = [], []
    for b, (k, v) in enumerate(kvs):
        o, l = attention(q[qo_indptr[b]:qo_indptr[b + 1]], f64(k) * ks, f64(v) * vs, **opts)
        outs.append(o), lses.append(l)
    return np.concatenate(outs), np.concatenate(lses)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("fmt", list(FP8))
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("heads", [(4, 4), (8, 2), (8, 1)], ids=lambda h: f"g{h[0] // h[1]}")
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("causal", [False, True])
def test_batch_prefill_paged_fp8(dtype, fmt, head_dim, heads, layout, causal):
    rng = np.random.default_rng(head_dim + heads[1] * 5 + len(fmt))
    hq, hkv = heads
    page_size = 16
    lens = kv_lens_for(page_size)
    qo_lens = [[1, n, max(1, n // 2)][i % 3] for i, n in enumerate(lens)]
    qo_indptr = np.concatenate([[0], np.cumsum(qo_lens)]).astype(np.int32)
    paged = fp8_paged(rng, lens, page_size, hkv, head_dim, layout, dtype, "single" if causal else "tuple", fmt)
    q = randn(rng, (int(qo_indptr[-1]), hq, head_dim), dtype)
    w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(None, kv_layout=layout)
    w.plan(qo_indptr, paged.indptr, paged.indices, paged.last, hq, hkv, head_dim, page_size, causal=causal,
           q_data_type=dtype, kv_data_type=np.dtype(FP8[fmt]).name, logits_soft_cap=30.0)
    ks, vs = 0.5, 2.0
    out, lse = w.run(q, paged.cache, k_scale=ks, v_scale=vs, return_lse=True)
    ref, ref_lse = prefill_reference(q, qo_indptr, [paged.kv(b) for b in range(len(lens))], ks, vs,
                                     causal=causal, soft_cap=30.0)
    assert_close_scaled(out, ref, dtype, vs)
    assert_lse(lse, ref_lse)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("fmt", list(FP8))
@pytest.mark.parametrize("scales", SCALES, ids=lambda s: f"k{s[0]}v{s[1]}")
@pytest.mark.parametrize("causal", [False, True])
def test_batch_prefill_ragged_fp8(dtype, fmt, scales, causal):
    rng = np.random.default_rng(int(scales[1] * 4) + len(fmt))
    hq, hkv, d = 8, 2, 128
    kv_lens = [1, 15, 16, 17, 40, 0]
    qo_lens = [1, 15, 3, 17, 1, 0]
    qo_indptr = np.concatenate([[0], np.cumsum(qo_lens)]).astype(np.int32)
    kv_indptr = np.concatenate([[0], np.cumsum(kv_lens)]).astype(np.int32)
    q = randn(rng, (int(qo_indptr[-1]), hq, d), dtype)
    k = rng.standard_normal((int(kv_indptr[-1]), hkv, d)).astype(np.float32).astype(FP8[fmt])
    v = rng.standard_normal((int(kv_indptr[-1]), hkv, d)).astype(np.float32).astype(FP8[fmt])
    w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(None)
    w.plan(qo_indptr, kv_indptr, hq, hkv, d, causal=causal, q_data_type=dtype, kv_data_type=fmt_name(fmt),
           window_left=12)
    ks, vs = scales
    out, lse = w.run(q, k, v, k_scale=ks, v_scale=vs, return_lse=True)
    kvs = [(k[kv_indptr[b]:kv_indptr[b + 1]], v[kv_indptr[b]:kv_indptr[b + 1]]) for b in range(len(kv_lens))]
    ref, ref_lse = prefill_reference(q, qo_indptr, kvs, ks, vs, causal=causal, window_left=12)
    assert_close_scaled(out, ref, dtype, vs)
    assert_lse(lse, ref_lse)


def fmt_name(fmt):
    return np.dtype(FP8[fmt]).name


def test_prefill_fp8_refusals():
    rng = np.random.default_rng(5)
    lens = [5, 17]
    qo_indptr = np.array([0, 2, 5], dtype=np.int32)
    paged = fp8_paged(rng, lens, 16, 2, 64, "NHD", "float16", "single", "e4m3")
    q = randn(rng, (5, 4, 64), "float16")
    w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(None)
    plan = (qo_indptr, paged.indptr, paged.indices, paged.last, 4, 2, 64, 16)
    # Custom masks and RoPE inside attention read 16-bit K/V only (as on the GPU).
    mask = np.ones(2 * 5 + 3 * 17, dtype=bool)
    with pytest.raises(NotImplementedError, match="custom mask"):
        w.plan(*plan, custom_mask=mask, q_data_type="float16", kv_data_type="float8_e4m3fn")
    with pytest.raises(NotImplementedError, match="ROPE_LLAMA"):
        w.plan(*plan, pos_encoding_mode="ROPE_LLAMA", q_data_type="float16", kv_data_type="float8_e4m3fn")
    # A plan for one K/V type refuses a cache of another; bad scales are named.
    w.plan(*plan, q_data_type="float16", kv_data_type="float8_e5m2")
    with pytest.raises(ValueError, match="kv_data_type"):
        w.run(q, paged.cache)
    w.plan(*plan, q_data_type="float16", kv_data_type="float8_e4m3fn")
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="scale"):
            w.run(q, paged.cache, k_scale=bad)
        with pytest.raises(ValueError, match="scale"):
            w.run(q, paged.cache, v_scale=bad)
    with pytest.raises(NotImplementedError, match="q_scale"):
        w.run(q, paged.cache, q_scale=2.0)
    w.plan(*plan, q_data_type="float16")
    with pytest.raises(ValueError, match="kv_data_type"):
        w.run(q, paged.cache)
    with pytest.raises(NotImplementedError, match="k_scale"):
        w.run(q, paged.cache.astype(np.float16), k_scale=2.0)
    # An fp8 output type is not a K/V type.
    with pytest.raises(NotImplementedError, match="o_data_type"):
        w.plan(*plan, q_data_type="float16", kv_data_type="float8_e4m3fn", o_data_type="float8_e4m3fn")
    # Ragged: the same checks.
    r = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(None)
    kv_indptr = np.array([0, 5, 22], dtype=np.int32)
    k = rng.standard_normal((22, 2, 64)).astype(np.float32).astype(FP8["e4m3"])
    r.plan(qo_indptr, kv_indptr, 4, 2, 64, q_data_type="float16", kv_data_type="float8_e4m3fn")
    with pytest.raises(ValueError, match="kv_data_type"):
        r.run(q, k.astype(np.float16), k.astype(np.float16))
    with pytest.raises(TypeError, match="v"):
        r.run(q, k, k.astype(FP8["e5m2"]))
    with pytest.raises(ValueError, match="scale"):
        r.run(q, k, k, v_scale=0.0)
