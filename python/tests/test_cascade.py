"""MultiLevelCascadeAttentionWrapper: levels of shared KV attended once and merged equal plain
attention over each request's concatenated context (the float64 reference)."""

import numpy as np
import pytest

import ferrinfer as flashinfer
from conftest import ALL_DTYPES, assert_close, randn
from reference import attention


class Pages:
    """A page allocator over one NHD cache ``[num_pages, 2, page_size, Hkv, D]``."""

    def __init__(self, rng, num_pages, page_size, hkv, d, dtype):
        self.cache = randn(rng, (num_pages, 2, page_size, hkv, d), dtype)
        self.free = list(rng.permutation(num_pages))
        self.page_size = page_size

    def take(self, n_tokens):
        """Pages for ``n_tokens`` tokens: (page ids, last page length, K rows, V rows)."""
        n = (n_tokens + self.page_size - 1) // self.page_size
        ids = [int(self.free.pop()) for _ in range(n)]
        rows = self.cache[ids].transpose(0, 2, 1, 3, 4).reshape(-1, 2, *self.cache.shape[3:])[:n_tokens]
        last = (n_tokens - 1) % self.page_size + 1 if n_tokens else 0
        return ids, last, rows[:, 0], rows[:, 1]


def level_tables(entries):
    """CSR tables of a level whose entries are ``(qo_len, (ids, last, ...))``."""
    qo = np.concatenate([[0], np.cumsum([e[0] for e in entries])]).astype(np.int32)
    indptr = np.concatenate([[0], np.cumsum([len(e[1][0]) for e in entries])]).astype(np.int32)
    indices = np.array([i for e in entries for i in e[1][0]], dtype=np.int32)
    last = np.array([e[1][1] for e in entries], dtype=np.int32)
    return qo, indptr, indices, last


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads", [(8, 8), (16, 4)], ids=lambda h: f"g{h[0] // h[1]}")
def test_three_levels_equal_plain_attention(dtype, causal, heads):
    rng = np.random.default_rng(17 + causal)
    hq, hkv, d, ps = heads[0], heads[1], 64, 16
    pages = Pages(rng, 64, ps, hkv, d, dtype)
    qo_lens = [1, 4, 1, 7, 2]  # decode-like and append-like requests
    groups = [0, 0, 1, 1, 1]
    prefix = pages.take(70)
    group_kv = [pages.take(n) for n in (5, 33)]
    own = [pages.take(n) for n in (9, 16, 1, 20, 40)]
    q = randn(rng, (sum(qo_lens), hq, d), dtype)
    # Level 0: every query shares the prefix; level 1: per group; level 2: per request.
    l0 = level_tables([(sum(qo_lens), prefix)])
    l1 = level_tables([(sum(n for n, g in zip(qo_lens, groups) if g == i), group_kv[i]) for i in range(2)])
    l2 = level_tables(list(zip(qo_lens, own)))
    w = flashinfer.MultiLevelCascadeAttentionWrapper(3, None)
    w.plan([l0[0], l1[0], l2[0]], [l0[1], l1[1], l2[1]], [l0[2], l1[2], l2[2]], [l0[3], l1[3], l2[3]],
           hq, hkv, d, ps, causal=causal, q_data_type=dtype)
    out = w.run(q, pages.cache)
    start = 0
    for b, n in enumerate(qo_lens):
        k = np.concatenate([prefix[2], group_kv[groups[b]][2], own[b][2]])
        v = np.concatenate([prefix[3], group_kv[groups[b]][3], own[b][3]])
        ref, _ = attention(q[start:start + n], k, v, causal=causal)
        assert_close(out[start:start + n], ref, dtype, what=f"request {b}")
        start += n


def test_cascade_refusals():
    w = flashinfer.MultiLevelCascadeAttentionWrapper(2, None)
    z = np.zeros(2, np.int32)
    with pytest.raises(ValueError, match="2 levels"):
        w.plan([z], [z, z], [z, z], [z, z], 4, 4, 64, 16)
    with pytest.raises(NotImplementedError, match="window_left"):
        w.plan([z, z], [z, z], [z, z], [z, z], 4, 4, 64, 16, window_left=8)
    with pytest.raises(ValueError, match="same queries"):
        w.plan([np.array([0, 3], np.int32), np.array([0, 2], np.int32)], [z, z], [z, z], [z, z], 4, 4, 64, 16)
    with pytest.raises(NotImplementedError, match="use_cuda_graph"):
        flashinfer.MultiLevelCascadeAttentionWrapper(2, None, use_cuda_graph=True)
    with pytest.raises(ValueError, match="num_levels"):
        flashinfer.MultiLevelCascadeAttentionWrapper(0, None)
