"""Custom masks in the prefill functions and wrappers (``custom_mask`` / ``packed_custom_mask``),
and ``packbits`` / ``segment_packbits``, against the float64 reference with the same mask."""

import numpy as np
import pytest

import ferrinfer as flashinfer
from conftest import ALL_DTYPES, Paged, assert_close, assert_lse, randn
from reference import attention


def random_masks(rng, qo_lens, kv_lens, density=0.6):
    return [rng.random((q, k)) < density for q, k in zip(qo_lens, kv_lens)]


def tree_mask(parents, prefix):
    """Speculative-decoding verification: a token tree (``parents[i]`` the parent of draft token
    ``i``, -1 for a root) after ``prefix`` context tokens. Each draft token attends the whole
    prefix, itself and its ancestors, nothing else."""
    n = len(parents)
    m = np.zeros((n, prefix + n), dtype=bool)
    m[:, :prefix] = True
    for i in range(n):
        j = i
        while j >= 0:
            m[i, prefix + j] = True
            j = parents[j]
    return m


def test_packbits_matches_numpy_in_both_bit_orders():
    rng = np.random.default_rng(0)
    x = rng.random(37) < 0.5
    assert np.array_equal(flashinfer.packbits(x), np.packbits(x))
    assert np.array_equal(flashinfer.packbits(x, bitorder="little"), np.packbits(x, bitorder="little"))
    assert list(flashinfer.packbits(np.array([1, 0, 0, 0, 0, 0, 0, 1, 1], bool), "little")) == [0b1000_0001, 1]
    with pytest.raises(ValueError, match="bitorder"):
        flashinfer.packbits(x, bitorder="middle")


def test_segment_packbits_starts_each_segment_on_its_own_byte():
    x = np.array([1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0], bool)
    packed, indptr = flashinfer.segment_packbits(x, np.array([0, 3, 11]), bitorder="little")
    assert list(indptr) == [0, 1, 2]
    assert list(packed) == [0b101, 0b0111_1111]
    with pytest.raises(ValueError, match="indptr"):
        flashinfer.segment_packbits(x, np.array([0, 12]))


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("form", ["bool", "packed"])
def test_single_prefill_custom_mask(dtype, head_dim, form):
    rng = np.random.default_rng(head_dim)
    qo_len, kv_len = 13, 40
    q = randn(rng, (qo_len, 8, head_dim), dtype)
    k, v = randn(rng, (kv_len, 2, head_dim), dtype), randn(rng, (kv_len, 2, head_dim), dtype)
    mask = rng.random((qo_len, kv_len)) < 0.5
    mask[3] = False  # a row that attends nothing: output 0, lse -inf
    arg = dict(custom_mask=mask) if form == "bool" else \
        dict(packed_custom_mask=flashinfer.packbits(mask.reshape(-1), bitorder="little"))
    # causal is ignored when a mask is given (FlashInfer's rule).
    out, lse = flashinfer.single_prefill_with_kv_cache(q, k, v, causal=True, return_lse=True, **arg)
    ref, ref_lse = attention(q, k, v, mask=mask)
    assert_close(out, ref, dtype)
    assert_lse(lse, ref_lse)
    assert not np.asarray(out[3]).astype(np.float32).any()


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_mask_consistency(dtype):
    """All-ones mask = no mask (non-causal); the causal pattern as a mask = causal."""
    rng = np.random.default_rng(5)
    qo_len, kv_len = 9, 30
    q = randn(rng, (qo_len, 4, 64), dtype)
    k, v = randn(rng, (kv_len, 4, 64), dtype), randn(rng, (kv_len, 4, 64), dtype)
    ones = np.ones((qo_len, kv_len), bool)
    a = flashinfer.single_prefill_with_kv_cache(q, k, v, custom_mask=ones)
    b = flashinfer.single_prefill_with_kv_cache(q, k, v)
    assert np.array_equal(np.asarray(a).view(np.uint16), np.asarray(b).view(np.uint16))
    causal = np.arange(kv_len)[None, :] <= (kv_len - qo_len + np.arange(qo_len))[:, None]
    c = flashinfer.single_prefill_with_kv_cache(q, k, v, custom_mask=causal)
    d = flashinfer.single_prefill_with_kv_cache(q, k, v, causal=True)
    assert np.array_equal(np.asarray(c).view(np.uint16), np.asarray(d).view(np.uint16))


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_tree_attention_verification(dtype):
    """A draft tree of 7 tokens (two branches) verified in one prefill over a 50-token prefix
    equals attending each draft token's own path alone."""
    rng = np.random.default_rng(9)
    parents = [-1, 0, 1, 0, 3, 4, 1]
    prefix, n = 50, len(parents)
    mask = tree_mask(parents, prefix)
    q = randn(rng, (n, 8, 128), dtype)
    k, v = randn(rng, (prefix + n, 2, 128), dtype), randn(rng, (prefix + n, 2, 128), dtype)
    out = flashinfer.single_prefill_with_kv_cache(q, k, v, custom_mask=mask)
    for i in range(n):
        keys = np.flatnonzero(mask[i])
        ref, _ = attention(q[i:i + 1], k[keys], v[keys])
        assert_close(out[i:i + 1], ref, dtype, what=f"draft token {i}")


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("form", ["bool", "packed"])
@pytest.mark.parametrize("window_left", [-1, 6])
def test_paged_prefill_custom_mask(dtype, form, window_left):
    rng = np.random.default_rng(21)
    kv_lens, qo_lens = [17, 40, 3, 64], [5, 40, 1, 11]
    qo_indptr = np.concatenate([[0], np.cumsum(qo_lens)]).astype(np.int32)
    paged = Paged(rng, kv_lens, 16, 2, 64, "HND", dtype, "tuple")
    q = randn(rng, (int(qo_indptr[-1]), 4, 64), dtype)
    masks = random_masks(rng, qo_lens, kv_lens)
    flat = np.concatenate([m.reshape(-1) for m in masks])
    if form == "bool":
        arg = dict(custom_mask=flat)
    else:
        sizes = np.concatenate([[0], np.cumsum([m.size for m in masks])])
        arg = dict(packed_custom_mask=flashinfer.segment_packbits(flat, sizes, bitorder="little")[0])
    w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(None, kv_layout="HND")
    w.plan(qo_indptr, paged.indptr, paged.indices, paged.last, 4, 2, 64, 16, q_data_type=dtype,
           window_left=window_left, **arg)
    out, lse = w.run(q, paged.cache, return_lse=True)
    for b in range(len(kv_lens)):
        k, v = paged.kv(b)
        rows = slice(qo_indptr[b], qo_indptr[b + 1])
        ref, ref_lse = attention(q[rows], k, v, window_left=window_left, mask=masks[b])
        assert_close(out[rows], ref, dtype, what=f"request {b}")
        assert_lse(lse[rows], ref_lse)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_ragged_prefill_custom_mask(dtype):
    rng = np.random.default_rng(33)
    kv_lens, qo_lens = [8, 70, 1], [8, 3, 1]
    qo_indptr = np.concatenate([[0], np.cumsum(qo_lens)]).astype(np.int32)
    kv_indptr = np.concatenate([[0], np.cumsum(kv_lens)]).astype(np.int32)
    q = randn(rng, (int(qo_indptr[-1]), 6, 128), dtype)
    k, v = randn(rng, (int(kv_indptr[-1]), 3, 128), dtype), randn(rng, (int(kv_indptr[-1]), 3, 128), dtype)
    masks = random_masks(rng, qo_lens, kv_lens, density=0.3)
    w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(None)
    w.plan(qo_indptr, kv_indptr, 6, 3, 128, causal=True, q_data_type=dtype,
           custom_mask=np.concatenate([m.reshape(-1) for m in masks]))
    out = w.run(q, k, v)
    for b in range(3):
        rows, keys = slice(qo_indptr[b], qo_indptr[b + 1]), slice(kv_indptr[b], kv_indptr[b + 1])
        ref, _ = attention(q[rows], k[keys], v[keys], mask=masks[b])
        assert_close(out[rows], ref, dtype, what=f"request {b}")


def test_bad_masks_are_refused_before_running():
    rng = np.random.default_rng(1)
    q = randn(rng, (4, 2, 64), "float16")
    k = randn(rng, (6, 2, 64), "float16")
    with pytest.raises(ValueError, match="custom_mask shape"):
        flashinfer.single_prefill_with_kv_cache(q, k, k, custom_mask=np.ones((4, 5), bool))
    with pytest.raises(ValueError, match="must be bool"):
        flashinfer.single_prefill_with_kv_cache(q, k, k, custom_mask=np.ones((4, 6), np.int32))
    with pytest.raises(ValueError, match="packed_custom_mask has 2 bytes"):
        flashinfer.single_prefill_with_kv_cache(q, k, k, packed_custom_mask=np.zeros(2, np.uint8))
    w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(None)
    with pytest.raises(ValueError, match="custom_mask has 10 entries"):
        w.plan([0, 2, 4], [0, 3, 6], 2, 2, 64, custom_mask=np.ones(10, bool))
    with pytest.raises(ValueError, match="must be uint8"):
        w.plan([0, 2, 4], [0, 3, 6], 2, 2, 64, packed_custom_mask=np.zeros(2, np.int32))
