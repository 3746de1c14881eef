"""Shared fixtures: element types, random inputs and a paged-cache builder (numpy)."""

import numpy as np
import pytest

try:
    import ml_dtypes

    BF16 = ml_dtypes.bfloat16
except ImportError:  # bf16 cases are skipped without ml_dtypes
    BF16 = None

DTYPES = {"float16": np.float16, "bfloat16": BF16}
# Bound on |ours - float64 reference| for outputs of magnitude <= ~1: one rounding of the
# output (2^-11 / 2^-8) plus f32 accumulation.
ATOL = {"float16": 4e-3, "bfloat16": 2.5e-2}


def dtype_param(name):
    """A pytest param for dtype ``name``, skipped when ml_dtypes is missing for bf16."""
    marks = [pytest.mark.skip(reason="bfloat16 needs ml_dtypes")] if DTYPES[name] is None else []
    return pytest.param(name, marks=marks, id=name)


ALL_DTYPES = [dtype_param("float16"), dtype_param("bfloat16")]


def randn(rng, shape, dtype):
    return rng.standard_normal(shape).astype(np.float32).astype(DTYPES[dtype])


def to_layout(x_nhd, layout):
    """``[L, H, D]`` NHD rows as the layout's contiguous array."""
    return np.ascontiguousarray(x_nhd if layout == "NHD" else x_nhd.transpose(1, 0, 2))


class Paged:
    """A paged cache holding requests of ``kv_lens`` tokens in shuffled pages, in either form
    (one ``[pages, 2, ...]`` array or a ``(k, v)`` pair), with the CSR tables and each
    request's K/V as NHD rows for the reference."""

    def __init__(self, rng, kv_lens, page_size, hkv, d, layout, dtype, form="single", spare=3):
        pages = [(n + page_size - 1) // page_size for n in kv_lens]
        self.num_pages = sum(pages) + spare
        order = rng.permutation(self.num_pages).astype(np.int32)
        self.indptr = np.concatenate([[0], np.cumsum(pages)]).astype(np.int32)
        self.indices = order[: self.indptr[-1]].copy()
        self.last = np.array([(n - 1) % page_size + 1 if n else 0 for n in kv_lens], dtype=np.int32)
        page_shape = (page_size, hkv, d) if layout == "NHD" else (hkv, page_size, d)
        full = randn(rng, (self.num_pages, 2) + page_shape, dtype)
        self.cache = full if form == "single" else (np.ascontiguousarray(full[:, 0]), np.ascontiguousarray(full[:, 1]))
        self.page_size, self.layout, self.kv_lens = page_size, layout, list(kv_lens)

    def kv(self, b):
        """Request ``b``'s K and V as ``[kv_len, Hkv, D]`` rows."""
        k, v = (self.cache[:, 0], self.cache[:, 1]) if isinstance(self.cache, np.ndarray) else self.cache
        rows_k, rows_v = [], []
        for i in range(self.kv_lens[b]):
            p = self.indices[self.indptr[b] + i // self.page_size]
            s = i % self.page_size
            if self.layout == "NHD":
                rows_k.append(k[p, s]), rows_v.append(v[p, s])
            else:
                rows_k.append(k[p, :, s]), rows_v.append(v[p, :, s])
        shape = (0,) + k.shape[-2:] if self.layout == "NHD" else (0, k.shape[1], k.shape[3])
        if not rows_k:
            return np.zeros(shape, k.dtype), np.zeros(shape, k.dtype)
        return np.stack(rows_k), np.stack(rows_v)


def kv_lens_for(page_size):
    """Lengths FlashInfer's grids stress: 1, page multiples and their neighbours."""
    p = page_size
    return sorted({1, max(p - 1, 1), p, p + 1, 2 * p, 3 * p + 1})


def assert_close(ours, ref, dtype, what="out"):
    ours = np.asarray(ours).astype(np.float32).astype(np.float64)
    err = np.max(np.abs(ours - ref)) if ref.size else 0.0
    assert err <= ATOL[dtype], f"{what}: max |err| {err:.3g} > {ATOL[dtype]}"


def assert_lse(ours, ref):
    ours = np.asarray(ours, dtype=np.float64)
    assert np.array_equal(np.isneginf(ours), np.isneginf(ref)), "lse: -inf pattern differs"
    fin = np.isfinite(ref)
    if fin.any():
        err = np.max(np.abs(ours[fin] - ref[fin]))
        assert err <= 1e-3, f"lse: max |err| {err:.3g}"
