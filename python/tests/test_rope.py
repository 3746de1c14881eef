"""RoPE inside decode attention (FlashInfer's ``pos_encoding_mode="ROPE_LLAMA"``) on the CPU:
``single_decode_with_kv_cache`` and ``BatchDecodeWithPagedKVCacheWrapper`` against the float64
reference fed q and K rotated first (``reference.rope_llama``: query at ``kv_len - 1``, key
``t`` at ``t``)."""

import numpy as np
import pytest

import ferrinfer as flashinfer
from conftest import ALL_DTYPES, Paged, assert_close, assert_lse, kv_lens_for, randn
from reference import attention, f64, rope_llama

ROPES = [dict(), dict(rope_theta=5e5), dict(rope_scale=4.0, rope_theta=1e5)]


def rotated_reference(q, k, v, rope, **opts):
    """Decode of one request ``q [Hq, D]`` over ``k``/``v [kv_len, Hkv, D]`` with RoPE."""
    n = k.shape[0]
    qr = rope_llama(f64(q)[None], [n - 1], **rope)
    kr = rope_llama(f64(k), np.arange(n), **rope)
    o, l = attention(qr, kr, f64(v), **opts)
    return o[0], l[0]


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("heads", [(4, 4), (8, 2)], ids=lambda h: f"g{h[0] // h[1]}")
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("rope", ROPES, ids=["default", "theta", "scale"])
def test_batch_decode_rope(dtype, head_dim, heads, layout, rope):
    rng = np.random.default_rng(head_dim)
    hq, hkv = heads
    lens = kv_lens_for(16) + [1500]
    paged = Paged(rng, lens, 16, hkv, head_dim, layout, dtype)
    q = randn(rng, (len(lens), hq, head_dim), dtype)
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(None, kv_layout=layout)
    w.plan(paged.indptr, paged.indices, paged.last, hq, hkv, head_dim, 16, q_data_type=dtype,
           pos_encoding_mode="ROPE_LLAMA", **rope)
    out, lse = w.run(q, paged.cache, return_lse=True)
    refs = [rotated_reference(q[b], *paged.kv(b), rope) for b in range(len(lens))]
    assert_close(out, np.stack([r[0] for r in refs]), dtype)
    assert_lse(lse, np.stack([r[1] for r in refs]))
    # Not vacuous: the plain decode of the same inputs differs.
    w.plan(paged.indptr, paged.indices, paged.last, hq, hkv, head_dim, 16, q_data_type=dtype)
    plain = w.run(q, paged.cache)
    assert np.max(np.abs(f64(plain) - f64(out))) > 0.05


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("opts", [dict(), dict(logits_soft_cap=20.0, window_left=40)], ids=["plain", "cap+window"])
def test_single_decode_rope(dtype, layout, opts):
    rng = np.random.default_rng(3)
    n, hq, hkv, d = 333, 8, 2, 128
    q = randn(rng, (hq, d), dtype)
    k, v = randn(rng, (n, hkv, d), dtype), randn(rng, (n, hkv, d), dtype)
    kk, vv = (k, v) if layout == "NHD" else (np.ascontiguousarray(k.transpose(1, 0, 2)),
                                            np.ascontiguousarray(v.transpose(1, 0, 2)))
    out, lse = flashinfer.single_decode_with_kv_cache(q, kk, vv, kv_layout=layout, pos_encoding_mode="ROPE_LLAMA",
                                                      rope_theta=1e4, return_lse=True, **opts)
    ref, ref_lse = rotated_reference(q, k, v, dict(rope_theta=1e4), soft_cap=opts.get("logits_soft_cap"),
                                     window_left=opts.get("window_left", -1))
    assert_close(out, ref, dtype)
    assert_lse(lse, ref_lse)


def test_rope_modes_and_values():
    rng = np.random.default_rng(1)
    q = randn(rng, (4, 64), "float16")
    k = randn(rng, (9, 2, 64), "float16")
    with pytest.raises(NotImplementedError, match="ALIBI"):
        flashinfer.single_decode_with_kv_cache(q, k, k, pos_encoding_mode="ALIBI")
    with pytest.raises(NotImplementedError, match="rope_theta"):
        flashinfer.single_decode_with_kv_cache(q, k, k, rope_theta=1e4)
    with pytest.raises(ValueError, match="rope_scale"):
        flashinfer.single_decode_with_kv_cache(q, k, k, pos_encoding_mode="ROPE_LLAMA", rope_scale=0.0)
    with pytest.raises(ValueError, match="rope_theta"):
        flashinfer.single_decode_with_kv_cache(q, k, k, pos_encoding_mode="ROPE_LLAMA", rope_theta=float("nan"))


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kind", ["ragged", "paged"])
def test_batch_prefill_rope(dtype, head_dim, causal, kind):
    """Prefill wrappers with ``ROPE_LLAMA``: query token ``i`` of a request at
    ``kv_len - qo_len + i``, key ``t`` at ``t``."""
    rng = np.random.default_rng(head_dim + causal)
    hq, hkv, ps = 8, 2, 16
    kv_lens = [1, 17, 40, 300]
    qo_lens = [1, 5, 40, 33]
    paged = Paged(rng, kv_lens, ps, hkv, head_dim, "NHD", dtype)
    qo_indptr = np.concatenate([[0], np.cumsum(qo_lens)]).astype(np.int32)
    q = randn(rng, (int(qo_indptr[-1]), hq, head_dim), dtype)
    rope = dict(rope_theta=5e5)
    if kind == "paged":
        w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(None)
        w.plan(qo_indptr, paged.indptr, paged.indices, paged.last, hq, hkv, head_dim, ps, causal=causal,
               q_data_type=dtype, pos_encoding_mode="ROPE_LLAMA", **rope)
        out, lse = w.run(q, paged.cache, return_lse=True)
    else:
        ks, vs = zip(*(paged.kv(b) for b in range(len(kv_lens))))
        k, v = np.concatenate(ks), np.concatenate(vs)
        kv_indptr = np.concatenate([[0], np.cumsum(kv_lens)]).astype(np.int32)
        w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(None)
        w.plan(qo_indptr, kv_indptr, hq, hkv, head_dim, causal=causal, q_data_type=dtype,
               pos_encoding_mode="ROPE_LLAMA", **rope)
        out, lse = w.run(q, k, v, return_lse=True)
    for b, (n, m) in enumerate(zip(qo_lens, kv_lens)):
        k, v = paged.kv(b)
        qb = q[qo_indptr[b]:qo_indptr[b + 1]]
        qr = rope_llama(f64(qb), np.arange(m - n, m), **rope)
        kr = rope_llama(f64(k), np.arange(m), **rope)
        ref, ref_lse = attention(qr, kr, f64(v), causal=causal)
        assert_close(out[qo_indptr[b]:qo_indptr[b + 1]], ref, dtype)
        assert_lse(lse[qo_indptr[b]:qo_indptr[b + 1]], ref_lse)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("rope", ROPES, ids=["default", "theta", "scale"])
def test_single_prefill_rope(dtype, layout, causal, rope):
    """``single_prefill_with_kv_cache`` with ``ROPE_LLAMA``: query token ``i`` at
    ``kv_len - qo_len + i``, key ``t`` at ``t``, both layouts."""
    rng = np.random.default_rng(3 + causal)
    hq, hkv, d, n, m = 8, 2, 64, 23, 150
    q = randn(rng, (n, hq, d), dtype)
    k, v = randn(rng, (m, hkv, d), dtype), randn(rng, (m, hkv, d), dtype)
    to_layout = (lambda t: t) if layout == "NHD" else (lambda t: np.ascontiguousarray(np.swapaxes(t, 0, 1)))
    out, lse = flashinfer.single_prefill_with_kv_cache(q, to_layout(k), to_layout(v), kv_layout=layout, causal=causal,
                                                       pos_encoding_mode="ROPE_LLAMA", return_lse=True, **rope)
    qr = rope_llama(f64(q), np.arange(m - n, m), **rope)
    kr = rope_llama(f64(k), np.arange(m), **rope)
    ref, ref_lse = attention(qr, kr, f64(v), causal=causal)
    assert_close(out, ref, dtype)
    assert_lse(lse, ref_lse)
    with pytest.raises(NotImplementedError, match="custom mask"):
        flashinfer.single_prefill_with_kv_cache(q, to_layout(k), to_layout(v), kv_layout=layout,
                                                custom_mask=np.ones((n, m), bool), pos_encoding_mode="ROPE_LLAMA")


def test_prefill_rope_with_mask_is_refused():
    w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(None)
    with pytest.raises(NotImplementedError, match="custom mask"):
        w.plan([0, 2], [0, 3], 2, 2, 64, custom_mask=np.ones(6, bool), pos_encoding_mode="ROPE_LLAMA")
