"""Bad input raises an exception naming the argument; nothing is computed from it."""

import numpy as np
import pytest

import ferrinfer as flashinfer
from ferrinfer import _native, _tensor
from conftest import Paged, randn


@pytest.fixture
def qkv():
    rng = np.random.default_rng(0)
    return randn(rng, (8, 64), "float16"), randn(rng, (10, 2, 64), "float16"), randn(rng, (10, 2, 64), "float16")


def test_wrong_dtype(qkv):
    q, k, v = qkv
    with pytest.raises(TypeError, match="q: dtype float32"):
        flashinfer.single_decode_with_kv_cache(q.astype(np.float32), k, v)
    with pytest.raises(TypeError, match="k: dtype"):
        flashinfer.single_decode_with_kv_cache(q, k.astype(np.float32), v)


def test_wrong_shapes(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="v: expected shape"):
        flashinfer.single_decode_with_kv_cache(q, k, v[:5])
    with pytest.raises(ValueError, match="head_dim"):
        flashinfer.single_decode_with_kv_cache(q, k[..., :32], v[..., :32])
    with pytest.raises(ValueError, match="heads"):  # 8 query heads over 3 KV heads
        flashinfer.single_decode_with_kv_cache(q, np.zeros((10, 3, 64), np.float16), np.zeros((10, 3, 64), np.float16))
    with pytest.raises(ValueError, match="3-d"):
        flashinfer.single_decode_with_kv_cache(q, k[0], v[0])
    with pytest.raises(ValueError, match="q: expected at least 2 dimensions"):
        flashinfer.single_decode_with_kv_cache(q[0], k, v)
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(None)
    w.plan([0, 1], [0], [1], 8, 2, 64, 16)
    with pytest.raises(ValueError):
        w.run(q[0], np.zeros((1, 2, 16, 2, 64), np.float16))
    with pytest.raises(ValueError, match="qo_len"):  # more queries than keys
        flashinfer.single_prefill_with_kv_cache(np.zeros((11, 8, 64), np.float16), k, v)


def test_non_contiguous(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="q: must be contiguous"):
        flashinfer.single_prefill_with_kv_cache(np.zeros((8, 2, 64), np.float16).transpose(1, 0, 2), k, v)
    with pytest.raises(ValueError, match="last dimension"):
        flashinfer.single_decode_with_kv_cache(q, k[..., ::2], v[..., ::2])


def test_wrong_device_is_refused_by_name(qkv):
    """A CUDA descriptor given to a CPU call raises (a device mix) before anything is read."""
    q, k, v = qkv
    d = list(_tensor.view(k, "k"))
    d[5], d[6] = "cuda", 0
    with pytest.raises(ValueError, match="k: on device cuda:0 but this call runs on the CPU"):
        _native.single_decode(_tensor.view(q, "q"), tuple(d), _tensor.view(v, "v"), "NHD",
                              _tensor.view(np.empty_like(q), "out"), None, None, None, None)


def test_outputs_must_not_alias_or_be_read_only(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="overlaps"):
        _native.single_decode(_tensor.view(q, "q"), _tensor.view(k, "k"), _tensor.view(v, "v"), "NHD",
                              _tensor.view(q, "out"), None, None, None, None)
    out = np.empty_like(q)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        _native.single_decode(_tensor.view(q, "q"), _tensor.view(k, "k"), _tensor.view(v, "v"), "NHD",
                              _tensor.view(out, "out"), None, None, None, None)


def test_bad_options(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="soft_cap"):
        flashinfer.single_decode_with_kv_cache(q, k, v, logits_soft_cap=-1.0)
    with pytest.raises(ValueError, match="sm_scale"):
        flashinfer.single_decode_with_kv_cache(q, k, v, sm_scale=float("nan"))
    with pytest.raises(ValueError, match="kv_layout"):
        flashinfer.single_decode_with_kv_cache(q, k, v, kv_layout="NDH")


@pytest.mark.parametrize("arg", [dict(pos_encoding_mode="ALIBI"), dict(q_scale=2.0), dict(rope_theta=1e4)])
def test_unsupported_arguments_are_named(qkv, arg):
    q, k, v = qkv
    name = next(iter(arg))
    with pytest.raises(NotImplementedError, match=name):
        flashinfer.single_decode_with_kv_cache(q, k, v, **arg)


def test_unsupported_prefill_arguments():
    q = np.zeros((2, 2, 64), np.float16)
    with pytest.raises(NotImplementedError, match="use_fp16_qk_reduction"):
        flashinfer.single_prefill_with_kv_cache(q, q, q, use_fp16_qk_reduction=True)
    with pytest.raises(NotImplementedError, match="scale_k"):
        flashinfer.single_prefill_with_kv_cache(q, q, q, scale_k=0.5)
    w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(None)
    with pytest.raises(NotImplementedError, match="head_dim_vo"):
        w.plan([0, 2], [0, 2], 2, 2, 64, head_dim_vo=128)
    with pytest.raises(NotImplementedError, match="kv_data_type"):
        w.plan([0, 2], [0, 2], 2, 2, 64, kv_data_type="bfloat16")


def test_flashinfer_only_keywords_are_named():
    """Keywords of FlashInfer's signatures that ferrinfer lacks: neutral values pass, others
    raise NotImplementedError naming them."""
    rng = np.random.default_rng(3)
    paged, q, w = make_decode(rng)
    w.plan(paged.indptr, paged.indices, paged.last, 4, 2, 64, 16)
    w.run(q, paged.cache, q_len_per_req=1, kv_cache_sf=None)
    with pytest.raises(NotImplementedError, match="kv_cache_sf"):
        w.run(q, paged.cache, kv_cache_sf=q)
    with pytest.raises(NotImplementedError, match="q_len_per_req"):
        w.run(q, paged.cache, q_len_per_req=2)
    p = flashinfer.BatchPrefillWithPagedKVCacheWrapper(None)
    with pytest.raises(NotImplementedError, match="o_data_type"):
        p.plan([0, 1], [0, 1], [0], [1], 4, 2, 64, 16, o_data_type="float32")


def make_decode(rng, lens=(3, 20), page_size=16):
    paged = Paged(rng, list(lens), page_size, 2, 64, "NHD", "float16")
    q = randn(rng, (len(lens), 4, 64), "float16")
    return paged, q, flashinfer.BatchDecodeWithPagedKVCacheWrapper(None)


def test_page_table_errors():
    rng = np.random.default_rng(1)
    paged, q, w = make_decode(rng)
    with pytest.raises(RuntimeError, match="plan"):
        w.run(q, paged.cache)
    bad = paged.indices.copy()
    bad[0] = paged.num_pages  # a page outside the cache
    w.plan(paged.indptr, bad, paged.last, 4, 2, 64, 16)
    with pytest.raises(ValueError, match="page index"):
        w.run(q, paged.cache)
    last = paged.last.copy()
    last[1] = 17  # more rows than a page holds
    w.plan(paged.indptr, paged.indices, last, 4, 2, 64, 16)
    with pytest.raises(ValueError, match="kv_last_page_len"):
        w.run(q, paged.cache)
    w.plan(paged.indptr, paged.indices, paged.last, 4, 2, 64, 16)
    with pytest.raises(ValueError, match="does not match the plan"):
        w.run(q[:, :2], paged.cache)
    with pytest.raises(ValueError, match="paged_kv_cache"):
        w.run(q, paged.cache[:, :, :8])
    with pytest.raises(ValueError, match="q: dtype"):
        w.run(q.astype(np.float32), paged.cache)


def test_append_errors():
    rng = np.random.default_rng(2)
    paged = Paged(rng, [4], 16, 2, 64, "NHD", "float16")
    k = randn(rng, (1, 2, 64), "float16")
    with pytest.raises(ValueError, match="positions"):  # past the request's reserved length
        flashinfer.append_paged_kv_cache(k, k, [0], [4], paged.cache, paged.indices, paged.indptr, paged.last)
    with pytest.raises(ValueError, match="batch_indices"):
        flashinfer.append_paged_kv_cache(k, k, [1], [0], paged.cache, paged.indices, paged.indptr, paged.last)
    with pytest.raises(ValueError, match="overlaps"):  # rows taken from the cache itself
        rows = paged.cache[0, 0, :1]
        flashinfer.append_paged_kv_cache(rows, rows, [0], [0], paged.cache, paged.indices, paged.indptr, paged.last)


def test_ragged_indptr_errors():
    w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(None)
    q = np.zeros((4, 2, 64), np.float16)
    w.plan([0, 4], [0, 2], 2, 2, 64)
    with pytest.raises(ValueError, match="qo_len"):
        w.run(q, np.zeros((2, 2, 64), np.float16), np.zeros((2, 2, 64), np.float16))
    w.plan([0, 4], [0, 9], 2, 2, 64)
    with pytest.raises(ValueError, match="kv_indptr"):
        w.run(q, np.zeros((4, 2, 64), np.float16), np.zeros((4, 2, 64), np.float16))
