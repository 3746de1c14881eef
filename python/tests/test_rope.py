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
