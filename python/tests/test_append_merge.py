"""append_paged_kv_cache (with FlashInfer's index helpers) and the state merges."""

import numpy as np
import pytest

import ferrinfer as flashinfer
from conftest import ALL_DTYPES, Paged, assert_close, assert_lse, randn
from reference import f64, merge


def rows_at(cache, layout, page, slot):
    """Views of one token's K and V rows ``[Hkv, D]`` in a cache of either form."""
    k, v = (cache[:, 0], cache[:, 1]) if isinstance(cache, np.ndarray) else cache
    return (k[page, slot], v[page, slot]) if layout == "NHD" else (k[page, :, slot], v[page, :, slot])


def bits(cache):
    return [np.asarray(c).view(np.uint16) for c in (cache if isinstance(cache, tuple) else (cache,))]


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("form", ["single", "tuple"])
def test_append_paged_kv_cache(dtype, layout, page_size, form):
    """Rows appended to the ends of three requests land exactly where the page tables say, and
    nothing else in the cache changes."""
    rng = np.random.default_rng(page_size)
    old, new = [0, 15, 16], [17, 1, 2]
    total = [o + n for o, n in zip(old, new)]
    paged = Paged(rng, total, page_size, 2, 64, layout, dtype, form)
    expected = tuple(np.copy(c) for c in paged.cache) if form == "tuple" else np.copy(paged.cache)
    append_indptr = np.concatenate([[0], np.cumsum(new)]).astype(np.int32)
    nnz = int(append_indptr[-1])
    seq_lens = flashinfer.get_seq_lens(paged.indptr, paged.last, page_size)
    assert list(seq_lens) == total
    batch, pos = flashinfer.get_batch_indices_positions(append_indptr, seq_lens, nnz)
    b2, p2 = np.zeros(nnz, np.int32), np.zeros(nnz, np.int32)
    rb, rp = flashinfer.get_batch_indices_positions(append_indptr, seq_lens, nnz, b2, p2)
    assert rb is b2 and rp is p2
    assert np.array_equal(b2, batch) and np.array_equal(p2, pos)
    k, v = randn(rng, (nnz, 2, 64), dtype), randn(rng, (nnz, 2, 64), dtype)
    for r in range(nnz):
        b, p = int(batch[r]), int(pos[r])
        assert old[b] <= p < total[b]
        page = paged.indices[paged.indptr[b] + p // page_size]
        ek, ev = rows_at(expected, layout, page, p % page_size)
        ek[...], ev[...] = k[r], v[r]
    flashinfer.append_paged_kv_cache(k, v, batch, pos, paged.cache, paged.indices, paged.indptr, paged.last,
                                     kv_layout=layout)
    for got, want in zip(bits(paged.cache), bits(expected)):
        assert np.array_equal(got, want)


@pytest.mark.parametrize("dtype", ALL_DTYPES + [pytest.param("float32", id="float32")])
def test_merge_state(dtype):
    rng = np.random.default_rng(9)
    mk = (lambda s: rng.standard_normal(s).astype(np.float32)) if dtype == "float32" else (lambda s: randn(rng, s, dtype))
    va, vb = mk((7, 4, 64)), mk((7, 4, 64))
    sa = (rng.standard_normal((7, 4)) * 4).astype(np.float32)
    sb = (rng.standard_normal((7, 4)) * 4).astype(np.float32)
    sa[0, 0] = -np.inf  # an empty state has weight 0
    v, s = flashinfer.merge_state(va, sa, vb, sb)
    rv, rs = merge(va, sa, vb, sb)
    assert v.dtype == va.dtype and s.dtype == np.float32
    assert_close(v, rv, "bfloat16" if dtype == "bfloat16" else "float16")
    assert_lse(s, rs)
    flashinfer.merge_state_in_place(va, sa, vb, sb)
    assert_close(va, rv, "bfloat16" if dtype == "bfloat16" else "float16")
    assert_lse(sa, rs)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("num_states", [1, 3, 8])
def test_merge_states(dtype, num_states):
    rng = np.random.default_rng(num_states)
    v = randn(rng, (5, num_states, 2, 128), dtype)
    s = (rng.standard_normal((5, num_states, 2)) * 3).astype(np.float32)
    out, lse = flashinfer.merge_states(v, s)
    rv, rs = f64(v[:, 0]), f64(s[:, 0])
    for i in range(1, num_states):
        rv, rs = merge(rv, rs, v[:, i], s[:, i])
    assert out.shape == (5, 2, 128) and lse.shape == (5, 2)
    assert_close(out, rv, dtype)
    assert_lse(lse, rs)


def test_merge_in_place_mask_is_refused():
    v, s = np.zeros((1, 1, 64), np.float16), np.zeros((1, 1), np.float32)
    with pytest.raises(NotImplementedError, match="mask"):
        flashinfer.merge_state_in_place(v, s, v.copy(), s.copy(), mask=np.ones(1, bool))
