"""Tensor intake: any CPU DLPack producer is read in place, and outputs follow the input's kind."""

import numpy as np

import ferrinfer as flashinfer
from ferrinfer import _tensor
from conftest import assert_close, randn
from reference import attention


class DLPackOnly:
    """A producer that offers only the DLPack protocol (no numpy or torch type)."""

    def __init__(self, a):
        self._a = a
        self.shape = a.shape

    def __dlpack__(self, **kwargs):
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


def test_dlpack_producer_is_read_zero_copy():
    rng = np.random.default_rng(0)
    q, k, v = randn(rng, (4, 64), "float16"), randn(rng, (9, 2, 64), "float16"), randn(rng, (9, 2, 64), "float16")
    d = _tensor.view(DLPackOnly(k), "k")
    assert d[1] == k.__array_interface__["data"][0]  # same memory, no copy
    out = flashinfer.single_decode_with_kv_cache(DLPackOnly(q), DLPackOnly(k), DLPackOnly(v))
    assert isinstance(out, np.ndarray)
    ref, _ = attention(q[None], k, v)
    assert_close(out, ref[0], "float16")


def test_index_arrays_from_lists_and_int64():
    """Plans take host arrays of any integer type (copied to int32 once, at plan time)."""
    rng = np.random.default_rng(1)
    cache = randn(rng, (2, 2, 4, 1, 64), "float16")
    q = randn(rng, (1, 2, 64), "float16")
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(None)
    w.plan([0, 2], np.array([1, 0], np.int64), [3], 2, 1, 64, 4)
    out = w.run(q, cache)
    k = np.concatenate([cache[1, 0], cache[0, 0, :3]])
    v = np.concatenate([cache[1, 1], cache[0, 1, :3]])
    ref, _ = attention(q, k, v)
    assert_close(out, ref, "float16")


def test_out_must_be_contiguous():
    rng = np.random.default_rng(2)
    q, k = randn(rng, (3, 2, 64), "float16"), randn(rng, (5, 2, 64), "float16")
    w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(None)
    w.plan([0, 3], [0, 5], 2, 2, 64)
    out = np.zeros((2, 3, 64), np.float16).transpose(1, 0, 2)
    try:
        w.run(q, k, k, out=out)
    except ValueError as e:
        assert "out: must be contiguous" in str(e)
    else:
        raise AssertionError("non-contiguous out accepted")
